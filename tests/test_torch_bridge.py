"""``cnnlab.torch``: a model exported to PyTorch computes the same function, and trained
weights come back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the PyTorch bridge tests need torch: pip install 'cnnlab[torch]'"
)

import cnnlab  # noqa: E402
from cnnlab import layers as L  # noqa: E402
from cnnlab.layers.base import Layer  # noqa: E402
from cnnlab.torch import load_torch_weights, to_torch  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    cnnlab.set_random_seed(0)


def _data(shape=(8, 8, 3), n=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def _train_bn(model, x, steps=3):
    """Move the batch-norm statistics away from their initial 0 and 1."""
    for _ in range(steps):
        model(x, training=True)


@pytest.mark.parametrize("name", ["mlp", "cnn", "diagram"])
def test_exported_zoo_model_matches_at_inference(name):
    model = cnnlab.zoo.get(name, input_shape=(8, 8, 3), num_classes=4)
    x = _data()
    _train_bn(model, x)
    module = to_torch(model).eval()
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, model.predict(x), rtol=1e-5, atol=1e-6)


def test_exported_model_matches_in_training_mode_and_updates_the_same_statistics():
    model = cnnlab.Sequential(
        [
            L.Input((9, 7, 2)),
            L.Conv2D(4, 3, strides=2, padding="same"),
            L.BatchNormalization(),
            L.LeakyReLU(),
            L.AveragePooling2D(2, padding="same"),
            L.Flatten(),
            L.Dense(3, activation="softmax"),
        ]
    )
    module = to_torch(model).train()
    x = _data((9, 7, 2), n=6)
    ours = model(x, training=True)
    with torch.no_grad():
        theirs = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    bn = model.layers[1]
    np.testing.assert_allclose(module[1].moving_mean.numpy(), bn.weights["moving_mean"], rtol=1e-5)
    np.testing.assert_allclose(
        module[1].moving_variance.numpy(), bn.weights["moving_variance"], rtol=1e-5
    )


def test_exported_model_pads_other_image_sizes_as_keras_does():
    """A model ending in global average pooling takes any image size; the exported module
    works out Keras's "same" padding for each input, as a cnnlab model built for that size does.
    """
    cnnlab.set_floatx("float64")
    try:

        def build(shape):
            return cnnlab.Sequential(
                [
                    L.Input(shape),
                    L.Conv2D(3, 3, strides=2, padding="same"),
                    L.MaxPooling2D(3, strides=2, padding="same"),
                    L.AveragePooling2D(2, padding="same"),
                    L.GlobalAveragePooling2D(),
                    L.Dense(2),
                ]
            )

        model = build((8, 8, 2))
        module = to_torch(model).eval()
        other = build((11, 9, 2))  # uneven "same" padding at every layer
        other.set_weights(model.get_weights())
        x = np.random.default_rng(1).normal(size=(3, 11, 9, 2))
        with torch.no_grad():
            out = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, other.predict(x), rtol=1e-10, atol=0)
    finally:
        cnnlab.set_floatx("float32")


def test_weights_trained_in_torch_come_back():
    model = cnnlab.zoo.cnn(input_shape=(8, 8, 3), num_classes=4)
    module = to_torch(model).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    x = _data(n=8)
    y = torch.from_numpy(np.arange(8) % 4)
    for _ in range(3):
        optimizer.zero_grad()
        probabilities = module(torch.from_numpy(x))
        loss = torch.nn.functional.nll_loss(torch.log(probabilities), y)
        loss.backward()
        optimizer.step()
    before = [w.copy() for w in model.get_weights()]

    load_torch_weights(model, module)

    assert all(
        not np.array_equal(a, b)
        for a, b in zip(before, model.get_weights(), strict=True)
        if a.ndim > 1
    ), "every kernel was trained in torch and must have changed"
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)
    # A round trip through torch changes nothing.
    again = [w.copy() for w in model.get_weights()]
    load_torch_weights(model, to_torch(model))
    for a, b in zip(again, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unsupported_layer_is_named_in_the_error():
    class Square(Layer):
        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, x, training=False):
            return x * x

    model = cnnlab.Sequential([L.Input((4,)), Square(name="square")])
    with pytest.raises(ValueError, match=r"'square' of type Square.*supported: Conv2D"):
        to_torch(model)


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="not built"):
        to_torch(cnnlab.Sequential([L.Dense(3)]))


def test_a_module_of_another_model_is_refused():
    model = cnnlab.zoo.mlp(input_shape=(4, 4, 1), num_classes=3)
    other = cnnlab.zoo.diagram(input_shape=(4, 4, 1), num_classes=3)
    with pytest.raises(ValueError, match=r"'flatten\w*' \(Flatten\) does not match"):
        load_torch_weights(model, to_torch(other))
    shorter = cnnlab.Sequential([L.Input((4, 4, 1)), L.Flatten(), L.Dense(3)])
    with pytest.raises(ValueError, match="has 4 layers, but the module has 2"):
        load_torch_weights(model, to_torch(shorter))
    wider = cnnlab.zoo.mlp(input_shape=(5, 5, 1), num_classes=3)
    with pytest.raises(ValueError, match=r"expects kernel of shape \(16, 200\)"):
        load_torch_weights(model, to_torch(wider))


def test_without_torch_the_error_says_how_to_install_it():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cnnlab\n"
        "try:\n    import cnnlab.torch\n"
        "except ImportError as err:\n    print(err)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert 'pip install "cnnlab[torch]"' in out
