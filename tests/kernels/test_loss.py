"""Tests for kernels/loss.py: cross-entropy (fused), mean squared error, BCE with logits."""
import math
import warnings

import numba
import numpy as np
import pytest

import kernels as K
from cuda_lowering import array, float64_ops, lower_for_gpu
from kernels import loss
from nn.gradcheck import gradcheck


# ---------------------------------------------------------------- slow, obvious references
def ref_cross_entropy(x, labels, reduction="mean", smoothing=0.0):
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape
    losses = np.empty(N)
    grad = np.empty_like(x)
    for n in range(N):
        log_p = x[n] - x[n].max()
        log_p -= np.log(np.exp(log_p).sum())
        q = np.full(C, smoothing / C)
        q[labels[n]] += 1 - smoothing
        losses[n] = -(q * log_p).sum()
        grad[n] = np.exp(log_p) - q
    if reduction == "mean":
        return losses.mean(), grad / N
    return losses.sum(), grad


def ref_mse(p, t, reduction="mean"):
    d = np.asarray(p, np.float64) - t
    scale = 1 / d.size if reduction == "mean" else 1.0
    return (d * d).sum() * scale, 2 * d * scale


def ref_bce(x, t, reduction="mean"):
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    losses = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    scale = 1 / x.size if reduction == "mean" else 1.0
    return losses.sum() * scale, (1 / (1 + np.exp(-x)) - t) * scale


RTOL = {np.float32: 2e-6, np.float64: 1e-13}
ATOL = {np.float32: 1e-6, np.float64: 1e-14}  # float32 sums of exponentials: see test_softmax


def assert_loss(loss, expected, device, dtype, rtol=None):
    assert K.device_of(loss) == device and loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(float(K.to_host(loss)), expected,
                               rtol=RTOL[dtype] if rtol is None else rtol, atol=ATOL[dtype])


# ---------------------------------------------------------------- cross-entropy
CE_SHAPES = [(1, 1), (4, 3), (5, 10)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy_matches_reference(shape, reduction, smoothing, device, dtype, rng):
    check_cross_entropy(shape, reduction, smoothing, device, dtype, rng, np.int64)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("shape", [(64, 10), (256, 1000), (3, 1031)], ids=str)
def test_cross_entropy_large_shapes_on_cpu(shape, smoothing, dtype, rng):
    check_cross_entropy(shape, "mean", smoothing, "cpu", dtype, rng, np.int32)


def check_cross_entropy(shape, reduction, smoothing, device, dtype, rng, label_dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0]).astype(label_dtype)
    loss, grad = K.cross_entropy_forward(K.to_device(x, device), K.to_device(labels, device),
                                         reduction=reduction, label_smoothing=smoothing)
    expected, expected_grad = ref_cross_entropy(x, labels, reduction, smoothing)
    assert_loss(loss, expected, device, dtype)
    assert K.device_of(grad) == device and grad.shape == shape and grad.dtype == dtype
    np.testing.assert_allclose(K.to_host(grad), expected_grad, rtol=RTOL[dtype] * 10,
                               atol=ATOL[dtype])


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_cross_entropy_required_values(device, dtype, label_dtype):
    logits = K.to_device(np.array([[-1000, 0, 1000]], dtype), device)
    labels = K.to_device(np.array([0], label_dtype), device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = K.cross_entropy_forward(logits, labels)
    assert float(K.to_host(loss)) == 2000
    np.testing.assert_array_equal(K.to_host(grad), [[-1, 0, 1]])


def test_cross_entropy_large_logits_keep_precision():
    # Shifting by the maximum before anything else: the loss is 0.974, not a difference of
    # two numbers near 1000 rounded to float32 (whose ulp there is 6e-5).
    x = np.array([[1000.0, 1000.5]], np.float32)
    loss, _ = K.cross_entropy_forward(x, np.array([0]))
    np.testing.assert_allclose(float(loss), math.log1p(math.exp(0.5)) + 0.0, rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradcheck(reduction, smoothing, rng):
    labels = np.array([2, 0, 1, 2])

    def forward(x):
        return K.cross_entropy_forward(x, labels, reduction, smoothing)[0]

    def backward(g, x):
        return K.cross_entropy_forward(x, labels, reduction, smoothing)[1] * g

    assert gradcheck(forward, backward, {"logits": rng.standard_normal((4, 3)) * 2}).ok


def test_cross_entropy_empty_batch():
    x = np.ones((0, 3), np.float32)
    labels = np.ones(0, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, grad = K.cross_entropy_forward(x, labels)
        total, _ = K.cross_entropy_forward(x, labels, reduction="sum")
    assert np.isnan(mean) and total == 0 and grad.shape == (0, 3)


@pytest.mark.parametrize("bad, error, message", [
    (np.array([0, 3]), ValueError, r"labels: expected class indices in \[0, 3\), got values in "
                                   r"\[0, 3\]"),
    (np.array([-1, 0]), ValueError, r"labels: expected class indices in \[0, 3\), got values in "
                                    r"\[-1, 0\]"),
    (np.array([0.0, 1.0]), TypeError, r"labels: expected an int32 or int64 array, got float64"),
    (np.array([0, 1], np.uint8), TypeError, r"labels: expected an int32 or int64 array, got uint8"),
    ([0, 1], TypeError, r"labels: expected an int32 or int64 array, got list"),
    (np.array([0, 1, 2]), ValueError,
     r"labels: expected shape \(2,\) to match logits \(2, 3\), got \(3,\)"),
    (np.array([[0, 1]]), ValueError, r"labels: expected shape \(2,\)"),
])
def test_cross_entropy_bad_labels(bad, error, message):
    with pytest.raises(error, match=message):
        K.cross_entropy_forward(np.zeros((2, 3)), bad)


def test_cross_entropy_bad_arguments():
    labels = np.array([0, 1])
    with pytest.raises(ValueError, match=r"logits: expected a 2-D array, got shape \(2,\)"):
        K.cross_entropy_forward(np.zeros(2), labels)
    with pytest.raises(TypeError, match=r"logits: expected dtype float32 or float64, got int64"):
        K.cross_entropy_forward(np.zeros((2, 3), np.int64), labels)
    with pytest.raises(TypeError, match=r"logits: expected dtype float32 or float64, got float16"):
        K.cross_entropy_forward(np.zeros((2, 3), np.float16), labels)
    with pytest.raises(ValueError, match=r"reduction: expected 'mean' or 'sum', got 'none'"):
        K.cross_entropy_forward(np.zeros((2, 3)), labels, reduction="none")
    with pytest.raises(ValueError, match=r"label_smoothing: expected a number in \[0, 1\]"):
        K.cross_entropy_forward(np.zeros((2, 3)), labels, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"logits: need at least one class"):
        K.cross_entropy_forward(np.zeros((2, 0)), labels)


# ---------------------------------------------------------------- mse and bce with logits
PAIR_SHAPES = [(), (1,), (7,), (3, 2, 5), (2, 1, 3, 5)]
PAIR_OPS = {
    "mse": (K.mse_forward, K.mse_backward, ref_mse, lambda rng, s: rng.standard_normal(s) * 2),
    "bce": (K.bce_with_logits_forward, K.bce_with_logits_backward, ref_bce,
            lambda rng, s: rng.uniform(0, 1, s)),   # soft targets are allowed, as in torch
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=str)
@pytest.mark.parametrize("op", list(PAIR_OPS))
def test_pair_losses_match_reference(op, shape, reduction, device, dtype, rng):
    check_pair(op, shape, reduction, device, dtype, rng)


@pytest.mark.parametrize("shape", [(64, 6, 24, 24), (1031,)], ids=str)
@pytest.mark.parametrize("op", list(PAIR_OPS))
def test_pair_losses_large_shapes_on_cpu(op, shape, dtype, rng):
    check_pair(op, shape, "mean", "cpu", dtype, rng)


def check_pair(op, shape, reduction, device, dtype, rng):
    forward, backward, ref, make_target = PAIR_OPS[op]
    a = (rng.standard_normal(shape) * 3).astype(dtype)
    t = make_target(rng, shape).astype(dtype)
    a_dev, t_dev = K.to_device(a, device), K.to_device(t, device)
    loss = forward(a_dev, t_dev, reduction=reduction)
    grad = backward(a_dev, t_dev, reduction=reduction)
    expected, expected_grad = ref(a, t, reduction)
    # a float32 sum of many terms: relative error grows like log2(n) ulps (pairwise sum)
    assert_loss(loss, expected, device, dtype, rtol=RTOL[dtype] * 5)
    assert K.device_of(grad) == device and grad.shape == shape and grad.dtype == dtype
    np.testing.assert_allclose(K.to_host(grad), expected_grad, rtol=RTOL[dtype],
                               atol=ATOL[dtype] / max(a.size, 1))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("op", list(PAIR_OPS))
def test_pair_losses_gradcheck(op, reduction, rng):
    forward, backward, _, make_target = PAIR_OPS[op]
    t = make_target(rng, (3, 4))
    report = gradcheck(lambda a: forward(a, t, reduction),
                       lambda g, a: backward(a, t, reduction) * g,
                       {"pred": rng.standard_normal((3, 4)) * 2})
    assert report.ok


def test_bce_required_values(device, dtype):
    x = K.to_device(np.array([100, -100, 100, -100], dtype), device)
    t = K.to_device(np.array([1, 0, 0, 1], dtype), device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = K.to_host(K.bce_with_logits_forward(x, t, reduction="sum"))
        pairs = [float(K.to_host(K.bce_with_logits_forward(x[i:i + 1], t[i:i + 1])))
                 for i in range(4)]
        grad = K.to_host(K.bce_with_logits_backward(x, t, reduction="sum"))
    # log(1 + e**-100) = 3.72e-44: a subnormal in float32 (spacing 1.4e-45), kept within a
    # few spacings rather than rounded to 0
    np.testing.assert_allclose(pairs, [math.exp(-100), math.exp(-100), 100, 100],
                               rtol=1e-12 if dtype == np.float64 else 1e-7,
                               atol=0 if dtype == np.float64 else 3 * 2.0 ** -149)
    assert float(total) == 200
    np.testing.assert_allclose(grad, [0, 0, 1, -1], atol=1e-40)


def test_mse_and_bce_empty():
    e = np.zeros(0, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(K.mse_forward(e, e)) and K.mse_forward(e, e, "sum") == 0
        assert np.isnan(K.bce_with_logits_forward(e, e))
        assert K.mse_backward(e, e).shape == (0,)


@pytest.mark.parametrize("op", list(PAIR_OPS))
def test_pair_losses_bad_inputs(op):
    forward, backward, _, _ = PAIR_OPS[op]
    first = "pred" if op == "mse" else "logits"
    for fn in (forward, backward):
        with pytest.raises(ValueError, match=rf"{first} is \(2, 3\), target is \(3, 2\)"):
            fn(np.ones((2, 3)), np.ones((3, 2)))
        with pytest.raises(TypeError, match=rf"^{first}: expected dtype float32 or float64"):
            fn(np.ones(3, np.int64), np.ones(3))
        with pytest.raises(TypeError, match=r"^target: expected dtype .*, got float16"):
            fn(np.ones(3), np.ones(3, np.float16))
        with pytest.raises(TypeError, match=rf"{first} and target must have the same dtype"):
            fn(np.ones(3, np.float32), np.ones(3))
        with pytest.raises(ValueError, match=r"reduction: expected 'mean' or 'sum', got 'max'"):
            fn(np.ones(3), np.ones(3), reduction="max")


# ---------------------------------------------------------------- determinism, devices, dtypes
def test_losses_do_not_depend_on_thread_count(rng):
    x = rng.standard_normal((300, 17)).astype(np.float32) * 4
    labels = rng.integers(0, 17, 300)
    t = rng.uniform(0, 1, x.shape).astype(np.float32)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, before):
            numba.set_num_threads(threads)
            runs.append([*K.cross_entropy_forward(x, labels, label_smoothing=0.1),
                         K.mse_forward(x, t), K.mse_backward(x, t),
                         K.bce_with_logits_forward(x, t), K.bce_with_logits_backward(x, t)])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_float32_matches_float64(rng):
    x = rng.standard_normal((20, 7)) * 3
    labels = rng.integers(0, 7, 20)
    t = rng.uniform(0, 1, x.shape)
    x32, t32 = x.astype(np.float32), t.astype(np.float32)
    for f32, f64 in [
        (K.cross_entropy_forward(x32, labels, label_smoothing=0.1),
         K.cross_entropy_forward(x, labels, label_smoothing=0.1)),
        ((K.mse_forward(x32, t32), K.mse_backward(x32, t32)),
         (K.mse_forward(x, t), K.mse_backward(x, t))),
        ((K.bce_with_logits_forward(x32, t32), K.bce_with_logits_backward(x32, t32)),
         (K.bce_with_logits_forward(x, t), K.bce_with_logits_backward(x, t))),
    ]:
        for a, b in zip(f32, f64):
            np.testing.assert_allclose(a, b, rtol=5e-6, atol=1e-7)


@pytest.mark.cuda
def test_cpu_matches_cuda(cuda_device, dtype, rng):
    x = (rng.standard_normal((4, 9)) * 3).astype(dtype)
    labels = rng.integers(0, 9, 4)
    t = rng.uniform(0, 1, x.shape).astype(dtype)
    xg, tg, lg = (K.to_device(a, cuda_device) for a in (x, t, labels))
    pairs = [
        (K.cross_entropy_forward(x, labels, label_smoothing=0.1),
         K.cross_entropy_forward(xg, lg, label_smoothing=0.1)),
        ((K.mse_forward(x, t), K.mse_backward(x, t)),
         (K.mse_forward(xg, tg), K.mse_backward(xg, tg))),
        ((K.bce_with_logits_forward(x, t), K.bce_with_logits_backward(x, t)),
         (K.bce_with_logits_forward(xg, tg), K.bce_with_logits_backward(xg, tg))),
    ]
    for cpu, gpu in pairs:
        for a, b in zip(cpu, gpu):
            assert K.device_of(b) == cuda_device
            np.testing.assert_allclose(K.to_host(b), a, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("kernel, args", [
    # "f1"/"f2": float arrays of 1 or 2 dimensions, "i": labels, "s": a float scalar
    ("_cross_entropy_rows_cuda", "f1 f1 f1 f2 i s"),
    ("_cross_entropy_grad_cuda", "f2 f2 i f1 f1 s s"),
    ("_mse_forward_cuda", "f1 f1 f1"), ("_mse_backward_cuda", "f1 f1 f1 s"),
    ("_bce_forward_cuda", "f1 f1 f1"), ("_bce_backward_cuda", "f1 f1 f1 s"),
])
def test_cuda_kernels_lower_for_a_real_gpu(kernel, args, dtype, label_dtype):
    nb_dtype, nb_label = numba.from_dtype(dtype), numba.from_dtype(label_dtype)
    types = {"f1": array(nb_dtype), "f2": array(nb_dtype, 2), "i": array(nb_label), "s": nb_dtype}
    ir = lower_for_gpu(getattr(loss, kernel), [types[a] for a in args.split()])
    if dtype == np.float32:
        assert float64_ops(ir) == 0


@pytest.mark.cuda
def test_arrays_on_two_devices_are_rejected(cuda_device):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="different devices.*logits.*'cpu'.*labels.*'cuda'"):
        K.cross_entropy_forward(x, K.to_device(np.array([0, 1]), cuda_device))
    with pytest.raises(ValueError, match="different devices.*pred.*'cuda'.*target.*'cpu'"):
        K.mse_forward(K.to_device(x, cuda_device), x)
