"""The ``cnnlab`` command.

::

    cnnlab demo                                   MLP versus CNN in about a minute, offline
    cnnlab train --model cnn --dataset cifar10    train, writing a run directory
    cnnlab train --resume runs/cnn-cifar10-...    continue an interrupted run exactly
    cnnlab evaluate RUN_OR_MODEL --dataset cifar10
    cnnlab predict RUN_OR_MODEL cat.png dog.jpg
    cnnlab summary cnn
    cnnlab compare --models mlp,cnn --dataset shifted-digits

A usage error prints one line and exits 2; a failure prints one line (the traceback with
``--debug``) and exits 1; Ctrl-C while training saves a checkpoint and exits 130.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click
import numpy as np

from cnnlab import backend, datasets
from cnnlab.datasets.images import MAX_SIDE
from cnnlab.experiment import (
    Result,
    RunInterrupted,
    SettingError,
    Settings,
    TrainingDiverged,
    build_model,
    compare_runs,
    comparison_rows,
    comparison_table,
    dataset_key,
    load_dataset,
    train_run,
)
from cnnlab.files import read_json
from cnnlab.lecture import STUDIES
from cnnlab.lecture.study import Options, markdown
from cnnlab.lecture.study import write as write_study
from cnnlab.optimizers import MAX_LEARNING_RATE
from cnnlab.viz import report as reports
from cnnlab.viz import studies as study_pictures
from cnnlab.viz.commands import explain, report, show

DEBUG = "cnnlab.debug"
SCALES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}


# -- errors: one line, exit codes 2 (usage), 1 (failure), 130 (Ctrl-C) ----------------------
class _CLI(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SettingError as err:
            raise click.BadParameter(str(err), param_hint=f"'--{err.setting}'") from err
        except RunInterrupted as err:
            click.echo(f"\n{err}", err=True)
            raise click.exceptions.Exit(130) from None
        except TrainingDiverged as err:
            click.echo(err.details, err=True)
            raise click.ClickException(str(err)) from err
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as err:
            if ctx.meta.get(DEBUG):
                raise
            raise click.ClickException(_one_line(err)) from err

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(f"Error: {_one_line_text(err.format_message())}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            click.echo(f"Error: {_one_line_text(err.format_message())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line_text(text: str) -> str:
    return " ".join(str(text).split())


def _one_line(err: BaseException) -> str:
    message = _one_line_text(str(err)) or type(err).__name__
    if isinstance(err, (ValueError, OSError, KeyError)):
        return message
    return f"{type(err).__name__}: {message} (run with --debug for the traceback)"


def _set_debug(ctx: click.Context, param, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG] = True
    return value


def debug_option(f):
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show the full traceback of a failure.",
    )(f)


def _set_engine(ctx: click.Context, param, value: str | None) -> str | None:
    if value is not None:
        try:
            backend.set_engine(value)
        except ImportError as err:  # torch not installed
            raise click.BadParameter(str(err)) from None
    return value


def _needs_torch(value: str, default: tuple[str, ...]) -> None:
    engine = backend.get_engine()
    if engine != "torch" and value.lower() not in default:
        raise click.BadParameter(
            f"{value!r} needs the torch engine, and the engine is {engine!r}: add --engine torch"
        )


def _set_device(ctx: click.Context, param, value: str | None) -> None:
    if value is None:
        return
    _needs_torch(value, ("auto", "cpu"))
    try:
        backend.set_device(value)
        if backend.get_engine() == "torch":
            from cnnlab.torch_engine import resolve_device

            resolve_device(backend.get_device())
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _set_precision(ctx: click.Context, param, value: str | None) -> None:
    if value is None:
        return
    _needs_torch(value, ("float32",))
    backend.set_precision(value)


def engine_option(f):
    """--engine, and the torch engine's --device and --precision."""
    f = click.option(
        "--precision",
        type=click.Choice(backend.PRECISIONS),
        expose_value=False,
        callback=_set_precision,
        help="The torch engine's arithmetic: float32, or bf16 (PyTorch's autocast for the "
        "convolutions and matrix products) [default: $CNNLAB_PRECISION, else float32].",
    )(f)
    f = click.option(
        "--device",
        expose_value=False,
        callback=_set_device,
        help="Where the torch engine runs: auto (a GPU if PyTorch finds one), cpu, cuda, "
        "cuda:N or mps [default: $CNNLAB_DEVICE, else auto].",
    )(f)
    return click.option(
        "--engine",
        type=click.Choice(backend.ENGINES),
        expose_value=False,
        is_eager=True,
        callback=_set_engine,
        help="fast: the tuned engine (cnnlab.engine); reference: the plain NumPy of cnnlab.nn, "
        "slower, to step through; torch: each step run by PyTorch (cnnlab[torch]) "
        "[default: $CNNLAB_ENGINE, else fast].",
    )(f)


@click.group(cls=_CLI, context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
def main() -> None:
    """cnnlab: convolutional neural networks from first principles, in NumPy.

    Start with `cnnlab demo`: an MLP and a CNN trained on the bundled digits, offline.
    """


def _default_out(*parts: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / "-".join([*(Path(p).stem for p in parts), stamp])
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


# -- click parameter types -------------------------------------------------------------------
class _Number(click.ParamType):
    """A finite float in an interval, described as the option's help says it (NaN and the
    infinities are refused: click's FloatRange lets NaN through)."""

    name = "float"

    def __init__(self, low=None, high=None, low_open=False, high_open=False):
        self.bounds = (low, high, low_open, high_open)

    def convert(self, value, param, ctx):
        low, high, low_open, high_open = self.bounds
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if low is not None and (number <= low if low_open else number < low):
            self.fail(f"{value!r} is not in {self._interval()}", param, ctx)
        if high is not None and (number >= high if high_open else number > high):
            self.fail(f"{value!r} is not in {self._interval()}", param, ctx)
        return number

    def _interval(self) -> str:
        low, high, low_open, high_open = self.bounds
        parts = []
        if low is not None:
            parts.append(f"{low:g}{'<' if low_open else '<='}")
        parts.append("x")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='}{high:g}")
        return "the range " + "".join(parts)


class _IntList(click.ParamType):
    name = "H,W"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            numbers = [int(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"expected integers separated by commas, got {value!r}", param, ctx)
        if not numbers or any(not 0 < n <= MAX_SIDE for n in numbers):
            self.fail(
                f"expected positive integers of at most {MAX_SIDE}, got {value!r}", param, ctx
            )
        return numbers


def training_options(f):
    """The options shared by train and compare, with the book's defaults."""
    options = [
        click.option(
            "--dataset",
            default="shifted-digits",
            show_default=True,
            help="digits, shifted-digits, mnist, fashion_mnist, cifar10, or an image folder / "
            ".tar.gz with train/<class>/ and test/<class>/.",
        ),
        click.option("--data-dir", type=click.Path(), help="Folder with the dataset's files."),
        click.option(
            "--image-size", type=_IntList(), help="Resize folder images to H,W (or one size)."
        ),
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option(
            "--lr",
            type=_Number(0, MAX_LEARNING_RATE, low_open=True),
            default=5e-4,
            show_default=True,
            help="Learning rate.",
        ),
        click.option(
            "--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True
        ),
        click.option(
            "--clipnorm",
            type=_Number(0, low_open=True),
            help="Clip each gradient to this L2 norm.",
        ),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option(
            "--augment",
            is_flag=True,
            help="Random shifts (and flips, except for digits) of each batch.",
        ),
        click.option(
            "--scale",
            type=click.Choice(list(SCALES)),
            default="-1,1",
            show_default=True,
            help="Pixel range the images are scaled to.",
        ),
        click.option(
            "--validation-split",
            type=_Number(0, 1, high_open=True),
            default=0.1,
            show_default=True,
            help="Fraction of the training images held out for validation.",
        ),
        click.option(
            "--early-stopping",
            "early_stopping",
            type=click.IntRange(min=0),
            metavar="PATIENCE",
            help="Stop when val_loss has not improved for PATIENCE epochs; keep the best epoch.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Use only N training (and test) images, the same random draw each time.",
        ),
        click.option(
            "--precise-bn",
            "precise_bn",
            type=click.IntRange(min=0),
            default=0,
            metavar="BATCHES",
            help="Re-estimate batch norm's moving statistics from BATCHES training batches at "
            "the end of each epoch (0: keep the moving averages).",
        ),
        click.option(
            "--sync-batchnorm/--no-sync-batchnorm",
            default=None,
            help="Under torchrun: batch norm's statistics over the whole batch, summed over the "
            "processes, or each process's own share's [default: synchronized on GPUs only].",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars or epoch lines."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _settings(model: str, kw: dict) -> Settings:
    image_size = kw.get("image_size")
    if image_size is not None and len(image_size) == 1:
        image_size = image_size * 2
    if image_size is not None and len(image_size) != 2:
        raise click.BadParameter("expected H,W or one size", param_hint="'--image-size'")
    if image_size is not None and dataset_key(kw["dataset"]) in datasets.NAMES:
        raise click.UsageError(
            f"--image-size resizes the images of a folder or archive; {kw['dataset']!r} has a "
            "size of its own"
        )
    if kw["early_stopping"] is not None and not kw["validation_split"]:
        raise click.UsageError("--early-stopping watches val_loss: it needs --validation-split > 0")
    return Settings(
        model=model,
        dataset=kw["dataset"],
        data_dir=kw["data_dir"],
        image_size=image_size,
        limit=kw["limit"],
        scale=list(SCALES[kw["scale"]]),
        validation_split=kw["validation_split"],
        epochs=kw["epochs"],
        batch_size=kw["batch_size"],
        optimizer=kw["optimizer"],
        lr=kw["lr"],
        clipnorm=kw["clipnorm"],
        seed=kw["seed"],
        augment=kw["augment"],
        early_stopping=kw["early_stopping"],
        precise_bn=kw["precise_bn"],
        sync_batchnorm=kw["sync_batchnorm"],
    )


def _accuracy(summary: dict | None) -> str:
    test = (summary or {}).get("test")
    return "n/a" if not test else f"{test['accuracy']:.4f} ({test['examples']} images)"


# -- train -----------------------------------------------------------------------------------
@main.command()
@click.option(
    "--model",
    default="cnn",
    show_default=True,
    help="mlp, cnn, diagram, or a .py file defining build_model(input_shape, num_classes), "
    "or a .json Sequential config.",
)
@training_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Run directory to write [default: runs/MODEL-DATASET-TIME].",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    metavar="RUN_DIR",
    help="Continue RUN_DIR from its last checkpoint, with its saved settings (--epochs, --lr "
    "and --clipnorm may change).",
)
@engine_option
@debug_option
@click.pass_context
def train(ctx: click.Context, model: str, out: str | None, resume: str | None, **kw) -> None:
    """Train a model and write a run directory: config.json, metrics.csv, checkpoints,
    model.cnnlab, summary.json. Defaults follow the book: Adam, lr 5e-4, batch 32, 10 epochs.
    """
    quiet = kw.pop("quiet")
    if resume is not None:
        allowed = {"epochs", "resume", "quiet", "lr", "clipnorm"}
        given = [
            name
            for name in ctx.params
            if name not in allowed
            and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise click.UsageError(
                f"--resume continues a run with its saved settings; it takes only --epochs, "
                f"--lr, --clipnorm and --quiet, not {flags}",
                ctx=ctx,
            )
        out_dir = Path(resume)
        config_path = out_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{out_dir} is not a run directory: no config.json")
        settings = Settings.from_config(read_json(config_path))
        for name in ("epochs", "lr", "clipnorm"):
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
                setattr(settings, name, kw[name])
    else:
        settings = _settings(model, kw)
        out_dir = Path(out) if out else _default_out(model, dataset_key(settings.dataset))
    result = train_run(settings, out_dir, resume=resume is not None, verbose=0 if quiet else 1)
    if not result.writer:
        return
    summary = result.summary or {}
    click.echo(f"Test accuracy: {_accuracy(summary)}")
    click.echo(
        f"Run written to {out_dir} ({summary.get('status', '?')}, "
        f"{summary.get('epochs', 0)} epochs, {summary.get('time', 0.0):.1f}s)"
    )
    click.echo(f"Report: {reports.write_report(out_dir)}")


# -- evaluate --------------------------------------------------------------------------------
def _load(model_path: str):
    from cnnlab.runs import find_model_file
    from cnnlab.saving import load

    path = find_model_file(model_path)
    model, extra = load(path)
    config = {}
    for candidate in (path.parent / "config.json", path.parent.parent / "config.json"):
        if candidate.is_file():
            config = read_json(candidate)
            break
    info = {
        "class_names": extra.get("class_names") or config.get("class_names"),
        "scale": extra.get("scale") or config.get("scale") or [-1.0, 1.0],
        "dataset": extra.get("dataset") or config.get("dataset"),
    }
    return path, model, info


def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """RGB -> grey (ITU-R 601 luma, as Pillow's "L") when the model wants one channel."""
    if x.shape[-1] == channels:
        return x
    if x.shape[-1] == 3 and channels == 1:
        grey = x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    if x.shape[-1] == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    raise ValueError(f"The model wants {channels} channels, the images have {x.shape[-1]}")


@main.command()
@click.argument("model_path", metavar="MODEL")
@click.option("--dataset", help="Dataset to evaluate on [default: the one it was trained on].")
@click.option("--data-dir", type=click.Path(), help="Folder with the dataset's files.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Use only N test images (the same random draw as train's --limit).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@engine_option
@debug_option
def evaluate(model_path: str, dataset: str | None, data_dir, limit, batch_size) -> None:
    """Accuracy, per-class accuracy and the confusion matrix of MODEL (a model file or a run
    directory) on a dataset's test images."""
    from cnnlab.datasets import scale
    from cnnlab.runs import classification_report

    path, model, info = _load(model_path)
    dataset = dataset or info["dataset"]
    if dataset is None:
        raise click.UsageError("MODEL does not say which dataset it was trained on: give --dataset")
    data = load_dataset(dataset, data_dir, image_size=model.input_shape[1:3])
    x, y = data.test
    x, y = datasets.take(limit, x, y)
    x = scale(_match_channels(x, model.input_shape[-1]), tuple(info["scale"]))
    report = classification_report(model, x, y, data.class_names, batch_size=batch_size)
    click.echo(f"{path} on {dataset_key(dataset)} ({report['examples']} test images)")
    click.echo(f"Accuracy: {report['accuracy']:.4f}")
    click.echo(_per_class_table(report))
    click.echo(_confusion_text(report))


def _per_class_table(report: dict) -> str:
    names = report["class_names"]
    width = max(len("class"), *(len(n) for n in names))
    counts = np.asarray(report["confusion_matrix"]).sum(axis=1)
    lines = ["Per-class accuracy:", f"  {'class'.ljust(width)}  accuracy  images"]
    for name, count in zip(names, counts, strict=True):
        acc = report["per_class_accuracy"][name]
        shown = "     n/a" if acc is None else f"{acc:8.4f}"
        lines.append(f"  {name.ljust(width)}  {shown}  {count:6d}")
    return "\n".join(lines)


def _confusion_text(report: dict) -> str:
    names = report["class_names"]
    matrix = np.asarray(report["confusion_matrix"])
    short = [n if len(n) <= 8 else n[:7] + "." for n in names]
    cell = max(5, *(len(s) for s in short), len(str(matrix.max())) + 1)
    label = max(len(s) for s in short)
    lines = [
        "Confusion matrix (rows: true class, columns: predicted class):",
        " " * (label + 2) + "".join(s.rjust(cell) for s in short),
    ]
    for s, row in zip(short, matrix, strict=True):
        lines.append(f"  {s.ljust(label)}" + "".join(str(v).rjust(cell) for v in row))
    return "\n".join(lines)


# -- predict ---------------------------------------------------------------------------------
@main.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=3, show_default=True)
@engine_option
@debug_option
def predict(model_path: str, images: tuple[str, ...], top_k: int) -> None:
    """The top-k classes of each IMAGE, with their probabilities. Images are read with
    Pillow, resized to MODEL's input and scaled as in training."""
    from cnnlab.datasets import scale
    from cnnlab.datasets.images import read_image

    _, model, info = _load(model_path)
    _, height, width, channels = model.input_shape
    mode = "L" if channels == 1 else "RGB"
    batch = [read_image(path, mode, (height, width)) for path in images]
    probs = model.predict(scale(np.stack(batch), tuple(info["scale"])))
    names = info["class_names"] or [str(k) for k in range(probs.shape[-1])]
    for image_path, p in zip(images, probs, strict=True):
        click.echo(f"{image_path}:")
        for rank, k in enumerate(np.argsort(-p, kind="stable")[:top_k], start=1):
            click.echo(f"  {rank}. {names[k]:<12} {p[k]:.4f}")


# -- summary and tune ------------------------------------------------------------------------
def model_options(f):
    """NAME and the shape options of a command that builds or loads a model."""
    options = [
        click.option(
            "--input-shape",
            type=_IntList(),
            default="32,32,3",
            show_default=True,
            help="H,W,C for a zoo model or a model file without an Input.",
        ),
        click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _named_model(name: str, input_shape: list[int], num_classes: int):
    """A zoo model, a .py / .json model definition, a model file or a run directory's."""
    from cnnlab import zoo

    if name in zoo.MODELS or Path(name).suffix in (".py", ".json"):
        return build_model(name, tuple(input_shape), num_classes)
    return _load(name)[1]


@main.command()
@click.argument("name")
@model_options
@debug_option
def summary(name: str, input_shape: list[int], num_classes: int) -> None:
    """Layers, output shapes and parameter counts of NAME: a zoo model (mlp, cnn, diagram),
    a .py / .json model definition, a model file or a run directory."""
    _named_model(name, input_shape, num_classes).summary(print_fn=click.echo)


@main.command()
@click.argument("name", default="cnn")
@model_options
@click.option(
    "--batch-size",
    "batch_sizes",
    type=_IntList(),
    default="32,128",
    show_default=True,
    help="The batch sizes to tune for, separated by commas.",
)
@engine_option
@debug_option
def tune(name: str, input_shape: list[int], num_classes: int, batch_sizes: list[int]) -> None:
    """Measure how the conv layers of NAME (a zoo model, a .py / .json model definition, a model
    file or a run directory) run fastest on this machine, keep the choices for every later run
    here, and print them with the times that decided. Training and inference both use them;
    CNNLAB_TUNE=off keeps the defaults."""
    from cnnlab.engine import tuning

    if not tuning.enabled():
        raise click.UsageError("CNNLAB_TUNE is off, so no choice would be used: unset it first.")
    if backend.get_engine() != "fast":
        raise click.UsageError(f"only the fast engine is tuned, not {backend.get_engine()!r}")
    model = _named_model(name, input_shape, num_classes)
    if model._many_inputs or model._many_outputs:
        raise click.UsageError("cnnlab tune takes a model of one input and one output")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    classes = model.output_shape[-1]
    dtype = model.get_weights()[0].dtype if model.get_weights() else np.float32
    done = len(tuning.measurements)
    with tuning.remeasuring():
        for batch in batch_sizes:
            x = rng.uniform(-1, 1, (batch, *model.input_shape[1:])).astype(dtype)
            y = np.eye(classes, dtype=dtype)[rng.integers(0, classes, batch)]
            model.train_on_batch(x, y)
            model.predict(x, batch_size=batch, verbose=0)
    measured = tuning.measurements[done:]
    click.echo(tuning.table(measured))
    if measured and all(m.kept for m in measured):
        click.echo(f"Kept in {tuning.cache_file()}")
    elif measured:
        click.echo(f"Not kept: {tuning.cache_file()} could not be written")
    else:
        click.echo("No conv layer large enough for the choice to matter: nothing measured.")


# -- compare and demo ------------------------------------------------------------------------
def _finish_comparison(results: list[Result], out: Path) -> list[dict]:
    from cnnlab.runs import write_json

    rows = comparison_rows(results)
    write_json(out / "comparison.json", rows)
    click.echo(comparison_table(rows))
    page = reports.write_comparison([r.run_dir for r in results], out)
    click.echo(f"Report: {page}")
    return rows


@main.command()
@click.option(
    "--models",
    default="mlp,cnn",
    show_default=True,
    help="Comma-separated zoo names or model files.",
)
@training_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for the runs [default: runs/compare-DATASET-TIME].",
)
@engine_option
@debug_option
def compare(models: str, out: str | None, **kw) -> None:
    """Train each model on the same data with the same budget (epochs, batch size, learning
    rate, seed) and print a table: parameters, train / validation / test accuracy, time.

    With validation data, each model's row is its epoch of best validation accuracy (its run
    keeps that model)."""
    specs = [m.strip() for m in models.split(",") if m.strip()]
    if not specs:
        raise click.BadParameter("give at least one model", param_hint="'--models'")
    stems = [Path(s).stem for s in specs]
    if len(set(stems)) != len(stems):
        raise click.BadParameter(f"model names repeat: {stems}", param_hint="'--models'")
    quiet = kw.pop("quiet")
    settings = _settings(specs[0], kw)
    settings.restore_best = settings.validation_split > 0
    settings.monitor = "val_accuracy"
    out_dir = Path(out) if out else _default_out("compare", dataset_key(settings.dataset))
    results = compare_runs(specs, settings, out_dir, verbose=0 if quiet else 1, echo=click.echo)
    click.echo()
    _finish_comparison(results, out_dir)
    click.echo(f"Runs written to {out_dir}/: {', '.join(stems)}")


# Under a minute on two cores: 10 epochs of 5,176 shifted digits (4 places for each training
# digit, the validation digits held out whole), lr 1e-3 rather than the book's 5e-4. At the
# end of each epoch batch norm's statistics are re-estimated from 32 training batches
# (PreciseBatchNorm): with 162 steps per epoch the moving averages lag behind the weights, and
# validation accuracy jumped from epoch to epoch (0.91, 0.18, 0.43, ...) with them.
DEMO = Settings(
    dataset="shifted_digits",
    epochs=10,
    batch_size=32,
    lr=1e-3,
    seed=0,
    validation_split=0.1,
    restore_best=True,
    monitor="val_accuracy",
    precise_bn=32,
)


@main.command()
@click.option("--epochs", type=click.IntRange(min=1), default=DEMO.epochs, show_default=True)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Use only N images, the same random draw each time."
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Folder for the runs [default: runs/demo-TIME]."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or epoch lines.")
@engine_option
@debug_option
def demo(epochs: int, limit: int | None, out: str | None, quiet: bool) -> None:
    """The lecture's claim in about a minute, offline: an MLP and a CNN trained with the same
    budget on the bundled shifted digits (handwritten digits at random places on a 32x32
    canvas). The CNN's shared filters find a stroke wherever it is; the MLP must learn every
    position on its own."""
    settings = Settings(**{**asdict(DEMO), "epochs": epochs, "limit": limit})
    out_dir = Path(out) if out else _default_out("demo")
    click.echo(
        f"cnnlab demo: MLP versus CNN on shifted digits, {settings.epochs} epochs each, "
        f"batch {settings.batch_size}, Adam lr {settings.lr:g}, seed {settings.seed}."
    )
    results = compare_runs(
        ["mlp", "cnn"], settings, out_dir, verbose=0 if quiet else 1, echo=click.echo
    )
    click.echo()
    rows = _finish_comparison(results, out_dir)
    mlp, cnn = (row["test_accuracy"] for row in rows)
    if cnn > mlp:
        click.echo(
            f"The CNN wins by {100 * (cnn - mlp):.1f} points of test accuracy with "
            f"{rows[1]['params'] / rows[0]['params']:.1f}x the parameters of the MLP."
        )
    else:
        click.echo("This time the MLP kept up with the CNN; try more --epochs.")
    curve = results[1].history.history.get("val_accuracy", [])
    click.echo(
        "The CNN's validation accuracy, epoch by epoch: " + " ".join(f"{v:.2f}" for v in curve)
    )
    click.echo(
        f"Runs written to {out_dir}/mlp and {out_dir}/cnn "
        "(config.json, metrics.csv, checkpoints/, model.cnnlab, summary.json). Over three seeds, "
        "and with the pixels shuffled: cnnlab experiment mlp-vs-cnn."
    )


# -- experiment ------------------------------------------------------------------------------
@main.command()
@click.argument("name", metavar="NAME", type=click.Choice([*STUDIES, "all"]))
@click.option(
    "--dataset",
    help="Run the full version on this dataset (mnist, fashion_mnist, cifar10, a folder) "
    "[default: each study's bundled data, offline].",
)
@click.option("--data-dir", type=click.Path(), help="Folder with the dataset's files.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), help="[default: each study's own]")
@click.option(
    "--limit", type=click.IntRange(min=1), help="Use only N images, the same random draw each time."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for the results [default: runs/experiments-TIME].",
)
@engine_option
@debug_option
def experiment(name: str, dataset, data_dir, seeds: int, epochs, limit, out) -> None:
    """Test a claim of the lecture with numbers, pictures and a verdict: NAME is one of
    mlp-vs-cnn, translation, exploding, batchnorm, dropout, normalization, filters, or all.

    Each study trains small models over several seeds and writes results.csv, table.md, its
    pictures and report.html into OUT/NAME; the verdict follows a rule stated in
    docs/experiments.md before the numbers were seen. `all` also writes OUT/report.html."""
    out_dir = Path(out) if out else _default_out("experiments")
    options = Options(
        dataset=dataset,
        data_dir=data_dir,
        seeds=tuple(range(seeds)),
        epochs=epochs,
        limit=limit,
        out=out_dir,
    )
    names = list(STUDIES) if name == "all" else [name]
    results = []
    for study in names:
        module = STUDIES[study]
        click.echo(f"\n== {study}: {module.CLAIM}")
        result = module.run(options)
        folder = out_dir / study
        write_study(result, folder)
        for path in study_pictures.pictures(result, folder):
            click.echo(f"Picture: {path}")
        click.echo(f"Report: {study_pictures.write_report([result], folder / 'report.html')}")
        click.echo(markdown(result).split("\n", 4)[4].rstrip())
        results.append(result)
    if len(results) > 1:
        click.echo(f"\nReport: {study_pictures.write_report(results, out_dir / 'report.html')}")
        for result in results:
            click.echo(f"{result.name}: {result.verdict.line()}")


main.add_command(explain)
main.add_command(show)
main.add_command(report)


if __name__ == "__main__":  # pragma: no cover
    main()
