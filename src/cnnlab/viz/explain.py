"""The lecture's ideas on small examples, computed by cnnlab's own ops and layers.

Each ``explain_*`` function returns ``(text, figure)``: what to print in the terminal and the
picture to save. No trained model is needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.patches import Rectangle

from cnnlab import layers
from cnnlab.nn.conv import convolve_patch
from cnnlab.nn.padding import window_geometry
from cnnlab.viz.figures import grid

# The slide's worked example.
PATCH = np.array([[0.6, 0.2, 0.6], [0.1, -0.2, -0.3], [-0.5, -0.1, -0.3]])
HORIZONTAL_EDGE = np.array([[1.0, 1, 1], [0, 0, 0], [-1, -1, -1]])
VERTICAL_EDGE = np.array([[-1.0, 0, 1], [-1, 0, 1], [-1, 0, 1]])
POOLING_EXAMPLE = np.array([[2.0, 2, 7, 3], [9, 4, 6, 1], [8, 5, 2, 4], [3, 1, 2, 6]])


def _matrix_text(m: np.ndarray, fmt: str = "{:5.1f}") -> list[str]:
    return ["  [" + " ".join(fmt.format(v) for v in row) + " ]" for row in m]


def _show_matrix(ax, m: np.ndarray, title: str, fmt: str = "{:.1f}", cmap="coolwarm") -> None:
    if cmap in ("coolwarm", "bwr"):  # diverging: zero in the middle
        limit = float(np.abs(m).max()) or 1.0
        image = ax.imshow(m, cmap=cmap, vmin=-limit, vmax=limit)
    else:  # sequential: the values' own range
        image = ax.imshow(m, cmap=cmap, vmin=float(m.min()), vmax=float(m.max()))
    for (i, j), v in np.ndenumerate(m):
        colour = "white" if text_on_dark(image.cmap(image.norm(v))) else "black"
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=10, color=colour)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def text_on_dark(rgba) -> bool:
    """Whether a cell of colour ``rgba`` is dark enough to want white text (its relative
    luminance, ITU-R BT.709, below 0.45)."""
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45


def explain_conv():
    """Patch times filter, pixel by pixel, then the sum: 2.3; the negated patch gives -2.3."""
    lines = ["Convolution of one 3x3 patch with a 3x3 filter: multiply pixel-wise, then sum.", ""]
    patches = ((PATCH, "patch"), (-PATCH + 0.0, "negated patch"))
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
    for row, (patch, name) in enumerate(patches):
        products = patch * HORIZONTAL_EDGE + 0.0  # + 0.0 prints -0.0 as 0.0
        total = convolve_patch(patch, HORIZONTAL_EDGE)
        lines += [f"{name}:", *_matrix_text(patch), "filter (horizontal edge):"]
        lines += _matrix_text(HORIZONTAL_EDGE)
        lines += ["element-wise products:", *_matrix_text(products)]
        terms = " + ".join(f"({v:.1f})" for v in products.ravel())
        lines += [f"sum = {terms}", f"    = {total:.1f}", ""]
        _show_matrix(axes[row, 0], patch, name)
        _show_matrix(axes[row, 1], HORIZONTAL_EDGE, "filter", fmt="{:.0f}")
        _show_matrix(axes[row, 2], products, "products")
        axes[row, 3].axis("off")
        axes[row, 3].text(0.5, 0.5, f"sum = {total:.1f}", ha="center", va="center", fontsize=20)
    lines.append("The filter responds strongly (+) where the top is brighter than the bottom,")
    lines.append("and just as strongly the other way (-) for the inverted patch.")
    fig.suptitle("Convolution: multiply the patch pixel-wise with the filter, then sum")
    return "\n".join(lines), fig


def parse_filter(text: str) -> np.ndarray:
    """``"a,b,c;d,e,f;g,h,i"`` -> a 3x3 array (rows separated by ``;``)."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";")]
        kernel = np.array(rows, dtype=np.float64)
    except ValueError as err:
        raise ValueError(
            f"expected a filter like '1,1,1;0,0,0;-1,-1,-1' (rows split by ';'), got {text!r}"
        ) from err
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"expected a square filter, got rows of lengths {[len(r) for r in rows]}")
    return kernel


def sample_photo() -> np.ndarray:
    """scikit-learn's bundled sample photo, in grey, as (H, W, 1) values in [0, 1]."""
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").astype(np.float64) / 255.0
    return (rgb @ np.array([0.299, 0.587, 0.114]))[::3, ::3, None]


def explain_filters(image: np.ndarray | None = None, filters: dict | None = None):
    """A grey image through a Conv2D layer whose filters are set by hand (the slide's edge
    filters by default), at stride 1 and at stride 2."""
    image = sample_photo() if image is None else image
    filters = filters or {"horizontal edges": HORIZONTAL_EDGE, "vertical edges": VERTICAL_EDGE}
    kernel = np.stack(list(filters.values()), axis=-1)[:, :, None, :]  # (k, k, 1, filters)
    fig, axes = plt.subplots(len(filters), 3, figsize=(9, 2.4 * len(filters)), squeeze=False)
    lines = [f"Input {image.shape[0]}x{image.shape[1]}x1, padding 'same':"]
    outputs = {}
    for strides in (1, 2):
        conv = layers.Conv2D(len(filters), kernel.shape[0], strides=strides, padding="same")
        conv.build(image.shape)
        conv.set_weights([kernel.astype(conv.dtype), np.zeros(len(filters), conv.dtype)])
        outputs[strides] = conv(image[None].astype(conv.dtype))[0]
        lines.append(f"  stride {strides}: output {'x'.join(map(str, outputs[strides].shape))}")
    for row, name in enumerate(filters):
        axes[row, 0].imshow(image[..., 0], cmap="gray")
        axes[row, 0].set_title(f"input, filter: {name}")
        for col, strides in ((1, 1), (2, 2)):
            fmap = outputs[strides][..., row]
            axes[row, col].imshow(fmap, cmap="gray")
            axes[row, col].set_title(f"stride {strides}: {fmap.shape[0]}x{fmap.shape[1]}")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Feature maps: each filter lights up its own kind of edge")
    return "\n".join(lines), fig


def explain_padding(size: int = 5, kernel: int = 3, stride: int = 1, padding: str = "same"):
    """Every position of the kernel over the padded input, one frame each, and the output
    size; with "same", Keras puts the odd row and column of padding at the bottom/right."""
    (out_h, out_w), ((top, bottom), (left, right)) = window_geometry(
        (size, size), (kernel, kernel), (stride, stride), padding
    )
    padded = (size + top + bottom, size + left + right)
    frames = out_h * out_w
    fig, axes = grid(frames, min(frames, 5), size=2.0)
    for k, ax in enumerate(axes):
        i, j = divmod(k, out_w)
        ax.set_xlim(-0.5, padded[1] - 0.5)
        ax.set_ylim(padded[0] - 0.5, -0.5)
        for r in range(padded[0]):
            for c in range(padded[1]):
                inside = top <= r < top + size and left <= c < left + size
                ax.add_patch(
                    Rectangle(
                        (c - 0.5, r - 0.5), 1, 1, fc="#9ecae1" if inside else "white", ec="0.6"
                    )
                )
        ax.add_patch(
            Rectangle(
                (j * stride - 0.5, i * stride - 0.5), kernel, kernel, fc="none", ec="red", lw=2.5
            )
        )
        ax.set_title(f"output ({i}, {j})", fontsize=8)
    fig.suptitle(
        f"{size}x{size} input, {kernel}x{kernel} kernel, stride {stride}, padding '{padding}' "
        f"-> {out_h}x{out_w} output"
    )
    text = (
        f"Input {size}x{size}, kernel {kernel}x{kernel}, stride {stride}, padding '{padding}':\n"
        f"  padding: top {top}, bottom {bottom}, left {left}, right {right}\n"
        f"  output: {out_h}x{out_w} ({frames} kernel positions)"
    )
    return text, fig


def padding_animation(size: int = 5, kernel: int = 3, stride: int = 1, padding: str = "same"):
    """The kernel moving over the padded input, one frame per output pixel, and the output
    filling in beside it, as the lecture's figure: the GIF's bytes and the number of frames."""
    import io

    from PIL import Image

    (out_h, out_w), ((top, bottom), (left, right)) = window_geometry(
        (size, size), (kernel, kernel), (stride, stride), padding
    )
    padded = (size + top + bottom, size + left + right)
    frames = []
    fig, (inp, outp) = plt.subplots(
        1, 2, figsize=(7.5, 4.2), gridspec_kw={"width_ratios": [padded[1], max(out_w, 2)]}
    )
    for k in range(out_h * out_w):
        i, j = divmod(k, out_w)
        for ax in (inp, outp):
            ax.clear()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        inp.set_xlim(-0.5, padded[1] - 0.5)
        inp.set_ylim(padded[0] - 0.5, -0.5)
        for r in range(padded[0]):
            for c in range(padded[1]):
                inside = top <= r < top + size and left <= c < left + size
                colour = "#9ecae1" if inside else "white"
                inp.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fc=colour, ec="0.6"))
        box = Rectangle(
            (j * stride - 0.5, i * stride - 0.5), kernel, kernel, fc="none", ec="red", lw=3
        )
        inp.add_patch(box)
        inp.set_title(f"input {size}x{size} (blue), padding (white)", fontsize=9)
        outp.set_xlim(-0.5, out_w - 0.5)
        outp.set_ylim(out_h - 0.5, -0.5)
        for q in range(out_h * out_w):
            r, c = divmod(q, out_w)
            colour = "#fd8d3c" if q == k else ("#a1d99b" if q < k else "white")
            outp.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fc=colour, ec="0.6"))
        outp.set_title(f"output {out_h}x{out_w}: pixel ({i}, {j})", fontsize=9)
        fig.suptitle(f"{kernel}x{kernel} kernel, stride {stride}, padding '{padding}'", fontsize=11)
        fig.canvas.draw()
        frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    plt.close(fig)
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=600, loop=0
    )
    return buffer.getvalue(), len(frames)


def _pool(x: np.ndarray, kind: str, pool_size: int = 2) -> np.ndarray:
    layer = (layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D)(pool_size)
    return layer(x[None, :, :, None].astype(np.float64))[0, :, :, 0]


def _peaks(rng: np.random.Generator, size: int = 16, count: int = 8) -> np.ndarray:
    """A sparse feature map: a few strong responses, zeros elsewhere (like after a ReLU)."""
    fmap = np.zeros((size, size))
    fmap[rng.integers(0, size, count), rng.integers(0, size, count)] = rng.uniform(1, 2, count)
    return fmap


def _change(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L1 change from ``a`` to ``b``."""
    return float(np.abs(a - b).sum() / np.abs(a).sum())


def explain_pooling(seed: int = 0, trials: int = 200):
    """Max and average pooling (2x2, stride 2) on the lecture's 4x4 example; then how much a
    max-pooled feature map changes when its input moves by one pixel, against the input."""
    max_out, avg_out = _pool(POOLING_EXAMPLE, "max"), _pool(POOLING_EXAMPLE, "average")
    rng = np.random.default_rng(seed)
    changes = []
    for _ in range(trials):
        fmap = _peaks(rng)
        shifted = np.roll(fmap, 1, axis=1)
        changes.append((_change(fmap, shifted), _change(_pool(fmap, "max"), _pool(shifted, "max"))))
    input_change, pooled_change = np.mean(changes, axis=0)
    lines = ["The lecture's 4x4 input:", *_matrix_text(POOLING_EXAMPLE, "{:3.0f}")]
    lines += ["max pooling 2x2, stride 2:", *_matrix_text(max_out, "{:3.0f}")]
    lines += ["average pooling 2x2, stride 2:", *_matrix_text(avg_out, "{:5.2f}")]
    lines += [
        f"Translation invariance: move a sparse 16x16 feature map one pixel to the right "
        f"({trials} random maps);",
        f"  the input changes by {100 * input_change:.0f}% (relative L1),",
        f"  its 2x2 max-pooled output by only {100 * pooled_change:.0f}%.",
    ]
    fmap = _peaks(np.random.default_rng(seed))
    shifted = np.roll(fmap, 1, axis=1)
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.5))
    _show_matrix(axes[0, 0], POOLING_EXAMPLE, "input", "{:.0f}", cmap="Blues")
    _show_matrix(axes[0, 1], max_out, "max pooling", "{:.0f}", cmap="Blues")
    _show_matrix(axes[0, 2], avg_out, "average pooling", "{:.2f}", cmap="Blues")
    axes[0, 3].axis("off")
    for ax, m, title in (
        (axes[1, 0], fmap, "feature map"),
        (axes[1, 1], shifted, "moved one pixel right"),
        (axes[1, 2], _pool(fmap, "max"), "max-pooled"),
        (axes[1, 3], _pool(shifted, "max"), "max-pooled, moved"),
    ):
        ax.imshow(m, cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Pooling keeps the strongest (max) or mean response of each window")
    return "\n".join(lines), fig


def explain_batchnorm(seed: int = 0):
    """A batch of activations, shifted and spread out, before and after batch normalization;
    and the same layer at inference, where it uses its moving averages instead."""
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=[3.0, -2.0, 0.5], scale=[2.0, 0.5, 4.0], size=(256, 3))
    bn = layers.BatchNormalization(momentum=0.9)
    bn.build((3,))
    for _ in range(30):  # the moving averages follow the batches
        bn(rng.normal(loc=[3.0, -2.0, 0.5], scale=[2.0, 0.5, 4.0], size=(256, 3)), training=True)
    train = bn(x, training=True)
    infer = bn(x, training=False)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for c in range(3):
        axes[0].hist(x[:, c], bins=30, alpha=0.6, label=f"unit {c}")
        axes[1].hist(train[:, c], bins=30, alpha=0.6, label=f"unit {c}")
    axes[0].set_title("before: each unit its own mean and spread")
    axes[1].set_title("after (training): mean 0, variance 1")
    axes[2].scatter(train[:, 0], infer[:, 0], s=4)
    axes[2].set_xlabel("training mode (batch statistics)")
    axes[2].set_ylabel("inference mode (moving averages)")
    axes[2].set_title("unit 0: train vs inference outputs")
    for ax in axes[:2]:
        ax.legend()
    lines = ["Batch normalization over a batch of 256 (3 units):"]
    for c in range(3):
        lines.append(
            f"  unit {c}: before mean {x[:, c].mean():6.2f} var {x[:, c].var():6.2f}"
            f" -> after mean {train[:, c].mean():5.2f} var {train[:, c].var():5.2f}"
        )
    moving_mean, moving_variance = bn.get_weights()[2:]
    lines.append(
        f"  moving_mean {np.round(moving_mean, 2)}, moving_variance "
        f"{np.round(moving_variance, 2)}: used at inference"
    )
    fig.suptitle("Batch normalization")
    return "\n".join(lines), fig


def explain_dropout(rate: float = 0.5, seed: int = 0):
    """Which units a Dropout layer zeroes in training (and how it scales the rest), and that
    at inference it zeroes none."""
    dropout = layers.Dropout(rate, seed=seed)
    x = np.ones((1, 128))
    train = dropout(x, training=True)[0]
    infer = dropout(x, training=False)[0]
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.2))
    for ax, values, title in (
        (
            axes[0],
            train,
            f"training: {int(np.sum(train == 0))} of 128 units dropped, "
            f"the rest scaled by 1/(1-{rate}) = {1 / (1 - rate):.1f}",
        ),
        (axes[1], infer, "inference: no unit dropped, nothing scaled"),
    ):
        ax.imshow(values[None].reshape(4, 32), cmap="Greens", vmin=0, vmax=1 / (1 - rate))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    text = (
        f"Dropout(rate={rate}) on 128 units of value 1:\n"
        f"  training:  {int(np.sum(train == 0))} zeroed, sum {train.sum():.0f} (expected 128)\n"
        f"  inference: {int(np.sum(infer == 0))} zeroed, sum {infer.sum():.0f}"
    )
    return text, fig
