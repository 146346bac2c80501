"""Saved contexts (issue 16, item 4): a stack per module in training mode, the latest
forward's contexts in eval mode, nothing under nn.no_grad(); no silent wrong gradients."""
import warnings

import numpy as np
import pytest

import kernels as K
import nn
from nn.gradcheck import sample_away_from_kinks
from nn_layer_cases import CASES, build

CASE_IDS = [c.id for c in CASES]


def _grads(layer):
    return [None if p.grad is None else p.grad.copy() for p in layer.parameters()]


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_two_forwards_then_two_backwards_in_reverse_match_fresh_passes(case):
    """Every layer: forward(x1), forward(x2), backward(g2), backward(g1) in training mode
    gives each input its own gradient and the parameters the sum, as two separate passes;
    in eval mode only the latest forward is kept, and the older one's backward says so."""
    layer, x1 = build(case)
    x2 = sample_away_from_kinks(np.random.default_rng(7), x1.shape, kinks=case.kinks,
                                margin=0.05, dtype=x1.dtype)
    rng = np.random.default_rng(3)
    with nn.no_grad():
        shape = layer(x1).shape
    g1, g2 = rng.standard_normal(shape), rng.standard_normal(shape)

    layer.zero_grad()
    layer(x2)
    fresh2 = layer.backward(g2)
    grads2 = _grads(layer)
    layer.zero_grad()
    layer(x1)
    fresh1 = layer.backward(g1)
    grads1 = _grads(layer)

    layer.zero_grad()
    layer(x1)
    layer(x2)
    np.testing.assert_allclose(layer.backward(g2), fresh2, rtol=1e-12, atol=1e-14)
    if case.mode == "train":
        np.testing.assert_allclose(layer.backward(g1), fresh1, rtol=1e-12, atol=1e-14)
        _assert_same(_grads(layer), [None if a is None else a + b
                                     for a, b in zip(grads1, grads2)])
    else:
        _assert_same(_grads(layer), grads2)
        with pytest.raises(nn.BackwardError):
            layer.backward(g1)


class TwoHeads(nn.Module):
    """One Linear used twice in one forward, with a hand-written backward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.Tanh()

    def forward(self, x):
        a = self.fc(x)
        t = self.act(self.fc(x))
        self.save_for_backward(a, t)
        return a * t

    def backward(self, grad_y):
        a, t = self.saved_tensors()
        g_second = self.fc.backward(self.act.backward(grad_y * a))  # the latest use first
        g_first = self.fc.backward(grad_y * t)
        return g_first + g_second


def test_weight_sharing_inside_one_forward_gradchecks(rng):
    report = nn.gradcheck_module(TwoHeads().double(), rng.standard_normal((4, 3)))
    assert report.ok, str(report)


def test_different_batch_sizes_stack_too(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    xa, xb = rng.standard_normal((5, 3)), rng.standard_normal((9, 3))
    ga, gb = rng.standard_normal((5, 2)), rng.standard_normal((9, 2))
    model(xa)
    fresh_a = model.backward(ga)
    model(xb)
    fresh_b = model.backward(gb)
    model(xa)
    model(xb)
    np.testing.assert_allclose(model.backward(gb), fresh_b, rtol=1e-12)
    np.testing.assert_allclose(model.backward(ga), fresh_a, rtol=1e-12)


def test_a_stray_forward_is_reported_at_the_next_forward(rng):
    """The issue's case: forward, an extra (logging) forward, backward.  The backward pairs
    with the latest forward; the next forward warns and drops what was skipped."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, log_x = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    model(x)
    model(log_x)
    model.backward(np.ones((5, 2)))
    with pytest.warns(nn.UnusedContextWarning, match="nn.no_grad") as record:
        model(x)
    assert len(record) == 1  # one warning for the model, not one per layer
    assert all(len(m._saved) == 1 for m in model.modules())  # only the new forward's


def test_logging_forwards_under_no_grad_or_eval_leave_the_gradients_alone(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.0), nn.Linear(4, 2))
    model = model.double()
    x, log_x = rng.standard_normal((5, 3)), rng.standard_normal((7, 3))
    g = rng.standard_normal((5, 2))
    model(x)
    fresh = model.backward(g)
    grads = _grads(model)
    for logging in ("no_grad", "eval"):
        model.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(x)
            if logging == "no_grad":
                with nn.no_grad():
                    model(log_x)
            else:
                model.eval()
                model(log_x)
                model.train()
            np.testing.assert_allclose(model.backward(g), fresh, rtol=1e-12)
        _assert_same(_grads(model), grads)


def test_forgotten_backwards_warn_when_the_stack_grows(rng):
    layer = nn.Linear(2, 2)
    x = np.ones((1, 2), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(63):
            layer(x)
    with pytest.warns(nn.UnusedContextWarning, match="64 training-mode forwards are waiting"):
        layer(x)
    layer.clear_saved()
    with pytest.raises(nn.BackwardError):
        layer.backward(x)


def test_no_grad_saves_nothing_and_backward_says_why(rng):
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    x = np.ones((2, 3), np.float32)
    assert nn.is_grad_enabled()
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        y = model(x)
        with nn.enable_grad():
            assert nn.is_grad_enabled()
        assert not nn.is_grad_enabled()
    assert nn.is_grad_enabled()
    assert all(not m._saved for m in model.modules())
    with pytest.raises(nn.BackwardError, match="no_grad"):
        model.backward(np.ones_like(y))

    @nn.no_grad()
    def predict(a):
        assert not nn.is_grad_enabled()
        return model(a)

    predict(x)
    assert nn.is_grad_enabled()
    with pytest.raises(RuntimeError):
        with nn.no_grad():
            raise RuntimeError("inside")
    assert nn.is_grad_enabled()  # restored after an exception too


def test_eval_mode_keeps_only_the_latest_forward(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = rng.standard_normal((5, 3))
    for _ in range(10):
        model(x)
    assert all(len(m._saved_eval[1]) == 1 for m in model.modules())
    assert all(not m._saved for m in model.modules())
    g = rng.standard_normal((5, 2))
    grad_x = model.backward(g)  # input gradients in eval mode work, as in torch
    w1, b1, w2 = model[0].weight.data, model[0].bias.data, model[2].weight.data
    t = np.tanh(x @ w1.T + b1)
    np.testing.assert_allclose(grad_x, ((g @ w2) * (1 - t ** 2)) @ w1, rtol=1e-12)
    with pytest.raises(nn.BackwardError):
        model.backward(g)


def test_switching_mode_between_forward_and_backward_is_an_error():
    layer = nn.Linear(2, 2)
    layer(np.ones((1, 2), np.float32))
    layer.eval()
    with pytest.raises(nn.BackwardError, match="mode"):
        layer.backward(np.ones((1, 2), np.float32))


def test_a_failed_forward_leaves_no_context(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
    with pytest.raises(ValueError):
        model(np.ones((2, 3), np.float32))
    assert all(not m._saved for m in model.modules())


def test_moving_a_module_drops_its_contexts():
    layer = nn.Linear(2, 2)
    layer(np.ones((1, 2), np.float32))
    layer.to(dtype=np.float64)
    with pytest.raises(nn.BackwardError):
        layer.backward(np.ones((1, 2)))


def test_evaluate_keeps_no_context(rng):
    from nn import data, train
    model = nn.Sequential(nn.Linear(3, 2))
    loss_fn = nn.CrossEntropyLoss()
    loader = data.DataLoader((rng.standard_normal((10, 3)).astype(np.float32),
                              rng.integers(0, 2, 10)), batch_size=4)
    train.evaluate(model, loader, loss_fn)
    assert not loss_fn._saved and not model[0]._saved
    assert model.training


@pytest.mark.cuda
def test_cuda_contexts_stack_like_cpu(cuda_device, rng):
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).double().to(cuda_device)
    xa, xb = (K.to_device(rng.standard_normal((2, 3)), cuda_device) for _ in range(2))
    g = K.to_device(rng.standard_normal((2, 2)), cuda_device)
    model(xa)
    fresh = K.to_host(model.backward(g))
    model(xa)
    model(xb)
    model.backward(g)
    np.testing.assert_allclose(K.to_host(model.backward(g)), fresh, rtol=1e-12)
