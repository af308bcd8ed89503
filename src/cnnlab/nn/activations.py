"""Element-wise activations and softmax, each a forward/backward pair.

Every ``*_backward`` takes the upstream gradient ``dy`` and what the forward pass saw (its
input ``x`` or its output ``y``), and returns ``dx``. Shapes: any; softmax works on the last
axis.

=============  ==============================  ===============================
name           forward                         backward
=============  ==============================  ===============================
relu           ``max(x, 0)``                   ``dy * (x > 0)``
leaky_relu     ``x if x > 0 else slope * x``   ``dy if x > 0 else slope * dy``
sigmoid        ``1 / (1 + exp(-x))``           ``dy * y * (1 - y)``
tanh           ``tanh(x)``                     ``dy * (1 - y**2)``
softmax        ``exp(x) / sum(exp(x))``        ``y * (dy - sum(dy * y))``
=============  ==============================  ===============================
"""

from __future__ import annotations

import numpy as np


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    return dy * (x > 0)


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(dy: np.ndarray, x: np.ndarray, negative_slope: float) -> np.ndarray:
    return np.where(x > 0, dy, dy * dy.dtype.type(negative_slope))


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * y * (1 - y)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * (1 - y * y)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; the row maximum is subtracted first, so it never overflows."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``x - logsumexp(x)`` over the last axis, computed stably."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
