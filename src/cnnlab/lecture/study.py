"""What every study of the lecture's claims shares: its options, the data, a quiet training
run, the statistics over seeds, the verdict and the files it writes.

A study trains small models under a few configurations, each with several seeds, measures a
number or two on each run, and gives every configuration's mean and spread (the standard
deviation over the seeds). Its verdict says whether the lecture's claim holds on this data,
by a rule written down (in the study's ``RULE`` and in ``docs/experiments.md``) before any
number was seen, and computed from the numbers by a function of them alone, which the tests
feed a case where the claim holds and one where it does not.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cnnlab import optimizers
from cnnlab.callbacks import Callback, NaNGuard, PreciseBatchNorm
from cnnlab.experiment import Prepared, Settings, prepare
from cnnlab.files import read_json
from cnnlab.runs import write_json, write_text
from cnnlab.seeding import set_random_seed

BUNDLED = "shifted_digits"


@dataclass
class Options:
    """How to run a study: on which data, with which seeds, how long, and where to write.

    ``dataset``: None for the study's bundled default (offline, within two minutes on two
    cores), else a dataset name or an image folder as ``cnnlab train --dataset`` takes it.
    ``epochs``: None for the study's own number. ``limit``: use only N training and test
    images, the same random draw for every seed (:func:`cnnlab.datasets.take`).
    """

    dataset: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    limit: int | None = None
    out: Path = Path("runs/experiments")
    data_dir: str | None = None
    verbose: bool = True


@dataclass
class Verdict:
    """Whether the claim holds on this data, ``because`` of which numbers, by ``rule``."""

    claim: str
    rule: str
    holds: bool
    because: str

    def line(self) -> str:
        return f"{'HOLDS' if self.holds else 'DOES NOT HOLD'}: {self.claim} ({self.because})"


@dataclass
class Result:
    """A study's numbers: ``rows`` one per run (configuration and seed), ``table`` one per
    configuration (mean and spread of each number), ``series`` what its pictures draw."""

    name: str
    title: str
    dataset: str
    seeds: list[int]
    rows: list[dict]
    table: list[dict]
    verdict: Verdict
    series: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # sentences on what the table leaves out


# -- numbers -----------------------------------------------------------------------------------
def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """The mean and the standard deviation over seeds (``ddof=1``; 0 for one seed). A value
    that is not finite makes both NaN."""
    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        return float("nan"), float("nan")
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), sd


def summarize(rows: list[dict], keys: list[str], numbers: list[str]) -> list[dict]:
    """One row per configuration (the values of ``keys``), with ``<number>`` the mean over its
    seeds and ``<number>_sd`` the spread."""
    table: dict[tuple, dict] = {}
    for row in rows:
        config = tuple(row[k] for k in keys)
        table.setdefault(config, {"_runs": []})["_runs"].append(row)
    out = []
    for config, entry in table.items():
        line = dict(zip(keys, config, strict=True))
        for number in numbers:
            line[number], line[f"{number}_sd"] = mean_sd(r[number] for r in entry["_runs"])
        line["seeds"] = len(entry["_runs"])
        out.append(line)
    return out


def pick(table: list[dict], **where) -> dict:
    """The row of ``table`` whose keys have the given values."""
    for row in table:
        if all(row.get(k) == v for k, v in where.items()):
            return row
    raise KeyError(f"no row with {where}")


def twice_the_spread(key: str, *rows: dict) -> float:
    """The rules' margin: twice the larger spread over the seeds (``<key>_sd``) of ``rows``."""
    return 2 * max(row[f"{key}_sd"] for row in rows)


def fmt(value: float, digits: int = 3) -> str:
    """A number for a table: ``digits`` decimals, or powers of ten beyond 1e5."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if abs(value) >= 1e5 else f"{value:.{digits}f}"


# -- data and training ---------------------------------------------------------------------------
def data(options: Options, default: str = BUNDLED, scale=(-1.0, 1.0), validation=0.1) -> Prepared:
    """The study's data: ``options.dataset`` (or ``default``), scaled to ``scale``, with a
    share held out for validation."""
    settings = Settings(
        dataset=options.dataset or default,
        data_dir=options.data_dir,
        limit=options.limit,
        scale=list(scale),
        validation_split=validation,
        seed=0,
    )
    return prepare(settings)


def train(
    build: Callable[[], object],
    seed: int,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    optimizer: dict,
    batch_size: int = 32,
    validation: tuple | None = None,
    callbacks: list[Callback] | None = None,
    precise_bn: int = 0,
):
    """Seed cnnlab, build the model, compile it (sparse cross-entropy, accuracy), and fit it
    quietly; returns the model and its History. ``optimizer``: a config such as
    ``{"name": "adam", "learning_rate": 1e-3}``.

    A run whose loss stops being finite ends there, as it is: a NaN guard that does not put
    back the last good weights watches it (unless ``callbacks`` brings a guard of its own,
    whose ``report`` then says whether it diverged), so that the study measures the diverged
    model, not the one of an epoch before."""
    set_random_seed(seed)
    model = build()
    model.compile(optimizers.get(dict(optimizer)), "sparse_categorical_crossentropy", ["accuracy"])
    extra = [PreciseBatchNorm(precise_bn)] if precise_bn else []
    if not any(isinstance(c, NaNGuard) for c in callbacks or []):
        extra.append(NaNGuard(verbose=0, restore=False))
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is measured, not warned
        history = model.fit(
            x,
            y,
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            validation_data=validation,
            callbacks=extra + list(callbacks or []),
        )
    return model, history


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy at inference: the share of images whose most probable class is theirs."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.mean(model.predict(x, batch_size=256).argmax(axis=-1) == y))


class Clock:
    """Seconds since it was made."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


# -- files ---------------------------------------------------------------------------------------
def results_csv(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown(result: Result) -> str:
    """The table (mean ± spread of each number) and the verdict, as Markdown."""
    table = result.table
    numbers = [k for k in table[0] if f"{k}_sd" in table[0]]
    keys = [k for k in table[0] if k not in numbers and not k.endswith("_sd") and k != "seeds"]
    head = keys + numbers
    lines = [
        f"# {result.title}",
        "",
        f"Data: {result.dataset}; seeds: {', '.join(map(str, result.seeds))}; "
        f"{result.seconds:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in table:
        cells = [str(row[k]) for k in keys]
        cells += [f"{fmt(row[n])} ± {fmt(row[f'{n}_sd'])}" for n in numbers]
        lines.append("| " + " | ".join(cells) + " |")
    verdict = result.verdict
    if result.notes:
        lines += [""] + [f"- {note}" for note in result.notes]
    lines += ["", f"Claim: {verdict.claim}", f"Rule: {verdict.rule}", "", f"**{verdict.line()}**"]
    return "\n".join(lines) + "\n"


def write(result: Result, out: Path) -> Path:
    """``out/results.csv``, ``out/table.md`` and ``out/result.json`` (everything, for the
    pictures and the report)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.csv", results_csv(result.rows))
    write_text(out / "table.md", markdown(result))
    write_json(out / "result.json", asdict(result))
    return out


def read(out: Path) -> Result:
    """The :class:`Result` that :func:`write` left in ``out``."""
    raw = read_json(Path(out) / "result.json")
    raw["verdict"] = Verdict(**raw["verdict"])
    return Result(**raw)
