"""Element-wise activations and softmax, each a forward/backward pair.

Every ``*_backward`` takes the upstream gradient ``dy`` and what the forward pass returned
(its input ``x`` or output ``y``), and returns ``dx``. Shapes: any; softmax works on the last
axis.

=============  ==============================  ===============================
name           forward                         backward
=============  ==============================  ===============================
relu           ``max(x, 0)``                   ``dy * (x > 0)``
leaky_relu     ``x if x > 0 else slope * x``   ``dy * (1 if x > 0 else slope)``
sigmoid        ``1 / (1 + exp(-x))``           ``dy * y * (1 - y)``
tanh           ``tanh(x)``                     ``dy * (1 - y**2)``
softmax        ``exp(x) / sum(exp(x))``        ``y * (dy - sum(dy * y))``
linear         ``x``                           ``dy``
=============  ==============================  ===============================

Leaky ReLU, after every conv layer of the book's CNN, is one compiled pass
(:mod:`cnnlab.ops.kernels`, the formula of the table) over slices on the cores
(:mod:`cnnlab.ops.parallel`); ReLU works in place on one output array, with no temporaries
(``np.where`` is several times slower on large arrays).
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import kernels, parallel

# Values per slice below which a thread does not pay for itself (measured: a leaky ReLU pass
# over 2**21 values took as long on two threads as on one).
_GRAIN = 1 << 20


def _into_new(kernel, *arrays: np.ndarray) -> np.ndarray:
    """``kernel(out, *arrays)`` into a new array ``out`` shaped like the first of them."""
    out = np.empty_like(arrays[0])
    kernel(out, *arrays)
    return out


def relu(x: np.ndarray) -> np.ndarray:
    return _into_new(lambda out, x: np.maximum(x, 0, out=out), x)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    def kernel(out, dy, x):
        np.greater(x, 0, out=out)
        out *= dy

    return _into_new(kernel, dy, x)


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    x1, slope = np.ascontiguousarray(x).reshape(-1), x.dtype.type(negative_slope)
    out = np.empty_like(x1)
    parallel.over_batch(lambda a, b: kernels.leaky_relu(x1[a:b], slope, out[a:b]), len(x1), _GRAIN)
    return out.reshape(x.shape)


def leaky_relu_backward(dy: np.ndarray, x: np.ndarray, negative_slope: float) -> np.ndarray:
    x1, slope = np.ascontiguousarray(x).reshape(-1), x.dtype.type(negative_slope)
    dy1 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(-1)
    out = np.empty_like(dy1)

    def run(a: int, b: int) -> None:
        kernels.leaky_relu_backward(dy1[a:b], x1[a:b], slope, out[a:b])

    parallel.over_batch(run, len(x1), _GRAIN)
    return out.reshape(dy.shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive number only, so no overflow for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * y * (1 - y)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return dy * (1 - y * y)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; the row maximum is subtracted first, so it never overflows."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """``x - logsumexp(x)`` over the last axis, computed stably."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
