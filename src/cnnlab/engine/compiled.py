"""Where numba keeps the engine's compiled loops: a folder of their own for each version of the
engine's source files.

numba checks a cached function against its own file's time and size, not against the files of
the functions it calls: after an edit of ``tiles.py`` alone (or a ``git pull`` into an
editable install) the loops of ``kernels.py`` and ``parts.py`` that call the tiles load code
compiled with the old tiles, next to the new tiles themselves, and a training step crashed
(a segmentation fault in the compiled parts). So the engine's loops are cached in a folder
named by a digest of all of the engine's source files: any change, another folder, and every
loop compiled afresh. The folder is under ``NUMBA_CACHE_DIR`` where it is set, else under
cnnlab's cache folder; of the engine's folders there, the few used last are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numba
import platformdirs

KEEP = 3  # folders kept: the one in use, and those of the versions used just before it
PREFIX = "engine-"


def sources_digest(folder: Path = Path(__file__).parent) -> str:
    """A digest of the names and bytes of the Python files in ``folder`` (the engine's)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """The folder that holds the engine's folders: ``NUMBA_CACHE_DIR``, else cnnlab's cache
    folder's ``numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"]).expanduser()
    return Path(platformdirs.user_cache_dir("cnnlab")) / "numba"  # as pooch's, for the data


@contextlib.contextmanager
def own_folder() -> Iterator[Path]:
    """Inside the block, functions compiled with ``cache=True`` as their modules are imported
    keep their cache in this version's folder (numba picks the folder when it wraps a
    function); numba's setting for everything else is left as it was after it."""
    folder = cache_root() / (PREFIX + sources_digest())
    before = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(folder)
    try:
        yield folder
    finally:
        numba.config.CACHE_DIR = before
    _remove_old(folder)


def _remove_old(folder: Path) -> None:
    """Remove the engine's folders beside ``folder`` but the :data:`KEEP` used last (touching
    ``folder`` first); a folder another process still reads, or one that cannot be removed,
    is left."""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)
        others = [p for p in folder.parent.glob(PREFIX + "*") if p.is_dir()]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP:]:
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
