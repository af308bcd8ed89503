"""Sliding windows over NHWC images, and their adjoint (im2col / col2im).

``windows(xp, (kh, kw), (sh, sw), (out_h, out_w))`` is a strided *view* of shape
``(N, out_h, out_w, kh, kw, C)``: ``view[n, i, j, a, b, c] = xp[n, i*sh + a, j*sw + b, c]``.
Nothing is copied until the caller reshapes it into an im2col matrix.
"""

from __future__ import annotations

import numpy as np


def pad_hw(x: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]], value: float = 0.0):
    """Pad the height and width axes of ``x: (N, H, W, C)``; no copy when there is no padding."""
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


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
            dxp[:, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw] += dwin[
                :, :, :, a, b
            ]
    return dxp
