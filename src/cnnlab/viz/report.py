"""One self-contained HTML page per training run, and one per comparison of runs.

The page opens with the run's summary and learning curves, then the confusion matrix, a
prediction grid (wrong predictions in red, with what was predicted), the first layer's
filters, the feature maps and the architecture, and ends with the full config, folded; every
picture is embedded as
a base64 PNG, so the single file can be mailed or opened offline. A small script marks the
page ``data-images="loaded"`` once every picture has decoded (the browser test checks it).
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from cnnlab.files import read_json
from cnnlab.viz import show
from cnnlab.viz.figures import png_bytes, write_bytes

REPORT = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
.note { color: #777; font-style: italic; }
"""

_SCRIPT = """
function markImages() {
  const images = Array.from(document.images);
  const loaded = images.every((im) => im.complete && im.naturalWidth > 0);
  document.body.dataset.images = loaded ? "loaded" : "missing";
  document.body.dataset.imageCount = String(images.length);
}
window.addEventListener("load", markImages);
"""


def _img(fig, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[list], header: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        slug = heading.lower().replace(" ", "-")
        parts.append(f'<section id="{slug}"><h2>{html.escape(heading)}</h2>{content}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _read_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _load_run(run_dir: Path):
    from cnnlab import load_model
    from cnnlab.runs import find_model_file

    return load_model(find_model_file(run_dir))


def _test_data(config: dict):
    """The run's test images, prepared as the run prepared them (None when unavailable)."""
    from cnnlab.experiment import Settings, prepare

    try:
        prepared = prepare(Settings.from_config(config))
    except Exception:  # the data may be gone or offline; the report shows the rest
        return None
    return prepared.x_test, prepared.y_test, prepared.class_names


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_sections(run_dir: Path) -> list[tuple[str, str]]:
    """The report's sections for one run: ``[(title, html), ...]``."""
    from cnnlab.runs import read_metrics

    config = _read_json(run_dir / "config.json")
    summary = _read_json(run_dir / "summary.json")
    model = _load_run(run_dir)
    test = summary.get("test", {})
    sections = []
    rows = [
        ["status", summary.get("status", "n/a")],
        ["epochs", summary.get("epochs", "n/a")],
        ["time (s)", _fmt(summary.get("time", "n/a"))],
        ["parameters", f"{model.count_params():,}"],
        ["final training accuracy", _fmt(summary.get("final", {}).get("accuracy", "n/a"))],
        ["test accuracy", _fmt(test.get("accuracy", "n/a"))],
    ]
    per_class = test.get("per_class_accuracy", {})
    summary_html = _table(rows)
    if per_class:
        summary_html += _table(
            [[name, _fmt(acc)] for name, acc in per_class.items()], ["class", "test accuracy"]
        )
    sections.append(("Summary", summary_html))

    metrics = read_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    curves = (
        _img(show.curves_figure(metrics), "learning curves")
        if metrics
        else _note("No epochs recorded yet.")
    )
    sections.append(("Learning curves", curves))

    if "confusion_matrix" in test:
        confusion = _img(
            show.confusion_figure(test["confusion_matrix"], test["class_names"]),
            "confusion matrix",
        )
    else:
        confusion = _note("No test results in summary.json.")
    sections.append(("Confusion matrix", confusion))

    data = _test_data(config)
    if data is None:
        predictions = _note("The run's test data could not be loaded.")
    else:
        x, y, names = data
        predictions = _img(show.predictions_figure(model, x, y, names), "predictions")
    sections.append(("Predictions", predictions))

    if show.conv_layers(model):
        filters = _img(show.filters_figure(model), "first-layer filters")
        image = data[0][0] if data is not None else np.zeros(model.input_shape[1:])
        maps = _img(show.feature_maps_figure(model, image), "feature maps")
    else:
        filters = maps = _note("This model has no Conv2D layer: no filters, no feature maps.")
    sections.append(("Filters", filters))
    sections.append(("Feature maps", maps))
    sections.append(("Architecture", _img(show.architecture_figure(model), "architecture")))
    folded = html.escape(json.dumps(config, indent=2))
    sections.append(
        ("Config", f"<details><summary>config.json</summary><pre>{folded}</pre></details>")
    )
    return sections


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` for one run; returns its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    config = _read_json(run_dir / "config.json")
    title = f"cnnlab run: {config.get('model', '?')} on {config.get('dataset', '?')}"
    page = _page(title, run_sections(run_dir))
    return write_bytes(run_dir / REPORT, page.encode("utf-8"))


def write_comparison(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write one page comparing ``run_dirs`` side by side to ``out`` (a folder gets
    ``report.html``); returns its path."""
    from cnnlab.runs import read_metrics

    run_dirs = [Path(d) for d in run_dirs]
    rows, curves = [], []
    for run_dir in run_dirs:
        config = _read_json(run_dir / "config.json")
        summary = _read_json(run_dir / "summary.json")
        model = _load_run(run_dir)
        rows.append(
            [
                config.get("model", run_dir.name),
                f"{model.count_params():,}",
                _fmt(summary.get("final", {}).get("accuracy", "n/a")),
                _fmt(summary.get("test", {}).get("accuracy", "n/a")),
                _fmt(summary.get("time", "n/a")),
            ]
        )
        metrics = read_metrics(run_dir / "metrics.csv")
        curves.append(_img(show.curves_figure(metrics, title=run_dir.name), run_dir.name))
    header = ["model", "parameters", "train accuracy", "test accuracy", "time (s)"]
    sections = [
        ("Comparison", _table(rows, header)),
        ("Learning curves", "".join(curves)),
        (
            "Architectures",
            "".join(_img(show.architecture_figure(_load_run(d)), d.name) for d in run_dirs),
        ),
    ]
    out = Path(out)
    path = out / REPORT if out.is_dir() or not out.suffix else out
    page = _page("cnnlab comparison: " + ", ".join(r[0] for r in rows), sections)
    return write_bytes(path, page.encode("utf-8"))


class Report:
    """A run's report, shown inline by Jupyter: ``Report("runs/cnn")`` as a cell's last line.

    ``path`` is the run's ``report.html``, written when the object is made; in a notebook the
    page is displayed in a frame of its own (its styles stay inside it).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = write_report(run_dir)

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (
            f'<iframe title="{html.escape(str(self.path))}" srcdoc="{html.escape(page)}" '
            'style="width: 100%; height: 900px; border: 1px solid #ccc"></iframe>'
        )

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"
