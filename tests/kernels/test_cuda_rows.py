"""Wide rows on the CUDA device: softmax, log-softmax and cross-entropy reduce each row with a
block of threads (coalesced loads) instead of one thread walking the row; results match a
float64 reference, the CPU, and themselves bit for bit."""
import importlib

import numpy as np
import pytest

import kernels as K

S = importlib.import_module("kernels.softmax")
L = importlib.import_module("kernels.loss")

pytestmark = pytest.mark.cuda

SHAPES = [(3, 64), (2, 300), (2, 600)]   # at the threshold, one warp, two warps


def _ref_log_softmax(x):
    x = x.astype(np.float64)
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_row_block_sizes():
    assert S.WIDE_ROW >= 32
    assert [S.row_block(k) for k in (64, 511, 512, 1024, 10 ** 6)] == [32, 32, 64, 128, 256]


@pytest.fixture
def spy(monkeypatch):
    """(kernel name, blocks) of every launch from kernels/softmax.py and kernels/loss.py."""
    launches = []
    for mod in (S, L):
        real = mod.launch

        def record(kernel, n, *args, block=256, real=real):
            launches.append((getattr(kernel, "__name__", str(kernel)), -(-n // block)))
            return real(kernel, n, *args, block=block)
        monkeypatch.setattr(mod, "launch", record)
    return launches


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wide_softmax_family(cuda_device, spy, shape, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    xd, gd = K.to_device(x, cuda_device), K.to_device(g, cuda_device)
    eps = np.finfo(dtype).eps
    # Error bound: a K-term sum in the working precision plus one exp/log per element.
    tol = 4 * shape[1] * eps
    ref_log = _ref_log_softmax(x)
    ref = np.exp(ref_log)
    y = K.to_host(K.softmax_forward(xd))
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * ref.max())
    ly = K.to_host(K.log_softmax_forward(xd))
    np.testing.assert_allclose(ly, ref_log, rtol=tol, atol=tol)
    # Backward from the float64 forward, against the formulas in float64.
    yd = K.to_device(ref.astype(dtype), cuda_device)
    gx = K.to_host(K.softmax_backward(gd, yd))
    r = ref * (g - (g * ref).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(gx, r, atol=tol * np.abs(g).max())
    lyd = K.to_device(ref_log.astype(dtype), cuda_device)
    lgx = K.to_host(K.log_softmax_backward(gd, lyd))
    r = g - ref * g.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(lgx, r, atol=tol * np.abs(g).sum(axis=1).max())
    # A block per row for every row reduction, then a per-row combine.
    partials = [blocks for name, blocks in spy if name.endswith("_partials_cuda")]
    assert len(partials) == 4 and all(b == shape[0] for b in partials)
    assert not any(name in ("_row_max_sum_cuda", "_row_dot_cuda") for name, _ in spy)
    # Fixed summation order: the same bits every time.
    np.testing.assert_array_equal(y, K.to_host(K.softmax_forward(xd)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_wide_cross_entropy(cuda_device, spy, shape, smoothing):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    xd = K.to_device(x, cuda_device)
    ld = K.to_device(labels, cuda_device)
    loss, grad = K.cross_entropy_forward(xd, ld, label_smoothing=smoothing)
    logp = _ref_log_softmax(x)
    q = np.full(shape, smoothing / shape[1])
    q[np.arange(shape[0]), labels] += 1 - smoothing
    ref_loss = -(q * logp).sum(axis=1).mean()
    tol = 4 * shape[1] * np.finfo(np.float32).eps
    np.testing.assert_allclose(float(K.to_host(loss)), ref_loss, rtol=tol)
    np.testing.assert_allclose(K.to_host(grad), (np.exp(logp) - q) / shape[0], atol=tol / shape[0])
    assert ("_row_stats_partials_cuda", shape[0]) in spy
    assert "_cross_entropy_rows_cuda" not in [name for name, _ in spy]
    # Same as the CPU path, within the bound.
    cpu_loss, cpu_grad = K.cross_entropy_forward(x, labels, label_smoothing=smoothing)
    np.testing.assert_allclose(float(K.to_host(loss)), float(cpu_loss), rtol=tol)
    np.testing.assert_allclose(K.to_host(grad), cpu_grad, atol=tol / shape[0])
