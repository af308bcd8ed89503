"""The fit loop, callbacks and run directories: Keras semantics, progress, exact resume after
an interruption, Ctrl-C, the NaN guard, early stopping, determinism, run directory contents."""

from __future__ import annotations

import io
import json
import re
import signal

import numpy as np
import pytest

import cnnlab
from cnnlab import layers, optimizers
from cnnlab.callbacks import (
    Callback,
    EarlyStopping,
    History,
    ModelCheckpoint,
    NaNGuard,
    ProgressBar,
    TerminateOnNaN,
)
from cnnlab.model import Sequential
from cnnlab.runs import RunDirectory, classification_report, read_metrics
from cnnlab.saving import load, load_model


def small_model(seed: int = 0, dropout: float = 0.3) -> Sequential:
    """Conv, batch norm, dense, dropout: every kind of state a checkpoint must carry."""
    cnnlab.set_random_seed(seed)
    model = Sequential(
        [
            layers.Input(shape=(6, 6, 1)),
            layers.Conv2D(3, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.Flatten(),
            layers.Dense(8, activation="relu"),
            layers.Dropout(dropout),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def toy_data(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=n)
    x[np.arange(n), y, y, 0] += 3.0  # a bright pixel on the diagonal gives the class away
    return x, y


def assert_same_weights(a: Sequential, b: Sequential) -> None:
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        assert np.array_equal(x, y)


class InterruptAt(Callback):
    """Raise KeyboardInterrupt (as Ctrl-C would) after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)

    def on_train_batch_end(self, batch, logs=None):
        if (self.loop.epoch, batch) == self.at:
            raise KeyboardInterrupt


def shift_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random roll of each image: consumes the augmentation generator."""
    return np.stack([np.roll(img, int(rng.integers(-1, 2)), axis=0) for img in x])


# -- Keras semantics of fit ------------------------------------------------------------------
def test_epoch_loss_is_the_mean_over_examples_of_the_batch_losses():
    """Batches of 4, 4 and 2: the epoch loss is (4*l1 + 4*l2 + 2*l3) / 10, computed here by
    stepping a twin model batch by batch."""
    x, y = toy_data(10)
    model, twin = small_model(dropout=0.0), small_model(dropout=0.0)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    losses = [twin.train_step(x[i : i + 4], y[i : i + 4])["loss"] for i in (0, 4, 8)]
    expected = (4 * losses[0] + 4 * losses[1] + 2 * losses[2]) / 10
    assert history.history["loss"] == [pytest.approx(expected, rel=1e-12)]
    assert_same_weights(model, twin)


def test_validation_split_holds_out_the_last_examples_like_keras():
    x, y = toy_data(10)
    model, twin = small_model(dropout=0.0), small_model(dropout=0.0)
    history = model.fit(
        x, y, batch_size=8, epochs=1, shuffle=False, validation_split=0.2, verbose=0
    )
    twin.train_step(x[:8], y[:8])
    val_loss, val_acc = twin.evaluate(x[8:], y[8:])
    assert history.history["val_loss"] == [pytest.approx(val_loss, rel=1e-12)]
    assert history.history["val_accuracy"] == [val_acc]
    assert history.params["samples"] == 8 and history.params["validation_samples"] == 2


def test_history_has_keras_keys_and_one_value_per_epoch():
    x, y = toy_data()
    history = small_model().fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert isinstance(history, History)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert len(history.times) == 3 and all(t >= 0 for t in history.times)


def test_initial_epoch_counts_up_to_epochs():
    x, y = toy_data()
    history = small_model().fit(x, y, epochs=5, initial_epoch=3, verbose=0)
    assert history.epoch == [3, 4]


def test_callbacks_are_called_in_keras_order():
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, logs=None):
            calls.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(f"epoch_begin {epoch}")

        def on_train_batch_begin(self, batch, logs=None):
            calls.append(f"batch_begin {batch}")

        def on_train_batch_end(self, batch, logs=None):
            calls.append(f"batch_end {batch} {sorted(logs)}")

        def on_epoch_end(self, epoch, logs=None):
            calls.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            calls.append("train_end")

    x, y = toy_data(6)
    small_model().fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[Recorder()])
    assert calls == [
        "train_begin",
        "epoch_begin 0",
        "batch_begin 0",
        "batch_end 0 ['accuracy', 'loss']",
        "batch_begin 1",
        "batch_end 1 ['accuracy', 'loss']",
        "epoch_end 0 ['accuracy', 'loss']",
        "train_end",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "`batch_size` must be a positive int, got 0"),
        ({"epochs": -1}, "`epochs` must be an int >= 0, got -1"),
        ({"verbose": 3}, "`verbose` must be 0, 1 or 2, got 3"),
        ({"validation_split": 1.5}, "`validation_split` must be in [0, 1), got 1.5"),
        ({"validation_data": (1, 2, 3)}, "`validation_data` must be a pair (x_val, y_val)"),
        ({"callbacks": ["stop"]}, "callbacks must be cnnlab.callbacks.Callback instances"),
        ({"augment": 3}, "`augment` must be a function (x, rng) -> x, got 3"),
    ],
)
def test_bad_fit_arguments_are_clear_value_errors(kwargs, message):
    x, y = toy_data(8)
    with pytest.raises(ValueError) as err:
        small_model().fit(x, y, **{"verbose": 0, **kwargs})
    assert message in str(err.value)


def test_x_and_y_of_different_lengths_are_refused():
    x, y = toy_data(8)
    with pytest.raises(ValueError, match="x and y must have the same length, got 8 and 7"):
        small_model().fit(x, y[:7], verbose=0)


# -- progress ---------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    """A file that says it is a terminal, as stderr is where someone watches."""

    def isatty(self) -> bool:
        return True


def test_verbose_1_draws_a_bar_in_a_terminal_and_prints_a_line_per_epoch(capsys):
    x, y = toy_data()
    terminal = _Terminal()
    bar = ProgressBar(file=terminal, mininterval=0)  # redraw at every batch, as a slow epoch
    small_model().fit(x, y, epochs=2, batch_size=8, validation_split=0.25, callbacks=[bar])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2 - ") and lines[1].startswith("Epoch 2/2 - ")
    for name in ("img/s", "loss: ", "accuracy: ", "val_loss: ", "val_accuracy: "):
        assert name in lines[1]
    # tqdm's bar: images done of the total, elapsed<ETA, images per second, loss, accuracy.
    drawn = terminal.getvalue()
    assert "Epoch 1/2" in drawn and "16/30" in drawn
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s, loss=[\d.]+, accuracy=[\d.]+\]", drawn)


def test_outside_a_terminal_verbose_1_writes_one_line_per_epoch_and_no_bar(capsys):
    """A log (stderr a file or a pipe) holds the epoch lines, not the frames of a bar."""
    x, y = toy_data()
    small_model().fit(x, y, epochs=3, batch_size=4, verbose=1)
    out, err = capsys.readouterr()
    assert err == ""
    assert [line.split(" - ")[0] for line in out.splitlines()] == [
        "Epoch 1/3",
        "Epoch 2/3",
        "Epoch 3/3",
    ]


def test_verbose_2_prints_only_lines_and_verbose_0_nothing(capsys):
    x, y = toy_data()
    small_model().fit(x, y, epochs=2, verbose=2)
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2 and err == ""
    small_model().fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")


# -- determinism -----------------------------------------------------------------------------
def test_same_seed_same_data_gives_identical_metrics_and_weights():
    x, y = toy_data()
    runs = []
    for _ in range(2):
        model = small_model(seed=7)
        history = model.fit(
            x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0, augment=shift_augment
        )
        runs.append((model, history.history))
    assert runs[0][1] == runs[1][1]
    assert_same_weights(runs[0][0], runs[1][0])
    other = small_model(seed=8)
    other_history = other.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0)
    assert other_history.history["loss"] != runs[0][1]["loss"]


# -- resume and Ctrl-C -----------------------------------------------------------------------
FIT = {"batch_size": 8, "epochs": 3, "validation_split": 0.25, "augment": shift_augment}


@pytest.mark.parametrize("stop", [(1, 1), (0, 3), (2, 0)], ids=["mid-epoch", "epoch-end", "last"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, stop):
    """Dropout, shuffling and augmentation all draw random numbers: a resumed run must draw
    the very same ones. The model is rebuilt with another seed before resuming, so nothing
    but the checkpoint can carry the state over."""
    x, y = toy_data()
    reference = small_model(seed=3)
    expected = reference.fit(x, y, verbose=0, **FIT)

    run_dir = tmp_path / "run"
    model = small_model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, verbose=0, callbacks=[RunDirectory(run_dir), InterruptAt(*stop)], **FIT)
    _, extra = load(run_dir / "checkpoints" / "latest.cnnlab")
    assert (extra["training"]["epoch"], extra["training"]["batch"]) == (stop[0], stop[1] + 1)

    resumed = small_model(seed=99)
    history = resumed.fit(x, y, verbose=0, callbacks=[RunDirectory(run_dir, resume=True)], **FIT)
    assert_same_weights(resumed, reference)
    assert history.history == expected.history
    rows = read_metrics(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["val_loss"] for row in rows] == expected.history["val_loss"]


def test_ctrl_c_lets_the_batch_finish_then_saves_a_checkpoint(tmp_path):
    """A real SIGINT during batch 1 of epoch 0: the step completes (the model is never left
    half-updated), then training stops with KeyboardInterrupt and a checkpoint of the state
    after that batch."""

    class PressCtrlC(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if (self.loop.epoch, batch) == (0, 1):
                signal.raise_signal(signal.SIGINT)

    x, y = toy_data()
    model = small_model()
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x, y, batch_size=8, epochs=3, verbose=0,
            callbacks=[PressCtrlC(), RunDirectory(tmp_path / "run")],
        )  # fmt: skip
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    saved, extra = load(tmp_path / "run" / "checkpoints" / "latest.cnnlab")
    assert (extra["training"]["epoch"], extra["training"]["batch"]) == (0, 2)
    assert model.optimizer.iterations == 2
    assert_same_weights(saved, model)


def test_resume_with_other_data_is_refused(tmp_path):
    x, y = toy_data()
    with pytest.raises(KeyboardInterrupt):
        small_model().fit(
            x, y, batch_size=8, verbose=0,
            callbacks=[RunDirectory(tmp_path / "run"), InterruptAt(0, 1)],
        )  # fmt: skip
    with pytest.raises(ValueError, match="40 examples in batches of 8; this fit has 30"):
        small_model().fit(
            x[:30], y[:30], batch_size=8, verbose=0,
            callbacks=[RunDirectory(tmp_path / "run", resume=True)],
        )  # fmt: skip


def test_resume_without_a_checkpoint_says_so(tmp_path):
    x, y = toy_data()
    with pytest.raises(FileNotFoundError, match="Nothing to resume in"):
        small_model().fit(x, y, verbose=0, callbacks=[RunDirectory(tmp_path, resume=True)])


# -- the NaN guard ---------------------------------------------------------------------------
def exploding_model(learning_rate: float) -> Sequential:
    """Three linear Dense layers trained by plain SGD: each layer's gradient is scaled by the
    weights of the others, so with raw 0..255 pixels and a large step they grow without
    bound until they overflow."""
    cnnlab.set_random_seed(0)
    model = Sequential(
        [
            layers.Input(shape=(4, 4, 1)),
            layers.Flatten(),
            layers.Dense(8),
            layers.Dense(8),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizers.SGD(learning_rate), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def raw_pixels(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, n)


class HugeLearningRateFrom(Callback):
    """Train sensibly, then from epoch ``epoch`` on with a learning rate of 1."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.optimizer.learning_rate = 1.0


def test_nan_guard_stops_keeps_the_last_good_checkpoint_and_names_layer_and_step(tmp_path):
    x, y = raw_pixels()
    model = exploding_model(1e-3)
    guard = NaNGuard(verbose=0)
    run = RunDirectory(tmp_path / "run")
    with np.errstate(all="ignore"):
        history = model.fit(
            x, y, batch_size=8, epochs=5, verbose=0,
            callbacks=[HugeLearningRateFrom(2), guard, run],
        )  # fmt: skip
    report = guard.report
    assert report is not None, "the model was meant to blow up"
    good_epochs = 2
    assert report["epoch"] == good_epochs + 1
    assert len(history.epoch) == good_epochs
    assert report["step"] == good_epochs * 8 + report["batch"]
    # The message: where, which layer, what to try.
    assert f"step {report['step']} (epoch {report['epoch']}, batch {report['batch']})" in (
        guard.message
    )
    assert f"layer {report['largest_weight'].split('/')[0]!r}" in guard.message
    assert report["largest_weight"].split("/")[0] in {layer.name for layer in model.layers}
    for advice in ("lower learning rate", "batch normalization", "clipnorm"):
        assert advice in guard.message
    # The model holds the last good weights, those of the last checkpoint.
    assert all(np.isfinite(w).all() for w in model.get_weights())
    saved, extra = load(run.latest_path)
    assert_same_weights(saved, model)
    assert extra["training"]["epoch"] == good_epochs
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "diverged" in summary["reason"]
    assert not run.model_path.exists()


def test_nan_guard_names_the_layer_whose_weights_are_not_finite():
    class Poison(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (self.loop.epoch, batch) == (1, 2):
                self.model.layers[3].weights["kernel"][0, 0] = np.inf

    x, y = toy_data()
    model = small_model()
    guard = TerminateOnNaN(verbose=0)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[Poison(), guard])
    dense = model.layers[3].name
    assert guard.report["nonfinite_weights"] == [f"{dense}/kernel"]
    assert guard.report["step"] == 5 + 3  # 5 batches in epoch 0, then batch 3 of epoch 1
    assert f"Weights not finite in layer(s): {dense}." in guard.message
    assert np.isfinite(model.layers[3].weights["kernel"]).all()


def test_nan_guard_is_silent_on_a_healthy_run(capsys):
    x, y = toy_data()
    guard = NaNGuard()
    history = small_model().fit(x, y, epochs=2, verbose=0, callbacks=[guard])
    assert guard.report is None and len(history.epoch) == 2
    assert capsys.readouterr() == ("", "")


# -- early stopping and checkpoints ----------------------------------------------------------
class FakeModel:
    stop_training = False

    def __init__(self):
        self.weights = [np.zeros(1)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [w.copy() for w in weights]


def drive(callback: Callback, values: list[float], monitor: str = "val_loss") -> FakeModel:
    """Feed ``values`` as epoch logs; the weights of epoch k are [k]."""
    model = FakeModel()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        model.weights = [np.array([float(epoch)])]
        callback.on_epoch_end(epoch, {monitor: value})
        if model.stop_training:
            break
    callback.on_train_end()
    return model


def test_early_stopping_waits_patience_epochs_without_improvement():
    # Best at epoch 1 (0.5); epochs 2 and 3 do not improve: with patience 2, stop at 3.
    stopper = EarlyStopping(patience=2)
    model = drive(stopper, [1.0, 0.5, 0.6, 0.55, 0.1])
    assert model.stop_training and stopper.stopped_epoch == 3
    assert model.weights == [np.array([3.0])]  # restore_best_weights is off by default


def test_early_stopping_restores_the_best_weights_and_respects_min_delta():
    # 0.95, 0.45 and 0.42 are within min_delta of the best before them: no improvement.
    stopper = EarlyStopping(patience=2, min_delta=0.1, restore_best_weights=True)
    model = drive(stopper, [1.0, 0.95, 0.5, 0.45, 0.42, 0.1])
    assert stopper.stopped_epoch == 4 and stopper.best_epoch == 2
    assert model.weights == [np.array([2.0])]


def test_early_stopping_on_accuracy_maximizes():
    stopper = EarlyStopping(monitor="val_accuracy", patience=1)
    model = drive(stopper, [0.5, 0.7, 0.6], monitor="val_accuracy")
    assert model.stop_training and stopper.best == 0.7


def test_early_stopping_in_fit_ends_the_run_as_stopped(tmp_path):
    x, y = toy_data()

    class Worse(Callback):  # make val_loss rise every epoch, so patience 1 stops at epoch 1
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = float(epoch)

    run = RunDirectory(tmp_path / "run")
    history = small_model().fit(
        x, y, epochs=10, validation_split=0.25, verbose=0,
        callbacks=[Worse(), EarlyStopping(patience=1), run],
    )  # fmt: skip
    assert len(history.epoch) == 2
    assert json.loads((run.path / "summary.json").read_text())["status"] == "stopped"


def test_model_checkpoint_saves_only_improvements_to_formatted_paths(tmp_path):
    x, y = toy_data()

    class Scripted(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = [3.0, 1.0, 2.0][epoch]

    path = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.1f}.cnnlab")
    best = ModelCheckpoint(path, save_best_only=True)
    small_model().fit(x, y, epochs=3, verbose=0, callbacks=[Scripted(), best])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-01-3.0.cnnlab",
        "ckpt-02-1.0.cnnlab",
    ]
    _, extra = load(tmp_path / "ckpt-02-1.0.cnnlab")
    assert extra["training"]["epoch"] == 2


# -- the run directory -----------------------------------------------------------------------
def test_run_directory_holds_config_metrics_checkpoints_model_and_summary(tmp_path):
    x, y = toy_data()
    x_test, y_test = toy_data(12, seed=5)
    model = small_model()
    run = RunDirectory(
        tmp_path / "run",
        config={"seed": 0, "dataset": "toy"},
        test_data=(x_test, y_test),
        class_names=["a", "b", "c"],
    )
    history = model.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0,
                        callbacks=[run])  # fmt: skip
    files = sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*"))
    assert files == [
        ".lock",
        "checkpoints",
        "checkpoints/best.cnnlab",
        "checkpoints/latest.cnnlab",
        "config.json",
        "metrics.csv",
        "model.cnnlab",
        "summary.json",
    ]
    config = json.loads((run.path / "config.json").read_text())
    assert config["seed"] == 0 and config["dataset"] == "toy"
    assert Sequential.from_config(config["model_config"]).count_params() == model.count_params()
    assert config["compile"]["optimizer"]["learning_rate"] == 1e-2
    assert config["fit"] == {
        "epochs": 3, "batch_size": 8, "samples": 30, "shuffle": True, "validation_samples": 10
    }  # fmt: skip
    assert set(config["versions"]) >= {"cnnlab", "numpy", "python"}

    header = (run.path / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,loss,accuracy,val_loss,val_accuracy,time"
    rows = read_metrics(run.path / "metrics.csv")
    assert [r["loss"] for r in rows] == history.history["loss"]  # exactly, via repr

    final = load_model(run.model_path)
    assert_same_weights(final, model)
    latest = load_model(run.latest_path)
    assert_same_weights(latest, model)
    best_epoch = int(np.argmin(history.history["val_loss"]))
    _, extra = load(run.best_path)
    assert extra["training"]["epoch"] == best_epoch + 1
    assert load(run.model_path)[1]["class_names"] == ["a", "b", "c"]

    summary = json.loads((run.path / "summary.json").read_text())
    predicted = model.predict(x_test).argmax(axis=1)
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["test"]["accuracy"] == pytest.approx(np.mean(predicted == y_test))
    for k, name in enumerate("abc"):
        mask = y_test == k
        expected = float(np.mean(predicted[mask] == k)) if mask.any() else None
        assert summary["test"]["per_class_accuracy"][name] == pytest.approx(expected)
    assert summary["best"]["epoch"] == best_epoch + 1


def test_run_directory_refuses_to_overwrite_a_run(tmp_path):
    x, y = toy_data()
    small_model().fit(x, y, verbose=0, callbacks=[RunDirectory(tmp_path / "run")])
    before = (tmp_path / "run" / "metrics.csv").read_text()
    with pytest.raises(FileExistsError, match="already holds a run"):
        small_model().fit(x, y, verbose=0, callbacks=[RunDirectory(tmp_path / "run")])
    assert (tmp_path / "run" / "metrics.csv").read_text() == before


def test_restore_best_puts_the_best_epoch_in_the_final_model(tmp_path):
    x, y = toy_data()

    class Scripted(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = [3.0, 1.0, 2.0][epoch]

    run = RunDirectory(tmp_path / "run", restore_best=True)
    small_model().fit(x, y, epochs=3, verbose=0, callbacks=[Scripted(), run])
    assert_same_weights(load_model(run.model_path), load_model(run.best_path))
    _, extra = load(run.best_path)
    assert extra["training"]["epoch"] == 2


def test_classification_report_counts_by_hand():
    class Fixed:
        def predict(self, x, batch_size=32):
            return np.eye(3)[[0, 0, 1, 2, 2, 2]]  # predicted classes 0 0 1 2 2 2

    report = classification_report(Fixed(), np.zeros(6), np.array([0, 1, 1, 2, 2, 0]))
    assert report["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class_accuracy"] == {"0": 0.5, "1": 0.5, "2": 1.0}


def test_bars_are_drawn_only_where_watched(monkeypatch):
    """No bar in a log or a pipe; tqdm's text bar in a terminal, and in a notebook without
    ipywidgets; its widgets in a notebook that has them."""
    from tqdm import tqdm as text_bar

    from cnnlab import progress

    assert progress.bar(10, "x", "img", io.StringIO()) is None
    bar = progress.bar(10, "x", "img", _Terminal())
    assert type(bar) is text_bar
    bar.close()
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress.importlib.util, "find_spec", lambda name: None)
    bar = progress.bar(10, "x", "img", io.StringIO())
    assert type(bar) is text_bar
    bar.close()


def test_precise_batch_norm_sets_the_statistics_of_the_end_of_the_epoch_and_nothing_else():
    """At each epoch's end, before validation: the mean of the batch statistics of the first
    training batches, run through the model as it is then. Training itself goes on as
    without the callback (the other weights and the dropout masks, bit for bit)."""
    from cnnlab.callbacks import PreciseBatchNorm

    x, y = toy_data(48)
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(logs["val_loss"])

    models = []
    for extra in ([], [PreciseBatchNorm(batches=2), Spy()]):
        model = small_model()  # seeded: the same weights, then the same shuffles in fit
        models.append(model)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0,
                  validation_data=(x[:16], y[:16]), callbacks=extra)  # fmt: skip
    plain, precise = models
    norm = precise.layers[1]
    trained = [w for layer in precise.layers for n, w in layer.weights.items() if "moving" not in n]
    others = [w for layer in plain.layers for n, w in layer.weights.items() if "moving" not in n]
    for a, b in zip(trained, others, strict=True):
        np.testing.assert_array_equal(a, b)
    assert precise.layers[4].rng.bit_generator.state == plain.layers[4].rng.bit_generator.state
    # The statistics: the first two batches of 8 through the first conv, channel by channel.
    conv = precise.layers[0]
    z = [conv(x[k * 8 : (k + 1) * 8]) for k in range(2)]
    mean = np.mean([b.mean(axis=(0, 1, 2)) for b in z], axis=0)
    var = np.mean([b.var(axis=(0, 1, 2)) for b in z], axis=0)
    np.testing.assert_allclose(norm.weights["moving_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.weights["moving_variance"], var, rtol=1e-5, atol=1e-6)
    assert norm.momentum == 0.99  # put back
    assert seen[-1] == pytest.approx(precise.evaluate(x[:16], y[:16], verbose=0), rel=1e-6)
