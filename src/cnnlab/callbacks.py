"""Callbacks: code the fit loop calls at the start and end of training, of each epoch and of
each batch, with Keras's names and semantics.

``fit`` calls, in order: ``on_train_begin``; per epoch ``on_epoch_begin``, per batch
``on_train_batch_begin`` / ``on_train_batch_end``, then ``on_epoch_trained`` (cnnlab only:
after the last batch, before validation) and ``on_epoch_end``; finally ``on_train_end``, or,
when Ctrl-C stops training, ``on_train_interrupted`` (cnnlab only).
A callback stops training by setting ``self.model.stop_training = True``.

Besides the Keras ones (:class:`History`, :class:`ModelCheckpoint`, :class:`EarlyStopping`,
:class:`TerminateOnNaN`), :class:`NaNGuard` stops a diverging run, puts back the last good
weights and says which layer blew up and what to try; :class:`ProgressBar` draws the progress.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from cnnlab import checks, modelfile, progress, state
from cnnlab.layers import BatchNormalization


class Callback:
    """Base class. ``self.model`` is the model being trained, ``self.params`` holds
    ``epochs``, ``steps`` (batches per epoch), ``samples``, ``batch_size`` and ``verbose``, and
    ``self.loop`` is the running :class:`cnnlab.training.FitLoop` (its position and state).

    A callback with state that must survive a resume returns it, JSON-able, from
    :meth:`get_state`; checkpoints store it and :meth:`set_state` gets it back.
    """

    def __init__(self):
        self.model = None
        self.params: dict = {}
        self.loop = None

    def set_model(self, model) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def set_loop(self, loop) -> None:
        self.loop = loop

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """After the last epoch, or after a callback stopped training."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """After epoch ``epoch``; ``logs``: its loss and metrics, with ``val_`` ones."""

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Before batch ``batch`` (0-based, within the epoch)."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """After the optimizer step of batch ``batch``; ``logs``: the running means."""

    def on_epoch_trained(self, epoch: int) -> None:
        """After the last batch of epoch ``epoch``, before its validation (cnnlab only)."""

    def on_train_interrupted(self, logs: dict | None = None) -> None:
        """Ctrl-C (KeyboardInterrupt) stopped training; fit re-raises it afterwards."""

    def on_train_exit(self) -> None:
        """Last, however training ended (also by an exception): release what
        ``on_train_begin`` took, such as a lock (cnnlab only)."""

    STATE: dict | None = None  # the form of get_state's dict (checks.matches), checked on resume

    def get_state(self) -> dict | None:
        """JSON-able state a resumed run needs, or None (the default: stateless)."""
        return None

    def set_state(self, state: dict) -> None:
        """Take back what :meth:`get_state` returned."""


class CallbackList:
    """Calls every callback in turn."""

    def __init__(self, callbacks: list[Callback]):
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise ValueError(
                    f"callbacks must be cnnlab.callbacks.Callback instances, got "
                    f"{type(callback).__name__}: {callback!r}"
                )
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def configure(self, model, params: dict, loop) -> None:
        for callback in self.callbacks:
            callback.set_model(model)
            callback.set_params(params)
            callback.set_loop(loop)

    def _call(self, method: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, method)(*args)

    def on_train_begin(self, logs=None):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._call("on_train_batch_end", batch, logs)

    def on_epoch_trained(self, epoch):
        self._call("on_epoch_trained", epoch)

    def on_train_interrupted(self, logs=None):
        self._call("on_train_interrupted", logs)

    def on_train_exit(self):
        self._call("on_train_exit")


class History(Callback):
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch, and
    ``history.epoch`` (0-based epoch numbers) and ``history.times`` (seconds per epoch).

    The fit loop records each epoch here itself, before any callback's ``on_epoch_end``, so a
    checkpoint written there already holds the epoch; a resumed run continues the same record.
    """

    def __init__(self):
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.times: list[float] = []

    def append(self, epoch: int, logs: dict[str, float], seconds: float = float("nan")) -> None:
        """Record one epoch; every list keeps one value per epoch (NaN where a key is
        missing), so the record stays a table."""
        before = len(self.epoch)
        self.epoch.append(epoch)
        self.times.append(seconds)
        for key in logs:
            self.history.setdefault(key, [float("nan")] * before)
        for key, values in self.history.items():
            values.append(logs.get(key, float("nan")))

    STATE = {
        "epoch": [checks.COUNT],
        "times": [checks.NUMBER],
        "history": {str: [checks.NUMBER]},
    }

    def get_state(self) -> dict:
        return {
            "epoch": list(self.epoch),
            "times": list(self.times),
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def set_state(self, state: dict) -> None:
        self.epoch = list(state["epoch"])
        self.times = list(state["times"])
        self.history = {k: list(v) for k, v in state["history"].items()}


def format_logs(logs: dict[str, float]) -> str:
    """``"loss: 0.3121 - accuracy: 0.9010"``."""
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


class ProgressBar(Callback):
    """Keras's ProgbarLogger, drawn with tqdm.

    ``verbose=1``: a bar per epoch (images done, images/s, ETA, running loss and accuracy) on
    ``file`` (stderr) where it is watched (a terminal, or a notebook, as widgets:
    :mod:`cnnlab.progress`), and a line per epoch on stdout either way::

        Epoch 3/10 - 2.9s - 495 img/s - loss: 1.2001 - accuracy: 0.5612 - val_loss: ...

    ``verbose=2``: only the lines. ``mininterval``: least seconds between redraws of the bar.
    """

    def __init__(self, verbose: int = 1, file=None, mininterval: float = 0.1):
        super().__init__()
        if verbose not in (1, 2):
            raise ValueError(f"`verbose` must be 1 or 2, got {verbose!r}")
        self.verbose = verbose
        self.file = file
        self.mininterval = mininterval
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.verbose != 1:
            return
        samples = self.params["samples"]
        self._bar = progress.bar(
            samples,
            f"Epoch {epoch + 1}/{self.params['epochs']}",
            "img",
            self.file,
            initial=min(self.loop.batch * self.params["batch_size"], samples),
            mininterval=self.mininterval,
        )

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is None:
            return
        done = min((batch + 1) * self.params["batch_size"], self.params["samples"])
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
        self._bar.update(done - self._bar.n)

    def on_epoch_end(self, epoch, logs=None):
        self._close()
        seconds = self.loop.history.times[-1]
        rate = self.params["samples"] / seconds if seconds > 0 else float("inf")
        print(
            f"Epoch {epoch + 1}/{self.params['epochs']} - {seconds:.1f}s - {rate:.0f} img/s - "
            f"{format_logs(logs or {})}",
            flush=True,
        )

    def on_train_end(self, logs=None):
        self._close()

    def on_train_interrupted(self, logs=None):
        self._close()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def resolve_mode(monitor: str, mode: str) -> str:
    """The direction of improvement, "min" for losses and "max" for accuracies ("auto")."""
    mode = checks.choice("mode", mode, ("auto", "min", "max"))
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return mode


class MonitorCallback(Callback):
    """A callback that keeps the best value so far of one logged quantity: the base of
    :class:`ModelCheckpoint` (``save_best_only``), :class:`EarlyStopping` and
    :class:`cnnlab.runs.RunDirectory` (``checkpoints/best.cnnlab``).

    Args:
        monitor: the name in the logs, e.g. "val_loss" or "val_accuracy".
        mode: "min" (lower is better), "max", or "auto": "max" for names holding "acc".
        min_delta: how much better than the best a value must be to count.
        best: the value to beat at the start (None: the first finite value is the best).

    A value that is NaN or infinite never counts as better.
    """

    def __init__(
        self, monitor: str, mode: str = "auto", min_delta: float = 0.0, best: float | None = None
    ):
        super().__init__()
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.best = best
        self.best_epoch: int | None = None

    def better(self, value: float | None, than: float | None, min_delta: float = 0.0) -> bool:
        """Whether ``value`` beats ``than`` (None: nothing to beat) by more than ``min_delta``."""
        if value is None or not math.isfinite(value):
            return False
        if than is None:
            return True
        return value < than - min_delta if self.mode == "min" else value > than + min_delta

    def current(self, logs: dict | None, otherwise: str) -> float | None:
        """The monitored value in ``logs``; None, and a line on stderr ending in
        ``otherwise`` (what happens instead), when it is not there."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            print(
                f"{type(self).__name__}: {self.monitor!r} is not among the logs "
                f"({', '.join(logs or {})}); {otherwise}",
                file=sys.stderr,
            )
        return value

    def improved(self, value: float | None, epoch: int | None = None) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``; if so it
        becomes the best, reached at ``epoch``."""
        if not self.better(value, self.best, self.min_delta):
            return False
        self.best, self.best_epoch = float(value), epoch
        return True


class ModelCheckpoint(MonitorCallback):
    """Save the model (weights, optimizer, RNGs and the fit loop's position) during training.

    ``filepath`` may hold ``{epoch}`` (1-based) and log names, e.g.
    ``"ckpt-{epoch:02d}-{val_loss:.3f}.cnnlab"``. ``save_best_only``: only when ``monitor``
    improved (``mode`` "min" for losses, "max" for accuracies, "auto" guesses by the name).
    ``save_freq``: "epoch", or an int to save every that many batches (mid-epoch). Each file is
    written atomically and can resume training (see :class:`cnnlab.runs.RunDirectory`).
    """

    def __init__(
        self,
        filepath: str | Path,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ):
        super().__init__(monitor, mode, best=initial_value_threshold)
        if save_freq != "epoch":
            try:
                checks.positive_int("save_freq", save_freq)
            except ValueError:
                raise ValueError(
                    f"`save_freq` must be 'epoch' or a positive int, got {save_freq!r}"
                ) from None
        self.filepath = str(filepath)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self._save(self.loop.epoch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs or {})

    def _save(self, epoch: int, logs: dict) -> None:
        if self.save_best_only:
            current = self.current(logs, "not saving")
            if current is None or not self.improved(current, epoch):
                return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        modelfile.save_model(self.model, path, extra={"training": self.loop.state()})
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")

    STATE = {"best": (checks.NUMBER, None), "batches": checks.COUNT}

    def get_state(self):
        return {"best": self.best, "batches": self._batches}

    def set_state(self, state):
        self.best, self._batches = state["best"], state["batches"]


class EarlyStopping(MonitorCallback):
    """Stop training when ``monitor`` (default ``"val_loss"``) has stopped improving.

    An epoch improves on the best so far when it beats it by more than ``min_delta``
    (lower for losses, higher for accuracies; ``mode`` as in :class:`ModelCheckpoint`).
    After ``patience`` epochs without improvement training stops. ``baseline``: the value to
    beat before waiting resets. ``restore_best_weights``: at the end, put back the weights of
    the best epoch (kept in memory; after a resume, the best since the resume).
    ``start_from_epoch``: epochs of warm-up not monitored.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__(monitor, mode, min_delta)
        self.patience = checks.int_at_least("patience", patience, 0)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        current = self.current(logs, "give validation data or monitor 'loss'")
        if current is None:
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self.improved(current, epoch):
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring the weights of the best epoch: {self.best_epoch + 1}")
            self.model.set_weights(self.best_weights)

    STATE = {
        "wait": checks.COUNT,
        "best": (checks.NUMBER, None),
        "best_epoch": (checks.COUNT, None),
        "stopped_epoch": checks.COUNT,
    }

    def get_state(self):
        return {
            "wait": self.wait,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
        }

    def set_state(self, state):
        self.wait, self.best = state["wait"], state["best"]
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]


class PreciseBatchNorm(Callback):
    """Re-estimate the moving statistics of every BatchNormalization at the end of each epoch,
    before validation: the mean of the batch statistics of the first ``batches`` training
    batches, run through the model as it is at the end of the epoch (Wu & Johnson, 2021,
    "precise BatchNorm").

    During training the moving averages (``momentum=0.99``) follow weights that keep
    changing; with few steps per epoch and a fast optimizer they lag behind the weights, and
    the model at inference, which uses them, can be much worse than in training: validation
    accuracy then jumps from epoch to epoch. The re-estimated statistics are those of the
    weights that inference will use. The weights are left alone, and so is the random
    state of Dropout, so training goes on as without this callback.
    """

    def __init__(self, batches: int = 32):
        super().__init__()
        self.batches = checks.positive_int("batches", batches)

    def on_epoch_trained(self, epoch):
        norms = [layer for layer in self.model.layers if isinstance(layer, BatchNormalization)]
        if not norms:
            return
        draws = state.generator_states(self.model)
        momenta = [layer.momentum for layer in norms]
        size = self.loop.batch_size
        try:
            for k in range(min(self.batches, self.loop.steps)):
                for layer in norms:  # moving = mean of the batch statistics so far
                    layer.momentum = k / (k + 1)
                self.model([x[k * size : (k + 1) * size] for x in self.loop.x], training=True)
        finally:
            for layer, momentum in zip(norms, momenta, strict=True):
                layer.momentum = momentum
            state.restore_generators(self.model, draws)


# -- the NaN guard ---------------------------------------------------------------------------
def _magnitude(array: np.ndarray) -> float:
    """The L2 norm ``||w||``, by one dot product: NaN or inf if any element is."""
    flat = array.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sqrt(flat @ flat)) if flat.size else 0.0


class NaNGuard(Callback):
    """Stop training when the loss or a weight stops being finite, and explain why.

    The lecture: a loss turning NaN means the weights grew too large. After each batch the
    guard checks the loss and the size (the L2 norm ``||w||``) of every trainable weight. When
    something is no longer finite it

    - stops training (``model.stop_training``) and marks the run "diverged";
    - puts back the last good state, the one at the start of the epoch (weights, optimizer,
      RNGs, the loop's position), which is also the last checkpoint a run directory wrote;
    - keeps in ``self.message`` (and prints unless ``verbose=0``) at which step (optimizer
      update) it happened, which layer's weights grew the most before it and which layers'
      gradients or weights are not finite, and what to try: a lower learning rate, batch
      normalization, gradient clipping (``clipnorm``), scaled inputs.

    ``self.report`` holds the same facts as a dict.
    """

    def __init__(self, verbose: int = 1, restore: bool = True):
        super().__init__()
        self.verbose = verbose
        self.restore = restore
        self.message: str | None = None
        self.report: dict | None = None
        self._good: tuple[state.ModelState, dict] | None = None
        self._start: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._last_step = 0

    def on_train_begin(self, logs=None):
        self.message = self.report = None

    def _magnitudes(self) -> dict[str, float]:
        return {
            f"{layer.name}/{name}": _magnitude(layer.weights[name])
            for layer in self.model.layers
            for name in layer.trainable_names
        }

    def on_epoch_begin(self, epoch, logs=None):
        if self.restore:
            self._good = (state.capture(self.model), self.loop.state())
        self._start = self._last = self._magnitudes()
        self._last_step = self.model.optimizer.iterations

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss", 0.0)
        sizes = self._magnitudes()
        if math.isfinite(loss) and all(math.isfinite(v) for v in sizes.values()):
            self._last, self._last_step = sizes, self.model.optimizer.iterations
            return
        self._diverged(batch, loss, sizes)

    def _diverged(self, batch: int, loss: float, sizes: dict[str, float]) -> None:
        model, loop = self.model, self.loop
        bad_grads = [
            f"{layer.name}/{name}"
            for layer in model.layers
            for name in layer.trainable_names
            if name in layer.grads and not np.isfinite(layer.grads[name]).all()
        ]
        bad_weights = [key for key, value in sizes.items() if not math.isfinite(value)]
        grew = max(self._last, key=self._last.get, default=None)
        step, epoch, lr = model.optimizer.iterations, loop.epoch, model.optimizer.learning_rate
        self.report = {
            "step": step,
            "epoch": epoch + 1,
            "batch": batch + 1,
            "loss": loss,
            "nonfinite_gradients": bad_grads,
            "nonfinite_weights": bad_weights,
            "largest_weight": grew,
            "norm_at_epoch_start": None if grew is None else self._start[grew],
            "norm_last_finite": None if grew is None else self._last[grew],
            "last_finite_step": self._last_step,
            "learning_rate": lr,
        }
        lines = [
            f"Training diverged at step {step} (epoch {epoch + 1}, batch {batch + 1}): "
            f"the loss is {loss:.4g}."
        ]
        if grew is not None:
            lines.append(
                f"  The largest weights were in layer {grew.split('/')[0]!r}: {grew} went from "
                f"||w|| = {self._start[grew]:.3g} at the start of the epoch to "
                f"{self._last[grew]:.3g} at step {self._last_step}, the last finite one."
            )
        if bad_grads:
            lines.append(f"  Gradients not finite in layer(s): {_layers_of(bad_grads)}.")
        if bad_weights:
            lines.append(f"  Weights not finite in layer(s): {_layers_of(bad_weights)}.")
        if not bad_grads and not bad_weights:
            lines.append("  Every weight and gradient is still finite: the activations overflowed.")
        lines.append(
            f"  The weights grew too large. Try a lower learning rate (now {lr:g}, e.g. "
            f"{lr / 10:g}), batch normalization after the layers, or gradient clipping "
            "(clipnorm=1.0); and check that the inputs are scaled (e.g. to [-1, 1])."
        )
        if self._good is not None:
            state.restore(model, self._good[0])
            loop.restore(self._good[1])
            lines.append(
                f"  The last good weights (start of epoch {epoch + 1}) were put back; no "
                "checkpoint was written after them."
            )
        self.message = "\n".join(lines)
        loop.status = "diverged"
        loop.stop_reason = self.message
        model.stop_training = True
        if self.verbose:
            print(self.message, file=sys.stderr, flush=True)


def _layers_of(keys: list[str]) -> str:
    """``["dense/kernel", "dense/bias", "dense_1/kernel"]`` -> ``"dense, dense_1"``."""
    return ", ".join(dict.fromkeys(key.split("/")[0] for key in keys))


class TerminateOnNaN(NaNGuard):
    """Keras's name: stop when the loss is NaN or infinite. Here it is the full
    :class:`NaNGuard` (weights checked too, last good state put back, a diagnosis)."""


__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "ModelCheckpoint",
    "MonitorCallback",
    "PreciseBatchNorm",
    "NaNGuard",
    "ProgressBar",
    "TerminateOnNaN",
    "format_logs",
]
