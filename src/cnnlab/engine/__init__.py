"""The fast engine: the functions of :mod:`cnnlab.nn`, with fast forms in place of the ones a
training step spends its time in.

Each fast function has the name of the :mod:`cnnlab.nn` function it replaces, takes the same
arguments (a few add keyword-only ones, whose defaults give the plain function's behaviour)
and returns the same values and cache types, so that the two can be swapped one op at a time;
the tests check that they give the same numbers. What makes them fast lives beside them:

- :mod:`~cnnlab.engine.parallel`: each op's batch split over the cores, on cnnlab's own threads;
- :mod:`~cnnlab.engine.kernels`: compiled loops (numba) for the element-wise work and col2im;
- :mod:`~cnnlab.engine.blas`: NumPy's own BLAS, called from those loops;
- :mod:`~cnnlab.engine.scratch`: buffers kept from call to call, one pool per thread;
- :mod:`~cnnlab.engine.winograd`: 3x3 convolutions by F(4x4, 3x3), compiled;
- :mod:`~cnnlab.engine.conv_batchnorm`: a convolution, batch norm and its activation in
  training, as one op of the fused steps (:mod:`cnnlab.fusion`).

``cnnlab.set_engine("fast")`` (the default) makes every layer run these; the functions of
:mod:`cnnlab.nn` that have no fast form here run as they are.
"""

from cnnlab.engine.compiled import own_folder

with own_folder():  # the compiled loops' cache: a folder for these sources (compiled.py)
    from cnnlab.engine import kernels, parallel, parts, shared, subnormals, tiles, winograd  # noqa: F401
    from cnnlab.engine.activations import leaky_relu, leaky_relu_backward, relu, relu_backward
    from cnnlab.engine.batchnorm import (
        batchnorm_inference_forward,
        batchnorm_train_backward,
        batchnorm_train_forward,
    )
    from cnnlab.engine.conv import conv2d_backward, conv2d_forward
    from cnnlab.engine.dense import dense_backward, dense_forward
    from cnnlab.engine.losses import crossentropy_from_logits
    from cnnlab.engine.optimizers import adam_update
    from cnnlab.engine.parallel import one_blas_thread

# The functions that replace those of cnnlab.nn with the same names.
FAST = (
    adam_update,
    batchnorm_inference_forward,
    batchnorm_train_backward,
    batchnorm_train_forward,
    conv2d_backward,
    conv2d_forward,
    crossentropy_from_logits,
    dense_backward,
    dense_forward,
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
)

__all__ = [function.__name__ for function in FAST] + ["one_blas_thread"]
