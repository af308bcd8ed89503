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
