"""Saving and loading whole models, as Keras's ``save_model`` / ``load_model``: the
architecture, the weights, the optimizer and its state, in one file (:mod:`cnnlab.modelfile`).
"""

from __future__ import annotations

from cnnlab import losses, modelfile, optimizers, state
from cnnlab.layers.base import weight_budget
from cnnlab.model import from_config
from cnnlab.modelfile import save_model

__all__ = ["load", "load_model", "save_model"]


def load(path) -> tuple:
    """Read a model file: ``(model, extra)``. Raises ``ValueError``, naming the file, for
    anything else: the config is built with no more weights than the file holds, and the
    weights put in must be finite."""
    header, arrays = modelfile.read(path)
    saved = modelfile.saved_state(path, header, arrays)
    held = sum(a.size for key, a in arrays.items() if key.startswith("weights/"))
    try:
        with weight_budget(held, "the file"):
            model = from_config(header["model"])
        compiled = header.get("compile")
        if compiled is not None:
            model.compile(
                optimizer=optimizers.get(compiled["optimizer"]),
                loss=_losses(compiled["loss"]),
                metrics=compiled["metrics"],
            )
        state.restore(model, saved, source="the file")
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as err:
        raise ValueError(f"{path} is damaged: missing or malformed entry {err}") from None
    except ValueError as err:
        raise ValueError(f"{path} holds a model that cannot be built: {err}") from None
    return model, header.get("extra", {})


def _losses(config):
    """The loss objects of a compile config: one, or a list of one per output."""
    if isinstance(config, list):
        return [losses.get(item) for item in config]
    return losses.get(config)


def load_model(path):
    """Load a model saved with ``model.save(path)``: same architecture, weights, optimizer."""
    return load(path)[0]
