"""Column sums, the reduction behind every bias gradient.

Shapes: ``x: (M, C)`` -> ``(C,)``, ``s[c] = sum_i x[i, c]``.
"""

from __future__ import annotations

import numpy as np


def column_sums(x: np.ndarray) -> np.ndarray:
    """``sum_i x[i, c]`` for ``x: (M, C)``, as the matrix-vector product ``ones @ x``.

    The same sum as ``x.sum(axis=0)``, which NumPy takes one short row at a time: for the
    ``(M, C)`` views of NHWC feature maps (``C`` = 32 or 64) the product, run by BLAS, is about
    5x faster, and its blocked accumulation is more accurate in float32.
    """
    return np.ones(len(x), dtype=x.dtype) @ x
