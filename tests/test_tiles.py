"""cnnlab's register-tile product (cnnlab.engine.tiles) against NumPy's matmul: every edge of
a tile (rows left over, the columns left over in a last tile of 1, 2 or 3 vectors, masked),
strided and transposed inputs, accumulation."""

import os
import subprocess
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest

from cnnlab.engine import tiles


def tile_product(a: np.ndarray, b: np.ndarray, c: np.ndarray, accumulate: bool = False) -> None:
    """``c (+)= a @ b`` by tiles.product, for float32 arrays whose last axis has stride 4 bytes
    (b, c) and ``a`` with any strides."""
    (m, k), n = a.shape, b.shape[1]
    a_rows, a_cols = (s // 4 for s in a.strides)
    tiles.product(a.ctypes.data, a_rows, a_cols, b.ctypes.data, b.strides[0] // 4,
                  c.ctypes.data, c.strides[0] // 4, m, n, k, int(accumulate))  # fmt: skip


@pytest.mark.parametrize("m", [1, 7, 8, 9, 17, 40])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 48, 63, 75, 80, 200])
@pytest.mark.parametrize("k", [0, 1, 5, 27, 64])
def test_the_product_is_matmuls(m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.full((m, n), np.nan, np.float32)  # overwritten, not added to
    tile_product(a, b, c)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    before = rng.standard_normal((m, n), dtype=np.float32)
    c = before.copy()
    tile_product(a, b, c, accumulate=True)
    np.testing.assert_allclose(c, before + a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_each_value_is_the_same_sum_whatever_its_tile():
    """A column's values do not depend on the tile that computes them (a whole one, or the
    last, of 1, 2 or 3 vectors): the same products added in the same order, bit for bit."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((11, 300), dtype=np.float32)
    b = rng.standard_normal((300, 200), dtype=np.float32)
    whole = np.empty((11, 200), np.float32)
    tile_product(a, b, whole)
    for lo, hi in [(0, 1), (0, 17), (40, 88), (150, 200), (192, 200), (199, 200)]:
        part = np.empty((11, hi - lo), np.float32)
        tile_product(a, b[:, lo:hi], part)
        np.testing.assert_array_equal(part, whole[:, lo:hi])


@pytest.mark.parametrize("accumulate", [False, True])
def test_the_rows_left_at_the_bottom_are_the_same_sums_and_nothing_below_is_written(accumulate):
    """The rows below the last whole band go in one band of fewer live rows (a third of a band
    or more) or one at a time: each row's values are the same sums, bit for bit, as in a whole
    band, and the rows after ``c``'s last (a band's rows that are not live) are left alone."""
    rng = np.random.default_rng(3)
    rows = tiles.ROWS
    a = rng.standard_normal((3 * rows, 70), dtype=np.float32)
    b = rng.standard_normal((70, 40), dtype=np.float32)
    start = rng.standard_normal((3 * rows, 40), dtype=np.float32)
    whole = start.copy()
    tile_product(a, b, whole, accumulate)
    for m in range(1, 2 * rows + 1):
        guarded = np.full((m + rows, 40), 7.0, np.float32)  # rows after c's last
        guarded[:m] = start[:m]
        tile_product(a[:m], b, guarded[:m], accumulate)
        np.testing.assert_array_equal(guarded[:m], whole[:m])
        assert (guarded[m:] == 7.0).all(), m


def test_a_transposed_a_summed_in_short_blocks_gives_the_same_sums():
    """``a.T`` read in place is summed over ``k`` in blocks short enough for the cache, each
    tile going on from ``c`` after each block: the same values in the same order as from a
    copy of ``a.T``, summed in one block, bit for bit."""
    rng = np.random.default_rng(2)
    cols = rng.standard_normal((3000, 36), dtype=np.float32)  # k = 3000 rows of a.T
    dy = rng.standard_normal((3000, 40), dtype=np.float32)
    in_place, copied = np.empty((36, 40), np.float32), np.empty((36, 40), np.float32)
    tile_product(cols.T, dy, in_place)
    tile_product(np.ascontiguousarray(cols.T), dy, copied)
    np.testing.assert_array_equal(in_place, copied)
    np.testing.assert_allclose(in_place, cols.T.astype(np.float64) @ dy, rtol=1e-4, atol=1e-3)


def test_strided_and_transposed_operands_are_read_in_place():
    rng = np.random.default_rng(0)
    cols = rng.standard_normal((50, 36), dtype=np.float32)
    dy = rng.standard_normal((50, 32), dtype=np.float32)
    dkernel = np.zeros((36, 32), np.float32)
    tile_product(cols.T, dy, dkernel)  # a conv's kernel gradient, cols.T read in place
    np.testing.assert_allclose(dkernel, cols.T.astype(np.float64) @ dy, rtol=1e-5, atol=1e-4)
    wide = rng.standard_normal((20, 64), dtype=np.float32)
    out = np.zeros((9, 80), np.float32)
    a = rng.standard_normal((9, 20), dtype=np.float32)
    tile_product(a, wide[:, 16:61], out[:, 32:77])  # rows longer than the product's, masked
    np.testing.assert_allclose(out[:, 32:77], a.astype(np.float64) @ wide[:, 16:61], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert not out[:, :32].any() and not out[:, 77:].any()  # nothing written outside


def runs_of(flat: np.ndarray, m: int, k: int, a_rows: int, a_cols: int, run: int, gap: int):
    """The ``(m, k)`` matrix that tiles.product_in_runs reads from ``flat``: ``a[i, p] =
    flat[i * a_rows + p * a_cols + (p // run) * gap]``, gathered by NumPy."""
    i, p = np.arange(m)[:, None], np.arange(k)[None, :]
    return flat[i * a_rows + p * a_cols + (p // run) * gap]


@pytest.mark.parametrize(
    "m, n, k, a_rows, a_cols, run, gap",
    [
        (32, 32, 27, 3, 1, 9, 93),  # a conv's windows: rows of 9 values, 102 apart
        (16, 64, 288, 32, 1, 96, 480),  # more output pixels than a tile's rows, 2 tiles
        (9, 32, 1024, 1, 3, 32, 6),  # a kernel gradient's rows of windows, in blocks of 128
        (192, 64, 64, 1, 128, 8, 1024),  # ... 8 to a run, runs longer than a block
        (13, 75, 200, 1, 7, 64, 3),  # rows left over, a masked edge, a block mid-run
        (5, 17, 40, 50, 1, 1, 0),  # runs of one
    ],
)
def test_a_product_in_runs_reads_a_by_runs_and_sums_as_from_a_copy(m, n, k, a_rows, a_cols, run,
                                                                   gap):  # fmt: skip
    """``a`` read in runs ``gap`` floats apart: the product of the matrix those reads make,
    bit for bit the same sums as from a copy of it, with and without ``c`` to go on from."""
    rng = np.random.default_rng(m + n + k)
    flat = rng.standard_normal((m - 1) * a_rows + (k - 1) * a_cols + (k - 1) // run * gap + 1,
                               dtype=np.float32)  # fmt: skip
    b = rng.standard_normal((k, n), dtype=np.float32)
    a = runs_of(flat, m, k, a_rows, a_cols, run, gap)
    copied = np.empty((m, n), np.float32)
    tile_product(np.ascontiguousarray(a) if a_rows >= a_cols else np.asfortranarray(a), b, copied)
    np.testing.assert_allclose(copied, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    for accumulate in (0, 1):
        before = rng.standard_normal((m, n), dtype=np.float32)
        c = before.copy()
        tiles.product_in_runs(flat.ctypes.data, a_rows, a_cols, run, gap, b.ctypes.data, n,
                              c.ctypes.data, n, m, n, k, accumulate)  # fmt: skip
        if accumulate:
            expected = before.copy()
            tile_product(np.asfortranarray(a) if a_cols > a_rows else a.copy(), b, expected, True)
            np.testing.assert_array_equal(c, expected)
        else:
            np.testing.assert_array_equal(c, copied)


def test_the_tile_shape_without_avx512_gives_the_same_products(tmp_path):
    """The 6-row, 16-column tiles that machines without AVX-512 compile, run here: a fresh
    process has numba compile for this CPU without its AVX-512 (``NUMBA_CPU_FEATURES``, as
    for a cache shared by several machines; numba's cache kept apart), and multiplies."""
    features = llvm.get_host_cpu_features().flatten().replace("+avx512", "-avx512")
    script = """
import numpy as np
from cnnlab.engine import tiles
assert (tiles.ROWS, tiles.VECTORS) == (6, 1)
rng = np.random.default_rng(0)
for m, n, k in [(13, 48, 27), (6, 16, 5), (40, 75, 64), (5, 33, 1)]:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    c = np.full((m, n), np.nan, np.float32)
    tiles.product(a.ctypes.data, k, 1, b.ctypes.data, n, c.ctypes.data, n, m, n, k, 0)
    assert np.allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5), (m, n, k)
flat = rng.standard_normal(400, dtype=np.float32)  # a read in runs of 9, 30 floats apart
a = flat[np.arange(13)[:, None] * 3 + np.arange(27) + np.arange(27) // 9 * 30]
b = rng.standard_normal((27, 20), dtype=np.float32)
c = np.empty((13, 20), np.float32)
tiles.product_in_runs(flat.ctypes.data, 3, 1, 9, 30, b.ctypes.data, 20, c.ctypes.data, 20, 13,
                      20, 27, 0)
assert np.allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
print("ok")
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_CPU_FEATURES": features}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
