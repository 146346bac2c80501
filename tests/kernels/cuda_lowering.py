"""Compile ``@cuda.jit`` kernels for a real GPU without one, up to LLVM IR.

The CUDA simulator runs kernels as Python and never type-checks them, so a kernel that would
not compile on hardware, or a float32 kernel that silently computes in float64 (a Python float
constant is a float64), passes every simulator test.  Numba's CUDA front end types and lowers
a kernel without a GPU or the CUDA toolkit; only the last step (NVVM, to PTX) needs them.
"""
import re

import pytest
from numba import types

import kernels as K


def lower_for_gpu(kernel, argtypes):
    """The LLVM IR of ``kernel`` for ``argtypes``; skips under the simulator."""
    if K.SIMULATOR:
        pytest.skip("the simulator replaces Numba's CUDA compiler")
    try:
        from numba.cuda.compiler import compile_cuda
    except ImportError as exc:  # an internal module: skip rather than fail if it moves
        pytest.skip(f"numba.cuda.compiler.compile_cuda not available: {exc}")
    result = compile_cuda(kernel.py_func, types.void, tuple(argtypes), cc=(8, 0))
    return result.library.get_llvm_str()


def float64_ops(ir):
    """Count of float64 arithmetic instructions and float64 libdevice calls in ``ir``."""
    return (len(re.findall(r"\b(?:fadd|fsub|fmul|fdiv)\b[^\n=]*\bdouble\b", ir))
            + len(re.findall(r"@\"?__nv_\w+\"?\(double", ir)))


def array(dtype, ndim=1):
    return types.Array(dtype, ndim, "C")
