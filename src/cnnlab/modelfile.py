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


# Bounds on what a model file may declare, checked before anything is allocated.
MAX_ARRAY_BYTES = 2**31  # one array
MAX_TOTAL_BYTES = 2**32  # all of them
MAX_HEADER_BYTES = 2**24  # the JSON header


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The header and the arrays of a model file; ``ValueError`` for anything else.

    Nothing is allocated before it is checked: the file must be a zip archive of ``.npy``
    arrays (no pickled objects) whose headers declare sizes that the archive holds and that
    stay within :data:`MAX_ARRAY_BYTES` each and :data:`MAX_TOTAL_BYTES` in all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {path}")
    what = f"{path} is not a cnnlab model file (expected one written by model.save)"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{what}: it is not a zip archive of arrays")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_members(archive, what)
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
    if not isinstance(header.get("model"), dict):
        raise ValueError(f"{path} is damaged: its header's 'model' is not a model's config")
    return header, arrays


def _check_members(archive: zipfile.ZipFile, what: str) -> None:
    """Every member is a ``.npy`` array of plain numbers whose declared size the archive
    holds, within the bounds."""
    total = 0
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise ValueError(f"{what}: it holds {info.filename!r}, which is not an array")
        if info.flag_bits & 0x1 or info.compress_type not in (
            zipfile.ZIP_STORED,
            zipfile.ZIP_DEFLATED,
        ):
            raise ValueError(
                f"{what} or it is damaged: {info.filename!r} is encrypted or compressed in a "
                "way NumPy does not write"
            )
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member, max_header_size=10_000)
            start = member.tell()
        name = info.filename[: -len(".npy")]
        if dtype.hasobject:
            raise ValueError(
                f"{what}: its array {name!r} holds Python objects, which cnnlab never reads"
            )
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        bound = MAX_HEADER_BYTES if name == HEADER else MAX_ARRAY_BYTES
        if nbytes > bound:
            raise ValueError(
                f"{what}: its array {name!r} declares {nbytes:,} bytes (shape {shape}), more "
                f"than the {bound:,} cnnlab reads"
            )
        if start + nbytes != info.file_size:
            raise ValueError(
                f"{what} or it is damaged: its array {name!r} declares shape {shape} "
                f"({nbytes:,} bytes) but holds {info.file_size - start:,}"
            )
        total += nbytes
        if total > MAX_TOTAL_BYTES:
            raise ValueError(
                f"{what}: its arrays declare more than {MAX_TOTAL_BYTES:,} bytes in all"
            )


def saved_state(path, header: dict, arrays: dict[str, np.ndarray]) -> state.ModelState:
    """The :class:`cnnlab.state.ModelState` a file holds, its layers in the model's order."""
    try:
        names = [spec["config"]["name"] for spec in header["model"]["layers"]]
        weights: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
        for key in header["weights"]:
            _, layer, weight = key.split("/", 2)
            weights[layer][weight] = arrays[key]
        generators = list(header["rng"].items())
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise ValueError(f"{path} is damaged: missing or malformed entry {err}") from None
    optimizer = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return state.ModelState(list(weights.items()), optimizer or None, generators)
