"""Models: a graph of layers (Keras's functional API) and Sequential, a stack of them, both
trained with a loss and an optimizer as in Keras.

    inputs = layers.Input((32, 32, 3))
    x = layers.Conv2D(32, 3, padding="same")(inputs)
    ...
    model = Model(inputs, outputs)

A :class:`Model` runs any directed acyclic graph of layers (:mod:`cnnlab.symbolic`): one or
several inputs and outputs, branches, merges (``layers.Add``, ``Concatenate``, ``Average``),
layers called twice with one set of weights. :class:`Sequential` is the graph of a chain,
built from its layers when the shape of its input is known. Both run through
:mod:`cnnlab.steps`, so a Sequential model and the same chain written with the functional
API compute the same numbers, bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Iterator

import numpy as np

from cnnlab import arrays, backend, checks, losses, modelfile, optimizers
from cnnlab import metrics as metrics_lib
from cnnlab.fusion import DenseChain
from cnnlab.layers import InputLayer, Layer, deserialize, serialize
from cnnlab.layers.base import auto_name
from cnnlab.layers.core import ActivationLayer, Dense
from cnnlab.steps import Plan
from cnnlab.symbolic import SymbolicTensor, graph_nodes
from cnnlab.training import evaluate as evaluate_loop
from cnnlab.training import fit as fit_loop


class Model:
    """A graph of layers from ``inputs`` to ``outputs``: ``Model(inputs, outputs)``, each a
    symbolic tensor (from ``layers.Input`` and layer calls) or a list of them.

    ``model(x)`` runs the graph on arrays (a list of them, or a dict by input name, for
    several inputs) and gives the output (a list for several outputs). Everything else is as
    in Keras: ``compile``, ``fit``, ``evaluate``, ``predict``, ``summary``, ``save``.
    """

    def __init__(self, inputs, outputs, name: str | None = None):
        self.name = name or auto_name("Functional")
        self._start()
        self._set_graph(inputs, outputs)

    def _start(self) -> None:
        self.optimizer: optimizers.Optimizer | None = None
        self.loss = None  # the compiled loss: one, or a list of one per output
        self._loss_list: list[losses.Loss] = []
        self.metrics: list[str] = []
        self.stop_training = False
        self._plans: dict[tuple, Plan] = {}
        self._modes: dict[tuple, str] = {}  # (batch key, dtype) -> _threads' answer
        self._states: dict[int, dict] = {}

    def _set_graph(self, inputs, outputs) -> None:
        self._many_inputs = isinstance(inputs, (list, tuple))
        self._many_outputs = isinstance(outputs, (list, tuple))
        self.inputs = list(inputs) if self._many_inputs else [inputs]
        self.outputs = list(outputs) if self._many_outputs else [outputs]
        for what, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            for t in tensors:
                if not isinstance(t, SymbolicTensor):
                    raise ValueError(
                        f"Model {what} must be symbolic tensors (layers.Input and the layers "
                        f"called on it), got {type(t).__name__}: {t!r}"
                    )
        for t in self.inputs:
            if t.node is not None:
                raise ValueError(
                    f"Model inputs must come from layers.Input; {t.name!r} is the output of "
                    f"{t.layer.name!r}"
                )
        self._nodes = graph_nodes(self.inputs, self.outputs)
        self._calls = Counter(id(node.layer) for node in self._nodes)  # by layer
        self._read = {id(t) for node in self._nodes for t in node.inputs}  # tensors read
        seen: dict[str, Layer] = {}
        for layer in [t.layer for t in self.inputs] + [node.layer for node in self._nodes]:
            other = seen.setdefault(layer.name, layer)
            if other is not layer:
                raise ValueError(
                    f"Model '{self.name}' has two layers named {layer.name!r} "
                    f"({type(other).__name__} and {type(layer).__name__}); layer names must "
                    "be unique"
                )
        self.layers: list[Layer] = list(seen.values())
        self._plans, self._modes = {}, {}

    # -- shapes ------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return bool(self.inputs)

    @property
    def input_shape(self):
        """``(None, *shape)`` of the input, Keras's form (a list for several)."""
        shapes = [t.shape for t in self.inputs]
        return shapes if self._many_inputs else shapes[0]

    @property
    def output_shape(self):
        """``(None, *shape)`` of the output, Keras's form (a list for several)."""
        shapes = [t.shape for t in self.outputs]
        return shapes if self._many_outputs else shapes[0]

    # -- data --------------------------------------------------------------------------------
    def _arrays(self, data, tensors: list[SymbolicTensor], what: str) -> list[np.ndarray]:
        """``data`` as one array per tensor: an array for one, a list or a dict by name."""
        if isinstance(data, dict):
            missing = [t.layer.name for t in tensors if t.layer.name not in data]
            if missing:
                raise ValueError(
                    f"Model '{self.name}' expects {what} named {[t.layer.name for t in tensors]}, "
                    f"got keys {sorted(data)}"
                )
            data = [data[t.layer.name] for t in tensors]
        elif len(tensors) == 1 and not (
            isinstance(data, (list, tuple)) and len(data) == 1 and isinstance(data[0], np.ndarray)
        ):
            data = [data]  # one array (or nested lists of numbers) for the one tensor
        if not isinstance(data, (list, tuple)) or len(data) != len(tensors):
            count = len(data) if isinstance(data, (list, tuple)) else 1
            raise ValueError(f"Model '{self.name}' expects {len(tensors)} {what}, got {count}")
        argument = "`x`" if what == "inputs" else "`y`"
        names = [t.layer.name for t in tensors]
        label = (
            (lambda k: argument)
            if len(tensors) == 1
            else (lambda k: f"{argument} ({what[:-1]} {names[k]!r})")
        )
        return [arrays.finite(arrays.numbers(d, label(k)), label(k)) for k, d in enumerate(data)]

    def _as_inputs(self, x) -> list[np.ndarray]:
        """``x`` as one checked array per input: numbers, finite, of the input's shape."""
        xs = self._arrays(x, self.inputs, "inputs")
        for t, v in zip(self.inputs, xs, strict=True):
            if v.ndim < 1 or v.shape[1:] != t.shape[1:]:
                raise ValueError(
                    f"Model '{self.name}' expects `x` of shape {t.shape}, got shape {v.shape}"
                )
        return xs

    def _as_targets(self, y) -> list[np.ndarray]:
        """``y`` as one checked array per output: numbers, finite."""
        return self._arrays(y, self.outputs, "targets")

    def _check_labels(self, ys: list[np.ndarray], n: int) -> None:
        """Raise a ValueError unless each output's loss takes ``ys``' labels for ``n``
        examples: before a step runs, as its forward pass moves batch norm's averages."""
        for t, loss, y in zip(self.outputs, self._loss_list, ys, strict=True):
            loss.check_labels(y, (n, *t.shape[1:]))

    def _result(self, values: list):
        return values if self._many_outputs else values[0]

    # -- running -----------------------------------------------------------------------------
    def _plan(self, training: bool, fused: bool) -> Plan:
        key = (backend.get_engine() if fused else None, training)
        if key not in self._plans:
            fuse = fused and backend.fuses()
            self._plans[key] = Plan(self.inputs, self.outputs, self._nodes, fuse, training)
        return self._plans[key]

    def _steps(self, training: bool = True) -> list:
        """The ops a training step (or inference) runs, fused where the engine fuses."""
        return [step.op for step in self._plan(training, fused=True).steps]

    def __call__(self, x, training: bool = False):
        """The outputs for ``x``, every layer on its own, keeping what :meth:`backward`
        needs."""
        xs = self._as_inputs(x)
        with backend.running(self._threads(xs)):
            outputs, self._states = self._plan(training, fused=False).forward(xs, training)
        return self._result(outputs)

    def _run_steps(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs at inference for checked inputs (:meth:`_as_inputs`), as ``predict``
        and ``evaluate`` compute them: on the fast engine with each convolution, batch norm
        and the activation after them as one op (:mod:`cnnlab.fusion`). The numbers of
        ``self(x)`` up to rounding."""
        if (runner := self._torch_runner()) is not None:
            return runner.outputs(xs)
        with backend.running(self._threads(xs)):
            outputs, self._states = self._plan(False, fused=True).forward(xs, False)
        return outputs

    def _threads(self, xs: list[np.ndarray]) -> str:
        """How the fast engine uses the cores for batches like ``xs``: "cnnlab", "cnnlab-blas"
        or "blas", as :func:`cnnlab.engine.tuning.threads_mode` measured on this model's
        inference pass (training takes the same: its matrix products are the forward's and
        their transposes)."""
        if not backend.fuses():
            return "cnnlab"
        from cnnlab.engine import tuning

        n, dtype = tuning.batch_key(len(xs[0])), xs[0].dtype
        if (n, dtype) not in self._modes:
            shapes = [(n, *x.shape[1:]) for x in xs]
            layers = ", ".join(_described(layer) for layer in self.layers)
            digest = hashlib.sha256(layers.encode()).hexdigest()[:8]
            inputs = " ".join("x".join(map(str, shape)) for shape in shapes)
            key = f"{dtype.name} {inputs}: {self.count_params():,} weights (layers {digest})"
            chains = any(isinstance(op, DenseChain) for op in self._steps(training=False))
            trial = self._threads_trial(shapes, dtype)
            self._modes[(n, dtype)] = tuning.threads_mode(key, trial, dense_chains=chains)
        return self._modes[(n, dtype)]

    def _threads_trial(self, shapes: list[tuple], dtype):
        """``trial(mode)``: the inference pass on random inputs of ``shapes``, in that mode (no
        weight, moving average or generator changes)."""
        inputs: list[np.ndarray] = []

        def trial(mode: str) -> None:
            if not inputs:  # made when first measured, not for a choice already kept
                rng = np.random.default_rng(0)
                inputs.extend(rng.uniform(-1, 1, shape).astype(dtype) for shape in shapes)
            with backend.running(mode):
                self._plan(False, fused=True).forward(inputs, False)

        return trial

    def _torch_runner(self):
        """On the torch engine, what runs this model's steps (:mod:`cnnlab.torch_engine`)."""
        if backend.get_engine() != "torch":
            return None
        from cnnlab import torch_engine  # below this module: it imports the layers only

        return torch_engine.runner(self)

    def backward(self, dy):
        """Backpropagate ``dy`` (the gradient of the output, a list for several) through the
        last call of the model; returns the gradient of the input (a list for several)."""
        dys = dy if self._many_outputs else [dy]
        grads = {id(t): np.asarray(g) for t, g in zip(self.outputs, dys, strict=True)}
        plan = self._plan(True, fused=False)
        dxs = plan.backward(grads, {}, self._states, input_gradients=True)
        return dxs if self._many_inputs else dxs[0]

    def predict(self, x, batch_size: int = 32, verbose="auto"):
        """Outputs for ``x`` in inference mode, computed ``batch_size`` examples at a time."""
        checks.positive_int("batch_size", batch_size)
        return self._predicted(self._as_inputs(x), batch_size, "predict")

    def predict_on_batch(self, x):
        """Outputs for ``x`` in inference mode, as one batch (Keras)."""
        xs = self._as_inputs(x)
        return self._predicted(xs, len(xs[0]), "predict_on_batch")

    def _predicted(self, xs: list[np.ndarray], batch_size: int, what: str):
        """The outputs for checked inputs ``xs``, ``batch_size`` examples at a time, in
        arrays of their own."""
        n = len(xs[0])
        if n == 0:
            raise ValueError(f"{what} expects at least one example, got shape {xs[0].shape}")
        parts = [
            self._run_steps([v[i : i + batch_size] for v in xs]) for i in range(0, n, batch_size)
        ]
        return self._result([np.concatenate(p) for p in zip(*parts, strict=True)])

    # -- training ----------------------------------------------------------------------------
    def compile(
        self,
        optimizer: str | optimizers.Optimizer = "adam",
        loss="categorical_crossentropy",
        metrics: list[str] | None = None,
    ) -> None:
        """Choose the optimizer, the loss (one for every output, or a list or dict by output
        name) and the metrics (only "accuracy" is known)."""
        self.optimizer = optimizers.get(optimizer)
        names = [t.layer.name for t in self.outputs]
        if isinstance(loss, dict):
            unknown = sorted(set(loss) - set(names))
            if unknown or len(loss) != len(names):
                raise ValueError(f"`loss` by output name must name {names}, got {sorted(loss)}")
            loss = [loss[name] for name in names]
        elif not isinstance(loss, (list, tuple)):
            loss = [loss] * len(names)
        if len(loss) != len(names):
            raise ValueError(f"`loss` must be one loss or {len(names)}, got {len(loss)}")
        self._loss_list = [losses.get(item) for item in loss]
        self.loss = self._loss_list if self._many_outputs else self._loss_list[0]
        self.metrics = list(metrics or [])
        for name in self.metrics:
            metrics_lib.get(name)

    def compile_config(self) -> dict:
        """The arguments of :meth:`compile` as JSON: the loss alone for one output."""
        loss = [item.get_config() for item in self._loss_list]
        return {
            "optimizer": self.optimizer.get_config(),
            "loss": loss if self._many_outputs else loss[0],
            "metrics": list(self.metrics),
        }

    def _check_compiled(self) -> None:
        if self.optimizer is None or self.loss is None:
            raise ValueError("The model must be compiled first: call model.compile(...)")

    def _logits_layer(self, i: int) -> ActivationLayer | None:
        """The softmax layer that gives output ``i``, when the loss is computed from its
        logits (stable): cross-entropy of probabilities, an output no other layer reads."""
        tensor = self.outputs[i]
        layer = tensor.layer
        if (
            self._loss_list[i].from_logits
            or id(tensor) in self._read
            or self._calls[id(layer)] > 1
            or not isinstance(layer, ActivationLayer)
            or layer.activation.name != "softmax"
        ):
            return None
        return layer

    def _losses(self, ys, preds) -> tuple[dict[str, float], dict, dict]:
        """The logs' losses, and the gradients at the outputs and at the softmax logits, for
        labels checked already (:meth:`_check_labels`)."""
        grads, logit_grads, logs = {}, {}, {"loss": 0.0}
        for i, (y, pred) in enumerate(zip(ys, preds, strict=True)):
            key, loss, layer = id(self.outputs[i]), self._loss_list[i], self._logits_layer(i)
            if layer is not None:
                value, logit_grads[key] = loss.checked_value_and_grad(y, layer.logits, True)
            else:
                value, grads[key] = loss.checked_value_and_grad(y, pred, loss.from_logits)
            logs["loss"] += value
            if self._many_outputs:
                logs[f"{self.outputs[i].layer.name}_loss"] = value
        return logs, grads, logit_grads

    def _results(self, logs: dict[str, float], ys, preds) -> dict[str, float]:
        for name in self.metrics:
            metric = metrics_lib.get(name)
            for t, y, pred in zip(self.outputs, ys, preds, strict=True):
                key = f"{t.layer.name}_{name}" if self._many_outputs else name
                logs[key] = metric(y, pred)
        return logs

    def train_step(self, x, y) -> dict[str, float]:
        """Forward, loss, backward and one optimizer step on a batch; returns the metrics."""
        self._check_compiled()
        xs, ys = self._as_inputs(x), self._as_targets(y)
        self._check_labels(ys, len(xs[0]))
        return self._train_step(xs, ys)

    def _train_step(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, float]:
        """:meth:`train_step` on checked arrays and labels (the fit loop checks its data
        once)."""
        if (runner := self._torch_runner()) is not None:
            return runner.train_step(xs, ys)
        with backend.running(self._threads(xs)):
            plan = self._plan(True, fused=True)
            preds, states = plan.forward(xs, training=True)
            logs, grads, logit_grads = self._losses(ys, preds)
            with self._kernels_updated_in_backward() as updated:
                plan.backward(grads, logit_grads, states, input_gradients=False)
            weights, gradients = self.trainable_weights_and_grads()
            self.optimizer.apply(gradients, weights, done=frozenset(updated))
        return self._results(logs, ys, preds)

    @contextlib.contextmanager
    def _kernels_updated_in_backward(self) -> Iterator[set[int]]:
        """On the fast engine, with the ops split over cnnlab's threads, inside the block each
        dense layer's kernel is updated by the optimizer in the layer's backward pass, each
        core its block of rows right after their gradient
        (:meth:`cnnlab.optimizers.Optimizer.row_update`): the same numbers as the update after
        the backward pass, without reading the kernel and its gradient again from memory.
        Yields the set that holds, after the block, the indices (in
        :meth:`trainable_weights_and_grads`) of the kernels updated whole. A layer called
        more than once, whose gradient is the sum over its calls, is updated afterwards; so
        is every kernel where the optimizer needs the whole gradient (``clipnorm``), or where
        the model runs each op whole on BLAS's threads (its gradient then comes in one
        block, and updating it in the backward pass gains nothing)."""
        updated: set[int] = set()
        done: dict[int, object] = {}  # by kernel: its update, which counts the rows it updated
        layers = []
        if backend.fuses() and not _blas_threads_mode():
            weights = self.trainable_weights
            self.optimizer.build(weights)
            i = 0  # the index of the layer's first trainable weight
            for layer in self.layers:
                names = layer.trainable_names
                if isinstance(layer, Dense) and "kernel" in names and self._calls[id(layer)] == 1:
                    k = i + names.index("kernel")
                    update = self.optimizer.row_update(k, weights[k])
                    if update is not None:
                        done[k] = layer.kernel_update = update
                        layers.append(layer)
                i += len(names)
        try:
            yield updated
        finally:
            for layer in layers:
                layer.kernel_update = None
        updated.update(i for i, update in done.items() if update.rows_done == len(update.weight))

    def test_step(self, x, y) -> dict[str, float]:
        """Loss and metrics on a batch in inference mode."""
        self._check_compiled()
        xs, ys = self._as_inputs(x), self._as_targets(y)
        self._check_labels(ys, len(xs[0]))
        return self._test_step(xs, ys)

    def _test_step(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, float]:
        """:meth:`test_step` on checked arrays."""
        if (runner := self._torch_runner()) is not None:
            return runner.test_step(xs, ys)
        preds = self._run_steps(xs)
        return self._results(self._losses(ys, preds)[0], ys, preds)

    def train_on_batch(self, x, y):
        """One training step; returns the loss, or ``[loss, *metrics]`` (Keras)."""
        return self._as_keras(self.train_step(x, y))

    def test_on_batch(self, x, y):
        return self._as_keras(self.test_step(x, y))

    def evaluate(self, x, y, batch_size: int = 32, verbose="auto"):
        """Loss (and metrics) over all of ``x``, averaged over examples: the loss alone, or
        ``[loss, *metrics]`` (Keras)."""
        return self._as_keras(evaluate_loop(self, x, y, batch_size, verbose=verbose))

    def _as_keras(self, results: dict[str, float]):
        return results["loss"] if len(results) == 1 else list(results.values())

    def fit(self, x, y, **kwargs):
        """Train for ``epochs`` passes over ``(x, y)``; see :func:`cnnlab.training.fit`."""
        return fit_loop(self, x, y, **kwargs)

    # -- weights -----------------------------------------------------------------------------
    def trainable_weights_and_grads(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        weights, grads = [], []
        for layer in self.layers:
            for name in layer.trainable_names:
                weights.append(layer.weights[name])
                grads.append(layer.grads[name])
        return weights, grads

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        return [layer.weights[n] for layer in self.layers for n in layer.trainable_names]

    def get_weights(self) -> list[np.ndarray]:
        """Every weight, layer by layer, in Keras order and shapes."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        expected = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(f"Model '{self.name}' expects {expected} weights, got {len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer.weights)
            layer.set_weights(weights[i : i + k])
            i += k

    def count_params(self) -> int:
        return sum(sum(layer.count_params()) for layer in self.layers)

    def outputs_of(self, x, layers: list[Layer]) -> list[np.ndarray]:
        """The outputs of ``layers`` (the first call of each) for the inputs ``x``, at
        inference: what the feature maps show."""
        wanted = [next(n.output for n in self._nodes if n.layer is layer) for layer in layers]
        return Model(self.inputs, wanted).predict(x if self._many_inputs else [x])

    def get_layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(
            f"Model '{self.name}' has no layer {name!r}; its layers: "
            f"{[layer.name for layer in self.layers]}"
        )

    # -- summary -----------------------------------------------------------------------------
    def _summary_rows(self) -> list[tuple[str, ...]]:
        """One row per layer call: name (type), output shape, parameters, and what it is
        connected to (a graph's layer fed by a merge, a branch or another input)."""
        rows = []
        for layer in self.layers:
            calls = [n for n in self._nodes if n.layer is layer] or [None]
            for node in calls:
                shape = layer.output_shape if node is None else node.output.shape[1:]
                sources = [] if node is None else [t.name for t in node.inputs]
                t, nt = layer.count_params()
                rows.append(
                    (
                        f"{layer.name} ({type(layer).__name__})",
                        str((None, *shape)) if shape is not None else "?",
                        f"{t + nt:,}",
                        ", ".join(sources),
                    )
                )
        return rows

    def _chain(self) -> bool:
        """Whether every layer reads the output of the one before it, and only that."""
        previous = self.inputs[0] if len(self.inputs) == 1 else None
        for node in self._nodes:
            if len(node.inputs) != 1 or node.inputs[0] is not previous:
                return False
            previous = node.output
        return True

    def summary(self, print_fn=print) -> None:
        """Print each layer with its output shape and parameter count (and, for a graph that
        is not a chain, what it is connected to), then the totals, as Keras does."""
        header = ("Layer (type)", "Output Shape", "Param #", "Connected to")
        rows = self._summary_rows()
        columns = 3 if self._chain() else 4
        table = [header[:columns]] + [row[:columns] for row in rows]
        widths = [max(len(r[i]) for r in table) + 2 for i in range(columns)]
        rule = "-" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for k, row in enumerate(table):
            lines.append("".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            lines.append("=" * sum(widths) if k == 0 else "")
        lines[-1] = rule
        trainable = sum(layer.count_params()[0] for layer in self.layers)
        non_trainable = sum(layer.count_params()[1] for layer in self.layers)
        lines += [
            f"Total params: {trainable + non_trainable:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {non_trainable:,}",
        ]
        print_fn("\n".join(lines))

    def _repr_html_(self) -> str:
        """The summary as an HTML table, for Jupyter."""
        import html

        rows = self._summary_rows()
        columns = 3 if self._chain() else 4
        head = ("Layer (type)", "Output Shape", "Param #", "Connected to")[:columns]
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[:columns]) + "</tr>"
            for row in rows
        )
        total = self.count_params()
        return (
            f"<p><b>Model: {html.escape(self.name)}</b> ({total:,} parameters)</p><table>"
            + "<tr>"
            + "".join(f"<th>{h}</th>" for h in head)
            + f"</tr>{cells}</table>"
        )

    # -- saving ------------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The graph as JSON: the layers, each call as ``[layer, [[source, call], ...]]``,
        and the inputs and outputs as ``[layer, call]``."""
        where = {id(t): [t.layer.name, 0] for t in self.inputs}
        nodes = []
        calls: dict[str, int] = {}
        for node in self._nodes:
            k = calls[node.layer.name] = calls.get(node.layer.name, -1) + 1
            where[id(node.output)] = [node.layer.name, k]
            nodes.append([node.layer.name, [where[id(t)] for t in node.inputs]])
        return {
            "class_name": "Model",
            "name": self.name,
            "layers": [serialize(layer) for layer in self.layers],
            "nodes": nodes,
            "inputs": [where[id(t)] for t in self.inputs],
            "outputs": [where[id(t)] for t in self.outputs],
            "many_inputs": self._many_inputs,
            "many_outputs": self._many_outputs,
        }

    @classmethod
    def from_config(cls, config: dict) -> Model:
        """Rebuild the graph that :meth:`get_config` describes."""
        layers = {spec["config"]["name"]: deserialize(spec) for spec in config["layers"]}
        tensors: dict[tuple[str, int], SymbolicTensor] = {
            (name, 0): layer.output
            for name, layer in layers.items()
            if isinstance(layer, InputLayer)
        }

        def tensor(reference, user: str) -> SymbolicTensor:
            key = tuple(reference)
            if key not in tensors:
                raise ValueError(
                    f"the graph's {user} reads call {key[1]} of layer {key[0]!r}, which the "
                    "graph does not define (a dangling node reference)"
                )
            return tensors[key]

        calls: dict[str, int] = {}
        for name, sources in config["nodes"]:
            if name not in layers:
                raise ValueError(f"the graph calls layer {name!r}, which it does not define")
            args = [tensor(s, f"layer {name!r}") for s in sources]
            k = calls[name] = calls.get(name, -1) + 1
            tensors[(name, k)] = layers[name](args[0] if len(args) == 1 else args)
        inputs = [tensor(r, "input") for r in config["inputs"]]
        outputs = [tensor(r, "output") for r in config["outputs"]]
        return cls(
            inputs if config.get("many_inputs") else inputs[0],
            outputs if config.get("many_outputs") else outputs[0],
            name=config.get("name"),
        )

    def save(self, path, include_optimizer: bool = True) -> None:
        """Save architecture, weights and (if compiled) optimizer state to one file."""
        modelfile.save_model(self, path, include_optimizer=include_optimizer)


def _described(layer: Layer) -> str:
    """The layer's class and the shape of its first weight: "Dense 3072x200"."""
    weights = list(layer.weights.values())
    shape = f" {'x'.join(map(str, weights[0].shape))}" if weights else ""
    return type(layer).__name__ + shape


def _blas_threads_mode() -> bool:
    """Whether the model runs every op whole, on BLAS's threads
    (:func:`cnnlab.engine.parallel.blas_threads`)."""
    from cnnlab.engine import parallel

    return parallel.whole()


class Sequential(Model):
    """A linear stack of layers.

    >>> model = Sequential([layers.Input(shape=(28, 28, 1)), layers.Flatten(),
    ...                     layers.Dense(10, activation="softmax")])

    With an ``Input`` first the model is built at once; otherwise it is built on its first
    call, from the shape of the data. It is the graph of the chain of its layers; unlike a
    functional model's, its ``layers`` leave out the input.
    """

    def __init__(self, layers: list | None = None, name: str | None = None):
        self.name = name or "sequential"
        self._start()
        self.layers: list[Layer] = []
        self._input: InputLayer | None = None
        self.inputs, self.outputs, self._nodes = [], [], []
        self._calls, self._read = Counter(), set()
        self._many_inputs = self._many_outputs = False
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Layer | SymbolicTensor) -> None:
        if isinstance(layer, SymbolicTensor) and isinstance(layer.layer, InputLayer):
            layer = layer.layer
        if isinstance(layer, InputLayer):
            if self.layers or self._input is not None:
                raise ValueError("An Input can only be the first entry of a Sequential model")
            self._input = layer
            return
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential expects layers, got {type(layer).__name__}: {layer!r}")
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"The model already has a layer named {layer.name!r}")
        self.layers.append(layer)
        self._plans, self._modes = {}, {}
        if self._input is not None:
            self._chain_layers()

    def build(self, input_shape: tuple[int, ...]) -> None:
        """Build every layer for examples of ``input_shape`` (without the batch axis)."""
        self._input = InputLayer(tuple(input_shape))
        self._chain_layers()

    def _chain_layers(self) -> None:
        x = self._input.output
        for layer in self.layers:
            x = layer(x)
        layers = self.layers
        self._set_graph(self._input.output, x)
        self.layers = layers

    @property
    def built(self) -> bool:
        return self._input is not None and bool(self.inputs)

    @property
    def input_shape(self):
        return None if self._input is None else (None, *self._input.input_shape)

    @property
    def output_shape(self):
        return super().output_shape if self.built else None

    def _as_inputs(self, x) -> list[np.ndarray]:
        if not self.built:
            first = np.asarray(x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x)
            if first.ndim < 2:
                raise ValueError(f"{self.name} expects a batch of inputs, got shape {first.shape}")
            self.build(first.shape[1:])
        return super()._as_inputs(x)

    def _chain(self) -> bool:
        return True

    def _summary_rows(self):
        return [
            (
                f"{layer.name} ({type(layer).__name__})",
                str((None, *layer.output_shape)) if layer.built else "?",
                f"{sum(layer.count_params()):,}",
                "",
            )
            for layer in self.layers
        ]

    def get_config(self) -> dict:
        return {
            "class_name": "Sequential",
            "name": self.name,
            "input_shape": None if self._input is None else list(self._input.input_shape),
            "layers": [serialize(layer) for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        model = cls([deserialize(spec) for spec in config["layers"]], name=config.get("name"))
        if config.get("input_shape") is not None:
            model.build(tuple(config["input_shape"]))
        return model


def from_config(config: dict) -> Model:
    """The model a :meth:`Model.get_config` describes, functional or Sequential; a
    ValueError says what is missing or malformed."""
    if not isinstance(config, dict):
        raise ValueError(f"a model's config must be a dict, got {type(config).__name__}")
    if not isinstance(config.get("layers"), list):
        got = type(config.get("layers")).__name__ if "layers" in config else "nothing"
        raise ValueError(f"a model's config must hold a list of 'layers', got {got}")
    if config.get("class_name") in ("Model", "Functional"):
        for key in ("nodes", "inputs", "outputs"):
            if not isinstance(config.get(key), list):
                raise ValueError(f"a graph's config must hold a list of {key!r}")
        for node in config["nodes"]:
            ok = isinstance(node, list) and len(node) == 2 and isinstance(node[1], list)
            if not ok or not all(_is_reference(r) for r in node[1]):
                raise ValueError(
                    f"a graph's node must be [layer, [[layer, call], ...]], got {node!r:.80}"
                )
        if not all(_is_reference(r) for r in config["inputs"] + config["outputs"]):
            raise ValueError("a graph's inputs and outputs must be [layer, call] pairs")
    kind = config.get("class_name", "Sequential")
    classes = {"Model": Model, "Functional": Model, "Sequential": Sequential}
    if kind not in classes:
        raise ValueError(f"Unknown model class {kind!r}; expected one of {sorted(classes)}")
    return classes[kind].from_config(config)


def _is_reference(value) -> bool:
    """``[layer name, call index]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )
