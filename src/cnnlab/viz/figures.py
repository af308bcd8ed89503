"""Saving matplotlib figures: PNG files written atomically, or PNG bytes for the report."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cnnlab.files import atomic_open  # noqa: E402

DPI = 100


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        f.write(data)
    return path


def save(fig, path: str | os.PathLike) -> Path:
    """Save the figure as a PNG at ``path`` (atomically) and close it."""
    return write_bytes(path, png_bytes(fig))


def as_image(x: np.ndarray) -> np.ndarray:
    """An image ``(H, W, C)`` of any range as values in [0, 1] for ``imshow``; one channel
    becomes ``(H, W)``."""
    x = np.asarray(x, dtype=np.float64)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) if high > low else np.zeros_like(x)
    return x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x


def grid(n: int, columns: int, size: float = 1.6, **kwargs):
    """A figure of ``n`` axes in rows of ``columns``, without ticks; returns (fig, axes)."""
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(size * columns, size * rows), squeeze=False, **kwargs
    )
    axes = axes.ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]
