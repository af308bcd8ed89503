"""A user's own images, one folder per class, as a folder or a tar archive of one::

    path/train/<class>/*.png|jpg|...
    path/test/<class>/*

Classes are the sorted names of the folders under ``train/``; images within a class come in
sorted file-name order (shuffle before training). Hidden files (``.*``, such as macOS's
``._name.jpg``) and files that are not images by their extension are skipped. Images are decoded
with Pillow and converted to RGB.

An archive (``.tar``, ``.tar.gz``, ``.tgz``) is read in one pass without extracting anything;
the ``train/`` and ``test/`` folders may sit under one top folder. Decoding the 60,000 CIFAR-10
JPEGs of a 19 MB archive takes about 8 s on a laptop CPU, so no decoded copy is cached.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from cnnlab.datasets.dataset import Dataset
from cnnlab.datasets.images import check_file_size, check_size, read_image

SPLITS = ("train", "test")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MAX_BYTES = 8 * 2**30  # the decoded pixels of a whole dataset


def image_folder(
    path: str | os.PathLike, image_size: int | tuple[int, int] | None = None
) -> Dataset:
    """Load ``path/train/<class>/*`` and ``path/test/<class>/*`` (a folder or a tar archive).

    Returns ``(x_train, y_train), (x_test, y_test)``: x (N, height, width, 3) uint8 RGB, y (N,)
    int64 indices into ``class_names``. ``image_size``: ``(height, width)`` or one int for a
    square; every image is resized to it (bilinear). Without it, all images must have the same
    size already.
    """
    path = Path(path).expanduser()
    size = check_size(image_size)
    if path.is_dir():
        entries = _folder_entries(path)
        name = path.name
    elif path.is_file():
        entries = _archive_entries(path)
        name = _strip_archive_suffix(path.name)
    else:
        raise FileNotFoundError(f"image_folder: {path} does not exist")

    images: dict[str, list[tuple[str, str, np.ndarray]]] = {split: [] for split in SPLITS}
    classes: dict[str, set[str]] = {split: set() for split in SPLITS}
    decoded = 0
    for split, class_name, file_name, read in entries:
        classes[split].add(class_name)
        if file_name is not None:
            image = read_image(read(), "RGB", size, name=file_name)
            decoded += image.nbytes
            if decoded > MAX_BYTES:
                raise ValueError(
                    f"image_folder: the images of {path} decode to more than "
                    f"{MAX_BYTES / 2**30:.0f} GiB of pixels (at {image.shape[0]}x"
                    f"{image.shape[1]} each); pass a smaller image_size (--image-size)"
                )
            images[split].append((class_name, file_name, image))

    class_names = sorted(classes["train"])
    empty = sorted({c for c in classes["train"]} - {c for c, _, _ in images["train"]})
    if empty:
        raise ValueError(
            f"image_folder: {path} has class folders with no image under train/: {empty}. "
            "Remove them, or put that class's images in them."
        )
    if len(class_names) < 2:
        raise ValueError(
            f"image_folder: {path} has {len(class_names)} class under train/ "
            f"({', '.join(class_names) or 'none'}); a classifier needs at least two"
        )
    for split in SPLITS:
        if not images[split]:
            raise ValueError(
                f"image_folder: no images found in {path} under {split}/<class>/. Expected "
                f"the layout {split}/<class>/<image>, e.g. {split}/cat/0001.png."
            )
    unknown = sorted(classes["test"] - classes["train"])
    if unknown:
        raise ValueError(
            f"image_folder: {path} has test classes with no train folder: {unknown}. The "
            f"classes are the folders under train/: {class_names}"
        )
    index = {class_name: i for i, class_name in enumerate(class_names)}
    splits = []
    for split in SPLITS:
        records = sorted(images[split], key=lambda r: (index[r[0]], r[1]))
        x = _stack([(file_name, image) for _, file_name, image in records])
        y = np.array([index[class_name] for class_name, _, _ in records], dtype=np.int64)
        splits.append((x, y))
    (x_train, _), (x_test, _) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"image_folder: train images are {x_train.shape[1]}x{x_train.shape[2]} but test "
            f"images are {x_test.shape[1]}x{x_test.shape[2]} (height x width). Pass "
            f"image_size=(height, width) to resize them all."
        )
    return Dataset(splits[0], splits[1], class_names, name)


def _strip_archive_suffix(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image(file_name: str) -> bool:
    return not file_name.startswith(".") and PurePosixPath(file_name).suffix.lower() in (
        IMAGE_SUFFIXES
    )


# An entry: (split, class name, file name and a bytes reader, or None and None for a folder).
Entry = tuple[str, str, str | None, Callable[[], bytes] | None]


def _folder_entries(root: Path) -> Iterator[Entry]:
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"image_folder: {split_dir} is missing. Expected {root}/train/<class>/<image> "
                f"and {root}/test/<class>/<image>."
            )
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if class_dir.name.startswith("."):
                continue
            yield split, class_dir.name, None, None
            for file in sorted(class_dir.iterdir()):
                if file.is_file() and _is_image(file.name):
                    check_file_size(str(file), file.stat().st_size)
                    yield split, class_dir.name, str(file), file.read_bytes


def _archive_entries(archive: Path) -> Iterator[Entry]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isdir() and len(parts) >= 2 and parts[-2] in SPLITS:
                    if not parts[-1].startswith("."):
                        yield parts[-2], parts[-1], None, None
                elif member.isfile() and len(parts) >= 3 and parts[-3] in SPLITS:
                    if _is_image(parts[-1]) and not parts[-2].startswith("."):
                        name = f"{archive}:{member.name}"
                        check_file_size(name, member.size)
                        data = tar.extractfile(member).read()
                        yield parts[-3], parts[-2], name, lambda d=data: d
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"image_folder: {archive} is not a readable tar archive ({error}). Pass a folder "
            f"or a .tar/.tar.gz of train/<class>/<image> and test/<class>/<image>."
        ) from error


def _stack(named: list[tuple[str, np.ndarray]]) -> np.ndarray:
    first_name, first = named[0]
    for file_name, image in named:
        if image.shape != first.shape:
            raise ValueError(
                f"image_folder: images differ in size: {first_name} is "
                f"{first.shape[0]}x{first.shape[1]} but {file_name} is "
                f"{image.shape[0]}x{image.shape[1]} (height x width). Pass "
                f"image_size=(height, width) to resize them all."
            )
    return np.stack([image for _, image in named])
