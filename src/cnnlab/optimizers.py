"""Optimizers with Keras's update rules, and gradient clipping (for exploding gradients).

Every optimizer updates the weights in place: ``optimizer.apply(grads, weights)``.
Before the update, ``clipvalue`` clips each gradient element to ``[-clipvalue, clipvalue]``
and ``clipnorm`` rescales each gradient whose L2 norm exceeds ``clipnorm`` down to it.
"""

from __future__ import annotations

import numpy as np

from cnnlab.ops import kernels


class Optimizer:
    name = "optimizer"

    def __init__(
        self,
        learning_rate: float,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
    ):
        if not learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {learning_rate!r}")
        for arg, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue)):
            if value is not None and not value > 0:
                raise ValueError(f"`{arg}` must be > 0 or None, got {value!r}")
        self.learning_rate = float(learning_rate)
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.iterations = 0
        self.slots: dict[str, list[np.ndarray]] = {}

    def clip(self, grad: np.ndarray) -> np.ndarray:
        if self.clipvalue is not None:
            grad = np.clip(grad, -self.clipvalue, self.clipvalue)
        if self.clipnorm is not None:
            norm = float(np.sqrt(np.sum(grad * grad)))
            if norm > self.clipnorm:
                grad = grad * (self.clipnorm / norm)
        return grad

    def apply(self, grads: list[np.ndarray], weights: list[np.ndarray]) -> None:
        """One step: update every weight in place from its gradient."""
        if len(grads) != len(weights):
            raise ValueError(f"expected one gradient per weight ({len(weights)}), got {len(grads)}")
        if not self.slots:
            self.slots = {name: [np.zeros_like(w) for w in weights] for name in self.slot_names}
        for i, (g, w) in enumerate(zip(grads, weights, strict=True)):
            self.update(i, self.clip(g).astype(w.dtype, copy=False), w)
        self.iterations += 1

    slot_names: tuple[str, ...] = ()

    def update(self, i: int, grad: np.ndarray, weight: np.ndarray) -> None:
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


def _index(key: str) -> int:
    return int(key.rsplit("/", 1)[1])


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (Nesterov) momentum, as in Keras::

    velocity = momentum * velocity - learning_rate * g
    w += velocity                                        (plain momentum)
    w += momentum * velocity - learning_rate * g         (nesterov=True)
    """

    name = "sgd"

    def __init__(
        self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False, **kw
    ):
        super().__init__(learning_rate, **kw)
        if not 0 <= momentum <= 1:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slot_names = ("velocity",) if self.momentum > 0 else ()

    def update(self, i, grad, weight):
        lr = weight.dtype.type(self.learning_rate)
        if self.momentum == 0:
            weight -= lr * grad
            return
        m = weight.dtype.type(self.momentum)
        velocity = self.slots["velocity"][i]
        velocity *= m
        velocity -= lr * grad
        if self.nesterov:
            weight += m * velocity - lr * grad
        else:
            weight += velocity

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras's form, where ``epsilon`` is added to ``sqrt(v)`` after the
    bias correction is folded into the step size::

        t = iterations + 1
        m += (g - m) * (1 - beta_1);      v += (g**2 - v) * (1 - beta_2)
        w -= learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)
    """

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
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def update(self, i, grad, weight):
        t = self.iterations + 1
        dtype = weight.dtype.type
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        m, v = self.slots["m"][i], self.slots["v"][i]
        if not all(a.flags.c_contiguous for a in (weight, m, v)):
            raise ValueError("Adam updates weights and slots in place: they must be C-contiguous")
        # One compiled pass (cnnlab.ops.kernels.adam_update) over the raveled arrays.
        kernels.adam_update(
            weight.reshape(-1),
            np.ascontiguousarray(grad, dtype=weight.dtype).reshape(-1),
            m.reshape(-1),
            v.reshape(-1),
            dtype(1 - self.beta_1),
            dtype(1 - self.beta_2),
            dtype(alpha),
            dtype(self.epsilon),
        )

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
