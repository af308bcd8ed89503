"""NumPy's own BLAS matrix product, callable from compiled loops.

A conv layer's slice of the batch is a loop of chunks: copy the windows, one matrix product,
the epilogue. As one compiled loop (:func:`cnnlab.engine.kernels.conv_forward_images`) it
copies each window row with LLVM's ``memcpy`` (:func:`cnnlab.engine.shared.copy`; the im2col
of the book's CNN's four convs, 16 images on one core: 0.29 ms, against 0.41 ms for NumPy's
strided copy and 1.0-2.2 ms for plain numba copy loops, which LLVM did not vectorise) and
calls the same OpenBLAS routine as ``np.matmul``, as fast, through a function pointer; a slice
runs without the GIL from start to end.

:func:`gemm` finds ``cblas_sgemm`` / ``cblas_dgemm`` in the BLAS library NumPy loaded, as
threadpoolctl reports it, under the names OpenBLAS builds give them; None where there is no
such library (NumPy on MKL or Accelerate, say), and the ops keep to ``np.matmul``. The
functions are ctypes objects: a compiled loop takes them as arguments, so numba's cache
holds no address.

BLAS, row-major and no transposes:
``gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`` is
``c = alpha * a @ b + beta * c`` for ``a: (m, k)``, ``b: (k, n)``, ``c: (m, n)``, given as
pointers to their first elements, with ``ld*`` their row lengths.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enum values

# OpenBLAS's names: NumPy >= 2 wheels (scipy-openblas64), NumPy 1.x wheels (openblas64_), a
# scipy-openblas32 build, a plain build. A trailing "64_" marks 64-bit integer arguments.
_NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_", "scipy_cblas_{}gemm", "cblas_{}gemm")


@functools.cache
def _numpy_blas() -> ctypes.CDLL | None:
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        # NumPy's copy, in numpy.libs/ or numpy/.dylibs/; another package's (SciPy's) would
        # be a second thread pool, which cnnlab does not hold to one thread.
        if lib.get("internal_api") == "openblas" and "numpy" in lib.get("filepath", ""):
            return ctypes.CDLL(lib["filepath"])
    return None


@functools.cache
def gemm(dtype: np.dtype) -> ctypes._CFuncPtr | None:
    """NumPy's BLAS ``cblas_?gemm`` for ``float32`` / ``float64``, or None."""
    dtype = np.dtype(dtype)
    prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(dtype)
    lib = _numpy_blas()
    if prefix is None or lib is None:
        return None
    scalar = ctypes.c_float if prefix == "s" else ctypes.c_double
    pointer = ctypes.c_void_p
    for name in _NAMES:
        function = getattr(lib, name.format(prefix), None)
        if function is not None:
            size = ctypes.c_int64 if name.endswith("64_") else ctypes.c_int
            enum = ctypes.c_int
            function.argtypes = [enum, enum, enum, size, size, size, scalar]
            function.argtypes += [pointer, size, pointer, size, scalar, pointer, size]
            function.restype = None
            return function
    return None


@functools.cache
def sgemm_address() -> tuple[int, int] | None:
    """``(address, wide)`` of NumPy's ``cblas_sgemm``, ``wide`` 1 where its sizes are 64-bit
    integers: what a compiled part, which holds no ctypes object, calls (:func:`call_gemm`);
    or None."""
    function = gemm(np.float32)
    if function is None:
        return None
    wide = int(function.argtypes[3] is ctypes.c_int64)
    return ctypes.cast(function, ctypes.c_void_p).value, wide


def _sgemm_at(size: ir.IntType):
    """The intrinsic ``sgemm_at(address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b,
    ldb, beta, c, ldc)``: ``cblas_sgemm`` called at ``address``, its sizes ``size`` wide."""
    enum, scalar, byte = ir.IntType(32), ir.FloatType(), ir.IntType(8).as_pointer()
    kinds = [enum] * 3 + [size] * 3 + [scalar, byte, size, byte, size, scalar, byte, size]
    function_type = ir.FunctionType(ir.VoidType(), kinds)

    @intrinsic
    def sgemm_at(typingctx, address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                 beta, c, ldc):  # fmt: skip
        def codegen(context, builder, signature, args):
            function = builder.inttoptr(args[0], function_type.as_pointer())
            values = []
            for value, kind in zip(args[1:], kinds, strict=True):
                if kind is scalar:
                    values.append(builder.fptrunc(value, scalar))
                elif kind is byte:
                    values.append(builder.inttoptr(value, byte))
                elif kind.width < 64:
                    values.append(builder.trunc(value, kind))
                else:
                    values.append(value)
            builder.call(function, values)
            return context.get_dummy_value()

        arguments = [types.int64] * 7 + [types.float64] + [types.int64] * 4
        arguments += [types.float64, types.int64, types.int64]
        return types.void(*arguments), codegen

    return sgemm_at


_sgemm_at_64, _sgemm_at_32 = _sgemm_at(ir.IntType(64)), _sgemm_at(ir.IntType(32))


def call_gemm(gemm, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``gemm(order, ...)`` from compiled code, for ``gemm`` the ctypes function of
    :func:`gemm`, or the ``(address, wide)`` of :func:`sgemm_address`."""
    gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@overload(call_gemm)
def _call_gemm(gemm, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    if isinstance(gemm, types.BaseTuple):

        def by_address(gemm, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                       ldc):  # fmt: skip
            if gemm[1]:
                _sgemm_at_64(gemm[0], order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                             beta, c, ldc)  # fmt: skip
            else:
                _sgemm_at_32(gemm[0], order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb,
                             beta, c, ldc)  # fmt: skip

        return by_address

    def by_ctypes(gemm, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    return by_ctypes
