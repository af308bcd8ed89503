"""cnnlab.datasets: official formats parsed right, bad files refused clearly, downloads checked
and never half-written, bundled digits, image folders, preprocessing.

Every file here is made by the test in the official format (nothing is downloaded); downloads
go to a small HTTP server on 127.0.0.1 started by the test.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import socket
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnlab import datasets
from cnnlab.datasets import cifar, download, mnist
from cnnlab.datasets.idx import parse_idx

CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
SHARED_CIFAR_JPG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_jpg.tar.gz"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pinned(remote: download.RemoteFile, data: bytes, **changes) -> download.RemoteFile:
    """``remote`` with the hash and size of ``data`` (the test's own file) pinned instead."""
    return dataclasses.replace(remote, sha256=sha256(data), size=len(data), **changes)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache, and no test sees the machine's Debian data (or Keras's
    cache) unless it asks."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNLAB_DATA", str(cache))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIRS", ())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return cache


# --- the Dataset type and names ------------------------------------------------------------


def test_dataset_unpacks_as_two_pairs_and_carries_class_names():
    data = datasets.load("digits")
    (x_train, y_train), (x_test, y_test) = data
    assert len(data) == 2
    assert data.name == "digits"
    assert data.class_names == [str(d) for d in range(10)]
    assert data.train[0] is x_train and data.test[1] is y_test
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert x_test.ndim == 4 and y_test.ndim == 1


def test_dataset_refuses_mismatched_or_mistyped_arrays():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    y = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        datasets.Dataset((x, y[:2]), (x, y), ["a"], "toy")
    with pytest.raises(ValueError, match="uint8 images"):
        datasets.Dataset((x.astype(np.float32), y), (x, y), ["a"], "toy")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        datasets.Dataset((x, y + 1), (x, y), ["a"], "toy")


def test_unknown_name_lists_the_valid_choices():
    with pytest.raises(ValueError) as info:
        datasets.load("cifar")
    message = str(info.value)
    for name in ("'cifar10'", "'mnist'", "'fashion_mnist'", "'digits'", "'shifted_digits'"):
        assert name in message
    assert "'cifar'" in message


def test_bundled_digits_refuse_a_data_dir(tmp_path):
    with pytest.raises(ValueError, match="bundled"):
        datasets.load("digits", data_dir=tmp_path)


# --- digits and shifted digits ---------------------------------------------------------------


def sklearn_digits_scaled():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.rint(bunch.images * 255 / 16).astype(np.uint8), bunch.target


def test_digits_are_sklearns_digits_scaled_to_0_255():
    (x_train, y_train), (x_test, y_test) = datasets.load("digits")
    assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
    images, labels = sklearn_digits_scaled()
    expected = sorted(img.tobytes() + bytes([lab]) for img, lab in zip(images, labels, strict=True))
    got = sorted(
        img[..., 0].tobytes() + bytes([lab])
        for img, lab in zip(
            np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), strict=True
        )
    )
    assert got == expected  # every digit exactly once, with its own label
    # 0..16 -> 0..255: 16 is white (255), 8 is 127.5 rounded to 128, 0 stays 0.
    assert set(np.unique(x_train)) <= {int(np.rint(v * 255 / 16)) for v in range(17)}
    assert x_train.max() == 255 and x_train.min() == 0 and 128 in x_train


def test_digits_split_is_fixed():
    (a, ya), (b, yb) = datasets.load("digits")
    (c, yc), (d, yd) = datasets.load_digits()
    assert np.array_equal(a, c) and np.array_equal(ya, yc)
    assert np.array_equal(b, d) and np.array_equal(yb, yd)
    (e, _), _ = datasets.load_digits(seed=1)
    assert not np.array_equal(a, e)


def find_placements(canvas: np.ndarray, label: int, known: set[bytes]) -> list[tuple[int, int]]:
    """Offsets where ``canvas`` holds a digit of class ``label``, enlarged x2, and nothing else."""
    found = []
    size = canvas.shape[0]
    for top in range(size - 16 + 1):
        for left in range(size - 16 + 1):
            crop = canvas[top : top + 16, left : left + 16]
            small = crop[::2, ::2]
            if crop.sum(dtype=np.int64) != canvas.sum(dtype=np.int64):
                continue  # something lies outside this window
            if not np.array_equal(np.kron(small, np.ones((2, 2), np.uint8)), crop):
                continue
            if small.tobytes() + bytes([label]) in known:
                found.append((top, left))
    return found


def test_shifted_digits_hold_one_enlarged_digit_each_at_varying_places():
    data = datasets.load("shifted_digits")
    (x_train, y_train), (x_test, y_test) = data
    # Each training digit at 4 places, one after the other; each test digit at one.
    assert x_train.shape == (4 * 1438, 32, 32, 1) and x_test.shape == (359, 32, 32, 1)
    assert data.name == "shifted_digits"
    assert data.train_groups.tolist()[:8] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(data.train_groups) == len(x_train) and (y_train[:4] == y_train[0]).all()
    (digits, _), _ = datasets.load("digits")
    for k in range(4):  # the first digit, enlarged, at four places
        ink = x_train[k, ..., 0]
        rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
        assert ink.sum() == 4 * int(digits[0].astype(np.int64).sum())
        assert rows[-1] - rows[0] < 16 and cols[-1] - cols[0] < 16
    images, labels = sklearn_digits_scaled()
    known = {img.tobytes() + bytes([lab]) for img, lab in zip(images, labels, strict=True)}
    for i in range(40):
        assert find_placements(x_train[i, ..., 0], int(y_train[i]), known), f"image {i}"
    # Where the ink starts varies over (nearly) the whole canvas, in both directions.
    rows = [np.nonzero(img[..., 0].any(axis=1))[0][0] for img in x_train]
    cols = [np.nonzero(img[..., 0].any(axis=0))[0][0] for img in x_train]
    assert len(set(rows)) >= 15 and len(set(cols)) >= 15
    assert min(rows) <= 1 and max(rows) >= 16


def test_shifted_digits_are_deterministic_and_follow_the_seed():
    (a, ya), (b, _) = datasets.load("shifted-digits")
    (c, yc), (d, _) = datasets.load_shifted_digits(seed=0)
    assert np.array_equal(a, c) and np.array_equal(b, d) and np.array_equal(ya, yc)
    (e, _), _ = datasets.load_shifted_digits(seed=3)
    assert not np.array_equal(a, e)


def test_a_validation_split_by_groups_keeps_each_digit_on_one_side():
    data = datasets.load("shifted_digits")
    (x, y), _ = data
    index = np.arange(len(x))  # split the images' positions, to see where each went
    (train, _), (val, y_val) = datasets.train_val_split(
        index, y, 0.1, seed=0, groups=data.train_groups
    )
    assert len(val) == 4 * round(1438 * 0.1) and len(train) + len(val) == len(x)
    groups = data.train_groups
    assert not set(groups[train]) & set(groups[val])  # no digit on both sides
    assert len(set(groups[val])) == round(1438 * 0.1)
    assert (y_val == y[val]).all()
    with pytest.raises(ValueError, match="groups must have one id per sample"):
        datasets.train_val_split(x, y, 0.1, groups=groups[:5])


def test_shifted_digits_canvas_size_is_a_choice():
    (x, _), _ = datasets.load_shifted_digits(canvas_size=20)
    assert x.shape[1:] == (20, 20, 1)
    (x, _), _ = datasets.load_shifted_digits(canvas_size=12, upscale=1)
    assert x.shape[1:] == (12, 12, 1)
    with pytest.raises(ValueError, match="at least 16"):
        datasets.load_shifted_digits(canvas_size=15)


# --- CIFAR-10 binary ---------------------------------------------------------------------------


def cifar_record(label: int, pixels: dict[tuple[int, int, int], int]) -> bytes:
    """One official record: label byte, then 1024 red, 1024 green, 1024 blue bytes (rows in
    order). ``pixels`` maps (row, column, channel) to a value; the rest are 0."""
    image = bytearray(3 * 32 * 32)
    for (row, col, channel), value in pixels.items():
        image[channel * 1024 + row * 32 + col] = value
    return bytes([label]) + bytes(image)


def cifar_batch(batch: int, records: int = 2) -> bytes:
    """Record j of batch b: label (2b + j) % 10; red (b, j) = 10b + j; green (31, 0) = 200 + j;
    blue (0, 31) = 250 - b."""
    return b"".join(
        cifar_record(
            (2 * batch + j) % 10,
            {(batch, j, 0): 10 * batch + j, (31, 0, 1): 200 + j, (0, 31, 2): 250 - batch},
        )
        for j in range(records)
    )


def cifar_members(**override: bytes) -> dict[str, bytes]:
    members = {f"data_batch_{b}.bin": cifar_batch(b) for b in range(1, 6)}
    members["test_batch.bin"] = cifar_batch(6)
    members["batches.meta.txt"] = ("\n".join(CIFAR_CLASSES) + "\n\n").encode()
    members["readme.html"] = b"<html></html>"
    members.update(override)
    return members


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def cifar_archive(folder: Path, **override: bytes) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    members = {f"cifar-10-batches-bin/{n}": d for n, d in cifar_members(**override).items()}
    return write_tar(folder / "cifar-10-binary.tar.gz", members)


def check_cifar_pixels(data) -> None:
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (10, 32, 32, 3) and x_test.shape == (2, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert y_train.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert y_test.tolist() == [2, 3]
    for batch, x in [(b, x_train[2 * (b - 1) : 2 * b]) for b in range(1, 6)] + [(6, x_test)]:
        for j in range(2):
            assert x[j, batch, j, 0] == 10 * batch + j  # red at (row b, column j)
            assert x[j, 31, 0, 1] == 200 + j  # green, bottom-left
            assert x[j, 0, 31, 2] == 250 - batch  # blue, top-right
            assert x[j].sum() == (10 * batch + j) + (200 + j) + (250 - batch)
    assert data.class_names == CIFAR_CLASSES and data.name == "cifar10"


def test_cifar10_archive_lands_labels_and_pixels_in_nhwc(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    monkeypatch.setattr(cifar, "ARCHIVE", pinned(cifar.ARCHIVE, archive))
    check_cifar_pixels(datasets.load("cifar10", data_dir=tmp_path))


def pin_batches(monkeypatch, members: dict[str, bytes]) -> None:
    batches = {n: pinned(r, members[n]) for n, r in cifar.BATCHES.items()}
    monkeypatch.setattr(cifar, "BATCHES", batches)


def extract_cifar_folder(root: Path, **override: bytes) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, data in cifar_members(**override).items():
        (folder / name).write_bytes(data)
    return folder


def test_cifar10_reads_an_extracted_folder(tmp_path, monkeypatch):
    folder = extract_cifar_folder(tmp_path)
    pin_batches(monkeypatch, cifar_members())
    check_cifar_pixels(datasets.load("cifar10", data_dir=tmp_path))
    check_cifar_pixels(datasets.load("cifar10", data_dir=folder))


def test_cifar10_wrong_checksum_says_expected_got_and_what_to_do(tmp_path):
    archive = cifar_archive(tmp_path)
    with pytest.raises(ValueError) as info:
        datasets.load("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd" in message
    assert sha256(archive) in message
    assert "170,052,171 bytes" in message and f"{len(archive):,} bytes" in message
    assert str(tmp_path / "cifar-10-binary.tar.gz") in message
    assert "Delete it" in message and "data_dir" in message


def test_cifar10_truncated_archive_is_refused(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    monkeypatch.setattr(cifar, "ARCHIVE", pinned(cifar.ARCHIVE, archive))
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(archive[: len(archive) // 2])
    with pytest.raises(ValueError, match="truncated"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar10_batch_of_broken_records_is_refused(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path, **{"data_batch_3.bin": cifar_batch(3)[:-5]})
    monkeypatch.setattr(cifar, "ARCHIVE", pinned(cifar.ARCHIVE, archive))
    with pytest.raises(ValueError, match="data_batch_3.bin.*3073-byte records"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar10_archive_without_a_batch_is_refused(tmp_path, monkeypatch):
    members = {f"cifar-10-batches-bin/{n}": d for n, d in cifar_members().items()}
    del members["cifar-10-batches-bin/test_batch.bin"]
    archive = write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    monkeypatch.setattr(cifar, "ARCHIVE", pinned(cifar.ARCHIVE, archive))
    with pytest.raises(ValueError, match="lacks cifar-10-batches-bin/test_batch.bin"):
        datasets.load("cifar10", data_dir=tmp_path)


def test_cifar10_missing_archive_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "cifar-10-binary.tar.gz" in message and str(tmp_path) in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message


def test_cifar10_extracted_folder_with_a_damaged_or_missing_batch(tmp_path, monkeypatch):
    folder = extract_cifar_folder(tmp_path)
    pin_batches(monkeypatch, cifar_members())
    (folder / "data_batch_2.bin").write_bytes(cifar_batch(2)[:100])
    with pytest.raises(ValueError, match="data_batch_2.bin.*truncated"):
        datasets.load("cifar10", data_dir=tmp_path)
    (folder / "data_batch_2.bin").write_bytes(cifar_batch(2))
    (folder / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        datasets.load("cifar10", data_dir=tmp_path)


# --- idx: MNIST and Fashion-MNIST --------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file of uint8: 0, 0, type 0x08, ndim, sizes as big-endian uint32, then data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture
def idx_set():
    """Tiny MNIST-like files: raw idx bytes by official file name, and the arrays they hold."""
    rng = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([5, 0, 9], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2], np.uint8),
    }
    arrays["train-images-idx3-ubyte"][1, 3, 20] = 0  # a known pixel: row 3, column 20
    arrays["train-images-idx3-ubyte"][1, 20, 3] = 255
    raw = {name: idx_bytes(a) for name, a in arrays.items()}
    assert raw["train-images-idx3-ubyte"][:4] == b"\x00\x00\x08\x03"
    assert raw["train-labels-idx1-ubyte"][:4] == b"\x00\x00\x08\x01"
    return raw, arrays


def gz(data: bytes, mtime: int = 0) -> bytes:
    return gzip.compress(data, mtime=mtime)


def pin_idx(monkeypatch, attr: str, raw: dict[str, bytes], url: str | None = None) -> dict:
    """Pin the module's file table to the test files (gzipped with mtime 0)."""
    table = {}
    for role, remote in getattr(mnist, attr).items():
        content = raw[remote.filename[: -len(".gz")]]
        changes = {"content_sha256": sha256(content)}
        if url is not None:
            changes["url"] = url + remote.filename
        table[role] = pinned(remote, gz(content), **changes)
    monkeypatch.setattr(mnist, attr, table)
    return table


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def check_idx_arrays(data, arrays) -> None:
    (x_train, y_train), (x_test, y_test) = data
    assert x_train.shape == (3, 28, 28, 1) and x_test.shape == (2, 28, 28, 1)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert np.array_equal(x_train[..., 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert x_train[1, 3, 20, 0] == 0 and x_train[1, 20, 3, 0] == 255
    assert y_train.tolist() == [5, 0, 9] and y_test.tolist() == [7, 2]


def test_mnist_idx_gz_files_parse_to_nhwc(tmp_path, monkeypatch, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw)
    write_files(tmp_path, {f"{name}.gz": gz(data) for name, data in raw.items()})
    data = datasets.load("mnist", data_dir=tmp_path)
    check_idx_arrays(data, arrays)
    assert data.class_names == [str(d) for d in range(10)] and data.name == "mnist"


def test_mnist_accepts_already_gunzipped_files(tmp_path, monkeypatch, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw)
    write_files(tmp_path, raw)
    check_idx_arrays(datasets.load("mnist", data_dir=tmp_path), arrays)


def test_fashion_mnist_passes_on_content_hash_when_gzip_header_differs(
    tmp_path, monkeypatch, idx_set
):
    raw, arrays = idx_set
    table = pin_idx(monkeypatch, "FASHION_FILES", raw)
    repacked = {f"{name}.gz": gz(data, mtime=1234567) for name, data in raw.items()}
    assert sha256(repacked["train-images-idx3-ubyte.gz"]) != table["train_images"].sha256
    write_files(tmp_path, repacked)
    data = datasets.load("fashion-mnist", data_dir=tmp_path)
    check_idx_arrays(data, arrays)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    # Other content in an equally valid gzip file does not pass.
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gz(idx_bytes(np.array([7, 3], np.uint8))))
    with pytest.raises(ValueError, match="not the official t10k-labels-idx1-ubyte.gz"):
        datasets.load("fashion_mnist", data_dir=tmp_path)


def test_mnist_missing_file_says_which_and_where(tmp_path, monkeypatch, idx_set):
    raw, _ = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw)
    files = {f"{name}.gz": gz(data) for name, data in raw.items()}
    del files["t10k-labels-idx1-ubyte.gz"]
    write_files(tmp_path, files)
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(tmp_path) in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in message


def test_mnist_wrong_checksum_against_the_real_pins(tmp_path, idx_set):
    raw, _ = idx_set
    write_files(tmp_path, {f"{name}.gz": gz(data) for name, data in raw.items()})
    with pytest.raises(ValueError) as info:
        datasets.load("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" in message
    assert sha256(gz(raw["train-images-idx3-ubyte"])) in message


def test_idx_file_of_the_wrong_kind_or_broken_gzip_is_refused(tmp_path, monkeypatch, idx_set):
    raw, _ = idx_set
    swapped = dict(raw, **{"train-labels-idx1-ubyte": raw["t10k-images-idx3-ubyte"]})
    pin_idx(monkeypatch, "MNIST_FILES", swapped)
    write_files(tmp_path, {f"{name}.gz": gz(data) for name, data in swapped.items()})
    with pytest.raises(ValueError, match="should hold labels.*got a 3-D"):
        datasets.load("mnist", data_dir=tmp_path)

    broken = gz(raw["train-images-idx3-ubyte"])[:-30]
    table = pin_idx(monkeypatch, "MNIST_FILES", raw)
    table["train_images"] = pinned(table["train_images"], broken)
    write_files(tmp_path, {f"{name}.gz": gz(data) for name, data in raw.items()})
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(broken)
    with pytest.raises(ValueError, match="not a whole gzip file"):
        datasets.load("mnist", data_dir=tmp_path)


def test_parse_idx_reads_the_big_endian_header_and_validates_it():
    int32 = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + struct.pack(">3i", 1, 258, -2)
    array = parse_idx(int32)
    assert array.tolist() == [1, 258, -2]
    assert array.dtype == np.dtype("int32") and array.dtype.isnative

    images = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 1, 3) + bytes(range(6))
    assert parse_idx(images).tolist() == [[[0, 1, 2]], [[3, 4, 5]]]

    with pytest.raises(ValueError, match="magic number is 0x00010803"):
        parse_idx(bytes([0, 1, 0x08, 3]) + images[4:])
    with pytest.raises(ValueError, match="magic number is 0x00000703"):
        parse_idx(bytes([0, 0, 0x07, 3]) + images[4:])
    with pytest.raises(ValueError, match="truncated.*shape \\(2, 1, 3\\)"):
        parse_idx(images[:-1])
    with pytest.raises(ValueError, match="longer than its header"):
        parse_idx(images + b"\x00")
    with pytest.raises(ValueError, match="truncated: its header needs 16 bytes"):
        parse_idx(images[:10])


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(),
    reason="Debian's dataset-fashion-mnist is absent (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_the_debian_package(monkeypatch, isolated_cache):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIRS", (str(DEBIAN_FASHION),))
    (x_train, y_train), (x_test, y_test) = data = datasets.load("fashion_mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first labels
    assert data.class_names[9] == "Ankle boot"
    assert not isolated_cache.exists()  # nothing downloaded
    (x_again, _), _ = datasets.load("fashion_mnist", data_dir=DEBIAN_FASHION)
    assert np.array_equal(x_again, x_train)


# --- downloads ---------------------------------------------------------------------------------


class FileServer:
    """An HTTP server on 127.0.0.1 serving ``routes``: path -> (body, mode). Mode "drop" sends
    half the body of a longer announced length, then closes the connection."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, mode = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server():
    files = FileServer()
    yield files
    files.close()


def serve_idx(server: FileServer, raw: dict[str, bytes], mode: str = "ok") -> None:
    for name, data in raw.items():
        server.routes[f"/{name}.gz"] = (gz(data), mode)


def cache_files(cache: Path) -> dict[str, bytes]:
    """Every file anywhere under the cache, by path relative to it."""
    if not cache.exists():
        return {}
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*") if p.is_file()}


def test_download_checks_the_hash_and_caches_the_file(server, monkeypatch, isolated_cache, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=server.url)
    serve_idx(server, raw)
    check_idx_arrays(datasets.load("mnist"), arrays)
    assert cache_files(isolated_cache) == {f"mnist/{n}.gz": gz(d) for n, d in raw.items()}
    assert len(server.requests) == 4
    check_idx_arrays(datasets.load("mnist"), arrays)  # from the cache: no new request
    assert len(server.requests) == 4


def test_download_with_a_wrong_checksum_leaves_nothing_in_the_cache(
    server, monkeypatch, isolated_cache, idx_set
):
    raw, _ = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=server.url)
    serve_idx(server, raw)
    server.routes["/train-images-idx3-ubyte.gz"] = (gz(b"not the images"), "ok")
    with pytest.raises(ValueError) as info:
        datasets.load("mnist")
    message = str(info.value)
    assert "not the official train-images-idx3-ubyte.gz" in message
    assert sha256(gz(raw["train-images-idx3-ubyte"])) in message
    assert "Nothing was saved" in message
    assert cache_files(isolated_cache) == {}  # no temporary file, no bad file


def test_a_dropped_download_leaves_nothing_in_the_cache(
    server, monkeypatch, isolated_cache, idx_set
):
    raw, _ = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=server.url)
    serve_idx(server, raw, mode="drop")
    with pytest.raises(ConnectionError, match="Could not download.*data_dir"):
        datasets.load("mnist")
    assert cache_files(isolated_cache) == {}


def test_unreachable_server_suggests_data_dir(monkeypatch, isolated_cache, idx_set):
    raw, _ = idx_set
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=f"http://127.0.0.1:{port}/")
    with pytest.raises(ConnectionError) as info:
        datasets.load("mnist")
    assert "data_dir" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert cache_files(isolated_cache) == {}


def test_a_damaged_cached_file_is_downloaded_again(server, monkeypatch, isolated_cache, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=server.url)
    serve_idx(server, raw)
    damaged = isolated_cache / "mnist" / "train-images-idx3-ubyte.gz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(gz(raw["train-images-idx3-ubyte"])[:50])
    check_idx_arrays(datasets.load("mnist"), arrays)
    assert damaged.read_bytes() == gz(raw["train-images-idx3-ubyte"])


def test_cache_dir_follows_cnnlab_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "mine"))
    assert download.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CNNLAB_DATA")
    assert download.cache_dir().name == "cnnlab"


# --- Keras's load_data() namespaces ---------------------------------------------------------


def closed_url() -> str:
    """A URL on a port nobody listens on: any download attempt fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/"


def test_keras_namespaces_are_attributes_of_a_fresh_datasets_import():
    code = (
        "from cnnlab import datasets\n"
        "print(datasets.mnist.load_data.__module__, datasets.fashion_mnist.load_data.__module__,"
        " datasets.cifar10.load_data.__module__)\n"
        "from cnnlab.datasets import cifar10, fashion_mnist, mnist\n"
        "print(cifar10 is datasets.cifar10, fashion_mnist is datasets.fashion_mnist,"
        " mnist is datasets.mnist, callable(datasets.load), callable(mnist.load_mnist))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:3] == [
        "cnnlab.datasets.mnist",
        "cnnlab.datasets.fashion_mnist",
        "cnnlab.datasets.cifar10",
    ]
    assert out[3:] == ["True"] * 5


def check_keras_grey(arrays, expected) -> None:
    """Keras's MNIST format: a plain tuple of pairs, x (N, 28, 28) uint8, y (N,) uint8."""
    assert type(arrays) is tuple and len(arrays) == 2
    assert all(type(pair) is tuple and len(pair) == 2 for pair in arrays)
    (x_train, y_train), (x_test, y_test) = arrays
    assert x_train.shape == (3, 28, 28) and x_test.shape == (2, 28, 28)
    assert y_train.shape == (3,) and y_test.shape == (2,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert np.array_equal(x_train, expected["train-images-idx3-ubyte"])
    assert np.array_equal(x_test, expected["t10k-images-idx3-ubyte"])
    assert x_train[1, 3, 20] == 0 and x_train[1, 20, 3] == 255  # row 3, column 20: no transpose
    assert y_train.tolist() == [5, 0, 9] and y_test.tolist() == [7, 2]


def test_mnist_load_data_gives_keras_arrays(tmp_path, monkeypatch, isolated_cache, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=closed_url())
    write_files(tmp_path / "given", {f"{name}.gz": gz(data) for name, data in raw.items()})
    check_keras_grey(datasets.mnist.load_data(data_dir=tmp_path / "given"), arrays)
    # Keras's call, no arguments: the official files from the cache (nothing downloaded).
    write_files(isolated_cache / "mnist", {f"{name}.gz": gz(data) for name, data in raw.items()})
    check_keras_grey(datasets.mnist.load_data(), arrays)
    check_keras_grey(datasets.mnist.load_data("mnist.npz"), arrays)
    # load() keeps its own format.
    (x_train, y_train), _ = datasets.load("mnist")
    assert x_train.shape == (3, 28, 28, 1) and y_train.dtype == np.int64


def test_fashion_mnist_load_data_gives_keras_arrays(tmp_path, monkeypatch, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "FASHION_FILES", raw, url=closed_url())
    write_files(tmp_path, {f"{name}.gz": gz(data) for name, data in raw.items()})
    check_keras_grey(datasets.fashion_mnist.load_data(data_dir=tmp_path), arrays)
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIRS", (str(tmp_path),))
    check_keras_grey(datasets.fashion_mnist.load_data(), arrays)


def test_cifar10_load_data_gives_keras_arrays(tmp_path, monkeypatch):
    archive = cifar_archive(tmp_path)
    monkeypatch.setattr(cifar, "ARCHIVE", pinned(cifar.ARCHIVE, archive))
    arrays = datasets.cifar10.load_data(data_dir=tmp_path)
    assert type(arrays) is tuple and all(type(pair) is tuple for pair in arrays)
    (x_train, y_train), (x_test, y_test) = arrays
    assert x_train.shape == (10, 32, 32, 3) and x_test.shape == (2, 32, 32, 3)
    assert y_train.shape == (10, 1) and y_test.shape == (2, 1)  # a column, as Keras gives it
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert y_train[:, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert y_test[:, 0].tolist() == [2, 3]
    data = datasets.load("cifar10", data_dir=tmp_path)
    check_cifar_pixels(data)  # load() unchanged: (N,) int64
    assert np.array_equal(x_train, data.train[0]) and np.array_equal(x_test, data.test[0])
    assert x_train[1, 1, 1, 0] == 11 and x_train[1, 31, 0, 1] == 201  # channels last


@pytest.mark.parametrize("archived", [False, True])
def test_cifar10_load_data_reads_a_copy_of_images_on_disk_in_keras_arrays(tmp_path, archived):
    """Offline, a copy of CIFAR-10 as class folders of images (such as a JPEG copy), in a
    folder or a .tar.gz, comes back in Keras's format too; other classes are refused."""
    from PIL import Image

    copy = tmp_path / "cifar10_jpg"
    for split, count in (("train", 2), ("test", 1)):
        for label, name in enumerate(datasets.cifar10.CLASSES):
            folder = copy / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                pixels = np.full((32, 32, 3), 20 * label + k, np.uint8)
                Image.fromarray(pixels).save(folder / f"{k:04d}.png")
    path = copy
    if archived:
        path = tmp_path / "cifar10_jpg.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            tar.add(copy, arcname="cifar10_jpg")
    (x_train, y_train), (x_test, y_test) = datasets.cifar10.load_data(data_dir=path)
    assert x_train.shape == (20, 32, 32, 3) and x_test.shape == (10, 32, 32, 3)
    assert y_train.shape == (20, 1) and y_test.shape == (10, 1)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert y_test[:, 0].tolist() == list(range(10))
    assert x_test[:, 0, 0, 0].tolist() == [20 * label for label in range(10)]
    (copy / "train" / "truck").rename(copy / "train" / "lorry")
    (copy / "test" / "truck").rename(copy / "test" / "lorry")
    with pytest.raises(
        ValueError, match=r"holds images of the classes .*'lorry'.*a copy of CIFAR-10"
    ):
        datasets.cifar10.load_data(data_dir=copy)


def keras_npz(folder: Path, arrays: dict[str, np.ndarray]) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "mnist.npz",
        x_train=arrays["train-images-idx3-ubyte"],
        y_train=arrays["train-labels-idx1-ubyte"],
        x_test=arrays["t10k-images-idx3-ubyte"],
        y_test=arrays["t10k-labels-idx1-ubyte"],
    )
    return (folder / "mnist.npz").read_bytes()


def test_mnist_load_data_reads_a_verified_keras_npz(tmp_path, monkeypatch, idx_set):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=closed_url())  # the idx files are not there
    npz = keras_npz(tmp_path / "keras" / "datasets", arrays)  # KERAS_HOME is tmp_path / "keras"
    monkeypatch.setattr(mnist, "KERAS_NPZ", pinned(mnist.KERAS_NPZ, npz))
    check_keras_grey(datasets.mnist.load_data(), arrays)
    keras_npz(tmp_path / "elsewhere", arrays)
    check_keras_grey(datasets.mnist.load_data(path=tmp_path / "elsewhere" / "mnist.npz"), arrays)


def test_mnist_load_data_refuses_an_unverified_npz_and_unclear_paths(tmp_path, idx_set):
    raw, arrays = idx_set
    keras_npz(tmp_path / "keras" / "datasets", arrays)  # checked against Keras's real pin
    npz = tmp_path / "keras" / "datasets" / "mnist.npz"
    with pytest.raises(ValueError) as info:
        datasets.mnist.load_data()
    message = str(info.value)
    assert str(npz) in message and "not the official mnist.npz" in message
    assert "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1" in message
    assert sha256(npz.read_bytes()) in message
    with pytest.raises(FileNotFoundError, match="never downloads"):
        datasets.mnist.load_data(path=tmp_path / "nowhere.npz")
    with pytest.raises(ValueError, match="not both"):
        datasets.mnist.load_data(path=npz, data_dir=tmp_path)


# --- idx files gunzipped or gzipped by another tool, wherever they are looked for -----------


def as_found(raw: dict[str, bytes], variant: str) -> dict[str, bytes]:
    """The files as a mirror may ship them: gunzipped, re-gzipped by another tool (another
    header, so other bytes than the pinned .gz), or re-gzipped and cut short."""
    if variant == "gunzipped":
        return dict(raw)
    files = {f"{name}.gz": gz(data, mtime=1234567) for name, data in raw.items()}
    if variant == "truncated_gzip":
        files = {name: data[:-30] for name, data in files.items()}
    return files


PLACES = [
    ("mnist", "data_dir"),
    ("mnist", "cache"),
    ("fashion_mnist", "data_dir"),
    ("fashion_mnist", "system_dir"),
    ("fashion_mnist", "cache"),
]


def put_idx(name: str, where: str, files: dict[str, bytes], tmp_path, monkeypatch, cache):
    """Write ``files`` where ``load(name)`` looks for them; the data_dir to pass, or None."""
    folder = {
        "data_dir": tmp_path / "given",
        "system_dir": tmp_path / "usr-share",
        "cache": cache / name,
    }[where]
    write_files(folder, files)
    if where == "system_dir":
        monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIRS", (str(folder),))
    return folder, (folder if where == "data_dir" else None)


@pytest.mark.parametrize("variant", ["gunzipped", "regzipped"])
@pytest.mark.parametrize(("name", "where"), PLACES)
def test_gunzipped_or_regzipped_idx_files_are_accepted_wherever_looked_for(
    name, where, variant, tmp_path, monkeypatch, isolated_cache, idx_set
):
    raw, arrays = idx_set
    attr = "MNIST_FILES" if name == "mnist" else "FASHION_FILES"
    table = pin_idx(monkeypatch, attr, raw, url=closed_url())  # a download would fail
    files = as_found(raw, variant)
    pinned_gz = {remote.sha256 for remote in table.values()}
    assert not pinned_gz & {sha256(data) for data in files.values()}  # only content can pass
    _, data_dir = put_idx(name, where, files, tmp_path, monkeypatch, isolated_cache)
    check_idx_arrays(datasets.load(name, data_dir=data_dir), arrays)
    check_keras_grey(getattr(datasets, name).load_data(data_dir=data_dir), arrays)


@pytest.mark.parametrize("variant", ["gunzipped", "regzipped", "truncated_gzip"])
@pytest.mark.parametrize(
    ("name", "where"), [(n, w) for n, w in PLACES if w != "cache"]
)  # the cache downloads again instead: see the tests below
def test_idx_copies_that_do_not_verify_are_refused_naming_expected_and_got(
    name, where, variant, tmp_path, monkeypatch, isolated_cache, idx_set
):
    raw, _ = idx_set
    attr = "MNIST_FILES" if name == "mnist" else "FASHION_FILES"
    remote = pin_idx(monkeypatch, attr, raw, url=closed_url())["train_images"]
    images = bytearray(raw["train-images-idx3-ubyte"])
    images[500] ^= 0xFF  # one pixel changed: still a well-formed idx file
    files = as_found(dict(raw, **{"train-images-idx3-ubyte": bytes(images)}), variant)
    folder, data_dir = put_idx(name, where, files, tmp_path, monkeypatch, isolated_cache)
    filename = "train-images-idx3-ubyte" + ("" if variant == "gunzipped" else ".gz")
    loaders = (
        lambda: datasets.load(name, data_dir=data_dir),
        lambda: getattr(datasets, name).load_data(data_dir=data_dir),
    )
    for load in loaders:
        with pytest.raises(ValueError) as info:
            load()
        message = str(info.value)
        assert f"{folder / filename} is not the official train-images-idx3-ubyte.gz" in message
        assert remote.sha256 in message and remote.content_sha256 in message  # expected
        assert sha256((folder / filename).read_bytes()) in message  # what came
        if variant == "truncated_gzip":
            assert "does not decompress whole" in message
        else:
            assert sha256(bytes(images)) in message  # the content that came


def test_a_gunzipped_copy_is_checked_against_the_real_content_pins(tmp_path, idx_set):
    raw, _ = idx_set
    write_files(tmp_path, raw)
    with pytest.raises(ValueError) as info:
        datasets.load("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" in message
    assert sha256(raw["train-images-idx3-ubyte"]) in message


def test_every_official_idx_file_pins_its_uncompressed_content():
    remotes = [*mnist.MNIST_FILES.values(), *mnist.FASHION_FILES.values()]
    for remote in remotes:
        assert len(remote.content_sha256) == 64 and remote.content_sha256 != remote.sha256
        assert remote.uncompressed_name == remote.filename.removesuffix(".gz")
    assert len({remote.content_sha256 for remote in remotes}) == 8


def test_a_damaged_gunzipped_copy_in_the_cache_is_replaced_by_a_download(
    server, monkeypatch, isolated_cache, idx_set
):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=server.url)
    serve_idx(server, raw)
    images = bytearray(raw["train-images-idx3-ubyte"])
    images[500] ^= 0xFF
    write_files(isolated_cache / "mnist", dict(raw, **{"train-images-idx3-ubyte": bytes(images)}))
    check_idx_arrays(datasets.load("mnist"), arrays)  # the official pixels, not the damaged ones
    assert server.requests == ["/train-images-idx3-ubyte.gz"]  # the three good copies were used
    assert (isolated_cache / "mnist" / "train-images-idx3-ubyte.gz").read_bytes() == gz(
        raw["train-images-idx3-ubyte"]
    )


def test_a_damaged_cached_copy_and_no_network_says_so(monkeypatch, isolated_cache, idx_set):
    raw, _ = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=closed_url())
    damaged = dict(raw, **{"train-images-idx3-ubyte": raw["t10k-images-idx3-ubyte"]})
    write_files(isolated_cache / "mnist", damaged)
    with pytest.raises(ConnectionError) as info:
        datasets.load("mnist")
    message = str(info.value)
    assert str(isolated_cache / "mnist" / "train-images-idx3-ubyte") in message
    assert "failed its checksum" in message and "data_dir" in message


def test_a_good_gunzipped_copy_is_used_when_the_gz_beside_it_is_damaged(
    tmp_path, monkeypatch, isolated_cache, idx_set
):
    raw, arrays = idx_set
    pin_idx(monkeypatch, "MNIST_FILES", raw, url=closed_url())
    for folder in (tmp_path / "given", isolated_cache / "mnist"):
        write_files(folder, raw)
        (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b damaged")
    check_idx_arrays(datasets.load("mnist", data_dir=tmp_path / "given"), arrays)
    check_idx_arrays(datasets.load("mnist"), arrays)


# --- image folders ---------------------------------------------------------------------------


def png(array: np.ndarray, mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def solid(value: tuple[int, int, int], height: int = 5, width: int = 4) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[...] = value
    image[0, 0] = (1, 2, 3)  # one odd pixel at the top-left corner
    return image


@pytest.fixture
def image_tree():
    """path -> bytes of a small class-per-folder tree, with files that must be skipped."""
    files = {
        "train/dog/b.png": png(solid((200, 10, 10))),
        "train/dog/a.png": png(solid((210, 10, 10))),
        "train/cat/x.png": png(solid((10, 200, 10))),
        "train/cat/._x.png": b"AppleDouble junk",
        "train/cat/notes.txt": b"not an image",
        "train/bird/1.png": png(np.full((5, 4), 77, np.uint8), mode="L"),  # grey
        "test/dog/c.png": png(solid((220, 10, 10))),
        "test/bird/2.png": png(solid((10, 10, 200))),
    }
    return files


def check_tree(data) -> None:
    (x_train, y_train), (x_test, y_test) = data
    assert data.class_names == ["bird", "cat", "dog"]  # sorted folder names
    assert x_train.shape == (4, 5, 4, 3) and x_test.shape == (2, 5, 4, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert y_train.tolist() == [0, 1, 2, 2] and y_test.tolist() == [0, 2]
    assert (x_train[0] == 77).all()  # grey, now RGB
    assert x_train[1, 2, 2].tolist() == [10, 200, 10]
    assert x_train[2, 4, 3].tolist() == [210, 10, 10]  # a.png before b.png
    assert x_train[3, 4, 3].tolist() == [200, 10, 10]
    assert x_train[3, 0, 0].tolist() == [1, 2, 3]
    assert x_test[0, 1, 1].tolist() == [10, 10, 200] and x_test[1, 1, 1].tolist() == [220, 10, 10]


def test_image_folder_reads_classes_sorted_with_exact_pixels(tmp_path, image_tree):
    for name, data in image_tree.items():
        (tmp_path / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pets" / name).write_bytes(data)
    data = datasets.image_folder(tmp_path / "pets")
    check_tree(data)
    assert data.name == "pets"


def test_image_folder_reads_a_tar_gz_of_the_same_layout(tmp_path, image_tree):
    write_tar(tmp_path / "pets.tar.gz", {f"pets/{n}": d for n, d in image_tree.items()})
    data = datasets.image_folder(tmp_path / "pets.tar.gz")
    check_tree(data)
    assert data.name == "pets"
    write_tar(tmp_path / "flat.tar", image_tree, mode="w")
    check_tree(datasets.image_folder(tmp_path / "flat.tar"))


def test_image_folder_resizes_or_names_the_odd_image(tmp_path, image_tree):
    tree = dict(image_tree, **{"train/cat/big.png": png(solid((9, 9, 9), 8, 6))})
    write_tar(tmp_path / "mixed.tar.gz", tree)
    with pytest.raises(ValueError, match=r"big.png is 8x6.*image_size"):
        datasets.image_folder(tmp_path / "mixed.tar.gz")
    (x_train, _), (x_test, _) = datasets.image_folder(tmp_path / "mixed.tar.gz", image_size=(3, 7))
    assert x_train.shape == (5, 3, 7, 3) and x_test.shape == (2, 3, 7, 3)
    (x_train, _), _ = datasets.image_folder(tmp_path / "mixed.tar.gz", image_size=6)
    assert x_train.shape == (5, 6, 6, 3)
    assert (x_train[0] == 77).all()  # a uniform image stays uniform


def test_image_folder_layout_errors_are_clear(tmp_path, image_tree):
    no_test = {n: d for n, d in image_tree.items() if n.startswith("train/")}
    write_tar(tmp_path / "no_test.tar.gz", no_test)
    with pytest.raises(ValueError, match="no images found .* under test/<class>/"):
        datasets.image_folder(tmp_path / "no_test.tar.gz")

    stray = dict(image_tree, **{"test/fish/1.png": png(solid((1, 1, 1)))})
    write_tar(tmp_path / "stray.tar.gz", stray)
    with pytest.raises(ValueError, match=r"test classes with no train folder: \['fish'\]"):
        datasets.image_folder(tmp_path / "stray.tar.gz")

    broken = dict(image_tree, **{"train/cat/y.png": b"\x89PNG broken"})
    write_tar(tmp_path / "broken.tar.gz", broken)
    with pytest.raises(ValueError, match="Cannot read .*train/cat/y.png as an image"):
        datasets.image_folder(tmp_path / "broken.tar.gz")

    (tmp_path / "only_train" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="only_train/test is missing"):
        datasets.image_folder(tmp_path / "only_train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.image_folder(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        datasets.image_folder(tmp_path / "notes.txt")


@pytest.mark.skipif(not SHARED_CIFAR_JPG.is_file(), reason=f"{SHARED_CIFAR_JPG} is absent")
def test_image_folder_reads_the_shared_cifar10_jpeg_archive():
    (x_train, y_train), (x_test, y_test) = data = datasets.image_folder(SHARED_CIFAR_JPG)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert data.class_names == CIFAR_CLASSES
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


# --- preprocessing -----------------------------------------------------------------------------


def test_scale_maps_0_255_onto_the_range_exactly():
    x = np.array([[0, 51, 255]], np.uint8)
    lecture = datasets.scale(x)
    assert lecture.dtype == np.float32
    assert lecture[0, 0] == -1.0 and lecture[0, 2] == 1.0
    assert np.isclose(lecture[0, 1], -0.6)
    book = datasets.scale(x, feature_range=(0, 1))
    assert book[0, 0] == 0.0 and book[0, 2] == 1.0 and np.isclose(book[0, 1], 0.2)
    with pytest.raises(TypeError, match="already scaled"):
        datasets.scale(lecture)
    with pytest.raises(ValueError, match="low < high"):
        datasets.scale(x, feature_range=(1, -1))


def test_one_hot_puts_a_one_at_each_label():
    encoded = datasets.one_hot(np.array([2, 0, 1, 2]), 4)
    assert encoded.dtype == np.float32
    assert encoded.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        datasets.one_hot(np.array([0, 3]), 3)


def test_train_val_split_sizes_pairs_and_seed():
    x = np.arange(100)
    y = 10 * np.arange(100)
    (x_train, y_train), (x_val, y_val) = datasets.train_val_split(x, y, 0.2, seed=0)
    assert len(x_train) == 80 and len(x_val) == 20
    assert np.array_equal(y_train, 10 * x_train) and np.array_equal(y_val, 10 * x_val)
    assert sorted(np.concatenate([x_train, x_val]).tolist()) == list(range(100))
    (again, _), _ = datasets.train_val_split(x, y, 0.2, seed=0)
    (other, _), _ = datasets.train_val_split(x, y, 0.2, seed=1)
    assert np.array_equal(again, x_train) and not np.array_equal(other, x_train)
    assert not np.array_equal(x_train, np.sort(x_train))  # shuffled
    with pytest.raises(ValueError, match="validation_split"):
        datasets.train_val_split(x, y, 1.5)
    with pytest.raises(ValueError, match="same length"):
        datasets.train_val_split(x, y[:5], 0.5)


def test_augment_is_deterministic_with_a_seed_and_keeps_shape_and_dtype():
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    before = x.copy()
    a = datasets.augment(x, 5)
    b = datasets.augment(x, np.random.default_rng(5))
    c = datasets.augment(x, 6)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(x, before)  # the input is left alone


def test_augment_flips_some_images_left_right():
    x = np.random.default_rng(1).integers(0, 256, (64, 5, 6, 2), dtype=np.uint8)
    out = datasets.augment(x, 0, flip=True, crop_padding=0)
    flipped = 0
    for original, result in zip(x, out, strict=True):
        mirrored = original[:, ::-1]
        assert np.array_equal(result, original) or np.array_equal(result, mirrored)
        flipped += np.array_equal(result, mirrored)
    assert 10 < flipped < 54
    assert np.array_equal(datasets.augment(x, 0, flip=False, crop_padding=0), x)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[r, c] = image[r + dy, c + dx], zero where that falls outside."""
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for r in range(height):
        for c in range(width):
            if 0 <= r + dy < height and 0 <= c + dx < width:
                out[r, c] = image[r + dy, c + dx]
    return out


def test_augment_crops_are_shifts_with_zero_padding():
    x = np.random.default_rng(2).integers(1, 256, (120, 6, 7, 1), dtype=np.uint8)  # no zeros
    out = datasets.augment(x, 3, flip=False, crop_padding=2)
    offsets = set()
    for original, result in zip(x, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(result, shifted(original, dy, dx))
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) >= 15  # of the 25 possible shifts
    assert (0, 0) in offsets and any(dy == -2 for dy, _ in offsets)


def test_take_draws_the_same_paired_samples_in_their_order():
    x = np.arange(100)
    y = 10 * np.arange(100)
    x30, y30 = datasets.take(30, x, y)
    assert len(x30) == 30 and np.array_equal(y30, 10 * x30)
    assert np.all(np.diff(x30) > 0)  # in their order, no repeats
    assert x30.max() > 50  # drawn from the whole, not the first 30
    assert np.array_equal(datasets.take(30, x, y)[0], x30)  # the same draw every time
    assert datasets.take(None, x, y)[0] is x and datasets.take(100, x, y)[0] is x
    with pytest.raises(ValueError, match=r"same length, got \[100, 5\]"):
        datasets.take(3, x, y[:5])


def test_limit_on_a_folder_ordered_by_class_keeps_every_class(tmp_path):
    from cnnlab.experiment import Settings, prepare

    for c, name in enumerate(["a", "b", "c", "d"]):
        for i in range(25):
            for split in ("train", "test"):
                path = tmp_path / "set" / split / name / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(png(np.full((4, 4), 60 * c, np.uint8), mode="L"))
    settings = Settings(dataset=str(tmp_path / "set"), limit=20, validation_split=0.0)
    data = prepare(settings)
    assert len(data.x_train) == 20 and len(data.x_test) == 20
    # The first 20 images are all class "a"; a draw of 20 holds every class.
    assert set(data.y_train.tolist()) == {0, 1, 2, 3}
    assert set(data.y_test.tolist()) == {0, 1, 2, 3}
