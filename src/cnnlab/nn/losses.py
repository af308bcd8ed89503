"""Cross-entropy losses, each returning the batch-mean loss and its gradient.

Shapes: ``logits``/``probs``: ``(N, K)``; ``labels``: one-hot ``(N, K)`` or integers ``(N,)``.

From logits (stable for large inputs)::

    loss = mean_n ( logsumexp(z_n) - sum_k y_nk * z_nk ),   dloss/dz = (softmax(z) - y) / N

From probabilities (Keras ``from_logits=False``; p is clipped to [eps, 1 - eps])::

    loss = mean_n ( -sum_k y_nk * log p_nk ),               dloss/dp = -y / p / N
"""

from __future__ import annotations

import numpy as np

from cnnlab.nn.activations import log_softmax

EPSILON = 1e-7  # Keras's backend epsilon, used to clip probabilities


def as_one_hot(labels: np.ndarray, num_classes: int, dtype) -> np.ndarray:
    """Integer labels ``(N,)`` -> one-hot ``(N, K)``; one-hot input is returned as it is."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(dtype, copy=False)
    one_hot = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    one_hot[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1
    return one_hot


def crossentropy_from_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy computed from the logits ``z``: ``(loss, dloss/dz)``."""
    n, k = logits.shape
    y = as_one_hot(labels, k, logits.dtype)
    log_p = log_softmax(logits)
    loss = -(y * log_p).sum() / n
    return float(loss), (np.exp(log_p) - y) / logits.dtype.type(n)


def crossentropy_from_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Cross-entropy of probabilities ``p``, as Keras: ``(loss, dloss/dp)``.

    Each row is divided by its sum ``s`` (``q = p / s``) and clipped to [eps, 1 - eps]; with
    ``g = dloss/dq``, the gradient is ``(g - sum(g * q)) / s``.
    """
    n, k = probs.shape
    y = as_one_hot(labels, k, probs.dtype)
    s = probs.sum(axis=-1, keepdims=True)
    q = probs / s
    clipped = np.clip(q, EPSILON, 1 - EPSILON)
    loss = -(y * np.log(clipped)).sum() / n
    g = np.where((q > EPSILON) & (q < 1 - EPSILON), -y / clipped, 0) / probs.dtype.type(n)
    return float(loss), (g - (g * q).sum(axis=-1, keepdims=True)) / s
