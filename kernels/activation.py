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
    gelu tanh   x sigmoid(2z),                       s + x s (1 - s) 2z',  s = sigmoid(2z)
                z = sqrt(2/pi) (x + 0.044715 x**3)   (= 0.5 x (1 + tanh z), torch's 'tanh')
    silu        x sigmoid(x)                         s + x s (1 - s)
    mish        x tanh(softplus(x))                  t + x sigmoid(x) (1 - t**2)
    hardtanh    clamp(x, min_val, max_val)           1 if min_val < x < max_val else 0
    relu6       hardtanh with [0, 6]                 1 if 0 < x < 6 else 0
    prelu       x if x > 0 else w_c x                1 if x > 0 else w_c;
                (w_c: the slope of x's channel)      grad_w_c = sum of x grad_y where x <= 0

Definitions and conventions follow torch.nn.functional.  NaN inputs give NaN outputs (step
gives 0).  At a NaN input the piecewise backward passes follow torch's scalar and CUDA kernels:
relu, elu and hardtanh pass grad_y (their rule is "not (x <= 0)"), leaky_relu and prelu give
slope * grad_y.  (torch's vectorised CPU loops for elu and hardtanh disagree with its own
scalar loop at NaN; the scalar rule is the one written down.)

Each kernel sees the arrays flattened to 1-D; one loop iteration or one GPU thread writes one
output element, so results do not depend on the thread count.  On the CPU the
transcendental functions come from :mod:`kernels.fastmath` (vectorised float32
approximations within a few ulps, exact float64); on the GPU from CUDA's own math library.
silu, mish and the tanh GELU are built from fastmath's exp and sigmoid; measured float32
maxima over 2 million inputs (tests/kernels/test_activation.py::test_float32_accuracy): silu
2.98, mish 4.06 ulps, their derivatives 3.59 and 4.93 ulps of the size of their two terms; the
tanh GELU 2.46 (derivative 2.91) ulps times 1 + |2z|, from rounding its argument 2z.
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
           "gelu_forward", "gelu_backward", "silu_forward", "silu_backward",
           "mish_forward", "mish_backward", "hardtanh_forward", "hardtanh_backward",
           "relu6_forward", "relu6_backward", "prelu_forward", "prelu_backward"]

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
    # torch's rule, "not (x <= 0)": a NaN input passes its gradient on
    for i in prange(x.size):
        grad_x[i] = 0 if x[i] <= 0 else grad_y[i]


@cuda.jit(cache=True)
def _relu_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        grad_x[i] = x.dtype.type(0) if x[i] <= 0 else grad_y[i]


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
        grad_x[i] = g * alpha * fm.exp(v) if v <= 0 else g  # NaN passes g, as in torch


@cuda.jit(cache=True)
def _elu_backward_cuda(grad_x, grad_y, x, alpha):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        g = grad_y[i]
        grad_x[i] = g * alpha * math.exp(v) if v <= 0 else g


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



# ---------------------------------------------------------------- gelu, approximate='tanh'
# 0.5 x (1 + tanh(z)) = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x**3): no cancellation for
# negative x, where 1 + tanh(z) cancels.  x is clamped to +-30 inside 2z (sigmoid is exactly 0 or
# 1 there in both dtypes) so that x**3 cannot overflow into inf * 0 = NaN in the gradient.
_GT_A = 2 * math.sqrt(2 / math.pi)
_GT_B = _GT_A * 0.044715
_GT_B3 = 3 * _GT_B


@_cpu
def _gelu_tanh_forward_cpu(y, x):
    t = x.dtype.type
    for i in prange(x.size):
        v = x[i]
        c = t(30) if v > t(30) else (t(-30) if v < t(-30) else v)
        y[i] = v * fm.sigmoid(c * (t(_GT_A) + t(_GT_B) * (c * c)))


@cuda.jit(cache=True)
def _gelu_tanh_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        t = x.dtype.type
        v = x[i]
        c = t(30) if v > t(30) else (t(-30) if v < t(-30) else v)
        z2 = c * (t(_GT_A) + t(_GT_B) * (c * c))
        e = math.exp(-abs(z2))
        y[i] = v * ((t(1) if z2 >= 0 else e) / (t(1) + e))


@_cpu
def _gelu_tanh_backward_cpu(grad_x, grad_y, x):
    t = x.dtype.type
    for i in prange(x.size):
        v = x[i]
        c = t(30) if v > t(30) else (t(-30) if v < t(-30) else v)
        c2 = c * c
        z2 = c * (t(_GT_A) + t(_GT_B) * c2)
        # d/dx x s(2z) = s + x s (1 - s) d(2z)/dx
        grad_x[i] = grad_y[i] * (fm.sigmoid(z2)
                                 + (c * (t(_GT_A) + t(_GT_B3) * c2)) * fm.sigmoid_grad(z2))


@cuda.jit(cache=True)
def _gelu_tanh_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        t = x.dtype.type
        v = x[i]
        c = t(30) if v > t(30) else (t(-30) if v < t(-30) else v)
        c2 = c * c
        z2 = c * (t(_GT_A) + t(_GT_B) * c2)
        e = math.exp(-abs(z2))
        d = t(1) + e
        s = (t(1) if z2 >= 0 else e) / d
        grad_x[i] = grad_y[i] * (s + (c * (t(_GT_A) + t(_GT_B3) * c2)) * (e / (d * d)))


# ---------------------------------------------------------------- silu: x sigmoid(x)
@_cpu
def _silu_forward_cpu(y, x):
    for i in prange(x.size):
        v = x[i]
        y[i] = v * fm.sigmoid(v)


@cuda.jit(cache=True)
def _silu_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        one = x.dtype.type(1)
        v = x[i]
        e = math.exp(-abs(v))
        y[i] = v * ((one if v >= 0 else e) / (one + e))


@_cpu
def _silu_backward_cpu(grad_x, grad_y, x):
    for i in prange(x.size):
        v = x[i]
        grad_x[i] = grad_y[i] * (fm.sigmoid(v) + v * fm.sigmoid_grad(v))


@cuda.jit(cache=True)
def _silu_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        one = x.dtype.type(1)
        v = x[i]
        e = math.exp(-abs(v))
        d = one + e
        grad_x[i] = grad_y[i] * ((one if v >= 0 else e) / d + v * (e / (d * d)))


# ---------------------------------------------------------------- mish: x tanh(softplus(x))
# With u = e**-|x| (one exponential, never overflowing), tanh(log(1 + e**x)) is a ratio of sums
# of positive terms, as is 1 - tanh**2, so nothing cancels:
#     x >= 0:  t = (1 + 2u) / (1 + 2u + 2u**2),     1 - t = 2u**2 / (1 + 2u + 2u**2)
#     x <  0:  t = u (u + 2) / (u (u + 2) + 2),     1 - t = 2 / (u (u + 2) + 2)
# and mish'(x) = t + x sigmoid(x) (1 - t) (1 + t).
def _mish_rule(v, u, one):
    """(t, 1 - t, sigmoid(v)) for t = tanh(softplus(v)), from u = exp(-|v|); ``one`` sets the
    dtype of every constant (a bare 2.0 would make float32 code compute in float64)."""
    two = one + one
    pos = v >= one - one
    num = one + two * u if pos else u * (u + two)
    rest_num = two * u * u if pos else two
    den = num + rest_num
    return num / den, rest_num / den, (one if pos else u) / (one + u)


# One rule, compiled for each device; only the exponential differs (fastmath's on the CPU).
_mish_rule_cpu = njit(inline="always", error_model="numpy", fastmath={"contract"})(_mish_rule)
_mish_rule_cuda = cuda.jit(device=True, inline=True)(_mish_rule)


@_cpu
def _mish_forward_cpu(y, x):
    one = x.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        y[i] = v * _mish_rule_cpu(v, fm.exp(-abs(v)), one)[0]


@cuda.jit(cache=True)
def _mish_forward_cuda(y, x):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v * _mish_rule_cuda(v, math.exp(-abs(v)), x.dtype.type(1))[0]


@_cpu
def _mish_backward_cpu(grad_x, grad_y, x):
    one = x.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        t, rest, s = _mish_rule_cpu(v, fm.exp(-abs(v)), one)
        # mish' = t + v s (1 - t)(1 + t), with 1 + t = (1 - t) + 2t: sums of positive terms
        grad_x[i] = grad_y[i] * (t + v * s * (rest * (rest + (t + t))))


@cuda.jit(cache=True)
def _mish_backward_cuda(grad_x, grad_y, x):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        t, rest, s = _mish_rule_cuda(v, math.exp(-abs(v)), x.dtype.type(1))
        grad_x[i] = grad_y[i] * (t + v * s * (rest * (rest + (t + t))))


# ---------------------------------------------------------------- hardtanh (and relu6)
# Comparisons written so that NaN fails them: NaN flows through the forward, and the backward
# passes the gradient where "not (x <= min_val or x >= max_val)", torch's scalar and CUDA rule.
@_cpu
def _hardtanh_forward_cpu(y, x, lo, hi):
    for i in prange(x.size):
        v = x[i]
        y[i] = lo if v < lo else (hi if v > hi else v)


@cuda.jit(cache=True)
def _hardtanh_forward_cuda(y, x, lo, hi):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = lo if v < lo else (hi if v > hi else v)


@_cpu
def _hardtanh_backward_cpu(grad_x, grad_y, x, lo, hi):
    for i in prange(x.size):
        v = x[i]
        grad_x[i] = 0 if (v <= lo or v >= hi) else grad_y[i]


@cuda.jit(cache=True)
def _hardtanh_backward_cuda(grad_x, grad_y, x, lo, hi):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        grad_x[i] = x.dtype.type(0) if (v <= lo or v >= hi) else grad_y[i]


# ---------------------------------------------------------------- prelu
# x viewed as (outer, C, inner); element i belongs to channel (i // inner) % C.  C = 1 (one
# shared slope) is the same loop, with any row length.  The backward writes, beside grad_x, each element's share of
# grad_weight, x * grad_y where not x > 0; the launcher sums it per channel (a fixed-order
# reduction, so no atomics and the same result on every run).
# The CPU loops run over rows of ``inner`` elements that share one slope: a division per
# element would stop vectorisation (50x slower than torch on a LeNet activation, measured).
@_cpu
def _prelu_forward_cpu(y, x, w, channels, inner):
    for r in prange((x.size + inner - 1) // inner):
        slope = w[r % channels]
        stop = min(r * inner + inner, x.size)
        xr, yr = x[r * inner:stop], y[r * inner:stop]
        for i in range(xr.size):
            v = xr[i]
            yr[i] = v if v > 0 else slope * v


@cuda.jit(cache=True)
def _prelu_forward_cuda(y, x, w, channels, inner):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v if v > 0 else w[(i // inner) % channels] * v


@_cpu
def _prelu_backward_cpu(grad_x, grad_w_parts, grad_y, x, w, channels, inner):
    for r in prange((x.size + inner - 1) // inner):
        slope = w[r % channels]
        lo, hi = r * inner, min(r * inner + inner, x.size)
        xr, gr, gxr, pr = x[lo:hi], grad_y[lo:hi], grad_x[lo:hi], grad_w_parts[lo:hi]
        for i in range(xr.size):
            v = xr[i]
            g = gr[i]
            pos = v > 0
            gxr[i] = g if pos else slope * g
            pr[i] = 0 if pos else v * g


@cuda.jit(cache=True)
def _prelu_backward_cuda(grad_x, grad_w_parts, grad_y, x, w, channels, inner):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        g = grad_y[i]
        pos = v > 0
        grad_x[i] = g if pos else w[(i // inner) % channels] * g
        grad_w_parts[i] = x.dtype.type(0) if pos else v * g


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


_GELU_APPROXIMATIONS = ("none", "tanh")


def _approximate(approximate):
    if approximate not in _GELU_APPROXIMATIONS:
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return approximate


def gelu_forward(x, approximate="none"):
    """``x * Phi(x)`` (exact, erf), or with ``approximate='tanh'``
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))``."""
    if _approximate(approximate) == "tanh":
        return _unary(_gelu_tanh_forward_cpu, _gelu_tanh_forward_cuda, x)
    return _unary(_gelu_forward_cpu, _gelu_forward_cuda, x)


def gelu_backward(grad_y, x, approximate="none"):
    """``grad_y * gelu'(x)`` for the same ``approximate`` as the forward."""
    if _approximate(approximate) == "tanh":
        return _unary_backward(_gelu_tanh_backward_cpu, _gelu_tanh_backward_cuda, grad_y, x)
    return _unary_backward(_gelu_backward_cpu, _gelu_backward_cuda, grad_y, x)


def silu_forward(x):
    """``x * sigmoid(x)`` (also called swish)."""
    return _unary(_silu_forward_cpu, _silu_forward_cuda, x)


def silu_backward(grad_y, x):
    """``grad_y * (s + x s (1 - s))`` with ``s = sigmoid(x)``."""
    return _unary_backward(_silu_backward_cpu, _silu_backward_cuda, grad_y, x)


def mish_forward(x):
    """``x * tanh(softplus(x))``."""
    return _unary(_mish_forward_cpu, _mish_forward_cuda, x)


def mish_backward(grad_y, x):
    """``grad_y * (t + x sigmoid(x) (1 - t**2))`` with ``t = tanh(softplus(x))``."""
    return _unary_backward(_mish_backward_cpu, _mish_backward_cuda, grad_y, x)


def _bounds(min_val, max_val):
    lo = _number("min_val", min_val, infinite=True)
    hi = _number("max_val", max_val, infinite=True)
    if not lo < hi:
        raise ValueError(f"max_val: expected a number above min_val={min_val!r}, got "
                         f"{max_val!r}")
    return lo, hi


def hardtanh_forward(x, min_val=-1.0, max_val=1.0):
    """``x`` clamped to ``[min_val, max_val]`` (NaN stays NaN)."""
    return _unary(_hardtanh_forward_cpu, _hardtanh_forward_cuda, x, *_bounds(min_val, max_val))


def hardtanh_backward(grad_y, x, min_val=-1.0, max_val=1.0):
    """``grad_y`` where ``not (x <= min_val or x >= max_val)``, else 0."""
    return _unary_backward(_hardtanh_backward_cpu, _hardtanh_backward_cuda, grad_y, x,
                           *_bounds(min_val, max_val))


def relu6_forward(x):
    """``min(max(x, 0), 6)``: hardtanh on [0, 6], as torch defines it."""
    return hardtanh_forward(x, 0.0, 6.0)


def relu6_backward(grad_y, x):
    """``grad_y`` where ``0 < x < 6`` (or x is NaN), else 0."""
    return hardtanh_backward(grad_y, x, 0.0, 6.0)


_PRELU_ROW = 4096


def _prelu_geometry(x, weight):
    """(channels, inner) of ``x`` viewed as (outer, C, inner) for torch's weight rule: one
    slope for everything, or one per channel along axis 1 (axis 0 of a 1-D input)."""
    if weight.ndim != 1 or weight.size == 0:
        raise ValueError(f"weight: expected a 1-D array of slopes, got shape "
                         f"{tuple(weight.shape)}")
    if weight.size == 1:
        # one slope: rows of any length share it; this one gives the CPU loop long rows
        return 1, max(1, min(x.size, _PRELU_ROW))
    axis = 1 if x.ndim >= 2 else 0
    if x.ndim == 0 or x.shape[axis] != weight.size:
        raise ValueError(f"weight: {weight.size} slopes need an input with {weight.size} "
                         f"channels along axis {axis}, got x of shape {tuple(x.shape)}")
    return weight.size, math.prod(x.shape[axis + 1:])


def prelu_forward(x, weight):
    """``x if x > 0 else weight[c] * x``, ``c`` the channel (axis 1; axis 0 for 1-D ``x``)."""
    device = check_floats(x=x, weight=weight)
    channels, inner = _prelu_geometry(x, weight)
    xp = array_module(device)
    x, weight = contiguous(xp, x), contiguous(xp, weight)
    y = xp.empty_like(x)
    dispatch(device, _prelu_forward_cpu, _prelu_forward_cuda, x.size, y.reshape(-1),
             x.reshape(-1), weight, channels, inner)
    return y


def prelu_backward(grad_y, x, weight):
    """``(grad_x, grad_weight)``: ``grad_x = grad_y`` where ``x > 0``, else
    ``weight[c] * grad_y``; ``grad_weight[c]`` sums ``x * grad_y`` over channel c where not
    ``x > 0``."""
    device = check_floats(grad_y=grad_y, x=x, weight=weight)
    check_same_shape("grad_y", grad_y, "x", x)
    channels, inner = _prelu_geometry(x, weight)
    xp = array_module(device)
    grad_y, x, weight = contiguous(xp, grad_y), contiguous(xp, x), contiguous(xp, weight)
    grad_x = xp.empty_like(x)
    parts = xp.empty_like(x)
    dispatch(device, _prelu_backward_cpu, _prelu_backward_cuda, x.size, grad_x.reshape(-1),
             parts.reshape(-1), grad_y.reshape(-1), x.reshape(-1), weight, channels, inner)
    if channels == 1:
        # sum(axis=1) of one row, not .sum(): a full reduction of a device array would come
        # back as a host scalar
        grad_weight = parts.reshape(1, -1).sum(axis=1)
    else:
        grad_weight = parts.reshape(-1, channels, inner).sum(axis=(0, 2))
    return grad_x, grad_weight.astype(weight.dtype, copy=False)
