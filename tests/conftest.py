"""Fixtures shared by the tests."""

from __future__ import annotations

import os
import tempfile

import pytest

# The fast engine's defaults, not choices measured on a busy test machine (tests/test_tuning.py
# turns tuning on); and never the user's own cache folder. Set here, before any test, so that
# the commands the tests start in subprocesses inherit them.
os.environ["CNNLAB_TUNE"] = "off"
os.environ["CNNLAB_TUNE_DIR"] = tempfile.mkdtemp(prefix="cnnlab-tuning-")

from cnnlab import backend, seeding


@pytest.fixture(autouse=True)
def _engine_restored():
    """Whatever engine, device or precision a test (or a command it runs) switches to, the
    next test starts on the one before it."""
    before = backend.get_engine(), backend.get_device(), backend.get_precision()
    yield
    backend.set_engine(before[0])
    backend.set_device(before[1])
    backend.set_precision(before[2])


@pytest.fixture(autouse=True)
def _seeded():
    """Every test builds its models from the same global seed, whichever tests ran before it:
    a model's weights, and so a test's outcome, do not depend on the order of the tests."""
    seeding.set_random_seed(0)


@pytest.fixture(params=["reference", "fast"])
def each_engine(request):
    """Run the test once on each NumPy engine: the plain ops of cnnlab.nn and the fast ones
    (the torch engine has tests of its own, against these)."""
    backend.set_engine(request.param)
    return request.param
