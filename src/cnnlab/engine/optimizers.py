"""Fast :func:`cnnlab.nn.optimizers.adam_update`: the same update as one compiled pass over
the weight and its moments (:func:`cnnlab.engine.kernels.adam_update`), instead of NumPy's
six passes, each with a temporary array; and :func:`adam_rows`, the same a block of rows at a
time, for an update in a dense layer's backward pass."""

from __future__ import annotations

from collections.abc import Callable

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
    adam_rows(weight, m, v, t, learning_rate, beta_1, beta_2, epsilon)(grad, slice(None))


def adam_rows(
    weight: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    learning_rate: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
) -> Callable[[np.ndarray, slice], None]:
    """:func:`adam_update` of step ``t`` a block of rows at a time: ``update(grad, rows)``
    updates ``weight[rows]`` and those rows of ``m`` and ``v`` from their gradient ``grad``,
    in one compiled pass, the step's constants worked out once (a dense layer's backward pass
    calls it on every core: :meth:`cnnlab.optimizers.Optimizer.row_update`)."""
    if not all(a.flags.c_contiguous for a in (weight, m, v)):
        raise ValueError("Adam updates weights and slots in place: they must be C-contiguous")
    dtype = weight.dtype.type
    constants = (
        dtype(1 - beta_1),
        dtype(1 - beta_2),
        dtype(adam_step_size(learning_rate, beta_1, beta_2, t)),
        dtype(epsilon),
    )

    def update(grad: np.ndarray, rows: slice) -> None:
        kernels.adam_update(
            weight[rows].reshape(-1),
            np.ascontiguousarray(grad, dtype=weight.dtype).reshape(-1),
            m[rows].reshape(-1),
            v[rows].reshape(-1),
            *constants,
        )

    return update
