"""The lecture's studies: each verdict follows its rule, from the numbers alone (a case where
the claim holds and one where it does not, for each), and the command writes what it says."""

from __future__ import annotations

import csv
import html
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnnlab.cli import main
from cnnlab.lecture import (
    STUDIES,
    batchnorm,
    dropout,
    exploding,
    filters,
    mlp_vs_cnn,
    normalization,
    translation,
)
from cnnlab.lecture.study import mean_sd, summarize


def rows(**configs):
    """A table as ``summarize`` makes it: ``name=(keys, mean, sd)``."""
    return [{**keys, **{n: v for n, v in numbers.items()}} for keys, numbers in configs.values()]


def test_every_study_states_its_claim_and_rule():
    assert list(STUDIES) == [
        "mlp-vs-cnn",
        "translation",
        "exploding",
        "batchnorm",
        "dropout",
        "normalization",
        "filters",
    ]
    for module in STUDIES.values():
        assert module.CLAIM and module.RULE.startswith("holds when")


def test_the_statistics_are_mean_and_sample_spread():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([0.5]) == (0.5, 0.0)
    mean, sd = mean_sd([1.0, float("nan")])
    assert mean != mean and sd != sd  # not finite in, NaN out
    table = summarize(
        [{"m": "a", "x": 1.0}, {"m": "a", "x": 3.0}, {"m": "b", "x": 5.0}], ["m"], ["x"]
    )
    assert table == [
        {"m": "a", "x": 2.0, "x_sd": pytest.approx(2**0.5), "seeds": 2},
        {"m": "b", "x": 5.0, "x_sd": 0.0, "seeds": 1},
    ]


def _mlp_vs_cnn(cnn, mlp, cnn_shuffled, mlp_shuffled, sd=0.01):
    def row(model, pixels, acc):
        return {"model": model, "pixels": pixels, "test_accuracy": acc, "test_accuracy_sd": sd}

    return [
        row("cnn", "images", cnn),
        row("mlp", "images", mlp),
        row("cnn", "shuffled", cnn_shuffled),
        row("mlp", "shuffled", mlp_shuffled),
    ]


def test_mlp_vs_cnn_verdict():
    assert mlp_vs_cnn.judge(_mlp_vs_cnn(0.95, 0.40, 0.55, 0.41)).holds
    assert not mlp_vs_cnn.judge(_mlp_vs_cnn(0.95, 0.40, 0.55, 0.41, sd=0.3)).holds  # noise
    assert not mlp_vs_cnn.judge(_mlp_vs_cnn(0.95, 0.40, 0.90, 0.41)).holds  # lead survives
    assert not mlp_vs_cnn.judge(_mlp_vs_cnn(0.95, 0.40, 0.55, 0.05)).holds  # MLP moved most


def _kept(pooled, mlp, sd=0.01):
    return [
        {"model": "max pooling", "kept_1_to_4": pooled, "kept_1_to_4_sd": sd},
        {"model": "mlp", "kept_1_to_4": mlp, "kept_1_to_4_sd": sd},
    ]


def test_translation_verdict():
    assert translation.judge(_kept(0.6, 0.4)).holds
    assert not translation.judge(_kept(0.41, 0.4)).holds
    assert not translation.judge(_kept(0.6, 0.4, sd=0.2)).holds


def _diverged(plain, normed, clipped):
    return [
        {"config": c, "diverged": v, "diverged_sd": 0.0, "last_finite_loss": 2.3}
        for c, v in zip(exploding.CONFIGS, (plain, normed, clipped), strict=True)
    ]


def test_exploding_verdict():
    verdict = exploding.judge(_diverged(1.0, 0.0, 0.0))
    assert verdict.holds and "the loss ended at batch norm 2.300" in verdict.because
    assert not exploding.judge(_diverged(2 / 3, 0.0, 0.0)).holds  # one seed did not blow up
    assert not exploding.judge(_diverged(1.0, 1 / 3, 0.0)).holds
    assert not exploding.judge(_diverged(1.0, 0.0, 1.0)).holds


def test_batchnorm_verdict():
    assert batchnorm.judge({"no batch norm": (0.6, 0.02), "batch norm": (0.9, 0.02)}).holds
    assert not batchnorm.judge({"no batch norm": (0.6, 0.2), "batch norm": (0.9, 0.02)}).holds
    assert not batchnorm.judge({"no batch norm": (0.9, 0.01), "batch norm": (0.6, 0.01)}).holds


def _gaps(none, half, sd=0.01):
    return [
        {"rate": 0.0, "gap": none, "gap_sd": sd},
        {"rate": 0.5, "gap": half, "gap_sd": sd},
    ]


def test_dropout_verdict():
    assert dropout.judge(_gaps(0.4, 0.2)).holds
    assert not dropout.judge(_gaps(0.4, 0.39)).holds
    assert not dropout.judge(_gaps(0.4, 0.2, sd=0.15)).holds


def _losses(raw, scaled, sd=0.01):
    return [
        {"optimizer": "sgd", "pixels": "0-255", "train_loss": raw, "train_loss_sd": sd},
        {"optimizer": "sgd", "pixels": "[-1, 1]", "train_loss": scaled, "train_loss_sd": sd},
    ]


def test_normalization_verdict():
    assert normalization.judge(_losses(2.3, 0.4)).holds
    diverged = normalization.judge(_losses(float("nan"), 0.4))
    assert diverged.holds  # a NaN loss counts as higher
    assert diverged.because == (
        "with SGD on raw pixels the training loss stopped being finite in some seed; on "
        "[-1, 1] it ends at 0.400"
    )
    assert not normalization.judge(_losses(0.41, 0.4)).holds
    assert not normalization.judge(_losses(2.3, 0.4, sd=1.5)).holds


def test_a_run_that_diverges_ends_diverged_and_the_study_goes_on(monkeypatch):
    """On data where SGD on raw pixels blows up (Fashion-MNIST did), the run stops at its first
    non-finite loss: the normalization study records a NaN loss for it, which counts as
    higher, instead of failing; and a study's training measures the model as it ended, not
    one put back from an epoch before."""
    import math

    import numpy as np

    from cnnlab import zoo
    from cnnlab.lecture.study import Options, data, train

    monkeypatch.setattr(normalization, "OPTIMIZERS", {
        "sgd": {"name": "sgd", "learning_rate": 1e2}, "adam": {"name": "adam"}})  # fmt: skip
    result = normalization.run(Options(seeds=(0,), epochs=1, verbose=False))
    raw = [r for r in result.rows if r["optimizer"] == "sgd" and r["pixels"] == "0-255"]
    assert len(raw) == 1 and math.isnan(raw[0]["train_loss"])
    assert result.verdict.holds

    d = data(Options(), default="digits")
    model, history = train(
        lambda: zoo.mlp(input_shape=d.x_train.shape[1:], num_classes=10), 0,
        d.x_train * 255, d.y_train, epochs=3, optimizer={"name": "sgd", "learning_rate": 1e2},
    )  # fmt: skip
    assert history.history == {}  # stopped in its first epoch
    assert max(float(np.abs(w).max()) for w in model.get_weights()) > 1e6  # not put back


def test_filters_verdict_and_the_edge_score():
    start = {"stage": "initialisation", "edge_score": 0.45, "edge_score_sd": 0.01}
    assert filters.judge(
        [start, {"stage": "trained", "edge_score": 0.6, "edge_score_sd": 0.01}]
    ).holds
    assert not filters.judge(
        [start, {"stage": "trained", "edge_score": 0.46, "edge_score_sd": 0.01}]
    ).holds
    import numpy as np

    kernel = np.zeros((3, 3, 1, 3))
    kernel[..., 0, 0] = filters.EDGES[0] * 3 + 7  # an edge filter, scaled and shifted
    kernel[..., 0, 1] = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]  # a dot: no edge
    kernel[..., 0, 2] = filters.EDGES[3].T  # a diagonal
    scores = filters.edge_scores(kernel)
    assert scores[0] == pytest.approx(1.0) and scores[2] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.0, abs=1e-12)


# -- the command -------------------------------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_an_experiment_writes_its_results_pictures_and_report_and_repeats_itself(tmp_path):
    outputs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        result = invoke("experiment", "exploding", "--seeds", "2", "--out", out)
        assert result.exit_code == 0, result.output
        folder = out / "exploding"
        for name in ("results.csv", "table.md", "result.json", "exploding.png", "report.html"):
            assert (folder / name).is_file(), name
        outputs.append((folder / "results.csv").read_text())
    assert outputs[0] == outputs[1]  # the same seeds, the same numbers
    with open(tmp_path / "run0" / "exploding" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["config"] for r in table] == ["plain"] * 2 + ["batch norm"] * 2 + ["clipnorm=1"] * 2
    assert all(r["diverged"] == "1" and r["named_layer"].startswith("Dense ") for r in table[:2])
    saved = json.loads((tmp_path / "run0" / "exploding" / "result.json").read_text())
    assert saved["verdict"]["holds"] is True
    assert "HOLDS: weights that grow too large" in result.output


def test_experiment_all_writes_one_report_with_every_study(tmp_path):
    result = invoke(
        "experiment", "all", "--seeds", "1", "--epochs", "1", "--limit", "300", "--out", tmp_path
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Verdicts</h2>" in page
    for module in STUDIES.values():
        assert f"<h2>{html.escape(module.TITLE)}</h2>" in page
        assert (tmp_path / module.NAME / "results.csv").is_file()
    assert page.count("<img") >= len(STUDIES)
    assert sum(f"{name}: " in result.output for name in STUDIES) == len(STUDIES)


def test_the_verdicts_table_of_the_readme_puts_runs_side_by_side(tmp_path, capsys, monkeypatch):
    """docs/verdicts.py, which makes the README's table from `experiment all` folders: one
    column per run, named after its data, each study's verdict and then its reasons."""
    import runpy

    from cnnlab.lecture import STUDIES
    from cnnlab.lecture.study import Result, Verdict, write

    runs = (("a", "digits", True), ("b", "fashion_mnist", False), ("c", "/data/cifar.tar.gz", True))
    for run, dataset, holds in runs:
        for name, module in STUDIES.items():
            verdict = Verdict(module.CLAIM, module.RULE, holds, f"{name} on {dataset}")
            table = [{"accuracy": 0.5, "accuracy_sd": 0.0, "seeds": 1}]
            result = Result(name, name, dataset, [0], [], table, verdict, seconds=60.0)
            write(result, tmp_path / run / name)
    script = Path(__file__).parent.parent / "docs" / "verdicts.py"
    monkeypatch.setattr(sys, "argv", ["verdicts.py", *(str(tmp_path / r[0]) for r in runs)])
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| study: the claim | bundled digits | fashion_mnist | cifar |"
    assert lines[2] == (
        f"| `mlp-vs-cnn`: {STUDIES['mlp-vs-cnn'].CLAIM} | holds | **does not hold** | holds |"
    )
    assert len([line for line in lines if line.startswith("| `")]) == len(STUDIES)
    assert "Time for all seven: bundled digits 7 min, fashion_mnist 7 min, cifar 7 min" in lines
    assert "  - fashion_mnist: **does not hold**, dropout on fashion_mnist." in lines
