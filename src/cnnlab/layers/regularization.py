"""Dropout: zero random units in training only."""

from __future__ import annotations

import numbers

from cnnlab.layers.base import Layer
from cnnlab.ops.dropout import dropout_backward, dropout_forward
from cnnlab.seeding import make_rng


class Dropout(Layer):
    """Dropout: in training, each unit is zeroed with probability ``rate`` and the rest are
    scaled by ``1 / (1 - rate)``, so the expected sum is unchanged; at inference it is the
    identity. Usually placed after Dense layers.

    Args:
        rate: fraction of units to drop, in [0, 1).
        seed: seed of the layer's own random generator (None: drawn from the global seed).
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(f"{self._describe()}: `rate` must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.rng = make_rng(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        y, self._mask = dropout_forward(x, self.rate, self.rng)
        return y

    def backward(self, dy):
        return dy if self._mask is None else dropout_backward(dy, self._mask)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
