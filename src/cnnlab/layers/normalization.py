"""BatchNormalization: normalize each channel with batch statistics, then scale and shift."""

from __future__ import annotations

import numpy as np

from cnnlab.layers.base import Layer
from cnnlab.ops import batchnorm as ops


class BatchNormalization(Layer):
    """Batch normalization over the last axis (channels), Keras defaults.

    In training (``training=True``) each channel is normalized with the batch mean and biased
    variance taken over every other axis, then scaled by ``gamma`` and shifted by ``beta``, and
    the moving averages are updated: ``moving = moving * momentum + batch * (1 - momentum)``.
    At inference the moving averages are used instead of the batch statistics.

    Weights, in Keras order: ``gamma``, ``beta`` (trainable), ``moving_mean``,
    ``moving_variance`` (non-trainable). Input ``(batch, F)`` or ``(batch, H, W, C)``.
    """

    min_rank = 2

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= momentum <= 1:
            raise ValueError(f"{self._describe()}: `momentum` must be in [0, 1], got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"{self._describe()}: `epsilon` must be > 0, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self._cache = None

    def build_weights(self, input_shape):
        c = input_shape[-1]
        self.add_weight("gamma", np.ones(c))
        self.add_weight("beta", np.zeros(c))
        self.add_weight("moving_mean", np.zeros(c), trainable=False)
        self.add_weight("moving_variance", np.ones(c), trainable=False)

    def call(self, x, training=False):
        return self.normalize(x, training)

    def normalize(self, x, training=False, negative_slope: float | None = None):
        """:meth:`call`, with the (leaky) ReLU that follows in a model applied in the same pass
        when ``negative_slope`` is given (0 for ReLU); :meth:`backward` then takes the
        gradient at the activation's output. Only a training call keeps what
        :meth:`backward` needs in that case."""
        w = self.weights
        self._training = training
        if not training:
            y, cache = ops.batchnorm_inference_forward(
                x,
                w["gamma"],
                w["beta"],
                w["moving_mean"],
                w["moving_variance"],
                self.epsilon,
                negative_slope,
            )
            self._cache = None if negative_slope is not None else cache
            return y
        y, mean, var, self._cache = ops.batchnorm_train_forward(
            x, w["gamma"], w["beta"], self.epsilon, negative_slope
        )
        m = self.dtype.type(self.momentum)
        w["moving_mean"][...] = w["moving_mean"] * m + mean * (1 - m)
        w["moving_variance"][...] = w["moving_variance"] * m + var * (1 - m)
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._describe()}: backward needs a forward pass first")
        backward = (
            ops.batchnorm_train_backward if self._training else ops.batchnorm_inference_backward
        )
        dx, self.grads["gamma"], self.grads["beta"] = backward(dy, self._cache)
        return dx

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}
