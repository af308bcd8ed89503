"""The pictures of the lecture's studies (:mod:`cnnlab.lecture`), drawn from their results,
and one HTML report for one study or for all of them."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
from matplotlib import pyplot as plt

from cnnlab.lecture.study import Result, fmt
from cnnlab.viz.figures import as_image, save, write_bytes
from cnnlab.viz.report import _img, _page, _table


def _band(ax, values: list, label: str, x=None, style="-o"):
    """A mean curve with a band of one spread either side: ``values`` [(mean, sd), ...]."""
    mean = np.array([m for m, _ in values], dtype=float)
    sd = np.array([s for _, s in values], dtype=float)
    x = np.arange(1, len(mean) + 1) if x is None else np.asarray(x)
    (line,) = ax.plot(x, mean, style, label=label, markersize=3)
    ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)


def _mean_sd_curves(runs: list[list[float]]) -> list[tuple[float, float]]:
    length = min(map(len, runs))
    return [
        (
            float(np.mean([r[e] for r in runs])),
            float(np.std([r[e] for r in runs], ddof=1)) if len(runs) > 1 else 0.0,
        )
        for e in range(length)
    ]


def _bars(ax, table: list[dict], label_of, number: str, title: str):
    labels = [label_of(row) for row in table]
    ax.bar(
        range(len(table)),
        [row[number] for row in table],
        yerr=[row[f"{number}_sd"] for row in table],
        capsize=4,
        color="#9ecae1",
    )
    ax.set_xticks(range(len(table)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def mlp_vs_cnn(result: Result) -> dict:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    _bars(
        left,
        result.table,
        lambda r: f"{r['model']} on {r['pixels']}",
        "test_accuracy",
        "test accuracy (mean, spread over seeds)",
    )
    for name, runs in result.series["val_accuracy"].items():
        _band(right, _mean_sd_curves(runs), name)
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return {"mlp-vs-cnn.png": fig}


def translation(result: Result) -> dict:
    fig, ax = plt.subplots(figsize=(7, 4))
    shifts = result.series["shifts"]
    for name, values in result.series["accuracy"].items():
        _band(ax, values, name, x=shifts)
    ax.set_xlabel("pixels moved (up, down, left, right: the mean)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Trained on centred images, tested on moved ones")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return {"translation.png": fig}


def exploding(result: Result) -> dict:
    norms = result.series["norms"]
    fig, axes = plt.subplots(3, len(norms), figsize=(4.2 * len(norms), 8.5), squeeze=False)
    for col, (config, record) in enumerate(norms.items()):
        loss = np.array(record["loss"], dtype=float)
        axes[0, col].plot(np.arange(1, len(loss) + 1), loss, "-o", markersize=2)
        axes[0, col].set_yscale("log")
        axes[0, col].set_title(f"{config}: loss by step", fontsize=10)
        for row, key in ((1, "weights"), (2, "gradients")):
            for name, values in record[key].items():
                axes[row, col].plot(np.arange(1, len(values) + 1), values, lw=1, label=name)
            axes[row, col].set_yscale("log")
            axes[row, col].set_title(f"{key[:-1]} norm of each Dense layer", fontsize=9)
            axes[row, col].set_xlabel("step")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return {"exploding.png": fig}


def batchnorm(result: Result) -> dict:
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for config in ("no batch norm", "batch norm"):
        rows = [r for r in result.table if r["model"] == config]
        _band(
            axes[0],
            [(r["val_accuracy"], r["val_accuracy_sd"]) for r in rows],
            config,
            x=[r["learning_rate"] for r in rows],
        )
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate (SGD)")
    axes[0].set_ylabel("validation accuracy at the end")
    axes[0].legend(fontsize=8)
    for config, stats in result.series["input_statistics"].items():
        steps = np.arange(1, len(stats["mean"]) + 1)
        axes[1].plot(steps, stats["mean"], lw=1, label=config)
        axes[2].plot(steps, stats["sd"], lw=1, label=config)
    axes[1].set_title("the 2nd conv's input: mean, step by step", fontsize=10)
    axes[2].set_title("... and its spread (standard deviation)", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return {"batchnorm.png": fig}


def dropout(result: Result) -> dict:
    curves = result.series["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), sharey=True)
    for ax, (rate, splits) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for split, values in splits.items():
            _band(ax, values, split)
        ax.set_title(f"dropout rate {rate}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("accuracy (at inference)")
    return {"dropout.png": fig}


def normalization(result: Result) -> dict:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for key, values in result.series["loss"].items():
        optimizer, scale = key.split(", ", 1)
        _band(axes[0 if optimizer == "sgd" else 1], values, f"pixels {scale}")
    for ax, title in zip(axes, ("SGD", "Adam (outside the verdict)"), strict=True):
        ax.set_title(f"training loss, {title}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return {"normalization.png": fig}


def filters(result: Result) -> dict:
    kernels = {k: np.array(v) for k, v in result.series["kernels"].items()}
    maps = {k: np.array(v) for k, v in result.series["maps"].items()}
    n = min(16, next(iter(kernels.values())).shape[-1])
    fig, axes = plt.subplots(4, n, figsize=(n * 0.9, 4.4))
    for row, stage in enumerate(("initialisation", "trained")):
        kernel = kernels[stage].mean(axis=2)
        limit = float(np.abs(kernel).max()) or 1.0
        for k in range(n):
            axes[2 * row, k].imshow(kernel[..., k], cmap="bwr", vmin=-limit, vmax=limit)
            axes[2 * row + 1, k].imshow(maps[stage][..., k], cmap="viridis")
        axes[2 * row, 0].set_ylabel(f"{stage}\nfilters", fontsize=7)
        axes[2 * row + 1, 0].set_ylabel("feature\nmaps", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"The first layer's first {n} filters and their maps of one test image")
    image_fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(as_image(np.array(result.series["image"])), cmap="gray")
    ax.axis("off")
    return {"filters.png": fig, "filters-image.png": image_fig}


DRAW = {
    "mlp-vs-cnn": mlp_vs_cnn,
    "translation": translation,
    "exploding": exploding,
    "batchnorm": batchnorm,
    "dropout": dropout,
    "normalization": normalization,
    "filters": filters,
}


def pictures(result: Result, out: str | os.PathLike) -> list[Path]:
    """Save the study's pictures as PNGs in ``out``; returns their paths."""
    return [save(fig, Path(out) / name) for name, fig in DRAW[result.name](result).items()]


def section(result: Result, out: Path) -> str:
    """The study's part of a report: verdict, table and pictures (embedded)."""
    verdict = result.verdict
    table = result.table
    numbers = [k for k in table[0] if f"{k}_sd" in table[0]]
    keys = [k for k in table[0] if k not in numbers and not k.endswith("_sd") and k != "seeds"]
    rows = [
        [row[k] for k in keys] + [f"{fmt(row[n])} ± {fmt(row[n + '_sd'])}" for n in numbers]
        for row in table
    ]
    colour = "#1a7f37" if verdict.holds else "#b3261e"
    parts = [
        f'<p style="color:{colour}"><b>{"HOLDS" if verdict.holds else "DOES NOT HOLD"}</b>: '
        f"{html.escape(verdict.claim)}</p>",
        f"<p>{html.escape(verdict.because)}.</p>",
        f'<p class="note">Rule, stated before the numbers: {html.escape(verdict.rule)}.</p>',
        _table(rows, keys + numbers),
        "".join(f"<p>{html.escape(note)}.</p>" for note in result.notes),
        f'<p class="note">Data: {html.escape(result.dataset)}; seeds '
        f"{', '.join(map(str, result.seeds))}; {result.seconds:.0f} s.</p>",
    ]
    parts += [_img(fig, name) for name, fig in DRAW[result.name](result).items()]
    return "".join(parts)


def write_report(results: list[Result], path: str | os.PathLike) -> Path:
    """One page with every study's section, a summary of the verdicts first."""
    summary = _table(
        [
            [r.name, "holds" if r.verdict.holds else "does not hold", r.verdict.claim]
            for r in results
        ],
        ["study", "verdict", "claim"],
    )
    sections = [("Verdicts", summary)] + [(r.title, section(r, Path(path).parent)) for r in results]
    page = _page("cnnlab experiments: the lecture's claims, tested", sections)
    return write_bytes(path, page.encode("utf-8"))
