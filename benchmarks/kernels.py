"""The alternatives measured for cnnlab's element-wise kernels, side by side.

    python benchmarks/kernels.py

Each row times one way of computing the same thing on a feature map of the book's CNN at batch
128 (the first layer's ``(128, 32, 32, 32)`` float32, seen as ``(131072, 32)``), median of 30
calls: column sums (bias gradients, batch-norm statistics), the leaky ReLU gradient, batch
norm's training forward and backward passes, col2im of the stride-2 layer, and one
element-wise multiply on one core against two threads over halves of the array. "cnnlab" marks
what the layers run (compiled loops, slices on the cores); the others are the alternatives.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cnnlab import nn
from cnnlab.engine import batchnorm, kernels
from cnnlab.engine.activations import leaky_relu_backward
from cnnlab.engine.sums import column_sums
from cnnlab.memory import keep_freed_memory
from cnnlab.nn.windows import add_windows


def median_ms(fn, calls: int = 30) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    keep_freed_memory()  # as fit does: no page faults in any row
    rng = np.random.default_rng(0)
    x = rng.standard_normal((131072, 32), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    slope = np.float32(0.3)

    def gradient_in_numpy():  # dy * (slope + (1 - slope) * (x > 0)), four in-place passes
        dx = np.greater(x, 0).astype(np.float32)
        dx *= 1 - slope
        dx += slope
        dx *= dy
        return dx

    def gradient_by_mask():
        dx = dy * slope
        np.copyto(dx, dy, where=x > 0)
        return dx

    pool = ThreadPoolExecutor(2)

    def two_threads(a, out):
        half = len(a) // 2
        job = pool.submit(np.multiply, a[:half], slope, out=out[:half])
        np.multiply(a[half:], slope, out=out[half:])
        job.result()

    out = np.empty_like(x)
    small, small_out = x[:8192], out[:8192]  # 1 MiB

    def in_place_gradient():
        return leaky_relu_backward(dy, x, 0.3)

    gamma, beta = np.ones(32, np.float32), np.zeros(32, np.float32)
    _, _, _, fast_cache = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)
    _, _, _, ref_cache = nn.batchnorm_train_forward(x, gamma, beta, 1e-3)
    dcols = rng.standard_normal((128, 16, 16, 3, 3, 32), dtype=np.float32)  # stride 2, 32 -> 16
    dx = np.empty((128, 32, 32, 32), np.float32)
    dx_padded = np.zeros((128, 33, 33, 32), np.float32)

    def col2im_numpy():  # one strided slice addition per kernel offset, into the padded image
        dx_padded.fill(0)
        add_windows(dx_padded, dcols, (2, 2))

    rows = [
        ("column sums: x.sum(axis=0)", lambda: x.sum(axis=0)),
        ("column sums: einsum('ij->j')", lambda: np.einsum("ij->j", x)),
        ("column sums: ones @ x (cnnlab)", lambda: column_sums(x)),
        ("leaky ReLU gradient: compiled loop (cnnlab)", in_place_gradient),
        ("leaky ReLU gradient: 4 in-place NumPy passes", gradient_in_numpy),
        ("leaky ReLU gradient: dy * slope, copyto where x > 0", gradient_by_mask),
        (
            "batch norm forward: compiled passes (cnnlab)",
            lambda: batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3),
        ),
        (
            "batch norm forward: NumPy reference",
            lambda: nn.batchnorm_train_forward(x, gamma, beta, 1e-3),
        ),
        (
            "batch norm backward: compiled passes (cnnlab)",
            lambda: batchnorm.batchnorm_train_backward(dy, fast_cache),
        ),
        (
            "batch norm backward: NumPy reference",
            lambda: nn.batchnorm_train_backward(dy, ref_cache),
        ),
        ("col2im, stride 2: compiled loop", lambda: kernels.col2im(dcols, 2, 2, 0, 0, dx)),
        ("col2im, stride 2: NumPy slice additions", col2im_numpy),
        ("multiply, 16 MiB: one core (NumPy)", lambda: np.multiply(x, slope, out=out)),
        ("multiply, 16 MiB: two threads", lambda: two_threads(x, out)),
        ("multiply, 1 MiB: one core (NumPy)", lambda: np.multiply(small, slope, out=small_out)),
        ("multiply, 1 MiB: two threads", lambda: two_threads(small, small_out)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'kernel'.ljust(width)}  median ms")
    for name, fn in rows:
        print(f"{name.ljust(width)}  {median_ms(fn):9.3f}")
    pool.shutdown()


if __name__ == "__main__":
    main()
