"""Compiled loops for the element-wise work of a step, col2im, Adam's update, and a conv's
forward chunks, which call BLAS as well (:func:`conv_forward_images`).

NumPy runs each element-wise operation as its own pass over memory, with a temporary array
for each, and adds col2im's windows back one short run of ``C`` values at a time. These loops,
compiled by numba, do the same arithmetic in one or two passes. Each loop is serial: the ops
that call it hand each core a slice of the rows (:mod:`cnnlab.engine.parallel`); numba's own
threads, measured, fought OpenBLAS's for the cores (benchmarks/README.md). Batch norm's loops
for a slice of a convolution's op (:func:`batchnorm_rows_forward`) wait in compiled code for
the other slices' sums (:func:`cnnlab.engine.shared.meet`). Each loop is the
plain formula of a function of :mod:`cnnlab.nn` (its docstring says which), and the tests
check that they agree. No fast-math: every operation rounds as IEEE says.

Shapes: ``(M, C)`` rows of channels (an NHWC map seen as ``(N*H*W, C)``) for batch norm, where
the sums are accumulated in float64 (a block of :data:`BLOCK` rows summed in the data's dtype
first); any shape, raveled, for the activations; ``(N, H, W, C)`` for col2im.
"""

from __future__ import annotations

import numba
import numpy as np

from cnnlab.engine import blas, tiles
from cnnlab.engine.shared import copy, floats, ints, meet

# error_model="numpy": a division by zero gives inf or nan, as in NumPy, instead of a check
# for Python's ZeroDivisionError at every division, which keeps LLVM from vectorising a loop
# (Adam's update: 1.0 ms against 0.1 ms for 614,400 weights).
_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")

# Batch norm's sums take BLOCK rows at a time in the data's dtype, in registers, then add the
# block's sums to the float64 totals, as a float64 sum of every row (its totals loaded and
# stored at each row, and half as many values a vector) ran at half the speed.
BLOCK = 16


@_compiled
def leaky_relu(x, slope, out):
    """``out = x if x > 0 else slope * x``, element by element (raveled arrays):
    :func:`cnnlab.nn.activations.leaky_relu`."""
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else slope * v


@_compiled
def leaky_relu_backward(dy, x, slope, out):
    """``out = dy if x > 0 else slope * dy``, element by element (raveled arrays):
    :func:`cnnlab.nn.activations.leaky_relu_backward`."""
    for i in range(x.size):
        out[i] = dy[i] if x[i] > 0 else slope * dy[i]


@_compiled
def shifted_sums(x, shift, group):
    """``x: (M, C)`` -> ``sum_i d`` and ``sum_i d**2`` per channel, ``d = x[i, c] - shift[c]``:
    the mean and the variance in one pass. With ``shift`` a row of ``x``, near the mean, a
    large mean costs the variance no precision (the shifted-data algorithm). The rows go in
    groups of ``group`` (a convolution's output: an image's rows), each in blocks of
    :data:`BLOCK` rows from its first, a block summed in ``x``'s dtype, the blocks and the
    rows left in float64, in row order."""
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    add_shifted_sums(x, shift, group, total, squares)
    return total, squares


@_compiled
def add_shifted_sums(x, shift, group, total, squares):
    """:func:`shifted_sums` of ``x``'s rows added to ``total`` and ``squares`` (float64): the
    sums of a slice's rows a chunk of whole groups at a time, as of all of them at once."""
    m, c = x.shape
    h, block = np.empty(c, x.dtype), np.empty((2, c), x.dtype)
    h[:] = shift  # a row of x: exact in its dtype
    sums = np.empty((2, c))  # written back once (a thread's rows of an array of all threads')
    sums[0], sums[1] = total, squares
    group = max(group, 1)  # (no rows: no groups)
    for start in range(0, m, group):
        stop = min(start + group, m)
        whole = stop - (stop - start) % BLOCK
        for i in range(start, whole, BLOCK):
            _shifted_block(x, i, h, block)
            for j in range(c):
                sums[0, j] += block[0, j]
                sums[1, j] += block[1, j]
        for i in range(whole, stop):
            for j in range(c):
                d = x[i, j] - h[j]
                sums[0, j] += d
                sums[1, j] += d * d
    total[:], squares[:] = sums[0], sums[1]


@_compiled
def _shifted_block(x, i, shift, block):
    """``block[0] = sum d``, ``block[1] = sum d**2`` over rows ``i:i + BLOCK`` of ``x``, in its
    dtype; BLOCK a constant, so that the sums stay in registers. The first row starts them
    (from zeros, the shifted sums of 32K values took 20-35 % longer)."""
    for j in range(x.shape[1]):
        d = x[i, j] - shift[j]
        total, squares = d, d * d
        for r in range(1, BLOCK):
            d = x[i + r, j] - shift[j]
            total += d
            squares += d * d
        block[0, j], block[1, j] = total, squares


@_compiled
def normalize(x, mean, scale, beta, slope, out):
    """``out = leaky((x - mean) * scale + beta)`` per channel of ``x: (M, C)``, where
    ``leaky(v) = v if v > 0 else slope * v``.

    ``scale = gamma * inv_std``: batch norm's normalize, scale and shift in one pass, with the
    (leaky) ReLU that follows it in the same pass; ``slope = 1`` is batch norm alone.
    """
    m, c = x.shape
    for i in range(m):
        for j in range(c):
            v = (x[i, j] - mean[j]) * scale[j] + beta[j]
            out[i, j] = v if v > 0 else slope * v


@_compiled
def normalize_in_place(x, mean, scale, beta, slope):
    """:func:`normalize` with ``out = x``, as a loop of its own: given ``x`` twice, the loop
    above is not vectorised, as the two arrays overlap (512K values: 269 us, against 50 us
    here and 59 us into a second array)."""
    m, c = x.shape
    for i in range(m):
        for j in range(c):
            v = (x[i, j] - mean[j]) * scale[j] + beta[j]
            x[i, j] = v if v > 0 else slope * v


@_compiled
def normalize_backward_sums(dy, x, mean, inv_std, scale, beta, slope):
    """``dbeta = sum_i g``, ``dgamma = sum_i g * x_hat`` with ``x_hat = (x - mean) * inv_std``,
    in float64 (blocks of :data:`BLOCK` rows in the dtype, as :func:`shifted_sums`).

    ``g`` is the gradient at batch norm's output: ``dy`` back through the (leaky) ReLU of
    :func:`normalize`, whose input is recomputed, ``g = dy if v > 0 else slope * dy``.
    """
    m, c = x.shape
    dbeta, dgamma, block = np.zeros(c), np.zeros(c), np.empty((2, c), x.dtype)
    whole = m - m % BLOCK
    for i in range(0, whole, BLOCK):
        _backward_block(dy, x, i, mean, inv_std, scale, beta, slope, block)
        for j in range(c):
            dbeta[j] += block[0, j]
            dgamma[j] += block[1, j]
    for i in range(whole, m):
        for j in range(c):
            v = (x[i, j] - mean[j]) * scale[j] + beta[j]
            g = dy[i, j] if v > 0 else slope * dy[i, j]
            dbeta[j] += g
            dgamma[j] += g * ((x[i, j] - mean[j]) * inv_std[j])
    return dbeta, dgamma


@_compiled
def _backward_block(dy, x, i, mean, inv_std, scale, beta, slope, block):
    """``block[0] = sum g``, ``block[1] = sum g * x_hat`` over rows ``i:i + BLOCK``, in the
    dtype (:func:`normalize_backward_sums`); the first row starts them, as in
    :func:`_shifted_block`."""
    for j in range(x.shape[1]):
        d = x[i, j] - mean[j]
        g = dy[i, j] if d * scale[j] + beta[j] > 0 else slope * dy[i, j]
        dbeta, dgamma = g, g * (d * inv_std[j])
        for r in range(1, BLOCK):
            d = x[i + r, j] - mean[j]
            g = dy[i + r, j] if d * scale[j] + beta[j] > 0 else slope * dy[i + r, j]
            dbeta += g
            dgamma += g * (d * inv_std[j])
        block[0, j], block[1, j] = dbeta, dgamma


@_compiled
def normalize_backward(dy, x, mean, inv_std, scale, beta, slope, dbeta_m, dgamma_m, out,
                       totals=None):  # fmt: skip
    """``out = scale * (g - dbeta/m - x_hat * dgamma/m)``, ``scale = gamma * inv_std``, with
    ``g`` as in :func:`normalize_backward_sums`; and, given ``totals`` (float64, ``(C,)``),
    ``out``'s column sums added to it: the bias gradient of a convolution before batch norm.
    They are added in an array of the call's own and written once: ``totals`` is a thread's
    row in an array of all the threads', whose neighbours' lines the others write."""
    if totals is None:
        _normalize_backward(dy, x, mean, inv_std, scale, beta, slope, dbeta_m, dgamma_m, out,
                            None)  # fmt: skip
    else:
        sums = totals.copy()
        _normalize_backward(dy, x, mean, inv_std, scale, beta, slope, dbeta_m, dgamma_m, out,
                            sums)  # fmt: skip
        totals[:] = sums


@_compiled
def _normalize_backward(dy, x, mean, inv_std, scale, beta, slope, dbeta_m, dgamma_m, out, sums):
    m, c = x.shape
    for i in range(m):
        for j in range(c):
            v = (x[i, j] - mean[j]) * scale[j] + beta[j]
            g = dy[i, j] if v > 0 else slope * dy[i, j]
            x_hat = (x[i, j] - mean[j]) * inv_std[j]
            out[i, j] = scale[j] * (g - dbeta_m[j] - x_hat * dgamma_m[j])
            if sums is not None:
                sums[j] += out[i, j]


@_compiled
def batchnorm_rows_forward(x, start, stop, group, gamma, beta, epsilon, slope, flags, index, sums,
                           stats, out):  # fmt: skip
    """Batch norm's training forward pass and the (leaky) ReLU after it on rows
    ``start:stop`` of ``x: (M, C)`` (groups of ``group`` rows in the sums), in slice ``index`` of
    :func:`cnnlab.engine.parallel.over_batch_meeting` (two meetings), for
    :func:`cnnlab.engine.batchnorm.batchnorm_train_forward` and after a convolution
    (:mod:`cnnlab.engine.conv_batchnorm`).

    Once every slice has written its rows of ``x`` (the first meeting), the sums of
    :func:`shifted_sums` of its rows, shifted by ``x[0]``, go to ``sums[index]`` (float64,
    ``(slices, 2, C)``); once all are there (the second), every slice adds them up in slice
    order into ``stats[index]`` (``x``'s dtype, ``(slices, 4, C)``): ``mean``, ``var``,
    ``inv_std = 1 / sqrt(var + epsilon)`` and ``scale = gamma * inv_std``, each rounded to the
    dtype as NumPy's would be, and :func:`normalize` writes ``out``'s rows.
    False if another slice failed."""
    if not meet(flags[0], index):
        return False
    sums[index, 0], sums[index, 1] = shifted_sums(x[start:stop], _shift(x), group)
    if not batchnorm_statistics(x, gamma, epsilon, flags[1], index, sums, stats):
        return False
    normalize(x[start:stop], stats[index, 0], stats[index, 3], beta, slope, out[start:stop])
    return True


@_compiled
def _shift(x):
    """The shift of :func:`shifted_sums`: ``x``'s first row, in float64."""
    shift = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        shift[j] = x[0, j]
    return shift


@_compiled
def batchnorm_statistics(x, gamma, epsilon, flags, index, sums, stats):
    """Once every slice has put the :func:`shifted_sums` of its rows of ``x`` (shifted by
    ``x[0]``, written by then) in ``sums`` (the meeting on the row ``flags``), slice
    ``index`` adds them up in slice order into ``stats[index]``: ``mean``, ``var``,
    ``inv_std`` and ``scale`` (:func:`batchnorm_rows_forward`). False if another slice
    failed."""
    if not meet(flags, index):
        return False
    shift, m, mine = _shift(x), x.shape[0], stats[index]
    for j in range(x.shape[1]):
        total, squares = 0.0, 0.0
        for other in range(flags.shape[0]):
            total += sums[other, 0, j]
            squares += sums[other, 1, j]
        total /= m
        var = squares / m - total * total
        mine[0, j] = shift[j] + total
        mine[1, j] = var if not var < 0.0 else 0.0  # NaN stays NaN, as with np.maximum
        mine[2, j] = mine[1, j] + epsilon
        mine[2, j] = np.sqrt(mine[2, j])
        mine[2, j] = 1.0 / mine[2, j]
        mine[3, j] = gamma[j] * mine[2, j]
    return True


@_compiled
def batchnorm_rows_backward(dy, x, start, stop, mean, inv_std, scale, beta, slope, m, flags,
                            index, sums, grads, out, totals=None):  # fmt: skip
    """Batch norm's backward pass with the activation's, rows ``start:stop``, in slice
    ``index`` of :func:`cnnlab.engine.parallel.over_batch_meeting` (one meeting), for
    :func:`cnnlab.engine.batchnorm.batchnorm_train_backward` and after a convolution.

    ``mean``, ``inv_std`` and ``scale = gamma * inv_std``: the forward pass's; ``m``: the rows
    of ``x``, in its dtype. :func:`batchnorm_rows_backward_sums`, then
    :func:`normalize_backward` writes ``out``'s rows, and given ``totals`` (float64,
    ``(slices, C)``, zero before), their column sums in ``totals[index]``. False if another
    slice failed."""
    if not batchnorm_rows_backward_sums(dy, x, start, stop, mean, inv_std, scale, beta, slope,
                                        m, flags, index, sums, grads):  # fmt: skip
        return False
    mine, rows = grads[index], slice(start, stop)
    if totals is None:
        normalize_backward(dy[rows], x[rows], mean, inv_std, scale, beta, slope, mine[2],
                           mine[3], out[rows])  # fmt: skip
    else:
        normalize_backward(dy[rows], x[rows], mean, inv_std, scale, beta, slope, mine[2],
                           mine[3], out[rows], totals[index])  # fmt: skip
    return True


@_compiled
def batchnorm_rows_backward_sums(dy, x, start, stop, mean, inv_std, scale, beta, slope, m,
                                 flags, index, sums, grads):  # fmt: skip
    """The sums of batch norm's backward pass, for slice ``index`` of rows ``start:stop``
    (:func:`batchnorm_rows_backward`): its :func:`normalize_backward_sums` go to
    ``sums[index]`` (float64, ``(slices, 2, C)``); once all are there (the meeting on
    ``flags[0]``), it adds them up in slice order into ``grads[index]`` (the dtype's,
    ``(slices, 4, C)``): ``dbeta``, ``dgamma``, ``dbeta / m`` and ``dgamma / m``, which
    :func:`normalize_backward` takes. False if another slice failed."""
    rows = slice(start, stop)
    sums[index, 0], sums[index, 1] = normalize_backward_sums(
        dy[rows], x[rows], mean, inv_std, scale, beta, slope
    )
    if not meet(flags[0], index):
        return False
    mine = grads[index]
    for j in range(x.shape[1]):
        dbeta, dgamma = 0.0, 0.0
        for other in range(flags.shape[1]):
            dbeta += sums[other, 0, j]
            dgamma += sums[other, 1, j]
        mine[0, j], mine[1, j] = dbeta, dgamma
        mine[2, j] = mine[0, j] / m
        mine[3, j] = mine[1, j] / m
    return True


@_compiled
def col2im(dcols, sh, sw, top, left, dx):
    """:func:`cnnlab.nn.conv.col2im`, the adjoint of im2col, for a chunk of images.

    ``dx[n, i*sh + a - top, j*sw + b - left, c] += dcols[n, i, j, a, b, c]``.

    ``dcols: (N, oh, ow, kh, kw, C)``; ``dx: (N, H, W, C)`` is overwritten. What falls on the
    padding is dropped. NumPy would add one short run of ``C`` values per window pixel.
    """
    n, oh, ow, kh, kw, c = dcols.shape
    h, w = dx.shape[1], dx.shape[2]
    dx[:] = 0
    for img in range(n):
        for i in range(oh):
            for a in range(kh):
                r = i * sh + a - top
                if 0 <= r < h:
                    for j in range(ow):
                        for b in range(kw):
                            q = j * sw + b - left
                            if 0 <= q < w:
                                for ch in range(c):
                                    dx[img, r, q, ch] += dcols[img, i, j, a, b, ch]


@_compiled
def _products(gemm, rows, m, n, k, a, b, c, size):
    """``c = a @ b`` by BLAS's ``gemm``, ``rows`` rows of ``a`` and ``c`` a call (all ``m``
    at once for ``rows = 0``), for C-contiguous ``a: (m, k)``, ``b: (k, n)``, ``c: (m, n)``
    given by the addresses of their first elements (:mod:`cnnlab.engine.blas`), of ``size``
    bytes a value. A BLAS may run a small product without copying (packing) its matrices
    first, which pays for a narrow one (``tuning.ConvPlan.gemm_macs``)."""
    step = m if rows <= 0 else rows
    for i in range(0, m, step):
        r = min(step, m - i)
        blas.call_gemm(gemm, blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, r, n, k, 1.0,
                       a + i * k * size, k, b, n, 0.0, c + i * n * size, n)  # fmt: skip


@_compiled
def _products_t(gemm, rows, m, n, k, a, b, beta, c, size):
    """``c = a.T @ b + beta * c`` by ``gemm``, the sum over ``m`` taken ``rows`` rows of ``a:
    (m, k)`` and ``b: (m, n)`` a call (all at once for ``rows = 0``); ``c: (k, n)``; as
    :func:`_products`."""
    step = m if rows <= 0 else rows
    for i in range(0, m, step):
        r = min(step, m - i)
        first = beta if i == 0 else 1.0
        blas.call_gemm(gemm, blas.ROW_MAJOR, blas.TRANS, blas.NO_TRANS, k, n, r, 1.0,
                       a + i * k * size, k, b + i * n * size, n, first, c, n)  # fmt: skip


@_compiled
def pad_images(x, xp, top, left, start, stop):
    """``xp[start:stop, top : top + H, left : left + W] = x[start:stop]``, one
    :func:`~cnnlab.engine.shared.copy` per row of ``W * C`` values, for ``x: (N, H, W, C)`` and
    the padded ``xp``, both C-contiguous; the border of ``xp`` is left as it is."""
    _, h, w, c = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    size, x_at, xp_at = x.itemsize, x.ctypes.data, xp.ctypes.data
    for img in range(start, stop):
        for i in range(h):
            dst = ((img * hp + top + i) * wp + left) * c
            copy(xp_at + dst * size, x_at + (img * h + i) * w * c * size, w * c * size)


@_compiled
def _im2col(x, top, left, sh, sw, a, b, cols):
    """``cols[: b - a]``, the windows of images ``a:b`` of ``x``: one
    :func:`~cnnlab.engine.shared.copy` per window row (``kw * C`` consecutive values of ``x``),
    zeros where the row or part of it falls on the padding (``top`` rows above, ``left``
    columns before)."""
    _, h, w, c = x.shape
    _, oh, ow, kh, kw, _ = cols.shape
    size = x.itemsize
    flat = cols.reshape(-1)
    x_at, cols_at = x.ctypes.data, cols.ctypes.data
    dst = 0
    for img in range(a, b):
        for i in range(oh):
            for j in range(ow):
                q = j * sw - left  # the window's first column, maybe on the padding
                lo, hi = max(q, 0), min(q + kw, w)
                for p in range(kh):
                    r = i * sh + p - top
                    if 0 <= r < h and lo == q and hi == q + kw:
                        src = ((img * h + r) * w + q) * c
                        copy(cols_at + dst * size, x_at + src * size, kw * c * size)
                    else:
                        for e in range(dst, dst + kw * c):
                            flat[e] = 0
                        if 0 <= r < h and lo < hi:
                            src = ((img * h + r) * w + lo) * c
                            at = dst + (lo - q) * c
                            copy(cols_at + at * size, x_at + src * size, (hi - lo) * c * size)
                    dst += kw * c


@_compiled
def _finish(out, bias, norm):
    """A chunk's output rows ``out: (M, F)`` finished in place: ``out += bias``, or with
    ``norm = (mean, scale, beta, slope)`` batch norm and the activation,
    ``leaky((out - mean) * scale + beta)`` (:func:`normalize_in_place`); ``bias`` may be
    None."""
    if norm is not None:
        normalize_in_place(out, norm[0], norm[1], norm[2], norm[3])
    elif bias is not None:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += bias[j]


@_compiled
def conv_forward_images(gemm, x, pads, strides, start, stop, kmat, cols, rows, bias, norm, y):
    """Images ``start:stop`` of a convolution, a chunk of ``len(cols)`` images at a time, each
    chunk copied into the cache, multiplied and finished there, all without the GIL.

    For each chunk: im2col (:func:`_im2col`); ``y = cols @ kmat`` by BLAS's ``gemm``,
    ``rows`` rows a call (:func:`_products`), or with ``gemm`` None (float32) by
    :func:`cnnlab.engine.tiles.product`; then
    either ``y += bias`` or, with ``norm = (mean, scale, beta, slope)``,
    ``y = leaky((y - mean) * scale + beta)`` (:func:`normalize_in_place`).

    ``x: (N, H, W, C)``, ``kmat: (kh*kw*C, F)``, ``cols: (step, oh, ow, kh, kw, C)``,
    ``y: (N, oh, ow, F)``, all C-contiguous and of one dtype, float32 or float64 (``gemm`` is
    ``cblas_sgemm`` or ``cblas_dgemm`` to match). ``pads = (top, left)``, ``strides = (sh,
    sw)``; ``bias`` may be None.
    """
    n = x.shape[0]
    step, oh, ow = cols.shape[0], cols.shape[1], cols.shape[2]
    k, f = kmat.shape
    per_image = oh * ow
    y2 = y.reshape(n * per_image, f)
    for a in range(start, stop, step):
        b = min(a + step, stop)
        _im2col(x, pads[0], pads[1], strides[0], strides[1], a, b, cols)
        m = (b - a) * per_image
        out = y2[a * per_image : b * per_image]
        if gemm is None:
            tiles.product(cols.ctypes.data, k, 1, kmat.ctypes.data, f, out.ctypes.data, f, m, f,
                          k, 0)  # fmt: skip
        else:
            _products(gemm, rows, m, f, k, cols.ctypes.data, kmat.ctypes.data, out.ctypes.data,
                      x.itemsize)  # fmt: skip
        _finish(out, bias, norm)


@_compiled
def conv_backward_images(gemm, x, pads, strides, start, stop, dy, kmat_t, cols, dcols, rows,
                         dkernel, dx, accumulate=False):  # fmt: skip
    """The kernel gradient of images ``start:stop`` of a convolution, and with ``dx`` (not
    None) their input gradient, a chunk of ``len(cols)`` images at a time, without the GIL.

    For each chunk: im2col (:func:`_im2col`); ``dkernel += cols.T @ dy`` by ``gemm``
    (:func:`_products_t`); and ``dcols = dy @ kmat.T`` (:func:`_products`, from ``kmat_t``,
    the kernel matrix transposed, ``(F, kh*kw*C)``), which :func:`col2im` adds into ``dx``;
    ``rows`` rows a call. With ``gemm`` None (float32), by :func:`cnnlab.engine.tiles.product`
    instead. ``dkernel: (kh*kw*C, F)`` is overwritten with the sum over the chunks (added to,
    with ``accumulate``); the shapes
    and dtypes are those of :func:`conv_forward_images`, ``dy: (N, oh, ow, F)``, ``dcols`` as
    ``cols``.
    """
    step, oh, ow = cols.shape[0], cols.shape[1], cols.shape[2]
    f, k = kmat_t.shape
    per_image = oh * ow
    size = x.itemsize
    dy2 = dy.reshape(dy.shape[0] * per_image, f)
    for a in range(start, stop, step):
        b = min(a + step, stop)
        _im2col(x, pads[0], pads[1], strides[0], strides[1], a, b, cols)
        m = (b - a) * per_image
        g = dy2[a * per_image : b * per_image]
        add = 1.0 if accumulate or a != start else 0.0
        if gemm is None:
            tiles.product(cols.ctypes.data, 1, k, g.ctypes.data, f, dkernel.ctypes.data, f, k, f,
                          m, int(add))  # fmt: skip
        else:
            _products_t(gemm, rows, m, f, k, cols.ctypes.data, g.ctypes.data, add,
                        dkernel.ctypes.data, size)  # fmt: skip
        if dx is not None:
            _gradient_by_columns(gemm, rows, g, kmat_t, dcols, strides, pads, dx[a:b])


@_compiled
def _gradient_by_columns(gemm, rows, dy, kmat_t, dcols, strides, pads, dx):
    """The input gradient ``dx`` of a chunk of images through im2col's columns: ``dcols = dy
    @ kmat.T`` by ``gemm``, ``rows`` rows a call (by the tiles for ``gemm`` None), which
    :func:`col2im` adds into ``dx``; ``dy: (len(dx) * oh * ow, F)``."""
    m, f = dy.shape
    k = kmat_t.shape[1]
    if gemm is None:
        tiles.product(dy.ctypes.data, f, 1, kmat_t.ctypes.data, k, dcols.ctypes.data, k, m, k, f,
                      0)  # fmt: skip
    else:
        _products(gemm, rows, m, k, f, dy.ctypes.data, kmat_t.ctypes.data, dcols.ctypes.data,
                  dy.itemsize)  # fmt: skip
    col2im(dcols[: len(dx)], strides[0], strides[1], pads[0], pads[1], dx)


@_compiled
def _pad_chunk(x, a, b, top, left, xp):
    """``xp[: b - a, top : top + H, left : left + W] = x[a:b]``, one
    :func:`~cnnlab.engine.shared.copy` per row of ``W * C`` values, for C-contiguous ``x: (N,
    H, W, C)`` and ``xp``; the border of ``xp`` is left as it is."""
    _, h, w, c = x.shape
    size = x.itemsize
    for img in range(a, b):
        for i in range(h):
            copy(xp[img - a, top + i].ctypes.data + left * c * size, x[img, i].ctypes.data,
                 w * c * size)  # fmt: skip


@_compiled
def conv_direct_forward_images(x, pads, strides, window, start, stop, kmat, xp, bias,
                               norm, y):  # fmt: skip
    """Images ``start:stop`` of a convolution straight from the input, without im2col, a chunk
    of ``len(xp)`` images at a time: the chunk copied into ``xp`` with its padding; then for
    each output row ``r``::

        y[img, r] = sum over the window's rows i of
                    xp[img, r * sh + i, windows of the row] @ kmat[i * kw * C : (i + 1) * kw * C]

    by :func:`cnnlab.engine.tiles.product_in_runs`, which reads the windows in place (one
    output pixel's ``kw * C`` values are consecutive in ``xp``, a run, the next row of its
    window a row of ``xp`` further on, the next pixel's ``sw * C`` values further on), one
    sum over as many rows of the window as have their weights fit in half of L1; then the
    bias, or with ``norm`` batch norm and the activation, as in :func:`conv_forward_images`.
    float32; ``window = (kh, kw)``, ``xp: (step, H + top + bottom, W + left + right, C)`` zero
    on its border, ``kmat: (kh*kw*C, F)``."""
    c = x.shape[3]
    step, wp = xp.shape[0], xp.shape[2]
    _, oh, ow, f = y.shape
    kh, kw = window
    sh, sw = strides
    span = kw * c  # values of one row of a window
    y2, weights = y.reshape(-1, f), np.int64(kmat.ctypes.data)
    group = max(1, tiles.L1_BYTES // 2 // (4 * span * f))  # rows of the window whose weights fit
    for a in range(start, stop, step):
        b = min(a + step, stop)
        _pad_chunk(x, a, b, pads[0], pads[1], xp)
        for img in range(a, b):
            for r in range(oh):
                out = np.int64(y[img, r].ctypes.data)
                for i in range(0, kh, group):
                    windows = np.int64(xp[img - a, r * sh + i].ctypes.data)
                    tiles.product_in_runs(windows, sw * c, 1, span, wp * c - span,
                                          weights + 4 * i * span * f, f, out, f, ow, f,
                                          min(group, kh - i) * span, 1 if i else 0)  # fmt: skip
        _finish(y2[a * oh * ow : b * oh * ow], bias, norm)


@_compiled
def conv_direct_backward_images(x, pads, strides, window, start, stop, dy, weights, xp, dyp,
                                dcols, dkernel, dx, accumulate=False):  # fmt: skip
    """The kernel gradient of images ``start:stop`` of a convolution straight from the input,
    without im2col, and with ``dx`` (not None) their input gradient, a chunk of ``len(xp)``
    images at a time.

    For each image and row ``i`` of the window, ``dkernel[i * kw * C : (i + 1) * kw * C] +=
    sum over the output rows r of xp[img, r * sh + i, windows of the row].T @ dy[img, r]`` by
    :func:`cnnlab.engine.tiles.product_in_runs`, the windows read in place as in
    :func:`conv_direct_forward_images`, a row of them a run: one sum over the image's output.
    ``dkernel: (kh*kw*C, F)`` is overwritten with the sum (added to, with ``accumulate``). With
    ``dx`` and ``dyp``: the chunk's ``dy`` copied into ``dyp`` with its border, and
    :func:`conv_direct_input_gradient` from it (``weights``: the kernel's taps in the order of
    :func:`taps_by_phase`, ``(kh*kw*F, C)``); with ``dx`` and ``dcols`` instead, through
    im2col's columns by the tiles (:func:`_gradient_by_columns`, ``weights`` the kernel matrix
    transposed, ``(F, kh*kw*C)``). float32; shapes as in :func:`conv_direct_forward_images`,
    ``dyp`` as :func:`padded_gradient_shape` gives, ``dcols: (step, oh, ow, kh, kw, C)``."""
    c = x.shape[3]
    step, wp = xp.shape[0], xp.shape[2]
    _, oh, ow, f = dy.shape
    kh, kw = window
    sh, sw = strides
    span = kw * c
    border = input_gradient_padding(window, strides)
    for a in range(start, stop, step):
        b = min(a + step, stop)
        _pad_chunk(x, a, b, pads[0], pads[1], xp)
        for img in range(a, b):
            g = np.int64(dy[img].ctypes.data)
            add = 0 if img == start and not accumulate else 1
            for i in range(kh):
                windows = np.int64(xp[img - a, i].ctypes.data)
                out = np.int64(dkernel[i * span].ctypes.data)
                tiles.product_in_runs(windows, 1, sw * c, ow, sh * wp * c - ow * sw * c, g, f,
                                      out, f, span, f, oh * ow, add)  # fmt: skip
        if dx is None:
            continue
        if dyp is not None:  # (two ifs: numba compiles only the one whose buffer is given)
            _pad_chunk(dy, a, b, border[0], border[1], dyp)
            conv_direct_input_gradient(dyp[: b - a], pads, strides, window, weights, dx[a:b])
        if dcols is not None:
            g = dy.reshape(-1, f)[a * oh * ow : b * oh * ow]
            _gradient_by_columns(None, 0, g, weights, dcols, strides, pads, dx[a:b])


@_compiled
def _taps(size, stride, phase):
    """How many of a window's ``size`` taps along one axis (of ``stride``) have the phase
    ``phase``: the taps ``phase``, ``phase + stride``, ... below ``size``."""
    return max(0, (size - phase + stride - 1) // stride)


@_compiled
def taps_by_phase(window, strides):
    """The taps ``(i, j)`` of a ``window = (kh, kw)`` kernel in the order of
    :func:`conv_direct_input_gradient`'s weights, ``(kh*kw, 2)``: phase by phase (``i % sh``,
    then ``j % sw``), and within a phase the last tap first (it meets the first row of the
    output gradient a pixel of that phase reads)."""
    kh, kw = window
    sh, sw = strides
    order = np.empty((kh * kw, 2), np.int64)
    n = 0
    for ry in range(sh):
        ty = _taps(kh, sh, ry)
        for rx in range(sw):
            tx = _taps(kw, sw, rx)
            for ey in range(ty):
                for ex in range(tx):
                    order[n, 0], order[n, 1] = ry + (ty - 1 - ey) * sh, rx + (tx - 1 - ex) * sw
                    n += 1
    return order


@_compiled
def input_gradient_padding(window, strides):
    """The zero rows above and columns left of the output gradient that
    :func:`conv_direct_input_gradient` reads: one fewer than a phase's most taps."""
    return _taps(window[0], strides[0], 0) - 1, _taps(window[1], strides[1], 0) - 1


@_compiled
def padded_gradient_shape(x_hw, out_hw, pads, strides, window):
    """The rows and columns of the output gradient with the zeros around it that
    :func:`conv_direct_input_gradient` reads: :func:`input_gradient_padding` before it, and
    after it as many as the windows of the input's last row and column reach (more than the
    output's where "valid" padding leaves input pixels that no window holds)."""
    border = input_gradient_padding(window, strides)
    rows = border[0] + max(out_hw[0], (x_hw[0] - 1 + pads[0]) // strides[0] + 1)
    return rows, border[1] + max(out_hw[1], (x_hw[1] - 1 + pads[1]) // strides[1] + 1)


@_compiled
def conv_direct_input_gradient(dyp, pads, strides, window, by_phase, dx):
    """The input gradient of a convolution, each input pixel's sum over the output pixels whose
    windows hold it, straight from the output gradient, without im2col or col2im::

        dx[n, y, x, :] = sum over i, j, with (y + top - i) = oy * sh, (x + left - j) = ox * sw,
                         of dy[n, oy, ox, :] @ kernel[i, j].T

    The taps that meet a pixel depend only on its phase, ``((y + top) % sh, (x + left) % sw)``,
    and are ``ty x tx`` of them, the output pixels they meet a ``ty x tx`` window of ``dy``: so
    each phase is a convolution with strides 1 of ``dy`` with its own taps, turned, whose
    outputs are every ``sh``-th row and ``sw``-th pixel of ``dx`` (one phase for strides 1; four
    of 2x2, 2x1, 1x2 and 1x1 taps for a 3x3 kernel with strides 2, none of them zero). Each row
    of a phase is one :func:`cnnlab.engine.tiles.product_in_runs` reading its windows in place
    in ``dyp``, as :func:`conv_direct_forward_images` does, and writing to ``dx`` a pixel in
    ``sw``: every value of ``dx`` is written once, with no scatter and no sums added in memory.

    float32; ``dyp: (N, border[0] + rows, border[1] + columns, F)`` the output gradient with
    zeros around it (``border`` of :func:`input_gradient_padding`, and enough rows and columns
    after it for every pixel's window), ``by_phase: (kh*kw*F, C)``, the kernel's taps
    ``kernel[i, j].T`` in the order of :func:`taps_by_phase`; ``dx: (N, H, W, C)`` is
    overwritten (its pixels that no window holds with zeros)."""
    n, h, w, c = dx.shape
    f, wp = dyp.shape[3], dyp.shape[2]
    kh, kw = window
    sh, sw = strides
    top, left = pads
    border = input_gradient_padding(window, strides)
    following = np.int64(by_phase.ctypes.data)  # the next phase's taps
    for ry in range(sh):
        ty = _taps(kh, sh, ry)
        y0 = (ry - top) % sh  # the phase's first row of dx
        for rx in range(sw):
            tx = _taps(kw, sw, rx)
            x0 = (rx - left) % sw
            k = ty * tx * f
            weights, following = following, following + 4 * k * c
            pixels = (w - x0 + sw - 1) // sw  # of the phase in a row of dx
            if pixels <= 0:
                continue
            ox = (x0 + left - rx) // sw - tx + 1 + border[1]  # its first window's column
            for img in range(n):
                for y in range(y0, h, sh):
                    if k == 0:  # no tap has this phase (a kernel narrower than its strides)
                        dx[img, y, x0::sw] = 0
                        continue
                    oy = (y + top - ry) // sh - ty + 1 + border[0]
                    tiles.product_in_runs(np.int64(dyp[img, oy, ox].ctypes.data), f, 1, tx * f,
                                          (wp - tx) * f, weights, c,
                                          np.int64(dx[img, y, x0].ctypes.data), sw * c, pixels,
                                          c, k, 0)  # fmt: skip


@_compiled
def adam_update(weight, grad, m, v, one_minus_beta_1, one_minus_beta_2, alpha, epsilon):
    """One Adam step in place, element by element (raveled arrays), Keras's form, as
    :func:`cnnlab.nn.optimizers.adam_update`::

    m += (g - m) * (1 - beta_1);   v += (g**2 - v) * (1 - beta_2)
    w -= m / (sqrt(v) + epsilon) * alpha
    """
    for i in range(weight.size):
        g = grad[i]
        m_i = m[i] + (g - m[i]) * one_minus_beta_1
        v_i = v[i] + (g * g - v[i]) * one_minus_beta_2
        m[i] = m_i
        v[i] = v_i
        weight[i] = weight[i] - m_i / (np.sqrt(v_i) + epsilon) * alpha


@_compiled
def crossentropy_from_logits(z, labels, one_hot, grad):
    """Softmax cross-entropy from the logits ``z: (N, K)``, as
    :func:`cnnlab.nn.losses.crossentropy_from_logits`: returns the batch's summed loss (in
    float64) and writes ``grad = (softmax(z) - y) / N``::

        log_p = (z - max z) - log(sum exp(z - max z))     (each row)
        loss = -sum_k y_k * log_p_k

    The labels ``y`` are one-hot rows ``one_hot: (N, K)`` where ``labels`` is empty, else the
    class of each row, ``labels: (N,)`` (int64)."""
    n, k = z.shape
    total = 0.0
    count = z.dtype.type(n)
    sparse = labels.size > 0
    for i in range(n):
        top = z[i, 0]
        for j in range(1, k):
            top = max(top, z[i, j])
        exps = z.dtype.type(0)
        for j in range(k):
            exps += np.exp(z[i, j] - top)
        log_sum = np.log(exps)
        for j in range(k):
            log_p = (z[i, j] - top) - log_sum
            y = z.dtype.type(0)
            if sparse:
                if j == labels[i]:
                    y = z.dtype.type(1)
            else:
                y = one_hot[i, j]
            total -= y * log_p
            grad[i, j] = (np.exp(log_p) - y) / count
    return total


@_compiled
def activate_row(row, kind, slope):
    """A dense layer's activation on one row of its output, in place: none (``kind`` 0), the
    (leaky) ReLU ``v if v > 0 else slope * v`` of :func:`leaky_relu` (1), or the softmax of
    :func:`cnnlab.nn.activations.softmax` (2), ``exp(v - max) / sum(exp(v - max))``."""
    if kind == 1:
        for j in range(row.size):
            v = row[j]
            row[j] = v if v > 0 else slope * v
    elif kind == 2:
        top = row[0]
        for j in range(1, row.size):
            top = max(top, row[j])
        total = row.dtype.type(0)
        for j in range(row.size):
            row[j] = np.exp(row[j] - top)
            total += row[j]
        for j in range(row.size):
            row[j] = row[j] / total


@_compiled
def dense_finish(y, parts, count, bias, kind, slope, logits, first, last):
    """A dense layer's output from its threads' partial products, in place, rows ``first`` to
    ``last``::

        y = y + parts[0] + ... + parts[count - 1] + bias      (no bias where it is empty)
        logits = y                                           (where logits is not empty)
        y = activation(y)                                    (:func:`activate_row`)

    ``y, logits: (M, N)``, ``parts: (>= count, M, N)``, ``bias: (N,)``: the sums of
    :func:`cnnlab.nn.dense.dense_forward`, in the order NumPy's ``+=`` would add them."""
    n = y.shape[1]
    with_bias, keep = bias.size > 0, logits.size > 0
    for r in range(first, last):
        for t in range(count):
            for j in range(n):
                y[r, j] += parts[t, r, j]
        if with_bias:
            for j in range(n):
                y[r, j] += bias[j]
        if keep:
            logits[r] = y[r]
        activate_row(y[r], kind, slope)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def zeros_if_finite(values):
    """``sum(0 * v for v in values)`` of a 1-D float array: 0 when every value is finite, NaN
    when one is NaN or infinite (``0 * inf`` is NaN). Added in any order (LLVM's vector
    lanes), which cannot change a sum of zeros, nor a NaN: one pass at memory speed, on the
    calling thread."""
    total = values.dtype.type(0)
    for i in range(values.size):
        total += values[i] * values.dtype.type(0)
    return total


CHAIN_FIELDS = 11  # a layer's row in dense_chain_part's table


@_compiled
def _by_blas(gemm, trans, a, lda, b, ldb, c, ldc, m, n, k):
    """``c = op(a) @ b`` by NumPy's ``cblas_sgemm``, ``gemm`` its ``(address, wide)``
    (:func:`cnnlab.engine.blas.sgemm_address`), for row-major float32 at these addresses,
    ``op(a)`` ``a`` or, with ``trans``, its transpose: where the dense chains multiply by BLAS
    instead of the tiles (:func:`cnnlab.engine.parallel.blas_products`)."""
    if m > 0:
        blas.call_gemm(gemm, blas.ROW_MAJOR, trans, blas.NO_TRANS, m, n, k, 1.0, a, lda, b, ldb,
                       0.0, c, ldc)  # fmt: skip


@_compiled
def dense_backward_rows(part):
    """One thread's block of inputs ``[lo, hi)`` of a float32 dense layer's backward pass,
    :func:`cnnlab.nn.dense.dense_backward` with ``x: (M, D)``, ``kernel: (D, N)``, ``dy: (M,
    N)``, and Adam's update of those rows of the kernel after it (:func:`adam_update`)::

        dkernel[lo:hi] = x[:, lo:hi].T @ dy
        dx[:, lo:hi] = (kernel[lo:hi] @ dy.T).T           (where dx is given: not 0)
        kernel[lo:hi], m[lo:hi], v[lo:hi] = Adam's step   (where m is given)

    ``part``: kind, then the addresses of ``x``, ``dy``, ``dy.T`` (contiguous), ``kernel``,
    ``dkernel``, ``dx`` and of this block's ``(hi - lo, M)`` buffer, then ``M, D, N, lo, hi``,
    the addresses of Adam's ``m`` and ``v``, and its four constants (:func:`adam_update`) as
    float64 bits (:func:`_dense_backward_block`)."""
    constants, dx = part.view(np.float64)[15:19], part[6]
    block = part[7] if dx != 0 else 0
    _dense_backward_block(part[1], part[2], part[3], part[4], part[5], dx, block, part[8],
                          part[9], part[10], part[11], part[12], 0, np.float32(0), 0, part[13],
                          part[14], constants, None)  # fmt: skip


@_compiled
def _dense_backward_block(x, dy, dy_t, kernel, dkernel, dx, block, m, d, n, lo, hi, kind, slope,
                          dbias, adam_m, adam_v, constants, gemm):  # fmt: skip
    """A block of inputs ``[lo, hi)`` of a float32 dense layer's backward pass, the arrays
    given by their addresses (``x: (M, D)``, ``kernel: (D, N)``, ``dy: (M, N)`` and ``dy.T``
    contiguous)::

        dkernel[lo:hi] = x[:, lo:hi].T @ dy
        g = kernel[lo:hi] @ dy.T                 into ``block``, (hi - lo, M) (0: none)
        g = g if x.T[lo:hi] > 0 else slope * g  (kind 1: x the output of a (leaky) ReLU)
        dx[:, lo:hi] = g.T;  dbias[lo:hi] = g.sum(axis=1)   (where given: not 0)
        kernel[lo:hi], m[lo:hi], v[lo:hi] = Adam's step    (where m is given)

    ``g`` is the gradient at ``x``, and with ``kind`` 1 at the values before the activation
    whose output ``x`` is (a (leaky) ReLU's output is above 0 exactly where its input is):
    the gradient ``dy`` and the bias gradient of the layer before. The products are
    :mod:`cnnlab.engine.tiles`' (``gemm`` None), or BLAS's (:func:`_by_blas`); ``g`` reads
    each row of the kernel before Adam changes it (with ``constants``, float64:
    :func:`adam_update`'s four, after ``v``)."""
    rows = hi - lo
    if gemm is None:
        tiles.product(x + 4 * lo, 1, d, dy, n, dkernel + 4 * lo * n, n, rows, n, m, 0)
    else:
        _by_blas(gemm, blas.TRANS, x + 4 * lo, d, dy, n, dkernel + 4 * lo * n, n, rows, n, m)
    if block != 0:
        if gemm is None:
            tiles.product(kernel + 4 * lo * n, n, 1, dy_t, m, block, m, rows, m, n, 0)
        else:
            _by_blas(gemm, blas.NO_TRANS, kernel + 4 * lo * n, n, dy_t, m, block, m, rows, m, n)
        g, inputs = floats(block, rows * m), floats(x, m * d)
        out, sums = floats(dx, m * d if dx != 0 else 0), floats(dbias, d if dbias != 0 else 0)
        for i0 in range(0, rows, 16):  # 16 rows of the block at a time, which stay in L1
            i1 = min(i0 + 16, rows)
            for r in range(m):
                for i in range(i0, i1):
                    value = g[i * m + r]
                    if kind == 1 and not inputs[r * d + lo + i] > 0:
                        value = slope * value
                        g[i * m + r] = value
                    if dx != 0:
                        out[r * d + lo + i] = value
            if dbias != 0:
                for i in range(i0, i1):
                    total = np.float32(0)
                    for r in range(m):
                        total += g[i * m + r]
                    sums[lo + i] = total
    if adam_m != 0:
        start, size = 4 * lo * n, rows * n
        adam_update(
            floats(kernel + start, size), floats(dkernel + start, size),
            floats(adam_m + start, size), floats(adam_v + start, size),
            np.float32(constants[0]), np.float32(constants[1]), np.float32(constants[2]),
            np.float32(constants[3]),
        )  # fmt: skip


# The fields of a layer's row in dense_chain_backward_part's table
CHAIN_X, CHAIN_KERNEL, CHAIN_DKERNEL, CHAIN_DY, CHAIN_DY_T, CHAIN_D, CHAIN_N = range(7)
CHAIN_DX, CHAIN_DX_T, CHAIN_KIND, CHAIN_SLOPE, CHAIN_DBIAS, CHAIN_M, CHAIN_V = range(7, 14)
CHAIN_ADAM, CHAIN_BACKWARD_FIELDS = 14, 18  # Adam's four constants from CHAIN_ADAM


@_compiled
def dense_chain_backward_part(part, gemm):
    """Part ``index`` of ``threads`` of the backward pass of float32 dense layers one after
    the other (:func:`dense_chain_part`'s, in training), from the last layer to the first,
    each part a block of each layer's inputs (:func:`_dense_backward_block`): the rows of the
    kernel gradient and of Adam's update, and the columns of the gradient at the layer's
    input, which is the next layer's ``dy`` once the activation of the layer before is taken
    back through, with that layer's bias gradient. The parts meet between layers, each
    layer's ``dy`` being every part's.

    ``part``: kind, the address of the table, its layers, ``index``, ``threads``, the address
    of the flags (int64, a row of ``threads`` for each layer, zeros), and ``M``, the rows. The
    table has a row of :data:`CHAIN_BACKWARD_FIELDS` for each layer: the addresses of ``x:
    (M, D)``, ``kernel``, ``dkernel: (D, N)``, ``dy: (M, N)`` and ``dy.T``, then ``D``,
    ``N``, the addresses of ``dx: (M, D)`` and ``dx.T`` (0: none; the layer before's ``dy``
    and ``dy.T``), the activation that gave ``x`` (1: a (leaky) ReLU, else 0), its slope as
    float64 bits, the address of the layer before's bias gradient (0: none), of Adam's ``m``
    and ``v`` (0: no update) and its four constants as float64 bits. ``gemm``: None, the tiles
    multiply, or BLAS's ``(address, wide)`` (:func:`_by_blas`)."""
    layers, index, threads, m = part[2], part[3], part[4], part[6]
    table = ints(part[1], layers, CHAIN_BACKWARD_FIELDS)
    bits = table.view(np.float64)
    flags = ints(part[5], layers, threads)
    for layer in range(layers - 1, -1, -1):
        t = table[layer]
        d = t[CHAIN_D]
        lo, hi = d * index // threads, d * (index + 1) // threads
        block = 0 if t[CHAIN_DX_T] == 0 else t[CHAIN_DX_T] + 4 * lo * m
        slope, adam = np.float32(bits[layer, CHAIN_SLOPE]), bits[layer, CHAIN_ADAM:]
        _dense_backward_block(t[CHAIN_X], t[CHAIN_DY], t[CHAIN_DY_T], t[CHAIN_KERNEL],
                              t[CHAIN_DKERNEL], t[CHAIN_DX], block, m, d, t[CHAIN_N], lo, hi,
                              t[CHAIN_KIND], slope, t[CHAIN_DBIAS], t[CHAIN_M], t[CHAIN_V],
                              adam, gemm)  # fmt: skip
        if layer > 0:
            meet(flags[layer], index)


@_compiled
def dense_chain_part(part, gemm):
    """Part ``index`` of ``threads`` of float32 dense layers one after the other at inference,
    each ``y = activation(x @ kernel + bias)`` as :func:`dense_finish` finishes it, the threads
    meeting in compiled code (:func:`cnnlab.engine.shared.meet`) instead of returning to
    Python between layers. Each part owns a block of the rows, ``y[first:last]``. A layer
    split by its inputs: this part multiplies its block of the inputs into its row of
    ``parts``, meets the others, and adds up every part (in order), the bias and the
    activation for its rows. A layer split by rows: this part multiplies its rows of ``x`` by
    the whole kernel and finishes them, with no meeting (for a small kernel, which each core
    reads whole, rather than adding up parts written by the other cores). The parts meet
    again after a layer when the next is split by its inputs, which reads every row.

    ``part``: kind, the address of the table, its layers, ``index``, ``threads``, the address
    of the flags (int64, two rows of ``threads`` for each layer, zeros), and ``M``, the rows.
    The table has a row of :data:`CHAIN_FIELDS` for each layer: the addresses of ``x: (M,
    D)``, ``kernel: (D, N)``, ``bias: (N,)`` (0: none), ``y: (M, N)`` and ``parts: (threads,
    M, N)`` (0 for a layer split by rows), then ``D``, ``N``, the activation's kind
    (:func:`activate_row`), its slope as float64 bits, the address of an ``(M, N)`` array for
    the values before the activation (0: none), and 1 for a layer split by rows, else 0.
    ``gemm``: None, the tiles multiply, or BLAS's ``(address, wide)`` (:func:`_by_blas`)."""
    layers, index, threads, m = part[2], part[3], part[4], part[6]
    table = ints(part[1], layers, CHAIN_FIELDS)
    slopes = table.view(np.float64)
    flags = ints(part[5], 2 * layers, threads)
    first, last = m * index // threads, m * (index + 1) // threads
    for layer in range(layers):
        x, kernel, bias, y = table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3]
        sums, d, n, logits = table[layer, 4], table[layer, 5], table[layer, 6], table[layer, 9]
        out = floats(y, m * n).reshape((m, n))
        kept = floats(logits, m * n if logits != 0 else 0).reshape((m if logits != 0 else 0, n))
        kind, slope = table[layer, 7], np.float32(slopes[layer, 8])
        biases = floats(bias, n if bias != 0 else 0)
        if table[layer, 10] != 0:
            if gemm is None:
                tiles.product(x + 4 * first * d, d, 1, kernel, n, y + 4 * first * n, n,
                              last - first, n, d, 0)  # fmt: skip
            else:
                _by_blas(gemm, blas.NO_TRANS, x + 4 * first * d, d, kernel, n, y + 4 * first * n,
                         n, last - first, n, d)  # fmt: skip
            partial = out[:0].reshape((0, m, n))
        else:
            lo, hi = d * index // threads, d * (index + 1) // threads
            if gemm is None:
                tiles.product(x + 4 * lo, d, 1, kernel + 4 * lo * n, n, sums + 4 * index * m * n,
                              n, m, n, hi - lo, 0)  # fmt: skip
            else:
                _by_blas(gemm, blas.NO_TRANS, x + 4 * lo, d, kernel + 4 * lo * n, n,
                         sums + 4 * index * m * n, n, m, n, hi - lo)  # fmt: skip
            meet(flags[2 * layer], index)
            partial = floats(sums, threads * m * n).reshape((threads, m, n))
            out[first:last] = partial[0, first:last]
            partial = partial[1:]
        dense_finish(out, partial, len(partial), biases, kind, slope, kept, first, last)
        if layer + 1 < layers and table[layer + 1, 10] == 0:
            meet(flags[2 * layer + 1], index)
