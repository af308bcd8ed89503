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
command line's ``--engine``, too. The torch engine also takes a device
(``cnnlab.set_device``, ``CNNLAB_DEVICE``, ``--device``: auto, cpu, cuda, cuda:N, mps) and a
precision (``cnnlab.set_precision``, ``CNNLAB_PRECISION``, ``--precision``: float32, bf16).
Everything else (fit, evaluate, predict, saving, resuming, the NaN guard, the pictures) works
the same on every engine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from types import SimpleNamespace

from cnnlab import checks, nn

ENGINES = ("reference", "fast", "torch")
PRECISIONS = ("float32", "bf16")
# "engine", "device", "precision": as last set, or as read from the environment.
_settings: dict[str, str] = {}
_ops: dict[str, SimpleNamespace] = {}


def _setting(key: str, variable: str, default: str, check) -> str:
    """The setting ``key``: as last set, else ``check(variable, $variable or default)``."""
    if key not in _settings:
        _settings[key] = check(variable, os.environ.get(variable, default))
    return _settings[key]


def _engine_name(name: str, value) -> str:
    return checks.choice(name, value, ENGINES)


def _precision_name(name: str, value) -> str:
    return checks.choice(name, value, PRECISIONS)


def _device_name(name: str, value) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("auto", "cpu", "cuda", "mps") or (
        text and text.startswith("cuda:") and text[5:].isdigit()
    ):
        return text
    raise ValueError(f"`{name}` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")


def get_engine() -> str:
    """The engine the ops run on: "fast" unless :func:`set_engine` or ``CNNLAB_ENGINE`` said
    otherwise."""
    return _setting("engine", "CNNLAB_ENGINE", "fast", _engine_name)


def set_engine(name: str) -> None:
    """Run every layer's ops on engine ``name`` from now on: "fast", "reference" or "torch"."""
    name = _engine_name("engine", name)
    if name == "torch" and importlib.util.find_spec("torch") is None:
        raise ImportError(
            'The torch engine needs PyTorch, which is not installed: pip install "cnnlab[torch]"'
        )
    _settings["engine"] = name


def get_device() -> str:
    """Where the torch engine runs: "auto" (a GPU if PyTorch finds one, else the CPU) unless
    :func:`set_device` or ``CNNLAB_DEVICE`` said otherwise."""
    return _setting("device", "CNNLAB_DEVICE", "auto", _device_name)


def set_device(device: str) -> None:
    """Run the torch engine's steps on ``device`` from now on: "auto", "cpu", "cuda",
    "cuda:N" or "mps" (checked against what PyTorch finds when a model runs)."""
    _settings["device"] = _device_name("device", device)


def get_precision() -> str:
    """The torch engine's arithmetic: "float32" (the model's own dtype), or "bf16" (convolutions
    and matrix products in bfloat16 under PyTorch's autocast)."""
    return _setting("precision", "CNNLAB_PRECISION", "float32", _precision_name)


def set_precision(precision: str) -> None:
    """ "float32" or "bf16" for the torch engine's steps from now on."""
    _settings["precision"] = _precision_name("precision", precision)


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


def running(threads: str = "cnnlab") -> contextlib.AbstractContextManager:
    """What a model holds while it runs on "fast": with ``threads="cnnlab"``, NumPy's BLAS
    held to one thread while cnnlab's threads split each op
    (:func:`cnnlab.engine.parallel.one_blas_thread`), and with "cnnlab-blas" the same with
    dense layers in a row multiplying by BLAS (:func:`cnnlab.engine.parallel.blas_products`);
    with "blas", every op whole and BLAS on threads of its own
    (:func:`cnnlab.engine.parallel.blas_threads`), as
    :func:`cnnlab.engine.tuning.threads_mode` chose for the model; and subnormal floats read
    and written as zeros on the calling thread, as on cnnlab's own
    (:mod:`cnnlab.engine.subnormals`)."""
    return _FastRunning(threads) if get_engine() == "fast" else contextlib.nullcontext()


class _FastRunning:
    """:func:`running` on "fast": BLAS held (or let go) and subnormals flushed, entered and
    left at every step of a model, in as few lines of Python as it takes."""

    __slots__ = ("_threads", "_flushed", "_products")

    def __init__(self, threads: str):
        from cnnlab.engine.parallel import blas_products, blas_threads, one_blas_thread
        from cnnlab.engine.subnormals import flushed

        self._threads = blas_threads() if threads == "blas" else one_blas_thread()
        self._flushed = flushed()
        self._products = blas_products() if threads == "cnnlab-blas" else None

    def __enter__(self) -> None:
        self._threads.__enter__()
        self._flushed.__enter__()
        if self._products is not None:
            self._products.__enter__()

    def __exit__(self, *exc) -> None:
        try:
            if self._products is not None:
                self._products.__exit__(*exc)
            self._flushed.__exit__(*exc)
        finally:
            self._threads.__exit__(*exc)
