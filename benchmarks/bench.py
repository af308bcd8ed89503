"""cnnlab against PyTorch on the CPU: the book's CNN and MLP, training and inference.

    python benchmarks/bench.py             # batch 32 and 128, 5 repeats (a few minutes)
    python benchmarks/bench.py --scaling   # image sizes 32/64/128 x batch sizes 1/32/128/512

Each measurement runs in a fresh subprocess, so that each framework's peak memory (RSS) is its
own; both get the same number of threads (``--threads``, default: every core). Each repeat
runs the two frameworks one after the other, the first of them in turn; a figure is the median
over the repeats, and a ratio the median of the repeats' ratios, so that a machine whose speed
drifts from minute to minute (a shared VM) moves both sides of a ratio alike. Throughput is
images/s of training steps (forward, loss, backward, optimizer update: Adam, as the book
trains) and of inference, from the median step of at least a second of them (``--seconds``).
GFLOP/s counts the useful work of the matrix products of each layer (2 * M * N * K each; a
training step does three per layer: forward, weight gradient, input gradient), next to the
float32 matrix-product peak that NumPy reaches on this machine on as many threads: in the
header the one measured at the start, in the table the median of each round's GFLOP/s over
the peak measured right after the round (and that peak's median).

The header names NumPy's BLAS and the kernel it runs. OpenBLAS picks the kernel for the CPU at
start, unless ``OPENBLAS_CORETYPE`` forces one; some machines set it (and ``OPENBLAS_L2_SIZE``)
to work around old OpenBLAS builds, and an older kernel can halve the matrix products' speed.
To measure what a user's NumPy does, unset both for the run:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py``.

Both frameworks' workers keep freed memory for reuse (:func:`cnnlab.memory.keep_freed_memory`,
which cnnlab's ``fit`` calls): PyTorch's CPU tensors come from ``malloc`` too, and gain more
from it than cnnlab does. ``--memory default`` measures both with malloc as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# -- the models --------------------------------------------------------------------------------
def cnnlab_model(name: str, size: int):
    import cnnlab

    model = cnnlab.zoo.get(name, input_shape=(size, size, 3), num_classes=10)
    model.compile(
        optimizer=cnnlab.optimizers.Adam(learning_rate=5e-4), loss="sparse_categorical_crossentropy"
    )
    return model


def torch_model(name: str, size: int):
    """The same architectures written as a PyTorch user would (NCHW, padding=1)."""
    from torch import nn

    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(size * size * 3, 200),
            nn.ReLU(),
            nn.Linear(200, 150),
            nn.ReLU(),
            nn.Linear(150, 10),
        )
    blocks, channels, side = [], 3, size
    for filters, stride in ((32, 1), (32, 2), (64, 1), (64, 2)):
        blocks += [
            nn.Conv2d(channels, filters, 3, stride, padding=1),
            nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01),
            nn.LeakyReLU(0.3),
        ]
        channels, side = filters, -(-side // stride)
    return nn.Sequential(
        *blocks,
        nn.Flatten(),
        nn.Linear(channels * side * side, 128),
        nn.BatchNorm1d(128, eps=1e-3, momentum=0.01),
        nn.LeakyReLU(0.3),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def flops_per_image(name: str, size: int) -> float:
    """Multiply-adds x 2 of one image's forward pass through the conv and dense layers."""
    model = cnnlab_model(name, size)
    total, shape = 0.0, (size, size, 3)
    for layer in model.layers:
        out = layer.output_shape
        if "kernel" in layer.weights:
            k = layer.weights["kernel"]
            pixels = out[0] * out[1] if len(out) == 3 else 1
            total += 2.0 * pixels * k.size
        shape = out
    del shape
    return total


# -- one measurement, in its own process --------------------------------------------------------
def _memory_module():
    """``cnnlab.memory`` loaded from its file alone, so that torch's worker does not import the
    cnnlab package (numba and its compiler would add about 100 MiB to torch's peak memory)."""
    import importlib.util

    spec = importlib.util.find_spec("cnnlab")
    path = Path(spec.submodule_search_locations[0]) / "memory.py"
    module_spec = importlib.util.spec_from_file_location("_cnnlab_memory", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _time_steps(step, steps: int, seconds: float) -> float:
    """Seconds per step, the median of at least ``steps`` steps timed one by one, and of as
    many more as fill ``seconds``, after a warm-up of two. A fixed handful of steps of a small
    model lasts a few tens of milliseconds, in which a shared machine's pauses decide the
    figure (torch's MLP inference at batch 128 measured 74K images/s over 10 steps and 121K
    over 300, one after the other); the median over a second is what the model does."""
    step()
    step()
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < steps or time.perf_counter() - begin < seconds:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(
    framework: str, name: str, batch: int, size: int, steps: int, seconds: float, memory: str
) -> dict:
    if memory == "keep":  # as cnnlab's fit does; torch's CPU allocator is malloc too
        _memory_module().keep_freed_memory()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    if framework == "cnnlab":
        import cnnlab

        cnnlab.set_random_seed(0)
        model = cnnlab_model(name, size)
        train = _time_steps(lambda: model.train_on_batch(x, y), steps, seconds)
        # predict, the inference API, runs batch norm and its activation as one op; calling
        # the model runs each layer on its own, keeping what a backward pass would need.
        infer = _time_steps(lambda: model.predict(x, batch_size=batch), steps, seconds)
    else:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        model = torch_model(name, size)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, eps=1e-7)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        yt = torch.from_numpy(y)
        loss_fn = torch.nn.CrossEntropyLoss()

        def train_step():
            optimizer.zero_grad()
            loss_fn(model(xt), yt).backward()
            optimizer.step()

        def infer_step():
            with torch.no_grad():
                model(xt)

        model.train()
        # torch's BatchNorm1d cannot train on a batch of one (cnnlab's gives x_hat = 0).
        train = _time_steps(train_step, steps, seconds) if batch > 1 else None
        model.eval()
        infer = _time_steps(infer_step, steps, seconds)
    peak_kib = _peak_rss_kib()
    return {
        "train": batch / train if train else None,
        "infer": batch / infer,
        "peak_mib": peak_kib / 1024,
    }


def _peak_rss_kib() -> float:
    """This process's peak resident memory, KiB. Linux's ``VmHWM`` counts this program alone;
    ``ru_maxrss`` would start from the parent's resident memory at the fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure(framework, name, batch, size, steps, options) -> dict:
    """One worker run of at least ``steps`` timed steps; ``options`` carries ``threads``,
    ``seconds`` and ``memory``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(options.threads)
    env["CNNLAB_NUM_THREADS"] = str(options.threads)
    args = [sys.executable, str(HERE), "--worker", framework, name, str(batch), str(size)]
    args += ["--steps", str(steps), "--seconds", str(options.seconds), "--memory", options.memory]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        why = done.stderr.strip() or f"killed by signal {-done.returncode} (out of memory?)"
        raise SystemExit(f"{' '.join(args)} failed:\n{why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paired(name, batch, size, steps, options, peaks=False) -> tuple[dict, dict, dict, list]:
    """``options.repeats`` rounds of one cnnlab and one torch worker, cnnlab first in the even
    rounds: each framework's medians over the rounds, the median of the rounds' ratios
    cnnlab / torch for training, inference and peak memory (None where torch has no figure),
    and the rounds' figures (with ``peaks``, each round's matrix-product peak as ``peak``)."""
    rounds = []
    for r in range(options.repeats):
        order = ("cnnlab", "torch") if r % 2 == 0 else ("torch", "cnnlab")
        rounds.append({fw: measure(fw, name, batch, size, steps, options) for fw in order})
        if peaks:  # the matrix-product peak right after the round's workers
            rounds[-1]["peak"] = sgemm_peak(threads=options.threads)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    keys = ("train", "infer", "peak_mib")
    ours, theirs = (
        {k: median(r[fw][k] for r in rounds) for k in keys} for fw in ("cnnlab", "torch")
    )
    ratio = {
        k: median(r["cnnlab"][k] / r["torch"][k] if r["torch"][k] else None for r in rounds)
        for k in keys
    }
    return ours, theirs, ratio, rounds


def sgemm_peak(n: int = 2048, repeats: int = 5, threads: int | None = None) -> float:
    """GFLOP/s of NumPy's float32 matrix product of two n x n matrices (the median), on
    ``threads`` BLAS threads (None: as many as BLAS takes)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """GB/s of a large copy, bytes read plus bytes written (the median): the memory speed
    that batch norm, the activations and im2col run at."""
    src = np.ones(mib << 18, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def machine() -> str:
    """The CPU, its caches and cores; Python, NumPy, torch and NumPy's BLAS kernel."""
    from cnnlab.engine import machine as this

    caches = ", ".join(f"{level} {size}" for level, size in this.caches().items())
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    try:
        import torch

        versions.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    blas = this.numpy_blas()
    if os.environ.get("OPENBLAS_CORETYPE"):
        blas += " (forced by OPENBLAS_CORETYPE)"
    return (
        f"{this.cpu_model()} ({caches or 'caches unknown'}), {os.cpu_count()} cores; "
        + ", ".join(versions)
        + f"; NumPy's BLAS: {blas}"
    )


# -- the tables ---------------------------------------------------------------------------------
def main_table(args) -> list[dict]:
    rows = []
    peak = sgemm_peak(threads=args.threads)
    print(f"Machine: {machine()}")
    print(
        f"Threads: {args.threads}; memory: {args.memory}; "
        f"float32 matrix-product peak (NumPy): {peak:.0f} GFLOP/s; "
        f"memory bandwidth (a 256 MiB copy, read + write): {copy_bandwidth():.1f} GB/s\n"
    )
    header = (
        "| model | batch | cnnlab train img/s | torch train img/s | ratio | cnnlab infer img/s "
        "| torch infer img/s | ratio | cnnlab GFLOP/s (train, % of the peak) | cnnlab peak MiB | "
        "torch peak MiB | memory ratio |"
    )
    print(header)
    print("|" + "---|" * 12)
    for name in args.models:
        flops = flops_per_image(name, 32)
        for batch in args.batch_sizes:
            steps = max(2, (args.images // batch))
            ours, theirs, ratio, rounds = paired(name, batch, 32, steps, args, peaks=True)
            row = {"model": name, "batch": batch, "cnnlab": ours, "torch": theirs, "ratio": ratio}
            row["rounds"] = rounds
            row["gflops"] = 3 * flops * ours["train"] / 1e9
            # Against the peak measured right after each round's workers: a machine whose
            # speed drifts moves both (the header's peak is the start's alone).
            row["of_peak"] = statistics.median(
                3 * flops * r["cnnlab"]["train"] / 1e9 / r["peak"] for r in rounds
            )
            row["peak"] = statistics.median(r["peak"] for r in rounds)
            rows.append(row)
            print(
                f"| {name} | {batch} | {ours['train']:.0f} | {theirs['train']:.0f} | "
                f"**{ratio['train']:.2f}x** | {ours['infer']:.0f} | "
                f"{theirs['infer']:.0f} | **{ratio['infer']:.2f}x** | "
                f"{row['gflops']:.0f} ({100 * row['of_peak']:.0f}% of {row['peak']:.0f}) | "
                f"{ours['peak_mib']:.0f} | {theirs['peak_mib']:.0f} | "
                f"{ratio['peak_mib']:.2f}x |",
                flush=True,
            )
    return rows


def scaling_table(args) -> list[dict]:
    rows = []
    print(
        f"Machine: {machine()}; threads: {args.threads}; memory: {args.memory}; "
        "the book's CNN, training\n"
    )
    print("| image size | batch | cnnlab img/s | torch img/s | ratio | cnnlab MFLOP/image |")
    print("|---|---|---|---|---|---|")
    for size in (32, 64, 128):
        flops = flops_per_image("cnn", size)
        for batch in (1, 32, 128, 512):
            # The same amount of work (pixels) per timed run at every size, at least 2 steps.
            steps = max(2, args.images // (batch * (size // 32) ** 2))
            try:
                ours, theirs, ratio, rounds = paired("cnn", batch, size, steps, args)
            except SystemExit as failure:  # e.g. killed for lack of memory
                print(f"| {size} | {batch} | failed: {str(failure).splitlines()[-1]} | | | |")
                continue
            row = {"size": size, "batch": batch, "cnnlab": ours, "torch": theirs, "ratio": ratio}
            rows.append({**row, "rounds": rounds})
            torch_train = f"{theirs['train']:.0f}" if theirs["train"] else "n/a"
            train_ratio = f"{ratio['train']:.2f}x" if ratio["train"] else "n/a"
            print(
                f"| {size} | {batch} | {ours['train']:.0f} | {torch_train} | {train_ratio} | "
                f"{3 * flops / 1e6:.0f} |",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", nargs=4, metavar=("FRAMEWORK", "MODEL", "BATCH", "SIZE"))
    parser.add_argument("--scaling", action="store_true", help="image and batch size sweep")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10, help="timed steps, at least")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="timed seconds of steps, at least (1.0)"
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--memory",
        choices=("keep", "default"),
        default="keep",
        help="both frameworks keep freed memory for reuse, as cnnlab's fit does (default), "
        "or both use malloc's default",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.worker:
        framework, name, batch, size = args.worker
        result = worker(
            framework, name, int(batch), int(size), args.steps, args.seconds, args.memory
        )
        print(json.dumps(result))
        return
    if args.repeats is None:
        args.repeats = 5
    args.models = ["cnn", "mlp"]
    args.batch_sizes = [32, 128]
    args.images = 1024  # images per timed run
    rows = scaling_table(args) if args.scaling else main_table(args)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
