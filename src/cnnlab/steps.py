"""The steps a model runs: the nodes of its layer graph in order, run forward on arrays and
backward from the loss's gradients.

On the fast engine, each run of consecutive layers that only feed one another (one input,
one consumer, called once in the graph) is handed to :func:`cnnlab.fusion.steps`, which runs
a convolution, its batch norm and activation as one op, batch norm and its activation as
one op elsewhere, and dense layers in a row as one op.
The layer that gives a model output stays on its own unless it is a Dense layer, which joins
the fused steps (they leave its logits in the layer, where the loss reads them). A
model's call (``model(x)``) and its :meth:`~cnnlab.model.Model.backward` run every layer on its own.

Backward, from the last step to the first, each tensor's gradient is the sum of what its
consumers send back. A step whose output leads to no loss, or whose inputs and ancestors
hold no trainable weights, is skipped; the first steps with weights compute only their
weights' gradients. A layer called more than once (shared weights) has its call state kept
for each call, and the gradients of its calls added up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cnnlab import fusion
from cnnlab.layers.core import ActivationLayer
from cnnlab.symbolic import Node, SymbolicTensor


@dataclass
class Step:
    """One op of a plan: a layer, or a fused step standing for several (``layers``)."""

    op: object
    inputs: list[int]  # the keys of its input tensors
    output: int  # the key of its output tensor
    layers: list
    shared: bool = False  # its layer is called more than once: its call state is kept
    weighted: bool = field(init=False)

    def __post_init__(self):
        self.weighted = bool(self.op.trainable_names)


def _covered(step) -> int:
    """How many layers a step of :func:`cnnlab.fusion.steps` stands for."""
    return len(getattr(step, "layers", [step]))


class Plan:
    """The steps of a graph from ``inputs`` to ``outputs`` (symbolic tensors), for training
    or inference, fused or one layer at a time."""

    def __init__(
        self,
        inputs: list[SymbolicTensor],
        outputs: list[SymbolicTensor],
        nodes: list[Node],
        fuse: bool,
        training: bool,
    ):
        self.input_keys = [id(t) for t in inputs]
        self.output_keys = [id(t) for t in outputs]
        calls = Counter(id(node.layer) for node in nodes)
        self.steps: list[Step] = []
        for run in self._runs(nodes, calls) if fuse else [[node] for node in nodes]:
            self._add(run, fuse, training, calls)
        last_use: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            for key in step.inputs:
                last_use[key] = i
        kept = set(self.output_keys)
        self.freed = [[] for _ in self.steps]  # keys whose last consumer is each step
        for key, i in last_use.items():
            if key not in kept:
                self.freed[i].append(key)

    def _runs(self, nodes: list[Node], calls: Counter) -> list[list[Node]]:
        """``nodes`` cut into runs of layers that only feed one another."""
        consumers = Counter(id(t) for node in nodes for t in node.inputs)
        outputs = set(self.output_keys)

        def chainable(node: Node) -> bool:
            return len(node.inputs) == 1 and calls[id(node.layer)] == 1

        runs: list[list[Node]] = []
        for node in nodes:
            last = runs[-1][-1] if runs else None
            if (
                last is not None
                and chainable(node)
                and chainable(last)
                and node.inputs[0] is last.output
                and consumers[id(last.output)] == 1
                and id(last.output) not in outputs
            ):
                runs[-1].append(node)
            else:
                runs.append([node])
        return runs

    def _add(self, run: list[Node], fuse: bool, training: bool, calls: Counter) -> None:
        layers = [node.layer for node in run]
        if fuse:
            # A model's output joins only as a Dense layer, whose fused steps leave its logits
            # in the layer, where the loss reads them.
            output = id(run[-1].output) in self.output_keys
            body = len(layers) - (output and not fusion.joins(layers[-1]))
            ops = fusion.steps(layers[:body], training) + layers[body:]
        else:
            ops = layers
        at = 0
        for op in ops:
            covered = run[at : at + _covered(op)]
            self.steps.append(
                Step(
                    op,
                    [id(t) for t in covered[0].inputs],
                    id(covered[-1].output),
                    [node.layer for node in covered],
                    shared=calls[id(covered[0].layer)] > 1,
                )
            )
            at += len(covered)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, xs: list[np.ndarray], training: bool) -> tuple[list, dict]:
        """The outputs for the inputs ``xs``, and the call state of each shared step."""
        values = dict(zip(self.input_keys, xs, strict=True))
        states: dict[int, dict] = {}
        for i, step in enumerate(self.steps):
            args = [values[key] for key in step.inputs]
            values[step.output] = step.op(args[0] if len(args) == 1 else args, training=training)
            if step.shared:
                states[i] = step.op.get_call_state()
            for key in self.freed[i]:
                del values[key]
        return [values[key] for key in self.output_keys], states

    # -- backward ----------------------------------------------------------------------------
    def backward(
        self,
        grads: dict[int, np.ndarray],
        logit_grads: dict[int, np.ndarray],
        states: dict[int, dict],
        input_gradients: bool,
    ) -> list[np.ndarray | None]:
        """Backpropagate from the gradients at outputs (``grads``; ``logit_grads`` at the
        logits of a softmax output, by output key). Leaves each layer's weight gradients in
        its ``grads``; returns the gradients at the inputs (None unless ``input_gradients``)."""
        needs = dict.fromkeys(self.input_keys, input_gradients)
        for step in self.steps:
            needs[step.output] = step.weighted or any(needs[k] for k in step.inputs)
        grads = dict(grads)
        shared: dict[int, dict[str, np.ndarray]] = {}
        for i in range(len(self.steps) - 1, -1, -1):
            step = self.steps[i]
            dz, dy = logit_grads.get(step.output), grads.pop(step.output, None)
            if not needs[step.output] or (dz is None and dy is None):
                continue
            if step.shared:
                step.op.set_call_state(states[i])
            wanted = any(needs[k] for k in step.inputs)
            if dz is not None:
                dx = step.op.backward_from_logits(dz, wanted)
            elif not wanted and isinstance(
                step.op, (ActivationLayer, fusion.ConvNormalizeActivate, fusion.DenseChain)
            ):
                dx = step.op.backward(dy, input_gradient=False)
            else:
                dx = step.op.backward(dy)
            if step.shared:
                total = shared.setdefault(id(step.op), {})
                for name in step.op.trainable_names:
                    g = step.op.grads[name]
                    total[name] = total[name] + g if name in total else g.copy()
            if not wanted:
                continue
            for key, g in zip(step.inputs, dx if len(step.inputs) > 1 else [dx], strict=True):
                if needs[key]:
                    grads[key] = grads[key] + g if key in grads else g
        for step in self.steps:
            if step.shared and id(step.op) in shared:
                step.op.grads.update(shared[id(step.op)])
        return [grads.get(key) for key in self.input_keys]
