"""The `cnnlab` command: help, errors and exit codes, train (run directory, determinism,
resume, Ctrl-C, NaN guard), evaluate, predict, summary, compare, demo, and the report hooks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import types
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cnnlab
from cnnlab import cli
from cnnlab.cli import main
from cnnlab.datasets import load as load_dataset
from cnnlab.runs import read_metrics
from cnnlab.saving import load, load_model

# Small and fast: scikit-learn's 8x8 digits, a few hundred images, a couple of epochs.
QUICK = ["--dataset", "digits", "--limit", "300", "--epochs", "2", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="cnnlab")


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


def scaled_digits_test(limit: int = 300, first: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The digits test split as training scaled it (pixels 0..255 -> [-1, 1]): the ``limit``
    images ``--limit`` draws (seed 0, in their order), or the ``first`` ones."""
    (_, _), (x, y) = load_dataset("digits")
    if first:
        keep = np.arange(limit)
    else:
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
    return x[keep].astype(np.float32) / 127.5 - 1.0, y[keep]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "mlp-run"
    result = invoke("train", "--model", "mlp", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# -- help and errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", [[], ["train"], ["evaluate"], ["predict"], ["summary"], ["compare"], ["demo"]]
)
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: ")
    assert "--help" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--epochs", "x"], "'x' is not a valid integer"),
        (["train", "--bogus"], "No such option '--bogus'"),
        (["train", "--optimizer", "rmsprop"], "'rmsprop' is not one of 'adam', 'sgd'"),
        (["train", "--dataset", "nope"], "got 'nope' (no such dataset or path)"),
        (["train", "--model", "nope", "--dataset", "digits"], "got 'nope' (no such model"),
        (["predict", "model.cnnlab"], "Missing argument 'IMAGES...'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (
            ["train", "--early-stopping", "2", "--validation-split", "0"],
            "--early-stopping watches val_loss: it needs --validation-split > 0",
        ),
    ],
)
def test_usage_errors_print_one_line_and_exit_2(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


def test_resume_takes_only_epochs_lr_clipnorm_and_quiet(run_dir):
    result = invoke("train", "--resume", run_dir, "--batch-size", "8", "--optimizer", "sgd")
    assert result.exit_code == 2
    assert (
        "it takes only --epochs, --lr, --clipnorm and --quiet, not --batch-size, --optimizer"
        in one_error_line(result)
    )


def test_runtime_errors_print_one_clear_line_and_exit_1(tmp_path):
    result = invoke("train", "--dataset", "mnist", "--data-dir", tmp_path, "--quiet")
    assert result.exit_code == 1
    assert "train-images-idx3-ubyte.gz (or train-images-idx3-ubyte, gunzipped) not found" in (
        one_error_line(result)
    )

    bogus = tmp_path / "bogus.cnnlab"
    bogus.write_text("not a model")
    result = invoke("evaluate", bogus, "--dataset", "digits")
    assert result.exit_code == 1
    assert "is not a cnnlab model file" in one_error_line(result)


def test_debug_shows_the_original_exception(tmp_path):
    bogus = tmp_path / "bogus.cnnlab"
    bogus.write_text("not a model")
    result = invoke("evaluate", bogus, "--dataset", "digits", "--debug")
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)


def test_an_existing_run_is_not_overwritten(run_dir):
    before = (run_dir / "metrics.csv").read_text()
    result = invoke("train", "--model", "mlp", *QUICK, "--out", run_dir)
    assert result.exit_code == 1
    assert "already holds a run" in one_error_line(result)
    assert (run_dir / "metrics.csv").read_text() == before


# -- train -----------------------------------------------------------------------------------
def test_train_writes_a_complete_run_directory(run_dir):
    for name in ("config.json", "metrics.csv", "model.cnnlab", "summary.json"):
        assert (run_dir / name).is_file()
    for name in ("latest.cnnlab", "best.cnnlab"):
        load_model(run_dir / "checkpoints" / name)  # loadable
    config = json.loads((run_dir / "config.json").read_text())
    expected = {
        "model": "mlp",
        "dataset": "digits",
        "epochs": 2,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 5e-4,
        "seed": 0,
        "augment": False,
        "scale": [-1.0, 1.0],
        "limit": 300,
    }
    assert {k: config[k] for k in expected} == expected
    assert config["compile"]["optimizer"]["learning_rate"] == 5e-4
    assert set(config["versions"]) >= {"cnnlab", "numpy", "python"}
    assert [row["epoch"] for row in read_metrics(run_dir / "metrics.csv")] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test"]["examples"] == 300


def test_train_output_names_accuracy_and_run(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--model", "diagram", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    lines = result.stdout.splitlines()
    assert lines[0] == f"Test accuracy: {summary['test']['accuracy']:.4f} (300 images)"
    assert lines[1].startswith(f"Run written to {out} (completed, 2 epochs")


def test_progress_shows_epoch_lines_unless_quiet(tmp_path):
    args = ["train", "--model", "mlp", "--dataset", "digits", "--limit", "100", "--epochs", "2"]
    result = invoke(*args, "--out", tmp_path / "a")
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epoch_lines) == 2 and "val_accuracy" in epoch_lines[1]
    quiet = invoke(*args, "--out", tmp_path / "b", "--quiet")
    assert not [line for line in quiet.stdout.splitlines() if line.startswith("Epoch ")]


def test_same_seed_gives_identical_metrics_and_config_repeats_the_run(run_dir, tmp_path):
    """A second run from nothing but config.json's settings repeats the first exactly."""
    config = json.loads((run_dir / "config.json").read_text())
    args = [
        "train", "--model", config["model"], "--dataset", config["dataset"],
        "--limit", config["limit"], "--epochs", config["epochs"],
        "--batch-size", config["batch_size"], "--optimizer", config["optimizer"],
        "--lr", repr(config["lr"]), "--seed", config["seed"],
        "--validation-split", repr(config["validation_split"]),
        "--scale", ",".join(f"{v:g}" for v in config["scale"]), "--quiet",
    ]  # fmt: skip
    result = invoke(*args, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output
    first, again = (read_metrics(d / "metrics.csv") for d in (run_dir, tmp_path / "again"))
    strip = [{k: v for k, v in row.items() if k != "time"} for row in first]
    assert strip == [{k: v for k, v in row.items() if k != "time"} for row in again]
    for a, b in zip(
        load_model(run_dir / "model.cnnlab").get_weights(),
        load_model(tmp_path / "again" / "model.cnnlab").get_weights(),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_resume_ends_with_the_same_weights_as_one_uninterrupted_run(tmp_path):
    """The book's CNN (dropout) with shuffling and augmentation: 3 epochs in one go, or 1
    epoch then --resume to 3."""
    args = ["--model", "cnn", "--dataset", "digits", "--limit", "120", "--augment", "--quiet"]
    whole = invoke("train", *args, "--epochs", "3", "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    part = invoke("train", *args, "--epochs", "1", "--out", tmp_path / "part")
    assert part.exit_code == 0, part.output
    resumed = invoke("train", "--resume", tmp_path / "part", "--epochs", "3", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    a = load_model(tmp_path / "whole" / "model.cnnlab").get_weights()
    b = load_model(tmp_path / "part" / "model.cnnlab").get_weights()
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert [r["epoch"] for r in read_metrics(tmp_path / "part" / "metrics.csv")] == [1, 2, 3]
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["epochs"] == config["fit"]["epochs"] == 3 and len(config["resumed"]) == 1


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """A real SIGINT to a `cnnlab train` process once its first epoch is written. The process
    starts with Ctrl-C's default action, as from a terminal: a shell's background job (the
    test suite run with `&`) would pass on its SIGINT ignored, and cnnlab leaves it so."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", "from cnnlab.cli import main; main()", "train",
         "--model", "mlp", "--dataset", "digits", "--epochs", "100000", "--quiet",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.csv").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Interrupted: checkpoint saved at epoch" in stderr
    assert f"cnnlab train --resume {out}" in stderr
    _, extra = load(out / "checkpoints" / "latest.cnnlab")
    rows = read_metrics(out / "metrics.csv")
    assert extra["training"]["epoch"] >= len(rows) >= 1


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    """Adam at lr 0.05 makes the validation loss bounce: patience 0 stops at its first rise,
    and the final model is the best checkpoint."""
    out = tmp_path / "run"
    result = invoke(
        "train", "--model", "mlp", "--dataset", "digits", "--limit", "300", "--epochs", "30",
        "--lr", "0.05", "--early-stopping", "0", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs"] < 30
    val_loss = [row["val_loss"] for row in read_metrics(out / "metrics.csv")]
    assert val_loss[-1] >= min(val_loss[:-1])  # stopped at the first epoch without progress
    assert summary["best"]["epoch"] == int(np.argmin(val_loss)) + 1
    best = load_model(out / "checkpoints" / "best.cnnlab").get_weights()
    final = load_model(out / "model.cnnlab").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(best, final, strict=True))


MODEL_PY = """
from cnnlab import Sequential, layers

def build_model(input_shape, num_classes):
    # Linear layers only: the weights can grow without bound.
    return Sequential([layers.Input(shape=input_shape), layers.Flatten(), layers.Dense(32),
                       layers.Dense(32), layers.Dense(num_classes, activation="softmax")])
"""


def test_a_diverging_run_names_the_step_and_what_to_try(tmp_path):
    model_file = tmp_path / "linear.py"
    model_file.write_text(MODEL_PY)
    out = tmp_path / "run"
    result = invoke(
        "train", "--model", model_file, "--dataset", "digits", "--limit", "200",
        "--optimizer", "sgd", "--lr", "50", "--scale", "0,1", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "Training diverged at step" in result.stderr
    assert "Try a lower learning rate (now 50" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: training diverged at step")
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    assert not (out / "model.cnnlab").exists()


def test_train_on_an_image_folder_and_a_json_model(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for k, name in enumerate(["dark", "light"]):
            folder = tmp_path / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 100, size=(8, 8, 3)) + 150 * k
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    cnnlab.set_random_seed(0)
    model = cnnlab.Sequential(
        [cnnlab.layers.Flatten(), cnnlab.layers.Dense(2, activation="softmax")]
    )
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps(model.get_config()))
    out = tmp_path / "run"
    result = invoke(
        "train", "--model", model_file, "--dataset", tmp_path / "images", "--epochs", "1",
        "--validation-split", "0", "--quiet", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load(out / "model.cnnlab")[1]["class_names"] == ["dark", "light"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["examples"] == 8


# -- evaluate, predict, summary --------------------------------------------------------------
def test_evaluate_prints_accuracy_per_class_and_confusion_matrix(run_dir):
    result = invoke("evaluate", run_dir, "--limit", "300")
    assert result.exit_code == 0, result.output
    x, y = scaled_digits_test()
    predicted = load_model(run_dir / "model.cnnlab").predict(x).argmax(axis=1)
    lines = result.stdout.splitlines()
    assert f"Accuracy: {np.mean(predicted == y):.4f}" in lines
    start = lines.index("Per-class accuracy:")
    for k in range(10):
        mask = y == k
        expected = f"{np.mean(predicted[mask] == k):8.4f}  {mask.sum():6d}"
        assert lines[start + 2 + k] == f"  {str(k).ljust(5)}  {expected}"
    matrix_start = next(i for i, s in enumerate(lines) if s.startswith("Confusion matrix"))
    rows = [[int(v) for v in line.split()[1:]] for line in lines[matrix_start + 2 :]]
    expected_matrix = [
        [int(np.sum((y == i) & (predicted == j))) for j in range(10)] for i in range(10)
    ]
    assert rows == expected_matrix


def test_predict_gives_the_top_k_classes_with_probabilities(run_dir, tmp_path):
    from PIL import Image

    x, y = scaled_digits_test(3, first=True)
    (_, _), (raw, _) = load_dataset("digits")
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(raw[i, :, :, 0]).save(path)
        paths.append(path)
    result = invoke("predict", run_dir / "model.cnnlab", *paths, "--top-k", "2")
    assert result.exit_code == 0, result.output
    probs = load_model(run_dir / "model.cnnlab").predict(x)
    lines = result.stdout.splitlines()
    assert len(lines) == 9
    for i, path in enumerate(paths):
        order = np.argsort(-probs[i])
        assert lines[3 * i] == f"{path}:"
        for rank in (0, 1):
            k = order[rank]
            assert lines[3 * i + 1 + rank] == f"  {rank + 1}. {str(k):<12} {probs[i, k]:.4f}"


def test_predict_refuses_a_file_that_is_not_an_image(run_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = invoke("predict", run_dir, text)
    assert result.exit_code == 1
    assert f"Cannot read {text} as an image" in one_error_line(result)


@pytest.mark.parametrize(
    ("args", "total"),
    [
        # Counts by hand. cnn: the zoo's docstring (CIFAR-10 shapes).
        (["cnn"], "592,554"),
        # mlp on 28x28x1: 784*200+200 + 200*150+150 + 150*10+10.
        (["mlp", "--input-shape", "28,28,1"], "188,660"),
        # diagram on 32x32x3, 10 classes: (4*4*3*10+10) + (3*3*10*20+20) + (8*8*20*10+10).
        (["diagram"], "15,120"),
    ],
)
def test_summary_of_zoo_models(args, total):
    result = invoke("summary", *args)
    assert result.exit_code == 0, result.output
    assert f"Total params: {total}" in result.stdout


def test_summary_of_a_run_directory(run_dir):
    result = invoke("summary", run_dir)
    assert result.exit_code == 0, result.output
    # mlp on 8x8x1 digits: (64*200+200) + (200*150+150) + (150*10+10) = 13000 + 30150 + 1510.
    assert "Total params: 44,660" in result.stdout


# -- compare and demo ------------------------------------------------------------------------
def test_compare_trains_each_model_and_prints_a_table(tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", "--models", "mlp,diagram", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["model"] for row in rows] == ["mlp", "diagram"]
    # diagram on 8x8x1: (4*4*1*10+10) + (3*3*10*20+20) + (2*2*20*10+10) = 170 + 1820 + 810.
    assert [row["params"] for row in rows] == [44_660, 2_800]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split() == ["model", "params", "epoch", "train", "acc", "val", "acc",
                                     "test", "acc", "time"]  # fmt: skip
    for row, line in zip(rows, lines[header + 2 : header + 4], strict=True):
        cells = line.split()
        assert cells[0] == row["model"] and cells[1] == f"{row['params']:,}"
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert cells[5] == f"{summary['test']['accuracy']:.4f}"
    assert f"Runs written to {out}/: mlp, diagram" in result.stdout


def test_demo_compares_mlp_and_cnn_and_says_where_runs_are(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--limit", "150", "--epochs", "1", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert "MLP versus CNN on shifted digits" in result.stdout
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["model"] for row in rows] == ["mlp", "cnn"]
    assert f"Runs written to {out}/mlp and {out}/cnn" in result.stdout
    for name in ("mlp", "cnn"):
        assert (out / name / "model.cnnlab").is_file()


# -- the report hooks ------------------------------------------------------------------------
@pytest.fixture
def fake_report(monkeypatch):
    """The report module the command calls, replaced by one that records its calls."""
    calls = []
    report = types.SimpleNamespace()
    report.write_report = lambda run_dir: calls.append(("report", Path(run_dir))) or "r.html"
    report.write_comparison = lambda dirs, out: calls.append(("comparison", list(dirs), out))
    monkeypatch.setattr(cli, "reports", report)
    return report, calls


def test_train_and_compare_call_the_report_hooks(fake_report, tmp_path):
    _, calls = fake_report
    result = invoke("train", "--model", "mlp", *QUICK, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert calls == [("report", tmp_path / "run")]
    assert "Report: r.html" in result.stdout
    calls.clear()
    result = invoke("compare", "--models", "mlp,diagram", *QUICK, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert calls == [("comparison", [tmp_path / "cmp" / "mlp", tmp_path / "cmp" / "diagram"],
                      tmp_path / "cmp")]  # fmt: skip


def test_errors_inside_the_report_are_not_swallowed(fake_report, tmp_path):
    report, _ = fake_report

    def broken(run_dir):
        raise RuntimeError("matplotlib exploded")

    report.write_report = broken
    result = invoke("train", "--model", "mlp", *QUICK, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "matplotlib exploded" in one_error_line(result)


def test_the_entry_point_is_installed():
    (script,) = entry_points(group="console_scripts", name="cnnlab")
    assert script.value == "cnnlab.cli:main"
    assert script.load() is main
