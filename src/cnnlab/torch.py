"""The bridge to PyTorch: the same model as a ``torch.nn.Module``, for GPUs and clusters.

    >>> module = cnnlab.torch.to_torch(model)        # same function, same NHWC input
    >>> ...train module on a GPU...
    >>> cnnlab.torch.load_torch_weights(model, module)

:func:`to_torch` copies the weights and translates every convention where the two libraries
differ, so that ``module(x)`` equals ``model(x)`` in training and in inference mode (dropout
aside, since its masks are random):

- layout: the module takes NHWC input like cnnlab and runs its convolutions in PyTorch's NCHW;
  a conv kernel ``(kh, kw, in, filters)`` becomes ``(filters, in, kh, kw)``, a dense kernel
  ``(in, units)`` becomes ``(units, in)``;
- "same" padding: Keras puts the odd row or column at the bottom/right, so the padding is
  applied explicitly (zeros for convolution, -inf for max pooling), never by ``padding=``;
- average pooling with "same" divides by the number of real values under each window;
- batch normalization: Keras's ``momentum`` is the weight of the *old* moving average (PyTorch
  uses ``1 - momentum``), and Keras updates ``moving_variance`` with the *biased* batch variance
  (PyTorch's running variance uses the unbiased one), so a small module keeps Keras's rule;
- Flatten: the feature maps are flattened in NHWC order, as Keras does.

torch is imported when this module is, and only then: the engine itself needs only NumPy
(and numba, which compiles its loops).
"""

from __future__ import annotations

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "cnnlab.torch needs PyTorch, which is not installed; "
        'install it with: pip install "cnnlab[torch]"'
    ) from err

from cnnlab import layers as L
from cnnlab.model import Sequential
from cnnlab.nn.padding import window_geometry

__all__ = ["load_torch_weights", "to_torch"]


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

    def forward(self, x):
        pads = _pads(x, self.window, self.strides, self.padding)
        x = F.pad(x.permute(0, 3, 1, 2), pads)
        return self.activation(self.conv(x).permute(0, 2, 3, 1))


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
        self.gamma = nn.Parameter(torch.ones(c, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(c, dtype=dtype))
        self.register_buffer("moving_mean", torch.zeros(c, dtype=dtype))
        self.register_buffer("moving_variance", torch.ones(c, dtype=dtype))

    def forward(self, x):
        if self.training:
            axes = tuple(range(x.dim() - 1))
            mean = x.mean(dim=axes)
            var = x.var(dim=axes, unbiased=False)
            with torch.no_grad():
                self.moving_mean.mul_(self.momentum).add_(mean.detach() * (1 - self.momentum))
                self.moving_variance.mul_(self.momentum).add_(var.detach() * (1 - self.momentum))
        else:
            mean, var = self.moving_mean, self.moving_variance
        return self.gamma * (x - mean) / torch.sqrt(var + self.epsilon) + self.beta


class _Dense(nn.Module):
    """Dense on the last axis, with its activation."""

    def __init__(self, layer: L.Dense, dtype: torch.dtype):
        super().__init__()
        n_in, units = layer.weights["kernel"].shape
        self.linear = nn.Linear(n_in, units, bias=layer.use_bias, dtype=dtype)
        self.activation = _activation(layer.activation.name, layer.activation.negative_slope)

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


class _Graph(nn.Module):
    """A functional model's graph: a module for each layer, by name, called in the graph's
    order on the tensors it names; a layer called twice is one module called twice."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleDict(
            {layer.name: _module(layer, dtype) for layer in _weighted_layers(model)}
        )
        keys = {id(t): k for k, t in enumerate(model.inputs)}
        self.calls = []
        for node in model._nodes:
            keys[id(node.output)] = len(keys)
            self.calls.append(
                (node.layer.name, [keys[id(t)] for t in node.inputs], keys[id(node.output)])
            )
        self.inputs = list(range(len(model.inputs)))
        self.outputs = [keys[id(t)] for t in model.outputs]
        self.many_outputs = model._many_outputs

    def forward(self, *xs):
        values = dict(zip(self.inputs, xs, strict=True))
        for name, inputs, output in self.calls:
            values[output] = self.layers[name](*(values[k] for k in inputs))
        outputs = [values[k] for k in self.outputs]
        return outputs if self.many_outputs else outputs[0]


def _weighted_layers(model) -> list:
    """The layers a module is made for: all but the inputs."""
    return [layer for layer in model.layers if not isinstance(layer, L.InputLayer)]


def _module(layer, dtype: torch.dtype) -> nn.Module:
    """The torch module computing what ``layer`` computes (weights not yet copied)."""
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
        return nn.Dropout(layer.rate)
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


# The weights of each translated layer: (cnnlab name, torch tensor getter, to torch, to cnnlab).
def _pairs(layer, module: nn.Module):
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


def _check_built(model) -> None:
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built: give it an Input or call it on data first"
        )


def to_torch(model) -> nn.Module:
    """A ``torch.nn.Module`` computing the same function as ``model`` on NHWC input.

    Args:
        model: a built :class:`cnnlab.Sequential` or functional :class:`cnnlab.Model`.

    Returns:
        A module in training mode (call ``.eval()`` for inference), in the dtype of the model's
        weights, holding copies of them: an ``nn.Sequential`` of one module per layer for a
        Sequential model, and for a graph a module that calls its layers' modules in the
        graph's order (``module(x1, x2)`` for two inputs). Input ``(N, H, W, C)``, output as
        ``model``'s. The "same" padding is worked out from each input's size, so a model
        without Flatten (one that ends in GlobalAveragePooling2D) also takes other image
        sizes, padded as Keras would.
    """
    _check_built(model)
    weights = model.get_weights()
    dtype = torch.from_numpy(np.zeros(0, weights[0].dtype if weights else np.float32)).dtype
    if isinstance(model, Sequential):
        module = nn.Sequential()
        for layer in model.layers:
            module.add_module(layer.name, _module(layer, dtype))
    else:
        module = _Graph(model, dtype)
    with torch.no_grad():
        for layer, sub in _submodules(model, module):
            for name, tensor, to_torch_axes, _ in _pairs(layer, sub):
                value = layer.weights[name]
                if to_torch_axes is not None:
                    value = value.transpose(to_torch_axes)
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module


def _submodules(model, module: nn.Module) -> list[tuple]:
    """``(layer, its module)`` for each layer of ``model`` in the module :func:`to_torch` made."""
    layers = _weighted_layers(model)
    subs = list(module.layers.values()) if isinstance(module, _Graph) else list(module.children())
    if len(subs) != len(layers):
        raise ValueError(
            f"Model '{model.name}' has {len(layers)} layers, but the module has "
            f"{len(subs)}: pass the module that to_torch made from this model"
        )
    return list(zip(layers, subs, strict=True))


def load_torch_weights(model, module: nn.Module) -> None:
    """Copy the weights of ``module`` (made by :func:`to_torch`, then trained) into ``model``.

    Every weight is copied, the moving statistics of batch normalization included, converted
    back to cnnlab's layouts and to the model's dtype.
    """
    _check_built(model)
    for layer, sub in _submodules(model, module):
        if type(sub) is not type(_module(layer, torch.float64)):
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) does not match the module's "
                f"{type(sub).__name__}: pass the module that to_torch made from this model"
            )
        for name, tensor, _, to_cnnlab_axes in _pairs(layer, sub):
            value = tensor.detach().cpu().numpy()
            if to_cnnlab_axes is not None:
                value = value.transpose(to_cnnlab_axes)
            target = layer.weights[name]
            if value.shape != target.shape:
                raise ValueError(
                    f"Layer {layer.name!r} expects {name} of shape {target.shape}, "
                    f"the module has {value.shape}"
                )
            target[...] = value
