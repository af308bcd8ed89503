"""The one place that checks the arrays entering ``fit``, ``evaluate`` and ``predict``: numbers
(no strings, no Python objects such as None), and finite (no NaN, no inf), each refusal naming
what was expected, what came, and where.
"""

from __future__ import annotations

import numpy as np

from cnnlab import backend
from cnnlab.engine import kernels


def numbers(value, what: str) -> np.ndarray:
    """``value`` as an array of numbers (booleans, integers or floats)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists, for one
        raise ValueError(
            f"{what} must be an array of numbers, got {type(value).__name__}: {err}"
        ) from None
    if array.dtype.kind not in "biuf":
        kinds = {
            "U": "strings",
            "S": "bytes",
            "O": "Python objects (None, say)",
            "c": "complex numbers",
        }
        found = kinds.get(array.dtype.kind, f"dtype {array.dtype}")
        raise ValueError(
            f"{what} must hold numbers (ints or floats), got {found} (dtype {array.dtype})"
        )
    return array


def finite(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` itself, if every value is finite; else a ValueError that names the first NaN
    or inf and its index."""
    if array.dtype.kind != "f" or _surely_finite(array):
        return array
    bad = ~np.isfinite(array)
    if not bad.any():
        return array
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    count = int(bad.sum())
    many = f"{count} of its values are" if count > 1 else "it is the only value that is"
    raise ValueError(
        f"{what} must be finite, got {array[where]} at index {where} ({many} NaN or inf): fix "
        "or drop those examples"
    )


def _surely_finite(array: np.ndarray) -> bool:
    """True if one fast pass shows every value of a float ``array`` finite; False if a value
    is NaN or inf, or if the pass cannot say, and the values must be looked at one by one.

    On the fast engine, for contiguous float32 and float64, the pass adds up ``0 * v``, NaN
    exactly where a value is not finite (:func:`cnnlab.engine.kernels.zeros_if_finite`,
    compiled, on this thread). Else it is the sum of squares, BLAS's dot product of the
    contiguous values with themselves (a NaN or an inf makes it NaN or inf: squares never
    cancel; values beyond the square root of the dtype's largest overflow it), or the plain
    sum for an array that is not contiguous, which is not copied."""
    contiguous = array.flags.c_contiguous
    if contiguous and array.dtype in (np.float32, np.float64) and backend.fuses():
        return bool(kernels.zeros_if_finite(array.reshape(-1)) == 0)
    with np.errstate(over="ignore", invalid="ignore"):
        if contiguous:
            flat = array.reshape(-1)
            total = np.dot(flat, flat)
        else:
            total = array.sum()
    return bool(np.isfinite(total))
