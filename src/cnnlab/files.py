"""Writing files so that a crash never leaves one half-written: a temporary file beside the
target, flushed to disk, then renamed over it (a rename is atomic on one file system)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


def read_json(path: str | os.PathLike):
    """The JSON in ``path``; a ValueError that names the file, the line and the column when it
    is not JSON (or not UTF-8 text)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_open(path) as f: ...`` writes ``path`` all at once, or not at all.

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text). If the block raises, ``path`` is left as it
    was and the temporary file is removed. The new file gets the usual permissions (0666 less
    the umask), not the private ones of a temporary file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes with mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as err:
        raise _not_written(path, err) from None
    try:
        encoding = None if mode == "wb" else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise _not_written(path, err) from None
        raise


def temporary_prefix(path: Path) -> str:
    """How the temporary files of :func:`atomic_open` for ``path`` begin (they end in .tmp)."""
    return f".{path.name}."


def _not_written(path: Path, err: OSError) -> OSError:
    """The same kind of OSError (PermissionError, ...), naming the file that was kept."""
    what = "left as it was" if path.exists() else "not created"
    return type(err)(err.errno, f"Could not write {path} ({err.strerror}); it was {what}")
