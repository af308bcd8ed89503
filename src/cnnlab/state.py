"""A model's state, read and put back in one place: every weight (the moving statistics of
batch normalization included), the optimizer's step count and slots, and the generator of
each layer that draws random numbers (Dropout).

Saving writes it (:mod:`cnnlab.modelfile`), loading and resuming put it back, and the NaN
guard keeps a copy to roll a diverged run back to. Layers are matched by their order, as
Keras matches them when it loads weights: a model built again in another session has the
same layers under the same names, but in one session the second copy's layers get other
names ("conv2d_1").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ModelState:
    """``weights``: ``(layer name, {weight name: value})`` for each layer, in order;
    ``optimizer``: :meth:`cnnlab.optimizers.Optimizer.get_state` (None: none to put back);
    ``generators``: ``(layer name, bit_generator.state)`` for each layer that has one."""

    weights: list[tuple[str, dict[str, np.ndarray]]]
    optimizer: dict[str, np.ndarray] | None
    generators: list[tuple[str, dict]]


def random_layers(model) -> list:
    """The layers that draw random numbers with a generator of their own, in order."""
    return [layer for layer in model.layers if layer.rng is not None]


def capture(model) -> ModelState:
    """A copy of ``model``'s state, which later changes to the model leave alone."""
    optimizer = getattr(model, "optimizer", None)
    return ModelState(
        weights=[
            (layer.name, {name: value.copy() for name, value in layer.weights.items()})
            for layer in model.layers
        ],
        optimizer=None if optimizer is None else optimizer.get_state(),
        generators=generator_states(model),
    )


def generator_states(model) -> list[tuple[str, dict]]:
    """``(layer name, bit_generator.state)`` of each layer with a generator of its own."""
    return [(layer.name, layer.rng.bit_generator.state) for layer in random_layers(model)]


def restore(model, state: ModelState, source: str = "the saved state") -> None:
    """Put ``state`` back into ``model``, which must have as many layers, with the same
    weights in the same shapes (``source`` names where the state came from in the error
    otherwise). The optimizer state is put back where both have one."""
    check_matches(model, state, source)
    for layer, (_, values) in zip(model.layers, state.weights, strict=True):
        layer.set_weights(list(values.values()))
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and state.optimizer is not None:
        optimizer.set_state(state.optimizer)
    restore_generators(model, state.generators)


def restore_generators(model, generators: list[tuple[str, dict]]) -> None:
    """Put back the generators' states of :func:`generator_states` (the draws so far)."""
    for layer, (_, rng_state) in zip(random_layers(model), generators, strict=False):
        layer.rng.bit_generator.state = rng_state


def check_matches(model, state: ModelState, source: str) -> None:
    """Raise unless ``state`` holds, layer by layer, weights of the names and shapes of
    ``model``'s."""
    ours = [(layer.name, _shapes(layer.weights)) for layer in model.layers]
    theirs = [(name, _shapes(values)) for name, values in state.weights]
    for i in range(max(len(ours), len(theirs))):
        mine = ours[i] if i < len(ours) else None
        saved = theirs[i] if i < len(theirs) else None
        if mine is None or saved is None or mine[1] != saved[1]:
            raise ValueError(
                f"{source} holds a different model ({len(theirs)} layers, this model "
                f"{len(ours)}): its layer {i + 1} is {_describe(saved)}, this model's is "
                f"{_describe(mine)}"
            )


def _shapes(values: dict[str, np.ndarray]) -> list[tuple[str, tuple]]:
    return [(name, tuple(np.shape(value))) for name, value in values.items()]


def _describe(layer: tuple | None) -> str:
    if layer is None:
        return "missing"
    name, shapes = layer
    weights = ", ".join(f"{weight} {shape}" for weight, shape in shapes) or "no weights"
    return f"{name!r} with {weights}"
