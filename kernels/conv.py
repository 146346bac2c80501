"""2-D convolution over NCHW arrays: conv2d and conv_transpose2d, forward and backward.

    x (N, C, H, W),  w (OC, C/groups, KH, KW),  b (OC,)  ->  y (N, OC, OH, OW)
    OH = (H + pad_top + pad_bottom - dh*(KH-1) - 1) // sh + 1          (OW likewise)
    y[n, oc, oh, ow] = b[oc] + sum_{c, kh, kw} w[oc, c, kh, kw]
                         * x[n, g*C/groups + c, oh*sh - pad_top + kh*dh, ow*sw - pad_left + kw*dw]
    where g = oc // (OC/groups) and x is zero outside the image.

Backward: ``grad_x`` is the transposed convolution of ``grad_y`` with ``w``; ``grad_w[oc, c,
kh, kw]`` sums ``grad_y * x`` over (n, oh, ow) at the same offsets; ``grad_b`` sums ``grad_y``
over (n, oh, ow).  ``conv_transpose2d`` (weight ``(C, OC/groups, KH, KW)``) is the adjoint of
conv2d: its forward is conv2d's input gradient, its input gradient is conv2d's forward and
its weight gradient is conv2d's with the roles of input and output swapped, so both are
built from the same kernels.  Arguments, defaults and semantics follow
``torch.nn.functional.conv2d`` / ``conv_transpose2d``; ``padding="same"`` puts the odd extra
row/column at the bottom/right as torch does.

CPU (kernels/conv_cpu.py): im2col bands into single-threaded BLAS inside one Numba parallel
region for most layers; direct loops where the product per output is tiny (at most 512
multiply-adds per output row of the GEMM: LeNet's first layer, depthwise), where they measured
2-12x faster than the GEMM design.  The keyword-only ``algo="direct"|"gemm"`` forces one
(tests and benchmarks).  Passes under 200 kFLOP run on one thread.  CUDA
(kernels/conv_cuda.py): im2col tiles of samples into cuBLAS (CuPy matmul) for the forward and
weight gradient; cuBLAS then a gather-form col2im kernel for the input gradient.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import numba
import numpy as np

from .checks import (MAX_EXTENT, check_extent, check_float, check_floats, check_numel,
                     check_shape, contiguous)
from .conv_cpu import (_conv2d_backward_bias_cpu, _conv2d_backward_input_direct_cpu,
                       _conv2d_backward_input_gemm_cpu, _conv2d_backward_weight_direct_cpu,
                       _conv2d_backward_weight_gemm_cpu, _conv2d_forward_direct_cpu,
                       _conv2d_forward_gemm_cpu)
from .conv_cuda import (_conv2d_backward_bias_cuda, _conv2d_backward_input_cuda,
                        _conv2d_backward_weight_cuda, _conv2d_forward_cuda)
from .device import CPU, array_module, device_of
from .threads import dynamic_schedule, numba_threads, single_threaded_blas

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
           "conv2d_backward_bias", "conv2d_backward", "conv_transpose2d_forward",
           "conv_transpose2d_backward", "conv2d_output_shape", "conv_transpose2d_output_shape"]

# Column bands of the GEMM design are sized to about this many bytes (see bench_conv.py).
_BAND_BYTES = 4 * 1024 * 1024
# The weight gradient sums partials over at most this many chunks of the batch; the chunks
# depend on N only, so the result does not depend on the thread count.
_WEIGHT_CHUNKS = 8
# Multi-sample bands leave at least this many blocks of samples to share among threads.
_MIN_BLOCKS = 8
_ALGOS = ("auto", "direct", "gemm")
# Below this many FLOPs a pass runs on one thread: waking a second costs more than it saves.
_SERIAL_FLOPS = 200_000


class _Geometry(NamedTuple):
    sh: int
    sw: int
    pt: int   # padding top / left; bottom / right follow from the output size
    pl: int
    dh: int
    dw: int
    groups: int


# ---------------------------------------------------------------- argument checks
def _pair(name, value, minimum):
    if isinstance(value, (tuple, list)) and len(value) == 2:
        h, w = value
    elif isinstance(value, (tuple, list)):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    else:
        h = w = value
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name}: expected {what} values, got {value!r}")
        if v > MAX_EXTENT:
            raise ValueError(f"{name}: expected values at most {MAX_EXTENT} (2**31 - 1), got "
                             f"{value!r}")
    return int(h), int(w)


def _groups(groups):
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    if groups > MAX_EXTENT:
        raise ValueError(f"groups: expected at most {MAX_EXTENT} (2**31 - 1), got {groups!r}")
    return int(groups)


def _check_shapes(x_shape, w_shape, groups, x_name="x", w_name="w"):
    N, C, H, W = x_shape
    OC, Cg, KH, KW = w_shape
    if C % groups:
        raise ValueError(f"groups: {groups} does not divide the {C} input channels of "
                         f"{x_name} {tuple(x_shape)}")
    if OC % groups:
        raise ValueError(f"groups: {groups} does not divide the {OC} output channels of "
                         f"{w_name} {tuple(w_shape)}")
    if Cg * groups != C:
        raise ValueError(f"{x_name}: expected {Cg * groups} channels ({w_name} has shape "
                         f"{tuple(w_shape)}, i.e. {Cg} per group, groups={groups}), got "
                         f"{x_name} of shape {tuple(x_shape)}")
    if min(OC, Cg, KH, KW) < 1:
        raise ValueError(f"{w_name}: expected a non-empty kernel, got shape {tuple(w_shape)}")


def _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups):
    """(_Geometry, (OH, OW)) of a conv2d, validated; raises naming the bad argument."""
    groups = _groups(groups)
    _check_shapes(x_shape, w_shape, groups)
    sh, sw = _pair("stride", stride, 1)
    dh, dw = _pair("dilation", dilation, 1)
    KH, KW = w_shape[2], w_shape[3]
    H, W = x_shape[2], x_shape[3]
    eh, ew = dh * (KH - 1) + 1, dw * (KW - 1) + 1   # the dilated kernel's extent
    check_extent("dilation", max(eh, ew), f" (the dilated kernel's extent, dilation "
                 f"{dilation!r}, kernel {KH}x{KW})")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride!r}")
            pads = ((eh - 1) // 2, eh - 1 - (eh - 1) // 2, (ew - 1) // 2, ew - 1 - (ew - 1) // 2)
        else:
            raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', "
                             f"got {padding!r}")
    else:
        ph, pw = _pair("padding", padding, 0)
        pads = (ph, ph, pw, pw)
    pt, pb, pl, pr = pads
    check_extent("padding", max(H + pt + pb, W + pl + pr), f" (the padded input, x "
                 f"{tuple(x_shape)}, padding {padding!r})")
    if H + pt + pb < eh or W + pl + pr < ew:
        raise ValueError(f"w: the kernel {KH}x{KW} with dilation {(dh, dw)} spans {eh}x{ew}, "
                         f"larger than the padded input {H + pt + pb}x{W + pl + pr} "
                         f"(x {tuple(x_shape)}, padding {padding!r})")
    OH = (H + pt + pb - eh) // sh + 1
    OW = (W + pl + pr - ew) // sw + 1
    check_numel("padding", (x_shape[0], w_shape[0], OH, OW), 8, f" (x {tuple(x_shape)}, "
                f"w {tuple(w_shape)}, stride {stride!r}, padding {padding!r})")
    return _Geometry(sh, sw, pt, pl, dh, dw, groups), (OH, OW)


def _transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    """(_Geometry of the underlying conv2d, (H_out, W_out)) of a conv_transpose2d."""
    groups = _groups(groups)
    N, C, H, W = x_shape
    Cw, OCg, KH, KW = w_shape
    if C % groups:
        raise ValueError(f"groups: {groups} does not divide the {C} input channels of "
                         f"x {tuple(x_shape)}")
    if Cw != C:
        raise ValueError(f"x: expected {Cw} channels (w has shape {tuple(w_shape)}: "
                         f"(in_channels, out_channels/groups, KH, KW)), got x of shape "
                         f"{tuple(x_shape)}")
    if min(OCg, KH, KW) < 1:
        raise ValueError(f"w: expected a non-empty kernel, got shape {tuple(w_shape)}")
    sh, sw = _pair("stride", stride, 1)
    dh, dw = _pair("dilation", dilation, 1)
    if isinstance(padding, str):
        raise ValueError(f"padding: conv_transpose2d takes an int or a pair, got {padding!r}")
    ph, pw = _pair("padding", padding, 0)
    oph, opw = _pair("output_padding", output_padding, 0)
    if not (oph < sh or oph < dh) or not (opw < sw or opw < dw):
        raise ValueError(f"output_padding: must be smaller than stride or dilation in each "
                         f"dimension, got output_padding={output_padding!r}, "
                         f"stride={stride!r}, dilation={dilation!r}")
    check_extent("dilation", max(dh * (KH - 1), dw * (KW - 1)) + 1,
                 f" (the dilated kernel's extent, dilation {dilation!r}, kernel {KH}x{KW})")
    check_extent("stride", max((H - 1) * sh, (W - 1) * sw) + 1,
                 f" (the strided input's extent, x {tuple(x_shape)}, stride {stride!r})")
    HO = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    WO = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    # The output plus its cropped padding is the padded input of the underlying conv2d.
    check_extent("output_padding", max(HO + 2 * ph, WO + 2 * pw),
                 f" (the output before padding is cropped, x {tuple(x_shape)}, stride "
                 f"{stride!r}, dilation {dilation!r}, output_padding {output_padding!r})")
    if HO < 1 or WO < 1:
        raise ValueError(f"padding: the output size would be {HO}x{WO} (x {tuple(x_shape)}, "
                         f"w {tuple(w_shape)}, stride {stride!r}, padding {padding!r}, "
                         f"dilation {dilation!r}); expected at least 1x1")
    return _Geometry(sh, sw, ph, pw, dh, dw, groups), (HO, WO)


def _check_grad_y(grad_y, expected):
    if tuple(grad_y.shape) != tuple(expected):
        raise ValueError(f"grad_y: expected shape {tuple(expected)} (the forward's output), "
                         f"got {tuple(grad_y.shape)}")


def _check_shape_arg(name, shape):
    return check_shape(name, shape, 4)


def _check_algo(algo):
    if algo not in _ALGOS:
        raise ValueError(f"algo: expected one of {_ALGOS}, got {algo!r}")


# ---------------------------------------------------------------- CPU design choice
def _use_direct(x_shape, w_shape, groups, algo):
    """The direct loops for small products (LeNet, depthwise); BLAS bands otherwise."""
    if algo != "auto":
        return algo == "direct"
    OC, Cg, KH, KW = w_shape
    return Cg * KH * KW * (OC // groups) <= 512


def _bands(N, OH, OW, K, itemsize):
    """(S samples, R rows) per column band: about _BAND_BYTES of columns, whole samples
    when they fit (at most N/8 of them, to leave items for the threads), else rows."""
    positions = max(1, _BAND_BYTES // (K * itemsize))
    if OH * OW <= positions:
        return max(1, min(positions // (OH * OW), -(-N // _MIN_BLOCKS))), OH
    return 1, max(1, min(OH, positions // OW))


def _weight_chunks(N):
    return max(1, min(N, _WEIGHT_CHUNKS))


def _reorder_weight(w, groups):
    """(OC, Cg, KH, KW) -> (groups, OCg, KH*KW*Cg) in (kh, kw, c) order, for the GEMM design."""
    OC, Cg, KH, KW = w.shape
    return np.ascontiguousarray(
        w.reshape(groups, OC // groups, Cg, KH, KW).transpose(0, 1, 3, 4, 2)
        .reshape(groups, OC // groups, KH * KW * Cg))


def _flops(N, w_shape, out_hw):
    OC, Cg, KH, KW = w_shape
    return 2 * N * OC * Cg * KH * KW * out_hw[0] * out_hw[1]


def _run_cpu(kernel, flops, uses_blas, *args):
    """Run a CPU loop (its workspace count last): one thread for tiny work, items handed out
    one at a time, BLAS kept to one thread."""
    n = 1 if flops < _SERIAL_FLOPS else numba.get_num_threads()
    with numba_threads(n) as n, dynamic_schedule(), \
            (single_threaded_blas() if uses_blas else nullcontext()):
        kernel(*args, n)


# ---------------------------------------------------------------- outputs that see the input
def _reach(n_out, size, pad, stride, extent):
    """``[lo, hi)``: the output positions along one axis whose window may touch the input,
    and the padding left before position ``lo`` (in ``[0, max(stride, extent))``)."""
    # window of output o covers input positions o*stride - pad ... o*stride - pad + extent - 1
    lo = min(max(0, -(-(pad - extent + 1) // stride)), pad // stride)
    hi = max(lo, min(n_out, (size - 1 + pad) // stride + 1))
    return lo, hi, pad - lo * stride


def _crop(geo, x_hw, out_hw, k_hw):
    """``(geometry, (lo_h, hi_h, lo_w, hi_w))`` of the outputs whose windows may touch the
    input, or None when that is all of them.

    Outside that block a conv2d's output is its bias and sends no gradient anywhere, so the
    passes run on the block only: their padded buffers then scale with the input and the
    kernel, not with the padding (padding=3000 on a 6x6 input needed 470 MB of them).
    """
    lo_h, hi_h, pt = _reach(out_hw[0], x_hw[0], geo.pt, geo.sh, geo.dh * (k_hw[0] - 1) + 1)
    lo_w, hi_w, pl = _reach(out_hw[1], x_hw[1], geo.pl, geo.sw, geo.dw * (k_hw[1] - 1) + 1)
    if (lo_h, hi_h, lo_w, hi_w) == (0, out_hw[0], 0, out_hw[1]):
        return None
    return geo._replace(pt=pt, pl=pl), (lo_h, hi_h, lo_w, hi_w)


# ---------------------------------------------------------------- the three passes, validated
def _forward(x, w, b, geo, out_hw, algo):
    crop = _crop(geo, x.shape[2:], out_hw, w.shape[2:])
    if crop is None:
        return _forward_all(x, w, b, geo, out_hw, algo)
    xp = array_module(device_of(x))
    (lo_h, hi_h, lo_w, hi_w) = box = crop[1]
    y = xp.zeros((x.shape[0], w.shape[0]) + tuple(out_hw), dtype=x.dtype)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    if hi_h > lo_h and hi_w > lo_w and y.size:
        y[:, :, lo_h:hi_h, lo_w:hi_w] = _forward_all(x, w, b, crop[0], _box_hw(box), algo)
    return y


def _box_hw(box):
    return box[1] - box[0], box[3] - box[2]


def _forward_all(x, w, b, geo, out_hw, algo):
    device = device_of(x)
    xp = array_module(device)
    N, OC = x.shape[0], w.shape[0]
    y = xp.empty((N, OC) + tuple(out_hw), dtype=x.dtype)
    if y.size == 0:
        return y
    g = geo
    if device != CPU:
        # The GPU folds the bias into its GEMM, and none at all when there is no bias.
        b = None if b is None else contiguous(xp, b)
        _conv2d_forward_cuda(y, contiguous(xp, x), contiguous(xp, w), b, g)
        return y
    if b is None:
        b = xp.zeros(OC, dtype=x.dtype)
    x, w, b = contiguous(xp, x), contiguous(xp, w), contiguous(xp, b)
    flops = _flops(N, w.shape, out_hw)
    if _use_direct(x.shape, w.shape, g.groups, algo):
        _run_cpu(_conv2d_forward_direct_cpu, flops, False, y, x, w, b, g.sh, g.sw, g.pt, g.pl,
                 g.dh, g.dw, g.groups)
        return y
    w2 = _reorder_weight(w, g.groups)
    S, R = _bands(N, out_hw[0], out_hw[1], w2.shape[2], x.itemsize)
    _run_cpu(_conv2d_forward_gemm_cpu, flops, True, y, x, w2, b, w.shape[2], w.shape[3], g.sh,
             g.sw, g.pt, g.pl, g.dh, g.dw, S, R)
    return y


def _backward_input(grad_y, w, x_shape, geo, algo):
    crop = _crop(geo, x_shape[2:], grad_y.shape[2:], w.shape[2:])
    if crop is not None:
        geo, box = crop
        grad_y = grad_y[:, :, box[0]:box[1], box[2]:box[3]]
    return _backward_input_all(grad_y, w, x_shape, geo, algo)


def _backward_input_all(grad_y, w, x_shape, geo, algo):
    device = device_of(grad_y)
    xp = array_module(device)
    grad_x = xp.empty(x_shape, dtype=grad_y.dtype)
    if grad_x.size == 0:
        return grad_x
    if grad_y.size == 0:
        grad_x[...] = 0
        return grad_x
    grad_y, w = contiguous(xp, grad_y), contiguous(xp, w)
    g = geo
    if device != CPU:
        _conv2d_backward_input_cuda(grad_x, grad_y, w, g)
        return grad_x
    OH, OW = grad_y.shape[2], grad_y.shape[3]
    flops = _flops(x_shape[0], w.shape, (OH, OW))
    if _use_direct(x_shape, w.shape, g.groups, algo):
        _run_cpu(_conv2d_backward_input_direct_cpu, flops, False, grad_x, grad_y, w, g.sh, g.sw,
                 g.pt, g.pl, g.dh, g.dw, g.groups)
        return grad_x
    w2 = _reorder_weight(w, g.groups)
    S, R = _bands(x_shape[0], OH, OW, w2.shape[2], grad_y.itemsize)
    _run_cpu(_conv2d_backward_input_gemm_cpu, flops, True, grad_x, grad_y, w2, w.shape[2],
             w.shape[3], g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, S, R)
    return grad_x


def _backward_weight(grad_y, x, w_shape, geo, algo):
    crop = _crop(geo, x.shape[2:], grad_y.shape[2:], w_shape[2:])
    if crop is not None:
        geo, box = crop
        grad_y = grad_y[:, :, box[0]:box[1], box[2]:box[3]]
    return _backward_weight_all(grad_y, x, w_shape, geo, algo)


def _backward_weight_all(grad_y, x, w_shape, geo, algo):
    device = device_of(grad_y)
    xp = array_module(device)
    OC, Cg, KH, KW = w_shape
    N = x.shape[0]
    if N == 0 or grad_y.size == 0:
        return xp.zeros(w_shape, dtype=x.dtype)
    grad_y, x = contiguous(xp, grad_y), contiguous(xp, x)
    g = geo
    if device != CPU:
        grad_w = xp.empty(w_shape, dtype=x.dtype)
        _conv2d_backward_weight_cuda(grad_w, grad_y, x, g)
        return grad_w
    chunks = _weight_chunks(N)
    flops = _flops(N, w_shape, grad_y.shape[2:])
    if _use_direct(x.shape, w_shape, g.groups, algo):
        part = np.empty((chunks,) + tuple(w_shape), dtype=x.dtype)
        _run_cpu(_conv2d_backward_weight_direct_cpu, flops, False, part, grad_y, x, g.sh, g.sw,
                 g.pt, g.pl, g.dh, g.dw, x.dtype.type(0))
        return part.sum(axis=0)
    OCg, K = OC // g.groups, Cg * KH * KW
    part = np.empty((chunks, g.groups, OCg, K), dtype=x.dtype)
    S, R = _bands(N, grad_y.shape[2], grad_y.shape[3], K, x.itemsize)
    _run_cpu(_conv2d_backward_weight_gemm_cpu, flops, True, part, grad_y, x, KH, KW, g.sh, g.sw,
             g.pt, g.pl, g.dh, g.dw, S, R)
    # (groups, OCg, KH, KW, Cg) -> (OC, Cg, KH, KW)
    return np.ascontiguousarray(
        part.sum(axis=0).reshape(OC, KH, KW, Cg).transpose(0, 3, 1, 2))


def _backward_bias(grad_y):
    device = device_of(grad_y)
    xp = array_module(device)
    N, OC = grad_y.shape[0], grad_y.shape[1]
    grad_b = xp.empty(OC, dtype=grad_y.dtype)
    if grad_y.size == 0:
        grad_b[...] = 0
        return grad_b
    gy = contiguous(xp, grad_y).reshape(N, OC, -1)
    if device != CPU:
        _conv2d_backward_bias_cuda(grad_b, gy)
    else:
        with numba_threads(1 if gy.size < _SERIAL_FLOPS else numba.get_num_threads()):
            _conv2d_backward_bias_cpu(grad_b, gy, grad_y.dtype.type(0))
    return grad_b


# ---------------------------------------------------------------- public: conv2d
def conv2d_output_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """``(N, OC, OH, OW)`` of ``conv2d_forward`` for these shapes (validated)."""
    x_shape = _check_shape_arg("x_shape", x_shape)
    w_shape = _check_shape_arg("w_shape", w_shape)
    _, (OH, OW) = _conv_geometry(x_shape, w_shape, stride, padding, dilation, groups)
    return (x_shape[0], w_shape[0], OH, OW)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto"):
    """``torch.nn.functional.conv2d(x, w, b, stride, padding, dilation, groups)``."""
    check_float("x", x, 4)
    check_float("w", w, 4)
    if b is not None:
        check_float("b", b, 1)
    check_floats(x=x, w=w, b=b)
    _check_algo(algo)
    geo, out_hw = _conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    if b is not None and b.shape[0] != w.shape[0]:
        raise ValueError(f"b: expected shape ({w.shape[0]},) (one per output channel of w "
                         f"{tuple(w.shape)}), got {tuple(b.shape)}")
    return _forward(x, w, b, geo, out_hw, algo)


def conv2d_backward_input(grad_y, w, x_shape, stride=1, padding=0, dilation=1, groups=1, *,
                          algo="auto"):
    """The gradient of ``conv2d_forward`` with respect to ``x`` (of shape ``x_shape``)."""
    check_float("grad_y", grad_y, 4)
    check_float("w", w, 4)
    check_floats(grad_y=grad_y, w=w)
    _check_algo(algo)
    x_shape = _check_shape_arg("x_shape", x_shape)
    geo, out_hw = _conv_geometry(x_shape, w.shape, stride, padding, dilation, groups)
    _check_grad_y(grad_y, (x_shape[0], w.shape[0]) + out_hw)
    return _backward_input(grad_y, w, x_shape, geo, algo)


def conv2d_backward_weight(grad_y, x, w_shape, stride=1, padding=0, dilation=1, groups=1, *,
                           algo="auto"):
    """The gradient of ``conv2d_forward`` with respect to ``w`` (of shape ``w_shape``)."""
    check_float("grad_y", grad_y, 4)
    check_float("x", x, 4)
    check_floats(grad_y=grad_y, x=x)
    _check_algo(algo)
    w_shape = _check_shape_arg("w_shape", w_shape)
    geo, out_hw = _conv_geometry(x.shape, w_shape, stride, padding, dilation, groups)
    _check_grad_y(grad_y, (x.shape[0], w_shape[0]) + out_hw)
    return _backward_weight(grad_y, x, w_shape, geo, algo)


def conv2d_backward_bias(grad_y):
    """The gradient of ``conv2d_forward`` with respect to ``b``: grad_y summed over n, oh, ow."""
    check_float("grad_y", grad_y, 4)
    check_floats(grad_y=grad_y)
    return _backward_bias(grad_y)


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1, need_input=True,
                    need_weight=True, need_bias=True, *, algo="auto"):
    """``(grad_x, grad_w, grad_b)`` of ``conv2d_forward``; ``None`` for what is not needed."""
    check_float("grad_y", grad_y, 4)
    check_float("x", x, 4)
    check_float("w", w, 4)
    check_floats(grad_y=grad_y, x=x, w=w)
    _check_algo(algo)
    geo, out_hw = _conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    _check_grad_y(grad_y, (x.shape[0], w.shape[0]) + out_hw)
    grad_x = _backward_input(grad_y, w, tuple(x.shape), geo, algo) if need_input else None
    grad_w = _backward_weight(grad_y, x, tuple(w.shape), geo, algo) if need_weight else None
    grad_b = _backward_bias(grad_y) if need_bias else None
    return grad_x, grad_w, grad_b


# ---------------------------------------------------------------- public: conv_transpose2d
def conv_transpose2d_output_shape(x_shape, w_shape, stride=1, padding=0, output_padding=0,
                                  groups=1, dilation=1):
    """``(N, OC, H_out, W_out)`` of ``conv_transpose2d_forward`` for these shapes (validated)."""
    x_shape = _check_shape_arg("x_shape", x_shape)
    w_shape = _check_shape_arg("w_shape", w_shape)
    g = _groups(groups)
    _, out_hw = _transpose_geometry(x_shape, w_shape, stride, padding, output_padding,
                                    dilation, g)
    return (x_shape[0], w_shape[1] * g) + out_hw


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1,
                             dilation=1, *, algo="auto"):
    """torch.nn.functional.conv_transpose2d with the same arguments, in the same order."""
    check_float("x", x, 4)
    check_float("w", w, 4)
    if b is not None:
        check_float("b", b, 1)
    check_floats(x=x, w=w, b=b)
    _check_algo(algo)
    geo, out_hw = _transpose_geometry(x.shape, w.shape, stride, padding, output_padding,
                                      dilation, groups)
    OC = w.shape[1] * geo.groups
    if b is not None and b.shape[0] != OC:
        raise ValueError(f"b: expected shape ({OC},) (out_channels/groups x groups for w "
                         f"{tuple(w.shape)}), got {tuple(b.shape)}")
    # x plays conv2d's grad_y; conv2d's "input" is this op's output
    y = _backward_input(x, w, (x.shape[0], OC) + out_hw, geo, algo)
    if b is not None:
        y += b.reshape(1, OC, 1, 1)
    return y


def conv_transpose2d_backward(grad_y, x, w, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, need_input=True, need_weight=True, need_bias=True, *,
                              algo="auto"):
    """``(grad_x, grad_w, grad_b)`` of ``conv_transpose2d_forward``; None for what is not needed."""
    check_float("grad_y", grad_y, 4)
    check_float("x", x, 4)
    check_float("w", w, 4)
    check_floats(grad_y=grad_y, x=x, w=w)
    _check_algo(algo)
    geo, out_hw = _transpose_geometry(x.shape, w.shape, stride, padding, output_padding,
                                      dilation, groups)
    OC = w.shape[1] * geo.groups
    _check_grad_y(grad_y, (x.shape[0], OC) + out_hw)
    grad_x = (_forward(grad_y, w, None, geo, tuple(x.shape[2:]), algo)
              if need_input else None)
    grad_w = (_backward_weight(x, grad_y, tuple(w.shape), geo, algo)
              if need_weight else None)
    grad_b = _backward_bias(grad_y) if need_bias else None
    return grad_x, grad_w, grad_b
