"""Metrics computed on a batch of predictions."""

from __future__ import annotations

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of examples whose most probable class is the true one.

    ``y_pred: (N, K)``; ``y_true``: integer labels ``(N,)`` or one-hot ``(N, K)``.
    """
    labels = y_true.argmax(axis=-1) if y_true.ndim == y_pred.ndim else y_true
    return float(np.mean(y_pred.argmax(axis=-1) == labels))


_BY_NAME = {"accuracy": accuracy, "acc": accuracy}


def get(name: str):
    if name not in _BY_NAME:
        raise ValueError(f"Unknown metric {name!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name]
