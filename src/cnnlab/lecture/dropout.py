"""``dropout``: dropout counteracts overfitting.

A small CNN (two 3x3 convolutions with max pooling, a Dense layer of 128 ReLU units, then
the softmax layer) on a small training set (the first 600 images: 150
shifted digits at 4 places each), long enough to overfit it, with
dropout after the Dense layer at rates 0, 0.25 and 0.5. After every epoch, the accuracy on
the training images (at inference, without dropout) and on the validation images: the gap
between them is the overfitting.
"""

from __future__ import annotations

from cnnlab import layers
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
    pick,
    summarize,
    train,
    twice_the_spread,
)
from cnnlab.model import Sequential

NAME = "dropout"
TITLE = "Dropout on a small training set: the gap between training and validation"
CLAIM = "dropout counteracts overfitting"
RULE = (
    "holds when the gap between training and validation accuracy at the end is smaller with "
    "dropout at rate 0.5 than without dropout, by more than twice the larger spread over the "
    "seeds"
)
EPOCHS = 20
TRAINING_IMAGES = 600
RATES = (0.0, 0.25, 0.5)


def network(input_shape, classes, rate: float) -> Sequential:
    entries: list = [layers.Input(input_shape)]
    for filters in (16, 32):
        entries += [layers.Conv2D(filters, 3, padding="same", activation="relu")]
        entries += [layers.MaxPooling2D(2)]
    entries += [layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(rate)]
    return Sequential([*entries, layers.Dense(classes, activation="softmax")])


class Accuracies(Callback):
    """After each epoch: the accuracy on the training and on the validation images, both at
    inference."""

    def __init__(self, train, validation):
        super().__init__()
        self.train, self.validation = train, validation
        self.curves = {"training": [], "validation": []}

    def on_epoch_end(self, epoch, logs=None):
        self.curves["training"].append(accuracy(self.model, *self.train))
        self.curves["validation"].append(accuracy(self.model, *self.validation))


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options)
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    x, y = d.x_train[:TRAINING_IMAGES], d.y_train[:TRAINING_IMAGES]
    rows, curves = [], {}
    for rate in RATES:
        for seed in options.seeds:
            probe = Accuracies((x, y), (d.x_val, d.y_val))
            train(
                lambda rate=rate: network(shape, classes, rate),
                seed,
                x,
                y,
                epochs=options.epochs or EPOCHS,
                optimizer={"name": "adam", "learning_rate": 1e-3},
                callbacks=[probe],
            )
            final = {k: v[-1] for k, v in probe.curves.items()}
            rows.append(
                {
                    "rate": rate,
                    "seed": seed,
                    "train_accuracy": final["training"],
                    "val_accuracy": final["validation"],
                    "gap": final["training"] - final["validation"],
                }
            )
            curves.setdefault(str(rate), []).append(probe.curves)
    table = summarize(rows, ["rate"], ["train_accuracy", "val_accuracy", "gap"])
    series = {
        "curves": {
            rate: {
                split: [mean_sd(run[split][e] for run in runs) for e in range(len(runs[0][split]))]
                for split in ("training", "validation")
            }
            for rate, runs in curves.items()
        }
    }
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(table), series, clock()
    )


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the mean and spread of the final gap at each rate."""
    none, half = pick(table, rate=0.0), pick(table, rate=0.5)
    narrower = none["gap"] - half["gap"]
    margin = twice_the_spread("gap", none, half)
    because = (
        f"the gap is {fmt(none['gap'])} without dropout and {fmt(half['gap'])} at rate 0.5 "
        f"(narrower by {fmt(narrower)}; twice the spread: {fmt(margin)})"
    )
    return Verdict(CLAIM, RULE, bool(narrower > margin), because)
