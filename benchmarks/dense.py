"""A dense layer's products on all the cores, three ways, forward and backward.

    python benchmarks/dense.py

Each figure is the median of 100 calls after 0.2 s of them (microseconds, and GFLOP/s), float32, on
``cnnlab.set_num_threads`` threads (all the cores by default):

- BLAS's threads: the op whole, NumPy's BLAS on threads of its own (``parallel.blas_threads``);
- slices: cnnlab's threads, each a block of the inputs as a slice of Python calling BLAS on one
  thread (``parallel.over_batch``: what float64 layers still do);
- posted: the same blocks as parts the threads run in compiled code, by cnnlab's tiles
  (``parallel.over_parts``: float32's path).

The backward pass takes the kernel gradient and Adam's update of the kernel's rows, and dx where
the layer has a layer before it. The last table runs the MLP's dense layers at inference one by
one (``fusion.DenseActivate``) and as one op (``fusion.DenseChain``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from unittest import mock

import numpy as np
from kernels import median_ms  # benchmarks/kernels.py, beside this script

import cnnlab
from cnnlab import zoo
from cnnlab.engine import dense, parallel
from cnnlab.engine.optimizers import AdamRows
from cnnlab.memory import keep_freed_memory

SHAPES = [  # (M, D, N, input gradient, what)
    (32, 3072, 200, False, "the MLP's first layer, batch 32"),
    (128, 3072, 200, False, "the MLP's first layer, batch 128"),
    (32, 4096, 128, True, "the CNN's dense layer, batch 32"),
    (128, 4096, 128, True, "the CNN's dense layer, batch 128"),
]


def median_us(fn) -> float:
    """Microseconds of ``fn()``: the median of 100 calls, after 0.2 s of calls (by then the
    threads of the way measured before have gone quiet: OpenBLAS's spin on after their last
    product, and slow cnnlab's down)."""
    start = time.perf_counter()
    while time.perf_counter() - start < 0.2:
        fn()
    return 1e3 * median_ms(fn, calls=100)


def ways():
    """``(name, context manager factory)`` for the three ways of running the dense ops."""
    return [
        ("BLAS's threads", parallel.blas_threads),
        ("slices", _slices),
        ("posted", parallel.one_blas_thread),
    ]


@contextlib.contextmanager
def _slices() -> Iterator[None]:
    """cnnlab's threads with slices of Python: the float32 layer held off the tiles."""
    with parallel.one_blas_thread(), mock.patch.object(dense, "_tiled", lambda x, kernel: False):
        yield


def layers_table(rng) -> None:
    print("| layer (M x D x N) | way | forward us | GFLOP/s | backward + Adam us | GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|")
    for m, d, n, input_gradient, what in SHAPES:
        x = rng.standard_normal((m, d)).astype(np.float32)
        kernel = (rng.standard_normal((d, n)) * 0.01).astype(np.float32)
        dy = rng.standard_normal((m, n)).astype(np.float32)
        forward_gflop = 2 * m * d * n / 1e3
        backward_gflop = forward_gflop * (2 if input_gradient else 1)
        for way, hold in ways():
            with hold():
                forward, backward = layer_us(x, kernel, dy, input_gradient)
            cells = [forward, forward_gflop / forward, backward, backward_gflop / backward]
            print(
                f"| {m} x {d} x {n} ({what}) | {way} | "
                + " | ".join(f"{c:.0f}" for c in cells)
                + " |"
            )


def layer_us(x, kernel, dy, input_gradient: bool) -> tuple[float, float]:
    """Microseconds of the dense layer's forward pass and of its backward pass with Adam's
    update of the kernel's rows (a learning rate too small to move the kernel)."""
    bias, slots = np.zeros(kernel.shape[1], np.float32), [np.zeros_like(kernel) for _ in "mv"]
    forward = median_us(lambda: dense.dense_forward(x, kernel, bias))
    _, cache = dense.dense_forward(x, kernel, bias)

    def backward() -> None:
        update = AdamRows(kernel, *slots, 1, 1e-9, 0.9, 0.999, 1e-7)
        dense.dense_backward(dy, cache, input_gradient, update=update)

    return forward, median_us(backward)


def chain_table(rng) -> None:
    print("\n| the MLP at inference, its dense layers | batch | one by one us | as one op us |")
    print("|---|---:|---:|---:|")
    cnnlab.set_random_seed(0)
    model = zoo.mlp(input_shape=(32, 32, 3))
    (chain,) = [s for s in model._steps(training=False) if type(s).__name__ == "DenseChain"]
    for batch in (32, 128):
        x = rng.uniform(-1, 1, (batch, 3072)).astype(np.float32)
        with parallel.one_blas_thread():

            def one_by_one(x=x):
                for step in chain.steps:
                    x = step(x)

            apart, together = median_us(one_by_one), median_us(lambda x=x: chain(x))
        print(f"| {' + '.join(str(layer.units) for layer in chain.layers)} | {batch} | "
              f"{apart:.0f} | {together:.0f} |")  # fmt: skip


def main() -> None:
    keep_freed_memory()
    rng = np.random.default_rng(0)
    print(f"threads: {parallel.num_threads()}\n")
    layers_table(rng)
    chain_table(rng)


if __name__ == "__main__":
    main()
