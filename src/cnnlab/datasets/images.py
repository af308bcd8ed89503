"""Reading one image file, for every place that reads one: bounded and named.

A file is refused, with its name, when it is not an image Pillow can decode, or when its header
declares more than :data:`MAX_PIXELS` pixels (a decompression bomb: a few kilobytes that
decode to gigabytes). A requested size is at most :data:`MAX_SIDE` pixels a side, and a file at most
:data:`MAX_FILE_BYTES`.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np

MAX_PIXELS = 50_000_000  # the header's width x height; Pillow itself warns at 89 million
MAX_SIDE = 4096  # a side of a size to resize to
MAX_FILE_BYTES = 2**28  # one image file, checked before it is read


def check_file_size(name: str, size: int) -> None:
    """Refuse, naming it, an image file of more than :data:`MAX_FILE_BYTES` before reading it."""
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"{name} is {size / 2**20:,.0f} MiB; cnnlab reads image files of up to "
            f"{MAX_FILE_BYTES / 2**20:.0f} MiB"
        )


def check_size(size, what: str = "image_size") -> tuple[int, int] | None:
    """``size`` as ``(height, width)``: None, one int for a square, or a pair, each side a
    positive int of at most :data:`MAX_SIDE`."""
    if size is None:
        return None
    pair = (size, size) if np.isscalar(size) else tuple(size)
    ok = len(pair) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 < v <= MAX_SIDE
        for v in pair
    )
    if not ok:
        raise ValueError(
            f"{what} must be a positive int or (height, width), each at most {MAX_SIDE} pixels, "
            f"got {size!r}"
        )
    return int(pair[0]), int(pair[1])


def read_image(
    source: str | os.PathLike | bytes,
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    name: str | None = None,
) -> np.ndarray:
    """The image at ``source`` (a path, or the file's bytes with ``name`` to say which), as
    uint8 ``(height, width, channels)`` in Pillow's ``mode`` ("RGB" or "L": one channel),
    resized (bilinear) to ``size = (height, width)`` when given."""
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    size = check_size(size)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ValueError(_too_large(name, width, height))
                image = image.convert(mode)
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{name} is refused as a decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise ValueError(f"Cannot read {name} as an image: Pillow knows no such format") from None
    except ValueError as err:
        if str(err).startswith(name):
            raise
        raise ValueError(f"Cannot read {name} as an image: {err}") from None
    except Exception as err:  # Pillow's plugins raise many kinds on a damaged file
        raise ValueError(f"Cannot read {name} as an image: {type(err).__name__}: {err}") from None
    for warning in caught:  # Pillow's, about a damaged but readable file: say which file
        warnings.warn(f"{name}: {warning.message}", UserWarning, stacklevel=2)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _too_large(name: str, width: int, height: int) -> str:
    return (
        f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); cnnlab reads "
        f"images of up to {MAX_PIXELS / 1e6:.0f} megapixels"
    )
