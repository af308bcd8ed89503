"""A float32 matrix product of cnnlab's own, by register tiles: for the narrow products of a
conv layer (32 or 64 filters), which BLAS libraries run well below the machine's peak.

``c = a @ b``, or ``c += a @ b``, for ``a: (m, k)``, ``b: (k, n)``, ``c: (m, n)``. ``c`` is cut
into tiles of 8 rows and 32 columns (6 rows and 16 columns without AVX-512; the rows left at
the bottom in a band of fewer rows, or one at a time), and each tile's sums stay in vector
registers for the whole sum over ``k``::

    for p in range(k):
        c[i : i + 8, j : j + 32] += a[i : i + 8, p, None] * b[p, j : j + 32]

16 floats a vector: one load of ``b``'s row for the 8 rows, one value of ``a`` broadcast to a
vector for the 32 columns, and fused multiply-adds. The columns left over at the right edge go
in one tile whose last vector is masked: with AVX-512, 1 to 16 of them with the last whole tile
(48 columns, 3 vectors), 17 to 31 as a tile of 2 vectors: a layer of 200 units is six tiles,
not six and a half-empty one. Every value of ``c`` is the same sum in the same order whatever
its tile. Nothing is copied first: ``a`` is read through two strides, so that ``cols.T`` (a
conv's kernel gradient, ``cols.T @ dy``) is read in place, and ``b`` and ``c`` through their
row lengths; and along the sum in runs a gap apart (:func:`product_in_runs`), so that a
convolution's windows are read in place from its input, a whole window in one sum.

The tile is written in LLVM's IR (numba's ``@intrinsic``): LLVM keeps the 16 sums of a tile in
registers across the loop over ``k`` only when they are values, as here; as Python loops over
arrays, numba kept them in memory. LLVM fits the 16-float vectors to the machine: one AVX-512
register each, two AVX2 registers, four SSE registers. Whether BLAS or the tiles run a conv
shape faster on a machine, after im2col or reading the windows straight from the input, is the
tuner's choice (:attr:`cnnlab.engine.tuning.ConvPlan.products`).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from cnnlab.engine import machine

WIDTH = 16  # floats a vector
# A tile's sums fill half to three quarters of the vector registers: 8 rows x 32 columns in
# AVX-512's 32 registers of 16 floats, 6 rows x 16 columns in AVX2's 16 registers of 8.
# The features numba compiles for: NUMBA_CPU_FEATURES where set (as for a cache shared by
# several machines), else the host's.
_FEATURES = numba.config.CPU_FEATURES
if _FEATURES is None:
    _FEATURES = llvm.get_host_cpu_features().flatten()
ROWS, VECTORS = (8, 2) if "+avx512f" in _FEATURES.split(",") else (6, 1)
_FLOAT = ir.FloatType()
_VECTOR = ir.VectorType(_FLOAT, WIDTH)
_MASK = ir.VectorType(ir.IntType(1), WIDTH)
_INT = ir.IntType(64)
_I32 = ir.IntType(32)
_ITEM = 4  # bytes of a float32
B_BYTES = 1 << 18  # b's rows multiplied into all of c at a time fill about this many bytes
# With a transposed (each step of a tile's sum reading a line of a, as cols.T in a kernel
# gradient), the block of b's rows and the lines of a a tile reads over it fill half of L1,
# but for at least _MIN_DEPTH rows: a tile stores its sums and loads them again after each
# block, 32 vector moves, which 64 steps of 16 multiply-adds make 3 % of the work.
_LINE, L1_BYTES, _MIN_DEPTH = 64, machine.cache_bytes("L1d", 32 << 10), 64


def _declared(module: ir.Module, name: str, returns: ir.Type, *arguments: ir.Type):
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(returns, arguments), name)


class _Vectors:
    """Loads and stores of 16 floats at ``base + index`` (in floats), all of them or, with a
    mask, its first ``last`` lanes (the others read as 0 and left as they are)."""

    def __init__(self, builder: ir.IRBuilder, last=None):
        self.builder, self.mask = builder, None
        pointer = _VECTOR.as_pointer()
        if last is not None:
            lanes = ir.Constant(ir.VectorType(_INT, WIDTH), list(range(WIDTH)))
            bound = builder.insert_element(ir.Constant(ir.VectorType(_INT, WIDTH), None), last,
                                           ir.Constant(_I32, 0))  # fmt: skip
            bound = builder.shuffle_vector(bound, bound, ir.Constant(ir.VectorType(_I32, WIDTH),
                                                                     [0] * WIDTH))  # fmt: skip
            self.mask = builder.icmp_unsigned("<", lanes, bound)
            module = builder.module
            self._load = _declared(module, "llvm.masked.load.v16f32.p0", _VECTOR, pointer,
                                   _I32, _MASK, _VECTOR)  # fmt: skip
            self._store = _declared(module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                    _VECTOR, pointer, _I32, _MASK)  # fmt: skip

    def _at(self, base, index):
        return self.builder.bitcast(self.builder.gep(base, [index]), _VECTOR.as_pointer())

    def load(self, base, index):
        if self.mask is None:
            value = self.builder.load(self._at(base, index))
            value.align = _ITEM
            return value
        zeros = ir.Constant(_VECTOR, [0.0] * WIDTH)
        align = ir.Constant(_I32, _ITEM)
        return self.builder.call(self._load, [self._at(base, index), align, self.mask, zeros])

    def store(self, value, base, index):
        if self.mask is None:
            self.builder.store(value, self._at(base, index)).align = _ITEM
        else:
            align = ir.Constant(_I32, _ITEM)
            self.builder.call(self._store, [value, self._at(base, index), align, self.mask])


def _emit(builder: ir.IRBuilder, rows: int, vectors: int, masked: bool, args) -> None:
    """The IR of one tile of ``rows x vectors * 16`` values (see :func:`_tile`)."""
    a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, last, first, run, gap, live = args
    a, b, c = (builder.inttoptr(p, _FLOAT.as_pointer()) for p in (a, b, c))
    fma = _declared(builder.module, "llvm.fma.v16f32", _VECTOR, _VECTOR, _VECTOR, _VECTOR)
    whole, edge = _Vectors(builder), _Vectors(builder, last if masked else None)
    lanes = [whole] * (vectors - 1) + [edge]  # the last vector masked, if any

    def const(n: int):
        return ir.Constant(_INT, n)

    # Rows from ``live`` on are the last live row again, read from its rows of ``a`` and ``c``
    # and stored there, the same sums: a band of fewer rows than the tile's.
    row = [builder.select(builder.icmp_signed("<", const(r), live), const(r),
                          builder.sub(live, const(1))) for r in range(rows)]  # fmt: skip
    a_at = [builder.mul(a_rows, row[r]) for r in range(rows)]

    def c_at(r: int, v: int):
        return builder.add(builder.mul(ldc, row[r]), const(v * WIDTH))

    def phis(incoming: list) -> list:
        """A phi of 16 floats for each sum, from each ``(sums, block)`` of ``incoming``."""
        out = [[builder.phi(_VECTOR) for _ in range(vectors)] for _ in range(rows)]
        for values, block in incoming:
            for r in range(rows):
                for v in range(vectors):
                    out[r][v].add_incoming(values[r][v], block)
        return out

    # The sums start from c's tile as it is (accumulate != 0), read only then, or from zeros.
    entry = builder.block
    read, ready = builder.append_basic_block("tile.read"), builder.append_basic_block("tile.ready")
    runs, loop = builder.append_basic_block("tile.runs"), builder.append_basic_block("tile.loop")
    ended, done = builder.append_basic_block("tile.ended"), builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed("!=", accumulate, const(0)), read, ready)
    builder.position_at_end(read)
    loads = [[lanes[v].load(c, c_at(r, v)) for v in range(vectors)] for r in range(rows)]
    builder.branch(ready)
    builder.position_at_end(ready)
    zeros = [[ir.Constant(_VECTOR, [0.0] * WIDTH)] * vectors] * rows
    start = phis([(zeros, entry), (loads, read)])
    builder.cbranch(builder.icmp_signed(">", k, const(0)), runs, done)

    # The sum in runs of a's values: the first of ``first`` steps, the others of ``run``;
    # ``gap`` more floats between one run's last value of a and the next run's first.
    builder.position_at_end(runs)
    q, length = builder.phi(_INT), builder.phi(_INT)
    a_run, b_run = builder.phi(a.type), builder.phi(b.type)
    begun = phis([(start, ready)])
    left = builder.sub(k, q)
    steps = builder.select(builder.icmp_signed("<", length, left), length, left)
    builder.branch(loop)

    # for p in range(steps): sums[r][v] += a[r, q + p] * b[q + p, 16 v : 16 v + 16]
    builder.position_at_end(loop)
    p = builder.phi(_INT)
    sums = phis([(begun, runs)])
    b_row = [lanes[v].load(b_run, builder.add(builder.mul(p, ldb), const(v * WIDTH)))
             for v in range(vectors)]  # fmt: skip
    a_col = builder.mul(p, a_cols)
    undefined = ir.Constant(_VECTOR, ir.Undefined)
    splat = ir.Constant(ir.VectorType(_I32, WIDTH), [0] * WIDTH)
    new = []
    for r in range(rows):
        at = builder.add(a_at[r], a_col)
        one = builder.insert_element(undefined, builder.load(builder.gep(a_run, [at])),
                                     ir.Constant(_I32, 0))  # fmt: skip
        broadcast = builder.shuffle_vector(one, undefined, splat)
        new.append([builder.call(fma, [broadcast, b_row[v], sums[r][v]]) for v in range(vectors)])
    following = builder.add(p, const(1))
    body = builder.block
    p.add_incoming(const(0), runs)
    p.add_incoming(following, body)
    for r in range(rows):
        for v in range(vectors):
            sums[r][v].add_incoming(new[r][v], body)
    builder.cbranch(builder.icmp_signed("<", following, steps), loop, ended)

    builder.position_at_end(ended)
    next_q = builder.add(q, steps)
    next_a = builder.gep(a_run, [builder.add(builder.mul(steps, a_cols), gap)])
    next_b = builder.gep(b_run, [builder.mul(steps, ldb)])
    for phi, initial, after in ((q, const(0), next_q), (length, first, run), (a_run, a, next_a),
                                (b_run, b, next_b)):  # fmt: skip
        phi.add_incoming(initial, ready)
        phi.add_incoming(after, ended)
    for r in range(rows):
        for v in range(vectors):
            begun[r][v].add_incoming(new[r][v], ended)
    builder.cbranch(builder.icmp_signed("<", next_q, k), runs, done)

    builder.position_at_end(done)
    totals = phis([(start, ready), (new, ended)])
    for r in range(rows):
        for v in range(vectors):
            lanes[v].store(totals[r][v], c, c_at(r, v))


def _tile(rows: int, vectors: int, masked: bool = False):
    """The intrinsic ``tile(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, last, first, run,
    gap, live)``: ``c[r, q] = (c[r, q] if accumulate else 0) + sum_p a[r * a_rows + at(p)] *
    b[p * ldb + q]`` for ``r < min(rows, live)``, ``q < 16 * vectors`` (``q < 16 * (vectors -
    1) + last`` if ``masked``: the last vector's first ``last`` lanes), where ``a``, ``b``,
    ``c`` are the addresses of float32 values and the strides count values. ``at(p) = p *
    a_cols + gap * runs(p)``, ``runs(p)`` the runs of ``a``'s values before step ``p``: the
    first of ``first`` steps, the others of ``run`` each. ``live``, 1 to ``rows``: the rows
    of ``c`` read and written; the tile's others repeat the last of them."""

    @intrinsic
    def tile(typingctx, a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, last, first, run, gap,
             live):  # fmt: skip
        def codegen(context, builder, signature, args):
            _emit(builder, rows, vectors, masked, args)
            return context.get_dummy_value()

        return types.void(*[types.int64] * 14), codegen

    return tile


STEP = VECTORS * WIDTH  # columns of a whole tile
_full, _row_full = _tile(ROWS, VECTORS), _tile(1, VECTORS)
# The tiles at the right edge, by their vectors, the last masked (3 only with AVX-512).
_edge1, _edge2, _edge3 = (_tile(ROWS, v, True) for v in (1, 2, 3))
_row_edge1, _row_edge2, _row_edge3 = (_tile(1, v, True) for v in (1, 2, 3))


@numba.njit(cache=True, nogil=True)
def _edge(n):
    """``(wide, vectors, lanes)`` of ``n`` columns: the columns in whole tiles, then one tile
    of ``vectors`` vectors (0: none) whose last has ``lanes`` columns. With AVX-512, 1 to 16
    columns left over join the last whole tile in one of 3 vectors."""
    wide = n - n % STEP
    rest = n - wide
    if rest == 0:
        return wide, 0, 0
    if VECTORS == 2 and rest <= WIDTH and wide > 0:
        return wide - STEP, 3, rest
    vectors = -(-rest // WIDTH)
    return wide, vectors, rest - (vectors - 1) * WIDTH


@numba.njit(cache=True, nogil=True)
def product(a, a_rows, a_cols, b, ldb, c, ldc, m, n, k, accumulate):
    """``c = a @ b`` (``c += a @ b`` for ``accumulate`` not 0) for float32 matrices given by
    the addresses of their first values: ``a[i, p]`` at ``a + 4 * (i * a_rows + p * a_cols)``,
    ``b[p, j]`` at ``b + 4 * (p * ldb + j)``, ``c[i, j]`` at ``c + 4 * (i * ldc + j)``; ``a:
    (m, k)``, ``b: (k, n)``, ``c: (m, n)``. :func:`product_in_runs` with one run."""
    product_in_runs(a, a_rows, a_cols, max(k, 1), 0, b, ldb, c, ldc, m, n, k, accumulate)


@numba.njit(cache=True, nogil=True)
def product_in_runs(a, a_rows, a_cols, run, gap, b, ldb, c, ldc, m, n, k, accumulate):
    """:func:`product` with ``a``'s values along the sum in runs of ``run``, ``gap`` floats
    apart: ``a[i, p]`` at ``a + 4 * (i * a_rows + p * a_cols + (p // run) * gap)``. A
    convolution straight from its input reads its windows so: the rows of a window, or a row
    of windows after another (:func:`cnnlab.engine.kernels.conv_direct_forward_images`),
    each tile summing over all of them in its registers.

    The sum over ``k`` is taken in blocks of ``b``'s rows of about :data:`B_BYTES` (all of them
    for a narrow ``b``), each block multiplied into every tile of ``c`` while it is in the
    cache. Where ``a`` is read across its rows (``a_cols > a_rows``: ``a`` transposed), each
    step of a tile's sum reads another cache line of ``a``; the blocks are then short enough
    that a block of ``b`` and the lines of ``a`` a tile reads over it fit in half the L1 data
    cache (64 rows at least), and a tile's sum goes on from ``c`` after each (the same sums:
    a tile keeps float32 sums in its registers, as ``c`` does)."""
    a, b, c = np.int64(a), np.int64(b), np.int64(c)  # addresses (NumPy's are unsigned)
    depth = max(ROWS, B_BYTES // (_ITEM * max(n, 1)))
    if a_cols > a_rows:
        depth = min(depth, max(_MIN_DEPTH, L1_BYTES // 2 // (_LINE + _ITEM * n)))
    for p in range(0, max(k, 1), depth):
        at = a + _ITEM * (p * a_cols + (p // run) * gap)
        runs = (run - p % run, run, gap)
        _block(at, a_rows, a_cols, b + _ITEM * p * ldb, ldb, c, ldc, m, n, min(depth, k - p),
               accumulate if p == 0 else 1, runs)  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _block(a, a_rows, a_cols, b, ldb, c, ldc, m, n, k, accumulate, runs):
    """:func:`product_in_runs` for one block of the sum, a band of :data:`ROWS` rows of ``c``
    at a time; the rows left at the bottom in one band of that many live rows where they are
    a third of a band or more, else one at a time. A row alone keeps only its vectors' sums
    going, each multiply-add waiting on the last: about a third of a band's time on AVX-512
    (benchmarks/README.md), more against AVX2's bands of 6 rows; a band of fewer rows takes a
    whole band's time. ``runs``: the tiles' ``(first, run, gap)``."""
    wide, vectors, lanes = _edge(n)
    i = 0
    while i < m:
        left = m - i
        live = ROWS if left >= ROWS else (left if 3 * left >= ROWS else 1)
        _band(live, a + _ITEM * i * a_rows, a_rows, a_cols, b, ldb, c + _ITEM * i * ldc, ldc,
              k, accumulate, wide, vectors, lanes, runs)  # fmt: skip
        i += live


@numba.njit(cache=True, nogil=True)
def _band(live, a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, wide, vectors, lanes, runs):
    """One band of ``live`` rows of ``c`` (by the tiles of one row where ``live`` is 1, else
    of :data:`ROWS`) tile by tile: the whole tiles up to column ``wide``, then the edge tile of
    :func:`_edge`'s ``vectors`` and ``lanes``."""
    first, run, gap = runs
    single = live == 1
    for j in range(0, wide, STEP):
        b_j, c_j = b + _ITEM * j, c + _ITEM * j
        if single:
            _row_full(a, a_rows, a_cols, b_j, ldb, c_j, ldc, k, accumulate, 0, first, run, gap, 1)
        else:
            _full(a, a_rows, a_cols, b_j, ldb, c_j, ldc, k, accumulate, 0, first, run, gap, live)
    b, c = b + _ITEM * wide, c + _ITEM * wide
    if vectors == 1:
        if single:
            _row_edge1(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap,
                       1)  # fmt: skip
        else:
            _edge1(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap, live)
    elif vectors == 2:
        if single:
            _row_edge2(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap,
                       1)  # fmt: skip
        else:
            _edge2(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap, live)
    elif vectors == 3:
        if single:
            _row_edge3(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap,
                       1)  # fmt: skip
        else:
            _edge3(a, a_rows, a_cols, b, ldb, c, ldc, k, accumulate, lanes, first, run, gap, live)
