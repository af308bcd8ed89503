"""Max, average and global average pooling over windows of each channel."""

from __future__ import annotations

from cnnlab import backend, checks
from cnnlab.layers.base import Layer
from cnnlab.nn.padding import PADDINGS, window_geometry


class _Pooling2D(Layer):
    input_rank = 4
    call_state = ("_cache",)

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        **kwargs,
    ):
        super().__init__(**kwargs)
        with self._argument_errors():
            self.pool_size = checks.int_pair("pool_size", pool_size)
            self.strides = (
                self.pool_size if strides is None else checks.int_pair("strides", strides)
            )
            self.padding = checks.choice("padding", padding, PADDINGS)

    def compute_output_shape(self, input_shape):
        h, w, c = input_shape
        (oh, ow), _ = window_geometry((h, w), self.pool_size, self.strides, self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"{self._describe()}: pool_size {self.pool_size} does not fit input {(h, w)} "
                "with padding 'valid'; use a smaller pool_size or padding='same'"
            )
        return (oh, ow, c)

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


class MaxPooling2D(_Pooling2D):
    """Max pooling: each output is the largest value in its ``pool_size`` window
    (:func:`cnnlab.nn.pooling.max_pool_forward`).

    ``strides=None`` means ``strides = pool_size``. On ties the gradient goes to the first
    maximum of the window in row-major order. Input ``(batch, H, W, C)``.
    """

    def call(self, x, training=False):
        y, self._cache = backend.ops().max_pool_forward(
            x, self.pool_size, self.strides, self.padding
        )
        return y

    def backward(self, dy):
        return backend.ops().max_pool_backward(dy, self._cache)


class AveragePooling2D(_Pooling2D):
    """Average pooling: each output is the mean of its window
    (:func:`cnnlab.nn.pooling.avg_pool_forward`).

    With ``padding="same"`` only the real (unpadded) values are averaged, as in Keras.
    """

    def call(self, x, training=False):
        y, self._cache = backend.ops().avg_pool_forward(
            x, self.pool_size, self.strides, self.padding
        )
        return y

    def backward(self, dy):
        return backend.ops().avg_pool_backward(dy, self._cache)


class GlobalAveragePooling2D(Layer):
    """Mean over height and width: ``(batch, H, W, C) -> (batch, C)``."""

    input_rank = 4
    call_state = ("_cache",)

    def compute_output_shape(self, input_shape):
        return (input_shape[-1],)

    def call(self, x, training=False):
        y, self._cache = backend.ops().global_avg_pool_forward(x)
        return y

    def backward(self, dy):
        return backend.ops().global_avg_pool_backward(dy, self._cache)
