"""The base class of every layer: naming, building, input checks, weights and gradients."""

from __future__ import annotations

import contextvars
import math
import re
from collections import defaultdict
from contextlib import contextmanager

import numpy as np

from cnnlab import arrays
from cnnlab.config import resolve_dtype
from cnnlab.symbolic import Node, SymbolicTensor, is_symbolic, producer

_name_counts: defaultdict[str, int] = defaultdict(int)

_AXES = {2: "batch, features", 4: "batch, height, width, channels"}

# [weights left, where they come from], while a model file is read (weight_budget).
_budget: contextvars.ContextVar[list | None] = contextvars.ContextVar("budget", default=None)


@contextmanager
def weight_budget(elements: int, source: str):
    """Within the block, the layers built may create ``elements`` weights in all: a layer
    that would create more raises a ValueError naming ``source``, before it allocates them
    (a model file whose config asks for more weights than it holds)."""
    token = _budget.set([int(elements), source])
    try:
        yield
    finally:
        _budget.reset(token)


def auto_name(cls_name: str) -> str:
    """Keras-style unique names: "conv2d", "conv2d_1", "conv2d_2", ..."""
    base = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", cls_name).lower()
    base = base.replace("2_d", "2d")
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


class Layer:
    """A layer maps ``x`` to ``y`` (``__call__``) and ``dy`` back to ``dx`` (``backward``).

    Subclasses set ``input_rank`` (or ``min_rank``), create their weights in ``build`` with
    ``add_weight`` (Keras order), compute shapes in ``compute_output_shape``, and implement
    ``call`` and ``backward``. ``backward`` stores parameter gradients in ``self.grads``.

    Called on a symbolic tensor (``layers.Input``'s, or another layer's output in a graph),
    a layer is built for its shape and returns the symbolic tensor of its output, recording
    the call as a node of the graph (:mod:`cnnlab.symbolic`).
    """

    input_rank: int | None = None  # exact rank with the batch axis, e.g. 4 for images
    min_rank: int = 1
    rng: np.random.Generator | None = None  # a layer that draws random numbers has its own
    # The attributes a call sets for its backward pass. A model that calls the layer more
    # than once keeps them for each call (get_call_state and set_call_state).
    call_state: tuple[str, ...] = ()

    def __init__(self, name: str | None = None, dtype: str | None = None):
        self.name = name or auto_name(type(self).__name__)
        self._dtype_arg = dtype
        self.dtype: np.dtype | None = None
        self.built = False
        self.input_shape: tuple[int, ...] | None = None  # without the batch axis
        self.output_shape: tuple[int, ...] | None = None
        self.weights: dict[str, np.ndarray] = {}
        self.trainable_names: list[str] = []
        self.grads: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []  # the calls on symbolic tensors, in order

    # -- building ----------------------------------------------------------------------------
    def build(self, input_shape: tuple[int, ...]) -> None:
        """Create the weights for inputs of ``input_shape`` (without the batch axis)."""
        input_shape = tuple(int(d) for d in input_shape)
        self._check_rank(len(input_shape) + 1, (None, *input_shape))
        self.dtype = resolve_dtype(self._dtype_arg)
        self.output_shape = self.compute_output_shape(input_shape)
        self._spend(self.weight_shapes(input_shape))
        self.input_shape = input_shape
        self.build_weights(input_shape)
        self.built = True

    def weight_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """The shape of each weight :meth:`build_weights` creates, by name (none here)."""
        return {}

    def _spend(self, shapes: dict[str, tuple[int, ...]]) -> None:
        budget = _budget.get()
        if budget is None:
            return
        count = sum(math.prod(shape) for shape in shapes.values())
        if count > budget[0]:
            raise ValueError(
                f"{budget[1]} asks {self._describe()} for {count:,} weights "
                f"({', '.join(f'{n} {s}' for n, s in shapes.items())}), more than the file "
                f"holds ({budget[0]:,} left)"
            )
        budget[0] -= count

    def build_weights(self, input_shape: tuple[int, ...]) -> None:
        """Create weights with :meth:`add_weight`; layers without weights do nothing."""

    def compute_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return input_shape

    def add_weight(self, name: str, value: np.ndarray, trainable: bool = True) -> np.ndarray:
        self.weights[name] = np.ascontiguousarray(value, dtype=self.dtype)
        if trainable:
            self.trainable_names.append(name)
        return self.weights[name]

    # -- running -----------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if is_symbolic(x):
            return self._call_symbolic(x)
        x = np.asarray(x)
        if not self.built:
            self._check_rank(x.ndim, x.shape)
            self.build(x.shape[1:])
        self._check_input(x)
        return self.call(x.astype(self.dtype, copy=False), training=training)

    def call(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def _call_symbolic(self, x) -> SymbolicTensor:
        """The call on symbolic tensors: build for (or check) their shapes, record the node."""
        tensors = list(x) if isinstance(x, (list, tuple)) else [x]
        if not all(isinstance(t, SymbolicTensor) for t in tensors):
            raise ValueError(
                f"{self._describe()} was called on symbolic tensors and arrays at once; call it "
                "on the outputs of layers.Input and of other layers, or on arrays alone"
            )
        shape = self._symbolic_input_shape(tensors)
        where = ", ".join(f"{producer(t)} gives {t.shape}" for t in tensors)
        if self.built and shape != self.input_shape:
            raise ValueError(
                f"{self._describe()} was built for input {self._with_batch(self.input_shape)}, "
                f"but {where}"
            )
        if not self.built:
            try:
                self.build(shape)
            except ValueError as err:
                raise ValueError(f"{err}; {where}") from None
        node = Node(self, tensors)
        name = self.name if not self.nodes else f"{self.name}_{len(self.nodes)}"
        node.output = SymbolicTensor((None, *self.output_shape), self.dtype, name, node)
        self.nodes.append(node)
        return node.output

    def _symbolic_input_shape(self, tensors: list[SymbolicTensor]):
        """The input shape (without the batch axis) that ``tensors`` give this layer."""
        if len(tensors) != 1:
            names = ", ".join(producer(t) for t in tensors)
            raise ValueError(f"{self._describe()} takes one input, got {len(tensors)}: {names}")
        return tuple(tensors[0].shape[1:])

    @staticmethod
    def _with_batch(shape):
        return (None, *shape)

    def get_call_state(self) -> dict:
        """What the last call kept for :meth:`backward` (:attr:`call_state`)."""
        return {name: getattr(self, name, None) for name in self.call_state}

    def set_call_state(self, state: dict) -> None:
        """Put back what :meth:`get_call_state` returned, for the backward pass of that call."""
        for name, value in state.items():
            setattr(self, name, value)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient of the loss with respect to the input of the last call."""
        raise NotImplementedError

    # -- checks ------------------------------------------------------------------------------
    def _describe(self) -> str:
        return f"{type(self).__name__} '{self.name}'"

    @contextmanager
    def _argument_errors(self):
        """Name the layer in a ValueError raised while its constructor checks arguments."""
        try:
            yield
        except ValueError as err:
            raise ValueError(f"{self._describe()}: {err}") from None

    def _check_rank(self, rank: int, shape) -> None:
        if self.input_rank is not None and rank != self.input_rank:
            axes = _AXES.get(self.input_rank, "")
            raise ValueError(
                f"{self._describe()} expects input of rank {self.input_rank} ({axes}), "
                f"got shape {tuple(shape)}"
            )
        if rank < self.min_rank:
            raise ValueError(
                f"{self._describe()} expects input of rank at least {self.min_rank}, "
                f"got shape {tuple(shape)}"
            )

    def _check_input(self, x: np.ndarray) -> None:
        self._check_rank(x.ndim, x.shape)
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self._describe()} expects input of shape {(None, *self.input_shape)}, "
                f"got shape {x.shape}"
            )

    # -- weights and config ------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights.values()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        if len(weights) != len(self.weights):
            raise ValueError(
                f"{self._describe()} expects {len(self.weights)} weights "
                f"({', '.join(self.weights)}), got {len(weights)}"
            )
        checked = []
        for (name, current), new in zip(self.weights.items(), weights, strict=True):
            what = f"weight '{name}' of {self._describe()}"
            new = arrays.finite(arrays.numbers(new, what), what)
            if new.shape != current.shape:
                raise ValueError(
                    f"{self._describe()} expects weight '{name}' of shape {current.shape}, "
                    f"got shape {new.shape}"
                )
            checked.append(new)
        for current, new in zip(self.weights.values(), checked, strict=True):
            current[...] = new  # all checked first: a refused list changes nothing

    def count_params(self) -> tuple[int, int]:
        """``(trainable, non_trainable)`` parameter counts."""
        trainable = sum(self.weights[n].size for n in self.trainable_names)
        total = sum(w.size for w in self.weights.values())
        return trainable, total - trainable

    def get_config(self) -> dict:
        config = {"name": self.name}
        if self._dtype_arg is not None:
            config["dtype"] = self._dtype_arg
        return config
