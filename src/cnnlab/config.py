"""Global settings: the default float type of new layers (Keras's ``floatx``)."""

from __future__ import annotations

import numpy as np

_FLOATX = "float32"
FLOAT_TYPES = ("float32", "float64")


def floatx() -> str:
    """The dtype new layers use for weights and computation: "float32" unless changed."""
    return _FLOATX


def set_floatx(value: str) -> None:
    """Set the default float type, "float32" or "float64" (gradient checks use float64)."""
    global _FLOATX
    if value not in FLOAT_TYPES:
        raise ValueError(f"`floatx` must be one of {FLOAT_TYPES}, got {value!r}")
    _FLOATX = value


def resolve_dtype(dtype: str | None) -> np.dtype:
    """``dtype`` if given, else :func:`floatx`, checked to be a float type."""
    value = floatx() if dtype is None else str(np.dtype(dtype))
    if value not in FLOAT_TYPES:
        raise ValueError(f"`dtype` must be one of {FLOAT_TYPES}, got {dtype!r}")
    return np.dtype(value)
