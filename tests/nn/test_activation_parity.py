"""Activation layers against PyTorch (issue 11, items 6 and 8): GELU(approximate='tanh'), SiLU,
Mish, Hardtanh, ReLU6, PReLU, Softmax/LogSoftmax over any dim with dtype=, torch's backward at
NaN, and the replay's defects (empty softmax axes, 0-d Dropout and loss gradients, BatchNorm's
eps).  The torch comparisons skip without torch; everything else runs everywhere.
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import kernels as K
import nn
from nn import models
from nn.gradcheck import gradcheck_module, sample_away_from_kinks

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


# name -> (our layer, torch layer, kinks); torch layers built lazily (torch may be absent)
LAYERS = {
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"),
                  lambda t: t.nn.GELU(approximate="tanh"), ()),
    "silu": (lambda: nn.SiLU(), lambda t: t.nn.SiLU(), ()),
    "mish": (lambda: nn.Mish(), lambda t: t.nn.Mish(), ()),
    "hardtanh": (lambda: nn.Hardtanh(), lambda t: t.nn.Hardtanh(), (-1.0, 1.0)),
    "hardtanh_range": (lambda: nn.Hardtanh(-0.5, 2.0), lambda t: t.nn.Hardtanh(-0.5, 2.0),
                       (-0.5, 2.0)),
    "relu6": (lambda: nn.ReLU6(), lambda t: t.nn.ReLU6(), (0.0, 6.0)),
    "prelu": (lambda: nn.PReLU(), lambda t: t.nn.PReLU(), (0.0,)),
    "prelu_channels": (lambda: nn.PReLU(3, init=0.1), lambda t: t.nn.PReLU(3, init=0.1), (0.0,)),
}


def _run_torch(torch, layer, x, g, dtype):
    tx = torch.tensor(x, dtype=dtype, requires_grad=True)
    ty = layer(tx)
    ty.backward(torch.tensor(g, dtype=dtype))
    params = {n: p.grad.double().numpy() for n, p in layer.named_parameters()}
    return ty.detach().double().numpy(), tx.grad.double().numpy(), params


def _run_ours(layer, x, g):
    layer.zero_grad()
    y = layer(x)
    grad_x = layer.backward(g)
    return y, grad_x, {n: p.grad for n, p in layer.named_parameters()}


def _compare(name, dtype, torch, x, g):
    ours_build, torch_build, _ = LAYERS[name]
    ours = ours_build().to(dtype=dtype)
    t_layer = torch_build(torch).double()   # float64 torch: the reference
    x, g = x.astype(dtype), g.astype(dtype)  # torch sees the same, rounded, inputs
    y, grad_x, grads = _run_ours(ours, x, g)
    ty, tgx, tgrads = _run_torch(torch, t_layer, x.astype(np.float64), g.astype(np.float64),
                                 torch.float64)
    assert y.dtype == dtype and grad_x.dtype == dtype and y.shape == x.shape
    x64 = x.astype(np.float64)
    if dtype == np.float64:
        # torch's own float64 tanh GELU cancels in 1 + tanh for negative x (an absolute error of
        # a few ulps of |x|); everything else agrees to a few ulps of the value
        rtol = 1e-13
        atol = 8 * np.finfo(np.float64).eps * (1 + np.abs(x64))
    else:
        # ours: a few float32 ulps (tanh GELU: times 1 + |2z|/2, from rounding 2z; see
        # tests/kernels/test_activation.py), derivatives in units of their terms' size, which
        # is at most 1 + |x| for every layer here
        z2 = 2 * math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)
        rtol = 1e-6 * (1 + np.abs(z2) / 2) if name == "gelu_tanh" else 1e-6
        # results in float32's subnormal range; and the reference's own error (torch's
        # float64 tanh GELU, see above)
        atol = (1e-38 + 8 * np.finfo(np.float64).eps) * (1 + np.abs(x64))
    _within(y, ty, rtol, atol)
    # near a root of f' the error is relative to the size of its terms, at most 1 + |x|;
    # when grad_y is subnormal, each side multiplies it in by up to two products that round
    # onto the subnormal grid (half a spacing each), so the two results may differ by two
    # spacings (hypothesis found 2: -1.21500093e-315 against -1.21500092e-315)
    _within(grad_x, tgx, 2 * rtol, (2 * rtol * (1 + np.abs(x64)) + atol) * np.abs(g)
            + 2 * np.finfo(dtype).smallest_subnormal)
    for pname, tg in tgrads.items():
        # a sum over the batch: m rounding errors of the sum of magnitudes
        bound = (x.size + 1) * (np.finfo(dtype).eps * 4) * (np.abs(x64 * g).sum() + 1)
        assert np.abs(grads[pname] - tg).max() <= bound, pname


def _within(got, want, rtol, atol):
    got = np.asarray(got, np.float64)
    err = np.abs(got - want)
    both_nan = np.isnan(got) & np.isnan(want)
    ok = both_nan | (got == want) | (err <= atol + rtol * np.abs(want))
    assert ok.all(), f"got {got[~ok][:4]!r}, want {want[~ok][:4]!r}"


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 5), (2, 3, 2, 3)], ids=str)
def test_layers_match_torch(name, shape, dtype, torch, rng):
    if name == "prelu_channels" and len(shape) < 2:
        shape = (4, 3)
    kinks = LAYERS[name][2]
    flat = sample_away_from_kinks(rng, (math.prod(shape),), kinks=kinks, margin=0.01,
                                  scale=3.0, dtype=np.float64)
    x = flat.reshape(shape)
    g = rng.standard_normal(shape)
    _compare(name, dtype, torch, x, g)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["f32", "f64"])
def test_property_layers_match_torch(name, dtype_, torch, data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5)
                      if name == "prelu_channels" else
                      hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if name == "prelu_channels":
        shape = (shape[0], 3) + shape[2:]
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-12, 12)))
    kinks = LAYERS[name][2]
    # exactly at a kink both sides agree on the value but the gradient is a convention; the
    # conventions are checked in test_gradient_conventions_at_kinks_match_torch
    x = np.where(np.isin(x, kinks), x + 0.5, x)
    g = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3)))
    _compare(name, dtype_, torch, x, g)


@pytest.mark.parametrize("name", ["relu", "elu", "leaky_relu", "hardtanh", "relu6", "prelu",
                                  "silu", "mish", "gelu_tanh"])
def test_gradient_at_nan_and_kinks_matches_torch(name, dtype, torch):
    # torch's scalar loop (a single element never reaches its vector loop) and CUDA kernels
    # define the rule; its vectorised CPU loops for elu and hardtanh disagree with it at NaN
    ours = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "hardtanh": nn.Hardtanh,
            "relu6": nn.ReLU6, "prelu": nn.PReLU, "silu": nn.SiLU, "mish": nn.Mish,
            "gelu_tanh": lambda: nn.GELU("tanh")}[name]().to(dtype=dtype)
    theirs = {"relu": torch.nn.ReLU, "elu": torch.nn.ELU, "leaky_relu": torch.nn.LeakyReLU,
              "hardtanh": torch.nn.Hardtanh, "relu6": torch.nn.ReLU6, "prelu": torch.nn.PReLU,
              "silu": torch.nn.SiLU, "mish": torch.nn.Mish,
              "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh")}[name]()
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    theirs = theirs.to(tdtype)
    for v in (math.nan, 0.0, -0.0, -1.0, 1.0, 6.0):
        x = np.array([v], dtype)
        _, grad_x, _ = _run_ours(ours, x, np.array([1.5], dtype))
        _, tgx, _ = _run_torch(torch, theirs, x, np.array([1.5], dtype), tdtype)
        # equal NaN, zeros and slopes; a few ulps of exp where both take the smooth branch
        np.testing.assert_allclose(grad_x, tgx.astype(dtype), rtol=8 * np.finfo(dtype).eps,
                                   atol=0, err_msg=f"x = {v}")
        if math.isnan(v) or name not in ("silu", "mish", "gelu_tanh"):
            assert np.isnan(grad_x[0]) == np.isnan(tgx[0])


# ---------------------------------------------------------------- gradcheck (float64)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_gradcheck(name, rng):
    layer = LAYERS[name][0]().double()
    shape = (3, 3, 2)
    x = sample_away_from_kinks(rng, shape, kinks=LAYERS[name][2], margin=0.05, dtype=np.float64)
    if "prelu" in name:
        layer.weight.data[...] = rng.uniform(-0.5, 0.5, layer.weight.shape)
    assert gradcheck_module(layer, x).ok


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_cpu_match_cuda(name, cuda_device, dtype, rng):
    x = sample_away_from_kinks(rng, (2, 3, 2), kinks=LAYERS[name][2], margin=0.05, dtype=dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    cpu = LAYERS[name][0]().to(dtype=dtype)
    gpu = LAYERS[name][0]().to(dtype=dtype).to(cuda_device)
    y, gx, grads = _run_ours(cpu, x, g)
    y_d, gx_d, grads_d = _run_ours(gpu, K.to_device(x, cuda_device), K.to_device(g, cuda_device))
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(K.to_host(y_d), y, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(K.to_host(gx_d), gx, rtol=rtol, atol=1e-7 if dtype == np.float32
                               else 1e-15)
    for pname in grads:
        assert K.device_of(grads_d[pname]) == cuda_device
        np.testing.assert_allclose(K.to_host(grads_d[pname]), grads[pname], rtol=rtol * 10)


# ---------------------------------------------------------------- layer specifics
def test_prelu_parameters_follow_torch(torch):
    ours = nn.PReLU(4, init=0.3)
    assert list(ours.state_dict()) == ["weight"]
    assert ours.weight.shape == (4,) and ours.weight.dtype == np.float32
    np.testing.assert_array_equal(ours.weight.data, np.full(4, 0.3, np.float32))
    theirs = torch.nn.PReLU(4, init=0.3)
    assert ours.state_dict()["weight"].shape == tuple(theirs.weight.shape)
    assert repr(ours) == repr(theirs)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)


def test_prelu_gradient_accumulates_and_validates():
    layer = nn.PReLU(2).double()
    x = -np.ones((3, 2))
    for _ in range(2):
        layer(x)
        layer.backward(np.ones((3, 2)))
    np.testing.assert_array_equal(layer.weight.grad, [-6.0, -6.0])
    with pytest.raises(ValueError, match="weight: 2 slopes need an input with 2 channels"):
        layer(np.ones((3, 4)))
    with pytest.raises(TypeError, match="x has dtype float32 but weight has dtype float64"):
        layer(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="num_parameters: expected a positive integer"):
        nn.PReLU(0)


def test_reprs_and_bad_arguments(torch):
    for ours, theirs in [(nn.GELU("tanh"), torch.nn.GELU(approximate="tanh")),
                         (nn.GELU(), torch.nn.GELU()), (nn.SiLU(), torch.nn.SiLU()),
                         (nn.Mish(), torch.nn.Mish()), (nn.ReLU6(), torch.nn.ReLU6()),
                         (nn.Hardtanh(-2, 3), torch.nn.Hardtanh(-2, 3)),
                         (nn.Hardtanh(inplace=True), torch.nn.Hardtanh(inplace=True)),
                         (nn.ReLU6(inplace=True), torch.nn.ReLU6(inplace=True))]:
        assert repr(ours) == repr(theirs)
    with pytest.raises(ValueError, match="approximate: expected 'none' or 'tanh', got 'erf'"):
        nn.GELU("erf")
    with pytest.raises(ValueError, match="max_val: expected a number above min_val=1"):
        nn.Hardtanh(1, 1)


@pytest.mark.parametrize("build", [lambda: nn.Hardtanh(-0.5, 0.5, inplace=True),
                                   lambda: nn.ReLU6(inplace=True),
                                   lambda: nn.SiLU(inplace=True), lambda: nn.Mish(inplace=True)])
def test_inplace_writes_into_the_input_and_keeps_the_gradient(build, rng):
    x = rng.standard_normal((4, 5)) * 3
    g = rng.standard_normal((4, 5))
    ref = build()
    ref.inplace = False
    y_ref, gx_ref = ref(x.copy()), None
    gx_ref = ref.backward(g)
    layer = build()
    x_in = x.copy()
    y = layer(x_in)
    assert y is x_in
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(layer.backward(g), gx_ref)


def test_model_activation_names():
    for name, cls in [("silu", nn.SiLU), ("mish", nn.Mish), ("hardtanh", nn.Hardtanh),
                      ("relu6", nn.ReLU6), ("prelu", nn.PReLU)]:
        assert isinstance(models.get_activation(name), cls)
        model = models.MLP([6, 4, 2], activation=name)
        y = model(np.ones((3, 6), np.float32))
        assert model.backward(np.ones_like(y)).shape == (3, 6)


# ---------------------------------------------------------------- Softmax and LogSoftmax
@pytest.mark.parametrize("cls", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape, dim", [((), 0), ((), -1), ((5,), 0), ((3, 4), 0), ((3, 4), -2),
                                        ((2, 3, 4), 1), ((2, 3, 4), -3), ((2, 3, 4, 5), 2),
                                        ((2, 0), -1), ((2, 0), 0), ((0, 3), 1), ((2, 0, 3), 1)],
                         ids=str)
def test_softmax_any_dim_matches_torch(cls, shape, dim, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    layer = getattr(nn, cls)(dim=dim)
    y = layer(x)
    grad_x = layer.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn, cls)(dim=dim)(tx)
    ty.backward(torch.tensor(g))
    assert isinstance(y, np.ndarray) and y.shape == shape and y.dtype == dtype
    assert isinstance(grad_x, np.ndarray) and grad_x.shape == shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=rtol, atol=rtol)


def test_softmax_on_an_empty_axis_regression():
    # before: "cannot reshape array of size 0 into shape (-1,0)" from the row view
    for cls in (nn.Softmax, nn.LogSoftmax):
        layer = cls(dim=-1)
        y = layer(np.zeros((2, 0)))
        assert y.shape == (2, 0)
        assert layer.backward(np.zeros((2, 0))).shape == (2, 0)


@pytest.mark.parametrize("ndim, expected_dim", [(0, 0), (1, 0), (2, 1), (3, 0), (4, 1)])
def test_softmax_dim_none_follows_torch_with_its_warning(ndim, expected_dim, torch, rng):
    x = rng.standard_normal((2, 3, 2, 2)[:ndim])
    layer = nn.Softmax()
    assert layer.dim is None
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax has been "
                                         "deprecated") as ours:
        y = layer(x)
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        ty = torch.nn.Softmax()(torch.tensor(x))
    assert str(ours[0].message) == str(theirs[0].message)
    np.testing.assert_allclose(y, ty.numpy(), rtol=1e-12)
    np.testing.assert_allclose(y, nn.Softmax(dim=expected_dim)(x), rtol=0)
    assert layer.backward(np.ones_like(y)).shape == x.shape


def test_softmax_dtype_casts_like_torch_functional(torch, rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((3, 5))
    for cls, fn in [(nn.Softmax, torch.nn.functional.softmax),
                    (nn.LogSoftmax, torch.nn.functional.log_softmax)]:
        layer = cls(dim=1, dtype=np.float64)
        y = layer(x)
        assert y.dtype == np.float64
        grad_x = layer.backward(g)
        assert grad_x.dtype == np.float32  # back to the input's dtype, as autograd does
        tx = torch.tensor(x, requires_grad=True)
        ty = fn(tx, 1, dtype=torch.float64)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert repr(nn.Softmax(0, dtype="float32")) == "Softmax(dim=0, dtype=float32)"
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int64"):
        nn.Softmax(0, dtype=np.int64)
    with pytest.raises(ValueError, match=r"dim=2 is out of range for an input of shape \(3, 5\)"):
        nn.Softmax(2)(x)
    with pytest.raises(TypeError, match="dim: expected an integer or None, got float"):
        nn.Softmax(1.0)


@pytest.mark.cuda
def test_softmax_dims_and_dtype_on_cuda(cuda_device, rng):
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    for layer in (nn.Softmax(dim=1), nn.LogSoftmax(dim=-3, dtype=np.float64), nn.Softmax(dim=0)):
        cpu = layer(x)
        gpu = layer(K.to_device(x, cuda_device))
        assert K.device_of(gpu) == cuda_device and gpu.dtype == cpu.dtype
        np.testing.assert_allclose(K.to_host(gpu), cpu, rtol=1e-5)
        grad = layer.backward(K.to_device(np.ones_like(cpu), cuda_device))
        assert K.device_of(grad) == cuda_device and grad.dtype == np.float32
    y = nn.Softmax(dim=-1)(K.to_device(np.zeros((2, 0), np.float32), cuda_device))
    assert y.shape == (2, 0)


# ---------------------------------------------------------------- 0-d arrays (item 8)
def test_dropout_keeps_0d_arrays_regression(device):
    # before: x * mask on two 0-d arrays gave a NumPy scalar, which the next layer refused
    layer = nn.Dropout(0.5)
    layer.set_mask(np.array(True))
    x = K.to_device(np.array(0.75), device)
    y = layer(x)
    assert not isinstance(y, np.generic) and y.shape == () and K.device_of(y) == device
    assert float(K.to_host(y)) == 1.5
    g = layer.backward(K.to_device(np.array(2.0), device))
    assert not isinstance(g, np.generic) and g.shape == () and float(K.to_host(g)) == 4.0
    nn.Tanh()(y)  # the next layer takes it


@pytest.mark.parametrize("loss, args", [
    (nn.MSELoss, (0.3, 0.1)), (nn.BCEWithLogitsLoss, (0.3, 1.0)), (nn.BCELoss, (0.3, 1.0)),
])
@pytest.mark.parametrize("grad_loss", [1.0, 2.0, np.array(0.5)])
def test_loss_gradients_are_0d_arrays_for_0d_inputs_regression(loss, args, grad_loss):
    # before: BCELoss always, and every loss with grad_loss != 1, returned a NumPy scalar
    fn = loss()
    pred, target = (np.array(a) for a in args)
    value = fn(pred, target)
    grad = fn.backward(grad_loss)
    assert isinstance(value, np.ndarray) and value.shape == ()
    assert isinstance(grad, np.ndarray) and grad.shape == () and grad.dtype == pred.dtype
    fn(pred, target)
    base = fn.backward()
    np.testing.assert_allclose(grad, base * float(grad_loss), rtol=1e-15)


# ---------------------------------------------------------------- BatchNorm eps (item 8)
@pytest.mark.parametrize("eps", [0, 0.0, -1e-5, math.nan, math.inf])
@pytest.mark.parametrize("cls", [nn.BatchNorm1d, nn.BatchNorm2d])
def test_batchnorm_refuses_non_positive_eps_regression(cls, eps):
    # before: accepted, and a constant channel divided by sqrt(0 + eps) = 0
    with pytest.raises(ValueError, match=r"eps: expected a positive finite number, got"):
        cls(3, eps=eps)
    with pytest.raises(TypeError, match=r"eps: expected a positive number, got str"):
        cls(3, eps="1e-5")
    assert cls(3, eps=1e-3).eps == 1e-3
