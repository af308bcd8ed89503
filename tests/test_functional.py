"""Keras's functional API: symbolic inputs, a graph of layers, merges and shared layers; the
book's code in its own style; graphs against PyTorch in float64; saving a graph."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, models, optimizers, utils, zoo
from cnnlab.modelfile import HEADER

NUM_CLASSES = 10


# -- the book's code, with the import line changed ---------------------------------------------
def book_mlp():
    input_layer = layers.Input((32, 32, 3))
    x = layers.Flatten()(input_layer)
    x = layers.Dense(200, activation="relu")(x)
    x = layers.Dense(150, activation="relu")(x)
    output_layer = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return models.Model(input_layer, output_layer)


def book_cnn():
    input_layer = layers.Input((32, 32, 3))
    x = layers.Conv2D(filters=32, kernel_size=3, strides=1, padding="same")(input_layer)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU()(x)
    x = layers.Conv2D(filters=32, kernel_size=3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU()(x)
    x = layers.Conv2D(filters=64, kernel_size=3, strides=1, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU()(x)
    x = layers.Conv2D(filters=64, kernel_size=3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128)(x)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU()(x)
    x = layers.Dropout(rate=0.5)(x)
    x = layers.Dense(NUM_CLASSES)(x)
    output_layer = layers.Activation("softmax")(x)
    return models.Model(input_layer, output_layer)


def cifar_like(n: int, seed: int = 0):
    """Arrays in the formats of ``datasets.cifar10.load_data()``: uint8 images (N, 32, 32, 3)
    and uint8 labels (N, 1), whose class is the brightest of ten bands of the image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, (n, 1)).astype(np.uint8)
    x = rng.integers(0, 120, (n, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(y[:, 0]):
        x[i, 3 * label : 3 * label + 3] += 120
    return x, y


@pytest.mark.parametrize("build", [book_mlp, book_cnn])
def test_the_books_code_runs_with_its_import_line_changed(build, capsys):
    (x_train, y_train), (x_test, y_test) = cifar_like(256), cifar_like(128, seed=1)
    x_train = x_train.astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0
    y_train = utils.to_categorical(y_train, NUM_CLASSES)
    y_test = utils.to_categorical(y_test, NUM_CLASSES)

    model = build()
    model.summary()
    opt = optimizers.Adam(learning_rate=0.0005)
    model.compile(loss="categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
    history = model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=4,
        shuffle=True,
        validation_data=(x_test, y_test),
        verbose=0,
    )
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=1000)
    preds = model.predict(x_test)

    out = capsys.readouterr().out
    assert "Total params:" in out and "Trainable params:" in out and "Non-trainable params:" in out
    assert re.search(r"input_layer(_\d+)? \(InputLayer\) +\(None, 32, 32, 3\) +0", out)
    assert out.strip().splitlines()[-1].startswith("1/1 - ")  # evaluate's line of results
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 4
    assert preds.shape == (128, NUM_CLASSES)
    np.testing.assert_allclose(preds.sum(axis=1), 1, rtol=1e-5)
    assert accuracy == pytest.approx(np.mean(preds.argmax(1) == y_test.argmax(1)), abs=1e-6)
    assert accuracy > 0.5  # chance is 0.1
    assert loss == pytest.approx(history.history["val_loss"][-1], rel=1e-5)


def test_the_books_cnn_has_the_books_parameter_counts(capsys):
    book_cnn().summary()
    out = capsys.readouterr().out
    assert "Total params: 592,554" in out
    assert "Trainable params: 591,914" in out
    assert "Non-trainable params: 640" in out
    assert "Connected to" not in out  # a chain: Keras's table for a sequential graph


def test_functional_and_sequential_cnns_compute_the_same_numbers_bit_for_bit():
    cnnlab.set_random_seed(0)
    functional, sequential = book_cnn(), zoo.cnn()
    sequential.set_weights(functional.get_weights())
    for model in (functional, sequential):
        model.layers[-3 if model is sequential else -3].rng = np.random.default_rng(5)
        model.compile(optimizers.Adam(5e-4), "sparse_categorical_crossentropy", ["accuracy"])
    assert isinstance(functional.layers[-3], layers.Dropout)
    assert isinstance(sequential.layers[-3], layers.Dropout)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (80, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 80)
    for step in range(5):
        batch = slice(16 * step, 16 * step + 16)
        assert functional.train_step(x[batch], y[batch]) == sequential.train_step(
            x[batch], y[batch]
        )
    for a, b in zip(functional.get_weights(), sequential.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(functional.predict(x), sequential.predict(x))


# -- graphs: branches, merges, shared layers ---------------------------------------------------
def residual_block(dtype="float64"):
    """Two convs with batch norm, added to the input's projection (convs before batch norm
    without a bias, as in ResNet: batch norm would take it out)."""
    inputs = layers.Input((6, 6, 3), dtype=dtype)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, dtype=dtype)(inputs)
    x = layers.BatchNormalization(dtype=dtype)(x)
    x = layers.ReLU(dtype=dtype)(x)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, dtype=dtype)(x)
    x = layers.BatchNormalization(dtype=dtype)(x)
    shortcut = layers.Conv2D(4, 1, dtype=dtype)(inputs)
    x = layers.Add(dtype=dtype)([x, shortcut])
    x = layers.ReLU(dtype=dtype)(x)
    x = layers.Flatten(dtype=dtype)(layers.MaxPooling2D(dtype=dtype)(x))
    return models.Model(inputs, layers.Dense(5, dtype=dtype)(x), name="residual")


def two_branches(dtype="float64"):
    image = layers.Input((7, 5, 2), dtype=dtype, name="image")
    wide = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype=dtype)(image)
    narrow = layers.Conv2D(2, 1, strides=1, dtype=dtype)(image)
    pooled = layers.AveragePooling2D(2, strides=1, padding="same", dtype=dtype)(narrow)
    x = layers.Concatenate(dtype=dtype)([wide, pooled])
    x = layers.GlobalAveragePooling2D(dtype=dtype)(x)
    extra = layers.Input((4,), dtype=dtype, name="extra")
    both = layers.Average(dtype=dtype)(
        [layers.Dense(6, dtype=dtype)(x), layers.Dense(6, dtype=dtype)(extra)]
    )
    return models.Model([image, extra], layers.Dense(3, activation="softmax", dtype=dtype)(both))


def test_graph_shapes_are_checked_as_the_graph_is_built_naming_both_layers():
    inputs = layers.Input((8, 8, 3))
    a = layers.Conv2D(16, 3, padding="same", name="left")(inputs)
    b = layers.Conv2D(32, 3, padding="same", name="right")(inputs)
    with pytest.raises(ValueError) as err:
        layers.Add(name="join")([a, b])
    message = str(err.value)
    assert "Add 'join' needs inputs of one shape" in message
    assert (
        "'left' gives (None, 8, 8, 16)" in message and "'right' gives (None, 8, 8, 32)" in message
    )
    conv = layers.Conv2D(4, 3, name="shared")
    conv(inputs)
    with pytest.raises(
        ValueError,
        match=r"'shared' was built for input \(None, 8, 8, 3\), "
        r"but 'left' gives \(None, 8, 8, 16\)",
    ):
        conv(a)
    flat = layers.Input((5,), name="flat")
    with pytest.raises(ValueError) as err:
        layers.GlobalAveragePooling2D(name="gap")(flat)
    assert str(err.value) == (
        "GlobalAveragePooling2D 'gap' expects input of rank 4 (batch, height, width, channels), "
        "got shape (None, 5); 'flat' gives (None, 5)"
    )


def test_concatenate_joins_the_channels_and_sends_each_input_its_slice():
    a, b = np.ones((2, 3, 3, 2)), np.zeros((2, 3, 3, 5))
    join = layers.Concatenate()
    y = join([a, b])
    assert y.shape == (2, 3, 3, 7)
    dy = np.arange(y.size, dtype=float).reshape(y.shape)
    da, db = join.backward(dy)
    np.testing.assert_array_equal(da, dy[..., :2])
    np.testing.assert_array_equal(db, dy[..., 2:])
    assert layers.Concatenate(axis=1)([a, a]).shape == (2, 6, 3, 2)


def test_a_layer_called_twice_shares_its_weights_and_adds_up_both_gradients():
    cnnlab.set_floatx("float64")
    try:
        left, right = layers.Input((4,), name="left"), layers.Input((4,), name="right")
        shared = layers.Dense(3, activation="tanh", name="shared")
        out = layers.Add()([shared(left), shared(right)])
        model = models.Model([left, right], out)
        assert [layer.name for layer in model.layers].count("shared") == 1
        assert model.count_params() == 4 * 3 + 3
        rng = np.random.default_rng(0)
        xl, xr, dy = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
        y = model([xl, xr], training=True)
        kernel, bias = shared.weights["kernel"], shared.weights["bias"]
        np.testing.assert_allclose(y, np.tanh(xl @ kernel + bias) + np.tanh(xr @ kernel + bias))
        dxl, dxr = model.backward(dy)
        gl = dy * (1 - np.tanh(xl @ kernel + bias) ** 2)
        gr = dy * (1 - np.tanh(xr @ kernel + bias) ** 2)
        np.testing.assert_allclose(shared.grads["kernel"], xl.T @ gl + xr.T @ gr)
        np.testing.assert_allclose(shared.grads["bias"], gl.sum(0) + gr.sum(0))
        np.testing.assert_allclose(dxl, gl @ kernel.T)
        np.testing.assert_allclose(dxr, gr @ kernel.T)
    finally:
        cnnlab.set_floatx("float32")


def test_an_input_the_model_was_not_given_is_named():
    a, b = layers.Input((3,), name="a"), layers.Input((3,), name="b")
    out = layers.Add()([a, b])
    with pytest.raises(ValueError, match=r"needs input 'b' .*not among its inputs \('a'\)"):
        models.Model(a, out)


def test_several_inputs_and_outputs_train_with_a_loss_each():
    image = layers.Input((6, 6, 1), name="image")
    x = layers.Flatten()(layers.Conv2D(2, 3)(image))
    digit = layers.Dense(10, activation="softmax", name="digit")(x)
    parity = layers.Dense(2, activation="softmax", name="parity")(x)
    model = models.Model(image, [digit, parity])
    model.compile(
        "adam",
        {"digit": "sparse_categorical_crossentropy", "parity": "sparse_categorical_crossentropy"},
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x_data = rng.normal(size=(40, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    history = model.fit(x_data, [labels, labels % 2], batch_size=8, epochs=2, verbose=0)
    assert set(history.history) == {
        "loss",
        "digit_loss",
        "parity_loss",
        "digit_accuracy",
        "parity_accuracy",
    }
    total = history.history["loss"][-1]
    parts = history.history["digit_loss"][-1] + history.history["parity_loss"][-1]
    assert total == pytest.approx(parts, rel=1e-6)
    digits, parities = model.predict(x_data)
    assert digits.shape == (40, 10) and parities.shape == (40, 2)


# -- against PyTorch, in float64 ---------------------------------------------------------------
@pytest.mark.usefixtures("each_engine")
@pytest.mark.parametrize("build", [residual_block, two_branches])
def test_graph_models_match_torch_in_float64(build):
    torch = pytest.importorskip("torch", reason="the PyTorch parity tests need torch")
    from cnnlab.torch import _submodules, to_torch
    from cnnlab.torch_engine import weight_pairs

    cnnlab.set_random_seed(0)
    model = build()
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, *t.shape[1:])) for t in model.inputs]
    for _ in range(2):  # batch statistics away from 0 and 1
        model(xs, training=True)
    module = to_torch(model).train(True)
    y = model(xs, training=True)
    dy = rng.normal(size=y.shape)
    dxs = model.backward(dy)
    dxs = dxs if isinstance(dxs, list) else [dxs]
    ts = [torch.from_numpy(x.copy()).requires_grad_(True) for x in xs]
    yt = module(*ts)
    yt.backward(torch.from_numpy(dy))

    def error(a, b):
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    assert error(y, yt.detach().numpy()) < 1e-10
    for dx, t in zip(dxs, ts, strict=True):
        assert error(dx, t.grad.numpy()) < 1e-8
    checked = 0
    for layer, sub in _submodules(model, module):
        for name, tensor, _, axes in weight_pairs(layer, sub):
            if name in layer.trainable_names:
                grad = tensor.grad.numpy()
                assert (
                    error(layer.grads[name], grad if axes is None else grad.transpose(axes)) < 1e-8
                ), (layer.name, name)
                checked += 1
    assert checked >= 8


# -- saving a graph ----------------------------------------------------------------------------
def test_a_saved_graph_loads_with_identical_predictions(tmp_path):
    model = two_branches(dtype="float32")
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(3)
    xs = [
        rng.normal(size=(12, 7, 5, 2)).astype(np.float32),
        rng.normal(size=(12, 4)).astype(np.float32),
    ]
    model.fit(xs, rng.integers(0, 3, 12), batch_size=4, epochs=1, verbose=0)
    model.save(tmp_path / "graph.cnnlab")
    again = models.load_model(tmp_path / "graph.cnnlab")
    assert isinstance(again, models.Model) and not isinstance(again, models.Sequential)
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(again.predict(xs), model.predict(xs))
    np.testing.assert_array_equal(
        again.predict({"image": xs[0], "extra": xs[1]}), model.predict(xs)
    )
    assert again.optimizer.iterations == model.optimizer.iterations == 3


def _rewrite_header(path, out, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(arrays[HEADER].tobytes())
    change(header)
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(out, "wb") as f:
        np.savez(f, **arrays)


def test_a_graph_file_with_a_dangling_node_reference_is_refused_naming_the_file(tmp_path):
    model = residual_block(dtype="float32")
    model.save(tmp_path / "graph.cnnlab")

    def dangle(header):
        header["model"]["nodes"][3][1][0] = ["conv2d_404", 0]

    _rewrite_header(tmp_path / "graph.cnnlab", tmp_path / "dangling.cnnlab", dangle)
    with pytest.raises(ValueError) as err:
        models.load_model(tmp_path / "dangling.cnnlab")
    message = str(err.value)
    assert "dangling.cnnlab" in message and "dangling node reference" in message
    assert "'conv2d_404'" in message and "\n" not in message


def test_a_model_file_of_another_version_is_refused_naming_the_file(tmp_path):
    residual_block(dtype="float32").save(tmp_path / "graph.cnnlab")
    _rewrite_header(
        tmp_path / "graph.cnnlab", tmp_path / "future.cnnlab", lambda h: h.update(version=7)
    )
    with pytest.raises(
        ValueError, match=r"future.cnnlab has model-file version 7; this cnnlab reads version 1"
    ):
        models.load_model(tmp_path / "future.cnnlab")
    assert zipfile.is_zipfile(tmp_path / "graph.cnnlab")
