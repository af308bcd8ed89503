"""Sequential: building, summary, the zoo, training API, reproducibility, dtypes, errors."""

from __future__ import annotations

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, losses, optimizers, zoo
from cnnlab.model import Sequential


@pytest.fixture
def floatx64():
    """Make float64 the default dtype for the test, and restore the previous one after it."""
    previous = cnnlab.floatx()
    cnnlab.set_floatx("float64")
    try:
        yield
    finally:
        cnnlab.set_floatx(previous)


def small_cnn(num_classes: int = 2, dropout: float = 0.0) -> Sequential:
    entries = [
        layers.Input(shape=(8, 8, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.MaxPooling2D(),
        layers.Flatten(),
    ]
    if dropout:
        entries.append(layers.Dropout(dropout))
    entries.append(layers.Dense(num_classes, activation="softmax"))
    return Sequential(entries)


def bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images holding one horizontal bar (class 0) or one vertical bar (class 1) at a
    random place, plus noise. Not linearly separable by pixel sums, easy for a conv net."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.1, size=(n, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    where = rng.integers(0, 8, size=n)
    for i in range(n):
        if y[i] == 0:
            x[i, where[i], :, 0] += 1.0
        else:
            x[i, :, where[i], 0] += 1.0
    return x, y


# -- the zoo and summary ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "total", "non_trainable"),
    [("mlp", 646_260, 0), ("cnn", 592_554, 640), ("diagram", 15_120, 0)],
)
def test_zoo_parameter_counts(name, total, non_trainable):
    """Counts worked out by hand, e.g. mlp: 3072*200+200 + 200*150+150 + 150*10+10."""
    model = zoo.get(name)
    assert model.count_params() == total
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total - non_trainable:,}" in text
    assert f"Non-trainable params: {non_trainable:,}" in text


def test_summary_lists_layers_output_shapes_and_params():
    model = zoo.diagram()
    printed: list[str] = []
    model.summary(print_fn=printed.append)
    text = "\n".join(printed)
    lines = text.splitlines()
    # 32x32 -> stride 2 "same" -> 16x16 -> stride 2 "same" -> 8x8; 8*8*20 = 1280.
    # Conv 4x4x3x10 + 10 = 490, conv 3x3x10x20 + 20 = 1820, dense 1280*10 + 10 = 12810.
    for shape, params in [
        ("(None, 16, 16, 10)", "490"),
        ("(None, 8, 8, 20)", "1,820"),
        ("(None, 1280)", "0"),
        ("(None, 10)", "12,810"),
    ]:
        assert any(shape in line and line.rstrip().endswith(params) for line in lines), shape
    assert 'Model: "diagram"' in text


def test_summary_prints_by_default(capsys):
    zoo.diagram().summary()
    assert "Total params: 15,120" in capsys.readouterr().out


def test_cnn_output_shapes_follow_strides():
    model = zoo.cnn()
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert [c.output_shape for c in convs] == [
        (32, 32, 32),
        (16, 16, 32),
        (16, 16, 64),
        (8, 8, 64),
    ]
    assert model.output_shape == (None, 10)  # Keras: the batch axis first


def test_zoo_unknown_model():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*'cnn'"):
        zoo.get("resnet")


def test_zoo_models_accept_other_input_shapes():
    model = zoo.cnn(input_shape=(28, 28, 1), num_classes=5)
    assert model.predict(np.zeros((3, 28, 28, 1), dtype=np.float32)).shape == (3, 5)


# -- building --------------------------------------------------------------------------------
def test_model_builds_on_first_call_without_input():
    model = Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(3)])
    assert not model.built
    y = model(np.zeros((4, 5, 5, 1), dtype=np.float32))
    assert model.built
    assert y.shape == (4, 3)
    assert model.input_shape == (None, 5, 5, 1)
    assert model.count_params() == (3 * 3 * 1 * 2 + 2) + (3 * 3 * 2 * 3 + 3)


def test_model_rejects_wrong_input_shape():
    model = zoo.mlp()
    with pytest.raises(
        ValueError,
        match=r"Model 'mlp' expects `x` of shape \(None, 32, 32, 3\), "
        r"got shape \(2, 28, 28, 1\)",
    ):
        model.predict(np.zeros((2, 28, 28, 1)))


def test_model_rejects_a_layer_of_the_wrong_rank():
    with pytest.raises(
        ValueError, match=r"Conv2D 'c' expects input of rank 4.*got shape \(None, 16\)"
    ):
        Sequential([layers.Input(shape=(16,)), layers.Conv2D(2, 3, name="c")])


def test_model_rejects_a_kernel_too_large_for_its_input():
    with pytest.raises(ValueError, match=r"Conv2D 'k'.*kernel \(5, 5\) does not fit .*\(4, 4\)"):
        Sequential([layers.Input(shape=(4, 4, 1)), layers.Conv2D(2, 5, name="k")])


def test_model_rejects_duplicate_layer_names_and_non_layers():
    with pytest.raises(ValueError, match=r"already has a layer named 'same'"):
        Sequential([layers.Dense(2, name="same"), layers.Dense(2, name="same")])
    with pytest.raises(ValueError, match=r"Sequential expects layers, got str"):
        Sequential(["dense"])


def test_model_get_and_set_weights_in_layer_order():
    model = Sequential([layers.Input(shape=(4, 4, 1)), layers.Conv2D(2, 3), layers.Flatten()])
    model.add(layers.BatchNormalization())
    model.add(layers.Dense(3))
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 1, 2), (2,), (8,), (8,), (8,), (8,), (8, 3), (3,)]
    with pytest.raises(ValueError, match=r"expects 8 weights, got 2"):
        model.set_weights(model.get_weights()[:2])


# -- training API ----------------------------------------------------------------------------
def test_training_before_compile_is_an_error():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"must be compiled"):
        model.train_on_batch(np.zeros((2, 8, 8, 1)), np.array([0, 1]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "mse"}, r"Unknown loss 'mse'.*'categorical_crossentropy'"),
        ({"optimizer": "rmsprop"}, r"Unknown optimizer 'rmsprop'.*'adam'.*'sgd'"),
        ({"metrics": ["auc"]}, r"Unknown metric 'auc'.*'accuracy'"),
    ],
)
def test_compile_rejects_unknown_names(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_cnn().compile(**kwargs)


def test_compile_defaults_are_adam_and_categorical_crossentropy():
    model = small_cnn()
    model.compile()
    assert isinstance(model.optimizer, optimizers.Adam)
    assert isinstance(model.loss, losses.CategoricalCrossentropy)
    assert model.loss.from_logits is False


def test_predict_on_batch_is_inference_on_the_whole_batch_in_an_array_of_its_own():
    x, y = bars(10, seed=0)
    model = small_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)  # batch norm's averages move from 0, 1
    out = model.predict_on_batch(x)
    assert out.shape == (10, 2)
    # inference: batch norm by its moving averages, as the model's own call (not training=True)
    np.testing.assert_allclose(out, model(x), rtol=1e-5, atol=1e-7)
    assert np.abs(out - model(x, training=True)).max() > 1e-3
    flatten = Sequential([layers.Input(shape=(8, 8, 1)), layers.Flatten()])
    flat = flatten.predict_on_batch(x)
    np.testing.assert_array_equal(flat, x.reshape(10, 64))
    assert not np.shares_memory(flat, x)  # the caller's input is not handed back as a view
    with pytest.raises(ValueError, match=r"predict_on_batch expects at least one example"):
        model.predict_on_batch(x[:0])


def test_labels_of_the_wrong_kind_are_explained():
    model = small_cnn()
    model.compile(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"one-hot labels of shape \(2, 2\), got shape \(2,\)"):
        model.train_on_batch(np.zeros((2, 8, 8, 1)), np.array([0, 1]))
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"labels in \[0, 2\), got values from 0 to 5"):
        model.train_on_batch(np.zeros((2, 8, 8, 1)), np.array([0, 5]))


def test_return_types_are_keras():
    x, y = bars(10, seed=0)
    model = small_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, y)
    assert isinstance(loss, float)
    assert isinstance(model.evaluate(x, y), float)
    assert isinstance(model.test_on_batch(x, y), float)

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    result = model.train_on_batch(x, y)
    assert isinstance(result, list) and len(result) == 2
    assert all(isinstance(v, float) for v in result)
    loss, acc = model.evaluate(x, y, batch_size=3)
    assert isinstance(loss, float) and 0.0 <= acc <= 1.0
    # accuracy is a multiple of 1/10 for 10 examples
    assert acc * 10 == pytest.approx(round(acc * 10))

    pred = model.predict(x, batch_size=4)
    assert isinstance(pred, np.ndarray)
    assert pred.shape == (10, 2)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluate_averages_over_examples_not_batches():
    x, y = bars(10, seed=1)
    model = small_cnn()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    p = model.predict(x).astype(np.float64)
    expected_loss = -np.mean(np.log(p[np.arange(10), y]))
    expected_acc = np.mean(p.argmax(axis=1) == y)
    # batch_size 4 gives batches of 4, 4 and 2: a mean of batch means would be wrong.
    loss, acc = model.evaluate(x, y, batch_size=4)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == pytest.approx(expected_acc)


def test_evaluate_rejects_mismatched_lengths():
    model = small_cnn()
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"same length, got 4 and 3"):
        model.evaluate(np.zeros((4, 8, 8, 1)), np.zeros(3, dtype=int))


def test_a_small_cnn_learns_an_easy_task():
    cnnlab.set_random_seed(0)
    x, y = bars(256, seed=1)
    x_test, y_test = bars(128, seed=2)
    model = small_cnn()
    model.compile(
        optimizer=optimizers.Adam(learning_rate=0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    initial_loss, _ = model.evaluate(x, y)
    history = model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    losses_ = history.history["loss"]
    assert len(losses_) == 30 and history.epoch == list(range(30))
    assert losses_[-1] < losses_[0]
    final_loss, train_acc = model.evaluate(x, y)
    _, test_acc = model.evaluate(x_test, y_test)
    assert final_loss < initial_loss / 4
    assert train_acc >= 0.95
    assert test_acc >= 0.9


def test_fit_reports_validation_metrics():
    cnnlab.set_random_seed(1)
    x, y = bars(40, seed=3)
    model = small_cnn()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, batch_size=16, validation_data=(x, y), verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    # The last validation loss is the model's loss on (x, y) after training.
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x, y)[0], rel=1e-6)


def test_fit_rejects_bad_batch_size():
    model = small_cnn()
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive int, got 0"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4, dtype=int), batch_size=0, verbose=0)


# -- reproducibility -------------------------------------------------------------------------
def test_same_seed_same_weights():
    cnnlab.set_random_seed(123)
    first = zoo.cnn().get_weights()
    cnnlab.set_random_seed(123)
    second = zoo.cnn().get_weights()
    cnnlab.set_random_seed(124)
    third = zoo.cnn().get_weights()
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], third[0])


def test_same_seed_same_training_history():
    x, y = bars(64, seed=4)

    def run():
        cnnlab.set_random_seed(7)
        model = small_cnn(dropout=0.3)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        return history.history, model.get_weights()

    (h1, w1), (h2, w2) = run(), run()
    assert h1 == h2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)


def test_set_random_seed_rejects_bad_seeds():
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0, got -1"):
        cnnlab.set_random_seed(-1)


# -- dtypes ----------------------------------------------------------------------------------
def test_float32_is_the_default():
    assert cnnlab.floatx() == "float32"
    model = small_cnn()
    assert all(w.dtype == np.float32 for w in model.get_weights())
    assert model.predict(np.zeros((2, 8, 8, 1), dtype=np.float64)).dtype == np.float32


def test_float64_when_set(floatx64):
    model = small_cnn()
    assert all(w.dtype == np.float64 for w in model.get_weights())
    x, y = bars(8, seed=5)
    assert model.predict(x).dtype == np.float64
    model.compile(loss="sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    assert all(w.dtype == np.float64 for w in model.get_weights())


def test_layer_dtype_argument_overrides_floatx():
    layer = layers.Dense(3, dtype="float64")
    y = layer(np.zeros((2, 4), dtype=np.float32))
    assert layer.weights["kernel"].dtype == np.float64
    assert y.dtype == np.float64


def test_set_floatx_rejects_other_types():
    with pytest.raises(ValueError, match=r"`floatx` must be one of.*float16"):
        cnnlab.set_floatx("float16")


# -- loss stability --------------------------------------------------------------------------
def _identity_softmax_model(dtype: str) -> Sequential:
    """Softmax of the input itself: the input rows are the logits."""
    model = Sequential(
        [
            layers.Input(shape=(3,)),
            layers.Dense(3, activation="softmax", use_bias=False, dtype=dtype),
        ]
    )
    model.set_weights([np.eye(3)])
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_give_a_finite_exact_loss(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2])
    # Per example, logsumexp(z) - z[label]: logsumexp = 1e4 + log(1 + e^-1e4 + e^-2e4) = 1e4
    # for the first two rows and log 3 for the last: losses 0, 1e4 and log 3.
    expected = (0.0 + 1e4 + np.log(3.0)) / 3
    model = _identity_softmax_model(dtype)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    sparse = model.evaluate(logits, labels)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    categorical = model.evaluate(logits, np.eye(3)[labels])
    assert np.isfinite(sparse) and np.isfinite(categorical)
    assert sparse == pytest.approx(expected, rel=1e-6)
    assert categorical == pytest.approx(sparse, rel=1e-7)


def test_huge_logits_give_a_finite_gradient():
    model = _identity_softmax_model("float64")
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="categorical_crossentropy")
    x = np.array([[1e4, 0.0, -1e4]])
    model.train_on_batch(x, np.array([[0.0, 1.0, 0.0]]))
    kernel = model.get_weights()[0]
    assert np.all(np.isfinite(kernel))
    # dloss/dz = softmax(z) - y = [1, -1, 0]; dloss/dkernel = x^T (softmax(z) - y).
    grad = np.outer(x[0], [1.0, -1.0, 0.0])
    np.testing.assert_allclose(kernel, np.eye(3) - grad, rtol=1e-12)


def test_loss_objects_by_config_and_from_logits():
    loss = losses.get({"name": "categorical_crossentropy", "from_logits": True})
    assert isinstance(loss, losses.CategoricalCrossentropy) and loss.from_logits
    z = np.array([[2.0, 0.0]])
    # -log softmax(z)[0] = log(1 + e^-2)
    assert loss(np.array([[1.0, 0.0]]), z) == pytest.approx(np.log1p(np.exp(-2.0)))
    sparse = losses.get("sparse_categorical_crossentropy")
    # From probabilities: -log 0.25
    assert sparse(np.array([1]), np.array([[0.75, 0.25]])) == pytest.approx(np.log(4.0))


def test_train_step_gives_the_first_layer_the_same_gradients_without_its_input_gradient():
    """train_step skips the input gradient of the first layer with weights (nothing uses it);
    the weight gradients must equal those of a full backward pass."""
    from cnnlab import layers

    cnnlab.set_floatx("float64")
    try:
        for first in (layers.Conv2D(3, 3, padding="same"), layers.Dense(4, activation="relu")):
            model = cnnlab.Sequential(
                [layers.Input((5, 5, 2)), layers.Dropout(0.0), first, layers.Flatten()]
                + [layers.Dense(3, activation="softmax")]
            )
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
            rng = np.random.default_rng(0)
            x, y = rng.normal(size=(4, 5, 5, 2)), np.array([0, 1, 2, 1])
            before = [w.copy() for w in model.get_weights()]
            model.train_on_batch(x, y)
            skipped = {name: g.copy() for name, g in first.grads.items()}
            model.set_weights(before)  # the same point, now through a full backward pass
            p = model(x, training=True)
            dp = np.zeros_like(p)
            dp[np.arange(4), y] = -1.0 / (4 * p[np.arange(4), y])  # d(mean -log p_y) / dp
            model.backward(dp)
            for name, g in first.grads.items():
                np.testing.assert_allclose(skipped[name], g, rtol=1e-10, atol=1e-14)
    finally:
        cnnlab.set_floatx("float32")
