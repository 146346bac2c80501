"""kernels/pool.py: pooling against the NumPy references, the gradient checker, torch (when
importable), and CPU against CUDA.

The property tests draw tiny random configurations (hypothesis, derandomized so CI is
reproducible): 200 per op and dtype on the CPU, a dozen on the simulated GPU.
"""
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
except ImportError:  # CI has no torch: the NumPy references are the primary check
    torch = None

# hypothesis cannot take the cuda_device fixture, so those tests skip by hand
needs_cuda = pytest.mark.skipif("cuda" not in K.devices(),
                                reason="no GPU with CuPy, and the simulator is off")
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

CPU_PROPERTY = settings(max_examples=200, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow])
CUDA_PROPERTY = settings(max_examples=12, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow])

# float32 results against float64 references: sums of a few dozen terms of size ~1.
TOL = {np.float32: dict(rtol=1e-5, atol=5e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])

# (x shape, kernel_size, stride, padding): the CPU's 2x2 path (even and odd sizes), tiled
# and overlapping windows, padding, non-square everything, batch of 1.
GRID = [
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 7, 9), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 9, 7), (3, 3), (2, 2), (1, 1)),
    ((1, 3, 6, 6), (3, 3), (1, 1), (1, 1)),
    ((2, 1, 7, 8), (2, 3), (1, 2), (1, 1)),
    ((1, 2, 5, 9), (3, 2), (3, 2), (0, 1)),
    ((2, 2, 4, 5), (4, 5), (1, 1), (0, 2)),
    ((1, 1, 3, 3), (1, 1), (1, 1), (0, 0)),
]


# ---------------------------------------------------------------- inputs
@st.composite
def pool_configs(draw, max_size=8):
    """A random (x shape, kernel, stride, padding, seed) that satisfies torch's constraints."""
    if draw(st.integers(0, 3)) == 0:  # a quarter of the draws take the CPU's 2x2 path
        k, s, p = (2, 2), (2, 2), (0, 0)
    else:
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    H = draw(st.integers(max(1, k[0] - 2 * p[0]), max_size))
    W = draw(st.integers(max(1, k[1] - 2 * p[1]), max_size))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), H, W)
    return shape, k, s, p, draw(st.integers(0, 2**32 - 1))


@st.composite
def plane_shapes(draw):
    return ((draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)),
             draw(st.integers(1, 9))), draw(st.integers(0, 2**32 - 1)))


def with_ties(rng, shape, dtype):
    """Values on a coarse grid, so windows often hold equal maxima."""
    return np.round(rng.standard_normal(shape), 1).astype(dtype)


def well_separated(rng, shape, dtype=np.float64):
    """Distinct values at least 0.5 apart: no ties, so max pooling is smooth at x."""
    n = int(np.prod(shape))
    return (rng.permutation(n) + rng.uniform(-0.25, 0.25, n)).reshape(shape).astype(dtype)


def max_pool_check(x, k, s, p):
    """Forward and backward against the references (exact forward, close backward)."""
    y, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
    y_ref, indices_ref = ref.max_pool2d(x, k, s, p)
    assert y.dtype == x.dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    grad_x = K.max_pool2d_backward(grad_y, indices, x.shape, k, s, p)
    assert grad_x.dtype == x.dtype and grad_x.shape == x.shape
    np.testing.assert_allclose(grad_x, ref.max_pool2d_backward(grad_y, indices, x.shape),
                               **TOL[x.dtype.type])


def max_pool_gradcheck(x, k, s, p):
    def forward(x):
        return K.max_pool2d_forward(x, k, s, p)

    def backward(grad_y, x):
        _, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
        return K.max_pool2d_backward(grad_y, indices, x.shape, k, s, p)

    gradcheck(forward, backward, {"x": x})


def avg_pool_check(x, k, s, p, count_include_pad):
    y = K.avg_pool2d_forward(x, k, s, p, count_include_pad)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y, ref.avg_pool2d(x, k, s, p, count_include_pad),
                               **TOL[x.dtype.type])
    grad_y = np.random.default_rng(0).standard_normal(y.shape).astype(x.dtype)
    grad_x = K.avg_pool2d_backward(grad_y, x.shape, k, s, p, count_include_pad)
    assert grad_x.dtype == x.dtype and grad_x.shape == x.shape
    np.testing.assert_allclose(
        grad_x, ref.avg_pool2d_backward(grad_y, x.shape, k, s, p, count_include_pad),
        **TOL[x.dtype.type])


def avg_pool_gradcheck(x, k, s, p, count_include_pad):
    gradcheck(lambda x: K.avg_pool2d_forward(x, k, s, p, count_include_pad),
              lambda g, x: K.avg_pool2d_backward(g, x.shape, k, s, p, count_include_pad),
              {"x": x})


# ---------------------------------------------------------------- CPU: fixed grid
@DTYPES
@pytest.mark.parametrize("shape, k, s, p", GRID)
def test_max_pool_grid(dtype, shape, k, s, p):
    rng = np.random.default_rng(1)
    max_pool_check(with_ties(rng, shape, dtype), k, s, p)
    if dtype == np.float64:
        max_pool_gradcheck(well_separated(rng, shape), k, s, p)


@DTYPES
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape, k, s, p", GRID)
def test_avg_pool_grid(dtype, shape, k, s, p, count_include_pad):
    rng = np.random.default_rng(2)
    avg_pool_check(rng.standard_normal(shape).astype(dtype), k, s, p, count_include_pad)
    if dtype == np.float64:
        avg_pool_gradcheck(rng.standard_normal(shape), k, s, p, count_include_pad)


# ---------------------------------------------------------------- CPU: properties
@DTYPES
@CPU_PROPERTY
@given(config=pool_configs())
def test_max_pool_property(dtype, config):
    shape, k, s, p, seed = config
    rng = np.random.default_rng(seed)
    x = with_ties(rng, shape, dtype)
    if seed % 3 == 0:  # a third of the inputs hold NaNs
        x.reshape(-1)[rng.integers(0, x.size, 2)] = np.nan
    max_pool_check(x, k, s, p)
    if dtype == np.float64:
        max_pool_gradcheck(well_separated(rng, shape), k, s, p)


@DTYPES
@CPU_PROPERTY
@given(config=pool_configs(), count_include_pad=st.booleans())
def test_avg_pool_property(dtype, config, count_include_pad):
    shape, k, s, p, seed = config
    rng = np.random.default_rng(seed)
    avg_pool_check(rng.standard_normal(shape).astype(dtype), k, s, p, count_include_pad)
    if dtype == np.float64:
        avg_pool_gradcheck(rng.standard_normal(shape), k, s, p, count_include_pad)


@DTYPES
@CPU_PROPERTY
@given(config=plane_shapes())
def test_global_avg_pool_property(dtype, config):
    shape, seed = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    y = K.global_avg_pool2d_forward(x)
    assert y.shape == shape[:2] + (1, 1) and y.dtype == dtype
    np.testing.assert_allclose(y, ref.global_avg_pool2d(x), **TOL[dtype])
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    grad_x = K.global_avg_pool2d_backward(grad_y, shape)
    assert grad_x.dtype == dtype
    np.testing.assert_allclose(grad_x, ref.global_avg_pool2d_backward(grad_y, shape),
                               **TOL[dtype])
    if dtype == np.float64:
        gradcheck(K.global_avg_pool2d_forward,
                  lambda g, x: K.global_avg_pool2d_backward(g, x.shape), {"x": x})


# ---------------------------------------------------------------- semantics on both devices
def _max_pool(device, x, *args, **kwargs):
    y, indices = K.max_pool2d_forward(K.to_device(x, device), *args, return_indices=True,
                                      **kwargs)
    return K.to_host(y), K.to_host(indices)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1)])
def test_max_pool_ties_go_to_the_first_maximum(device, dtype, k, s, p):
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 1:3, 1:3] = 5.0  # four equal maxima in the middle
    y, indices = _max_pool(device, x, k, s, p)
    y_ref, indices_ref = ref.max_pool2d(x, (k, k), (s, s), (p, p))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(indices, indices_ref)
    if (k, s, p) == (2, 2, 0):
        np.testing.assert_array_equal(indices[0, 0], [[5, 6], [9, 10]])


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1)])
def test_max_pool_nan_propagates(device, dtype, k, s, p):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = np.nan  # two NaNs in the top-left 2x2 window
    y, indices = _max_pool(device, x, k, s, p)
    y_ref, indices_ref = ref.max_pool2d(x, (k, k), (s, s), (p, p))
    np.testing.assert_array_equal(y, y_ref)  # NaNs compare equal here
    np.testing.assert_array_equal(indices, indices_ref)
    assert np.isnan(y[0, 0, 0, 0]) and indices[0, 0, 0, 0] == 4  # the last NaN
    assert not np.isnan(y[0, 0, -1, -1])
    grad_y = np.ones(y.shape, dtype)
    grad_x = K.to_host(K.max_pool2d_backward(K.to_device(grad_y, device),
                                             K.to_device(indices, device), x.shape, k, s, p))
    assert grad_x[0, 0, 1, 0] >= 1 and grad_x[0, 0, 0, 0] == 0


def test_max_pool_all_minus_inf_picks_the_window_start(device, dtype):
    x = np.full((1, 1, 3, 3), -np.inf, dtype)
    y, indices = _max_pool(device, x, 3, 1, 1)
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(indices[0, 0], [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


@pytest.mark.parametrize("k, s, p, out", [(2, 2, 0, 2), (3, 1, 1, 4)])
def test_max_pool_backward_ignores_indices_outside_the_plane(device, k, s, p, out):
    # Kernels do not check bounds: a corrupted index must not write out of the plane.
    y_shape = (1, 2, out, out)
    indices = np.full(y_shape, 16, np.int64)
    indices[0, 0] = -1
    indices[0, 1, 0, 0] = 10 ** 12
    grad_x = K.max_pool2d_backward(K.to_device(np.ones(y_shape), device),
                                   K.to_device(indices, device), (1, 2, 4, 4), k, s, p)
    np.testing.assert_array_equal(K.to_host(grad_x), np.zeros((1, 2, 4, 4)))


def test_repeated_calls_are_bitwise_identical(device, dtype):
    rng = np.random.default_rng(3)
    x = K.to_device(rng.standard_normal((1, 2, 6, 7)).astype(dtype), device)
    for k, s, p in [(2, 2, 0), (3, 1, 1)]:
        runs = []
        for _ in range(2):
            y, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
            grad_y = K.to_device(np.ones(y.shape, dtype), device)
            a = K.avg_pool2d_forward(x, k, s, p)
            runs.append([K.to_host(v) for v in (
                y, indices, K.max_pool2d_backward(y, indices, x.shape, k, s, p), a,
                K.avg_pool2d_backward(grad_y, x.shape, k, s, p))])
        for first, second in zip(*runs):
            assert first.tobytes() == second.tobytes()


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 9, 8))
    threads = numba.get_num_threads()

    def run():
        out = []
        for k, s, p in [(2, 2, 0), (3, 1, 1), (3, 2, 1)]:
            y, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
            out += [y, indices, K.max_pool2d_backward(y, indices, x.shape, k, s, p),
                    K.avg_pool2d_backward(K.avg_pool2d_forward(x, k, s, p), x.shape, k, s, p)]
        return out + [K.global_avg_pool2d_forward(x)]

    expected = run()
    try:
        numba.set_num_threads(1)
        single = run()
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(expected, single):
        assert a.tobytes() == b.tobytes()


def test_default_stride_is_the_kernel_size(device):
    x = K.to_device(np.random.default_rng(5).standard_normal((1, 2, 7, 6)), device)
    for op in (K.max_pool2d_forward, K.avg_pool2d_forward):
        a, b = K.to_host(op(x, (3, 2))), K.to_host(op(x, (3, 2), (3, 2)))
        assert a.shape == (1, 2, 2, 3)
        np.testing.assert_array_equal(a, b)
    assert not isinstance(K.max_pool2d_forward(x, 2), tuple)


def test_non_contiguous_input_matches_a_contiguous_copy():
    x = np.random.default_rng(6).standard_normal((2, 3, 10, 9)).transpose(0, 1, 3, 2)[..., ::2]
    assert not x.flags.c_contiguous
    xc = np.ascontiguousarray(x)
    for op in (K.max_pool2d_forward, K.avg_pool2d_forward):
        np.testing.assert_array_equal(op(x, 2), op(xc, 2))
    np.testing.assert_array_equal(K.global_avg_pool2d_forward(x), K.global_avg_pool2d_forward(xc))
    g = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(K.avg_pool2d_backward(g, (2, 3, 9, 9), 2, 1),
                                  K.avg_pool2d_backward(np.ascontiguousarray(g), (2, 3, 9, 9), 2, 1))


def test_empty_batch():
    x = np.zeros((0, 3, 4, 4), np.float32)
    y, indices = K.max_pool2d_forward(x, 2, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 2, 2)
    assert K.max_pool2d_backward(y, indices, x.shape, 2).shape == x.shape
    assert K.avg_pool2d_backward(K.avg_pool2d_forward(x, 2), x.shape, 2).shape == x.shape
    assert K.global_avg_pool2d_forward(x).shape == (0, 3, 1, 1)


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 9, 8))
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        for op in (K.max_pool2d_forward, K.avg_pool2d_forward):
            np.testing.assert_allclose(op(x.astype(np.float32), k, s, p), op(x, k, s, p),
                                       **TOL[np.float32])
    np.testing.assert_allclose(K.global_avg_pool2d_forward(x.astype(np.float32)),
                               K.global_avg_pool2d_forward(x), **TOL[np.float32])


# ---------------------------------------------------------------- torch, where installed
@needs_torch
@DTYPES
@pytest.mark.parametrize("shape, k, s, p", GRID)
def test_pooling_matches_torch(dtype, shape, k, s, p):
    rng = np.random.default_rng(9)
    x = with_ties(rng, shape, dtype)
    x.reshape(-1)[rng.choice(x.size, 2)] = np.nan
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty, tindices = F.max_pool2d(tx, k, s, p, return_indices=True)
    y, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(indices, tindices.numpy())
    grad_y = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_allclose(K.max_pool2d_backward(grad_y, indices, shape, k, s, p),
                               tx.grad.numpy(), **TOL[dtype])
    x = rng.standard_normal(shape).astype(dtype)
    for count_include_pad in (True, False):
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = F.avg_pool2d(tx, k, s, p, count_include_pad=count_include_pad)
        ty.backward(torch.from_numpy(grad_y))
        np.testing.assert_allclose(K.avg_pool2d_forward(x, k, s, p, count_include_pad),
                                   ty.detach().numpy(), **TOL[dtype])
        np.testing.assert_allclose(
            K.avg_pool2d_backward(grad_y, shape, k, s, p, count_include_pad), tx.grad.numpy(),
            **TOL[dtype])


@needs_torch
@DTYPES
def test_global_pool_matches_torch(dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = F.adaptive_avg_pool2d(tx, 1)
    grad_y = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.from_numpy(grad_y))
    np.testing.assert_allclose(K.global_avg_pool2d_forward(x), ty.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(K.global_avg_pool2d_backward(grad_y, x.shape), tx.grad.numpy(),
                               **TOL[dtype])


# ---------------------------------------------------------------- CPU against CUDA
def _cpu_and_cuda(fn, *arrays):
    """``fn`` on the CPU and on CUDA with the same inputs, results on the host."""
    cpu = fn(*arrays)
    gpu = fn(*[K.to_device(a, "cuda") for a in arrays])
    as_tuple = (lambda r: r if isinstance(r, tuple) else (r,))
    return as_tuple(cpu), tuple(K.to_host(g) for g in as_tuple(gpu))


def assert_cpu_equals_cuda(fn, *arrays):
    cpu, gpu = _cpu_and_cuda(fn, *arrays)
    for c, g in zip(cpu, gpu):
        assert c.dtype == g.dtype and c.shape == g.shape
        assert c.tobytes() == g.tobytes()  # same order of operations: bitwise equal


def cuda_pool_check(x, k, s, p, count_include_pad):
    rng = np.random.default_rng(0)
    y, indices = K.max_pool2d_forward(x, k, s, p, return_indices=True)
    grad_y = rng.standard_normal(y.shape).astype(x.dtype)
    assert_cpu_equals_cuda(lambda x: K.max_pool2d_forward(x, k, s, p, return_indices=True), x)
    assert_cpu_equals_cuda(lambda g, i: K.max_pool2d_backward(g, i, x.shape, k, s, p),
                           grad_y, indices)
    assert_cpu_equals_cuda(lambda x: K.avg_pool2d_forward(x, k, s, p, count_include_pad), x)
    assert_cpu_equals_cuda(
        lambda g: K.avg_pool2d_backward(g, x.shape, k, s, p, count_include_pad), grad_y)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, k, s, p", [(shape[:1] + (1,) + shape[2:], k, s, p)
                                            for shape, k, s, p in GRID])
@DTYPES
def test_pooling_cpu_equals_cuda_grid(cuda_device, dtype, shape, k, s, p):
    x = with_ties(np.random.default_rng(11), shape, dtype)
    x.reshape(-1)[3] = np.nan
    cuda_pool_check(x, k, s, p, count_include_pad=True)
    cuda_pool_check(x, k, s, p, count_include_pad=False)


@pytest.mark.cuda
@needs_cuda
@DTYPES
@CUDA_PROPERTY
@given(config=pool_configs(max_size=6), count_include_pad=st.booleans())
def test_pooling_cpu_equals_cuda_property(dtype, config, count_include_pad):
    shape, k, s, p, seed = config
    x = with_ties(np.random.default_rng(seed), (1,) + shape[1:], dtype)
    cuda_pool_check(x, k, s, p, count_include_pad)


@pytest.mark.cuda
@DTYPES
@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (1, 2, 1, 1), (1, 1, 4, 4)])
def test_global_pool_cpu_equals_cuda(cuda_device, dtype, shape):
    # 42 elements per plane: eight lanes and a tail; 1: only the tail; 16: no tail
    rng = np.random.default_rng(12)
    assert_cpu_equals_cuda(K.global_avg_pool2d_forward, rng.standard_normal(shape).astype(dtype))
    assert_cpu_equals_cuda(lambda g: K.global_avg_pool2d_backward(g, shape),
                           rng.standard_normal(shape[:2] + (1, 1)).astype(dtype))


# ---------------------------------------------------------------- validation
X = np.zeros((1, 2, 4, 4), np.float32)
G = np.zeros((1, 2, 2, 2), np.float32)
IDX = np.zeros((1, 2, 2, 2), np.int64)

BAD_CALLS = [
    ("x not 4-D", lambda: K.max_pool2d_forward(np.zeros((2, 4, 4)), 2),
     ValueError, r"x: expected a 4-D array, got shape \(2, 4, 4\)"),
    ("x integer", lambda: K.avg_pool2d_forward(np.zeros((1, 1, 4, 4), np.int64), 2),
     TypeError, "x: expected dtype float32 or float64, got int64"),
    ("x not an array", lambda: K.max_pool2d_forward([[[[1.0]]]], 1),
     TypeError, "x: expected a float32 or float64 array, got list"),
    ("x empty plane", lambda: K.global_avg_pool2d_forward(np.zeros((1, 1, 0, 3))),
     ValueError, r"x: expected non-empty H and W, got shape \(1, 1, 0, 3\)"),
    ("kernel zero", lambda: K.max_pool2d_forward(X, 0),
     ValueError, "kernel_size: expected a positive integer, got 0"),
    ("kernel triple", lambda: K.avg_pool2d_forward(X, (2, 2, 2)),
     ValueError, r"kernel_size: expected an int or a pair of ints, got \(2, 2, 2\)"),
    ("stride zero", lambda: K.max_pool2d_forward(X, 2, 0),
     ValueError, "stride: expected a positive integer, got 0"),
    ("stride negative", lambda: K.avg_pool2d_backward(G, X.shape, 2, (1, -1)),
     ValueError, "stride: expected a positive integer, got -1"),
    ("padding negative", lambda: K.max_pool2d_forward(X, 2, 2, -1),
     ValueError, "padding: expected a non-negative integer, got -1"),
    ("padding over half", lambda: K.avg_pool2d_forward(X, 3, 1, (1, 2)),
     ValueError, r"padding: expected at most half the kernel size, <= \(1, 1\) for "
                 r"kernel_size \(3, 3\), got \(1, 2\)"),
    ("window too big", lambda: K.max_pool2d_forward(X, (5, 2)),
     ValueError, r"kernel_size: the pooling window \(5, 2\) is larger than the padded input "
                 r"\(4, 4\)"),
    ("window too big backward", lambda: K.avg_pool2d_backward(G, (1, 2, 1, 1), 2),
     ValueError, r"the pooling window \(2, 2\) is larger than the padded input \(1, 1\)"),
    ("grad_y shape", lambda: K.max_pool2d_backward(G[:, :, :1], IDX[:, :, :1], X.shape, 2),
     ValueError, r"grad_y: expected shape \(1, 2, 2, 2\) .*got \(1, 2, 1, 2\)"),
    ("grad_y shape avg", lambda: K.avg_pool2d_backward(G, X.shape, 2, 1),
     ValueError, r"grad_y: expected shape \(1, 2, 3, 3\) .*got \(1, 2, 2, 2\)"),
    ("grad_y integer", lambda: K.max_pool2d_backward(IDX, IDX, X.shape, 2),
     TypeError, "grad_y: expected dtype float32 or float64, got int64"),
    ("indices dtype", lambda: K.max_pool2d_backward(G, IDX.astype(np.int32), X.shape, 2),
     TypeError, "indices: expected dtype int64, got int32"),
    ("indices shape", lambda: K.max_pool2d_backward(G, IDX[..., :1], X.shape, 2),
     ValueError, r"indices: expected shape \(1, 2, 2, 2\) \(same as grad_y\), got \(1, 2, 2, 1\)"),
    ("indices not an array", lambda: K.max_pool2d_backward(G, IDX.tolist(), X.shape, 2),
     TypeError, "indices: expected a NumPy or CuPy array, got list"),
    ("x_shape", lambda: K.max_pool2d_backward(G, IDX, (1, 2, 4), 2),
     ValueError, r"x_shape: expected 4 non-negative ints \(N, C, H, W\), got \(1, 2, 4\)"),
    ("global grad_y shape", lambda: K.global_avg_pool2d_backward(G, X.shape),
     ValueError, r"grad_y: expected shape \(1, 2, 1, 1\) .*got \(1, 2, 2, 2\)"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.cuda
def test_arrays_on_different_devices_raise(cuda_device):
    with pytest.raises(ValueError, match="different devices: grad_y is on 'cpu' but indices "
                                         "is on 'cuda'"):
        K.max_pool2d_backward(G, K.to_device(IDX, cuda_device), X.shape, 2)


# ---------------------------------------------------------------- the CUDA kernels compile for a GPU
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_and_upsample_cuda_kernels_lower_for_a_real_gpu(dtype):
    """The simulator never type-checks kernels: lower them to LLVM IR as a GPU build would."""
    from numba import types

    from cuda_lowering import array, float64_ops, lower_for_gpu
    from kernels import pool, upsample

    f, i = numba.from_dtype(dtype), types.int64
    planes, idx = array(f, 3), types.Array(types.int64, 3, "C")
    kernels_and_args = [
        (pool._max_pool2d_forward_cuda, [planes, idx, planes] + [i] * 6),
        (pool._max_pool2d_backward_cuda, [planes, planes, idx] + [i] * 6 + [f]),
        (pool._avg_pool2d_forward_cuda, [planes, planes, array(f), array(f)] + [i] * 6 + [f]),
        (pool._avg_pool2d_backward_cuda, [planes, planes, array(f), array(f)] + [i] * 6 + [f]),
        (pool._global_avg_pool2d_forward_cuda, [array(f), array(f, 2), f, f]),
        (pool._global_avg_pool2d_backward_cuda, [array(f, 2), array(f), f]),
        (upsample._upsample_nearest2d_forward_cuda, [planes, planes, i, i]),
        (upsample._upsample_nearest2d_backward_cuda, [planes, planes, i, i, f]),
    ]
    for kernel, args in kernels_and_args:
        ir = lower_for_gpu(kernel, args)
        if dtype == np.float32:
            assert float64_ops(ir) == 0, kernel.__name__
