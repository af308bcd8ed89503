"""Activation functions as small objects that remember what their backward pass needs.

``activations.get("relu")`` returns a fresh :class:`Activation`; calling it runs the forward
op of :mod:`cnnlab.nn.activations` (on the engine running, :mod:`cnnlab.backend`), and
``.backward(dy)`` the matching backward op.
"""

from __future__ import annotations

import numpy as np

from cnnlab import backend

NAMES = ("linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax")


class Activation:
    """One activation function with its cached forward input and output."""

    def __init__(self, name: str, negative_slope: float = 0.2):
        if name not in NAMES:
            raise ValueError(f"`activation` must be one of {NAMES}, got {name!r}")
        self.name = name
        self.negative_slope = negative_slope  # leaky_relu only; Keras's default is 0.2
        self.x: np.ndarray | None = None
        self.y: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        name, ops = self.name, backend.ops()
        if name == "linear":
            y = x
        elif name == "relu":
            y = ops.relu(x)
        elif name == "leaky_relu":
            y = ops.leaky_relu(x, self.negative_slope)
        elif name == "sigmoid":
            y = ops.sigmoid(x)
        elif name == "tanh":
            y = ops.tanh(x)
        else:
            y = ops.softmax(x)
        self.x, self.y = x, y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        name, ops = self.name, backend.ops()
        if name == "linear":
            return dy
        if name == "relu":
            return ops.relu_backward(dy, self.x)
        if name == "leaky_relu":
            return ops.leaky_relu_backward(dy, self.x, self.negative_slope)
        if name == "sigmoid":
            return ops.sigmoid_backward(dy, self.y)
        if name == "tanh":
            return ops.tanh_backward(dy, self.y)
        return ops.softmax_backward(dy, self.y)


def get(name: str | None) -> Activation:
    """A fresh :class:`Activation`; ``None`` means "linear"."""
    return Activation("linear" if name is None else name)
