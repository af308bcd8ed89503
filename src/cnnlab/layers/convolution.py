"""Conv2D: many filters sliding over the image."""

from __future__ import annotations

import numpy as np

from cnnlab import activations, backend, checks, initializers
from cnnlab.layers.core import ActivationLayer
from cnnlab.nn.padding import PADDINGS, window_geometry
from cnnlab.seeding import make_rng


class Conv2D(ActivationLayer):
    """2-D convolution layer (cross-correlation, as on the slide), channels last.

    Each of the ``filters`` filters is a ``kernel_size x C`` block of learned weights; it slides
    over the image ``strides`` pixels at a time, and at every position the patch under it is
    multiplied pixel-wise with the filter and summed, plus a bias
    (:func:`cnnlab.nn.conv.conv2d_forward`). The kernel has shape ``(kh, kw, C, filters)``.

    Args:
        filters: number of filters, the number of output channels.
        kernel_size: int or pair ``(kh, kw)``.
        strides: int or pair ``(sh, sw)``.
        padding: "valid" (no padding) or "same" (output ``ceil(n / stride)``; the odd row or
            column of padding goes to the bottom/right, as in Keras).
        activation, use_bias, kernel_initializer: as in :class:`Dense`.

    Input shape ``(batch, height, width, C)``; output ``(batch, out_h, out_w, filters)``.
    """

    input_rank = 4
    call_state = ("_cache",)

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.filters = checks.positive_int("filters", filters)
            self.kernel_size = checks.int_pair("kernel_size", kernel_size)
            self.strides = checks.int_pair("strides", strides)
            self.padding = checks.choice("padding", padding, PADDINGS)
            self.activation = activations.get(activation)
            initializers.get(kernel_initializer)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer

    def compute_output_shape(self, input_shape):
        h, w, _ = input_shape
        (oh, ow), _ = window_geometry((h, w), self.kernel_size, self.strides, self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"{self._describe()}: kernel {self.kernel_size} does not fit input "
                f"{(h, w)} with padding 'valid'; use a smaller kernel or padding='same'"
            )
        return (oh, ow, self.filters)

    def weight_shapes(self, input_shape):
        shapes = {"kernel": (*self.kernel_size, input_shape[-1], self.filters)}
        return {**shapes, "bias": (self.filters,)} if self.use_bias else shapes

    def build_weights(self, input_shape):
        shapes = self.weight_shapes(input_shape)
        init = initializers.get(self.kernel_initializer)
        self.add_weight("kernel", init(shapes["kernel"], make_rng(), self.dtype))
        if self.use_bias:
            self.add_weight("bias", np.zeros(shapes["bias"]))

    def call(self, x, training=False):
        kernel, bias = self.weights["kernel"], self.weights.get("bias")
        z, self._cache = backend.ops().conv2d_forward(x, kernel, bias, self.strides, self.padding)
        return self.activation(z)

    def backward_from_logits(self, dz, input_gradient=True):
        dx, dkernel, dbias = backend.ops().conv2d_backward(dz, self._cache, input_gradient)
        self.grads["kernel"] = dkernel
        if self.use_bias:
            self.grads["bias"] = dbias
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "activation": self.activation.name,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
        }
