"""The fast ops of cnnlab.engine give the numbers of their plain forms in cnnlab.nn.

The fast forms reuse buffers between calls and work in place, so the cases cover strides,
padding, odd sizes, both dtypes, and scratch buffers reused across calls of different shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab import nn
from cnnlab.engine import activations, batchnorm, blas, conv, dense, losses, parallel, sums
from cnnlab.engine.tuning import ConvPlan


@pytest.fixture(params=["compiled", "numpy"])
def products(request, monkeypatch):
    """The conv ops' two forms: compiled loops that copy the windows and call NumPy's BLAS
    (where it is found), and NumPy calls from Python (where it is not)."""
    if request.param == "numpy":
        monkeypatch.setattr(conv.blas, "gemm", lambda dtype: None)
        assert not conv._compiled_products(np.zeros(1), np.zeros(1))
    return request.param


def _close(a, b, dtype):
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    scale = max(float(np.max(np.abs(b))), 1.0)
    assert a.dtype == b.dtype
    assert a.shape == b.shape
    assert float(np.max(np.abs(a - b))) <= tolerance * scale


CONV_CASES = [
    # (batch, h, w, c, filters, kernel, strides, padding)
    (5, 7, 6, 3, 4, (3, 3), (1, 1), "same"),
    (3, 8, 8, 2, 5, (3, 3), (2, 2), "same"),
    (7, 9, 5, 1, 2, (2, 4), (2, 1), "valid"),
    (1, 6, 6, 4, 3, (5, 5), (1, 1), "same"),
    (4, 5, 7, 3, 2, (1, 1), (2, 2), "valid"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,h,w,c,f,kernel,strides,padding", CONV_CASES)
def test_fast_conv_matches_reference(products, dtype, n, h, w, c, f, kernel, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, c)).astype(dtype)
    k = rng.normal(size=(*kernel, c, f)).astype(dtype)
    b = rng.normal(size=f).astype(dtype)
    y, cache = conv.conv2d_forward(x, k, b, strides, padding)
    y_ref, cache_ref = nn.conv2d_forward(x, k, b, strides, padding)
    _close(y, y_ref, dtype)
    dy = rng.normal(size=y.shape).astype(dtype)
    for fast, ref in zip(
        conv.conv2d_backward(dy, cache),
        nn.conv2d_backward(dy, cache_ref),
        strict=True,
    ):
        _close(fast, ref, dtype)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("strides,padding", [((1, 1), "same"), ((2, 2), "same")])
def test_fast_conv_in_many_chunks_matches_reference(
    products, monkeypatch, n_threads, strides, padding
):
    """A chunk of one image's im2col matrix at a time, on each core's slice of 7 images: the
    chunks and their sums over the kernel gradient give the whole batch's numbers."""
    one_image = ConvPlan(winograd=False, chunk_bytes=1)
    monkeypatch.setattr(conv.tuning, "conv_plan", lambda *shapes: one_image)
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        _check_conv_in_chunks(monkeypatch, strides, padding)
    finally:
        parallel.set_num_threads(before)


DIRECT_INPUT_GRADIENT_CASES = [
    # (h, w, c, filters, kernel, strides, padding): each phase's taps, of 2x2 down to 1x1 (and
    # none: a 1x1 kernel with strides 2); "valid" leaving rows and columns no window holds;
    # 16 channels (one vector of the tiles), 40 (a masked one after), 8 (through the columns)
    (9, 10, 16, 6, (3, 3), (2, 2), "same"),
    (11, 10, 16, 5, (3, 3), (2, 2), "valid"),
    (8, 7, 40, 3, (3, 3), (1, 1), "same"),
    (7, 9, 16, 4, (5, 5), (3, 3), "same"),
    (9, 6, 16, 7, (2, 3), (1, 2), "valid"),
    (6, 5, 16, 2, (1, 1), (2, 2), "valid"),
    (10, 8, 40, 3, (3, 1), (3, 1), "same"),
    (9, 10, 8, 6, (3, 3), (2, 2), "same"),
]


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
@pytest.mark.parametrize("h,w,c,f,kernel,strides,padding", DIRECT_INPUT_GRADIENT_CASES)
def test_the_direct_input_gradient_gives_the_plain_numbers(
    monkeypatch, chunk_bytes, h, w, c, f, kernel, strides, padding
):
    """The input gradient straight from the output gradient, each phase of the input's pixels
    (which taps meet them) a convolution of its own (kernels.conv_direct_input_gradient), for
    16 channels or more; for fewer, through im2col's columns: the float64 numbers to
    float32 rounding, in chunks of one image and of all."""
    plan = ConvPlan(winograd=False, chunk_bytes=chunk_bytes, products="direct")
    monkeypatch.setattr(conv.tuning, "conv_plan", lambda *shapes: plan)
    phased = []
    by_phase = conv._by_phase
    monkeypatch.setattr(conv, "_by_phase", lambda *a: phased.append(a) or by_phase(*a))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, h, w, c)).astype(np.float32)
    k = (rng.normal(size=(*kernel, c, f)) / 4).astype(np.float32)
    y, cache = conv.conv2d_forward(x, k, None, strides, padding)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, _, _ = conv.conv2d_backward(dy, cache)
    _, cache_ref = nn.conv2d_forward(x.astype(np.float64), k.astype(np.float64), None, strides,
                                     padding)  # fmt: skip
    dx_ref, _, _ = nn.conv2d_backward(dy.astype(np.float64), cache_ref)
    assert bool(phased) == (c >= 16)
    assert np.abs(dx - dx_ref).max() <= 2e-5 * np.abs(dx_ref).max()


def _check_conv_in_chunks(monkeypatch, strides, padding):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 6, 5, 3))
    k = rng.normal(size=(3, 3, 3, 4))
    b = rng.normal(size=4)
    steps = []
    real_chunks = conv._chunks
    monkeypatch.setattr(conv, "_chunks", lambda *a: steps.append(real_chunks(*a)) or steps[-1])
    for _ in range(2):  # the second call reuses the buffers
        y, cache = conv.conv2d_forward(x, k, b, strides, padding)
        y_ref, cache_ref = nn.conv2d_forward(x, k, b, strides, padding)
        _close(y, y_ref, np.float64)
        dy = rng.normal(size=y.shape)
        for fast, ref in zip(
            conv.conv2d_backward(dy, cache),
            nn.conv2d_backward(dy, cache_ref),
            strict=True,
        ):
            _close(fast, ref, np.float64)
    assert all(len(chunks) >= 3 and all(b - a == 1 for a, b in chunks) for chunks in steps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strides,padding", [((1, 1), "same"), ((2, 2), "same"), ((1, 1), "valid")])
def test_conv_with_normalize_is_conv_then_batchnorm_then_leaky(products, dtype, strides, padding):
    """``normalize=(mean, scale, beta, slope)``: each output chunk goes through
    ``leaky((y - mean) * scale + beta)``, written out here with NumPy on the reference conv."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 7, 6, 3)).astype(dtype)
    k = rng.normal(size=(3, 3, 3, 4)).astype(dtype)
    mean, beta = rng.normal(size=(2, 4)).astype(dtype)
    scale = rng.uniform(0.5, 2.0, size=4).astype(dtype)
    slope = dtype(0.3)
    y, _ = conv.conv2d_forward(x, k, None, strides, padding, normalize=(mean, scale, beta, slope))
    v = (nn.conv2d_forward(x, k, None, strides, padding)[0] - mean) * scale + beta
    _close(y, np.where(v > 0, v, slope * v), dtype)


def test_numpy_blas_is_found_for_the_compiled_conv():
    """NumPy's wheels carry OpenBLAS: its gemm is found, so the conv runs as compiled loops
    (elsewhere it falls back to NumPy calls, with the same numbers, slower)."""
    build = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if "openblas" not in build["name"]:
        pytest.skip(f"NumPy is built with {build['name']}, not OpenBLAS")
    x32, k32 = np.zeros((1, 3, 3, 2), np.float32), np.zeros((3, 3, 2, 4), np.float32)
    assert conv._compiled_products(x32, k32)
    assert conv._compiled_products(x32.astype(np.float64), k32.astype(np.float64))
    assert not conv._compiled_products(x32, k32.astype(np.float64))
    assert blas.gemm(np.float16) is None


def test_scratch_is_reused_across_calls_of_different_shapes(products):
    rng = np.random.default_rng(1)
    k = rng.normal(size=(3, 3, 2, 3))
    for n, h in [(4, 6), (3, 9), (4, 6), (1, 5)]:
        x = rng.normal(size=(n, h, h, 2))
        y, cache = conv.conv2d_forward(x, k, None, (2, 2), "same")
        y_ref, cache_ref = nn.conv2d_forward(x, k, None, (2, 2), "same")
        _close(y, y_ref, np.float64)
        dy = rng.normal(size=y.shape)
        dx, _, _ = conv.conv2d_backward(dy, cache)
        _close(dx, nn.conv2d_backward(dy, cache_ref)[0], np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 5), (5, 3, 4, 6), (1, 2, 2, 3)])
def test_fast_batchnorm_matches_reference(dtype, shape):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    gamma, beta = rng.normal(size=(2, shape[-1])).astype(dtype)
    fast = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)
    ref = nn.batchnorm_train_forward(x, gamma, beta, 1e-3)
    for a, b in zip(fast[:3], ref[:3], strict=True):
        _close(a, b, dtype)
    dy = rng.normal(size=shape).astype(dtype)
    for a, b in zip(
        batchnorm.batchnorm_train_backward(dy, fast[3]),
        nn.batchnorm_train_backward(dy, ref[3]),
        strict=True,
    ):
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_batchnorm_is_the_formula(dtype):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3, 2, 4)).astype(dtype)
    gamma, beta, mean = rng.normal(size=(3, 4)).astype(dtype)
    var = rng.uniform(0.5, 2.0, size=4).astype(dtype)
    y, _ = batchnorm.batchnorm_inference_forward(x, gamma, beta, mean, var, 1e-3)
    _close(y, (gamma * (x - mean) / np.sqrt(var + dtype(1e-3)) + beta).astype(dtype), dtype)


@pytest.mark.parametrize("slope", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaky_relu_is_the_formula(dtype, slope):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 3, 3, 2)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    s = dtype(slope)
    np.testing.assert_array_equal(activations.leaky_relu(x, slope), np.where(x > 0, x, x * s))
    np.testing.assert_array_equal(
        activations.leaky_relu_backward(dy, x, slope), np.where(x > 0, dy, dy * s)
    )


def test_relu_is_the_formula():
    rng = np.random.default_rng(6)
    x, dy = rng.normal(size=(2, 7, 3, 5, 4))
    np.testing.assert_array_equal(activations.relu(x), np.where(x > 0, x, 0.0))
    np.testing.assert_array_equal(activations.relu_backward(dy, x), np.where(x > 0, dy, 0.0))


def test_first_layer_can_skip_the_input_gradient():
    rng = np.random.default_rng(2)
    x, k = rng.normal(size=(2, 5, 5, 1)), rng.normal(size=(3, 3, 1, 2))
    y, cache = conv.conv2d_forward(x, k, None, (1, 1), "same")
    dy = rng.normal(size=y.shape)
    dx, dk, db = conv.conv2d_backward(dy, cache, input_gradient=False)
    assert dx is None
    _, cache_ref = nn.conv2d_forward(x, k, None, (1, 1), "same")
    _, dk_ref, db_ref = nn.conv2d_backward(dy, cache_ref)
    _close(dk, dk_ref, np.float64)
    _close(db, db_ref, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_are_the_sums_over_rows(dtype):
    x = np.random.default_rng(3).normal(size=(50_000, 7)).astype(dtype)
    s = sums.column_sums(x)
    exact = x.astype(np.float64).sum(axis=0)
    assert s.dtype == dtype and s.shape == (7,)
    # Within twice the error of NumPy's own sum (row after row) against the float64 sum.
    numpy_error = np.max(np.abs(x.sum(axis=0) - exact))
    assert np.max(np.abs(s - exact)) <= max(2 * numpy_error, 1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_sums_by_chunks_of_whole_groups_are_the_sums_of_all(dtype):
    # A slice of a convolution's op adds up its rows' sums a chunk of images at a time, the
    # slice in Python all at once: blocks of rows counted from each image's first row give
    # both the same bits. 45 rows an image: two blocks and 13 rows left.
    from cnnlab.engine import kernels

    rng = np.random.default_rng(12)
    group, images, c = 45, 6, 37
    x = (3 + rng.normal(size=(images * group, c))).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    shift = x[0].astype(np.float64)
    total, squares = kernels.shifted_sums(x, shift, group)
    by_chunks = np.zeros(c), np.zeros(c)
    for a, b in ((0, 1), (1, 4), (4, 6)):
        kernels.add_shifted_sums(x[a * group : b * group], shift, group, *by_chunks)
    np.testing.assert_array_equal(by_chunks[0], total)
    np.testing.assert_array_equal(by_chunks[1], squares)
    d = x.astype(np.float64) - shift  # and the float64 sums, to the dtype's rounding
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(total - d.sum(axis=0)) <= 8 * eps * np.abs(d).sum(axis=0))
    np.testing.assert_allclose(squares, (d * d).sum(axis=0), rtol=8 * eps)
    # batch norm's backward sums: the same float64 sums of g and g * x_hat
    mean, inv_std = x.mean(axis=0).astype(dtype), (1 / x.std(axis=0)).astype(dtype)
    scale, beta, slope = (inv_std * 0.7).astype(dtype), np.full(c, 0.1, dtype), dtype(0.3)
    dbeta, dgamma = kernels.normalize_backward_sums(dy, x, mean, inv_std, scale, beta, slope)
    v = (x - mean) * scale + beta
    g = np.where(v > 0, dy, slope * dy).astype(np.float64)
    gx = g * ((x - mean) * inv_std)
    assert np.all(np.abs(dbeta - g.sum(axis=0)) <= 8 * eps * np.abs(g).sum(axis=0))
    assert np.all(np.abs(dgamma - gx.sum(axis=0)) <= 8 * eps * np.abs(gx).sum(axis=0))


def test_fast_batchnorm_of_no_rows_gives_the_plain_forms_nan_statistics():
    x, ones = np.zeros((0, 4), np.float32), np.ones(4, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"), pytest.warns(RuntimeWarning):
        _, mean_ref, var_ref, _ = nn.batchnorm_train_forward(x, ones, ones * 0, 1e-3)
    y, mean, var, _ = batchnorm.batchnorm_train_forward(x, ones, ones * 0, 1e-3)
    assert y.shape == (0, 4)
    assert np.isnan(mean_ref).all() and np.isnan(mean).all() and np.isnan(var).all()


def test_batchnorm_statistics_keep_their_precision_under_a_large_mean():
    # float32 values 1000 + N(0, 0.01): a one-pass E[x^2] - E[x]^2 would lose the variance.
    rng = np.random.default_rng(6)
    x = (1000 + 0.01 * rng.normal(size=(4096, 3))).astype(np.float32)
    _, mean, var, _ = batchnorm.batchnorm_train_forward(
        x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-3
    )
    exact = x.astype(np.float64)
    np.testing.assert_allclose(mean, exact.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, exact.var(axis=0), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("labels", ["integers", "whole floats", "one-hot", "soft"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (128, 10), (33, 3)])
def test_fast_crossentropy_from_logits_matches_reference(dtype, labels, shape):
    rng = np.random.default_rng(7)
    n, k = shape
    logits = (rng.standard_normal((n, k)) * 30).astype(dtype)  # exp would overflow unshifted
    classes = rng.integers(0, k, n)
    y = {
        "integers": classes,
        "whole floats": classes.astype(np.float32),
        "one-hot": np.eye(k, dtype=dtype)[classes],
        "soft": rng.dirichlet(np.ones(k), n).astype(dtype),
    }[labels]
    loss, grad = losses.crossentropy_from_logits(logits, y)
    plain_loss, plain_grad = nn.crossentropy_from_logits(logits, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(plain_loss, rel=1e-12 if dtype == np.float64 else 1e-6)
    _close(grad, plain_grad, dtype)


def test_fast_crossentropy_reads_logits_in_any_layout():
    rng = np.random.default_rng(8)
    wide = rng.standard_normal((6, 20)).astype(np.float32)
    logits = wide[:, ::2]  # not contiguous
    y = rng.integers(0, 10, 6)
    loss, grad = losses.crossentropy_from_logits(logits, y)
    plain_loss, plain_grad = nn.crossentropy_from_logits(logits, y)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    _close(grad, plain_grad, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads_of", ["cnnlab", "blas"])
def test_dense_forward_with_its_activation_is_the_formula(dtype, slope, with_bias, threads_of):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(24, 3000)).astype(dtype)  # 24 x 3000 x 70: in parts on two threads
    kernel = rng.normal(size=(3000, 70)).astype(dtype)
    bias = rng.normal(size=70).astype(dtype) if with_bias else None
    hold = parallel.one_blas_thread if threads_of == "cnnlab" else parallel.blas_threads
    with hold():
        assert dense._tiled(x, kernel) == (dtype == np.float32 and threads_of == "cnnlab")
        y, _ = dense.dense_forward(x, kernel, bias, negative_slope=slope)
    z = x.astype(np.float64) @ kernel + (0 if bias is None else bias)
    expected = z if slope is None else np.where(z > 0, z, slope * z)
    assert y.dtype == dtype
    tolerance = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance)
