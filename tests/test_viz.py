"""Pictures and reports: each command writes a real, non-blank picture of the expected size,
and the numbers in the explanations are the lecture's."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.viz import show
from cnnlab.viz.report import write_comparison, write_report


def run_cli(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def picture_paths(output: str) -> list[str]:
    return re.findall(r"^Picture: (.+)$", output, flags=re.M)


def assert_picture(path, min_size=(200, 150)) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the picture is (nearly) blank"
    return pixels


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run of a small CNN on the bundled digits."""
    out = tmp_path_factory.mktemp("runs") / "cnn-digits"
    run_cli(
        "train", "--model", "diagram", "--dataset", "digits", "--epochs", "2",
        "--limit", "300", "--quiet", "--out", str(out),
    )  # fmt: skip
    return out


def test_explain_conv_prints_the_worked_example_and_draws_it(tmp_path):
    output = run_cli("explain", "conv", "--out", str(tmp_path))
    assert re.search(r"= 2\.3$", output, flags=re.M)
    assert re.search(r"= -2\.3$", output, flags=re.M)
    assert "(0.6) + (0.2) + (0.6)" in output  # the products of the top row
    [path] = picture_paths(output)
    assert_picture(path)


@pytest.mark.parametrize(
    "args,expected_text",
    [
        (["filters"], "stride 2: output 72x107x2"),
        (["filters", "--filter", "0,-1,0;-1,4,-1;0,-1,0"], "stride 1: output 143x214x1"),
        (["padding", "--size", "5", "--kernel", "3", "--stride", "2"], "output: 3x3"),
        (["padding", "--size", "5", "--kernel", "3", "--stride", "1"], "output: 5x5"),
        (["padding", "--size", "6", "--kernel", "3", "--stride", "2"], "bottom 1, left 0, right 1"),
        (["pooling"], "[  9   7 ]"),
        (["batchnorm"], "var  1.00"),
        (["dropout"], "inference: 0 zeroed, sum 128"),
    ],
)
def test_explain_commands_print_and_draw(tmp_path, args, expected_text):
    output = run_cli("explain", *args, "--out", str(tmp_path))
    assert expected_text in output
    [path] = picture_paths(output)
    assert_picture(path)


def test_explain_filters_on_a_given_image(tmp_path):
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(photo)
    output = run_cli("explain", "filters", str(photo), "--out", str(tmp_path))
    assert "Input 40x60x1" in output
    assert "stride 2: output 20x30x2" in output


def test_a_bad_filter_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["explain", "filters", "--filter", "1,2;x", "--out", "."])
    assert result.exit_code == 2
    assert "expected a filter like" in result.output


def test_show_draws_every_picture_of_a_run(run_dir, tmp_path):
    output = run_cli("show", str(run_dir), "--out", str(tmp_path))
    names = sorted(p.rsplit("/", 1)[-1] for p in picture_paths(output))
    assert names == [
        "architecture.png", "confusion.png", "curves.png", "feature-maps.png",
        "filters.png", "predictions.png",
    ]  # fmt: skip
    for path in picture_paths(output):
        assert_picture(path, min_size=(100, 60))


def test_show_takes_a_model_file_and_an_image(run_dir, tmp_path):
    image = tmp_path / "digit.png"
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(image)
    output = run_cli(
        "show", str(run_dir / "model.cnnlab"), "--image", str(image), "--out", str(tmp_path)
    )
    names = sorted(p.rsplit("/", 1)[-1] for p in picture_paths(output))
    assert names == ["architecture.png", "feature-maps.png", "filters.png"]


SECTIONS = [
    "Config", "Summary", "Learning curves", "Confusion matrix", "Predictions", "Filters",
    "Feature maps", "Architecture",
]  # fmt: skip


def test_report_is_one_self_contained_page_with_every_section(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(sources) == 6
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "http://" not in page and "https://" not in page


def test_report_opens_with_the_summary_and_folds_the_config_last(run_dir):
    page = write_report(run_dir).read_text(encoding="utf-8")
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles[:2] == ["Summary", "Learning curves"] and titles[-1] == "Config"
    assert "<details><summary>config.json</summary><pre>" in page


def test_report_command_and_comparison(run_dir, tmp_path):
    output = run_cli("report", str(run_dir))
    assert output.strip() == f"Report: {run_dir / 'report.html'}"
    page = write_comparison([run_dir, run_dir], tmp_path).read_text(encoding="utf-8")
    assert "<h2>Comparison</h2>" in page
    assert page.count("<td>diagram</td>") == 2


def test_report_escapes_text_from_the_run(run_dir, tmp_path):
    import json
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["note"] = "<script>alert(1)</script>"
    (copy / "config.json").write_text(json.dumps(config))
    page = write_report(copy).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory: it has no config.json"):
        write_report(tmp_path)


RESIDUAL = """
from cnnlab import layers, models


def build_model(input_shape, num_classes):
    inputs = layers.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    x = layers.ReLU()(layers.Add()([x, y]))
    wide = layers.Conv2D(4, 1)(x)
    x = layers.Concatenate()([x, wide])
    x = layers.GlobalAveragePooling2D()(x)
    return models.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
"""


def test_a_functional_run_trains_resumes_and_shows_every_conv_of_its_graph(tmp_path):
    """`cnnlab train --model file.py` whose build_model returns a graph with a residual
    connection and a branch: the run, its resume, its pictures and its report."""
    model_file = tmp_path / "residual.py"
    model_file.write_text(RESIDUAL)
    out = tmp_path / "run"
    quick = ["--dataset", "digits", "--limit", "200", "--quiet"]
    run_cli("train", "--model", str(model_file), *quick, "--epochs", "1", "--out", str(out))
    run_cli("train", "--resume", str(out), "--epochs", "2", "--quiet")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2
    output = run_cli("show", str(out), "--out", str(tmp_path / "pictures"))
    assert "feature-maps.png" in output and "architecture.png" in output
    model = cnnlab.load_model(out / "model.cnnlab")
    assert type(model).__name__ == "Model"
    names = [name for name, _ in show.feature_maps(model, np.zeros((8, 8, 1)))]
    assert names == [
        layer.name for layer in model.layers if isinstance(layer, cnnlab.layers.Conv2D)
    ]
    assert len(names) == 3
    boxes, arrows, lanes = show._graph_boxes(model)
    assert lanes == 3  # the residual branch, then the 1x1 conv's branch
    assert len(arrows) == len(model._nodes) + 2  # each merge has one arrow more
    page = write_report(out).read_text(encoding="utf-8")
    assert "<h2>Feature maps</h2>" in page and "<h2>Architecture</h2>" in page


def test_a_report_and_a_model_show_inline_in_jupyter(run_dir):
    """Jupyter calls ``_repr_html_``: the report as a frame holding the whole page, the model
    as its summary's table."""
    import html

    from cnnlab.viz.report import Report

    shown = Report(run_dir)._repr_html_()
    assert shown.startswith("<iframe") and 'srcdoc="' in shown
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.escape(page) in shown
    model = cnnlab.load_model(run_dir / "model.cnnlab")
    table = model._repr_html_()
    assert "<table>" in table and "conv2d" in table
    assert f"({model.count_params():,} parameters)" in table
    assert table.count("<tr>") == 1 + 4  # the header, then the diagram's four layers
