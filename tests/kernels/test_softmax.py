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
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    err = np.abs(K.to_host(grad_x) - ref_grad(g64, y64))
    assert (err <= grad_error_bound(op, g64, y64, dtype)).all(), err.max()


def grad_error_bound(op, g, y, dtype):
    """Rounding-error bound of the backward kernels, given the forward's output ``y``.

    The kernels accumulate each row's sum in float64 (error at most K eps64 times the sum of
    magnitudes), round it to the dtype, then do a handful of dtype operations: exp(y) within
    one ulp (kernels/fastmath.py), a product, a difference.  Each costs at most one unit
    roundoff u = eps/2 of the terms it combines, so 4 eps of the magnitudes involved bounds the
    whole.  The difference may cancel, so the bound is in the terms' size, not the result's.
    """
    eps, K = np.finfo(dtype).eps, y.shape[1]
    if op == "softmax":
        dot = (g * y).sum(axis=1, keepdims=True)
        acc = K * np.finfo(np.float64).eps * (np.abs(g * y)).sum(axis=1, keepdims=True)
        return np.abs(y) * (4 * eps * (np.abs(g) + np.abs(dot)) + acc) + 1e-300
    e = np.exp(y)
    total = g.sum(axis=1, keepdims=True)
    acc = K * np.finfo(np.float64).eps * np.abs(g).sum(axis=1, keepdims=True)
    return 4 * eps * (np.abs(g) + e * np.abs(total)) + e * acc + 1e-300


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


@pytest.mark.parametrize("shape", [(6, 40), (64, 10), (256, 1000), (7, 1031)], ids=str)
def test_float32_log_softmax_is_accurate_to_a_few_ulps(shape, rng):
    # (x - m) <= 0 and -log(s) <= 0 add without cancelling, and s = 1 + (the other terms),
    # whose exp error is relative to their own small sum: every entry, the largest (-log s,
    # close to 0) included, is within a few ulps of its own size.  With float32 sums the
    # largest entries were off by 5e-5 relative on an AVX2 machine.  NumPy's float32 formula
    # is the yardstick the issue named: ours must not be worse.
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    exact = ref_log_softmax(x.astype(np.float64))
    ours = K.log_softmax_forward(x).astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    numpy32 = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float64)
    rel = np.abs(ours - exact) / np.abs(exact).clip(1e-30)
    rel_numpy = np.abs(numpy32 - exact) / np.abs(exact).clip(1e-30)
    assert rel.max() <= 4 * np.finfo(np.float32).eps, rel.max()
    assert rel.max() <= max(rel_numpy.max(), 4 * np.finfo(np.float32).eps)


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
