"""Reproducible randomness: one global seed gives every layer its own generator."""

from __future__ import annotations

import numpy as np

from cnnlab import checks

_global = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed cnnlab: models built (and data shuffled by ``fit``) after this call are repeatable."""
    global _global
    _global = np.random.default_rng(checks.int_at_least("seed", seed, 0))


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A generator from ``seed``, or, when ``seed`` is None, drawn from the global seed."""
    if seed is None:
        seed = int(_global.integers(2**63))
    return np.random.default_rng(seed)
