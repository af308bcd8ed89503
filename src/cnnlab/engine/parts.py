"""The parts cnnlab's threads run in compiled code, posted to them where they wait
(:func:`cnnlab.engine.parallel.over_parts`): an int64 row, its kind first, then its arguments
(addresses of arrays, sizes, float constants as their float64 bits). A part runs from start
to end without the GIL, so a thread starts it within microseconds of its posting, where a
slice in Python first waits for the GIL (:mod:`cnnlab.engine.parallel`).

The kinds: one product by :mod:`cnnlab.engine.tiles` (:data:`PRODUCT`), a block of a dense
layer's backward pass (:func:`cnnlab.engine.kernels.dense_backward_rows`), a thread's part of
dense layers in a row, forward (:func:`cnnlab.engine.kernels.dense_chain_part`) and backward
in training (:func:`~cnnlab.engine.kernels.dense_chain_backward_part`), and a
thread's slice of the batch of a convolution with its batch norm and activation in training,
forward (:func:`conv_bn_forward`) and backward (:func:`conv_bn_backward`), in each way
:mod:`cnnlab.engine.conv` runs a float32 convolution: im2col, straight from the input, or by
Winograd, the products by cnnlab's tiles or NumPy's BLAS, called at its address
(:func:`cnnlab.engine.blas.call_gemm`). Those two read a table, whose fields
:func:`cnnlab.engine.conv.forward_table` and :func:`~cnnlab.engine.conv.backward_table`
write: what every thread shares, then a row of its own for each thread.
"""

from __future__ import annotations

import numba
import numpy as np

from cnnlab.engine import kernels, tiles, winograd
from cnnlab.engine.shared import doubles, floats, ints, load_acquire, meet, store_release

_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")

PRODUCT = 1  # tiles.product(*row[1:12])
DENSE_BACKWARD = 2  # kernels.dense_backward_rows(row)
DENSE_CHAIN = 3  # kernels.dense_chain_part(row, gemm): row[7:9] BLAS's (address, wide), or 0
CONV_BN_FORWARD = 4  # conv_bn_forward(table at row[1], thread row[2])
CONV_BN_BACKWARD = 5  # conv_bn_backward(table at row[1], thread row[2])
DENSE_CHAIN_BACKWARD = 6  # kernels.dense_chain_backward_part(row, gemm), as DENSE_CHAIN
PART_LENGTH = 19

# The ways a convolution runs (the table's WAY; DX_WAY backward)
IM2COL, DIRECT, WINOGRAD = 1, 2, 3

# The table's fields. The convolution: its input x: (N, H, W, C) and padded sizes, F filters
# of KH x KW, strides, padding before (TOP, LEFT), the output (OH, OW), images a chunk (STEP)
# and Winograd's tiles an image (TILES, forward; for the input gradient, TURNED_TILES).
WAY, X, N, H, W, C, HP, WP, F, KH, KW, SH, SW, TOP, LEFT, OH, OW, STEP = range(18)
TILES, TURNED_TILES = 18, 19
# Forward: the weights (kmat: (KH*KW*C, F); Winograd's u: (36, C, F)), the output z, the bias
# (0: none), and with Winograd the bias as its epilogue, (3, F): -bias, ones, zeros.
WEIGHTS, Z, BIAS, EPILOGUE = 20, 21, 22, 23
# Backward: kmat.T: (F, KH*KW*C) for im2col's input gradient, or the taps by phase (KH*KW*F,
# C) for the direct one; dx (0: none) and how it is made (DX_WAY: 0, through im2col's columns;
# DIRECT, straight from dz; WINOGRAD), Winograd's turned filters (36, F, C).
KMAT_T, DX, DX_WAY, TURNED = 24, 25, 26, 27
# Batch norm: gamma, beta, epsilon and the activation's slope (float64 bits), the flags of
# the meetings (meetings x threads), the slices' sums (threads, 2, F) float64, and forward
# the statistics (threads, 4, F), y; backward the gradient at the activation's output dy,
# the forward's statistics (4, F), the rows M (float64 bits), the gradients (threads, 4, F),
# and the column sums of dz, the gradient at the conv's output (threads, F) float64.
GAMMA, BETA, EPSILON, SLOPE, FLAGS, SUMS, STATS, Y = 28, 29, 30, 31, 32, 33, 34, 35
DY, FORWARD_STATS, ROWS, GRADS, TOTALS, THREADS = 36, 37, 38, 39, 40, 41
# What multiplies: cnnlab's tiles (GEMM 0), or NumPy's cblas_sgemm at the address GEMM, its
# sizes 64-bit integers where GEMM_WIDE is 1, GEMM_ROWS rows of a product a call (0: all).
GEMM, GEMM_WIDE, GEMM_ROWS = 42, 43, 44
# The kernel (3, 3, C, F), whose Winograd transform (into WEIGHTS forward, TURNED backward)
# the threads make first, each a share of its 36 rows.
KERNEL = 45
SHARED_FIELDS = 46
# A thread's row, after them: its images [START, STOP), its kernel gradient (KH*KW*C, F),
# its chunk buffer (im2col's columns, or the padded images read in place), the input
# gradient's buffer (im2col's columns, or the direct way's chunk of dz with zeros around it),
# Winograd's buffers V and M, and a chunk of dz (STEP, OH, OW, F).
START, STOP, DKERNEL, CHUNK, DX_CHUNK, V, M, DZ_CHUNK = range(8)
THREAD_FIELDS = 8


@_compiled
def run_part(part):
    """Run the part ``part`` describes (its kind first: :data:`PRODUCT`, ...)."""
    kind = part[0]
    if kind == PRODUCT:
        tiles.product(part[1], part[2], part[3], part[4], part[5], part[6], part[7], part[8],
                      part[9], part[10], part[11])  # fmt: skip
    elif kind == DENSE_BACKWARD:
        kernels.dense_backward_rows(part)
    elif kind == DENSE_CHAIN:  # a specialization for each way to multiply (_gemm)
        if part[7] == 0:
            kernels.dense_chain_part(part, None)
        else:
            kernels.dense_chain_part(part, _gemm(part))
    elif kind == DENSE_CHAIN_BACKWARD:
        if part[7] == 0:
            kernels.dense_chain_backward_part(part, None)
        else:
            kernels.dense_chain_backward_part(part, _gemm(part))
    elif kind == CONV_BN_FORWARD:
        conv_bn_forward(ints(part[1], 1, part[3])[0], part[2])
    elif kind == CONV_BN_BACKWARD:
        conv_bn_backward(ints(part[1], 1, part[3])[0], part[2])


@_compiled
def _gemm(part):
    """BLAS's ``(address, wide)`` in a dense chain's part, ``part[7:9]``."""
    return part[7], part[8]


@_compiled
def _array4(address, a, b, c, d):
    return floats(address, a * b * c * d).reshape((a, b, c, d))


@_compiled
def _array3(address, a, b, c):
    return floats(address, a * b * c).reshape((a, b, c))


@_compiled
def _array2(address, a, b):
    return floats(address, a * b).reshape((a, b))


@_compiled
def _float(t, field):
    """The float32 whose float64 bits are ``t[field]``."""
    return np.float32(t[field : field + 1].view(np.float64)[0])


@_compiled
def _transform_share(t, field, turn, thread):
    """This thread's share of the 36 rows of the Winograd transform of the kernel into the
    array at ``t[field]`` (:func:`cnnlab.engine.winograd.transform_rows`)."""
    n = t[C] * t[F]
    rows = 36 * thread // t[THREADS], 36 * (thread + 1) // t[THREADS]
    winograd.transform_rows(_array2(t[KERNEL], 9, n), t[C], turn, _array2(t[field], 36, n),
                            rows[0], rows[1])  # fmt: skip


@_compiled
def _thread_row(t, thread):
    return t[SHARED_FIELDS + thread * THREAD_FIELDS : SHARED_FIELDS + (thread + 1) * THREAD_FIELDS]


@_compiled
def conv_bn_forward(t, thread):
    """Thread ``thread``'s slice of
    :func:`cnnlab.engine.conv_batchnorm.conv_batchnorm_train_forward`, from table ``t``: a
    chunk of its images at a time, the convolution into ``z`` (with the bias), and the chunk's
    rows added to the slice's :func:`cnnlab.engine.kernels.shifted_sums` while they are in the
    core's cache (shifted by ``z``'s first row, which the thread that makes it marks made in
    the first row of flags); then, meeting the others, batch norm's statistics
    (:func:`cnnlab.engine.kernels.batchnorm_statistics`), and its rows of ``y``."""
    row = _thread_row(t, thread)
    start, stop, f, threads, step = row[START], row[STOP], t[F], t[THREADS], t[STEP]
    x = _array4(t[X], t[N], t[H], t[W], t[C])
    z = _array4(t[Z], t[N], t[OH], t[OW], f)
    rows = t[OH] * t[OW]
    flat = z.reshape((-1, f))
    flags = ints(t[FLAGS], 3, threads)
    sums = doubles(t[SUMS], threads * 2 * f).reshape((threads, 2, f))
    sums[thread] = 0
    if t[WAY] == WINOGRAD:  # the filters' transform, a share each, before any uses it
        _transform_share(t, WEIGHTS, False, thread)
        meet(flags[2], thread)
    shift = np.empty(f)
    for a in range(start, stop, step):
        b = min(a + step, stop)
        _convolve(t, row, x, a, b, z)
        if a == 0:
            store_release(flags[0], 0, 1)
        if a == start:
            while load_acquire(flags[0], 0) == 0:
                pass
            shift[:] = flat[0]
        kernels.add_shifted_sums(flat[a * rows : b * rows], shift, rows, sums[thread, 0],
                                 sums[thread, 1])  # fmt: skip
    stats = _array3(t[STATS], threads, 4, f)
    kernels.batchnorm_statistics(flat, floats(t[GAMMA], f), _float(t, EPSILON), flags[1], thread,
                                 sums, stats)  # fmt: skip
    mine, y = slice(start * rows, stop * rows), _array2(t[Y], t[N] * rows, f)
    kernels.normalize(flat[mine], stats[thread, 0], stats[thread, 3], floats(t[BETA], f),
                      _float(t, SLOPE), y[mine])  # fmt: skip


@_compiled
def _convolve(t, row, x, start, stop, z):
    """The convolution of images ``start:stop`` of ``x`` into ``z``, with the bias, in the
    table's way."""
    if t[GEMM] != 0:
        _convolve_by((t[GEMM], t[GEMM_WIDE]), t, row, x, start, stop, z)
    else:
        _convolve_by(None, t, row, x, start, stop, z)


@_compiled
def _convolve_by(gemm, t, row, x, start, stop, z):
    """:func:`_convolve`, the products by ``gemm`` (None: the tiles)."""
    f = t[F]
    if t[WAY] == WINOGRAD:
        u = _array3(t[WEIGHTS], 36, t[C], f)
        v, m = _array3(row[V], 36, t[TILES], t[C]), _array3(row[M], 36, t[TILES], f)
        if t[EPILOGUE] != 0:
            e = _array2(t[EPILOGUE], 3, f)
            norm = (e[0], e[1], e[2], np.float32(1.0))
            winograd.forward_images(gemm, x, t[TOP], t[LEFT], start, stop, u, v, m, norm, z)
        else:
            winograd.forward_images(gemm, x, t[TOP], t[LEFT], start, stop, u, v, m, None, z)
    elif t[BIAS] != 0:
        _forward_chunks(gemm, t, row, x, start, stop, floats(t[BIAS], f), z)
    else:
        _forward_chunks(gemm, t, row, x, start, stop, None, z)


@_compiled
def _forward_chunks(gemm, t, row, x, start, stop, bias, z):
    """The convolution of images ``start:stop`` by im2col and ``gemm`` (None: the tiles), or
    straight from the input (:func:`cnnlab.engine.kernels.conv_direct_forward_images`), with
    ``bias`` (None: none)."""
    kmat = _array2(t[WEIGHTS], t[KH] * t[KW] * t[C], t[F])
    pads, strides = (t[TOP], t[LEFT]), (t[SH], t[SW])
    if t[WAY] == DIRECT:
        xp = _array4(row[CHUNK], t[STEP], t[HP], t[WP], t[C])
        kernels.conv_direct_forward_images(x, pads, strides, (t[KH], t[KW]), start, stop, kmat,
                                           xp, bias, None, z)  # fmt: skip
    else:
        cols = floats(row[CHUNK], t[STEP] * t[OH] * t[OW] * t[KH] * t[KW] * t[C]).reshape(
            (t[STEP], t[OH], t[OW], t[KH], t[KW], t[C])
        )
        kernels.conv_forward_images(gemm, x, pads, strides, start, stop, kmat, cols,
                                    t[GEMM_ROWS], bias, None, z)  # fmt: skip


@_compiled
def conv_bn_backward(t, thread):
    """Thread ``thread``'s slice of
    :func:`cnnlab.engine.conv_batchnorm.conv_batchnorm_train_backward`, from table ``t``: the
    sums of batch norm's backward pass over its rows of ``dy``, meeting the others
    (:func:`cnnlab.engine.kernels.batchnorm_rows_backward_sums`); then a chunk of its images at
    a time, the gradient at the convolution's output ``dz`` for the chunk, into a buffer that
    stays in the core's cache (:func:`cnnlab.engine.kernels.normalize_backward`, adding up its
    column sums, the bias gradient), and the convolution's backward pass of the chunk: the
    kernel gradient, added up in the thread's own buffer (zeros for no images), and ``dx``
    where asked for. ``dz`` is never written whole."""
    row = _thread_row(t, thread)
    start, stop, f, threads = row[START], row[STOP], t[F], t[THREADS]
    rows = t[OH] * t[OW]
    m = t[N] * rows
    stats = _array2(t[FORWARD_STATS], 4, f)
    dy, z = _array2(t[DY], m, f), _array2(t[Z], m, f)
    beta, slope = floats(t[BETA], f), _float(t, SLOPE)
    grads = _array3(t[GRADS], threads, 4, f)
    if t[DX] != 0 and t[DX_WAY] == WINOGRAD:  # a share each; all made by the meeting below
        _transform_share(t, TURNED, True, thread)
    kernels.batchnorm_rows_backward_sums(
        dy, z, start * rows, stop * rows, stats[0], stats[2], stats[3], beta, slope,
        _float(t, ROWS), ints(t[FLAGS], 1, threads), thread,
        doubles(t[SUMS], threads * 2 * f).reshape((threads, 2, f)), grads,
    )  # fmt: skip
    dkernel = _array2(row[DKERNEL], t[KH] * t[KW] * t[C], f)
    if start == stop:
        dkernel[:] = 0
        return
    x = _array4(t[X], t[N], t[H], t[W], t[C])
    if t[DX] == 0:
        _backward_chunks(t, thread, x, dy, z, dkernel, None)
    else:
        dx = _array4(t[DX], t[N], t[H], t[W], t[C])
        _backward_chunks(t, thread, x, dy, z, dkernel, dx)


@_compiled
def _backward_chunks(t, thread, x, dy, z, dkernel, dx):
    """:func:`conv_bn_backward` after the sums, chunk by chunk."""
    if t[GEMM] != 0:
        _backward_chunks_by((t[GEMM], t[GEMM_WIDE]), t, thread, x, dy, z, dkernel, dx)
    else:
        _backward_chunks_by(None, t, thread, x, dy, z, dkernel, dx)


@_compiled
def _backward_chunks_by(gemm, t, thread, x, dy, z, dkernel, dx):
    """:func:`_backward_chunks`, the products by ``gemm`` (None: the tiles)."""
    row, f, rows, step = _thread_row(t, thread), t[F], t[OH] * t[OW], t[STEP]
    stats = _array2(t[FORWARD_STATS], 4, f)
    beta, slope = floats(t[BETA], f), _float(t, SLOPE)
    grads = _array3(t[GRADS], t[THREADS], 4, f)[thread]  # dbeta / m, dgamma / m in rows 2, 3
    totals = doubles(t[TOTALS], t[THREADS] * f).reshape((t[THREADS], f))[thread]
    chunk = _array4(row[DZ_CHUNK], step, t[OH], t[OW], f)
    start, stop = row[START], row[STOP]
    for a in range(start, stop, step):
        b = min(a + step, stop)
        dz = chunk[: b - a]
        kernels.normalize_backward(dy[a * rows : b * rows], z[a * rows : b * rows], stats[0],
                                   stats[2], stats[3], beta, slope, grads[2], grads[3],
                                   dz.reshape((-1, f)), totals)  # fmt: skip
        if dx is None:
            _backward_ways(gemm, t, row, x[a:b], dz, dkernel, None, a != start)
        elif t[DX_WAY] == WINOGRAD:  # dz convolved with the turned filters
            u = _array3(t[TURNED], 36, f, t[C])
            v = _array3(row[V], 36, t[TURNED_TILES], f)
            w = _array3(row[M], 36, t[TURNED_TILES], t[C])
            winograd.forward_images(gemm, dz, 2 - t[TOP], 2 - t[LEFT], 0, b - a, u, v, w, None,
                                    dx[a:b])  # fmt: skip
            _backward_ways(gemm, t, row, x[a:b], dz, dkernel, None, a != start)
        else:
            _backward_ways(gemm, t, row, x[a:b], dz, dkernel, dx[a:b], a != start)


@_compiled
def _backward_ways(gemm, t, row, x, dz, dkernel, dx, accumulate):
    """The convolution's backward pass of the images ``x`` (a chunk) whose output gradient is
    ``dz``: its kernel gradient added to ``dkernel`` (or written there, but for
    ``accumulate``), and with ``dx`` (not None) their input gradient: by im2col and ``gemm``
    (None: the tiles), through im2col's columns of the input gradient, or straight from the
    input and from ``dz`` (:func:`cnnlab.engine.kernels.conv_direct_backward_images`)."""
    pads, strides, window = (t[TOP], t[LEFT]), (t[SH], t[SW]), (t[KH], t[KW])
    n, k, step = len(x), t[KH] * t[KW] * t[C], t[STEP]
    shape = (step, t[OH], t[OW], t[KH], t[KW], t[C])
    dcols = floats(row[DX_CHUNK], step * t[OH] * t[OW] * k).reshape(shape)  # (unread but dx)
    if t[WAY] == DIRECT:
        xp = _array4(row[CHUNK], step, t[HP], t[WP], t[C])
        if t[DX_WAY] == DIRECT:
            by_phase = _array2(t[KMAT_T], t[KH] * t[KW] * t[F], t[C])
            rows, cols = kernels.padded_gradient_shape((t[H], t[W]), (t[OH], t[OW]), pads,
                                                       strides, window)  # fmt: skip
            dzp = _array4(row[DX_CHUNK], step, rows, cols, t[F])
            kernels.conv_direct_backward_images(x, pads, strides, window, 0, n, dz, by_phase, xp,
                                                dzp, None, dkernel, dx, accumulate)  # fmt: skip
        else:
            kmat_t = _array2(t[KMAT_T], t[F], k)
            kernels.conv_direct_backward_images(x, pads, strides, window, 0, n, dz, kmat_t, xp,
                                                None, dcols, dkernel, dx, accumulate)  # fmt: skip
    else:
        cols = floats(row[CHUNK], step * t[OH] * t[OW] * k).reshape(shape)
        kmat_t = _array2(t[KMAT_T], t[F], k)
        kernels.conv_backward_images(gemm, x, pads, strides, 0, n, dz, kmat_t, cols, dcols,
                                     t[GEMM_ROWS], dkernel, dx, accumulate)  # fmt: skip
