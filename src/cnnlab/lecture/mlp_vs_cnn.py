"""``mlp-vs-cnn``: a dense network does poorly on images because it ignores their spatial
structure.

The book's MLP and CNN (sized to the input) get the same budget: epochs, batch, optimizer,
seeds. Then both again on the same images with every image's pixels moved by one fixed
permutation, the same for every image: nothing is lost for a network that treats its inputs as
a list of numbers, as the MLP does, while a CNN's filters, which look at neighbouring pixels,
now see neighbours that are not. If the CNN's lead comes from the images' spatial structure,
most of it should go, and the MLP should barely move.
"""

from __future__ import annotations

import numpy as np

from cnnlab import zoo
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    accuracy,
    data,
    fmt,
    pick,
    summarize,
    train,
)

NAME = "mlp-vs-cnn"
TITLE = "MLP versus CNN, on images and on shuffled pixels"
CLAIM = (
    "a dense network (MLP) does poorly on images next to a CNN because it ignores their "
    "spatial structure"
)
RULE = (
    "holds when (1) on the images the CNN's mean test accuracy exceeds the MLP's by more than "
    "twice the larger spread over the seeds, (2) with the pixels shuffled the CNN's lead is "
    "less than half of that, and (3) shuffling moves the MLP's mean accuracy less than the "
    "CNN's"
)
EPOCHS = 6
OPTIMIZER = {"name": "adam", "learning_rate": 1e-3}


def shuffled(x: np.ndarray, permutation: np.ndarray) -> np.ndarray:
    """Every image's pixels (all of a pixel's channels together) moved by ``permutation`` of
    the ``H * W`` positions: ``x: (N, H, W, C)``."""
    n, h, w, c = x.shape
    return x.reshape(n, h * w, c)[:, permutation].reshape(x.shape)


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options)
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    permutation = np.random.default_rng(0).permutation(shape[0] * shape[1])
    rows, curves = [], {}
    for pixels in ("images", "shuffled"):
        move = (lambda x: x) if pixels == "images" else (lambda x: shuffled(x, permutation))
        x_train, x_val, x_test = move(d.x_train), move(d.x_val), move(d.x_test)
        for name in ("mlp", "cnn"):
            for seed in options.seeds:
                model, history = train(
                    lambda name=name: zoo.get(name, input_shape=shape, num_classes=classes),
                    seed,
                    x_train,
                    d.y_train,
                    epochs=options.epochs or EPOCHS,
                    optimizer=OPTIMIZER,
                    validation=(x_val, d.y_val),
                    precise_bn=32,
                )
                test = accuracy(model, x_test, d.y_test)
                rows.append({"model": name, "pixels": pixels, "seed": seed, "test_accuracy": test})
                curves.setdefault(f"{name} on {pixels}", []).append(history.history["val_accuracy"])
    table = summarize(rows, ["model", "pixels"], ["test_accuracy"])
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(table),
        {"val_accuracy": curves}, clock(),
    )  # fmt: skip


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the table's mean and spread of test accuracy."""

    def acc(model, pixels):
        row = pick(table, model=model, pixels=pixels)
        return row["test_accuracy"], row["test_accuracy_sd"]

    (cnn, cnn_sd), (mlp, mlp_sd) = acc("cnn", "images"), acc("mlp", "images")
    (cnn_s, _), (mlp_s, _) = acc("cnn", "shuffled"), acc("mlp", "shuffled")
    lead, lead_shuffled = cnn - mlp, cnn_s - mlp_s
    margin = 2 * max(cnn_sd, mlp_sd)
    holds = bool(lead > margin and lead_shuffled < lead / 2 and abs(mlp_s - mlp) < abs(cnn_s - cnn))
    because = (
        f"on the images the CNN leads by {fmt(lead)} (twice the spread: {fmt(margin)}); on "
        f"shuffled pixels by {fmt(lead_shuffled)}; shuffling moves the MLP by "
        f"{fmt(mlp_s - mlp)} and the CNN by {fmt(cnn_s - cnn)}"
    )
    return Verdict(CLAIM, RULE, holds, because)
