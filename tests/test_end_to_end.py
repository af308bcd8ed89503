"""End to end on real data: Fashion-MNIST from Debian's dataset-fashion-mnist package, through
the `cnnlab compare` command. After one short epoch a small CNN beats the book's MLP.

Skipped when the files are absent (``apt-get install dataset-fashion-mnist`` installs them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnlab.cli import main

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

pytestmark = pytest.mark.skipif(
    not all((FASHION_DIR / name).is_file() for name in FILES),
    reason=f"Fashion-MNIST is not installed in {FASHION_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)

SMALL_CNN = """
from cnnlab import Sequential, layers

def build_model(input_shape, num_classes):
    # Two 3x3 convolutions with ReLU and 2x2 max pooling, then a softmax Dense: 12,810
    # parameters for 28x28x1, against the MLP's 188,660.
    return Sequential([
        layers.Input(shape=input_shape),
        layers.Conv2D(16, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(num_classes, activation="softmax"),
    ])
"""


def test_a_cnn_beats_an_mlp_on_fashion_mnist_after_one_short_epoch(tmp_path):
    """One epoch over the 60,000 training images (about 25 s on two cores), tested on the
    10,000 test images (a standard error of about 0.3 points): the CNN, with 15 times fewer
    parameters, wins by more than a point."""
    model_file = tmp_path / "small_cnn.py"
    model_file.write_text(SMALL_CNN)
    out = tmp_path / "compare"
    result = CliRunner().invoke(
        main,
        [
            "compare", "--models", f"mlp,{model_file}", "--dataset", "fashion-mnist",
            "--data-dir", str(FASHION_DIR), "--epochs", "1",
            "--lr", "1e-3", "--validation-split", "0", "--quiet", "--out", str(out),
        ],
        prog_name="cnnlab",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mlp, cnn = json.loads((out / "comparison.json").read_text())
    assert (mlp["model"], cnn["model"]) == ("mlp", "small_cnn")
    assert (mlp["params"], cnn["params"]) == (188_660, 12_810)
    assert mlp["test_accuracy"] > 0.75  # both learned something real
    assert cnn["test_accuracy"] > mlp["test_accuracy"] + 0.015, result.output
    summary = json.loads((out / "small_cnn" / "summary.json").read_text())
    assert summary["test"]["examples"] == 10_000
    assert summary["test"]["class_names"][0] == "T-shirt/top"
