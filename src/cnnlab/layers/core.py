"""Input, Dense, Flatten and the activation layers."""

from __future__ import annotations

import numpy as np

from cnnlab import activations, backend, checks, initializers
from cnnlab.layers.base import Layer
from cnnlab.seeding import make_rng
from cnnlab.symbolic import SymbolicTensor


class InputLayer(Layer):
    """The entry of a model: the shape of one example, without the batch axis. Made by
    :func:`Input`, whose symbolic tensor is its ``output``."""

    def __init__(self, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if not shape or not all(checks.is_positive_int(d) for d in shape):
            raise ValueError(f"Input `shape` must be a tuple of positive ints, got {shape!r}")
        self.build(tuple(int(d) for d in shape))
        self.output = SymbolicTensor((None, *self.input_shape), self.dtype, self.name, layer=self)

    def call(self, x, training=False):
        return x

    def get_config(self):
        return {**super().get_config(), "shape": list(self.input_shape)}


def Input(  # noqa: N802 - Keras's name: a function that gives a tensor
    shape: tuple[int, ...],
    batch_size: int | None = None,
    dtype: str | None = None,
    name: str | None = None,
) -> SymbolicTensor:
    """The symbolic input of a model: ``Input((32, 32, 3))`` stands for a batch of 32x32 RGB
    images, shape ``(None, 32, 32, 3)``. Call layers on it, then give both ends to
    ``Model(inputs, outputs)``; or put it first in a ``Sequential``. ``batch_size`` is
    accepted for Keras's signature; every batch size runs."""
    if batch_size is not None:
        checks.positive_int("batch_size", batch_size)
    return InputLayer(shape, name=name, dtype=dtype).output


class ActivationLayer(Layer):
    """A layer whose output passes through an activation; ``logits`` is what went into it.

    A model whose loss is cross-entropy and whose last activation is softmax computes the loss
    from ``logits`` and calls ``backward_from_logits``, which is stable for large logits.
    """

    activation: activations.Activation

    @property
    def logits(self) -> np.ndarray:
        return self.activation.x

    def get_call_state(self) -> dict:
        return {**super().get_call_state(), "activation": (self.activation.x, self.activation.y)}

    def set_call_state(self, state: dict) -> None:
        state = dict(state)
        self.activation.x, self.activation.y = state.pop("activation")
        super().set_call_state(state)

    def backward(self, dy: np.ndarray, input_gradient: bool = True) -> np.ndarray | None:
        return self.backward_from_logits(self.activation.backward(dy), input_gradient)

    def backward_from_logits(self, dz: np.ndarray, input_gradient: bool = True):
        """Backward pass from the gradient with respect to the activation's input.

        ``input_gradient=False``: only the weights' gradients are needed (the model's first
        layer with weights); a layer may then skip its input gradient and return None.
        """
        return dz


class Dense(ActivationLayer):
    """Fully connected layer: ``y = activation(x @ kernel + bias)``.

    Args:
        units: dimensionality of the output.
        activation: "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "linear" or None.
        use_bias: whether to add a bias vector.
        kernel_initializer: name of the kernel initializer (bias starts at zeros).

    Input shape ``(batch, ..., D)``; output shape ``(batch, ..., units)``.
    """

    min_rank = 2
    call_state = ("_cache", "_x_shape")
    # Set by a model's training step on the fast engine for its backward pass: the optimizer's
    # update of rows of the kernel (cnnlab.optimizers.Optimizer.row_update), which the
    # backward pass applies as each block of the kernel's gradient is ready.
    kernel_update = None

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.units = checks.positive_int("units", units)
            self.activation = activations.get(activation)
            initializers.get(kernel_initializer)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def weight_shapes(self, input_shape):
        shapes = {"kernel": (input_shape[-1], self.units)}
        return {**shapes, "bias": (self.units,)} if self.use_bias else shapes

    def build_weights(self, input_shape):
        shapes = self.weight_shapes(input_shape)
        init = initializers.get(self.kernel_initializer)
        self.add_weight("kernel", init(shapes["kernel"], make_rng(), self.dtype))
        if self.use_bias:
            self.add_weight("bias", np.zeros(shapes["bias"]))

    def call(self, x, training=False):
        x2 = x.reshape(-1, x.shape[-1])
        kernel, bias = self.weights["kernel"], self.weights.get("bias")
        z, self._cache = backend.ops().dense_forward(x2, kernel, bias)
        self._x_shape = x.shape
        return self.activation(z.reshape(*x.shape[:-1], self.units))

    def backward_from_logits(self, dz, input_gradient=True):
        dz2, ops = dz.reshape(-1, self.units), backend.ops()
        if self.kernel_update is None:
            dx, dkernel, dbias = ops.dense_backward(dz2, self._cache, input_gradient)
        else:  # the fast engine's, updating the kernel's rows as their gradient is ready
            dx, dkernel, dbias = ops.dense_backward(
                dz2, self._cache, input_gradient, update=self.kernel_update
            )
        self.grads["kernel"] = dkernel
        if self.use_bias:
            self.grads["bias"] = dbias
        return None if dx is None else dx.reshape(self._x_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation.name,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
        }


class Flatten(Layer):
    """Flattens each example in row-major (C) order: NHWC ``(N, H, W, C) -> (N, H*W*C)``."""

    min_rank = 2
    call_state = ("_x_shape",)

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def call(self, x, training=False):
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._x_shape)


class Activation(ActivationLayer):
    """Applies an activation function by name, e.g. ``Activation("relu")``."""

    def __init__(self, activation: str, **kwargs):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.activation = activations.get(activation)

    def call(self, x, training=False):
        return self.activation(x)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation.name}


class ReLU(Activation):
    """``y = max(x, 0)``."""

    def __init__(self, **kwargs):
        super().__init__("relu", **kwargs)

    def get_config(self):
        return Layer.get_config(self)


class LeakyReLU(Activation):
    """``y = x`` where ``x > 0``, else ``negative_slope * x`` (Keras's default slope 0.3)."""

    def __init__(self, negative_slope: float = 0.3, **kwargs):
        super().__init__("leaky_relu", **kwargs)
        with self._argument_errors():
            self.negative_slope = checks.number_in("negative_slope", negative_slope, 0)
        self.activation.negative_slope = self.negative_slope

    def get_config(self):
        return {**Layer.get_config(self), "negative_slope": self.negative_slope}


class Softmax(Activation):
    """Softmax over the last axis: ``y = exp(x) / sum(exp(x))``."""

    def __init__(self, **kwargs):
        super().__init__("softmax", **kwargs)

    def get_config(self):
        return Layer.get_config(self)
