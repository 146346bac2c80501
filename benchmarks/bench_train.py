"""Whole training steps: forward + backward + SGD-momentum update, ours against PyTorch CPU.

Both sides start from the same weights (ours copied into an identical PyTorch module) and
train on the same batch; the median is over many steps after warm-up.  ``flops`` is an
estimate: 3 x the forward's multiply-adds x 2 (the backward costs about twice the forward).

Targets: our step time at most 1.0x PyTorch's for LeNet-5, at most 1.5x for SmallVGG and the
small ResNet.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import nn
from nn import models

CASES = {
    "lenet5": (lambda: models.LeNet5(), (64, 1, 28, 28)),
    "smallvgg": (lambda: models.SmallVGG(), (32, 3, 32, 32)),
    "resnet": (lambda: models.ResNet(), (32, 3, 32, 32)),
}


def setup(name):
    build, shape = CASES[name]
    nn.manual_seed(0)
    model = build()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 10, shape[0])
    macs = nn.summary(model, shape[1:], verbose=False).total_connections * shape[0]
    return model, x, labels, 6 * macs


def torch_twin(model):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "nn"))
    try:
        from nn_torch_mirror import twin
    finally:
        sys.path.pop(0)
    import torch
    t = twin(model)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    return t


@pytest.mark.parametrize("name", list(CASES))
def test_train_step_ours(benchmark, record, machine, warm, name):
    model, x, labels, flops = setup(name)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss_fn(model(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()

    first = warm(step)
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)
    record(benchmark, case=f"train step {name}", impl="ours", shape="x".join(map(str, x.shape)),
           flops=flops, machine=machine, first_call_s=first)


@pytest.mark.parametrize("name", list(CASES))
def test_train_step_torch(benchmark, record, machine, torch_or_skip, name):
    torch = torch_or_skip
    model, x, labels, flops = setup(name)
    t = torch_twin(model).train()
    opt = torch.optim.SGD(t.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(t(xt), yt).backward()
        opt.step()

    step()
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)
    record(benchmark, case=f"train step {name}", impl="torch", shape="x".join(map(str, x.shape)),
           flops=flops, machine=machine)
