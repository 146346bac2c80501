"""Pooling over NCHW tensors: forward and backward.

x is (N, C, H, W).  A (KH, KW) window moved with stride (SH, SW) over x padded by (PH, PW)
on each side gives y (N, C, OH, OW), torch's floor mode:

    OH = (H + 2*PH - KH) // SH + 1          OW = (W + 2*PW - KW) // SW + 1

window (oh, ow) covering rows oh*SH - PH ... oh*SH - PH + KH - 1 (columns alike).

max_pool2d     y = max of the window, padding counting as -inf.  indices (int64, like y) is
               h*W + w of the first maximum in row-major window order; a window holding NaN
               gives NaN and the index of its last NaN (torch's rule), so NaN propagates.
               grad_x[h, w] = sum of grad_y over the windows containing (h, w) whose index
               is h*W + w.  Pass the forward's own indices: an index outside its window is
               ignored on the GPU but honoured on the CPU, which checks only the plane.
avg_pool2d     y = window sum / D, D = KH*KW (count_include_pad) or the number of the
               window's elements inside x.  grad_x[h, w] = sum over the windows containing
               (h, w) of grad_y / D.
global_avg_pool2d   y (N, C, 1, 1) = mean over H and W;  grad_x = grad_y / (H*W).

Kernels see (P, H, W) views, P = N*C planes.  GPU kernels run one thread per output element,
consecutive threads along W (coalesced); a backward thread gathers one grad_x element from
the windows containing it, in row-major window order.  CPU loops run prange over planes, one
iteration owning a whole plane, and add the same terms in the same order, so results do not
depend on the thread count and the CPU equals the GPU bitwise.  Sums run in the input's
dtype (``zero`` carries it into the kernels); a division by an integer runs in float64 and
rounds once, which for float32 is exactly torch's float32 division.  2x2 windows with stride
2 and no padding, the common case, have their own vectorised CPU loops.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, int64, njit, prange, uint32

from .checks import check_extent, check_float, check_shape, contiguous, pair
from .device import array_module, device_of, dispatch

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "global_avg_pool2d_forward", "global_avg_pool2d_backward"]

# error_model="numpy": no zero test before each float division (divisors here are >= 1),
# which would stop the loops from vectorising.
_cpu = njit(parallel=True, cache=True, error_model="numpy")


# ---------------------------------------------------------------- max pool forward
@_cpu
def _max_pool2d_forward_cpu(y, indices, x, kh, kw, sh, sw, ph, pw):
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(y.shape[0]):
        xp_, yp, ip = x[p], y[p], indices[p]
        for oh in range(OH):
            h0 = oh * sh - ph
            hs, he = max(h0, 0), min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws, we = max(w0, 0), min(w0 + kw, W)
                # Starting from the window's first element is the same as torch's -inf start.
                best = xp_[hs, ws]
                arg = hs * W + ws
                # The GPU's rule (take v when v > best or v is NaN) in two steps: testing
                # for NaN in the branch doubles the time, so only flag it here and let a
                # window holding NaN take its last NaN afterwards.
                nan = False
                for h in range(hs, he):
                    for w_ in range(ws, we):
                        v = xp_[h, w_]
                        nan |= v != v
                        if v > best:
                            best = v
                            arg = h * W + w_
                if nan:
                    for h in range(hs, he):
                        for w_ in range(ws, we):
                            if xp_[h, w_] != xp_[h, w_]:
                                best = xp_[h, w_]
                                arg = h * W + w_
                yp[oh, ow] = best
                ip[oh, ow] = arg


@_cpu
def _max_pool2d_2x2_forward_cpu(y, indices, x, kh, kw, sh, sw, ph, pw):
    # 2x2 windows, stride 2, no padding (the common case), vectorised along ow: 20x faster
    # than the general loop.  A tournament applies the general loop's update rule (take v
    # when v > best or v is NaN) at each match, so ties go to the first maximum in
    # row-major order and NaN to the last NaN, exactly as the sequential scan.
    W = x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(y.shape[0]):
        xp_, yp, ip = x[p], y[p], indices[p]
        # int64 selects beside float32 ones stop LLVM from vectorising (6x slower), so the
        # winner's offset in the window (0..3) goes through an int32 row first.
        k = np.empty(OW, np.int32)
        for oh in range(OH):
            top, bottom, yr, ir = xp_[2 * oh], xp_[2 * oh + 1], yp[oh], ip[oh]
            for ow in range(OW):
                a, b = top[2 * ow], top[2 * ow + 1]
                c, d = bottom[2 * ow], bottom[2 * ow + 1]
                take_b = (b > a) | (b != b)
                best_top = b if take_b else a
                take_d = (d > c) | (d != d)
                best_bottom = d if take_d else c
                take_bottom = (best_bottom > best_top) | (best_bottom != best_bottom)
                yr[ow] = best_bottom if take_bottom else best_top
                k[ow] = np.int32(2 + take_d) if take_bottom else np.int32(take_b)
            for ow in range(OW):
                ir[ow] = (2 * oh + (k[ow] >> 1)) * W + 2 * ow + (k[ow] & 1)


# Index math of the CUDA kernels in 32-bit unsigned divisions (a 64-bit division is a long
# software routine on NVIDIA GPUs and kept these kernels at 56-72 registers); device.launch
# refuses launches of 2**32 threads or more, so every index fits.
@cuda.jit(device=True, inline=True)
def _split3_cuda(i, B, C):
    """(a, b, c) with i = (a*B + b)*C + c."""
    iu = uint32(i)
    # uint32() again after each step: uint32 arithmetic is typed uint64, which would make
    # the next division 64-bit.
    r = uint32(iu // uint32(C))
    c = uint32(iu - r * uint32(C))
    a = uint32(r // uint32(B))
    b = uint32(r - a * uint32(B))
    return int64(a), int64(b), int64(c)


@cuda.jit(device=True, inline=True)
def _windows_cuda(h, k, s, pad, OH):
    """First and last output rows whose window (size k, stride s, padding pad) covers h."""
    t = h + pad - k + 1
    lo = int64(0)
    if t > 0:
        lo = int64(uint32(uint32(t) + uint32(s - 1)) // uint32(s))
    hi = min(int64(uint32(h + pad) // uint32(s)), OH - 1)
    return lo, hi


@cuda.jit(cache=True)
def _max_pool2d_forward_cuda(y, indices, x, kh, kw, sh, sw, ph, pw):
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    i = cuda.grid(1)
    if i < y.size:
        p, oh, ow = _split3_cuda(i, OH, OW)
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        w0 = ow * sw - pw
        ws, we = max(w0, 0), min(w0 + kw, W)
        best = x[p, hs, ws]
        arg = hs * W + ws
        for h in range(hs, he):
            for w_ in range(ws, we):
                v = x[p, h, w_]
                if v > best or v != v:
                    best = v
                    arg = h * W + w_
        y[p, oh, ow] = best
        indices[p, oh, ow] = arg


# ---------------------------------------------------------------- max pool backward
# On the CPU one prange iteration owns a whole plane of grad_x, so it can visit the windows
# once each in row-major order and add into the element each one chose: no races, and every
# element receives its windows in the same order as the GPU's per-element gather, so the two
# agree bitwise.  Visiting windows costs O(OH*OW) instead of O(H*W * windows per element)
# and no division: the general gather was 10-40x slower, and this beats even a vectorised
# 2x2 gather (0.40 against 0.48 ms on 32x64x32x32, one thread).
@_cpu
def _max_pool2d_backward_cpu(grad_x, grad_y, indices, kh, kw, sh, sw, ph, pw, zero):
    H, W = grad_x.shape[1], grad_x.shape[2]
    OH, OW = grad_y.shape[1], grad_y.shape[2]
    n = H * W
    for p in prange(grad_x.shape[0]):
        gx, gy, ip = grad_x[p].reshape(n), grad_y[p], indices[p]
        for j in range(n):
            gx[j] = zero
        for oh in range(OH):
            for ow in range(OW):
                j = ip[oh, ow]
                # Only the plane is checked, which keeps memory safe.  Checking that j lies
                # in its own window too (as the gather does) costs 3x here; the forward never
                # produces an index outside its window.
                if 0 <= j < n:
                    gx[j] += gy[oh, ow]


@cuda.jit(cache=True)
def _max_pool2d_backward_cuda(grad_x, grad_y, indices, kh, kw, sh, sw, ph, pw, zero):
    H, W = grad_x.shape[1], grad_x.shape[2]
    OH, OW = grad_y.shape[1], grad_y.shape[2]
    i = cuda.grid(1)
    if i < grad_x.size:
        p, h, w_ = _split3_cuda(i, H, W)
        oh_lo, oh_hi = _windows_cuda(h, kh, sh, ph, OH)
        ow_lo, ow_hi = _windows_cuda(w_, kw, sw, pw, OW)
        j = h * W + w_
        acc = zero
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                if indices[p, oh, ow] == j:
                    acc += grad_y[p, oh, ow]
        grad_x[p, h, w_] = acc


# ---------------------------------------------------------------- avg pool
# rows[oh] * cols[ow] is the divisor D of window (oh, ow), given in x's dtype by the
# launcher so that D costs nothing in the loops and the division stays in x's precision.
@_cpu
def _avg_pool2d_forward_cpu(y, x, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(y.shape[0]):
        xp_, yp = x[p], y[p]
        for oh in range(OH):
            h0 = oh * sh - ph
            hs, he = max(h0, 0), min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws, we = max(w0, 0), min(w0 + kw, W)
                acc = zero
                for h in range(hs, he):
                    for w_ in range(ws, we):
                        acc += xp_[h, w_]
                yp[oh, ow] = acc / (rows[oh] * cols[ow])


@_cpu
def _avg_pool2d_2x2_forward_cpu(y, x, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    # 2x2 windows, stride 2, no padding, vectorised along ow (10x the general loop); the
    # sum keeps the general loop's order, starting from zero, so the result is the same.
    OH, OW = y.shape[1], y.shape[2]
    for p in prange(y.shape[0]):
        xp_, yp = x[p], y[p]
        for oh in range(OH):
            top, bottom, yr = xp_[2 * oh], xp_[2 * oh + 1], yp[oh]
            for ow in range(OW):
                total = (((zero + top[2 * ow]) + top[2 * ow + 1]) + bottom[2 * ow]) \
                    + bottom[2 * ow + 1]
                yr[ow] = total / (rows[oh] * cols[ow])


@cuda.jit(cache=True)
def _avg_pool2d_forward_cuda(y, x, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    H, W = x.shape[1], x.shape[2]
    OH, OW = y.shape[1], y.shape[2]
    i = cuda.grid(1)
    if i < y.size:
        p, oh, ow = _split3_cuda(i, OH, OW)
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        w0 = ow * sw - pw
        ws, we = max(w0, 0), min(w0 + kw, W)
        acc = zero
        for h in range(hs, he):
            for w_ in range(ws, we):
                acc += x[p, h, w_]
        y[p, oh, ow] = acc / (rows[oh] * cols[ow])


@_cpu
def _avg_pool2d_backward_cpu(grad_x, grad_y, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    # Plane-owned, windows in row-major order, as the max pool backward (same sums as the
    # GPU's gather, one division per window instead of one per element and window).
    H, W = grad_x.shape[1], grad_x.shape[2]
    OH, OW = grad_y.shape[1], grad_y.shape[2]
    for p in prange(grad_x.shape[0]):
        gx, gy = grad_x[p], grad_y[p]
        for h in range(H):
            for w_ in range(W):
                gx[h, w_] = zero
        for oh in range(OH):
            h0 = oh * sh - ph
            hs, he = max(h0, 0), min(h0 + kh, H)
            for ow in range(OW):
                w0 = ow * sw - pw
                ws, we = max(w0, 0), min(w0 + kw, W)
                share = gy[oh, ow] / (rows[oh] * cols[ow])
                for h in range(hs, he):
                    for w_ in range(ws, we):
                        gx[h, w_] += share


@_cpu
def _avg_pool2d_2x2_backward_cpu(grad_x, grad_y, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    # 2x2 windows, stride 2, no padding: each element gets one share (zero + share, as the
    # gather computes it, so that even the sign of a zero agrees).
    H, W = grad_x.shape[1], grad_x.shape[2]
    OH, OW = grad_y.shape[1], grad_y.shape[2]
    for p in prange(grad_x.shape[0]):
        gx, gy = grad_x[p], grad_y[p]
        for oh in range(OH):
            for r in range(2):
                row = gx[2 * oh + r]
                for ow in range(OW):
                    share = zero + gy[oh, ow] / (rows[oh] * cols[ow])
                    row[2 * ow] = share
                    row[2 * ow + 1] = share
                for w_ in range(2 * OW, W):
                    row[w_] = zero
        for h in range(2 * OH, H):
            for w_ in range(W):
                gx[h, w_] = zero


@cuda.jit(cache=True)
def _avg_pool2d_backward_cuda(grad_x, grad_y, rows, cols, kh, kw, sh, sw, ph, pw, zero):
    H, W = grad_x.shape[1], grad_x.shape[2]
    OH, OW = grad_y.shape[1], grad_y.shape[2]
    i = cuda.grid(1)
    if i < grad_x.size:
        p, h, w_ = _split3_cuda(i, H, W)
        oh_lo, oh_hi = _windows_cuda(h, kh, sh, ph, OH)
        ow_lo, ow_hi = _windows_cuda(w_, kw, sw, pw, OW)
        acc = zero
        for oh in range(oh_lo, oh_hi + 1):
            for ow in range(ow_lo, ow_hi + 1):
                acc += grad_y[p, oh, ow] / (rows[oh] * cols[ow])
        grad_x[p, h, w_] = acc


# ---------------------------------------------------------------- global average pool
# Eight running sums, lane i % 8, break the add-latency chain and let the CPU vectorise
# (2x faster than four scalar sums); the GPU keeps the same order, so the same result.
@_cpu
def _global_avg_pool2d_forward_cpu(y, x, zero, count):
    n = x.shape[1]
    n8 = n - n % 8
    for p in prange(x.shape[0]):
        xp_ = x[p]
        acc = np.zeros(8, x.dtype)
        for i in range(0, n8, 8):
            for lane in range(8):
                acc[lane] += xp_[i + lane]
        for i in range(n8, n):
            acc[0] += xp_[i]
        y[p] = (((acc[0] + acc[1]) + (acc[2] + acc[3]))
                + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) / count


@cuda.jit(cache=True)
def _global_avg_pool2d_forward_cuda(y, x, zero, count):
    # One thread per plane: planes are small at the end of a network (7x7, 4x4).  ``count``
    # is H*W in the input's dtype: dividing by an integer would compute in float64.
    p = cuda.grid(1)
    if p < x.shape[0]:
        n = x.shape[1]
        n8 = n - n % 8
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for i in range(0, n8, 8):
            a0 += x[p, i]
            a1 += x[p, i + 1]
            a2 += x[p, i + 2]
            a3 += x[p, i + 3]
            a4 += x[p, i + 4]
            a5 += x[p, i + 5]
            a6 += x[p, i + 6]
            a7 += x[p, i + 7]
        for i in range(n8, n):
            a0 += x[p, i]
        y[p] = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) / count


@_cpu
def _global_avg_pool2d_backward_cpu(grad_x, grad_y, count):
    n = grad_x.shape[1]
    for p in prange(grad_x.shape[0]):
        g = grad_y[p] / count
        gx = grad_x[p]
        for i in range(n):
            gx[i] = g


@cuda.jit(cache=True)
def _global_avg_pool2d_backward_cuda(grad_x, grad_y, count):
    # count: H*W in the gradient's dtype (an integer divisor would compute in float64)
    n = grad_x.shape[1]
    i = cuda.grid(1)
    if i < grad_x.size:
        iu = uint32(i)
        p = uint32(iu // uint32(n))
        grad_x[int64(p), int64(iu - p * uint32(n))] = grad_y[int64(p)] / count


# ---------------------------------------------------------------- validation
def _check_x(x, name="x"):
    check_float(name, x, ndim=4)
    device = device_of(x, names=[name])
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: expected non-empty H and W, got shape {tuple(x.shape)}")
    return device


def _check_x_shape(x_shape):
    if (not isinstance(x_shape, (tuple, list)) or len(x_shape) != 4
            or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0
                   for d in x_shape)):
        raise ValueError(f"x_shape: expected 4 non-negative ints (N, C, H, W), got {x_shape!r}")
    if x_shape[2] == 0 or x_shape[3] == 0:
        raise ValueError(f"x_shape: expected non-empty H and W, got {tuple(x_shape)}")
    return check_shape("x_shape", x_shape)


def _pool_geometry(x_shape, kernel_size, stride, padding):
    """``(kh, kw, sh, sw, ph, pw)`` and the output shape, or a ValueError naming the argument."""
    kh, kw = pair("kernel_size", kernel_size)
    sh, sw = pair("stride", kernel_size if stride is None else stride)
    ph, pw = pair("padding", padding, positive=False)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding: expected at most half the kernel size, <= ({kh // 2}, "
                         f"{kw // 2}) for kernel_size ({kh}, {kw}), got ({ph}, {pw})")
    N, C, H, W = x_shape
    check_extent("padding", max(H + 2 * ph, W + 2 * pw), f" (the padded input, input "
                 f"{H}x{W}, padding ({ph}, {pw}))")
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"kernel_size: the pooling window ({kh}, {kw}) is larger than the "
                         f"padded input ({H + 2 * ph}, {W + 2 * pw}) (input {H}x{W}, padding "
                         f"({ph}, {pw}))")
    out_shape = (N, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)
    return (kh, kw, sh, sw, ph, pw), out_shape


def _check_grad_y(grad_y, expected, source):
    check_float("grad_y", grad_y, ndim=4)
    if tuple(grad_y.shape) != tuple(expected):
        raise ValueError(f"grad_y: expected shape {tuple(expected)} (the forward's output for "
                         f"{source}), got {tuple(grad_y.shape)}")


def _planes(a):
    """The (N*C, H, W) view the kernels work on."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def _divisors(xp, dtype, x_shape, geometry, out_shape, count_include_pad):
    """Per-row and per-column window sizes whose product is each window's divisor.

    Built with ``xp`` where the data lives: on a GPU a host-built array would be a
    host-to-device copy on every call."""
    kh, kw, sh, sw, ph, pw = geometry
    H, W = x_shape[2], x_shape[3]
    if count_include_pad:
        # Without ceil mode no window reaches past the padding, so each covers KH x KW.
        rows = xp.full(out_shape[2], kh, dtype=dtype)
        cols = xp.full(out_shape[3], kw, dtype=dtype)
    else:
        start = xp.arange(out_shape[2]) * sh - ph
        rows = (xp.minimum(start + kh, H) - xp.maximum(start, 0)).astype(dtype)
        start = xp.arange(out_shape[3]) * sw - pw
        cols = (xp.minimum(start + kw, W) - xp.maximum(start, 0)).astype(dtype)
    return rows, cols


# ---------------------------------------------------------------- launchers
_TWO_BY_TWO = (2, 2, 2, 2, 0, 0)  # (kh, kw, sh, sw, ph, pw) of the CPU's vectorised path


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, return_indices=False):
    """Max pooling like ``torch.nn.functional.max_pool2d``; ``(y, indices)`` on request."""
    device = _check_x(x)
    geometry, out_shape = _pool_geometry(tuple(x.shape), kernel_size, stride, padding)
    xp = array_module(device)
    x = contiguous(xp, x)
    y = xp.empty(out_shape, dtype=x.dtype)
    indices = xp.empty(out_shape, dtype=np.int64)
    cpu_kernel = (_max_pool2d_2x2_forward_cpu if geometry == _TWO_BY_TWO
                  else _max_pool2d_forward_cpu)
    dispatch(device, cpu_kernel, _max_pool2d_forward_cuda, y.size,
             _planes(y), _planes(indices), _planes(x), *geometry, work=x.size)
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_y, indices, x_shape, kernel_size, stride=None, padding=0):
    """Gradient of max pooling with respect to x, from the forward's ``indices``."""
    x_shape = _check_x_shape(x_shape)
    geometry, out_shape = _pool_geometry(x_shape, kernel_size, stride, padding)
    _check_grad_y(grad_y, out_shape, f"x_shape {x_shape}")
    device = device_of(grad_y, indices, names=["grad_y", "indices"])
    if np.dtype(indices.dtype) != np.int64:
        raise TypeError(f"indices: expected dtype int64, got {indices.dtype}")
    if tuple(indices.shape) != out_shape:
        raise ValueError(f"indices: expected shape {out_shape} (same as grad_y), got "
                         f"{tuple(indices.shape)}")
    xp = array_module(device)
    grad_y, indices = contiguous(xp, grad_y), contiguous(xp, indices)
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    dispatch(device, _max_pool2d_backward_cpu, _max_pool2d_backward_cuda, grad_x.size,
             _planes(grad_x), _planes(grad_y), _planes(indices), *geometry,
             grad_y.dtype.type(0), work=grad_x.size)
    return grad_x


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Average pooling like ``torch.nn.functional.avg_pool2d``."""
    device = _check_x(x)
    geometry, out_shape = _pool_geometry(tuple(x.shape), kernel_size, stride, padding)
    xp = array_module(device)
    x = contiguous(xp, x)
    rows, cols = _divisors(xp, x.dtype, x.shape, geometry, out_shape, count_include_pad)
    y = xp.empty(out_shape, dtype=x.dtype)
    cpu_kernel = (_avg_pool2d_2x2_forward_cpu if geometry == _TWO_BY_TWO
                  else _avg_pool2d_forward_cpu)
    dispatch(device, cpu_kernel, _avg_pool2d_forward_cuda, y.size,
             _planes(y), _planes(x), rows, cols, *geometry, x.dtype.type(0), work=x.size)
    return y


def avg_pool2d_backward(grad_y, x_shape, kernel_size, stride=None, padding=0,
                        count_include_pad=True):
    """Gradient of average pooling with respect to x."""
    x_shape = _check_x_shape(x_shape)
    geometry, out_shape = _pool_geometry(x_shape, kernel_size, stride, padding)
    _check_grad_y(grad_y, out_shape, f"x_shape {x_shape}")
    device = device_of(grad_y, names=["grad_y"])
    xp = array_module(device)
    grad_y = contiguous(xp, grad_y)
    rows, cols = _divisors(xp, grad_y.dtype, x_shape, geometry, out_shape, count_include_pad)
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    cpu_kernel = (_avg_pool2d_2x2_backward_cpu if geometry == _TWO_BY_TWO
                  else _avg_pool2d_backward_cpu)
    dispatch(device, cpu_kernel, _avg_pool2d_backward_cuda, grad_x.size,
             _planes(grad_x), _planes(grad_y), rows, cols, *geometry, grad_y.dtype.type(0),
             work=grad_x.size)
    return grad_x


def global_avg_pool2d_forward(x):
    """Mean over H and W, shape (N, C, 1, 1), like ``adaptive_avg_pool2d(x, 1)``."""
    device = _check_x(x)
    xp = array_module(device)
    x = contiguous(xp, x)
    N, C, H, W = x.shape
    y = xp.empty((N, C, 1, 1), dtype=x.dtype)
    dispatch(device, _global_avg_pool2d_forward_cpu, _global_avg_pool2d_forward_cuda, N * C,
             y.reshape(N * C), x.reshape(N * C, H * W), x.dtype.type(0), x.dtype.type(H * W),
             work=x.size)
    return y


def global_avg_pool2d_backward(grad_y, x_shape):
    """Gradient of global average pooling: ``grad_y / (H*W)`` spread over each plane."""
    N, C, H, W = x_shape = _check_x_shape(x_shape)
    _check_grad_y(grad_y, (N, C, 1, 1), f"x_shape {x_shape}")
    device = device_of(grad_y, names=["grad_y"])
    xp = array_module(device)
    grad_y = contiguous(xp, grad_y)
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    dispatch(device, _global_avg_pool2d_backward_cpu, _global_avg_pool2d_backward_cuda,
             grad_x.size, grad_x.reshape(N * C, H * W), grad_y.reshape(N * C),
             grad_y.dtype.type(H * W), work=grad_x.size)
    return grad_x
