"""The optimizers' updates, Keras's rules, each one step on one weight, in place.

Shapes: ``weight``, ``grad`` and the slots (``velocity``; Adam's ``m`` and ``v``) all have the
weight's shape and dtype.

SGD with momentum (``nesterov`` looks one step ahead)::

    velocity = momentum * velocity - learning_rate * g
    w += velocity                                        (plain momentum)
    w += momentum * velocity - learning_rate * g         (nesterov)

Adam, Keras's form, with the bias correction folded into the step size ``alpha`` and
``epsilon`` added after it (step ``t`` counts from 1)::

    alpha = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1);      v += (g**2 - v) * (1 - beta_2)
    w -= alpha * m / (sqrt(v) + epsilon)

Gradient clipping, before the update (the lecture's cure for exploding gradients):
``clipvalue`` clips each element to ``[-clipvalue, clipvalue]``, ``clipnorm`` scales a
gradient whose L2 norm exceeds ``clipnorm`` down to it.
"""

from __future__ import annotations

import numpy as np


def sgd_update(
    weight: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray | None,
    learning_rate: float,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> None:
    """One SGD step; ``velocity`` (None without momentum) is updated in place too."""
    dtype = weight.dtype.type
    lr = dtype(learning_rate)
    if momentum == 0:
        weight -= lr * grad
        return
    m = dtype(momentum)
    velocity *= m
    velocity -= lr * grad
    if nesterov:
        weight += m * velocity - lr * grad
    else:
        weight += velocity


def adam_step_size(learning_rate: float, beta_1: float, beta_2: float, t: int) -> float:
    """``alpha = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` for step ``t``."""
    return learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)


def adam_update(
    weight: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
) -> None:
    """One Adam step ``t`` (from 1); the moments ``m`` and ``v`` are updated in place too."""
    dtype = weight.dtype.type
    alpha = dtype(adam_step_size(learning_rate, beta_1, beta_2, t))
    m += (grad - m) * dtype(1 - beta_1)
    v += (grad * grad - v) * dtype(1 - beta_2)
    weight -= m / (np.sqrt(v) + dtype(epsilon)) * alpha


def clip_gradient(
    grad: np.ndarray, clipnorm: float | None = None, clipvalue: float | None = None
) -> np.ndarray:
    """``grad`` clipped element-wise to ``clipvalue``, then scaled to a norm of at most
    ``clipnorm``; each None skips its step."""
    if clipvalue is not None:
        grad = np.clip(grad, -clipvalue, clipvalue)
    if clipnorm is not None:
        norm = float(np.sqrt(np.sum(grad * grad)))
        if norm > clipnorm:
            grad = grad * (clipnorm / norm)
    return grad
