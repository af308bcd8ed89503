"""Weight initializers, Keras names and formulas.

``fan_in``/``fan_out`` of a kernel: for Dense ``(D, units)`` they are ``D`` and ``units``; for
Conv2D ``(kh, kw, C, F)`` they are ``kh*kw*C`` and ``kh*kw*F``.

- ``glorot_uniform``: ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``.
- ``he_normal``: a normal of stddev ``sqrt(2 / fan_in)`` truncated at two standard deviations
  (sampled with a stddev raised by 1/0.8796 so the truncated one is right, as Keras does).
- ``zeros``, ``ones``: constants.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Initializer = Callable[[tuple[int, ...], np.random.Generator, np.dtype], np.ndarray]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape``."""
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    fan_in, _ = fans(shape)
    stddev = np.sqrt(2.0 / fan_in) / 0.87962566103423978
    values = rng.normal(0.0, 1.0, size=shape)
    outside = np.abs(values) > 2
    while outside.any():  # resample until every value lies within two standard deviations
        values[outside] = rng.normal(0.0, 1.0, size=int(outside.sum()))
        outside = np.abs(values) > 2
    return (values * stddev).astype(dtype)


def zeros(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def ones(shape, rng: np.random.Generator, dtype) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


_BY_NAME: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "he_normal": he_normal,
    "zeros": zeros,
    "ones": ones,
}


def get(name: str) -> Initializer:
    """The initializer called ``name``."""
    if name not in _BY_NAME:
        raise ValueError(f"Unknown initializer {name!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[name]
