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
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops.padding import window_geometry
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


def conv2d_forward(
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


def conv2d_backward(dy: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
