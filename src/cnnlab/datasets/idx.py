"""The idx format of MNIST and Fashion-MNIST, read without any other library than NumPy.

An idx file is a header then the array, C order, big-endian::

    bytes 0-1   zero
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     number of dimensions, d
    4 * d       the size of each dimension, uint32 big-endian
    the data    prod(sizes) items

So the magic number of MNIST images is 0x00000803 (uint8, 3-D: N x rows x columns) and of
labels 0x00000801 (uint8, 1-D: N).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 2**31  # an idx file once gunzipped (Fashion-MNIST's largest is 47 MB)


def parse_idx(data: bytes, source: str = "idx data") -> np.ndarray:
    """The array stored in idx ``data``, in native byte order, of the shape its header gives.

    Raises ``ValueError`` naming ``source`` when the header is not idx or the data is shorter
    or longer than the header says.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES or data[3] == 0:
        codes = ", ".join(f"{code:02X}" for code in _TYPES)
        raise ValueError(
            f"{source} is not an idx file: its magic number is 0x{data[:4].hex().upper()}, "
            f"expected 0x0000TTDD with type code TT one of {codes} and DD >= 1 dimensions"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{source} is truncated: its header needs {header} bytes for {ndim} dimensions, "
            f"the file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[data[2]]
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"{source} is {problem}: the header gives shape {shape} of {dtype.name}, so "
            f"{expected:,} bytes, but there are {len(data):,}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file, gzipped (``.gz``, detected by content) or not."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = _gunzip(data, path)
        except zlib.error as error:
            raise ValueError(
                f"{path} is not a whole gzip file ({error}). Delete it and load again, or "
                f"replace it with the official file."
            ) from error
    return parse_idx(data, source=str(path))


def _gunzip(data: bytes, path: Path) -> bytes:
    """The gunzipped ``data``, at most :data:`MAX_BYTES` of it (a small file cannot unpack to
    gigabytes)."""
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = stream.decompress(data, MAX_BYTES + 1)
    if len(out) > MAX_BYTES:
        raise ValueError(f"{path} unpacks to more than {MAX_BYTES:,} bytes: it is no idx file")
    if not stream.eof:
        raise zlib.error("the gzip stream ends before its end marker")
    return out
