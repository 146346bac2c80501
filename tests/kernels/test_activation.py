"""Tests for kernels/activation.py: forward against NumPy, backward against the gradient
checker and the derivative's formula, CPU against CUDA, float32 against float64, bad inputs.
"""
import math
import warnings

import numba
import numpy as np
import pytest
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
}
NAMES = list(CASES)
# Small enough for the CUDA simulator (one Python thread per element); larger odd shapes,
# which exercise the CPU's vector loops and their remainders, follow in LARGE_SHAPES.
SHAPES = [(), (1,), (7,), (3, 2, 5), (2, 1, 3, 5), (0,), (2, 0, 3)]
LARGE_SHAPES = [(3, 5, 7), (2, 3, 4, 5), (1031,), (4, 6, 17, 19)]
# float32 results: the CPU's float32 approximations stay within 7 ulps (test_fastmath.py).
RTOL = {np.float32: 1e-6, np.float64: 1e-12}
# Absolute floors just above the subnormal spacing, so that only results that underflow pass
# on it.
ATOL = {np.float32: 1e-40, np.float64: 1e-300}
# gelu' has a root near x = -0.75, where its float32 error (5 ulps of its terms' size) is
# large relative to the value itself.
GRAD_ATOL_F32_GELU = 2e-7


def fwd(name, x, params=None):
    return getattr(K, f"{name}_forward")(x, **(CASES[name][0] if params is None else params))


def bwd(name, grad_y, x, params=None):
    return getattr(K, f"{name}_backward")(grad_y, x,
                                          **(CASES[name][0] if params is None else params))


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
    _, f, df, _ = CASES[name]
    np.testing.assert_allclose(K.to_host(y), f(x64), rtol=RTOL[dtype], atol=ATOL[dtype])
    grad_atol = GRAD_ATOL_F32_GELU if (name, dtype) == ("gelu", np.float32) else ATOL[dtype]
    np.testing.assert_allclose(K.to_host(grad_x), grad_y * df(x64), rtol=2 * RTOL[dtype],
                               atol=grad_atol)


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


@pytest.mark.parametrize("name", NAMES)
def test_nan_propagates(name, dtype):
    x = np.array([np.nan, 1.0, -1.0], dtype)
    y = fwd(name, x)
    g = bwd(name, np.ones_like(x), x)
    if name == "step":   # a comparison: NaN > 0 is false
        assert y[0] == 0 and g[0] == 0
    else:
        assert np.isnan(y[0]) and np.isfinite(y[1:]).all()
    if name in ("elu", "tanh", "sigmoid", "softplus", "gelu"):
        assert np.isnan(g[0])


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_property_smooth_activations_match_float64(x):
    for name in ("elu", "tanh", "sigmoid", "softplus", "gelu"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y32 = fwd(name, x)
        y64 = fwd(name, x.astype(np.float64))
        assert np.isfinite(y32).all()
        np.testing.assert_allclose(y32, y64, rtol=1e-6, atol=ATOL[np.float32])


# ---------------------------------------------------------------- devices and dtypes
@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64(name, rng):
    x = sample(rng, (3, 33), name, np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(fwd(name, x), fwd(name, x.astype(np.float64)), rtol=1e-6,
                               atol=ATOL[np.float32])
    grad_atol = GRAD_ATOL_F32_GELU if name == "gelu" else ATOL[np.float32]
    np.testing.assert_allclose(bwd(name, g, x),
                               bwd(name, g.astype(np.float64), x.astype(np.float64)),
                               rtol=2e-6, atol=grad_atol)


@pytest.mark.cuda
@pytest.mark.parametrize("name", NAMES)
def test_cpu_matches_cuda(name, cuda_device, dtype, rng):
    x = sample(rng, (3, 4, 5), name, dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for params in ([None] if not CASES[name][0] else [None, {}]):  # given and default params
        y_cpu, g_cpu = fwd(name, x, params), bwd(name, g, x, params)
        y_gpu = fwd(name, K.to_device(x, cuda_device), params)
        g_gpu = bwd(name, K.to_device(g, cuda_device), K.to_device(x, cuda_device), params)
        # float32: the CPU approximates within a few ulps, the GPU uses CUDA's math library
        grad_atol = GRAD_ATOL_F32_GELU if (name, dtype) == ("gelu", np.float32) else ATOL[dtype]
        np.testing.assert_allclose(K.to_host(y_gpu), y_cpu, rtol=2 * RTOL[dtype], atol=ATOL[dtype])
        np.testing.assert_allclose(K.to_host(g_gpu), g_cpu, rtol=2 * RTOL[dtype], atol=grad_atol)


CUDA_KERNELS = sorted(n for n in dir(activation) if n.endswith("_cuda"))


@pytest.mark.parametrize("kernel", CUDA_KERNELS)
def test_cuda_kernels_lower_for_a_real_gpu(kernel, dtype):
    # e.g. _leaky_relu_backward_cuda(grad_x, grad_y, x, slope): 3 arrays, then the parameters
    name = kernel[1:].rsplit("_", 2)[0]
    n_arrays = 2 if kernel.endswith("_forward_cuda") else 3
    nb_dtype = numba.from_dtype(dtype)
    ir = lower_for_gpu(getattr(activation, kernel),
                       [array(nb_dtype)] * n_arrays + [nb_dtype] * len(CASES[name][0]))
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
