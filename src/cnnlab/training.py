"""The fit loop: epochs of shuffled mini-batches, validation, and callbacks."""

from __future__ import annotations

import time

import numpy as np

from cnnlab.seeding import make_rng


class History:
    """What ``fit`` returns: ``history.history["loss"]`` etc., one value per epoch."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


def fit(
    model,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 32,
    epochs: int = 1,
    verbose: int = 1,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    shuffle: bool = True,
) -> History:
    """Train ``model`` on ``(x, y)`` for ``epochs`` passes of ``batch_size`` examples."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    rng = make_rng()
    history = History()
    for epoch in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
        totals: dict[str, float] = {}
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            for key, value in model.train_step(x[idx], y[idx]).items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
        logs = {key: value / len(x) for key, value in totals.items()}
        if validation_data is not None:
            results = model.evaluate(*validation_data, batch_size=batch_size)
            results = results if isinstance(results, list) else [results]
            logs.update({f"val_{key}": v for key, v in zip(totals, results, strict=True)})
        history.append(epoch, logs)
        if verbose:
            shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.1f}s - {shown}")
    return history
