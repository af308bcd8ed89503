"""Symbolic tensors and the nodes of a layer graph: Keras's functional API.

``layers.Input((32, 32, 3))`` returns a :class:`SymbolicTensor`: the shape and dtype of a batch
that is not there yet, with ``None`` for the batch axis. Calling a layer on symbolic tensors
checks their shapes, builds the layer, and returns the symbolic tensor of its output; the call
is recorded as a :class:`Node` (the layer, its input tensors, its output tensor).
:class:`cnnlab.model.Model` follows the nodes from its outputs back to its inputs and runs
them in order on real arrays. A layer called twice is two nodes with one set of weights.
"""

from __future__ import annotations

import numpy as np


class SymbolicTensor:
    """The placeholder of a batch of arrays: ``shape`` (``None`` first, for the batch axis),
    ``dtype``, ``name``, and ``node``, the call that produces it (None for a model input, whose
    ``layer`` is then its :class:`cnnlab.layers.InputLayer`)."""

    def __init__(self, shape: tuple, dtype, name: str, node: Node | None = None, layer=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self.node = node
        self.layer = layer if node is None else node.layer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<SymbolicTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"


class Node:
    """One call of ``layer`` on the symbolic tensors ``inputs``, which gave ``output``."""

    def __init__(self, layer, inputs: list[SymbolicTensor]):
        self.layer = layer
        self.inputs = list(inputs)
        self.output: SymbolicTensor | None = None

    def __repr__(self) -> str:
        sources = ", ".join(t.layer.name for t in self.inputs)
        return f"<Node {self.layer.name}({sources})>"


def is_symbolic(value) -> bool:
    """Whether ``value`` is a symbolic tensor, or a list or tuple holding one."""
    if isinstance(value, (list, tuple)):
        return any(isinstance(v, SymbolicTensor) for v in value)
    return isinstance(value, SymbolicTensor)


def producer(tensor: SymbolicTensor) -> str:
    """The name of the layer that gives ``tensor``: ``'conv2d'``, or the input's."""
    return repr(tensor.layer.name)


def graph_nodes(inputs: list[SymbolicTensor], outputs: list[SymbolicTensor]) -> list[Node]:
    """The nodes between ``inputs`` and ``outputs``, each after the nodes that feed it.

    Raises ValueError when an output depends on a symbolic tensor that is not among
    ``inputs`` (an ``Input`` the model was not given).
    """
    known = {id(t) for t in inputs}
    order: list[Node] = []
    done: set[int] = set()
    visiting: set[int] = set()

    def visit(tensor: SymbolicTensor, needed_by: str) -> None:
        if id(tensor) in known:
            return
        node = tensor.node
        if node is None:
            raise ValueError(
                f"The model's graph needs input {tensor.name!r} (used by {needed_by}), which is "
                f"not among its inputs ({', '.join(repr(t.name) for t in inputs)}): pass it in "
                "Model(inputs=[...])"
            )
        if id(node) in done:
            return
        if id(node) in visiting:  # cannot happen with layer calls, which only add nodes
            raise ValueError(f"The layer graph has a cycle through {node.layer.name!r}")
        visiting.add(id(node))
        for source in node.inputs:
            visit(source, repr(node.layer.name))
        visiting.discard(id(node))
        done.add(id(node))
        order.append(node)

    for output in outputs:
        visit(output, "the model's outputs")
    return order
