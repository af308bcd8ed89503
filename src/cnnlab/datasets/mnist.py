"""MNIST and Fashion-MNIST from their official idx ``.gz`` files.

Checksums (SHA-256 of the ``.gz`` files as served, and of their uncompressed bytes) are the ones
published in tensorflow/datasets' ``url_checksums/mnist.txt`` and ``fashion_mnist.txt`` and
repeated by many independent projects; the uncompressed ones match Debian's
``dataset-fashion-mnist`` (whose ``.gz`` headers differ from the official files, so files are
accepted on either hash: see ``download.verify``). The MNIST files are the original
yann.lecun.com ones, served by the PyTorch mirror below. Each file is also accepted gunzipped
(``train-images-idx3-ubyte``) or gzipped by another tool, on its pinned uncompressed SHA-256.

``load_data()`` is Keras's ``keras.datasets.mnist.load_data``: x (N, 28, 28) and y (N,), uint8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlab.datasets.dataset import Dataset, KerasArrays
from cnnlab.datasets.download import RemoteFile, fetch, mismatch
from cnnlab.datasets.idx import read_idx

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# role -> file; the roles are train_images, train_labels, test_images, test_labels.
MNIST_FILES = {
    "train_images": RemoteFile(
        "train-images-idx3-ubyte.gz",
        MNIST_URL + "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        9_912_422,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": RemoteFile(
        "train-labels-idx1-ubyte.gz",
        MNIST_URL + "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        28_881,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        MNIST_URL + "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        1_648_877,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4_542,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

FASHION_FILES = {
    "train_images": RemoteFile(
        "train-images-idx3-ubyte.gz",
        FASHION_URL + "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        26_421_880,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train_labels": RemoteFile(
        "train-labels-idx1-ubyte.gz",
        FASHION_URL + "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        29_515,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "test_images": RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        FASHION_URL + "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        4_422_102,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "test_labels": RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        FASHION_URL + "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        5_148,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

# Keras's own copy, read by load_data(path=) when it is on disk (never downloaded here); the
# SHA-256 is the one pinned in keras/src/datasets/mnist.py.
KERAS_NPZ = RemoteFile(
    "mnist.npz",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
    "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    11_490_434,
)

# Where Debian's dataset-fashion-mnist package installs the four files.
FASHION_SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

MNIST_CLASSES = [str(digit) for digit in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def load_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """MNIST handwritten digits: x (60000, 28, 28, 1) and (10000, 28, 28, 1) uint8."""
    return _load("mnist", MNIST_FILES, MNIST_CLASSES, data_dir, ())


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST (Zalando): x (60000, 28, 28, 1) and (10000, 28, 28, 1) uint8."""
    return _load("fashion_mnist", FASHION_FILES, FASHION_CLASSES, data_dir, FASHION_SYSTEM_DIRS)


def load_data(
    path: str | os.PathLike = "mnist.npz", *, data_dir: str | os.PathLike | None = None
) -> KerasArrays:
    """MNIST as Keras's ``mnist.load_data`` returns it: ``(x_train, y_train), (x_test, y_test)``.

    x_train (60000, 28, 28) and x_test (10000, 28, 28): uint8 pixels 0-255, no channel axis;
    y_train (60000,) and y_test (10000,): uint8 digits 0-9.

    ``path``: Keras's ``mnist.npz``, relative to Keras's cache ``$KERAS_HOME/datasets`` (by
    default ``~/.keras/datasets``) or absolute. It is read when it exists, after checking it
    against the SHA-256 Keras pins; it is never downloaded. Otherwise (the default name and no
    such file) the official idx files are loaded as by :func:`load_mnist`: from the cache,
    downloaded when missing. ``data_dir``: a folder already holding the idx files (``.gz`` or
    gunzipped); nothing is downloaded then.
    """
    default = os.fspath(path) == KERAS_NPZ.filename
    if data_dir is not None:
        if not default:
            raise ValueError(
                f"Give path= (Keras's mnist.npz) or data_dir= (a folder of the idx files), not "
                f"both: got path={os.fspath(path)!r} and data_dir={os.fspath(data_dir)!r}"
            )
        return keras_arrays(load_mnist(data_dir))
    npz = keras_datasets_dir() / Path(path).expanduser()  # an absolute path stays as it is
    if npz.is_file():
        return _read_keras_npz(npz)
    if not default:
        raise FileNotFoundError(
            f"path={os.fspath(path)!r}: {npz} does not exist. path= names a copy of Keras's "
            f"{KERAS_NPZ.filename} (SHA-256 {KERAS_NPZ.sha256}), which cnnlab never downloads; "
            f"leave it unset to load the official idx files, or pass data_dir= their folder."
        )
    return keras_arrays(load_mnist())


def keras_datasets_dir() -> Path:
    """Keras's cache of datasets: ``$KERAS_HOME/datasets``, by default ``~/.keras/datasets``."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "datasets"


def keras_arrays(data: Dataset) -> KerasArrays:
    """A grey :class:`Dataset` in Keras's format: x (N, H, W) uint8, y (N,) uint8."""
    (x_train, y_train), (x_test, y_test) = data
    grey = [x[..., 0] for x in (x_train, x_test)]  # (N, H, W, 1) -> (N, H, W), a view
    return (grey[0], y_train.astype(np.uint8)), (grey[1], y_test.astype(np.uint8))


def _read_keras_npz(path: Path) -> KerasArrays:
    problem = mismatch(path, KERAS_NPZ)
    if problem is not None:
        raise ValueError(
            f"{problem}. It is not Keras's {KERAS_NPZ.filename}: delete it or replace it with "
            f"the official copy from {KERAS_NPZ.url}, or load without path= (the idx files)."
        )
    with np.load(path, allow_pickle=False) as npz:
        return (npz["x_train"], npz["y_train"]), (npz["x_test"], npz["y_test"])


def _load(name, files, class_names, data_dir, search_dirs) -> Dataset:
    paths = {role: fetch(remote, name, data_dir, search_dirs) for role, remote in files.items()}
    splits = []
    for split in ("train", "test"):
        x = _images(paths[f"{split}_images"])
        y = _labels(paths[f"{split}_labels"], len(class_names))
        if len(x) != len(y):
            raise ValueError(
                f"{name} {split}: {paths[f'{split}_images']} holds {len(x)} images but "
                f"{paths[f'{split}_labels']} holds {len(y)} labels"
            )
        splits.append((x, y))
    return Dataset(splits[0], splits[1], class_names, name)


def _images(path: Path) -> np.ndarray:
    array = read_idx(path)
    if array.ndim != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{path} should hold images, a 3-D uint8 idx array (magic 0x00000803), got a "
            f"{array.ndim}-D {array.dtype} array of shape {array.shape}"
        )
    return array[..., np.newaxis]  # (N, rows, columns, 1): NHWC with one grey channel


def _labels(path: Path, num_classes: int) -> np.ndarray:
    array = read_idx(path)
    if array.ndim != 1 or array.dtype != np.uint8:
        raise ValueError(
            f"{path} should hold labels, a 1-D uint8 idx array (magic 0x00000801), got a "
            f"{array.ndim}-D {array.dtype} array of shape {array.shape}"
        )
    if len(array) and array.max() >= num_classes:
        raise ValueError(f"{path} holds label {array.max()}, expected 0 to {num_classes - 1}")
    return array.astype(np.int64)
