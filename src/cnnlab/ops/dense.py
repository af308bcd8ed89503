"""Fully connected (dense) layer.

Shapes: ``x: (N, D)``, ``kernel: (D, units)``, ``bias: (units,)``, ``y: (N, units)``.

Formula: ``y = x @ kernel + bias``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import parallel
from cnnlab.ops.sums import column_sums


def dense_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``y`` and the cache (the input). The batch is split over the cores
    (:func:`cnnlab.ops.parallel.over_batch`), each slice one matrix product."""
    y = np.empty((len(x), kernel.shape[1]), dtype=np.result_type(x, kernel))

    def rows(start: int, stop: int) -> None:
        np.matmul(x[start:stop], kernel, out=y[start:stop])
        if bias is not None:
            y[start:stop] += bias

    parallel.over_batch(rows, len(x))
    return y, x


def dense_backward(
    dy: np.ndarray, x: np.ndarray, kernel: np.ndarray, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``dx = dy @ kernel.T``, ``dkernel = x.T @ dy``, ``dbias = sum_n dy``; each slice of the
    batch gives its rows of ``dx`` and its part of the sums.

    ``input_gradient=False`` skips ``dx`` (returned as None): the first layer of a model needs
    only the gradients of its weights.
    """
    dx = np.empty((len(dy), kernel.shape[0]), dtype=np.result_type(dy, kernel))

    def rows(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if input_gradient:
            np.matmul(dy[start:stop], kernel.T, out=dx[start:stop])
        return x[start:stop].T @ dy[start:stop], column_sums(dy[start:stop])

    parts = parallel.over_batch(rows, len(dy))
    dkernel = sum(part[0] for part in parts)
    dbias = sum(part[1] for part in parts)
    return (dx if input_gradient else None), dkernel, dbias
