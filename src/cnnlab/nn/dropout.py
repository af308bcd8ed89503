"""Inverted dropout: in training, zero each unit with probability ``rate``, scale the rest.

Shapes: any; ``mask`` has the shape of ``x``.

Training:  ``y = x * mask``, ``mask = keep / (1 - rate)``, ``keep ~ Bernoulli(1 - rate)``,
so the expected value of every unit is unchanged. Inference: ``y = x``.
"""

from __future__ import annotations

import numpy as np


def dropout_forward(
    x: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``y`` and the ``mask`` the backward pass multiplies by."""
    keep = rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    mask = (keep >= rate).astype(x.dtype) / x.dtype.type(1.0 - rate)
    return x * mask, mask


def dropout_backward(dy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``dx = dy * mask``: dropped units pass no gradient."""
    return dy * mask
