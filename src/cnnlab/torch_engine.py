"""The torch engine: a model's training and inference steps run by PyTorch, on the model's
own weights.

``cnnlab.set_engine("torch")`` (or ``--engine torch``) makes ``fit``, ``evaluate`` and
``predict`` run each step's forward and backward pass in PyTorch, on the device of
``cnnlab.set_device`` (``--device``; :func:`resolve_device`). Each layer becomes the torch
module of :func:`module_for`, which keeps every Keras convention (see :mod:`cnnlab.torch`). On
the CPU its parameters and batch-norm buffers are *views* of the layer's NumPy arrays
(``torch.from_numpy``, permuted to torch's layouts), so the two never need copying: what torch
updates is what a checkpoint saves, the NaN guard checks and ``--resume`` puts back. On a GPU
they are copies, moved there before each step, the gradients and the batch-norm statistics
moved back after it: the arrays stay the model's state on every device, at the cost of two
copies of the weights per step. The images stay NHWC, so on the device the convolutions see
channels-last tensors. ``--precision bf16`` runs the forward pass under PyTorch's autocast
(convolutions and matrix products in bfloat16), the weights, the loss and the optimizer in
float32. The gradients come back to ``layer.grads`` and cnnlab's own optimizer steps
(:mod:`cnnlab.optimizers`: Keras's Adam and SGD, clipnorm), Dropout draws its masks from the
layer's generator as :mod:`cnnlab.nn` does, and the loss is Keras's (from the softmax's logits
where cnnlab's is): so both engines compute the same function, to rounding.

Everything else (the fit loop, callbacks, run directories, the pictures) is the same on every
engine; the rest of the ops run as on the "fast" engine.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes join one group (gloo for CPU tensors,
NCCL for CUDA ones) and split each batch of the fit loop, whose order every rank draws alike
from the same seed: rank ``r`` of ``R`` trains on examples ``r, r + R, ...`` of it. The graph
runs inside PyTorch's DistributedDataParallel, which averages the gradients over the ranks
during the backward pass; each rank's loss is weighted so that the step is the one a single
process takes on the whole batch, and the logged loss and metrics are the whole batch's. A
BatchNormalization with ``synchronized=True`` (``cnnlab train`` sets it on GPUs, and with
``--sync-batchnorm`` on the CPU) takes its statistics over the whole batch, every rank's
share summed by ``all_reduce``, on any device: then R processes equal one process to
rounding. Otherwise each rank normalizes with its own share's statistics, and approaches one
process. Evaluation and prediction run whole on every rank. With ``--device cuda`` each
process takes the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import atexit
import gc
import os
import weakref

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "the torch engine needs PyTorch, which is not installed; install it with: "
        'pip install "cnnlab[torch]"'
    ) from err

from cnnlab import layers as L
from cnnlab.nn.losses import EPSILON
from cnnlab.nn.padding import window_geometry


def _pads(x, window: tuple[int, int], strides: tuple[int, int], padding: str) -> tuple[int, ...]:
    """Keras's padding for the NHWC input ``x``, in F.pad's order (left, right, top, bottom).

    Computed from the size of each input, so the module follows Keras's rule for any image size.
    """
    size = (int(x.shape[1]), int(x.shape[2]))
    _, ((top, bottom), (left, right)) = window_geometry(size, window, strides, padding)
    return left, right, top, bottom


class _Conv2d(nn.Module):
    """Conv2D on NHWC input: explicit Keras padding, then an unpadded ``nn.Conv2d``."""

    def __init__(self, layer: L.Conv2D, dtype: torch.dtype):
        super().__init__()
        kh, kw, c, f = layer.weights["kernel"].shape
        self.conv = nn.Conv2d(c, f, (kh, kw), layer.strides, bias=layer.use_bias, dtype=dtype)
        self.window, self.strides, self.padding = (kh, kw), layer.strides, layer.padding
        self.activation = _activation(layer.activation.name, layer.activation.negative_slope)

    def logits(self, x):
        """The output before the activation."""
        pads = _pads(x, self.window, self.strides, self.padding)
        x = F.pad(x.permute(0, 3, 1, 2), pads)
        return self.conv(x).permute(0, 2, 3, 1)

    def forward(self, x):
        return self.activation(self.logits(x))


class _Pool2d(nn.Module):
    """Max or average pooling on NHWC input with Keras's padding and counting rules."""

    def __init__(self, layer, kind: str):
        super().__init__()
        self.kind, self.pool_size, self.strides = kind, layer.pool_size, layer.strides
        self.padding = layer.padding

    def forward(self, x):
        pads = _pads(x, self.pool_size, self.strides, self.padding)
        x = x.permute(0, 3, 1, 2)
        if self.kind == "max":
            y = F.max_pool2d(F.pad(x, pads, value=-torch.inf), self.pool_size, self.strides)
        else:
            # Sum over the window, divided by how many real (unpadded) values it covers.
            total = F.avg_pool2d(F.pad(x, pads), self.pool_size, self.strides)
            ones = F.pad(torch.ones_like(x[:1, :1]), pads)
            real = F.avg_pool2d(ones, self.pool_size, self.strides)
            y = total / real
        return y.permute(0, 2, 3, 1)


class _BatchNorm(nn.Module):
    """Batch normalization with Keras's rules, over the last axis of (N, F) or (N, H, W, C).

    Training: ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` with the batch mean and
    biased variance per channel, and ``moving = moving * momentum + batch * (1 - momentum)``.
    Inference: the same with ``moving_mean`` and ``moving_variance``.
    """

    def __init__(self, layer: L.BatchNormalization, dtype: torch.dtype):
        super().__init__()
        c = layer.weights["gamma"].shape[0]
        self.momentum, self.epsilon = layer.momentum, layer.epsilon
        self.synchronized = layer.synchronized
        self.gamma = nn.Parameter(torch.ones(c, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(c, dtype=dtype))
        self.register_buffer("moving_mean", torch.zeros(c, dtype=dtype))
        self.register_buffer("moving_variance", torch.ones(c, dtype=dtype))

    def forward(self, x):
        # PyTorch's fused batch norm, on x seen as (N, C, ...): a quarter of the time of the
        # formula written out, forward and backward (its reductions over N, H and W are slow).
        d = x.dim()
        to_first, back = (0, d - 1, *range(1, d - 1)), (0, *range(2, d), 1)
        n = x.numel() // x.shape[-1]
        if not self.training:
            y = F.batch_norm(
                x.permute(to_first), self.moving_mean, self.moving_variance,
                self.gamma, self.beta, False, 0.0, self.epsilon,
            )  # fmt: skip
            return y.permute(back)
        if self.synchronized and _processes() > 1:
            y, mean, var = _SynchronizedBatchNorm.apply(x, self.gamma, self.beta, self.epsilon)
        elif n < 2:  # PyTorch refuses one value per channel; Keras's variance is then 0
            mean, var = x.mean(dim=tuple(range(d - 1))), torch.zeros_like(self.gamma)
            y = self.gamma * (x - mean) / torch.sqrt(var + self.epsilon) + self.beta
        else:
            # With momentum 1 the "running" statistics it writes are this batch's: the mean,
            # and the variance with Bessel's correction, which Keras's rule does not use.
            mean = torch.zeros_like(self.moving_mean)  # (0 * NaN would be NaN)
            var = torch.zeros_like(self.moving_variance)
            y = F.batch_norm(
                x.permute(to_first), mean, var, self.gamma, self.beta, True, 1.0, self.epsilon
            ).permute(back)
            var = var * ((n - 1) / n)
        with torch.no_grad():
            self.moving_mean.mul_(self.momentum).add_(mean.detach() * (1 - self.momentum))
            self.moving_variance.mul_(self.momentum).add_(var.detach() * (1 - self.momentum))
        return y


class _SynchronizedBatchNorm(torch.autograd.Function):
    """Batch normalization of each rank's share ``x`` (..., C) of the batch with the statistics
    of the whole batch, over the ranks: the forward and backward pairs of the lecture's batch
    norm, each with one ``all_reduce`` of per-channel sums. Returns ``y`` and the batch's
    ``mean`` and ``var`` (for the moving averages).

    Forward, over the ``N`` rows of every rank: ``mean = sum(x) / N``, ``var = sum(x**2) / N -
    mean**2`` (each rank's sums from its own centred moments, added up in float64 so that the
    difference keeps float32's precision), ``xhat = (x - mean) / sqrt(var + epsilon)``,
    ``y = gamma * xhat + beta``. Backward, with the sums over every rank's rows:
    ``dx = gamma / sqrt(var + epsilon) * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N)``;
    ``dgamma`` and ``dbeta`` are this rank's sums, which DDP adds up with the others.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, epsilon: float):
        import torch.distributed as dist

        c = x.shape[-1]
        rows = x.reshape(-1, c)
        var, mean = torch.var_mean(rows, dim=0, correction=0)
        n = rows.shape[0]
        moments = torch.cat([n * mean.double(), n * (var.double() + mean.double() ** 2)])
        sums = torch.cat([moments, moments.new_tensor([n])])
        dist.all_reduce(sums)
        total = sums[-1]
        mean64 = sums[:c] / total
        mean = mean64.to(x.dtype)
        var = (sums[c : 2 * c] / total - mean64**2).clamp(min=0).to(x.dtype)
        invstd = torch.rsqrt(var + epsilon)
        xhat = (rows - mean) * invstd
        ctx.save_for_backward(xhat, gamma, invstd)
        ctx.total = total.item()
        ctx.mark_non_differentiable(mean, var)
        return (xhat * gamma + beta).reshape(x.shape), mean, var

    @staticmethod
    def backward(ctx, dy, _, __):
        import torch.distributed as dist

        xhat, gamma, invstd = ctx.saved_tensors
        c = xhat.shape[-1]
        dy_rows = dy.reshape(-1, c)
        dbeta, dgamma = dy_rows.sum(dim=0), (dy_rows * xhat).sum(dim=0)
        sums = torch.cat([dbeta, dgamma])
        dist.all_reduce(sums)
        dx = (gamma * invstd) * (dy_rows - sums[:c] / ctx.total - xhat * (sums[c:] / ctx.total))
        return dx.reshape(dy.shape), dgamma, dbeta, None


class _Dense(nn.Module):
    """Dense on the last axis, with its activation."""

    def __init__(self, layer: L.Dense, dtype: torch.dtype):
        super().__init__()
        n_in, units = layer.weights["kernel"].shape
        self.linear = nn.Linear(n_in, units, bias=layer.use_bias, dtype=dtype)
        self.activation = _activation(layer.activation.name, layer.activation.negative_slope)

    def logits(self, x):
        """The output before the activation."""
        return self.linear(x)

    def forward(self, x):
        return self.activation(self.linear(x))


def _activation(name: str, negative_slope: float) -> nn.Module:
    modules = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
    }
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "softmax":
        return nn.Softmax(dim=-1)
    return modules[name]()


class _Merge(nn.Module):
    """Add, Average or Concatenate (along Keras's axis of the NHWC input)."""

    def __init__(self, layer):
        super().__init__()
        self.kind = type(layer).__name__
        self.axis = getattr(layer, "axis", None)

    def forward(self, *xs):
        if self.kind == "Concatenate":
            return torch.cat(xs, dim=self.axis)
        total = sum(xs[1:], start=xs[0])
        return total / len(xs) if self.kind == "Average" else total


def module_for(layer, dtype: torch.dtype, own_dropout: bool = False) -> nn.Module:
    """The torch module computing what ``layer`` computes (weights not yet copied).

    ``own_dropout``: Dropout draws its masks from the layer's own generator, as
    :func:`cnnlab.nn.dropout.dropout_forward` does (the torch engine); else it is torch's.
    """
    if isinstance(layer, L.Conv2D):
        return _Conv2d(layer, dtype)
    if isinstance(layer, L.Dense):
        return _Dense(layer, dtype)
    if isinstance(layer, L.BatchNormalization):
        return _BatchNorm(layer, dtype)
    if isinstance(layer, L.MaxPooling2D):
        return _Pool2d(layer, "max")
    if isinstance(layer, L.AveragePooling2D):
        return _Pool2d(layer, "average")
    if isinstance(layer, L.GlobalAveragePooling2D):
        return _GlobalAveragePool()
    if isinstance(layer, L.Flatten):
        return nn.Flatten()  # the input is NHWC, so this is Keras's order
    if isinstance(layer, L.Dropout):
        return _Dropout(layer) if own_dropout else nn.Dropout(layer.rate)
    if isinstance(layer, (L.Add, L.Average, L.Concatenate)):
        return _Merge(layer)
    if isinstance(layer, L.Activation):  # also ReLU, LeakyReLU and Softmax
        return _activation(layer.activation.name, layer.activation.negative_slope)
    raise ValueError(
        f"to_torch cannot translate layer {layer.name!r} of type {type(layer).__name__}; "
        "supported: Conv2D, Dense, BatchNormalization, MaxPooling2D, AveragePooling2D, "
        "GlobalAveragePooling2D, Flatten, Dropout, Activation, ReLU, LeakyReLU, Softmax, "
        "Add, Average, Concatenate"
    )


class _GlobalAveragePool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(1, 2))


def weight_pairs(layer, module: nn.Module):
    """``(cnnlab name, torch tensor, axes to torch, axes back)`` for each weight of ``layer``."""
    if isinstance(module, _Conv2d):
        yield "kernel", module.conv.weight, (3, 2, 0, 1), (2, 3, 1, 0)
        if module.conv.bias is not None:
            yield "bias", module.conv.bias, None, None
    elif isinstance(module, _Dense):
        yield "kernel", module.linear.weight, (1, 0), (1, 0)
        if module.linear.bias is not None:
            yield "bias", module.linear.bias, None, None
    elif isinstance(module, _BatchNorm):
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            yield name, getattr(module, name), None, None


class _Dropout(nn.Module):
    """Dropout with the masks of :func:`cnnlab.nn.dropout.dropout_forward`, drawn from the
    layer's own generator: the same masks on every engine, and saved in checkpoints."""

    def __init__(self, layer: L.Dropout):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        rate = self.layer.rate
        if not self.training or rate == 0:
            return x
        dtype = np.float64 if x.dtype == torch.float64 else np.float32
        keep = self.layer.rng.random(tuple(x.shape), dtype=dtype)
        mask = (keep >= rate).astype(dtype) / dtype(1.0 - rate)
        return x * torch.from_numpy(mask).to(x.device)


# -- the steps -------------------------------------------------------------------------------
class _Graph(nn.Module):
    """The model as one torch module: each layer's module, run in the model's graph order (what
    DistributedDataParallel wraps)."""

    def __init__(self, model, modules: dict[str, nn.Module], dtype: torch.dtype, autocast):
        super().__init__()
        self.model, self.named, self.dtype, self.autocast = model, modules, dtype, autocast
        self.layers = nn.ModuleList(modules.values())  # registers their parameters

    def forward(self, xs: list, logits_for: set[int]):
        """The outputs for the input tensors ``xs``; for the outputs in ``logits_for`` (ids),
        also the logits before their softmax."""
        model = self.model
        values = {id(t): x for t, x in zip(model.inputs, xs, strict=True)}
        logits = {}
        with self.autocast():
            for node in model._nodes:
                module = self.named[node.layer.name]
                args = [values[id(t)] for t in node.inputs]
                if id(node.output) in logits_for:
                    z = module.logits(*args) if hasattr(module, "logits") else args[0]
                    logits[id(node.output)] = z = z.to(self.dtype)
                    values[id(node.output)] = torch.softmax(z, dim=-1)
                else:
                    values[id(node.output)] = module(*args)
        outputs = [values[id(t)].to(self.dtype) for t in model.outputs]
        return outputs, logits


class Runner:
    """Runs ``model``'s steps in PyTorch: :meth:`train_step`, :meth:`test_step`, :meth:`outputs`
    (the model calls them on the torch engine, with its checked arrays)."""

    def __init__(self, model, device: torch.device, precision: str):
        self.model = model
        self.layers = {node.layer.name: node.layer for node in model._nodes}
        dtype = torch.float32
        weights = model.get_weights()
        if weights:
            dtype = torch.from_numpy(np.zeros(0, weights[0].dtype)).dtype
        if precision == "bf16" and dtype != torch.float32:
            raise ValueError(f"precision 'bf16' needs a float32 model, got {dtype}")
        self.dtype, self.device, self.precision = dtype, device, precision
        # On the CPU the parameters are views of the layers' arrays; on a GPU, copies.
        self.shared = device.type == "cpu"
        self.modules = {
            name: module_for(layer, dtype, own_dropout=True) for name, layer in self.layers.items()
        }
        self.graph = _Graph(model, self.modules, dtype, self._autocast)
        self.rank, self.world_size = world()
        self._ddp = None  # (the trainable parameters it was made for, the wrapper)

    def _bind(self) -> list[tuple]:
        """Point every parameter and buffer at its layer's array (again, if an array was
        replaced), or on a device copy it there; returns ``(layer, name, parameter, axes
        back)`` for the trainable ones (the others get no gradient)."""
        trainable = []
        for name, layer in self.layers.items():
            for weight, tensor, to_torch, back in weight_pairs(layer, self.modules[name]):
                view = torch.from_numpy(layer.weights[weight])
                if to_torch is not None:
                    view = view.permute(to_torch)
                if not self.shared:
                    tensor.data = view.to(self.device, copy=True)
                elif tensor.data_ptr() != view.data_ptr() or tensor.stride() != view.stride():
                    tensor.data = view
                if isinstance(tensor, nn.Parameter):
                    tensor.requires_grad_(weight in layer.trainable_names)
                if weight in layer.trainable_names:
                    trainable.append((layer, weight, tensor, back))
        return trainable

    def _distributed(self, trainable: list[tuple]) -> nn.Module:
        """The graph in PyTorch's DistributedDataParallel, which averages the gradients over
        the ranks during the backward pass; made again if the trainable weights changed."""
        key = tuple(id(tensor) for _, _, tensor, _ in trainable)
        if self._ddp is None or self._ddp[0] != key:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            # The graph is the same every step. DDP copies rank 0's buffers (batch norm's
            # moving statistics) to every rank before each step: the same on every rank, as
            # they already are when batch norm is synchronized.
            wrapped = DistributedDataParallel(self.graph, device_ids=ids, static_graph=True)
            self._ddp = (key, wrapped)
            _distributed_runners.add(self)
        return self._ddp[1]

    def _buffers_back(self) -> None:
        """On a device: the batch-norm statistics it updated, back into the layers' arrays."""
        if self.shared:
            return
        for name, layer in self.layers.items():
            for weight, tensor, _, _ in weight_pairs(layer, self.modules[name]):
                if weight not in layer.trainable_names:
                    layer.weights[weight][...] = tensor.detach().cpu().numpy()

    def _tensors(self, arrays: list[np.ndarray]) -> list:
        dtype = torch.empty(0, dtype=self.dtype).numpy().dtype
        out = []
        for x in arrays:
            x = np.asarray(x, dtype=dtype)
            t = torch.from_numpy(x if x.flags.writeable else x.copy())
            out.append(t if self.shared else t.to(self.device))
        return out

    def _autocast(self):
        """bfloat16 for the convolutions and matrix products, with ``--precision bf16``."""
        on = self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _numpy(self, t) -> np.ndarray:
        return t.detach().to(self.dtype).cpu().numpy()

    def _forward(self, graph: nn.Module, xs: list[np.ndarray], training: bool, logits: bool):
        """``graph``'s outputs for ``xs``, and with ``logits`` the logits of the outputs whose
        loss is computed from them."""
        self.graph.train(training)
        model = self.model
        logits_for = set()
        if logits:
            logits_for = {
                id(t) for i, t in enumerate(model.outputs) if model._logits_layer(i) is not None
            }
        return graph(self._tensors(xs), logits_for)

    def _loss(self, ys: list[np.ndarray], preds: list, logits: dict):
        """Keras's loss (the sum over the outputs) as a tensor, and the logs' losses."""
        model, total, logs = self.model, 0.0, {"loss": 0.0}
        for i, (t, y, pred) in enumerate(zip(model.outputs, ys, preds, strict=True)):
            loss = model._loss_list[i]
            z = logits.get(id(t), pred if loss.from_logits else None)
            value = _crossentropy_from_logits(z, y) if z is not None else _crossentropy(pred, y)
            total = total + value
            logs["loss"] += value.item()
            if model._many_outputs:
                logs[f"{t.layer.name}_loss"] = value.item()
        return total, logs

    def train_step(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, float]:
        """Forward and backward in torch, then cnnlab's optimizer on the gradients; under
        torchrun, on this rank's share of the batch, the gradients averaged over the ranks by
        DistributedDataParallel."""
        model, n = self.model, len(xs[0])
        if self.world_size > 1:
            if n < self.world_size:
                raise ValueError(
                    f"a batch of {n} examples cannot be split over {self.world_size} processes: "
                    "use a batch size of at least the number of processes"
                )
            xs = [x[self.rank :: self.world_size] for x in xs]
            ys = [y[self.rank :: self.world_size] for y in ys]
        share = len(xs[0]) / n  # of the whole batch's mean loss
        trainable = self._bind()
        graph = self._distributed(trainable) if self.world_size > 1 else self.graph
        preds, logits = self._forward(graph, xs, True, logits=True)
        total, logs = self._loss(ys, preds, logits)
        for _, _, tensor, _ in trainable:
            tensor.grad = None
        # The whole batch's mean loss is the sum over the ranks of share * each rank's mean;
        # DDP divides the gradients' sum by the number of ranks, so scale by it.
        (total * (share * self.world_size) if self.world_size > 1 else total).backward()
        for layer, name, tensor, back in trainable:
            grad = tensor.grad
            if grad is None:  # a weight the loss does not reach
                grad = torch.zeros_like(tensor)
            layer.grads[name] = self._numpy(grad if back is None else grad.permute(back))
        self._buffers_back()
        weights, gradients = model.trainable_weights_and_grads()
        model.optimizer.apply(gradients, weights)
        results = model._results(logs, ys, [self._numpy(p) for p in preds])
        return _mean_over_ranks(results, share) if self.world_size > 1 else results

    def test_step(self, xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, float]:
        """Loss and metrics in inference mode."""
        self._bind()
        with torch.no_grad():
            preds, logits = self._forward(self.graph, xs, False, logits=True)
            _, logs = self._loss(ys, preds, logits)
        return self.model._results(logs, ys, [self._numpy(p) for p in preds])

    def outputs(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs for ``xs`` at inference (no gradients)."""
        self._bind()
        with torch.no_grad():
            preds, _ = self._forward(self.graph, xs, False, logits=False)
        return [self._numpy(p) for p in preds]


def world() -> tuple[int, int]:
    """``(rank, number of processes)``: ``(0, 1)`` alone; under ``torchrun``, this process's
    place in the group, which it joins on the first call: gloo for CPU tensors, and NCCL for
    CUDA ones when the torch engine's device is a GPU."""
    if _processes() <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from cnnlab import backend

        cuda = resolve_device(backend.get_device()).type == "cuda"
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        atexit.register(_leave_group)  # else gloo's threads abort the process at its exit
    return dist.get_rank(), dist.get_world_size()


def _processes() -> int:
    """How many processes train together: torchrun's ``WORLD_SIZE``, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def group_backend() -> str:
    """The process group's backend (after :func:`world`): "gloo", or "cpu:gloo,cuda:nccl"."""
    import torch.distributed as dist

    return str(dist.get_backend())


# The runners holding a DistributedDataParallel, which must be gone before the group is.
_distributed_runners: weakref.WeakSet[Runner] = weakref.WeakSet()


def _leave_group() -> None:
    """Leave the process group at exit: first the DDP wrappers (their reducer uses the group;
    destroyed after it, at the interpreter's teardown, it aborted the process now and then:
    "terminate called without an active exception"), then the group itself."""
    import torch.distributed as dist

    for runner in list(_distributed_runners):
        runner._ddp = None
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def _mean_over_ranks(results: dict[str, float], share: float) -> dict[str, float]:
    """The whole batch's means, from each rank's means over its ``share`` of the batch."""
    import torch.distributed as dist

    values = torch.tensor([v * share for v in results.values()], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(results, values.tolist(), strict=True))


def _one_hot(y: np.ndarray, k: int, like: torch.Tensor) -> torch.Tensor:
    """The labels as one-hot rows of ``like``'s dtype, on its device."""
    if y.ndim == 2:
        return torch.from_numpy(np.asarray(y)).to(like.device, like.dtype)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(like.device)
    return F.one_hot(labels, k).to(like.dtype)


def _crossentropy_from_logits(z, y: np.ndarray):
    """Softmax cross-entropy from the logits, the mean over the batch."""
    target = _one_hot(y, z.shape[-1], z)
    return -(target * torch.log_softmax(z, dim=-1)).sum() / z.shape[0]


def _crossentropy(p, y: np.ndarray):
    """Keras's cross-entropy of probabilities: each row divided by its sum, clipped to
    ``[EPSILON, 1 - EPSILON]``."""
    target = _one_hot(y, p.shape[-1], p)
    q = p / p.sum(dim=-1, keepdim=True)
    return -(target * torch.log(q.clamp(EPSILON, 1 - EPSILON))).sum() / p.shape[0]


def runner(model) -> Runner:
    """The model's runner on the device and precision set now, made on first use and kept with
    the model."""
    from cnnlab import backend

    device, precision = resolve_device(backend.get_device()), backend.get_precision()
    layers = tuple((id(n.layer), getattr(n.layer, "synchronized", None)) for n in model._nodes)
    key = (layers, device, precision)
    cached = getattr(model, "_torch_steps", None)
    if cached is None or cached[0] != key:
        cached = (key, Runner(model, device, precision))
        model._torch_steps = cached
    return cached[1]


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device name``: "auto" is CUDA (this process's GPU under
    torchrun), else Apple's MPS, else the CPU; a device PyTorch does not find is refused."""
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda"):
        if not cuda:
            raise ValueError(
                f"device {name!r}: PyTorch finds no CUDA device here (torch.cuda.is_available() "
                "is False); use 'cpu' or 'auto'"
            )
        if name == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process
            name = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: PyTorch finds {torch.cuda.device_count()} CUDA device(s)"
            )
    if name == "mps" and not mps:
        raise ValueError("device 'mps': PyTorch finds no Apple GPU (MPS) here; use 'cpu' or 'auto'")
    return torch.device(name)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
