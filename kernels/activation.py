"""Elementwise activations: forward and backward, any shape, float32 and float64.

    y = f(x)                     forward
    grad_x = grad_y * f'(x)      backward (from the saved input x)

Each kernel sees the arrays flattened to 1-D; one loop iteration or one GPU thread writes
one output element, so results do not depend on the thread count.
"""
from __future__ import annotations

from numba import cuda, njit, prange

from .checks import check_floats, check_same_shape, contiguous
from .device import array_module, dispatch

__all__ = ["relu_forward", "relu_backward"]


# ---------------------------------------------------------------- relu: max(x, 0); relu'(0) = 0
@njit(parallel=True, cache=True)
def _relu_forward_cpu(y, x):
    for i in prange(x.size):
        y[i] = x[i] if x[i] > 0 else 0.0


@cuda.jit(cache=True)
def _relu_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = x[i] if x[i] > 0 else 0.0


@njit(parallel=True, cache=True)
def _relu_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        grad_x[i] = grad_y[i] if x[i] > 0 else 0.0


@cuda.jit(cache=True)
def _relu_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        grad_x[i] = grad_y[i] if x[i] > 0 else 0.0


# ---------------------------------------------------------------- launchers
def _unary(cpu_kernel, cuda_kernel, x, *params):
    device = check_floats(x=x)
    xp = array_module(device)
    x = contiguous(xp, x)
    y = xp.empty_like(x)
    dispatch(device, cpu_kernel, cuda_kernel, x.size, y.reshape(-1), x.reshape(-1), *params)
    return y


def _unary_backward(cpu_kernel, cuda_kernel, grad_y, x, *params):
    device = check_floats(grad_y=grad_y, x=x)
    check_same_shape("grad_y", grad_y, "x", x)
    xp = array_module(device)
    grad_y, x = contiguous(xp, grad_y), contiguous(xp, x)
    grad_x = xp.empty_like(x)
    dispatch(device, cpu_kernel, cuda_kernel, x.size,
             grad_x.reshape(-1), grad_y.reshape(-1), x.reshape(-1), *params)
    return grad_x


def relu_forward(x):
    """``max(x, 0)``."""
    return _unary(_relu_forward_cpu, _relu_forward_cuda, x)


def relu_backward(grad_y, x):
    """``grad_y * (x > 0)``."""
    return _unary_backward(_relu_backward_cpu, _relu_backward_cuda, grad_y, x)
