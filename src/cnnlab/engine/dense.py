"""Fast :func:`cnnlab.nn.dense.dense_forward` and :func:`~cnnlab.nn.dense.dense_backward`: the
same products, the same arguments and the same :class:`DenseCache`, split over the cores by the
layer's inputs (the rows of ``kernel``), so that each thread reads and writes blocks of its
own, whole rows of ``kernel`` and of ``dkernel``.

In float32, with cnnlab's threads splitting the ops, the products go by
:mod:`cnnlab.engine.tiles`, each core's part posted to it in compiled code
(:func:`cnnlab.engine.parallel.over_parts`), forward and backward with Adam's update of its
rows: a layer's product of a few dozen rows is over in a few hundred microseconds, and handing
a slice of Python to a thread cost 45-75 us of it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cnnlab.engine import kernels, parallel, scratch, tiles
from cnnlab.engine.optimizers import AdamRows
from cnnlab.engine.parts import DENSE_BACKWARD, PRODUCT
from cnnlab.engine.sums import column_sums
from cnnlab.nn.dense import DenseCache


def dense_forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    *,
    negative_slope: float | None = None,
    softmax: bool = False,
    logits: np.ndarray | None = None,
) -> tuple[np.ndarray, DenseCache]:
    """Fast :func:`cnnlab.nn.dense.dense_forward`: each thread multiplies a block of ``x``'s
    columns by the same block of ``kernel``'s rows, ``x[:, lo:hi] @ kernel[lo:hi]``, by
    :mod:`cnnlab.engine.tiles` where it can (:func:`_tiled`), else by BLAS
    (:func:`cnnlab.engine.parallel.over_batch`), and the threads' partial products and the
    bias are added up in order, in one pass (:func:`cnnlab.engine.kernels.dense_finish`).
    For inference, that pass also applies ``leaky(v) = v if v > 0 else negative_slope * v``
    (0: ReLU; None: none), or with ``softmax`` the softmax over each row; ``logits``, an
    array shaped as the output, then receives the values before the activation."""
    if _tiled(x, kernel):
        y, parts = _tiles_forward(x, kernel)
    else:
        y, *others = parallel.over_batch(
            lambda lo, hi: np.matmul(x[:, lo:hi], kernel[lo:hi]),
            kernel.shape[0],
            _grain(len(x), kernel.shape[1], _MIN_WORK),
        )
        for part in others:
            y += part
        parts = np.empty((0, *y.shape), y.dtype)
    kind = activation_kind(negative_slope, softmax)
    if bias is not None or kind or len(parts) or logits is not None:
        added = np.empty(0, y.dtype) if bias is None else np.asarray(bias, y.dtype)
        slope = y.dtype.type(negative_slope or 0)
        kept = np.empty((0, 0), y.dtype) if logits is None else logits
        kernels.dense_finish(y, parts, len(parts), added, kind, slope, kept, 0, len(y))
    return y, DenseCache(x, kernel)


def by_rows(rows: int, kernel: np.ndarray, threads: int) -> bool:
    """Whether a float32 layer's product ``x @ kernel`` of ``rows`` rows goes over
    ``threads`` threads by rows, each thread all of ``kernel`` for its rows, rather than by
    blocks of the inputs, each thread a block of ``kernel``'s rows, whose partial products
    are then added up across the cores: on one thread; for a kernel small enough for each
    core to read whole (:data:`cnnlab.engine.tiles.B_BYTES`, what the tiles keep in the
    cache at a time); or for no more inputs than rows, where the partial products would
    outweigh the kernel."""
    d = kernel.shape[0]
    return threads == 1 or kernel.nbytes <= tiles.B_BYTES or d <= rows


def activation_kind(negative_slope: float | None, softmax: bool) -> int:
    """The activation as :func:`cnnlab.engine.kernels.activate_row` numbers it."""
    return 2 if softmax else int(negative_slope is not None)


def _tiled(x: np.ndarray, kernel: np.ndarray) -> bool:
    """Whether :func:`dense_forward` multiplies by the tiles: float32, C-contiguous, and the
    ops split over cnnlab's threads (not :func:`cnnlab.engine.parallel.blas_threads`)."""
    return (
        x.dtype == kernel.dtype == np.float32
        and x.flags.c_contiguous
        and kernel.flags.c_contiguous
        and not parallel.whole()
    )


def _tiles_forward(x: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x @ kernel`` in parts, a block of the inputs on each thread
    (:func:`parallel.over_parts`): the calling thread's, the last, into the result ``y``, the
    others' into a buffer kept for them (which then stays in their caches), ``parts``, for
    the caller to add to ``y`` in order; one block by BLAS, with no parts."""
    m, d = x.shape
    n = kernel.shape[1]
    *blocks, last = _part_blocks(m, d, n)
    if not blocks:
        return np.matmul(x, kernel), np.empty((0, m, n), np.float32)
    y = np.empty((m, n), np.float32)
    parts = scratch.buffer("dense parts", (len(blocks), m, n), np.float32)
    a, b, c, size = x.ctypes.data, kernel.ctypes.data, parts.ctypes.data, x.itemsize

    def part(block: tuple[int, int], out: int) -> tuple[int, ...]:
        lo, hi = block
        return (PRODUCT, a + size * lo, d, 1, b + size * lo * n, n, out, n, m, n,
                hi - lo, 0)  # fmt: skip

    outs = [c + size * i * m * n for i in range(len(blocks))]
    parallel.over_parts([*map(part, blocks, outs), part(last, y.ctypes.data)])
    return y, parts


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
    blocks = _posted_blocks(dy, x, kernel, input_gradient, update)
    if len(blocks) > 1:
        dy = np.ascontiguousarray(dy)
        return _posted_backward(dy, x, kernel, input_gradient, blocks, update)
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

    parallel.over_batch(inputs, d, _grain(len(x), units, _MIN_WORK))
    return dx, dkernel, column_sums(dy)


def _posted_blocks(dy, x, kernel, input_gradient, update) -> list[tuple[int, int]]:
    """The blocks of inputs of :func:`_posted_backward` (:func:`_part_blocks`), where it can
    run: float32 (:func:`_tiled`), and no update of the kernel's rows or Adam's
    (:class:`cnnlab.engine.optimizers.AdamRows`), which runs in compiled code too; none where
    it cannot. The caller keeps one block to BLAS on the calling thread, as fast as the tiles
    on one."""
    adam = update is None or (isinstance(update, AdamRows) and update.weight is kernel)
    if not (adam and dy.dtype == np.float32 and _tiled(x, kernel)):
        return []
    (m, d), n = x.shape, kernel.shape[1]
    return _part_blocks(m, d, n * (2 if input_gradient else 1))


def _part_blocks(rows: int, inputs: int, work: int) -> list[tuple[int, int]]:
    """The blocks of ``inputs`` inputs, one for each thread that pays, for parts posted to
    the threads: each input ``rows x work`` multiply-adds, each part at least
    :data:`_MIN_PART`."""
    threads = min(parallel.num_threads(), inputs // _grain(rows, work, _MIN_PART))
    return parallel.batch_slices(inputs, threads)


def _posted_backward(dy, x, kernel, input_gradient, blocks, update):
    """:func:`dense_backward` in float32 as parts posted to the threads
    (:func:`cnnlab.engine.kernels.dense_backward_rows`, :func:`parallel.over_parts`): each a
    block of the inputs, its rows of the kernel gradient and of Adam's update, and its
    columns of ``dx``, by the tiles. The calling thread takes the last block, as in
    :func:`dense_forward`, so that each core's rows of the kernel stay in its cache from the
    update to the next forward pass."""
    m, d = x.shape
    n = kernel.shape[1]
    dkernel = np.empty_like(kernel)
    dx = np.empty((m, d), np.float32) if input_gradient else None
    at = [a.ctypes.data for a in (x, dy, kernel, dkernel)]
    if input_gradient:  # dx's columns, each block's first as rows of a buffer, from dy.T
        dy_t = np.ascontiguousarray(dy.T)
        buffer = scratch.buffer("dense dx blocks", (d, m), np.float32).ctypes.data
        at += [dy_t.ctypes.data, dx.ctypes.data]
    else:
        buffer, at = 0, at + [0, 0]
    x_at, dy_at, kernel_at, dkernel_at, dy_t_at, dx_at = at
    adam = (
        (0,) * 6 if update is None else (update.m.ctypes.data, update.v.ctypes.data, *update.bits)
    )
    parallel.over_parts([
        (DENSE_BACKWARD, x_at, dy_at, dy_t_at, kernel_at, dkernel_at, dx_at,
         buffer + 4 * lo * m, m, d, n, lo, hi, *adam)
        for lo, hi in blocks
    ])  # fmt: skip
    if update is not None:
        update.blocks.append(d)
    return dx, dkernel, column_sums(dy)


# Multiply-adds of one thread's share below which a thread costs more than it saves: a slice
# of Python waits tens of microseconds for its thread, a part posted in compiled code a few
# (a core does about 4M multiply-adds in 0.1 ms).
_MIN_WORK = 4_000_000
_MIN_PART = 2_000_000


def _grain(rows: int, units: int, work: int) -> int:
    """The fewest inputs worth a thread, each ``rows x units`` multiply-adds."""
    return max(1, -(-work // (rows * units)))
