"""Max and average pooling over windows of each channel, NHWC.

Shapes::

    x: (N, H, W, C)  ->  y: (N, out_h, out_w, C)      (N, H, W, C) -> (N, C) for global

Formulas, for window ``W(i, j)`` = rows ``i*sh .. i*sh+ph-1`` and columns ``j*sw .. j*sw+pw-1``::

    max:     y[n, i, j, c] = max_{(a, b) in W(i, j)} x[n, a, b, c]
    average: y[n, i, j, c] = mean of the *real* (unpadded) x in W(i, j)    (Keras "same")
    global:  y[n, c] = mean_{i, j} x[n, i, j, c]

Backward: max pooling sends each window's gradient to its maximum (ties: the first in
row-major order, as PyTorch does on the CPU); average pooling shares it equally among the
window's real pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cnnlab.nn.padding import Pads, window_geometry
from cnnlab.nn.windows import add_windows, crop_hw, pad_hw, windows


class PoolCache(NamedTuple):
    """What pooling's backward pass needs. ``where``: for max pooling, the index of each
    window's maximum in the window, row-major; for average pooling, the number of real pixels
    in each window, ``(out_h, out_w, 1)``."""

    where: np.ndarray
    x_shape: tuple[int, ...]
    pads: Pads
    pool_size: tuple[int, int]
    strides: tuple[int, int]


def max_pool_forward(
    x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int], padding: str = "valid"
) -> tuple[np.ndarray, PoolCache]:
    """Forward pass of max pooling; padding (for "same") never wins the max."""
    n, h, w, c = x.shape
    (oh, ow), pads = window_geometry((h, w), pool_size, strides, padding)
    win = windows(pad_hw(x, pads, value=-np.inf), pool_size, strides, (oh, ow))
    flat = win.transpose(0, 1, 2, 5, 3, 4).reshape(n, oh, ow, c, -1)  # each window in a row
    argmax = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    return y, PoolCache(argmax, x.shape, pads, pool_size, strides)


def max_pool_backward(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Backward pass: each window's gradient goes to its (first) maximum."""
    argmax, x_shape, pads, (ph, pw), strides = cache
    n, oh, ow, c = dy.shape
    dwin = np.zeros((n, oh, ow, ph, pw, c), dtype=dy.dtype)
    for a in range(ph):
        for b in range(pw):
            dwin[:, :, :, a, b] = np.where(argmax == a * pw + b, dy, 0)
    return _back_onto_pixels(dwin, x_shape, pads, strides)


def avg_pool_forward(
    x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int], padding: str = "valid"
) -> tuple[np.ndarray, PoolCache]:
    """Forward pass of average pooling; with "same" only real values are counted (Keras)."""
    n, h, w, c = x.shape
    (oh, ow), pads = window_geometry((h, w), pool_size, strides, padding)
    ones = pad_hw(np.ones((1, h, w, 1), dtype=x.dtype), pads)
    counts = windows(ones, pool_size, strides, (oh, ow)).sum(axis=(3, 4))[0]  # real pixels
    y = windows(pad_hw(x, pads), pool_size, strides, (oh, ow)).sum(axis=(3, 4)) / counts
    return y, PoolCache(counts, x.shape, pads, pool_size, strides)


def avg_pool_backward(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """Backward pass: each window shares its gradient equally among its real pixels."""
    counts, x_shape, pads, (ph, pw), strides = cache
    share = dy / counts
    dwin = np.broadcast_to(share[:, :, :, None, None, :], (*dy.shape[:3], ph, pw, dy.shape[3]))
    return _back_onto_pixels(dwin, x_shape, pads, strides)


def _back_onto_pixels(dwin: np.ndarray, x_shape, pads: Pads, strides) -> np.ndarray:
    """Add each window's gradient back onto the pixels under it; the padding's is dropped."""
    n, h, w, c = x_shape
    (top, bottom), (left, right) = pads
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=dwin.dtype)
    return crop_hw(add_windows(dxp, dwin, strides), pads, (h, w))


def global_avg_pool_forward(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x: (N, H, W, C) -> y: (N, C)``; the cache is the input's shape."""
    return x.mean(axis=(1, 2)), x.shape


def global_avg_pool_backward(dy: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    """Each pixel receives ``dy / (H * W)``."""
    n, h, w, c = x_shape
    return np.broadcast_to((dy / (h * w))[:, None, None, :], x_shape).copy()
