"""Sliding windows over NHWC images, and their adjoint: the two halves of im2col and col2im.

``windows(xp, (kh, kw), (sh, sw), (out_h, out_w))`` is a strided *view* of shape
``(N, out_h, out_w, kh, kw, C)``::

    view[n, i, j, a, b, c] = xp[n, i*sh + a, j*sw + b, c]

the ``kh x kw`` patch under output pixel ``(i, j)``. Nothing is copied until the caller
reshapes it. :func:`add_windows` goes the other way: it adds a gradient for every patch back
onto the pixels the patch came from.
"""

from __future__ import annotations

import numpy as np

from cnnlab.nn.padding import Pads


def pad_hw(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the height and width axes of ``x: (N, H, W, C)``; no copy when there is no padding."""
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def crop_hw(xp: np.ndarray, pads: Pads, hw: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`pad_hw`: the ``(H, W)`` inside of ``xp``, without the padding."""
    (top, _), (left, _) = pads
    return xp[:, top : top + hw[0], left : left + hw[1]]


def windows(
    xp: np.ndarray, window: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """Read-only view ``(N, out_h, out_w, kh, kw, C)`` of the windows of ``xp: (N, H, W, C)``."""
    n, _, _, c = xp.shape
    sn, sh_, sw_, sc = xp.strides
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
    return np.lib.stride_tricks.as_strided(
        xp,
        shape=(n, oh, ow, kh, kw, c),
        strides=(sn, sh_ * sh, sw_ * sw, sh_, sw_, sc),
        writeable=False,
    )


def add_windows(dxp: np.ndarray, dwin: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """Adjoint of :func:`windows`: add ``dwin: (N, oh, ow, kh, kw, C)`` back into ``dxp``.

    One strided slice per kernel offset ``(a, b)``, so overlapping windows sum correctly
    without ``np.add.at``.
    """
    _, oh, ow, kh, kw, _ = dwin.shape
    sh, sw = strides
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + sh * (oh - 1) + 1, sh)
            cols = slice(b, b + sw * (ow - 1) + 1, sw)
            dxp[:, rows, cols] += dwin[:, :, :, a, b]
    return dxp
