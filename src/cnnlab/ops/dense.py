"""Fully connected (dense) layer.

Shapes: ``x: (N, D)``, ``kernel: (D, units)``, ``bias: (units,)``, ``y: (N, units)``.

Formula: ``y = x @ kernel + bias``.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops.sums import column_sums


def dense_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``y`` and the cache (the input)."""
    y = x @ kernel
    if bias is not None:
        y += bias
    return y, x


def dense_backward(
    dy: np.ndarray, x: np.ndarray, kernel: np.ndarray, input_gradient: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``dx = dy @ kernel.T``, ``dkernel = x.T @ dy``, ``dbias = sum_n dy``.

    ``input_gradient=False`` skips ``dx`` (returned as None): the first layer of a model needs
    only the gradients of its weights.
    """
    dx = dy @ kernel.T if input_gradient else None
    return dx, x.T @ dy, column_sums(dy)
