"""Fast :func:`cnnlab.nn.dense.dense_forward` and :func:`~cnnlab.nn.dense.dense_backward`: the
same products, the same arguments and the same :class:`DenseCache`, split over the cores by
the columns they produce, which keeps a small batch's products efficient."""

from __future__ import annotations

import numpy as np

from cnnlab.engine import parallel
from cnnlab.engine.sums import column_sums
from cnnlab.nn.dense import DenseCache


def dense_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, DenseCache]:
    """Fast :func:`cnnlab.nn.dense.dense_forward`: the units are split over the cores
    (:func:`cnnlab.engine.parallel.over_batch`), each thread computing a block of ``y``'s
    columns, one matrix product with all the batch."""
    y = np.empty((len(x), kernel.shape[1]), dtype=np.result_type(x, kernel))

    def units(start: int, stop: int) -> None:
        np.matmul(x, kernel[:, start:stop], out=y[:, start:stop])
        if bias is not None:
            y[:, start:stop] += bias[start:stop]

    parallel.over_batch(units, kernel.shape[1], _grain(len(x), kernel.shape[0]))
    return y, DenseCache(x, kernel)


def dense_backward(
    dy: np.ndarray, cache: DenseCache, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Fast :func:`cnnlab.nn.dense.dense_backward`, split over the cores by the columns they
    produce: each thread takes a block of units for ``dkernel`` and ``dbias``, and the same
    share of the inputs for ``dx``, in one call."""
    x, kernel = cache
    dtype = np.result_type(dy, kernel)
    d, units = kernel.shape
    dkernel = np.empty(kernel.shape, dtype=dtype)
    dbias = np.empty(units, dtype=dtype)
    dx = np.empty((len(dy), d), dtype=dtype) if input_gradient else None

    def columns(start: int, stop: int) -> None:
        np.matmul(x.T, dy[:, start:stop], out=dkernel[:, start:stop])
        dbias[start:stop] = column_sums(dy[:, start:stop])
        if input_gradient:
            lo, hi = start * d // units, stop * d // units
            np.matmul(dy, kernel[lo:hi].T, out=dx[:, lo:hi])

    parallel.over_batch(columns, units, _grain(len(x), d))
    return dx, dkernel, dbias


# Multiply-adds of one thread's share below which a thread costs more than it saves (waking a
# thread takes tens of microseconds; a core does about 4M multiply-adds in 0.1 ms).
_MIN_WORK = 4_000_000


def _grain(rows: int, depth: int) -> int:
    """The fewest output columns worth a thread, each ``rows x depth`` multiply-adds."""
    return max(1, -(-_MIN_WORK // (rows * depth)))
