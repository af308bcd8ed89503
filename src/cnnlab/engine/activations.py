"""Fast :func:`cnnlab.nn.activations.relu` and :func:`~cnnlab.nn.activations.leaky_relu` with
their backward passes: the same formulas, the same arguments.

Leaky ReLU, after every conv layer of the book's CNN, is one compiled pass
(:mod:`cnnlab.engine.kernels`) over slices on the cores (:mod:`cnnlab.engine.parallel`); ReLU
works in place on one output array, with no temporaries (``np.where`` is several times slower
on large arrays).
"""

from __future__ import annotations

import numpy as np

from cnnlab.engine import kernels, parallel

# Values per slice below which a thread does not pay for itself (measured: a leaky ReLU pass
# over 2**21 values took as long on two threads as on one).
_GRAIN = 1 << 20


def _into_new(kernel, *arrays: np.ndarray) -> np.ndarray:
    """``kernel(out, *arrays)`` into a new array ``out`` shaped like the first of them."""
    out = np.empty_like(arrays[0])
    kernel(out, *arrays)
    return out


def relu(x: np.ndarray) -> np.ndarray:
    """Fast :func:`cnnlab.nn.activations.relu`."""
    return _into_new(lambda out, x: np.maximum(x, 0, out=out), x)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fast :func:`cnnlab.nn.activations.relu_backward`."""

    def kernel(out, dy, x):
        np.greater(x, 0, out=out)
        out *= dy

    return _into_new(kernel, dy, x)


def leaky_relu(x: np.ndarray, negative_slope: float) -> np.ndarray:
    """Fast :func:`cnnlab.nn.activations.leaky_relu`."""
    x1, slope = np.ascontiguousarray(x).reshape(-1), x.dtype.type(negative_slope)
    out = np.empty_like(x1)
    parallel.over_batch(lambda a, b: kernels.leaky_relu(x1[a:b], slope, out[a:b]), len(x1), _GRAIN)
    return out.reshape(x.shape)


def leaky_relu_backward(dy: np.ndarray, x: np.ndarray, negative_slope: float) -> np.ndarray:
    """Fast :func:`cnnlab.nn.activations.leaky_relu_backward`."""
    x1, slope = np.ascontiguousarray(x).reshape(-1), x.dtype.type(negative_slope)
    dy1 = np.ascontiguousarray(dy, dtype=x.dtype).reshape(-1)
    out = np.empty_like(dy1)

    def run(a: int, b: int) -> None:
        kernels.leaky_relu_backward(dy1[a:b], x1[a:b], slope, out[a:b])

    parallel.over_batch(run, len(x1), _GRAIN)
    return out.reshape(dy.shape)
