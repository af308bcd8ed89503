"""Keras's ``keras.utils`` helpers for data: ``to_categorical``.

>>> from cnnlab.utils import to_categorical
>>> to_categorical([0, 2, 1]).tolist()
[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import operator

import numpy as np
from numpy.typing import ArrayLike


def to_categorical(y: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Class indices -> one-hot float32 rows, as Keras 3's ``to_categorical``.

    ``y``: integer labels of shape (N,), or (N, 1) as Keras's CIFAR-10 gives them (a trailing
    axis of size 1 is dropped); more generally (..., 1) or (...) -> (..., num_classes).
    Floats are accepted when they are whole numbers (``3.0``).
    ``num_classes``: the number of columns; None infers ``max(y) + 1``.

    Returns float32 of shape (N, num_classes): 1 in each row's label column, 0 elsewhere.
    Raises ``ValueError`` for labels that are not whole numbers, negative, or not below
    ``num_classes``, and for a ``num_classes`` that is not a positive integer.
    """
    labels = np.asarray(y)
    if labels.dtype.kind not in "biuf":
        raise ValueError(
            f"to_categorical expects integer class labels, got an array of dtype {labels.dtype}"
        )
    flat = labels.reshape(-1)
    if labels.dtype.kind == "f":
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if not whole.all():
            first = int(np.argmin(whole))
            raise ValueError(
                f"to_categorical expects integer class labels, got {flat[first].item()!r} at "
                f"{_position(labels, first)}"
            )
    if flat.size and flat.min() < 0:
        first = int(np.argmin(flat))
        raise ValueError(
            f"to_categorical expects class labels >= 0, got {flat[first].item()} at "
            f"{_position(labels, first)}"
        )
    if num_classes is None:
        if flat.size == 0:
            raise ValueError("to_categorical cannot infer num_classes from no labels: pass it")
        num_classes = int(flat.max()) + 1
    else:
        num_classes = _positive_int(num_classes)
        if flat.size and flat.max() >= num_classes:
            last = int(np.argmax(flat))
            raise ValueError(
                f"to_categorical expects class labels in [0, {num_classes}) for "
                f"num_classes={num_classes}, got {flat[last].item()} at {_position(labels, last)}"
            )
    shape = labels.shape[:-1] if labels.ndim > 1 and labels.shape[-1] == 1 else labels.shape
    encoded = np.zeros((flat.size, num_classes), dtype=np.float32)
    encoded[np.arange(flat.size), flat.astype(np.intp)] = 1.0
    return encoded.reshape(*shape, num_classes)


def _positive_int(num_classes) -> int:
    value = None
    if not isinstance(num_classes, bool | np.bool_):  # True is an int, but not a class count
        try:
            value = operator.index(num_classes)  # int or NumPy integer, not 10.0
        except TypeError:
            pass
    if value is None or value < 1:
        raise ValueError(
            f"to_categorical expects num_classes to be a positive integer or None, got "
            f"{num_classes!r}"
        )
    return value


def _position(labels: np.ndarray, flat_index: int) -> str:
    """Where item ``flat_index`` of ``labels.reshape(-1)`` sits: ``y[7]`` or ``y[3, 0]``."""
    if labels.ndim == 0:
        return "y"
    index = np.unravel_index(flat_index, labels.shape)
    return f"y[{', '.join(str(int(i)) for i in index)}]"
