"""``translation``: pooling makes a network robust to small moves of a feature.

Each model is trained on centred images only, then tested on copies moved by 0 to 8 pixels
(up, down, left and right, the space left behind filled with the background): a CNN with max
pooling, the same with strided convolutions instead of pooling, one that ends in global
average pooling, and the book's MLP. What counts is the share of its accuracy on the unmoved
images that a model keeps when they move.
"""

from __future__ import annotations

import numpy as np

from cnnlab import layers, zoo
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    accuracy,
    data,
    fmt,
    mean_sd,
    pick,
    summarize,
    train,
    twice_the_spread,
)
from cnnlab.model import Sequential

NAME = "translation"
TITLE = "Translation: accuracy on images moved by 0 to 8 pixels"
CLAIM = "pooling makes a network robust to small moves of a feature (translation invariance)"
RULE = (
    "holds when, over moves of 1 to 4 pixels, the CNN with max pooling keeps a larger share "
    "of its accuracy on unmoved images than the MLP, by more than twice the larger spread over "
    "the seeds"
)
EPOCHS = 8
SHIFTS = tuple(range(9))
OPTIMIZER = {"name": "adam", "learning_rate": 1e-3}


def _convs(input_shape, classes, ending: str) -> Sequential:
    strided = ending == "strided"
    entries: list = [layers.Input(input_shape)]
    for filters in (16, 32):
        entries.append(
            layers.Conv2D(
                filters, 3, strides=2 if strided else 1, padding="same", activation="relu"
            )
        )
        if not strided:
            entries.append(layers.MaxPooling2D(2))
    if ending == "global":
        entries += [layers.Conv2D(64, 3, padding="same", activation="relu")]
        entries += [layers.GlobalAveragePooling2D()]
    else:
        entries += [layers.Flatten()]
    return Sequential([*entries, layers.Dense(classes, activation="softmax")])


MODELS = {
    "max pooling": lambda shape, k: _convs(shape, k, "pooling"),
    "strided convs": lambda shape, k: _convs(shape, k, "strided"),
    "global average pooling": lambda shape, k: _convs(shape, k, "global"),
    "mlp": lambda shape, k: zoo.mlp(input_shape=shape, num_classes=k),
}


def moved(x: np.ndarray, rows: int, cols: int, background: float) -> np.ndarray:
    """``x: (N, H, W, C)`` moved down by ``rows`` and right by ``cols`` pixels (negative: up,
    left), what comes in filled with ``background``."""
    out = np.full_like(x, background)
    h, w = x.shape[1:3]
    source = x[:, max(0, -rows) : h - max(0, rows), max(0, -cols) : w - max(0, cols)]
    out[
        :,
        max(0, rows) : max(0, rows) + source.shape[1],
        max(0, cols) : max(0, cols) + source.shape[2],
    ] = source
    return out


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options, default="centred_digits")
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    background = float(d.x_test.min())
    rows, by_shift = [], {}
    for name, build in MODELS.items():
        for seed in options.seeds:
            model, _ = train(
                lambda build=build: build(shape, classes),
                seed,
                d.x_train,
                d.y_train,
                epochs=options.epochs or EPOCHS,
                optimizer=OPTIMIZER,
            )
            curve = []
            for s in SHIFTS:
                ways = [(s, 0), (-s, 0), (0, s), (0, -s)] if s else [(0, 0)]
                curve.append(
                    float(
                        np.mean(
                            [
                                accuracy(model, moved(d.x_test, r, c, background), d.y_test)
                                for r, c in ways
                            ]
                        )
                    )
                )
            kept = float(np.mean(curve[1:5]) / curve[0]) if curve[0] > 0 else 0.0
            rows.append(
                {"model": name, "seed": seed, "unmoved_accuracy": curve[0], "kept_1_to_4": kept}
            )
            by_shift.setdefault(name, []).append(curve)
    table = summarize(rows, ["model"], ["unmoved_accuracy", "kept_1_to_4"])
    series = {
        "shifts": list(SHIFTS),
        "accuracy": {
            name: [mean_sd(c[k] for c in curves) for k in range(len(SHIFTS))]
            for name, curves in by_shift.items()
        },
    }
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(table), series, clock()
    )


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the mean and spread of the share each model keeps."""
    pooled, mlp = pick(table, model="max pooling"), pick(table, model="mlp")
    gain = pooled["kept_1_to_4"] - mlp["kept_1_to_4"]
    margin = twice_the_spread("kept_1_to_4", pooled, mlp)
    because = (
        f"moved 1 to 4 pixels, the CNN with max pooling keeps {fmt(pooled['kept_1_to_4'])} of "
        f"its accuracy, the MLP {fmt(mlp['kept_1_to_4'])} (difference {fmt(gain)}, twice the "
        f"spread {fmt(margin)})"
    )
    return Verdict(CLAIM, RULE, bool(gain > margin), because)
