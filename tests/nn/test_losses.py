"""Loss modules: values against NumPy references and torch, gradients against differences."""
import numpy as np
import pytest

import kernels as K
import nn

RTOL = {np.float32: 2e-5, np.float64: 1e-12}


# ---------------------------------------------------------------- NumPy references (float64)
def _reduce(values, reduction):
    return values.sum() if reduction == "sum" else values.mean()


def mse_ref(pred, target, reduction):
    return _reduce((pred - target) ** 2, reduction)


def cross_entropy_ref(logits, labels, reduction, label_smoothing=0.0):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n, k = logits.shape
    q = np.full((n, k), label_smoothing / k)
    q[np.arange(n), labels] += 1.0 - label_smoothing
    return _reduce(-(q * log_p).sum(axis=1), reduction)


def bce_with_logits_ref(x, t, reduction):
    return _reduce(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))), reduction)


def bce_ref(p, t, reduction):
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_q = np.maximum(np.log1p(-p), -100.0)
    return _reduce(-(t * log_p + (1 - t) * log_q), reduction)


def _inputs(name, rng, shape=(3, 4)):
    """(loss module factory, pred, target, reference) for one loss; pred in float64."""
    n, k = shape
    if name == "mse":
        return (nn.MSELoss, rng.standard_normal(shape), rng.standard_normal(shape), mse_ref)
    if name == "ce":
        return (nn.CrossEntropyLoss, rng.standard_normal(shape) * 2,
                rng.integers(0, k, n), cross_entropy_ref)
    if name == "bce_logits":
        return (nn.BCEWithLogitsLoss, rng.standard_normal(shape) * 3, rng.random(shape),
                bce_with_logits_ref)
    return (nn.BCELoss, rng.uniform(0.05, 0.95, shape), rng.random(shape), bce_ref)


LOSSES = ["mse", "ce", "bce_logits", "bce"]


def _on(device, dtype, pred, target):
    target = target.astype(dtype) if target.dtype.kind == "f" else target
    return K.to_device(pred.astype(dtype), device), K.to_device(target, device)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", LOSSES)
def test_value_matches_reference(name, reduction, device, dtype, rng):
    make, pred, target, ref = _inputs(name, rng)
    fn = make(reduction=reduction)
    p, t = _on(device, dtype, pred, target)
    loss = fn(p, t)
    assert K.device_of(loss) == device and loss.shape == () and loss.dtype == dtype
    want = ref(pred.astype(dtype).astype(np.float64),
               target.astype(dtype).astype(np.float64) if target.dtype.kind == "f" else target,
               reduction)
    np.testing.assert_allclose(float(loss), want, rtol=RTOL[dtype])
    grad = fn.backward()
    assert K.device_of(grad) == device and grad.dtype == dtype and grad.shape == pred.shape


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck(name, reduction, rng):
    make, pred, target, _ = _inputs(name, rng)
    fn = make(reduction=reduction)

    def backward(grad_loss, pred):
        fn(pred, target)
        return fn.backward(grad_loss)

    nn.gradcheck(lambda pred: fn(pred, target), backward, {"pred": pred})


@pytest.mark.cuda
@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck_cuda(name, cuda_device):
    make, pred, target, _ = _inputs(name, np.random.default_rng(5), shape=(2, 3))
    fn = make()
    t = K.to_device(target, cuda_device)

    def backward(grad_loss, pred):
        fn(pred, t)
        return fn.backward(grad_loss)

    nn.gradcheck(lambda pred: fn(pred, t), backward, {"pred": K.to_device(pred, cuda_device)})


@pytest.mark.cuda
@pytest.mark.parametrize("name", LOSSES)
def test_cpu_and_cuda_agree(name, cuda_device, dtype):
    make, pred, target, _ = _inputs(name, np.random.default_rng(6), shape=(3, 5))
    results = []
    for device in ("cpu", cuda_device):
        fn = make(reduction="sum")
        loss = fn(*_on(device, dtype, pred, target))
        results.append((float(loss), K.to_host(fn.backward())))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=RTOL[dtype])
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=RTOL[dtype], atol=1e-7)


@pytest.mark.parametrize("smoothing", [0.1, 0.5, 1.0])
def test_cross_entropy_label_smoothing(smoothing, rng):
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    np.testing.assert_allclose(float(fn(logits, labels)),
                               cross_entropy_ref(logits, labels, "mean", smoothing), rtol=1e-12)

    def backward(grad_loss, x):
        fn(x, labels)
        return fn.backward(grad_loss)

    nn.gradcheck(lambda x: fn(x, labels), backward, {"logits": logits})


def test_backward_scales_by_grad_loss(rng):
    fn = nn.MSELoss()
    pred, target = rng.standard_normal(6), rng.standard_normal(6)
    fn(pred, target)
    one = fn.backward()
    fn(pred, target)
    np.testing.assert_allclose(fn.backward(np.array(2.5)), 2.5 * one, rtol=1e-15)
    fn(pred.astype(np.float32), target.astype(np.float32))
    assert fn.backward(2.0).dtype == np.float32  # a float64 factor does not upcast


def test_bce_clamps_logs_like_torch():
    p = np.array([0.0, 1.0, 0.0, 1.0])
    t = np.array([1.0, 0.0, 0.0, 1.0])
    fn = nn.BCELoss(reduction="sum")
    assert float(fn(p, t)) == 200.0  # log(0) clamped at -100; the exact ends cost nothing
    assert np.all(np.isfinite(fn.backward()))


def test_errors():
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'sum', got 'avg'"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"p: BCELoss expects probabilities in \[0, 1\]"):
        nn.BCELoss()(np.array([0.5, 1.5]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"p and target must have the same shape"):
        nn.BCELoss()(np.array([0.5, 0.5]), np.array([0.0, 1.0, 1.0]))
    fn = nn.MSELoss()
    with pytest.raises(nn.BackwardError):
        fn.backward()
    fn(np.ones(3), np.zeros(3))
    fn.backward()
    with pytest.raises(nn.BackwardError):
        fn.backward()  # twice for one forward


def test_repr():
    assert repr(nn.CrossEntropyLoss(label_smoothing=0.1)) == \
        "CrossEntropyLoss(reduction='mean', label_smoothing=0.1)"
    assert repr(nn.MSELoss(reduction="sum")) == "MSELoss(reduction='sum')"


# ---------------------------------------------------------------- against torch
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,torch_name,kwargs", [
    ("mse", "MSELoss", {}),
    ("ce", "CrossEntropyLoss", {}),
    ("ce", "CrossEntropyLoss", {"label_smoothing": 0.2}),
    ("bce_logits", "BCEWithLogitsLoss", {}),
    ("bce", "BCELoss", {}),
])
def test_matches_torch(name, torch_name, kwargs, reduction, rng):
    torch = pytest.importorskip("torch")
    make, pred, target, _ = _inputs(name, rng, shape=(6, 5))
    ours = make(reduction=reduction, **kwargs)
    loss = ours(pred, target)
    tp = torch.tensor(pred, requires_grad=True)
    tloss = getattr(torch.nn, torch_name)(reduction=reduction, **kwargs)(tp, torch.tensor(target))
    tloss.backward()
    np.testing.assert_allclose(float(loss), tloss.item(), rtol=1e-12)
    np.testing.assert_allclose(ours.backward(), tp.grad.numpy(), rtol=1e-10, atol=1e-15)
