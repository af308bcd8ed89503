"""Layers with Keras names, arguments and defaults."""

from cnnlab.layers.base import Layer
from cnnlab.layers.convolution import Conv2D
from cnnlab.layers.core import (
    Activation,
    Dense,
    Flatten,
    Input,
    InputLayer,
    LeakyReLU,
    ReLU,
    Softmax,
)
from cnnlab.layers.merging import Add, Average, Concatenate
from cnnlab.layers.normalization import BatchNormalization
from cnnlab.layers.pooling import AveragePooling2D, GlobalAveragePooling2D, MaxPooling2D
from cnnlab.layers.regularization import Dropout

__all__ = [
    "Activation",
    "Add",
    "Average",
    "AveragePooling2D",
    "BatchNormalization",
    "Concatenate",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "Input",
    "InputLayer",
    "Layer",
    "LeakyReLU",
    "MaxPooling2D",
    "ReLU",
    "Softmax",
]

_CLASSES = {name: globals()[name] for name in __all__ if name not in ("Input", "Layer")}


def serialize(layer: Layer) -> dict:
    """``{"class_name": ..., "config": ...}``, enough to rebuild the layer."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(spec: dict) -> Layer:
    """Rebuild a layer from :func:`serialize`'s output."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        shown = repr(spec) if len(repr(spec)) < 80 else repr(spec)[:77] + "..."
        raise ValueError(
            "a layer must be described as {'class_name': ..., 'config': {...}}, got " + shown
        )
    cls = _CLASSES.get(spec.get("class_name"))
    if cls is None:
        raise ValueError(
            f"Unknown layer class {spec.get('class_name')!r}; expected one of {sorted(_CLASSES)}"
        )
    try:
        return cls(**spec["config"])
    except TypeError as err:  # an argument the class does not take, or one it needs
        name = spec["config"].get("name", "?")
        raise ValueError(f"layer {name!r} ({spec['class_name']}): {err}") from None
