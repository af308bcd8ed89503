"""Fast :func:`cnnlab.nn.conv.conv2d_forward` and :func:`~cnnlab.nn.conv.conv2d_backward`:
the same im2col and matrix products, the same arguments and the same :class:`ConvCache`.

Each core takes a slice of the batch (:mod:`cnnlab.engine.parallel`) and works through it a
few images at a time, so that a chunk's im2col matrix stays in the cache between its copy and
its matrix products; the backward pass copies the windows again instead of keeping the whole
batch's im2col matrix. The forward pass runs a core's chunks as one compiled loop that calls
NumPy's own BLAS (:func:`cnnlab.engine.kernels.conv_forward_images`,
:mod:`cnnlab.engine.blas`), whose im2col copies rows of the input itself
(:func:`cnnlab.engine.shared.copy`) and writes zeros for the padding; where that BLAS is not
found, as NumPy calls on a padded copy. In float32 the
products can go to cnnlab's own register tiles instead (:mod:`cnnlab.engine.tiles`), which
can also read each output row's windows straight from a padded chunk of the input, with no
im2col at all, forward and for the kernel gradient
(:func:`cnnlab.engine.kernels.conv_direct_forward_images`), and make the input gradient
straight from the output gradient (:func:`cnnlab.engine.kernels.conv_direct_input_gradient`).
3x3 convolutions with strides 1
can run by Winograd's minimal filtering instead, forward and for the input gradient
(:mod:`cnnlab.engine.winograd`). How many images a chunk holds, what multiplies, and whether a
convolution goes by Winograd, is its shape's :class:`~cnnlab.engine.tuning.ConvPlan`, measured
on this machine the first time the shape is met (:mod:`cnnlab.engine.tuning`). Buffers are
kept from call to call (:mod:`cnnlab.engine.scratch`), and col2im is a compiled loop
(:func:`cnnlab.engine.kernels.col2im`) that adds straight into the unpadded input gradient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from cnnlab.engine import blas, kernels, parallel, parts, scratch, tiles, tuning, winograd
from cnnlab.engine.sums import column_sums
from cnnlab.engine.tuning import ConvPlan
from cnnlab.nn.conv import ConvCache
from cnnlab.nn.padding import Pads, window_geometry
from cnnlab.nn.windows import windows


def _chunks(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def _plan(x: np.ndarray, kernel: np.ndarray, strides, pads, plan: ConvPlan | None) -> ConvPlan:
    """``plan``, or this shape's on this machine (:func:`cnnlab.engine.tuning.conv_plan`)."""
    if plan is None:
        plan = tuning.conv_plan(x.shape, kernel.shape, tuple(strides), pads, x.dtype, trial)
    return plan


def trial(x_shape, kernel_shape, strides, pads, dtype) -> Callable[[ConvPlan], None]:
    """For the tuner: ``run(plan)``, a forward and a backward pass of this shape with ``plan``,
    on random data made once."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = (rng.standard_normal(kernel_shape) * 0.1).astype(dtype)
    bias = np.zeros(kernel_shape[3], dtype)
    padding = padding_of(pads)
    (oh, ow), _ = window_geometry(x_shape[1:3], kernel_shape[:2], strides, padding)
    dy = rng.standard_normal((x_shape[0], oh, ow, kernel_shape[3])).astype(dtype)

    def run(plan: ConvPlan) -> None:
        _, cache = conv2d_forward(x, kernel, bias, strides, padding, plan=plan)
        conv2d_backward(dy, cache, plan=plan)

    return run


def _by_winograd(x: np.ndarray, kernel: np.ndarray, strides, plan: ConvPlan) -> bool:
    """Whether the convolution runs by :mod:`cnnlab.engine.winograd`: the plan says so, and it
    can (3x3 filters, strides 1, one dtype, NumPy's BLAS found)."""
    return (
        plan.winograd
        and x.dtype == kernel.dtype
        and winograd.possible(kernel.shape, strides, x.dtype)
    )


def _by_tiles(x: np.ndarray, kernel: np.ndarray, plan: ConvPlan) -> bool:
    """Whether the compiled chunks multiply by :mod:`cnnlab.engine.tiles`: the plan says so
    (its products "tiles" or "direct"), and they can (float32)."""
    return plan.products != "blas" and x.dtype == kernel.dtype == np.float32


def _direct(x: np.ndarray, kernel: np.ndarray, plan: ConvPlan) -> bool:
    """Whether the forward pass and the kernel gradient read the windows straight from the
    input, without im2col (:func:`cnnlab.engine.kernels.conv_direct_forward_images`): the
    plan says so, and they can (float32)."""
    return plan.products == "direct" and _by_tiles(x, kernel, plan)


def _direct_input_gradient(x: np.ndarray, kernel: np.ndarray, plan: ConvPlan) -> bool:
    """Whether the input gradient too is read straight from the output gradient
    (:func:`cnnlab.engine.kernels.conv_direct_input_gradient`): the convolution is
    :func:`_direct`, and its input has a whole vector of the tiles' channels or more. Each of
    that way's products makes a pixel's ``C`` channels of ``dx``, in vectors of
    :data:`cnnlab.engine.tiles.WIDTH` lanes, so that its time stays the same from 1 channel
    to 16; through im2col's columns (``dy @ kmat.T``, then col2im) it grows with ``C``, and
    stays below it for a few channels (benchmarks/README.md)."""
    return _direct(x, kernel, plan) and kernel.shape[2] >= tiles.WIDTH


def _gemm(x: np.ndarray, kernel: np.ndarray, plan: ConvPlan):
    """What multiplies in the compiled chunks: NumPy's BLAS ``gemm``, or None for cnnlab's
    tiles where the plan says so and they can (:func:`_by_tiles`)."""
    return None if _by_tiles(x, kernel, plan) else blas.gemm(x.dtype)


def _compiled_products(x: np.ndarray, kernel: np.ndarray) -> bool:
    """Whether the chunks can run as one compiled loop: NumPy's BLAS found, one float dtype."""
    return x.dtype == kernel.dtype and blas.gemm(x.dtype) is not None


def conv2d_forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "valid",
    *,
    normalize: tuple | None = None,
    plan: ConvPlan | None = None,
) -> tuple[np.ndarray, ConvCache]:
    """Fast :func:`cnnlab.nn.conv.conv2d_forward`, a few images at a time on every core.

    The batch is split over the cores (:func:`cnnlab.engine.parallel.over_batch`), and each
    core takes its slice in chunks of a few images whose im2col matrix fits in its cache: copy
    the windows, one matrix product, add the bias; in one compiled call where NumPy's BLAS is
    found (:func:`_compiled_products`), else in NumPy calls. The compiled im2col reads ``x``
    itself and writes zeros for the padding; there is no padded copy of the input. 3x3 filters
    with strides 1 go by :mod:`cnnlab.engine.winograd` instead where the plan says so
    (:func:`_by_winograd`), the bias as its epilogue. ``plan``: the chunk size and the method
    (:class:`cnnlab.engine.tuning.ConvPlan`); by default, this shape's on this machine.

    ``normalize = (mean, scale, beta, slope)``, for inference, replaces the bias: each chunk's
    output becomes ``leaky((y - mean) * scale + beta)`` while it is in the cache
    (:func:`cnnlab.engine.kernels.normalize_in_place`). That is batch norm with its moving
    statistics and the (leaky) ReLU after it, with the convolution's bias folded into ``mean``.
    """
    y, images, cache = conv2d_forward_plan(x, kernel, bias, strides, padding, normalize, plan)
    parallel.over_batch(images, len(x))
    return y, cache


def conv2d_forward_plan(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "valid",
    normalize: tuple | None = None,
    plan: ConvPlan | None = None,
) -> tuple[np.ndarray, Callable[[int, int], None], ConvCache]:
    """:func:`conv2d_forward` before it runs: the output ``y``, not yet filled, the function
    ``images(start, stop)`` that fills ``y[start:stop]`` (from ``x[start:stop]``, which need
    only be filled by then, on the same thread), and the cache. Each thread that calls
    ``images`` has its own chunk buffer; a caller runs the slices of several convs in a row on
    each core this way (:class:`cnnlab.fusion.ConvChain`)."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    k = kh * kw * c
    (oh, ow), pads = window_geometry((h, w), (kh, kw), strides, padding)
    plan = _plan(x, kernel, strides, pads, plan)
    if _by_winograd(x, kernel, strides, plan):
        if normalize is None and bias is not None:  # y + bias, as the epilogue computes it
            ones = np.ones_like(kernel, shape=f)
            normalize = (-np.asarray(bias, x.dtype), ones, ones * 0, x.dtype.type(1))
        u = winograd.transformed(kernel)
        x = np.ascontiguousarray(x)
        tiled = _by_tiles(x, kernel, plan)
        y, images = winograd.conv3x3_forward_plan(x, u, padding, normalize, tiled)
        return y, images, ConvCache(x, kernel, tuple(strides), pads)
    (top, _), (left, _) = pads
    step = tuning.images_per_chunk(plan, (oh, ow), k, x.itemsize)
    kmat = kernel.reshape(k, f)
    if _direct(x, kernel, plan):
        return _direct_forward_plan(x, kernel, bias, strides, pads, normalize, step, (oh, ow))
    y = np.empty((n, oh, ow, f), dtype=np.result_type(x, kernel))
    compiled = _compiled_products(x, kernel)
    rows = plan.gemm_rows(k, f)
    if compiled:
        x, kmat = np.ascontiguousarray(x), np.ascontiguousarray(kmat)
        gemm, corner = _gemm(x, kernel, plan), (top, left)
        if normalize is not None:  # one dtype for the compiled loop; a 0-d array slope is slow
            *vectors, slope = normalize
            normalize = (*(np.asarray(v, y.dtype) for v in vectors), y.dtype.type(slope))
    else:
        xp = _padded(x, pads)
        patches = windows(xp, (kh, kw), strides, (oh, ow))

    def images(start: int, stop: int) -> None:
        cols = scratch.buffer("conv cols", (step, oh, ow, kh, kw, c), x.dtype)
        if compiled:  # im2col straight from x, with zeros for the padding
            kernels.conv_forward_images(
                gemm, x, corner, strides, start, stop, kmat, cols, rows, bias, normalize, y
            )
            return
        for a, b in _chunks(start, stop, step):
            if xp is not x:
                xp[a:b, top : top + h, left : left + w] = x[a:b]
            np.copyto(cols[: b - a], patches[a:b])
            out = y[a:b].reshape(-1, f)
            np.matmul(cols[: b - a].reshape(-1, k), kmat, out=out)
            if normalize is not None:
                kernels.normalize_in_place(out, *normalize)
            elif bias is not None:
                out += bias

    return y, images, ConvCache(x, kernel, tuple(strides), pads)


def _direct_forward_plan(x, kernel, bias, strides, pads, normalize, step, out_hw):
    """:func:`conv2d_forward_plan` straight from the input
    (:func:`cnnlab.engine.kernels.conv_direct_forward_images`): each thread's chunk of images
    padded into a buffer of its own, whose border stays zero."""
    x = np.ascontiguousarray(x)
    kh, kw, _, f = kernel.shape
    kmat = np.ascontiguousarray(kernel.reshape(-1, f))
    y = np.empty((len(x), *out_hw, f), x.dtype)
    if normalize is not None:  # one dtype for the compiled loop
        *vectors, slope = normalize
        normalize = (*(np.asarray(v, x.dtype) for v in vectors), x.dtype.type(slope))
    corner = (pads[0][0], pads[1][0])

    def images(start: int, stop: int) -> None:
        xp = _chunk_buffer(x, pads, step)
        kernels.conv_direct_forward_images(
            x, corner, tuple(strides), (kh, kw), start, stop, kmat, xp, bias, normalize, y
        )

    return y, images, ConvCache(x, kernel, tuple(strides), pads)


def _chunk_buffer(x: np.ndarray, pads: Pads, step: int) -> np.ndarray:
    """This thread's buffer for ``step`` images of ``x`` with their padding, zero on the
    border (written only inside)."""
    _, h, w, c = x.shape
    (top, bottom), (left, right) = pads
    shape = (step, h + top + bottom, w + left + right, c)
    return scratch.buffer(("conv direct input", pads), shape, x.dtype, zeros=True)


def _gradient_buffer(x_shape, dy_shape, window, strides, pads: Pads, step: int, dtype, index=None):
    """This thread's buffer for ``step`` images of the output gradient with the zeros around it
    that :func:`cnnlab.engine.kernels.conv_direct_input_gradient` reads (written only
    inside); ``index`` tells apart the buffers of several threads made on one thread."""
    corner = (pads[0][0], pads[1][0])
    rows, cols = kernels.padded_gradient_shape(x_shape[1:3], dy_shape[1:3], corner, strides,
                                               window)  # fmt: skip
    border = kernels.input_gradient_padding(window, strides)
    key = ("conv direct output gradient", border, tuple(dy_shape[1:3]), index)
    return scratch.buffer(key, (step, rows, cols, dy_shape[3]), dtype, zeros=True)


def _by_phase(kernel: np.ndarray, strides) -> np.ndarray:
    """The taps of ``kernel: (kh, kw, C, F)``, each ``kernel[i, j].T``, in the order of
    :func:`cnnlab.engine.kernels.taps_by_phase`: ``(kh*kw*F, C)``."""
    kh, kw, c, _ = kernel.shape
    order = kernels.taps_by_phase((kh, kw), tuple(strides))
    taps = kernel[order[:, 0], order[:, 1]]  # (kh*kw, C, F)
    return np.ascontiguousarray(taps.transpose(0, 2, 1)).reshape(-1, c)


def _input_gradient_weights(kernel: np.ndarray, strides, direct_dx: bool) -> np.ndarray:
    """The weights the direct way's backward pass takes for ``dx``: the taps by phase
    (:func:`_by_phase`) where ``direct_dx``, else the kernel matrix transposed, ``(F,
    kh*kw*C)``, for im2col's columns."""
    if direct_dx:
        return _by_phase(kernel, strides)
    return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[3]).T)


def _padded(x: np.ndarray, pads: Pads) -> np.ndarray:
    """The buffer for ``x`` with its padding (``x`` itself without any); its border is zeroed
    once, and its inside is left for the caller to fill, a slice of the batch at a time."""
    n, h, w, c = x.shape
    (top, bottom), (left, right) = pads
    if not (top or bottom or left or right):
        return x
    shape = (n, h + top + bottom, w + left + right, c)
    return scratch.buffer(("conv padded input", pads), shape, x.dtype, zeros=True)


def conv2d_backward(
    dy: np.ndarray,
    cache: ConvCache,
    input_gradient: bool = True,
    *,
    plan: ConvPlan | None = None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Fast :func:`cnnlab.nn.conv.conv2d_backward`, a few images at a time on every core.

    For each chunk of its images each core copies the windows again (im2col), adds ``cols.T @
    dy`` to the kernel gradient, and ``dcols = dy @ kernel.T``, which col2im adds straight into
    the unpadded ``dx``: as one compiled loop that reads the input itself and calls NumPy's
    BLAS (:func:`cnnlab.engine.kernels.conv_backward_images`), or where that BLAS is not
    found, in NumPy calls on a padded copy. The slices' kernel gradients are added up in slice
    order. Where the forward pass ran by Winograd (:func:`_by_winograd`), so does ``dx``
    (:func:`cnnlab.engine.winograd.conv3x3_backward_input_plan`), in the same slices, and the
    chunks make only the kernel gradient. ``plan`` as in :func:`conv2d_forward`: the same
    shape's, by default.
    """
    dx, images = conv2d_backward_plan(dy, cache, input_gradient, plan)
    parts = parallel.over_batch(images, len(dy))
    dkernel = sum(part[0] for part in parts)
    dbias = sum(part[1] for part in parts)
    return dx, dkernel.reshape(cache.kernel.shape), dbias


def conv2d_backward_plan(
    dy: np.ndarray,
    cache: ConvCache,
    input_gradient: bool = True,
    plan: ConvPlan | None = None,
    bias_gradient: bool = True,
) -> tuple[np.ndarray | None, Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]]:
    """:func:`conv2d_backward` before it runs: ``dx`` (None without ``input_gradient``), not
    yet filled, and ``images(start, stop)``, which fills ``dx[start:stop]`` from
    ``dy[start:stop]`` (which need only be filled by then, on the same thread) and returns
    that slice's ``(kernel gradient as (kh * kw * C, F), bias gradient)`` (None without
    ``bias_gradient``, for a caller that sums ``dy`` itself)."""
    x, kernel, strides, pads = cache
    plan = _plan(x, kernel, strides, pads, plan)
    if input_gradient and _by_winograd(x, kernel, strides, plan):
        tiled = _by_tiles(x, kernel, plan)
        dx, inputs = winograd.conv3x3_backward_input_plan(dy, kernel, pads, x.shape, tiled)
        _, weights = conv2d_backward_plan(dy, cache, False, plan, bias_gradient)

        def both(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            inputs(start, stop)
            return weights(start, stop)

        return dx, both
    _, oh, ow, _ = dy.shape
    kh, kw, c, _ = kernel.shape
    dy = np.ascontiguousarray(dy)
    step = tuning.images_per_chunk(plan, (oh, ow), kh * kw * c, x.itemsize)
    (top, _), (left, _) = pads
    dx = np.empty(x.shape, dtype=np.result_type(dy, kernel)) if input_gradient else None
    sums = column_sums if bias_gradient else _no_sums
    if _direct(x, kernel, plan) and dy.dtype == x.dtype:
        direct_dx = _direct_input_gradient(x, kernel, plan)
        return dx, _direct_backward(x, kernel, dy, strides, pads, step, dx, sums, direct_dx)
    if _compiled_products(x, kernel) and dy.dtype == x.dtype:
        return dx, _compiled_backward(x, kernel, dy, strides, (top, left), step, plan, dx, sums)
    return dx, _numpy_backward(x, kernel, dy, strides, pads, step, dx, sums)


def _no_sums(dy: np.ndarray) -> None:
    """In place of :func:`cnnlab.engine.sums.column_sums` for a caller that sums ``dy``."""
    return None


def _compiled_backward(x, kernel, dy, strides, corner, step, plan, dx, sums) -> Callable:
    """``images(start, stop)`` of :func:`conv2d_backward` as one compiled loop
    (:func:`cnnlab.engine.kernels.conv_backward_images`): im2col straight from ``x``, and
    NumPy's BLAS; ``(kernel gradient, bias gradient)`` of the slice."""
    x = np.ascontiguousarray(x)
    kh, kw, c, f = kernel.shape
    k = kh * kw * c
    kmat_t = np.ascontiguousarray(kernel.reshape(k, f).T)
    _, oh, ow, _ = dy.shape
    gemm, rows = _gemm(x, kernel, plan), plan.gemm_rows(k, f)

    def images(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        cols = scratch.buffer("conv cols", (step, oh, ow, kh, kw, c), x.dtype)
        dcols = None if dx is None else scratch.buffer("conv dcols", cols.shape, x.dtype)
        dkernel = np.empty((k, f), x.dtype)
        kernels.conv_backward_images(
            gemm, x, corner, tuple(strides), start, stop, dy, kmat_t, cols, dcols, rows, dkernel,
            dx,
        )  # fmt: skip
        return dkernel, sums(dy[start:stop].reshape(-1, f))

    return images


def _direct_backward(x, kernel, dy, strides, pads, step, dx, sums, direct_dx) -> Callable:
    """``images(start, stop)`` of :func:`conv2d_backward` straight from the input
    (:func:`cnnlab.engine.kernels.conv_direct_backward_images`), and ``dx`` straight from
    ``dy`` where ``direct_dx`` (:func:`_direct_input_gradient`), else through im2col's columns:
    ``(kernel gradient, bias gradient)`` of the slice."""
    x = np.ascontiguousarray(x)
    kh, kw, c, f = kernel.shape
    _, oh, ow, _ = dy.shape
    weights = _input_gradient_weights(kernel, strides, direct_dx)
    corner = (pads[0][0], pads[1][0])

    def images(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        xp = _chunk_buffer(x, pads, step)
        dyp = dcols = None
        if dx is not None and direct_dx:
            dyp = _gradient_buffer(x.shape, dy.shape, (kh, kw), strides, pads, step, x.dtype)
        elif dx is not None:
            dcols = scratch.buffer("conv dcols", (step, oh, ow, kh, kw, c), x.dtype)
        dkernel = np.empty((kh * kw * c, f), x.dtype)
        kernels.conv_direct_backward_images(
            x, corner, tuple(strides), (kh, kw), start, stop, dy, weights, xp, dyp, dcols,
            dkernel, dx,
        )  # fmt: skip
        return dkernel, sums(dy[start:stop].reshape(-1, f))

    return images


def _numpy_backward(x, kernel, dy, strides, pads, step, dx, sums) -> Callable:
    """``images(start, stop)`` of :func:`conv2d_backward` in NumPy calls, on a padded copy
    (where NumPy's BLAS is not found, or the dtypes differ)."""
    n, h, w, _ = x.shape
    _, oh, ow, f = dy.shape
    kh, kw, c, _ = kernel.shape
    k = kh * kw * c
    kmat_t = kernel.reshape(k, f).T
    dtype = np.result_type(dy, kernel)
    input_gradient = dx is not None
    xp = _padded(x, pads)
    patches = windows(xp, (kh, kw), strides, (oh, ow))
    (top, _), (left, _) = pads
    contiguous = x.flags.c_contiguous

    def images(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if xp is not x and contiguous:
            kernels.pad_images(x, xp, top, left, start, stop)
        elif xp is not x:
            xp[start:stop, top : top + h, left : left + w] = x[start:stop]
        cols = scratch.buffer("conv cols", (step, oh, ow, kh, kw, c), x.dtype)
        dcols = input_gradient and scratch.buffer("conv dcols", (step, oh, ow, kh, kw, c), dtype)
        dkernel = np.zeros((k, f), np.result_type(x, dy))
        part = np.empty_like(dkernel)
        for a, b in _chunks(start, stop, step):
            dy2 = dy[a:b].reshape(-1, f)
            np.copyto(cols[: b - a], patches[a:b])
            dkernel += np.matmul(cols[: b - a].reshape(-1, k).T, dy2, out=part)
            if input_gradient:
                np.matmul(dy2, kmat_t, out=dcols[: b - a].reshape(-1, k))
                kernels.col2im(dcols[: b - a], *strides, top, left, dx[a:b])
        return dkernel, sums(dy[start:stop].reshape(-1, f))

    return images


# -- the same passes as compiled parts (cnnlab.engine.parts) ----------------------------------
def by_parts(x: np.ndarray, kernel: np.ndarray, strides, padding: str) -> bool:
    """Whether a convolution's passes can run as compiled parts (:mod:`cnnlab.engine.parts`,
    :func:`forward_table`): float32, and its plan multiplies by cnnlab's tiles, or by NumPy's
    BLAS where that is found."""
    if not x.dtype == kernel.dtype == np.float32:
        return False
    _, pads = window_geometry(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _by_tiles(x, kernel, _plan(x, kernel, strides, pads, None)) or (
        blas.sgemm_address() is not None
    )


def _table(x: np.ndarray, kernel: np.ndarray, strides, pads: Pads, threads: int):
    """The table of :mod:`cnnlab.engine.parts` with the geometry of the convolution of ``x``
    with ``kernel`` and each thread's images, and the shape's plan."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (oh, ow), _ = window_geometry((h, w), (kh, kw), strides, padding_of(pads))
    (top, bottom), (left, right) = pads
    plan = _plan(x, kernel, strides, pads, None)
    t = np.zeros(parts.SHARED_FIELDS + threads * parts.THREAD_FIELDS, np.int64)
    step = tuning.images_per_chunk(plan, (oh, ow), kh * kw * c, x.itemsize)
    geometry = {parts.N: n, parts.H: h, parts.W: w, parts.C: c, parts.HP: h + top + bottom,
                parts.WP: w + left + right, parts.F: f, parts.KH: kh, parts.KW: kw,
                parts.SH: strides[0], parts.SW: strides[1], parts.TOP: top, parts.LEFT: left,
                parts.OH: oh, parts.OW: ow, parts.THREADS: threads, parts.STEP: step}  # fmt: skip
    for field, value in geometry.items():
        t[field] = value
    if not _by_tiles(x, kernel, plan):  # NumPy's BLAS, at its address
        t[parts.GEMM], t[parts.GEMM_WIDE] = blas.sgemm_address()
        t[parts.GEMM_ROWS] = plan.gemm_rows(kh * kw * c, f)
    for index in range(threads):
        row = parts.SHARED_FIELDS + index * parts.THREAD_FIELDS
        t[row + parts.START], t[row + parts.STOP] = n * index // threads, n * (index + 1) // threads
    return t, plan


_kept = threading.local()


def _template(key: tuple, make: Callable[[], tuple[np.ndarray, list]]) -> np.ndarray:
    """A copy of the table ``make()`` gives for ``key`` (what it holds but the addresses of a
    call's own arrays: the geometry, the plan's way, each thread's buffers), made the first
    time on this thread and kept, with the buffers it points to: a training step meets the same
    shapes again and again, and making a table in Python took about 100 us."""
    tables = getattr(_kept, "tables", None)
    if tables is None:
        tables = _kept.tables = {}
    if key not in tables:
        table, buffers = tables[key] = make()
        held = sum(b.nbytes for _, kept in tables.values() for b in kept)
        if held > scratch.LIMIT_BYTES:  # many shapes: start again
            tables.clear()
            tables[key] = (table, buffers)
    return tables[key][0].copy()


def padding_of(pads: Pads) -> str:
    """The ``padding`` that gives ``pads``: "same" where there are any, else "valid"."""
    return "same" if any(map(any, pads)) else "valid"


def _rows(t: np.ndarray) -> list[np.ndarray]:
    """Each thread's row of the table ``t`` (views)."""
    rows = t[parts.SHARED_FIELDS :].reshape(-1, parts.THREAD_FIELDS)
    return list(rows)


def _chunk_fields(t: np.ndarray, x: np.ndarray, pads: Pads, way: int, keep: list) -> None:
    """Each thread's chunk buffer: the padded images of the direct way, zero on their border,
    or im2col's columns."""
    step, c = t[parts.STEP], t[parts.C]
    for index, row in enumerate(_rows(t)):
        if way == parts.DIRECT:
            shape = (step, t[parts.HP], t[parts.WP], c)
            buffer = scratch.buffer(("conv direct input", pads, index), shape, x.dtype, zeros=True)
        else:
            shape = (step, t[parts.OH], t[parts.OW], t[parts.KH], t[parts.KW], c)
            buffer = scratch.buffer(("conv cols", index), shape, x.dtype)
        row[parts.CHUNK] = buffer.ctypes.data
        keep.append(buffer)


def _winograd_fields(t, rows_field, c_in, c_out, v_field, m_field, dtype, name, keep) -> None:
    """Each thread's buffers of :func:`cnnlab.engine.winograd.forward_images` for images whose
    output is cut into ``t[rows_field]`` tiles, from ``c_in`` channels to ``c_out``."""
    tiles_ = t[rows_field]
    for index, row in enumerate(_rows(t)):
        v = scratch.buffer((name, "v", index), (36, tiles_, c_in), dtype)
        m = scratch.buffer((name, "m", index), (36, tiles_, c_out), dtype)
        row[v_field], row[m_field] = v.ctypes.data, m.ctypes.data
        keep += [v, m]


def forward_table(x, kernel, bias, strides, padding: str, threads: int):
    """The convolution's forward pass for :func:`cnnlab.engine.parts.conv_bn_forward`:
    ``(z, t, keep, cache)``, ``z`` not yet filled, ``t`` the table with the convolution's
    fields (the caller adds the rest), ``keep`` the arrays it points to (the caller holds them
    until the parts are done). For :func:`by_parts` convolutions."""
    _, pads = window_geometry(x.shape[1:3], kernel.shape[:2], strides, padding)
    x = np.ascontiguousarray(x)
    plan = _plan(x, kernel, strides, pads, None)
    key = ("forward", x.shape, kernel.shape, x.dtype, tuple(strides), pads, threads, plan)
    t = _template(key, lambda: _forward_template(x, kernel, strides, pads, threads))
    f = kernel.shape[3]
    z = np.empty((len(x), t[parts.OH], t[parts.OW], f), x.dtype)
    keep = [x, z]
    if t[parts.WAY] == parts.WINOGRAD:  # transformed by the parts
        weights = np.empty((36, *kernel.shape[2:]), x.dtype)
        taps = np.ascontiguousarray(kernel, x.dtype)
        t[parts.KERNEL] = taps.ctypes.data
        keep.append(taps)
        if bias is not None:  # z + bias, as the epilogue computes it
            ones = np.ones(f, x.dtype)
            epilogue = np.stack([-np.asarray(bias, x.dtype), ones, ones * 0])
            t[parts.EPILOGUE] = epilogue.ctypes.data
            keep.append(epilogue)
    else:
        weights = np.ascontiguousarray(kernel.reshape(-1, f))
        if bias is not None:
            bias = np.ascontiguousarray(bias, x.dtype)
            t[parts.BIAS] = bias.ctypes.data
            keep.append(bias)
    keep.append(weights)
    t[parts.X], t[parts.Z], t[parts.WEIGHTS] = x.ctypes.data, z.ctypes.data, weights.ctypes.data
    return z, t, keep, ConvCache(x, kernel, tuple(strides), pads)


def _forward_template(x, kernel, strides, pads: Pads, threads: int) -> tuple[np.ndarray, list]:
    """:func:`forward_table`'s table but for the call's own arrays, and its buffers."""
    t, plan = _table(x, kernel, strides, pads, threads)
    buffers: list[np.ndarray] = []
    if _by_winograd(x, kernel, strides, plan):
        t[parts.WAY], t[parts.TILES] = parts.WINOGRAD, winograd.tiles_of(t[parts.OH], t[parts.OW])
        _winograd_fields(t, parts.TILES, x.shape[3], kernel.shape[3], parts.V, parts.M, x.dtype,
                         "forward", buffers)  # fmt: skip
    else:
        t[parts.WAY] = parts.DIRECT if _direct(x, kernel, plan) else parts.IM2COL
        _chunk_fields(t, x, pads, t[parts.WAY], buffers)
    return t, buffers


def backward_table(cache: ConvCache, input_gradient: bool, threads: int):
    """The convolution's backward pass for :func:`cnnlab.engine.parts.conv_bn_backward`:
    ``(dx, dkernels, t, keep)``, ``dx`` (None without ``input_gradient``) and ``dkernels:
    (threads, kh*kw*C, F)``, each thread's kernel gradient, not yet filled; ``t`` and ``keep``
    as in :func:`forward_table`, with each thread's buffer for a chunk of the gradient at the
    convolution's output."""
    x, kernel, strides, pads = cache
    plan = _plan(x, kernel, strides, pads, None)
    key = ("backward", x.shape, kernel.shape, x.dtype, strides, pads, threads, plan,
           input_gradient)  # fmt: skip
    t = _template(key, lambda: _backward_template(cache, input_gradient, threads))
    kh, kw, c, f = kernel.shape
    weights = _input_gradient_weights(kernel, strides, t[parts.DX_WAY] == parts.DIRECT)
    dkernels = np.empty((threads, kh * kw * c, f), x.dtype)
    keep = [x, weights, dkernels]
    for index, row in enumerate(_rows(t)):
        row[parts.DKERNEL] = dkernels[index].ctypes.data
    t[parts.X], t[parts.KMAT_T] = x.ctypes.data, weights.ctypes.data
    dx = np.empty(x.shape, x.dtype) if input_gradient else None
    if dx is not None:
        t[parts.DX] = dx.ctypes.data
        keep.append(dx)
    if t[parts.DX_WAY] == parts.WINOGRAD:  # transformed by the parts
        turned, taps = np.empty((36, f, c), x.dtype), np.ascontiguousarray(kernel, x.dtype)
        t[parts.TURNED], t[parts.KERNEL] = turned.ctypes.data, taps.ctypes.data
        keep += [turned, taps]
    return dx, dkernels, t, keep


def _backward_template(cache: ConvCache, input_gradient: bool, threads: int):
    """:func:`backward_table`'s table but for the call's own arrays, and its buffers."""
    x, kernel, strides, pads = cache
    t, plan = _table(x, kernel, strides, pads, threads)
    kh, kw, c, f = kernel.shape
    buffers: list[np.ndarray] = []
    shape = (t[parts.STEP], t[parts.OH], t[parts.OW], f)
    for index, row in enumerate(_rows(t)):
        chunk = scratch.buffer(("conv output gradient", index), shape, x.dtype)
        row[parts.DZ_CHUNK] = chunk.ctypes.data
        buffers.append(chunk)
    t[parts.WAY] = parts.DIRECT if _direct(x, kernel, plan) else parts.IM2COL
    _chunk_fields(t, x, pads, t[parts.WAY], buffers)
    if input_gradient and _by_winograd(x, kernel, strides, plan):
        t[parts.DX_WAY], t[parts.TURNED_TILES] = parts.WINOGRAD, winograd.tiles_of(*x.shape[1:3])
        _winograd_fields(t, parts.TURNED_TILES, f, c, parts.V, parts.M, x.dtype, "input",
                         buffers)  # fmt: skip
    elif input_gradient:
        shape = (t[parts.STEP], t[parts.OH], t[parts.OW], kh, kw, c)
        dy_shape = (len(x), t[parts.OH], t[parts.OW], f)
        if _direct_input_gradient(x, kernel, plan):
            t[parts.DX_WAY] = parts.DIRECT
        for index, row in enumerate(_rows(t)):
            if t[parts.DX_WAY] == parts.DIRECT:
                chunk = _gradient_buffer(x.shape, dy_shape, (kh, kw), strides, pads,
                                         t[parts.STEP], x.dtype, index)  # fmt: skip
            else:
                chunk = scratch.buffer(("conv dcols", index), shape, x.dtype)
            row[parts.DX_CHUNK] = chunk.ctypes.data
            buffers.append(chunk)
    return t, buffers
