"""Softmax and log-softmax over the last axis of a 2-D array, forward and backward.

    x, y, grad_y, grad_x: (N, K), float32 or float64; each row is one distribution.

    softmax       y_k = exp(x_k - m) / s,        m = max_j x_j,  s = sum_j exp(x_j - m)
                  grad_x = y * (grad_y - sum_k grad_y_k y_k)
    log_softmax   y_k = (x_k - m) - log(s)
                  grad_x = grad_y - exp(y) * sum_k grad_y_k

The backward passes take the forward's output ``y``.  Shifting by the row maximum keeps every
exponential in (0, 1], so nothing overflows, and the maximum's own term is exactly 1:
log_softmax([1000, 0, -1000]) is exactly [0, -1000, -2000].

CPU: one loop iteration per row (``prange``).  CUDA: the row's statistics (m and s, or the dot
product) first, then one thread per element writes the output from them.  Narrow rows
(K < 64, class scores) take one thread per row for the statistics.  Wide rows take a block
per row (:func:`row_block`): thread j of block n reduces ``x[n, j::B]`` (consecutive threads
read consecutive elements, so the loads are coalesced) into partials, and a second kernel
combines each row's B partials in order.  Every output element is written once, and every
sum has a fixed order, so results are deterministic.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, njit, prange

from . import fastmath as fm
from .checks import check_float, check_floats, check_same_shape, contiguous
from .device import CPU, array_module, dispatch, launch

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward"]

# Same flags as kernels/activation.py: no zero-division test, fused multiply-adds.
_cpu = njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})


# ---------------------------------------------------------------- row helpers (CPU)
# The row sums accumulate in float64 whatever the input's dtype, and return float64.  In
# float32 a sum of K terms carries up to K/lanes + log2(lanes) roundings, and log(s) turns the
# absolute error of s (ulps of 1, since the maximum's term is exactly 1) into a relative error
# of log_softmax's largest entry -log(s), which is small: with float32 sums that entry was off
# by 5e-5 relative, and by a different amount on AVX2 and AVX-512 (8 or 16 lanes, another
# summation order).  A float64 sum is exact to well below a float32 ulp for any row length
# that fits in memory, so every float32 result is a few ulps of its own size on any machine.
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _row_sum(a):
    # reassoc lets LLVM keep several partial sums in vector lanes: a fixed order, decided at
    # compile time, so still deterministic.  Kept out of the kernels so the flag stays here.
    s = 0.0
    for k in range(a.size):
        s += a[k]
    return s


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _row_dot(a, b):
    s = 0.0
    for k in range(a.size):
        s += np.float64(a[k]) * b[k]
    return s


@njit(cache=True)
def _row_max(a):
    # NaN may be skipped here; it still reaches every output through exp(NaN - m) and s.
    m = a[0]
    for k in range(1, a.size):
        v = a[k]
        m = v if v > m else m
    return m


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _exp_shifted(out, x, m):
    """out = exp(x - m); returns the row's maximum-shifted sum of exponentials, in float64."""
    for k in range(x.size):
        out[k] = fm.exp(x[k] - m)
    return _row_sum(out)


# ---------------------------------------------------------------- forward
@_cpu
def _softmax_forward_cpu(y, x):
    for n in prange(x.shape[0]):
        m = _row_max(x[n])
        s = x.dtype.type(_exp_shifted(y[n], x[n], m))
        for k in range(x.shape[1]):
            y[n, k] = y[n, k] / s


@_cpu
def _log_softmax_forward_cpu(y, x):
    for n in prange(x.shape[0]):
        m = _row_max(x[n])
        # (x - m) <= 0 and log(s) >= 0: the subtraction adds magnitudes, nothing cancels.
        log_s = x.dtype.type(math.log(_exp_shifted(y[n], x[n], m)))
        for k in range(x.shape[1]):
            y[n, k] = (x[n, k] - m) - log_s


@cuda.jit(cache=True)
def _row_max_sum_cuda(m_out, s_out, x):
    n = cuda.grid(1)
    if n < x.shape[0]:
        m = x[n, 0]
        for k in range(1, x.shape[1]):
            v = x[n, k]
            m = v if v > m else m
        s = x.dtype.type(0)
        for k in range(x.shape[1]):
            s += math.exp(x[n, k] - m)
        m_out[n] = m
        s_out[n] = s


@cuda.jit(cache=True)
def _softmax_forward_cuda(y, x, m, s):
    i = cuda.grid(1)
    if i < x.size:
        n = i // x.shape[1]
        k = i - n * x.shape[1]
        y[n, k] = math.exp(x[n, k] - m[n]) / s[n]


@cuda.jit(cache=True)
def _log_softmax_forward_cuda(y, x, m, s):
    i = cuda.grid(1)
    if i < x.size:
        n = i // x.shape[1]
        k = i - n * x.shape[1]
        y[n, k] = (x[n, k] - m[n]) - math.log(s[n])


# ---------------------------------------------------------------- wide rows: a block per row
# Rows at least this wide get a block of threads each; narrower ones one thread each.
WIDE_ROW = 64


def row_block(K):
    """Threads per row's block: a warp per 256 elements, 1 to 8 warps (so each thread has at
    least two elements, and every thread at least one, as K >= WIDE_ROW >= 32)."""
    return 32 * min(8, max(1, K // 256))


@cuda.jit(cache=True)
def _row_stats_partials_cuda(pm, ps, pt, x):
    # Thread j of block n over x[n, j::B]: its maximum pm, sum of exp(x - pm) ps, and sum of
    # (x - pm) pt (cross-entropy's label smoothing needs it).
    n = cuda.blockIdx.x
    j = cuda.threadIdx.x
    B = pm.shape[1]
    K = x.shape[1]
    if n < x.shape[0] and j < B:
        m = x[n, j]
        for k in range(j + B, K, B):
            v = x[n, k]
            m = v if v > m else m
        s = x.dtype.type(0)
        t = x.dtype.type(0)
        for k in range(j, K, B):
            d = x[n, k] - m
            s += math.exp(d)
            t += d
        pm[n, j] = m
        ps[n, j] = s
        pt[n, j] = t


@cuda.jit(device=True, inline=True)
def _combine_max_sum_cuda(pm, ps, n):
    # The row's maximum M and sum of exp(x - M) from its partials, in a fixed order.
    B = pm.shape[1]
    m = pm[n, 0]
    for j in range(1, B):
        v = pm[n, j]
        m = v if v > m else m
    s = ps.dtype.type(0)
    for j in range(B):
        s += ps[n, j] * math.exp(pm[n, j] - m)
    return m, s


@cuda.jit(cache=True)
def _row_max_sum_finish_cuda(m_out, s_out, pm, ps):
    n = cuda.grid(1)
    if n < pm.shape[0]:
        m, s = _combine_max_sum_cuda(pm, ps, n)
        m_out[n] = m
        s_out[n] = s


@cuda.jit(cache=True)
def _row_dot_partials_cuda(part, a, b):
    # Thread j of block n: sum of a[n, k] * b[n, k] over k = j, j + B, ...
    n = cuda.blockIdx.x
    j = cuda.threadIdx.x
    B = part.shape[1]
    if n < a.shape[0] and j < B:
        acc = a.dtype.type(0)
        for k in range(j, a.shape[1], B):
            acc += a[n, k] * b[n, k]
        part[n, j] = acc


@cuda.jit(cache=True)
def _row_sum_partials_cuda(part, a):
    n = cuda.blockIdx.x
    j = cuda.threadIdx.x
    B = part.shape[1]
    if n < a.shape[0] and j < B:
        acc = a.dtype.type(0)
        for k in range(j, a.shape[1], B):
            acc += a[n, k]
        part[n, j] = acc


def row_stats_partials(xp, x):
    """``(pm, ps, pt)`` (N, B) partials of wide rows, one block per row."""
    N, K = x.shape
    B = row_block(K)
    pm = xp.empty((N, B), dtype=x.dtype)
    ps = xp.empty((N, B), dtype=x.dtype)
    pt = xp.empty((N, B), dtype=x.dtype)
    launch(_row_stats_partials_cuda, N * B, pm, ps, pt, x, block=B)
    return pm, ps, pt


def _row_reduce_cuda(xp, partials_kernel, out, *arrays):
    """out[n] = the row reduction of ``partials_kernel`` over ``arrays`` (N, K), on the GPU."""
    N, K = arrays[0].shape
    if K < WIDE_ROW:
        launch(_row_dot_cuda if len(arrays) == 2 else _row_sum_cuda, N, out, *arrays)
        return
    B = row_block(K)
    part = xp.empty((N, B), dtype=out.dtype)
    launch(partials_kernel, N * B, part, *arrays, block=B)
    launch(_row_sum_cuda, N, out, part)


# ---------------------------------------------------------------- backward
@_cpu
def _softmax_backward_cpu(grad_x, grad_y, y):
    for n in prange(y.shape[0]):
        dot = y.dtype.type(_row_dot(grad_y[n], y[n]))
        for k in range(y.shape[1]):
            grad_x[n, k] = y[n, k] * (grad_y[n, k] - dot)


@_cpu
def _log_softmax_backward_cpu(grad_x, grad_y, y):
    for n in prange(y.shape[0]):
        total = y.dtype.type(_row_sum(grad_y[n]))
        for k in range(y.shape[1]):
            grad_x[n, k] = grad_y[n, k] - fm.exp(y[n, k]) * total


@cuda.jit(cache=True)
def _row_dot_cuda(out, a, b):
    n = cuda.grid(1)
    if n < a.shape[0]:
        s = a.dtype.type(0)
        for k in range(a.shape[1]):
            s += a[n, k] * b[n, k]
        out[n] = s


@cuda.jit(cache=True)
def _row_sum_cuda(out, a):
    n = cuda.grid(1)
    if n < a.shape[0]:
        s = a.dtype.type(0)
        for k in range(a.shape[1]):
            s += a[n, k]
        out[n] = s


@cuda.jit(cache=True)
def _softmax_backward_cuda(grad_x, grad_y, y, dot):
    i = cuda.grid(1)
    if i < y.size:
        n = i // y.shape[1]
        k = i - n * y.shape[1]
        grad_x[n, k] = y[n, k] * (grad_y[n, k] - dot[n])


@cuda.jit(cache=True)
def _log_softmax_backward_cuda(grad_x, grad_y, y, total):
    i = cuda.grid(1)
    if i < y.size:
        n = i // y.shape[1]
        k = i - n * y.shape[1]
        grad_x[n, k] = grad_y[n, k] - math.exp(y[n, k]) * total[n]


# ---------------------------------------------------------------- launchers
def _forward(cpu_kernel, cuda_kernel, x):
    check_float("x", x, ndim=2)
    device = check_floats(x=x)
    xp = array_module(device)
    x = contiguous(xp, x)
    y = xp.empty_like(x)
    if x.size == 0:
        return y
    if device == CPU:
        dispatch(CPU, cpu_kernel, None, x.size, y, x)  # the same small-work rule as the rest
    else:
        m = xp.empty(x.shape[0], dtype=x.dtype)
        s = xp.empty(x.shape[0], dtype=x.dtype)
        if x.shape[1] < WIDE_ROW:
            launch(_row_max_sum_cuda, x.shape[0], m, s, x)
        else:
            pm, ps, _ = row_stats_partials(xp, x)
            launch(_row_max_sum_finish_cuda, x.shape[0], m, s, pm, ps)
        launch(cuda_kernel, x.size, y, x, m, s)
    return y


def _prepare_backward(grad_y, y):
    check_float("grad_y", grad_y, ndim=2)
    check_float("y", y, ndim=2)
    device = check_floats(grad_y=grad_y, y=y)
    check_same_shape("grad_y", grad_y, "y", y)
    xp = array_module(device)
    grad_y, y = contiguous(xp, grad_y), contiguous(xp, y)
    return device, xp, grad_y, y, xp.empty_like(y)


def softmax_forward(x):
    """Softmax of each row of ``x`` (N, K)."""
    return _forward(_softmax_forward_cpu, _softmax_forward_cuda, x)


def softmax_backward(grad_y, y):
    """``y * (grad_y - rowsum(grad_y * y))`` from the forward's output ``y``."""
    device, xp, grad_y, y, grad_x = _prepare_backward(grad_y, y)
    if y.size == 0:
        return grad_x
    if device == CPU:
        dispatch(CPU, _softmax_backward_cpu, None, y.size, grad_x, grad_y, y)
    else:
        dot = xp.empty(y.shape[0], dtype=y.dtype)
        _row_reduce_cuda(xp, _row_dot_partials_cuda, dot, grad_y, y)
        launch(_softmax_backward_cuda, y.size, grad_x, grad_y, y, dot)
    return grad_x


def log_softmax_forward(x):
    """Log-softmax of each row of ``x`` (N, K)."""
    return _forward(_log_softmax_forward_cpu, _log_softmax_forward_cuda, x)


def log_softmax_backward(grad_y, y):
    """``grad_y - exp(y) * rowsum(grad_y)`` from the forward's output ``y``."""
    device, xp, grad_y, y, grad_x = _prepare_backward(grad_y, y)
    if y.size == 0:
        return grad_x
    if device == CPU:
        dispatch(CPU, _log_softmax_backward_cpu, None, y.size, grad_x, grad_y, y)
    else:
        total = xp.empty(y.shape[0], dtype=y.dtype)
        _row_reduce_cuda(xp, _row_sum_partials_cuda, total, grad_y)
        launch(_log_softmax_backward_cuda, y.size, grad_x, grad_y, y, total)
    return grad_x
