"""Keras's ``keras.datasets.fashion_mnist`` namespace: ``load_data()``.

    >>> from cnnlab.datasets import fashion_mnist
    >>> (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()  # doctest: +SKIP

The files are the official idx files of :func:`cnnlab.datasets.load_fashion_mnist`.
"""

from __future__ import annotations

import os

from cnnlab.datasets.dataset import KerasArrays
from cnnlab.datasets.mnist import keras_arrays, load_fashion_mnist


def load_data(*, data_dir: str | os.PathLike | None = None) -> KerasArrays:
    """Fashion-MNIST as Keras returns it: ``(x_train, y_train), (x_test, y_test)``.

    x_train (60000, 28, 28) and x_test (10000, 28, 28): uint8 pixels 0-255, no channel axis;
    y_train (60000,) and y_test (10000,): uint8 labels 0-9, 0 T-shirt/top ... 9 Ankle boot
    (``datasets.load("fashion_mnist").class_names``).

    The files come from ``data_dir`` when given (nothing is downloaded), else from where
    Debian's ``dataset-fashion-mnist`` installs them, else from the cache, downloaded when
    missing. Each may be ``.gz`` or gunzipped; all are checked against pinned SHA-256 sums.
    """
    return keras_arrays(load_fashion_mnist(data_dir))
