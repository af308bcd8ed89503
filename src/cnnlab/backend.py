"""The switch: which engine runs the layers' ops.

- ``"fast"`` (the default): the functions of :mod:`cnnlab.engine` where it has one (threads,
  compiled loops, Winograd), :mod:`cnnlab.nn`'s elsewhere; a model runs batch norm and its
  activation as one op, and at inference the convolution before them too
  (:mod:`cnnlab.fusion`), with NumPy's BLAS held to one thread while cnnlab's threads split
  each op.
- ``"reference"``: every op is the plain NumPy function of :mod:`cnnlab.nn`, each layer on
  its own: slower, the same numbers up to rounding, and what a student steps through in a
  debugger.
- ``"torch"``: a model's training and inference steps run in PyTorch, on the model's own
  weights (:mod:`cnnlab.torch_engine`; needs ``pip install "cnnlab[torch]"``); other ops run
  as on "fast".

``cnnlab.set_engine(name)``, or the environment variable ``CNNLAB_ENGINE``, chooses; the
command line's ``--engine``, too. Everything else (fit, evaluate, predict, saving, resuming,
the NaN guard, the pictures) works the same on either.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from types import SimpleNamespace

from cnnlab import checks, nn

ENGINES = ("reference", "fast", "torch")
_engine: str | None = None
_ops: dict[str, SimpleNamespace] = {}


def get_engine() -> str:
    """The engine the ops run on: "fast" unless :func:`set_engine` or ``CNNLAB_ENGINE`` said
    otherwise."""
    global _engine
    if _engine is None:
        name = os.environ.get("CNNLAB_ENGINE", "fast")
        _engine = checks.choice("CNNLAB_ENGINE", name, ENGINES)
    return _engine


def set_engine(name: str) -> None:
    """Run every layer's ops on engine ``name`` from now on: "fast", "reference" or "torch"."""
    global _engine
    name = checks.choice("engine", name, ENGINES)
    if name == "torch" and importlib.util.find_spec("torch") is None:
        raise ImportError(
            'The torch engine needs PyTorch, which is not installed: pip install "cnnlab[torch]"'
        )
    _engine = name


@contextlib.contextmanager
def engine(name: str) -> Iterator[None]:
    """``with engine("reference"): ...`` runs the block on that engine, then switches back."""
    before = get_engine()
    set_engine(name)
    try:
        yield
    finally:
        set_engine(before)


def ops() -> SimpleNamespace:
    """The functions of the engine running now, by :mod:`cnnlab.nn`'s names:
    ``ops().conv2d_forward(x, kernel, bias, strides, padding)``."""
    name = get_engine()
    if name not in _ops:
        functions = {key: getattr(nn, key) for key in nn.__all__}
        if name in ("fast", "torch"):  # the torch engine's other ops are the fast ones
            from cnnlab import engine as fast

            functions.update((f.__name__, f) for f in fast.FAST)
        _ops[name] = SimpleNamespace(**functions)
    return _ops[name]


def fuses() -> bool:
    """Whether models run their layers as fused steps (:mod:`cnnlab.fusion`): on "fast"."""
    return get_engine() == "fast"


def running() -> contextlib.AbstractContextManager:
    """What a model holds while it runs: on "fast", NumPy's BLAS held to one thread, while
    cnnlab's threads split each op (:func:`cnnlab.engine.parallel.one_blas_thread`)."""
    if get_engine() != "fast":
        return contextlib.nullcontext()
    from cnnlab.engine.parallel import one_blas_thread

    return one_blas_thread()
