"""Batch norm and the activation after it, run as one op, give the numbers of the two layers
run one after the other: forward, backward, moving statistics, and whole training steps."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from cnnlab import backend, fusion, layers, nn, optimizers, zoo
from cnnlab.engine import (
    activations,
    batchnorm,
    blas,
    conv,
    conv_batchnorm,
    parallel,
    scratch,
    tuning,
)
from cnnlab.engine.tuning import ConvPlan
from cnnlab.fusion import NormalizeActivate
from cnnlab.model import Model, Sequential


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.3, 0.0])
@pytest.mark.parametrize("shape", [(6, 5, 4, 3), (2, 256, 256, 16)])  # the second: 2 slices
def test_batchnorm_with_activation_equals_the_two_ops(dtype, slope, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    gamma, beta = rng.normal(size=(2, shape[-1])).astype(dtype)

    y, mean, var, cache = batchnorm.batchnorm_train_forward(
        x, gamma, beta, 1e-3, negative_slope=slope
    )
    dx, dgamma, dbeta = batchnorm.batchnorm_train_backward(dy, cache)

    z, mean_2, var_2, cache_2 = batchnorm.batchnorm_train_forward(x, gamma, beta, 1e-3)
    y_2 = activations.leaky_relu(z, slope)
    dx_2, dgamma_2, dbeta_2 = batchnorm.batchnorm_train_backward(
        activations.leaky_relu_backward(dy, z, slope), cache_2
    )
    for fused, apart in zip(
        (y, mean, var, dx, dgamma, dbeta),
        (y_2, mean_2, var_2, dx_2, dgamma_2, dbeta_2),
        strict=True,
    ):
        np.testing.assert_array_equal(fused, apart)
    assert (y < 0).any() == (slope > 0)  # the activation was applied: ReLU leaves no negatives

    stats = rng.normal(size=shape[-1]).astype(dtype), rng.uniform(0.5, 2, shape[-1]).astype(dtype)
    y_inf, _ = batchnorm.batchnorm_inference_forward(
        x, gamma, beta, *stats, 1e-3, negative_slope=slope
    )
    z_inf, _ = batchnorm.batchnorm_inference_forward(x, gamma, beta, *stats, 1e-3)
    np.testing.assert_array_equal(y_inf, activations.leaky_relu(z_inf, slope))


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize(
    "dtype,batch,strides,padding,bias,slope,input_gradient",
    [
        (np.float32, 7, 1, "same", True, 0.3, True),
        (np.float32, 5, 2, "same", False, 0.0, True),
        (np.float64, 4, 1, "valid", True, None, False),
        (np.float32, 1, 2, "valid", True, 0.3, True),
    ],
)
def test_conv_and_batch_norm_in_training_give_the_numbers_of_the_ops_one_by_one(
    n_threads, dtype, batch, strides, padding, bias, slope, input_gradient
):
    """One hand-over each way (threads meeting for batch norm's sums) and the convolution,
    batch norm and the activation one after the other agree to rounding: the outputs, the
    batch statistics and every gradient."""
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(7)
        x = rng.normal(size=(batch, 9, 9, 4)).astype(dtype)
        kernel = rng.normal(0, 0.3, size=(3, 3, 4, 6)).astype(dtype)
        b = rng.normal(size=6).astype(dtype) if bias else None
        gamma, beta = rng.uniform(0.5, 1.5, 6).astype(dtype), rng.normal(size=6).astype(dtype)
        s = (strides, strides)
        y, mean, var, cache = conv_batchnorm.conv_batchnorm_train_forward(
            x, kernel, b, s, padding, gamma, beta, 1e-3, slope
        )
        dy = rng.normal(size=y.shape).astype(dtype)
        dx, dkernel, dbias, dgamma, dbeta = conv_batchnorm.conv_batchnorm_train_backward(
            dy, cache, input_gradient
        )

        z, conv_cache = conv.conv2d_forward(x, kernel, b, s, padding)
        y_2, mean_2, var_2, bn_cache = batchnorm.batchnorm_train_forward(
            z, gamma, beta, 1e-3, negative_slope=slope
        )
        dz, dgamma_2, dbeta_2 = batchnorm.batchnorm_train_backward(dy, bn_cache)
        dx_2, dkernel_2, _ = conv.conv2d_backward(dz, conv_cache, input_gradient)
        tol = {np.float32: 2e-5, np.float64: 1e-12}[dtype]
        for fused, apart in zip(
            (y, mean, var, dkernel, dgamma, dbeta, dx),
            (y_2, mean_2, var_2, dkernel_2, dgamma_2, dbeta_2, dx_2),
            strict=True,
        ):
            if apart is None:
                assert fused is None
                continue
            assert fused.dtype == apart.dtype == dtype
            np.testing.assert_allclose(fused, apart, rtol=tol, atol=tol * np.abs(apart).max())
        # The bias gradient, the sums of dz (zero but for rounding: batch norm takes the
        # mean out), to the rounding of sums of that many values.
        sums = dz.astype(np.float64).sum(axis=(0, 1, 2))
        sizes = np.abs(dz).astype(np.float64).sum(axis=(0, 1, 2))
        assert dbias.dtype == dtype and dbias.shape == (6,)
        assert np.all(np.abs(dbias - sums) <= tol * sizes)
        assert (y < 0).any() == (slope != 0)
    finally:
        parallel.set_num_threads(before)


_PLANS = {
    "im2col, by BLAS": ConvPlan(False, 1 << 14, 0, "blas"),
    "im2col, by BLAS in calls of 4K multiply-adds": ConvPlan(False, 1 << 14, 1 << 12, "blas"),
    "Winograd, by BLAS": ConvPlan(True, 1 << 14, 0, "blas"),
    "im2col, by the tiles": ConvPlan(False, 1 << 14, 0, "tiles"),
    "straight from the input": ConvPlan(False, 1 << 14, 0, "direct"),
    "Winograd, the kernel gradient by im2col": ConvPlan(True, 1 << 14, 0, "tiles"),
    "Winograd, the kernel gradient straight from the input": ConvPlan(True, 1 << 20, 0, "direct"),
}


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("way", sorted(_PLANS))
@pytest.mark.parametrize(
    "batch,strides,padding,bias,input_gradient",
    [(7, 1, "same", True, True), (5, 2, "same", False, True), (2, 1, "valid", True, False),
     (1, 2, "same", True, True), (3, 2, "valid", False, True)],
)  # fmt: skip
def test_the_ops_compiled_parts_give_the_numbers_of_its_slices_in_python(
    monkeypatch, n_threads, way, batch, strides, padding, bias, input_gradient
):
    """In float32 the op runs as one compiled part a thread (cnnlab.engine.parts), without
    Python, whatever multiplies (NumPy's BLAS called at its address, or cnnlab's tiles): the
    same numbers, bit for bit, as its slices in Python, on any number of threads, more of them
    than images too."""
    if _PLANS[way].products == "blas" and blas.sgemm_address() is None:
        pytest.skip("NumPy's BLAS is not OpenBLAS")
    monkeypatch.setattr(tuning, "conv_plan", lambda *args: _PLANS[way])
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(11)
        x = rng.normal(size=(batch, 9, 10, 16)).astype(np.float32)
        kernel = rng.normal(0, 0.1, size=(3, 3, 16, 6)).astype(np.float32)
        b = rng.normal(size=6).astype(np.float32) if bias else None
        gamma = rng.uniform(0.5, 1.5, 6).astype(np.float32)
        beta = rng.normal(size=6).astype(np.float32)
        s = (strides, strides)
        assert conv.by_parts(x, kernel, s, padding)
        results = []
        for by_parts in (True, False):
            monkeypatch.setattr(conv, "by_parts", lambda *args, answer=by_parts: answer)
            y, mean, var, cache = conv_batchnorm.conv_batchnorm_train_forward(
                x, kernel, b, s, padding, gamma, beta, 1e-3, 0.2
            )
            dy = np.random.default_rng(5).normal(size=y.shape).astype(np.float32)
            grads = conv_batchnorm.conv_batchnorm_train_backward(dy, cache, input_gradient)
            results.append((y, mean, var, cache.z, cache.stats, *grads))
        for posted, in_python in zip(*results, strict=True):
            if in_python is None:
                assert posted is None
            else:
                assert posted.dtype == in_python.dtype
                np.testing.assert_array_equal(posted, in_python)
        assert (results[0][-5] is None) == (not input_gradient)
        z, _ = nn.conv2d_forward(x, kernel, b, s, padding)  # and the plain forward pass's
        expected = nn.leaky_relu(nn.batchnorm_train_forward(z, gamma, beta, 1e-3)[0], 0.2)
        np.testing.assert_allclose(results[0][0], expected, rtol=2e-5, atol=2e-5)
    finally:
        parallel.set_num_threads(before)


def test_training_steps_take_each_conv_with_its_batch_norm_and_pair_the_others():
    model = Sequential(
        [
            layers.Input((6, 6, 2)),
            layers.Conv2D(3, 3),
            layers.BatchNormalization(),
            layers.LeakyReLU(0.1),
            layers.Conv2D(3, 3, padding="same"),
            layers.BatchNormalization(),
            layers.Activation("tanh"),  # not a (leaky) ReLU: stays apart
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Conv2D(3, 3, activation="relu"),  # an activation of its own: stays apart
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(4),
            layers.BatchNormalization(),
            layers.ReLU(),  # the model's last layer: stays apart, the loss reads its input
        ]
    )
    steps = model._steps()
    kinds = [type(s).__name__ for s in steps]
    assert kinds == [
        "ConvNormalizeActivate",
        "ConvNormalizeActivate",
        "Activation",
        "NormalizeActivate",
        "Conv2D",
        "BatchNormalization",
        "Flatten",
        "Dense",
        "BatchNormalization",
        "ReLU",
    ]
    assert [s.negative_slope for s in steps if isinstance(s, NormalizeActivate)] == [0.0]
    assert [s.negative_slope for s in steps[:2]] == [0.1, None]
    assert [len(s.layers) for s in steps[:2]] == [3, 2]
    assert steps[0].output_shape == model.layers[2].output_shape


def test_inference_steps_take_each_conv_with_the_batch_norm_after_it():
    model = Sequential(
        [
            layers.Input((6, 6, 2)),
            layers.Conv2D(3, 3, padding="same"),
            layers.BatchNormalization(),
            layers.LeakyReLU(0.1),
            layers.Conv2D(3, 3, use_bias=False),
            layers.BatchNormalization(),  # no activation after it
            layers.Conv2D(3, 3, activation="relu"),  # an activation of its own: stays apart
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(4),
        ]
    )
    steps = model._steps(training=False)
    assert [type(s).__name__ for s in steps] == [
        "ConvChain",
        "Conv2D",
        "BatchNormalization",
        "Flatten",
        "DenseActivate",  # the model's output joins at inference
    ]
    assert [type(s).__name__ for s in steps[0].steps] == ["ConvNormalizeActivate"] * 2
    assert [s.negative_slope for s in steps[0].steps] == [0.1, None]
    assert steps[0].output_shape == model.layers[4].output_shape
    rng = np.random.default_rng(3)
    for layer in model.layers:  # statistics and weights away from their initial values
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 2, 3) for _ in range(2)]
                + [rng.normal(size=3), rng.uniform(0.5, 2, 3)]
            )
        if isinstance(layer, layers.Conv2D) and layer.use_bias:
            layer.weights["bias"][...] = rng.normal(size=3)
    x = rng.normal(size=(5, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="runs at inference only"):
        steps[0](x, training=True)


def test_a_conv_alone_between_other_layers_is_not_chained():
    model = Sequential(
        [
            layers.Input((6, 6, 2)),
            layers.Conv2D(3, 3, padding="same"),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(3, 3, padding="same"),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(4),
        ]
    )
    kinds = [type(s).__name__ for s in model._steps(training=False)]
    assert kinds == ["ConvNormalizeActivate", "MaxPooling2D", "ConvNormalizeActivate"] + [
        "Flatten",
        "DenseActivate",
    ]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 5, 16, 64])
def test_conv_chain_gives_the_numbers_of_its_steps_one_by_one(monkeypatch, n_threads, batch):
    """Each core takes its slice through every step of the chain, with buffers of its own."""
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    handed = []  # (thread, buffer) for every scratch buffer an op asked for
    real = scratch.buffer

    def spy(*args, **kwargs):
        buf = real(*args, **kwargs)
        handed.append((threading.get_ident(), buf))
        return buf

    monkeypatch.setattr(scratch, "buffer", spy)
    try:
        model = zoo.cnn(input_shape=(16, 16, 3))
        (chain,) = [s for s in model._steps(training=False) if isinstance(s, fusion.ConvChain)]
        assert len(chain.steps) == 4
        x = np.random.default_rng(4).uniform(-1, 1, (batch, 16, 16, 3)).astype(np.float32)
        for _ in range(2):  # the second call reuses the buffers
            expected = x
            for step in chain.steps:
                expected = step(expected)
            handed.clear()
            np.testing.assert_array_equal(chain(x), expected)
            # Scratch of their own: the cores' slices, run at once, may not share an im2col
            # or Winograd buffer (a race that a comparison of numbers catches only now and
            # then).
            threads = {thread for thread, _ in handed}
            assert len(threads) == min(batch, n_threads)
            for buf_id in {id(buf) for _, buf in handed}:
                assert len({t for t, buf in handed if id(buf) == buf_id}) == 1
    finally:
        parallel.set_num_threads(before)


def test_layers_of_different_dtypes_stay_apart():
    norm, act = layers.BatchNormalization(), layers.ReLU(dtype="float64")
    for layer in (norm, act):
        layer.build((4,))
    assert fusion.steps([norm, act]) == [norm, act]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_training_and_inference_give_the_numbers_of_the_layers_one_by_one(monkeypatch, n_threads):
    """The book's CNN trained by train_step (fused steps) and a copy trained layer by layer
    (its plan unfused) get the same gradients to rounding, but for the conv biases before
    batch norm, which are rounding noise on both (batch norm takes the mean out), and end
    three steps on with the same weights to rounding; predict and evaluate, where each
    convolution takes batch norm and the activation into its own pass, agree with calling the
    model up to rounding. Adam's epsilon is 1e-3, as in test_engines: a tiny epsilon turns
    those noisy bias gradients into whole steps. The models come from the seed the fixture
    sets: with other weights a batch-norm output can land within rounding of LeakyReLU's kink
    (seen at 9e-7), where the two sums' last bits choose different slopes and the gradients
    part by a few percent, as any two correct orders of summation may."""
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(1)
        x = rng.uniform(-1, 1, (40, 16, 16, 3)).astype(np.float32)
        y = rng.integers(0, 10, 40)
        fused, apart = (zoo.cnn(input_shape=(16, 16, 3)) for _ in range(2))
        apart.set_weights(fused.get_weights())
        apart.layers[-3].rng = np.random.default_rng(2)  # the same dropout masks for both
        fused.layers[-3].rng = np.random.default_rng(2)
        assert isinstance(fused.layers[-3], layers.Dropout)
        unfused = apart._plan
        monkeypatch.setattr(apart, "_plan", lambda training, fused: unfused(training, False))
        for model in (fused, apart):
            model.compile(
                optimizers.Adam(1e-3, epsilon=1e-3),
                "sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        kinds = {type(s) for s in fused._steps()}
        assert {fusion.ConvNormalizeActivate, NormalizeActivate} <= kinds
        assert {type(s.op) for s in apart._plan(True, True).steps} == {
            type(layer) for layer in apart.layers
        }
        for step in range(3):
            a, b = fused.train_step(x, y), apart.train_step(x, y)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            if step:
                continue
            for one, two in zip(fused.layers, apart.layers, strict=True):
                for name in one.trainable_names:
                    g, h = one.grads[name], two.grads[name]
                    if isinstance(one, layers.Conv2D) and name == "bias":
                        assert max(np.abs(g).max(), np.abs(h).max()) < 1e-5
                    else:
                        np.testing.assert_allclose(g, h, rtol=0, atol=1e-5 * np.abs(h).max())
        for a, b in zip(fused.get_weights(), apart.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(1.0, np.abs(b).max()))
        assert any(isinstance(s, fusion.ConvChain) for s in fused._steps(training=False))
        np.testing.assert_allclose(fused.predict(x, batch_size=16), fused(x), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(fused.evaluate(x, y), apart.evaluate(x, y), rtol=1e-5)
    finally:
        parallel.set_num_threads(before)


def test_backward_after_a_fused_inference_call_is_refused():
    norm, act = layers.BatchNormalization(), layers.LeakyReLU(0.3)
    for layer in (norm, act):
        layer.build((3,))
    x = np.ones((2, 3), np.float32)
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        norm.backward(x)
    step = NormalizeActivate(norm, act)
    step(x, training=False)
    with pytest.raises(RuntimeError, match="backward needs a training call first"):
        step.backward(x)
    conv, norm, act = layers.Conv2D(3, 3), layers.BatchNormalization(), layers.ReLU()
    conv.build((5, 5, 2))
    for layer in (norm, act):
        layer.build((3, 3, 3))
    images = np.ones((2, 5, 5, 2), np.float32)
    step = fusion.ConvNormalizeActivate(conv, norm, act)
    with pytest.raises(RuntimeError, match="backward needs a training call first"):
        step.backward(np.ones((2, 3, 3, 3), np.float32))
    step(images, training=True)
    step.backward(np.ones((2, 3, 3, 3), np.float32))  # after a training call it may
    step(images, training=False)
    with pytest.raises(RuntimeError, match="backward needs a training call first"):
        step.backward(np.ones((2, 3, 3, 3), np.float32))


def test_predict_between_a_training_call_and_its_backward_leaves_the_backward_alone():
    rng = np.random.default_rng(5)
    model = Sequential(
        [
            layers.Input((6, 6, 2)),
            layers.Conv2D(3, 3, padding="same", dtype="float64"),
            layers.BatchNormalization(dtype="float64"),
            layers.LeakyReLU(dtype="float64"),
            layers.Flatten(dtype="float64"),
            layers.Dense(2, dtype="float64"),
        ]
    )
    x, other = rng.normal(size=(2, 4, 6, 6, 2))
    dy = rng.normal(size=(4, 2))
    model(x, training=True)
    expected = model.backward(dy), model.layers[0].grads["kernel"].copy()
    model(x, training=True)
    model.predict(other)  # the same shapes, through the fused inference steps
    np.testing.assert_array_equal(model.backward(dy), expected[0])
    np.testing.assert_array_equal(model.layers[0].grads["kernel"], expected[1])


# -- the optimizer's update of a dense layer's kernel, in its backward pass -------------------
def _model_with_dense_layers(shared: bool = False, dtype="float32"):
    """A small CNN whose dense layers split over the threads (see the tests' monkeypatch of
    the dense ops' grain); with ``shared``, one dense layer is called twice."""
    inputs = layers.Input((6, 6, 2), dtype=dtype)
    h = layers.Conv2D(4, 3, padding="same", dtype=dtype)(inputs)
    h = layers.BatchNormalization(dtype=dtype)(h)
    h = layers.LeakyReLU(dtype=dtype)(h)
    h = layers.Flatten(dtype=dtype)(h)
    h = layers.Dense(16, activation="relu", dtype=dtype)(h)
    twice = layers.Dense(16, activation="relu", dtype=dtype)
    h = twice(twice(h)) if shared else twice(h)
    return Model(inputs, layers.Dense(3, activation="softmax", dtype=dtype)(h))


def _train_three_steps(model, optimizer, in_backward: bool, monkeypatch) -> list:
    """Three train_steps of ``model``, the dense kernels updated in the backward pass or (as
    before) by the optimizer after it; the ``done`` sets apply was given."""
    if not in_backward:
        monkeypatch.setattr(
            model, "_kernels_updated_in_backward", lambda: contextlib.nullcontext(set())
        )
    model.compile(optimizer, "sparse_categorical_crossentropy")
    given = []
    apply = model.optimizer.apply

    def spying(grads, weights, done=frozenset()):
        given.append(done)
        apply(grads, weights, done)

    monkeypatch.setattr(model.optimizer, "apply", spying)
    rng = np.random.default_rng(3)
    dtype = model.layers[1].dtype
    for _ in range(3):
        x = rng.uniform(-1, 1, (10, 6, 6, 2)).astype(dtype)
        model.train_step(x, rng.integers(0, 3, 10))
    return given


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.Adam(0.01),
        lambda: optimizers.SGD(0.05, momentum=0.9),
        lambda: optimizers.Adam(0.01, clipvalue=0.01),
        lambda: optimizers.Adam(0.01, clipnorm=0.1),
    ],
    ids=["adam", "momentum", "clipvalue", "clipnorm"],
)
def test_dense_kernels_updated_in_the_backward_pass_get_the_numbers_of_the_update_after_it(
    make, dtype, n_threads, monkeypatch
):
    """Each dense layer's kernel updated by the optimizer a block of rows on each core, in
    the layer's backward pass, and the same model updated after the backward pass: the same
    bits, weights and slots, three steps on. Every dense kernel is updated in the backward
    pass (the optimizer's apply is told to skip them), but with clipnorm, whose update needs
    the whole gradient."""
    from cnnlab.engine import dense

    monkeypatch.setattr(dense, "_MIN_WORK", 1)  # a thread for every few inputs
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        from cnnlab import seeding

        seeding.set_random_seed(0)
        fast = _model_with_dense_layers(dtype=dtype)
        after = _model_with_dense_layers(dtype=dtype)
        after.set_weights(fast.get_weights())
        chains = [s.op for s in fast._plan(True, True).steps if isinstance(s.op, fusion.DenseChain)]
        assert [len(chain.layers) for chain in chains] == [3]  # the dense layers' backward pass
        given = _train_three_steps(fast, make(), True, monkeypatch)
        assert _train_three_steps(after, make(), False, monkeypatch) == [frozenset()] * 3
        for a, b in zip(fast.get_weights(), after.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(
            fast.get_weights()[-2], _model_with_dense_layers().get_weights()[-2]
        )
        for key, value in after.optimizer.get_state().items():
            np.testing.assert_array_equal(fast.optimizer.get_state()[key], value)
        weights = fast.trainable_weights
        kernels = {
            i for i, w in enumerate(weights) for layer in fast.layers
            if isinstance(layer, layers.Dense) and w is layer.weights["kernel"]
        }  # fmt: skip
        assert len(kernels) == 3
        expected = frozenset() if fast.optimizer.clipnorm else frozenset(kernels)
        assert given == [expected] * 3
    finally:
        parallel.set_num_threads(before)


def test_a_dense_layer_called_twice_is_updated_after_the_backward_pass(monkeypatch):
    """A dense layer called twice sums its calls' gradients before its update: the optimizer
    updates it after the backward pass, the other dense layers in it; the numbers are those
    of every update after the backward pass."""
    from cnnlab import seeding
    from cnnlab.engine import dense

    monkeypatch.setattr(dense, "_MIN_WORK", 1)
    seeding.set_random_seed(0)
    fast, after = (_model_with_dense_layers(shared=True) for _ in range(2))
    after.set_weights(fast.get_weights())
    given = _train_three_steps(fast, optimizers.Adam(0.01), True, monkeypatch)
    _train_three_steps(after, optimizers.Adam(0.01), False, monkeypatch)
    for a, b in zip(fast.get_weights(), after.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    weights = fast.trainable_weights
    once = [fast.layers[i].weights["kernel"] for i in (-3, -1)]
    assert fast.layers[-2] is not fast.layers[-3]
    assert given == [frozenset(i for i, w in enumerate(weights) if any(w is k for k in once))] * 3


def test_with_the_ops_whole_on_blas_threads_the_kernels_are_updated_after_the_backward_pass(
    monkeypatch,
):
    """A model that runs every op whole, on BLAS's threads (the threads mode the tuner may
    choose for the book's MLP), gets each kernel's gradient in one block: the optimizer
    updates the kernels after the backward pass."""
    from cnnlab import seeding

    seeding.set_random_seed(0)
    model = _model_with_dense_layers()
    monkeypatch.setattr(model, "_threads", lambda xs: "blas")
    assert _train_three_steps(model, optimizers.Adam(0.01), True, monkeypatch) == [frozenset()] * 3


def test_the_dense_backward_pass_updates_each_block_of_rows_after_its_input_gradient(monkeypatch):
    """The fast dense backward pass with an update: called once for each thread's block of
    rows, the blocks covering the kernel; the input gradient is the one of the kernel as it
    was (each block's columns of it read before the update of those rows)."""
    from cnnlab.engine import dense
    from cnnlab.nn import dense as plain

    monkeypatch.setattr(dense, "_MIN_WORK", 1)
    before = parallel.num_threads()
    parallel.set_num_threads(3)
    try:
        rng = np.random.default_rng(0)
        x, kernel = rng.standard_normal((5, 12)), rng.standard_normal((12, 4))
        dy, old = rng.standard_normal((5, 4)), kernel.copy()
        _, cache = dense.dense_forward(x, kernel, None)
        blocks = []

        def update(grad, rows):
            blocks.append((rows.start, rows.stop))
            np.testing.assert_array_equal(grad, x[:, rows].T @ dy)
            kernel[rows] -= 1.0

        dx, dkernel, dbias = dense.dense_backward(dy, cache, update=update)
        want_dx, want_dkernel, want_dbias = plain.dense_backward(dy, plain.DenseCache(x, old))
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12)
        np.testing.assert_allclose(dkernel, want_dkernel, rtol=1e-12)
        np.testing.assert_allclose(dbias, want_dbias, rtol=1e-12)
        assert sorted(blocks) == [(0, 4), (4, 8), (8, 12)]
        np.testing.assert_array_equal(kernel, old - 1.0)
    finally:
        parallel.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_inference_takes_each_dense_layer_with_its_own_activation(n_threads):
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        model = Sequential(
            [
                layers.Input((16, 16, 8)),
                layers.Flatten(),
                layers.Dense(64, activation="relu"),  # 40 x 2048 x 64: in parts on the threads
                layers.Dense(40, activation="leaky_relu"),
                layers.Dense(30),
                layers.BatchNormalization(),
                layers.Dense(20, activation="tanh"),  # an activation the pass does not apply
                layers.Dense(5, activation="softmax"),  # the output: the loss reads its logits
            ]
        )
        steps = model._steps(training=False)
        assert [type(s).__name__ for s in steps] == [
            "Flatten", "DenseChain", "BatchNormalization", "Dense", "DenseActivate",
        ]  # fmt: skip
        assert steps[-1].softmax and steps[-1].negative_slope is None
        assert [type(s).__name__ for s in steps[1].steps] == ["DenseActivate"] * 3
        assert [s.negative_slope for s in steps[1].steps] == [0.0, 0.2, None]
        trained = model._steps(training=True)  # the same layers chained, none on its own
        assert [type(s).__name__ for s in trained] == [
            "Flatten", "DenseChain", "BatchNormalization", "Dense", "Dense",
        ]  # fmt: skip
        assert trained[1].layers == steps[1].layers
        rng = np.random.default_rng(9)
        for layer in model.layers:  # biases away from zero, so that each is seen added
            if isinstance(layer, layers.Dense):
                layer.weights["bias"][...] = rng.normal(size=layer.units)
        x = rng.normal(size=(40, 16, 16, 8)).astype(np.float32)
        np.testing.assert_allclose(model.predict(x, batch_size=40), model(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="runs at inference only"):
            steps[1].steps[0](x.reshape(40, -1), training=True)
    finally:
        parallel.set_num_threads(before)


def _dense_chain(dtype=np.float32):
    """Four dense layers (one without a bias, the last the model's softmax output) as one
    DenseChain, and the model."""
    model = Sequential(
        [
            layers.Input((3000,), dtype=dtype),
            layers.Dense(70, activation="leaky_relu", dtype=dtype),
            layers.Dense(33, activation="relu", use_bias=False, dtype=dtype),
            layers.Dense(9, dtype=dtype),
            layers.Dense(2, activation="softmax", dtype=dtype),  # the output joins at inference
        ]
    )
    rng = np.random.default_rng(12)
    for layer in model.layers:
        if layer.use_bias:
            layer.weights["bias"][...] = rng.normal(size=layer.units)
    chain = model._steps(training=False)[0]
    assert isinstance(chain, fusion.DenseChain) and len(chain.steps) == 4
    return model, chain


def _products(by_blas: bool):
    """Dense chains multiplying by BLAS (NumPy's held to one thread, as a model's steps hold
    it), or as they are, by the tiles."""
    if not by_blas:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(parallel.one_blas_thread())
    stack.enter_context(parallel.blas_products())
    return stack


@pytest.mark.parametrize("by_blas", [False, True], ids=["tiles", "blas"])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_a_dense_chain_gives_the_numbers_of_its_layers_one_by_one(n_threads, by_blas):
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        model, chain = _dense_chain()
        rng = np.random.default_rng(13)
        for rows in (1, 7, 32, 7):  # a table for each batch size, kept and used again
            x = rng.normal(size=(rows, 3000)).astype(np.float32)
            expected = x
            for layer in chain.layers:
                expected = layer(expected)
            for _ in range(2):
                with _products(by_blas):
                    np.testing.assert_allclose(chain(x), expected, rtol=1e-5, atol=1e-5)
        assert len(chain._tables.kept) == 3
        gemm = {key[2] for key in chain._tables.kept}  # what each table's parts multiply by
        assert gemm == ({blas.sgemm_address()} if by_blas else {(0, 0)})
        # Both ways of splitting a layer ran: the first (3000 inputs, 840 KB of kernel) by
        # blocks of its inputs on more than one thread, the small ones by rows.
        split = {key[0]: table[:, 10].tolist() for key, (table, *_) in chain._tables.kept.items()}
        assert split[n_threads] == ([1, 1, 1, 1] if n_threads == 1 else [0, 1, 1, 1])
        with parallel.blas_threads():  # each step on its own, BLAS on its threads
            np.testing.assert_allclose(chain(x), expected, rtol=1e-5, atol=1e-5)
        inside = parallel.over_batch(lambda a, b: chain(x), 2)  # no threads to meet inside
        for y in inside:
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    finally:
        parallel.set_num_threads(before)


def _layer_by_layer(layers_, x, dz, input_gradient=True, from_logits=True):
    """The output, the input gradient and each layer's gradients of ``layers_`` called one by
    one in training, backward from ``dz`` (at the last layer's logits, or its output)."""
    for layer in layers_:
        x = layer(x, training=True)
    if from_logits:
        dy = layers_[-1].backward_from_logits(dz)
    else:
        dy = layers_[-1].backward(dz)
    for layer in reversed(layers_[1:-1]):
        dy = layer.backward(dy)
    dx = layers_[0].backward(dy, input_gradient) if len(layers_) > 1 else dy
    grads = [{name: g.copy() for name, g in layer.grads.items()} for layer in layers_]
    return x, dx, grads


@pytest.mark.parametrize("by_blas", [False, True], ids=["tiles", "blas"])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_a_dense_chain_in_training_gives_the_numbers_of_its_layers_one_by_one(n_threads, by_blas):
    """Forward and backward through the chain (one hand-over each way) against its layers
    one by one: the output, the logits the loss reads, every weight gradient, the input
    gradient (none when not wanted); from the logits' gradient (a softmax output) and from
    the output's (the last layer's own activation taken back through)."""
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        model, _ = _dense_chain()
        chain = model._steps(training=True)[0]
        assert isinstance(chain, fusion.DenseChain) and chain.layers == model.layers
        relu_last = Sequential([layers.Input((40,)), layers.Dense(30, activation="relu"),
                                layers.Dense(7, activation="leaky_relu")])  # fmt: skip
        relu_chain = relu_last._steps(training=True)[0]
        rng = np.random.default_rng(18)
        for rows in (1, 7, 32):
            for step, logits, width in ((chain, True, 3000), (relu_chain, False, 40)):
                x = rng.normal(size=(rows, width)).astype(np.float32)
                dz = rng.normal(size=(rows, step.layers[-1].units)).astype(np.float32)
                y, dx, grads = _layer_by_layer(step.layers, x, dz, from_logits=logits)
                expected_logits = step.layers[-1].logits.copy()
                backward = step.backward_from_logits if logits else step.backward
                with _products(by_blas):
                    np.testing.assert_allclose(step(x, training=True), y, rtol=1e-5, atol=1e-5)
                    np.testing.assert_allclose(step.layers[-1].logits, expected_logits,
                                               rtol=1e-5, atol=1e-5)  # fmt: skip
                    np.testing.assert_allclose(backward(dz), dx, rtol=1e-5, atol=1e-5)
                for layer, expected in zip(step.layers, grads, strict=True):
                    assert sorted(layer.grads) == sorted(expected)
                    for name, g in expected.items():
                        scale = max(1.0, np.abs(g).max())
                        np.testing.assert_allclose(layer.grads[name], g, rtol=0, atol=1e-5 * scale)
                step(x, training=True)
                assert backward(dz, input_gradient=False) is None
    finally:
        parallel.set_num_threads(before)


def test_a_dense_chain_multiplies_by_blas_inside_blas_products(monkeypatch):
    """Forward, BLAS sums the first layer's 3,000 inputs in blocks of its own (not the tiles'
    bits); its address goes with the parts posted each way."""
    from cnnlab.engine.parts import DENSE_CHAIN, DENSE_CHAIN_BACKWARD

    model, _ = _dense_chain()
    chain = model._steps(training=True)[0]
    rng = np.random.default_rng(20)
    x = rng.normal(size=(32, 3000)).astype(np.float32)
    posted, run = [], parallel.over_meeting_parts

    def recording(make):
        def made(threads):
            parts = make(threads)
            posted.append(parts[0])
            return parts

        run(made)

    monkeypatch.setattr(parallel, "over_meeting_parts", recording)
    logits = []
    for by_blas in (False, True):
        with _products(by_blas):
            chain(x, training=True)
            chain.backward_from_logits(rng.normal(size=(32, 2)).astype(np.float32))
        logits.append(chain.layers[-1].logits)
    assert not np.array_equal(*logits)
    address = blas.sgemm_address()
    assert [(part[0], part[7:9]) for part in posted] == [
        (DENSE_CHAIN, (0, 0)), (DENSE_CHAIN_BACKWARD, (0, 0)),
        (DENSE_CHAIN, address), (DENSE_CHAIN_BACKWARD, address),
    ]  # fmt: skip


def test_a_dense_chain_backward_needs_a_training_call_first():
    model, _ = _dense_chain()
    chain = model._steps(training=True)[0]
    x = np.ones((2, 3000), np.float32)
    dz = np.ones((2, 2), np.float32)
    with pytest.raises(RuntimeError, match="backward needs a training call first"):
        chain.backward_from_logits(dz)
    chain(x, training=True)
    chain.backward_from_logits(dz)
    chain(x)  # inference
    with pytest.raises(RuntimeError, match="backward needs a training call first"):
        chain.backward(dz)


def test_a_dense_chain_in_training_on_other_dtypes_or_blas_threads_runs_its_layers():
    """Where the chain cannot run its parts (float64; each op whole on BLAS's threads), it
    trains its layers one by one, with their own backward passes."""
    for dtype, whole in ((np.float64, False), (np.float32, True)):
        model, _ = _dense_chain(dtype)
        chain = model._steps(training=True)[0]
        rng = np.random.default_rng(19)
        x, dz = rng.normal(size=(6, 3000)).astype(dtype), rng.normal(size=(6, 2)).astype(dtype)
        with parallel.blas_threads() if whole else contextlib.nullcontext():
            y, dx, grads = _layer_by_layer(chain.layers, x, dz)
            np.testing.assert_array_equal(chain(x, training=True), y)
            np.testing.assert_array_equal(chain.backward_from_logits(dz), dx)
        for layer, expected in zip(chain.layers, grads, strict=True):
            for name, g in expected.items():
                np.testing.assert_array_equal(layer.grads[name], g)


def test_a_dense_chain_of_other_dtypes_runs_its_steps_and_follows_new_weights():
    model, chain = _dense_chain(np.float64)
    x = np.random.default_rng(14).normal(size=(5, 3000))
    expected = x
    for layer in chain.layers:
        expected = layer(expected)
    np.testing.assert_allclose(chain(x), expected, rtol=1e-12)
    model, chain = _dense_chain()
    x = x.astype(np.float32)
    chain(x)
    model.set_weights([w * 2 for w in model.get_weights()])  # new values, maybe new arrays
    expected = x
    for layer in chain.layers:
        expected = layer(expected)
    np.testing.assert_allclose(chain(x), expected, rtol=1e-5, atol=1e-5)


def test_callers_on_two_threads_each_get_their_own_dense_chain_results():
    model, chain = _dense_chain()
    rng = np.random.default_rng(15)
    inputs = [rng.normal(size=(6, 3000)).astype(np.float32) for _ in range(2)]
    expected = []
    for x in inputs:
        for layer in chain.layers:
            x = layer(x)
        expected.append(x)
    errors = []

    def caller(k):
        try:
            for _ in range(100):
                np.testing.assert_allclose(chain(inputs[k]), expected[k], rtol=1e-5, atol=1e-5)
        except BaseException as err:
            errors.append(err)

    callers = [threading.Thread(target=caller, args=(k,)) for k in (0, 1)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=60)
    assert not errors


def test_a_model_copied_after_predict_predicts_alike_with_tables_of_its_own():
    import copy

    model, chain = _dense_chain()
    x = np.random.default_rng(16).normal(size=(4, 3000)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    twin = copy.deepcopy(model)
    np.testing.assert_array_equal(twin.predict(x, verbose=0), expected)
    twin.layers[0].weights["bias"][...] += 1  # the copy's weights are its own
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_softmax_output_at_inference_leaves_its_logits_for_the_loss(n_threads):
    """evaluate computes the loss from the output layer's logits; the fused output (alone, or
    at the end of a chain) leaves them where the layer's own call does."""
    before = parallel.num_threads()
    parallel.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(17)
        x = rng.normal(size=(9, 3000)).astype(np.float32)
        y = rng.integers(0, 2, 9)
        alone = Sequential([
            layers.Input((3000,)), layers.Dense(8, activation="tanh"),
            layers.Dense(2, activation="softmax"),
        ])  # fmt: skip
        chained, _ = _dense_chain()
        for model in (alone, chained):
            model.compile("adam", "sparse_categorical_crossentropy")
            output = model.layers[-1]
            expected_logits = x
            for layer in model.layers[:-1]:
                expected_logits = layer(expected_logits)
            expected_logits = expected_logits @ output.weights["kernel"] + output.weights["bias"]
            probabilities = model.predict(x, verbose=0)
            np.testing.assert_allclose(output.logits, expected_logits, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(output.activation.y, probabilities, rtol=1e-6)
            loss = model.evaluate(x, y, verbose=0)
            with backend.engine("reference"):
                assert loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)
    finally:
        parallel.set_num_threads(before)
