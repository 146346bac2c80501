"""Scalar math for the CPU kernels: fast float32 approximations, exact float64.

Each public function here (``exp``, ``expm1_nonpos``, ``tanh``, ``tanh_grad``, ``sigmoid``,
``sigmoid_grad``, ``softplus``, ``gelu``, ``gelu_grad``) is callable only from ``@njit``
code and picks its body from the argument's type:

* float64: the exact libm formula (``math.exp``, ``math.tanh``, ``math.erfc``, ...);
* float32: a branch-free approximation built from float32 adds, multiplies, a division or two
  and exponent-bit tricks, so that LLVM vectorises the loop around it.  Numba has no vector math
  library, and a libm call per element is 8-10x slower than a vectorised relu.

The float32 approximations (x in float32, compared with the float64 value of the same x):

    exp(x)      = 2**n * e**r,  x = n ln2 + r, |r| <= ln2/2; e**r by its Taylor series to r**7
    expm1(x)    = 2**n (e**r - 1) + (2**n - 1)                  (x <= 0, used by tanh and elu)
    tanh(x)     = -em / (2 + em),  em = expm1(-2|x|), sign of x
    sigmoid(x)  = (1 or e) / (1 + e),  e = exp(-|x|)
    softplus(x) = max(x, 0) + log1p(e),  log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3,
                  atanh by its series to s**15
    gelu(x)     = x Phi(x),  Phi from the normal tail Q(a) = phi(a) m(a), a = |x|, where
                  phi(a) = exp(-a*a/2) / sqrt(2 pi) with a*a split exactly into two parts, and
                  m(a), Mills' ratio, is a degree-4/degree-5 rational fitted for relative error
                  (5.6e-9 in float64 on [0, 14]; fitted for this file by linearised least
                  squares with Lawson reweighting)

Max errors measured on 2 million float32 inputs (tests/kernels/test_fastmath.py asserts
bounds a little above them): exp 0.84, expm1 1.11, sigmoid 2.25, tanh 2.48, softplus 3.31,
gelu 6.25 ulps of the exact value; sigmoid' 4.01 and tanh' 3.87 ulps; gelu' 4.28 ulps of the
size of its terms.  Inputs of any size are safe: no overflow, no NaN from finite inputs, and
NaN in gives NaN out.

Numba's on-disk cache tracks only the source file of each cached kernel: after editing this
file, delete ``kernels/__pycache__/*.nbi`` so that kernels using these functions recompile.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

__all__ = []  # used by the kernel files, not part of the package's API

# Inlined at Numba-IR level: LLVM declines to inline helpers this large, and a call in the
# loop body stops vectorisation.  The kernels that use them set error_model="numpy" (no
# zero-division branch) and fastmath={"contract"} (fused multiply-adds).
_INLINE = dict(inline="always", error_model="numpy", fastmath={"contract"})

F32 = np.float32
_LOG2E = F32(1.4426950408889634)
_LN2_HI = F32(0.693145751953125)       # 15 significant bits: n * _LN2_HI is exact
_LN2_LO = F32(1.4286068203094172e-06)  # ln 2 - _LN2_HI
_INV_SQRT_2PI_F32 = F32(0.3989422804014327)
_INV_SQRT_2PI = 0.3989422804014327
_INV_SQRT2 = 0.7071067811865476


def _by_dtype(name, fast32, exact64):
    """A scalar function for @njit code: ``fast32`` for float32, ``exact64`` for float64."""
    def scalar(v):
        raise TypeError(f"kernels.fastmath.{name} can only be called from @njit code")
    scalar.__name__ = scalar.__qualname__ = name

    @overload(scalar, inline="always")
    def _choose(v):
        if v == types.float32:
            return lambda v: fast32(v)
        if v == types.float64:
            return lambda v: exact64(v)
        return None
    return scalar


# ---------------------------------------------------------------- float32 building blocks
@njit(**_INLINE)
def _pow2_f32(k):
    """2**k for an integer k in [-126, 127], written straight into the exponent bits."""
    return np.int32((k + np.int32(127)) << np.int32(23)).view(np.float32)


@njit(**_INLINE)
def _exp_taylor_f32(r):
    """e**r - 1 for |r| <= ln2/2, to r**7 (the next term is below 6e-9 of the result)."""
    p = F32(1 / 5040) + r * F32(1 / 40320)
    p = F32(1 / 720) + r * p
    p = F32(1 / 120) + r * p
    p = F32(1 / 24) + r * p
    p = F32(1 / 6) + r * p
    p = F32(0.5) + r * p
    p = F32(1.0) + r * p
    return r * p


@njit(**_INLINE)
def _exp_hilo_f32(hi, lo):
    """exp(hi + lo) for a small correction lo, which keeps the bits hi + lo would round off."""
    # Comparisons written so that NaN fails them and flows through to the result.
    hi = F32(89.0) if hi > F32(89.0) else hi      # beyond: inf, as it should be
    hi = F32(-104.0) if hi < F32(-104.0) else hi  # beyond: 0
    n = np.floor(hi * _LOG2E + F32(0.5))
    n = n if n == n else F32(0.0)  # a NaN n would make the int conversion undefined
    r = (hi - n * _LN2_HI) - n * _LN2_LO + lo
    k = np.int32(n)
    # Two factors so that results below 2**-126 (subnormal) still come out right.
    k1 = np.int32(k >> np.int32(1))
    return (F32(1.0) + _exp_taylor_f32(r)) * _pow2_f32(k1) * _pow2_f32(k - k1)


@njit(**_INLINE)
def _exp_f32(x):
    return _exp_hilo_f32(x, F32(0.0))


@njit(**_INLINE)
def _expm1_nonpos_f32(x):
    x = F32(0.0) if x > F32(0.0) else x
    x = F32(-20.0) if x < F32(-20.0) else x  # expm1 rounds to -1 from -17.4 on
    n = np.floor(x * _LOG2E + F32(0.5))
    n = n if n == n else F32(0.0)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    s = _pow2_f32(np.int32(n))
    # No cancellation for small x: then n = 0 and the result is the series itself.
    return s * _exp_taylor_f32(r) + (s - F32(1.0))


@njit(**_INLINE)
def _log1p_unit_f32(u):
    """log(1 + u) for 0 <= u <= 1, as 2 atanh(s) with s = u / (2 + u) <= 1/3."""
    s = u / (F32(2.0) + u)
    w = s * s
    p = F32(1 / 13) + w * F32(1 / 15)
    p = F32(1 / 11) + w * p
    p = F32(1 / 9) + w * p
    p = F32(1 / 7) + w * p
    p = F32(1 / 5) + w * p
    p = F32(1 / 3) + w * p
    p = F32(1.0) + w * p
    return F32(2.0) * s * p


@njit(**_INLINE)
def _mills_f32(a):
    """Mills' ratio Q(a) / phi(a) of the standard normal for a >= 0."""
    num = F32(0.010220466181635857)
    num = F32(0.10119499266147614) + a * num
    num = F32(0.45735204219818115) + a * num
    num = F32(1.0960092544555664) + a * num
    num = F32(1.2533141374588013) + a * num
    den = F32(0.01022033765912056)
    den = F32(0.10120180249214172) + a * den
    den = F32(0.46741652488708496) + a * den
    den = F32(1.1992708444595337) + a * den
    den = F32(1.6723737716674805) + a * den
    den = F32(1.0) + a * den
    return num / den


@njit(**_INLINE)
def _gauss_f32(a):
    """exp(-a*a/2) for a >= 0, without the rounding error of a*a (up to 50 ulps at a = 10)."""
    # a = ah + al with ah holding 12 significant bits: ah*ah, ah*al and al*al are exact.
    ah = np.int32(np.float32(a).view(np.int32) & np.int32(-4096)).view(np.float32)
    al = a - ah
    return _exp_hilo_f32(-(ah * ah) * F32(0.5), -(ah * al + F32(0.5) * al * al))


# ---------------------------------------------------------------- the functions, float32
@njit(**_INLINE)
def _tanh_f32(x):
    a = abs(x)
    a = F32(9.1) if a > F32(9.1) else a  # tanh rounds to 1 from 9.01 on
    em = _expm1_nonpos_f32(F32(-2.0) * a)
    return math.copysign(-em / (F32(2.0) + em), x)


@njit(**_INLINE)
def _tanh_grad_f32(x):
    # 1 - tanh**2 written as 4e / (1 + e)**2: no cancellation where tanh is near 1.
    e = _exp_f32(F32(-2.0) * abs(x))
    d = F32(1.0) + e
    return F32(4.0) * e / (d * d)


@njit(**_INLINE)
def _sigmoid_f32(x):
    e = _exp_f32(-abs(x))
    return (F32(1.0) if x >= F32(0.0) else e) / (F32(1.0) + e)


@njit(**_INLINE)
def _sigmoid_grad_f32(x):
    e = _exp_f32(-abs(x))
    d = F32(1.0) + e
    return e / (d * d)


@njit(**_INLINE)
def _softplus_f32(x):
    return (x if x > F32(0.0) else F32(0.0)) + _log1p_unit_f32(_exp_f32(-abs(x)))


@njit(**_INLINE)
def _gelu_f32(x):
    a = min(abs(x), F32(20.0))
    xc = F32(20.0) if x > F32(20.0) else (F32(-20.0) if x < F32(-20.0) else x)  # keeps NaN
    # x * Q(|x|), with the exponential factor last so only the final product can be subnormal.
    t = (xc * _INV_SQRT_2PI_F32 * _mills_f32(a)) * _gauss_f32(a)
    return t if x < F32(0.0) else x - t


@njit(**_INLINE)
def _gelu_grad_f32(x):
    # Phi(x) + x phi(x) = phi(a) (m(a) + x)      for x < 0,
    #                   = 1 + phi(a) (x - m(a))  for x >= 0.
    a = min(abs(x), F32(20.0))
    xc = F32(20.0) if x > F32(20.0) else (F32(-20.0) if x < F32(-20.0) else x)
    m = _mills_f32(a)
    e = _gauss_f32(a)
    neg = (_INV_SQRT_2PI_F32 * (m + xc)) * e
    pos = F32(1.0) + (_INV_SQRT_2PI_F32 * (xc - m)) * e
    return neg if x < F32(0.0) else pos


# ---------------------------------------------------------------- the functions, float64
@njit(**_INLINE)
def _exp_f64(x):
    return math.exp(x)


@njit(**_INLINE)
def _expm1_f64(x):
    return math.expm1(x)


@njit(**_INLINE)
def _tanh_f64(x):
    return math.tanh(x)


@njit(**_INLINE)
def _tanh_grad_f64(x):
    e = math.exp(-2.0 * abs(x))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


@njit(**_INLINE)
def _sigmoid_f64(x):
    e = math.exp(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@njit(**_INLINE)
def _sigmoid_grad_f64(x):
    e = math.exp(-abs(x))
    return e / ((1.0 + e) * (1.0 + e))


@njit(**_INLINE)
def _softplus_f64(x):
    return (x if x > 0.0 else 0.0) + math.log1p(math.exp(-abs(x)))


@njit(**_INLINE)
def _gelu_f64(x):
    # Phi(x) = erfc(-x / sqrt 2) / 2 keeps full relative accuracy for negative x,
    # where 1 + erf(x / sqrt 2) cancels.
    return 0.5 * x * math.erfc(-x * _INV_SQRT2)


@njit(**_INLINE)
def _gelu_grad_f64(x):
    return 0.5 * math.erfc(-x * _INV_SQRT2) + x * math.exp(-0.5 * x * x) * _INV_SQRT_2PI


exp = _by_dtype("exp", _exp_f32, _exp_f64)
expm1_nonpos = _by_dtype("expm1_nonpos", _expm1_nonpos_f32, _expm1_f64)  # x <= 0 only
tanh = _by_dtype("tanh", _tanh_f32, _tanh_f64)
tanh_grad = _by_dtype("tanh_grad", _tanh_grad_f32, _tanh_grad_f64)      # 1 - tanh(x)**2
sigmoid = _by_dtype("sigmoid", _sigmoid_f32, _sigmoid_f64)
sigmoid_grad = _by_dtype("sigmoid_grad", _sigmoid_grad_f32, _sigmoid_grad_f64)
softplus = _by_dtype("softplus", _softplus_f32, _softplus_f64)         # log(1 + e**x)
gelu = _by_dtype("gelu", _gelu_f32, _gelu_f64)                         # x Phi(x)
gelu_grad = _by_dtype("gelu_grad", _gelu_grad_f32, _gelu_grad_f64)     # Phi(x) + x phi(x)
