"""A convolution, the batch norm after it and its (leaky) ReLU, in training, as one op: the
numbers of :func:`cnnlab.engine.conv.conv2d_forward` and
:func:`cnnlab.engine.batchnorm.batchnorm_train_forward` one after the other (and of their
backward passes), with one hand-over to the threads each way instead of up to three.

In float32 each thread's slice is one compiled part (:mod:`cnnlab.engine.parts`), posted to
it without Python: forward, a chunk of its images at a time, the convolution and the chunk's
rows added to batch norm's sums while they are in the cache; the threads meet in compiled
code for the batch's sums, and each normalizes its rows with the activation. Backward, each
takes batch norm's gradient back over its rows for the sums, meets the others, then a chunk
of images at a time writes the gradient at the convolution's output into a buffer that stays
in its cache, adding up the conv's bias gradient as it goes, and runs the convolution's
backward pass on the chunk. In other dtypes the slices run as Python calls of compiled loops
(:func:`cnnlab.engine.parallel.over_batch_meeting`,
:func:`cnnlab.engine.kernels.batchnorm_rows_forward`), the gradient at the convolution's output
written whole: the same sums in the same order. Batch norm
alone splits over the threads only from a size up (:func:`cnnlab.engine.tuning.batchnorm_grain`),
as each hand-over costs about as much as a pass over tens of thousands of values; here it rides
on the convolution's hand-over, and runs on every core at every size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.engine import conv, kernels, parallel, parts
from cnnlab.engine.conv import conv2d_backward_plan, conv2d_forward_plan
from cnnlab.nn.conv import ConvCache


class ConvBatchNormCache(NamedTuple):
    """What the backward pass needs: the convolution's cache, its output ``z``, batch norm's
    ``stats`` (mean, var, inv_std and scale, ``(4, F)``), ``beta`` and the activation's slope
    (1: none)."""

    conv: ConvCache
    z: np.ndarray
    stats: np.ndarray
    beta: np.ndarray
    slope: np.generic


def conv_batchnorm_train_forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int],
    padding: str,
    gamma: np.ndarray,
    beta: np.ndarray,
    epsilon: float,
    negative_slope: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ConvBatchNormCache]:
    """``y = leaky((z - mean) * gamma / sqrt(var + epsilon) + beta)`` for ``z = conv(x) +
    bias`` (``x: (N, H, W, C)``, ``kernel: (kh, kw, C, F)``), with the batch's ``mean`` and
    ``var`` of ``z`` per filter; ``leaky(v) = v if v > 0 else negative_slope * v`` (None: no
    activation). Returns ``y``, ``mean``, ``var`` (for the moving averages) and the cache."""
    if conv.by_parts(x, kernel, strides, padding):
        return _forward_by_parts(x, kernel, bias, strides, padding, gamma, beta, epsilon,
                                 negative_slope)  # fmt: skip
    z, images, conv_cache = conv2d_forward_plan(x, kernel, bias, strides, padding)
    n, oh, ow, f = z.shape
    y = np.empty_like(z)
    z2, y2 = z.reshape(-1, f), y.reshape(-1, f)
    threads, dtype = parallel.num_threads(), z.dtype.type
    sums, stats = np.empty((threads, 2, f)), np.empty((threads, 4, f), z.dtype)
    gamma, beta = (np.asarray(v, z.dtype) for v in (gamma, beta))
    slope = dtype(1.0 if negative_slope is None else negative_slope)
    rows = oh * ow

    def slice_(start: int, stop: int, index: int, flags: np.ndarray) -> None:
        images(start, stop)
        if not kernels.batchnorm_rows_forward(
            z2, start * rows, stop * rows, rows, gamma, beta, dtype(epsilon), slope, flags, index,
            sums, stats, y2,
        ):  # fmt: skip
            raise RuntimeError("another slice of the op failed")

    parallel.over_batch_meeting(slice_, n, meetings=2)
    cache = ConvBatchNormCache(conv_cache, z, stats[0].copy(), beta, slope)
    return y, cache.stats[0], cache.stats[1], cache


def _forward_by_parts(x, kernel, bias, strides, padding, gamma, beta, epsilon, negative_slope):
    """:func:`conv_batchnorm_train_forward` as one compiled part a thread
    (:func:`cnnlab.engine.parts.conv_bn_forward`)."""
    tables: dict[int, tuple] = {}
    slope = x.dtype.type(1.0 if negative_slope is None else negative_slope)

    def make(threads: int) -> list[tuple[int, ...]]:
        z, t, keep, cache = conv.forward_table(x, kernel, bias, strides, padding, threads)
        f = z.shape[-1]
        y, flags = np.empty_like(z), np.zeros((3, threads), np.int64)
        sums, stats = np.empty((threads, 2, f)), np.empty((threads, 4, f), z.dtype)
        gamma_, beta_ = (np.ascontiguousarray(v, z.dtype) for v in (gamma, beta))
        for field, array in ((parts.GAMMA, gamma_), (parts.BETA, beta_), (parts.FLAGS, flags),
                             (parts.SUMS, sums), (parts.STATS, stats), (parts.Y, y)):  # fmt: skip
            t[field] = array.ctypes.data
        floats = t.view(np.float64)
        floats[parts.EPSILON], floats[parts.SLOPE] = z.dtype.type(epsilon), slope
        tables[threads] = (z, y, stats, cache, t, keep, gamma_, beta_, flags, sums)
        return [(parts.CONV_BN_FORWARD, t.ctypes.data, index, len(t)) for index in range(threads)]

    parallel.over_meeting_parts(make)
    ((z, y, stats, conv_cache, *_),) = tables.values()
    cache = ConvBatchNormCache(conv_cache, z, stats[0].copy(), np.asarray(beta, z.dtype), slope)
    return y, cache.stats[0], cache.stats[1], cache


def conv_batchnorm_train_backward(
    dy: np.ndarray, cache: ConvBatchNormCache, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The gradients for ``dy``, the gradient at the activation's output: ``(dx, dkernel,
    dbias, dgamma, dbeta)`` (``dx`` None without ``input_gradient``)."""
    conv_cache, z, stats, beta, slope = cache
    x, kernel, strides, pads = conv_cache
    if conv.by_parts(x, kernel, strides, conv.padding_of(pads)):
        return _backward_by_parts(dy, cache, input_gradient)
    f = z.shape[-1]
    z2 = z.reshape(-1, f)
    dy2 = np.ascontiguousarray(dy, dtype=z.dtype).reshape(z2.shape)
    dz = np.empty_like(z)
    dz2 = dz.reshape(-1, f)
    dx, images = conv2d_backward_plan(dz, conv_cache, input_gradient, bias_gradient=False)
    threads, rows = parallel.num_threads(), z.shape[1] * z.shape[2]
    sums, grads = np.empty((threads, 2, f)), np.empty((threads, 4, f), z.dtype)
    totals = np.zeros((threads, f))  # each slice's column sums of dz: the bias gradient
    m = z.dtype.type(len(z2))

    def slice_(start: int, stop: int, index: int, flags: np.ndarray):
        if not kernels.batchnorm_rows_backward(
            dy2, z2, start * rows, stop * rows, stats[0], stats[2], stats[3], beta, slope, m,
            flags, index, sums, grads, dz2, totals,
        ):  # fmt: skip
            raise RuntimeError("another slice of the op failed")
        return images(start, stop)[0]

    parts = parallel.over_batch_meeting(slice_, len(z), meetings=1)
    dkernel = sum(parts).reshape(conv_cache.kernel.shape)
    dbias = totals[: len(parts)].sum(axis=0).astype(z.dtype)
    return dx, dkernel, dbias, grads[0, 1].copy(), grads[0, 0].copy()


def _backward_by_parts(dy, cache: ConvBatchNormCache, input_gradient: bool):
    """:func:`conv_batchnorm_train_backward` as one compiled part a thread
    (:func:`cnnlab.engine.parts.conv_bn_backward`)."""
    conv_cache, z, stats, beta, slope = cache
    f = z.shape[-1]
    dy = np.ascontiguousarray(dy, dtype=z.dtype)
    beta = np.ascontiguousarray(beta)
    tables: dict[int, tuple] = {}

    def make(threads: int) -> list[tuple[int, ...]]:
        dx, dkernels, t, keep = conv.backward_table(conv_cache, input_gradient, threads)
        flags, sums = np.zeros((1, threads), np.int64), np.empty((threads, 2, f))
        grads, totals = np.empty((threads, 4, f), z.dtype), np.zeros((threads, f))
        for field, array in ((parts.DY, dy), (parts.Z, z), (parts.FORWARD_STATS, stats),
                             (parts.BETA, beta), (parts.FLAGS, flags), (parts.SUMS, sums),
                             (parts.GRADS, grads), (parts.TOTALS, totals)):  # fmt: skip
            t[field] = array.ctypes.data
        floats = t.view(np.float64)
        floats[parts.SLOPE], floats[parts.ROWS] = slope, z.dtype.type(z.size // f)
        tables[threads] = (dx, dkernels, grads, totals, t, keep, flags, sums)
        return [(parts.CONV_BN_BACKWARD, t.ctypes.data, index, len(t)) for index in range(threads)]

    parallel.over_meeting_parts(make)
    ((dx, dkernels, grads, totals, *_),) = tables.values()
    dkernel = sum(dkernels).reshape(conv_cache.kernel.shape)
    dbias = totals.sum(axis=0).astype(z.dtype)
    return dx, dkernel, dbias, grads[0, 1].copy(), grads[0, 0].copy()
