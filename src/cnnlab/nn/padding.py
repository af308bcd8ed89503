"""Output sizes and padding amounts: the one place where cnnlab computes shapes.

Keras/TensorFlow conventions:

- ``"valid"``: no padding, ``out = floor((n - k) / s) + 1``.
- ``"same"``: ``out = ceil(n / s)``; the total padding is ``max(0, (out - 1) * s + k - n)``,
  split as ``total // 2`` before and the rest after, so an odd row or column goes to the
  bottom/right (PyTorch pads symmetrically instead).
"""

from __future__ import annotations

PADDINGS = ("valid", "same")


def normalize_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Turn ``3`` into ``(3, 3)`` and check a pair of positive integers."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a positive int or a pair of them, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ValueError(f"`{name}` must be a positive int or a pair of them, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"`{name}` must be a positive int or a pair of them, got {value!r}")
    return pair


def check_padding(padding: str) -> str:
    """Return ``padding`` lower-cased, or raise naming the valid choices."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}, got {padding!r}")
    return padding.lower()


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
) -> tuple[tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]:
    """Output ``(height, width)`` and ``((top, bottom), (left, right))`` padding."""
    out = tuple(
        output_length(n, k, s, padding) for n, k, s in zip(hw, window, strides, strict=True)
    )
    pads = tuple(pad_amounts(n, k, s, padding) for n, k, s in zip(hw, window, strides, strict=True))
    return out, pads
