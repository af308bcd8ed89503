"""Fast :func:`cnnlab.nn.winograd.winograd_conv3x3`: the same F(4x4, 3x3) tiles, as compiled
loops that call NumPy's BLAS for the 36 products.

:mod:`cnnlab.nn.winograd` gives the algebra, ``Y = A^T [ sum_c (G g G^T) * (B^T d B) ] A``,
and the filters' transform, which this module uses as it is. Here each core takes a slice of
the batch, a chunk of images at a time: the patches' transform ``B^T d B`` as two passes of
sums with the integer weights of ``B`` written out (down the columns, then along the rows),
the 36 matrix products ``V[p] @ U[p]`` by BLAS's ``gemm``, then ``A^T M A`` written out the
same way, with the bias, or batch norm and the activation, applied to each row of a tile as
it is written. The input gradient of such a convolution is one too, of the output gradient
with the filters turned half a turn (:func:`conv3x3_backward_input_plan`);
:mod:`cnnlab.engine.conv` runs both this way where :func:`applies` says so.

Shapes: ``x: (N, H, W, C)``, ``kernel: (3, 3, C, F)``, ``y: (N, H, W, F)`` ("same" padding,
one pixel each side) or ``(N, H - 2, W - 2, F)`` ("valid").
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

from cnnlab.engine import blas, scratch, tiles
from cnnlab.nn.padding import window_geometry
from cnnlab.nn.winograd import G_KRON_G, PATCH, TILE

# With fewer input channels the transforms cost more than the products save: with the book's
# first conv layer (3 channels) by Winograd too, predict at batch 32 took 2.59-2.69 ms,
# against 2.37-2.52 ms with it direct.
MIN_CHANNELS = 16

_compiled = numba.njit(cache=True, nogil=True, error_model="numpy")


@_compiled
def _columns_in(d0, d1, d2, d3, d4, d5, half, at, ints):
    """The first pass of ``B^T d B``, down the columns: ``half[i, at:] = sum_r B^T[i, r] d_r``
    for six rows ``d_r`` of the image, each ``W * C`` values; ``half: (6, Wp * C)``."""
    two, four, five = ints[0], ints[1], ints[2]
    for q in range(d0.size):
        half[0, at + q] = four * d0[q] - five * d2[q] + d4[q]
    for q in range(d0.size):
        half[1, at + q] = d3[q] + d4[q] - four * (d1[q] + d2[q])
    for q in range(d0.size):
        half[2, at + q] = d4[q] - d3[q] + four * (d1[q] - d2[q])
    for q in range(d0.size):
        half[3, at + q] = d4[q] - d2[q] + two * (d3[q] - d1[q])
    for q in range(d0.size):
        half[4, at + q] = d4[q] - d2[q] + two * (d1[q] - d3[q])
    for q in range(d0.size):
        half[5, at + q] = four * d1[q] - five * d3[q] + d5[q]


@_compiled
def _rows_in(half, at, v, t, ints):
    """The second pass, along the rows, for the patch whose first pixel is ``half[:, at]``
    (``half: (6, Wp, C)``): ``v[6*i + j, t] = sum_q half[i, at + q] B[q, j]``."""
    two, four, five = ints[0], ints[1], ints[2]
    for i in range(PATCH):
        d, p = half[i], PATCH * i
        d0, d1, d2, d3, d4, d5 = at, at + 1, at + 2, at + 3, at + 4, at + 5  # columns
        for k in range(d.shape[1]):
            v[p, t, k] = four * d[d0, k] - five * d[d2, k] + d[d4, k]
        for k in range(d.shape[1]):
            v[p + 1, t, k] = d[d3, k] + d[d4, k] - four * (d[d1, k] + d[d2, k])
        for k in range(d.shape[1]):
            v[p + 2, t, k] = d[d4, k] - d[d3, k] + four * (d[d1, k] - d[d2, k])
        for k in range(d.shape[1]):
            v[p + 3, t, k] = d[d4, k] - d[d2, k] + two * (d[d3, k] - d[d1, k])
        for k in range(d.shape[1]):
            v[p + 4, t, k] = d[d4, k] - d[d2, k] + two * (d[d1, k] - d[d3, k])
        for k in range(d.shape[1]):
            v[p + 5, t, k] = four * d[d1, k] - five * d[d3, k] + d[d5, k]


@_compiled
def _rows_out(m, t, back, ints):
    """The first pass of ``A^T M A``, along the rows: ``back[i, j] = sum_q M[i, q] A[q, j]``
    for the tile ``M[i, q] = m[6*i + q, t]``; ``back: (6, 4, F)``."""
    two, four, eight = ints[0], ints[1], ints[3]
    for i in range(PATCH):
        p0, p1, p2, p3, p4, p5 = range(PATCH * i, PATCH * (i + 1))  # positions
        b = back[i]
        for k in range(b.shape[1]):
            b[0, k] = m[p0, t, k] + m[p1, t, k] + m[p2, t, k] + m[p3, t, k] + m[p4, t, k]
        for k in range(b.shape[1]):
            b[1, k] = m[p1, t, k] - m[p2, t, k] + two * (m[p3, t, k] - m[p4, t, k])
        for k in range(b.shape[1]):
            b[2, k] = m[p1, t, k] + m[p2, t, k] + four * (m[p3, t, k] + m[p4, t, k])
        for k in range(b.shape[1]):
            b[3, k] = m[p1, t, k] - m[p2, t, k] + eight * (m[p3, t, k] - m[p4, t, k]) + m[p5, t, k]


@_compiled
def _columns_out(back, i, n, ints, out, at):
    """The second pass, down the columns, for row ``i`` of the tile:
    ``out[at : at + n] = sum_r A^T[i, r] back[r, :n]``, ``back: (6, 4 * F)``."""
    two, four, eight = ints[0], ints[1], ints[3]
    if i == 0:
        for q in range(n):
            out[at + q] = back[0, q] + back[1, q] + back[2, q] + back[3, q] + back[4, q]
    elif i == 1:
        for q in range(n):
            out[at + q] = back[1, q] - back[2, q] + two * (back[3, q] - back[4, q])
    elif i == 2:
        for q in range(n):
            out[at + q] = back[1, q] + back[2, q] + four * (back[3, q] + back[4, q])
    else:
        for q in range(n):
            out[at + q] = back[1, q] - back[2, q] + eight * (back[3, q] - back[4, q]) + back[5, q]


@_compiled
def forward_images(gemm, x, top, left, start, stop, u, v, m, norm, y):
    """Images ``start:stop`` of the convolution, a chunk of ``v.shape[1] // tiles`` images at a
    time: each tile's patch transformed into ``v``, 36 matrix products ``m[p] = v[p] @ u[p]``
    by BLAS's ``gemm`` (with ``gemm`` None, float32, by :func:`cnnlab.engine.tiles.product`), each
    tile transformed back into ``y`` and finished there, with
    ``norm = (mean, scale, beta, slope)`` as ``leaky((y - mean) * scale + beta)``, or not
    (None).

    ``x: (N, H, W, C)``; ``u: (36, C, F)`` (:func:`transformed`); ``v: (36, T, C)`` and
    ``m: (36, T, F)`` scratch for ``T`` tiles; ``y: (N, oh, ow, F)``; ``(top, left)`` the
    padding before the first row and column. Pixels outside ``x`` read as zero.
    """
    n, h, w, c = x.shape
    _, oh, ow, f = y.shape
    rows, cols = -(-oh // TILE), -(-ow // TILE)
    step = max(1, v.shape[1] // (rows * cols))
    ints = np.array((2, 4, 5, 8), x.dtype)  # the transforms' weights, in x's dtype
    x_rows = x.reshape(n, h, w * c)
    y_rows = y.reshape(n, oh, ow * f)
    zero = np.zeros(w * c, x.dtype)  # a row above or below the image
    half = np.zeros((PATCH, TILE * cols + 2, c), x.dtype)  # columns outside x stay zero
    half_rows = half.reshape(PATCH, -1)
    back = np.empty((PATCH, TILE * f), x.dtype)
    back_tiles = back.reshape(PATCH, TILE, f)
    row = np.empty(TILE * f, x.dtype)
    # The epilogue is batch norm's formula inline, on a row of a tile at a time, with each
    # value repeated for the row's pixels: kernels.normalize_in_place called on each row
    # instead took the third conv 0.39 -> 0.43 ms (one core, 16 images).
    if norm is not None:
        slope = norm[3]
        mean, scale, beta = np.empty((3, TILE * f), x.dtype)
        for q in range(TILE * f):
            mean[q], scale[q], beta[q] = norm[0][q % f], norm[1][q % f], norm[2][q % f]
    for a in range(start, stop, step):
        b = min(a + step, stop)
        t = 0
        for img in range(a, b):
            for ti in range(rows):
                r = ti * TILE - top
                d0 = x_rows[img, r] if 0 <= r < h else zero
                d1 = x_rows[img, r + 1] if 0 <= r + 1 < h else zero
                d2 = x_rows[img, r + 2] if 0 <= r + 2 < h else zero
                d3 = x_rows[img, r + 3] if 0 <= r + 3 < h else zero
                d4 = x_rows[img, r + 4] if 0 <= r + 4 < h else zero
                d5 = x_rows[img, r + 5] if 0 <= r + 5 < h else zero
                _columns_in(d0, d1, d2, d3, d4, d5, half_rows, left * c, ints)
                for tj in range(cols):
                    _rows_in(half, tj * TILE, v, t, ints)
                    t += 1
        for p in range(PATCH * PATCH):
            if gemm is None:
                tiles.product(v[p].ctypes.data, c, 1, u[p].ctypes.data, f, m[p].ctypes.data, f,
                              t, f, c, 0)  # fmt: skip
            else:
                blas.call_gemm(
                    gemm, blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, t, f, c, 1.0,
                    v[p].ctypes.data, c, u[p].ctypes.data, f, 0.0, m[p].ctypes.data, f,
                )  # fmt: skip
        t = 0
        for img in range(a, b):
            for ti in range(rows):
                for tj in range(cols):
                    _rows_out(m, t, back_tiles, ints)
                    width, at = min(TILE, ow - tj * TILE) * f, tj * TILE * f
                    for i in range(min(TILE, oh - ti * TILE)):
                        out = y_rows[img, ti * TILE + i]
                        if norm is None:
                            _columns_out(back, i, width, ints, out, at)
                        else:
                            _columns_out(back, i, width, ints, row, 0)
                            for q in range(width):
                                val = (row[q] - mean[q]) * scale[q] + beta[q]
                                out[at + q] = val if val > 0 else slope * val
                    t += 1


def tiles_of(oh: int, ow: int) -> int:
    """The tiles of 4x4 outputs an ``oh x ow`` output is cut into (the last ones in part)."""
    return -(-oh // TILE) * -(-ow // TILE)


def possible(kernel_shape: tuple, strides: tuple[int, int], dtype) -> bool:
    """Whether a conv layer can run this way: 3x3 filters, strides 1, and NumPy's BLAS found
    for the dtype."""
    kh, kw, _, _ = kernel_shape
    return (kh, kw) == (3, 3) and tuple(strides) == (1, 1) and blas.gemm(dtype) is not None


def applies(kernel_shape: tuple, strides: tuple[int, int], dtype) -> bool:
    """Whether a conv layer runs this way untuned (:func:`cnnlab.engine.tuning.default_plan`):
    where it is :func:`possible`, with at least :data:`MIN_CHANNELS` input channels."""
    return possible(kernel_shape, strides, dtype) and kernel_shape[2] >= MIN_CHANNELS


def transformed(kernel: np.ndarray) -> np.ndarray:
    """:func:`cnnlab.nn.winograd.filter_transform` of ``kernel``, kept from call to call while
    the kernel stays the same (:func:`cnnlab.engine.scratch.kept`; the comparison takes about
    5 us), by :func:`transform_rows`."""
    return scratch.kept("winograd filters", kernel, _filters)


def turned(kernel: np.ndarray) -> np.ndarray:
    """The transformed filters of the input gradient's convolution, ``(36, F, C)``: each filter
    turned half a turn, the input and output channels swapped; kept from call to call while
    the kernel stays the same, as :func:`transformed`."""
    return scratch.kept("winograd filters turned", kernel, _turned)


def _filters(kernel: np.ndarray, turn: bool = False) -> np.ndarray:
    _, _, c, f = kernel.shape
    u = np.empty((PATCH * PATCH, f, c) if turn else (PATCH * PATCH, c, f), kernel.dtype)
    taps = np.ascontiguousarray(kernel).reshape(9, c * f)
    transform_rows(taps, c, turn, u.reshape(-1, c * f), 0, PATCH * PATCH)
    return u


def _turned(kernel: np.ndarray) -> np.ndarray:
    return _filters(kernel, turn=True)


# G g G^T with whole numbers: 576 G_KRON_G, whose every entry is an integer (G's fractions are
# quarters, sixths, twelfths and 24ths), so that each product of a weight with a float32 tap
# is exact in float64, the sums nearly always too, and one division rounds.
_SCALE = 576
_WHOLE = np.rint(G_KRON_G * _SCALE)


@_compiled
def transform_rows(kernel, channels, turn, u, first, last):
    """Rows ``first:last`` of ``U = G g G^T`` for every filter, as
    :func:`cnnlab.nn.winograd.filter_transform`: ``u[p] = sum_k G_KRON_G[p, k] * kernel[k]``,
    summed with the whole numbers ``576 G_KRON_G`` in float64 and divided by 576, so that
    ``u`` is the exact transform rounded once to its dtype (NumPy's float64 product of the
    fractions was one float32 ulp off in 0.5 % of the book's third conv's values), for
    ``kernel: (9, C * F)``, the 3x3 filters' taps in rows (``C = channels``), and ``u: (36, C *
    F)``. With ``turn``, the filters of the input gradient's convolution: each turned half a
    turn (tap ``k`` from ``8 - k``), and ``u``'s rows ``(F, C)``, the channels swapped. The
    threads of a compiled part take a share of the rows each (:mod:`cnnlab.engine.parts`)."""
    n = kernel.shape[1]
    filters = n // channels
    sums = np.empty(n)
    for p in range(first, last):
        sums[:] = 0.0
        for k in range(9):
            weight = _WHOLE[p, k]
            taps = kernel[8 - k] if turn else kernel[k]
            for q in range(n):
                sums[q] += weight * np.float64(taps[q])
        if turn:
            for c in range(channels):
                for f in range(filters):
                    u[p, f * channels + c] = sums[c * filters + f] / _SCALE
        else:
            for q in range(n):
                u[p, q] = sums[q] / _SCALE


def conv3x3_forward_plan(
    x: np.ndarray, u: np.ndarray, padding: str, normalize: tuple | None = None, tiled: bool = False
) -> tuple[np.ndarray, Callable[[int, int], None]]:
    """``y: (N, oh, ow, F)``, not yet filled, the 3x3 convolution with strides 1 whose
    transformed filters are ``u: (36, C, F)`` (:func:`cnnlab.nn.winograd.filter_transform`),
    of ``x: (N, H, W, C)``, C-contiguous and of ``u``'s dtype, and ``images(start, stop)``,
    which fills ``y[start:stop]`` a chunk of images at a time (:func:`forward_images`), as
    :func:`cnnlab.engine.conv.conv2d_forward_plan`. ``normalize = (mean, scale, beta, slope)``
    as in :func:`cnnlab.engine.conv.conv2d_forward`; ``tiled``: the products by
    :mod:`cnnlab.engine.tiles` (float32), not BLAS."""
    _, h, w, _ = x.shape
    (oh, ow), ((top, _), (left, _)) = window_geometry((h, w), (3, 3), (1, 1), padding)
    return _plan(x, u, (top, left), (oh, ow), normalize, tiled)


def conv3x3_backward_input_plan(
    dy: np.ndarray, kernel: np.ndarray, pads: tuple, x_shape: tuple, tiled: bool = False
) -> tuple[np.ndarray, Callable[[int, int], None]]:
    """``dx: x_shape``, not yet filled, the input gradient of the 3x3 convolution with strides
    1 whose output gradient is ``dy: (N, oh, ow, F)``, and ``images(start, stop)``, which
    fills ``dx[start:stop]`` from ``dy[start:stop]``. The input gradient is itself a 3x3
    convolution with strides 1, of ``dy`` with each filter turned half a turn and the channels
    swapped,
    ``dx[n, r, q, c] = sum_{a, b, f} dy[n, r + top - a, q + left - b, f] * kernel[a, b, c, f]``,
    ``dy`` read as zero outside; so by :func:`forward_images` too, with padding ``2 - top``
    above and ``2 - left`` before; ``tiled`` as in :func:`conv3x3_forward_plan`."""
    (top, _), (left, _) = pads
    u = turned(kernel)
    dy = np.ascontiguousarray(dy, dtype=kernel.dtype)
    return _plan(dy, u, (2 - top, 2 - left), x_shape[1:3], None, tiled)


def _plan(x, u, corner, out_hw, normalize, tiled):
    """The output ``y: (N, *out_hw, F)``, not yet filled, and ``images(start, stop)``, which
    runs :func:`forward_images` on them with padding ``corner = (top, left)``, with each
    thread's own scratch."""
    n, _, _, c = x.shape
    f = u.shape[2]
    per_image = tiles_of(*out_hw)
    y = np.empty((n, *out_hw, f), x.dtype)
    gemm = None if tiled else blas.gemm(x.dtype)

    def images(start: int, stop: int) -> None:
        v = scratch.buffer("winograd v", (PATCH * PATCH, per_image, c), x.dtype)
        m = scratch.buffer("winograd m", (PATCH * PATCH, per_image, f), x.dtype)
        forward_images(gemm, x, *corner, start, stop, u, v, m, normalize, y)

    return y, images
