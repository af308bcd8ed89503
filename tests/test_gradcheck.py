"""Finite-difference checks of every backward pass, in float64.

Each layer is checked with a random upstream gradient ``R``: the scalar checked is
``loss = sum(y * R)``, so ``dloss/dy = R``. A plain ``sum(y)`` would hide bugs (for batch
normalization the input gradient of ``sum(y)`` is zero whatever the code does). Central
differences ``(f(w + eps) - f(w - eps)) / (2 eps)`` with ``eps = 1e-6`` are compared with the
analytic gradient of the input and of every trainable weight, on both engines (the plain
ops of cnnlab.nn and the fast ones of cnnlab.engine).
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab import layers, losses, optimizers
from cnnlab.model import Sequential

pytestmark = pytest.mark.usefixtures("each_engine")

EPS = 1e-6
F64 = "float64"


def numeric_grad(f, arr: np.ndarray) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to every entry of ``arr``."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        old = arr[idx]
        arr[idx] = old + EPS
        f_plus = f()
        arr[idx] = old - EPS
        f_minus = f()
        arr[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * EPS)
    return grad


def away_from_zero(rng: np.random.Generator, shape, margin: float = 0.05) -> np.ndarray:
    """Random values whose magnitude is at least ``margin``: no kinks of relu within eps."""
    x = rng.uniform(margin, 2.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


def distinct_values(rng: np.random.Generator, shape) -> np.ndarray:
    """A random arrangement of values spaced 0.01 apart: no ties for max pooling."""
    return rng.permutation(np.arange(int(np.prod(shape))) * 0.01 - 0.3).reshape(shape)


def check_layer(layer, x: np.ndarray, training: bool = False, seed: int = 0) -> None:
    """Compare ``layer.backward`` and ``layer.grads`` with central differences."""
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=np.float64)
    y = layer(x, training=training)
    assert y.dtype == np.float64
    upstream = rng.standard_normal(y.shape)
    dx = layer.backward(upstream)
    grads = {name: g.copy() for name, g in layer.grads.items()}
    assert set(grads) == set(layer.trainable_names)

    def loss() -> float:
        return float(np.sum(layer(x, training=training) * upstream))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    for name in layer.trainable_names:
        expected = numeric_grad(loss, layer.weights[name])
        np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)


# -- Conv2D --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kernel_size", "strides", "padding", "hw"),
    [
        (3, 1, "valid", (5, 5)),
        (3, 1, "same", (5, 5)),
        (3, 2, "valid", (6, 7)),
        (3, 2, "same", (6, 6)),  # asymmetric padding: one row/column at the bottom/right
        ((2, 3), (1, 2), "same", (5, 6)),  # non-square kernel and strides
        ((3, 2), 2, "valid", (7, 5)),
    ],
)
def test_conv2d_gradients(kernel_size, strides, padding, hw):
    rng = np.random.default_rng(1)
    layer = layers.Conv2D(3, kernel_size, strides=strides, padding=padding, dtype=F64)
    x = rng.standard_normal((2, *hw, 2))
    layer(x)
    layer.weights["bias"][...] = rng.standard_normal(3)
    check_layer(layer, x)


def test_conv2d_gradients_without_bias_and_with_activation():
    rng = np.random.default_rng(2)
    layer = layers.Conv2D(2, 3, padding="same", activation="tanh", use_bias=False, dtype=F64)
    check_layer(layer, rng.standard_normal((2, 4, 4, 3)))
    assert "bias" not in layer.weights


# -- pooling -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pool_size", "strides", "padding", "hw"),
    [
        (2, None, "valid", (4, 6)),
        (3, 2, "valid", (7, 7)),  # overlapping windows
        (2, None, "same", (5, 5)),
        ((2, 3), 1, "same", (4, 5)),
    ],
)
def test_max_pooling_gradients(pool_size, strides, padding, hw):
    rng = np.random.default_rng(3)
    layer = layers.MaxPooling2D(pool_size, strides=strides, padding=padding, dtype=F64)
    check_layer(layer, distinct_values(rng, (2, *hw, 2)))


@pytest.mark.parametrize(
    ("pool_size", "strides", "padding", "hw"),
    [
        (2, None, "valid", (4, 6)),
        (3, 2, "valid", (7, 7)),
        (2, None, "same", (5, 5)),  # edge windows average fewer values
        (3, 1, "same", (4, 5)),
        ((2, 3), 2, "same", (5, 4)),
    ],
)
def test_average_pooling_gradients(pool_size, strides, padding, hw):
    rng = np.random.default_rng(4)
    layer = layers.AveragePooling2D(pool_size, strides=strides, padding=padding, dtype=F64)
    check_layer(layer, rng.standard_normal((2, *hw, 2)))


def test_global_average_pooling_gradients():
    rng = np.random.default_rng(5)
    check_layer(layers.GlobalAveragePooling2D(dtype=F64), rng.standard_normal((3, 4, 5, 2)))


# -- batch normalization ---------------------------------------------------------------------
def _batchnorm(channels: int, rng: np.random.Generator) -> layers.BatchNormalization:
    layer = layers.BatchNormalization(dtype=F64)
    layer.build((channels,))
    layer.weights["gamma"][...] = rng.uniform(0.5, 2.0, channels)
    layer.weights["beta"][...] = rng.standard_normal(channels)
    layer.weights["moving_mean"][...] = rng.standard_normal(channels)
    layer.weights["moving_variance"][...] = rng.uniform(0.5, 2.0, channels)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_dense_input(training):
    rng = np.random.default_rng(6)
    layer = _batchnorm(3, rng)
    x = rng.standard_normal((6, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]
    check_layer(layer, x, training=training)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients_image_input(training):
    rng = np.random.default_rng(7)
    layer = layers.BatchNormalization(dtype=F64)
    layer.build((3, 3, 2))
    layer.weights["gamma"][...] = [1.5, 0.7]
    layer.weights["beta"][...] = [0.2, -0.4]
    layer.weights["moving_mean"][...] = [0.3, -0.1]
    layer.weights["moving_variance"][...] = [1.7, 0.6]
    check_layer(layer, rng.standard_normal((2, 3, 3, 2)) * 2 + 1, training=training)


def test_batchnorm_input_gradient_is_not_the_naive_one():
    """With batch statistics, dx differs from ``dy * gamma / std``: the mean and the variance
    depend on x too. The finite-difference check above would pass a naive formula only if
    the upstream gradient were constant; this pins that it is not."""
    rng = np.random.default_rng(8)
    layer = _batchnorm(2, rng)
    x = rng.standard_normal((5, 2))
    layer(x, training=True)
    upstream = rng.standard_normal((5, 2))
    dx = layer.backward(upstream)
    naive = upstream * layer.weights["gamma"] / np.sqrt(x.var(axis=0) + layer.epsilon)
    assert not np.allclose(dx, naive, atol=1e-3)
    # Shifting every x of a channel changes nothing in training mode: dx sums to 0 per channel.
    np.testing.assert_allclose(dx.sum(axis=0), 0, atol=1e-12)


# -- dense, flatten, activations ---------------------------------------------------------------
def test_dense_gradients():
    rng = np.random.default_rng(9)
    layer = layers.Dense(4, dtype=F64)
    x = rng.standard_normal((3, 5))
    layer(x)
    layer.weights["bias"][...] = rng.standard_normal(4)
    check_layer(layer, x)


def test_dense_gradients_on_rank_3_input():
    rng = np.random.default_rng(10)
    check_layer(layers.Dense(3, activation="sigmoid", dtype=F64), rng.standard_normal((2, 4, 5)))


def test_flatten_gradients():
    rng = np.random.default_rng(11)
    check_layer(layers.Flatten(dtype=F64), rng.standard_normal((2, 3, 4, 2)))


@pytest.mark.parametrize("name", ["linear", "relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_activation_gradients(name):
    rng = np.random.default_rng(12)
    check_layer(layers.Activation(name, dtype=F64), away_from_zero(rng, (4, 5)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.ReLU(dtype=F64),
        lambda: layers.LeakyReLU(dtype=F64),
        lambda: layers.LeakyReLU(negative_slope=0.05, dtype=F64),
        lambda: layers.Softmax(dtype=F64),
    ],
)
def test_activation_layer_gradients(make):
    rng = np.random.default_rng(13)
    check_layer(make(), away_from_zero(rng, (2, 3, 3, 4)))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_dense_with_activation_gradients(activation):
    rng = np.random.default_rng(14)
    layer = layers.Dense(4, activation=activation, dtype=F64)
    x = rng.standard_normal((3, 5))
    layer(x)
    # Keep pre-activations away from relu's kink.
    layer.weights["bias"][...] = [0.5, -0.5, 0.7, -0.7]
    check_layer(layer, x * 0.1)


# -- dropout ---------------------------------------------------------------------------------
def test_dropout_backward_is_the_mask():
    rng = np.random.default_rng(15)
    rate = 0.4
    layer = layers.Dropout(rate, seed=123, dtype=F64)
    x = away_from_zero(rng, (20, 30))
    y = layer(x, training=True)
    kept = y != 0
    # The mask, read off the output: 0 where dropped, 1 / (1 - rate) where kept.
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-15)
    upstream = rng.standard_normal(x.shape)
    dx = layer.backward(upstream)
    np.testing.assert_array_equal(dx[~kept], 0)
    np.testing.assert_allclose(dx[kept], upstream[kept] / (1 - rate), rtol=1e-15)
    assert 0 < kept.sum() < kept.size


def test_dropout_gradient_with_a_fixed_mask_matches_finite_differences():
    """Every forward of a fresh Dropout with the same seed draws the same mask."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 6))
    upstream = rng.standard_normal(x.shape)
    layer = layers.Dropout(0.5, seed=7, dtype=F64)
    layer(x, training=True)
    dx = layer.backward(upstream)

    def loss() -> float:
        fresh = layers.Dropout(0.5, seed=7, dtype=F64)
        return float(np.sum(fresh(x, training=True) * upstream))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-9)


def test_dropout_at_inference_passes_the_gradient_through():
    rng = np.random.default_rng(17)
    layer = layers.Dropout(0.5, seed=1, dtype=F64)
    x = rng.standard_normal((3, 4))
    layer(x, training=False)
    upstream = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(layer.backward(upstream), upstream)


# -- losses through Sequential -------------------------------------------------------------
def _hand_crossentropy_from_probs(p: np.ndarray, one_hot: np.ndarray) -> float:
    """Keras's ``from_logits=False``: rows rescaled to sum 1, then ``-mean sum y log p``."""
    q = p / p.sum(axis=-1, keepdims=True)
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return float(-(one_hot * np.log(q)).sum(axis=-1).mean())


def _hand_crossentropy_from_logits(z: np.ndarray, one_hot: np.ndarray) -> float:
    """``-mean sum y log softmax(z)``, with ``log softmax(z) = z - log sum exp(z)``."""
    log_p = z - z.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    return float(-(one_hot * log_p).sum(axis=-1).mean())


def check_model_gradients(model: Sequential, x, labels, loss_fn) -> None:
    """``loss_fn(model output)`` is the hand-written loss; compares the gradients that one
    ``train_on_batch`` computed (``layer.grads``) with central differences of it."""
    params = [(layer, name) for layer in model.layers for name in layer.trainable_names]
    assert params

    def loss() -> float:
        return loss_fn(model(x, training=True))

    expected = [numeric_grad(loss, layer.weights[name]) for layer, name in params]
    model.train_on_batch(x, labels)
    for (layer, name), numeric in zip(params, expected, strict=True):
        np.testing.assert_allclose(
            layer.grads[name], numeric, rtol=1e-5, atol=1e-7, err_msg=f"{layer.name}/{name}"
        )


def _conv_softmax_model() -> Sequential:
    return Sequential(
        [
            layers.Input(shape=(5, 5, 2)),
            layers.Conv2D(3, 3, dtype=F64),
            layers.BatchNormalization(dtype=F64),
            layers.Flatten(dtype=F64),
            layers.Dense(4, activation="softmax", dtype=F64),
        ]
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_softmax_crossentropy_gradients(sparse):
    rng = np.random.default_rng(18)
    model = _conv_softmax_model()
    x = rng.standard_normal((6, 5, 5, 2))
    classes = np.array([0, 1, 2, 3, 1, 2])
    one_hot = np.eye(4)[classes]
    loss = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss=loss)
    check_model_gradients(
        model,
        x,
        classes if sparse else one_hot,
        lambda p: float(-(one_hot * np.log(p)).sum(axis=-1).mean()),
    )


def test_fused_path_through_a_separate_softmax_layer():
    rng = np.random.default_rng(19)
    model = Sequential(
        [
            layers.Input(shape=(4,)),
            layers.Dense(5, activation="tanh", dtype=F64),
            layers.Dense(3, dtype=F64),
            layers.Softmax(dtype=F64),
        ]
    )
    x = rng.standard_normal((5, 4))
    classes = np.array([0, 1, 2, 2, 0])
    one_hot = np.eye(3)[classes]
    model.compile(optimizer=optimizers.SGD(), loss="sparse_categorical_crossentropy")
    check_model_gradients(
        model, x, classes, lambda p: float(-(one_hot * np.log(p)).sum(axis=-1).mean())
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_crossentropy_from_probabilities_gradients(sparse):
    """A sigmoid output is not a distribution: Keras rescales each row to sum to one."""
    rng = np.random.default_rng(20)
    model = Sequential(
        [
            layers.Input(shape=(4,)),
            layers.Dense(5, activation="tanh", dtype=F64),
            layers.Dense(3, activation="sigmoid", dtype=F64),
        ]
    )
    x = rng.standard_normal((5, 4))
    classes = np.array([0, 1, 2, 2, 1])
    one_hot = np.eye(3)[classes]
    loss = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    model.compile(optimizer=optimizers.SGD(), loss=loss)
    check_model_gradients(
        model,
        x,
        classes if sparse else one_hot,
        lambda p: _hand_crossentropy_from_probs(p, one_hot),
    )


def test_crossentropy_from_logits_gradients():
    rng = np.random.default_rng(21)
    model = Sequential(
        [
            layers.Input(shape=(4,)),
            layers.Dense(5, activation="relu", dtype=F64),
            layers.Dense(3, dtype=F64),
        ]
    )
    model.layers[0].weights["bias"][...] = 0.3  # no pre-activation near relu's kink
    x = rng.standard_normal((5, 4)) * 0.1
    one_hot = np.eye(3)[[2, 0, 1, 1, 0]]
    model.compile(optimizer=optimizers.SGD(), loss=losses.CategoricalCrossentropy(from_logits=True))
    check_model_gradients(model, x, one_hot, lambda z: _hand_crossentropy_from_logits(z, one_hot))


def test_model_backward_returns_the_input_gradient():
    """``Sequential.backward`` chains every layer's backward pass."""
    rng = np.random.default_rng(22)
    model = Sequential(
        [
            layers.Input(shape=(4, 4, 1)),
            layers.Conv2D(2, 2, activation="tanh", dtype=F64),
            layers.AveragePooling2D(dtype=F64),
            layers.Flatten(dtype=F64),
            layers.Dense(3, activation="sigmoid", dtype=F64),
        ]
    )
    x = rng.standard_normal((2, 4, 4, 1))
    upstream = rng.standard_normal((2, 3))
    model(x, training=True)
    dx = model.backward(upstream)
    expected = numeric_grad(lambda: float(np.sum(model(x, training=True) * upstream)), x)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-8)
