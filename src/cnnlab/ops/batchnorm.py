"""Batch normalization over the last axis (Ioffe & Szegedy, 2015, Algorithm 1).

Shapes: ``x: (N, F)`` after a Dense layer or ``(N, H, W, C)`` after a Conv2D layer; the
statistics are taken per channel over every other axis (N, or N, H and W). ``gamma``, ``beta``,
``moving_mean`` and ``moving_variance`` have shape ``(C,)``.

Training::

    mu = mean(x),  var = mean((x - mu)**2)            (batch statistics, biased variance)
    x_hat = (x - mu) / sqrt(var + epsilon)            (normalize)
    y = gamma * x_hat + beta                          (scale and shift, learned)
    moving = moving * momentum + batch * (1 - momentum)

Inference: the same, with ``moving_mean`` and ``moving_variance`` in place of ``mu`` and ``var``.
"""

from __future__ import annotations

import numpy as np


def batchnorm_train_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Returns ``y``, the batch mean and biased variance, and the cache."""
    axes = tuple(range(x.ndim - 1))
    mu = x.mean(axis=axes)
    var = x.var(axis=axes)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    x_hat = (x - mu) * inv_std
    y = x_hat * gamma + beta
    return y, mu, var, (x_hat, inv_std, gamma)


def batchnorm_inference_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
) -> tuple[np.ndarray, tuple]:
    """``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``."""
    inv_std = 1.0 / np.sqrt(moving_variance + epsilon)
    x_hat = (x - moving_mean) * inv_std
    return x_hat * gamma + beta, (x_hat, inv_std, gamma)


def batchnorm_train_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward through batch statistics: ``(dx, dgamma, dbeta)``.

    With ``m`` values per channel and ``g = dy * gamma``::

        dx = inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat))
    """
    x_hat, inv_std, gamma = cache
    axes = tuple(range(dy.ndim - 1))
    m = dy.size // dy.shape[-1]
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    g = dy * gamma
    dx = (inv_std / m) * (m * g - g.sum(axis=axes) - x_hat * (g * x_hat).sum(axis=axes))
    return dx, dgamma, dbeta


def batchnorm_inference_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward with fixed (moving) statistics: ``dx = dy * gamma * inv_std``."""
    x_hat, inv_std, gamma = cache
    axes = tuple(range(dy.ndim - 1))
    return dy * (gamma * inv_std), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
