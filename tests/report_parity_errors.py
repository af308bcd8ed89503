"""Print the worst relative errors of the PyTorch parity cases (float64).

    python tests/report_parity_errors.py

Runs every layer case of ``test_torch_parity.py`` and prints, per kind of layer, the largest
relative error of the outputs and of the gradients (input and parameters).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_torch_parity as cases  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab import layers as L  # noqa: E402


def main() -> None:
    cnnlab.set_floatx("float64")
    cnnlab.set_random_seed(0)
    runs: dict[str, list[dict]] = {"Conv2D": [], "MaxPooling2D": [], "AveragePooling2D": []}
    for n, h, w, c, filters, kernel, strides, padding in cases.CONV_CASES:
        layer = L.Conv2D(filters, kernel, strides=strides, padding=padding)
        runs["Conv2D"].append(cases.compare_layer(layer, cases.images(n, h, w, c)))
    for n, h, w, c, pool_size, strides, padding in cases.POOL_CASES:
        for pooling in (L.MaxPooling2D, L.AveragePooling2D):
            layer = pooling(pool_size, strides=strides, padding=padding)
            runs[pooling.__name__].append(cases.compare_layer(layer, cases.images(n, h, w, c)))
    rng = np.random.default_rng(4)
    runs["BatchNormalization"] = [
        cases.compare_layer(L.BatchNormalization(), 3 + 2 * rng.normal(size=shape), training)
        for shape in [(4, 7), (1, 5, 5, 3), (3, 4, 6, 8)]
        for training in (True, False)
    ]
    runs["Dense"] = [
        cases.compare_layer(L.Dense(6, activation=a), rng.normal(size=(5, 9)))
        for a in (None, "relu", "softmax")
    ]
    print(f"{'layer':<20}{'cases':>6}{'output':>12}{'gradients':>12}")
    for name, errors in runs.items():
        output = max(e["output"] for e in errors)
        gradients = max(v for e in errors for k, v in e.items() if k != "output")
        print(f"{name:<20}{len(errors):>6}{output:>12.1e}{gradients:>12.1e}")


if __name__ == "__main__":
    main()
