"""The math of every layer, in NumPy alone: what a student reads.

Each op is a pair of plain functions, ``*_forward`` and ``*_backward``, whose docstrings give
the shapes and the formula in the lecture's words. A forward function returns its output and
a small cache (a NamedTuple) of what the backward pass needs; the backward function takes the
gradient of the loss with respect to the output and returns the gradients with respect to the
input and the weights. No threads, no state, no compiled code: put a breakpoint anywhere.

A reading path, in the lecture's order:

1. :mod:`cnnlab.nn.conv`: the patch times the filter (:func:`convolve_patch`, the slide's
   2.3), im2col and one matrix product for a whole layer, col2im on the way back;
   :mod:`cnnlab.nn.padding` says how "same" and strides set the output size, and
   :mod:`cnnlab.nn.windows` is the sliding window under both.
2. :mod:`cnnlab.nn.pooling`: max and average pooling.
3. :mod:`cnnlab.nn.activations` and :mod:`cnnlab.nn.dense`: the MLP's pieces.
4. :mod:`cnnlab.nn.batchnorm`: batch statistics, gamma and beta, moving averages.
5. :mod:`cnnlab.nn.dropout`, :mod:`cnnlab.nn.losses` (softmax cross-entropy) and
   :mod:`cnnlab.nn.optimizers` (SGD, Adam, gradient clipping).
6. :mod:`cnnlab.nn.winograd`: the same 3x3 convolution with 2.25x fewer multiplications.

:mod:`cnnlab.engine` holds the fast forms of the same functions; ``cnnlab.set_engine
("reference")`` makes every layer run these instead.
"""

from cnnlab.nn.activations import (
    leaky_relu,
    leaky_relu_backward,
    log_softmax,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    softmax,
    softmax_backward,
    tanh,
    tanh_backward,
)
from cnnlab.nn.batchnorm import (
    BatchNormCache,
    batchnorm_inference_backward,
    batchnorm_inference_forward,
    batchnorm_train_backward,
    batchnorm_train_forward,
    moving_average,
)
from cnnlab.nn.conv import (
    ConvCache,
    col2im,
    conv2d_backward,
    conv2d_forward,
    convolve_patch,
    im2col,
)
from cnnlab.nn.dense import DenseCache, dense_backward, dense_forward
from cnnlab.nn.dropout import dropout_backward, dropout_forward
from cnnlab.nn.losses import as_one_hot, crossentropy_from_logits, crossentropy_from_probs
from cnnlab.nn.optimizers import adam_step_size, adam_update, clip_gradient, sgd_update
from cnnlab.nn.pooling import (
    PoolCache,
    avg_pool_backward,
    avg_pool_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    max_pool_backward,
    max_pool_forward,
)
from cnnlab.nn.winograd import filter_transform, winograd_conv3x3

__all__ = [
    "BatchNormCache",
    "ConvCache",
    "DenseCache",
    "PoolCache",
    "adam_step_size",
    "adam_update",
    "as_one_hot",
    "avg_pool_backward",
    "avg_pool_forward",
    "batchnorm_inference_backward",
    "batchnorm_inference_forward",
    "batchnorm_train_backward",
    "batchnorm_train_forward",
    "clip_gradient",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "convolve_patch",
    "crossentropy_from_logits",
    "crossentropy_from_probs",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "filter_transform",
    "global_avg_pool_backward",
    "global_avg_pool_forward",
    "im2col",
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "max_pool_backward",
    "max_pool_forward",
    "moving_average",
    "relu",
    "relu_backward",
    "sgd_update",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "softmax_backward",
    "tanh",
    "tanh_backward",
    "winograd_conv3x3",
]
