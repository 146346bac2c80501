"""The GPU check's timings: our CUDA path against PyTorch CUDA, in one process.

    python -m pytest benchmarks/bench_gpu.py --benchmark-only --benchmark-json=gpu.json

(``benchmarks/gpu_check.sh`` runs this after the CUDA test suite.)  Cases, float32:
conv2d forward and forward+backward on the VGG layer (32x64x32x32, 64x64x3x3 p1), 2x2 max
pooling and ReLU on 32x64x32x32, and a training step (forward, cross-entropy, backward,
SGD-momentum) of LeNet-5 (64x1x28x28) and SmallVGG (32x3x32x32).  Every timed call ends with
a device synchronisation.  Everything skips without a real GPU (never runs on the simulator);
the PyTorch rows also skip when PyTorch has no CUDA.
"""
import numpy as np
import pytest

import kernels as K
import nn
from nn import models

X_SHAPE, W_SHAPE = (32, 64, 32, 32), (64, 64, 3, 3)
TRAIN = {"lenet5": (lambda: models.LeNet5(), (64, 1, 28, 28)),
         "smallvgg": (lambda: models.SmallVGG(), (32, 3, 32, 32))}


@pytest.fixture(scope="module")
def torch_cuda():
    try:
        import torch
    except ImportError:
        pytest.skip("PyTorch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False   # strict FP32 on both sides
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _data(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _ops(device):
    x = K.to_device(_data(X_SHAPE), device)
    w = K.to_device(_data(W_SHAPE, 1) * 0.05, device)
    b = K.to_device(_data(W_SHAPE[:1], 2), device)
    gy = K.to_device(_data(X_SHAPE, 3), device)
    return {
        "conv2d fwd": lambda: K.conv2d_forward(x, w, b, padding=1),
        "conv2d fwd+bwd": lambda: (K.conv2d_forward(x, w, b, padding=1),
                                   K.conv2d_backward(gy, x, w, padding=1)),
        "max_pool2d 2x2 fwd": lambda: K.max_pool2d_forward(x, 2),
        "relu fwd": lambda: K.relu_forward(x),
    }


def _torch_ops(torch):
    F = torch.nn.functional
    x = torch.from_numpy(_data(X_SHAPE)).cuda().requires_grad_()
    w = torch.from_numpy(_data(W_SHAPE, 1) * 0.05).cuda().requires_grad_()
    b = torch.from_numpy(_data(W_SHAPE[:1], 2)).cuda().requires_grad_()
    gy = torch.from_numpy(_data(X_SHAPE, 3)).cuda()

    def fwd_bwd():
        y = F.conv2d(x, w, b, padding=1)
        torch.autograd.grad(y, (x, w, b), gy)
    with torch.no_grad():
        plain = x.detach()
        return {
            "conv2d fwd": lambda: F.conv2d(plain, w.detach(), b.detach(), padding=1),
            "conv2d fwd+bwd": fwd_bwd,
            "max_pool2d 2x2 fwd": lambda: F.max_pool2d(plain, 2),
            "relu fwd": lambda: F.relu(plain),
        }


def _timed(benchmark, fn, sync):
    def call():
        fn()
        sync()
    call()
    benchmark.pedantic(call, rounds=50, iterations=1, warmup_rounds=5)


@pytest.mark.parametrize("case", list(_ops("cpu")))
def test_gpu_op_ours(benchmark, record, cuda_or_skip, case):
    _timed(benchmark, _ops("cuda")[case], K.synchronize)
    record(benchmark, case=case, impl="ours", device="cuda", shape="x".join(map(str, X_SHAPE)))


@pytest.mark.parametrize("case", list(_ops("cpu")))
def test_gpu_op_torch(benchmark, record, cuda_or_skip, torch_cuda, case):
    _timed(benchmark, _torch_ops(torch_cuda)[case], torch_cuda.cuda.synchronize)
    record(benchmark, case=case, impl="torch", device="cuda", shape="x".join(map(str, X_SHAPE)))


def _train_setup(name):
    build, shape = TRAIN[name]
    nn.manual_seed(0)
    model = build()
    x = _data(shape)
    labels = np.random.default_rng(0).integers(0, 10, shape[0])
    return model, x, labels


@pytest.mark.parametrize("name", list(TRAIN))
def test_gpu_train_step_ours(benchmark, record, cuda_or_skip, name):
    model, x, labels = _train_setup(name)
    model.to("cuda").train()
    x, labels = K.to_device(x, "cuda"), K.to_device(labels, "cuda")
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    _timed(benchmark, step, K.synchronize)
    record(benchmark, case=f"train step {name}", impl="ours", device="cuda",
           shape="x".join(map(str, x.shape)))


@pytest.mark.parametrize("name", list(TRAIN))
def test_gpu_train_step_torch(benchmark, record, cuda_or_skip, torch_cuda, name):
    from bench_train import torch_twin
    torch = torch_cuda
    model, x, labels = _train_setup(name)
    t = torch_twin(model).cuda().train()
    opt = torch.optim.SGD(t.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(labels).cuda()

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(t(xt), yt).backward()
        opt.step()
    _timed(benchmark, step, torch.cuda.synchronize)
    record(benchmark, case=f"train step {name}", impl="torch", device="cuda",
           shape="x".join(map(str, x.shape)))
