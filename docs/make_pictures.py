"""Make the pictures the README shows, in docs/images/.

    python docs/make_pictures.py

Deterministic: the explanations use fixed examples and seeds, the diagram is the book's CNN,
and the learning curves come from a short seeded run of that CNN on the bundled digits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from click.testing import CliRunner

from cnnlab.cli import main as cnnlab
from cnnlab.viz.figures import save

IMAGES = Path(__file__).resolve().parent / "images"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cnnlab, list(args))
    if result.exit_code != 0:
        raise SystemExit(f"cnnlab {' '.join(args)} failed:\n{result.output}")
    return result.output


def main() -> None:
    from cnnlab import zoo
    from cnnlab.runs import read_metrics
    from cnnlab.viz import explain, show

    pictures = {
        "conv.png": explain.explain_conv()[1],
        "filters.png": explain.explain_filters()[1],
        "padding.png": explain.explain_padding(5, 3, 2, "same")[1],
        "pooling.png": explain.explain_pooling()[1],
        "architecture.png": show.architecture_figure(zoo.cnn()),  # the book's CIFAR-10 CNN
    }
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        _run("train", "--model", "cnn", "--dataset", "digits", "--epochs", "3", "--quiet",
             "--out", str(run))  # fmt: skip
        pictures["curves.png"] = show.curves_figure(read_metrics(run / "metrics.csv"))
    for name, fig in pictures.items():
        print(save(fig, IMAGES / name))


if __name__ == "__main__":
    main()
