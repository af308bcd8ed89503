"""Keep freed memory in the process, for training loops that allocate the same arrays each step.

A training step allocates every activation and gradient afresh (tens of MiB at batch 128) and
frees them at its end. By default glibc's ``malloc`` hands large freed blocks back to the
system (``munmap``, or trimming the top of the heap), so the next step gets them again one
page fault at a time. Keeping them made the book's CNN train 4-11 % faster on a 2-core
machine, and PyTorch's, whose CPU tensors come from ``malloc`` too, 40-60 % faster
(``python benchmarks/bench.py --memory default`` against the default ``keep``).
"""

from __future__ import annotations

import ctypes
import platform

from cnnlab import checks

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(block_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks of up to ``block_bytes`` for reuse.

    Sets ``M_MMAP_THRESHOLD`` (blocks smaller than this come from the heap, not from a fresh
    ``mmap``) and ``M_TRIM_THRESHOLD`` (free memory at the top of the heap is given back only
    past this) to ``block_bytes``. The process then keeps the memory of its largest step
    instead of returning and re-faulting it: peak memory is unchanged, but it is not given
    back between steps. :func:`cnnlab.training.fit` calls this; call it before your own loop
    of ``train_on_batch``. It lasts for the process.

    Returns True where it applied, False where the C library is not glibc (macOS, Windows,
    musl), where there is nothing to do.
    """
    checks.positive_int("block_bytes", block_bytes)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(block_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
