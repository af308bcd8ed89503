"""``normalization``: scaling the pixels to [-1, 1] matters.

The book's MLP on the same images with their pixels in [-1, 1] (cnnlab's default), in [0, 1]
(the book's), and raw, 0 to 255. With plain SGD the size of each step of the first layer's
weights is proportional to the size of its inputs, so raw pixels take steps 255 times too
large for a learning rate that suits [0, 1]: the ReLU units of the first layer die or blow up.
The same with Adam is shown beside it, outside the verdict: Adam divides each weight's step by
the size of its own gradients, which takes most of the inputs' scale away.
"""

from __future__ import annotations

import math

from cnnlab import zoo
from cnnlab.callbacks import NaNGuard
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    data,
    fmt,
    mean_sd,
    pick,
    summarize,
    train,
    twice_the_spread,
)

NAME = "normalization"
TITLE = "Normalizing the pixels: [-1, 1], [0, 1] or raw 0-255"
CLAIM = "normalizing the pixels (to [-1, 1]) matters for training"
RULE = (
    "holds when, with plain SGD, the training loss at the end is higher with raw 0-255 pixels "
    "than with pixels in [-1, 1] by more than twice the larger spread over the seeds (a loss "
    "that is not finite counts as higher); Adam is shown outside the verdict"
)
EPOCHS = 10
SCALES = {"[-1, 1]": (-1.0, 1.0), "[0, 1]": (0.0, 1.0), "0-255": (0.0, 255.0)}
OPTIMIZERS = {
    "sgd": {"name": "sgd", "learning_rate": 1e-2},
    "adam": {"name": "adam", "learning_rate": 1e-3},
}


def run(options: Options) -> Result:
    clock = Clock()
    rows, curves = [], {}
    dataset = None
    for scale, bounds in SCALES.items():
        d = data(options, default="digits", scale=bounds)
        dataset = d.dataset
        shape, classes = d.x_train.shape[1:], len(d.class_names)
        for optimizer, config in OPTIMIZERS.items():
            for seed in options.seeds:
                guard = NaNGuard(verbose=0, restore=False)
                _, history = train(
                    lambda shape=shape, classes=classes: zoo.mlp(
                        input_shape=shape, num_classes=classes
                    ),
                    seed,
                    d.x_train,
                    d.y_train,
                    epochs=options.epochs or EPOCHS,
                    optimizer=config,
                    validation=(d.x_val, d.y_val),
                    callbacks=[guard],
                )
                losses = history.history.get("loss", [])
                diverged = guard.report is not None or not losses
                rows.append(
                    {
                        "optimizer": optimizer,
                        "pixels": scale,
                        "seed": seed,
                        # A loss that stopped being finite ends the run: it ends at NaN.
                        "train_loss": float("nan") if diverged else losses[-1],
                        "val_accuracy": float("nan")
                        if diverged
                        else history.history["val_accuracy"][-1],
                    }
                )
                curves.setdefault(f"{optimizer}, {scale}", []).append(losses)
    table = summarize(rows, ["optimizer", "pixels"], ["train_loss", "val_accuracy"])
    series = {
        "loss": {
            key: [
                mean_sd(run[e] for run in runs if e < len(run)) for e in range(max(map(len, runs)))
            ]
            for key, runs in curves.items()
        }
    }
    return Result(
        NAME, TITLE, dataset, list(options.seeds), rows, table, judge(table), series, clock()
    )


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the mean and spread of SGD's final training loss."""
    raw, scaled = (
        pick(table, optimizer="sgd", pixels="0-255"),
        pick(table, optimizer="sgd", pixels="[-1, 1]"),
    )
    worse = raw["train_loss"] - scaled["train_loss"]
    margin = twice_the_spread("train_loss", raw, scaled)
    # A seed whose loss is not finite makes the mean NaN: it counts as higher.
    holds = not math.isfinite(raw["train_loss"]) or worse > margin
    if math.isfinite(raw["train_loss"]):
        because = (
            f"with SGD the training loss ends at {fmt(raw['train_loss'])} on raw pixels and "
            f"{fmt(scaled['train_loss'])} on [-1, 1] (twice the spread: {fmt(margin)})"
        )
    else:
        because = (
            "with SGD on raw pixels the training loss stopped being finite in some seed; on "
            f"[-1, 1] it ends at {fmt(scaled['train_loss'])}"
        )
    return Verdict(CLAIM, RULE, bool(holds), because)
