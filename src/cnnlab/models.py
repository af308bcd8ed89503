"""Keras's ``models`` namespace: ``Model`` (the functional API), ``Sequential`` and
``load_model``, so that ``from cnnlab import models`` stands where
``from tensorflow.keras import models`` stood."""

from cnnlab.model import Model, Sequential
from cnnlab.saving import load_model

__all__ = ["Model", "Sequential", "load_model"]
