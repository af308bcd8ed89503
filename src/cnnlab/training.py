"""The fit loop: epochs of shuffled mini-batches, validation, callbacks, and a position that a
checkpoint can save and a resumed run can continue from exactly.

One epoch: draw a permutation of the N examples from the shuffle generator, cut it into
``ceil(N / batch_size)`` batches, and for each: (optionally) augment the batch with the
augmentation generator, run one training step (forward, loss, backward, optimizer update) and
add the batch's loss and metrics, weighted by its size, to the epoch's totals. At the end of the
epoch, the means over the N examples are the epoch's ``loss`` and metrics; the same on the
validation data, in inference mode, gives the ``val_`` ones.

Everything that decides what happens next lives in the model (weights, optimizer state, each
Dropout layer's generator) or in :meth:`FitLoop.state`: the epoch and batch reached, the shuffle
generator as it was at the start of the epoch (so the same permutation is drawn again), the
augmentation generator, the running totals and the history so far. Restoring both continues a
run bit for bit: an interrupted and resumed run ends with the same weights as one that was never
interrupted.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from cnnlab import checks, progress
from cnnlab.callbacks import (
    Callback,
    CallbackList,
    History,
    NaNGuard,
    ProgressBar,
    format_logs,
)
from cnnlab.memory import keep_freed_memory
from cnnlab.seeding import make_rng

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def fit(
    model,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 32,
    epochs: int = 1,
    verbose: int = 1,
    callbacks: list[Callback] | None = None,
    validation_split: float = 0.0,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle: bool = True,
    initial_epoch: int = 0,
    augment: Augment | None = None,
) -> History:
    """Train ``model`` on ``(x, y)`` for ``epochs`` passes of ``batch_size`` examples (Keras).

    Args:
        x: inputs ``(N, ...)``, e.g. images ``(N, H, W, C)``; y: labels ``(N,)`` or ``(N, K)``.
            A model of several inputs or outputs takes a list of arrays (or a dict by name).
        verbose: 0 silent, 1 a progress bar per epoch and a line at its end, 2 only the lines.
        callbacks: :class:`cnnlab.callbacks.Callback` instances, e.g. ``EarlyStopping``,
            ``NaNGuard``, ``ModelCheckpoint`` or :class:`cnnlab.runs.RunDirectory`.
        validation_split: fraction of the data held out for validation, taken from the end of
            ``x`` and ``y`` before shuffling, as Keras does (shuffle sorted data first).
        validation_data: ``(x_val, y_val)``; takes precedence over ``validation_split``.
        shuffle: draw a new order of the examples each epoch (from cnnlab's global seed).
        initial_epoch: the epoch to start from (0-based); ``epochs`` is the epoch to end at.
        augment: ``augment(x_batch, rng) -> x_batch``, applied to every training batch with
            the loop's own generator (saved in checkpoints).

    Every fit is watched by a :class:`cnnlab.callbacks.NaNGuard` (unless ``callbacks`` holds
    one): when the loss or a weight stops being finite it stops training, puts back the last
    good weights and says which layer blew up and what to try (on stderr unless
    ``verbose=0``; the loop's ``status`` is then "diverged").

    Returns:
        History: ``history.history["loss"]``, ``["accuracy"]``, ``["val_loss"]``, ...
        Ctrl-C lets the current batch finish, calls ``on_train_interrupted`` (a run directory
        saves a checkpoint there) and raises ``KeyboardInterrupt``.

    The process keeps freed memory for reuse from here on (:func:`cnnlab.memory.keep_freed_memory`).
    """
    checks.positive_int("batch_size", batch_size)
    checks.int_at_least("epochs", epochs, 0)
    checks.int_at_least("initial_epoch", initial_epoch, 0)
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1 or 2, got {verbose!r}")
    if augment is not None and not callable(augment):
        raise ValueError(f"`augment` must be a function (x, rng) -> x, got {augment!r}")
    model._check_compiled()
    x, y = _data(model, x, y, "")
    if augment is not None and len(x) > 1:
        raise ValueError(f"`augment` takes one input of images; the model has {len(x)} inputs")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(
                f"`validation_data` must be a pair (x_val, y_val), got {type(validation_data)}"
            )
        validation_data = _data(model, *validation_data, "validation_data ")
    elif validation_split:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"`validation_split` must be in [0, 1), got {validation_split!r}")
        n = len(x[0])
        split_at = int(math.floor(n * (1.0 - validation_split)))
        if not 0 < split_at < n:
            raise ValueError(
                f"validation_split={validation_split} of {n} samples leaves "
                f"{split_at} for training and {n - split_at} for validation; "
                "both must be at least 1"
            )
        validation_data = ([a[split_at:] for a in x], [a[split_at:] for a in y])
        x, y = [a[:split_at] for a in x], [a[:split_at] for a in y]
    keep_freed_memory()  # every step allocates the same arrays: reuse them, not page faults
    loop = FitLoop(
        model,
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        verbose=verbose,
        callbacks=callbacks,
        validation_data=validation_data,
        shuffle=shuffle,
        initial_epoch=initial_epoch,
        augment=augment,
    )
    return loop.run()


def evaluate(model, x, y, batch_size: int = 32, verbose=0) -> dict[str, float]:
    """Loss and metrics over all of ``(x, y)`` in inference mode, as a dict (means over N).

    ``verbose``: 0 silent; 1 (or Keras's "auto") a bar where it is watched
    (:mod:`cnnlab.progress`) and then a line with the results, 2 the line alone.
    """
    if verbose == "auto":
        verbose = 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1, 2 or 'auto', got {verbose!r}")
    checks.positive_int("batch_size", batch_size)
    model._check_compiled()
    xs, ys = _data(model, x, y, "")
    n = len(xs[0])
    steps = math.ceil(n / batch_size)
    bar = progress.bar(steps, "evaluate", "batch") if verbose == 1 else None
    started = time.perf_counter()
    totals: dict[str, float] = {}
    for i in range(0, n, batch_size):
        batch = slice(i, i + batch_size)
        size = min(batch_size, n - i)
        for key, value in model._test_step([a[batch] for a in xs], [a[batch] for a in ys]).items():
            totals[key] = totals.get(key, 0.0) + value * size
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    results = {key: value / n for key, value in totals.items()}
    if verbose:
        seconds = time.perf_counter() - started
        print(f"{steps}/{steps} - {seconds:.1f}s - {format_logs(results)}", flush=True)
    return results


def _data(model, x, y, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``x`` and ``y`` as the model's lists of arrays, one per input and per output, of one
    length, at least 1."""
    xs, ys = model._as_inputs(x), model._as_targets(y)
    lengths = [len(a) for a in xs + ys]
    if len(set(lengths)) != 1:
        shown = " and ".join(map(str, lengths)) if len(lengths) == 2 else str(lengths)
        raise ValueError(f"{what}x and y must have the same length, got {shown}")
    if lengths[0] == 0:
        raise ValueError(f"{what}expected at least one example, got none")
    model._check_labels(ys, lengths[0])
    return xs, ys


class OtherData(ValueError):
    """A checkpoint's loop was training on other data, or in other batches, than this fit."""


class FitLoop:
    """One call of ``fit``: the data, the callbacks, and the position reached.

    Position: ``epoch`` (0-based, the one running or next), ``batch`` (batches of it done),
    the epoch's running ``totals`` over ``seen`` examples, and ``history``. ``status`` is
    "running", then "completed", "stopped" (a callback set ``model.stop_training``),
    "diverged" (set by the NaN guard) or "interrupted" (Ctrl-C).
    """

    def __init__(
        self,
        model,
        x: np.ndarray,
        y: np.ndarray,
        *,
        batch_size: int,
        epochs: int,
        verbose: int,
        callbacks: list[Callback] | None,
        validation_data: tuple[np.ndarray, np.ndarray] | None,
        shuffle: bool,
        initial_epoch: int,
        augment: Augment | None,
    ):
        self.model = model
        self.x, self.y = x, y  # lists: one array per input, one per output
        self.samples = len(x[0])
        self.batch_size = batch_size
        self.epochs = epochs
        self.steps = math.ceil(self.samples / batch_size)
        self.validation_data = validation_data
        self.shuffle = bool(shuffle)
        self.augment = augment
        # Two generators drawn from cnnlab's global seed, always in this order.
        self.shuffle_rng = make_rng()
        self.augment_rng = make_rng()

        self.epoch = initial_epoch
        self.batch = 0
        self.totals: dict[str, float] = {}
        self.seen = 0
        self.elapsed = 0.0
        self.history = History()
        self.status = "pending"
        self.stop_reason: str | None = None
        self._epoch_rng_state: dict | None = None
        self._started: float | None = None
        self._consistent = True

        user = list(callbacks or [])
        if not any(isinstance(c, NaNGuard) for c in user):  # every fit is watched
            user.insert(0, NaNGuard(verbose=1 if verbose else 0))
        has_bar = any(isinstance(c, ProgressBar) for c in user)
        self.callbacks = CallbackList(
            ([ProgressBar(verbose)] if verbose and not has_bar else []) + user
        )
        self.params = {
            "epochs": epochs,
            "steps": self.steps,
            "samples": self.samples,
            "batch_size": batch_size,
            "verbose": verbose,
            "shuffle": self.shuffle,
            "validation_samples": 0 if validation_data is None else len(validation_data[0][0]),
        }
        self.callbacks.configure(model, self.params, self)
        self.history.set_model(model)
        self.history.set_params(self.params)
        self.history.set_loop(self)

    # -- state -------------------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        """False only while a training step is half done (Ctrl-C pressed twice)."""
        return self._consistent

    def state(self) -> dict:
        """JSON-able position of the loop; with the model's state it resumes the run exactly."""
        shuffle_state = self._epoch_rng_state or self.shuffle_rng.bit_generator.state
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "shuffle_rng": shuffle_state,
            "augment_rng": self.augment_rng.bit_generator.state,
            "totals": dict(self.totals),
            "seen": self.seen,
            "elapsed": self._elapsed_now(),
            "history": self.history.get_state(),
            "callbacks": {
                key: state
                for key, callback in self._keyed_callbacks()
                if (state := callback.get_state()) is not None
            },
        }

    STATE = {
        **dict.fromkeys(("epoch", "batch", "samples", "batch_size", "seen"), checks.COUNT),
        "shuffle": bool,
        "shuffle_rng": dict,
        "augment_rng": dict,
        "totals": {str: checks.NUMBER},
        "elapsed": checks.NUMBER,
        "history": History.STATE,
        "callbacks": {str: dict},
    }

    def restore(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state`); the data must be the same. A state of
        the wrong form raises a ValueError naming the entry before anything changes."""
        checks.matches(state, self.STATE, "the training state")
        saved = state["callbacks"]
        for key, callback in self._keyed_callbacks():
            if key in saved and callback.STATE is not None:
                checks.matches(saved[key], callback.STATE, f"the state of callback {key}")
        if state["samples"] != self.samples or state["batch_size"] != self.batch_size:
            raise OtherData(
                f"The checkpoint was written while training on {state['samples']} examples in "
                f"batches of {state['batch_size']}; this fit has {self.samples} examples in "
                f"batches of {self.batch_size}. Resume with the same data and batch size."
            )
        history = state["history"]
        lengths = {len(history["epoch"]), len(history["times"])}
        lengths.update(len(v) for v in history["history"].values())
        if state["batch"] > self.steps or state["seen"] > self.samples or len(lengths) > 1:
            raise ValueError(
                f"the training state is inconsistent: batch {state['batch']} of {self.steps} "
                f"per epoch, {state['seen']} of {self.samples} examples seen, history lists of "
                f"lengths {sorted(lengths)}"
            )
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.shuffle_rng.bit_generator.state = state["shuffle_rng"]
        self.augment_rng.bit_generator.state = state["augment_rng"]
        self._epoch_rng_state = None  # captured again when the epoch (re)starts
        self.totals = dict(state["totals"])
        self.seen = int(state["seen"])
        self.elapsed = float(state["elapsed"])
        self._started = None
        self.history.set_state(state["history"])
        for key, callback in self._keyed_callbacks():
            if key in saved:
                callback.set_state(saved[key])

    def _keyed_callbacks(self):
        """``("EarlyStopping", cb)``, ``("EarlyStopping#1", cb2)``...: keys that do not depend
        on which default callbacks (the progress bar) are present."""
        counts: dict[str, int] = {}
        for callback in self.callbacks:
            name = type(callback).__name__
            n = counts.get(name, 0)
            counts[name] = n + 1
            yield (name if n == 0 else f"{name}#{n}"), callback

    def _elapsed_now(self) -> float:
        if self._started is None:
            return self.elapsed
        return self.elapsed + time.perf_counter() - self._started

    def _running_logs(self) -> dict[str, float]:
        return {key: value / self.seen for key, value in self.totals.items()} if self.seen else {}

    # -- running -----------------------------------------------------------------------------
    def run(self) -> History:
        model = self.model
        model.stop_training = False
        self.status = "running"
        try:  # NumPy's overflow warnings are left to the NaN guard, which explains them
            with _InterruptLatch() as latch, np.errstate(over="ignore", invalid="ignore"):
                try:
                    self.callbacks.on_train_begin()
                    while self.epoch < self.epochs and not model.stop_training:
                        self._run_epoch(latch)
                except KeyboardInterrupt:
                    self.status = "interrupted"
                    self.callbacks.on_train_interrupted({"resumable": self.resumable})
                    raise
            if self.status == "running":
                self.status = "completed" if self.epoch >= self.epochs else "stopped"
            history = self.history.history
            last = {k: v[-1] for k, v in history.items()} if self.history.epoch else {}
            self.callbacks.on_train_end(last)
        finally:
            self.callbacks.on_train_exit()
        return self.history

    def _run_epoch(self, latch: _InterruptLatch) -> None:
        model, callbacks, size = self.model, self.callbacks, self.batch_size
        if self._epoch_rng_state is None:
            self._epoch_rng_state = self.shuffle_rng.bit_generator.state
        order = self.shuffle_rng.permutation(self.samples) if self.shuffle else None
        self._started = time.perf_counter()
        callbacks.on_epoch_begin(self.epoch)
        for b in range(self.batch, self.steps):
            idx = (
                slice(b * size, (b + 1) * size)
                if order is None
                else order[b * size : (b + 1) * size]
            )
            callbacks.on_train_batch_begin(b)
            self._consistent = False
            xb, yb = [a[idx] for a in self.x], [a[idx] for a in self.y]
            if self.augment is not None:
                xb = [self.augment(xb[0], self.augment_rng)]
            for key, value in model._train_step(xb, yb).items():
                self.totals[key] = self.totals.get(key, 0.0) + value * len(yb[0])
            self.seen += len(yb[0])
            self.batch = b + 1
            self._consistent = True
            callbacks.on_train_batch_end(b, self._running_logs())
            latch.check()
            if model.stop_training:
                return  # an unfinished epoch leaves no record and no epoch-end checkpoint

        callbacks.on_epoch_trained(self.epoch)
        logs = self._running_logs()
        if self.validation_data is not None:
            val = evaluate(model, *self.validation_data, batch_size=size)
            logs.update({f"val_{key}": value for key, value in val.items()})
        epoch, seconds = self.epoch, self._elapsed_now()
        self._consistent = False
        self.history.append(epoch, logs, seconds)
        self.epoch, self.batch, self.totals, self.seen = epoch + 1, 0, {}, 0
        self.elapsed, self._started, self._epoch_rng_state = 0.0, None, None
        self._consistent = True
        callbacks.on_epoch_end(epoch, logs)
        latch.check()


class _InterruptLatch:
    """Ctrl-C while training: the first press lets the running batch finish (so the model is
    never caught half-updated), then raises KeyboardInterrupt between batches; a second press
    raises at once. Only in the main thread, and only where Ctrl-C has Python's default
    handler (a process that ignores SIGINT keeps ignoring it)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> _InterruptLatch:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nCtrl-C: stopping after this batch (press Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def check(self) -> None:
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt
