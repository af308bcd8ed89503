"""Fully connected (dense) layer.

Shapes: ``x: (N, D)``, ``kernel: (D, units)``, ``bias: (units,)``, ``y: (N, units)``.

Forward: ``y = x @ kernel + bias``: every unit a weighted sum of every input.

Backward: ``dx = dy @ kernel.T``, ``dkernel = x.T @ dy``, ``dbias = sum of dy's rows``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DenseCache(NamedTuple):
    """What the backward pass needs: the input and the kernel."""

    x: np.ndarray
    kernel: np.ndarray


def dense_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, DenseCache]:
    """``y = x @ kernel + bias`` and the cache for :func:`dense_backward`."""
    y = x @ kernel
    if bias is not None:
        y += bias
    return y, DenseCache(x, kernel)


def dense_backward(
    dy: np.ndarray, cache: DenseCache, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``(dx, dkernel, dbias)``; ``input_gradient=False`` skips ``dx`` (returned as None):
    the first layer of a model needs only its weights' gradients."""
    x, kernel = cache
    dx = dy @ kernel.T if input_gradient else None
    return dx, x.T @ dy, dy.sum(axis=0)
