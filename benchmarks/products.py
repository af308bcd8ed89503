"""cnnlab's own matrix products (cnnlab.engine.tiles) against NumPy's BLAS, on one core.

    python benchmarks/products.py

Two tables, each figure the median of 30 calls after a warm-up, with BLAS held to one thread:

1. GFLOP/s of the products of the book's CNN and MLP at batch 32 (M x K x N: the forward
   product ``a @ b``, the kernel gradient ``a.T @ dy`` and the input gradient's ``dy @ b.T``),
   by BLAS (``np.matmul``) and by the tiles.
2. A convolution of 16 images straight from the input (the chunk padded, then one product per
   output row: ``kernels.conv_direct_forward_images``) against im2col followed by one product
   by the tiles, forward and for the kernel gradient, in microseconds; and its input gradient
   by the tiles' ``dcols = dy @ kmat.T`` and col2im, against the direct one (``dy`` padded,
   then one product per row of each phase: ``kernels.conv_direct_input_gradient``).
3. The two ways of the input gradient again, for 16 images of 32x32 pixels and 32 filters,
   by the input's channels: the direct way's time stays the same up to 16 channels (a vector
   of the tiles), the columns' grows with them (``conv._direct_input_gradient``).
"""

from __future__ import annotations

import numpy as np
from kernels import median_ms  # benchmarks/kernels.py, beside this script
from threadpoolctl import threadpool_limits

from cnnlab.engine import conv, kernels, tiles
from cnnlab.memory import keep_freed_memory


def median_us(fn) -> float:
    """Microseconds of ``fn()``, the median of 30 calls after one (kernels.py's timer)."""
    return 1e3 * median_ms(fn)


def tile_product(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """``c = a @ b`` by the tiles; ``a`` with any strides, ``b`` and ``c`` row-major."""
    (m, k), n = a.shape, b.shape[1]
    a_rows, a_cols = (s // 4 for s in a.strides)
    tiles.product(a.ctypes.data, a_rows, a_cols, b.ctypes.data, b.strides[0] // 4,
                  c.ctypes.data, c.strides[0] // 4, m, n, k, 0)  # fmt: skip


PRODUCTS = [  # (M, K, N, what)
    (32 * 32 * 32, 27, 32, "first conv, im2col"),
    (32 * 16 * 16, 288, 32, "second conv, im2col"),
    (32 * 16 * 16, 288, 64, "third conv, im2col"),
    (32 * 8 * 8, 576, 64, "fourth conv, im2col"),
    (32, 3072, 200, "the MLP's first layer"),
    (32, 4096, 128, "the CNN's dense layer"),
]

CONVS = [  # (H, C, F, strides, (top, bottom) padding): 16 images of the book's CNN's convs
    (32, 3, 32, 1, (1, 1)),
    (32, 32, 32, 2, (0, 1)),
    (16, 32, 64, 1, (1, 1)),
    (16, 64, 64, 2, (0, 1)),
]


def products_table(rng) -> None:
    print("| product (M x K x N) | what | forward: BLAS | tiles | kernel gradient: BLAS | tiles "
          "| input gradient: BLAS | tiles |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for m, k, n, what in PRODUCTS:
        cells = " | ".join(f"{g:.0f}" for g in product_row(rng, m, k, n))
        print(f"| {m} x {k} x {n} | {what} | {cells} |")


def product_row(rng, m: int, k: int, n: int) -> list[float]:
    """GFLOP/s of BLAS and the tiles for ``a @ b``, ``a.T @ dy`` and ``dy @ b.T``."""
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    dy = rng.standard_normal((m, n), dtype=np.float32)
    b_t = np.ascontiguousarray(b.T)
    out, grad, back = (np.empty(shape, np.float32) for shape in ((m, n), (k, n), (m, k)))
    cases = [
        (lambda: np.matmul(a, b, out=out), lambda: tile_product(a, b, out)),
        (lambda: np.matmul(a.T, dy, out=grad), lambda: tile_product(a.T, dy, grad)),
        (lambda: np.matmul(dy, b_t, out=back), lambda: tile_product(dy, b_t, back)),
    ]
    row = []
    with threadpool_limits(1, "blas"):
        for by_blas, by_tiles in cases:
            row += [2 * m * k * n / median_us(fn) / 1e3 for fn in (by_blas, by_tiles)]
    return row


def convs_table(rng) -> None:
    print("\n| conv (16 images) | forward: im2col + tiles | direct | kernel gradient: im2col "
          "+ tiles | direct | input gradient: tiles + col2im | direct |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for h, c, f, s, pads in CONVS:
        oh = (h + sum(pads) - 3) // s + 1
        times = conv_row(rng, h, c, f, s, pads)
        name = f"{h}x{h}x{c} -> {oh}x{oh}x{f}, strides {s}"
        print(f"| {name} | " + " | ".join(f"{t:.0f} us" for t in times) + " |")


def conv_row(rng, h: int, c: int, f: int, s: int, pads: tuple[int, int]) -> list[float]:
    """Microseconds of a 3x3 convolution of 16 images, forward and kernel gradient, by im2col
    and the tiles, and straight from the input; the input gradient by the tiles and col2im,
    and straight from the output gradient."""
    top, bottom = pads
    x = rng.standard_normal((16, h, h, c), dtype=np.float32)
    kmat = rng.standard_normal((9 * c, f), dtype=np.float32) * 0.1
    kmat_t = np.ascontiguousarray(kmat.T)
    oh = (h + top + bottom - 3) // s + 1
    y = np.empty((16, oh, oh, f), np.float32)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    cols = np.empty((16, oh, oh, 3, 3, c), np.float32)
    xp = np.zeros((16, h + top + bottom, h + top + bottom, c), np.float32)
    dkernel = np.empty((9 * c, f), np.float32)
    flat_cols, flat_y, flat_dy = cols.reshape(-1, 9 * c), y.reshape(-1, f), dy.reshape(-1, f)

    def forward_im2col():
        kernels._im2col(x, top, top, s, s, 0, 16, cols)
        tile_product(flat_cols, kmat, flat_y)

    def gradient_im2col():
        kernels._im2col(x, top, top, s, s, 0, 16, cols)
        tile_product(flat_cols.T, flat_dy, dkernel)

    def forward_direct():
        kernels.conv_direct_forward_images(
            x, (top, top), (s, s), (3, 3), 0, 16, kmat, xp, None, None, y
        )

    def gradient_direct():
        kernels.conv_direct_backward_images(
            x, (top, top), (s, s), (3, 3), 0, 16, dy, kmat_t, xp, None, None, dkernel, None
        )

    times = [median_us(fn) for fn in (forward_im2col, forward_direct, gradient_im2col,
                                      gradient_direct)]  # fmt: skip
    return times + input_gradient_row(dy, kmat, (h, h), s, pads)


def input_gradient_row(dy, kmat, hw, s: int, pads: tuple[int, int]) -> list[float]:
    """Microseconds of the input gradient of a 3x3 convolution of ``len(dy)`` images (``kmat:
    (9*C, F)``), by the tiles' ``dcols = dy @ kmat.T`` and col2im, and straight from ``dy``."""
    n, oh, ow, f = dy.shape
    c, top = kmat.shape[0] // 9, pads[0]
    kmat_t = np.ascontiguousarray(kmat.T)
    dcols, dx = np.empty((n, oh, ow, 3, 3, c), np.float32), np.empty((n, *hw, c), np.float32)
    by_phase = conv._by_phase(kmat.reshape(3, 3, c, f), (s, s))
    border = kernels.input_gradient_padding((3, 3), (s, s))
    shape = kernels.padded_gradient_shape(hw, (oh, ow), (top, top), (s, s), (3, 3))
    dyp = np.zeros((n, *shape, f), np.float32)

    def by_columns():
        tile_product(dy.reshape(-1, f), kmat_t, dcols.reshape(-1, 9 * c))
        kernels.col2im(dcols, s, s, top, top, dx)

    def direct():
        kernels._pad_chunk(dy, 0, n, border[0], border[1], dyp)
        kernels.conv_direct_input_gradient(dyp, (top, top), (s, s), (3, 3), by_phase, dx)

    return [median_us(by_columns), median_us(direct)]


def channels_table(rng) -> None:
    print("\n| input gradient, 16 images 32x32, 32 filters | channels | through the columns "
          "| direct |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for s, pads in ((1, (1, 1)), (2, (0, 1))):
        oh = (32 + sum(pads) - 3) // s + 1
        dy = rng.standard_normal((16, oh, oh, 32), dtype=np.float32)
        for c in (3, 8, 12, 16, 32):
            kmat = rng.standard_normal((9 * c, 32), dtype=np.float32) * 0.1
            times = input_gradient_row(dy, kmat, (32, 32), s, pads)
            print(f"| strides {s} | {c} | " + " | ".join(f"{t:.0f} us" for t in times) + " |")


def main() -> None:
    keep_freed_memory()
    rng = np.random.default_rng(0)
    print(f"tiles of {tiles.ROWS} rows x {tiles.VECTORS * tiles.WIDTH} columns; GFLOP/s, one core")
    products_table(rng)
    convs_table(rng)
    channels_table(rng)


if __name__ == "__main__":
    main()
