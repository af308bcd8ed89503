"""Reproducible randomness: one global seed gives every layer its own generator."""

from __future__ import annotations

import numpy as np

_global = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed cnnlab: models built (and data shuffled by ``fit``) after this call are repeatable."""
    global _global
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}")
    _global = np.random.default_rng(int(seed))


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A generator from ``seed``, or, when ``seed`` is None, drawn from the global seed."""
    if seed is None:
        seed = int(_global.integers(2**63))
    return np.random.default_rng(seed)
