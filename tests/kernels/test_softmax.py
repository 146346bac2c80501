"""Tests for kernels/softmax.py: softmax and log-softmax over the rows of a 2-D array."""
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import kernels as K
from cuda_lowering import array, float64_ops, lower_for_gpu
from kernels import softmax
from nn.gradcheck import gradcheck


# ---------------------------------------------------------------- slow, obvious references
def ref_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for n, row in enumerate(x):
        if row.size:
            e = np.exp(row - row.max())
            out[n] = e / e.sum()
    return out


def ref_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for n, row in enumerate(x):
        if row.size:
            shifted = row - row.max()
            out[n] = shifted - np.log(np.exp(shifted).sum())
    return out


OPS = {
    "softmax": (K.softmax_forward, K.softmax_backward, ref_softmax,
                lambda g, y: y * (g - (g * y).sum(axis=1, keepdims=True))),
    "log_softmax": (K.log_softmax_forward, K.log_softmax_backward, ref_log_softmax,
                    lambda g, y: g - np.exp(y) * g.sum(axis=1, keepdims=True)),
}
SHAPES = [(1, 1), (3, 5), (2, 17), (0, 4), (3, 0)]      # small: also run on the simulator
LARGE_SHAPES = [(64, 10), (256, 1000), (7, 1031)]
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
# Absolute floors: float32 log-softmax subtracts log(s), and s, a sum of up to a thousand
# exponentials, carries a few float32 ulps of relative error: log(s) a few 1e-7 absolute.
ATOL = {np.float32: 1e-6, np.float64: 1e-14}


def check(op, shape, device, dtype, rng):
    forward, backward, ref, ref_grad = OPS[op]
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    y = forward(K.to_device(x, device))
    grad_x = backward(K.to_device(g, device), y)
    for out in (y, grad_x):
        assert K.device_of(out) == device and out.shape == shape and out.dtype == dtype
    y = K.to_host(y)
    np.testing.assert_allclose(y, ref(x), rtol=RTOL[dtype], atol=ATOL[dtype])
    y64 = y.astype(np.float64)
    np.testing.assert_allclose(K.to_host(grad_x), ref_grad(g.astype(np.float64), y64),
                               rtol=10 * RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_matches_reference(op, shape, device, dtype, rng):
    check(op, shape, device, dtype, rng)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_large_shapes_match_reference_on_cpu(op, shape, dtype, rng):
    check(op, shape, "cpu", dtype, rng)


@pytest.mark.parametrize("op", list(OPS))
def test_backward_passes_gradcheck(op, rng):
    forward, backward, _, _ = OPS[op]
    x = rng.standard_normal((3, 5)) * 2
    report = gradcheck(forward, lambda g, x: backward(g, forward(x)), {"x": x}, tol=1e-6)
    assert report.ok


def test_rows_are_distributions(rng):
    x = rng.standard_normal((50, 30)).astype(np.float32) * 10
    y = K.softmax_forward(x)
    assert (y >= 0).all()
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    # exp turns log_y's absolute error (ulps of |log y| <= 60) into a relative one
    np.testing.assert_allclose(np.exp(K.log_softmax_forward(x)), y, rtol=1e-5, atol=1e-30)


# ---------------------------------------------------------------- stability
def test_required_exact_values(device, dtype):
    x = K.to_device(np.array([[1000, 0, -1000]], dtype), device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_y = K.to_host(K.log_softmax_forward(x))
        y = K.to_host(K.softmax_forward(x))
    np.testing.assert_array_equal(log_y, [[0, -1000, -2000]])
    np.testing.assert_array_equal(y, [[1, 0, 0]])


def test_extreme_rows(device, dtype):
    x = np.array([[1e4, -1e4, 0], [-1e4, -1e4, -1e4], [0, -np.inf, 1], [3e38, 3e38, 0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = K.to_host(K.softmax_forward(K.to_device(x, device)))
        log_y = K.to_host(K.log_softmax_forward(K.to_device(x, device)))
    np.testing.assert_allclose(y, [[1, 0, 0], [1 / 3] * 3, [1 / (1 + np.e), 0, np.e / (1 + np.e)],
                                   [0.5, 0.5, 0]], rtol=RTOL[dtype])
    assert log_y[0, 0] == 0 and log_y[0, 1] == -2e4 and log_y[2, 1] == -np.inf
    np.testing.assert_allclose(log_y[1], np.log(1 / 3), rtol=RTOL[dtype])


def test_nan_spreads_over_its_row_only(dtype):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]], dtype)
    for forward in (K.softmax_forward, K.log_softmax_forward):
        y = forward(x)
        assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64]),
                    hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_property_finite_and_normalised(x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = K.softmax_forward(x)
        log_y = K.log_softmax_forward(x)
    assert np.isfinite(y).all() and np.isfinite(log_y).all()
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=5e-6)
    np.testing.assert_allclose(log_y, ref_log_softmax(x), rtol=2e-6, atol=2e-6)


# ---------------------------------------------------------------- determinism, devices, dtypes
@pytest.mark.parametrize("op", list(OPS))
def test_results_do_not_depend_on_thread_count(op, rng):
    forward, backward, _, _ = OPS[op]
    x = rng.standard_normal((37, 300)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, before):
            numba.set_num_threads(threads)
            y = forward(x)
            results.append((y, backward(g, y)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", list(OPS))
def test_float32_matches_float64(op, rng):
    forward, backward, _, _ = OPS[op]
    x = rng.standard_normal((6, 40)) * 5
    g = rng.standard_normal(x.shape)
    y32, y64 = forward(x.astype(np.float32)), forward(x)
    np.testing.assert_allclose(y32, y64, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(backward(g.astype(np.float32), y32), backward(g, y64),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("op", list(OPS))
def test_cpu_matches_cuda(op, cuda_device, dtype, rng):
    forward, backward, _, _ = OPS[op]
    x = (rng.standard_normal((4, 9)) * 3).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    y = forward(x)
    y_gpu = forward(K.to_device(x, cuda_device))
    grad = backward(g, y)
    grad_gpu = backward(K.to_device(g, cuda_device), K.to_device(y, cuda_device))
    np.testing.assert_allclose(K.to_host(y_gpu), y, rtol=RTOL[dtype], atol=ATOL[dtype])
    np.testing.assert_allclose(K.to_host(grad_gpu), grad, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("kernel, ndims", [
    ("_row_max_sum_cuda", (1, 1, 2)), ("_softmax_forward_cuda", (2, 2, 1, 1)),
    ("_log_softmax_forward_cuda", (2, 2, 1, 1)), ("_row_dot_cuda", (1, 2, 2)),
    ("_row_sum_cuda", (1, 2)), ("_softmax_backward_cuda", (2, 2, 2, 1)),
    ("_log_softmax_backward_cuda", (2, 2, 2, 1)),
])
def test_cuda_kernels_lower_for_a_real_gpu(kernel, ndims, dtype):
    nb_dtype = numba.from_dtype(dtype)
    ir = lower_for_gpu(getattr(softmax, kernel), [array(nb_dtype, nd) for nd in ndims])
    if dtype == np.float32:
        assert float64_ops(ir) == 0


@pytest.mark.cuda
def test_arrays_on_two_devices_are_rejected(cuda_device):
    y = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="different devices.*grad_y.*'cuda'.*y.*'cpu'"):
        K.softmax_backward(K.to_device(y, cuda_device), y)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("op", list(OPS))
def test_bad_inputs(op):
    forward, backward, _, _ = OPS[op]
    with pytest.raises(ValueError, match=r"x: expected a 2-D array, got shape \(6,\)"):
        forward(np.ones(6))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64, got int64"):
        forward(np.ones((2, 3), np.int64))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64, got float16"):
        forward(np.ones((2, 3), np.float16))
    with pytest.raises(ValueError, match=r"grad_y is \(2, 3\), y is \(3, 2\)"):
        backward(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^grad_y: expected a 2-D array"):
        backward(np.ones((2, 3, 1)), np.ones((2, 3, 1)))
    with pytest.raises(TypeError, match=r"grad_y and y must have the same dtype"):
        backward(np.ones((2, 3), np.float32), np.ones((2, 3)))
