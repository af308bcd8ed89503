"""Training that fits its batch, with subnormal floats as zeros (cnnlab's default) and as they
are, and PyTorch's, step time along the way.

    python benchmarks/subnormals.py [--steps 1500] [--batch-size 4]

The book's MLP trains on one fixed batch of random images and labels, Adam at 5e-4, as
``bench.py`` builds it; each framework in a fresh process. Printed: the median step time (ms)
of each run of 100 steps. Once the softmax's probabilities reach 0 and 1, the gradients
backward from them are subnormal (below 1.2e-38 in float32), which an x86 core computes with
a microcode assist in every operation: see ``cnnlab.engine.subnormals``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
WAYS = ("cnnlab (subnormals as zeros)", "cnnlab (subnormals kept)", "torch")


def worker(way: str, steps: int, batch: int) -> list[float]:
    sys.path.insert(0, str(HERE.parent))
    import bench  # beside this script

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    if way.startswith("cnnlab"):
        from cnnlab.engine import subnormals
        from cnnlab.memory import keep_freed_memory

        keep_freed_memory()
        if way == WAYS[1]:
            subnormals.X86 = False  # before any thread of cnnlab's starts: none flushes
        model = bench.cnnlab_model("mlp", 32)

        def step():
            model.train_on_batch(x, y)

    else:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model = bench.torch_model("mlp", 32)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, eps=1e-7)
        xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            optimizer.zero_grad()
            loss_fn(model(xt), yt).backward()
            optimizer.step()

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return [1e3 * float(np.median(times[i : i + 100])) for i in range(0, steps, 100)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--worker", choices=WAYS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch_size)))
        return
    print(f"the book's MLP, one batch of {args.batch_size}: median ms a step, each 100 steps\n")
    for way in WAYS:
        command = [sys.executable, str(HERE), "--worker", way, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        medians = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{way:30s} " + " ".join(f"{m:5.2f}" for m in medians))


if __name__ == "__main__":
    main()
