"""Run a kernel on slices of the batch axis, one slice per CPU core.

NumPy runs element-wise work (and copies) on one core only. The fast ops split the batch
``N`` into one contiguous slice per core and run the *same* plain NumPy code on each slice in a
thread; NumPy releases the GIL inside its loops, so the slices really run at the same time.
While they run, the BLAS library is held to one thread, so that every matrix product in a slice
runs on its own core instead of fighting the other slices for both.

The number of threads is ``$CNNLAB_NUM_THREADS``, else ``$OMP_NUM_THREADS``, else the number of
cores this process may use.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# Below this many elements per call a thread costs more than it saves.
MIN_PARALLEL_SIZE = 1 << 15

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_blas = None
_inside = threading.local()  # set in the pool's threads: a nested call runs inline


def num_threads() -> int:
    """How many slices the fast ops cut the batch into."""
    for var in ("CNNLAB_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def batch_slices(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices covering ``range(n)``, sizes differing by at most one."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return [slice(bounds[k], bounds[k + 1]) for k in range(parts)]


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _blas
    with _lock:
        if _pool is None or _pool._max_workers != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cnnlab")
        if _blas is None:
            try:  # installed with scikit-learn
                from threadpoolctl import ThreadpoolController

                _blas = ThreadpoolController()
            except ImportError:
                _blas = False
    return _pool


def _one_blas_thread():
    if not _blas:
        return contextlib.nullcontext()
    return _blas.limit(limits=1, user_api="blas")


def _run_inside(kernel: Callable[[slice], object], s: slice):
    _inside.active = True
    try:
        return kernel(s)
    finally:
        _inside.active = False


def map_batch(kernel: Callable[[slice], object], n: int, size: int | None = None) -> list:
    """``[kernel(s) for s in slices of range(n)]``, the slices run in parallel threads.

    ``size`` (elements touched) below :data:`MIN_PARALLEL_SIZE`, a batch of one, or one
    thread: the kernel runs once, here, on the whole batch.
    """
    threads = num_threads()
    small = size is not None and size < MIN_PARALLEL_SIZE
    if threads == 1 or n < 2 or small or getattr(_inside, "active", False):
        return [kernel(slice(0, n))]
    pool = _executor(threads)
    with _one_blas_thread():
        futures = [pool.submit(_run_inside, kernel, s) for s in batch_slices(n, threads)]
        return [f.result() for f in futures]
