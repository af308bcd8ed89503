"""Batch normalization over the last axis (Ioffe & Szegedy, 2015, Algorithm 1).

Shapes: ``x: (N, F)`` after a Dense layer or ``(N, H, W, C)`` after a Conv2D layer; the
statistics are taken per channel over every other axis (N, or N, H and W), ``m`` values
each. ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance`` have shape ``(C,)``.

Training::

    mean = mean(x),  var = mean((x - mean)**2)        batch statistics (biased variance)
    x_hat = (x - mean) / sqrt(var + epsilon)          normalize
    y = gamma * x_hat + beta                          scale and shift, learned
    moving = moving * momentum + batch * (1 - momentum)       for inference

Inference: the same, with ``moving_mean`` and ``moving_variance`` in place of the batch's.

Backward through the batch statistics, with ``g = dy * gamma``::

    dbeta = sum(dy),  dgamma = sum(dy * x_hat)
    dx = inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat))

(the mean and the variance depend on every ``x`` of the channel, hence the two sums).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class BatchNormCache(NamedTuple):
    """What the backward pass needs: the input, the mean and ``1 / sqrt(var + epsilon)`` it
    was normalized with (the batch's in training, the moving ones at inference), and gamma."""

    x: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray


def _channel_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def batchnorm_train_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, BatchNormCache]:
    """``(y, mean, var, cache)``: the output, the batch's mean and biased variance."""
    axes = _channel_axes(x)
    mean = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    x_hat = (x - mean) * inv_std
    y = gamma * x_hat + beta
    return y, mean, var, BatchNormCache(x, mean, inv_std, gamma)


def batchnorm_train_backward(
    dy: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward through the batch statistics: ``(dx, dgamma, dbeta)``."""
    x, mean, inv_std, gamma = cache
    axes = _channel_axes(dy)
    m = dy.size // dy.shape[-1]
    x_hat = (x - mean) * inv_std
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    g = dy * gamma
    dx = (inv_std / m) * (m * g - g.sum(axis=axes) - x_hat * (g * x_hat).sum(axis=axes))
    return dx, dgamma, dbeta


def batchnorm_inference_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, BatchNormCache]:
    """``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``."""
    inv_std = 1.0 / np.sqrt(moving_variance + epsilon)
    y = gamma * ((x - moving_mean) * inv_std) + beta
    return y, BatchNormCache(x, moving_mean, inv_std, gamma)


def batchnorm_inference_backward(
    dy: np.ndarray, cache: BatchNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward with fixed (moving) statistics: ``dx = dy * gamma * inv_std``."""
    x, mean, inv_std, gamma = cache
    axes = _channel_axes(dy)
    x_hat = (x - mean) * inv_std
    return dy * (gamma * inv_std), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)


def moving_average(moving: np.ndarray, batch: np.ndarray, momentum) -> np.ndarray:
    """``moving * momentum + batch * (1 - momentum)``: the moving mean or variance after a
    training batch whose statistic is ``batch`` (Keras's momentum, 0.99 by default)."""
    return moving * momentum + batch * (1 - momentum)
