"""Max and average pooling over windows of each channel, NHWC.

Shapes::

    x: (N, H, W, C)  ->  y: (N, out_h, out_w, C)

Formulas, for window ``W(i, j)`` = rows ``i*sh .. i*sh+ph-1`` and columns ``j*sw .. j*sw+pw-1``::

    max:     y[n, i, j, c] = max_{(a, b) in W(i, j)} x[n, a, b, c]
    average: y[n, i, j, c] = mean of the *real* (unpadded) x in W(i, j)    (Keras "same")

Ties in max pooling: the whole gradient goes to the first maximum of the window in row-major
order (top row first, then left to right), as PyTorch does on the CPU.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops.padding import window_geometry
from cnnlab.ops.windows import add_windows, pad_hw, windows


def max_pool_forward(
    x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int], padding: str = "valid"
) -> tuple[np.ndarray, tuple]:
    """Forward pass of max pooling; padding (for "same") never wins the max."""
    n, h, w, c = x.shape
    (oh, ow), pads = window_geometry((h, w), pool_size, strides, padding)
    xp = pad_hw(x, pads, value=-np.inf)
    win = windows(xp, pool_size, strides, (oh, ow))
    flat = win.transpose(0, 1, 2, 5, 3, 4).reshape(n, oh, ow, c, -1)
    argmax = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    return y, (argmax, x.shape, xp.shape, pads, pool_size, strides)


def max_pool_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """Backward pass: each window's gradient goes to its (first) maximum."""
    argmax, x_shape, xp_shape, pads, (ph, pw), strides = cache
    n, oh, ow, c = dy.shape
    dwin = np.zeros((n, oh, ow, ph, pw, c), dtype=dy.dtype)
    for a in range(ph):
        for b in range(pw):
            dwin[:, :, :, a, b] = np.where(argmax == a * pw + b, dy, 0)
    dxp = add_windows(np.zeros(xp_shape, dtype=dy.dtype), dwin, strides)
    return _crop(dxp, x_shape, pads)


def _window_counts(hw: tuple[int, int], pool_size, strides, padding: str, dtype) -> np.ndarray:
    """Number of real (unpadded) pixels in each window: ``(out_h, out_w, 1)``."""
    (oh, ow), pads = window_geometry(hw, pool_size, strides, padding)
    ones = pad_hw(np.ones((1, *hw, 1), dtype=dtype), pads)
    return windows(ones, pool_size, strides, (oh, ow)).sum(axis=(3, 4))[0]


def avg_pool_forward(
    x: np.ndarray, pool_size: tuple[int, int], strides: tuple[int, int], padding: str = "valid"
) -> tuple[np.ndarray, tuple]:
    """Forward pass of average pooling; with "same" only real values are counted (Keras)."""
    n, h, w, c = x.shape
    (oh, ow), pads = window_geometry((h, w), pool_size, strides, padding)
    xp = pad_hw(x, pads)
    counts = _window_counts((h, w), pool_size, strides, padding, x.dtype)
    y = windows(xp, pool_size, strides, (oh, ow)).sum(axis=(3, 4)) / counts
    return y, (counts, x.shape, xp.shape, pads, pool_size, strides)


def avg_pool_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """Backward pass: each window shares its gradient equally among its real pixels."""
    counts, x_shape, xp_shape, pads, (ph, pw), strides = cache
    share = dy / counts
    dwin = np.broadcast_to(share[:, :, :, None, None, :], (*dy.shape[:3], ph, pw, dy.shape[3]))
    dxp = add_windows(np.zeros(xp_shape, dtype=dy.dtype), dwin, strides)
    return _crop(dxp, x_shape, pads)


def _crop(dxp: np.ndarray, x_shape, pads) -> np.ndarray:
    (top, _), (left, _) = pads
    _, h, w, _ = x_shape
    return dxp[:, top : top + h, left : left + w]


def global_avg_pool_forward(x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """``x: (N, H, W, C) -> y: (N, C)``, ``y[n, c] = mean_{i, j} x[n, i, j, c]``."""
    return x.mean(axis=(1, 2)), (x.shape,)


def global_avg_pool_backward(dy: np.ndarray, cache: tuple) -> np.ndarray:
    """Each pixel receives ``dy / (H * W)``."""
    (shape,) = cache
    n, h, w, c = shape
    return np.broadcast_to((dy / (h * w))[:, None, None, :], shape).copy()
