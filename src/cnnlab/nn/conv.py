"""2-D convolution (cross-correlation, as on the slide), NHWC, as im2col and one matrix product.

Shapes::

    x:      (N, H, W, C)           images, channels last
    kernel: (kh, kw, C, F)         F filters of kh x kw x C weights
    bias:   (F,) or None
    y:      (N, out_h, out_w, F)   one feature map per filter

Forward, for output pixel ``(i, j)`` of filter ``f``::

    y[n, i, j, f] = bias[f] + sum_{a, b, c} xp[n, i*sh + a, j*sw + b, c] * kernel[a, b, c, f]

where ``xp`` is ``x`` padded as :mod:`cnnlab.nn.padding` says. Each output pixel is the
lecture's "multiply the patch pixel-wise with the filter and sum" (:func:`convolve_patch`).
im2col lays every patch out as one row of a matrix, ``cols: (N*out_h*out_w, kh*kw*C)``, so
that one matrix product with the kernel, seen as ``(kh*kw*C, F)``, computes every output
pixel of every filter at once.

Backward, with ``dy`` seen as ``(N*out_h*out_w, F)``::

    dkernel = cols.T @ dy          each weight: the sum of the pixels it multiplied, times dy
    dbias   = sum of dy's rows
    dcols   = dy @ kernel.T        each patch's gradient; col2im adds it back onto its pixels
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.nn.padding import Pads, window_geometry
from cnnlab.nn.windows import add_windows, crop_hw, pad_hw, windows


class ConvCache(NamedTuple):
    """What the backward pass needs: the input, the kernel, the strides and the padding."""

    x: np.ndarray
    kernel: np.ndarray
    strides: tuple[int, int]
    pads: Pads


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


def im2col(
    x: np.ndarray,
    window: tuple[int, int],
    strides: tuple[int, int],
    pads: Pads,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """``cols: (N*out_h*out_w, kh*kw*C)``: row ``(n, i, j)`` is the patch of the padded ``x``
    under output pixel ``(i, j)``, its ``kh x kw x C`` values in row-major order."""
    (kh, kw), c = window, x.shape[-1]
    patches = windows(pad_hw(x, pads), window, strides, out_hw)  # (N, oh, ow, kh, kw, C)
    return patches.reshape(-1, kh * kw * c)


def col2im(
    dcols: np.ndarray,
    x_shape: tuple[int, ...],
    window: tuple[int, int],
    strides: tuple[int, int],
    pads: Pads,
    out_hw: tuple[int, int],
) -> np.ndarray:
    """The adjoint of :func:`im2col`: ``dx: x_shape``, where each pixel gets the sum of the
    rows of ``dcols`` for every patch it is part of; what falls on the padding is dropped."""
    n, h, w, c = x_shape
    (top, bottom), (left, right) = pads
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dcols.dtype)
    add_windows(dxp, dcols.reshape(n, *out_hw, *window, c), strides)
    return crop_hw(dxp, pads, (h, w))


def conv2d_forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "valid",
) -> tuple[np.ndarray, ConvCache]:
    """``y: (N, out_h, out_w, F)`` and the cache for :func:`conv2d_backward`."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    (oh, ow), pads = window_geometry((h, w), (kh, kw), strides, padding)
    cols = im2col(x, (kh, kw), strides, pads, (oh, ow))
    y = cols @ kernel.reshape(kh * kw * c, f)  # every patch times every filter
    if bias is not None:
        y += bias
    return y.reshape(n, oh, ow, f), ConvCache(x, kernel, strides, pads)


def conv2d_backward(
    dy: np.ndarray, cache: ConvCache, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``dy: (N, out_h, out_w, F)`` -> ``(dx, dkernel, dbias)``.

    im2col is done again from the cached input. ``input_gradient=False`` skips ``dx``
    (returned as None): the first layer of a model needs only its weights' gradients.
    """
    x, kernel, strides, pads = cache
    n, oh, ow, f = dy.shape
    kh, kw, c, _ = kernel.shape
    dy2 = dy.reshape(n * oh * ow, f)
    cols = im2col(x, (kh, kw), strides, pads, (oh, ow))
    dkernel = (cols.T @ dy2).reshape(kernel.shape)
    dbias = dy2.sum(axis=0)
    if not input_gradient:
        return None, dkernel, dbias
    dcols = dy2 @ kernel.reshape(kh * kw * c, f).T
    return col2im(dcols, x.shape, (kh, kw), strides, pads, (oh, ow)), dkernel, dbias
