"""cnnlab: convolutional neural networks from first principles.

Readable NumPy layers with forward and backward passes side by side, a Keras-style API, and
every layer checked against PyTorch.
"""

__version__ = "0.1.0"

import importlib

from cnnlab import activations, initializers, layers, losses, metrics, optimizers, zoo
from cnnlab.config import floatx, set_floatx
from cnnlab.model import Sequential
from cnnlab.ops.parallel import num_threads, set_num_threads
from cnnlab.saving import load_model
from cnnlab.seeding import set_random_seed

# Imported on first use, so that ``import cnnlab`` (the engine) needs only NumPy and numba.
_LAZY_MODULES = ("callbacks", "datasets", "torch")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"cnnlab.{name}")
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


__all__ = [
    "Sequential",
    "activations",
    "callbacks",
    "datasets",
    "floatx",
    "initializers",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "num_threads",
    "optimizers",
    "set_floatx",
    "set_num_threads",
    "set_random_seed",
    "zoo",
]
