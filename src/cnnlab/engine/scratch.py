"""Scratch arrays that an op keeps from one call to the next, in a dict its caller owns."""

from __future__ import annotations

import numpy as np


def buffer(workspace: dict | None, key, shape: tuple, dtype, zeros: bool = False) -> np.ndarray:
    """The array ``workspace[key]`` of this shape and dtype, made (zeroed with ``zeros``) the
    first time and again when either changes; a fresh one without a workspace."""
    if workspace is None:
        return np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)
    buf = workspace.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = workspace[key] = np.zeros(shape, dtype) if zeros else np.empty(shape, dtype)
    return buf
