"""Benchmarks for kernels/pool.py: pooling and nearest upsampling, float32, NCHW.

    python -m pytest benchmarks/bench_pool.py --benchmark-only [--benchmark-json=p.json]

Cases (batch x channels x height x width):

* ``max`` / ``avg`` 2x2 pooling, stride 2, on ``vgg`` 32x64x32x32, ``lenet_c1`` 64x6x24x24 and
  ``lenet_c2`` 64x16x8x8: ``fwd`` (max pooling with indices, as a layer needs them), ``bwd``,
  and ``step`` = forward then backward in one timed call, the figure the issue's target is on
  (ours at most 1.0x PyTorch's);
* ``global_avg`` on ``resnet_end`` 32x512x7x7 and ``vgg`` 32x64x32x32;
* ``upsample`` x2 on ``unet`` 32x64x16x16.

``bytes`` is the memory an op must move: forward reads x and writes y (and the int64 indices
of max pooling); backward reads grad_y (and the indices) and writes grad_x.  Baselines in the
same run: NumPy (reshape-based 2x2 pooling, ``np.repeat`` upsampling; the NumPy max backward
routes the gradient through an equality mask, which differs from torch on ties but costs the
same) and, when importable, PyTorch's ATen kernels (the ones autograd calls) with Numba's
thread count.  CUDA variants run on a real GPU only.
"""
from __future__ import annotations

import numpy as np
import pytest

import kernels as K

POOL_SHAPES = {"vgg": (32, 64, 32, 32), "lenet_c1": (64, 6, 24, 24), "lenet_c2": (64, 16, 8, 8)}
GLOBAL_SHAPES = {"resnet_end": (32, 512, 7, 7), "vgg": (32, 64, 32, 32)}
UPSAMPLE_SHAPES = {"unet": (32, 64, 16, 16)}
PASSES = ["fwd", "bwd", "step"]


def _inputs(shape, out_shape, xp_device="cpu"):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal(out_shape, dtype=np.float32)
    return K.to_device(x, xp_device), K.to_device(g, xp_device)


def _pooled(shape):
    N, C, H, W = shape
    return (N, C, H // 2, W // 2)


def _pool_bytes(op, direction, shape):
    x = 4 * int(np.prod(shape))
    y = 4 * int(np.prod(_pooled(shape)))
    indices = 2 * y if op == "max" else 0
    fwd = x + y + indices
    bwd = y + indices + x
    return {"fwd": fwd, "bwd": bwd, "step": fwd + bwd}[direction]


# ---------------------------------------------------------------- 2x2 pooling: ours
def _ours_pool(op, x, g, device="cpu"):
    shape = tuple(x.shape)
    sync = K.synchronize if device == "cuda" else (lambda: None)
    if op == "max":
        _, indices = K.max_pool2d_forward(x, 2, return_indices=True)

        def fwd():
            out = K.max_pool2d_forward(x, 2, return_indices=True)
            sync()
            return out

        def bwd():
            out = K.max_pool2d_backward(g, indices, shape, 2)
            sync()
            return out

        def step():
            _, i = K.max_pool2d_forward(x, 2, return_indices=True)
            out = K.max_pool2d_backward(g, i, shape, 2)
            sync()
            return out
    else:
        def fwd():
            out = K.avg_pool2d_forward(x, 2)
            sync()
            return out

        def bwd():
            out = K.avg_pool2d_backward(g, shape, 2)
            sync()
            return out

        def step():
            K.avg_pool2d_forward(x, 2)
            out = K.avg_pool2d_backward(g, shape, 2)
            sync()
            return out
    return {"fwd": fwd, "bwd": bwd, "step": step}


@pytest.mark.parametrize("shape_name", list(POOL_SHAPES))
@pytest.mark.parametrize("direction", PASSES)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_ours(benchmark, warm, record, machine, op, direction, shape_name):
    shape = POOL_SHAPES[shape_name]
    x, g = _inputs(shape, _pooled(shape))
    fn = _ours_pool(op, x, g)[direction]
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op}_pool 2x2 {direction} {shape_name}", shape=shape_name,
           bytes=_pool_bytes(op, direction, shape), machine=machine, first_call_s=first)


# ---------------------------------------------------------------- 2x2 pooling: NumPy
def _numpy_pool(op, x, g):
    N, C, H, W = x.shape
    blocks = x.reshape(N, C, H // 2, 2, W // 2, 2)

    def fwd():
        return blocks.max(axis=(3, 5)) if op == "max" else blocks.mean(axis=(3, 5))

    def bwd(y=fwd()):
        spread = np.repeat(np.repeat(g, 2, axis=2), 2, axis=3)
        if op == "avg":
            return spread * np.float32(0.25)
        return spread * (x == np.repeat(np.repeat(y, 2, axis=2), 2, axis=3))

    return {"fwd": fwd, "bwd": bwd, "step": lambda: bwd(fwd())}


@pytest.mark.parametrize("shape_name", list(POOL_SHAPES))
@pytest.mark.parametrize("direction", PASSES)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_numpy(benchmark, warm, record, machine, op, direction, shape_name):
    shape = POOL_SHAPES[shape_name]
    x, g = _inputs(shape, _pooled(shape))
    fn = _numpy_pool(op, x, g)[direction]
    warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op}_pool 2x2 {direction} {shape_name}", impl="numpy",
           shape=shape_name, bytes=_pool_bytes(op, direction, shape), machine=machine)


# ---------------------------------------------------------------- 2x2 pooling: PyTorch
def _torch_pool(torch, op, x, g):
    aten = torch.ops.aten
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    if op == "max":
        _, indices = aten.max_pool2d_with_indices(tx, [2, 2], [2, 2])

        def fwd():
            return aten.max_pool2d_with_indices(tx, [2, 2], [2, 2])

        def bwd(i=indices):
            return aten.max_pool2d_with_indices_backward(tg, tx, [2, 2], [2, 2], [0, 0],
                                                         [1, 1], False, i)

        def step():
            return bwd(fwd()[1])
    else:
        def fwd():
            return aten.avg_pool2d(tx, [2, 2], [2, 2])

        def bwd():
            return aten.avg_pool2d_backward(tg, tx, [2, 2], [2, 2], [0, 0], False, True, None)

        def step():
            fwd()
            return bwd()
    return {"fwd": fwd, "bwd": bwd, "step": step}


@pytest.mark.parametrize("shape_name", list(POOL_SHAPES))
@pytest.mark.parametrize("direction", PASSES)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_torch(benchmark, warm, record, machine, torch_or_skip, op, direction, shape_name):
    shape = POOL_SHAPES[shape_name]
    x, g = _inputs(shape, _pooled(shape))
    fn = _torch_pool(torch_or_skip, op, x, g)[direction]
    warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op}_pool 2x2 {direction} {shape_name}", impl="torch",
           shape=shape_name, bytes=_pool_bytes(op, direction, shape), machine=machine)


# ---------------------------------------------------------------- global average pooling
def _global(impl, direction, x, g, torch=None):
    shape = x.shape
    if impl == "ours":
        return (lambda: K.global_avg_pool2d_forward(x)) if direction == "fwd" else \
            (lambda: K.global_avg_pool2d_backward(g, shape))
    if impl == "numpy":
        return (lambda: x.mean(axis=(2, 3), keepdims=True)) if direction == "fwd" else \
            (lambda: np.broadcast_to(g / np.float32(shape[2] * shape[3]), shape).copy())
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    return (lambda: torch.nn.functional.adaptive_avg_pool2d(tx, 1)) if direction == "fwd" \
        else (lambda: torch.ops.aten._adaptive_avg_pool2d_backward(tg, tx))


@pytest.mark.parametrize("shape_name", list(GLOBAL_SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("impl", ["ours", "numpy", "torch"])
def test_global_avg_pool(benchmark, warm, record, machine, request, impl, direction, shape_name):
    torch = request.getfixturevalue("torch_or_skip") if impl == "torch" else None
    shape = GLOBAL_SHAPES[shape_name]
    x, g = _inputs(shape, shape[:2] + (1, 1))
    fn = _global(impl, direction, x, g, torch)
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"global_avg_pool {direction} {shape_name}", impl=impl,
           shape=shape_name, bytes=x.nbytes + g.nbytes, machine=machine,
           **({"first_call_s": first} if impl == "ours" else {}))


# ---------------------------------------------------------------- nearest upsampling x2
def _upsample(impl, direction, x, g, torch=None):
    N, C, H, W = x.shape
    if impl == "ours":
        return (lambda: K.upsample_nearest2d_forward(x, 2)) if direction == "fwd" else \
            (lambda: K.upsample_nearest2d_backward(g, 2))
    if impl == "numpy":
        return (lambda: np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)) if direction == "fwd" \
            else (lambda: g.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5)))
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    if direction == "fwd":
        return lambda: torch.nn.functional.interpolate(tx, scale_factor=2, mode="nearest")
    return lambda: torch.ops.aten.upsample_nearest2d_backward(tg, [2 * H, 2 * W], [N, C, H, W],
                                                              2.0, 2.0)


@pytest.mark.parametrize("shape_name", list(UPSAMPLE_SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("impl", ["ours", "numpy", "torch"])
def test_upsample_nearest(benchmark, warm, record, machine, request, impl, direction, shape_name):
    torch = request.getfixturevalue("torch_or_skip") if impl == "torch" else None
    shape = UPSAMPLE_SHAPES[shape_name]
    N, C, H, W = shape
    x, g = _inputs(shape, (N, C, 2 * H, 2 * W))
    fn = _upsample(impl, direction, x, g, torch)
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"upsample x2 {direction} {shape_name}", impl=impl, shape=shape_name,
           bytes=x.nbytes + g.nbytes, machine=machine,
           **({"first_call_s": first} if impl == "ours" else {}))


# ---------------------------------------------------------------- CUDA (real GPU only)
@pytest.mark.parametrize("shape_name", ["vgg"])
@pytest.mark.parametrize("direction", PASSES)
@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_cuda(benchmark, warm, record, cuda_or_skip, op, direction, shape_name):
    shape = POOL_SHAPES[shape_name]
    x, g = _inputs(shape, _pooled(shape), cuda_or_skip)
    fn = _ours_pool(op, x, g, cuda_or_skip)[direction]
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op}_pool 2x2 {direction} {shape_name}", device="cuda",
           shape=shape_name, bytes=_pool_bytes(op, direction, shape), first_call_s=first)
