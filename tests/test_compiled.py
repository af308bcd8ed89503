"""The engine's compiled loops are cached in a folder of their own for each version of the
engine's sources (cnnlab.engine.compiled): an edit of one file never leaves another file's
loops running code compiled with the old one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cnnlab
from cnnlab.engine import compiled

SCRIPT = """
import os
import numba
import numpy as np
from cnnlab.engine import compiled, kernels

x = np.linspace(-1, 1, 10, dtype=np.float32)
out = np.empty_like(x)
kernels.leaky_relu(x, np.float32(0.5), out)
assert out[0] == -0.5
assert numba.config.CACHE_DIR == os.environ["NUMBA_CACHE_DIR"]  # left as the user set it
print(compiled.PREFIX + compiled.sources_digest())
"""


def _run(src: Path, cache: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src), "NUMBA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_edit_of_any_engine_file_compiles_every_loop_afresh(tmp_path):
    src = tmp_path / "src"
    package = Path(cnnlab.__file__).parent
    shutil.copytree(package, src / "cnnlab", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    stale = []
    for age, name in enumerate(["engine-old1", "engine-old2", "engine-old3"]):
        (cache / name).mkdir(parents=True)
        then = time.time() - 1000 * (age + 1)
        os.utime(cache / name, (then, then))
        stale.append(name)

    first = _run(src, cache)
    kernels_cached = list((cache / first).rglob("kernels.leaky_relu*.nbi"))
    assert kernels_cached, sorted(p.name for p in (cache / first).rglob("*"))
    # tiles.py edited, kernels.py not: the loops of kernels.py compile again, elsewhere
    with open(src / "cnnlab" / "engine" / "tiles.py", "a") as file:
        file.write("\n# edited\n")
    second = _run(src, cache)
    assert second != first
    assert list((cache / second).rglob("kernels.leaky_relu*.nbi"))
    # the folders used last are kept, the older ones removed
    assert sorted(p.name for p in cache.iterdir()) == sorted([first, second, stale[0]])


def test_the_digest_covers_every_engine_file_and_nothing_else(tmp_path):
    engine = Path(compiled.__file__).parent
    for path in engine.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    before = compiled.sources_digest(tmp_path)
    assert before == compiled.sources_digest(engine)
    (tmp_path / "notes.txt").write_text("not a source")
    assert compiled.sources_digest(tmp_path) == before
    (tmp_path / "parts.py").write_text((tmp_path / "parts.py").read_text() + " ")
    assert compiled.sources_digest(tmp_path) != before
