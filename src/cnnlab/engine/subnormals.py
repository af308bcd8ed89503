"""Subnormal floats read and written as zeros on cnnlab's threads and during a model's steps,
as TensorFlow's CPU kernels do (so Keras's numbers are these).

A float32 below 1.2e-38 in magnitude (a subnormal, with fewer bits of precision) costs an x86
core a microcode assist of about a hundred cycles in each operation that reads or yields one,
against a fraction of a cycle for a vector lane. They come with training that fits its batch
(the lecture's overfitting): the softmax's probabilities tend to exactly 0 and 1, and the
gradients backward from them to subnormals. Then every product and Adam's update through a
layer's weights slows down: the book's MLP on a batch of 4 went from 1.4 to 9 ms a step after
about 700 steps, where these bits keep 1.4 (``benchmarks/README.md``).

On x86 the control register MXCSR has two bits for it: FTZ (a subnormal result is 0) and DAZ
(a subnormal operand is read as 0). :func:`flush_here` sets both for good (cnnlab's worker
threads, which run nothing else); :func:`flushed` sets them for a block on the calling thread
and restores what it had (a model's step: the user's own NumPy code after it is untouched).
Elsewhere (ARM's FPCR has such a bit too) nothing changes.
"""

from __future__ import annotations

import platform

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

X86 = platform.machine().lower() in {"x86_64", "amd64"}
FLUSH = (1 << 15) | (1 << 6)  # MXCSR's FTZ and DAZ


def _mxcsr(builder: ir.IRBuilder, name: str, slot) -> None:
    """A call of LLVM's ``llvm.x86.sse.{name}`` (stmxcsr or ldmxcsr) on the int32 at ``slot``."""
    pointer = ir.IntType(8).as_pointer()
    module = builder.module
    function = module.globals.get(f"llvm.x86.sse.{name}") or ir.Function(
        module, ir.FunctionType(ir.VoidType(), [pointer]), f"llvm.x86.sse.{name}"
    )
    builder.call(function, [builder.bitcast(slot, pointer)])


@intrinsic
def _controls(typingctx):
    """MXCSR's value."""

    def codegen(context, builder, signature, args):
        slot = builder.alloca(ir.IntType(32))
        _mxcsr(builder, "stmxcsr", slot)
        return builder.zext(builder.load(slot), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _set_controls(typingctx, value):
    """MXCSR set to ``value``."""

    def codegen(context, builder, signature, args):
        slot = builder.alloca(ir.IntType(32))
        builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.int64), codegen


@numba.njit(cache=True, nogil=True)
def _flush():
    """MXCSR with FTZ and DAZ set; the value it had."""
    before = _controls()
    _set_controls(before | FLUSH)
    return before


@numba.njit(cache=True, nogil=True)
def _restore(value):
    _set_controls(value)


def flush_here() -> None:
    """Subnormal floats as zeros on this thread from now on (x86; elsewhere nothing)."""
    if X86:
        _flush()


class flushed:  # noqa: N801 (a context manager, named as flush_here)
    """Subnormal floats as zeros on this thread inside the block, and this thread's setting
    as it was after it (x86; elsewhere nothing)."""

    __slots__ = ("_before",)

    def __enter__(self) -> None:
        self._before = _flush() if X86 else None

    def __exit__(self, *exc) -> None:
        if self._before is not None:
            _restore(self._before)
