"""Fast :func:`cnnlab.nn.batchnorm.batchnorm_train_forward`,
:func:`~cnnlab.nn.batchnorm.batchnorm_train_backward` and
:func:`~cnnlab.nn.batchnorm.batchnorm_inference_forward`: the same numbers in fewer passes
over memory, on every core, with the compiled loops of :mod:`cnnlab.engine.kernels`.

Each also takes ``negative_slope`` (0 for ReLU): the (leaky) ReLU that follows batch norm in a
model, applied in batch norm's last pass forward and taken back through in its passes
backward (:class:`cnnlab.fusion.NormalizeActivate`): the numbers of the two ops one after the
other, one pass and one array fewer each way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cnnlab.engine import kernels, parallel, tuning
from cnnlab.nn.batchnorm import BatchNormCache


class BatchNormActivationCache(NamedTuple):
    """:class:`cnnlab.nn.batchnorm.BatchNormCache` of batch norm followed by a (leaky) ReLU of
    slope ``slope``, with ``beta``: the backward pass recomputes the activation's input."""

    x: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    slope: np.generic


def _rows_grain(c: int) -> int:
    """The fewest rows of ``c`` channels worth a thread: the values per slice measured on this
    machine (:func:`cnnlab.engine.tuning.batchnorm_grain`)."""
    return -(-tuning.batchnorm_grain(trial) // c)


def trial(values: int) -> Callable[[], None]:
    """For the tuner: ``run()``, batch norm and a leaky ReLU forward and backward on ``values``
    float32 values in 32 channels, on random data made once."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(1, values // 32), 32)).astype(np.float32)
    gamma, beta = np.ones(32, np.float32), np.zeros(32, np.float32)

    def run() -> None:
        y, _, _, cache = batchnorm_train_forward(x, gamma, beta, 1e-3, negative_slope=0.3)
        batchnorm_train_backward(y, cache)

    return run


def _slope(negative_slope: float | None, dtype: np.dtype) -> np.generic:
    """The kernels' slope for values below zero: 1 (no activation) for None."""
    return dtype.type(1.0 if negative_slope is None else negative_slope)


def batchnorm_train_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    epsilon: float,
    *,
    negative_slope: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, BatchNormCache | BatchNormActivationCache]:
    """Fast :func:`cnnlab.nn.batchnorm.batchnorm_train_forward`: the same outputs, on every core.

    Slices of the ``(M, C)`` rows on the cores, in one hand-over
    (:func:`cnnlab.engine.parallel.over_batch_meeting`,
    :func:`cnnlab.engine.kernels.batchnorm_rows_forward`): each slice's sums and sums of
    squares of ``x`` minus its first row, in float64; once all are there, the mean and the
    variance, and ``y = (x - mean) * (gamma * inv_std) + beta``, and the activation with
    ``negative_slope``.
    """
    c = x.shape[-1]
    x = np.ascontiguousarray(x)
    x2 = x.reshape(-1, c)
    threads, dtype = parallel.num_threads(), x.dtype.type
    sums, stats = np.empty((threads, 2, c)), np.empty((threads, 4, c), x.dtype)
    y = np.empty_like(x2)
    slope = _slope(negative_slope, x2.dtype)

    def rows(a: int, b: int, index: int, flags: np.ndarray) -> None:
        if not kernels.batchnorm_rows_forward(
            x2, a, b, len(x2), gamma, beta, dtype(epsilon), slope, flags, index, sums, stats, y
        ):
            raise RuntimeError("another slice of the op failed")

    parallel.over_batch_meeting(rows, len(x2), meetings=2, grain=_rows_grain(c))
    mu, var, inv_std = (stats[0, k].copy() for k in range(3))
    if negative_slope is None:
        cache = BatchNormCache(x, mu, inv_std, gamma)
    else:
        cache = BatchNormActivationCache(x, mu, inv_std, gamma, beta, slope)
    return y.reshape(x.shape), mu, var, cache


def batchnorm_train_backward(
    dy: np.ndarray, cache: BatchNormCache | BatchNormActivationCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast :func:`cnnlab.nn.batchnorm.batchnorm_train_backward`: the same gradients, on every
    core.

    Since ``sum(g) = gamma * dbeta`` and ``sum(g * x_hat) = gamma * dgamma``, the formula is
    ``dx = gamma * inv_std * (dy - dbeta / m - x_hat * dgamma / m)``: one pass for both sums,
    one for ``dx``, with ``x_hat = (x - mean) * inv_std`` recomputed on the way, the slices of
    rows meeting for the sums in between (:func:`cnnlab.engine.kernels.batchnorm_rows_backward`).
    After a forward pass with ``negative_slope``, ``dy`` is the gradient at the activation's
    output, and the kernels take it back through the activation first (its input recomputed
    too).
    """
    x, mu, inv_std, gamma = cache[:4]
    if isinstance(cache, BatchNormActivationCache):
        beta, slope = cache.beta, cache.slope
    else:  # slope 1: no activation, and beta does not matter
        beta, slope = np.zeros_like(gamma), x.dtype.type(1.0)
    c = x.shape[-1]
    x2 = x.reshape(-1, c)
    dy2 = np.ascontiguousarray(dy, dtype=x2.dtype).reshape(x2.shape)
    m = x2.dtype.type(len(dy2))
    scale = gamma * inv_std
    threads = parallel.num_threads()
    sums, grads = np.empty((threads, 2, c)), np.empty((threads, 4, c), x2.dtype)
    dx = np.empty_like(dy2)

    def rows(a: int, b: int, index: int, flags: np.ndarray) -> None:
        if not kernels.batchnorm_rows_backward(
            dy2, x2, a, b, mu, inv_std, scale, beta, slope, m, flags, index, sums, grads, dx
        ):
            raise RuntimeError("another slice of the op failed")

    parallel.over_batch_meeting(rows, len(dy2), meetings=1, grain=_rows_grain(c))
    return dx.reshape(dy.shape), grads[0, 1].copy(), grads[0, 0].copy()


def batchnorm_inference_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    epsilon: float,
    *,
    negative_slope: float | None = None,
) -> tuple[np.ndarray, BatchNormCache]:
    """Fast :func:`cnnlab.nn.batchnorm.batchnorm_inference_forward`: the statistics are fixed,
    so this is one pass, ``y = (x - moving_mean) * k + beta`` with ``k = gamma * inv_std``, on
    every core, and the activation with ``negative_slope`` (after which the cache is not for
    :func:`cnnlab.nn.batchnorm.batchnorm_inference_backward`)."""
    inv_std = 1.0 / np.sqrt(moving_variance + epsilon)
    scale = gamma * inv_std
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    slope = _slope(negative_slope, x2.dtype)

    def rows(a: int, b: int) -> None:
        kernels.normalize(x2[a:b], moving_mean, scale, beta, slope, y[a:b])

    parallel.over_batch(rows, len(x2), _rows_grain(x2.shape[1]))
    return y.reshape(x.shape), BatchNormCache(x, moving_mean, inv_std, gamma)
