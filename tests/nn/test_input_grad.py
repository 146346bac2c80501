"""``model.backward(grad_y, input_grad=False)``: the first Conv2d/Linear skips its input
gradient (its kernel is not run), parameter gradients are exactly those of the full backward,
and users' own layers whose backward takes only ``grad_y`` keep working."""
import numpy as np
import pytest

import kernels as K
import nn
from nn.models import MLP, Autoencoder, LeNet5, ResNet, SmallVGG, UNet
from nn.module import call_backward


def _model(name):
    nn.manual_seed(0)
    return {
        "lenet5": lambda: (LeNet5(1, 3, input_size=8), (2, 1, 8, 8)),
        "smallvgg": lambda: (SmallVGG(1, 3, input_size=4, widths=(2,), hidden=4,
                                      batch_norm=True), (2, 1, 4, 4)),
        "unet": lambda: (UNet(1, 1, base=2, depth=1), (2, 1, 4, 4)),
        "resnet": lambda: (ResNet(1, 3, widths=(2,)), (2, 1, 4, 4)),
        "mlp": lambda: (MLP([8, 4, 3]), (2, 2, 2, 2)),
        "autoencoder": lambda: (Autoencoder((1, 2, 2), code_size=2, hidden=(3,)), (2, 1, 2, 2)),
        "sequential": lambda: (nn.Sequential(nn.Flatten(), nn.Identity(), nn.Linear(4, 3)),
                               (2, 1, 2, 2)),
    }[name]()


def _grads(name, device, input_grad, monkeypatch=None):
    model, shape = _model(name)
    model.to(device, dtype=np.float64).train()
    rng = np.random.default_rng(1)
    x = K.to_device(rng.standard_normal(shape), device)
    y = model(x)
    g = K.to_device(rng.standard_normal(y.shape), device)
    grad_x = call_backward(model, g, input_grad)
    return grad_x, {k: K.to_host(p.grad) for k, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["lenet5", "smallvgg", "unet", "resnet", "mlp", "autoencoder",
                                  "sequential"])
def test_parameter_gradients_are_those_of_the_full_backward(name, device):
    grad_x, full = _grads(name, device, True)
    assert grad_x is not None
    skipped, grads = _grads(name, device, False)
    assert skipped is None
    assert full.keys() == grads.keys()
    for k in full:
        np.testing.assert_array_equal(grads[k], full[k], err_msg=k)


def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, counted)
    return calls


# UNet(depth=1): seven Conv2d, and a ConvTranspose2d whose backward uses the same kernel
@pytest.mark.parametrize("name, convs", [("lenet5", 2), ("smallvgg", 2), ("unet", 8),
                                         ("resnet", 3)])
def test_the_first_convolution_runs_no_input_gradient_kernel(name, convs, device, monkeypatch):
    from kernels import conv
    calls = _count(monkeypatch, conv, "_backward_input")
    _grads(name, device, True)
    assert len(calls) == convs
    calls.clear()
    _grads(name, device, False)
    assert len(calls) == convs - 1


@pytest.mark.parametrize("name, linears", [("mlp", 2), ("sequential", 1)])
def test_the_first_linear_layer_runs_no_input_matmul(name, linears, device, monkeypatch):
    from nn import linear
    calls = _count(monkeypatch, linear, "_matmul")
    _grads(name, device, True)
    assert len(calls) == 3 * linears        # forward, weight and input gradient each
    calls.clear()
    _grads(name, device, False)
    assert len(calls) == 3 * linears - 1


class Scale(nn.Module):
    """A user's layer whose backward takes only grad_y."""

    def forward(self, x):
        self.save_for_backward(True)
        return 2 * x

    def backward(self, grad_y):
        self.saved_tensors()
        return 2 * grad_y


class Chain(nn.Module):
    """A user's model with the default (chain) backward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x)))


def test_users_own_layers_keep_working(monkeypatch):
    from kernels import conv
    rng = np.random.default_rng(2)
    nn.manual_seed(0)
    first_is_own = nn.Sequential(Scale(), nn.Linear(3, 2))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    first_is_own(x)
    assert first_is_own.backward(np.ones((4, 2), np.float32), input_grad=False) is None
    assert first_is_own[1].weight.grad is not None
    # A backward(grad_y) of one's own is called without the keyword (and computes dL/dx).
    own = Scale()
    own(x)
    np.testing.assert_array_equal(call_backward(own, np.ones((4, 3), np.float32),
                                                input_grad=False),
                                  2 * np.ones((4, 3)))
    calls = _count(monkeypatch, conv, "_backward_input")
    model = Chain()
    model(rng.standard_normal((1, 1, 2, 2)).astype(np.float32))
    assert model.backward(np.ones((1, 2), np.float32), input_grad=False) is None
    assert calls == [] and model.conv.weight.grad is not None
