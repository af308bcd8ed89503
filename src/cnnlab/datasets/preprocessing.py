"""From uint8 images to what a network eats: scaling, one-hot labels, a validation split, and
random flips and crops (data augmentation)."""

from __future__ import annotations

import numpy as np

from cnnlab.seeding import make_rng


def scale(x: np.ndarray, feature_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 in ``feature_range``: 0 -> low, 255 -> high, linearly.

    The lecture scales to [-1, 1] (the default); many books to ``(0, 1)``. The range is the
    fixed pixel range 0..255, not the data's minimum and maximum. ``x``: any shape, uint8.
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(
            f"scale expects uint8 pixels (0..255), got dtype {x.dtype}"
            + (": already scaled?" if x.dtype.kind == "f" else "")
        )
    low, high = (float(v) for v in feature_range)
    if not low < high:
        raise ValueError(f"feature_range must be (low, high) with low < high, got {feature_range}")
    # 255 * (high - low) / 255 is exact in float32, so the ends land exactly on low and high.
    span = np.float32(high - low)
    return x.astype(np.float32) * span / np.float32(255) + np.float32(low)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels (N,) -> float32 (N, num_classes), a 1 at each label's column."""
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"one_hot expects integer labels of shape (N,), got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for num_classes={num_classes}, got labels "
            f"from {y.min()} to {y.max()}"
        )
    encoded = np.zeros((len(y), num_classes), dtype=np.float32)
    encoded[np.arange(len(y)), y] = 1.0
    return encoded


def take(limit: int | None, *arrays: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The same ``limit`` samples of each array (``--limit``): drawn at random by ``seed``, the
    same draw every time, kept in their order; every sample when ``limit`` is None or not
    smaller than their number. Drawn rather than the first ``limit``: an image folder comes
    ordered by class, and its first images would hold only the first classes."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"the arrays must have the same length, got {[len(a) for a in arrays]}")
    if limit is None or limit >= n:
        return arrays
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:limit])
    return tuple(a[keep] for a in arrays)


def train_val_split(
    x: np.ndarray,
    y: np.ndarray,
    validation_split: float,
    seed: int | None = None,
    groups: np.ndarray | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle ``(x, y)`` with ``seed`` and hold out ``validation_split`` of it.

    Returns ``(x_train, y_train), (x_val, y_val)`` with ``round(N * validation_split)``
    validation samples. ``groups`` (one id per sample): hold out that share of the groups
    instead, each whole, so that samples made from one source never fall on both sides.
    ``seed=None`` draws from cnnlab's global seed (:func:`cnnlab.set_random_seed`).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must lie in (0, 1), got {validation_split!r}")
    if groups is None:
        n = len(x)
        n_val = _held_out(n, validation_split, "samples")
        order = make_rng(seed).permutation(n)
        train, val = order[n_val:], order[:n_val]
        return (x[train], y[train]), (x[val], y[val])
    groups = np.asarray(groups)
    if len(groups) != len(x):
        raise ValueError(f"groups must have one id per sample ({len(x)}), got {len(groups)}")
    names = np.unique(groups)
    n_val = _held_out(len(names), validation_split, "groups")
    held = np.isin(groups, names[make_rng(seed).permutation(len(names))[:n_val]])
    return (x[~held], y[~held]), (x[held], y[held])


def _held_out(n: int, validation_split: float, what: str) -> int:
    """``round(n * validation_split)``, checked to leave at least one on each side."""
    n_val = int(round(n * validation_split))
    if not 0 < n_val < n:
        raise ValueError(
            f"validation_split={validation_split} of {n} {what} leaves {n_val} for validation "
            f"and {n - n_val} for training; both must be at least 1"
        )
    return n_val


def augment(
    x: np.ndarray,
    rng: np.random.Generator | int | None = None,
    flip: bool = True,
    crop_padding: int = 4,
) -> np.ndarray:
    """Random horizontal flips and random crops of a batch, the classic CIFAR augmentation.

    ``x``: (N, H, W, C). Each image is mirrored left-right with probability 1/2 (``flip``),
    then padded with ``crop_padding`` zeros on every side and cut back to H x W at a random
    offset, i.e. shifted by -p..p pixels each way. Returns a new array of the same shape and
    dtype. ``rng``: a ``numpy.random.Generator`` or a seed; the same seed gives the same batch.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"augment expects a batch (N, H, W, C), got shape {x.shape}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    rng = np.random.default_rng(rng)
    n, height, width, _ = x.shape
    out = x.copy()
    if flip:
        mirrored = rng.random(n) < 0.5
        out[mirrored] = out[mirrored, :, ::-1]
    if crop_padding:
        p = crop_padding
        padded = np.pad(out, ((0, 0), (p, p), (p, p), (0, 0)))
        top = rng.integers(0, 2 * p + 1, size=n)
        left = rng.integers(0, 2 * p + 1, size=n)
        rows = top[:, None] + np.arange(height)  # (N, H)
        cols = left[:, None] + np.arange(width)  # (N, W)
        images = np.arange(n)[:, None, None]
        out = padded[images, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out
