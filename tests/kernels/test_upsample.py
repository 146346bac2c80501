"""kernels/upsample.py: nearest upsampling against the NumPy reference, the gradient checker,
torch (when importable), and CPU against CUDA."""
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels as K
import reference_pool as ref
from nn.gradcheck import gradcheck

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # CI has no torch: the NumPy reference is the primary check
    torch = None

TOL = {np.float32: dict(rtol=1e-5, atol=5e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
# factor 2 has its own CPU loop; the others take the general one
SCALES = [2, 3, (1, 2), (3, 2), (2, 1), 1]


def pair(scale):
    return (scale, scale) if isinstance(scale, int) else scale


def _grad_shape(shape, scale):
    sh, sw = pair(scale)
    return shape[:2] + (shape[2] * sh, shape[3] * sw)


@st.composite
def upsample_configs(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)),
             draw(st.integers(1, 5)))
    scale = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return shape, scale, draw(st.integers(0, 2**32 - 1))


@DTYPES
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(config=upsample_configs())
def test_upsample_property(dtype, config):
    shape, scale, seed = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y = K.upsample_nearest2d_forward(x, scale)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, ref.upsample_nearest2d(x, scale))
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    grad_x = K.upsample_nearest2d_backward(grad_y, scale)
    assert grad_x.dtype == dtype and grad_x.shape == shape
    np.testing.assert_allclose(grad_x, ref.upsample_nearest2d_backward(grad_y, scale),
                               **TOL[dtype])
    if dtype == np.float64:
        gradcheck(lambda x: K.upsample_nearest2d_forward(x, scale),
                  lambda g, x: K.upsample_nearest2d_backward(g, scale), {"x": x})


@pytest.mark.parametrize("scale", SCALES)
def test_upsample_grid(device, dtype, scale):
    rng = np.random.default_rng(1)
    shape = (2, 3, 4, 5) if device == "cpu" else (1, 2, 3, 2)  # few simulated threads
    x = rng.standard_normal(shape).astype(dtype)
    y = K.to_host(K.upsample_nearest2d_forward(K.to_device(x, device), scale))
    np.testing.assert_array_equal(y, ref.upsample_nearest2d(x, pair(scale)))
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    grad_x = K.to_host(K.upsample_nearest2d_backward(K.to_device(grad_y, device), scale))
    np.testing.assert_allclose(grad_x, ref.upsample_nearest2d_backward(grad_y, pair(scale)),
                               **TOL[dtype])


@pytest.mark.cuda
@DTYPES
@pytest.mark.parametrize("shape, scale", [((1, 2, 3, 5), 2), ((2, 1, 4, 3), (3, 1)),
                                          ((1, 1, 1, 2), (1, 3))])
def test_upsample_cpu_equals_cuda(cuda_device, dtype, shape, scale):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    grad_y = rng.standard_normal(_grad_shape(shape, scale)).astype(dtype)
    for fn, arg in [(lambda a: K.upsample_nearest2d_forward(a, scale), x),
                    (lambda a: K.upsample_nearest2d_backward(a, scale), grad_y)]:
        cpu = fn(arg)
        gpu = K.to_host(fn(K.to_device(arg, cuda_device)))
        assert cpu.dtype == gpu.dtype and cpu.tobytes() == gpu.tobytes()


def test_repeated_calls_and_thread_count_give_identical_results(device):
    rng = np.random.default_rng(3)
    shape = (3, 4, 9, 8) if device == "cpu" else (1, 1, 3, 4)
    x = K.to_device(rng.standard_normal(shape), device)

    def run():
        return [K.to_host(K.upsample_nearest2d_backward(K.upsample_nearest2d_forward(x, s), s))
                for s in (2, 3)]

    expected = run()
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        again = run()
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(expected, again):
        assert a.tobytes() == b.tobytes()


def test_non_contiguous_and_empty_inputs():
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5)).transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(K.upsample_nearest2d_forward(x, 2),
                                  K.upsample_nearest2d_forward(np.ascontiguousarray(x), 2))
    g = np.random.default_rng(5).standard_normal((2, 3, 8, 6))[..., ::-1]
    np.testing.assert_array_equal(K.upsample_nearest2d_backward(g, 2),
                                  K.upsample_nearest2d_backward(np.ascontiguousarray(g), 2))
    assert K.upsample_nearest2d_forward(np.zeros((0, 3, 4, 4)), 2).shape == (0, 3, 8, 8)
    assert K.upsample_nearest2d_backward(np.zeros((0, 3, 4, 4)), 2).shape == (0, 3, 2, 2)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@DTYPES
@pytest.mark.parametrize("scale", SCALES)
def test_upsample_matches_torch(dtype, scale):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = F.interpolate(tx, scale_factor=scale, mode="nearest")
    grad_y = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_array_equal(K.upsample_nearest2d_forward(x, scale), ty.detach().numpy())
    np.testing.assert_allclose(K.upsample_nearest2d_backward(grad_y, scale), tx.grad.numpy(),
                               **TOL[dtype])


X = np.zeros((1, 2, 4, 4), np.float32)
BAD_CALLS = [
    ("x not 4-D", lambda: K.upsample_nearest2d_forward(np.zeros((2, 4, 4)), 2),
     ValueError, r"x: expected a 4-D array, got shape \(2, 4, 4\)"),
    ("x integer", lambda: K.upsample_nearest2d_forward(X.astype(np.int32), 2),
     TypeError, "x: expected dtype float32 or float64, got int32"),
    ("scale zero", lambda: K.upsample_nearest2d_forward(X, 0),
     ValueError, "scale_factor: expected a positive integer, got 0"),
    ("scale fractional", lambda: K.upsample_nearest2d_forward(X, (2, 1.5)),
     ValueError, "scale_factor: expected a positive integer, got 1.5"),
    ("scale triple", lambda: K.upsample_nearest2d_backward(X, (1, 1, 1)),
     ValueError, r"scale_factor: expected an int or a pair of ints, got \(1, 1, 1\)"),
    ("grad_y not divisible", lambda: K.upsample_nearest2d_backward(np.zeros((1, 2, 4, 5)), 2),
     ValueError, r"grad_y: expected non-empty H and W divisible by scale_factor \(2, 2\), got "
                 r"shape \(1, 2, 4, 5\)"),
    ("grad_y not 4-D", lambda: K.upsample_nearest2d_backward(np.zeros((4, 4)), 2),
     ValueError, r"grad_y: expected a 4-D array, got shape \(4, 4\)"),
    ("grad_y integer", lambda: K.upsample_nearest2d_backward(X.astype(np.int64), 2),
     TypeError, "grad_y: expected dtype float32 or float64, got int64"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()
