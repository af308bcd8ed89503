"""Hostile input and faults (issue 17): one test per case the review found, most severe first.
Nothing is lost, nothing is silently wrong, and every refusal is one clear line.

The fault tests run real processes: two claiming one run directory, SIGKILL while a checkpoint
is written, a file-size limit (``RLIMIT_FSIZE``) for a full disk. A read-only folder is
simulated (root writes through any permission bits).
"""

from __future__ import annotations

import errno
import io
import json
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import QUICK, invoke, one_error_line

import cnnlab
from cnnlab import arrays, files, layers, optimizers
from cnnlab.callbacks import Callback
from cnnlab.datasets import idx
from cnnlab.datasets.folder import image_folder
from cnnlab.engine import kernels
from cnnlab.model import Sequential
from cnnlab.runs import RunDirectory
from cnnlab.saving import load

LINUX = sys.platform.startswith("linux")

# The model and data of the process tests, run as they are by the parent and each child.
SETUP = textwrap.dedent(
    """
    import numpy as np
    import cnnlab
    from cnnlab import layers
    from cnnlab.model import Sequential

    def build(seed):
        cnnlab.set_random_seed(seed)
        model = Sequential([
            layers.Input(shape=(6, 6, 1)),
            layers.Conv2D(4, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(3, activation="softmax"),
        ])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=256)
    """
)
setup: dict = {}
exec(SETUP, setup)  # noqa: S102 - our own source, shared with the child processes
build, x_toy, y_toy = setup["build"], setup["x"], setup["y"]


def child(script: str, *args: str, **popen) -> subprocess.Popen:
    code = SETUP + textwrap.dedent(script)
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.rglob("*.tmp"))


def fit(model, run: RunDirectory, epochs: int, **kw):
    return model.fit(x_toy, y_toy, epochs=epochs, batch_size=32, verbose=0, callbacks=[run], **kw)


class EpochCounter(Callback):
    def __init__(self):
        super().__init__()
        self.begun = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.begun += 1


# == Mixed-up or lost work ====================================================================
CLAIM = """
    import sys, time
    from pathlib import Path
    from cnnlab.runs import RunDirectory
    out, seed, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    model = build(seed)
    while not go.exists():
        time.sleep(0.001)
    try:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                  callbacks=[RunDirectory(out, config={"seed": seed})])
    except Exception as err:
        print("refused", type(err).__name__, err)
    else:
        print("won", seed)
"""


@pytest.mark.parametrize("round_", range(3))
def test_1_two_processes_claiming_one_run_directory_exactly_one_wins(tmp_path, round_):
    out, go = tmp_path / "run", tmp_path / "go"
    racers = [child(CLAIM, out, seed, go) for seed in (1, 2)]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    results = [p.communicate(timeout=120)[0].split() for p in racers]
    won = [r for r in results if r and r[0] == "won"]
    refused = [" ".join(r) for r in results if r and r[0] == "refused"]
    assert len(won) == 1 and len(refused) == 1, results
    assert "is in use" in refused[0] or "already holds a run" in refused[0], refused
    seed = int(won[0][1])
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == seed
    model, _ = load(out / "model.cnnlab")
    alone = build(seed)
    alone.fit(x_toy, y_toy, epochs=3, batch_size=32, verbose=0)
    for mine, theirs in zip(model.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)  # the weights are the winner's


def test_1_a_second_run_in_the_same_process_is_refused_while_the_first_trains(tmp_path):
    out = tmp_path / "run"
    seen = []

    class SecondRun(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if not seen:
                with pytest.raises(BlockingIOError, match="is in use: another training run"):
                    fit(build(2), RunDirectory(out, resume=True), epochs=3)
                seen.append(epoch)

    build(1).fit(x_toy, y_toy, epochs=2, batch_size=32, verbose=0,
                 callbacks=[RunDirectory(out), SecondRun()])  # fmt: skip
    assert seen == [0]
    fit(build(1), RunDirectory(out, resume=True), epochs=3)  # the lock went with the first run


KILL_IN_CHECKPOINT = """
    import os, sys, time
    from pathlib import Path
    from cnnlab.runs import RunDirectory
    out, marker = Path(sys.argv[1]), Path(sys.argv[2])
    real_fsync, writes = os.fsync, []

    def fsync(fd):  # the third write of latest.cnnlab (after epochs 0 and 1) never ends
        if ".latest.cnnlab." in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == 3:
                marker.touch()
                time.sleep(600)
        real_fsync(fd)

    os.fsync = fsync
    build(0).fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[RunDirectory(out)])
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/fd")
def test_2_sigkill_while_a_checkpoint_is_written_leaves_no_orphan_after_resume(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "writing"
    process = child(KILL_IN_CHECKPOINT, out, marker)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), process.communicate()[1]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert temporaries(out) != []  # killed in the middle of the write, as intended
    _, extra = load(out / "checkpoints" / "latest.cnnlab")  # the last checkpoint is intact
    assert extra["training"]["epoch"] == 1

    fit(build(0), RunDirectory(out, resume=True), epochs=4)
    assert temporaries(out) == []
    resumed, _ = load(out / "model.cnnlab")
    alone = build(0)
    alone.fit(x_toy, y_toy, epochs=4, batch_size=32, verbose=0)
    for mine, theirs in zip(resumed.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_3_a_run_stopped_before_its_first_checkpoint_can_be_run_again(tmp_path):
    out = tmp_path / "run"
    fit(build(0), RunDirectory(out), epochs=2)
    reference = (out / "metrics.csv").read_text().splitlines()
    for name in ("checkpoints/latest.cnnlab", "checkpoints/best.cnnlab", "metrics.csv",
                 "model.cnnlab", "summary.json"):  # fmt: skip
        (out / name).unlink()  # as a run killed in its first epoch leaves it

    with pytest.raises(FileExistsError, match="stopped before its first checkpoint: run it again"):
        fit(build(0), RunDirectory(out), epochs=2)
    fit(build(0), RunDirectory(out, resume=True), epochs=2)
    again = (out / "metrics.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in again] == [r.rsplit(",", 1)[0] for r in reference]
    assert json.loads((out / "config.json").read_text())["resumed"][0]["epoch"] == 0


def test_3_resuming_a_folder_without_a_run_says_to_start_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no run .*Start a new run there instead"):
        fit(build(0), RunDirectory(tmp_path / "empty", resume=True), epochs=1)


def _unwritable(folder_name: str, monkeypatch) -> None:
    """Writing a file into any folder called ``folder_name`` fails as on a read-only disk."""
    real = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).name == folder_name:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_4_an_unwritable_checkpoints_folder_is_found_before_the_first_epoch(tmp_path, monkeypatch):
    out = tmp_path / "new" / "run"
    _unwritable("checkpoints", monkeypatch)
    counter = EpochCounter()
    with pytest.raises(PermissionError, match=r"Could not write .*latest.cnnlab \(Permission"):
        build(0).fit(x_toy, y_toy, epochs=2, verbose=0, callbacks=[RunDirectory(out), counter])
    assert counter.begun == 0
    assert not (tmp_path / "new").exists()  # nothing half written: the folder is as it was


def test_4_resuming_into_an_unwritable_checkpoints_folder_changes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(build(0), RunDirectory(out), epochs=1)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _unwritable("checkpoints", monkeypatch)
    counter = EpochCounter()
    with pytest.raises(PermissionError, match="Could not write"):
        build(0).fit(x_toy, y_toy, epochs=3, batch_size=32, verbose=0,
                     callbacks=[RunDirectory(out, resume=True), counter])  # fmt: skip
    assert counter.begun == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


FULL_DISK = """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    from cnnlab.cli import main
    main(sys.argv[2:])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_4_a_full_disk_is_found_before_the_first_epoch_and_nothing_is_left(tmp_path):
    out = tmp_path / "run"
    process = child(FULL_DISK, 64_000, "train", "--model", "mlp", *QUICK, "--out", out)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "Could not write" in stderr and "latest.cnnlab" in stderr, stderr
    assert "was not created" in stderr
    assert not out.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_4_resuming_on_a_full_disk_changes_nothing(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "--model", "mlp", *QUICK, "--epochs", "1", "--out", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    process = child(FULL_DISK, 64_000, "train", "--resume", out, "--epochs", "3")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Could not write" in stderr and "it was left as it was" in stderr, stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_5_after_a_divergence_resume_with_a_lower_learning_rate(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--model", "mlp", *QUICK, "--optimizer", "sgd", "--lr", "1000",
                    "--out", out)  # fmt: skip
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]  # after the guard's diagnosis
    assert last.startswith("Error: training diverged")
    assert last.endswith(f"lower learning rate: cnnlab train --resume {out} --lr 100")

    result = invoke("train", "--resume", out, "--lr", "0.01", "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.01
    assert config["compile"]["optimizer"]["learning_rate"] == 0.01
    model, _ = load(out / "model.cnnlab")
    assert model.optimizer.learning_rate == 0.01
    assert all(np.isfinite(w).all() for w in model.get_weights())


# == Memory exhausted by small inputs =========================================================
def _saved_model(tmp_path: Path) -> Path:
    path = tmp_path / "small.cnnlab"
    build(0).save(path)
    return path


def header_of(path: Path) -> dict:
    """The JSON header of a model file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(np.load(io.BytesIO(archive.read("__cnnlab__.npy"))).tobytes())


def rewrite(path: Path, out: Path, header: dict | None = None, members=None) -> Path:
    """A copy at ``out`` of the model file at ``path``, with another header and members."""
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    if header is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        contents["__cnnlab__.npy"] = buffer.getvalue()
    contents.update(members or {})
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return out


def _rewrite(path: Path, edit_header=None, members: dict[str, bytes] | None = None) -> Path:
    """A copy of the model file at ``path`` with its header edited and members replaced."""
    header = None
    if edit_header is not None:
        header = header_of(path)
        edit_header(header)
    return rewrite(path, path.with_name("edited.cnnlab"), header, members)


MAX_MEGABYTES = 64  # what reading a file of a few kilobytes may allocate


def within_memory(function, *args):
    """Call ``function``; fail if it allocated more than :data:`MAX_MEGABYTES` (NumPy's and
    Python's allocations, as tracemalloc sees them), whether it returned or raised."""
    tracemalloc.start()
    try:
        return function(*args)
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert peak < MAX_MEGABYTES, f"{function.__name__} allocated {peak:.0f} MiB"


def _with_weight_header(path: Path, shape: tuple[int, ...], data: bytes = b"") -> Path:
    """A copy of a model file whose first weight declares ``shape`` and holds ``data``."""
    with zipfile.ZipFile(path) as archive:
        weight = next(n for n in archive.namelist() if n.startswith("weights/"))
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return _rewrite(path, members={weight: buffer.getvalue() + data})


def _dense_units(units):
    def edit(header):
        for layer in header["model"]["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["units"] = units

    return edit


def _input_shape(shape):
    def edit(header):
        header["model"]["input_shape"] = shape

    return edit


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_dense_units(10**9), "asks Dense 'dense"),
        (_input_shape([4000, 4000, 3]), "(63936016, 32)"),
    ],
    ids=["dense-1e9-units", "input-4000x4000x3"],
)
def test_6_a_header_asking_for_more_weights_than_the_file_holds_is_refused(
    tmp_path, edit, expected
):
    path = _rewrite(_saved_model(tmp_path), edit)
    with pytest.raises(ValueError, match=str(path)) as caught:
        within_memory(load, path)
    assert expected in str(caught.value) and "more than the file holds" in str(caught.value)


def test_6_an_array_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    path = _with_weight_header(_saved_model(tmp_path), (10**6, 10**6))
    with pytest.raises(ValueError, match=r"declares 4,000,000,000,000 bytes .*more than"):
        within_memory(load, path)


def test_6_an_array_declaring_more_than_it_holds_is_refused(tmp_path):
    path = _with_weight_header(_saved_model(tmp_path), (1000, 1000), bytes(16))
    with pytest.raises(ValueError, match=r"declares shape \(1000, 1000\) .* but holds 16"):
        load(path)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "pictures"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("size", ["20000", "99999999999", "0", "-3"])
def test_7_an_image_size_beyond_the_bound_is_a_usage_error(small_folder, size):
    result = invoke("train", "--dataset", small_folder, "--image-size", size, "--quiet")
    assert result.exit_code == 2
    assert "--image-size" in one_error_line(result)


def test_7_a_folder_decoding_to_more_than_the_bound_is_refused(small_folder, monkeypatch):
    from cnnlab.datasets import folder

    monkeypatch.setattr(folder, "MAX_BYTES", 8 * 8 * 3 * 5)  # five of the twelve images
    with pytest.raises(ValueError, match=r"decode to more than .*pass a smaller image_size"):
        image_folder(small_folder)


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk declaring ``width x height``, and no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [15_000, 10_000, 8_000], ids=["225Mpx", "100Mpx", "64Mpx"])
def test_8_a_decompression_bomb_is_refused_naming_the_file(small_folder, tmp_path, side):
    import shutil

    root = tmp_path / "bombed"
    shutil.copytree(small_folder, root)
    bomb = root / "train" / "cat" / "bomb.png"
    bomb.write_bytes(_png_header(side, side))
    with _no_warnings(), pytest.raises(ValueError, match=str(bomb)):
        image_folder(root)


class _no_warnings:
    """Fails the test when the block warns (Pillow's raw DecompressionBombWarning)."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(None, None, None)
        assert not self.caught, [str(w.message) for w in self.caught]
        return False


def test_8_an_image_file_beyond_the_size_bound_is_refused_before_reading(
    small_folder, tmp_path, monkeypatch
):
    import shutil

    from cnnlab.datasets import images

    root = tmp_path / "large"
    shutil.copytree(small_folder, root)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    with pytest.raises(ValueError, match=r"\.png is .* MiB; cnnlab reads image files of up to"):
        image_folder(root)


def test_8_an_idx_file_that_gunzips_to_more_than_the_bound_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    header = b"\x00\x00\x08\x01" + struct.pack(">I", 10_000)
    path.write_bytes(zlib.compress(header + bytes(10_000), wbits=31))
    monkeypatch.setattr(idx, "MAX_BYTES", 5_000)
    with pytest.raises(ValueError, match=r"unpacks to more than 5,000 bytes"):
        idx.read_idx(path)


# == Silently wrong results ===================================================================
@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), "must be finite"),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.inf, x), "must be finite"),
        (lambda x: np.full(x.shape, None, dtype=object), "Python objects"),
    ],
    ids=["nan", "inf", "none"],
)
def test_9_fit_evaluate_and_predict_refuse_non_finite_or_non_numeric_x(make, expected):
    model, bad = build(0), make(x_toy.copy())
    for call in (
        lambda: model.fit(bad, y_toy, epochs=1, verbose=0),
        lambda: model.evaluate(bad, y_toy, verbose=0),
        lambda: model.predict(bad, verbose=0),
    ):
        with pytest.raises(ValueError, match=expected):
            call()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, "both infinities"])
def test_9_the_finite_check_finds_every_nan_and_inf_in_any_layout(dtype, layout, bad):
    x = np.linspace(-1, 1, 60, dtype=dtype).reshape(6, 10)
    if bad == "both infinities":  # inf + (-inf) is NaN in a sum; each square is +inf
        x[2, 3], x[4, 1] = np.inf, -np.inf
    else:
        x[2, 3] = bad
    x = x if layout == "contiguous" else x.T
    first = (2, 3) if layout == "contiguous" else (1, 4) if bad == "both infinities" else (3, 2)
    with pytest.raises(
        ValueError, match=rf"x must be finite, got .* at index {re.escape(str(first))}"
    ):
        arrays.finite(x, "x")


@pytest.mark.parametrize(
    "dtype, huge", [(np.float16, 300.0), (np.float32, 1e30), (np.float64, 1e200)]
)
def test_9_the_finite_check_accepts_finite_values_whose_squares_overflow(dtype, huge):
    x = np.full((4, 5), huge, dtype=dtype)
    x[1, 2] = -huge
    assert np.isinf(np.dot(x.reshape(-1), x.reshape(-1)))  # a sum of squares cannot say
    transposed = x.T
    assert arrays.finite(x, "x") is x
    assert arrays.finite(transposed, "x") is transposed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_9_the_compiled_pass_finds_a_nan_or_inf_at_every_place_of_every_length(dtype):
    """The pass over contiguous floats adds ``0 * v`` in vector lanes: a bad value in any lane
    or in the tail after the last whole vector is found; the largest finite values are not
    mistaken for it."""
    for size in range(1, 70):
        values = np.full(size, np.finfo(dtype).max, dtype)
        values[::2] *= -1
        assert kernels.zeros_if_finite(values) == 0
        for at in range(size):
            for bad in (np.nan, np.inf, -np.inf):
                spoiled = values.copy()
                spoiled[at] = bad
                assert np.isnan(kernels.zeros_if_finite(spoiled)), (size, at, bad)


def test_9_the_finite_check_passes_an_empty_array_and_integers_through():
    empty, ints = np.zeros((0, 3), np.float32), np.arange(6).reshape(2, 3)
    assert arrays.finite(empty, "x") is empty
    assert arrays.finite(ints, "x") is ints


def test_9_a_nan_learning_rate_set_after_compile_is_refused():
    model = build(0)
    with pytest.raises(ValueError, match="learning_rate"):
        model.optimizer.learning_rate = float("nan")


def test_9_fit_itself_stops_a_diverging_run_and_keeps_finite_weights(capsys):
    model = build(0)
    model.compile(optimizers.SGD(learning_rate=900.0), "sparse_categorical_crossentropy")
    history = model.fit(x_toy * 1e3, y_toy, epochs=3, batch_size=32, verbose=2)
    assert history.loop.status == "diverged"
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert "layer" in capsys.readouterr().err


def test_10_set_weights_refuses_nan_and_changes_nothing():
    model = build(0)
    before = model.get_weights()
    poisoned = [w.copy() for w in before]
    poisoned[-1][0] = np.nan
    with pytest.raises(ValueError, match=r"weight 'bias' of .* must be finite"):
        model.set_weights(poisoned)
    for now, then in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(now, then)


def test_10_a_model_file_with_nan_weights_is_refused(tmp_path):
    path = _saved_model(tmp_path)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.startswith("weights/"))
        weight = np.load(io.BytesIO(archive.read(name)))
    weight.flat[0] = np.nan
    buffer = io.BytesIO()
    np.save(buffer, weight)
    path = _rewrite(path, members={name: buffer.getvalue()})
    with pytest.raises(ValueError, match=rf"{path}.*must be finite"):
        load(path)


def test_11_a_folder_of_one_class_is_refused(small_folder, tmp_path):
    import shutil

    root = tmp_path / "one"
    shutil.copytree(small_folder, root)
    for split in ("train", "test"):
        shutil.rmtree(root / split / "dog")
    with pytest.raises(ValueError, match="a classifier needs at least two"):
        image_folder(root)


def test_11_an_empty_class_folder_is_refused(small_folder, tmp_path):
    import shutil

    root = tmp_path / "empty"
    shutil.copytree(small_folder, root)
    (root / "train" / "bird").mkdir()
    with pytest.raises(ValueError, match=r"class folders with no image under train/: \['bird'\]"):
        image_folder(root)


def test_11_fractional_labels_are_refused():
    with pytest.raises(ValueError, match="expects whole-number class labels, got 0.5"):
        build(0).fit(x_toy, np.full(len(x_toy), 0.5), epochs=1, verbose=0)


@pytest.mark.parametrize(
    ("loss", "labels", "message"),
    [
        ("sparse_categorical_crossentropy", np.full(8, 3), r"labels in \[0, 3\), got .* 3 to 3"),
        ("sparse_categorical_crossentropy", np.full(8, -1), r"labels in \[0, 3\)"),
        ("sparse_categorical_crossentropy", np.zeros(7, int), r"\(8,\), got shape \(7,\)|8 and 7"),
        ("categorical_crossentropy", np.eye(4)[np.zeros(8, int)], r"shape \(8, 3\), got shape"),
    ],
)
@pytest.mark.parametrize("step", ["train_on_batch", "test_on_batch", "fit", "evaluate"])
def test_11_labels_the_loss_refuses_leave_the_model_as_it_was(step, loss, labels, message):
    """The labels are checked before the step runs: its forward pass would move batch norm's
    moving averages, and a step that fails must change nothing."""
    cnnlab.set_random_seed(0)
    model = Sequential([
        layers.Input(shape=(4,)), layers.Dense(5), layers.BatchNormalization(),
        layers.Dense(3, activation="softmax"),
    ])  # fmt: skip
    model.compile("adam", loss)
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    call = getattr(model, step)
    with pytest.raises(ValueError, match=message):
        call(x, labels, verbose=0) if step in ("fit", "evaluate") else call(x, labels)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(new, old)
    assert model.optimizer.iterations == 0


@pytest.mark.parametrize("lr", ["inf", "1e300", "nan", "-1", "0"])
def test_12_a_learning_rate_that_is_not_a_sane_number_is_a_usage_error(lr):
    result = invoke("train", "--model", "mlp", *QUICK, "--lr", lr)
    assert result.exit_code == 2
    assert "'--lr'" in one_error_line(result)


@pytest.mark.parametrize("lr", [float("inf"), 1e300, float("nan"), -1.0, 0.0, "0.1"])
def test_12_optimizers_refuse_a_learning_rate_that_is_not_a_sane_number(lr):
    for optimizer in (optimizers.SGD, optimizers.Adam):
        with pytest.raises((ValueError, TypeError), match="learning_rate"):
            optimizer(learning_rate=lr)


def test_13_image_size_with_a_named_dataset_is_a_usage_error():
    result = invoke("train", *QUICK, "--image-size", "16")
    assert result.exit_code == 2
    assert "--image-size" in one_error_line(result)


def test_13_show_image_on_a_model_without_convolutions_is_a_usage_error(tmp_path):
    out = tmp_path / "mlp"
    assert invoke("train", "--model", "mlp", *QUICK, "--out", out).exit_code == 0
    picture = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(picture)
    result = invoke("show", out, "--image", picture, "--out", tmp_path / "pictures")
    assert result.exit_code == 2
    assert "--image" in one_error_line(result)


# == Messages that are not messages ===========================================================
def test_14_a_config_whose_layers_are_not_a_list_gets_a_sentence(tmp_path):
    config = tmp_path / "model.json"
    config.write_text(json.dumps({"layers": "notalist"}))
    result = invoke("train", "--model", config, *QUICK)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"{config}: a model's config must hold a list of 'layers', got str" in line


def test_14_a_header_model_that_is_not_a_dict_gets_a_sentence(tmp_path):
    path = _rewrite(_saved_model(tmp_path), lambda h: h.update(model="notadict"))
    with pytest.raises(ValueError, match=rf"{path} is damaged: its header's 'model' is not"):
        load(path)


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda m: m.fit(x_toy, np.array(["cat"] * len(x_toy)), verbose=0), "strings"),
        (lambda m: m.predict(x_toy, batch_size=0), "batch_size"),
        (lambda m: m.predict(np.full(x_toy.shape, "a"), verbose=0), "strings"),
        (lambda m: m.set_weights(["w"] * len(m.get_weights())), "strings"),
    ],
    ids=["string-labels", "batch-size-0", "string-inputs", "string-weights"],
)
def test_14_bad_arguments_get_a_value_error_naming_them(call, expected):
    with pytest.raises(ValueError, match=expected) as caught:
        call(build(0))
    assert "ufunc" not in str(caught.value) and "range()" not in str(caught.value)


@pytest.mark.parametrize("content", ["random", "pickle", "object-array"])
def test_15_a_foreign_model_file_never_gets_advice_to_unpickle_it(tmp_path, content):
    import pickle

    path = tmp_path / "model.cnnlab"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    else:
        np.savez(path.open("wb"), __cnnlab__=np.array([None, {"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="is not a cnnlab model file") as caught:
        load(path)
    message = str(caught.value)
    assert "allow_pickle" not in message and "pickle.load" not in message
    if content != "object-array":
        assert "pickled" not in message


def test_16_a_json_error_in_a_model_config_names_the_file(tmp_path):
    config = tmp_path / "model.json"
    config.write_text('{"class_name": "Sequential",\n "config": {,}}')
    result = invoke("train", "--model", config, *QUICK)
    assert result.exit_code == 1
    assert f"{config} is not valid JSON" in one_error_line(result)
    assert "line 2" in one_error_line(result)


def test_16_a_json_error_in_a_run_config_names_the_file(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", "--model", "mlp", *QUICK, "--epochs", "1", "--out", out).exit_code == 0
    (out / "config.json").write_text("{not json")
    result = invoke("train", "--resume", out)
    assert result.exit_code == 1
    assert f"{out / 'config.json'} is not valid JSON" in one_error_line(result)


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--lr", "nan", "'--lr': 'nan' is not a finite number"),
        ("--clipnorm", "nan", "'--clipnorm': 'nan' is not a finite number"),
        ("--validation-split", "nan", "'--validation-split': 'nan' is not a finite number"),
        ("--validation-split", "1", "'--validation-split': '1' is not in the range 0<=x<1"),
    ],
)
def test_17_nan_options_are_usage_errors_naming_the_option(option, value, expected):
    result = invoke("train", "--model", "mlp", *QUICK, option, value)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert expected in line and "learning_rate" not in line
