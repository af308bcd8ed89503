"""torchrun on one machine: what synchronized batch norm costs, and gloo's all_reduce latency.

    python benchmarks/distributed.py                       # the bundled digits, 8x8
    python benchmarks/distributed.py --dataset ../shared/data/cifar10_jpg.tar.gz --limit 2048

Trains the book's CNN on the torch engine (``--batch-size``, ``--epochs``) three ways: one
process on every core; two processes under torchrun, one thread each, with batch norm
synchronized (``--sync-batchnorm``); and the same with each process's own statistics
(``--no-sync-batchnorm``). A figure is the median of the epochs' times after the first, from
the run's metrics.csv; each repeat runs the three in turn. Then the time of one all_reduce of
65 float64 numbers (a batch norm's sums, for 32 channels) between two processes, the median
of 200 after 20 untimed.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *args]  # fmt: skip


def epoch_seconds(command: list[str], out: Path, threads: int) -> float:
    """The median time of the epochs after the first of the run ``command`` writes to ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CNNLAB_NUM_THREADS": str(threads)}
    done = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    with open(out / "metrics.csv") as stream:
        times = [float(row["time"]) for row in csv.DictReader(stream)]
    return statistics.median(times[1:])


def all_reduce_worker() -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    sums = torch.zeros(65, dtype=torch.float64)
    times = []
    for i in range(220):
        start = time.perf_counter()
        dist.all_reduce(sums)
        if i >= 20:
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        print(f"{statistics.median(times) * 1e6:.0f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--all-reduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.all_reduce_worker:
        all_reduce_worker()
        return

    from bench import machine

    train = ["-m", "cnnlab.cli", "train", "--model", "cnn", "--engine", "torch", "--quiet",
             "--dataset", args.dataset, "--batch-size", str(args.batch_size), "--epochs",
             str(args.epochs), "--validation-split", "0"]  # fmt: skip
    if args.limit:
        train += ["--limit", str(args.limit)]
    cores = len(os.sched_getaffinity(0))
    ways = {
        f"one process, {cores} threads": ([sys.executable, *train], cores),
        "two processes, batch norm synchronized": (_torchrun(*train, "--sync-batchnorm"), 1),
        "two processes, each its own statistics": (_torchrun(*train, "--no-sync-batchnorm"), 1),
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for way, (command, threads) in ways.items():
                out = Path(folder) / f"{repeat}-{len(seconds[way])}-{hash(way) & 0xFFFF}"
                seconds[way].append(epoch_seconds(command, out, threads))
    latency = subprocess.run(
        _torchrun(str(HERE), "--all-reduce-worker"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    print(f"# {machine()}")
    print(f"# the book's CNN on {args.dataset}" + (f" ({args.limit} images)" if args.limit else "")
          + f", batch {args.batch_size}, the median epoch after the first")  # fmt: skip
    print("| run | seconds an epoch (each repeat) |")
    print("|---|---:|")
    for way, values in seconds.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {way} | {statistics.median(values):.2f} ({shown}) |")
    print(f"\none all_reduce of 65 float64 numbers between two processes (gloo): {latency} us")


if __name__ == "__main__":
    main()
