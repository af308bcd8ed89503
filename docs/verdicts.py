"""The verdicts of `cnnlab experiment all` runs side by side, as the README and
docs/experiments.md show them: a table of verdicts (one column per run), then each verdict's
reasons.

    python docs/verdicts.py runs/bundled runs/fashion runs/cifar10

Each argument is the --out folder of one `cnnlab experiment all`; the column is named after
the data the run used.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cnnlab.lecture import STUDIES
from cnnlab.lecture.study import read


def main(folders: list[str]) -> None:
    runs = [{name: read(Path(folder) / name) for name in STUDIES} for folder in folders]
    names = [_data(run) for run in runs]
    print("| study: the claim | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(runs))
    for name, module in STUDIES.items():
        cells = [_word(run[name].verdict.holds) for run in runs]
        print(f"| `{name}`: {module.CLAIM} | " + " | ".join(cells) + " |")
    print()
    seconds = [sum(result.seconds for result in run.values()) for run in runs]
    print(
        "Time for all seven: "
        + ", ".join(f"{n} {s / 60:.0f} min" for n, s in zip(names, seconds, strict=True))
    )
    print()
    for name in STUDIES:
        print(f"- `{name}`:")
        for data, run in zip(names, runs, strict=True):
            verdict = run[name].verdict
            print(f"  - {data}: {_word(verdict.holds)}, {verdict.because}.")


def _data(run: dict) -> str:
    """The run's data, by the dataset of its first study that does not use a bundled set."""
    datasets = {result.dataset for result in run.values()}
    bundled = {"digits", "shifted_digits", "centred_digits"}
    if datasets <= bundled:
        return "bundled digits"
    name = Path(sorted(datasets - bundled)[0]).name  # a folder or archive: its name
    return name.removesuffix(".gz").removesuffix(".tar").removesuffix(".tgz")


def _word(holds: bool) -> str:
    return "holds" if holds else "**does not hold**"


if __name__ == "__main__":
    main(sys.argv[1:])
