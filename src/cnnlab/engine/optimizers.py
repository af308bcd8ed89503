"""Fast :func:`cnnlab.nn.optimizers.adam_update`: the same update as one compiled pass over
the weight and its moments (:func:`cnnlab.engine.kernels.adam_update`), instead of NumPy's
six passes, each with a temporary array; and :class:`AdamRows`, the same a block of rows at a
time, for an update in a dense layer's backward pass."""

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
    AdamRows(weight, m, v, t, learning_rate, beta_1, beta_2, epsilon)(grad, slice(None))


class AdamRows:
    """:func:`adam_update` of step ``t`` a block of rows at a time: ``update(grad, rows)``
    updates ``weight[rows]`` and those rows of ``m`` and ``v`` from their gradient ``grad``,
    in one compiled pass, the step's constants worked out once (a dense layer's backward pass
    calls it on every core: :meth:`cnnlab.optimizers.Optimizer.row_update`, or runs the same
    pass in its own compiled parts, :func:`cnnlab.engine.kernels.dense_backward_rows`, from
    ``weight``, ``m``, ``v`` and ``bits``, the constants as float64 bits, noting the rows in
    ``blocks``). ``rows_done`` counts the rows updated."""

    def __init__(
        self,
        weight: np.ndarray,
        m: np.ndarray,
        v: np.ndarray,
        t: int,
        learning_rate: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
    ):
        if not all(a.flags.c_contiguous for a in (weight, m, v)):
            raise ValueError("Adam updates weights and slots in place: they must be C-contiguous")
        self.weight, self.m, self.v = weight, m, v
        dtype = weight.dtype.type
        self.constants = (
            dtype(1 - beta_1),
            dtype(1 - beta_2),
            dtype(adam_step_size(learning_rate, beta_1, beta_2, t)),
            dtype(epsilon),
        )
        self.blocks: list[int] = []  # rows of each block updated (appended: safe across threads)

    @property
    def rows_done(self) -> int:
        return sum(self.blocks)

    @property
    def bits(self) -> tuple[int, ...]:
        """The constants as the bits of float64 values, for compiled parts given int64 rows."""
        return tuple(int(b) for b in np.array(self.constants, np.float64).view(np.int64))

    def __call__(self, grad: np.ndarray, rows: slice) -> None:
        weight = self.weight
        kernels.adam_update(
            weight[rows].reshape(-1),
            np.ascontiguousarray(grad, dtype=weight.dtype).reshape(-1),
            self.m[rows].reshape(-1),
            self.v[rows].reshape(-1),
            *self.constants,
        )
        self.blocks.append(len(range(*rows.indices(len(weight)))))
