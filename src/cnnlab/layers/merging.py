"""Layers that merge several inputs into one: Add, Average and Concatenate (Keras's names).

Shapes: inputs ``(batch, *shape)`` of one shape for Add and Average, whose output has that
shape too; for Concatenate one shape but along ``axis``, where the output's size is the sum of
theirs. Backward: Add gives each input the output's gradient, Average a share ``1 / n`` of it,
Concatenate each input its own slice of it.
"""

from __future__ import annotations

import numpy as np

from cnnlab import checks
from cnnlab.config import resolve_dtype
from cnnlab.layers.base import Layer
from cnnlab.symbolic import SymbolicTensor, is_symbolic


class _Merge(Layer):
    """The base of the merging layers: a list of two or more inputs, one output."""

    call_state = ("_count",)

    def build(self, input_shape: list[tuple[int, ...]]) -> None:
        """Check the inputs' shapes (a list, each without the batch axis) against each other."""
        shapes = [tuple(int(d) for d in shape) for shape in input_shape]
        if len(shapes) < 2:
            raise ValueError(f"{self._describe()} merges two inputs or more, got {len(shapes)}")
        self.dtype = resolve_dtype(self._dtype_arg)
        self.output_shape = self.compute_output_shape(shapes)
        self.input_shape = shapes
        self.built = True

    def compute_output_shape(self, input_shape):
        if any(shape != input_shape[0] for shape in input_shape):
            shapes = ", ".join(str(self._with_batch(shape)) for shape in input_shape)
            raise ValueError(f"{self._describe()} needs inputs of one shape, got {shapes}")
        return input_shape[0]

    def _symbolic_input_shape(self, tensors: list[SymbolicTensor]):
        return [tuple(t.shape[1:]) for t in tensors]

    def __call__(self, x, training: bool = False):
        if is_symbolic(x):
            return self._call_symbolic(x)
        if not isinstance(x, (list, tuple)):
            raise ValueError(f"{self._describe()} takes a list of inputs, got {type(x).__name__}")
        xs = [np.asarray(v) for v in x]
        shapes = [v.shape[1:] for v in xs]
        if not self.built:
            self.build(shapes)
        if shapes != self.input_shape or len({len(v) for v in xs}) != 1:
            raise ValueError(
                f"{self._describe()} expects inputs of shapes "
                f"{', '.join(str(self._with_batch(s)) for s in self.input_shape)} with one batch "
                f"size, got {', '.join(str(v.shape) for v in xs)}"
            )
        self._count = len(xs)
        return self.call([v.astype(self.dtype, copy=False) for v in xs], training=training)


class Add(_Merge):
    """The sum of its inputs, element by element: ``y = x_1 + x_2 + ...`` (a residual
    connection adds a block's input to its output this way)."""

    def call(self, x, training=False):
        return sum(x[1:], start=x[0].copy())

    def backward(self, dy):
        return [dy] * self._count


class Average(_Merge):
    """The mean of its inputs, element by element: ``y = (x_1 + ... + x_n) / n``."""

    def call(self, x, training=False):
        return sum(x[1:], start=x[0].copy()) / self.dtype.type(len(x))

    def backward(self, dy):
        return [dy / dy.dtype.type(self._count)] * self._count


class Concatenate(_Merge):
    """Its inputs side by side along ``axis`` (the channels, -1, by default): feature maps
    ``(N, H, W, C1)`` and ``(N, H, W, C2)`` give ``(N, H, W, C1 + C2)``."""

    call_state = ("_sizes",)

    def __init__(self, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.axis = checks.integer("axis", axis)

    def _axis(self, rank: int) -> int:
        """The axis of an example (without the batch axis) for inputs of ``rank`` axes."""
        axis = self.axis + rank + 1 if self.axis < 0 else self.axis
        if not 1 <= axis <= rank:
            raise ValueError(
                f"{self._describe()}: `axis` {self.axis} is not an axis of inputs of shape "
                f"(batch, {rank} more axes), or it is the batch axis"
            )
        return axis - 1

    def compute_output_shape(self, input_shape):
        axis = self._axis(len(input_shape[0]))
        rest = [shape[:axis] + shape[axis + 1 :] for shape in input_shape]
        if any(len(shape) != len(input_shape[0]) for shape in input_shape) or any(
            r != rest[0] for r in rest
        ):
            shapes = ", ".join(str(self._with_batch(shape)) for shape in input_shape)
            raise ValueError(
                f"{self._describe()} needs inputs of one shape but for axis {self.axis}, got "
                f"{shapes}"
            )
        total = sum(shape[axis] for shape in input_shape)
        return (*input_shape[0][:axis], total, *input_shape[0][axis + 1 :])

    def call(self, x, training=False):
        axis = self._axis(x[0].ndim - 1) + 1
        self._sizes = [v.shape[axis] for v in x]
        return np.concatenate(x, axis=axis)

    def backward(self, dy):
        axis = self._axis(dy.ndim - 1) + 1
        return np.split(dy, np.cumsum(self._sizes)[:-1], axis=axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
