"""Nearest-neighbour upsampling by integer factors over NCHW tensors: forward and backward.

    scale (SH, SW):  x (N, C, H, W) -> y (N, C, H*SH, W*SW),  y[h, w] = x[h // SH, w // SW]
    grad_x[h, w] = sum of grad_y over its SH x SW block, rows then columns

torch's ``interpolate(x, scale_factor=s, mode="nearest")`` for integer s.  Kernels see
(N*C, H, W) planes, as in :mod:`kernels.pool`: the GPU runs one thread per output element
(per grad_x element in the backward, a gather); the CPU runs prange over planes and adds
each block in the GPU's order, so the two agree bitwise.
"""
from __future__ import annotations

from numba import cuda, prange

from .checks import check_extent, check_float, contiguous, pair
from .device import array_module, device_of, dispatch
from .pool import _check_x, _cpu, _planes

__all__ = ["upsample_nearest2d_forward", "upsample_nearest2d_backward"]


@_cpu
def _upsample_nearest2d_forward_cpu(y, x, sh, sw):
    H, W = x.shape[1], x.shape[2]
    for p in prange(x.shape[0]):
        xp_, yp = x[p], y[p]
        for h in range(H):
            for r in range(sh):
                row = yp[h * sh + r]
                for w_ in range(W):
                    v = xp_[h, w_]
                    for c in range(sw):
                        row[w_ * sw + c] = v


@cuda.jit(cache=True)
def _upsample_nearest2d_forward_cuda(y, x, sh, sw):
    OH, OW = y.shape[1], y.shape[2]
    i = cuda.grid(1)
    if i < y.size:
        ow = i % OW
        oh = (i // OW) % OH
        p = i // (OW * OH)
        y[p, oh, ow] = x[p, oh // sh, ow // sw]


@_cpu
def _upsample_nearest2d_backward_cpu(grad_x, grad_y, sh, sw, zero):
    # Row by row, so the inner loop runs along W and vectorises; each element still adds
    # its block in the GPU's order (r, then c).  Factor 2 spelled out: 5x faster.
    H, W = grad_x.shape[1], grad_x.shape[2]
    for p in prange(grad_x.shape[0]):
        gx, gy = grad_x[p], grad_y[p]
        for h in range(H):
            row = gx[h]
            for w_ in range(W):
                row[w_] = zero
            for r in range(sh):
                src = gy[h * sh + r]
                if sw == 2:
                    for w_ in range(W):
                        row[w_] = (row[w_] + src[2 * w_]) + src[2 * w_ + 1]
                else:
                    for w_ in range(W):
                        acc = row[w_]
                        for c in range(sw):
                            acc += src[w_ * sw + c]
                        row[w_] = acc


@cuda.jit(cache=True)
def _upsample_nearest2d_backward_cuda(grad_x, grad_y, sh, sw, zero):
    H, W = grad_x.shape[1], grad_x.shape[2]
    i = cuda.grid(1)
    if i < grad_x.size:
        w_ = i % W
        h = (i // W) % H
        p = i // (W * H)
        acc = zero
        for r in range(sh):
            for c in range(sw):
                acc += grad_y[p, h * sh + r, w_ * sw + c]
        grad_x[p, h, w_] = acc


# ---------------------------------------------------------------- launchers
def upsample_nearest2d_forward(x, scale_factor):
    """Nearest-neighbour upsampling by an integer factor (int or pair)."""
    device = _check_x(x)
    sh, sw = pair("scale_factor", scale_factor)
    xp = array_module(device)
    x = contiguous(xp, x)
    N, C, H, W = x.shape
    check_extent("scale_factor", max(H * sh, W * sw), f" (x {tuple(x.shape)}, scale_factor "
                 f"{scale_factor!r})")
    y = xp.empty((N, C, H * sh, W * sw), dtype=x.dtype)
    dispatch(device, _upsample_nearest2d_forward_cpu, _upsample_nearest2d_forward_cuda,
             y.size, _planes(y), _planes(x), sh, sw, work=y.size)
    return y


def upsample_nearest2d_backward(grad_y, scale_factor):
    """Gradient of nearest upsampling: each input element sums its block of grad_y."""
    sh, sw = pair("scale_factor", scale_factor)
    check_float("grad_y", grad_y, ndim=4)
    device = device_of(grad_y, names=["grad_y"])
    N, C, OH, OW = grad_y.shape
    if OH % sh or OW % sw or OH == 0 or OW == 0:
        raise ValueError(f"grad_y: expected non-empty H and W divisible by scale_factor "
                         f"({sh}, {sw}), got shape {tuple(grad_y.shape)}")
    xp = array_module(device)
    grad_y = contiguous(xp, grad_y)
    grad_x = xp.empty((N, C, OH // sh, OW // sw), dtype=grad_y.dtype)
    dispatch(device, _upsample_nearest2d_backward_cpu, _upsample_nearest2d_backward_cuda,
             grad_x.size, _planes(grad_x), _planes(grad_y), sh, sw,
             grad_y.dtype.type(0), work=grad_y.size)
    return grad_x
