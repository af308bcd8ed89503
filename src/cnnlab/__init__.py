"""cnnlab: convolutional neural networks from first principles.

Readable NumPy layers with forward and backward passes side by side (:mod:`cnnlab.nn`), a
fast engine for the same ops (:mod:`cnnlab.engine`), a Keras-style API, and every layer
checked against PyTorch.

Everything is imported on first use, so that ``import cnnlab.nn`` loads NumPy alone.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it (a module's own name: the module itself).
_WHERE = {
    "Model": "cnnlab.model",
    "Sequential": "cnnlab.model",
    "floatx": "cnnlab.config",
    "set_floatx": "cnnlab.config",
    "get_engine": "cnnlab.backend",
    "set_engine": "cnnlab.backend",
    "get_device": "cnnlab.backend",
    "set_device": "cnnlab.backend",
    "get_precision": "cnnlab.backend",
    "set_precision": "cnnlab.backend",
    "load_model": "cnnlab.saving",
    "num_threads": "cnnlab.engine.parallel",
    "set_num_threads": "cnnlab.engine.parallel",
    "set_random_seed": "cnnlab.seeding",
}
_MODULES = (
    "activations",
    "backend",
    "callbacks",
    "datasets",
    "engine",
    "initializers",
    "layers",
    "losses",
    "metrics",
    "models",
    "nn",
    "optimizers",
    "torch",
    "utils",
    "zoo",
)


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"cnnlab.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE, *_MODULES])


__all__ = sorted([*_WHERE, *_MODULES])
