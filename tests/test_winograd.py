"""Winograd's F(4x4, 3x3) gives the numbers of the direct convolution, and runs the layers it
is chosen for (3x3 filters, strides 1, enough channels) in inference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from cnnlab import fusion, nn, zoo
from cnnlab.engine import blas, conv, parallel, parts, tuning, winograd
from cnnlab.nn import winograd as plain

needs_blas = pytest.mark.skipif(
    blas.gemm(np.float32) is None, reason="NumPy's BLAS is not OpenBLAS: no Winograd path"
)


def _forward(x, u, padding, normalize=None, tiled=False):
    """The convolution by :func:`cnnlab.engine.winograd.forward_images`, the batch split over
    the threads."""
    y, images = winograd.conv3x3_forward_plan(x, u, padding, normalize, tiled)
    parallel.over_batch(images, len(x))
    return y


def test_the_transforms_give_a_correlation_of_six_values_with_three():
    rng = np.random.default_rng(0)
    d, g = rng.normal(size=6), rng.normal(size=3)
    direct = [d[k : k + 3] @ g for k in range(4)]
    np.testing.assert_allclose(plain.A_T @ ((plain.G @ g) * (plain.B_T @ d)), direct)


def test_filter_transform_is_g_g_transposed_for_each_filter():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 5)).astype(np.float32)
    u = plain.filter_transform(kernel)
    assert u.shape == (36, 2, 5) and u.dtype == np.float32
    for c, f in [(0, 0), (1, 4)]:
        expected = plain.G @ kernel[:, :, c, f].astype(np.float64) @ plain.G.T
        np.testing.assert_allclose(u[:, c, f].reshape(6, 6), expected, rtol=1e-6)


def test_the_fast_filters_are_the_exact_transform_rounded_once():
    """The fast engine's transforms (the forward's, and the input gradient's of the filters
    turned half a turn with the channels swapped) are G g G^T in exact fractions, rounded once
    to float32, for every value."""
    kernel = np.random.default_rng(2).normal(size=(3, 3, 4, 5)).astype(np.float32)
    g = [[Fraction(v).limit_denominator(24) for v in row] for row in plain.G]
    turned = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    for u, taps in ((winograd.transformed(kernel), kernel), (winograd.turned(kernel), turned)):
        assert u.shape == (36, *taps.shape[2:]) and u.dtype == np.float32
        for c in range(taps.shape[2]):
            for f in range(taps.shape[3]):
                filt = [[Fraction(float(taps[a, b, c, f])) for b in range(3)] for a in range(3)]
                for i in range(6):
                    for j in range(6):
                        exact = sum(
                            g[i][a] * filt[a][b] * g[j][b] for a in range(3) for b in range(3)
                        )
                        assert u[6 * i + j, c, f] == np.float32(float(exact))


CASES = [
    # (batch, h, w, c, filters, padding): sizes that are and are not multiples of the tile
    (3, 16, 16, 16, 8, "same"),
    (2, 7, 9, 5, 6, "same"),
    (5, 10, 11, 4, 3, "valid"),
    (1, 1, 1, 3, 2, "same"),
    (2, 3, 6, 2, 4, "valid"),
]


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_winograd_equals_the_direct_convolution(case, dtype):
    n, h, w, c, f, padding = case
    rng = np.random.default_rng(2)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    kernel = (rng.normal(size=(3, 3, c, f)) / np.sqrt(9 * c)).astype(dtype)
    expected, _ = nn.conv2d_forward(
        x.astype(np.float64), kernel.astype(np.float64), None, (1, 1), padding
    )
    # float32: each output of F(4x4, 3x3) rounds a few sums of up to 36 terms more than the
    # direct 9*C-term sum; float64 shows that the arithmetic is exact.
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    by_the_algebra = plain.winograd_conv3x3(x, kernel, padding)
    u = plain.filter_transform(kernel)
    tiled = [_forward(x, u, padding, tiled=True)] if dtype == np.float32 else []
    for y in [by_the_algebra, *(_forward(x, u, padding) for _ in range(2)), *tiled]:
        # the plain form, then the compiled one twice (the second reuses the scratch), and
        # with the products by cnnlab's tiles
        assert y.dtype == dtype and y.shape == expected.shape
        assert np.max(np.abs(y - expected)) <= tolerance * np.max(np.abs(expected))


@needs_blas
@pytest.mark.parametrize("n_threads", [1, 2])
def test_winograd_with_batch_norm_and_leaky_relu_applies_their_formula(n_threads):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 9, 8, 16)).astype(np.float32)
    kernel = (rng.normal(size=(3, 3, 16, 7)) / 12).astype(np.float32)
    mean, beta = rng.normal(size=(2, 7)).astype(np.float32)
    scale = rng.uniform(0.5, 2, 7).astype(np.float32)
    slope = np.float32(0.3)
    z, _ = nn.conv2d_forward(x, kernel, None, (1, 1), "same")
    v = (z - mean) * scale + beta
    expected = np.where(v > 0, v, slope * v)
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        u = plain.filter_transform(kernel)
        y = _forward(x, u, "same", (mean, scale, beta, slope))
    finally:
        parallel.set_num_threads(before)
    assert (expected < 0).any()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)


@pytest.fixture
def by_winograd(monkeypatch):
    """The kernels that went through Winograd's filter transform, in order: the forward
    pass's (``"forward"``) and the input gradient's (``"backward"``), in Python or in the
    compiled parts of a conv op in training (whose tables say so)."""
    seen = []
    real, forward, backward = winograd.scratch.kept, conv.forward_table, conv.backward_table

    def spy(name, source, make):
        seen.append(("backward" if "turned" in name else "forward", source))
        return real(name, source, make)

    def forward_spy(x, kernel, *args):
        z, t, keep, cache = forward(x, kernel, *args)
        if t[parts.WAY] == parts.WINOGRAD:
            seen.append(("forward", kernel))
        return z, t, keep, cache

    def backward_spy(cache, *args):
        dx, dkernels, t, keep = backward(cache, *args)
        if t[parts.DX_WAY] == parts.WINOGRAD:
            seen.append(("backward", cache.kernel))
        return dx, dkernels, t, keep

    monkeypatch.setattr(winograd.scratch, "kept", spy)
    monkeypatch.setattr(conv, "forward_table", forward_spy)
    monkeypatch.setattr(conv, "backward_table", backward_spy)
    return seen


@needs_blas
def test_winograd_is_chosen_for_3x3_stride_1_convs_with_enough_channels(by_winograd):
    assert winograd.applies((3, 3, 32, 64), (1, 1), np.float32)
    assert not winograd.applies((3, 3, 32, 64), (2, 2), np.float32)  # strides 2
    assert not winograd.applies((5, 5, 32, 64), (1, 1), np.float32)  # 5x5 filters
    assert not winograd.applies((3, 3, 3, 32), (1, 1), np.float32)  # the image's 3 channels
    assert winograd.possible((3, 3, 3, 32), (1, 1), np.float32)  # which the tuner may try
    assert not winograd.applies((3, 3, 32, 64), (1, 1), np.int32)  # no BLAS product
    # In the book's CNN: the third conv (16x16x32 -> 64, strides 1) only, at inference and
    # in training.
    model = zoo.cnn(input_shape=(32, 32, 3))
    model.compile("adam", "sparse_categorical_crossentropy")
    third = model.layers[6].weights["kernel"]
    assert third.shape == (3, 3, 32, 64)
    x = np.random.default_rng(4).uniform(-1, 1, (6, 32, 32, 3)).astype(np.float32)
    assert any(isinstance(s, fusion.ConvChain) for s in model._steps(training=False))
    model.predict(x)
    assert [(way, kernel is third) for way, kernel in by_winograd] == [("forward", True)]
    by_winograd.clear()
    model.train_step(x, np.arange(6))
    assert [(way, kernel is third) for way, kernel in by_winograd] == [
        ("forward", True),
        ("backward", True),
    ]


@needs_blas
def test_the_transformed_filters_follow_the_kernel_when_it_changes_in_place():
    """The chain keeps the transform from call to call; an optimizer updates the kernel in
    place, and the next predict must use the new weights."""
    model = zoo.cnn(input_shape=(16, 16, 3))
    conv = model.layers[6]
    assert conv.weights["kernel"].shape[:3] == (3, 3, 32)  # the layer run by Winograd
    x = np.random.default_rng(5).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    first = model.predict(x)
    conv.weights["kernel"][...] = np.random.default_rng(6).normal(
        0, 0.5, conv.weights["kernel"].shape
    )
    second = model.predict(x)
    assert not np.allclose(first, second, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(second, model(x), rtol=1e-5, atol=1e-6)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_the_conv_ops_by_winograd_give_the_reference_forward_and_backward(
    by_winograd, padding, dtype
):
    """conv2d_forward / conv2d_backward take Winograd's path for 3x3 filters, strides 1 and
    16 channels or more: the output with its bias, and the input gradient, as a 3x3
    convolution of the output gradient; the kernel gradient stays im2col's."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 9, 10, 16)).astype(dtype)
    kernel = (rng.normal(size=(3, 3, 16, 5)) / 12).astype(dtype)
    bias = rng.normal(size=5).astype(dtype)
    assert conv._by_winograd(x, kernel, (1, 1), tuning.default_plan(kernel.shape, (1, 1), dtype))
    y, cache = conv.conv2d_forward(x, kernel, bias, (1, 1), padding)
    dy = rng.normal(size=y.shape).astype(dtype)
    dx, dkernel, dbias = conv.conv2d_backward(dy, cache)
    assert [way for way, _ in by_winograd] == ["forward", "backward"]
    wide = [a.astype(np.float64) for a in (x, kernel, bias)]
    y_ref, cache_ref = nn.conv2d_forward(*wide, (1, 1), padding)
    refs = (y_ref, *nn.conv2d_backward(dy.astype(np.float64), cache_ref))
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    for got, ref in zip((y, dx, dkernel, dbias), refs, strict=True):
        assert got.dtype == dtype and got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= tolerance * np.max(np.abs(ref))
