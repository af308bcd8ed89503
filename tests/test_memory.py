"""keep_freed_memory: freed blocks are reused instead of being faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from cnnlab.memory import keep_freed_memory

FAULTS = """
import resource, sys
import numpy as np
from cnnlab.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
np.ones(4 << 20, dtype=np.float32)  # one step's worth, allocated and freed once first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(4 << 20, dtype=np.float32)  # 16 MiB, written and freed, like an activation
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default >= 20 * 8  # glibc maps each 16 MiB block afresh: at least 8 faults each
    assert kept < default / 10


def test_block_size_must_be_a_positive_int():
    for bad in (0, -5, 1.5, True, "1"):
        with pytest.raises(ValueError, match="`block_bytes` must be a positive int"):
            keep_freed_memory(bad)
