"""Dropout: zero random units in training only."""

from __future__ import annotations

from cnnlab import backend, checks
from cnnlab.layers.base import Layer
from cnnlab.seeding import make_rng


class Dropout(Layer):
    """Dropout: in training, each unit is zeroed with probability ``rate`` and the rest are
    scaled by ``1 / (1 - rate)``, so the expected sum is unchanged; at inference it is the
    identity (:func:`cnnlab.nn.dropout.dropout_forward`). Usually placed after Dense layers.

    Args:
        rate: fraction of units to drop, in [0, 1).
        seed: seed of the layer's own random generator (None: drawn from the global seed).
    """

    call_state = ("_mask",)

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.rate = checks.number_in("rate", rate, 0, 1, high_open=True)
        self.seed = seed
        self.rng = make_rng(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        y, self._mask = backend.ops().dropout_forward(x, self.rate, self.rng)
        return y

    def backward(self, dy):
        return dy if self._mask is None else backend.ops().dropout_backward(dy, self._mask)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
