"""cnnlab: convolutional neural networks from first principles.

Readable NumPy layers with forward and backward passes side by side, a Keras-style API, and
every layer checked against PyTorch.
"""

__version__ = "0.1.0"

from cnnlab import activations, initializers, layers, losses, metrics, optimizers, zoo
from cnnlab.config import floatx, set_floatx
from cnnlab.model import Sequential
from cnnlab.saving import load_model
from cnnlab.seeding import set_random_seed

__all__ = [
    "Sequential",
    "activations",
    "floatx",
    "initializers",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "optimizers",
    "set_floatx",
    "set_random_seed",
    "zoo",
]
