"""2-D convolution (cross-correlation, as on the slide), NHWC, as im2col plus one matrix product.

Shapes::

    x:      (N, H, W, C)           images, channels last
    kernel: (kh, kw, C, F)         F filters of kh x kw x C weights
    bias:   (F,) or None
    y:      (N, out_h, out_w, F)

Formula, for output pixel ``(i, j)`` of filter ``f``::

    y[n, i, j, f] = bias[f] + sum_{a, b, c} xp[n, i*sh + a, j*sw + b, c] * kernel[a, b, c, f]

where ``xp`` is ``x`` padded as :mod:`cnnlab.ops.padding` says. Each output pixel is the
lecture's "multiply the patch pixel-wise with the filter and sum" (:func:`convolve_patch`).

Two implementations of the same math: ``conv2d_*_reference`` is the plain one, written to be
read; ``conv2d_forward`` / ``conv2d_backward`` are the fast ones the layers use. They do the
same im2col and matrix products, but reuse their buffers from step to step (``workspace``),
col2im is a compiled loop (:func:`cnnlab.ops.kernels.col2im`) that adds straight into the
unpadded input gradient, and each core takes a slice of the batch through the whole op
(:mod:`cnnlab.ops.parallel`). A test checks that both give the same numbers.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import kernels, parallel
from cnnlab.ops.padding import window_geometry
from cnnlab.ops.sums import column_sums
from cnnlab.ops.windows import add_windows, pad_hw, windows


def convolve_patch(patch: np.ndarray, filter: np.ndarray) -> float:
    """One step of a convolution: multiply ``patch`` and ``filter`` pixel-wise, then sum.

    ``patch`` and ``filter`` have the same shape, e.g. ``(3, 3)``; the slide's example gives 2.3.
    """
    patch, filter = np.asarray(patch), np.asarray(filter)
    if patch.shape != filter.shape:
        raise ValueError(
            f"patch and filter must have the same shape, got {patch.shape} and {filter.shape}"
        )
    return float(np.sum(patch * filter))


def conv2d_forward_reference(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "valid",
) -> tuple[np.ndarray, tuple]:
    """Forward pass. Returns ``y: (N, out_h, out_w, F)`` and the cache for the backward pass."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (oh, ow), pads = window_geometry((h, w), (kh, kw), strides, padding)
    xp = pad_hw(x, pads)
    # im2col: one row per output pixel, holding its kh*kw*C patch.
    cols = windows(xp, (kh, kw), strides, (oh, ow)).reshape(n * oh * ow, kh * kw * c)
    y = cols @ kernel.reshape(kh * kw * c, f)
    if bias is not None:
        y += bias
    return y.reshape(n, oh, ow, f), (cols, kernel, x.shape, xp.shape, pads, strides)


def conv2d_backward_reference(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass. ``dy: (N, out_h, out_w, F)`` -> ``(dx, dkernel, dbias)``.

    ``dkernel = cols.T @ dy`` and ``dcols = dy @ kernel.T``; col2im adds ``dcols`` back
    into the padded input, one kernel offset at a time, and the padding is cut off.
    """
    cols, kernel, x_shape, xp_shape, pads, strides = cache
    n, oh, ow, f = dy.shape
    kh, kw, c, _ = kernel.shape
    dy2 = dy.reshape(n * oh * ow, f)
    dkernel = (cols.T @ dy2).reshape(kernel.shape)
    dbias = dy2.sum(axis=0)
    dcols = (dy2 @ kernel.reshape(kh * kw * c, f).T).reshape(n, oh, ow, kh, kw, c)
    dxp = add_windows(np.zeros(xp_shape, dtype=dy.dtype), dcols, strides)
    (top, _), (left, _) = pads
    _, h, w, _ = x_shape
    return dxp[:, top : top + h, left : left + w], dkernel, dbias


def _buffer(workspace: dict | None, key: str, shape: tuple, dtype, zeros: bool = False):
    """A scratch array kept in ``workspace`` from one call to the next (fresh without one)."""
    if workspace is None:
        return np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)
    buf = workspace.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = workspace[key] = np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)
    return buf


def conv2d_forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "valid",
    workspace: dict | None = None,
) -> tuple[np.ndarray, tuple]:
    """Forward pass, fast: :func:`conv2d_forward_reference` with reused buffers, the batch
    split over the cores (:func:`cnnlab.ops.parallel.over_batch`).

    ``workspace`` is a dict the caller keeps between calls (a layer keeps one); the padded
    input and the im2col matrix live there, so a training step allocates them only once. The
    cache holds the im2col matrix, so it is valid until the next call with the same workspace.
    """
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    k = kh * kw * c
    (oh, ow), pads = window_geometry((h, w), (kh, kw), strides, padding)
    (top, bottom), (left, right) = pads
    padded = top or bottom or left or right
    xp_shape = (n, h + top + bottom, w + left + right, c)
    # The border of the padded buffer is zeroed once; each call writes only its inside.
    xp = _buffer(workspace, "xp", xp_shape, x.dtype, zeros=True) if padded else x
    cols = _buffer(workspace, "cols", (n, oh, ow, kh, kw, c), x.dtype)
    kmat = kernel.reshape(k, f)
    y = np.empty((n, oh, ow, f), dtype=np.result_type(x, kernel))

    def images(start: int, stop: int) -> None:
        if padded:
            xp[start:stop, top : top + h, left : left + w] = x[start:stop]
        np.copyto(cols[start:stop], windows(xp[start:stop], (kh, kw), strides, (oh, ow)))
        np.matmul(cols[start:stop].reshape(-1, k), kmat, out=y[start:stop].reshape(-1, f))
        if bias is not None:
            y[start:stop] += bias

    parallel.over_batch(images, n)
    return y, (cols, kernel, x.shape, pads, strides)


def conv2d_backward(
    dy: np.ndarray, cache: tuple, workspace: dict | None = None, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Backward pass, fast: :func:`conv2d_backward_reference` with a reused buffer, the batch
    split over the cores.

    ``dkernel = cols.T @ dy`` (each slice's part, added up) and ``dcols = dy @ kernel.T``, two
    matrix products; col2im is a compiled loop (:func:`cnnlab.ops.kernels.col2im`) that adds
    ``dcols`` straight into the unpadded ``dx``. ``input_gradient=False`` skips ``dx``
    (returned as None): the first layer of a model needs only its weight gradients.
    """
    cols, kernel, x_shape, pads, strides = cache
    n, oh, ow, f = dy.shape
    kh, kw, c, _ = kernel.shape
    k = kh * kw * c
    kmat_t = kernel.reshape(k, f).T
    dtype = np.result_type(dy, kernel)
    dy = np.ascontiguousarray(dy)
    if input_gradient:
        dcols = _buffer(workspace, "dcols", (n, oh, ow, kh, kw, c), dtype)
        dx = np.empty(x_shape, dtype=dtype)
        (top, _), (left, _) = pads

    def images(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        dy2 = dy[start:stop].reshape(-1, f)
        if input_gradient:
            np.matmul(dy2, kmat_t, out=dcols[start:stop].reshape(-1, k))
            kernels.col2im(dcols[start:stop], *strides, top, left, dx[start:stop])
        return cols[start:stop].reshape(-1, k).T @ dy2, column_sums(dy2)

    parts = parallel.over_batch(images, n)
    dkernel = sum(part[0] for part in parts)
    dbias = sum(part[1] for part in parts)
    return (dx if input_gradient else None), dkernel.reshape(kernel.shape), dbias
