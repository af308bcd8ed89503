"""Fast :func:`cnnlab.nn.dense.dense_forward` and :func:`~cnnlab.nn.dense.dense_backward`: the
same products, the same arguments and the same :class:`DenseCache`, split over the cores by the
layer's inputs (the rows of ``kernel``), so that each thread reads and writes blocks of its
own, whole rows of ``kernel`` and of ``dkernel``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnlab.engine import parallel
from cnnlab.engine.sums import column_sums
from cnnlab.nn.dense import DenseCache


def dense_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, DenseCache]:
    """Fast :func:`cnnlab.nn.dense.dense_forward`: each thread multiplies a block of ``x``'s
    columns by the same block of ``kernel``'s rows, ``x[:, lo:hi] @ kernel[lo:hi]``
    (:func:`cnnlab.engine.parallel.over_batch`), and the threads' partial products are added
    up in order."""
    y, *others = parallel.over_batch(
        lambda lo, hi: np.matmul(x[:, lo:hi], kernel[lo:hi]),
        kernel.shape[0],
        _grain(len(x), kernel.shape[1]),
    )
    for part in others:
        y += part
    if bias is not None:
        y += bias
    return y, DenseCache(x, kernel)


def dense_backward(
    dy: np.ndarray,
    cache: DenseCache,
    input_gradient: bool = True,
    *,
    update: Callable[[np.ndarray, slice], None] | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Fast :func:`cnnlab.nn.dense.dense_backward`, split over the cores by the inputs: each
    thread takes a block of them, the rows ``dkernel[lo:hi] = x[:, lo:hi].T @ dy`` and the
    columns ``dx[:, lo:hi] = dy @ kernel[lo:hi].T``. With ``update``, the optimizer's update of
    rows of the kernel (:meth:`cnnlab.optimizers.Optimizer.row_update`), each thread then calls
    ``update(dkernel[lo:hi], slice(lo, hi))``: its rows of the kernel are updated while they
    and their gradient are in its cache, after ``dx`` has read them."""
    x, kernel = cache
    dtype = np.result_type(dy, kernel)
    d, units = kernel.shape
    dkernel = np.empty(kernel.shape, dtype=dtype)
    dx = np.empty((len(dy), d), dtype=dtype) if input_gradient else None

    def inputs(lo: int, hi: int) -> None:
        np.matmul(x[:, lo:hi].T, dy, out=dkernel[lo:hi])
        if input_gradient:
            np.matmul(dy, kernel[lo:hi].T, out=dx[:, lo:hi])
        if update is not None:
            update(dkernel[lo:hi], slice(lo, hi))

    parallel.over_batch(inputs, d, _grain(len(x), units))
    return dx, dkernel, column_sums(dy)


# Multiply-adds of one thread's share below which a thread costs more than it saves (waking a
# thread takes tens of microseconds; a core does about 4M multiply-adds in 0.1 ms).
_MIN_WORK = 4_000_000


def _grain(rows: int, units: int) -> int:
    """The fewest inputs worth a thread, each ``rows x units`` multiply-adds."""
    return max(1, -(-_MIN_WORK // (rows * units)))
