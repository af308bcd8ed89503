"""cnnlab's torch engine against a hand-written PyTorch loop on the same model: the overhead.

    python benchmarks/torch_engine.py              # the book's CNN and MLP, batch 32 and 128
    python benchmarks/torch_engine.py --repeats 3 --steps 30

Both sides train the same model (the hand-written loop on ``cnnlab.torch.to_torch(model)``,
its softmax left to ``F.cross_entropy``, with ``torch.optim.Adam``), on the same random
CIFAR-10-shaped data, shuffled each epoch, on the CPU with the same threads. cnnlab's side is
``model.fit(..., verbose=0)`` on ``cnnlab.set_engine("torch")``: its fit loop, NaN guard and
metrics included. A figure is seconds per training step over one epoch, after a warm-up
epoch; each repeat runs both, the first in turn, and the overhead is the median of the
repeats' ratios minus one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _data(steps: int, batch: int, size: int = 32):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(steps * batch, size, size, 3)).astype(np.float32)
    return x, rng.integers(0, 10, size=steps * batch)


def _model(name: str):
    import cnnlab

    cnnlab.set_random_seed(0)
    model = cnnlab.zoo.get(name)
    model.compile(cnnlab.optimizers.Adam(learning_rate=5e-4), "sparse_categorical_crossentropy")
    return model


def cnnlab_step_seconds(name: str, x, y, batch: int) -> float:
    import cnnlab

    cnnlab.set_engine("torch")
    model = _model(name)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=2, initial_epoch=1, verbose=0)
    return (time.perf_counter() - start) / (len(x) // batch + (len(x) % batch > 0))


def torch_step_seconds(name: str, x, y, batch: int) -> float:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from cnnlab.torch import to_torch

    module = to_torch(_model(name))
    module[-1].activation = nn.Identity()  # the loss takes the logits
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-4, eps=1e-7)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)

    def epoch() -> None:
        order = torch.randperm(len(xs))
        for i in range(0, len(xs), batch):
            idx = order[i : i + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(module(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()

    module.train()
    epoch()  # warm-up
    start = time.perf_counter()
    epoch()
    return (time.perf_counter() - start) / (len(x) // batch + (len(x) % batch > 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--batch-sizes", default="32,128")
    args = parser.parse_args()

    import torch
    from bench import machine

    print(f"# {machine()}; torch on {torch.get_num_threads()} threads")
    print("| model | batch | cnnlab --engine torch | hand-written torch | overhead |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            x, y = _data(args.steps, batch)
            ours, theirs, ratios = [], [], []
            for repeat in range(args.repeats):
                order = [cnnlab_step_seconds, torch_step_seconds]
                if repeat % 2:
                    order.reverse()
                times = {f: f(name, x, y, batch) for f in order}
                ours.append(times[cnnlab_step_seconds])
                theirs.append(times[torch_step_seconds])
                ratios.append(ours[-1] / theirs[-1])
            overhead = statistics.median(ratios) - 1
            print(f"| {name.upper()} | {batch} | {statistics.median(ours) * 1e3:.2f} ms | "
                  f"{statistics.median(theirs) * 1e3:.2f} ms | {overhead:+.1%} "
                  f"(repeats {min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%}) |")  # fmt: skip


if __name__ == "__main__":
    main()
