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
    from torch import nn
except ImportError as err:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "cnnlab.torch needs PyTorch, which is not installed; "
        'install it with: pip install "cnnlab[torch]"'
    ) from err

from cnnlab import layers as L
from cnnlab.model import Sequential
from cnnlab.torch_engine import module_for, weight_pairs

__all__ = ["load_torch_weights", "to_torch"]


class _Graph(nn.Module):
    """A functional model's graph: a module for each layer, by name, called in the graph's
    order on the tensors it names; a layer called twice is one module called twice."""

    def __init__(self, model, dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleDict(
            {layer.name: module_for(layer, dtype) for layer in _weighted_layers(model)}
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
            module.add_module(layer.name, module_for(layer, dtype))
    else:
        module = _Graph(model, dtype)
    with torch.no_grad():
        for layer, sub in _submodules(model, module):
            for name, tensor, to_torch_axes, _ in weight_pairs(layer, sub):
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
        if type(sub) is not type(module_for(layer, torch.float64)):
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) does not match the module's "
                f"{type(sub).__name__}: pass the module that to_torch made from this model"
            )
        for name, tensor, _, to_cnnlab_axes in weight_pairs(layer, sub):
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
