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
another gzip header (Debian re-compresses the Fashion-MNIST files) or already gunzipped passes
on that.
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
    it is the gunzipped file.
    """
    path = Path(path)
    digest = sha256_of(path)
    if digest == remote.sha256:
        return
    if remote.content_sha256 is not None:
        if digest == remote.content_sha256:
            return
        if _gunzipped_sha256(path) == remote.content_sha256:
            return
    size = path.stat().st_size
    hint = " (shorter: truncated?)" if size < remote.size else ""
    raise ValueError(
        f"{path} is not the official {remote.filename}: expected {remote.size:,} bytes with "
        f"SHA-256 {remote.sha256}, got {size:,} bytes{hint} with SHA-256 {digest}. "
        f"Delete it and retry (loading without data_dir= downloads a fresh copy from "
        f"{remote.url}), or pass data_dir= a folder holding the official file."
    )


def find_in(folder: Path, remote: RemoteFile) -> Path | None:
    """The path of ``remote`` in ``folder`` (as served, or gunzipped), or None."""
    for name in (remote.filename, remote.uncompressed_name):
        if name is not None and (folder / name).is_file():
            return folder / name
    return None


def fetch(
    remote: RemoteFile,
    subdir: str,
    data_dir: str | os.PathLike | None = None,
    search_dirs: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """The local path of ``remote``, checked against its pinned hash.

    With ``data_dir``, only that folder is looked in. Otherwise ``search_dirs``, then the cache
    folder ``cache_dir() / subdir``, downloading there when needed.
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        path = find_in(folder, remote)
        if path is None:
            raise FileNotFoundError(
                f"{remote.filename} not found in data_dir={str(folder)!r}. Put the official file "
                f"there ({remote.size:,} bytes, SHA-256 {remote.sha256}, from {remote.url}), "
                f"or leave data_dir unset to download it into {cache_dir()}."
            )
        verify(path, remote)
        return path
    for folder in search_dirs:
        path = find_in(Path(folder), remote)
        if path is not None:
            verify(path, remote)
            return path
    return _download(remote, cache_dir() / subdir)


def _download(remote: RemoteFile, folder: Path) -> Path:
    import pooch

    target = folder / remote.filename
    damaged = target.exists()
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
            f"The cached copy {target} failed its checksum, so a fresh one was needed. "
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
