"""The application core: the settings of a training run, its data, its model, the run itself,
and a comparison of runs. The ``cnnlab`` command (:mod:`cnnlab.cli`) and the pictures
(:mod:`cnnlab.viz`) both use it; it uses neither.

    settings = Settings(model="cnn", dataset="shifted_digits", epochs=5)
    result = train_run(settings, Path("runs/cnn"))
    print(result.summary["test"]["accuracy"])

A setting that names nothing known raises :class:`SettingError`; a run stopped by Ctrl-C
raises :class:`RunInterrupted`, and one that diverged :class:`TrainingDiverged`, each with a
message that says what was kept and what to do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cnnlab import checks, datasets, optimizers, zoo
from cnnlab.callbacks import EarlyStopping, NaNGuard, PreciseBatchNorm
from cnnlab.files import read_json
from cnnlab.layers import BatchNormalization
from cnnlab.model import Model
from cnnlab.model import from_config as model_from_config
from cnnlab.runs import RunDirectory
from cnnlab.saving import load_model
from cnnlab.seeding import set_random_seed

DIGIT_DATASETS = ("digits", "shifted_digits", "mnist")


class SettingError(ValueError):
    """A setting names no dataset, model or file that exists; ``setting`` says which one."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says where its checkpoint is and how to resume."""


class TrainingDiverged(RuntimeError):
    """The NaN guard stopped a run; ``details`` holds its diagnosis (which layer, what to try)."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


@dataclass
class Settings:
    """Everything a training run depends on; saved in config.json, read back by --resume."""

    model: str = "cnn"
    dataset: str = "shifted_digits"
    data_dir: str | None = None
    image_size: list[int] | None = None
    limit: int | None = None
    scale: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    validation_split: float = 0.1
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 5e-4
    clipnorm: float | None = None
    seed: int = 0
    augment: bool = False
    early_stopping: int | None = None
    restore_best: bool = False
    monitor: str = "val_loss"
    precise_bn: int = 0  # batches to re-estimate batch norm's statistics from each epoch
    # Under torchrun: batch norm's statistics over the whole batch (None: on GPUs only).
    sync_batchnorm: bool | None = None

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})


@dataclass
class Prepared:
    """A dataset ready for training: scaled, cut to the limit, validation split off."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    dataset: str


@dataclass
class Result:
    """One finished run: its model, its history and what its run directory's summary says."""

    name: str
    run_dir: Path
    model: object
    history: object
    summary: dict
    settings: Settings
    writer: bool = True  # False on the ranks of a torchrun job that do not write the run


def dataset_key(dataset: str) -> str:
    """``"shifted-digits"`` -> ``"shifted_digits"``; paths as given."""
    key = dataset.strip().lower().replace("-", "_")
    return key if key in datasets.NAMES else dataset


def load_dataset(dataset: str, data_dir: str | None = None, image_size=None):
    """A dataset by name (hyphens or underscores), or an image folder / .tar.gz by path."""
    key = dataset_key(dataset)
    if key in datasets.NAMES:
        return datasets.load(key, data_dir=data_dir)
    path = Path(dataset).expanduser()
    if path.exists():
        return datasets.image_folder(path, image_size=image_size)
    names = ", ".join(n.replace("_", "-") for n in datasets.NAMES)
    raise SettingError(
        "dataset",
        f"expected one of {names}, or an image folder / .tar.gz; got {dataset!r} "
        "(no such dataset or path)",
    )


def prepare(settings: Settings) -> Prepared:
    """Load, keep ``limit`` images (:func:`cnnlab.datasets.take`), scale to ``settings.scale``
    and split off validation data."""
    size = tuple(settings.image_size) if settings.image_size else None
    data = load_dataset(settings.dataset, settings.data_dir, size)
    (x, y), (x_test, y_test) = data
    groups = data.train_groups
    if groups is None:
        x, y = datasets.take(settings.limit, x, y)
    else:
        x, y, groups = datasets.take(settings.limit, x, y, groups)
    x_test, y_test = datasets.take(settings.limit, x_test, y_test)
    feature_range = tuple(settings.scale)
    x, x_test = datasets.scale(x, feature_range), datasets.scale(x_test, feature_range)
    x_val = y_val = None
    if settings.validation_split:
        (x, y), (x_val, y_val) = datasets.train_val_split(
            x, y, settings.validation_split, seed=settings.seed, groups=groups
        )
    return Prepared(
        x, y, x_val, y_val, x_test, y_test, list(data.class_names), dataset_key(settings.dataset)
    )


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int):
    """A zoo name, a Python file defining ``build_model(input_shape, num_classes)`` (which
    returns a Sequential or a functional Model), a JSON file holding a model's config
    (``model.get_config()``), or a saved model file."""
    if spec in zoo.MODELS:
        return zoo.get(spec, input_shape=input_shape, num_classes=num_classes)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SettingError(
            "model",
            f"expected one of {', '.join(zoo.MODELS)}, or a .py / .json model file; got "
            f"{spec!r} (no such model or file)",
        )
    if path.suffix == ".py":
        module_spec = importlib.util.spec_from_file_location(f"cnnlab_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not callable(getattr(module, "build_model", None)):
            raise ValueError(f"{path} must define build_model(input_shape, num_classes)")
        model = module.build_model(tuple(input_shape), num_classes)
        if not isinstance(model, Model):
            raise ValueError(
                f"build_model in {path} must return a cnnlab Model or Sequential, got "
                f"{type(model).__name__}"
            )
    elif path.suffix == ".json":
        config = read_json(path)
        if not isinstance(config, dict) or "layers" not in config:
            raise ValueError(
                f"{path} should hold a model config (model.get_config()) with a 'layers' list"
            )
        try:
            model = model_from_config(config)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    else:
        model = load_model(path)
    if not model.built:
        model.build(tuple(input_shape))
    if model.input_shape != (None, *input_shape):
        raise ValueError(
            f"Model {spec!r} expects images of shape {model.input_shape[1:]}, the dataset has "
            f"{tuple(input_shape)}"
        )
    if model.output_shape[-1] != num_classes:
        raise ValueError(
            f"Model {spec!r} outputs {model.output_shape[-1]} classes, the dataset has "
            f"{num_classes}"
        )
    return model


def augmenter(low: float, flip: bool):
    """Random crops (shifts of up to 4 pixels, padded with black) and, except for digits,
    left-right flips, applied to each training batch with the loop's generator."""
    black = np.float32(low)

    def augment_batch(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return datasets.augment(x - black, rng, flip=flip) + black

    return augment_batch


def train_run(
    settings: Settings,
    out: Path,
    resume: bool = False,
    verbose: int = 1,
    config_extra: dict | None = None,
) -> Result:
    """Train one model as `cnnlab train` does, writing the run directory ``out`` (under
    torchrun, rank 0 writes it and the others only train)."""
    rank, processes = _place()
    if rank:
        verbose = 0
    set_random_seed(settings.seed)
    data = prepare(settings)
    input_shape, num_classes = data.x_train.shape[1:], len(data.class_names)
    latest = out / "checkpoints" / "latest.cnnlab"
    if resume and latest.is_file():
        model = load_model(latest)
        model.optimizer.learning_rate = settings.lr  # a resumed run may lower them
        model.optimizer.clipnorm = checks.optional_positive_number("clipnorm", settings.clipnorm)
    else:
        model = build_model(settings.model, input_shape, num_classes)
        optimizer = optimizers.get(
            {
                "name": settings.optimizer,
                "learning_rate": settings.lr,
                "clipnorm": settings.clipnorm,
            }
        )
        model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    config = {
        "command": "train",
        **asdict(settings),
        "dataset": data.dataset,
        "input_shape": list(input_shape),
        "class_names": data.class_names,
        **(config_extra or {}),
    }
    if processes > 1:
        config["distributed"] = _distribute(model, settings, processes)
    guard = NaNGuard(verbose=0)
    run = RunDirectory(
        out,
        config=config,
        resume=resume,
        test_data=(data.x_test, data.y_test),
        class_names=data.class_names,
        monitor=settings.monitor if data.x_val is not None else "loss",
        model_extra={"scale": list(settings.scale), "dataset": data.dataset},
        restore_best=settings.restore_best or settings.early_stopping is not None,
        write=rank == 0,
    )
    callbacks = [guard, run]
    if settings.precise_bn:
        callbacks.insert(0, PreciseBatchNorm(settings.precise_bn))
    if settings.early_stopping is not None:
        callbacks.append(EarlyStopping(patience=settings.early_stopping, verbose=verbose))
    validation = None if data.x_val is None else (data.x_val, data.y_val)
    augment = None
    if settings.augment:
        augment = augmenter(settings.scale[0], flip=data.dataset not in DIGIT_DATASETS)
    try:
        history = model.fit(
            data.x_train,
            data.y_train,
            batch_size=settings.batch_size,
            epochs=settings.epochs,
            verbose=verbose,
            callbacks=callbacks,
            validation_data=validation,
            augment=augment,
        )
    except KeyboardInterrupt:
        if run.interrupted_at is None:
            message = f"Interrupted in the middle of a step; the last checkpoint in {out} is kept"
        else:
            epoch, batch = run.interrupted_at
            message = f"Interrupted: checkpoint saved at epoch {epoch + 1}, batch {batch} in "
            message += str(run.latest_path)
        raise RunInterrupted(f"{message}. Continue with: cnnlab train --resume {out}") from None
    if guard.message is not None:
        raise TrainingDiverged(
            f"training diverged at step {guard.report['step']}; the last good checkpoint is "
            f"{run.latest_path}. Continue from it with a lower learning rate: "
            f"cnnlab train --resume {out} --lr {settings.lr / 10:g}",
            guard.message,
        )
    return Result(
        name=Path(settings.model).stem,
        run_dir=out,
        model=model,
        history=history,
        summary=run.summary,
        settings=settings,
        writer=rank == 0,
    )


def _distribute(model: Model, settings: Settings, processes: int) -> dict:
    """Under torchrun: set whether each batch norm synchronizes its statistics over the
    processes (``--sync-batchnorm``; by default on GPUs, where NCCL carries it, and not on the
    CPU, where each of gloo's all_reduces took 0.4-1.6 ms here, two for every batch norm and
    step: benchmarks/distributed.py), and say what the processes share, for config.json."""
    from cnnlab import backend
    from cnnlab.torch_engine import group_backend, resolve_device

    sync = settings.sync_batchnorm
    if sync is None:
        sync = resolve_device(backend.get_device()).type == "cuda"
    for layer in model.layers:
        if isinstance(layer, BatchNormalization):
            layer.synchronized = sync
    return {
        "processes": processes,
        "backend": group_backend(),
        "batch": "each process trains on 1/N of every batch of --batch-size",
        "batch_norm": "synchronized: the statistics of the whole batch, over the processes"
        if sync
        else "each process keeps its own batch statistics (not synchronized over the "
        "processes; --sync-batchnorm would); the moving averages saved are rank 0's",
    }


def _place() -> tuple[int, int]:
    """``(rank, processes)`` of this process in a torchrun job on the torch engine, else
    ``(0, 1)``."""
    from cnnlab import backend

    if backend.get_engine() != "torch":
        return 0, 1
    from cnnlab.torch_engine import world

    return world()


def compare_runs(
    models: list[str], settings: Settings, out: Path, verbose: int, echo=print
) -> list[Result]:
    """Train each model on the same data with the same settings, each into ``out/<name>``."""
    results = []
    for spec in models:
        name = Path(spec).stem
        if verbose:
            echo(f"\n== {name} ==")
        run_settings = Settings(**{**asdict(settings), "model": spec})
        results.append(
            train_run(run_settings, out / name, verbose=verbose, config_extra={"compare": models})
        )
    return results


def comparison_rows(results: list[Result]) -> list[dict]:
    """One row per run: parameters, the epoch reported, train / validation / test accuracy."""
    rows = []
    for r in results:
        history = r.history.history
        best = len(r.history.epoch)
        if r.settings.restore_best or r.settings.early_stopping is not None:
            best = (r.summary or {}).get("best", {}).get("epoch") or best
        rows.append(
            {
                "model": r.name,
                "params": r.model.count_params(),
                "epoch": best,
                "train_accuracy": history["accuracy"][best - 1],
                "val_accuracy": history.get("val_accuracy", [None] * best)[best - 1],
                "test_accuracy": (r.summary or {}).get("test", {}).get("accuracy"),
                "time": float(np.nansum(r.history.times)),
                "run_dir": str(r.run_dir),
            }
        )
    return rows


def comparison_table(rows: list[dict]) -> str:
    """The rows as a plain-text table, one line each."""
    header = ["model", "params", "epoch", "train acc", "val acc", "test acc", "time"]
    body = [
        [
            row["model"],
            f"{row['params']:,}",
            str(row["epoch"]),
            _fmt(row["train_accuracy"]),
            _fmt(row["val_accuracy"]),
            _fmt(row["test_accuracy"]),
            f"{row['time']:.1f}s",
        ]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
