"""One file per model: architecture (JSON) and weights, in a NumPy ``.npz`` archive.

No pickle anywhere: the file is read with ``allow_pickle=False``. Layout inside the archive::

    __cnnlab__            uint8 bytes of a JSON header: format, version, model config,
                          compile config, weight keys, extra (JSON) state
    weights/<layer>/<n>   one array per weight, in Keras order
    optimizer/<key>       optimizer state (iterations, moments), when included

The file is written to a temporary file beside the target, then renamed over it, so a crash
never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from cnnlab.files import atomic_open

FORMAT = "cnnlab.model"
VERSION = 1
HEADER = "__cnnlab__"


def save_model(model, path, include_optimizer: bool = True, extra: dict | None = None) -> None:
    """Write ``model`` to ``path`` atomically. ``extra`` is JSON-able state (e.g. epoch)."""
    from cnnlab import __version__

    if not model.built:
        raise ValueError("Only a built model can be saved: give it an Input or call it once")
    arrays: dict[str, np.ndarray] = {}
    for layer in model.layers:
        for name, value in layer.weights.items():
            arrays[f"weights/{layer.name}/{name}"] = value
    header = {
        "format": FORMAT,
        "version": VERSION,
        "cnnlab_version": __version__,
        "model": model.get_config(),
        "compile": None,
        "weights": list(arrays),
        "rng": {layer.name: layer.rng.bit_generator.state for layer in _rng_layers(model)},
        "extra": extra or {},
    }
    if model.optimizer is not None:
        header["compile"] = {
            "optimizer": model.optimizer.get_config(),
            "loss": model.loss.get_config(),
            "metrics": model.metrics,
        }
        if include_optimizer:
            for key, value in model.optimizer.get_state().items():
                arrays[f"optimizer/{key}"] = value
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_npz_atomic(path, arrays)


def write_npz_atomic(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` into a temporary file in the target's folder, then rename it over."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def load(path) -> tuple:
    """Read a model file: ``(model, extra)``. Raises ``ValueError`` for anything else."""
    from cnnlab import losses, optimizers
    from cnnlab.model import Sequential

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}")
    what = f"{path} is not a cnnlab model file (expected one written by model.save)"
    try:
        with np.load(path, allow_pickle=False) as archive:
            if HEADER not in archive.files:
                raise ValueError(f"{what}: it has no {HEADER!r} entry")
            header = json.loads(archive[HEADER].tobytes().decode())
            arrays = {key: archive[key] for key in archive.files if key != HEADER}
    except ValueError as err:
        if str(err).startswith(what):
            raise
        raise ValueError(f"{what}: {err}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} or it is damaged (truncated?): {err}") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{what}: format is {header.get('format')!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{path} has model-file version {header.get('version')!r}; "
            f"this cnnlab reads version {VERSION}"
        )
    try:
        model = Sequential.from_config(header["model"])
        for layer in model.layers:
            layer.set_weights([arrays[f"weights/{layer.name}/{n}"] for n in layer.weights])
        for layer in _rng_layers(model):
            if layer.name in header["rng"]:
                layer.rng.bit_generator.state = header["rng"][layer.name]
    except KeyError as err:
        raise ValueError(f"{path} is damaged: missing entry {err}") from None
    if header["compile"] is not None:
        compiled = header["compile"]
        model.compile(
            optimizer=optimizers.get(compiled["optimizer"]),
            loss=losses.get(compiled["loss"]),
            metrics=compiled["metrics"],
        )
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        if state:
            model.optimizer.set_state(state)
    return model, header["extra"]


def load_model(path):
    """Load a model saved with ``model.save(path)``: same architecture, weights, optimizer."""
    return load(path)[0]


def _rng_layers(model):
    return [layer for layer in model.layers if hasattr(layer, "rng")]
