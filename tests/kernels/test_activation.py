"""Tests for kernels/activation.py: forward against NumPy, backward against the gradient
checker and the derivative's formula, CPU against CUDA, float32 against float64, bad inputs.
"""
import math
import warnings

import numba
import numpy as np
import pytest
from float32_grid import float32_grid
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erfc

import kernels as K
from cuda_lowering import array, float64_ops, lower_for_gpu
from kernels import activation
from nn.gradcheck import gradcheck, sample_away_from_kinks


# ---------------------------------------------------------------- slow, obvious references
def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x):
    return 0.5 * erfc(-x / math.sqrt(2))  # = (1 + erf(x / sqrt 2)) / 2, without cancellation


def _sig(x):
    return 1 / (1 + np.exp(-x))


_GT_K = math.sqrt(2 / math.pi)


def _z2(x):
    """2z of torch's tanh GELU, 0.5 x (1 + tanh z)."""
    return 2 * _GT_K * (x + 0.044715 * x ** 3)


def _gelu_tanh(x):
    # 1 + tanh(z) = 2 / (1 + e**-2z): the textbook identity, without tanh's cancellation
    return 0.5 * x * (2 / (1 + np.exp(-_z2(x))))


def _gelu_tanh_terms(x):
    s = _sig(_z2(x))
    return s, x * s * (1 - s) * 2 * _GT_K * (1 + 3 * 0.044715 * x * x)


def _mish_terms(x):
    t = np.tanh(np.logaddexp(0, x))
    return t, x * _sig(x) * (1 - t * t)


def _silu_terms(x):
    s = _sig(x)
    return s, x * s * (1 - s)


def _gelu_terms(x):
    return _cdf(x), x * _phi(x)


# name -> (params, reference f(x), reference f'(x), kinks of f or f')
CASES = {
    "identity": ({}, lambda x: x, lambda x: np.ones_like(x), ()),
    "relu": ({}, lambda x: np.where(x > 0, x, 0.0), lambda x: np.where(x > 0, 1.0, 0.0), (0.0,)),
    "leaky_relu": ({"negative_slope": 0.2}, lambda x: np.where(x > 0, x, 0.2 * x),
                   lambda x: np.where(x > 0, 1.0, 0.2), (0.0,)),
    "elu": ({"alpha": 0.7}, lambda x: np.where(x > 0, x, 0.7 * np.expm1(np.minimum(x, 0))),
            lambda x: np.where(x > 0, 1.0, 0.7 * np.exp(np.minimum(x, 0))), (0.0,)),
    "tanh": ({}, np.tanh, lambda x: 1 / np.cosh(x) ** 2, ()),
    "sigmoid": ({}, _sig, lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2, ()),
    # threshold 3 with beta 2: the switch to x at x = 1.5 lies inside the test range
    "softplus": ({"beta": 2.0, "threshold": 3.0},
                 lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2),
                 lambda x: np.where(2 * x > 3, 1.0, _sig(2 * x)), (1.5,)),
    "step": ({}, lambda x: np.where(x > 0, 1.0, 0.0), lambda x: np.zeros_like(x), (0.0,)),
    "gelu": ({}, lambda x: x * _cdf(x), lambda x: _cdf(x) + x * _phi(x), ()),
    "gelu_tanh": ({"approximate": "tanh"}, _gelu_tanh, lambda x: sum(_gelu_tanh_terms(x)), ()),
    "silu": ({}, lambda x: x * _sig(x), lambda x: sum(_silu_terms(x)), ()),
    "mish": ({}, lambda x: x * np.tanh(np.logaddexp(0, x)), lambda x: sum(_mish_terms(x)), ()),
    "hardtanh": ({"min_val": -0.5, "max_val": 2.0}, lambda x: np.clip(x, -0.5, 2.0),
                 lambda x: np.where((x > -0.5) & (x < 2.0), 1.0, 0.0), (-0.5, 2.0)),
    "relu6": ({}, lambda x: np.clip(x, 0.0, 6.0), lambda x: np.where((x > 0) & (x < 6), 1.0, 0.0),
              (0.0, 6.0)),
}
NAMES = list(CASES)
# The public function behind a case (default: the case's own name).
OPS = {"gelu_tanh": "gelu"}
# The two terms of f' for the smooth activations whose derivative has a root: near it no
# relative bound can hold, so float32 gradients are compared in units of the terms' size.
GRAD_TERMS = {"gelu": _gelu_terms, "gelu_tanh": _gelu_tanh_terms, "silu": _silu_terms,
              "mish": _mish_terms}
SMOOTH = ["elu", "tanh", "sigmoid", "softplus", "gelu", "gelu_tanh", "silu", "mish"]
# Small enough for the CUDA simulator (one Python thread per element); larger odd shapes,
# which exercise the CPU's vector loops and their remainders, follow in LARGE_SHAPES.
SHAPES = [(), (1,), (7,), (3, 2, 5), (2, 1, 3, 5), (0,), (2, 0, 3)]
LARGE_SHAPES = [(3, 5, 7), (2, 3, 4, 5), (1031,), (4, 6, 17, 19)]
# float32 results: the CPU's float32 approximations stay within 7 ulps (test_fastmath.py).
RTOL = {np.float32: 1e-6, np.float64: 1e-12}
# Absolute floors just above the subnormal spacing, so that only results that underflow pass
# on it.
ATOL = {np.float32: 1e-40, np.float64: 1e-300}


def fwd(name, x, params=None):
    return getattr(K, f"{OPS.get(name, name)}_forward")(
        x, **(CASES[name][0] if params is None else params))


def bwd(name, grad_y, x, params=None):
    return getattr(K, f"{OPS.get(name, name)}_backward")(
        grad_y, x, **(CASES[name][0] if params is None else params))


def fwd_rtol(name, dtype, x64):
    """Relative tolerance of f(x): the tanh GELU's float32 value carries the rounding of its
    argument 2z (a few ulps of 2z), which sigmoid turns into |2z| ulps of the result for
    negative x (see test_float32_accuracy); everything else a constant number of ulps."""
    if name == "gelu_tanh" and dtype == np.float32:
        return RTOL[dtype] * (1 + np.abs(_z2(x64)) / 2)
    return RTOL[dtype]


def assert_close(got, ref, rtol, atol, scale=None):
    """|got - ref| <= atol + rtol * scale elementwise (scale: |ref|); rtol may be an array."""
    got = np.asarray(got, np.float64)
    scale = np.abs(ref) if scale is None else scale
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(got - ref) <= atol + rtol * scale) & ~(np.isnan(got) & np.isnan(ref))
    bad &= ~((got == ref))  # equal infinities
    want = np.broadcast_to(ref, got.shape)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} differ; first at x index "
                           f"{np.argwhere(bad)[0]}: got {got[bad][:3]!r}, want {want[bad][:3]!r}")


def assert_grad_close(name, dtype, got, x64, grad_y, rtol_factor=2):
    ref = grad_y * CASES[name][2](x64)
    rtol = rtol_factor * fwd_rtol(name, dtype, x64)
    if name in GRAD_TERMS:
        a, b = GRAD_TERMS[name](x64)
        assert_close(got, ref, rtol, ATOL[dtype], np.abs(grad_y) * (np.abs(a) + np.abs(b)))
    else:
        assert_close(got, ref, rtol, ATOL[dtype])


def sample(rng, shape, name, dtype, scale=3.0):
    # drawn flat: sample_away_from_kinks cannot assign into a 0-d draw
    flat = sample_away_from_kinks(rng, (math.prod(shape),), kinks=CASES[name][3], margin=0.01,
                                  scale=scale, dtype=dtype)
    return flat.reshape(shape)


# ---------------------------------------------------------------- forward and backward values
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_backward_match_reference(name, shape, device, dtype, rng):
    check_against_reference(name, shape, device, dtype, rng)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_large_shapes_match_reference_on_cpu(name, shape, dtype, rng):
    check_against_reference(name, shape, "cpu", dtype, rng)


def check_against_reference(name, shape, device, dtype, rng):
    x = sample(rng, shape, name, dtype)
    grad_y = rng.standard_normal(shape).astype(dtype)
    y = fwd(name, K.to_device(x, device))
    grad_x = bwd(name, K.to_device(grad_y, device), K.to_device(x, device))
    for out in (y, grad_x):
        assert K.device_of(out) == device
        assert out.shape == x.shape and out.dtype == dtype
    x64 = x.astype(np.float64)
    assert_close(K.to_host(y), CASES[name][1](x64), fwd_rtol(name, dtype, x64), ATOL[dtype])
    assert_grad_close(name, dtype, K.to_host(grad_x), x64, grad_y)


@pytest.mark.parametrize("name", NAMES)
def test_backward_passes_gradcheck(name, rng):
    # moderate inputs: where f' is tiny (tanh at 9) the central difference is rounding noise
    x = sample(rng, (4, 6), name, np.float64, scale=1.5)
    report = gradcheck(lambda x: fwd(name, x), lambda g, x: bwd(name, g, x), {"x": x}, tol=1e-6)
    assert report.ok and report.tensors[0].name == "x"


@pytest.mark.parametrize("params", [{}, {"negative_slope": 0.0}, {"negative_slope": -0.5}])
def test_leaky_relu_defaults_and_slopes(params, rng):
    x = sample(rng, (50,), "relu", np.float64)
    slope = params.get("negative_slope", 0.01)
    np.testing.assert_array_equal(K.leaky_relu_forward(x, **params), np.where(x > 0, x, slope * x))
    np.testing.assert_array_equal(K.leaky_relu_backward(np.ones_like(x), x, **params),
                                  np.where(x > 0, 1.0, slope))


def test_softplus_defaults_follow_torch():
    # beta 1, threshold 20: linear strictly above 20
    x = np.array([-30.0, -1.0, 0.0, 19.5, 20.0, 20.5, 40.0])
    expected = np.where(x > 20, x, np.log1p(np.exp(x)))
    np.testing.assert_allclose(K.softplus_forward(x), expected, rtol=1e-14)
    np.testing.assert_allclose(K.softplus_backward(np.ones_like(x), x),
                               np.where(x > 20, 1.0, _sig(x)), rtol=1e-14)


def test_derivative_conventions_at_zero(dtype):
    zero = np.zeros(3, dtype)
    ones = np.ones(3, dtype)
    assert not K.relu_backward(ones, zero).any()             # relu'(0) = 0, as in torch
    assert (K.leaky_relu_backward(ones, zero) == dtype(0.01)).all()
    assert (K.elu_backward(ones, zero) == 1).all()           # alpha * exp(0)
    assert not K.step_forward(zero).any() and not K.step_backward(ones, zero).any()
    assert (K.gelu_backward(ones, zero) == 0.5).all()
    assert (K.gelu_backward(ones, zero, approximate="tanh") == 0.5).all()
    assert (K.silu_backward(ones, zero) == 0.5).all()
    assert (K.mish_backward(ones, zero) == dtype(0.6)).all()  # tanh(log 2) = 3/5
    # hardtanh and relu6: 0 at both ends of the interval, as torch
    ends = np.array([-1.0, 1.0, 0.0, 6.0], dtype)
    np.testing.assert_array_equal(K.hardtanh_backward(np.ones(4, dtype), ends), [0, 0, 1, 0])
    np.testing.assert_array_equal(K.relu6_backward(np.ones(4, dtype), ends), [0, 1, 0, 0])
    assert (K.sigmoid_forward(zero) == 0.5).all() and (K.tanh_backward(ones, zero) == 1).all()


def test_noncontiguous_inputs(rng):
    x = rng.standard_normal((6, 8))[:, ::2].T   # neither C- nor F-contiguous
    g = rng.standard_normal((6, 8))[:, 1::2].T
    for name in NAMES:
        np.testing.assert_array_equal(fwd(name, x), fwd(name, np.ascontiguousarray(x)))
        np.testing.assert_array_equal(bwd(name, g, x),
                                      bwd(name, np.ascontiguousarray(g), np.ascontiguousarray(x)))


def test_outputs_are_new_arrays(rng):
    x = rng.standard_normal(5)
    g = rng.standard_normal(5)
    for name in NAMES:
        assert not np.shares_memory(fwd(name, x), x)
        assert not np.shares_memory(bwd(name, g, x), g)


# ---------------------------------------------------------------- stability
@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_stay_finite_without_warnings(name, device, dtype):
    x = np.array([-1e4, -1e3, -100.0, -88.0, -20.0, 0.0, 20.0, 88.0, 100.0, 1e3, 1e4], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = K.to_host(fwd(name, K.to_device(x, device)))
        g = K.to_host(bwd(name, K.to_device(np.ones_like(x), device), K.to_device(x, device)))
    assert np.isfinite(y).all() and np.isfinite(g).all()
    _, f, df, _ = CASES[name]
    with np.errstate(over="ignore", invalid="ignore"):  # the references overflow out here
        y_ref, g_ref = f(x.astype(np.float64)), np.nan_to_num(df(x.astype(np.float64)))
    np.testing.assert_allclose(y, y_ref, rtol=RTOL[dtype], atol=ATOL[dtype])
    np.testing.assert_allclose(g, g_ref, rtol=2 * RTOL[dtype], atol=ATOL[dtype])


def test_sigmoid_and_softplus_limits(dtype):
    x = np.array([-1e4, 1e4], dtype)
    np.testing.assert_array_equal(K.sigmoid_forward(x), [0, 1])
    np.testing.assert_array_equal(K.softplus_forward(x), [0, 1e4])
    np.testing.assert_array_equal(K.tanh_forward(x), [-1, 1])


# grad_x at a NaN input for grad_y = 1: torch's scalar and CUDA rules (relu, elu and hardtanh
# pass the gradient where "not (x <= 0)" / "not (x <= min_val or x >= max_val)"; leaky_relu
# gives its slope; the smooth ones NaN; step 0).  Checked against torch in
# tests/nn/test_activation_parity.py.
NAN_GRAD = {"identity": 1.0, "relu": 1.0, "leaky_relu": 0.2, "elu": 1.0, "hardtanh": 1.0,
            "relu6": 1.0, "step": 0.0}


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name, device, dtype):
    x = K.to_device(np.array([np.nan, 1.0, -1.0], dtype), device)
    y = K.to_host(fwd(name, x))
    g = K.to_host(bwd(name, K.to_device(np.ones(3, dtype), device), x))
    if name == "step":   # a comparison: NaN > 0 is false
        assert y[0] == 0
    else:
        assert np.isnan(y[0]) and np.isfinite(y[1:]).all()
    if name in NAN_GRAD:
        assert g[0] == dtype(NAN_GRAD[name])
    else:
        assert np.isnan(g[0])


def test_relu_and_elu_pass_the_gradient_at_nan_regression(dtype):
    # before: "grad_y if x > 0 else 0" gave 0 for relu and NaN for elu at NaN; torch gives grad_y
    x = np.array([np.nan, -np.nan], dtype)
    g = np.array([2.0, -3.0], dtype)
    np.testing.assert_array_equal(K.relu_backward(g, x), g)
    np.testing.assert_array_equal(K.elu_backward(g, x, alpha=0.5), g)


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_property_smooth_activations_match_float64(x):
    x64 = x.astype(np.float64)
    for name in SMOOTH:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y32 = fwd(name, x)
            g32 = bwd(name, np.ones_like(x), x)
        y64 = fwd(name, x64)
        g64 = bwd(name, np.ones_like(x64), x64)
        assert np.isfinite(y32).all() and np.isfinite(g32).all()
        assert_close(y32, y64, fwd_rtol(name, np.float32, x64), ATOL[np.float32])
        if name in GRAD_TERMS:
            a, b = GRAD_TERMS[name](x64)
            with np.errstate(all="ignore"):
                scale = np.nan_to_num(np.abs(a) + np.abs(b))
            assert_close(g32, g64, 2 * fwd_rtol(name, np.float32, x64), ATOL[np.float32], scale)
        else:
            assert_close(g32, g64, 2e-6, ATOL[np.float32])


@settings(max_examples=100, deadline=None)
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=7),
                    elements=st.floats(-50, 50)),
       lo=st.floats(-5, 5), width=st.floats(0.01, 5))
def test_property_hardtanh_matches_numpy(x, lo, width):
    hi = lo + width
    y = K.hardtanh_forward(x, lo, hi)
    g = K.hardtanh_backward(np.ones_like(x), x, lo, hi)
    np.testing.assert_array_equal(y, np.clip(x, lo, hi))
    np.testing.assert_array_equal(g, ((x > lo) & (x < hi)).astype(np.float64))
    assert y.shape == x.shape and isinstance(y, np.ndarray)


# ---------------------------------------------------------------- devices and dtypes
@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name, rng):
    x = sample(rng, (3, 33), name, np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    x64 = x.astype(np.float64)
    assert_close(fwd(name, x), fwd(name, x64), fwd_rtol(name, np.float32, x64),
                 ATOL[np.float32])
    assert_grad_close(name, np.float32, bwd(name, g, x), x64, g.astype(np.float64))


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cpu_matches_cuda(name, cuda_device, dtype, rng):
    x = sample(rng, (3, 4, 5), name, dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    # given and default params (a case that is another op's option, like the tanh GELU, has
    # its default tested under that op's name)
    for params in ([None] if not CASES[name][0] or name in OPS else [None, {}]):
        y_cpu, g_cpu = fwd(name, x, params), bwd(name, g, x, params)
        y_gpu = fwd(name, K.to_device(x, cuda_device), params)
        g_gpu = bwd(name, K.to_device(g, cuda_device), K.to_device(x, cuda_device), params)
        # float32: the CPU approximates within a few ulps, the GPU uses CUDA's math library;
        # both within the reference's bounds, so within twice them of each other
        x64 = x.astype(np.float64)
        assert_close(K.to_host(y_gpu), y_cpu, 2 * fwd_rtol(name, dtype, x64), ATOL[dtype])
        if name in GRAD_TERMS:
            a, b = GRAD_TERMS[name](x64)
            assert_close(K.to_host(g_gpu), g_cpu, 4 * fwd_rtol(name, dtype, x64), ATOL[dtype],
                         np.abs(g) * (np.abs(a) + np.abs(b)))
        else:
            assert_close(K.to_host(g_gpu), g_cpu, 2 * RTOL[dtype], ATOL[dtype])


CUDA_KERNELS = sorted(n for n in dir(activation)
                      if n.endswith(("_forward_cuda", "_backward_cuda")))


@pytest.mark.parametrize("kernel", CUDA_KERNELS)
def test_cuda_kernels_lower_for_a_real_gpu(kernel, dtype):
    # e.g. _leaky_relu_backward_cuda(grad_x, grad_y, x, slope): 3 arrays, then the parameters
    name = kernel[1:].rsplit("_", 2)[0]
    nb_dtype = numba.from_dtype(dtype)
    if name == "prelu":  # (y, x, w) or (grad_x, grad_w_parts, grad_y, x, w), then 2 sizes
        n_arrays = 3 if kernel.endswith("_forward_cuda") else 5
        args = [array(nb_dtype)] * n_arrays + [numba.int64] * 2
    else:
        n_arrays = 2 if kernel.endswith("_forward_cuda") else 3
        n_scalars = sum(isinstance(v, float) for v in CASES[name][0].values())
        args = [array(nb_dtype)] * n_arrays + [nb_dtype] * n_scalars
    ir = lower_for_gpu(getattr(activation, kernel), args)
    if dtype == np.float32 and name != "gelu":  # gelu computes in float64 by design
        assert float64_ops(ir) == 0


@pytest.mark.cuda
def test_arrays_on_two_devices_are_rejected(cuda_device):
    x = np.ones(4)
    with pytest.raises(ValueError, match="different devices.*grad_y.*'cpu'.*x.*'cuda'"):
        K.relu_backward(x, K.to_device(x, cuda_device))


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.arange(4), np.ones(4, np.float16), [1.0, 2.0]],
                         ids=["int64", "float16", "list"])
def test_bad_dtypes_raise_type_error_naming_the_argument(name, bad):
    with pytest.raises(TypeError, match=r"^x: expected"):
        fwd(name, bad)
    with pytest.raises(TypeError, match=r"^grad_y: expected"):
        bwd(name, bad, np.ones(4))
    with pytest.raises(TypeError, match=r"^x: expected"):
        bwd(name, np.ones(4), bad)


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match=r"grad_y is \(2, 3\), x is \(3, 2\)"):
        bwd(name, np.ones((2, 3)), np.ones((3, 2)))


def test_mixed_dtypes_rejected():
    with pytest.raises(TypeError, match="grad_y is float32, x is float64"):
        K.tanh_backward(np.ones(3, np.float32), np.ones(3))


@pytest.mark.parametrize("call, error, message", [
    (lambda x: K.leaky_relu_forward(x, "0.1"), TypeError, r"negative_slope: expected a real"),
    (lambda x: K.softplus_forward(x, beta=True), TypeError, r"beta: expected a real"),
    (lambda x: K.softplus_backward(x, x, threshold=None), TypeError, r"threshold: expected a"),
    (lambda x: K.elu_forward(x, alpha=math.nan), ValueError, r"alpha: expected a finite"),
    (lambda x: K.leaky_relu_backward(x, x, math.inf), ValueError, r"negative_slope: expected a f"),
    (lambda x: K.softplus_forward(x, threshold=math.nan), ValueError, r"threshold: expected a num"),
    (lambda x: K.gelu_forward(x, approximate="erf"), ValueError, r"approximate: expected 'none'"),
    (lambda x: K.gelu_backward(x, x, "Tanh"), ValueError, r"approximate: expected 'none' or"),
    (lambda x: K.hardtanh_forward(x, 1.0, 1.0), ValueError, r"max_val: expected a number above"),
    (lambda x: K.hardtanh_backward(x, x, 2, -2), ValueError, r"max_val: expected a number abo"),
    (lambda x: K.hardtanh_forward(x, "0"), TypeError, r"min_val: expected a real"),
    (lambda x: K.hardtanh_forward(x, 0.0, math.nan), ValueError, r"max_val: expected a number"),
])
def test_bad_parameters_raise(call, error, message):
    with pytest.raises(error, match=message):
        call(np.ones(3))


def test_softplus_beta_must_be_positive():
    with pytest.raises(ValueError, match=r"beta: expected a positive number, got 0"):
        K.softplus_forward(np.ones(3), beta=0)
    # an infinite threshold is allowed: never linear
    np.testing.assert_allclose(K.softplus_forward(np.array([30.0]), threshold=math.inf),
                               np.log1p(np.exp(30.0)))


# ---------------------------------------------------------------- prelu
def _prelu_ref(x, w):
    """Slow reference: the channel axis is 1 (0 for 1-D x), or one slope for all."""
    if w.size == 1:
        wb = w.reshape(())
    else:
        axis = 0 if x.ndim == 1 else 1
        wb = w.reshape((-1,) + (1,) * (x.ndim - axis - 1))
    y = np.where(x > 0, x, wb * x)
    return y, wb


@pytest.mark.parametrize("shape, channels", [((), 1), ((5,), 1), ((5,), 5), ((3, 4), 4),
                                             ((2, 3, 5), 3), ((2, 3, 4, 5), 3),
                                             ((2, 3, 4, 5), 1), ((0, 3), 3), ((1, 2, 3, 1), 2)],
                         ids=str)
def test_prelu_matches_reference_and_gradcheck(shape, channels, device, dtype, rng):
    x = sample(rng, shape, "relu", dtype)
    w = rng.uniform(-0.5, 0.8, channels).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    d = lambda a: K.to_device(a, device)  # noqa: E731
    y = K.to_host(K.prelu_forward(d(x), d(w)))
    grad_x, grad_w = (K.to_host(a) for a in K.prelu_backward(d(g), d(x), d(w)))
    y_ref, wb = _prelu_ref(x.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(y, y_ref, rtol=RTOL[dtype], atol=0)
    np.testing.assert_allclose(grad_x, np.where(x > 0, g, wb * g), rtol=RTOL[dtype], atol=0)
    parts = np.where(x > 0, 0.0, x.astype(np.float64) * g)
    if channels == 1:
        want_w = np.array([parts.sum()])
    else:
        axis = 0 if x.ndim == 1 else 1
        want_w = np.moveaxis(parts, axis, 0).reshape(channels, -1).sum(axis=1)
    assert grad_w.shape == (channels,) and grad_w.dtype == dtype
    # a sum of m products: m ulps of the sum of magnitudes
    bound = parts.size * np.finfo(dtype).eps * np.abs(parts).sum() + ATOL[dtype]
    assert np.abs(grad_w - want_w).max(initial=0) <= bound
    if dtype == np.float64 and device == "cpu" and x.ndim and x.size:  # gradcheck: arrays
        report = gradcheck(lambda x, w: K.prelu_forward(x, w),
                           lambda gy, x, w: K.prelu_backward(gy, x, w), {"x": x, "w": w},
                           tol=1e-6)
        assert report.ok


def test_prelu_nan_and_determinism(dtype, rng):
    x = np.array([np.nan, 2.0, -2.0], dtype)
    w = np.array([0.25], dtype)
    grad_x, grad_w = K.prelu_backward(np.ones(3, dtype), x, w)
    np.testing.assert_array_equal(grad_x, np.array([0.25, 1, 0.25], dtype))  # torch: slope
    assert np.isnan(grad_w[0])
    x = rng.standard_normal((8, 3, 33, 17)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(3).astype(dtype)
    first = K.prelu_backward(g, x, w)[1]
    for _ in range(3):
        np.testing.assert_array_equal(K.prelu_backward(g, x, w)[1], first)


@pytest.mark.parametrize("x_shape, w_shape, message", [
    ((2, 3), (4,), r"weight: 4 slopes need an input with 4 channels along axis 1"),
    ((), (2,), r"weight: 2 slopes need an input with 2 channels along axis 0, got x of shape"),
    ((2, 3), (1, 3), r"weight: expected a 1-D array of slopes, got shape \(1, 3\)"),
    ((2, 3), (0,), r"weight: expected a 1-D array"),
])
def test_prelu_bad_weight_shapes(x_shape, w_shape, message):
    with pytest.raises(ValueError, match=message):
        K.prelu_forward(np.ones(x_shape), np.ones(w_shape))
    with pytest.raises(ValueError, match=message):
        K.prelu_backward(np.ones(x_shape), np.ones(x_shape), np.ones(w_shape))
    with pytest.raises(TypeError, match=r"weight is float32, x is float64|x is float64, weight"):
        K.prelu_forward(np.ones(3), np.ones(1, np.float32))


@pytest.mark.cuda
@pytest.mark.parametrize("channels", [1, 3])
def test_prelu_cpu_matches_cuda(channels, cuda_device, dtype, rng):
    x = rng.standard_normal((2, 3, 2, 5)).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(channels).astype(dtype)
    d = lambda a: K.to_device(a, cuda_device)  # noqa: E731
    np.testing.assert_allclose(K.to_host(K.prelu_forward(d(x), d(w))), K.prelu_forward(x, w),
                               rtol=RTOL[dtype])
    gx_cpu, gw_cpu = K.prelu_backward(g, x, w)
    gx_gpu, gw_gpu = K.prelu_backward(d(g), d(x), d(w))
    assert K.device_of(gx_gpu) == K.device_of(gw_gpu) == cuda_device
    np.testing.assert_allclose(K.to_host(gx_gpu), gx_cpu, rtol=RTOL[dtype])
    np.testing.assert_allclose(K.to_host(gw_gpu), gw_cpu, rtol=100 * RTOL[dtype])


# ---------------------------------------------------------------- float32 accuracy
@pytest.fixture(scope="module")
def grid32():
    return float32_grid()


def _ulps(got, exact, scale, x):
    """|got - exact| in float32 ulps of ``scale``.  The floor is the subnormal spacing times
    max(1, |x|): where x sigmoid(x) and the like are subnormal, the rounding of the subnormal
    factor (2**-150 at most) is multiplied by |x|."""
    spacing = np.maximum(np.spacing(np.abs(scale).astype(np.float32)).astype(np.float64),
                         2.0 ** -149 * np.maximum(1.0, np.abs(x)))
    return np.abs(got.astype(np.float64) - exact) / spacing


# Measured maxima on this machine's grid (AVX-512 with FMA): silu 2.98, silu' 3.59, mish 4.06,
# mish' 4.93 ulps (derivatives: ulps of the size of their two terms); the tanh GELU 2.46 and
# its derivative 2.91 ulps times (1 + |2z|), from rounding 2z = 2 sqrt(2/pi) (x + 0.044715 x**3)
# (a few ulps of 2z), which sigmoid(2z) turns into |2z| ulps where 2z is very negative.  The
# bounds leave a margin for other CPUs.
@pytest.mark.parametrize("name, bound", [("silu", 4), ("mish", 5.5), ("gelu_tanh", 3.5)])
def test_float32_accuracy(grid32, name, bound):
    x = grid32
    v = x.astype(np.float64)
    with np.errstate(all="ignore"):
        y_exact = CASES[name][1](v)
        a, b = GRAD_TERMS[name](v)
        g_exact = np.nan_to_num(a + b)
        terms = np.nan_to_num(np.abs(a) + np.abs(b))
    per = (1 + np.abs(_z2(v))) if name == "gelu_tanh" else 1.0
    y = fwd(name, x)
    g = bwd(name, np.ones_like(x), x)
    assert (_ulps(y, y_exact, y_exact, v) / per).max() <= bound
    assert (_ulps(g, g_exact, terms, v) / per).max() <= bound + 1.5
    assert np.isfinite(y).all() and np.isfinite(g).all()
