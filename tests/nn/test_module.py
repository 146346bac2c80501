"""Parameter and Module: registration, traversal, modes, gradients, state dicts, devices."""
import numpy as np
import pytest

import kernels as K
import nn


class Affine(nn.Module):
    """y = x * scale + shift, with a buffer that counts calls."""

    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(np.ones(n))
        self.shift = nn.Parameter(np.zeros(n))
        self.register_buffer("calls", np.zeros((), np.int64))

    def forward(self, x):
        self.calls += 1
        self.save_for_backward(x)
        return x * self.scale.data + self.shift.data

    def backward(self, grad_y):
        x = self.saved_tensors()
        self.scale.accumulate((grad_y * x).sum(axis=0))
        self.shift.accumulate(grad_y.sum(axis=0))
        return grad_y * self.scale.data


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Affine(3)
        self.body = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.last = Affine(3)

    def forward(self, x):
        return self.last(self.body(self.first(x)))

    def backward(self, grad_y):
        return self.first.backward(self.body.backward(self.last.backward(grad_y)))


def test_registration_and_traversal():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["first.scale", "first.shift", "body.0.weight", "body.0.bias",
                     "body.1.weight", "body.1.bias", "last.scale", "last.shift"]
    assert [n for n, _ in net.named_children()] == ["first", "body", "last"]
    assert [n for n, _ in net.named_modules()] == ["", "first", "body", "body.0", "body.1",
                                                   "last"]
    assert [n for n, _ in net.named_buffers()] == [
        "first.calls", "body.1.running_mean", "body.1.running_var",
        "body.1.num_batches_tracked", "last.calls"]
    net.body = nn.Identity()  # replacing a child drops the old one's parameters
    assert [n for n, _ in net.named_parameters()] == ["first.scale", "first.shift",
                                                      "last.scale", "last.shift"]


def test_setattr_before_init_is_an_error():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="super"):
        Broken()


def test_assigning_to_a_buffer_keeps_it_a_buffer():
    m = Affine(2)
    m(np.ones((1, 2)))
    m.calls = m.calls + 5
    assert int(m.state_dict()["calls"]) == 6


def test_state_dict_order_is_torchs():
    """Per module: its parameters, its buffers, then its children (torch's order)."""
    keys = list(Net().state_dict())
    assert keys == ["first.scale", "first.shift", "first.calls", "body.0.weight", "body.0.bias",
                    "body.1.weight", "body.1.bias", "body.1.running_mean",
                    "body.1.running_var", "body.1.num_batches_tracked", "last.scale",
                    "last.shift", "last.calls"]


def test_state_dict_is_a_copy_and_round_trips(rng):
    net = Net()
    state = net.state_dict()
    state["body.0.weight"][...] = 7.0
    assert not np.any(net.body[0].weight.data == 7.0)
    other = Net()
    other.body[0].weight.data[...] = rng.standard_normal((3, 3))
    missing, unexpected = other.load_state_dict(net.state_dict())
    assert missing == [] and unexpected == []
    for (name, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype, name


def test_load_state_dict_lists_every_problem():
    net = Net()
    state = net.state_dict()
    del state["first.scale"]
    del state["body.1.running_var"]
    state["extra.weight"] = np.zeros(2)
    state["stray"] = np.zeros(1)
    state["body.0.weight"] = np.zeros((4, 3))
    state["last.shift"] = np.zeros(2)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    for key in ("first.scale", "body.1.running_var", "extra.weight", "stray"):
        assert key in message
    assert "body.0.weight: expected (3, 3), got (4, 3)" in message
    assert "last.shift: expected (3,), got (2,)" in message


def test_load_state_dict_not_strict():
    net = Net()
    state = net.state_dict()
    state["body.0.weight"][...] = 2.0
    del state["first.scale"]
    state["extra"] = np.zeros(1)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["first.scale"] and unexpected == ["extra"]
    assert np.all(net.body[0].weight.data == 2.0)
    state["body.0.weight"] = np.zeros((1, 1))
    with pytest.raises(ValueError, match="wrong shapes"):
        net.load_state_dict(state, strict=False)  # a wrong shape is never loadable


def test_gradients_accumulate_until_zero_grad(rng):
    m = Affine(2)
    x, g = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    m(x)
    m.backward(g)
    first = m.scale.grad.copy()
    m(x)
    m.backward(g)
    np.testing.assert_allclose(m.scale.grad, 2 * first)
    m.zero_grad()
    assert m.scale.grad is None and m.shift.grad is None


def test_parameter_accumulate_checks_the_shape():
    p = nn.Parameter(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        p.accumulate(np.zeros((3, 2)))
    frozen = nn.Parameter(np.zeros(2), requires_grad=False)
    frozen.accumulate(np.ones(2))
    assert frozen.grad is None
    assert "requires_grad=False" in repr(frozen)


def test_train_eval_reach_every_module():
    net = Net()
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_backward_before_forward_and_twice():
    m = Affine(2)
    with pytest.raises(nn.BackwardError, match="before forward"):
        m.backward(np.ones((1, 2)))
    m(np.ones((1, 2)))
    m.backward(np.ones((1, 2)))
    with pytest.raises(nn.BackwardError):
        m.backward(np.ones((1, 2)))


def test_freeze_and_unfreeze():
    net = Net()
    net.body.freeze()
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == [
        "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"]
    net.unfreeze()
    assert all(p.requires_grad for p in net.parameters())


def test_to_dtype_casts_floats_only():
    net = Net().float()
    assert all(p.dtype == np.float32 for p in net.parameters())
    assert net.state_dict()["body.1.num_batches_tracked"].dtype == np.int64
    assert net.state_dict()["body.1.running_mean"].dtype == np.float32
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())


@pytest.mark.cuda
def test_to_device_round_trip_keeps_values_and_grads(cuda_device, rng):
    net = Net().double()
    x = rng.standard_normal((4, 3))
    net(x)
    net.backward(rng.standard_normal((4, 3)))
    state = net.state_dict()
    grads = {n: p.grad.copy() for n, p in net.named_parameters()}
    net.to(cuda_device)
    assert net.device == cuda_device
    assert all(K.device_of(p.grad) == cuda_device for p in net.parameters())
    net.to("cpu")
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[name], err_msg=name)


def test_repr_nests_children():
    text = repr(Net())
    assert text.splitlines()[:3] == ["Net(", "  (first): Affine()", "  (body): Sequential("]
    assert "    (0): Linear(in_features=3, out_features=3, bias=True)" in text
