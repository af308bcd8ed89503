"""``filters``: the filters of the first layer learn edges.

The book's CNN, at its initialisation and after training: its first layer's filters, and the
feature maps they give for one test image. How much a filter looks like an edge detector is
measured by comparing it, once its mean is taken out, with the lecture's edge filters: the
horizontal and the vertical one and their two diagonals; a filter's edge score is its largest
absolute cosine similarity with them (1 for an exact edge filter of some strength and sign).
"""

from __future__ import annotations

import numpy as np

from cnnlab import zoo
from cnnlab.lecture.study import (
    Clock,
    Options,
    Result,
    Verdict,
    data,
    fmt,
    pick,
    summarize,
    train,
    twice_the_spread,
)
from cnnlab.seeding import set_random_seed

NAME = "filters"
TITLE = "The first layer's filters at initialisation and after training"
CLAIM = "the filters of the first layer learn edges"
RULE = (
    "holds when the first layer's mean edge score (the largest absolute cosine similarity of "
    "each zero-mean 3x3 filter with the lecture's horizontal, vertical and two diagonal edge "
    "filters) is higher after training than at initialisation by more than twice the larger "
    "spread over the seeds"
)
EPOCHS = 6
EDGES = np.array(
    [
        [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],  # horizontal
        [[1, 0, -1], [1, 0, -1], [1, 0, -1]],  # vertical
        [[0, 1, 1], [-1, 0, 1], [-1, -1, 0]],  # the two diagonals
        [[1, 1, 0], [1, 0, -1], [0, -1, -1]],
    ],
    dtype=np.float64,
)


def edge_scores(kernel: np.ndarray) -> np.ndarray:
    """``kernel: (3, 3, C, F)`` -> each filter's edge score, ``(F,)``: over its input channels
    averaged, its mean taken out, the largest ``|cos|`` with the edge filters."""
    filters = kernel.mean(axis=2).reshape(9, -1).T.astype(np.float64)  # (F, 9)
    filters = filters - filters.mean(axis=1, keepdims=True)
    edges = EDGES.reshape(len(EDGES), 9)
    edges = edges / np.linalg.norm(edges, axis=1, keepdims=True)
    norms = np.linalg.norm(filters, axis=1, keepdims=True)
    cosines = (filters / np.where(norms > 0, norms, 1.0)) @ edges.T
    return np.abs(cosines).max(axis=1)


def run(options: Options) -> Result:
    clock = Clock()
    d = data(options)
    shape, classes = d.x_train.shape[1:], len(d.class_names)
    rows, pictures = [], {}
    for seed in options.seeds:
        set_random_seed(seed)
        initial = zoo.cnn(input_shape=shape, num_classes=classes)
        before = initial.layers[0].weights["kernel"].copy()
        model, _ = train(
            lambda: zoo.cnn(input_shape=shape, num_classes=classes),
            seed,
            d.x_train,
            d.y_train,
            epochs=options.epochs or EPOCHS,
            optimizer={"name": "adam", "learning_rate": 1e-3},
            precise_bn=32,
        )
        after = model.layers[0].weights["kernel"]
        for stage, kernel in (("initialisation", before), ("trained", after)):
            rows.append(
                {"stage": stage, "seed": seed, "edge_score": float(edge_scores(kernel).mean())}
            )
        if seed == options.seeds[0]:
            pictures = {
                "kernels": {"initialisation": before.tolist(), "trained": after.tolist()},
                "image": d.x_test[0].tolist(),
                "maps": {
                    "initialisation": _maps(initial, d.x_test[:1]),
                    "trained": _maps(model, d.x_test[:1]),
                },
            }
    table = summarize(rows, ["stage"], ["edge_score"])
    return Result(
        NAME, TITLE, d.dataset, list(options.seeds), rows, table, judge(table), pictures, clock()
    )


def _maps(model, image: np.ndarray) -> list:
    """The first conv's feature maps for one image: ``(H, W, filters)``."""
    return model.outputs_of(image, [model.layers[0]])[0][0].tolist()


def judge(table: list[dict]) -> Verdict:
    """The verdict of :data:`RULE` from the mean and spread of the edge score."""
    start, end = pick(table, stage="initialisation"), pick(table, stage="trained")
    rise = end["edge_score"] - start["edge_score"]
    margin = twice_the_spread("edge_score", start, end)
    because = (
        f"the mean edge score is {fmt(start['edge_score'])} at initialisation and "
        f"{fmt(end['edge_score'])} after training (twice the spread: {fmt(margin)})"
    )
    return Verdict(CLAIM, RULE, bool(rise > margin), because)
