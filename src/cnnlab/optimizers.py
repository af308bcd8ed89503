"""Optimizers with Keras's names, defaults and update rules, and gradient clipping.

Every optimizer updates the weights in place: ``optimizer.apply(grads, weights)``. The
updates themselves are :mod:`cnnlab.nn.optimizers` (run on the engine of
:mod:`cnnlab.backend`); an optimizer keeps their settings, the step count and the slots (SGD's
velocity, Adam's moments), one per weight. Before the update, ``clipvalue`` clips each
gradient element to ``[-clipvalue, clipvalue]`` and ``clipnorm`` rescales each gradient whose
L2 norm exceeds ``clipnorm`` down to it.

Each element of a weight is updated from its own gradient element and slots alone, so a
weight can be updated a block of rows at a time, with the same numbers (:meth:`row_update`):
a model's training step on the fast engine updates each dense layer's kernel that way in the
backward pass, each core its rows right after their gradient, while they are in its cache.
"""

from __future__ import annotations

import numpy as np

from cnnlab import backend, checks

# Larger steps than this are a typo, not a schedule (the exploding study's 10 is far too large).
MAX_LEARNING_RATE = 1e3


class Optimizer:
    name = "optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(
        self,
        learning_rate: float,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
    ):
        self.learning_rate = learning_rate
        self.clipnorm = checks.optional_positive_number("clipnorm", clipnorm)
        self.clipvalue = checks.optional_positive_number("clipvalue", clipvalue)
        self.iterations = 0
        self.slots: dict[str, list[np.ndarray]] = {}

    @property
    def learning_rate(self) -> float:
        """The step size, in (0, :data:`MAX_LEARNING_RATE`]; checked whenever it is set."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = checks.number_in(
            "learning_rate", value, 0, MAX_LEARNING_RATE, low_open=True
        )

    def build(self, weights: list[np.ndarray]) -> None:
        """Make the slots, zeros shaped like each weight, unless there are some already."""
        if not self.slots:
            self.slots = {name: [np.zeros_like(w) for w in weights] for name in self.slot_names}

    def apply(
        self, grads: list[np.ndarray], weights: list[np.ndarray], done: frozenset[int] = frozenset()
    ) -> None:
        """One step: update every weight in place from its gradient, but those whose index is
        in ``done``: :meth:`row_update` has updated them in this step already."""
        if len(grads) != len(weights):
            raise ValueError(f"expected one gradient per weight ({len(weights)}), got {len(grads)}")
        self.build(weights)
        ops = backend.ops()
        for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
            if i not in done:
                g = ops.clip_gradient(g, self.clipnorm, self.clipvalue)
                self.update(i, g.astype(w.dtype, copy=False), w)
        self.iterations += 1

    def row_update(self, i: int, weight: np.ndarray) -> RowUpdate | None:
        """``update(grad, rows)``: this step's update of ``weight[rows]`` (weight ``i`` of
        :meth:`apply`'s list; the slots made by :meth:`build`) from those rows' gradient, the
        numbers :meth:`apply` gives them, for a layer whose gradient comes a block of rows at a
        time; :meth:`apply` then skips the weight. None where a row's update needs all of the
        gradient (``clipnorm``). Safe to call from several threads on different rows; its
        ``rows_done`` counts the rows updated."""
        if self.clipnorm is not None:
            return None
        return RowUpdate(self, i, weight)

    def update(
        self, i: int, grad: np.ndarray, weight: np.ndarray, rows: slice = slice(None)
    ) -> None:
        """Update ``weight``, weight ``i`` or the ``rows`` of it given, in place from
        ``grad``, with the same rows of the slots."""
        raise NotImplementedError

    # -- state, for checkpoints ------------------------------------------------------------
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "learning_rate": self.learning_rate,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
        }

    def get_state(self) -> dict[str, np.ndarray]:
        """A snapshot (copies) of the iteration count and every slot, e.g. ``"m/0"``."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for name, values in self.slots.items():
            for i, v in enumerate(values):
                state[f"{name}/{i}"] = v.copy()
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.iterations = int(state["iterations"])
        self.slots = {}
        for name in self.slot_names:
            keys = sorted((k for k in state if k.startswith(name + "/")), key=_index)
            if keys:
                self.slots[name] = [np.array(state[k]) for k in keys]


class RowUpdate:
    """:meth:`Optimizer.row_update`'s ``update(grad, rows)`` by the optimizer's own
    :meth:`~Optimizer.update`, after ``clipvalue``; ``rows_done`` counts the rows updated."""

    def __init__(self, optimizer: Optimizer, i: int, weight: np.ndarray):
        self.optimizer, self.i, self.weight = optimizer, i, weight
        self.blocks: list[int] = []  # rows of each block updated (appended: safe across threads)

    @property
    def rows_done(self) -> int:
        return sum(self.blocks)

    def __call__(self, grad: np.ndarray, rows: slice) -> None:
        optimizer, weight = self.optimizer, self.weight
        grad = backend.ops().clip_gradient(grad, None, optimizer.clipvalue)
        optimizer.update(self.i, grad.astype(weight.dtype, copy=False), weight[rows], rows)
        self.blocks.append(len(range(*rows.indices(len(weight)))))


def _index(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum, as in Keras
    (:func:`cnnlab.nn.optimizers.sgd_update`)."""

    name = "sgd"

    def __init__(
        self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False, **kw
    ):
        super().__init__(learning_rate, **kw)
        self.momentum = checks.number_in("momentum", momentum, 0, 1)
        self.nesterov = bool(nesterov)
        self.slot_names = ("velocity",) if self.momentum > 0 else ()

    def update(self, i, grad, weight, rows=slice(None)):
        velocity = self.slots["velocity"][i][rows] if self.momentum > 0 else None
        backend.ops().sgd_update(
            weight, grad, velocity, self.learning_rate, self.momentum, self.nesterov
        )

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras's form, where ``epsilon`` is added to ``sqrt(v)`` after the
    bias correction is folded into the step size (:func:`cnnlab.nn.optimizers.adam_update`)."""

    name = "adam"
    slot_names = ("m", "v")

    def __init__(
        self,
        learning_rate: float = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        **kw,
    ):
        super().__init__(learning_rate, **kw)
        self.beta_1 = checks.number_in("beta_1", beta_1, 0, 1, high_open=True)
        self.beta_2 = checks.number_in("beta_2", beta_2, 0, 1, high_open=True)
        self.epsilon = checks.positive_number("epsilon", epsilon)

    def update(self, i, grad, weight, rows=slice(None)):
        m, v = self.slots["m"][i][rows], self.slots["v"][i][rows]
        backend.ops().adam_update(
            weight,
            grad,
            m,
            v,
            self.iterations + 1,
            self.learning_rate,
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )

    def row_update(self, i, weight):
        clipped = self.clipnorm is not None or self.clipvalue is not None
        if clipped or backend.get_engine() != "fast":
            return super().row_update(i, weight)
        from cnnlab.engine.optimizers import AdamRows  # the fast engine's, loaded with it

        m, v = self.slots["m"][i], self.slots["v"][i]
        t, lr = self.iterations + 1, self.learning_rate
        return AdamRows(weight, m, v, t, lr, self.beta_1, self.beta_2, self.epsilon)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


_BY_NAME = {"sgd": SGD, "adam": Adam}


def get(optimizer: str | Optimizer | dict) -> Optimizer:
    """An optimizer from its name (defaults), its config, or the object itself."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, dict):
        config = dict(optimizer)
        return get(config.pop("name")).__class__(**config)
    if optimizer not in _BY_NAME:
        raise ValueError(f"Unknown optimizer {optimizer!r}; expected one of {sorted(_BY_NAME)}")
    return _BY_NAME[optimizer]()
