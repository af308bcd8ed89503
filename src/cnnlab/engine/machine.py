"""What machine this is, as far as the fast engine's speed depends on it: the CPU, its caches,
the cores cnnlab uses and the libraries that do the arithmetic.

:func:`description` is the key of the tuner's cache (:mod:`cnnlab.engine.tuning`): choices
measured on one machine are trusted only on the same CPU, with the same threads, NumPy, BLAS
kernel and numba (the tuner's own format version covers cnnlab's kernels). The benchmarks
print it in their headers.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import numba
import numpy as np


@functools.cache
def cpu_model() -> str:
    """The CPU's name as the system gives it (``model name`` in ``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def caches() -> dict[str, str]:
    """The first core's data and unified caches, e.g. ``{"L1d": "48K", "L2": "2048K", "L3":
    "105M"}`` (Linux's ``/sys``; empty where it is not readable)."""
    found = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Data", "Unified"):
            found[f"L{level}" + ("d" if kind == "Data" else "")] = size
    return found


def cache_bytes(name: str, default: int) -> int:
    """The size in bytes of the cache :func:`caches` names ``name`` ("L1d", "L2", ...), or
    ``default`` where it is not known."""
    size = caches().get(name, "")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
    except ValueError:
        return default


@functools.cache
def numpy_blas() -> str:
    """NumPy's BLAS library, its version and the kernel it picked for this CPU, e.g.
    ``"openblas 0.3.31 SkylakeX"`` (``OPENBLAS_CORETYPE`` can force another one)."""
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            parts = [lib.get("internal_api"), lib.get("version"), lib.get("architecture")]
            return " ".join(str(part) for part in parts if part)
    return "not found"


def description(threads: int) -> dict[str, object]:
    """The machine as the tuner keys it: CPU, caches, cores and the ``threads`` cnnlab runs
    on, libraries."""
    return {
        "cpu": cpu_model(),
        "caches": caches(),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": numpy_blas(),
        "numba": numba.__version__,
    }
