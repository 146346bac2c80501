"""Fused optimizer kernels against a NumPy reference of torch's update rules, CPU against CUDA."""
import numpy as np
import pytest

import kernels as K

# A few ulps of the dtype: the kernels and the reference round the same operations, but a
# compiler may contract a multiply-add into an FMA (a real GPU does by default).
RTOL = {np.float32: 4e-6, np.float64: 1e-13}


def sgd_reference(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step):
    """torch.optim.SGD's single-tensor rule in NumPy, scalars cast to the parameter's dtype."""
    dt = p.dtype.type
    if weight_decay != 0:
        g = g + dt(weight_decay) * p
    if momentum != 0:
        if first_step:
            buf[...] = g
        else:
            buf[...] = buf * dt(momentum) + dt(1 - dampening) * g
        g = g + dt(momentum) * buf if nesterov else buf.copy()
    p[...] = p + dt(-lr) * g


def adam_reference(p, g, m, v, vmax, step, lr, beta1, beta2, eps, weight_decay, decoupled,
                   amsgrad):
    """torch.optim.Adam / AdamW's single-tensor rule in NumPy."""
    dt = p.dtype.type
    if weight_decay != 0:
        if decoupled:
            p[...] = p * dt(1 - lr * weight_decay)
        else:
            g = g + dt(weight_decay) * p
    w = dt(1 - beta1)
    m[...] = m + w * (g - m) if w < 0.5 else g - (g - m) * (dt(1) - w)
    v[...] = v * dt(beta2) + dt(1 - beta2) * g * g
    if amsgrad:
        vmax[...] = np.maximum(vmax, v)
    vhat = vmax if amsgrad else v
    step_size = lr / (1 - beta1 ** step)
    denom = np.sqrt(vhat) / dt((1 - beta2 ** step) ** 0.5) + dt(eps)
    p[...] = p + dt(-step_size) * m / denom


SGD_CONFIGS = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True),
    dict(lr=0.2, momentum=0.5, dampening=0.3, weight_decay=0.1, nesterov=False),
]

ADAM_CONFIGS = [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False,
         amsgrad=False),
    dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-6, weight_decay=0.1, decoupled=False,
         amsgrad=True),
    dict(lr=3e-2, beta1=0.8, beta2=0.999, eps=1e-8, weight_decay=0.05, decoupled=True,
         amsgrad=False),
    # beta1 < 0.5 takes lerp's other branch
    dict(lr=1e-2, beta1=0.3, beta2=0.9, eps=1e-8, weight_decay=1e-2, decoupled=True,
         amsgrad=True),
]


def _shape(device):
    return (7, 13) if device == "cpu" else (5, 7)  # few simulated threads


@pytest.mark.parametrize("config", SGD_CONFIGS)
def test_sgd_step_matches_reference(device, dtype, rng, config):
    shape = _shape(device)
    p = rng.standard_normal(shape).astype(dtype)
    buf = np.zeros(shape, dtype) if config["momentum"] else None
    p_ref, buf_ref = p.copy(), np.zeros(shape, dtype)
    p_dev = K.to_device(p, device)
    buf_dev = None if buf is None else K.to_device(buf, device)
    for step in range(4):
        g = rng.standard_normal(shape).astype(dtype)
        K.sgd_step(p_dev, K.to_device(g, device), buf_dev, **config, first_step=step == 0)
        sgd_reference(p_ref, g, buf_ref, **config, first_step=step == 0)
    assert K.device_of(p_dev) == device and p_dev.dtype == dtype
    np.testing.assert_allclose(K.to_host(p_dev), p_ref, rtol=RTOL[dtype], atol=0)
    if buf is not None:
        np.testing.assert_allclose(K.to_host(buf_dev), buf_ref, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("config", ADAM_CONFIGS)
def test_adam_step_matches_reference(device, dtype, rng, config):
    shape = _shape(device)
    p_ref = rng.standard_normal(shape).astype(dtype)
    m_ref, v_ref, vmax_ref = (np.zeros(shape, dtype) for _ in range(3))
    p, m, v, vmax = (K.to_device(a.copy(), device) for a in (p_ref, m_ref, v_ref, vmax_ref))
    for step in range(1, 5):
        g = rng.standard_normal(shape).astype(dtype)
        K.adam_step(p, K.to_device(g, device), m, v, vmax if config["amsgrad"] else None, step,
                    **config)
        adam_reference(p_ref, g, m_ref, v_ref, vmax_ref, step, **config)
    for got, want in ((p, p_ref), (m, m_ref), (v, v_ref), (vmax, vmax_ref)):
        assert got.dtype == dtype
        np.testing.assert_allclose(K.to_host(got), want, rtol=RTOL[dtype], atol=0)


def test_float32_follows_float64(rng):
    """The float32 update is the float64 one to float32 precision (no silent upcast)."""
    p64 = rng.standard_normal(1000)
    p32 = p64.astype(np.float32)
    bufs = [np.zeros_like(p64), np.zeros_like(p32)]
    for step in range(5):
        g = rng.standard_normal(1000)
        for p, b in zip((p64, p32), bufs):
            K.sgd_step(p, g.astype(p.dtype), b, 0.1, 0.9, 0.0, 0.01, True, step == 0)
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)


def test_update_is_in_place_and_keeps_shape(rng):
    p = rng.standard_normal((3, 4, 5))
    data = p.ctypes.data
    K.adam_step(p, np.ones_like(p), np.zeros_like(p), np.zeros_like(p), None, 1, 0.1)
    assert p.ctypes.data == data and p.shape == (3, 4, 5)


def test_non_contiguous_grad_is_accepted(rng):
    p = rng.standard_normal((4, 6))
    g = rng.standard_normal((6, 4)).T  # a transposed view
    want = p - 0.5 * g
    K.sgd_step(p, g, None, 0.5)
    np.testing.assert_allclose(p, want, rtol=1e-15)


def test_empty_parameter():
    p = np.zeros((0, 3))
    K.sgd_step(p, p.copy(), p.copy(), 0.1, momentum=0.9, first_step=True)
    K.adam_step(p, p.copy(), p.copy(), p.copy(), p.copy(), 1, 0.1, amsgrad=True)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_cpu_and_cuda_agree(cuda_device, dtype, rng, kind):
    shape = (6, 9)
    state = [rng.standard_normal(shape).astype(dtype)]
    state += [np.zeros(shape, dtype)] * (1 if kind == "sgd" else 3)
    cpu = [a.copy() for a in state]
    gpu = [K.to_device(a.copy(), cuda_device) for a in state]
    for step in range(1, 4):
        g = rng.standard_normal(shape).astype(dtype)
        for arrays, grad in ((cpu, g), (gpu, K.to_device(g, cuda_device))):
            if kind == "sgd":
                K.sgd_step(arrays[0], grad, arrays[1], 0.1, 0.9, 0.1, 0.01, False, step == 1)
            else:
                K.adam_step(arrays[0], grad, arrays[1], arrays[2], arrays[3], step, 0.01,
                            0.9, 0.999, 1e-8, 0.01, True, True)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(K.to_host(b), a, rtol=RTOL[dtype], atol=0)


# ---------------------------------------------------------------- validation
def test_sgd_rejects_bad_arguments(rng):
    p = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"param and grad.*\(3, 4\).*\(4, 3\)"):
        K.sgd_step(p, np.zeros((4, 3)), None, 0.1)
    with pytest.raises(TypeError, match="param.*float64.*grad.*float32"):
        K.sgd_step(p, np.zeros((3, 4), np.float32), None, 0.1)
    with pytest.raises(TypeError, match="grad: expected dtype float32 or float64, got int64"):
        K.sgd_step(p, np.zeros((3, 4), np.int64), None, 0.1)
    with pytest.raises(ValueError, match="param: must be C-contiguous"):
        K.sgd_step(np.zeros((4, 3)).T, np.zeros((3, 4)), None, 0.1)
    with pytest.raises(ValueError, match="momentum_buf: required"):
        K.sgd_step(p, np.zeros_like(p), None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"param and momentum_buf.*\(3, 4\).*\(12,\)"):
        K.sgd_step(p, np.zeros_like(p), np.zeros(12), 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov"):
        K.sgd_step(p, np.zeros_like(p), np.zeros_like(p), 0.1, momentum=0.9, dampening=0.1,
                   nesterov=True)
    with pytest.raises(ValueError, match=r"lr: expected a value in \[0.0, inf\), got -0.1"):
        K.sgd_step(p, np.zeros_like(p), None, -0.1)
    with pytest.raises(TypeError, match="lr: expected a number"):
        K.sgd_step(p, np.zeros_like(p), None, "fast")


def test_adam_rejects_bad_arguments(rng):
    p = rng.standard_normal(5)
    z = np.zeros_like
    with pytest.raises(ValueError, match="max_exp_avg_sq: required"):
        K.adam_step(p, z(p), z(p), z(p), None, 1, 0.1, amsgrad=True)
    with pytest.raises(ValueError, match="step: expected a positive integer"):
        K.adam_step(p, z(p), z(p), z(p), None, 0, 0.1)
    with pytest.raises(ValueError, match=r"beta2: expected a value in \[0.0, 1.0\)"):
        K.adam_step(p, z(p), z(p), z(p), None, 1, 0.1, beta2=1.0)
    with pytest.raises(ValueError, match=r"param and exp_avg_sq.*\(5,\).*\(4,\)"):
        K.adam_step(p, z(p), z(p), np.zeros(4), None, 1, 0.1)
    with pytest.raises(TypeError, match="exp_avg.*float32"):
        K.adam_step(p, z(p), z(p, dtype=np.float32), z(p), None, 1, 0.1)


@pytest.mark.cuda
def test_mixed_devices_are_rejected(cuda_device):
    p = np.zeros(4)
    with pytest.raises(ValueError, match="param is on 'cpu' but grad is on 'cuda'"):
        K.sgd_step(p, K.to_device(np.zeros(4), cuda_device), None, 0.1)
