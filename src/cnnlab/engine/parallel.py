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

The slices go to cnnlab's own threads (:class:`_Worker`), which wait for the next slice by
spinning for a few milliseconds before they sleep, as OpenMP's threads do: waking a sleeping
thread took 30-80 us here, and an op of a training step comes a fraction of a millisecond
after the last (an empty split over two threads: 78 us with a ``ThreadPoolExecutor``, 45-60 us
this way, most of it the GIL passing between the threads; the CNN's training step at batch 32:
13.0 -> 12.5 ms).

An op whose slices must wait for each other part way, as batch norm's for the batch's sums
after a convolution, runs them by :func:`over_batch_meeting`: all at once, each on its own
thread, meeting in compiled code (:func:`cnnlab.engine.shared.meet`) instead of handing over
to the threads again.

A dense layer's products split over the threads, and a convolution with its batch norm in
training, go to them without Python at all, by :func:`over_parts`: each thread's part
(:func:`cnnlab.engine.parts.run_part`: what to run, the addresses and sizes of its arrays) is
posted to it where it waits in compiled code, and it runs the part there and marks it done,
never taking the GIL. A slice that runs Python must first take the GIL from the calling
thread, which is running its own slice's Python then, and sleep on it until woken (45-150 us
on a 2-core VM, :func:`recorded` times it); a posted part starts within a few microseconds.

Threads: :func:`set_num_threads`, or the environment variable ``CNNLAB_NUM_THREADS``; by
default, as many as the cores this process may run on.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numba
import numpy as np

from cnnlab import checks
from cnnlab.engine import subnormals
from cnnlab.engine.parts import PART_LENGTH, run_part
from cnnlab.engine.shared import leave, load_acquire, store_release

T = TypeVar("T")

# .inside: running a slice; .held: BLAS is held to one thread; .whole: in blas_threads()
_state = threading.local()
_workers: list[_Worker] = []
_using_workers = threading.Lock()  # one caller at a time hands slices to the workers
_num_threads: int | None = None
_blas: list | None = None  # (get, set) of each BLAS library's thread count
_hold = threading.Lock()  # over the holders of one_blas_thread, on any thread
_holders, _counts = 0, []  # how many hold BLAS to one thread; its counts before

# How long a thread spins for the next slice, or for a slice to finish, before it sleeps:
# about 3 ms of rounds here. Waking a sleeping thread took 30-80 us on the 2-core machine, as
# long as the smaller ops themselves; an op of a training step follows the last within that.
_SPINS = 10_000_000
# And once a slice is handed over, or found finished, it spins this long more before it takes
# the GIL back: by then the other thread has usually let go of it, so that taking it does not
# put this one to sleep until woken, 30 us later. Measured on the book's CNN at batch 32: the
# worker started its slice of the conv chain 27 us after the hand-over instead of 45, and
# predict took 2.50 ms instead of 2.64 (medians of 10 runs, alternating).
_LINGER_SECONDS = 10e-6


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
    global _num_threads
    n = checks.positive_int("n", n)
    with _using_workers:
        while _workers:
            _workers.pop().stop()
        _num_threads = n


def batch_slices(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``min(n, parts)`` runs ``(start, stop)`` whose lengths differ by
    at most one, in order."""
    parts = max(1, min(n, parts))
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class one_blas_thread:  # noqa: N801 (a context manager, named as the functions around it)
    """Hold NumPy's BLAS to one thread inside the block, while cnnlab's threads split each
    op's batch; nothing changes with one thread. Re-entrant: an inner block does nothing.
    BLAS's thread count is the process's: the first block entered (on any thread) keeps the
    counts and sets 1, the last one left gives them back. A class, not a generator: a model
    enters it at every step, where each line of Python counts (see :func:`_blas_controls`)."""

    __slots__ = ("_holding",)

    def __enter__(self) -> None:
        global _holders, _counts
        self._holding = False
        if num_threads() == 1 or getattr(_state, "held", False):
            return
        with _hold:
            if _holders == 0:
                controls = _blas_controls()
                _counts = [get() for get, _ in controls]
                for _, set_threads in controls:
                    set_threads(1)
            _holders += 1
        _state.held = self._holding = True

    def __exit__(self, *exc) -> None:
        global _holders
        if not self._holding:
            return
        _state.held = False
        with _hold:
            _holders -= 1
            if _holders == 0:
                for (_, set_threads), count in zip(_blas_controls(), _counts, strict=True):
                    set_threads(count)


def _blas_controls() -> list[tuple[Callable[[], int], Callable[[int], object]]]:
    """``(get, set)`` of the thread count of each BLAS library loaded, found once: a model
    holds them to one thread at every step. threadpoolctl's ``limit`` looks the libraries up
    and reads their versions each time (20-40 us after a step), and its controllers' methods
    run tens of lines of Python a call (20-30 us of a 400 us ``predict`` of the book's MLP
    at batch 32, 2026-12-06, Intel Xeon): for OpenBLAS on threads of its own (NumPy's
    wheels), the library's C functions themselves, under the names threadpoolctl finds,
    else the controllers' methods."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        found = ThreadpoolController().select(user_api="blas").lib_controllers
        _blas = [_thread_count_functions(controller) for controller in found]
    return _blas


def _thread_count_functions(controller) -> tuple[Callable[[], int], Callable[[int], object]]:
    """``(get, set)`` of one threadpoolctl controller: OpenBLAS's own where it runs on its
    own threads (with OpenMP the count is per thread, and threadpoolctl calls OpenMP's)."""
    symbol = getattr(controller, "_get_symbol", None)  # threadpoolctl >= 3.2
    if controller.internal_api == "openblas" and symbol is not None:
        if getattr(controller, "threading_layer", None) != "openmp":
            get, set_threads = (symbol(f"openblas_{way}_num_threads") for way in ("get", "set"))
            if get is not None and set_threads is not None:
                return get, set_threads
    return controller.get_num_threads, controller.set_num_threads


class _ThreadFlag:
    """A context manager that sets this thread's flag :attr:`name` inside the block and puts
    back what it was after: re-entrant."""

    __slots__ = ("_before",)
    name = ""

    def __enter__(self) -> None:
        self._before = getattr(_state, self.name, False)
        setattr(_state, self.name, True)

    def __exit__(self, *exc) -> None:
        setattr(_state, self.name, self._before)


class blas_threads(_ThreadFlag):  # noqa: N801 (a context manager, as one_blas_thread)
    """Inside the block every op runs whole on the calling thread, and NumPy's BLAS spreads
    each matrix product over the cores with threads of its own: the other way to use the
    cores, faster for a model of few, large matrix products (the book's MLP) than cnnlab's
    slices, which pay for a hand-over to the threads at every op. Re-entrant."""

    __slots__ = ()
    name = "whole"


def whole() -> bool:
    """Whether this thread is inside :func:`blas_threads` (every op whole)."""
    return getattr(_state, "whole", False)


class blas_products(_ThreadFlag):  # noqa: N801 (a context manager, as one_blas_thread)
    """Inside the block, dense layers in a row (:class:`cnnlab.fusion.DenseChain`) multiply
    by NumPy's BLAS, called at its address from the threads' compiled parts, instead of by
    cnnlab's tiles: faster on some machines (the book's MLP on an Intel Xeon without
    AVX-512), slower on others, which the tuner measures (``"cnnlab-blas"``,
    :func:`cnnlab.engine.tuning.threads_mode`). Re-entrant."""

    __slots__ = ()
    name = "by_blas"


def by_blas() -> bool:
    """Whether this thread is inside :func:`blas_products`."""
    return getattr(_state, "by_blas", False)


def inside_slice() -> bool:
    """Whether this thread is running a slice of an op (where nothing may wait for the
    threads)."""
    return getattr(_state, "inside", False)


def workers_busy() -> bool:
    """Whether another caller's op holds the threads now (an op would run on one)."""
    return _using_workers.locked()


def _threads_for(n: int, grain: int) -> int:
    """The slices :func:`over_batch` cuts ``range(n)`` into, at least ``grain`` long each."""
    return min(num_threads(), n // max(1, grain))


def over_batch(run: Callable[[int, int], T], n: int, grain: int = 1) -> list[T]:
    """``[run(start, stop) for each slice of range(n)]``, the slices on separate threads.

    A slice is at least ``grain`` long (work too small to pay for a thread stays whole). The
    calling thread runs the last slice, with BLAS held to one thread (:func:`one_blas_thread`).
    Called from inside a slice, inside :func:`blas_threads`, or with one thread, it runs
    ``run(0, n)`` alone.
    """
    threads = _threads_for(n, grain)
    if threads <= 1 or getattr(_state, "inside", False) or whole():
        return [run(0, n)]
    if not _using_workers.acquire(blocking=False):  # another thread of the caller's has them
        return [run(0, n)]
    try:
        _start_workers()
        *others, last = batch_slices(n, threads)
        record, began = _record, time.perf_counter()
        if record is not None:
            times: dict[int, tuple[float, float]] = {}
            run = functools.partial(_timed, run, times)
        with one_blas_thread():
            for worker, (start, stop) in zip(_workers, others, strict=False):
                # In a copy of the caller's context, so that NumPy's np.errstate (a context
                # variable) holds in the slice too.
                context = contextvars.copy_context()
                worker.give(functools.partial(context.run, _inside, run, start, stop))
            try:
                mine = _inside(run, *last)
            finally:  # no slice outlives the call, even when one fails
                results = [worker.wait() for worker in _workers[: len(others)]]
    finally:
        _using_workers.release()
    if record is not None:
        record.append((began, time.perf_counter(), [times[a] for a, _ in (*others, last)]))
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results] + [mine]


_record: list | None = None  # where :func:`recorded` keeps the splits' times


@contextmanager
def recorded() -> Iterator[list[tuple[float, float, list[tuple[float, float]]]]]:
    """For profiling: within it, each split of :func:`over_batch` (and so of
    :func:`over_batch_meeting`) over the threads appends ``(began, ended, slices)`` to the
    list yielded, ``slices`` holding each slice's ``(start, end)`` in slice order (the last
    one the calling thread's), all ``time.perf_counter()`` seconds: how long the slices
    wait to start, and how long the split outlasts its slowest one."""
    global _record
    outer, _record = _record, []
    try:
        yield _record
    finally:
        _record = outer


def _timed(run: Callable[[int, int], T], times: dict, start: int, stop: int) -> T:
    began = time.perf_counter()
    try:
        return run(start, stop)
    finally:
        times[start] = (began, time.perf_counter())


def _start_workers() -> None:
    """Start the threads that are missing, holding ``_using_workers``."""
    if not _workers:
        # Compiled (or loaded from numba's cache) here, before any worker runs them: two
        # threads compiling at once could deadlock on numba's compiler lock and the GIL.
        posted, empty = np.zeros(2, np.int64), np.zeros(PART_LENGTH, np.int64)
        _post(posted)
        _serve(np.ones(1, np.int64), 0, posted, empty, 1, np.zeros(1, np.int64), 0)
        _wait_posted(posted)
        with subnormals.flushed():  # (compiles what a worker's first step calls)
            pass
    while len(_workers) < num_threads() - 1:
        _workers.append(_Worker(f"cnnlab-{len(_workers) + 1}"))


def over_batch_meeting(
    run: Callable[[int, int, int, np.ndarray], T], n: int, meetings: int, grain: int = 1
) -> list[T]:
    """:func:`over_batch` for slices that meet: all of them run at the same time, each on a
    thread of its own, and ``run(start, stop, index, flags)`` is told its place among them and
    given ``flags``, ``meetings`` rows of one int64 zero per slice, so that compiled code in a
    slice can wait for every slice to reach a point (:func:`cnnlab.engine.shared.meet` on a
    row of them, each row once); one slice, ``(0, n)``, where the op runs whole. A slice that
    raises is marked failed in every row, so that the others stop waiting for it."""
    slices = batch_slices(n, max(1, _threads_for(n, grain)))
    place = {piece: index for index, piece in enumerate(slices)}
    shared = np.zeros((meetings, len(slices)), np.int64)

    def meeting(start: int, stop: int) -> T:
        if (start, stop) in place:
            index, flags = place[start, stop], shared
        else:  # the op runs whole after all
            index, flags = 0, np.zeros((meetings, 1), np.int64)
        try:
            return run(start, stop, index, flags)
        except BaseException:
            for row in flags:
                leave(row, index)
            raise

    return over_batch(meeting, n, grain)


def over_parts(parts: list[tuple[int, ...]]) -> None:
    """Each part of ``parts``, each on a thread of its own, in compiled code from start to
    end: a part is a row of :func:`cnnlab.engine.parts.run_part` (its kind, then the
    addresses and sizes of float32 arrays). The calling thread runs the last part, and any
    for which there is no thread; called from inside a slice, inside :func:`blas_threads`,
    or while another thread's op holds the threads, it runs them all, one after the other.
    The caller keeps the arrays alive and writes nothing they share until it returns."""
    alone = len(parts) == 1 or getattr(_state, "inside", False) or whole()
    if alone or not _using_workers.acquire(blocking=False):
        _run_here(parts)
        return
    try:
        _start_workers()
        _post_and_run(parts)
    finally:
        _using_workers.release()


def over_meeting_parts(make: Callable[[int], list[tuple[int, ...]]]) -> None:
    """:func:`over_parts` for parts that meet in compiled code, and so must all run at once:
    ``make(threads)`` gives one part for each of ``threads`` threads, each on its own; one,
    on the calling thread, where the threads cannot be had (one thread, inside a slice or
    :func:`blas_threads`, or another thread's op holding them)."""
    alone = num_threads() == 1 or getattr(_state, "inside", False) or whole()
    if alone or not _using_workers.acquire(blocking=False):
        _run_here(make(1))
        return
    try:
        _start_workers()
        _post_and_run(make(len(_workers) + 1))
    finally:
        _using_workers.release()


def _run_here(parts: list[tuple[int, ...]]) -> None:
    for part in parts:
        run_part(np.array(part, np.int64))


def _post_and_run(parts: list[tuple[int, ...]]) -> None:
    """Post the first parts to the workers, one each, and run the rest here; holding
    ``_using_workers``."""
    posted = parts[: min(len(parts) - 1, len(_workers))]
    for worker, part in zip(_workers, posted, strict=False):
        worker.post(part)
    try:
        _run_here(parts[len(posted) :])
    finally:  # no part outlives the call
        for worker in _workers[: len(posted)]:
            worker.wait_posted()


def _inside(run: Callable[[int, int], T], start: int, stop: int) -> T:
    _state.inside = True
    try:
        return run(start, stop)
    finally:
        _state.inside = False


@numba.njit(nogil=True, cache=True)
def _wait_for_change(flag, old, spins, scratch, linger):
    """Spin, without the GIL, until ``flag[0] != old``, at most ``spins`` rounds; True if it
    changed. Each round adds one to ``scratch``, which for the compiler may be the same memory
    as ``flag``, so ``flag`` is read again every round. After a change, spin ``linger``
    rounds more before returning (and taking the GIL back)."""
    for _ in range(spins):
        if flag[0] != old:
            for _ in range(linger):  # reads flag every round: not folded into one addition
                scratch[0] += flag[0] & 1
            return True
        scratch[0] += 1
    return False


@numba.njit(nogil=True, cache=True)
def _run_posted(posted, part):
    """Run the part posted in ``part`` (:func:`cnnlab.engine.parts.run_part`), then mark it
    done: ``posted`` holds the count of parts posted and of parts done. numba's cache of this
    file holds the compiled parts it calls, and numba checks only this file's date: after a
    change to a module they come from (:mod:`cnnlab.engine.parts`, ``kernels``, ``winograd``,
    ``tiles``), clear the cache (``find src -name '*.nb[ic]' -delete``) or the workers may run
    the old parts."""
    target = load_acquire(posted, 0)
    run_part(part)
    store_release(posted, 1, target)


@numba.njit(nogil=True, cache=True)
def _serve(given, seen, posted, part, spins, scratch, linger):
    """A worker's wait, without the GIL: run each part posted to it (:func:`_run_posted`) as
    it comes, until a slice is given (``given[0] != seen``: True, after lingering ``linger``
    rounds, as :func:`_wait_for_change`) or ``spins`` rounds pass with nothing to do
    (False)."""
    idle = 0
    while idle < spins:
        if load_acquire(posted, 0) != posted[1]:
            _run_posted(posted, part)
            idle = 0
        elif load_acquire(given, 0) != seen:
            for _ in range(linger):
                scratch[0] += given[0] & 1
            return True
        else:
            idle += 1
    return False


@numba.njit(nogil=True, cache=True)
def _post(posted):
    """Count one more part posted, after its arguments were written (release ordering)."""
    store_release(posted, 0, posted[0] + 1)


@numba.njit(nogil=True, cache=True)
def _wait_posted(posted):
    """Spin, without the GIL, until every part posted is done."""
    target = posted[0]
    while load_acquire(posted, 1) != target:
        pass


@functools.cache
def _linger_rounds() -> int:
    """The rounds of :func:`_wait_for_change`'s lingering that take ``_LINGER_SECONDS`` on
    this machine, timed once (the fastest of five runs of ten million)."""
    flag, scratch, rounds = np.ones(1, np.int64), np.zeros(1, np.int64), 10_000_000
    times = []
    for _ in range(5):
        start = time.perf_counter()
        _wait_for_change(flag, 0, 1, scratch, rounds)
        times.append(time.perf_counter() - start)
    return max(1, round(rounds * _LINGER_SECONDS / min(times)))


class _Worker:
    """One of cnnlab's threads: runs the slices handed to it by :meth:`give`, one at a time.

    ``given`` and ``done`` count slices handed over and finished. Each side waits for the
    other's count to move by spinning for a while (:func:`_wait_for_change`, :func:`_serve`),
    then by sleeping on a condition, whose lock every change of a count takes. While it
    waits for a slice it runs the parts of products posted to it (:meth:`post`), in compiled
    code; ``posted`` counts those posted and those done.
    """

    def __init__(self, name: str):
        self.given, self.done = np.zeros(1, np.int64), np.zeros(1, np.int64)
        self.posted, self.part = np.zeros(2, np.int64), np.zeros(PART_LENGTH, np.int64)
        self._scratch = np.zeros((2, 1), np.int64)  # one row for each side's spinning
        self.linger = _linger_rounds()
        self._changed = threading.Condition()
        self._job: Callable[[], object] | None = None
        self._result: tuple[bool, object] = (True, None)
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def give(self, job: Callable[[], object] | None) -> None:
        """Run ``job()`` on this thread; None stops it."""
        self._job = job
        with self._changed:
            self.given[0] += 1
            self._changed.notify_all()

    def wait(self) -> tuple[bool, object]:
        """``(True, result)`` or ``(False, error)`` of the slice given last, once it is done."""
        target = self.given[0]
        _wait_for_change(self.done, target - 1, _SPINS, self._scratch[0], self.linger)
        with self._changed:
            while self.done[0] != target:
                self._changed.wait()
        return self._result

    def post(self, part: tuple[int, ...]) -> None:
        """Run ``part`` on this thread, in compiled code (:func:`over_parts`); at most one
        part is posted at a time (:meth:`wait_posted` before the next)."""
        self.part[: len(part)] = part
        _post(self.posted)
        with self._changed:  # wakes the thread if it sleeps
            self._changed.notify_all()

    def wait_posted(self) -> None:
        """Once the part posted last is done."""
        _wait_posted(self.posted)

    def stop(self) -> None:
        self.give(None)
        self.thread.join()

    def _loop(self) -> None:
        subnormals.flush_here()  # this thread runs cnnlab's ops alone
        seen = 0
        while True:
            if not _serve(self.given, seen, self.posted, self.part, _SPINS, self._scratch[1],
                          self.linger):  # fmt: skip
                with self._changed:
                    while self.given[0] == seen and self.posted[0] == self.posted[1]:
                        self._changed.wait()
                continue  # to run the part posted, or to see the slice given
            seen = int(self.given[0])
            job = self._job
            if job is None:
                return
            try:
                self._result = (True, job())
            except BaseException as err:  # handed to the caller, which raises it
                self._result = (False, err)
            with self._changed:
                self.done[0] = seen
                self._changed.notify_all()


def _forget_workers() -> None:
    """In a forked child the workers' threads are gone: start new ones when needed (and the
    locks are new, in case another thread held one at the fork)."""
    global _using_workers, _hold
    _workers.clear()
    _using_workers, _hold = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)
