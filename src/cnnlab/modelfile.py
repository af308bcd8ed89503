"""The model file: architecture (JSON) and state (arrays) in one NumPy ``.npz`` archive.

No pickle anywhere: the file is read with ``allow_pickle=False``. Layout inside the archive::

    __cnnlab__            uint8 bytes of a JSON header: format, version, model config,
                          compile config, weight keys, random generators, extra (JSON) state
    weights/<layer>/<n>   one array per weight, in Keras order
    optimizer/<key>       optimizer state (iterations, moments), when included

The file is written to a temporary file beside the target, then renamed over it, so a crash
never leaves a half-written model behind. :mod:`cnnlab.saving` builds a model from one.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from cnnlab import __version__, state
from cnnlab.files import atomic_open

FORMAT = "cnnlab.model"
VERSION = 1
HEADER = "__cnnlab__"


def save_model(model, path, include_optimizer: bool = True, extra: dict | None = None) -> None:
    """Write ``model`` to ``path`` atomically. ``extra`` is JSON-able state (e.g. epoch)."""
    if not model.built:
        raise ValueError("Only a built model can be saved: give it an Input or call it once")
    saved = state.capture(model)
    arrays = {
        f"weights/{layer}/{name}": value
        for layer, values in saved.weights
        for name, value in values.items()
    }
    header = {
        "format": FORMAT,
        "version": VERSION,
        "cnnlab_version": __version__,
        "model": model.get_config(),
        "compile": None,
        "weights": list(arrays),
        "rng": dict(saved.generators),
        "extra": extra or {},
    }
    if model.optimizer is not None:
        header["compile"] = model.compile_config()
        if include_optimizer:
            arrays.update((f"optimizer/{key}", value) for key, value in saved.optimizer.items())
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    write_npz_atomic(path, arrays)


def write_npz_atomic(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` into a temporary file in the target's folder, then rename it over."""
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the arrays of a model file; ``ValueError`` for anything else."""
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
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{what}: format is {found!r}, expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise ValueError(
            f"{path} has model-file version {header.get('version')!r}; "
            f"this cnnlab reads version {VERSION}"
        )
    return header, arrays


def saved_state(path, header: dict, arrays: dict[str, np.ndarray]) -> state.ModelState:
    """The :class:`cnnlab.state.ModelState` a file holds, its layers in the model's order."""
    try:
        names = [spec["config"]["name"] for spec in header["model"]["layers"]]
        weights: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
        for key in header["weights"]:
            _, layer, weight = key.split("/", 2)
            weights[layer][weight] = arrays[key]
        generators = list(header["rng"].items())
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is damaged: missing or malformed entry {err}") from None
    optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return state.ModelState(list(weights.items()), optimizer or None, generators)
