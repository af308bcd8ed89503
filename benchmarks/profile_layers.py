"""Where does a training step's time go? Times every layer's forward and backward pass.

Runs the training step of a zoo model (the plan ``train_step`` runs, each of its steps timed
on its own) on random data, and prints one row per step: forward ms, backward ms,
their sum, and the share of the whole step. A step is a layer, or layers the model runs as
one op (``cnnlab.fusion``): a convolution with its batch norm and activation, a batch norm
and the activation after it, dense layers in a row. The loss and the optimizer update get
their own rows; as in ``train_step``, each dense layer's kernel is updated inside its backward
pass. Medians over the timed steps.

    python benchmarks/profile_layers.py                      # the book's CNN, batch 128
    python benchmarks/profile_layers.py --model mlp --batch-size 32
    python benchmarks/profile_layers.py --inference          # forward pass only, training=False
    python benchmarks/profile_layers.py --memory default     # malloc as it comes (page faults)
    python benchmarks/profile_layers.py --slices             # and the hand-overs to the threads
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from cnnlab import zoo
from cnnlab.engine import parallel
from cnnlab.engine.parallel import one_blas_thread
from cnnlab.fusion import ConvChain, ConvNormalizeActivate, NormalizeActivate
from cnnlab.memory import keep_freed_memory
from cnnlab.seeding import set_random_seed

# The splits over the threads recorded so far (parallel.recorded), while --slices runs.
_splits: list = []


class _Timed:
    """A plan step's op, timed: seconds of its forward and backward calls since the last
    :meth:`reset` (``isinstance`` sees the op's own class, as the plan checks it)."""

    def __init__(self, op):
        self.op = op
        self.reset()

    def reset(self) -> None:
        self.forward = self.backward_time = 0.0
        self.splits = {"fwd": [], "bwd": []}  # their splits over the threads, when recorded

    @property
    def __class__(self):
        return type(self.op)

    def __getattr__(self, name):
        return getattr(self.op, name)

    def __call__(self, *args, **kwargs):
        seen = len(_splits)
        start = time.perf_counter()
        out = self.op(*args, **kwargs)
        self.forward += time.perf_counter() - start
        self.splits["fwd"] += _splits[seen:]
        return out

    def backward(self, *args, **kwargs):
        return self._backward(self.op.backward, *args, **kwargs)

    def backward_from_logits(self, *args, **kwargs):
        return self._backward(self.op.backward_from_logits, *args, **kwargs)

    def _backward(self, fn, *args, **kwargs):
        seen = len(_splits)
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.backward_time += time.perf_counter() - start
        self.splits["bwd"] += _splits[seen:]
        return out


def _timed_plan(model, training: bool):
    """The plan ``fit`` (or ``predict``) runs, each step's op wrapped in :class:`_Timed`."""
    plan = model._plan(training, fused=True)
    for step in plan.steps:
        if type(step.op) is not _Timed:  # (isinstance would see the op's class)
            step.op = _Timed(step.op)
    return plan


def profile_step(model, x: np.ndarray, y: np.ndarray, training: bool = True) -> dict:
    """One step as ``train_step`` (or ``predict``) runs it, timed per plan step:
    ``{"forward": [...], "backward": [...], "loss", "update"}``.

    BLAS is held to one thread for the whole step, as the model's own calls hold it.
    """
    plan = _timed_plan(model, training)
    for step in plan.steps:
        step.op.reset()
    with one_blas_thread():
        preds, states = plan.forward([x], training=training)
        loss_time = update = 0.0
        if training:
            start = time.perf_counter()
            _, grads, logit_grads = model._losses([y], preds)
            loss_time = time.perf_counter() - start
            with model._kernels_updated_in_backward() as updated:  # inside the dense layers'
                plan.backward(grads, logit_grads, states, input_gradients=False)
            start = time.perf_counter()
            weights, gradients = model.trainable_weights_and_grads()
            model.optimizer.apply(gradients, weights, done=frozenset(updated))
            update = time.perf_counter() - start
    return {
        "forward": [step.op.forward for step in plan.steps],
        "backward": [step.op.backward_time for step in plan.steps],
        "loss": loss_time,
        "update": update,
        "splits": [step.op.splits for step in plan.steps],
    }


def profile(
    model_name: str,
    batch_size: int,
    image_size: int,
    steps: int,
    training: bool,
    slices: bool = False,
):
    """Median per-layer times (seconds) over ``steps`` steps, after two warm-up steps; with
    ``slices``, also each step's splits over the threads (``med["splits"]``, one list of
    ``parallel.recorded``'s records per step for each plan step and pass)."""
    global _splits
    set_random_seed(0)
    model = zoo.get(model_name, input_shape=(image_size, image_size, 3))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    with parallel.recorded() if slices else contextlib.nullcontext([]) as _splits:
        runs = [profile_step(model, x, y, training) for _ in range(steps + 2)][2:]
    _splits = []
    med = {key: np.median([r[key] for r in runs], axis=0) for key in ("forward", "backward")}
    med["loss"] = float(np.median([r["loss"] for r in runs]))
    med["update"] = float(np.median([r["update"] for r in runs]))
    med["splits"] = [r["splits"] for r in runs]
    return model, med


def format_slices(model, med: dict, training: bool = True) -> str:
    """Per plan step and pass with splits over the threads: how many a step, and the medians
        of a split's wall time, of when its slices start on the other threads and on the calling
        one (after the split begins), of its longest slice, and of what the split takes beyond
        its longest slice (the hand-over back); the last row adds up a step's. A slice that runs
    Python on another thread must first take the GIL from the calling thread: in an op whose
    slices meet, every slice waits for the latest to start."""
    rows = [("layer", "pass", "splits", "wall us", "others start", "caller starts",
             "longest slice", "beyond it")]  # fmt: skip
    totals = np.zeros(3)
    for k, step in enumerate(model._steps(training)):
        for name in ("fwd", "bwd"):
            per_step = [run[k][name] for run in med["splits"]]
            found = [split for splits in per_step for split in splits]
            if not found:
                continue
            wall = [ended - began for began, ended, _ in found]
            others = [a - began for began, _, parts in found for a, _ in parts[:-1]]
            caller = [parts[-1][0] - began for began, _, parts in found]
            longest = [max(b - a for a, b in parts) for _, _, parts in found]
            beyond = [w - m for w, m in zip(wall, longest, strict=True)]
            count = len(found) / len(per_step)
            totals += count * np.array([np.median(v) for v in (wall, others, beyond)])
            rows.append((_describe(getattr(step, "op", step)), name, f"{count:g}",
                         *(f"{np.median(v) * 1e6:.0f}" for v in (wall, others, caller, longest,
                                                                   beyond))))  # fmt: skip
    if len(rows) == 1:
        return "none: no op of this step handed Python to the threads"
    wall, others, beyond = (f"{t * 1e6:.0f}" for t in totals)
    rows.append(("a step", "", "", wall, others, "", "", beyond))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])]
                       + [c.rjust(w) for c, w in zip(r[2:], widths[2:], strict=True)])
             for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(-1, "-" * len(lines[0]))
    return "\n".join(lines)


def _describe(step) -> str:
    fused = isinstance(step, (NormalizeActivate, ConvNormalizeActivate, ConvChain))
    return f"{step.name} ({'one op' if fused else type(step).__name__})"


def format_table(model, med: dict, batch_size: int, training: bool = True) -> str:
    fwd, bwd = med["forward"], med["backward"]
    total = float(np.sum(fwd) + np.sum(bwd) + med["loss"] + med["update"])
    rows = [("layer", "output shape", "fwd ms", "bwd ms", "sum ms", "% step")]
    for step, f, b in zip(model._steps(training), fwd, bwd, strict=True):
        step = getattr(step, "op", step)  # unwrapped
        shape = "x".join(str(d) for d in step.output_shape if d is not None)
        rows.append(
            (
                _describe(step),
                shape,
                f"{f * 1e3:.2f}",
                f"{b * 1e3:.2f}",
                f"{(f + b) * 1e3:.2f}",
                f"{100 * (f + b) / total:.1f}",
            )
        )
    for name, t in (
        ("loss (softmax cross-entropy)", med["loss"]),
        ("optimizer update", med["update"]),
    ):
        rows.append((name, "", "", "", f"{t * 1e3:.2f}", f"{100 * t / total:.1f}"))
    rows.append(
        (
            "total step",
            "",
            f"{np.sum(fwd) * 1e3:.2f}",
            f"{np.sum(bwd) * 1e3:.2f}",
            f"{total * 1e3:.2f}",
            f"{batch_size / total:.0f} img/s",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
        if k == 0 or k == len(rows) - 2:
            lines.append("-" * len(lines[-1]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", choices=sorted(zoo.MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--inference", action="store_true", help="forward only, training=False")
    parser.add_argument(
        "--slices",
        action="store_true",
        help="also time each op's splits over the threads: when the slices start, and what "
        "a split takes beyond its longest slice",
    )
    parser.add_argument(
        "--memory",
        choices=("keep", "default"),
        default="keep",
        help="keep freed memory for reuse, as fit does (default), or malloc's default",
    )
    args = parser.parse_args(argv)
    if args.memory == "keep":
        keep_freed_memory()
    model, med = profile(
        args.model, args.batch_size, args.image_size, args.steps, not args.inference, args.slices
    )
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    mode = "inference" if args.inference else "training step"
    print(
        f"{args.model}, {mode}, batch {args.batch_size}, {args.image_size}x{args.image_size} "
        f"images, median of {args.steps} steps, threads={threads}, memory={args.memory}"
    )
    print(format_table(model, med, args.batch_size, not args.inference))
    if args.slices:
        print(f"\nsplits over the threads, microseconds (medians over {args.steps} steps)")
        print(format_slices(model, med, not args.inference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
