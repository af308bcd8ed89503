"""``exploding``: weights that grow too large make the loss turn NaN; batch normalization and
gradient clipping keep it finite.

A deep plain network (eight Dense layers of 64 ReLU units, no batch norm) trained with plain
SGD at a learning rate far too high (10): each step's update multiplies the weights, the
activations and the gradients grow layer after layer, and soon the loss is not a number. The
NaN guard stops the run and names the layer whose weights grew most. Then the same network
and learning rate with batch normalization after every Dense layer, and with each gradient
clipped to a norm of 1 (``clipnorm=1.0``). Every step records each layer's weight norm and
gradient norm.
"""

from __future__ import annotations

import math

import numpy as np

from cnnlab import layers
from cnnlab.callbacks import Callback, NaNGuard
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    data,
    fmt,
    pick,
    summarize,
    train,
)
from cnnlab.model import Sequential

NAME = "exploding"
TITLE = "Exploding gradients: a learning rate far too high, with and without the remedies"
CLAIM = (
    "weights that grow too large make the loss turn NaN, and batch normalization or gradient "
    "clipping keeps it finite"
)
RULE = (
    "holds when the plain network's loss stops being finite in every seed, and with batch "
    "normalization and with gradient clipping it stays finite through the same steps in "
    "every seed"
)
EPOCHS = 3
DEPTH, UNITS, LEARNING_RATE = 8, 64, 10.0
CONFIGS = ("plain", "batch norm", "clipnorm=1")


def network(input_shape, classes, normalized: bool) -> Sequential:
    entries: list = [layers.Input(input_shape), layers.Flatten()]
    for _ in range(DEPTH):
        if normalized:
            entries += [layers.Dense(UNITS), layers.BatchNormalization(), layers.ReLU()]
        else:
            entries.append(layers.Dense(UNITS, activation="relu"))
    return Sequential([*entries, layers.Dense(classes, activation="softmax")])


class Norms(Callback):
    """After each step: the loss, and each Dense layer's kernel norm and gradient norm."""

    def __init__(self):
        super().__init__()
        self.loss, self.weights, self.gradients = [], {}, {}

    def on_train_batch_end(self, batch, logs=None):
        self.loss.append(float((logs or {}).get("loss", float("nan"))))
        for layer in self.model.layers:
            if isinstance(layer, layers.Dense):
                with np.errstate(over="ignore", invalid="ignore"):
                    w = float(np.linalg.norm(layer.weights["kernel"]))
                    g = float(np.linalg.norm(layer.grads["kernel"]))
                self.weights.setdefault(layer.name, []).append(w)
                self.gradients.setdefault(layer.name, []).append(g)


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options, default="digits")
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    rows, norms = [], {}
    for config in CONFIGS:
        for seed in options.seeds:
            guard, record = NaNGuard(verbose=0, restore=False), Norms()
            clip = 1.0 if config == "clipnorm=1" else None
            model, _ = train(
                lambda config=config: network(shape, classes, config == "batch norm"),
                seed,
                d.x_train,
                d.y_train,
                epochs=options.epochs or EPOCHS,
                optimizer={"name": "sgd", "learning_rate": LEARNING_RATE, "clipnorm": clip},
                callbacks=[record, guard],
            )
            report = guard.report or {}
            finite = [v for v in record.loss if math.isfinite(v)]
            named = (report.get("largest_weight") or "").split("/")[0]
            dense = [layer.name for layer in model.layers if isinstance(layer, layers.Dense)]
            rows.append(
                {
                    "config": config,
                    "seed": seed,
                    "diverged": int(guard.report is not None),
                    "nan_step": report.get("step", ""),
                    "named_layer": f"Dense {dense.index(named) + 1} of {len(dense)}"
                    if named
                    else "",
                    "steps": len(record.loss),
                    "last_finite_loss": finite[-1] if finite else float("nan"),
                }
            )
            if seed == options.seeds[0]:
                norms[config] = {
                    "loss": record.loss,
                    "weights": record.weights,
                    "gradients": record.gradients,
                }
    table = summarize(rows, ["config"], ["diverged", "last_finite_loss"])
    series = {"norms": norms}
    notes = [
        f"{r['config']}, seed {r['seed']}: the loss is not finite at step {r['nan_step']}; the "
        f"NaN guard names {r['named_layer']} as the layer whose weights grew the most"
        for r in rows
        if r["diverged"]
    ]
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(table), series,
        clock(), notes,
    )  # fmt: skip


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the share of the seeds in which each run diverged."""
    share = {config: pick(table, config=config)["diverged"] for config in CONFIGS}
    holds = share["plain"] == 1.0 and share["batch norm"] == 0.0 and share["clipnorm=1"] == 0.0
    because = ", ".join(
        f"{config}: diverged in {share[config]:.0%} of the seeds" for config in CONFIGS
    )
    finite = [c for c in CONFIGS if share[c] == 0.0]
    if finite:  # finite is not the same as learning: say where the loss ended
        ends = ", ".join(f"{c} {fmt(pick(table, config=c)['last_finite_loss'])}" for c in finite)
        because += f"; the loss ended at {ends}"
    return Verdict(CLAIM, RULE, bool(holds), because)
