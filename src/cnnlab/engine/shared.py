"""Memory that cnnlab's threads share, from compiled code: int64 flags stored and read
atomically with release and acquire ordering (what a thread wrote before it stored a flag is
seen by a thread that reads the flag), slices meeting on them, arrays given by their
addresses, as the parts posted to a thread carry them (:func:`cnnlab.engine.parallel.over_parts`),
and a copy between two addresses.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def load_acquire(typingctx, flags, index):
    """``flags[index]`` of an int64 array, read atomically, with acquire ordering: what
    another thread wrote before it stored this flag (with release ordering) is seen after."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        value = builder.load_atomic(builder.gep(array.data, [args[1]]), "acquire", 8)
        return value

    return types.int64(flags, types.intp), codegen


@intrinsic
def store_release(typingctx, flags, index, value):
    """``flags[index] = value`` for an int64 array, atomically, with release ordering."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(array.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return types.void(flags, types.intp, types.int64), codegen


@numba.njit(nogil=True, cache=True)
def meet(flags, index):
    """In compiled code, in slice ``index`` of
    :func:`cnnlab.engine.parallel.over_batch_meeting`: mark this slice arrived in ``flags`` (a
    row of the flags it was given), and wait, spinning, until every slice has arrived. What
    each slice wrote before it arrived is then seen by all. False if a slice failed instead."""
    store_release(flags, index, 1)
    for other in range(len(flags)):
        flag = load_acquire(flags, other)
        while flag == 0:
            flag = load_acquire(flags, other)
        if flag < 0:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def leave(flags, index):
    """Mark slice ``index`` failed in ``flags``: the others stop waiting for it (:func:`meet`)."""
    store_release(flags, index, -1)


@intrinsic
def _pointer(typingctx, address, dtype):
    """A pointer to values of ``dtype`` (a NumPy scalar type) at ``address`` (an int64)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return types.CPointer(dtype.instance_type)(types.int64, dtype), codegen


@numba.njit(nogil=True, cache=True)
def floats(address, count):
    """The ``count`` float32 values at ``address``, as a 1-D array (no copy)."""
    return numba.carray(_pointer(address, np.float32), count)


@numba.njit(nogil=True, cache=True)
def ints(address, rows, columns):
    """The ``rows x columns`` int64 values at ``address``, as a 2-D array (no copy)."""
    return numba.carray(_pointer(address, np.int64), (rows, columns))


@intrinsic
def copy(typingctx, destination, source, size):
    """``size`` bytes from address ``source`` to address ``destination`` (int64s; the two do
    not overlap): LLVM's ``memcpy``, which calls libc's for a size known only at run time."""

    def codegen(context, builder, signature, args):
        byte = ir.IntType(8).as_pointer()
        i64 = ir.IntType(64)
        function = builder.module.declare_intrinsic("llvm.memcpy", [byte, byte, i64])
        dst, src = (builder.inttoptr(v, byte) for v in args[:2])
        builder.call(function, [dst, src, args[2], ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64), codegen


@numba.njit(nogil=True, cache=True)
def doubles(address, count):
    """The ``count`` float64 values at ``address``, as a 1-D array (no copy)."""
    return numba.carray(_pointer(address, np.float64), count)
