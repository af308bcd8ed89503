"""``batchnorm``: batch normalization keeps training stable over a wide range of learning
rates, and uses its moving averages at test time.

A small CNN (two 3x3 convolutions with max pooling, a Dense layer of 32 units, then the
softmax layer), with and without batch normalization after each convolution and after the
Dense layer, trained with SGD (momentum 0.9) at learning rates from 1e-4 to 1e-1: its
validation accuracy at the end, for each. While the models train at 1e-2, the mean and spread
of the second convolution's input, step by step: what the lecture calls internal covariate
shift, which batch norm holds in place. And one test image predicted by the model with batch
norm three ways: with the moving averages (inference), with the statistics of a batch of 64
test images, and with the statistics of that image alone.
"""

from __future__ import annotations

import numpy as np

from cnnlab import layers, state
from cnnlab.callbacks import Callback
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    accuracy,
    data,
    fmt,
    mean_sd,
    summarize,
    train,
)
from cnnlab.model import Sequential

NAME = "batchnorm"
TITLE = "Batch normalization over learning rates from 1e-4 to 1e-1"
CLAIM = "batch normalization keeps training stable over a wide range of learning rates"
RULE = (
    "holds when the validation accuracy at the end, averaged over the learning rates, is higher "
    "with batch normalization than without by more than twice the larger spread over the "
    "seeds of that average"
)
EPOCHS = 5
LEARNING_RATES = (1e-4, 1e-3, 1e-2, 1e-1)
WATCHED_RATE = 1e-2


def network(input_shape, classes, normalized: bool) -> Sequential:
    entries: list = [layers.Input(input_shape)]
    for filters in (16, 32):
        entries.append(layers.Conv2D(filters, 3, padding="same"))
        if normalized:
            entries.append(layers.BatchNormalization())
        entries += [layers.ReLU(), layers.MaxPooling2D(2)]
    entries += [layers.Flatten(), layers.Dense(32)]
    if normalized:
        entries.append(layers.BatchNormalization())
    return Sequential([*entries, layers.ReLU(), layers.Dense(classes, activation="softmax")])


class Inputs(Callback):
    """After each step: the mean and standard deviation of a layer's input in that step."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.mean, self.sd = layer, [], []

    def on_train_batch_end(self, batch, logs=None):
        x = self.layer._cache.x
        self.mean.append(float(x.mean()))
        self.sd.append(float(x.std()))


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options, default="digits")
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    rows, shift, example = [], {}, {}
    for normalized in (False, True):
        config = "batch norm" if normalized else "no batch norm"
        for rate in LEARNING_RATES:
            for seed in options.seeds:
                watch = rate == WATCHED_RATE and seed == options.seeds[0]
                model = network(shape, classes, normalized)
                convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
                probe = Inputs(convs[1])
                model, history = train(
                    lambda model=model: model,
                    seed,
                    d.x_train,
                    d.y_train,
                    epochs=options.epochs or EPOCHS,
                    optimizer={"name": "sgd", "learning_rate": rate, "momentum": 0.9},
                    validation=(d.x_val, d.y_val),
                    callbacks=[probe] if watch else [],
                    precise_bn=32,
                )
                rows.append(
                    {
                        "model": config,
                        "learning_rate": rate,
                        "seed": seed,
                        "val_accuracy": accuracy(model, d.x_val, d.y_val),
                    }
                )
                if watch:
                    shift[config] = {"mean": probe.mean, "sd": probe.sd}
                if watch and normalized:
                    example = _three_ways(model, d.x_test, d.y_test)
    table = summarize(rows, ["model", "learning_rate"], ["val_accuracy"])
    averages = {
        config: mean_sd(
            np.mean([r["val_accuracy"] for r in rows if r["model"] == config and r["seed"] == s])
            for s in options.seeds
        )
        for config in ("no batch norm", "batch norm")
    }
    series = {"input_statistics": shift, "example": example, "averages": averages}
    notes = [
        f"the first test image (a {example['label']}) predicted with {way}: class {p['class']} "
        f"with probability {p['probability']:.3f}"
        for way, p in example.get("predictions", {}).items()
    ]
    notes += [
        f"{config}: the 2nd convolution's input has mean {fmt(s['mean'][0])} and spread "
        f"{fmt(s['sd'][0])} at the first step, {fmt(s['mean'][-1])} and {fmt(s['sd'][-1])} at "
        "the last"
        for config, s in shift.items()
    ]
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(averages), series,
        clock(), notes,
    )  # fmt: skip


def _three_ways(model, x: np.ndarray, y: np.ndarray) -> dict:
    """One test image's predicted class and its probability: with the moving averages, with
    the statistics of a batch of 64 test images, and of a batch of that image alone."""
    kept = state.capture(model)  # a call in training mode moves the moving averages
    ways = {
        "moving averages (inference)": model(x[:1], training=False)[0],
        "a batch of 64 test images": model(x[:64], training=True)[0],
        "a batch of this image alone": model(x[:1], training=True)[0],
    }
    state.restore(model, kept)
    return {
        "label": int(y[0]),
        "predictions": {
            way: {"class": int(p.argmax()), "probability": float(p.max())}
            for way, p in ways.items()
        },
    }


def judge(averages: dict) -> Verdict:
    """The verdict of :data:`RULE` from the mean and spread over seeds of each model's
    validation accuracy averaged over the learning rates."""
    (plain, plain_sd), (normed, normed_sd) = averages["no batch norm"], averages["batch norm"]
    margin = 2 * max(plain_sd, normed_sd)
    because = (
        f"averaged over the learning rates, {fmt(normed)} with batch norm and {fmt(plain)} "
        f"without (twice the spread: {fmt(margin)})"
    )
    return Verdict(CLAIM, RULE, bool(normed - plain > margin), because)
