"""Pictures of a trained model: its filters, feature maps, predictions, confusion matrix,
learning curves and architecture. Each function returns a matplotlib figure."""

from __future__ import annotations

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.patches import FancyBboxPatch

from cnnlab.layers import Conv2D
from cnnlab.viz.figures import as_image, grid


def conv_layers(model) -> list[Conv2D]:
    return [layer for layer in model.layers if isinstance(layer, Conv2D)]


def filters_figure(model, max_filters: int = 64):
    """The first Conv2D layer's filters, one tile each: in colour for RGB input, else the
    mean over the input channels. Blue-white-red tiles: negative, zero, positive weights."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"Model '{model.name}' has no Conv2D layer, so no filters to show")
    kernel = convs[0].weights["kernel"]  # (kh, kw, in, filters)
    n = min(kernel.shape[-1], max_filters)
    fig, axes = grid(n, 8, size=1.0)
    limit = float(np.abs(kernel).max()) or 1.0
    for f, ax in enumerate(axes):
        w = kernel[..., f]
        if w.shape[-1] == 3:
            ax.imshow(as_image(w), interpolation="nearest")
        else:
            ax.imshow(w.mean(axis=-1), cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(f"{convs[0].name}: {n} filters of {kernel.shape[0]}x{kernel.shape[1]}")
    return fig


def feature_maps(model, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``[(layer name, output (H, W, filters)), ...]`` of every Conv2D layer of the model's
    graph for one image, in inference mode."""
    convs = conv_layers(model)
    if not convs:
        return []
    x = np.asarray(image, dtype=convs[0].dtype)[None]
    outputs = model.outputs_of(x, convs)
    return [(layer.name, y[0]) for layer, y in zip(convs, outputs, strict=True)]


def feature_maps_figure(model, image: np.ndarray, per_layer: int = 8):
    """The input image, then up to ``per_layer`` feature maps of every Conv2D layer, a row
    each: where each filter responds in the image."""
    maps = feature_maps(model, image)
    if not maps:
        raise ValueError(f"Model '{model.name}' has no Conv2D layer, so no feature maps")
    columns = per_layer + 1
    fig, axes = plt.subplots(len(maps), columns, figsize=(1.4 * columns, 1.5 * len(maps)))
    axes = np.atleast_2d(axes)
    for row, (name, fmap) in enumerate(maps):
        axes[row, 0].imshow(as_image(image), cmap="gray")
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
        axes[row, 0].set_ylabel(f"{name}\n{fmap.shape[0]}x{fmap.shape[1]}", fontsize=8)
        for k in range(per_layer):
            ax = axes[row, k + 1]
            if k < fmap.shape[-1]:
                ax.imshow(fmap[..., k], cmap="viridis")
                ax.set_title(f"filter {k}", fontsize=7)
            else:
                ax.set_visible(False)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Feature maps of every Conv2D layer")
    return fig


def predictions_figure(model, x: np.ndarray, y: np.ndarray, class_names, n: int = 10):
    """Test images with the predicted and the true class, as in the book; wrong ones in red."""
    n = min(n, len(x))
    probs = model.predict(x[:n])
    labels = np.asarray(y[:n])
    labels = labels.argmax(axis=-1) if labels.ndim == 2 else labels
    fig, axes = grid(n, 10, size=1.5)
    for i, ax in enumerate(axes):
        ax.imshow(as_image(x[i]), cmap="gray")
        guess, truth = int(probs[i].argmax()), int(labels[i])
        colour = "black" if guess == truth else "red"
        ax.set_title(
            f"pred: {class_names[guess]}\nact: {class_names[truth]}", fontsize=7, color=colour
        )
        if guess != truth:
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    return fig


def confusion_figure(matrix, class_names):
    """Counts of true class (rows) against predicted class (columns)."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * k, 1 + 0.5 * k))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_title("Confusion matrix")
    return fig


def curves_figure(rows: list[dict], title: str = ""):
    """Loss and accuracy per epoch, training against validation: a widening gap between the
    two is overfitting."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [row["epoch"] for row in rows]
    for ax, metric in ((left, "loss"), (right, "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            values = [row.get(key) for row in rows]
            if any(v is not None for v in values):
                label = "validation" if key.startswith("val_") else "training"
                ax.plot(epochs, values, style, label=label, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Learning curves")
    return fig


def _graph_boxes(model) -> tuple[list[dict], list[tuple[int, int]], int]:
    """One box per input and per layer call, each with its row (the longest path from an
    input) and its lane: a layer takes the lane of its first input unless another layer took
    it already, when it opens a lane of its own (a branch). Also the arrows, as pairs of
    boxes, and the number of lanes."""
    boxes, where, passed = [], {}, set()
    for lane, t in enumerate(model.inputs):
        where[id(t)] = len(boxes)
        boxes.append({"kind": "Input", "shape": t.shape, "params": 0, "row": 0, "lane": lane})
    lanes = len(model.inputs)
    arrows = []
    for node in model._nodes:
        sources = [where[id(t)] for t in node.inputs]
        first = node.inputs[0]
        if id(first) in passed:
            lane, lanes = lanes, lanes + 1
        else:
            lane = boxes[sources[0]]["lane"]
            passed.add(id(first))
        where[id(node.output)] = len(boxes)
        arrows += [(s, len(boxes)) for s in sources]
        boxes.append(
            {
                "kind": type(node.layer).__name__,
                "shape": node.output.shape,
                "params": sum(node.layer.count_params()),
                "row": 1 + max(boxes[s]["row"] for s in sources),
                "lane": lane,
            }
        )
    return boxes, arrows, lanes


def architecture_figure(model):
    """The lecture's CNN diagram: one box per layer (per call, for a layer called twice),
    with its output shape and parameters, in the graph's order from the input down; the
    layers of a branch in a lane of their own, and arrows from each layer to those it feeds."""
    boxes, arrows, lanes = _graph_boxes(model)
    colours = {"Conv2D": "#9ecae1", "Dense": "#fdae6b", "BatchNormalization": "#c7e9c0"}
    rows = 1 + max(box["row"] for box in boxes)
    height, width = 0.55, 0.9 / lanes
    fig, ax = plt.subplots(figsize=(3.0 + 3.5 * lanes, 0.62 * rows + 0.6))
    centres = []
    for box in boxes:
        top = rows - 1 - box["row"]
        left = 0.05 + box["lane"] * width
        kind = box["kind"]
        colour = colours.get(kind, "#dadaeb" if "Pooling" in kind else "#f0f0f0")
        ax.add_patch(
            FancyBboxPatch(
                (left + 0.02, top + 0.2),
                width - 0.04,
                height,
                boxstyle="round,pad=0.01",
                fc=colour,
                ec="0.3",
            )
        )
        dims = "x".join(str(d) for d in box["shape"][1:])
        params = box["params"]
        text = f"{kind}  {dims}" + (f"  ({params:,} params)" if params else "")
        centre = left + width / 2
        ax.text(centre, top + 0.2 + height / 2, text, ha="center", va="center", fontsize=9)
        centres.append((centre, top))
    for source, target in arrows:
        (x0, top0), (x1, top1) = centres[source], centres[target]
        ax.annotate(
            "",
            xy=(x1, top1 + 0.2 + height + 0.02),
            xytext=(x0, top0 + 0.18),
            arrowprops={"arrowstyle": "->", "color": "0.4"},
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, rows)
    ax.axis("off")
    ax.set_title(f"{model.name}: {model.count_params():,} parameters")
    return fig
