"""Benchmarks for kernels/conv.py: conv2d and conv_transpose2d, float32, NCHW.

    python -m pytest benchmarks/bench_conv.py --benchmark-only [--benchmark-json=c.json]

Cases (x shape, w shape, stride / padding / dilation / groups):

* ``lenet_c1`` 64x1x28x28, 6x1x5x5;  ``lenet_c2`` 64x6x12x12, 16x6x5x5;
* ``vgg`` 32x64x32x32, 64x64x3x3 p1;  ``resnet`` 32x128x16x16, 128x128x3x3 p1;
* ``strided`` 32x64x32x32, 128x64x3x3 s2 p1;  ``dilated`` 32x64x32x32, 64x64x3x3 d2 p2;
* ``depthwise`` 32x64x32x32, 64x1x3x3 p1 groups 64;
* conv_transpose2d ``unet_up2x2`` 32x64x16x16 -> 32 channels, 2x2 s2, and ``unet_up3x3`` the
  same with 3x3 s2 p1 output_padding 1.

Passes: ``fwd``, ``bwd_input``, ``bwd_weight`` and ``step`` = forward then all three
gradients (input, weight, bias) in one timed call: the issue's targets are on that sum (at
most 1.0x PyTorch's on LeNet, 1.5x on VGG/ResNet/strided/dilated).  ``flops`` is
2*N*OC*(C/groups)*KH*KW*OH*OW per pass (three passes for ``step``); ``sgemm_fraction`` is the
rate over a float32 2048^2 NumPy matmul measured in the same run.

Baselines in the same run: NumPy im2col over the whole batch + one matmul per group (col2im
by strided adds), and, when importable, PyTorch's ATen convolution and
``convolution_backward`` (what autograd calls) with Numba's thread count.  ``first_call_s``
records our first call apart (compilation or cache load).  CUDA rows need a real GPU.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels as K

CONV_SHAPES = {  # x shape, w shape, stride, padding, dilation, groups
    "lenet_c1": ((64, 1, 28, 28), (6, 1, 5, 5), 1, 0, 1, 1),
    "lenet_c2": ((64, 6, 12, 12), (16, 6, 5, 5), 1, 0, 1, 1),
    "vgg": ((32, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1, 1),
    "resnet": ((32, 128, 16, 16), (128, 128, 3, 3), 1, 1, 1, 1),
    "strided": ((32, 64, 32, 32), (128, 64, 3, 3), 2, 1, 1, 1),
    "dilated": ((32, 64, 32, 32), (64, 64, 3, 3), 1, 2, 2, 1),
    "depthwise": ((32, 64, 32, 32), (64, 1, 3, 3), 1, 1, 1, 64),
}
TRANSPOSE_SHAPES = {  # x shape, w shape (C, OC/groups, KH, KW), stride, padding, output_padding
    "unet_up2x2": ((32, 64, 16, 16), (64, 32, 2, 2), 2, 0, 0),
    "unet_up3x3": ((32, 64, 16, 16), (64, 32, 3, 3), 2, 1, 1),
}
PASSES = ["fwd", "bwd_input", "bwd_weight", "step"]


def _shape_str(xs, ws):
    return "x" + "x".join(map(str, xs)) + " w" + "x".join(map(str, ws))


def _conv_inputs(name):
    xs, ws, s, p, d, g = CONV_SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[0], dtype=np.float32)
    y_shape = K.conv2d_output_shape(xs, ws, s, p, d, g)
    gy = rng.standard_normal(y_shape, dtype=np.float32)
    return x, w, b, gy, dict(stride=s, padding=p, dilation=d, groups=g)


def _conv_flops(name):
    xs, ws, s, p, d, g = CONV_SHAPES[name]
    N, OC, OH, OW = K.conv2d_output_shape(xs, ws, s, p, d, g)
    return 2 * N * OC * ws[1] * ws[2] * ws[3] * OH * OW


# ---------------------------------------------------------------- NumPy baseline
def _np_columns(x, KH, KW, s, p, d):
    """(N, C, KH, KW, OH, OW) columns of the zero-padded batch: the whole-batch im2col."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    N, C, Hp, Wp = xp.shape
    OH = (Hp - d * (KH - 1) - 1) // s + 1
    OW = (Wp - d * (KW - 1) - 1) // s + 1
    cols = np.empty((N, C, KH, KW, OH, OW), x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            cols[:, :, kh, kw] = xp[:, :, kh * d:kh * d + s * (OH - 1) + 1:s,
                                    kw * d:kw * d + s * (OW - 1) + 1:s]
    return cols


def np_conv2d_forward(x, w, b, s, p, d, g):
    N = x.shape[0]
    OC, Cg, KH, KW = w.shape
    cols = _np_columns(x, KH, KW, s, p, d)
    OH, OW = cols.shape[4:]
    cols = cols.reshape(N, g, Cg * KH * KW, OH * OW)
    wg = w.reshape(g, OC // g, Cg * KH * KW)
    y = np.matmul(wg[None], cols).reshape(N, OC, OH, OW)
    return y + b.reshape(1, OC, 1, 1) if b is not None else y


def np_conv2d_backward_input(gy, w, x_shape, s, p, d, g):
    N, C, H, W = x_shape
    OC, Cg, KH, KW = w.shape
    OH, OW = gy.shape[2:]
    wg = w.reshape(g, OC // g, Cg * KH * KW)
    gcols = np.matmul(wg.transpose(0, 2, 1)[None], gy.reshape(N, g, OC // g, OH * OW))
    gcols = gcols.reshape(N, C, KH, KW, OH, OW)
    gxp = np.zeros((N, C, H + 2 * p, W + 2 * p), gy.dtype)
    for kh in range(KH):
        for kw in range(KW):
            gxp[:, :, kh * d:kh * d + s * (OH - 1) + 1:s,
                kw * d:kw * d + s * (OW - 1) + 1:s] += gcols[:, :, kh, kw]
    return gxp[:, :, p:p + H, p:p + W]


def np_conv2d_backward_weight(gy, x, w_shape, s, p, d, g):
    N = x.shape[0]
    OC, Cg, KH, KW = w_shape
    cols = _np_columns(x, KH, KW, s, p, d)
    P = cols.shape[4] * cols.shape[5]
    cols = cols.reshape(N, g, Cg * KH * KW, P).transpose(1, 2, 0, 3).reshape(g, -1, N * P)
    gyg = gy.reshape(N, g, OC // g, P).transpose(1, 2, 0, 3).reshape(g, OC // g, N * P)
    return np.matmul(gyg, cols.transpose(0, 2, 1)).reshape(w_shape)


# ---------------------------------------------------------------- conv2d
def _ours_conv(name, pass_, device="cpu"):
    x, w, b, gy, args = (K.to_device(a, device) if isinstance(a, np.ndarray) else a
                         for a in _conv_inputs(name))
    sync = (lambda: K.synchronize()) if device == "cuda" else (lambda: None)

    def run():
        if pass_ == "fwd":
            out = K.conv2d_forward(x, w, b, **args)
        elif pass_ == "bwd_input":
            out = K.conv2d_backward_input(gy, w, x.shape, **args)
        elif pass_ == "bwd_weight":
            out = K.conv2d_backward_weight(gy, x, w.shape, **args)
        else:
            out = (K.conv2d_forward(x, w, b, **args),) + K.conv2d_backward(gy, x, w, **args)
        sync()
        return out
    return run


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("name", CONV_SHAPES)
def test_conv2d_ours(benchmark, record, warm, machine, name, pass_):
    run = _ours_conv(name, pass_)
    first = warm(run)
    benchmark.group = f"conv2d {pass_} {name}"
    benchmark(run)
    xs, ws = CONV_SHAPES[name][:2]
    record(benchmark, case=f"conv2d {pass_} {name}", impl="ours", shape=_shape_str(xs, ws),
           flops=_conv_flops(name) * (3 if pass_ == "step" else 1),
           bytes=_conv_bytes(name, pass_), machine=machine,
           first_call_s=first)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("name", CONV_SHAPES)
def test_conv2d_numpy(benchmark, record, machine, name, pass_):
    x, w, b, gy, a = _conv_inputs(name)
    s, p, d, g = a["stride"], a["padding"], a["dilation"], a["groups"]
    fns = {
        "fwd": lambda: np_conv2d_forward(x, w, b, s, p, d, g),
        "bwd_input": lambda: np_conv2d_backward_input(gy, w, x.shape, s, p, d, g),
        "bwd_weight": lambda: np_conv2d_backward_weight(gy, x, w.shape, s, p, d, g),
        "step": lambda: (np_conv2d_forward(x, w, b, s, p, d, g),
                         np_conv2d_backward_input(gy, w, x.shape, s, p, d, g),
                         np_conv2d_backward_weight(gy, x, w.shape, s, p, d, g),
                         gy.sum(axis=(0, 2, 3))),
    }
    benchmark.group = f"conv2d {pass_} {name}"
    benchmark(fns[pass_])
    xs, ws = CONV_SHAPES[name][:2]
    record(benchmark, case=f"conv2d {pass_} {name}", impl="numpy", shape=_shape_str(xs, ws),
           flops=_conv_flops(name) * (3 if pass_ == "step" else 1),
           bytes=_conv_bytes(name, pass_), machine=machine)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("name", CONV_SHAPES)
def test_conv2d_torch(benchmark, record, machine, torch_or_skip, name, pass_):
    torch = torch_or_skip
    x, w, b, gy, a = (torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                      for v in _conv_inputs(name))
    s, p, d, g = a["stride"], a["padding"], a["dilation"], a["groups"]
    conv = torch.ops.aten.convolution
    back = torch.ops.aten.convolution_backward
    pair = [s, s], [p, p], [d, d]
    masks = {"bwd_input": [True, False, False], "bwd_weight": [False, True, False],
             "step": [True, True, True]}

    def run():
        with torch.no_grad():
            if pass_ == "fwd":
                return conv(x, w, b, *pair, False, [0, 0], g)
            if pass_ == "step":
                conv(x, w, b, *pair, False, [0, 0], g)
            return back(gy, x, w, [w.shape[0]], *pair, False, [0, 0], g, masks[pass_])
    benchmark.group = f"conv2d {pass_} {name}"
    benchmark(run)
    xs, ws = CONV_SHAPES[name][:2]
    record(benchmark, case=f"conv2d {pass_} {name}", impl="torch", shape=_shape_str(xs, ws),
           flops=_conv_flops(name) * (3 if pass_ == "step" else 1),
           bytes=_conv_bytes(name, pass_), machine=machine)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("name", CONV_SHAPES)
def test_conv2d_ours_cuda(benchmark, record, warm, cuda_or_skip, name, pass_):
    run = _ours_conv(name, pass_, device=cuda_or_skip)
    first = warm(run)
    benchmark.group = f"conv2d {pass_} {name} cuda"
    benchmark(run)
    xs, ws = CONV_SHAPES[name][:2]
    record(benchmark, case=f"conv2d {pass_} {name}", impl="ours", device="cuda",
           shape=_shape_str(xs, ws), flops=_conv_flops(name) * (3 if pass_ == "step" else 1),
           bytes=_conv_bytes(name, pass_),
           first_call_s=first)


# ---------------------------------------------------------------- conv_transpose2d
def _transpose_inputs(name):
    xs, ws, s, p, op = TRANSPOSE_SHAPES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs, dtype=np.float32)
    w = rng.standard_normal(ws, dtype=np.float32)
    b = rng.standard_normal(ws[1], dtype=np.float32)
    y_shape = K.conv_transpose2d_output_shape(xs, ws, s, p, op)
    gy = rng.standard_normal(y_shape, dtype=np.float32)
    return x, w, b, gy, dict(stride=s, padding=p, output_padding=op)


def _transpose_flops(name):
    xs, ws = TRANSPOSE_SHAPES[name][:2]
    return 2 * int(np.prod(xs)) * ws[1] * ws[2] * ws[3]


def _min_bytes(x, w, gy):
    """Least memory traffic of one pass: each reads two of x, w, y and writes the third."""
    return x.nbytes + w.nbytes + gy.nbytes


def _conv_bytes(name, pass_):
    x, w, _, gy, _ = _conv_inputs(name)
    return _min_bytes(x, w, gy) * (3 if pass_ == "step" else 1)


def _transpose_bytes(name, pass_):
    x, w, _, gy, _ = _transpose_inputs(name)
    return _min_bytes(x, w, gy) * (1 if pass_ == "fwd" else 2)


@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("name", TRANSPOSE_SHAPES)
def test_conv_transpose2d_ours(benchmark, record, warm, machine, name, pass_):
    x, w, b, gy, args = _transpose_inputs(name)
    if pass_ == "fwd":
        def run():
            return K.conv_transpose2d_forward(x, w, b, **args)
    else:
        def run():
            return K.conv_transpose2d_backward(gy, x, w, **args)
    first = warm(run)
    benchmark.group = f"conv_transpose2d {pass_} {name}"
    benchmark(run)
    record(benchmark, case=f"conv_transpose2d {pass_} {name}", impl="ours",
           shape=_shape_str(*TRANSPOSE_SHAPES[name][:2]),
           flops=_transpose_flops(name) * (1 if pass_ == "fwd" else 2),
           bytes=_transpose_bytes(name, pass_), machine=machine,
           first_call_s=first)


@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("name", TRANSPOSE_SHAPES)
def test_conv_transpose2d_numpy(benchmark, record, machine, name, pass_):
    x, w, b, gy, a = _transpose_inputs(name)
    s, p, op = a["stride"], a["padding"], a["output_padding"]
    if pass_ == "fwd":
        def run():   # conv2d's input gradient, over a grad_y that is this x
            y = np_conv2d_backward_input(x, w, gy.shape, s, p, 1, 1)
            return y + b.reshape(1, -1, 1, 1)
    else:
        def run():
            return (np_conv2d_forward(gy, w, None, s, p, 1, 1)[:, :, :x.shape[2], :x.shape[3]],
                    np_conv2d_backward_weight(x, gy, w.shape, s, p, 1, 1),
                    gy.sum(axis=(0, 2, 3)))
    benchmark.group = f"conv_transpose2d {pass_} {name}"
    benchmark(run)
    record(benchmark, case=f"conv_transpose2d {pass_} {name}", impl="numpy",
           shape=_shape_str(*TRANSPOSE_SHAPES[name][:2]),
           flops=_transpose_flops(name) * (1 if pass_ == "fwd" else 2),
           bytes=_transpose_bytes(name, pass_), machine=machine)


@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("name", TRANSPOSE_SHAPES)
def test_conv_transpose2d_torch(benchmark, record, machine, torch_or_skip, name, pass_):
    torch = torch_or_skip
    x, w, b, gy, a = (torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                      for v in _transpose_inputs(name))
    s, p, op = a["stride"], a["padding"], a["output_padding"]
    geo = [s, s], [p, p], [1, 1], True, [op, op], 1

    def run():
        with torch.no_grad():
            if pass_ == "fwd":
                return torch.ops.aten.convolution(x, w, b, *geo)
            return torch.ops.aten.convolution_backward(gy, x, w, [w.shape[1]], *geo,
                                                       [True, True, True])
    benchmark.group = f"conv_transpose2d {pass_} {name}"
    benchmark(run)
    record(benchmark, case=f"conv_transpose2d {pass_} {name}", impl="torch",
           shape=_shape_str(*TRANSPOSE_SHAPES[name][:2]),
           flops=_transpose_flops(name) * (1 if pass_ == "fwd" else 2),
           bytes=_transpose_bytes(name, pass_), machine=machine)
