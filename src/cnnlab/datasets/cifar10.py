"""Keras's ``keras.datasets.cifar10`` namespace: ``load_data()``.

    >>> from cnnlab.datasets import cifar10
    >>> (x_train, y_train), (x_test, y_test) = cifar10.load_data()  # doctest: +SKIP

The data is the official binary release read by :func:`cnnlab.datasets.load_cifar10`.
"""

from __future__ import annotations

import os

import numpy as np

from cnnlab.datasets.cifar import load_cifar10
from cnnlab.datasets.dataset import KerasArrays


def load_data(*, data_dir: str | os.PathLike | None = None) -> KerasArrays:
    """CIFAR-10 as Keras returns it: ``(x_train, y_train), (x_test, y_test)``.

    x_train (50000, 32, 32, 3) and x_test (10000, 32, 32, 3): uint8 RGB pixels 0-255, channels
    last; y_train (50000, 1) and y_test (10000, 1): uint8 labels 0-9 (a column, as in Keras),
    0 airplane ... 9 truck (``datasets.load("cifar10").class_names``).

    ``data_dir``: a folder holding ``cifar-10-binary.tar.gz`` or its extracted
    ``cifar-10-batches-bin``; nothing is downloaded then. Without it the archive is taken from
    (or downloaded into) the cache. Checked against pinned SHA-256 sums.
    """
    (x_train, y_train), (x_test, y_test) = load_cifar10(data_dir)
    return (x_train, _column(y_train)), (x_test, _column(y_test))


def _column(y: np.ndarray) -> np.ndarray:
    return y.astype(np.uint8).reshape(-1, 1)  # (N,) int64 -> (N, 1) uint8
