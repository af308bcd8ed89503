"""The bundled default: scikit-learn's handwritten digits (no download), and a shifted version.

``digits``: 1,797 images of 8x8 pixels with values 0..16 (UCI optical digits), scaled to
uint8 0..255 by ``round(v * 255 / 16)``, split 80/20 into train and test with a fixed seed.

``shifted_digits``: the same digits, each enlarged x2 (every pixel repeated 2x2, so 16x16,
still legible) and pasted at random places on a blank 32x32 canvas: each training digit at 4
places (5,752 images), each test digit at one. A digit's position now carries no information
about its class: a dense network has to learn every digit at every position separately, while
a CNN's shared filters find a stroke wherever it is, so the CNN wins clearly (the lecture's
point about translation). Positions are drawn with a fixed seed; the images of one training
digit share a group (``train_groups``), so that a validation split keeps each digit whole.
"""

from __future__ import annotations

import numpy as np

from cnnlab.datasets.dataset import Dataset
from cnnlab.datasets.preprocessing import train_val_split

CLASS_NAMES = [str(digit) for digit in range(10)]
TEST_SPLIT = 0.2


def load_digits(seed: int = 0, test_split: float = TEST_SPLIT) -> Dataset:
    """Digits: x (1438, 8, 8, 1) train and (359, 8, 8, 1) test, uint8 0..255; y int64 0..9."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[..., np.newaxis]
    labels = bunch.target.astype(np.int64)
    train, test = train_val_split(images, labels, test_split, seed=seed)
    return Dataset(train, test, CLASS_NAMES, "digits")


def load_shifted_digits(
    canvas_size: int = 32,
    upscale: int = 2,
    seed: int = 0,
    test_split: float = TEST_SPLIT,
    copies: int = 4,
) -> Dataset:
    """Digits enlarged ``upscale`` times and placed at random on ``canvas_size`` squares.

    x: (1438 * copies, canvas, canvas, 1) train and (359, canvas, canvas, 1) test, uint8; the
    train and test digits are those of :func:`load_digits` with the same ``seed`` and
    ``test_split``. Each training digit is placed ``copies`` times, its images one after the
    other (``train_groups`` names the digit of each); each test digit once. Each digit's
    top-left corner is uniform over the ``canvas - 8 * upscale + 1`` places per axis.
    """
    if upscale < 1:
        raise ValueError(f"upscale must be an int >= 1, got {upscale!r}")
    size = 8 * upscale
    if canvas_size < size:
        raise ValueError(
            f"canvas_size must be at least {size} to hold an 8x8 digit upscaled x{upscale}, "
            f"got {canvas_size}"
        )
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an int >= 1, got {copies!r}")
    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed, test_split=test_split)
    rng = np.random.default_rng(seed)
    test = _place(_enlarge(x_test, upscale), canvas_size, rng)
    train = _place(np.repeat(_enlarge(x_train, upscale), copies, axis=0), canvas_size, rng)
    groups = np.repeat(np.arange(len(x_train)), copies)
    return Dataset(
        (train, np.repeat(y_train, copies)),
        (test, y_test),
        CLASS_NAMES,
        "shifted_digits",
        train_groups=groups,
    )


def load_centred_digits(canvas_size: int = 32, upscale: int = 2, seed: int = 0) -> Dataset:
    """The digits of :func:`load_digits`, enlarged ``upscale`` times, each in the middle of a
    blank ``canvas_size`` square: x (1438, canvas, canvas, 1) train and (359, ...) test."""
    size = 8 * upscale
    if canvas_size < size:
        raise ValueError(f"canvas_size must be at least {size}, got {canvas_size}")
    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed)
    at = (canvas_size - size) // 2
    centred = []
    for x in (x_train, x_test):
        canvas = np.zeros((len(x), canvas_size, canvas_size, 1), dtype=x.dtype)
        canvas[:, at : at + size, at : at + size] = _enlarge(x, upscale)
        centred.append(canvas)
    return Dataset((centred[0], y_train), (centred[1], y_test), CLASS_NAMES, "centred_digits")


def _enlarge(x: np.ndarray, factor: int) -> np.ndarray:
    """(N, h, w, C) -> (N, h * factor, w * factor, C), each pixel repeated factor x factor."""
    return np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)


def _place(x: np.ndarray, canvas_size: int, rng: np.random.Generator) -> np.ndarray:
    """Paste each (size x size) image at a random offset on a zero canvas."""
    n, size, _, channels = x.shape
    top = rng.integers(0, canvas_size - size + 1, size=n)
    left = rng.integers(0, canvas_size - size + 1, size=n)
    canvas = np.zeros((n, canvas_size, canvas_size, channels), dtype=x.dtype)
    rows = top[:, None] + np.arange(size)  # (N, size)
    cols = left[:, None] + np.arange(size)  # (N, size)
    canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = x
    return canvas
