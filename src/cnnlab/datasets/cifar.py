"""CIFAR-10 from the official binary release, ``cifar-10-binary.tar.gz``, without pickle.

The archive holds ``cifar-10-batches-bin/``: ``data_batch_1.bin`` ... ``data_batch_5.bin``
(train, 10,000 images each), ``test_batch.bin`` and ``batches.meta.txt`` (the class names, one
a line). A batch is a run of 3073-byte records: one label byte, then the 32x32 image as 1024
red, 1024 green and 1024 blue bytes (channels first, rows in order): CHW, turned here into HWC.

Read straight from the ``.tar.gz`` (one pass, nothing extracted) or from an extracted folder.

Checksums: the archive's SHA-256 as published in tensorflow/datasets'
``url_checksums/cifar10.txt`` (170,052,171 bytes; its MD5 c32a1d4ab5d03f1284b67883e8d87530 is
the one on the CIFAR page); the extracted batches' SHA-256 as listed by torchvision-ruby
(``test_batch.bin`` confirmed by an independent project).
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from cnnlab.datasets.dataset import Dataset
from cnnlab.datasets.download import RemoteFile, fetch, verify

ARCHIVE = RemoteFile(
    "cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    170_052_171,
)
FOLDER = "cifar-10-batches-bin"
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
META = "batches.meta.txt"

HEIGHT = WIDTH = 32
CHANNELS = 3
RECORD_BYTES = 1 + CHANNELS * HEIGHT * WIDTH  # 3073
MAX_MEMBER_BYTES = 10_000 * RECORD_BYTES  # a batch; checked before a file is read

_BATCH_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}
# The extracted batches, each checked like a downloaded file (10,000 records each).
BATCHES = {
    name: RemoteFile(name, ARCHIVE.url, sha256, 10_000 * RECORD_BYTES)
    for name, sha256 in _BATCH_SHA256.items()
}


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10: x (50000, 32, 32, 3) and (10000, 32, 32, 3) uint8, labels 0-9.

    ``data_dir``: a folder holding ``cifar-10-binary.tar.gz``, or the extracted
    ``cifar-10-batches-bin`` folder, or a folder holding that one. Without it, the archive is
    taken from (or downloaded into) the cache.
    """
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not (folder / ARCHIVE.filename).is_file():
            extracted = _extracted_folder(folder)
            if extracted is None:
                raise FileNotFoundError(
                    f"Neither {ARCHIVE.filename} nor an extracted {FOLDER} folder found in "
                    f"data_dir={str(folder)!r}. Put the official archive there "
                    f"({ARCHIVE.size:,} bytes, SHA-256 {ARCHIVE.sha256}, from {ARCHIVE.url}), "
                    f"or leave data_dir unset to download it into the cache."
                )
            return _to_dataset(_read_folder(extracted), str(extracted))
    archive = fetch(ARCHIVE, "cifar10", data_dir)
    return _to_dataset(_read_archive(archive), f"{archive}")


def _extracted_folder(folder: Path) -> Path | None:
    for candidate in (folder / FOLDER, folder):
        if (candidate / TRAIN_BATCHES[0]).is_file():
            return candidate
    return None


def _read_folder(folder: Path) -> dict[str, bytes]:
    members = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: an extracted CIFAR-10 folder holds {', '.join(BATCHES)} "
                f"and {META}. Extract {ARCHIVE.filename} again, or pass data_dir= the folder "
                f"holding the archive itself."
            )
        _check_size(str(path), path.stat().st_size)
        if name in BATCHES:
            verify(path, BATCHES[name])
        members[name] = path.read_bytes()
    return members


def _read_archive(path: Path) -> dict[str, bytes]:
    """The members we need, read in one pass through the gzip stream."""
    wanted = {f"{FOLDER}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    members = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    _check_size(f"{path}:{member.name}", member.size)
                    members[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path} is not a readable tar.gz archive ({error}). Delete it and load again, "
            f"or replace it with the official {ARCHIVE.filename}."
        ) from error
    missing = [name for name in wanted if wanted[name] not in members]
    if missing:
        raise ValueError(
            f"{path} is not the CIFAR-10 binary archive: it lacks {', '.join(missing)}. "
            f"Replace it with the official {ARCHIVE.filename} from {ARCHIVE.url}."
        )
    return members


def _check_size(name: str, size: int) -> None:
    if size > MAX_MEMBER_BYTES:
        raise ValueError(
            f"{name} is not a CIFAR-10 file: it is {size:,} bytes, more than a batch of 10,000 "
            f"images ({MAX_MEMBER_BYTES:,})"
        )


def _to_dataset(members: dict[str, bytes], source: str) -> Dataset:
    try:
        text = members[META].decode("ascii")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: {META} is not ASCII text (byte {err.start})") from None
    class_names = [line.strip() for line in text.splitlines()]
    class_names = [name for name in class_names if name]
    train = [parse_batch(members[name], f"{source}: {name}") for name in TRAIN_BATCHES]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    x_test, y_test = parse_batch(members[TEST_BATCH], f"{source}: {TEST_BATCH}")
    for y, where in ((y_train, "train"), (y_test, "test")):
        if len(y) and y.max() >= len(class_names):
            raise ValueError(
                f"{source}: a {where} label is {y.max()} but {META} names only "
                f"{len(class_names)} classes"
            )
    return Dataset((x_train, y_train), (x_test, y_test), class_names, "cifar10")


def parse_batch(data: bytes, source: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    """Records of (label byte, 3072 image bytes CHW) -> x (N, 32, 32, 3) uint8, y (N,) int64."""
    if len(data) % RECORD_BYTES:
        raise ValueError(
            f"{source} is damaged or truncated: {len(data):,} bytes is not a whole number of "
            f"{RECORD_BYTES}-byte records (1 label byte + {RECORD_BYTES - 1} pixel bytes)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    y = records[:, 0].astype(np.int64)
    chw = records[:, 1:].reshape(-1, CHANNELS, HEIGHT, WIDTH)
    x = np.ascontiguousarray(chw.transpose(0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
    return x, y
