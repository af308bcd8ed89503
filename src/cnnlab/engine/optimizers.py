"""Fast :func:`cnnlab.nn.optimizers.adam_update`: the same update as one compiled pass over
the weight and its moments (:func:`cnnlab.engine.kernels.adam_update`), instead of NumPy's
six passes, each with a temporary array."""

from __future__ import annotations

import numpy as np

from cnnlab.engine import kernels
from cnnlab.nn.optimizers import adam_step_size


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
    """Fast :func:`cnnlab.nn.optimizers.adam_update`, in place; ``weight``, ``m`` and ``v``
    must be C-contiguous."""
    if not all(a.flags.c_contiguous for a in (weight, m, v)):
        raise ValueError("Adam updates weights and slots in place: they must be C-contiguous")
    dtype = weight.dtype.type
    kernels.adam_update(
        weight.reshape(-1),
        np.ascontiguousarray(grad, dtype=weight.dtype).reshape(-1),
        m.reshape(-1),
        v.reshape(-1),
        dtype(1 - beta_1),
        dtype(1 - beta_2),
        dtype(adam_step_size(learning_rate, beta_1, beta_2, t)),
        dtype(epsilon),
    )
