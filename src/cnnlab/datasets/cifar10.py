"""Keras's ``keras.datasets.cifar10`` namespace: ``load_data()``.

    >>> from cnnlab.datasets import cifar10
    >>> (x_train, y_train), (x_test, y_test) = cifar10.load_data()  # doctest: +SKIP

The data is the official binary release read by :func:`cnnlab.datasets.load_cifar10`, or,
offline, another copy of CIFAR-10 on disk given as ``data_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.datasets.cifar import ARCHIVE, load_cifar10
from cnnlab.datasets.dataset import KerasArrays
from cnnlab.datasets.folder import image_folder

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def load_data(*, data_dir: str | os.PathLike | None = None) -> KerasArrays:
    """CIFAR-10 as Keras returns it: ``(x_train, y_train), (x_test, y_test)``.

    x_train (50000, 32, 32, 3) and x_test (10000, 32, 32, 3): uint8 RGB pixels 0-255, channels
    last; y_train (50000, 1) and y_test (10000, 1): uint8 labels 0-9 (a column, as in Keras),
    0 airplane ... 9 truck (:data:`CLASSES`).

    ``data_dir``: a folder holding ``cifar-10-binary.tar.gz`` or its extracted
    ``cifar-10-batches-bin``; or another copy of CIFAR-10 on disk, a folder or ``.tar.gz`` of
    ``train/<class>/`` and ``test/<class>/`` images as :func:`cnnlab.datasets.image_folder`
    reads them, whose classes must be CIFAR-10's (such a copy, JPEG-compressed say, may
    differ from the official pixels). Nothing is downloaded then. Without it the official
    archive is taken from (or downloaded into) the cache, checked against pinned SHA-256 sums.
    """
    if data_dir is not None and _image_copy(Path(data_dir).expanduser()):
        data = image_folder(data_dir)
        if tuple(data.class_names) != CLASSES:
            raise ValueError(
                f"{data_dir} holds images of the classes {data.class_names}; a copy of CIFAR-10 "
                f"has the folders {list(CLASSES)}"
            )
    else:
        data = load_cifar10(data_dir)
    (x_train, y_train), (x_test, y_test) = data
    return (x_train, _column(y_train)), (x_test, _column(y_test))


def _image_copy(path: Path) -> bool:
    """Whether ``path`` is a folder or archive of class folders, not the official release."""
    if path.is_file():
        return path.name != ARCHIVE.filename and path.name.endswith((".tar.gz", ".tgz", ".tar"))
    return (path / "train").is_dir() and (path / "test").is_dir()


def _column(y: np.ndarray) -> np.ndarray:
    return y.astype(np.uint8).reshape(-1, 1)  # (N,) int64 -> (N, 1) uint8
