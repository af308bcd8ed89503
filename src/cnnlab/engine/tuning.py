"""The fast engine's choices that depend on the machine, measured on the machine: how each
conv shape runs, and how each model uses the cores.

How a conv layer of a given shape runs fastest depends on the CPU it runs on: how many bytes
of im2col matrix a chunk of images should fill so that it stays in the core's cache between
its copy and its matrix products (``chunk_bytes``); whether each matrix product goes to BLAS
in one call or in calls of a few hundred thousand multiply-adds (``gemm_macs``), which some
BLAS builds run without first copying the matrices into their own layout (OpenBLAS on
AVX-512 CPUs: the book's CNN's im2col products at 125-139 GFLOP/s a core instead of 75-94 on
an Intel Xeon; slower where a BLAS has no such kernels); whether cnnlab's own register tiles
multiply instead of BLAS (:mod:`cnnlab.engine.tiles`), after im2col or reading the windows
straight from the input (``products``); and whether Winograd's F(4x4, 3x3) beats im2col for a
3x3 convolution with strides 1 (fewer multiplications, more passes over memory). The defaults
(:func:`default_plan`: 1 MiB chunks, one BLAS call a product, Winograd from
:data:`cnnlab.engine.winograd.MIN_CHANNELS` input channels) were measured on one machine.

So the first time a shape is met, :func:`conv_plan` times the candidates on random data of
that shape, the forward and the backward pass on every thread, as FFTW's wisdom and cuDNN's
benchmark mode do, and keeps the fastest unless the default is within
:data:`KEEP_DEFAULT_WITHIN` of it. The choice goes into a file for this machine
(:func:`cnnlab.engine.machine.description`) in the user's cache folder, or
``$CNNLAB_TUNE_DIR``: a shape is measured once per machine, and every run there makes the same
choice, so the same seed still gives the same numbers run after run. A measurement disturbed
by another program (:data:`MAX_NOISE`) is taken again; disturbed :data:`MEASUREMENTS` times,
it keeps the default. The first choice written
for a shape stays; a process that measured the same shape at the same time takes it. A file
this version did not write for this machine, or cannot read, is ignored and written anew.

A model's batches also choose how they use the cores (:func:`threads_mode`): cnnlab's
threads splitting every op with NumPy's BLAS on one thread (the default, faster where the ops
are many and small, as the CNN's), the same with dense layers in a row multiplying by BLAS
instead of cnnlab's tiles (faster on some machines, slower on others), or every op whole with
BLAS's own threads (faster where a few large matrix products are all there is, as in the
MLP). It is timed on the model's inference pass, in blocks of each mode, and kept in the same
file. So is the size from which batch norm's passes split over the threads
(:func:`batchnorm_grain`), measured once.

Shapes too small for the choice to matter (the im2col matrix of the images measured fits in
the smallest chunk) keep the defaults unmeasured. ``CNNLAB_TUNE=off`` keeps the defaults for
every shape; ``cnnlab tune`` measures a model's shapes again and prints what it chose and why.
Every candidate gives the numbers of :func:`cnnlab.nn.conv.conv2d_forward` and
:func:`~cnnlab.nn.conv.conv2d_backward` to rounding: they add the same products in other orders.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cnnlab import files
from cnnlab.engine import machine, parallel, winograd

FORMAT = 5  # bump when a kernel changes what a choice means (5: the mode "cnnlab-blas")
DEFAULT_CHUNK_BYTES = 1 << 20
CHUNK_BYTES = (1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22)
GEMM_MACS = (1 << 18, 1 << 19, 1 << 20)  # multiply-adds per BLAS call, beside 0 (one call)
PRODUCTS = ("blas", "tiles", "direct")  # ConvPlan.products
MAX_IMAGES = 64  # a shape is measured, and keyed, on at most this many images
ROUNDS = 5  # timed rounds of every candidate, after one untimed
KEEP_DEFAULT_WITHIN = 0.05  # the default stays unless another candidate is 5 % faster
# A measurement whose two best rounds of some candidate are further apart than this was
# disturbed, by another program say (:func:`_best_and_noise`): it is taken again, up to
# MEASUREMENTS in all, and if every one was disturbed the default is kept for the shape, as if
# untuned, so that every later run makes the same choice (`cnnlab tune` measures again). On a
# shared Xeon VM the book's second conv at batch 32 came out disturbed in two of four runs of
# the tuner, and its default ran 1.3x as long as the direct convolution chosen in the others.
MAX_NOISE = 0.25
MEASUREMENTS = 3
WARM_UP_SECONDS = 0.12  # a threads mode's passes before it is timed (_measure_modes)
ROUND_SECONDS = 0.005  # and the passes of each timed round
MODE_BLOCKS = 2  # times the threads modes take turns, each a block of rounds
_MAX_FILE_BYTES = 4 << 20


class ConvPlan(NamedTuple):
    """How :mod:`cnnlab.engine.conv` runs one conv shape."""

    winograd: bool  # forward and input gradient by Winograd's F(4x4, 3x3)
    chunk_bytes: int  # the im2col matrix of a chunk of images fills about this many bytes
    # The im2col products of a chunk in BLAS calls of about this many multiply-adds each (0:
    # one call a product), small enough for a BLAS to skip copying ("packing") its matrices.
    gemm_macs: int = 0
    # What multiplies (:data:`PRODUCTS`): "blas"; "tiles", cnnlab's own register tiles
    # (:mod:`cnnlab.engine.tiles`); "direct", the tiles reading the windows straight from the
    # input, without im2col (forward and kernel gradient), and the input gradient's from the
    # output gradient (for 16 channels or more). The tiles take float32 only.
    products: str = "blas"

    def __str__(self) -> str:
        method = "Winograd" if self.winograd else "im2col"
        if self.products == "direct":
            method = "Winograd, kernel gradient direct" if self.winograd else "direct"
        calls = f", products in calls of {self.gemm_macs >> 10}K" if self.gemm_macs else ""
        calls = calls if self.products == "blas" else ", products by cnnlab's tiles"
        return f"{method}, {self.chunk_bytes >> 10} KiB chunks{calls}"

    def gemm_rows(self, k: int, filters: int) -> int:
        """Rows of a chunk's im2col matrix, ``k`` values each, per BLAS call (0: all)."""
        return max(1, self.gemm_macs // (k * filters)) if self.gemm_macs else 0


@dataclass
class Measurement:
    """What :func:`conv_plan` timed for one shape: seconds of a forward and backward pass for
    each candidate (the best of :data:`ROUNDS`), the default and the choice."""

    shape: str
    seconds: dict[ConvPlan, float]
    default: ConvPlan
    chosen: ConvPlan
    noise: float  # the largest gap between a candidate's two best rounds: second / best - 1
    kept: bool  # in the file (False: its folder could not be written)


measurements: list[Measurement] = []  # this process's, in order, for ``cnnlab tune``
# Each file's choices, as read and written: {"conv": {key: ConvPlan}, "threads": {key: mode},
# "grain": {key: values}}.
_loaded: dict[Path, dict[str, dict]] = {}
_memo: dict[tuple, ConvPlan | int] = {}  # what was asked -> the answer, in this process
_lock = threading.RLock()  # re-entrant: a model's trial meets its conv shapes
_remeasure: set[str] | None = None  # inside remeasuring(): the shapes measured again so far
_warned = False


def enabled() -> bool:
    """Whether shapes are tuned: ``CNNLAB_TUNE`` is ``on`` (the default) or ``off``."""
    value = os.environ.get("CNNLAB_TUNE", "on").strip().lower()
    if value in ("on", "1", "true", "yes", ""):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"CNNLAB_TUNE must be 'on' or 'off', got {value!r}")


def default_plan(kernel_shape: tuple, strides: tuple[int, int], dtype) -> ConvPlan:
    """The choice without tuning: 1 MiB chunks, and Winograd where
    :func:`cnnlab.engine.winograd.applies` says so."""
    return ConvPlan(winograd.applies(kernel_shape, strides, dtype), DEFAULT_CHUNK_BYTES)


def images_per_chunk(plan: ConvPlan, out_hw: tuple[int, int], k: int, itemsize: int) -> int:
    """Images whose im2col matrix, ``out_hw`` windows of ``k`` values each, fills about
    ``plan.chunk_bytes``; at least one."""
    return max(1, plan.chunk_bytes // (out_hw[0] * out_hw[1] * k * itemsize))


# A conv shape's trial: given the shape, a function that runs one forward and backward pass
# with a plan (:func:`cnnlab.engine.conv.trial`, passed in: conv asks, tuning times).
Trial = Callable[[tuple, tuple, tuple, tuple, np.dtype], Callable[[ConvPlan], None]]


def conv_plan(
    x_shape: tuple,
    kernel_shape: tuple,
    strides: tuple[int, int],
    pads: tuple,
    dtype,
    trial: Trial,
) -> ConvPlan:
    """The plan for a convolution of ``x: x_shape`` (N, H, W, C) with ``kernel: kernel_shape``
    (kh, kw, C, F) at ``strides`` with ``pads`` ((top, bottom), (left, right)): the one kept for
    this machine, else measured now by timing ``trial``'s passes (see the module's docstring),
    else the default."""
    if not enabled() or parallel.inside_slice() or parallel.whole():
        return default_plan(kernel_shape, strides, dtype)
    shape = (batch_key(x_shape[0]), *x_shape[1:])
    return _remembered(
        (shape, kernel_shape, strides, pads, dtype, _path()),
        default_plan(kernel_shape, strides, dtype),
        lambda: _conv_plan(shape, kernel_shape, strides, pads, dtype, trial),
    )


def _remembered(asked: tuple, default, choose: Callable[[], object]):
    """The answer given to ``asked`` before in this process, else ``choose()``'s, remembered;
    ``default`` (not remembered) where ``choose()`` gives None: the threads were busy with
    another caller's op, so it is measured another time."""
    if _remeasure is None and asked in _memo:
        return _memo[asked]
    chosen = choose()
    if chosen is None:
        return default
    _memo[asked] = chosen
    return chosen


def _conv_plan(shape, kernel_shape, strides, pads, dtype, trial: Trial) -> ConvPlan | None:
    default = default_plan(kernel_shape, strides, dtype)
    key = _key(shape, kernel_shape, strides, pads, dtype)

    def measure():
        candidates = _candidates(shape, kernel_shape, strides, pads, dtype)
        if len(candidates) < 2:
            return None
        run = trial(shape, kernel_shape, strides, pads, np.dtype(dtype))
        with parallel.one_blas_thread():
            return _measure(candidates, run)

    return _tuned("conv", key, default, measure)


def _tuned(section: str, key: str, default, measure: Callable[[], tuple | None]):
    """The choice kept in this machine's file for ``key`` in ``section``; else ``measure()``'s
    (``(seconds of each candidate, noise)``, or None: nothing to choose from, the default),
    measured again while disturbed, up to :data:`MEASUREMENTS` times, and kept in the file;
    None while the threads are busy with another caller's op."""
    with _lock:
        path = _path()
        kept = _plans(path)[section]
        again = _remeasure is not None and key not in _remeasure
        if key in kept and not again:
            return kept[key]
        if parallel.workers_busy():  # the trial would run on one thread only
            return None
        measured = measure()
        if measured is None:
            return default
        seconds, noise = measured
        for _ in range(MEASUREMENTS - 1):
            if noise <= MAX_NOISE:
                break
            seconds, noise = measure()
        if noise <= MAX_NOISE:
            chosen, written = _keep(path, section, key, _choose(seconds, default), again)
        elif key in kept:  # `cnnlab tune` on a busy machine: the choice kept stays
            chosen, written = kept[key], True
        else:
            chosen, written = _keep(path, section, key, default, again)
        _plans(path)[section][key] = chosen
        if again:
            _remeasure.add(key)
        measurements.append(Measurement(key, seconds, default, chosen, noise, written))
        return chosen


# -- how a model's ops use the cores ----------------------------------------------------------
MODES = ("cnnlab", "blas", "cnnlab-blas")
DEFAULT_MODE = "cnnlab"


def threads_mode(key: str, trial: Callable[[str], None], dense_chains: bool = False) -> str:
    """How the fast engine uses the cores for a model's batches, ``key`` naming the model and
    its batch (see :func:`batch_key`): "cnnlab", each op's batch split over cnnlab's threads
    with NumPy's BLAS on one (:func:`cnnlab.engine.parallel.one_blas_thread`: the default),
    or "blas", each op whole, BLAS on threads of its own
    (:func:`cnnlab.engine.parallel.blas_threads`); for a model with ``dense_chains`` (dense
    layers in a row) also "cnnlab-blas", cnnlab's threads with those layers multiplying by
    BLAS instead of the tiles (:func:`cnnlab.engine.parallel.blas_products`). ``trial(mode)``
    runs the model's inference pass in that mode; it is timed as a conv shape's candidates
    are, once per machine."""
    if not enabled() or parallel.num_threads() == 1 or parallel.inside_slice():
        return DEFAULT_MODE
    modes = list(MODES if dense_chains else MODES[:2])
    mode = _tuned("threads", key, DEFAULT_MODE, lambda: _measure_modes(modes, trial))
    return DEFAULT_MODE if mode is None else mode


# -- from what size batch norm's passes split over the threads -------------------------------
GRAINS = tuple(1 << p for p in range(15, 21))  # values (rows x channels) per slice
DEFAULT_GRAIN = 1 << 19
GRAIN_KEY = "batch norm and leaky ReLU, float32, 32 channels"
_trying = threading.local()  # .grain: the candidate being measured, in this thread


def batchnorm_grain(trial: Callable[[int], Callable[[], None]]) -> int:
    """The fewest values (rows x channels) a slice of batch norm's passes gets: an op splits
    over the threads only where each thread has this many, as handing a slice to a thread
    costs about as much as a pass over tens of thousands of values, depending on the
    machine (:mod:`cnnlab.engine.parallel`). ``trial(values)`` gives a function that runs
    batch norm forward and backward on ``values`` values with the grain this function
    returns; it is timed at sizes of :data:`GRAINS` times the threads, each split and whole,
    once per machine, and the grain kept is the candidate whose splits sum to the least
    time (:func:`_measure_grain`). :data:`DEFAULT_GRAIN` without tuning."""
    forced = getattr(_trying, "grain", None)
    if forced is not None:
        return forced
    if not enabled() or parallel.num_threads() == 1 or parallel.inside_slice():
        return DEFAULT_GRAIN
    return _remembered(
        ("grain", _path()),
        DEFAULT_GRAIN,
        lambda: _tuned("grain", GRAIN_KEY, DEFAULT_GRAIN, lambda: _measure_grain(trial)),
    )


@contextlib.contextmanager
def _grain_tried(grain: int) -> Iterator[None]:
    _trying.grain = grain
    try:
        yield
    finally:
        _trying.grain = None


def _measure_grain(trial: Callable[[int], Callable[[], None]]):
    """Seconds for each candidate of :data:`GRAINS`: the sum over the sizes ``threads * g``
    (``g`` in :data:`GRAINS`) of batch norm's time at that size, split over the threads
    where the candidate splits it and whole where not; and the noise. Each size is timed
    split and whole, taking turns as :func:`_measure` does, a run repeated to about as many
    values as the largest size has."""
    threads = parallel.num_threads()
    sizes = [threads * grain for grain in GRAINS]
    runs = {size: trial(size) for size in sizes}
    whole = 1 << 62

    def timed(size: int, grain: int) -> Callable[[], None]:
        repeats = max(1, sizes[-1] // size)

        def run() -> None:
            with _grain_tried(grain):
                for _ in range(repeats):
                    runs[size]()

        return run

    cases = {
        (size, split): timed(size, 1 if split else whole) for size in sizes for split in (0, 1)
    }
    with parallel.one_blas_thread():
        seconds, noise = _measure(list(cases), lambda case: cases[case]())
    per_candidate = {
        grain: sum(seconds[(size, size >= threads * grain)] for size in sizes) for grain in GRAINS
    }
    return per_candidate, noise


def batch_key(n: int) -> int:
    """The batch size a batch of ``n`` is measured and kept for: the next power of two, at
    most :data:`MAX_IMAGES` (so that an epoch's last, smaller batch seldom needs a
    measurement)."""
    return min(MAX_IMAGES, 1 << max(0, int(n) - 1).bit_length())


@contextlib.contextmanager
def remeasuring() -> Iterator[None]:
    """Inside the block, every shape met is measured again (once) and its kept choice
    replaced."""
    global _remeasure
    with _lock:
        _remeasure = set()
    try:
        yield
    finally:
        with _lock:
            _remeasure = None


def forget() -> None:
    """Forget what this process read, measured and chose, as a new process starts."""
    _loaded.clear()
    _memo.clear()


def cache_file() -> Path:
    """The file this machine's choices are kept in."""
    return _path()


def table(measured: list[Measurement]) -> str:
    """The measurements as a markdown table: for each shape, the choice, the default and why."""
    lines = [
        "| conv: dtype, images x H x W x C, kh x kw x filters, strides, pads; or a model's "
        "threads: dtype, inputs, weights | chosen | ms | default | ms | why |",
        "|---|---|---:|---|---:|---|",
    ]
    for m in measured:
        fastest = min(m.seconds, key=m.seconds.get)
        default_ms = f"{m.seconds[m.default] * 1e3:.2f}" if m.default in m.seconds else "-"
        if m.noise > MAX_NOISE:
            why = (
                f"disturbed (best rounds {m.noise:.0%} apart): the default; measure again on a "
                "quiet machine"
            )
        elif m.chosen == m.default and fastest != m.default:
            why = f"the default is within {KEEP_DEFAULT_WITHIN:.0%} of the fastest"
        elif m.chosen == m.default:
            why = "the default is the fastest"
        elif m.default in m.seconds:
            why = f"{m.seconds[m.default] / m.seconds[m.chosen]:.2f}x as fast as the default"
        else:
            why = "the fastest"
        lines.append(
            f"| {m.shape} | {_named(m.chosen)} | {m.seconds[m.chosen] * 1e3:.2f} | "
            f"{_named(m.default)} | {default_ms} | {why} |"
        )
    return "\n".join(lines)


def _named(choice) -> str:
    return f"slices of {choice:,} values or more" if isinstance(choice, int) else str(choice)


# -- the candidates and their timing --------------------------------------------------------
def _geometry(shape, kernel_shape, strides, pads) -> tuple[tuple[int, int], int]:
    _, h, w, c = shape
    kh, kw = kernel_shape[:2]
    (top, bottom), (left, right) = pads
    oh = (h + top + bottom - kh) // strides[0] + 1
    ow = (w + left + right - kw) // strides[1] + 1
    return (oh, ow), kh * kw * c


def _candidates(shape, kernel_shape, strides, pads, dtype) -> list[ConvPlan]:
    """im2col with every chunk size that gives a different number of images per chunk for a
    core's slice, each product in one BLAS call, and for float32 each by cnnlab's tiles
    (:mod:`cnnlab.engine.tiles`), after im2col and straight from the input; the default chunk
    size with the products in calls of each of :data:`GEMM_MACS` multiply-adds; and Winograd
    where it can run, with the default chunk size (only its kernel gradient has chunks) and
    each way of multiplying. None when the measured images' im2col matrix fits in the smallest
    chunk."""
    out_hw, k = _geometry(shape, kernel_shape, strides, pads)
    itemsize = np.dtype(dtype).itemsize
    if shape[0] * out_hw[0] * out_hw[1] * k * itemsize <= CHUNK_BYTES[0]:
        return []
    per_core = -(-shape[0] // parallel.num_threads())
    by_step: dict[int, int] = {}  # images per chunk -> the chunk size that gives it
    for chunk in CHUNK_BYTES:
        step = min(per_core, images_per_chunk(ConvPlan(False, chunk), out_hw, k, itemsize))
        if step not in by_step or chunk == DEFAULT_CHUNK_BYTES:  # the default's, where alike
            by_step[step] = chunk
    ways = PRODUCTS if np.dtype(dtype) == np.float32 else ("blas",)
    plans = [ConvPlan(False, chunk, 0, way) for way in ways for chunk in sorted(by_step.values())]
    plans += [ConvPlan(False, DEFAULT_CHUNK_BYTES, macs) for macs in GEMM_MACS]
    if winograd.possible(kernel_shape, strides, dtype):
        plans += [ConvPlan(True, DEFAULT_CHUNK_BYTES, 0, way) for way in ways]
    return plans


def _measure(candidates: list[ConvPlan], run: Callable[[ConvPlan], None]):
    """Seconds of ``run(plan)`` for each candidate, the best of :data:`ROUNDS` after an untimed
    one, the candidates taken in turn in every round; and the noise, the largest
    ``median / best - 1`` of a candidate's rounds."""
    rounds = {plan: [] for plan in candidates}
    for round_ in range(ROUNDS + 1):
        for plan in candidates:
            start = time.perf_counter()
            run(plan)
            if round_:
                rounds[plan].append(time.perf_counter() - start)
    return _best_and_noise(rounds)


def _measure_modes(modes: list[str], trial: Callable[[str], None]):
    """:func:`_measure` for the threads modes, which cannot take turns in every round: after
    passes with BLAS's threads, those spin on for a while and slow cnnlab's threads down (the
    book's MLP at batch 32 on the 2-core EPYC: 8 ms a pass for the next eight passes, then
    0.3 ms). So each mode runs in blocks of its own: warmed up for :data:`WARM_UP_SECONDS`,
    then :data:`ROUNDS` rounds of enough passes to take :data:`ROUND_SECONDS` each; and the
    modes take turns :data:`MODE_BLOCKS` times, so that a slow spell of the machine during
    one mode's block does not decide alone (on a shared Xeon VM one block each chose BLAS's
    threads for the MLP in one run of two, where cnnlab's were 15 % faster)."""
    rounds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(MODE_BLOCKS):
        for mode in modes:
            start, passes = time.perf_counter(), 0
            while passes < 2 or time.perf_counter() - start < WARM_UP_SECONDS:
                trial(mode)
                passes += 1
            runs = max(1, round(ROUND_SECONDS * passes / (time.perf_counter() - start)))
            for _ in range(ROUNDS):
                start = time.perf_counter()
                for _ in range(runs):
                    trial(mode)
                rounds[mode].append((time.perf_counter() - start) / runs)
    return _best_and_noise(rounds)


def _best_and_noise(rounds: dict) -> tuple[dict, float]:
    """Each candidate's best round, and the noise: the largest ``second best / best - 1`` of a
    candidate's rounds. The choice rests on the best rounds, so that is what must repeat: on
    a shared machine a round slowed by another program is common (the median round 10-50 %
    above the best on a shared Xeon VM, where the two best agreed within 2-19 % and the
    fastest candidate came out the same in two runs of ``cnnlab tune``), while two rounds
    far apart at their best mean the measurement cannot be trusted."""
    best = {candidate: min(times) for candidate, times in rounds.items()}
    noise = max(sorted(times)[1] / min(times) - 1 for times in rounds.values())
    return best, noise


def _choose(seconds: dict[ConvPlan, float], default: ConvPlan) -> ConvPlan:
    """The fastest candidate, unless the default (or, where the default was not a candidate,
    the candidate that behaves as it does) is within :data:`KEEP_DEFAULT_WITHIN` of it."""
    fastest = min(seconds, key=seconds.get)
    if default in seconds and seconds[default] <= seconds[fastest] * (1 + KEEP_DEFAULT_WITHIN):
        return default
    return fastest


# -- the file ---------------------------------------------------------------------------------
def _tune_dir() -> Path:
    env = os.environ.get("CNNLAB_TUNE_DIR")
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("cnnlab")) / "tuning"


def _path() -> Path:
    return _path_for(parallel.num_threads(), os.environ.get("CNNLAB_TUNE_DIR", ""))


@functools.cache
def _path_for(threads: int, folder: str) -> Path:
    """The file for this machine with ``threads`` threads in ``folder`` (kept: a conv op asks
    at every call)."""
    digest = hashlib.sha256(
        json.dumps(machine.description(parallel.num_threads()), sort_keys=True).encode()
    )
    return _tune_dir() / f"conv-{digest.hexdigest()[:16]}.json"


def _key(shape, kernel_shape, strides, pads, dtype) -> str:
    n, h, w, c = shape
    kh, kw, _, f = kernel_shape
    (top, bottom), (left, right) = pads
    return (
        f"{np.dtype(dtype).name} x{n}x{h}x{w}x{c} k{kh}x{kw}x{f} "
        f"s{strides[0]}x{strides[1]} p{top},{bottom},{left},{right}"
    )


def _plans(path: Path) -> dict[str, dict]:
    if path not in _loaded:
        _loaded[path] = _read(path)
    return _loaded[path]


def _read(path: Path) -> dict[str, dict]:
    """The valid choices in ``path``, ``{"conv": {key: ConvPlan}, "threads": {key: mode},
    "grain": {key: values}}``; none if it is missing, damaged, of another format or written
    for another machine."""
    found: dict[str, dict] = {"conv": {}, "threads": {}, "grain": {}}
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            return found
        data = files.read_json(path)
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep
        return found
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return found
    if data.get("machine") != json.loads(json.dumps(machine.description(parallel.num_threads()))):
        return found
    for section, entries in found.items():
        given = data.get(section, {})
        for key, entry in given.items() if isinstance(given, dict) else ():
            choice = _choice(section, entry)
            if choice is not None:
                entries[key] = choice
    return found


def _choice(section: str, entry):
    """The choice an entry of the file's ``section`` describes, or None if it describes
    none."""
    if not isinstance(entry, dict):
        return None
    if section == "threads":
        mode = entry.get("mode")
        return mode if mode in MODES else None
    if section == "grain":
        values = entry.get("values")
        return values if values in GRAINS and type(values) is int else None
    use_winograd, chunk, macs, products = (entry.get(name) for name in ConvPlan._fields)
    if (
        isinstance(use_winograd, bool)
        and chunk in CHUNK_BYTES
        and type(chunk) is int
        and macs in (0, *GEMM_MACS)
        and type(macs) is int
        and products in PRODUCTS
    ):
        return ConvPlan(use_winograd, chunk, macs, products)
    return None


def _entry(choice) -> dict:
    """What the file holds for ``choice`` (:func:`_choice`'s inverse)."""
    if isinstance(choice, str):
        return {"mode": choice}
    if isinstance(choice, int):
        return {"values": choice}
    return choice._asdict()


def _keep(path: Path, section: str, key: str, choice, replace: bool) -> tuple[object, bool]:
    """Write ``choice`` for ``key`` into ``section`` of ``path``; ``(the choice, True)``, or if
    the file already holds one for ``key`` (another process measured it), that one, unless
    ``replace``. Where the folder cannot be written, ``(choice, False)``: it holds for this
    process only, with one warning."""
    global _warned
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(path.with_suffix(".lock")):
            kept = _read(path)
            if key in kept[section] and not replace:
                return kept[section][key], True
            kept[section][key] = choice
            data = {"format": FORMAT, "machine": machine.description(parallel.num_threads())}
            for name, entries in kept.items():
                data[name] = {k: _entry(c) for k, c in sorted(entries.items())}
            with files.atomic_open(path, "w") as stream:
                json.dump(data, stream, indent=1)
            loaded = _plans(path)  # and those kept in memory only
            for name, entries in kept.items():
                loaded[name] = {**loaded[name], **entries}
    except OSError as err:
        if not _warned:
            _warned = True
            warnings.warn(
                f"cnnlab could not keep its tuning in {path.parent} ({err}); each process "
                "measures its conv shapes again. Set CNNLAB_TUNE_DIR to a writable folder, "
                "or CNNLAB_TUNE=off.",
                stacklevel=2,
            )
        return choice, False
    return choice, True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, waited for (not on Windows, which has none)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    with open(path, "a") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
