"""The tuner (cnnlab.engine.tuning): conv shapes measured once per machine, the choice kept in
a file that is trusted only when it is whole and this machine's, every choice giving the
plain ops' numbers."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cnnlab import fusion, layers, nn, zoo
from cnnlab.cli import main
from cnnlab.engine import blas, conv, machine, parallel, tuning
from cnnlab.engine.tuning import ConvPlan
from cnnlab.model import Sequential

needs_blas = pytest.mark.skipif(
    blas.gemm(np.float32) is None, reason="NumPy's BLAS is not OpenBLAS: no Winograd path"
)

# The book's third conv at batch 32: 16x16x32 -> 64, strides 1, "same" (Winograd by default).
SHAPE = ((32, 16, 16, 32), (3, 3, 32, 64), (1, 1), ((1, 1), (1, 1)), np.float32, conv.trial)
DEFAULT = ConvPlan(winograd=True, chunk_bytes=1 << 20)


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """Tuning on, in a folder of the test's own, with nothing loaded yet."""
    monkeypatch.setenv("CNNLAB_TUNE", "on")
    monkeypatch.setenv("CNNLAB_TUNE_DIR", str(tmp_path / "tuning"))
    monkeypatch.setattr(tuning, "_loaded", {})
    monkeypatch.setattr(tuning, "_memo", {})
    monkeypatch.setattr(tuning, "measurements", [])
    monkeypatch.setattr(tuning, "_warned", False)
    return tmp_path / "tuning"


@pytest.fixture
def timed(monkeypatch):
    """Measurements made up: each candidate's seconds from ``times``, a dict (1.0 where
    absent) or a function of the plan; the noise from ``noise``; ``calls`` counts the
    measurements."""

    class Timer:
        times: dict[ConvPlan, float] = {}
        modes: dict[str, float] = {}  # a model's threads modes' seconds (1.0 where absent)
        noise = 0.0
        calls = 0

        def __call__(self, candidates, run):
            self.calls += 1
            time = self.times if callable(self.times) else lambda p: self.times.get(p, 1.0)
            return {plan: time(plan) for plan in candidates}, self.noise

    timer = Timer()
    monkeypatch.setattr(tuning, "_measure", timer)
    monkeypatch.setattr(tuning, "_measure_modes", lambda modes, trial: (
        {mode: timer.modes.get(mode, 1.0) for mode in modes}, timer.noise))  # fmt: skip
    return timer


@needs_blas
def test_a_shape_is_measured_once_kept_in_the_file_and_read_back(tuned, timed, monkeypatch):
    faster = ConvPlan(False, 1 << 20, gemm_macs=1 << 19)
    timed.times = {faster: 0.5}
    assert tuning.default_plan(SHAPE[1], SHAPE[2], SHAPE[4]) == DEFAULT
    assert tuning.conv_plan(*SHAPE) == faster
    assert tuning.conv_plan(*SHAPE) == faster
    assert timed.calls == 1
    [path] = tuned.glob("conv-*.json")
    assert path == tuning.cache_file()
    data = json.loads(path.read_text())
    assert data["format"] == tuning.FORMAT
    assert data["machine"]["cpu"] == machine.cpu_model()
    assert data["conv"] == {
        "float32 x32x16x16x32 k3x3x64 s1x1 p1,1,1,1": {
            "winograd": False,
            "chunk_bytes": 1 << 20,
            "gemm_macs": 1 << 19,
            "products": "blas",
        }
    }
    tuning.forget()
    assert tuning.conv_plan(*SHAPE) == faster  # a new process reads it
    assert timed.calls == 1
    [m] = tuning.measurements
    assert m.chosen == faster and m.default == DEFAULT and m.seconds[faster] == 0.5


@needs_blas
def test_the_default_stays_unless_another_is_measurably_faster(tuned, timed):
    timed.times = {DEFAULT: 1.0, ConvPlan(False, 1 << 18): 0.97}  # 3 % faster: noise
    assert tuning.conv_plan(*SHAPE) == DEFAULT
    assert "within 5% of the fastest" in tuning.table(tuning.measurements)


@needs_blas
def test_a_measurement_disturbed_every_time_keeps_the_default(tuned, timed):
    """Another program kept the best rounds apart in every measurement: the default is kept for
    good, so that a later run does not choose otherwise (and get other numbers to rounding)."""
    timed.times, timed.noise = {ConvPlan(False, 1 << 18): 0.5}, 0.6
    assert tuning.conv_plan(*SHAPE) == DEFAULT
    assert "disturbed (best rounds 60% apart)" in tuning.table(tuning.measurements)
    assert timed.calls == tuning.MEASUREMENTS
    tuning.forget()
    timed.noise = 0.0
    assert tuning.conv_plan(*SHAPE) == DEFAULT  # the next process reads it
    assert timed.calls == tuning.MEASUREMENTS


@needs_blas
def test_a_disturbed_measurement_is_taken_again(tuned, timed, monkeypatch):
    """A measurement disturbed once is taken again, and the quiet one chooses."""
    faster = ConvPlan(False, 1 << 18)
    timed.times = {faster: 0.5}
    noises = iter([0.6, 0.1])
    measure = tuning._measure

    def disturbed_once(candidates, run):
        seconds, _ = measure(candidates, run)
        return seconds, next(noises)

    monkeypatch.setattr(tuning, "_measure", disturbed_once)
    assert tuning.conv_plan(*SHAPE) == faster
    assert timed.calls == 2
    assert tuning.measurements[-1].noise == pytest.approx(0.1)


@needs_blas
def test_off_keeps_the_defaults_and_writes_nothing(tuned, timed, monkeypatch):
    monkeypatch.setenv("CNNLAB_TUNE", "off")
    assert tuning.conv_plan(*SHAPE) == DEFAULT
    assert timed.calls == 0 and not tuned.exists()
    monkeypatch.setenv("CNNLAB_TUNE", "sometimes")
    with pytest.raises(ValueError, match="CNNLAB_TUNE must be 'on' or 'off', got 'sometimes'"):
        tuning.conv_plan(*SHAPE)


def test_shapes_too_small_to_matter_are_not_measured(tuned, timed):
    small = ((2, 6, 6, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1)), np.float32, conv.trial)
    assert tuning.conv_plan(*small) == tuning.default_plan((3, 3, 16, 8), (1, 1), np.float32)
    assert timed.calls == 0


@needs_blas
@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"\x00\xff not json",
        lambda data: json.dumps({**data, "format": tuning.FORMAT + 1}).encode(),
        lambda data: json.dumps({**data, "machine": {**data["machine"], "cpu": "other"}}).encode(),
        lambda data: json.dumps({**data, "conv": "notadict"}).encode(),
        lambda data: json.dumps([data]).encode(),
        lambda data: b"[" * 200_000,  # nested past Python's recursion limit
    ],
    ids=["bytes", "format", "machine", "entries", "list", "deep"],
)
def test_a_damaged_or_foreign_file_is_ignored_and_written_anew(tuned, timed, monkeypatch, damage):
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    tuning.conv_plan(*SHAPE)
    path = tuning.cache_file()
    path.write_bytes(damage(json.loads(path.read_text())))
    tuning.forget()
    timed.times = {ConvPlan(False, 1 << 21): 0.5}
    assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 21)  # measured again
    assert timed.calls == 2
    data = json.loads(path.read_text())
    assert data["format"] == tuning.FORMAT and data["machine"]["cpu"] == machine.cpu_model()
    assert list(data["conv"].values()) == [
        {"winograd": False, "chunk_bytes": 1 << 21, "gemm_macs": 0, "products": "blas"}
    ]


@needs_blas
def test_entries_that_are_not_choices_are_dropped(tuned, timed, monkeypatch):
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    tuning.conv_plan(*SHAPE)
    path = tuning.cache_file()
    data = json.loads(path.read_text())
    [key] = data["conv"]
    for bad in ({"winograd": "yes", "chunk_bytes": 1 << 18}, {"winograd": False, "chunk_bytes": 3},
                {"winograd": False, "chunk_bytes": True}, [1, 2],
                {"winograd": False, "chunk_bytes": 1 << 18, "gemm_macs": 5},
                {"winograd": False, "chunk_bytes": 1 << 18, "gemm_macs": True},
                {"winograd": False, "chunk_bytes": 1 << 18, "gemm_macs": 0},  # no products
                {"winograd": False, "chunk_bytes": 1 << 18, "gemm_macs": 0, "products": "fast"}
                ):  # fmt: skip
        path.write_text(json.dumps({**data, "conv": {key: bad}}))
        tuning.forget()
        assert key not in tuning._read(path)["conv"]


@needs_blas
def test_the_first_choice_written_for_a_shape_stays(tuned, timed, monkeypatch):
    """Two processes measure one shape at once: the one that writes second takes the first
    one's choice, so that both run alike."""
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    tuning.conv_plan(*SHAPE)  # the other process, first
    tuning.forget()
    tuning._loaded[tuning.cache_file()] = {"conv": {}, "threads": {}, "grain": {}}  # read before
    timed.times = {ConvPlan(False, 1 << 21): 0.5}
    assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 18)
    assert timed.calls == 2
    assert list(tuning._read(tuning.cache_file())["conv"].values()) == [ConvPlan(False, 1 << 18)]


@needs_blas
def test_cnnlab_tune_measures_again_and_replaces_the_choice(tuned, timed):
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    tuning.conv_plan(*SHAPE)
    with tuning.remeasuring():
        timed.times = {ConvPlan(False, 1 << 21): 0.5}
        assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 21)
        assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 21)
    assert timed.calls == 2  # once again inside the block, not at every call
    assert list(tuning._read(tuning.cache_file())["conv"].values()) == [ConvPlan(False, 1 << 21)]


@needs_blas
def test_an_unwritable_folder_warns_once_and_tunes_in_memory(tuned, timed, monkeypatch):
    tuned.parent.joinpath("tuning").write_text("a file where the folder should be")
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    with pytest.warns(UserWarning, match="could not keep its tuning in .*CNNLAB_TUNE_DIR"):
        assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 18)
    assert not tuning.measurements[-1].kept
    other = (SHAPE[0], (3, 3, 32, 32), *SHAPE[2:])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tuning.conv_plan(*other)  # no second warning


def test_the_machine_key_holds_the_threads(tuned):
    before = parallel.num_threads()
    first = tuning.cache_file()
    parallel.set_num_threads(1 if before > 1 else 2)
    try:
        assert tuning.cache_file() != first
    finally:
        parallel.set_num_threads(before)
    assert tuning.cache_file() == first


# -- every candidate gives the plain numbers ----------------------------------------------------
CASES = [
    # (x shape, kernel shape, strides, padding): the book's CNN's convs, smaller batches
    ((5, 12, 12, 3), (3, 3, 3, 8), (1, 1), "same"),
    ((5, 12, 12, 16), (3, 3, 16, 8), (2, 2), "same"),
    ((5, 9, 10, 16), (3, 3, 16, 12), (1, 1), "same"),
    ((5, 9, 10, 4), (3, 3, 4, 6), (1, 1), "valid"),
    # the widths of cnnlab's tiles: 16, 32 and 48 filters (a 32-wide tile and a 16-wide one;
    # 6, 8 and 12 above take the masked one); windows of 27 values and of 144
    ((3, 12, 12, 3), (3, 3, 3, 16), (1, 1), "same"),
    ((3, 12, 12, 16), (3, 3, 16, 32), (2, 2), "same"),
    ((3, 9, 10, 16), (3, 3, 16, 48), (1, 1), "same"),
    # weights of a row of the window over half of L1 (48 KiB here): the direct convolution
    # sums a row or two of its window a call
    ((2, 7, 8, 64), (3, 3, 64, 40), (1, 1), "same"),
    ((2, 8, 8, 16), (3, 3, 16, 64), (2, 2), "same"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}s{c[2][0]}{c[3]}")
def test_every_candidate_gives_the_plain_forward_and_backward(case, dtype):
    x_shape, kernel_shape, strides, padding = case
    rng = np.random.default_rng(3)
    x = rng.normal(size=x_shape).astype(dtype)
    kernel = (rng.normal(size=kernel_shape) / 6).astype(dtype)
    bias = rng.normal(size=kernel_shape[3]).astype(dtype)
    wide = [a.astype(np.float64) for a in (x, kernel, bias)]
    y_ref, cache_ref = nn.conv2d_forward(*wide, strides, padding)
    dy = rng.normal(size=y_ref.shape)
    refs = (y_ref, *nn.conv2d_backward(dy, cache_ref))
    plans = [ConvPlan(False, c) for c in (1, *tuning.CHUNK_BYTES)]
    # products in calls of one row, a few rows (the last call shorter) and the tuner's sizes
    calls = [
        ConvPlan(False, c, macs) for c in (1, 1 << 20) for macs in (1, 1000, *tuning.GEMM_MACS)
    ]
    plans += calls
    if tuning.winograd.possible(kernel_shape, strides, dtype):
        plans += [ConvPlan(True, 1), ConvPlan(True, 1 << 20)]
        plans += [plan._replace(winograd=True) for plan in calls]
    plans += [
        plan._replace(products=way) for way in ("tiles", "direct") for plan in plans
        if not plan.gemm_macs
    ]  # fmt: skip
    tolerance = 1e-12 if dtype == np.float64 else 3e-5
    for plan in plans:
        y, cache = conv.conv2d_forward(x, kernel, bias, strides, padding, plan=plan)
        got = (y, *conv.conv2d_backward(dy.astype(dtype), cache, plan=plan))
        for value, ref in zip(got, refs, strict=True):
            assert value.dtype == dtype
            scale = max(1.0, np.abs(ref).max())
            assert np.abs(value - ref).max() <= tolerance * scale, plan


@needs_blas
@pytest.mark.parametrize("products", tuning.PRODUCTS)
def test_a_tuned_training_step_gives_the_untuned_numbers(tuned, timed, monkeypatch, products):
    """The book's CNN, one training step and a prediction at batch 32, tuned to plans other
    than the defaults (the smallest chunks, and Winograd where the default is im2col and the
    other way round, each way of multiplying; batch norm split at every size) and untuned: the
    same numbers to rounding."""
    import cnnlab

    def seconds(case) -> float:
        if isinstance(case, ConvPlan):
            fast = case.products == products and (case.winograd or case.chunk_bytes == 1 << 18)
            return 0.5 if fast else 1.0
        return 0.5 if case[1] else 1.0  # batch norm's grain: (values, split)

    timed.times = seconds
    choose = tuning._choose
    monkeypatch.setattr(tuning, "_choose", lambda seconds, default: choose(seconds, default)
        if isinstance(default, (str, int))  # threads mode and grain: as the tuner chooses
        else min(seconds, key=lambda p: (p.winograd == default.winograd, seconds[p])))  # fmt: skip

    def step():
        cnnlab.set_random_seed(0)
        model = zoo.cnn(input_shape=(16, 16, 3))
        model.compile(cnnlab.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32)
        model.train_on_batch(x, rng.integers(0, 10, 32))
        return model.get_weights(), model.predict(x, verbose=0)

    weights, predicted = step()
    convs = [m for m in tuning.measurements if isinstance(m.chosen, ConvPlan)]
    assert len(convs) == 4
    assert all(m.chosen.winograd != m.default.winograd for m in convs[::2])
    assert all(m.chosen != m.default and m.chosen.products == products for m in convs)
    [grain] = [m for m in tuning.measurements if m.shape == tuning.GRAIN_KEY]
    assert grain.chosen == tuning.GRAINS[0] != grain.default
    monkeypatch.setenv("CNNLAB_TUNE", "off")
    weights_off, predicted_off = step()
    for a, b in zip(weights, weights_off, strict=True):
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())
    assert np.abs(predicted - predicted_off).max() <= 1e-5


@needs_blas
def test_a_real_measurement_times_every_candidate(tuned):
    """Without made-up times: each candidate run and timed, the spread of its rounds known."""
    assert tuning.conv_plan(*SHAPE) in tuning.measurements[0].seconds
    [m] = tuning.measurements
    assert set(m.seconds) == set(tuning._candidates(*SHAPE[:5]))
    assert all(0 < t < 10 for t in m.seconds.values()) and m.noise >= 0
    assert m.kept == (m.shape in tuning._read(tuning.cache_file())["conv"])


@needs_blas
def test_measuring_waits_for_the_threads_another_caller_holds(tuned, timed):
    """Timed while another thread's op holds the workers, a trial would run on one thread and
    be kept for two: the default is used, nothing kept, and the shape measured later."""
    with parallel._using_workers:
        assert tuning.conv_plan(*SHAPE) == DEFAULT
    assert timed.calls == 0 and not tuned.exists()
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 18)


def test_noise_is_the_gap_between_a_candidates_two_best_rounds():
    """One slow round (another program's) is not noise: the best round it rests on repeated.
    Two rounds far apart at their best are; the largest gap over the candidates counts."""
    rounds = {"a": [1.0, 1.9, 1.05, 1.8, 1.7], "b": [2.0, 2.1, 2.04, 2.2, 3.0]}
    best, noise = tuning._best_and_noise(rounds)
    assert best == {"a": 1.0, "b": 2.0}
    assert noise == pytest.approx(0.05)
    rounds["b"] = [2.0, 2.6, 2.7, 2.8, 2.9]
    assert tuning._best_and_noise(rounds)[1] == pytest.approx(0.3)


@needs_blas
def test_a_disturbed_remeasurement_keeps_the_choice_kept(tuned, timed):
    timed.times = {ConvPlan(False, 1 << 18): 0.5}
    tuning.conv_plan(*SHAPE)
    timed.noise = 0.6
    with tuning.remeasuring():
        assert tuning.conv_plan(*SHAPE) == ConvPlan(False, 1 << 18)
    assert list(tuning._read(tuning.cache_file())["conv"].values()) == [ConvPlan(False, 1 << 18)]


def test_a_batch_is_measured_for_the_next_power_of_two_images():
    assert [tuning.batch_key(n) for n in (1, 2, 3, 16, 20, 32, 33, 64, 128, 50000)] == [
        1, 2, 4, 16, 32, 32, 64, 64, 64, 64
    ]  # fmt: skip


@needs_blas
def test_cnnlab_tune_prints_each_conv_shape_and_keeps_the_choices(tuned, timed):
    timed.times = lambda plan: 0.5 if isinstance(plan, ConvPlan) and plan.winograd else 1.0
    result = CliRunner().invoke(
        main, ["tune", "cnn", "--input-shape", "16,16,3", "--batch-size", "16"], prog_name="cnnlab"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| conv: dtype, images x H x W x C")
    # How the model uses the cores, measured once (training and inference take the choice),
    # here a tie: the default, cnnlab's threads.
    [threads] = [line for line in lines[2:-1] if "weights (layers" in line]
    assert threads.startswith("| float32 16x16x16x3: 199,338 weights (layers ")
    assert "| cnnlab | 1000.00 | cnnlab | 1000.00 | the default is the fastest |" in threads
    lines.remove(threads)
    # From what size batch norm splits over the threads, measured once: a tie, the default.
    [grain] = [line for line in lines[2:-1] if line.startswith(f"| {tuning.GRAIN_KEY} |")]
    assert "| slices of 524,288 values or more | 6000.00 |" in grain  # 6 sizes, 1 s each
    assert grain.endswith("| the default is within 5% of the fastest |")
    lines.remove(grain)
    # The book's CNN's four convs, each measured once (in training; inference takes the choice).
    assert [line.split(" | ")[0] for line in lines[2:-1]] == [
        "| float32 x16x16x16x3 k3x3x32 s1x1 p1,1,1,1",
        "| float32 x16x16x16x32 k3x3x32 s2x2 p0,1,0,1",
        "| float32 x16x8x8x32 k3x3x64 s1x1 p1,1,1,1",
        "| float32 x16x8x8x64 k3x3x64 s2x2 p0,1,0,1",
    ]
    # The first conv (3 channels) is im2col's by default, and Winograd's here: "2x as fast".
    assert "| Winograd, 1024 KiB chunks | 500.00 | im2col, 1024 KiB chunks | 1000.00 |" in lines[2]
    assert lines[2].endswith("| 2.00x as fast as the default |")
    assert all("| the default is " in line for line in lines[3:-1])
    assert lines[-1] == f"Kept in {tuning.cache_file()}"
    assert len(tuning._read(tuning.cache_file())["conv"]) == 4


def test_cnnlab_tune_refuses_when_tuning_is_off(tuned, monkeypatch):
    monkeypatch.setenv("CNNLAB_TUNE", "off")
    result = CliRunner().invoke(main, ["tune"], prog_name="cnnlab")
    assert result.exit_code == 2
    assert "CNNLAB_TUNE is off" in result.stderr
    assert not os.path.exists(tuned)


# -- how a model uses the cores ----------------------------------------------------------------
@pytest.fixture
def two_threads():
    before = parallel.num_threads()
    parallel.set_num_threads(2)
    yield
    parallel.set_num_threads(before)


def _mlp():
    import cnnlab

    cnnlab.set_random_seed(0)
    model = zoo.mlp(input_shape=(8, 8, 3))
    model.compile(cnnlab.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    return model


def test_inside_blas_threads_every_op_runs_whole_and_blas_is_not_held(two_threads):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads_now():  # NumPy's own BLAS (torch may bring another, which cnnlab leaves be)
        [n] = [lib["num_threads"] for lib in threadpool_info()
               if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]  # fmt: skip
        return n

    slices = []
    parallel.over_batch(lambda a, b: slices.append((a, b)), 10)
    assert sorted(slices) == [(0, 5), (5, 10)]
    slices.clear()
    with threadpool_limits(2, user_api="blas"), parallel.blas_threads():
        assert parallel.whole()
        parallel.over_batch(lambda a, b: slices.append((a, b)), 10)
        assert blas_threads_now() == 2  # as NumPy's BLAS was left, not held to one
        with parallel.one_blas_thread():
            assert blas_threads_now() == 1
    assert slices == [(0, 10)] and not parallel.whole()


@pytest.mark.usefixtures("two_threads")
def test_a_model_threads_mode_is_measured_once_kept_and_used(tuned, timed, monkeypatch):
    """The MLP measured faster with BLAS's threads: kept in the file, read back by a new
    process (here: forget()), and its steps run inside blas_threads()."""
    entered = []
    real = parallel.blas_threads

    def counted():
        entered.append(1)
        return real()

    monkeypatch.setattr(parallel, "blas_threads", counted)
    timed.modes = {"blas": 0.5}
    model = _mlp()
    x = np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    model.predict(x, batch_size=32, verbose=0)
    [m] = tuning.measurements
    assert (m.chosen, m.default) == ("blas", "cnnlab")
    assert m.shape.startswith("float32 32x8x8x3: ")
    data = json.loads(tuning.cache_file().read_text())
    assert data["threads"] == {m.shape: {"mode": "blas"}}
    entered.clear()
    model.train_on_batch(x, np.zeros(32, np.int64))  # the same batch size: no new measurement
    assert entered == [1] and len(tuning.measurements) == 1
    tuning.forget()
    timed.modes = {"cnnlab": 0.5}  # would choose otherwise, were it measured again
    other = _mlp()
    other.predict(x[:20], batch_size=20, verbose=0)  # 20 images: kept for 32
    assert len(tuning.measurements) == 1 and other._modes[(32, np.dtype("float32"))] == "blas"


@pytest.mark.usefixtures("two_threads")
def test_a_model_with_dense_layers_in_a_row_may_multiply_them_by_blas(tuned, timed, monkeypatch):
    """A model with a DenseChain also measures "cnnlab-blas" (cnnlab's threads, the chain's
    products by BLAS); a model without one does not. The choice is kept and read back, and
    the model's steps run inside parallel.blas_products()."""
    measured = []
    real = tuning._measure_modes
    monkeypatch.setattr(
        tuning, "_measure_modes", lambda modes, trial: measured.append(modes) or real(modes, trial)
    )
    timed.modes = {"cnnlab-blas": 0.5}
    model = _mlp()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 8, 8, 3)).astype(np.float32)
    seen, call = [], fusion.DenseChain.__call__

    def noting(self, *args, **kwargs):
        seen.append(parallel.by_blas())
        return call(self, *args, **kwargs)

    monkeypatch.setattr(fusion.DenseChain, "__call__", noting)
    model.predict(x, batch_size=16, verbose=0)
    assert measured == [["cnnlab", "blas", "cnnlab-blas"]] and seen == [True]
    [m] = tuning.measurements
    assert m.chosen == "cnnlab-blas" and not parallel.by_blas()
    assert tuning._read(tuning.cache_file())["threads"] == {m.shape: "cnnlab-blas"}
    conv = Sequential([layers.Input((8, 8, 3)), layers.Conv2D(4, 3), layers.Flatten(),
                       layers.Dense(3)])  # fmt: skip
    conv.predict(x, batch_size=16, verbose=0)
    assert measured[-1] == ["cnnlab", "blas"]


def test_a_tie_keeps_cnnlab_threads_and_one_thread_measures_nothing(tuned, timed, two_threads):
    model = _mlp()
    x = np.zeros((16, 8, 8, 3), np.float32)
    timed.modes = {"blas": 0.97}  # within 5 %
    model.predict(x, batch_size=16, verbose=0)
    assert tuning.measurements[-1].chosen == "cnnlab"
    parallel.set_num_threads(1)
    tuning.forget()
    assert tuning.threads_mode("any", lambda mode: None) == "cnnlab"
    assert len(tuning.measurements) == 1


def test_the_threads_modes_give_the_same_numbers(two_threads):
    """A training step and a prediction of the book's MLP and CNN in every mode: the same
    numbers to rounding (each op splits its work, or not, and multiplies by the tiles or by
    BLAS; the sums are the same)."""
    import cnnlab
    from cnnlab import backend

    def step(name, mode):
        cnnlab.set_random_seed(0)
        model = getattr(zoo, name)(input_shape=(16, 16, 3))
        model.compile(cnnlab.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        model._threads = lambda xs: mode
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32)
        model.train_on_batch(x, rng.integers(0, 10, 32))
        return model.get_weights(), model.predict(x, verbose=0)

    assert backend.fuses() and tuning.MODES[0] == "cnnlab"
    for name in ("mlp", "cnn"):
        w1, p1 = step(name, "cnnlab")
        for mode in tuning.MODES[1:]:
            w2, p2 = step(name, mode)
            for a, b in zip(w1, w2, strict=True):
                assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())
            assert np.abs(p1 - p2).max() <= 1e-5


@pytest.mark.usefixtures("two_threads")
def test_entries_that_are_not_threads_modes_are_dropped_and_conv_choices_kept(tuned, timed):
    timed.modes = {"blas": 0.5}
    tuning.threads_mode("a model", lambda mode: None)
    path = tuning.cache_file()
    data = json.loads(path.read_text())
    conv_entry = {"winograd": False, "chunk_bytes": 1 << 18, "gemm_macs": 0, "products": "blas"}
    for bad in ({"mode": "fast"}, {"mode": None}, "blas", [1]):
        path.write_text(
            json.dumps({**data, "threads": {"a model": bad}, "conv": {"c": conv_entry}})
        )
        kept = tuning._read(path)
        assert kept["threads"] == {} and kept["conv"] == {"c": ConvPlan(False, 1 << 18)}
    tuning.forget()
    timed.modes = {"blas": 0.5}
    assert tuning.threads_mode("a model", lambda mode: None) == "blas"  # measured anew
    data = json.loads(path.read_text())
    assert data["conv"] == {"c": conv_entry} and data["threads"] == {"a model": {"mode": "blas"}}


def test_measuring_the_threads_modes_changes_nothing_in_the_model(two_threads):
    """The trial runs the book's CNN (batch norm, dropout) at inference: its weights, moving
    averages and dropout's generator are as before."""
    import cnnlab

    cnnlab.set_random_seed(0)
    model = zoo.cnn(input_shape=(16, 16, 3))
    dropout = next(layer for layer in model.layers if type(layer).__name__ == "Dropout")
    before = [w.copy() for w in model.get_weights()], dropout.rng.bit_generator.state
    trial = model._threads_trial([(8, 16, 16, 3)], np.dtype("float32"))
    for mode in tuning.MODES:
        trial(mode)
    for a, b in zip(model.get_weights(), before[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert dropout.rng.bit_generator.state == before[1]


@pytest.mark.usefixtures("two_threads")
def test_batch_norm_grain_is_the_smallest_split_that_pays_kept_and_read_back(tuned, timed):
    """Split runs measured faster from 2 x 2**17 values on: the grain is 2**17 values a
    slice, kept in the file and read back by a new process; entries that are not grains are
    dropped."""
    from cnnlab.engine import batchnorm

    timed.times = lambda case: (0.5 if case[0] >= 2 << 17 else 2.0) if case[1] else 1.0
    assert tuning.batchnorm_grain(batchnorm.trial) == 1 << 17
    assert tuning.batchnorm_grain(batchnorm.trial) == 1 << 17
    assert timed.calls == 1
    [m] = tuning.measurements
    # whole below 2**18 values (1 s each, two sizes), split from there (0.5 s each, four)
    assert m.seconds[1 << 17] == 2 * 1.0 + 4 * 0.5
    assert m.seconds[1 << 15] == 2 * 2.0 + 4 * 0.5
    path = tuning.cache_file()
    data = json.loads(path.read_text())
    assert data["grain"] == {tuning.GRAIN_KEY: {"values": 1 << 17}}
    tuning.forget()
    assert tuning.batchnorm_grain(batchnorm.trial) == 1 << 17  # read back
    assert timed.calls == 1
    for bad in ({"values": 3}, {"values": True}, {"values": "many"}, [1 << 17]):
        path.write_text(json.dumps({**data, "grain": {tuning.GRAIN_KEY: bad}}))
        assert tuning._read(path)["grain"] == {}


@pytest.mark.usefixtures("two_threads")
def test_batch_norm_splits_over_the_threads_from_the_grain_on(tuned, monkeypatch):
    """The grain decides: 2 x 32 x 2**10 values split with a grain of 2**10 values a slice,
    and run whole with the default; the same numbers either way."""
    from cnnlab.engine import batchnorm

    splits = []
    over_batch = parallel.over_batch
    monkeypatch.setattr(parallel, "over_batch", lambda run, n, grain=1: splits.append(
        max(1, min(parallel.num_threads(), n // grain))) or over_batch(run, n, grain))  # fmt: skip
    x = np.random.default_rng(0).normal(size=(2 << 10, 32)).astype(np.float32)
    gamma, beta = np.ones(32, np.float32), np.zeros(32, np.float32)
    monkeypatch.setattr(tuning, "batchnorm_grain", lambda trial: tuning.DEFAULT_GRAIN)
    whole = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)[0]
    assert splits == [1]  # one hand-over: the slices meet for the sums
    splits.clear()
    monkeypatch.setattr(tuning, "batchnorm_grain", lambda trial: 32 << 10)
    split = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)[0]
    assert splits == [2]
    np.testing.assert_allclose(split, whole, rtol=1e-6, atol=1e-6)


def test_the_threads_modes_take_turns_so_that_one_slow_spell_does_not_decide(monkeypatch):
    """The machine slow while "cnnlab" has its first block: its second block still counts."""
    monkeypatch.setattr(tuning, "WARM_UP_SECONDS", 0.0)
    order: list[str] = []
    seconds = {"cnnlab": [0.004, 0.001], "blas": [0.002, 0.002]}  # by block

    def trial(mode: str) -> None:
        if not order or order[-1] != mode:
            order.append(mode)
        time.sleep(seconds[mode][order.count(mode) - 1])

    best, noise = tuning._measure_modes(["cnnlab", "blas"], trial)
    assert order == ["cnnlab", "blas"] * tuning.MODE_BLOCKS
    assert best["cnnlab"] < best["blas"]
    assert tuning._choose(best, "cnnlab") == "cnnlab"
