"""Files are written whole or not at all, with ordinary permissions."""

import os
import stat

import pytest

from cnnlab.files import atomic_open


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_the_new_file_replaces_the_old_with_umask_permissions(tmp_path):
    path = tmp_path / "report.html"
    path.write_bytes(b"old")
    old_umask = os.umask(0o022)
    os.umask(old_umask)
    with atomic_open(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old_umask


def test_only_write_modes_are_accepted(tmp_path):
    with (
        pytest.raises(ValueError, match="mode 'wb' or 'w', got 'a'"),
        atomic_open(tmp_path / "x", "a"),
    ):
        pass
