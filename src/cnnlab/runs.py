"""Run directories: everything one training run leaves behind, written so that nothing is lost.

::

    RUN_DIR/
      config.json                 what is needed to repeat the run (model, data, optimizer,
                                  seed, versions of cnnlab, NumPy and Python)
      metrics.csv                 one row per epoch: epoch (1-based), loss, accuracy,
                                  val_loss, val_accuracy, time (seconds)
      checkpoints/latest.cnnlab   the end of the last epoch, or where Ctrl-C stopped the run
      checkpoints/best.cnnlab     the epoch with the best monitored value (val_loss)
      model.cnnlab                the final model, with its class names
      summary.json                status, epochs, time, test accuracy, per-class accuracy,
                                  confusion matrix

Every file is written to a temporary file first and renamed over the old one, so a crash or
Ctrl-C never leaves a half-written file; the temporaries a killed run left are removed when the
folder is next claimed. One run at a time owns a folder: it holds a lock on ``RUN_DIR/.lock``
from the start of ``fit`` to its end (released by the system if the process dies), so two runs
started at the same instant cannot both write it. Before the first epoch the run writes
``checkpoints/latest.cnnlab`` (epoch 0): a folder it cannot write, or a full disk, is found out
then, and a run stopped during its first epoch resumes from its beginning.

Checkpoints hold the model, its optimizer state, its Dropout generators and the fit loop's
position: ``RunDirectory(path, resume=True)`` continues a run exactly where its last checkpoint
left it.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import platform
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnlab import __version__, backend, checks, modelfile, state
from cnnlab.callbacks import MonitorCallback
from cnnlab.files import atomic_open, read_json, temporary_prefix
from cnnlab.modelfile import save_model
from cnnlab.training import OtherData, evaluate

CONFIG = "config.json"
METRICS = "metrics.csv"
LATEST = "checkpoints/latest.cnnlab"
BEST = "checkpoints/best.cnnlab"
MODEL = "model.cnnlab"
SUMMARY = "summary.json"
LOCK = ".lock"


class RunDirectory(MonitorCallback):
    """A callback that keeps a run directory (see the module docstring) up to date.

    Args:
        path: the folder; created if missing. A folder that already holds a run is refused
            unless ``resume=True``.
        config: what the caller knows about the run (dataset, seed, preprocessing...), saved
            in config.json beside the model, optimizer and fit settings gathered here.
        resume: continue from ``checkpoints/latest.cnnlab``: the model's weights, optimizer
            state and generators, and the loop's position, are put back at ``on_train_begin``.
            Call ``fit`` with the same data and batch size as the first time.
        monitor, mode: what "best" means for ``checkpoints/best.cnnlab`` ("val_loss", lower is
            better); without validation data the training ``loss`` is used.
        test_data, train_data: ``(x, y)`` evaluated at the end for summary.json.
        class_names: names of the classes, stored in the model files and the summary.
        model_extra: more JSON-able facts stored in every model file (e.g. the input scaling).
        restore_best: at the end, put the best checkpoint's weights back before writing the
            final model (what early stopping wants).
        write: False for a process that trains alongside the one writing the folder (the
            ranks other than 0 under ``torchrun``): it only reads, to resume.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict | None = None,
        resume: bool = False,
        monitor: str = "val_loss",
        mode: str = "auto",
        test_data: tuple[np.ndarray, np.ndarray] | None = None,
        train_data: tuple[np.ndarray, np.ndarray] | None = None,
        class_names: list[str] | None = None,
        model_extra: dict | None = None,
        restore_best: bool = False,
        write: bool = True,
    ):
        super().__init__(monitor, mode)
        self.write = write
        self.path = Path(path)
        self.config = dict(config or {})
        self.resume = resume
        self.test_data = test_data
        self.train_data = train_data
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.model_extra = dict(model_extra or {})
        self.restore_best = restore_best
        self.summary: dict | None = None
        self.interrupted_at: tuple[int, int] | None = None
        self.resumed_from: tuple[int, int] | None = None
        self._lock_fd: int | None = None
        self._created: list[Path] = []

    # -- paths -------------------------------------------------------------------------------
    @property
    def latest_path(self) -> Path:
        return self.path / LATEST

    @property
    def best_path(self) -> Path:
        return self.path / BEST

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    # -- callback ----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if not self.write:  # another process writes the folder; this one only reads
            if self.resume and self.latest_path.is_file():
                self._restore()
            elif self.resume and not (self.path / CONFIG).is_file():
                raise FileNotFoundError(
                    f"This process cannot see the run in {self.path} (no {LATEST}, no {CONFIG}): "
                    "to resume on several machines, put the run directory on a folder they share"
                )
            return
        self._claim()
        try:
            self._remove_temporaries()
            if not self.resume:
                self._start()
            elif self.latest_path.is_file():
                self._resume()
            elif (self.path / CONFIG).is_file():
                self._restart()
            else:
                raise FileNotFoundError(
                    f"Nothing to resume in {self.path}: it holds no run (no {CONFIG}, no "
                    f"{LATEST}). Start a new run there instead (without --resume)."
                )
        except BaseException:
            self._release()
            raise

    def on_train_exit(self):
        self._release()

    # -- claiming the folder -----------------------------------------------------------------
    def _claim(self) -> None:
        """Create the folder if needed and take its lock, or say who holds it."""
        self._created = [] if self.path.is_dir() else _missing_parents(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise type(err)(
                err.errno, f"Cannot write the run directory {self.path}: {err.strerror}"
            ) from None
        if not _try_lock(fd):
            os.close(fd)
            raise BlockingIOError(
                f"{self.path} is in use: another training run holds its lock ({LOCK}). Wait "
                "for it to end or choose another folder."
            )
        self._lock_fd = fd

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the file releases the lock

    def _remove_temporaries(self) -> None:
        """Delete the temporary files a killed run left (we hold the lock: none is in use)."""
        for name in (CONFIG, METRICS, MODEL, SUMMARY, LATEST, BEST):
            target = self.path / name
            for tmp in target.parent.glob(f"{glob.escape(temporary_prefix(target))}*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _undo_claim(self) -> None:
        """Remove what a failed start created, so that the folder is as it was."""
        with contextlib.suppress(OSError):
            (self.path / "checkpoints").rmdir()
        self._release()
        for path in (self.path / LOCK, *self._created):
            with contextlib.suppress(OSError):
                path.unlink() if path.name == LOCK else path.rmdir()

    def _start(self) -> None:
        existing = [n for n in (CONFIG, METRICS, MODEL, "checkpoints") if (self.path / n).exists()]
        if (self.path / CONFIG).is_file() and not self.latest_path.exists():
            raise FileExistsError(
                f"{self.path} holds a run that stopped before its first checkpoint: run it "
                "again from the beginning with --resume / RunDirectory(resume=True), or choose "
                "another folder"
            )
        if existing:
            raise FileExistsError(
                f"{self.path} already holds a run ({', '.join(existing)}): resume it "
                "(--resume / RunDirectory(resume=True)) or choose another folder"
            )
        config = {"created": _now(), **self._new_config()}
        try:
            write_json(self.path / CONFIG, config)
            (self.path / "checkpoints").mkdir()
            self._checkpoint(self.latest_path)  # finds out now if the disk takes no checkpoint
        except BaseException:
            for name in (LATEST, CONFIG):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
            self._undo_claim()
            raise

    def _new_config(self) -> dict:
        return {
            **self.config,
            "model_config": self.model.get_config(),
            "compile": self.model.compile_config(),
            "fit": {k: self.params[k] for k in ("epochs", "batch_size", "samples", "shuffle")}
            | {"validation_samples": self.params["validation_samples"]},
            "versions": versions(),
        }

    def _restart(self) -> None:
        """A run with a config.json but no checkpoint (stopped before its first one): start
        it again from the beginning, in the same folder, with the settings given now."""
        config_path = self.path / CONFIG
        config = read_json(config_path)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self._checkpoint(self.latest_path)  # finds out now if the disk takes no checkpoint
        config.update(self._new_config())
        config.setdefault("resumed", []).append({"at": _now(), "epoch": 0, "batch": 0})
        write_json(config_path, config)

    def _resume(self) -> None:
        self._restore()
        self._write_resumed()

    def _restore(self) -> None:
        """Put back the state of ``checkpoints/latest.cnnlab``: the model's and the loop's."""
        try:
            extra = restore_model(self.model, self.latest_path)
            if not isinstance(extra, dict) or not isinstance(extra.get("training"), dict):
                raise ValueError("it holds no training state")
            self.loop.restore(extra["training"])
            run = extra.get("run", {})
            checks.matches(run, {str: object}, "the run state")
            self.best, self.best_epoch = run.get("best"), run.get("best_epoch")
            checks.matches(self.best, (checks.NUMBER, None), "the run state['best']")
            checks.matches(self.best_epoch, (checks.COUNT, None), "the run state['best_epoch']")
        except OtherData as err:
            raise OtherData(f"{self.latest_path}: {err}") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            if str(self.latest_path) in str(err):
                raise
            raise ValueError(
                f"{self.latest_path} cannot be resumed from: {type(err).__name__}: {err}"
            ) from None
        self.resumed_from = (self.loop.epoch, self.loop.batch)

    def _write_resumed(self) -> None:
        config_path = self.path / CONFIG
        config = read_json(config_path) if config_path.is_file() else None
        self._checkpoint(self.latest_path)  # finds out now if the disk takes no checkpoint
        self._write_metrics()
        if config is not None:
            config.update(self.config)
            config["compile"] = self.model.compile_config()  # --lr may have changed
            config.setdefault("resumed", []).append(
                {"at": _now(), "epoch": self.loop.epoch, "batch": self.loop.batch}
            )
            config.setdefault("fit", {})["epochs"] = self.params["epochs"]
            write_json(config_path, config)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        key = self.monitor if self.monitor in logs else self.monitor.removeprefix("val_")
        improved = self.improved(logs.get(key), epoch)
        if not self.write:
            return
        self._checkpoint(self.latest_path)
        if improved:
            self._checkpoint(self.best_path)
        self._write_metrics()

    def on_train_interrupted(self, logs=None):
        if self.write and self.loop.resumable and self.path.is_dir():
            self._checkpoint(self.latest_path)
            self._write_metrics()
            self.interrupted_at = (self.loop.epoch, self.loop.batch)

    def on_train_end(self, logs=None):
        if not self.write:
            return
        status = self.loop.status
        if status in ("completed", "stopped"):
            if self.restore_best and self.best_path.is_file():
                header, arrays = modelfile.read(self.best_path)
                best = modelfile.saved_state(self.best_path, header, arrays)
                weights_only = replace(best, optimizer=None, generators=[])
                state.restore(self.model, weights_only, str(self.best_path))
            save_model(self.model, self.model_path, extra=self._model_extra())
        history = self.loop.history
        summary = {
            "status": status,
            "reason": self.loop.stop_reason,
            "epochs": len(history.epoch),
            "time": float(np.nansum(history.times)),
            "final": {k: v[-1] for k, v in history.history.items()} if history.epoch else {},
            "best": {
                "monitor": self.monitor,
                "value": self.best,
                "epoch": None if self.best_epoch is None else self.best_epoch + 1,
            },
            "model_file": str(self.model_path) if self.model_path.is_file() else None,
        }
        batch_size = self.params["batch_size"]
        if self.train_data is not None:
            summary["train"] = evaluate(self.model, *self.train_data, batch_size=batch_size)
        if self.test_data is not None:
            summary["test"] = classification_report(
                self.model, *self.test_data, class_names=self.class_names, batch_size=batch_size
            )
        write_json(self.path / SUMMARY, summary)
        self.summary = summary

    # -- writing -----------------------------------------------------------------------------
    def _model_extra(self) -> dict:
        extra = dict(self.model_extra)
        if self.class_names is not None:
            extra["class_names"] = self.class_names
        return extra

    def _checkpoint(self, path: Path) -> None:
        extra = self._model_extra()
        extra["training"] = self.loop.state()
        extra["run"] = {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch}
        save_model(self.model, path, extra=extra)

    def _write_metrics(self) -> None:
        write_text(self.path / METRICS, metrics_csv(self.loop.history))


def metrics_csv(history) -> str:
    """One row per epoch: ``epoch`` (1-based), every logged value, ``time`` (seconds).

    Values are written with ``repr`` so they read back as the very same floats.
    """
    keys = list(history.history)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys, "time"])
    for i, epoch in enumerate(history.epoch):
        values = [repr(float(history.history[k][i])) for k in keys]
        writer.writerow([epoch + 1, *values, f"{history.times[i]:.3f}"])
    return out.getvalue()


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a metrics.csv, as dicts of floats (``epoch`` as an int)."""
    with open(Path(path), newline="") as f:
        return [
            {k: int(v) if k == "epoch" else float(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def classification_report(
    model,
    x: np.ndarray,
    y: np.ndarray,
    class_names: list[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of a classifier on ``(x, y)``.

    ``y``: integer labels ``(N,)`` or one-hot ``(N, K)``. ``confusion_matrix[i][j]`` counts
    the images of true class ``i`` predicted as class ``j``; the accuracy of class ``i`` is
    ``confusion[i][i] / sum(confusion[i])`` (None for a class without images).
    """
    probs = model.predict(x, batch_size=batch_size)
    num_classes = probs.shape[-1]
    labels = np.asarray(y)
    labels = labels.argmax(axis=-1) if labels.ndim == 2 else labels.astype(np.int64)
    predicted = probs.argmax(axis=-1)
    names = class_names or [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(
            f"The model predicts {num_classes} classes but {len(names)} class names were given"
        )
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {
        name: (float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None)
        for k, name in enumerate(names)
    }
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        "per_class_accuracy": per_class,
        "class_names": list(names),
        "confusion_matrix": confusion.tolist(),
    }


def restore_model(model, path: str | os.PathLike) -> dict:
    """Put a checkpoint's state (weights, optimizer state, Dropout generators) into ``model``,
    which must have the same architecture and optimizer; returns the checkpoint's ``extra``."""
    header, arrays = modelfile.read(path)
    saved = (header.get("compile") or {}).get("optimizer")
    if model.optimizer is not None and saved is not None:
        now = model.optimizer.get_config()
        if _without_step_size(saved) != _without_step_size(now):
            raise ValueError(
                f"{path} was trained with optimizer {saved}, this model is compiled with {now}"
            )
    state.restore(model, modelfile.saved_state(path, header, arrays), source=str(path))
    return header.get("extra", {})


def _without_step_size(config) -> dict:
    """An optimizer's config less what a resumed run may change: the learning rate and the
    gradient clipping (what to lower after a divergence)."""
    if not isinstance(config, dict):
        return {"config": config}
    return {k: v for k, v in config.items() if k not in ("learning_rate", "clipnorm", "clipvalue")}


def find_model_file(path: str | os.PathLike) -> Path:
    """A model file, or the run directory holding one (its final model, else its latest
    checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in (MODEL, LATEST):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no {MODEL} nor {LATEST}")
    if not path.is_file():
        raise FileNotFoundError(f"No model file or run directory at {path}")
    return path


def _missing_parents(path: Path) -> list[Path]:
    """The folders ``path.mkdir(parents=True)`` would create, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of an open file without waiting; False if another holds it.

    ``flock`` locks belong to the open file, so a second claim in the same process is refused
    too; where the system has no ``flock`` (Windows) the folder is not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def versions() -> dict[str, str]:
    found = {
        "cnnlab": __version__,
        "engine": backend.get_engine(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if found["engine"] == "torch":
        import torch

        from cnnlab.torch_engine import resolve_device

        found["torch"] = torch.__version__
        found["device"] = str(resolve_device(backend.get_device()))
        found["precision"] = backend.get_precision()
    return found


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "RunDirectory",
    "classification_report",
    "find_model_file",
    "metrics_csv",
    "read_metrics",
    "restore_model",
    "versions",
    "write_json",
    "write_text",
]
