"""A model's layers as the steps its training and inference run: batch norm and the activation
after it as one op.

In the book's CNN every BatchNormalization is followed by a LeakyReLU. Run one after the other,
the pair reads and writes the whole feature map twice each way; run as one op
(:meth:`BatchNormalization.normalize` with ``negative_slope``), the activation is applied in
batch norm's last pass forward, and taken back through in its passes backward, with the same
numbers. ``Sequential.train_step``, ``predict`` and ``evaluate`` run these steps; calling the
model, or a layer, still runs each layer on its own, keeping what its ``backward`` needs.
"""

from __future__ import annotations

import numpy as np

from cnnlab.layers import BatchNormalization, Layer
from cnnlab.layers.core import Activation


class NormalizeActivate:
    """A BatchNormalization layer and the ReLU or LeakyReLU layer after it, as one step.

    Its output is the activation layer's; its backward pass takes the gradient there and
    returns the gradient at batch norm's input, with batch norm's weight gradients in
    ``norm.grads``. Backward follows a training call only.
    """

    def __init__(self, norm: BatchNormalization, activation: Activation):
        self.norm, self.activation = norm, activation
        self.name = f"{norm.name}+{activation.name}"
        self.trainable_names = norm.trainable_names
        self.output_shape = activation.output_shape
        self.negative_slope = (
            0.0 if activation.activation.name == "relu" else activation.activation.negative_slope
        )

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self.norm._check_input(x)
        return self.norm.normalize(
            x.astype(self.norm.dtype, copy=False), training, self.negative_slope
        )

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.norm.backward(dy)


def _fusable(norm: Layer, activation: Layer) -> bool:
    return (
        isinstance(norm, BatchNormalization)
        and isinstance(activation, Activation)
        and activation.activation.name in ("relu", "leaky_relu")
        and activation.dtype == norm.dtype
    )


def steps(layers: list[Layer]) -> list[Layer | NormalizeActivate]:
    """``layers`` with each BatchNormalization and the ReLU or LeakyReLU right after it
    replaced by one :class:`NormalizeActivate` step."""
    out: list[Layer | NormalizeActivate] = []
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and _fusable(layers[i], layers[i + 1]):
            out.append(NormalizeActivate(layers[i], layers[i + 1]))
            i += 2
        else:
            out.append(layers[i])
            i += 1
    return out
