"""The HTML report of a real run, opened in a real browser: headless Chromium."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cnnlab.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Chromium (Debian: apt-get install chromium; .ci/run installs it)",
)
SECTIONS = [
    "Config", "Summary", "Learning curves", "Confusion matrix", "Predictions", "Filters",
    "Feature maps", "Architecture",
]  # fmt: skip


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"  # a fresh profile for every run
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        # Raster every tile before the screenshot: without it the last row of 256-pixel tiles
        # was sometimes still blank (2 runs in 12 here), and the test saw "a blank band".
        "--run-all-compositor-stages-before-draw", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(
        main,
        ["train", "--model", "diagram", "--dataset", "digits", "--epochs", "1", "--limit", "200"]
        + ["--quiet", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    path = out / "report.html"
    assert f"Report: {path}" in result.output  # train writes the report itself
    return path


def test_every_section_and_every_image_loads_in_chromium(report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom
    assert 'data-images="loaded"' in dom, "some <img> did not decode"
    assert 'data-image-count="6"' in dom


def test_screenshot_of_the_report_is_not_blank(report, tmp_path):
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1200, 2400)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    dark = pixels < 128
    # Text all down the page: most pixel rows cross a glyph or a drawing, and every 100-pixel
    # band holds some. (The share of dark pixels itself moves with the run's digits, about 1 %
    # of a page of small text, too near any fixed bound to test.)
    assert dark.any(axis=1).mean() > 0.5, "no dark text or drawing down the page"
    assert all(band.any() for band in np.array_split(dark, 24)), "a blank band on the page"


def test_an_experiments_report_loads_in_chromium(tmp_path):
    out = tmp_path / "experiments"
    result = CliRunner().invoke(
        main, ["experiment", "exploding", "--seeds", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    dom = chromium(tmp_path, "--dump-dom", (out / "exploding" / "report.html").as_uri()).stdout
    assert "<h2>Verdicts</h2>" in dom and "HOLDS" in dom
    assert 'data-images="loaded"' in dom


def test_the_padding_animation_plays_in_chromium(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "explain",
            "padding",
            "--size",
            "6",
            "--kernel",
            "3",
            "--stride",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    gif = tmp_path / "padding-6-3-2-same.gif"
    with Image.open(gif) as im:
        assert im.n_frames == 9 and im.info.get("loop") == 0  # 3x3 outputs, played in a loop
    page = tmp_path / "animation.html"
    page.write_text(
        '<html><body><img src="padding-6-3-2-same.gif"><script>window.addEventListener("load",'
        " () => { const im = document.images[0]; document.body.dataset.size ="
        ' im.naturalWidth + "x" + im.naturalHeight; });</script></body></html>'
    )
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    with Image.open(gif) as im:
        assert f'data-size="{im.size[0]}x{im.size[1]}"' in dom
