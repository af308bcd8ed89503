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

``batchnorm_train_forward_reference`` and ``batchnorm_train_backward_reference`` are the plain
forms of the formulas above; ``batchnorm_train_forward`` and ``batchnorm_train_backward``, used
by the layer, compute the same numbers in fewer passes over memory, on every core, with the
compiled loops of :mod:`cnnlab.ops.kernels`. A test checks that both agree.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import kernels, parallel


def batchnorm_train_forward_reference(
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
    negative_slope: float | None = None,
) -> tuple[np.ndarray, tuple]:
    """``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.

    The statistics are fixed, so this is one pass, ``y = (x - moving_mean) * k + beta`` with
    ``k = gamma * inv_std``, on every core. ``negative_slope`` applies the (leaky) ReLU that
    follows in the same pass (0 for ReLU), for a model's inference; the cache is then not
    for :func:`batchnorm_inference_backward`. The cache keeps ``x`` (``x_hat`` is only needed
    for ``dgamma``, and is computed then).
    """
    inv_std = 1.0 / np.sqrt(moving_variance + epsilon)
    scale = gamma * inv_std
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    y = np.empty_like(x2)
    slope = _slope(negative_slope, x2.dtype)

    def rows(a: int, b: int) -> None:
        kernels.normalize(x2[a:b], moving_mean, scale, beta, slope, y[a:b])

    parallel.over_batch(rows, len(x2), _rows_grain(x2.shape[1]))
    return y.reshape(x.shape), (x, moving_mean, inv_std, gamma)


def batchnorm_train_backward_reference(
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


# Values (rows x channels) per slice below which a thread does not pay for itself: handing a
# slice to a thread and waiting for it costs about 50 us on the 2-core machine, a pass over
# some 300,000 values; measured on the CNN's training step, slices of 2**19 values beat 2**20.
_GRAIN = 1 << 19


def _rows_grain(c: int) -> int:
    return -(-_GRAIN // c)


def batchnorm_train_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    epsilon: float,
    negative_slope: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Fast :func:`batchnorm_train_forward_reference`: the same outputs, on every core.

    Two passes over the ``(M, C)`` rows (:mod:`cnnlab.ops.kernels`), each over slices of rows
    on the cores (:mod:`cnnlab.ops.parallel`): the sums and the sums of squares of ``x`` minus
    its first row, in float64, for the mean and the variance, then
    ``y = (x - mu) * (gamma * inv_std) + beta``. The cache keeps ``x``
    itself; the backward pass recomputes ``x_hat`` from it, so no ``x_hat`` is stored.

    ``negative_slope`` (0 for ReLU) also applies the (leaky) ReLU that follows batch norm in a
    model, in the last pass, and :func:`batchnorm_train_backward` then backpropagates through
    both: the numbers of the two ops one after the other, one pass and one array fewer each way.
    """
    c = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, c)
    m = len(x2)
    shift = x2[0].astype(np.float64)
    parts = parallel.over_batch(
        lambda a, b: kernels.shifted_sums(x2[a:b], shift), m, _rows_grain(c)
    )
    total = sum(part[0] for part in parts) / m
    mean = shift + total
    var = np.maximum(sum(part[1] for part in parts) / m - total * total, 0.0)
    mu, var = mean.astype(x.dtype), var.astype(x.dtype)
    inv_std = 1.0 / np.sqrt(var + x.dtype.type(epsilon))
    scale = gamma * inv_std
    y = np.empty_like(x2)
    slope = _slope(negative_slope, x2.dtype)
    parallel.over_batch(
        lambda a, b: kernels.normalize(x2[a:b], mu, scale, beta, slope, y[a:b]), m, _rows_grain(c)
    )
    return y.reshape(x.shape), mu, var, (x2, mu, inv_std, gamma, beta, slope)


def batchnorm_train_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast :func:`batchnorm_train_backward_reference`: the same gradients, on every core.

    Since ``sum(g) = gamma * dbeta`` and ``sum(g * x_hat) = gamma * dgamma``, the formula is
    ``dx = gamma * inv_std * (dy - dbeta / m - x_hat * dgamma / m)``: one pass for both sums,
    one for ``dx``, with ``x_hat = (x - mu) * inv_std`` recomputed on the way. After a forward
    pass with ``negative_slope``, ``dy`` is the gradient at the activation's output, and the
    kernels take it back through the activation first (its input recomputed on the way too).
    """
    x2, mu, inv_std, gamma, beta, slope = cache
    dy2 = np.ascontiguousarray(dy, dtype=x2.dtype).reshape(x2.shape)
    m = len(dy2)
    scale = gamma * inv_std
    parts = parallel.over_batch(
        lambda a, b: kernels.normalize_backward_sums(
            dy2[a:b], x2[a:b], mu, inv_std, scale, beta, slope
        ),
        m,
        _rows_grain(x2.shape[1]),
    )
    dbeta = sum(part[0] for part in parts).astype(x2.dtype)
    dgamma = sum(part[1] for part in parts).astype(x2.dtype)
    dbeta_m, dgamma_m = dbeta / m, dgamma / m
    dx = np.empty_like(dy2)

    def rows(a: int, b: int) -> None:
        kernels.normalize_backward(
            dy2[a:b], x2[a:b], mu, inv_std, scale, beta, slope, dbeta_m, dgamma_m, dx[a:b]
        )

    parallel.over_batch(rows, m, _rows_grain(x2.shape[1]))
    return dx.reshape(dy.shape), dgamma, dbeta


def _slope(negative_slope: float | None, dtype: np.dtype) -> np.generic:
    """The kernels' slope for values below zero: 1 (no activation) for None."""
    return dtype.type(1.0 if negative_slope is None else negative_slope)


def batchnorm_inference_backward(
    dy: np.ndarray, cache: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward with fixed (moving) statistics: ``dx = dy * gamma * inv_std``."""
    x, moving_mean, inv_std, gamma = cache
    x_hat = (x - moving_mean) * inv_std
    axes = tuple(range(dy.ndim - 1))
    return dy * (gamma * inv_std), (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
