"""Layer API: Keras names, defaults, weight shapes and order, initializers, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab import initializers, layers, set_random_seed

# -- Keras defaults --------------------------------------------------------------------------


def test_conv2d_defaults_are_keras():
    layer = layers.Conv2D(8, 3)
    assert layer.kernel_size == (3, 3)
    assert layer.strides == (1, 1)
    assert layer.padding == "valid"
    assert layer.activation.name == "linear"
    assert layer.use_bias is True
    assert layer.kernel_initializer == "glorot_uniform"
    # "valid", stride 1: 7 - 3 + 1 = 5
    assert layer(np.zeros((1, 7, 7, 2))).shape == (1, 5, 5, 8)


@pytest.mark.parametrize("cls", [layers.MaxPooling2D, layers.AveragePooling2D])
def test_pooling_defaults_are_keras(cls):
    layer = cls()
    assert layer.pool_size == (2, 2)
    assert layer.strides == (2, 2)  # strides=None means strides = pool_size
    assert layer.padding == "valid"
    assert cls(3).strides == (3, 3)
    assert cls((2, 3)).strides == (2, 3)
    assert cls(3, strides=1).strides == (1, 1)
    # 3x3 windows at stride 3 over 7x7: floor((7 - 3) / 3) + 1 = 2
    assert cls(3)(np.zeros((1, 7, 7, 1))).shape == (1, 2, 2, 1)


def test_batchnorm_defaults_are_keras():
    layer = layers.BatchNormalization()
    assert layer.momentum == 0.99
    assert layer.epsilon == 1e-3
    assert layer.synchronized is False
    layer.build((4, 4, 3))
    gamma, beta, moving_mean, moving_variance = layer.get_weights()
    np.testing.assert_array_equal(gamma, np.ones(3))
    np.testing.assert_array_equal(beta, np.zeros(3))
    np.testing.assert_array_equal(moving_mean, np.zeros(3))
    np.testing.assert_array_equal(moving_variance, np.ones(3))


def test_leaky_relu_layer_default_slope_is_0_3():
    layer = layers.LeakyReLU()
    assert layer.negative_slope == 0.3
    y = layer(np.array([[-2.0, -1.0, 0.0, 3.0]]))
    np.testing.assert_allclose(y, [[-0.6, -0.3, 0.0, 3.0]], rtol=1e-6)
    y = layers.LeakyReLU(negative_slope=0.1)(np.array([[-2.0, 3.0]]))
    np.testing.assert_allclose(y, [[-0.2, 3.0]], rtol=1e-6)


def test_leaky_relu_activation_by_name_has_keras_function_slope_0_2():
    """``keras.activations.leaky_relu`` defaults to 0.2 (the layer to 0.3)."""
    y = layers.Activation("leaky_relu")(np.array([[-2.0, 3.0]]))
    np.testing.assert_allclose(y, [[-0.4, 3.0]], rtol=1e-6)


def test_dropout_defaults():
    layer = layers.Dropout(0.25)
    assert layer.rate == 0.25
    assert layer.seed is None


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("linear", [-1.0, 0.0, 2.0], [-1.0, 0.0, 2.0]),
        ("relu", [-1.0, 0.0, 2.0], [0.0, 0.0, 2.0]),
        ("sigmoid", [0.0, np.log(3.0), -800.0], [0.5, 0.75, 0.0]),
        ("tanh", [0.0, np.log(2.0)], [0.0, 0.6]),  # (4 - 1) / (4 + 1)
        ("softmax", [0.0, np.log(3.0)], [0.25, 0.75]),
    ],
)
def test_activation_values(name, x, expected):
    y = layers.Activation(name, dtype="float64")(np.array([x]))
    np.testing.assert_allclose(y, [expected], rtol=1e-12, atol=1e-300)


def test_softmax_rows_sum_to_one_without_overflow():
    y = layers.Softmax(dtype="float64")(np.array([[1000.0, 1000.0], [-1000.0, 0.0]]))
    np.testing.assert_allclose(y, [[0.5, 0.5], [0.0, 1.0]], atol=1e-300)


# -- shapes, weights and their order ---------------------------------------------------------


def test_conv2d_kernel_shape_is_kh_kw_in_filters():
    layer = layers.Conv2D(4, (3, 5))
    y = layer(np.zeros((2, 10, 12, 2)))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 5, 2, 4)
    assert bias.shape == (4,)
    assert y.shape == (2, 8, 8, 4)


@pytest.mark.parametrize(
    ("kernel_size", "strides", "expected_shape"),
    [
        (3, 1, (8, 10)),
        ((3, 3), (1, 1), (8, 10)),
        ([3, 5], 1, (8, 8)),
        (3, 2, (4, 5)),  # floor((10 - 3) / 2) + 1 = 4, floor((12 - 3) / 2) + 1 = 5
        (3, (2, 3), (4, 4)),  # floor((12 - 3) / 3) + 1 = 4
    ],
)
def test_kernel_size_and_strides_take_an_int_or_a_pair(kernel_size, strides, expected_shape):
    layer = layers.Conv2D(1, kernel_size, strides=strides)
    assert layer(np.zeros((1, 10, 12, 1))).shape == (1, *expected_shape, 1)


def test_conv2d_without_bias_has_only_a_kernel():
    layer = layers.Conv2D(4, 3, use_bias=False)
    layer.build((5, 5, 2))
    (kernel,) = layer.get_weights()
    assert kernel.shape == (3, 3, 2, 4)


def test_dense_weights_order_and_shapes():
    layer = layers.Dense(7)
    layer.build((5,))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (5, 7)
    np.testing.assert_array_equal(bias, np.zeros(7))


def test_batchnorm_weight_order_and_trainability():
    layer = layers.BatchNormalization()
    layer.build((6,))
    assert list(layer.weights) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert layer.trainable_names == ["gamma", "beta"]
    assert layer.count_params() == (12, 12)


def test_get_weights_returns_copies_and_set_weights_writes_them():
    layer = layers.Dense(2, dtype="float64")
    layer.build((3,))
    kernel, bias = layer.get_weights()
    kernel[...] = 5.0
    assert not np.any(layer.weights["kernel"] == 5.0)
    new_kernel = np.arange(6.0).reshape(3, 2)
    layer.set_weights([new_kernel, np.array([1.0, -1.0])])
    # y = x @ kernel + bias
    y = layer(np.array([[1.0, 0.0, 2.0]]))
    np.testing.assert_allclose(y, [[0 + 2 * 4 + 1, 1 + 2 * 5 - 1]])


def test_set_weights_rejects_wrong_count_and_shape():
    layer = layers.Conv2D(4, 3, name="conv_a")
    layer.build((5, 5, 2))
    with pytest.raises(ValueError, match=r"Conv2D 'conv_a' expects 2 weights.*got 1"):
        layer.set_weights([np.zeros((3, 3, 2, 4))])
    with pytest.raises(ValueError, match=r"'kernel' of shape \(3, 3, 2, 4\), got shape \(3, 3, 4"):
        layer.set_weights([np.zeros((3, 3, 4, 2)), np.zeros(4)])


def test_flatten_is_nhwc_row_major():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    y = layers.Flatten()(x)
    assert y.shape == (2, 24)
    # Row-major: the channel index moves fastest, then width, then height.
    # Element (n=1, h=1, w=2, c=3) sits at 1*3*4 + 2*4 + 3 = 23 in row 1.
    assert y[1, 23] == x[1, 1, 2, 3]
    # Element (n=0, h=1, w=0, c=2) sits at 1*12 + 0*4 + 2 = 14.
    assert y[0, 14] == x[0, 1, 0, 2]
    np.testing.assert_array_equal(y[0], np.arange(24))


def test_layer_names_are_unique_and_keras_style():
    a, b = layers.Conv2D(1, 1), layers.Conv2D(1, 1)
    assert a.name.startswith("conv2d") and b.name.startswith("conv2d")
    assert a.name != b.name
    assert layers.BatchNormalization().name.startswith("batch_normalization")
    assert layers.Conv2D(1, 1, name="edges").name == "edges"


def test_serialize_round_trip_keeps_the_config():
    layer = layers.Conv2D(
        5, (3, 2), strides=2, padding="same", activation="relu", use_bias=False, name="c"
    )
    copy = layers.deserialize(layers.serialize(layer))
    assert type(copy) is layers.Conv2D
    assert copy.get_config() == layer.get_config()
    with pytest.raises(ValueError, match=r"Unknown layer class 'Conv3D'"):
        layers.deserialize({"class_name": "Conv3D", "config": {}})


# -- initializers ----------------------------------------------------------------------------


def test_glorot_uniform_bounds_and_variance():
    rng = np.random.default_rng(0)
    shape = (3, 3, 16, 32)  # fan_in = 9 * 16 = 144, fan_out = 9 * 32 = 288
    w = initializers.get("glorot_uniform")(shape, rng, np.float64)
    limit = np.sqrt(6 / (144 + 288))
    assert w.shape == shape
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit
    # Variance of U(-l, l) is l**2 / 3 = 2 / (fan_in + fan_out).
    assert w.var() == pytest.approx(2 / (144 + 288), rel=0.05)
    # The sample mean has standard deviation sqrt(var / n); allow five of them.
    assert abs(w.mean()) < 5 * np.sqrt(2 / (144 + 288) / w.size)


def test_glorot_uniform_dense_kernel_bounds():
    layer = layers.Dense(300)
    layer.build((500,))
    w = layer.weights["kernel"]
    limit = np.sqrt(6 / (500 + 300))
    assert np.abs(w).max() <= limit
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.03)


def test_he_normal_truncated_at_two_std_with_variance_2_over_fan_in():
    rng = np.random.default_rng(1)
    shape = (3, 3, 32, 64)  # fan_in = 288
    w = initializers.get("he_normal")(shape, rng, np.float64)
    fan_in = 288
    # Keras samples N(0, s) with s = sqrt(2 / fan_in) / 0.8796 and cuts it at 2 s; the
    # truncation shrinks the variance by 0.8796**2, so the result has variance 2 / fan_in.
    s = np.sqrt(2 / fan_in) / 0.87962566103423978
    assert np.abs(w).max() <= 2 * s
    assert np.abs(w).max() > 1.95 * s
    assert w.var() == pytest.approx(2 / fan_in, rel=0.05)
    assert abs(w.mean()) < 5 * np.sqrt(2 / fan_in / w.size)


def test_he_normal_through_a_conv_layer():
    set_random_seed(0)
    layer = layers.Conv2D(64, 3, kernel_initializer="he_normal")
    layer.build((8, 8, 16))  # fan_in = 144
    w = layer.weights["kernel"]
    assert np.abs(w).max() <= 2 * np.sqrt(2 / 144) / 0.87962566103423978 * (1 + 1e-6)
    assert w.var() == pytest.approx(2 / 144, rel=0.05)


@pytest.mark.parametrize(("name", "value"), [("zeros", 0.0), ("ones", 1.0)])
def test_constant_initializers(name, value):
    w = initializers.get(name)((4, 3), np.random.default_rng(0), np.float32)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.full((4, 3), value))


def test_biases_start_at_zero():
    layer = layers.Conv2D(3, 2)
    layer.build((4, 4, 1))
    np.testing.assert_array_equal(layer.weights["bias"], 0.0)


# -- errors ----------------------------------------------------------------------------------


def test_conv2d_given_an_image_without_batch_axis():
    layer = layers.Conv2D(4, 3, name="conv_x")
    with pytest.raises(
        ValueError,
        match=r"Conv2D 'conv_x' expects input of rank 4 \(batch, height, width, channels\), "
        r"got shape \(32, 32, 3\)",
    ):
        layer(np.zeros((32, 32, 3)))


@pytest.mark.parametrize(
    "make", [lambda: layers.MaxPooling2D(name="p"), lambda: layers.GlobalAveragePooling2D(name="p")]
)
def test_pooling_needs_rank_4(make):
    with pytest.raises(ValueError, match=r"'p' expects input of rank 4.*got shape \(2, 8\)"):
        make()(np.zeros((2, 8)))


def test_built_layer_rejects_another_input_shape():
    layer = layers.Conv2D(4, 3, name="conv_y")
    layer(np.zeros((1, 8, 8, 3)))
    with pytest.raises(
        ValueError,
        match=r"Conv2D 'conv_y' expects input of shape \(None, 8, 8, 3\), got shape \(1, 8, 8, 4\)",
    ):
        layer(np.zeros((1, 8, 8, 4)))


def test_dense_built_layer_rejects_another_width():
    layer = layers.Dense(2, name="d")
    layer(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"Dense 'd' expects input of shape \(None, 5\)"):
        layer(np.zeros((1, 6)))


def test_kernel_larger_than_input_with_valid_padding():
    with pytest.raises(ValueError, match=r"Conv2D 'big'.*kernel \(5, 5\).*input \(3, 3\).*valid"):
        layers.Conv2D(1, 5, name="big")(np.zeros((1, 3, 3, 1)))
    # With "same" padding it fits.
    assert layers.Conv2D(1, 5, padding="same")(np.zeros((1, 3, 3, 1))).shape == (1, 3, 3, 1)


def test_pool_larger_than_input_with_valid_padding():
    with pytest.raises(ValueError, match=r"MaxPooling2D 'mp'.*pool_size \(4, 4\).*\(3, 3\)"):
        layers.MaxPooling2D(4, name="mp")(np.zeros((1, 3, 3, 1)))


@pytest.mark.parametrize("filters", [0, -3, 2.5, True, "8"])
def test_filters_must_be_a_positive_int(filters):
    with pytest.raises(ValueError, match=rf"Conv2D 'f'.*`filters`.*positive int.*{filters!r}"):
        layers.Conv2D(filters, 3, name="f")


@pytest.mark.parametrize("units", [0, -1, 1.5])
def test_units_must_be_a_positive_int(units):
    with pytest.raises(ValueError, match=r"Dense 'u'.*`units`.*positive int"):
        layers.Dense(units, name="u")


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, "0.5"])
def test_dropout_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match=rf"Dropout 'drop'.*`rate`.*\[0, 1\).*{rate!r}"):
        layers.Dropout(rate, name="drop")


def test_dropout_rate_zero_is_allowed_and_is_the_identity():
    x = np.ones((4, 4), dtype=np.float32)
    np.testing.assert_array_equal(layers.Dropout(0.0)(x, training=True), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.Conv2D(2, 3, padding="full", name="L"),
        lambda: layers.MaxPooling2D(2, padding="full", name="L"),
        lambda: layers.AveragePooling2D(2, padding="full", name="L"),
    ],
)
def test_unknown_padding(make):
    with pytest.raises(ValueError, match=r"'L'.*`padding`.*'valid'.*'same'.*got 'full'"):
        make()


def test_padding_is_case_insensitive():
    assert layers.Conv2D(1, 3, padding="SAME").padding == "same"


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.Conv2D(2, 3, activation="swish", name="L"),
        lambda: layers.Dense(2, activation="swish", name="L"),
        lambda: layers.Activation("swish", name="L"),
    ],
)
def test_unknown_activation(make):
    with pytest.raises(ValueError, match=r"'L'.*`activation` must be one of .*'relu'.*got 'swish'"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: layers.Conv2D(2, 3, kernel_initializer="lecun", name="L"),
        lambda: layers.Dense(2, kernel_initializer="lecun", name="L"),
    ],
)
def test_unknown_initializer(make):
    with pytest.raises(ValueError, match=r"'L'.*Unknown initializer 'lecun'.*'glorot_uniform'"):
        make()


@pytest.mark.parametrize("value", [0, -1, (3,), (3, 3, 3), (3, 0), "3", True, 2.0])
def test_bad_kernel_size(value):
    with pytest.raises(ValueError, match=r"'L'.*`kernel_size`.*positive int or a pair"):
        layers.Conv2D(1, value, name="L")


@pytest.mark.parametrize("value", [0, (1, 0), "2"])
def test_bad_strides_and_pool_size(value):
    with pytest.raises(ValueError, match=r"'L'.*`strides`"):
        layers.Conv2D(1, 3, strides=value, name="L")
    with pytest.raises(ValueError, match=r"'L'.*`pool_size`"):
        layers.MaxPooling2D(value, name="L")


def test_batchnorm_bad_arguments():
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*`momentum`.*\[0, 1\].*1.5"):
        layers.BatchNormalization(momentum=1.5, name="bn")
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*`epsilon`.*> 0.*0"):
        layers.BatchNormalization(epsilon=0, name="bn")
    with pytest.raises(ValueError, match=r"BatchNormalization 'bn'.*`synchronized`.*True or False"):
        layers.BatchNormalization(synchronized="yes", name="bn")


def test_batchnorm_synchronized_is_saved_with_the_config():
    layer = layers.BatchNormalization(synchronized=True)
    assert layer.get_config()["synchronized"] is True
    assert layers.deserialize(layers.serialize(layer)).synchronized is True


def test_leaky_relu_negative_slope_must_be_non_negative():
    with pytest.raises(ValueError, match=r"LeakyReLU 'lr'.*`negative_slope`.*>= 0.*-0.1"):
        layers.LeakyReLU(negative_slope=-0.1, name="lr")


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"`dtype`.*float32.*float64.*int32"):
        layers.Dense(2, dtype="int32")(np.zeros((1, 3)))


def test_input_shape_must_be_positive_ints():
    with pytest.raises(ValueError, match=r"Input `shape`.*positive ints.*\(32, 0\)"):
        layers.Input(shape=(32, 0))


def test_unknown_initializer_by_name():
    with pytest.raises(ValueError, match=r"Unknown initializer 'orthogonal'"):
        initializers.get("orthogonal")
