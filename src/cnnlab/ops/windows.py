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


def _overlap(offset: int, stride: int, out_len: int, in_len: int) -> tuple[int, int, int]:
    """Outputs ``i`` in ``[i0, i1)`` whose input ``i * stride + offset`` lies in
    ``[0, in_len)``; returns ``(i0, i1, first input index)``."""
    i0 = max(0, -(offset // stride))  # ceil(-offset / stride)
    i1 = min(out_len, (in_len - 1 - offset) // stride + 1)
    return i0, i1, i0 * stride + offset


def add_offset_windows(
    doff: np.ndarray,
    x_shape: tuple[int, int, int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    phases: np.ndarray | None = None,
) -> np.ndarray:
    """col2im, fast: :func:`add_windows` into the padded image, then crop, in one go.

    ``doff: (kh, kw, N, oh, ow, C)`` holds, for each kernel offset ``(a, b)``, one contiguous
    block: the gradient of pixel ``(a, b)`` of every window. The blocks are added into a new
    *unpadded* ``dx`` of shape ``x_shape = (N, H, W, C)``, which is returned; what would land on
    the padding is dropped. Contiguous blocks make each of the ``kh * kw`` slice additions one
    long run per image row instead of one short run per pixel. With a column stride ``sw > 1``
    the target columns of one offset are ``sw`` apart, so the sums go to ``phases``, a scratch
    buffer ``(N, H, sw, ceil(W / sw), C)`` split by column phase (``w % sw``; any contents, it
    is zeroed here), and one copy interleaves the phases into ``dx`` at the end.
    """
    n, h, w, c = x_shape
    kh, kw, _, oh, ow, _ = doff.shape
    (sh, sw), ((top, _), (left, _)) = strides, pads
    per_phase = -(-w // sw)
    if sw == 1:
        target = np.zeros((n, h, 1, w, c), dtype=doff.dtype)  # one column phase: dx itself
    else:
        target = np.zeros((n, h, sw, per_phase, c), doff.dtype) if phases is None else phases
        target.fill(0)
    for a in range(kh):
        i0, i1, r0 = _overlap(a - top, sh, oh, h)
        rows = slice(r0, r0 + sh * (i1 - i0 - 1) + 1, sh)
        for b in range(kw):
            j0, j1, c0 = _overlap(b - left, sw, ow, w)
            if i1 > i0 and j1 > j0:
                q0 = c0 // sw  # column c0 is entry q0 of phase c0 % sw
                target[:, rows, c0 % sw, q0 : q0 + j1 - j0] += doff[a, b, :, i0:i1, j0:j1]
    if sw == 1:
        return target.reshape(x_shape)
    dx = np.empty((n, h, per_phase, sw, c), dtype=doff.dtype)
    np.copyto(dx, target.transpose(0, 1, 3, 2, 4))  # column q * sw + p is phase p's entry q
    return dx.reshape(n, h, per_phase * sw, c)[:, :, :w]
