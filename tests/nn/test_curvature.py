"""Curvature tools against exact Hessians: a quadratic with known eigenvalues, a logistic
regression with its closed-form Hessian, and a tiny tanh MLP whose reference Hessian comes
from second differences of the loss alone (no gradient code shared with the tools)."""
import numpy as np
import pytest

import kernels as K
import nn
from nn import curvature as C

from curvature_models import hessian_from_losses, logistic_regression, quadratic, tiny_mlp

EIGS = np.array([10.0, 5.0, 2.5, 1.0, 0.5, 0.1, -0.3, -2.0])


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))


# ---------------------------------------------------------------- quadratic: everything exact
def test_hvp_and_hessian_of_quadratic_are_exact(rng):
    obj, A = quadratic(EIGS)
    for _ in range(3):
        v = rng.standard_normal(obj.size) * 3.0
        np.testing.assert_allclose(C.hvp(obj, v), A @ v, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(C.hessian(obj), A, atol=1e-8)


def test_directional_curvature_of_quadratic_is_exact(rng):
    obj, A = quadratic(EIGS)
    v = rng.standard_normal(obj.size)
    assert C.directional_curvature(obj, v, normalize=False) == pytest.approx(v @ A @ v, rel=1e-9)
    assert C.directional_curvature(obj, 7 * v) == pytest.approx(v @ A @ v / (v @ v), rel=1e-9)
    _, Q = np.linalg.eigh(A)
    assert C.directional_curvature(obj, Q[:, -1]) == pytest.approx(EIGS.max(), rel=1e-9)
    with pytest.raises(ValueError, match="direction"):
        C.directional_curvature(obj, np.zeros(obj.size))


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_of_quadratic(method):
    obj, A = quadratic(EIGS)
    res = C.top_eigenvalues(obj, k=3, method=method)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, [10.0, 5.0, 2.5], rtol=1e-3)
    # The vectors are eigenvectors: A v = lambda v, and orthonormal.
    V = res.eigenvectors
    np.testing.assert_allclose(A @ V, V * res.eigenvalues, atol=1e-3 * 10)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-6)


def test_power_iteration_finds_largest_magnitude_and_lanczos_largest_value():
    obj, _ = quadratic(np.array([3.0, 1.0, 0.5, -8.0, -0.2]))
    assert C.top_eigenvalues(obj, method="power").eigenvalues[0] == pytest.approx(-8.0, rel=1e-3)
    assert C.top_eigenvalues(obj, method="lanczos").eigenvalues[0] == pytest.approx(3.0, rel=1e-3)


def test_smallest_eigenvalue_flags_the_saddle():
    obj, _ = quadratic(EIGS)
    assert C.smallest_eigenvalue(obj) == pytest.approx(-2.0, rel=1e-3)
    pd, _ = quadratic(np.abs(EIGS) + 0.05)
    assert C.smallest_eigenvalue(pd) == pytest.approx(0.15, rel=1e-3)


def test_hutchinson_trace_is_statistically_close():
    obj, A = quadratic(EIGS, seed=3)
    est = C.hutchinson_trace(obj, n_samples=200, seed=1)
    off = A - np.diag(np.diag(A))
    # Rademacher probes: Var(z^T A z) = 2 * sum_{i != j} A_ij^2; the sample stderr estimates it.
    true_se = np.sqrt(2 * np.sum(off ** 2) / 200)
    assert est.stderr == pytest.approx(true_se, rel=0.3)
    assert abs(est.estimate - EIGS.sum()) < 4 * true_se
    # For a diagonal Hessian every Rademacher probe gives the trace exactly.
    diag = C.Objective(lambda w: (0.5 * w @ (EIGS * w), EIGS * w), np.ones(EIGS.size))
    exact = C.hutchinson_trace(diag, n_samples=5)
    assert exact.estimate == pytest.approx(EIGS.sum(), rel=1e-9)
    assert exact.stderr < 1e-8


def test_max_stable_lr():
    assert C.max_stable_lr(4.0) == 0.5
    assert C.max_stable_lr(-1.0) == float("inf")


# ---------------------------------------------------------------- logistic regression
def test_logistic_regression_against_closed_form_hessian():
    obj, exact = logistic_regression()
    H = exact(obj.w0)
    np.testing.assert_allclose(C.hessian(obj), H, atol=1e-8)
    lam = np.linalg.eigvalsh(H)
    res = C.top_eigenvalues(obj, k=3)
    assert np.all(rel(res.eigenvalues, lam[::-1][:3]) < 1e-3)
    assert rel(C.smallest_eigenvalue(obj), lam[0]) < 1e-3
    est = C.hutchinson_trace(obj, n_samples=100)
    assert abs(est.estimate - np.trace(H)) < 4 * est.stderr + 1e-9
    v = np.arange(obj.size) - 2.0
    assert C.directional_curvature(obj, v) == pytest.approx(v @ H @ v / (v @ v), rel=1e-6)


# ---------------------------------------------------------------- tiny MLP: a non-convex loss
def test_tiny_mlp_against_hessian_from_loss_differences():
    obj, loss = tiny_mlp()
    H = hessian_from_losses(loss, obj.w0)
    lam = np.linalg.eigvalsh(H)
    assert lam[0] < 0  # this point is not a minimum: the test covers indefinite Hessians
    np.testing.assert_allclose(C.hessian(obj), H, atol=1e-6 * np.abs(lam).max())
    res = C.top_eigenvalues(obj, k=4)
    assert res.converged
    assert np.all(rel(res.eigenvalues, lam[::-1][:4]) < 1e-3)
    assert rel(C.smallest_eigenvalue(obj), lam[0]) < 1e-3
    power = C.top_eigenvalues(obj, k=2, method="power", max_iter=5000)
    by_magnitude = lam[np.argsort(-np.abs(lam))][:2]
    assert np.all(rel(power.eigenvalues, by_magnitude) < 1e-3)


def test_float32_objective_uses_a_larger_step():
    obj64, _ = quadratic(EIGS)
    obj32 = C.Objective(obj64.fn, obj64.w0, dtype=np.float32)
    assert C._step(obj32, obj32.w0) / C._step(obj64, obj64.w0) == pytest.approx(
        (np.finfo(np.float32).eps / np.finfo(np.float64).eps) ** (1 / 3))


def test_bad_arguments():
    obj, _ = quadratic(EIGS)
    with pytest.raises(ValueError, match="v: expected shape"):
        C.hvp(obj, np.ones(3))
    with pytest.raises(ValueError, match="method"):
        C.top_eigenvalues(obj, method="qr")
    with pytest.raises(ValueError, match="k: must be"):
        C.top_eigenvalues(obj, k=0)
    with pytest.raises(ValueError, match="shapes"):
        C.Objective(obj.fn, obj.w0, shapes=[(3,)])


# ---------------------------------------------------------------- the model path
class Dense(nn.Module):
    """A float64 Linear layer written here so the model path is tested on its own."""

    def __init__(self, w, b):
        super().__init__()
        self.weight = nn.Parameter(np.array(w))
        self.bias = nn.Parameter(np.array(b))

    def forward(self, x):
        self.save_for_backward(x)
        return x @ self.weight.data.T + self.bias.data

    def backward(self, grad_y):
        x = self.saved_tensors()
        self.weight.accumulate(grad_y.T @ x)
        self.bias.accumulate(grad_y.sum(0))
        return grad_y @ self.weight.data


class TanhNet(nn.Module):
    def __init__(self, params):
        super().__init__()
        self.fc1 = Dense(params[0], params[1])
        self.fc2 = Dense(params[2], params[3])

    def forward(self, x):
        self.a = np.tanh(self.fc1(x))
        return self.fc2(self.a)

    def backward(self, grad_y):
        return self.fc1.backward(self.fc2.backward(grad_y) * (1 - self.a ** 2))


class HalfSquaredError(nn.Module):
    """``sum |y - t|^2 / (2 N)``, the tiny MLP's loss, as a loss module."""

    def forward(self, y, t):
        self.save_for_backward(y, t)
        return np.asarray(0.5 * np.sum((y - t) ** 2) / len(y))

    def backward(self):
        y, t = self.saved_tensors()
        return (y - t) / len(y)


def _model_objective(batch_size=None, dtype=np.float64):
    ref, _ = tiny_mlp()
    rng = np.random.default_rng(0)  # the same draws as tiny_mlp, so the data match
    X = rng.standard_normal((20, 3))
    T = rng.standard_normal((20, 2))
    model = TanhNet(ref.split(ref.w0))
    if dtype != np.float64:
        model.to(dtype=dtype)
        X = X.astype(dtype)
        T = T.astype(dtype)
    obj = C.Objective.from_model(model, HalfSquaredError(), X, T, batch_size=batch_size)
    return obj, ref, model


def test_model_objective_matches_the_function_it_wraps(rng):
    obj, ref, model = _model_objective()
    assert obj.shapes == [(5, 3), (5,), (2, 5), (2,)]
    assert obj.names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    np.testing.assert_array_equal(obj.w0, ref.w0)
    w = ref.w0 + 0.1 * rng.standard_normal(ref.size)
    loss, grad = obj(w)
    loss_ref, grad_ref = ref(w)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-10, atol=1e-14)
    assert obj.loss(w) == pytest.approx(loss_ref, rel=1e-12)
    # Chunked evaluation gives the full-batch loss and gradient.
    chunked, _, _ = _model_objective(batch_size=7)
    loss_c, grad_c = chunked(w)
    assert loss_c == pytest.approx(loss_ref, rel=1e-12)
    np.testing.assert_allclose(grad_c, grad_ref, rtol=1e-10, atol=1e-14)


def test_model_objective_restores_parameters_gradients_and_mode(rng):
    obj, ref, model = _model_objective()
    before = C.flat_params(model)
    model.fc1.weight.grad = marker = np.full((5, 3), 7.0)
    model.eval()
    obj(before + 1.0)
    obj.loss(before - 1.0)
    np.testing.assert_array_equal(C.flat_params(model), before)
    assert model.fc1.weight.grad is marker and model.fc2.bias.grad is None
    assert not model.training and not model.fc1.training


def test_set_flat_params_round_trip_and_errors():
    _, _, model = _model_objective()
    w = np.arange(32, dtype=np.float64)
    C.set_flat_params(model, w)
    np.testing.assert_array_equal(C.flat_params(model), w)
    np.testing.assert_array_equal(model.fc2.weight.data, np.arange(20, 30).reshape(2, 5))
    with pytest.raises(ValueError, match=r"w: expected a flat vector of shape \(32,\)"):
        C.set_flat_params(model, np.zeros(31))
    model.fc2.freeze()
    assert C.flat_params(model).size == 20


def test_model_eigenvalues_match_reference_in_float64_and_float32():
    obj, ref, _ = _model_objective()
    _, loss = tiny_mlp()
    lam = np.linalg.eigvalsh(hessian_from_losses(loss, ref.w0))
    res = C.top_eigenvalues(obj, k=2)
    assert np.all(rel(res.eigenvalues, lam[::-1][:2]) < 1e-3)
    # float32: the larger step (eps**(1/3)) keeps the HVP accurate to ~1e-4.
    obj32, _, _ = _model_objective(dtype=np.float32)
    assert obj32.dtype == np.float32
    top32 = C.top_eigenvalues(obj32, k=1).eigenvalues[0]
    assert rel(top32, lam[-1]) < 1e-3


def test_library_mlp_and_cross_entropy_against_hessian_from_losses(rng):
    # The library's own layers and loss: the reference uses only forward passes (obj.loss).
    nn.init.manual_seed(3)
    model = nn.models.MLP([2, 3, 2], activation="tanh").double()
    x = rng.standard_normal((12, 2))
    y = rng.integers(0, 2, 12)
    obj = C.Objective.from_model(model, nn.CrossEntropyLoss(), x, y)
    H = hessian_from_losses(obj.loss, obj.w0)
    lam = np.linalg.eigvalsh(H)
    np.testing.assert_allclose(C.hessian(obj), H, atol=1e-6 * np.abs(lam).max())
    res = C.top_eigenvalues(obj, k=2)
    assert np.all(rel(res.eigenvalues, lam[::-1][:2]) < 1e-3)
    assert rel(C.smallest_eigenvalue(obj), lam[0]) < 1e-3


@pytest.mark.cuda
def test_model_objective_on_the_cuda_device_matches_the_cpu(cuda_device, rng):
    nn.init.manual_seed(3)
    model = nn.models.MLP([2, 3, 2], activation="tanh").double()
    x = rng.standard_normal((6, 2))
    y = rng.integers(0, 2, 6)
    cpu = C.Objective.from_model(model, nn.CrossEntropyLoss(), x, y)
    w = cpu.w0 + 0.1 * rng.standard_normal(cpu.size)
    loss_cpu, grad_cpu = cpu(w)
    model.to(cuda_device)
    gpu = C.Objective.from_model(model, nn.CrossEntropyLoss(), K.to_device(x, cuda_device),
                                 K.to_device(y, cuda_device))
    np.testing.assert_array_equal(gpu.w0, cpu.w0)
    loss_gpu, grad_gpu = gpu(w)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-12)
    np.testing.assert_allclose(grad_gpu, grad_cpu, rtol=1e-10, atol=1e-14)
    assert K.device_of(model.layers[0].weight.data) == cuda_device
    np.testing.assert_array_equal(C.flat_params(model), cpu.w0)  # restored after the call


def test_model_objective_restores_batchnorm_statistics(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = rng.standard_normal((10, 3))
    y = rng.integers(0, 2, 10)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for train_mode in (False, True):
        obj = C.Objective.from_model(model, nn.CrossEntropyLoss(), x, y, train_mode=train_mode)
        obj(obj.w0 + 0.1)
        obj.loss(obj.w0)
        after = model.state_dict()
        for k, v in before.items():
            np.testing.assert_array_equal(after[k], v, err_msg=k)
    # train mode normalises with the batch's statistics, eval mode with the running ones
    eval_loss = C.Objective.from_model(model, nn.CrossEntropyLoss(), x, y).loss(obj.w0)
    assert obj.loss(obj.w0) != eval_loss
