"""Intra-op parallelism: an op's batch split into one slice per core.

OpenBLAS spreads each matrix product over the cores, but the copies and loops around it run on
one core, and a product of the matrices of one conv layer is too small to keep two cores busy
(the CNN trains about as fast with OpenBLAS on one thread as on two). So the conv ops give
each core a slice of the batch and run the whole op on it, im2col, matrix products and col2im,
with BLAS held to one thread; dense ops give each core a block of units, batch norm and the
activations a block of rows. Each slice writes its own part of the output; sums over the
batch (weight gradients, statistics) are added up from the slices' parts, in slice order, so a
result is the same from run to run for the same number of threads.

BLAS must stay on one thread for the whole step, not just inside each op: switching OpenBLAS
between one and two threads around every op, with its threads waking and spinning in between,
cost more than the slices gained (the CNN trained at 1,560 images/s that way at batch 32,
against 2,510 with BLAS held to one thread throughout). So a model holds it for its whole call
(:func:`one_blas_thread`), and an op called on its own holds it for itself.

Threads: :func:`set_num_threads`, or the environment variable ``CNNLAB_NUM_THREADS``; by
default, as many as the cores this process may run on.
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_state = threading.local()  # .inside: running a slice; .held: BLAS is held to one thread
_pool: ThreadPoolExecutor | None = None
_num_threads: int | None = None
_blas = None  # threadpoolctl's controller of the BLAS libraries loaded with NumPy


def _default_num_threads() -> int:
    value = os.environ.get("CNNLAB_NUM_THREADS")
    if value is None:
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"CNNLAB_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


def num_threads() -> int:
    """How many threads an op's batch is split over."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


def set_num_threads(n: int) -> None:
    """Split each op's batch over ``n`` threads from now on (1: no threads of cnnlab's own)."""
    global _num_threads, _pool
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    _num_threads = n


def batch_slices(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``min(n, parts)`` runs ``(start, stop)`` whose lengths differ by
    at most one, in order."""
    parts = max(1, min(n, parts))
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Hold NumPy's BLAS to one thread inside the block, while cnnlab's threads split each
    op's batch; nothing changes with one thread. Re-entrant: an inner block does nothing."""
    global _blas
    if num_threads() == 1 or getattr(_state, "held", False):
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        _state.held = True
        try:
            yield
        finally:
            _state.held = False


def over_batch(run: Callable[[int, int], T], n: int, grain: int = 1) -> list[T]:
    """``[run(start, stop) for each slice of range(n)]``, the slices on separate threads.

    A slice is at least ``grain`` long (work too small to pay for a thread stays whole). The
    calling thread runs the last slice, with BLAS held to one thread (:func:`one_blas_thread`).
    Called from inside a slice, or with one thread, it runs ``run(0, n)`` alone.
    """
    threads = min(num_threads(), n // max(1, grain))
    if threads <= 1 or getattr(_state, "inside", False):
        return [run(0, n)]
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(num_threads() - 1, thread_name_prefix="cnnlab")
    *others, last = batch_slices(n, threads)
    with one_blas_thread():
        # Each slice runs in a copy of the caller's context, so NumPy's np.errstate (a
        # context variable) holds in the pool's threads too.
        jobs = [
            _pool.submit(contextvars.copy_context().run, _inside, run, start, stop)
            for start, stop in others
        ]
        try:
            mine = _inside(run, *last)
        finally:
            wait(jobs)  # no slice outlives the call, even when one fails
    return [job.result() for job in jobs] + [mine]


def _inside(run: Callable[[int, int], T], start: int, stop: int) -> T:
    _state.inside = True
    try:
        return run(start, stop)
    finally:
        _state.inside = False
