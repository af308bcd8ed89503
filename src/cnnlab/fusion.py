"""A model's layers as the steps its training and inference run on the fast engine: a
convolution, the batch norm after it and its activation as one op, and batch norm and its
activation as one op elsewhere.

In the book's CNN every BatchNormalization is followed by a LeakyReLU. Run one after the other,
the pair reads and writes the whole feature map twice each way; run as one op
(:class:`NormalizeActivate`, :mod:`cnnlab.engine.batchnorm` with ``negative_slope``), the
activation is applied in batch norm's last pass forward, and taken back through in its passes
backward, with the same numbers. After a Conv2D, the three are one op
(:class:`ConvNormalizeActivate`): in training, each core goes on from its slice of the
convolution to batch norm's passes over the rows it wrote, the cores meeting for the batch's
sums, one hand-over to the threads each way (:mod:`cnnlab.engine.conv_batchnorm`); at
inference batch norm's statistics are fixed, and the convolution applies both to each chunk of
its output while that is in the cache, and consecutive ones run as one step, each core taking
its slice of the batch through all of them (:class:`ConvChain`); a Dense layer's own
activation is applied in the pass that adds up its product's parts (:class:`DenseActivate`).
Consecutive Dense layers run as one step, in training too, the cores meeting between layers
in compiled code, forward and backward (:class:`DenseChain`).
``Sequential.train_step``, ``predict`` and ``evaluate`` run these steps when the engine is
"fast" (:func:`cnnlab.backend.fuses`); calling the model, or a layer, still runs each layer on
its own, keeping what its ``backward`` needs. The steps group layers, so they live above
:mod:`cnnlab.layers`; the fused ops they call are the engine's.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import numpy as np

from cnnlab.engine import batchnorm, blas, conv_batchnorm, dense, kernels, parallel
from cnnlab.engine.conv import conv2d_forward_plan
from cnnlab.engine.optimizers import AdamRows
from cnnlab.engine.parts import DENSE_CHAIN, DENSE_CHAIN_BACKWARD
from cnnlab.engine.sums import column_sums
from cnnlab.layers import BatchNormalization, Conv2D, Dense, Layer
from cnnlab.layers.core import Activation


class NormalizeActivate:
    """A BatchNormalization layer and the ReLU or LeakyReLU layer after it, as one step.

    Its output is the activation layer's; its backward pass takes the gradient there and
    returns the gradient at batch norm's input, with batch norm's weight gradients in
    ``norm.grads``. Backward follows a training call only.
    """

    def __init__(self, norm: BatchNormalization, activation: Activation):
        self.norm, self.activation = norm, activation
        self.layers = [norm, activation]
        self.name = f"{norm.name}+{activation.name}"
        self.trainable_names = norm.trainable_names
        self.output_shape = activation.output_shape
        self.negative_slope = _negative_slope(activation)
        self._cache = None

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        norm = self.norm
        norm._check_input(x)
        x, w, slope = x.astype(norm.dtype, copy=False), norm.weights, self.negative_slope
        if not training:
            self._cache = None
            moving = w["moving_mean"], w["moving_variance"]
            return batchnorm.batchnorm_inference_forward(
                x, w["gamma"], w["beta"], *moving, norm.epsilon, negative_slope=slope
            )[0]
        y, mean, var, self._cache = batchnorm.batchnorm_train_forward(
            x, w["gamma"], w["beta"], norm.epsilon, negative_slope=slope
        )
        norm.update_moving_averages(mean, var)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a training call first")
        dx, dgamma, dbeta = batchnorm.batchnorm_train_backward(dy, self._cache)
        self.norm.grads["gamma"], self.norm.grads["beta"] = dgamma, dbeta
        return dx


class ConvNormalizeActivate:
    """A Conv2D without an activation of its own, the BatchNormalization after it and, if one
    follows, its ReLU or LeakyReLU, as one op.

    At inference, ``y = leaky((conv(x) - (moving_mean - bias)) * k + beta)`` with
    ``k = gamma / sqrt(moving_variance + epsilon)``: batch norm at inference with the conv's
    bias folded into its mean, applied to each chunk of the convolution's output
    (:func:`cnnlab.engine.conv.conv2d_forward`). In training, the convolution and batch norm's
    passes over the batch's statistics, each way, on one hand-over to the threads
    (:mod:`cnnlab.engine.conv_batchnorm`); its backward pass leaves the conv's and batch norm's
    weight gradients in their ``grads`` and follows a training call only. The same numbers as
    the layers one by one, up to rounding.
    """

    def __init__(
        self, conv: Conv2D, norm: BatchNormalization, activation: Activation | None = None
    ):
        self.conv, self.norm, self.activation = conv, norm, activation
        self.layers = [layer for layer in (conv, norm, activation) if layer is not None]
        self.name = "+".join(layer.name for layer in self.layers)
        self.trainable_names = conv.trainable_names + norm.trainable_names
        self.output_shape = norm.output_shape
        self.negative_slope = None if activation is None else _negative_slope(activation)
        self._cache = None

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        conv, norm = self.conv, self.norm
        conv._check_input(x)
        x = x.astype(conv.dtype, copy=False)
        if not training:
            self._cache = None
            y, images = self.plan(x, self.constants())
            parallel.over_batch(images, len(x))
            return y
        w = conv.weights
        y, mean, var, self._cache = conv_batchnorm.conv_batchnorm_train_forward(
            x, w["kernel"], w.get("bias"), conv.strides, conv.padding, norm.weights["gamma"],
            norm.weights["beta"], norm.epsilon, self.negative_slope,
        )  # fmt: skip
        norm.update_moving_averages(mean, var)
        conv._cache = self._cache.conv  # the conv's call state, as if it had run alone
        return y

    def backward(self, dy: np.ndarray, input_gradient: bool = True) -> np.ndarray | None:
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward needs a training call first")
        dx, dkernel, dbias, dgamma, dbeta = conv_batchnorm.conv_batchnorm_train_backward(
            dy, self._cache, input_gradient
        )
        self.conv.grads["kernel"] = dkernel
        if self.conv.use_bias:
            self.conv.grads["bias"] = dbias
        self.norm.grads["gamma"], self.norm.grads["beta"] = dgamma, dbeta
        return dx

    def constants(self) -> tuple:
        """Batch norm's ``(mean, scale, beta, slope)`` for this call, with the conv's bias
        folded into the mean, in the conv's dtype."""
        conv, w, dtype = self.conv, self.norm.weights, self.conv.dtype
        scale = w["gamma"] / np.sqrt(w["moving_variance"] + dtype.type(self.norm.epsilon))
        mean = w["moving_mean"] - conv.weights["bias"] if conv.use_bias else w["moving_mean"]
        slope = 1.0 if self.negative_slope is None else self.negative_slope
        return (*(np.asarray(v, dtype) for v in (mean, scale, w["beta"])), dtype.type(slope))

    def plan(self, x: np.ndarray, normalize: tuple) -> tuple[np.ndarray, Callable]:
        """For a checked input of the conv's dtype, with :meth:`constants`: the output, not
        yet filled, and ``images(start, stop)``, which fills its slice
        (:func:`cnnlab.engine.conv.conv2d_forward_plan`, which runs the convolution by
        :mod:`cnnlab.engine.winograd` where that applies)."""
        conv = self.conv
        y, images, _ = conv2d_forward_plan(
            x, conv.weights["kernel"], None, conv.strides, conv.padding, normalize
        )
        return y, images


class ConvChain:
    """Inference: consecutive :class:`ConvNormalizeActivate` steps as one. Each core takes its
    slice of the batch through all of them, reading the maps it wrote itself, with one hand-over
    to the threads instead of one for each layer. The steps' outputs, their constants and
    their buffers are set up once, before the hand-over (:meth:`ConvNormalizeActivate.plan`),
    so that a core runs only compiled loops, without waiting on the other for Python's lock."""

    trainable_names: list[str] = []

    def __init__(self, steps: list[ConvNormalizeActivate]):
        self.steps = steps
        self.layers = [layer for step in steps for layer in step.layers]
        self.name = f"{steps[0].name} .. {steps[-1].name}"
        self.output_shape = steps[-1].output_shape

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if training:
            raise ValueError(f"{self.name} runs at inference only, got training=True")
        first = self.steps[0].conv
        first._check_input(x)
        y = x.astype(first.dtype, copy=False)
        runs = []
        for step in self.steps:
            y, images = step.plan(y, step.constants())
            runs.append(images)

        def through(start: int, stop: int) -> None:
            for images in runs:
                images(start, stop)

        parallel.over_batch(through, len(x))
        return y


class DenseActivate:
    """Inference: a Dense layer with its own ReLU, LeakyReLU or softmax (or none), as one op:
    the activation is applied in the pass that adds up the cores' partial products and the
    bias (:func:`cnnlab.engine.dense.dense_forward` with ``negative_slope`` or ``softmax``),
    instead of a pass of its own over the output, each with Python around it. With a softmax
    it leaves the values before it in the layer's ``logits``, as the layer's own call does:
    a model's loss reads them there."""

    trainable_names: list[str] = []

    def __init__(self, layer: Dense):
        self.dense = layer
        self.layers = [layer]
        self.name = layer.name
        self.output_shape = layer.output_shape
        activation = layer.activation
        self.softmax = activation.name == "softmax"
        self.negative_slope = {"linear": None, "relu": 0.0, "softmax": None}.get(
            activation.name, activation.negative_slope
        )

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if training:
            raise ValueError(f"{self.name} runs at inference only, got training=True")
        layer = self.dense
        layer._check_input(x)
        x = x.astype(layer.dtype, copy=False)
        kernel, bias = layer.weights["kernel"], layer.weights.get("bias")
        x2 = x.reshape(-1, x.shape[-1])
        logits = np.empty((len(x2), layer.units), np.result_type(x2, kernel))
        y, _ = dense.dense_forward(
            x2, kernel, bias, negative_slope=self.negative_slope, softmax=self.softmax,
            logits=logits if self.softmax else None,
        )  # fmt: skip
        shape = (*x.shape[:-1], layer.units)
        if self.softmax:
            self.keep_logits(logits.reshape(shape), y.reshape(shape))
        return y.reshape(shape)

    def keep_logits(self, logits: np.ndarray, y: np.ndarray) -> None:
        """Leave ``logits`` and the softmax's output ``y`` where the layer's own call does."""
        self.dense.activation.x, self.dense.activation.y = logits, y


class DenseChain:
    """Consecutive Dense layers as one step, each with a ReLU, LeakyReLU or no activation of
    its own, the last also a softmax. Each core multiplies its block of a large layer's inputs,
    the cores meet in compiled code, each adds up the parts, the bias and the activation for
    its block of the output's rows; a small layer (:func:`cnnlab.engine.dense.by_rows`) each
    core takes through for its rows alone, with no meeting
    (:func:`cnnlab.engine.kernels.dense_chain_part`): one hand-over for all the layers, and no
    Python between them. In training, the backward pass is one hand-over too
    (:func:`cnnlab.engine.kernels.dense_chain_backward_part`): each core a block of each
    layer's inputs, from the last layer to the first, Adam's update of its rows of each kernel
    included (where the model's training step gives the layers one:
    :attr:`cnnlab.layers.Dense.kernel_update`). In float32 on cnnlab's threads; else the
    layers one by one. The tiles multiply, or NumPy's BLAS where the tuner found it faster
    (:func:`cnnlab.engine.parallel.blas_products`). The forward parts' table is kept for each
    batch size, set of weights, way to multiply and number of threads, by each calling
    thread: a call writes only its input's and its output's addresses. A training call leaves
    the last layer's logits and output in its activation, as the layer's own call does (the
    loss reads them), and at inference a softmax's."""

    _KEPT = 8  # tables kept for each calling thread, at most

    def __init__(self, steps: list[DenseActivate]):
        self.steps = steps
        self.layers = [step.dense for step in steps]
        self.name = f"{steps[0].name} .. {steps[-1].name}"
        self.output_shape = steps[-1].output_shape
        self._tables = threading.local()
        self._trained = None  # what the backward pass needs from the last training call

    @property
    def trainable_names(self) -> list[str]:
        return [f"{layer.name}/{name}" for layer in self.layers for name in layer.trainable_names]

    def __getstate__(self) -> dict:  # a copy (copy.deepcopy, pickle) makes its own tables
        state = {key: value for key, value in self.__dict__.items() if key != "_tables"}
        return {**state, "_trained": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tables = threading.local()

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        first = self.layers[0]
        first._check_input(x)
        x = x.astype(first.dtype, copy=False)
        weights = [(layer.weights["kernel"], layer.weights.get("bias")) for layer in self.layers]
        arrays = [x] + [w for pair in weights for w in pair if w is not None]
        self._trained = None
        if parallel.whole() or not all(_flat_float32(a) for a in arrays):
            if training:  # each layer keeps what its own backward pass needs
                for layer in self.layers:
                    x = layer(x, training=True)
                self._trained = "layers"
                return x
            for step in self.steps:
                x = step(x)
            return x
        x2 = x.reshape(-1, x.shape[-1])
        out = np.empty((len(x2), self.layers[-1].units), np.float32)
        last = self.steps[-1]
        logits = np.empty_like(out) if last.softmax or training else None
        used = []

        def parts(threads: int) -> list[tuple[int, ...]]:
            table, flags, parts = self._table(threads, len(x2), weights)
            table[0, 0], table[-1, 3] = x2.ctypes.data, out.ctypes.data
            table[-1, 9] = 0 if logits is None else logits.ctypes.data
            flags[...] = 0
            used.append(table)
            return parts

        parallel.over_meeting_parts(parts)
        shape = (*x.shape[:-1], self.layers[-1].units)
        if logits is not None:
            last.keep_logits(logits.reshape(shape), out.reshape(shape))
        if training:
            self._trained = (x.shape, x2, used[0], weights)
        return out.reshape(shape)

    def backward(self, dy: np.ndarray, input_gradient: bool = True) -> np.ndarray | None:
        """The gradient at the chain's input from the one at its output ``dy`` (None without
        ``input_gradient``), each layer's weight gradients left in its ``grads``: from the
        last layer's logits, once its activation is taken back through, as its own backward
        pass does."""
        self._check_trained()
        return self.backward_from_logits(self.layers[-1].activation.backward(dy), input_gradient)

    def backward_from_logits(self, dz: np.ndarray, input_gradient: bool = True):
        """:meth:`backward` from the gradient at the last layer's logits (before its
        activation), as :meth:`cnnlab.layers.Dense.backward_from_logits` takes it."""
        if self._trained == "layers":
            dy = self.layers[-1].backward_from_logits(dz)
            for layer in reversed(self.layers[1:-1]):
                dy = layer.backward(dy)
            return self.layers[0].backward(dy, input_gradient)
        self._check_trained()
        shape, x2, forward, weights = self._trained
        m = len(x2)
        dz = np.ascontiguousarray(dz.reshape(m, -1), np.float32)
        grads = [(np.empty_like(k), None if b is None else np.empty_like(b)) for k, b in weights]
        if weights[-1][1] is not None:
            grads[-1] = (grads[-1][0], column_sums(dz))
        dx = np.empty((m, shape[-1]), np.float32) if input_gradient else None
        updates = [layer.kernel_update for layer in self.layers]
        adam = [
            isinstance(u, AdamRows) and u.weight is k
            for u, (k, _) in zip(updates, weights, strict=True)
        ]
        table, arrays = self._backward_table(m, forward, weights, grads, dz, dx, updates, adam)
        flags, gemm = [], _gemm()

        def parts(threads: int) -> list[tuple[int, ...]]:
            flags.append(np.zeros((len(table), threads), np.int64))
            return [
                (DENSE_CHAIN_BACKWARD, table.ctypes.data, len(table), index, threads,
                 flags[0].ctypes.data, m, *gemm)
                for index in range(threads)
            ]  # fmt: skip

        parallel.over_meeting_parts(parts)
        del arrays  # alive until the parts are done
        for layer, update, done, (dkernel, dbias) in zip(
            self.layers, updates, adam, grads, strict=True
        ):
            if done:
                update.blocks.append(len(dkernel))
            elif update is not None:  # an update Python runs: after every input gradient
                update(dkernel, slice(None))
            layer.grads.update({"kernel": dkernel, **({} if dbias is None else {"bias": dbias})})
        return None if dx is None else dx.reshape(shape)

    def _table(self, threads: int, m: int, weights: list) -> tuple:
        """``(table, flags, parts)`` of :func:`cnnlab.engine.kernels.dense_chain_part` for
        ``m`` rows on ``threads`` threads, with the layers' outputs but the last in buffers of
        their own; made the first time, and kept with the weights it points to."""
        kept = getattr(self._tables, "kept", None)
        if kept is None:
            kept = self._tables.kept = {}
        gemm = _gemm()
        key = (threads, m, gemm, *(id(w) for pair in weights for w in pair))
        if key not in kept:
            if len(kept) >= self._KEPT:
                kept.clear()
            table = np.zeros((len(self.layers), kernels.CHAIN_FIELDS), np.int64)
            arrays = [weights]  # kept alive with the table
            lasts = [False] * (len(table) - 1) + [True]
            for row, step, (kernel, bias), last in zip(
                table, self.steps, weights, lasts, strict=True
            ):
                d, n = kernel.shape
                by_rows = dense.by_rows(m, kernel, threads)
                sums = None if by_rows else np.empty((threads, m, n), np.float32)
                out = None if last else np.empty((m, n), np.float32)  # the last: each call's own
                arrays += [out, sums]
                slope = step.negative_slope
                row[:8] = [0, kernel.ctypes.data, 0 if bias is None else bias.ctypes.data,
                           0 if last else out.ctypes.data, 0 if by_rows else sums.ctypes.data,
                           d, n, dense.activation_kind(slope, step.softmax)]  # fmt: skip
                row[8] = np.array([slope or 0.0]).view(np.int64)[0]  # row[9]: the logits
                row[10] = by_rows
            table[1:, 0] = table[:-1, 3]  # each layer reads the one before
            flags = np.zeros((2 * len(self.layers), threads), np.int64)
            parts = [
                (DENSE_CHAIN, table.ctypes.data, len(table), index, threads,
                 flags.ctypes.data, m, *gemm)
                for index in range(threads)
            ]  # fmt: skip
            kept[key] = (table, flags, parts, arrays)
        return kept[key][:3]

    def _check_trained(self) -> None:
        if self._trained is None:
            raise RuntimeError(f"{self.name}: backward needs a training call first")

    def _backward_table(self, m, forward, weights, grads, dz, dx, updates, adam) -> tuple:
        """``(table, arrays)``: the table of
        :func:`cnnlab.engine.kernels.dense_chain_backward_part`, each layer's input (the
        forward table's), kernel and gradients; between layers, the gradient at each layer's
        input (``dy`` of the layer after, and its transpose) in ``arrays``, made for this
        call, which the caller keeps until the parts are done."""
        table = np.zeros((len(self.layers), kernels.CHAIN_BACKWARD_FIELDS), np.int64)
        keep = [dz]
        dy, dy_t = dz, np.ascontiguousarray(dz.T)
        keep.append(dy_t)
        for i in range(len(self.layers) - 1, -1, -1):
            (kernel, _), (dkernel, _), row = weights[i], grads[i], table[i]
            d, n = kernel.shape
            if i > 0:
                below, below_t = np.empty((m, d), np.float32), np.empty((d, m), np.float32)
                before = self.steps[i - 1]
                if before.negative_slope is not None:
                    row[kernels.CHAIN_KIND] = 1
                    slope = np.float64(before.negative_slope)
                    row[kernels.CHAIN_SLOPE] = slope.view(np.int64)
                dbias = grads[i - 1][1]
                if dbias is not None:
                    row[kernels.CHAIN_DBIAS] = dbias.ctypes.data
            else:
                below = dx
                below_t = None if dx is None else np.empty((d, m), np.float32)
            keep += [below, below_t]
            row[: kernels.CHAIN_DX_T + 1] = [
                forward[i, 0], kernel.ctypes.data, dkernel.ctypes.data, dy.ctypes.data,
                dy_t.ctypes.data, d, n, 0 if below is None else below.ctypes.data,
                0 if below_t is None else below_t.ctypes.data,
            ]  # fmt: skip
            if adam[i]:
                update = updates[i]
                row[kernels.CHAIN_M] = update.m.ctypes.data
                row[kernels.CHAIN_V] = update.v.ctypes.data
                row[kernels.CHAIN_ADAM :] = update.bits
            dy, dy_t = below, below_t
        return table, keep


def _gemm() -> tuple[int, int]:
    """What the dense chains' parts multiply by: ``(address, wide)`` of NumPy's
    ``cblas_sgemm`` inside :func:`cnnlab.engine.parallel.blas_products`, else ``(0, 0)``, the
    tiles."""
    if parallel.by_blas():
        return blas.sgemm_address() or (0, 0)
    return 0, 0


def _flat_float32(array: np.ndarray) -> bool:
    return array.dtype == np.float32 and array.flags.c_contiguous


def _negative_slope(activation: Activation) -> float:
    return 0.0 if activation.activation.name == "relu" else activation.activation.negative_slope


def _norm_then_activation(layers: list[Layer]) -> bool:
    return (
        len(layers) >= 2
        and isinstance(layers[0], BatchNormalization)
        and isinstance(layers[1], Activation)
        and layers[1].activation.name in ("relu", "leaky_relu")
        and layers[1].dtype == layers[0].dtype
    )


def _dense_activate(layer: Layer) -> bool:
    names = ("linear", "relu", "leaky_relu", "softmax")
    return isinstance(layer, Dense) and layer.activation.name in names


def _dense_run(layers: list[Layer]) -> int:
    """How many of ``layers``, from the first, a :class:`DenseChain` takes in training: Dense
    layers with a ReLU, LeakyReLU or no activation of their own, and the last also a softmax
    (whose backward pass starts from its logits' gradient, or its own)."""
    count = 0
    for layer in layers:
        if not _dense_activate(layer):
            break
        count += 1
        if layer.activation.name == "softmax":
            break
    return count


def joins(layer: Layer) -> bool:
    """Whether a model's output layer joins the fused steps: a Dense layer that
    :class:`DenseActivate` and :class:`DenseChain` take, which leave its logits where the
    loss reads them."""
    return _dense_activate(layer)


def _conv_then_norm(layers: list[Layer]) -> bool:
    return (
        len(layers) >= 2
        and isinstance(layers[0], Conv2D)
        and layers[0].activation.name == "linear"
        and isinstance(layers[1], BatchNormalization)
        and layers[1].dtype == layers[0].dtype
    )


def steps(layers: list[Layer], training: bool = True) -> list:
    """``layers`` with each Conv2D, the BatchNormalization after it and the ReLU or LeakyReLU
    after that (if there is one) replaced by one :class:`ConvNormalizeActivate` step, each
    other batch norm and the activation right after it by one :class:`NormalizeActivate`; for
    inference (``training=False``), two or more ConvNormalizeActivate steps in a row in one
    :class:`ConvChain`, and each Dense layer with a ReLU, LeakyReLU, softmax or no activation
    of its own as a :class:`DenseActivate`, two or more in a row in one :class:`DenseChain`;
    in training, two or more such Dense layers in a row, a softmax only the last, in one
    :class:`DenseChain`."""
    out: list = []
    i = 0
    while i < len(layers):
        rest = layers[i : i + 3]
        if _conv_then_norm(rest):
            take = 3 if _norm_then_activation(rest[1:]) else 2
            out.append(ConvNormalizeActivate(*rest[:take]))
        elif _norm_then_activation(rest):
            take = 2
            out.append(NormalizeActivate(*rest[:2]))
        elif not training and _dense_activate(layers[i]):
            take = 1
            out.append(DenseActivate(layers[i]))
        elif training and (take := _dense_run(layers[i:])) >= 2:
            out.append(DenseChain([DenseActivate(layer) for layer in layers[i : i + take]]))
        else:
            take = 1
            out.append(layers[i])
        i += take
    return out if training else _chained(out)


def _chained(steps: list) -> list:
    """Each run of two or more ConvNormalizeActivate steps in ``steps`` as one ConvChain, and
    of DenseActivate steps as one DenseChain."""
    chains = {ConvNormalizeActivate: ConvChain, DenseActivate: DenseChain}
    out: list = []
    for kind, run in itertools.groupby(steps, type):
        run = list(run)
        out += [chains[kind](run)] if kind in chains and len(run) > 1 else run
    return out
