"""The ``cnnlab explain``, ``cnnlab show`` and ``cnnlab report`` commands."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

DEFAULT_OUT = "cnnlab-pictures"

out_option = click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Folder for the pictures.",
)


def _save(fig, out: str, name: str) -> Path:
    from cnnlab.viz.figures import save

    path = save(fig, Path(out) / name)
    click.echo(f"Picture: {path}")
    return path


def _emit(explained: tuple, out: str, name: str) -> None:
    """Print an explanation's text and save its picture: ``explained = (text, figure)``."""
    text, fig = explained
    click.echo(text)
    _save(fig, out, name)


@click.group()
def explain() -> None:
    """The lecture's ideas on small examples, printed and drawn: conv, filters, padding,
    pooling, batchnorm, dropout. No trained model needed."""


@explain.command()
@out_option
def conv(out: str) -> None:
    """The slide's worked example: a 3x3 patch times a filter, summed: 2.3 (and -2.3)."""
    from cnnlab.viz.explain import explain_conv

    _emit(explain_conv(), out, "conv.png")


@explain.command()
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--filter",
    "filter_text",
    help="A 3x3 filter instead of the slide's two edge filters, rows split by ';' "
    "(e.g. '0,-1,0;-1,4,-1;0,-1,0').",
)
@out_option
def filters(image: str | None, filter_text: str | None, out: str) -> None:
    """Edge filters applied to a photo (IMAGE, or a sample photo bundled with scikit-learn):
    the input and the feature maps, at stride 1 and stride 2."""
    from cnnlab.viz.explain import explain_filters, parse_filter

    photo = None
    if image:
        from cnnlab.datasets.images import read_image

        photo = read_image(image, "L").astype(np.float64) / 255.0
    chosen = None
    if filter_text:
        try:
            chosen = {"your filter": parse_filter(filter_text)}
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--filter'") from err
    _emit(explain_filters(photo, chosen), out, "filters.png")


@explain.command()
@click.option("--size", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--kernel", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--padding", type=click.Choice(["same", "valid"]), default="same", show_default=True)
@out_option
def padding(size: int, kernel: int, stride: int, padding: str, out: str) -> None:
    """Every position of the kernel over the (padded) input, and the output size."""
    from cnnlab.viz.explain import explain_padding, padding_animation
    from cnnlab.viz.figures import write_bytes

    if padding == "valid" and kernel > size:
        raise click.BadParameter(
            f"with padding 'valid' the kernel ({kernel}) must fit in the input ({size})",
            param_hint="'--kernel'",
        )
    if size > 12:
        raise click.BadParameter(
            f"at most 12, to keep the picture readable; got {size}", param_hint="'--size'"
        )
    name = f"padding-{size}-{kernel}-{stride}-{padding}"
    _emit(explain_padding(size, kernel, stride, padding), out, f"{name}.png")
    gif, frames = padding_animation(size, kernel, stride, padding)
    path = write_bytes(Path(out) / f"{name}.gif", gif)
    click.echo(f"Animation: {path} ({frames} frames)")


@explain.command()
@out_option
def pooling(out: str) -> None:
    """Max and average pooling on the lecture's 4x4 example, and translation invariance."""
    from cnnlab.viz.explain import explain_pooling

    _emit(explain_pooling(), out, "pooling.png")


@explain.command()
@out_option
def batchnorm(out: str) -> None:
    """Activations before and after batch normalization; training versus inference."""
    from cnnlab.viz.explain import explain_batchnorm

    _emit(explain_batchnorm(), out, "batchnorm.png")


@explain.command()
@click.option("--rate", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True)
@out_option
def dropout(rate: float, out: str) -> None:
    """The units dropout zeroes in training, and none at inference."""
    from cnnlab.viz.explain import explain_dropout

    _emit(explain_dropout(rate), out, "dropout.png")


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True))
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False),
    help="Image for the feature maps [default: a test image of the run].",
)
@out_option
def show(model_path: str, image: str | None, out: str) -> None:
    """Pictures of a trained MODEL (a .cnnlab file or a run directory): its filters, feature
    maps and architecture; for a run directory also its learning curves, confusion matrix and
    a prediction grid."""
    from cnnlab import load_model
    from cnnlab.files import read_json
    from cnnlab.runs import find_model_file, read_metrics
    from cnnlab.viz import show as pictures
    from cnnlab.viz.report import _test_data

    model = load_model(find_model_file(model_path))
    run_dir = Path(model_path) if Path(model_path).is_dir() else None
    scale = (-1.0, 1.0)
    _save(pictures.architecture_figure(model), out, "architecture.png")
    data = None
    if run_dir is not None and (run_dir / "config.json").is_file():
        config = read_json(run_dir / "config.json")
        scale = tuple(config.get("scale", scale))
        data = _test_data(config)
        if (run_dir / "metrics.csv").is_file():
            _save(pictures.curves_figure(read_metrics(run_dir / "metrics.csv")), out, "curves.png")
        summary_path = run_dir / "summary.json"
        test = read_json(summary_path).get("test", {}) if summary_path.is_file() else {}
        if "confusion_matrix" in test:
            fig = pictures.confusion_figure(test["confusion_matrix"], test["class_names"])
            _save(fig, out, "confusion.png")
        if data is not None:
            _save(pictures.predictions_figure(model, *data), out, "predictions.png")
    if image and not pictures.conv_layers(model):
        raise click.BadParameter(
            f"{model.name!r} has no Conv2D layer, so no feature maps to draw an image's",
            param_hint="'--image'",
        )
    if pictures.conv_layers(model):
        _save(pictures.filters_figure(model), out, "filters.png")
        picture = _image(image, model, scale) if image else (data[0][0] if data else None)
        if picture is None:
            click.echo("No image for the feature maps: pass --image.")
        else:
            _save(pictures.feature_maps_figure(model, picture), out, "feature-maps.png")


def _image(path: str, model, scale: tuple[float, float]) -> np.ndarray:
    """An image file resized to the model's input, its pixels scaled to ``scale``."""
    from cnnlab.datasets import scale as rescale
    from cnnlab.datasets.images import read_image

    _, h, w, c = model.input_shape
    return rescale(read_image(path, "L" if c == 1 else "RGB", (h, w)), scale)


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.html: one self-contained page with the run's config, summary,
    learning curves, confusion matrix, predictions, filters, feature maps and architecture."""
    from cnnlab.viz.report import write_report

    click.echo(f"Report: {write_report(run_dir)}")
