"""Datasets as uint8 NHWC images and int64 labels, and the preprocessing that follows.

    >>> from cnnlab import datasets
    >>> (x_train, y_train), (x_test, y_test) = data = datasets.load("digits")
    >>> x_train.shape, data.class_names[:3]
    ((1438, 8, 8, 1), ['0', '1', '2'])

Keras's namespaces return Keras's arrays, for code written against ``tensorflow.keras``:

    >>> (x_train, y_train), (x_test, y_test) = datasets.mnist.load_data()  # doctest: +SKIP

``mnist.load_data()``, ``fashion_mnist.load_data()``: x (N, 28, 28) uint8, y (N,) uint8;
``cifar10.load_data()``: x (N, 32, 32, 3) uint8, y (N, 1) uint8.

Official files are checked against pinned SHA-256 sums; downloads go to ``$CNNLAB_DATA`` or the
user's cache folder; ``data_dir=`` reads files already on disk instead (nothing downloaded).
"""

from __future__ import annotations

import os

from cnnlab.datasets import cifar10, fashion_mnist, mnist  # Keras's load_data() namespaces
from cnnlab.datasets.cifar import load_cifar10
from cnnlab.datasets.dataset import Dataset
from cnnlab.datasets.digits import load_centred_digits, load_digits, load_shifted_digits
from cnnlab.datasets.folder import image_folder
from cnnlab.datasets.mnist import load_fashion_mnist, load_mnist
from cnnlab.datasets.preprocessing import augment, one_hot, scale, take, train_val_split

NAMES = ("centred_digits", "cifar10", "digits", "fashion_mnist", "mnist", "shifted_digits")


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name: ``(x_train, y_train), (x_test, y_test)``, with ``class_names``.

    x: (N, height, width, channels) uint8 (grey images have one channel); y: (N,) int64.

    - ``"cifar10"``: (50000 | 10000, 32, 32, 3), the official binary release;
    - ``"mnist"``, ``"fashion_mnist"``: (60000 | 10000, 28, 28, 1), the official idx files
      (Fashion-MNIST is also found where Debian's ``dataset-fashion-mnist`` installs it);
    - ``"digits"``: (1438 | 359, 8, 8, 1), scikit-learn's bundled digits, no download;
    - ``"shifted_digits"``: (5752 | 359, 32, 32, 1), those digits enlarged x2 at random places
      on a 32x32 canvas, each training digit at 4 of them;
    - ``"centred_digits"``: (1438 | 359, 32, 32, 1), the enlarged digits in the middle.

    Hyphens may stand for underscores (``"shifted-digits"``). ``data_dir``: a folder already
    holding the official files; nothing is downloaded then.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in NAMES:
        raise ValueError(
            f"The 'name' parameter of load must be one of {', '.join(map(repr, NAMES))}; "
            f"got {name!r} instead. For your own images use image_folder(path)."
        )
    bundled = {
        "digits": load_digits,
        "shifted_digits": load_shifted_digits,
        "centred_digits": load_centred_digits,
    }
    if key in bundled:
        if data_dir is not None:
            raise ValueError(
                f"{key!r} is bundled with scikit-learn and reads no files: leave data_dir unset "
                f"(got data_dir={str(data_dir)!r})"
            )
        return bundled[key]()
    if key == "cifar10":
        return load_cifar10(data_dir)
    return load_mnist(data_dir) if key == "mnist" else load_fashion_mnist(data_dir)


__all__ = [
    "NAMES",
    "Dataset",
    "augment",
    "cifar10",
    "fashion_mnist",
    "image_folder",
    "load",
    "load_centred_digits",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_shifted_digits",
    "mnist",
    "one_hot",
    "scale",
    "take",
    "train_val_split",
]
