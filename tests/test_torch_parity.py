"""Every layer, and the book's two models, against PyTorch autograd, in float64.

Each test runs the same input through a cnnlab layer and through PyTorch's own ops (made by
``cnnlab.torch.to_torch``), backpropagates the same *random* upstream gradient through both
(never ``.sum()``, which would hide a wrong input gradient of batch norm), and compares the
outputs and the gradients of the input and of every parameter.

Tolerances: 1e-10 relative for outputs, 1e-8 for gradients (relative to the largest value).
Every test runs on both engines: the plain ops of cnnlab.nn and the fast ones of cnnlab.engine.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch parity tests need torch: pip install 'cnnlab[torch]'"
)

import cnnlab  # noqa: E402
from cnnlab import layers as L  # noqa: E402
from cnnlab.torch import to_torch  # noqa: E402
from cnnlab.torch_engine import weight_pairs  # noqa: E402

pytestmark = pytest.mark.usefixtures("each_engine")

FORWARD_TOL = 1e-10
GRADIENT_TOL = 1e-8


@pytest.fixture(autouse=True)
def float64():
    cnnlab.set_floatx("float64")
    cnnlab.set_random_seed(0)
    yield
    cnnlab.set_floatx("float32")


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|``: the error relative to the scale of the reference."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"shapes differ: {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def compare_layer(layer, x: np.ndarray, training: bool = True, seed: int = 1) -> dict:
    """Forward and backward of ``layer`` in cnnlab and in torch; returns the relative errors."""
    model = cnnlab.Sequential([L.Input(x.shape[1:]), layer])
    module = to_torch(model).train(training)
    y = layer(x, training=training)
    dy = np.random.default_rng(seed).normal(size=y.shape)
    dx = layer.backward(dy)

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    errors = {
        "output": relative_error(y, yt.detach().numpy()),
        "input gradient": relative_error(dx, xt.grad.numpy()),
    }
    for name, tensor, _, axes in weight_pairs(layer, module[0]):
        if name in layer.trainable_names:
            grad = tensor.grad.numpy()
            errors[f"{name} gradient"] = relative_error(
                layer.grads[name], grad if axes is None else grad.transpose(axes)
            )
    return errors


def assert_close(errors: dict) -> None:
    for what, error in errors.items():
        tolerance = FORWARD_TOL if what == "output" else GRADIENT_TOL
        assert error < tolerance, f"{what}: relative error {error:.2e} >= {tolerance:.0e}"


def images(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Continuous random values: no ties, so every maximum is unique."""
    return np.random.default_rng(seed).normal(size=(n, h, w, c))


# (batch, height, width, channels, filters, kernel_size, strides, padding): odd and even
# sizes, strides 1 and 2, kernels 1 to 5 (square and not), 1 to 8 channels, batch 1 to 5.
CONV_CASES = [
    (1, 5, 5, 1, 2, 3, 1, "same"),
    (2, 6, 7, 3, 4, (2, 3), 2, "same"),
    (3, 7, 6, 2, 5, 1, 1, "valid"),
    (4, 8, 8, 8, 3, 4, 2, "same"),  # even kernel, stride 2
    (5, 9, 9, 4, 2, 5, 2, "valid"),
    (2, 10, 7, 5, 8, (5, 2), 1, "same"),
    (1, 4, 4, 6, 1, (1, 3), 2, "valid"),
    (3, 11, 10, 1, 3, 3, 2, "same"),  # stride 2: 1 + 1 rows, 0 + 1 columns (uneven)
    (2, 6, 6, 7, 6, (3, 4), (2, 1), "same"),
    (1, 5, 8, 2, 2, 2, 1, "valid"),
]


@pytest.mark.parametrize("n,h,w,c,filters,kernel_size,strides,padding", CONV_CASES)
def test_conv2d_matches_torch(n, h, w, c, filters, kernel_size, strides, padding):
    layer = L.Conv2D(filters, kernel_size, strides=strides, padding=padding)
    layer.build((h, w, c))
    layer.weights["bias"][...] = np.random.default_rng(2).normal(size=filters)
    assert_close(compare_layer(layer, images(n, h, w, c)))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_conv2d_with_activation_matches_torch(activation):
    layer = L.Conv2D(3, 3, padding="same", activation=activation)
    assert_close(compare_layer(layer, images(2, 6, 5, 2)))


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv2d_without_bias_matches_torch(use_bias):
    layer = L.Conv2D(4, 2, strides=2, padding="same", use_bias=use_bias)
    errors = compare_layer(layer, images(3, 7, 7, 3))
    assert ("bias gradient" in errors) == use_bias
    assert_close(errors)


# (batch, height, width, channels, pool_size, strides, padding)
POOL_CASES = [
    (1, 4, 4, 1, 2, None, "valid"),
    (2, 5, 5, 3, 2, None, "same"),  # odd size: the last window is partly padding
    (3, 7, 7, 2, 3, 2, "valid"),  # overlapping windows
    (2, 8, 6, 4, 3, 2, "same"),  # overlapping, uneven padding
    (5, 6, 9, 1, (2, 3), (1, 2), "same"),
    (4, 9, 8, 8, 3, 1, "same"),
    (1, 6, 6, 5, (3, 1), (3, 1), "valid"),
]


@pytest.mark.parametrize("n,h,w,c,pool_size,strides,padding", POOL_CASES)
@pytest.mark.parametrize("pooling", [L.MaxPooling2D, L.AveragePooling2D])
def test_pooling_matches_torch(pooling, n, h, w, c, pool_size, strides, padding):
    layer = pooling(pool_size, strides=strides, padding=padding)
    assert_close(compare_layer(layer, images(n, h, w, c)))


def test_global_average_pooling_matches_torch():
    assert_close(compare_layer(L.GlobalAveragePooling2D(), images(3, 5, 6, 4)))


@pytest.mark.parametrize("shape", [(4, 7), (1, 5, 5, 3), (3, 4, 6, 8), (5, 3, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_normalization_matches_torch(shape, training):
    layer = L.BatchNormalization()
    layer.build(shape[1:])
    rng = np.random.default_rng(3)
    c = shape[-1]
    layer.set_weights(
        [rng.normal(size=c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, c)]
    )
    x = 3.0 + 2.0 * np.random.default_rng(4).normal(size=shape)
    assert_close(compare_layer(layer, x, training=training))


def test_batch_normalization_matches_torch_native_op():
    """Against torch's own batch_norm (not the bridge's module): output and every gradient."""
    layer = L.BatchNormalization(epsilon=1e-3)
    x = images(4, 5, 3, 6) * 2.0 + 1.0
    layer.build(x.shape[1:])
    gamma, beta = np.random.default_rng(5).normal(size=(2, 6))
    layer.set_weights([gamma, beta, np.zeros(6), np.ones(6)])
    y = layer(x, training=True)
    dy = np.random.default_rng(6).normal(size=y.shape)
    dx = layer.backward(dy)

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    gt = torch.from_numpy(gamma.copy()).requires_grad_(True)
    bt = torch.from_numpy(beta.copy()).requires_grad_(True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    assert_close(
        {
            "output": relative_error(y, yt.detach().numpy().transpose(0, 2, 3, 1)),
            "input gradient": relative_error(dx, xt.grad.numpy().transpose(0, 2, 3, 1)),
            "gamma gradient": relative_error(layer.grads["gamma"], gt.grad.numpy()),
            "beta gradient": relative_error(layer.grads["beta"], bt.grad.numpy()),
        }
    )


def test_batch_normalization_moving_statistics_follow_torch_after_several_steps():
    """Keras's ``momentum=0.99`` is torch's ``momentum=0.01``. The moving mean matches torch's
    running mean; the moving variance is updated with the biased batch variance (Keras), where
    torch uses the unbiased one, so it is checked against that rule applied to torch's
    per-channel variance over N, H and W."""
    layer = L.BatchNormalization(momentum=0.99)
    native = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.01, dtype=torch.float64)
    expected_variance = np.ones(3)
    for step in range(6):
        x = images(4, 5, 5, 3, seed=step) * (step + 1) + step
        layer(x, training=True)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        native(xt)
        batch_variance = xt.var(dim=(0, 2, 3), unbiased=False).numpy()
        expected_variance = 0.99 * expected_variance + 0.01 * batch_variance
    moving_mean, moving_variance = layer.get_weights()[2:]
    assert relative_error(moving_mean, native.running_mean.numpy()) < FORWARD_TOL
    assert relative_error(moving_variance, expected_variance) < FORWARD_TOL
    # At inference both use their moving statistics; with torch's set to Keras's, they agree.
    native.eval()
    native.running_var.copy_(torch.from_numpy(moving_variance))
    x = images(2, 5, 5, 3, seed=9)
    y = layer(x, training=False)
    yt = native(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).detach().numpy()
    assert relative_error(y, yt.transpose(0, 2, 3, 1)) < FORWARD_TOL


@pytest.mark.parametrize(
    "units,activation", [(1, None), (5, "relu"), (7, "sigmoid"), (4, "tanh"), (6, "softmax")]
)
def test_dense_matches_torch(units, activation):
    layer = L.Dense(units, activation=activation)
    layer.build((9,))
    layer.weights["bias"][...] = np.random.default_rng(2).normal(size=units)
    assert_close(compare_layer(layer, np.random.default_rng(0).normal(size=(5, 9))))


@pytest.mark.parametrize(
    "layer",
    [L.ReLU(), L.LeakyReLU(), L.LeakyReLU(negative_slope=0.1), L.Softmax(), L.Activation("tanh")],
    ids=lambda layer: type(layer).__name__,
)
def test_activations_match_torch(layer):
    assert_close(compare_layer(layer, images(2, 3, 4, 5)))


def test_flatten_matches_torch_in_keras_order():
    assert_close(compare_layer(L.Flatten(), images(3, 4, 5, 2)))


def test_dropout_is_the_identity_at_inference_in_both():
    assert_close(compare_layer(L.Dropout(0.5), images(2, 4, 4, 3), training=False))


# -- whole models: the book's MLP and CNN over a few optimizer steps -------------------------
class _FixedMask(torch.nn.Module):
    """Dropout with a given mask: the one cnnlab drew, so both models drop the same units."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return x * self.mask if self.training else x


def _keras_adam(params, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras's Adam written with torch tensors (epsilon added after the step's bias correction):
    ``w -= lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)``."""
    state = {"t": 0, "m": [torch.zeros_like(p) for p in params]}
    state["v"] = [torch.zeros_like(p) for p in params]

    def step():
        state["t"] += 1
        t = state["t"]
        alpha = lr * (1 - beta_2**t) ** 0.5 / (1 - beta_1**t)
        with torch.no_grad():
            for p, m, v in zip(params, state["m"], state["v"], strict=True):
                m.mul_(beta_1).add_((1 - beta_1) * p.grad)
                v.mul_(beta_2).add_((1 - beta_2) * p.grad**2)
                p.sub_(alpha * m / (v.sqrt() + epsilon))

    return step


OPTIMIZERS = {
    "sgd": (
        lambda: cnnlab.optimizers.SGD(learning_rate=0.05),
        lambda ps: torch.optim.SGD(ps, lr=0.05).step,
    ),
    "sgd-momentum": (
        lambda: cnnlab.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9).step,
    ),
    "sgd-nesterov": (
        lambda: cnnlab.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True).step,
    ),
    "adam": (lambda: cnnlab.optimizers.Adam(learning_rate=1e-2), lambda ps: _keras_adam(ps, 1e-2)),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_book_models_train_like_torch(name, optimizer):
    model = cnnlab.zoo.get(name, input_shape=(8, 8, 3), num_classes=4)
    make_ours, make_torch = OPTIMIZERS[optimizer]
    model.compile(optimizer=make_ours(), loss="categorical_crossentropy")
    module = to_torch(model).train()
    masks = {}
    for layer_name, sub in list(module.named_children()):
        if isinstance(sub, torch.nn.Dropout):
            masks[layer_name] = _FixedMask()
            setattr(module, layer_name, masks[layer_name])
    step = make_torch(list(module.parameters()))

    rng = np.random.default_rng(7)
    for _ in range(4):
        x = rng.normal(size=(6, 8, 8, 3))
        y = np.eye(4)[rng.integers(0, 4, size=6)]
        loss = model.train_on_batch(x, y)
        for layer_name, mask in masks.items():
            mask.mask = torch.from_numpy(model.layers[_index(model, layer_name)]._mask)

        module.zero_grad()
        p = module(torch.from_numpy(x))
        torch_loss = -(torch.from_numpy(y) * torch.log(p)).sum(dim=1).mean()
        torch_loss.backward()
        step()

        assert abs(loss - torch_loss.item()) < FORWARD_TOL * abs(torch_loss.item())
        for layer, sub in zip(model.layers, module, strict=True):
            for weight, tensor, _, axes in weight_pairs(layer, sub):
                value = tensor.detach().numpy()
                value = value if axes is None else value.transpose(axes)
                # A conv bias right before batch norm has a zero gradient in exact arithmetic:
                # both stay at zero up to rounding (which Adam scales by lr / epsilon to about
                # 1e-12), hence the absolute floor, far below the weights' scale of 0.1.
                np.testing.assert_allclose(
                    layer.weights[weight],
                    value,
                    rtol=GRADIENT_TOL,
                    atol=1e-10,
                    err_msg=f"{layer.name}.{weight}",
                )


def _index(model, layer_name: str) -> int:
    return [layer.name for layer in model.layers].index(layer_name)


def keras_pads(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """Keras's padding of one axis, from its rule (not from cnnlab): the output has
    ``ceil(n / s)`` values, the total padding is ``max(0, (out - 1) * s + k - n)``, and the odd
    one goes after (bottom/right)."""
    if padding == "valid":
        return 0, 0
    out = -(-n // s)
    total = max(0, (out - 1) * s + k - n)
    return total // 2, total - total // 2


def keras_windows(x: np.ndarray, window, strides, padding: str, fill: float):
    """The windows of NHWC ``x`` after Keras's padding (filled with ``fill``), by torch's unfold:
    shape ``(N, C, out_h, out_w, kh, kw)``. Independent of cnnlab and of its bridge."""
    (kh, kw), (sh, sw) = window, strides
    top, bottom = keras_pads(x.shape[1], kh, sh, padding)
    left, right = keras_pads(x.shape[2], kw, sw, padding)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    xt = torch.nn.functional.pad(xt, (left, right, top, bottom), value=fill)
    return xt.unfold(2, kh, sh).unfold(3, kw, sw)


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("n,h,w,c,filters,kernel_size,strides,padding", CONV_CASES)
def test_conv2d_matches_a_convolution_written_from_keras_padding_rule(
    n, h, w, c, filters, kernel_size, strides, padding
):
    """Conv2D against a convolution written here from the padding rule: pad, take every window,
    multiply by the kernel and sum (the bridge and cnnlab share the padding code; this does not).
    """
    layer = L.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False)
    x = images(n, h, w, c)
    y = layer(x)
    windows = keras_windows(x, pair(kernel_size), pair(strides), padding, fill=0.0).numpy()
    expected = np.einsum("ncyxij,ijcf->nyxf", windows, layer.weights["kernel"])
    assert y.shape == expected.shape
    assert relative_error(y, expected) < FORWARD_TOL


def test_same_padding_with_stride_2_is_uneven():
    """8x8 input, 3x3 kernel, stride 2, "same": 4x4 output and (4 - 1) * 2 + 3 - 8 = 1 row and
    1 column of padding, which Keras puts at the bottom and at the right."""
    assert keras_pads(8, 3, 2, "same") == (0, 1)
    layer = L.Conv2D(1, 3, strides=2, padding="same", use_bias=False)
    layer.build((8, 8, 1))
    layer.weights["kernel"][...] = 0.0
    layer.weights["kernel"][0, 0, 0, 0] = 1.0  # picks the top-left value of each window
    x = images(1, 8, 8, 1)
    # No padding on top/left: the windows start at rows and columns 0, 2, 4, 6.
    np.testing.assert_array_equal(layer(x)[0, :, :, 0], x[0, ::2, ::2, 0])


@pytest.mark.parametrize("n,h,w,c,pool_size,strides,padding", POOL_CASES)
def test_pooling_padding_and_counts_follow_keras(n, h, w, c, pool_size, strides, padding):
    """Max pooling ignores the padding (-inf); average pooling divides by the number of real
    values under each window (the padding is NaN here, left out by nanmean)."""
    pool_size = pair(pool_size)
    strides = pool_size if strides is None else pair(strides)
    x = images(n, h, w, c)
    y_max = L.MaxPooling2D(pool_size, strides=strides, padding=padding)(x)
    y_avg = L.AveragePooling2D(pool_size, strides=strides, padding=padding)(x)
    windows = keras_windows(x, pool_size, strides, padding, fill=-np.inf)
    expected_max = windows.amax(dim=(-2, -1)).numpy().transpose(0, 2, 3, 1)
    windows = keras_windows(x, pool_size, strides, padding, fill=np.nan)
    expected_avg = windows.nanmean(dim=(-2, -1)).numpy().transpose(0, 2, 3, 1)
    assert relative_error(y_max, expected_max) < FORWARD_TOL
    assert relative_error(y_avg, expected_avg) < FORWARD_TOL
