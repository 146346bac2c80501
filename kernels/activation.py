"""Elementwise activations: forward and backward, any shape, float32 and float64.

    y = f(x)                     forward
    grad_x = grad_y * f'(x)      backward (from the saved input x)

    identity    x                                    1
    relu        max(x, 0)                            1 if x > 0 else 0 (relu'(0) = 0)
    leaky_relu  x if x > 0 else slope * x            1 if x > 0 else slope
    elu         x if x > 0 else alpha (e**x - 1)     1 if x > 0 else alpha e**x
    tanh        tanh(x)                              1 - tanh(x)**2
    sigmoid     s = 1 / (1 + e**-x)                  s (1 - s)
    softplus    log(1 + e**(beta x)) / beta,         sigmoid(beta x),
                x where beta x > threshold           1 where beta x > threshold
    step        1 if x > 0 else 0                    0
    gelu        x Phi(x), Phi the normal CDF         Phi(x) + x phi(x)

Definitions and conventions follow torch.nn.functional.  NaN inputs give NaN outputs (step
gives 0).  Each kernel sees the arrays flattened to 1-D; one loop iteration or one GPU thread
writes one output element, so results do not depend on the thread count.  On the CPU the
transcendental functions come from :mod:`kernels.fastmath` (vectorised float32
approximations within a few ulps, exact float64); on the GPU from CUDA's own math library.
"""
from __future__ import annotations

import math
import numbers

from numba import cuda, njit, prange

from . import fastmath as fm
from .checks import check_floats, check_same_shape, contiguous
from .device import array_module, dispatch

__all__ = ["identity_forward", "identity_backward", "relu_forward", "relu_backward",
           "leaky_relu_forward", "leaky_relu_backward", "elu_forward", "elu_backward",
           "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
           "softplus_forward", "softplus_backward", "step_forward", "step_backward",
           "gelu_forward", "gelu_backward"]

# error_model="numpy": a float division must not test for zero (the test stops vectorisation);
# fastmath={"contract"} lets LLVM fuse a * b + c into one FMA (one rounding instead of two).
_cpu = njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})

# CUDA kernels build their constants with x.dtype.type(...): a bare Python float is a float64
# and would turn float32 arithmetic into slow float64 arithmetic on the GPU.


# ---------------------------------------------------------------- relu: max(x, 0)
@_cpu
def _relu_forward_cpu(y, x):
    for i in prange(x.size):
        v = x[i]
        y[i] = 0 if v <= 0 else v  # not "v > 0": NaN must reach the output


@cuda.jit(cache=True)
def _relu_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = x.dtype.type(0) if v <= 0 else v


@_cpu
def _relu_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        grad_x[i] = grad_y[i] if x[i] > 0 else 0


@cuda.jit(cache=True)
def _relu_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        grad_x[i] = grad_y[i] if x[i] > 0 else x.dtype.type(0)


# ---------------------------------------------------------------- leaky_relu
@_cpu
def _leaky_relu_forward_cpu(y, x, slope):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else slope * v


@cuda.jit(cache=True)
def _leaky_relu_forward_cuda(y, x, slope):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v if v > 0 else slope * v


@_cpu
def _leaky_relu_backward_cpu(grad_x, grad_y, x, slope):
    for i in prange(x.size):
        g = grad_y[i]
        grad_x[i] = g if x[i] > 0 else slope * g


@cuda.jit(cache=True)
def _leaky_relu_backward_cuda(grad_x, grad_y, x, slope):
    i = cuda.grid(1)
    if i < x.size:
        g = grad_y[i]
        grad_x[i] = g if x[i] > 0 else slope * g


# ---------------------------------------------------------------- elu
@_cpu
def _elu_forward_cpu(y, x, alpha):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else alpha * fm.expm1_nonpos(v)


@cuda.jit(cache=True)
def _elu_forward_cuda(y, x, alpha):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v if v > 0 else alpha * math.expm1(v)


@_cpu
def _elu_backward_cpu(grad_x, grad_y, x, alpha):
    for i in prange(x.size):
        v = x[i]
        g = grad_y[i]
        grad_x[i] = g if v > 0 else g * alpha * fm.exp(v)


@cuda.jit(cache=True)
def _elu_backward_cuda(grad_x, grad_y, x, alpha):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        g = grad_y[i]
        grad_x[i] = g if v > 0 else g * alpha * math.exp(v)


# ---------------------------------------------------------------- tanh
@_cpu
def _tanh_forward_cpu(y, x):
    for i in prange(x.size):
        y[i] = fm.tanh(x[i])


@cuda.jit(cache=True)
def _tanh_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = math.tanh(x[i])


@_cpu
def _tanh_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        grad_x[i] = grad_y[i] * fm.tanh_grad(x[i])


@cuda.jit(cache=True)
def _tanh_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        # 1 - tanh**2 = 4e / (1 + e)**2 with e = exp(-2|x|): no cancellation near |tanh| = 1.
        one = x.dtype.type(1)
        e = math.exp(x.dtype.type(-2) * abs(x[i]))
        grad_x[i] = grad_y[i] * (x.dtype.type(4) * e / ((one + e) * (one + e)))


# ---------------------------------------------------------------- sigmoid
@_cpu
def _sigmoid_forward_cpu(y, x):
    for i in prange(x.size):
        y[i] = fm.sigmoid(x[i])


@cuda.jit(cache=True)
def _sigmoid_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        # exp of a non-positive number only, so it never overflows.
        one = x.dtype.type(1)
        e = math.exp(-abs(x[i]))
        y[i] = (one if x[i] >= 0 else e) / (one + e)


@_cpu
def _sigmoid_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        grad_x[i] = grad_y[i] * fm.sigmoid_grad(x[i])


@cuda.jit(cache=True)
def _sigmoid_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        one = x.dtype.type(1)
        e = math.exp(-abs(x[i]))
        grad_x[i] = grad_y[i] * (e / ((one + e) * (one + e)))


# ---------------------------------------------------------------- softplus
@_cpu
def _softplus_forward_cpu(y, x, beta, threshold):
    # A multiplication by 1/beta instead of a division: the division is the costliest vector
    # instruction here (at most half an ulp more rounding; none for beta = 1, the default).
    inv_beta = x.dtype.type(1) / beta
    for i in prange(x.size):
        v = x[i]
        z = beta * v
        y[i] = v if z > threshold else fm.softplus(z) * inv_beta


@cuda.jit(cache=True)
def _softplus_forward_cuda(y, x, beta, threshold):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        z = beta * v
        # max(z, 0) + log(1 + e**-|z|): the exponential never overflows.
        sp = (z if z > 0 else x.dtype.type(0)) + math.log1p(math.exp(-abs(z)))
        y[i] = v if z > threshold else sp / beta


@_cpu
def _softplus_backward_cpu(grad_x, grad_y, x, beta, threshold):
    for i in prange(x.size):
        z = beta * x[i]
        g = grad_y[i]
        grad_x[i] = g if z > threshold else g * fm.sigmoid(z)


@cuda.jit(cache=True)
def _softplus_backward_cuda(grad_x, grad_y, x, beta, threshold):
    i = cuda.grid(1)
    if i < x.size:
        z = beta * x[i]
        g = grad_y[i]
        one = x.dtype.type(1)
        e = math.exp(-abs(z))
        grad_x[i] = g if z > threshold else g * ((one if z >= 0 else e) / (one + e))


# ---------------------------------------------------------------- step
@_cpu
def _step_forward_cpu(y, x):
    for i in prange(x.size):
        y[i] = 1 if x[i] > 0 else 0


@cuda.jit(cache=True)
def _step_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = x.dtype.type(1) if x[i] > 0 else x.dtype.type(0)


# ---------------------------------------------------------------- gelu
@_cpu
def _gelu_forward_cpu(y, x):
    for i in prange(x.size):
        y[i] = fm.gelu(x[i])


@cuda.jit(cache=True)
def _gelu_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        # In float64 even for float32 data: rounding erfc's argument -x/sqrt(2) to float32
        # alone costs a relative error of about 2 (x/sqrt 2)**2 ulps, 1e-5 at x = -6.
        # erfc rather than 1 + erf: no cancellation for negative x.
        v = float(x[i])
        y[i] = 0.5 * v * math.erfc(-v * 0.7071067811865476)


@_cpu
def _gelu_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        grad_x[i] = grad_y[i] * fm.gelu_grad(x[i])


@cuda.jit(cache=True)
def _gelu_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        v = float(x[i])  # float64, as in the forward
        cdf = 0.5 * math.erfc(-v * 0.7071067811865476)
        pdf = math.exp(-0.5 * v * v) * 0.3989422804014327
        grad_x[i] = grad_y[i] * (cdf + v * pdf)


# ---------------------------------------------------------------- launchers
def _unary(cpu_kernel, cuda_kernel, x, *params):
    device = check_floats(x=x)
    xp = array_module(device)
    x = contiguous(xp, x)
    y = xp.empty_like(x)
    dispatch(device, cpu_kernel, cuda_kernel, x.size, y.reshape(-1), x.reshape(-1),
             *_typed(x, params))
    return y


def _unary_backward(cpu_kernel, cuda_kernel, grad_y, x, *params):
    device = check_floats(grad_y=grad_y, x=x)
    check_same_shape("grad_y", grad_y, "x", x)
    xp = array_module(device)
    grad_y, x = contiguous(xp, grad_y), contiguous(xp, x)
    grad_x = xp.empty_like(x)
    dispatch(device, cpu_kernel, cuda_kernel, x.size,
             grad_x.reshape(-1), grad_y.reshape(-1), x.reshape(-1), *_typed(x, params))
    return grad_x


def _typed(x, params):
    # Parameters in x's dtype: a Python float would make the float32 kernels compute in float64.
    return tuple(x.dtype.type(p) for p in params)


def _number(name, value, positive=False, infinite=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not infinite):
        raise ValueError(f"{name}: expected a {'' if infinite else 'finite '}number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def identity_forward(x):
    """A contiguous copy of ``x``."""
    device = check_floats(x=x)
    return array_module(device).array(x, copy=True, order="C")


def identity_backward(grad_y, x):
    """A contiguous copy of ``grad_y``."""
    device = check_floats(grad_y=grad_y, x=x)
    check_same_shape("grad_y", grad_y, "x", x)
    return array_module(device).array(grad_y, copy=True, order="C")


def relu_forward(x):
    """``max(x, 0)``."""
    return _unary(_relu_forward_cpu, _relu_forward_cuda, x)


def relu_backward(grad_y, x):
    """``grad_y * (x > 0)``."""
    return _unary_backward(_relu_backward_cpu, _relu_backward_cuda, grad_y, x)


def leaky_relu_forward(x, negative_slope=0.01):
    """``x if x > 0 else negative_slope * x``."""
    slope = _number("negative_slope", negative_slope)
    return _unary(_leaky_relu_forward_cpu, _leaky_relu_forward_cuda, x, slope)


def leaky_relu_backward(grad_y, x, negative_slope=0.01):
    """``grad_y if x > 0 else negative_slope * grad_y``."""
    slope = _number("negative_slope", negative_slope)
    return _unary_backward(_leaky_relu_backward_cpu, _leaky_relu_backward_cuda, grad_y, x,
                           slope)


def elu_forward(x, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    alpha = _number("alpha", alpha)
    return _unary(_elu_forward_cpu, _elu_forward_cuda, x, alpha)


def elu_backward(grad_y, x, alpha=1.0):
    """``grad_y if x > 0 else grad_y * alpha * exp(x)``."""
    alpha = _number("alpha", alpha)
    return _unary_backward(_elu_backward_cpu, _elu_backward_cuda, grad_y, x, alpha)


def tanh_forward(x):
    """``tanh(x)``."""
    return _unary(_tanh_forward_cpu, _tanh_forward_cuda, x)


def tanh_backward(grad_y, x):
    """``grad_y * (1 - tanh(x)**2)``."""
    return _unary_backward(_tanh_backward_cpu, _tanh_backward_cuda, grad_y, x)


def sigmoid_forward(x):
    """``1 / (1 + exp(-x))``, without overflow for any x."""
    return _unary(_sigmoid_forward_cpu, _sigmoid_forward_cuda, x)


def sigmoid_backward(grad_y, x):
    """``grad_y * s * (1 - s)`` with ``s = sigmoid(x)``."""
    return _unary_backward(_sigmoid_backward_cpu, _sigmoid_backward_cuda, grad_y, x)


def softplus_forward(x, beta=1.0, threshold=20.0):
    """``log(1 + exp(beta * x)) / beta``, or ``x`` where ``beta * x > threshold``."""
    beta = _number("beta", beta, positive=True)
    threshold = _number("threshold", threshold, infinite=True)
    return _unary(_softplus_forward_cpu, _softplus_forward_cuda, x, beta, threshold)


def softplus_backward(grad_y, x, beta=1.0, threshold=20.0):
    """``grad_y * sigmoid(beta * x)``, or ``grad_y`` where ``beta * x > threshold``."""
    beta = _number("beta", beta, positive=True)
    threshold = _number("threshold", threshold, infinite=True)
    return _unary_backward(_softplus_backward_cpu, _softplus_backward_cuda, grad_y, x,
                           beta, threshold)


def step_forward(x):
    """``1 if x > 0 else 0`` (the Heaviside step, 0 at 0)."""
    return _unary(_step_forward_cpu, _step_forward_cuda, x)


def step_backward(grad_y, x):
    """Zeros: the step is flat wherever it has a derivative."""
    device = check_floats(grad_y=grad_y, x=x)
    check_same_shape("grad_y", grad_y, "x", x)
    return array_module(device).zeros(x.shape, dtype=x.dtype)


def gelu_forward(x):
    """``x * Phi(x)``, the exact (erf) GELU."""
    return _unary(_gelu_forward_cpu, _gelu_forward_cuda, x)


def gelu_backward(grad_y, x):
    """``grad_y * (Phi(x) + x * phi(x))``."""
    return _unary_backward(_gelu_backward_cpu, _gelu_backward_cuda, grad_y, x)
