"""Sequential: a stack of layers, trained with a loss and an optimizer, as in Keras."""

from __future__ import annotations

import numpy as np

from cnnlab import backend, fusion, losses, modelfile, optimizers
from cnnlab import metrics as metrics_lib
from cnnlab.layers import Input, Layer, deserialize, serialize
from cnnlab.layers.core import ActivationLayer
from cnnlab.training import evaluate as evaluate_loop
from cnnlab.training import fit as fit_loop


class Sequential:
    """A linear stack of layers.

    >>> model = Sequential([layers.Input(shape=(28, 28, 1)), layers.Flatten(),
    ...                     layers.Dense(10, activation="softmax")])

    With an :class:`~cnnlab.layers.Input` first the model is built at once; otherwise it is
    built on its first call, from the shape of the data.
    """

    def __init__(self, layers: list | None = None, name: str | None = None):
        self.name = name or "sequential"
        self.layers: list[Layer] = []
        self.input_shape: tuple[int, ...] | None = None
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: losses.Loss | None = None
        self.metrics: list[str] = []
        self._step_cache: dict[tuple, list] = {}  # the layers as training and inference run them
        for layer in layers or []:
            self.add(layer)

    # -- building ----------------------------------------------------------------------------
    def add(self, layer: Layer | Input) -> None:
        if isinstance(layer, Input):
            if self.layers or self.input_shape is not None:
                raise ValueError("An Input can only be the first entry of a Sequential model")
            self.input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential expects layers, got {type(layer).__name__}: {layer!r}")
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"The model already has a layer named {layer.name!r}")
        self.layers.append(layer)
        self._step_cache = {}
        if self.input_shape is not None:
            self.build(self.input_shape)

    def build(self, input_shape: tuple[int, ...]) -> None:
        """Build every layer for examples of ``input_shape`` (without the batch axis)."""
        self.input_shape = tuple(input_shape)
        shape = self.input_shape
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            elif layer.input_shape != shape:
                raise ValueError(
                    f"{layer._describe()} was built for input {(None, *layer.input_shape)}, "
                    f"but the layer before it gives {(None, *shape)}"
                )
            shape = layer.output_shape

    @property
    def built(self) -> bool:
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].output_shape

    # -- running -----------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        x = self._checked_input(x)
        with backend.running():
            for layer in self.layers:
                x = layer(x, training=training)
        return x

    def _checked_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if not self.built:
            if x.ndim < 2:
                raise ValueError(f"{self.name} expects a batch of inputs, got shape {x.shape}")
            self.build(x.shape[1:])
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"Model '{self.name}' expects input of shape {(None, *self.input_shape)}, "
                f"got shape {x.shape}"
            )
        return x

    def _run_steps(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The model's output, as training and inference compute it: on the fast engine with
        each batch norm and the activation after it as one op, and at inference the
        convolution before them too (:mod:`cnnlab.fusion`). The numbers of
        ``self(x, training)``, bit for bit in training and up to rounding at inference; only
        a training step's backward pass may follow."""
        x = self._checked_input(x)
        with backend.running():
            for step in self._steps(training):
                x = step(x, training=training)
        return x

    def _steps(self, training: bool = True) -> list:
        """The layers as a training step or inference runs them: on the fast engine fused
        (:func:`cnnlab.fusion.steps`), else one by one. The last layer stays on its own: the
        loss reads its logits."""
        key = (backend.get_engine(), training)
        if key not in self._step_cache:
            body = self.layers[:-1]
            steps = fusion.steps(body, training) if backend.fuses() else list(body)
            self._step_cache[key] = steps + self.layers[-1:]
        return self._step_cache[key]

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Backpropagate ``dy`` (gradient of the output) through every layer; returns ``dx``."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Outputs for ``x`` in inference mode, computed ``batch_size`` examples at a time."""
        x = np.asarray(x)
        if len(x) == 0:
            raise ValueError(f"predict expects at least one example, got shape {x.shape}")
        return np.concatenate(
            [self._run_steps(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        )

    # -- training ----------------------------------------------------------------------------
    def compile(
        self,
        optimizer: str | optimizers.Optimizer = "adam",
        loss: str | losses.Loss = "categorical_crossentropy",
        metrics: list[str] | None = None,
    ) -> None:
        """Choose the optimizer, the loss and the metrics (only "accuracy" is known)."""
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = list(metrics or [])
        for name in self.metrics:
            metrics_lib.get(name)

    def _uses_logits(self) -> bool:
        """Cross-entropy after a softmax output is computed from the logits (stable)."""
        last = self.layers[-1]
        return (
            not self.loss.from_logits
            and isinstance(last, ActivationLayer)
            and last.activation.name == "softmax"
        )

    def _loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, np.ndarray]:
        if self._uses_logits():
            return self.loss.from_logits_value_and_grad(y_true, self.layers[-1].logits)
        return self.loss.value_and_grad(y_true, y_pred)

    def _check_compiled(self) -> None:
        if self.optimizer is None or self.loss is None:
            raise ValueError("The model must be compiled first: call model.compile(...)")

    def _results(self, loss: float, y_true, y_pred) -> dict[str, float]:
        results = {"loss": loss}
        for name in self.metrics:
            results[name] = metrics_lib.get(name)(y_true, y_pred)
        return results

    def _backward_plan(self) -> list[tuple]:
        """The steps below the last one that a training step backpropagates through, last
        first, each with whether its input gradient is needed. Below the first step with
        weights no gradient is needed, and that step needs only its weights' gradients (an
        ActivationLayer can skip its input gradient)."""
        steps = self._steps()
        first = next((i for i, step in enumerate(steps) if step.trainable_names), 0)
        return [
            (step, not (i == first and isinstance(step, ActivationLayer)))
            for i, step in reversed(list(enumerate(steps[:-1])))
            if i >= first
        ]

    def train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Forward, loss, backward and one optimizer step on a batch; returns the metrics."""
        self._check_compiled()
        y = np.asarray(y)
        with backend.running():
            return self._train_step(x, y)

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        y_pred = self._run_steps(x, training=True)
        loss, dy = self._loss(y, y_pred)
        last = self.layers[-1]
        dy = last.backward_from_logits(dy) if self._uses_logits() else last.backward(dy)
        for layer, input_gradient in self._backward_plan():
            if input_gradient:
                dy = layer.backward(dy)
            else:
                layer.backward(dy, input_gradient=False)
        weights, grads = self.trainable_weights_and_grads()
        self.optimizer.apply(grads, weights)
        return self._results(loss, y, y_pred)

    def test_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Loss and metrics on a batch in inference mode."""
        self._check_compiled()
        y = np.asarray(y)
        y_pred = self._run_steps(x)
        return self._results(self._loss(y, y_pred)[0], y, y_pred)

    def train_on_batch(self, x: np.ndarray, y: np.ndarray):
        """One training step; returns the loss, or ``[loss, *metrics]`` (Keras)."""
        return self._as_keras(self.train_step(x, y))

    def test_on_batch(self, x: np.ndarray, y: np.ndarray):
        return self._as_keras(self.test_step(x, y))

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 32, verbose=0):
        """Loss (and metrics) over all of ``x``, averaged over examples."""
        return self._as_keras(evaluate_loop(self, np.asarray(x), np.asarray(y), batch_size))

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

    def summary(self, print_fn=print) -> None:
        """Print each layer with its output shape and parameter count, then the totals."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        trainable = non_trainable = 0
        for layer in self.layers:
            t, nt = layer.count_params()
            trainable, non_trainable = trainable + t, non_trainable + nt
            shape = str((None, *layer.output_shape)) if layer.built else "?"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, f"{t + nt:,}"))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        lines = [f'Model: "{self.name}"', rule]
        for k, row in enumerate(rows):
            lines.append(
                "".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
            lines.append("=" * sum(widths) if k == 0 else "")
        lines[-1] = rule
        lines += [
            f"Total params: {trainable + non_trainable:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {non_trainable:,}",
        ]
        print_fn("\n".join(lines))

    # -- saving ------------------------------------------------------------------------------
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [serialize(layer) for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        entries = [deserialize(spec) for spec in config["layers"]]
        if config.get("input_shape") is not None:
            entries.insert(0, Input(shape=tuple(config["input_shape"])))
        return cls(entries, name=config.get("name"))

    def save(self, path, include_optimizer: bool = True) -> None:
        """Save architecture, weights and (if compiled) optimizer state to one file."""
        modelfile.save_model(self, path, include_optimizer=include_optimizer)
