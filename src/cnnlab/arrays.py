"""The one place that checks the arrays entering ``fit``, ``evaluate`` and ``predict``: numbers
(no strings, no Python objects such as None), and finite (no NaN, no inf), each refusal naming
what was expected, what came, and where.
"""

from __future__ import annotations

import numpy as np


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
    if array.dtype.kind != "f":
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        total = array.sum()
    if np.isfinite(total):  # one pass; a sum that overflowed is looked at value by value
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
