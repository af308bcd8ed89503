"""Getting the official files onto disk, each checked against a pinned SHA-256.

Where a file comes from, in order:

1. ``data_dir=``, when given: the file must be there (nothing is downloaded);
2. folders where a system package installs it (Debian's ``dataset-fashion-mnist``);
3. the cache, ``$CNNLAB_DATA`` or else the user's cache folder (``pooch.os_cache("cnnlab")``),
   downloading into it with pooch when the file is missing or damaged.

pooch streams a download into a temporary file in the cache folder, checks its hash, and only
then renames it to its final name; on a wrong hash or a broken connection the temporary file is
deleted. So the cache never holds a half-written or unchecked file.

gzip files may also carry the SHA-256 of their uncompressed content: the same data packed with
another gzip header (Debian re-compresses the Fashion-MNIST files) or already gunzipped (named
without ``.gz``, as several mirrors ship them) passes on that, in each of the three places.
Bytes that verify on neither are refused, never read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "CNNLAB_DATA"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, where it is served, and what it must hash to.

    ``sha256`` and ``size``: of the file as served. ``content_sha256``: for a ``.gz`` file, of
    its uncompressed bytes (``None`` when not pinned).
    """

    filename: str
    url: str
    sha256: str
    size: int
    content_sha256: str | None = None

    @property
    def uncompressed_name(self) -> str | None:
        """The name of the gunzipped file (``x.gz`` -> ``x``), if content is pinned."""
        if self.content_sha256 is None or not self.filename.endswith(".gz"):
            return None
        return self.filename[: -len(".gz")]


def cache_dir() -> Path:
    """The folder downloads go to: ``$CNNLAB_DATA`` if set, else the user's cache folder."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("cnnlab"))


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _gunzipped_sha256(path: Path) -> str | None:
    """The SHA-256 of a gzip file's uncompressed bytes, or None if it is not whole gzip."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> None:
    """Raise ``ValueError`` unless ``path`` holds the official ``remote`` file.

    Passes on the pinned SHA-256 of the file; for a ``.gz`` whose content is pinned, also on
    the SHA-256 of the uncompressed bytes (a different gzip header) or of the file itself when
    it is the gunzipped file. The error names the file, what was expected and what came.
    """
    problem = mismatch(Path(path), remote)
    if problem is not None:
        raise ValueError(
            f"{problem}. Delete it and retry (loading without data_dir= downloads a fresh copy "
            f"from {remote.url}), or pass data_dir= a folder holding the official file."
        )


def mismatch(path: Path, remote: RemoteFile) -> str | None:
    """None if ``path`` verifies as ``remote`` (see :func:`verify`), else what is wrong."""
    digest = sha256_of(path)
    if digest in (remote.sha256, remote.content_sha256):
        return None
    size = path.stat().st_size
    expected = f"expected {remote.size:,} bytes with SHA-256 {remote.sha256}"
    got = f"got {size:,} bytes with SHA-256 {digest}"
    if remote.content_sha256 is None:
        hint = " (shorter: truncated?)" if size < remote.size else ""
        return f"{path} is not the official {remote.filename}: {expected}, {got}{hint}"
    content = _gunzipped_sha256(path)
    if content == remote.content_sha256:
        return None
    expected += (
        f" as served, or its uncompressed content ({remote.uncompressed_name}, gzipped or not) "
        f"with SHA-256 {remote.content_sha256}"
    )
    if content is not None:
        got += f", gzip of content with SHA-256 {content}"
    elif _is_gzip(path):
        got += ", gzip that does not decompress whole (truncated?)"
    return f"{path} is not the official {remote.filename}: {expected}; {got}"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(2) == b"\x1f\x8b"


def _copies_in(folder: Path, remote: RemoteFile) -> list[Path]:
    names = (remote.filename, remote.uncompressed_name)
    return [folder / name for name in names if name is not None and (folder / name).is_file()]


def find_in(folder: Path, remote: RemoteFile) -> Path | None:
    """The path of ``remote`` in ``folder`` (as served, or gunzipped), or None."""
    copies = _copies_in(folder, remote)
    return copies[0] if copies else None


def find_verified(folder: Path, remote: RemoteFile) -> Path | None:
    """The first copy of ``remote`` in ``folder`` (as served, then gunzipped) that verifies.

    None when there is no copy; ``ValueError`` (that of the first copy) when none verifies.
    """
    errors = []
    for path in _copies_in(folder, remote):
        try:
            verify(path, remote)
        except ValueError as error:
            errors.append(error)
        else:
            return path
    if errors:
        raise errors[0]
    return None


def fetch(
    remote: RemoteFile,
    subdir: str,
    data_dir: str | os.PathLike | None = None,
    search_dirs: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """The local path of ``remote``, checked against its pinned hash.

    With ``data_dir``, only that folder is looked in. Otherwise ``search_dirs``, then the cache
    folder ``cache_dir() / subdir``, downloading there when no copy in it verifies. In each
    folder the file may be as served or gunzipped (see :func:`verify`).
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        path = find_verified(folder, remote)
        if path is None:
            gunzipped = remote.uncompressed_name
            also = f" (or {gunzipped}, gunzipped)" if gunzipped else ""
            raise FileNotFoundError(
                f"{remote.filename}{also} not found in data_dir={str(folder)!r}. Put the official "
                f"file there ({remote.size:,} bytes, SHA-256 {remote.sha256}, from {remote.url}), "
                f"or leave data_dir unset to download it into {cache_dir()}."
            )
        return path
    for folder in search_dirs:
        path = find_verified(Path(folder), remote)
        if path is not None:
            return path
    folder = cache_dir() / subdir
    try:
        path = find_verified(folder, remote)
    except ValueError:
        path = None  # damaged: downloaded again
    return path if path is not None else _download(remote, folder)


def _download(remote: RemoteFile, folder: Path) -> Path:
    import pooch

    damaged = [str(path) for path in _copies_in(folder, remote)]
    try:
        path = pooch.retrieve(
            remote.url,
            known_hash=f"sha256:{remote.sha256}",
            fname=remote.filename,
            path=folder,
            progressbar=True,
        )
    except ValueError as error:
        raise ValueError(
            f"Downloaded {remote.url} but it is not the official {remote.filename}: {error} "
            f"Nothing was saved in {folder}. Retry later; if it keeps failing, download the file "
            f"by hand (expected SHA-256 {remote.sha256}) and pass its folder as data_dir=."
        ) from error
    except OSError as error:  # requests' errors are OSErrors too
        already = (
            f"The cached copy ({', '.join(damaged)}) failed its checksum, so a fresh one was "
            f"needed. "
            if damaged
            else ""
        )
        raise ConnectionError(
            f"Could not download {remote.url} ({type(error).__name__}: {error}). {already}"
            f"Nothing was saved. Check the network and retry, or put the official "
            f"{remote.filename} (SHA-256 {remote.sha256}) in a folder and pass that folder "
            f"as data_dir=."
        ) from error
    return Path(path)
