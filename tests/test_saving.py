"""Saving and loading models: exact round trips, no pickle, clear errors, atomic writes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

import cnnlab
from cnnlab import layers, optimizers
from cnnlab.model import Sequential
from cnnlab.saving import load, load_model, save_model


def make_model() -> Sequential:
    """Every kind of state: conv and dense weights, batch-norm moving statistics, a dropout
    generator, and Adam moments."""
    return Sequential(
        [
            layers.Input(shape=(6, 6, 2)),
            layers.Conv2D(3, 3, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(4, activation="softmax"),
        ],
        name="tiny",
    )


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((8, 6, 6, 2)).astype(np.float32), rng.integers(0, 4, 8)


@pytest.fixture
def trained(data):
    cnnlab.set_random_seed(0)
    model = make_model()
    model.compile(
        optimizer=optimizers.Adam(learning_rate=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    for _ in range(2):
        model.train_on_batch(*data)
    return model


@pytest.fixture
def saved(tmp_path, trained):
    path = tmp_path / "model.cnnlab"
    trained.save(path)
    return path


def test_round_trip_gives_identical_predictions_and_weights(trained, saved, data):
    loaded = load_model(saved)
    assert loaded.name == "tiny"
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in trained.layers]
    assert [layer.get_config() for layer in loaded.layers] == [
        layer.get_config() for layer in trained.layers
    ]
    for a, b in zip(trained.get_weights(), loaded.get_weights(), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(data[0]), trained.predict(data[0]))


def test_round_trip_keeps_the_compile_config_and_optimizer_state(trained, saved):
    loaded = load_model(saved)
    assert isinstance(loaded.optimizer, optimizers.Adam)
    assert loaded.optimizer.get_config() == trained.optimizer.get_config()
    assert loaded.loss.get_config() == trained.loss.get_config()
    assert loaded.metrics == ["accuracy"]
    assert loaded.optimizer.iterations == 2
    original, restored = trained.optimizer.get_state(), loaded.optimizer.get_state()
    assert set(original) == set(restored)
    for key in original:
        np.testing.assert_array_equal(original[key], restored[key])


def test_training_continues_identically_after_load(trained, saved, data):
    loaded = load_model(saved)
    for _ in range(2):
        # Dropout masks too: each Dropout layer's generator state is saved.
        assert trained.train_on_batch(*data) == loaded.train_on_batch(*data)
    for a, b in zip(trained.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_without_optimizer(trained, tmp_path, data):
    path = tmp_path / "weights_only.cnnlab"
    trained.save(path, include_optimizer=False)
    loaded = load_model(path)
    assert loaded.optimizer.iterations == 0  # compiled again, fresh state
    np.testing.assert_array_equal(loaded.predict(data[0]), trained.predict(data[0]))


def test_uncompiled_model_round_trip(tmp_path, data):
    model = make_model()
    path = tmp_path / "fresh.cnnlab"
    model.save(path)
    loaded = load_model(path)
    assert loaded.optimizer is None
    np.testing.assert_array_equal(loaded.predict(data[0]), model.predict(data[0]))


def test_float64_model_round_trip(tmp_path):
    model = Sequential([layers.Input(shape=(3,)), layers.Dense(2, dtype="float64")])
    path = tmp_path / "f64.cnnlab"
    model.save(path)
    loaded = load_model(path)
    assert loaded.layers[0].weights["kernel"].dtype == np.float64
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_extra_state_round_trip(trained, tmp_path):
    path = tmp_path / "ckpt.cnnlab"
    save_model(trained, path, extra={"epoch": 3, "best": 0.25})
    _, extra = load(path)
    assert extra == {"epoch": 3, "best": 0.25}


def test_unbuilt_model_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match=r"built"):
        Sequential([layers.Dense(2)]).save(tmp_path / "x.cnnlab")
    assert not list(tmp_path.iterdir())


# -- no pickle -------------------------------------------------------------------------------
def test_file_is_a_zip_of_plain_arrays_readable_without_pickle(saved):
    assert zipfile.is_zipfile(saved)
    with np.load(saved, allow_pickle=False) as archive:
        assert "__cnnlab__" in archive.files
        for key in archive.files:
            value = archive[key]  # would raise for pickled (object) arrays
            assert value.dtype != object
    with zipfile.ZipFile(saved) as zf:
        assert all(name.endswith(".npy") for name in zf.namelist())


def test_header_is_json(saved):
    import json

    with np.load(saved, allow_pickle=False) as archive:
        header = json.loads(archive["__cnnlab__"].tobytes().decode())
    assert header["format"] == "cnnlab.model"
    assert header["model"]["name"] == "tiny"


# -- bad files -------------------------------------------------------------------------------
NOT_A_MODEL = r"not a cnnlab model file"


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.cnnlab"):
        load_model(tmp_path / "missing.cnnlab")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.cnnlab"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        load_model(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.cnnlab"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        load_model(path)


def test_truncated_file(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        load_model(saved)


def test_corrupted_middle(saved):
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes(200)
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"cnnlab model file|damaged"):
        load_model(saved)


def test_png_file(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buffer, format="PNG")
    path = tmp_path / "picture.png"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=NOT_A_MODEL):
        load_model(path)


def test_plain_npz_without_header(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match=rf"{NOT_A_MODEL}.*no '__cnnlab__' entry"):
        load_model(path)


def test_npz_with_a_foreign_header(tmp_path):
    path = tmp_path / "other.npz"
    header = np.frombuffer(b'{"format": "something.else", "version": 1}', dtype=np.uint8)
    np.savez(path, __cnnlab__=header)
    with pytest.raises(ValueError, match=r"format is 'something.else'"):
        load_model(path)


def test_npz_with_a_newer_version(saved, tmp_path):
    import json

    with np.load(saved, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(arrays["__cnnlab__"].tobytes().decode())
    header["version"] = 99
    arrays["__cnnlab__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path = tmp_path / "future.cnnlab"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=r"version 99.*reads version 1"):
        load_model(path)


def test_npz_missing_a_weight(saved, tmp_path):
    with np.load(saved, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    del arrays[next(key for key in arrays if key.startswith("weights/"))]
    path = tmp_path / "holes.cnnlab"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(
        ValueError, match=r"holes.cnnlab is damaged: missing or malformed entry .weights/"
    ):
        load_model(path)


# -- atomic writes ---------------------------------------------------------------------------
def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(trained, saved, monkeypatch):
    before = saved.read_bytes()

    def savez_that_fails_midway(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_fails_midway)
    with pytest.raises(OSError, match="disk full"):
        trained.save(saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.undo()
    load_model(saved)  # still a good model file


def test_interrupted_save_keeps_the_old_file(trained, saved, monkeypatch):
    before = saved.read_bytes()

    def interrupted(file, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trained.save(saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_save_overwrites_an_existing_file(trained, saved, data, tmp_path):
    trained.train_on_batch(*data)
    trained.save(saved)
    np.testing.assert_array_equal(load_model(saved).predict(data[0]), trained.predict(data[0]))
    assert [p.name for p in tmp_path.iterdir()] == [saved.name]
