"""Optimizers against hand-written Keras update rules, clipping, and state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnlab import optimizers

W0 = [1.0, -2.0, 0.5]
GRADS = [[0.5, -1.0, 2.0], [0.1, 0.3, -0.4], [-0.2, 0.0, 1.5]]  # one row per step


def run(optimizer, steps: int = 3) -> np.ndarray:
    """Apply the first ``steps`` rows of GRADS to a float64 copy of W0."""
    w = np.array(W0, dtype=np.float64)
    for g in GRADS[:steps]:
        optimizer.apply([np.array(g)], [w])
    return w


# -- reference formulas, written element by element with plain floats ---------------------
def ref_sgd(lr: float, momentum: float = 0.0, nesterov: bool = False) -> list[float]:
    """Keras SGD: ``v = momentum * v - lr * g``; ``w += v`` or, Nesterov,
    ``w += momentum * v - lr * g``; without momentum ``w -= lr * g``."""
    out = []
    for k, w in enumerate(W0):
        v = 0.0
        for g_row in GRADS:
            g = g_row[k]
            if momentum == 0:
                w = w - lr * g
                continue
            v = momentum * v - lr * g
            w = w + (momentum * v - lr * g if nesterov else v)
        out.append(w)
    return out


def ref_adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7) -> list[float]:
    """Adam as Keras writes it: bias corrections folded into the step size, epsilon added
    to ``sqrt(v)`` (not to ``sqrt(v_hat)``)."""
    out = []
    for k, w in enumerate(W0):
        m = v = 0.0
        for t, g_row in enumerate(GRADS, start=1):
            g = g_row[k]
            m = beta_1 * m + (1 - beta_1) * g
            v = beta_2 * v + (1 - beta_2) * g * g
            alpha = learning_rate * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
            w = w - alpha * m / (math.sqrt(v) + epsilon)
        out.append(w)
    return out


# -- update rules ----------------------------------------------------------------------------
def test_sgd_first_step_by_hand():
    w = np.array([1.0])
    optimizers.SGD(learning_rate=0.1).apply([np.array([0.5])], [w])
    assert w[0] == pytest.approx(0.95)  # 1 - 0.1 * 0.5


def test_sgd_momentum_two_steps_by_hand():
    w = np.array([1.0])
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    opt.apply([np.array([1.0])], [w])  # v = -0.1, w = 0.9
    opt.apply([np.array([1.0])], [w])  # v = 0.9 * -0.1 - 0.1 = -0.19, w = 0.71
    assert w[0] == pytest.approx(0.71)


def test_sgd_nesterov_two_steps_by_hand():
    w = np.array([1.0])
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True)
    opt.apply([np.array([1.0])], [w])  # v = -0.1, w = 1 + 0.9 * -0.1 - 0.1 = 0.81
    opt.apply([np.array([1.0])], [w])  # v = -0.19, w = 0.81 + 0.9 * -0.19 - 0.1 = 0.539
    assert w[0] == pytest.approx(0.539)


def test_adam_first_step_moves_each_weight_by_about_the_learning_rate():
    # t = 1: m = 0.1 g, v = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1, so the step is
    # lr * g / (|g| + epsilon / sqrt(0.001)) ~= lr * sign(g).
    w = np.array([1.0, 1.0, 1.0])
    optimizers.Adam(learning_rate=0.01).apply([np.array([3.0, -0.5, 0.25])], [w])
    np.testing.assert_allclose(w, [0.99, 1.01, 0.99], rtol=1e-6)


@pytest.mark.parametrize("lr", [0.1, 0.01])
def test_sgd_matches_reference(lr):
    np.testing.assert_allclose(run(optimizers.SGD(learning_rate=lr)), ref_sgd(lr), rtol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_reference(nesterov):
    opt = optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    np.testing.assert_allclose(run(opt), ref_sgd(0.05, 0.9, nesterov), rtol=1e-14)


def test_nesterov_differs_from_plain_momentum():
    plain = run(optimizers.SGD(learning_rate=0.05, momentum=0.9))
    nesterov = run(optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True))
    assert not np.allclose(plain, nesterov)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learning_rate": 0.1}, {"learning_rate": 0.05, "beta_1": 0.5, "beta_2": 0.9}],
)
def test_adam_matches_reference(kwargs):
    np.testing.assert_allclose(run(optimizers.Adam(**kwargs)), ref_adam(**kwargs), rtol=1e-13)


def test_adam_epsilon_is_added_to_sqrt_v():
    """With a large epsilon the Keras placement (after the bias-corrected step size) gives a
    different result from epsilon added to sqrt(v_hat); this pins the Keras one."""
    kwargs = {"learning_rate": 0.1, "epsilon": 0.5}
    np.testing.assert_allclose(run(optimizers.Adam(**kwargs)), ref_adam(**kwargs), rtol=1e-13)


def test_float32_weights_stay_float32():
    w = np.ones(3, dtype=np.float32)
    opt = optimizers.Adam()
    opt.apply([np.ones(3, dtype=np.float64)], [w])
    assert w.dtype == np.float32
    assert opt.get_state()["m/0"].dtype == np.float32


def test_several_weights_get_their_own_slots():
    a, b = np.zeros(2), np.zeros((2, 2))
    opt = optimizers.SGD(learning_rate=1.0, momentum=0.5)
    opt.apply([np.ones(2), np.full((2, 2), 2.0)], [a, b])
    opt.apply([np.ones(2), np.full((2, 2), 2.0)], [a, b])
    # v1 = -g, v2 = 0.5 v1 - g = -1.5 g; w = v1 + v2 = -2.5 g
    np.testing.assert_allclose(a, -2.5)
    np.testing.assert_allclose(b, -5.0)
    assert opt.iterations == 2


# -- defaults and errors ---------------------------------------------------------------------
def test_adam_defaults_are_keras():
    opt = optimizers.Adam()
    assert opt.learning_rate == 1e-3
    assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.9, 0.999, 1e-7)
    assert opt.clipnorm is None and opt.clipvalue is None
    assert isinstance(optimizers.get("adam"), optimizers.Adam)


def test_sgd_defaults_are_keras():
    opt = optimizers.SGD()
    assert (opt.learning_rate, opt.momentum, opt.nesterov) == (0.01, 0.0, False)
    assert isinstance(optimizers.get("sgd"), optimizers.SGD)


def test_optimizer_from_config():
    opt = optimizers.SGD(learning_rate=0.3, momentum=0.8, nesterov=True, clipnorm=2.0)
    copy = optimizers.get(opt.get_config())
    assert type(copy) is optimizers.SGD
    assert copy.get_config() == opt.get_config()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: optimizers.SGD(learning_rate=0), r"`learning_rate` must be in \(0, 1000\], got 0"),
        (
            lambda: optimizers.Adam(learning_rate=-1),
            r"`learning_rate` must be in \(0, 1000\], got -1",
        ),
        (lambda: optimizers.SGD(learning_rate=float("inf")), r"must be in \(0, 1000\], got inf"),
        (lambda: optimizers.Adam(learning_rate=1e300), r"must be in \(0, 1000\], got 1e\+300"),
        (lambda: optimizers.SGD(clipnorm=float("nan")), r"`clipnorm` must be > 0 or None, got nan"),
        (lambda: optimizers.SGD(momentum=1.5), r"`momentum` must be in \[0, 1\], got 1.5"),
        (lambda: optimizers.SGD(clipnorm=0), r"`clipnorm` must be > 0 or None, got 0"),
        (lambda: optimizers.Adam(clipvalue=-1.0), r"`clipvalue` must be > 0 or None, got -1.0"),
        (lambda: optimizers.get("rmsprop"), r"Unknown optimizer 'rmsprop'"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_apply_needs_one_gradient_per_weight():
    with pytest.raises(ValueError, match=r"one gradient per weight \(2\), got 1"):
        optimizers.SGD().apply([np.zeros(2)], [np.zeros(2), np.zeros(2)])


# -- clipping --------------------------------------------------------------------------------
def test_clipnorm_rescales_each_gradient_on_its_own():
    big, small = np.zeros(2), np.zeros(2)
    opt = optimizers.SGD(learning_rate=1.0, clipnorm=1.0)
    opt.apply([np.array([3.0, 4.0]), np.array([0.3, 0.4])], [big, small])
    # |(3, 4)| = 5 > 1: rescaled to (0.6, 0.8). |(0.3, 0.4)| = 0.5 <= 1: unchanged.
    # (A global norm would have scaled both.)
    np.testing.assert_allclose(big, [-0.6, -0.8], rtol=1e-12)
    np.testing.assert_allclose(small, [-0.3, -0.4], rtol=1e-12)


def test_clipnorm_on_a_matrix_uses_the_frobenius_norm():
    w = np.zeros((2, 2))
    optimizers.SGD(learning_rate=1.0, clipnorm=2.0).apply([np.full((2, 2), 2.0)], [w])
    # norm = sqrt(4 * 4) = 4 -> scaled by 2 / 4
    np.testing.assert_allclose(w, -1.0)


def test_clipvalue_clips_each_element():
    w = np.zeros(4)
    optimizers.SGD(learning_rate=1.0, clipvalue=0.5).apply([np.array([3.0, -4.0, 0.2, -0.5])], [w])
    np.testing.assert_allclose(w, [-0.5, 0.5, -0.2, 0.5])


def test_clipping_happens_before_adam_moments():
    w = np.zeros(1)
    opt = optimizers.Adam(learning_rate=0.1, clipvalue=0.5)
    opt.apply([np.array([10.0])], [w])
    np.testing.assert_allclose(opt.get_state()["m/0"], [0.05])  # (1 - 0.9) * 0.5
    np.testing.assert_allclose(opt.get_state()["v/0"], [0.00025])  # (1 - 0.999) * 0.25


def test_gradients_are_not_modified_in_place():
    g = np.array([3.0, 4.0])
    optimizers.SGD(clipnorm=1.0, clipvalue=2.0).apply([g], [np.zeros(2)])
    np.testing.assert_array_equal(g, [3.0, 4.0])


# -- state -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: optimizers.SGD(learning_rate=0.05),
        lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9),
        lambda: optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda: optimizers.Adam(learning_rate=0.1),
    ],
)
def test_state_round_trip_continues_identically(make):
    original = make()
    w = np.array(W0)
    for g in GRADS[:2]:
        original.apply([np.array(g)], [w])
    state = {key: np.array(value) for key, value in original.get_state().items()}
    assert int(state["iterations"]) == 2

    restored = make()
    restored.set_state(state)
    assert restored.iterations == 2
    w_restored = w.copy()
    original.apply([np.array(GRADS[2])], [w])
    restored.apply([np.array(GRADS[2])], [w_restored])
    np.testing.assert_array_equal(w_restored, w)
    # And both equal three uninterrupted steps.
    np.testing.assert_array_equal(w, run(make()))


def test_state_holds_the_slots_by_name():
    opt = optimizers.Adam()
    opt.apply([np.ones(2), np.ones(3)], [np.zeros(2), np.zeros(3)])
    assert set(opt.get_state()) == {"iterations", "m/0", "m/1", "v/0", "v/1"}
    sgd = optimizers.SGD(momentum=0.5)
    sgd.apply([np.ones(2)], [np.zeros(2)])
    assert set(sgd.get_state()) == {"iterations", "velocity/0"}


def test_get_state_is_a_snapshot():
    """A state kept in memory (e.g. the best epoch so far) must not change with later steps."""
    opt = optimizers.Adam()
    w = np.zeros(2)
    opt.apply([np.ones(2)], [w])
    state = opt.get_state()
    m_before = np.array(state["m/0"])
    opt.apply([np.ones(2)], [w])
    np.testing.assert_array_equal(state["m/0"], m_before)
    assert int(state["iterations"]) == 1


def test_set_state_copies_the_arrays():
    opt = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    w = np.zeros(2)
    opt.apply([np.ones(2)], [w])
    state = {key: np.array(value) for key, value in opt.get_state().items()}
    restored = optimizers.SGD(learning_rate=0.1, momentum=0.9)
    restored.set_state(state)
    restored.apply([np.ones(2)], [np.zeros(2)])
    np.testing.assert_allclose(state["velocity/0"], [-0.1, -0.1])


# -- a weight updated a block of rows at a time -----------------------------------------------
ROW_UPDATES = [
    lambda: optimizers.Adam(learning_rate=0.01),
    lambda: optimizers.Adam(learning_rate=0.01, clipvalue=0.3),
    lambda: optimizers.SGD(learning_rate=0.1),
    lambda: optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
]


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", ROW_UPDATES, ids=["adam", "adam-clipvalue", "sgd", "nesterov"])
def test_row_update_gives_every_row_the_numbers_of_apply(make, dtype, engine):
    """Three steps, each weight's rows updated in three blocks (as a dense layer's backward
    pass does on its cores, the apply that follows skipping that weight) against whole updates
    by apply: the same bits, for the weights and every slot."""
    from cnnlab import backend

    rng = np.random.default_rng(0)
    start = [rng.standard_normal((7, 5)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    steps = [[rng.standard_normal(w.shape).astype(dtype) for w in start] for _ in range(3)]
    by_rows, whole = make(), make()
    w_rows, w_whole = [w.copy() for w in start], [w.copy() for w in start]
    with backend.engine(engine):
        for grads in steps:
            by_rows.build(w_rows)
            update = by_rows.row_update(0, w_rows[0])
            for rows in (slice(4, 7), slice(0, 2), slice(2, 4)):
                update(grads[0][rows], rows)
            by_rows.apply(grads, w_rows, done=frozenset({0}))
            whole.apply(grads, w_whole)
    for a, b in zip(w_rows, w_whole, strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(w_rows[0], start[0])
    for key, value in whole.get_state().items():
        np.testing.assert_array_equal(by_rows.get_state()[key], value)


def test_row_update_is_refused_where_clipnorm_needs_the_whole_gradient():
    optimizer, w = optimizers.Adam(clipnorm=1.0), np.ones((4, 3))
    optimizer.build([w])
    assert optimizer.row_update(0, w) is None
    assert optimizers.SGD(clipnorm=1.0).row_update(0, w) is None


def test_apply_skips_the_weights_done_already_and_counts_the_step_once():
    optimizer = optimizers.SGD(learning_rate=0.5)
    w, b = np.ones((2, 2)), np.ones(2)
    optimizer.apply([np.ones((2, 2)), np.ones(2)], [w, b], done=frozenset({0}))
    np.testing.assert_array_equal(w, np.ones((2, 2)))
    np.testing.assert_array_equal(b, [0.5, 0.5])
    assert optimizer.iterations == 1
