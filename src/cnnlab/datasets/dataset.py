"""The value every loader returns: ``(x_train, y_train), (x_test, y_test)`` plus class names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Split = tuple[np.ndarray, np.ndarray]
# What Keras's load_data() returns: ((x_train, y_train), (x_test, y_test)), a plain tuple.
KerasArrays = tuple[Split, Split]


class Dataset(tuple):
    """A train and a test split, unpacked like Keras's ``load_data()``::

        (x_train, y_train), (x_test, y_test) = cnnlab.datasets.load("digits")

    ``x``: (N, height, width, channels) uint8 images, NHWC, grey images with one channel.
    ``y``: (N,) int64 labels, indices into ``class_names``.

    It is a tuple of exactly those two pairs, with ``class_names`` (list of str) and ``name``
    attached, and ``train`` / ``test`` as names for its two items. ``train_groups``, where it
    is not None, gives the source of each training image (images made from one source, such
    as a digit placed at several places, share it), for :func:`train_val_split`.
    """

    class_names: list[str]
    name: str

    def __new__(
        cls,
        train: Split,
        test: Split,
        class_names: Sequence[str],
        name: str,
        train_groups: np.ndarray | None = None,
    ) -> Dataset:
        class_names = [str(c) for c in class_names]
        pairs = []
        for split, pair in (("train", train), ("test", test)):
            x, y = pair
            _check_split(name, split, x, y, len(class_names))
            pairs.append((x, y))
        self = super().__new__(cls, pairs)
        self.class_names = class_names
        self.name = name
        # For training images made from one source (a digit at several places): the source
        # of each, so that a validation split keeps every source on one side.
        self.train_groups = train_groups
        return self

    def __getnewargs__(self) -> tuple:
        return (self[0], self[1], self.class_names, self.name, self.train_groups)

    @property
    def train(self) -> Split:
        """``(x_train, y_train)``."""
        return self[0]

    @property
    def test(self) -> Split:
        """``(x_test, y_test)``."""
        return self[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        (x_train, _), (x_test, _) = self
        return (
            f"Dataset({self.name!r}: {len(x_train)} train and {len(x_test)} test images of "
            f"shape {tuple(x_train.shape[1:])}, {self.num_classes} classes)"
        )


def _check_split(name: str, split: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    where = f"Dataset {name!r}, {split} split"
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(
            f"{where}: x must be uint8 images of shape (N, height, width, channels), got "
            f"{type(x).__name__} {getattr(x, 'dtype', '')} of shape {getattr(x, 'shape', '?')}"
        )
    if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
        raise ValueError(
            f"{where}: y must be int64 labels of shape (N,), got {type(y).__name__} "
            f"{getattr(y, 'dtype', '')} of shape {getattr(y, 'shape', '?')}"
        )
    if len(x) != len(y):
        raise ValueError(f"{where}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{where}: labels must lie in [0, {num_classes}) for {num_classes} class names, "
            f"got labels from {y.min()} to {y.max()}"
        )
