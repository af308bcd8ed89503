"""Intra-op parallelism: slices of the batch on cnnlab's threads give the serial numbers."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from cnnlab import nn
from cnnlab.engine import activations, batchnorm, conv, dense, parallel, shared, subnormals
from cnnlab.engine.parts import DENSE_BACKWARD, PRODUCT


@pytest.fixture
def threads():
    """Set the number of threads for one test, and put it back after."""
    before = parallel.num_threads()
    yield parallel.set_num_threads
    parallel.set_num_threads(before)


@pytest.mark.parametrize("n,parts", [(10, 3), (2, 2), (3, 8), (1, 4), (128, 2)])
def test_batch_slices_cover_the_batch_in_order_and_evenly(n, parts):
    slices = parallel.batch_slices(n, parts)
    assert len(slices) == min(n, parts)
    assert slices[0][0] == 0 and slices[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    lengths = [stop - start for start, stop in slices]
    assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 1


def test_slices_run_on_separate_threads_and_come_back_in_order(threads):
    threads(3)
    together = threading.Barrier(3)  # passes only once three slices run at the same time

    def run(start, stop):
        together.wait(timeout=10)
        return start, stop, threading.current_thread().name

    names = parallel.over_batch(run, 7)
    assert [(a, b) for a, b, _ in names] == parallel.batch_slices(7, 3)
    assert len({name for _, _, name in names}) == 3


def test_splits_are_recorded_with_their_slices_times_only_when_asked(threads):
    threads(3)
    ran: dict[int, tuple[float, float]] = {}

    def run(start, stop):
        begin = time.perf_counter()
        time.sleep(0.002 * (start + 1))  # slices of different lengths
        ran[start] = (begin, time.perf_counter())
        return start

    parallel.over_batch(run, 3)  # not recorded
    with parallel.recorded() as record:
        parallel.over_batch(run, 3)
        inside = [ran[k] for k in range(3)]
        parallel.over_batch(run, 1)  # one slice: no split
    parallel.over_batch(run, 3)
    assert len(record) == 1
    began, ended, slices = record[0]
    assert len(slices) == 3
    for k, ((start, end), (low, high)) in enumerate(zip(slices, inside, strict=True)):
        assert began <= start <= low < high <= end <= ended
        assert end - start >= 0.002 * (k + 1)


def numpy_blas_threads() -> list[int]:
    """The thread counts of NumPy's own BLAS (SciPy may bring another, which cnnlab leaves
    be)."""
    return [
        lib["num_threads"]
        for lib in threadpool_info()
        if lib["user_api"] == "blas" and "numpy" in lib["filepath"]
    ]


def test_blas_is_held_to_one_thread_inside_and_given_back_after(threads):
    threads(2)

    before = numpy_blas_threads()
    inside = parallel.over_batch(lambda a, b: numpy_blas_threads(), 4)
    assert all(counts == [1] * len(before) for counts in inside)
    assert numpy_blas_threads() == before


def test_blas_held_by_two_threads_at_once_is_given_back_by_the_last_to_leave(threads):
    """BLAS's thread count is the process's: a model run on another thread while this one
    holds BLAS must neither see 1 as the count to give back nor give it back early."""
    threads(2)

    before = numpy_blas_threads()
    entered, inside, first_left = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def other() -> None:
        entered.wait()
        with parallel.one_blas_thread():  # enters while this thread holds, leaves after it
            inside.set()
            first_left.wait()
            seen.append(numpy_blas_threads())

    thread = threading.Thread(target=other)
    thread.start()
    with parallel.one_blas_thread():
        entered.set()
        inside.wait()
    first_left.set()
    thread.join()
    assert seen == [[1] * len(before)]  # still held after this thread left
    assert numpy_blas_threads() == before


def test_blas_thread_counts_go_through_openblas_own_functions_where_it_has_its_own_threads():
    class Controller:  # threadpoolctl's controller, as far as cnnlab reads it
        def __init__(self, internal_api, threading_layer, symbols):
            self.internal_api, self.threading_layer, self.symbols = (
                internal_api, threading_layer, symbols,
            )  # fmt: skip

        def _get_symbol(self, name):
            return self.symbols.get(name)

        def get_num_threads(self):
            return 2

        def set_num_threads(self, n):
            pass

    def get():
        return 3

    def set_threads(n):
        pass

    own = {"openblas_get_num_threads": get, "openblas_set_num_threads": set_threads}
    assert parallel._thread_count_functions(Controller("openblas", "pthreads", own)) == (
        get, set_threads,
    )  # fmt: skip
    for controller in (
        Controller("openblas", "openmp", own),  # a count per thread: threadpoolctl's OpenMP calls
        Controller("openblas", "pthreads", {}),  # names it cannot find
        Controller("mkl", "intel", own),
    ):
        found = parallel._thread_count_functions(controller)
        assert found == (controller.get_num_threads, controller.set_num_threads)


SUBNORMAL = np.float32(1e-38)  # below float32's smallest normal, 1.18e-38


def _half_of_a_subnormal() -> float:
    """What this thread computes for a subnormal float32 times 0.5: 5e-39, or 0 where
    subnormals are flushed."""
    return float(SUBNORMAL * np.float32(0.5))


@pytest.mark.skipif(not subnormals.X86, reason="MXCSR's FTZ and DAZ bits are x86's")
def test_subnormals_are_zeros_on_cnnlab_threads_and_inside_flushed_only(threads):
    threads(3)
    assert _half_of_a_subnormal() > 0  # this thread keeps them: the user's NumPy as it was
    on_workers = parallel.over_batch(lambda start, stop: _half_of_a_subnormal(), 3)
    assert on_workers[:2] == [0.0, 0.0]  # the workers' slices
    assert on_workers[2] > 0  # the calling thread's, outside flushed()
    with subnormals.flushed():
        assert _half_of_a_subnormal() == 0.0
        assert float(SUBNORMAL + np.float32(0)) == 0.0  # a subnormal operand read as 0
        with subnormals.flushed():  # nested: restores the outer block's setting
            pass
        assert _half_of_a_subnormal() == 0.0
    assert _half_of_a_subnormal() > 0


def test_a_failing_slice_raises_after_every_slice_has_finished(threads):
    threads(3)
    finished = []

    def run(start, stop):
        if start == 0:
            raise RuntimeError("slice 0 failed")
        finished.append(start)

    with pytest.raises(RuntimeError, match="slice 0 failed"):
        parallel.over_batch(run, 9)
    assert sorted(finished) == [3, 6]


@numba.njit(nogil=True)
def _put_meet_and_add(values, flags, index):
    """Slice ``index`` puts its value, meets the others, and adds up everyone's."""
    values[index] = index + 1.0
    if not shared.meet(flags[0], index):
        return -1.0
    return values[: flags.shape[1]].sum()


def test_meeting_slices_see_what_every_slice_wrote_before_the_meeting(threads):
    threads(3)
    values = np.zeros(3)

    def run(start, stop, index, flags):
        if index == 0:
            time.sleep(0.05)  # the others wait for it at the meeting
        return index, flags.shape, _put_meet_and_add(values, flags, index)

    results = parallel.over_batch_meeting(run, 7, meetings=2)
    assert results == [(0, (2, 3), 6.0), (1, (2, 3), 6.0), (2, (2, 3), 6.0)]
    # run whole (here: from inside a slice), an op meets itself alone
    inner = parallel.over_batch(
        lambda a, b: parallel.over_batch_meeting(
            lambda start, stop, index, flags: (start, stop, index, flags.shape), 5, meetings=1
        ),
        2,
    )
    assert inner == [[(0, 5, 0, (1, 1))]] * 2


def test_a_slice_that_fails_before_a_meeting_lets_the_others_go(threads):
    threads(2)
    values, met, raised = np.zeros(2), [], []

    def run(start, stop, index, flags):
        if index == 0:
            raise ValueError("slice 0 failed")
        met.append(_put_meet_and_add(values, flags, index))

    def call():
        try:
            parallel.over_batch_meeting(run, 4, meetings=1)
        except ValueError as err:
            raised.append(str(err))

    caller = threading.Thread(target=call)  # a hang fails the test instead of stopping it
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive() and raised == ["slice 0 failed"]
    assert met == [-1.0]  # the other slice stopped waiting


def test_a_spinning_wait_sees_a_change_made_by_another_thread():
    """The compiled loop reads the flag again each round (were the read hoisted out of the
    loop, it would spin its whole budget, here hours)."""
    flag, scratch, seen = np.zeros(1, np.int64), np.zeros(1, np.int64), []
    waiter = threading.Thread(
        target=lambda: seen.append(parallel._wait_for_change(flag, 0, 10**13, scratch, 0))
    )
    waiter.start()
    time.sleep(0.05)
    flag[0] = 1
    waiter.join(timeout=10)
    assert not waiter.is_alive() and seen == [True]
    assert parallel._wait_for_change(flag, 1, 1000, scratch, 0) is False  # no change: gives up


def test_after_a_change_the_wait_lingers_its_rounds_before_returning():
    flag, scratch = np.ones(1, np.int64), np.zeros(1, np.int64)
    assert parallel._wait_for_change(flag, 0, 10, scratch, 5000) is True
    assert scratch[0] == 5000  # each round of lingering adds flag[0] & 1
    assert parallel._linger_rounds() >= 1


def test_slices_run_when_the_workers_sleep_between_calls(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(parallel, "_SPINS", 1)  # no spinning: every wait sleeps
    for n in range(2, 12):
        time.sleep(0.002)
        assert parallel.over_batch(lambda a, b: (a, b), n) == parallel.batch_slices(n, 2)


def test_new_thread_counts_stop_the_old_workers(threads):
    threads(3)
    parallel.over_batch(lambda a, b: None, 3)
    old = [worker.thread for worker in parallel._workers]
    assert len(old) == 2 and all(thread.is_alive() for thread in old)
    threads(2)
    assert not any(thread.is_alive() for thread in old)
    assert parallel.over_batch(lambda a, b: b - a, 5) == [2, 3]


def test_idle_workers_sleep_instead_of_spinning(threads):
    threads(2)
    parallel.over_batch(lambda a, b: None, 2)
    time.sleep(0.1)  # well past the spinning after the last slice
    before = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - before < 0.05  # the process's CPU time, every thread's


def test_callers_on_two_threads_get_their_own_results(threads):
    threads(2)
    results, errors = {}, []

    def caller(k):
        try:
            for _ in range(200):
                out = parallel.over_batch(lambda a, b: list(range(a + k, b + k)), 6)
                assert sum(out, []) == list(range(k, 6 + k))
            results[k] = True
        except BaseException as err:
            errors.append(err)

    callers = [threading.Thread(target=caller, args=(k,)) for k in (0, 100)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=60)
    assert not errors and results == {0: True, 100: True}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_workers_of_its_own(threads):
    threads(2)
    parallel.over_batch(lambda a, b: None, 2)  # the parent's workers exist
    child = multiprocessing.get_context("fork").Process(target=_split_and_exit)
    child.start()
    child.join(timeout=20)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0


def _split_and_exit():
    keep, outs, parts, expected = _product_parts(np.random.default_rng(7), 4, [(0, 6), (6, 12)], 5)
    parallel.over_parts(parts)
    posted = all(map(np.allclose, outs, expected))
    os._exit(0 if parallel.over_batch(lambda a, b: b - a, 5) == [2, 3] and posted else 1)


def test_errstate_holds_inside_the_slices(threads):
    threads(2)

    def overflow(start, stop):
        return np.float32(3e38) * np.float32(10)

    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            parallel.over_batch(overflow, 4)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("strides,padding", [((1, 1), "same"), ((2, 2), "same"), ((2, 1), "valid")])
def test_conv_gives_the_reference_numbers_on_any_number_of_threads(
    threads, n_threads, strides, padding
):
    threads(n_threads)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 6, 3))
    k = rng.normal(size=(3, 3, 3, 4))
    b = rng.normal(size=4)
    y, cache = conv.conv2d_forward(x, k, b, strides, padding)
    y_ref, cache_ref = nn.conv2d_forward(x, k, b, strides, padding)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = rng.normal(size=y.shape)
    for fast, ref in zip(
        conv.conv2d_backward(dy, cache), nn.conv2d_backward(dy, cache_ref), strict=True
    ):
        np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.fixture
def slice_counts(monkeypatch):
    """How many slices each call of over_batch cut, in order."""
    counts = []
    real = parallel.over_batch

    def counting(run, n, grain=1):
        parts = real(run, n, grain)
        counts.append(len(parts))
        return parts

    monkeypatch.setattr(parallel, "over_batch", counting)
    return counts


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_dense_gives_the_formula_on_any_number_of_threads(threads, slice_counts, n_threads):
    threads(n_threads)
    rng = np.random.default_rng(1)
    # Large enough that each product is worth two threads (dense's _MIN_WORK).
    x, k, b = rng.normal(size=(64, 512)), rng.normal(size=(512, 300)), rng.normal(size=300)
    y, cache = dense.dense_forward(x, k, b)
    np.testing.assert_allclose(y, x @ k + b, rtol=1e-12, atol=1e-10)
    dy = rng.normal(size=y.shape)
    dx, dk, db = dense.dense_backward(dy, cache)
    np.testing.assert_allclose(dx, dy @ k.T, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(dk, x.T @ dy, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(db, dy.sum(axis=0), rtol=1e-12, atol=1e-10)
    assert slice_counts == [min(n_threads, 2)] * 2  # forward; all three gradients in one
    no_dx, dk_alone, _ = dense.dense_backward(dy, cache, input_gradient=False)
    assert no_dx is None
    np.testing.assert_array_equal(dk_alone, dk)


def _product_parts(rng, m, blocks, n):
    """Random float32 ``a: (m, k)``, ``b: (k, n)`` cut at ``blocks`` of ``k``, one output per
    block, the parts (``tiles.product``) that fill them, and what each should hold."""
    k = blocks[-1][1]
    a = rng.normal(size=(m, k)).astype(np.float32)
    b = rng.normal(size=(k, n)).astype(np.float32)
    outs = [np.full((m, n), np.nan, np.float32) for _ in blocks]
    parts = [
        (PRODUCT, a.ctypes.data + 4 * lo, k, 1, b.ctypes.data + 4 * lo * n, n,
         out.ctypes.data, n, m, n, hi - lo, 0)
        for (lo, hi), out in zip(blocks, outs, strict=True)
    ]  # fmt: skip
    return (a, b), outs, parts, [a[:, lo:hi] @ b[lo:hi] for lo, hi in blocks]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_posted_products_fill_every_part(threads, n_threads):
    threads(n_threads)
    rng = np.random.default_rng(3)
    for count in (1, 2, 3, 4):  # parts beyond the threads run on the caller
        keep, outs, parts, expected = _product_parts(rng, 19, parallel.batch_slices(40, count), 37)
        for _ in range(50):  # back to back, as a model's layers come
            parallel.over_parts(parts)
        for out, want in zip(outs, expected, strict=True):
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_posted_products_wake_a_sleeping_worker(threads, monkeypatch):
    threads(2)
    monkeypatch.setattr(parallel, "_SPINS", 1)  # no spinning: the worker sleeps between parts
    rng = np.random.default_rng(4)
    for _ in range(20):
        time.sleep(0.002)
        keep, outs, parts, expected = _product_parts(rng, 8, [(0, 30), (30, 64)], 20)
        parallel.over_parts(parts)
        for out, want in zip(outs, expected, strict=True):
            np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_posted_products_run_on_the_caller_inside_a_slice_or_blas_threads(threads):
    threads(2)
    rng = np.random.default_rng(5)
    keep, outs, parts, expected = _product_parts(rng, 5, [(0, 8), (8, 16)], 9)
    callers = []

    def inside(start, stop):
        callers.append(threading.get_ident())
        parallel.over_parts(parts)  # the workers are busy with this op's slices

    parallel.over_batch(inside, 2)
    assert len(set(callers)) == 2
    with parallel.blas_threads():
        parallel.over_parts(parts)
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(32, 3072, 200), (5, 4000, 33), (64, 512, 300)])
def test_float32_dense_forward_by_posted_tiles_gives_the_formula(threads, n_threads, shape):
    threads(n_threads)
    rng = np.random.default_rng(6)
    m, d, n = shape
    x = rng.normal(size=(m, d)).astype(np.float32)
    k = rng.normal(size=(d, n)).astype(np.float32)
    b = rng.normal(size=n).astype(np.float32)
    assert dense._tiled(x, k)
    expected = x.astype(np.float64) @ k + b
    for _ in range(3):  # the parts' buffers are kept from call to call
        y, _ = dense.dense_forward(x, k, b)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3 * np.sqrt(d))
    with parallel.blas_threads():
        assert not dense._tiled(x, k)


def test_thread_counts_must_be_positive_integers(threads, monkeypatch):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`n` must be a positive int"):
            parallel.set_num_threads(bad)
    monkeypatch.setenv("CNNLAB_NUM_THREADS", "two")
    with pytest.raises(
        ValueError, match="CNNLAB_NUM_THREADS must be a positive integer, got 'two'"
    ):
        parallel._default_num_threads()
    monkeypatch.setenv("CNNLAB_NUM_THREADS", "3")
    assert parallel._default_num_threads() == 3


def test_batchnorm_and_leaky_relu_split_over_threads_give_the_reference_numbers(
    threads, slice_counts
):
    threads(2)
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, size=(2, 256, 256, 16))  # 2**21 values: 2 slices of 2**20
    gamma, beta = rng.normal(size=(2, 16))
    y, mean, var, cache = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)
    dy = rng.normal(size=x.shape)
    grads = batchnorm.batchnorm_train_backward(dy, cache)
    act = activations.leaky_relu(x, 0.2), activations.leaky_relu_backward(dy, x, 0.2)
    # One hand-over forward and one backward (the slices meet for the sums in between), and
    # one for each of the activation's passes
    assert slice_counts == [2] * 4
    y_ref, mean_ref, var_ref, cache_ref = nn.batchnorm_train_forward(x, gamma, beta, 1e-3)
    for fast, ref in zip(
        (y, mean, var, *grads),
        (y_ref, mean_ref, var_ref, *nn.batchnorm_train_backward(dy, cache_ref)),
        strict=True,
    ):
        np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(act[0], np.where(x > 0, x, 0.2 * x))
    np.testing.assert_array_equal(act[1], np.where(x > 0, dy, 0.2 * dy))
    slice_counts.clear()
    small = x[:1, :128]  # 2**19 values: too few to pay for a thread
    batchnorm.batchnorm_train_forward(small, gamma, beta, 1e-3)
    activations.leaky_relu(small, 0.2)
    assert slice_counts == [1] * 2


def test_the_package_sets_and_tells_the_number_of_threads(threads):
    import cnnlab

    cnnlab.set_num_threads(3)
    assert cnnlab.num_threads() == parallel.num_threads() == 3


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(32, 4096, 128), (7, 3000, 45), (128, 200, 150)])
@pytest.mark.parametrize("input_gradient", [True, False])
def test_float32_dense_backward_in_posted_parts_gives_the_formula_and_adams_update(
    threads, monkeypatch, n_threads, shape, input_gradient
):
    """Each part takes its rows of the kernel gradient, its columns of dx (from the kernel as
    it was) and Adam's update of its rows: the numbers of the formula, and Adam's update the
    bits of the same update after the backward pass; where one part would do, BLAS does the
    same on the calling thread."""
    from cnnlab.engine.optimizers import AdamRows

    threads(n_threads)
    kinds = []
    real = parallel.over_parts
    monkeypatch.setattr(
        parallel, "over_parts", lambda parts: (kinds.extend(p[0] for p in parts), real(parts))
    )
    rng = np.random.default_rng(11)
    m, d, n = shape
    x = rng.normal(size=(m, d)).astype(np.float32)
    kernel = rng.normal(size=(d, n)).astype(np.float32)
    dy = rng.normal(size=(m, n)).astype(np.float32)
    slots = [rng.normal(size=(d, n)).astype(np.float32) for _ in range(2)]
    slots[1] **= 2  # v >= 0
    before, after_slots = kernel.copy(), [s.copy() for s in slots]
    update = AdamRows(kernel, *slots, 3, 1e-3, 0.9, 0.999, 1e-7)
    _, cache = dense.dense_forward(x, kernel, None)
    kinds.clear()
    dx, dk, db = dense.dense_backward(dy, cache, input_gradient, update=update)
    grain = dense._grain(m, n * (1 + input_gradient), dense._MIN_PART)
    parts = min(n_threads, d // grain)
    assert kinds == ([DENSE_BACKWARD] * parts if parts > 1 else [])  # one: by BLAS
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(dk, x64.T @ dy64, rtol=1e-4, atol=1e-4 * np.sqrt(m))
    np.testing.assert_allclose(db, dy64.sum(axis=0), rtol=1e-5, atol=1e-4)
    if input_gradient:
        np.testing.assert_allclose(dx, dy64 @ before.T, rtol=1e-4, atol=1e-4 * np.sqrt(n))
    else:
        assert dx is None
    assert update.rows_done == d
    whole = AdamRows(before, *after_slots, 3, 1e-3, 0.9, 0.999, 1e-7)
    whole(dk, slice(None))  # the update after the backward pass, from the same gradient
    np.testing.assert_array_equal(kernel, before)
    for mine, theirs in zip(slots, after_slots, strict=True):
        np.testing.assert_array_equal(mine, theirs)
