"""Output sizes and padding amounts: the one place where cnnlab computes shapes.

Keras/TensorFlow conventions, for one spatial axis of length ``n``, a window of ``k`` and a
stride ``s``:

- ``"valid"``: no padding, ``out = floor((n - k) / s) + 1``.
- ``"same"``: ``out = ceil(n / s)``; the total padding is ``max(0, (out - 1) * s + k - n)``,
  split as ``total // 2`` before and the rest after, so an odd row or column goes to the
  bottom/right (PyTorch pads symmetrically instead).
"""

from __future__ import annotations

PADDINGS = ("valid", "same")

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


def output_length(n: int, k: int, s: int, padding: str) -> int:
    """Length of one spatial axis after a window of size ``k`` slides with stride ``s``."""
    if padding == "same":
        return -(-n // s)
    return (n - k) // s + 1


def pad_amounts(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """``(before, after)`` padding of one spatial axis; the odd one goes after."""
    if padding == "valid":
        return (0, 0)
    total = max(0, (output_length(n, k, s, "same") - 1) * s + k - n)
    return (total // 2, total - total // 2)


def window_geometry(
    hw: tuple[int, int], window: tuple[int, int], strides: tuple[int, int], padding: str
) -> tuple[tuple[int, int], Pads]:
    """Output ``(height, width)`` and ``((top, bottom), (left, right))`` padding."""
    out = tuple(
        output_length(n, k, s, padding) for n, k, s in zip(hw, window, strides, strict=True)
    )
    pads = tuple(pad_amounts(n, k, s, padding) for n, k, s in zip(hw, window, strides, strict=True))
    return out, pads
