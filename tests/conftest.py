"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest

from cnnlab import backend


@pytest.fixture(autouse=True)
def _engine_restored():
    """Whatever engine a test (or a command it runs) switches to, the next test starts on the
    one before it."""
    before = backend.get_engine()
    yield
    backend.set_engine(before)


@pytest.fixture(params=["reference", "fast"])
def each_engine(request):
    """Run the test once on each NumPy engine: the plain ops of cnnlab.nn and the fast ones
    (the torch engine has tests of its own, against these)."""
    backend.set_engine(request.param)
    return request.param
