"""The lecture's worked examples, with the numbers from the slides or worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab import layers
from cnnlab.nn.conv import convolve_patch

PATCH = np.array([[0.6, 0.2, 0.6], [0.1, -0.2, -0.3], [-0.5, -0.1, -0.3]])
HORIZONTAL_EDGE = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
VERTICAL_EDGE = np.array([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])


# -- convolution -----------------------------------------------------------------------------
def test_patch_times_filter_is_2_3():
    # (0.6 + 0.2 + 0.6) - (-0.5 - 0.1 - 0.3) = 1.4 + 0.9 = 2.3
    assert convolve_patch(PATCH, HORIZONTAL_EDGE) == pytest.approx(2.3, abs=1e-12)


def test_negated_patch_gives_minus_2_3():
    assert convolve_patch(-PATCH, HORIZONTAL_EDGE) == pytest.approx(-2.3, abs=1e-12)


def test_convolve_patch_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape.*\(3, 3\).*\(2, 2\)"):
        convolve_patch(PATCH, np.ones((2, 2)))


@pytest.mark.parametrize(("sign", "expected"), [(1, 2.3), (-1, -2.3)])
def test_conv2d_layer_reproduces_the_slide(sign, expected):
    layer = layers.Conv2D(1, 3, dtype="float64")  # padding "valid" by default
    layer.build((3, 3, 1))
    layer.set_weights([HORIZONTAL_EDGE.reshape(3, 3, 1, 1), np.zeros(1)])
    y = layer(sign * PATCH.reshape(1, 3, 3, 1))
    assert y.shape == (1, 1, 1, 1)
    assert y[0, 0, 0, 0] == pytest.approx(expected, abs=1e-12)


# -- a layer of two filters ----------------------------------------------------------------
@pytest.fixture
def edge_layer() -> layers.Conv2D:
    layer = layers.Conv2D(2, 3, padding="same", use_bias=False)
    layer.build((64, 64, 1))
    kernel = np.stack([HORIZONTAL_EDGE, VERTICAL_EDGE], axis=-1)[:, :, None, :]
    assert kernel.shape == (3, 3, 1, 2)
    layer.set_weights([kernel])
    return layer


def test_two_filters_map_64x64x1_to_64x64x2(edge_layer):
    assert edge_layer.weights["kernel"].shape == (3, 3, 1, 2)
    assert edge_layer(np.zeros((1, 64, 64, 1))).shape == (1, 64, 64, 2)


def test_horizontal_edge_lights_up_only_the_horizontal_filter(edge_layer):
    image = np.zeros((1, 64, 64, 1), dtype=np.float32)
    image[0, :32] = 1.0  # bright top half, dark bottom half: one horizontal edge
    y = edge_layer(image)[0]
    interior = (slice(1, 63), slice(1, 63))
    horizontal, vertical = y[..., 0][interior], y[..., 1][interior]
    # Rows 31 and 32 (interior rows 30 and 31) straddle the edge: 3 * (1 - 0) = 3.
    np.testing.assert_allclose(horizontal[30:32], 3.0)
    np.testing.assert_allclose(np.delete(horizontal, [30, 31], axis=0), 0.0)
    np.testing.assert_allclose(vertical, 0.0)


def test_vertical_edge_lights_up_only_the_vertical_filter(edge_layer):
    image = np.zeros((1, 64, 64, 1), dtype=np.float32)
    image[0, :, 32:] = 1.0  # dark left half, bright right half: one vertical edge
    y = edge_layer(image)[0]
    interior = (slice(1, 63), slice(1, 63))
    horizontal, vertical = y[..., 0][interior], y[..., 1][interior]
    np.testing.assert_allclose(vertical[:, 30:32], 3.0)
    np.testing.assert_allclose(np.delete(vertical, [30, 31], axis=1), 0.0)
    np.testing.assert_allclose(horizontal, 0.0)


# -- padding and strides ---------------------------------------------------------------------
@pytest.mark.parametrize(("strides", "out"), [(1, 5), (2, 3)])
def test_same_padding_output_size(strides, out):
    layer = layers.Conv2D(1, 3, strides=strides, padding="same")
    assert layer(np.zeros((1, 5, 5, 1))).shape == (1, out, out, 1)


@pytest.mark.parametrize(("strides", "out"), [(1, 3), (2, 2)])
def test_valid_padding_output_size(strides, out):
    layer = layers.Conv2D(1, 3, strides=strides)
    assert layer(np.zeros((1, 5, 5, 1))).shape == (1, out, out, 1)


def test_same_padding_with_stride_2_pads_bottom_right_only():
    """6x6 input, 3x3 kernel, stride 2: output 3x3, total padding (3-1)*2 + 3 - 6 = 1, which
    Keras puts after (bottom/right). PyTorch-style symmetric padding would differ."""
    x = np.arange(36, dtype=np.float64).reshape(1, 6, 6, 1)  # x[i, j] = 6 i + j
    layer = layers.Conv2D(1, 3, strides=2, padding="same", dtype="float64")
    layer.build((6, 6, 1))
    layer.set_weights([np.ones((3, 3, 1, 1)), np.zeros(1)])
    y = layer(x)[0, :, :, 0]
    assert y.shape == (3, 3)
    # Top-left window: rows 0-2, cols 0-2, no padding: 0+1+2 + 6+7+8 + 12+13+14 = 63.
    assert y[0, 0] == 63
    # Bottom-right window: rows 4-6, cols 4-6; row/col 6 is padding: 28+29+34+35 = 126.
    assert y[2, 2] == 126
    # Top-right window: rows 0-2, cols 4-6: 4+5 + 10+11 + 16+17 = 63.
    assert y[0, 2] == 63


# -- pooling ---------------------------------------------------------------------------------
def test_max_pooling_slide_example():
    x = np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]], dtype=np.float64)
    y = layers.MaxPooling2D(pool_size=2)(x.reshape(1, 4, 4, 1))
    np.testing.assert_array_equal(y[0, :, :, 0], [[9, 7], [8, 6]])


def test_max_pooling_pools_each_channel_separately():
    x = np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]], dtype=np.float64)
    both = np.stack([x, -x], axis=-1)[None]
    y = layers.MaxPooling2D(2)(both)[0]
    np.testing.assert_array_equal(y[..., 0], [[9, 7], [8, 6]])
    np.testing.assert_array_equal(y[..., 1], [[-2, -1], [-1, -2]])


def test_average_pooling_valid():
    x = np.array([[2, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]], dtype=np.float64)
    y = layers.AveragePooling2D(2)(x.reshape(1, 4, 4, 1))[0, :, :, 0]
    # (2+2+9+4)/4, (7+3+6+1)/4 / (8+5+3+1)/4, (2+4+2+6)/4
    np.testing.assert_allclose(y, [[17 / 4, 17 / 4], [17 / 4, 14 / 4]])


def test_average_pooling_valid_overlapping_windows():
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)  # x[i, j] = 4 i + j
    y = layers.AveragePooling2D(3, strides=1)(x)[0, :, :, 0]
    # mean of a 3x3 block of 4i+j is its center value: centers (1,1),(1,2),(2,1),(2,2)
    np.testing.assert_allclose(y, [[5, 6], [9, 10]])


def test_average_pooling_same_counts_only_real_values():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1)  # [[1,2,3],[4,5,6],[7,8,9]]
    # pool 2, stride 2: output 2x2, one row/column of padding at the bottom/right.
    y = layers.AveragePooling2D(2, padding="same")(x)[0, :, :, 0]
    np.testing.assert_allclose(y, [[(1 + 2 + 4 + 5) / 4, (3 + 6) / 2], [(7 + 8) / 2, 9 / 1]])


def test_average_pooling_same_stride_1_corners():
    x = np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1)
    # pool 3, stride 1: one row/column of padding on each side.
    y = layers.AveragePooling2D(3, strides=1, padding="same")(x)[0, :, :, 0]
    assert y.shape == (3, 3)
    assert y[0, 0] == pytest.approx((1 + 2 + 4 + 5) / 4)
    assert y[0, 2] == pytest.approx((2 + 3 + 5 + 6) / 4)
    assert y[2, 0] == pytest.approx((4 + 5 + 7 + 8) / 4)
    assert y[2, 2] == pytest.approx((5 + 6 + 8 + 9) / 4)
    assert y[0, 1] == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)
    assert y[1, 1] == pytest.approx(45 / 9)


def test_max_pooling_same_never_picks_the_padding():
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1)  # all negative
    y = layers.MaxPooling2D(2, padding="same")(x)[0, :, :, 0]
    np.testing.assert_array_equal(y, [[-1, -3], [-7, -9]])


def test_global_average_pooling():
    x = np.arange(24, dtype=np.float64).reshape(1, 3, 4, 2)
    y = layers.GlobalAveragePooling2D()(x)
    # channel 0 holds 0, 2, ..., 22 (mean 11); channel 1 holds 1, 3, ..., 23 (mean 12)
    np.testing.assert_allclose(y, [[11, 12]])


# -- max-pool ties ---------------------------------------------------------------------------
def test_max_pooling_tie_sends_the_gradient_to_the_first_maximum_in_row_major_order():
    x = np.array(
        [
            [1, 1, 0, 5],
            [1, 1, 5, 5],
            [3, 0, 7, 2],
            [7, 7, 2, 7],
        ],
        dtype=np.float64,
    ).reshape(1, 4, 4, 1)
    layer = layers.MaxPooling2D(2, dtype="float64")
    y = layer(x)
    np.testing.assert_array_equal(y[0, :, :, 0], [[1, 5], [7, 7]])
    dx = layer.backward(np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 2, 2, 1))
    # top-left: four equal 1s -> (0, 0); top-right: 5s at (0, 3), (1, 2), (1, 3) -> (0, 3);
    # bottom-left: 7s at (3, 0), (3, 1) -> (3, 0); bottom-right: 7s at (2, 2), (3, 3) -> (2, 2).
    expected = np.array(
        [
            [10, 0, 0, 20],
            [0, 0, 0, 0],
            [0, 0, 40, 0],
            [30, 0, 0, 0],
        ],
        dtype=np.float64,
    )
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


# -- batch normalization ---------------------------------------------------------------------
@pytest.fixture
def batch() -> np.ndarray:
    rng = np.random.default_rng(0)
    # 3 channels with very different means and spreads.
    return rng.standard_normal((8, 5, 5, 3)) * [0.5, 2.0, 4.0] + [1.0, -3.0, 10.0]


def test_batchnorm_training_normalizes_each_channel(batch):
    layer = layers.BatchNormalization(dtype="float64")
    y = layer(batch, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
    # Biased variance var / (var + epsilon): 1 up to epsilon = 1e-3.
    var = batch.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), var / (var + 1e-3), rtol=1e-10)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, atol=5e-3)


def test_batchnorm_training_with_gamma_and_beta(batch):
    layer = layers.BatchNormalization(dtype="float64")
    layer.build(batch.shape[1:])
    gamma, beta = np.array([2.0, 0.5, 3.0]), np.array([-1.0, 4.0, 0.25])
    layer.weights["gamma"][...] = gamma
    layer.weights["beta"][...] = beta
    y = layer(batch, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), beta, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), gamma, rtol=5e-3)


def test_batchnorm_inference_uses_the_moving_statistics(batch):
    layer = layers.BatchNormalization(dtype="float64")
    layer.build(batch.shape[1:])
    gamma, beta = np.array([2.0, 0.5, 3.0]), np.array([-1.0, 4.0, 0.25])
    mean, variance = np.array([0.5, -1.0, 9.0]), np.array([0.2, 5.0, 16.0])
    layer.set_weights([gamma, beta, mean, variance])
    y = layer(batch, training=False)
    expected = gamma * (batch - mean) / np.sqrt(variance + 1e-3) + beta
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    # Inference does not touch the moving statistics.
    np.testing.assert_array_equal(layer.weights["moving_mean"], mean)
    np.testing.assert_array_equal(layer.weights["moving_variance"], variance)


def test_batchnorm_moving_averages_after_two_steps(batch):
    layer = layers.BatchNormalization(dtype="float64")
    first, second = batch[:4], batch[4:] * 2 + 1
    layer(first, training=True)
    layer(second, training=True)
    m1, v1 = first.mean(axis=(0, 1, 2)), first.var(axis=(0, 1, 2))
    m2, v2 = second.mean(axis=(0, 1, 2)), second.var(axis=(0, 1, 2))
    # Starting from moving_mean = 0 and moving_variance = 1; momentum 0.99.
    mean = (0.0 * 0.99 + m1 * 0.01) * 0.99 + m2 * 0.01
    variance = (1.0 * 0.99 + v1 * 0.01) * 0.99 + v2 * 0.01
    np.testing.assert_allclose(layer.weights["moving_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(layer.weights["moving_variance"], variance, rtol=1e-12)


def test_batchnorm_after_dense_normalizes_each_feature():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 4)) * [1.0, 2.0, 3.0, 4.0] + [5.0, 0.0, -5.0, 1.0]
    y = layers.BatchNormalization(dtype="float64")(x, training=True)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-12)
    var = x.var(axis=0)
    np.testing.assert_allclose(y.var(axis=0), var / (var + 1e-3), rtol=1e-10)


# -- dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_dropout_in_training_zeroes_about_rate_and_keeps_the_sum(rate):
    x = np.ones((500, 400), dtype=np.float32)  # 200,000 units
    y = layers.Dropout(rate, seed=0)(x, training=True)
    # The dropped fraction has standard deviation sqrt(rate (1 - rate) / n) < 0.0012.
    assert abs(np.mean(y == 0) - rate) < 0.006
    assert set(np.unique(y)) <= {0.0, np.float32(1 / (1 - rate))}
    assert y.sum() == pytest.approx(x.sum(), rel=0.03)


def test_dropout_at_inference_is_the_identity():
    x = np.random.default_rng(0).standard_normal((100, 50)).astype(np.float32)
    layer = layers.Dropout(0.5, seed=0)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)


def test_seeded_dropout_is_reproducible():
    x = np.ones((20, 30), dtype=np.float32)
    a = layers.Dropout(0.5, seed=42)(x, training=True)
    b = layers.Dropout(0.5, seed=42)(x, training=True)
    c = layers.Dropout(0.5, seed=43)(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_dropout_draws_a_new_mask_every_call():
    x = np.ones((20, 30), dtype=np.float32)
    layer = layers.Dropout(0.5, seed=42)
    assert not np.array_equal(layer(x, training=True), layer(x, training=True))
