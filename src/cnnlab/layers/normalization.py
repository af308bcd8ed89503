"""BatchNormalization: normalize each channel with batch statistics, then scale and shift."""

from __future__ import annotations

import numpy as np

from cnnlab import backend, checks
from cnnlab.layers.base import Layer
from cnnlab.nn.batchnorm import moving_average


class BatchNormalization(Layer):
    """Batch normalization over the last axis (channels), Keras defaults
    (:mod:`cnnlab.nn.batchnorm`).

    In training (``training=True``) each channel is normalized with the batch mean and biased
    variance taken over every other axis, then scaled by ``gamma`` and shifted by ``beta``, and
    the moving averages are updated: ``moving = moving * momentum + batch * (1 - momentum)``.
    At inference the moving averages are used instead of the batch statistics.

    Weights, in Keras order: ``gamma``, ``beta`` (trainable), ``moving_mean``,
    ``moving_variance`` (non-trainable). Input ``(batch, F)`` or ``(batch, H, W, C)``.

    ``synchronized`` (Keras's name and default): when several processes train the model under
    ``torchrun`` on the torch engine, the batch statistics are those of the whole batch, summed
    over the processes, instead of each process's share; alone, it changes nothing.
    """

    min_rank = 2
    call_state = ("_cache", "_training")

    def __init__(
        self,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        synchronized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.momentum = checks.number_in("momentum", momentum, 0, 1)
            self.epsilon = checks.positive_number("epsilon", epsilon)
            self.synchronized = checks.boolean("synchronized", synchronized)
        self._cache = None
        self._training = False

    def weight_shapes(self, input_shape):
        return {
            name: (input_shape[-1],) for name in ("gamma", "beta", "moving_mean", "moving_variance")
        }

    def build_weights(self, input_shape):
        c = input_shape[-1]
        self.add_weight("gamma", np.ones(c))
        self.add_weight("beta", np.zeros(c))
        self.add_weight("moving_mean", np.zeros(c), trainable=False)
        self.add_weight("moving_variance", np.ones(c), trainable=False)

    def call(self, x, training=False):
        ops, w = backend.ops(), self.weights
        self._training = training
        if not training:
            y, self._cache = ops.batchnorm_inference_forward(
                x, w["gamma"], w["beta"], w["moving_mean"], w["moving_variance"], self.epsilon
            )
            return y
        y, mean, var, self._cache = ops.batchnorm_train_forward(
            x, w["gamma"], w["beta"], self.epsilon
        )
        self.update_moving_averages(mean, var)
        return y

    def update_moving_averages(self, mean: np.ndarray, var: np.ndarray) -> None:
        """Move ``moving_mean`` and ``moving_variance`` towards a training batch's statistics."""
        w, momentum = self.weights, self.dtype.type(self.momentum)
        w["moving_mean"][...] = moving_average(w["moving_mean"], mean, momentum)
        w["moving_variance"][...] = moving_average(w["moving_variance"], var, momentum)

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError(f"{self._describe()}: backward needs a forward pass first")
        ops = backend.ops()
        backward = (
            ops.batchnorm_train_backward if self._training else ops.batchnorm_inference_backward
        )
        dx, self.grads["gamma"], self.grads["beta"] = backward(dy, self._cache)
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        }
