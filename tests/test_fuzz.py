"""Property tests and a bounded fuzz run (issue 17), with hypothesis.

- Random layer stacks, argument values and arrays: each either works or raises a ValueError
  or TypeError whose message names the argument (or the layer), never another exception.
- Every file parser fed mutated real files (model file, checkpoint, CIFAR-10 binary, idx,
  image folder, tarball): a ValueError and nothing else, and no allocation above a bound.

CI runs the "ci" profile (a fixed seed, a few dozen examples per test). A longer run:
``HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py`` (see the README's Tests section).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_hostile import MAX_MEGABYTES, header_of, rewrite, within_memory

import cnnlab
from cnnlab import layers
from cnnlab.datasets import cifar, idx
from cnnlab.datasets.folder import image_folder
from cnnlab.model import Sequential
from cnnlab.runs import RunDirectory
from cnnlab.saving import load

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# == Random layer stacks and arguments ========================================================
bad_ints = st.sampled_from([0, -1, -(2**40), 2.5, "3", None, True, float("nan"), [2, 2, 2]])
sizes = st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)), bad_ints)
rates = st.one_of(
    st.floats(0, 0.9), st.sampled_from([-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", None])
)
paddings = st.sampled_from(["valid", "same", "SAME", "full", None, 1])
activations = st.sampled_from(["relu", "softmax", "linear", None, "bogus", 3])
counts = st.one_of(st.integers(1, 6), bad_ints)

LAYERS = {
    "Conv2D": st.fixed_dictionaries(
        {"filters": counts, "kernel_size": sizes},
        optional={"strides": sizes, "padding": paddings, "activation": activations},
    ),
    "MaxPooling2D": st.fixed_dictionaries(
        {}, optional={"pool_size": sizes, "strides": sizes, "padding": paddings}
    ),
    "AveragePooling2D": st.fixed_dictionaries(
        {}, optional={"pool_size": sizes, "strides": sizes, "padding": paddings}
    ),
    "BatchNormalization": st.fixed_dictionaries(
        {}, optional={"momentum": rates, "epsilon": st.sampled_from([1e-3, 0.0, -1.0, "x"])}
    ),
    "Dropout": st.fixed_dictionaries({"rate": rates}),
    "Flatten": st.just({}),
    "Dense": st.fixed_dictionaries({"units": counts}, optional={"activation": activations}),
}
layer_specs = st.sampled_from(sorted(LAYERS)).flatmap(
    lambda name: st.tuples(st.just(name), LAYERS[name])
)


@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 3)),
    specs=st.lists(layer_specs, max_size=5),
    batch=st.integers(1, 3),
)
def test_random_layer_stacks_work_or_name_the_argument_or_layer(shape, specs, batch):
    built = []
    for name, kwargs in specs:
        try:
            built.append(getattr(layers, name)(**kwargs))
        except (ValueError, TypeError) as err:
            assert any(f"`{arg}`" in str(err) for arg in kwargs), (name, kwargs, err)
            return
        except Exception as err:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"{name}({kwargs}) raised {type(err).__name__}: {err}")
    try:
        model = Sequential([layers.Input(shape=shape), *built])
    except (ValueError, TypeError) as err:
        assert any(layer.name in str(err) for layer in built), (specs, err)
        return
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == (batch, *model.output_shape[1:])
    assert np.isfinite(y).all()


arrays = st.one_of(
    st.builds(
        lambda shape, kind: np.zeros(shape, dtype=kind),
        st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple),
        st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64"]),
    ),
    st.builds(lambda shape: np.full(shape, "a"), st.lists(st.integers(1, 3), max_size=3)),
    st.builds(lambda shape: np.full(shape, None), st.lists(st.integers(1, 3), max_size=3)),
    st.sampled_from([None, 3, "x", [[1, 2], [3]], float("nan")]),
    st.builds(
        lambda n, bad: np.where(np.arange(n * 64).reshape(n, 8, 8, 1) == 5, bad, 0.5),
        st.integers(1, 3),
        st.sampled_from([np.nan, np.inf, -np.inf]),
    ),
)


@pytest.fixture(scope="module")
def small_cnn() -> Sequential:
    cnnlab.set_random_seed(0)
    model = Sequential(
        [
            layers.Input(shape=(8, 8, 1)),
            layers.Conv2D(2, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@given(x=arrays, y=st.one_of(arrays, st.just(np.array([0, 1, 2]))), batch_size=counts)
def test_random_arrays_into_fit_evaluate_predict_work_or_name_the_argument(
    small_cnn, x, y, batch_size
):
    for call, names in (
        (lambda: small_cnn.predict(x, batch_size=batch_size, verbose=0), "x batch_size"),
        (lambda: small_cnn.evaluate(x, y, batch_size=batch_size, verbose=0), "x y batch_size"),
        (lambda: small_cnn.fit(x, y, batch_size=batch_size, epochs=1, verbose=0), "x y batch_size"),
    ):
        try:
            call()
        except (ValueError, TypeError) as err:
            message = str(err)
            assert any(f"`{name}`" in message for name in names.split()), message
            assert "ufunc" not in message and "could not convert" not in message, message


# == Mutated files ============================================================================
def mutations(data: bytes):
    """Strategies of damaged copies of ``data``: flipped bits, overwritten or inserted bytes,
    cut at a random length, a chunk repeated."""
    n = len(data)
    position = st.integers(0, n - 1)

    def flip(args):
        out = bytearray(data)
        for i, bit in args:
            out[i] ^= 1 << bit
        return bytes(out)

    def overwrite(args):
        i, chunk = args
        return data[:i] + chunk + data[i + len(chunk) :]

    return st.one_of(
        st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=8).map(flip),
        st.tuples(position, st.binary(min_size=1, max_size=16)).map(overwrite),
        st.tuples(position, st.binary(min_size=1, max_size=16)).map(
            lambda a: data[: a[0]] + a[1] + data[a[0] :]
        ),
        position.map(lambda i: data[:i]),
        st.tuples(position, st.integers(1, 64)).map(
            lambda a: data[: a[0]] + data[a[0] : a[0] + a[1]] * 50 + data[a[0] :]
        ),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def json_paths(value, path=()):
    """Every path into a JSON value, as tuples of keys and indices."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from json_paths(item, (*path, i))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


@pytest.fixture(scope="module")
def run_with_checkpoint(tmp_path_factory, small_cnn) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "run"
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.arange(32) % 3
    small_cnn.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[RunDirectory(out)])
    return out


@pytest.fixture(scope="module")
def model_file(run_with_checkpoint) -> Path:
    return run_with_checkpoint / "model.cnnlab"


@given(st.data())
def test_mutated_model_files_give_a_value_error_and_nothing_else(model_file, tmp_path, data):
    damaged = data.draw(mutations(model_file.read_bytes()))
    path = tmp_path / "damaged.cnnlab"
    path.write_bytes(damaged)
    try:
        within_memory(load, path)
    except ValueError as err:
        assert str(path) in str(err)


@given(st.data())
def test_model_files_with_mutated_headers_give_a_value_error_and_nothing_else(
    model_file, tmp_path, data
):
    header = header_of(model_file)
    where = data.draw(st.sampled_from(list(json_paths(header))))
    new = data.draw(json_values)
    path = rewrite(model_file, tmp_path / "edited.cnnlab", replaced(header, where, new))
    try:
        within_memory(load, path)
    except ValueError as err:
        assert str(path) in str(err)


@given(st.data())
def test_resuming_from_a_mutated_checkpoint_gives_a_value_error_and_nothing_else(
    run_with_checkpoint, small_cnn, tmp_path_factory, data
):
    import shutil

    out = tmp_path_factory.mktemp("resume") / "run"
    shutil.copytree(run_with_checkpoint, out)
    latest = out / "checkpoints" / "latest.cnnlab"
    header = header_of(latest)
    paths = list(json_paths(header))
    training = [p for p in paths if p[:2] == ("extra", "training")]
    where = data.draw(st.sampled_from(training) | st.sampled_from(paths))
    rewrite(latest, latest, replaced(header, where, data.draw(json_values)))
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
    y = np.arange(32) % 3
    try:
        small_cnn.fit(x, y, epochs=2, batch_size=16, verbose=0,
                      callbacks=[RunDirectory(out, resume=True)])  # fmt: skip
    except ValueError as err:
        assert str(latest) in str(err), err


def _cifar_batch(records: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=(records, 1), dtype=np.uint8)
    pixels = rng.integers(0, 256, size=(records, cifar.RECORD_BYTES - 1), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes()


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory) -> Path:
    """A small tar.gz in the official layout (cifar-10-batches-bin/, 3 images a batch)."""
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-binary.tar.gz"
    meta = "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                      "ship", "truck"]).encode() + b"\n"  # fmt: skip
    members = {cifar.META: meta}
    for i, name in enumerate((*cifar.TRAIN_BATCHES, cifar.TEST_BATCH)):
        members[name] = _cifar_batch(3, i)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def _read_cifar(path: Path):
    return cifar._to_dataset(cifar._read_archive(path), str(path))


def test_the_cifar_archive_fixture_reads(cifar_archive):
    data = _read_cifar(cifar_archive)
    assert data.train[0].shape == (15, 32, 32, 3) and data.test[0].shape == (3, 32, 32, 3)


@given(st.data())
def test_mutated_cifar_archives_give_a_value_error_and_nothing_else(cifar_archive, tmp_path, data):
    path = tmp_path / "cifar-10-binary.tar.gz"
    path.write_bytes(data.draw(mutations(cifar_archive.read_bytes())))
    try:
        within_memory(_read_cifar, path)
    except ValueError as err:
        assert str(path) in str(err)


@given(st.data())
def test_mutated_cifar_batches_give_a_value_error_and_nothing_else(data):
    batch = data.draw(mutations(_cifar_batch(4, 0)))
    try:
        x, y = within_memory(cifar.parse_batch, batch, "data_batch_1.bin")
    except ValueError as err:
        assert "data_batch_1.bin" in str(err)
    else:
        assert x.shape == (len(batch) // cifar.RECORD_BYTES, 32, 32, 3) and len(y) == len(x)


def _idx_images(count: int = 5) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    return b"\x00\x00\x08\x03" + np.array([count, 28, 28], ">u4").tobytes() + pixels.tobytes()


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gzipped"])
@given(st.data())
def test_mutated_idx_files_give_a_value_error_and_nothing_else(tmp_path, gzipped, data):
    original = gzip.compress(_idx_images(), mtime=0) if gzipped else _idx_images()
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gzipped else ""))
    path.write_bytes(data.draw(mutations(original)))
    try:
        array = within_memory(idx.read_idx, path)
    except ValueError as err:
        assert str(path) in str(err)
    else:
        assert array.size * array.itemsize <= 2 * len(_idx_images())


@pytest.fixture(scope="module")
def folder_archive(tmp_path_factory) -> Path:
    """A tar.gz of train/<class>/ and test/<class>/ with PNG and JPEG images."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    path = root / "pictures.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for name in ("cat", "dog"):
                for i, kind in enumerate(("PNG", "JPEG")):
                    buffer = io.BytesIO()
                    pixels = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(buffer, kind)
                    info = tarfile.TarInfo(f"pictures/{split}/{name}/{i}.{kind.lower()}")
                    info.size = buffer.tell()
                    tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def test_the_folder_archive_fixture_reads(folder_archive):
    data = image_folder(folder_archive)
    assert data.train[0].shape == (4, 6, 6, 3) and data.class_names == ["cat", "dog"]


@given(st.data())
def test_mutated_image_folder_archives_give_a_value_error_and_nothing_else(
    folder_archive, tmp_path, data
):
    path = tmp_path / "pictures.tar.gz"
    path.write_bytes(data.draw(mutations(folder_archive.read_bytes())))
    try:
        within_memory(image_folder, path)
    except ValueError as err:
        assert str(path) in str(err)


@given(st.data())
def test_mutated_images_in_a_folder_give_a_value_error_and_nothing_else(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    kind = data.draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]))
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            pixels = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"0.{kind.lower()}", kind)
    victim = root / "train" / "cat" / f"0.{kind.lower()}"
    victim.write_bytes(data.draw(mutations(victim.read_bytes())))
    try:
        within_memory(image_folder, root, (6, 6))
    except ValueError as err:
        assert str(victim) in str(err) or str(root) in str(err), err


def test_fuzz_bound_is_meaningful():
    """The memory bound catches what it is meant to catch."""
    with pytest.raises(AssertionError, match="allocated"):
        within_memory(np.ones, (MAX_MEGABYTES * 2**20 // 8 + 2**20,))
