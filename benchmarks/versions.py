"""Two versions of cnnlab against each other: the book's model's training step and predict,
in fresh processes that alternate between the versions.

    python benchmarks/versions.py ec4ce62 HEAD                  # the CNN at batch 32, 6 pairs
    python benchmarks/versions.py ec4ce62 HEAD --batch-size 128 --pairs 4 --model mlp
    python benchmarks/versions.py ec4ce62 HEAD --tuning ~/.cache/cnnlab/tuning

Each version is checked out into a git worktree of its own (under a temporary folder) and run
from its ``src`` with its own tuning folder, so that each keeps the choices it measured; with
``--tuning FOLDER``, each starts from a copy of that folder (``~/.cache/cnnlab/tuning``, say),
so that both run the same choices and the comparison sees the code, not the tuner's noise. Each
pair runs one process of each version, the first of them in turn; a process times 30
training steps and 30 ``predict`` calls after 3 warm-up steps, and gives the medians. A shared
machine drifts from minute to minute; alternating moves both sides alike, and the table gives
every pair's figures and the median over the pairs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import statistics, sys, time
import numpy as np
import cnnlab

name, batch = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
y = rng.integers(0, 10, batch)
cnnlab.set_random_seed(0)
model = cnnlab.zoo.get(name, input_shape=(32, 32, 3), num_classes=10)
model.compile(optimizer=cnnlab.optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy")


def median_ms(step):
    for _ in range(3):
        step()
    times = []
    for _ in range(30):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


train = median_ms(lambda: model.train_on_batch(x, y))
infer = median_ms(lambda: model.predict(x, batch_size=batch, verbose=0))
print(train, infer)
"""


def worktree(revision: str, folder: Path) -> Path:
    """``revision`` checked out under ``folder`` (a detached worktree of this repository)."""
    path = folder / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), revision],
        check=True,
    )
    return path


def run(tree: Path, model: str, batch: int) -> tuple[float, float]:
    """Milliseconds of a training step and of ``predict``, the medians of one process."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "CNNLAB_TUNE_DIR": str(tree / ".tuning")}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, model, str(batch)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree.name} failed:\n{done.stderr.strip()}")
    train, infer = map(float, done.stdout.split()[-2:])
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="a git revision: the version compared against")
    parser.add_argument("after", help="a git revision: the version measured")
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--tuning", type=Path, help="a tuning folder both versions start from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trees = [worktree(revision, Path(folder)) for revision in (args.before, args.after)]
        try:
            if args.tuning is not None:
                for tree in trees:
                    shutil.copytree(args.tuning.expanduser(), tree / ".tuning")
            rows = []
            for pair in range(args.pairs):
                order = (0, 1) if pair % 2 == 0 else (1, 0)
                figures = {i: run(trees[i], args.model, args.batch_size) for i in order}
                rows.append((figures[0], figures[1]))
        finally:
            for tree in trees:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
    print(f"{args.model}, batch {args.batch_size}: ms, {args.before} | {args.after}")
    print("| pair | train step | | predict | |\n|---|---:|---:|---:|---:|")
    for i, ((train_a, infer_a), (train_b, infer_b)) in enumerate(rows, 1):
        print(f"| {i} | {train_a:.2f} | {train_b:.2f} | {infer_a:.2f} | {infer_b:.2f} |")
    train_a, infer_a, train_b, infer_b = (
        statistics.median(row[side][kind] for row in rows) for side in (0, 1) for kind in (0, 1)
    )
    print(f"| median | {train_a:.2f} | {train_b:.2f} | {infer_a:.2f} | {infer_b:.2f} |")


if __name__ == "__main__":
    main()
