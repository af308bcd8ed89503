"""The package itself: the engine imports only NumPy and numba; the rest loads on first use."""

import subprocess
import sys

HEAVY = ("torch", "tqdm", "pooch", "PIL", "matplotlib", "click", "sklearn")


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_importing_the_engine_loads_only_numpy():
    loaded = _run(
        "import sys, cnnlab\n"
        "model = cnnlab.Sequential([cnnlab.layers.Input((8, 8, 1)), cnnlab.layers.Conv2D(2, 3)])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert loaded == ""


def test_datasets_and_callbacks_load_on_first_use():
    out = _run(
        "import cnnlab\n"
        "print(cnnlab.datasets.load.__module__, cnnlab.callbacks.EarlyStopping.__name__)"
    )
    assert out == "cnnlab.datasets EarlyStopping"


def test_unknown_attribute_is_an_attribute_error():
    out = _run(
        "import cnnlab\n"
        "try:\n    cnnlab.no_such_thing\n"
        "except AttributeError as err:\n    print(err)"
    )
    assert "no_such_thing" in out
