"""Scratch arrays that the fast ops keep from one call to the next, one pool per thread.

A training step calls the same ops on the same shapes again and again; each keeps its buffers
(im2col chunks, a padded input, Winograd's tiles) here instead of allocating them every time.
Each thread has a pool of its own, so the cores' slices of an op never share a buffer, and two
callers on two threads never see each other's. A buffer is scratch for one call: an op may
not expect to find in it what it wrote last time, with one exception, :func:`kept`, which
keeps a value computed from an array for as long as that array is unchanged. A pool that grows
past :data:`LIMIT_BYTES` (many shapes) is emptied and refilled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import numpy as np

LIMIT_BYTES = 1 << 28

_local = threading.local()


def _pool() -> dict:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def _nbytes(value) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else sum(map(_nbytes, value))


def _room(pool: dict, nbytes: int) -> None:
    used = sum(map(_nbytes, pool.values()))
    if used + nbytes > LIMIT_BYTES:
        pool.clear()


def buffer(name: Hashable, shape: tuple, dtype, zeros: bool = False) -> np.ndarray:
    """This thread's array for ``name`` of this shape and dtype, made the first time (zeroed
    with ``zeros``, which then holds for as long as callers write only what they wrote that
    first time: ``name`` must say which part that is)."""
    pool = _pool()
    key = (name, tuple(shape), np.dtype(dtype))
    buf = pool.get(key)
    if buf is None:
        _room(pool, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        buf = pool[key] = np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)
    return buf


def kept(name: Hashable, source: np.ndarray, make: Callable[[np.ndarray], np.ndarray]):
    """``make(source)``, kept in this thread's pool while ``source`` holds the same values as
    when it was made (checked at every call, against a copy: a weight updated in place gives a
    new value)."""
    pool = _pool()
    key = (name, id(source))
    entry = pool.get(key)
    same = entry is not None and entry[0].dtype == source.dtype and entry[0].shape == source.shape
    if same and np.array_equal(entry[0], source):
        return entry[1]
    value = make(source)
    _room(pool, source.nbytes + value.nbytes)
    pool[key] = (source.copy(), value)
    return value
