"""Named architectures: the models of Foster's *Generative Deep Learning* (2nd ed.), ch. 2."""

from __future__ import annotations

from cnnlab import layers
from cnnlab.model import Sequential


def mlp(input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10) -> Sequential:
    """The book's dense network: Flatten, Dense 200 relu, Dense 150 relu, Dense softmax.

    646,260 parameters for CIFAR-10.
    """
    return Sequential(
        [
            layers.Input(shape=input_shape),
            layers.Flatten(),
            layers.Dense(200, activation="relu"),
            layers.Dense(150, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="mlp",
    )


def cnn(input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10) -> Sequential:
    """The book's CNN: four Conv2D (32, 32, 64, 64 filters, 3x3, strides 1/2/1/2, "same"),
    each followed by BatchNormalization and LeakyReLU; then Flatten, Dense 128,
    BatchNormalization, LeakyReLU, Dropout 0.5 and a softmax Dense.

    592,554 parameters for CIFAR-10, 640 of them non-trainable.
    """
    entries: list = [layers.Input(shape=input_shape)]
    for filters, strides in ((32, 1), (32, 2), (64, 1), (64, 2)):
        entries += [
            layers.Conv2D(filters, 3, strides=strides, padding="same"),
            layers.BatchNormalization(),
            layers.LeakyReLU(),
        ]
    entries += [
        layers.Flatten(),
        layers.Dense(128),
        layers.BatchNormalization(),
        layers.LeakyReLU(),
        layers.Dropout(0.5),
        layers.Dense(num_classes),
        layers.Softmax(),
    ]
    return Sequential(entries, name="cnn")


def diagram(input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10) -> Sequential:
    """The lecture's "CNN diagram": Conv2D 10 filters 4x4 stride 2, Conv2D 20 filters 3x3
    stride 2 (both "same"), Flatten, Dense softmax. 15,120 parameters for CIFAR-10.
    """
    return Sequential(
        [
            layers.Input(shape=input_shape),
            layers.Conv2D(10, 4, strides=2, padding="same"),
            layers.Conv2D(20, 3, strides=2, padding="same"),
            layers.Flatten(),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="diagram",
    )


MODELS = {"mlp": mlp, "cnn": cnn, "diagram": diagram}


def get(name: str, input_shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10):
    """Build the zoo model called ``name``."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](input_shape=input_shape, num_classes=num_classes)
