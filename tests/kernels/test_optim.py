"""Fused optimizer kernels against a NumPy reference of torch's update rules, CPU against CUDA."""
import numpy as np
import pytest

import kernels as K

# A few ulps of the dtype: the kernels and the reference round the same operations, but a
# compiler may contract a multiply-add into an FMA (a real GPU does by default).
RTOL = {np.float32: 4e-6, np.float64: 1e-13}


def sgd_reference(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step,
                  maximize=False):
    """torch.optim.SGD's single-tensor rule in NumPy, scalars cast to the parameter's dtype."""
    dt = p.dtype.type
    g = -g if maximize else g
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
                   amsgrad, maximize=False):
    """torch.optim.Adam / AdamW's single-tensor rule in NumPy."""
    dt = p.dtype.type
    g = -g if maximize else g
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


def rmsprop_reference(p, g, s, a, b, lr, alpha, eps, weight_decay, momentum, centered,
                      maximize):
    """torch.optim.RMSprop's single-tensor rule in NumPy, in torch's order of roundings."""
    dt = p.dtype.type
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + dt(weight_decay) * p
    s[...] = s * dt(alpha) + dt(1 - alpha) * g * g
    if centered:
        w = dt(1 - alpha)
        a[...] = a + w * (g - a) if abs(w) < 0.5 else g - (g - a) * (dt(1) - w)
        d = np.sqrt(s + (-a) * a) + dt(eps)
    else:
        d = np.sqrt(s) + dt(eps)
    if momentum > 0:
        b[...] = b * dt(momentum) + g / d
        p[...] = p + dt(-lr) * b
    else:
        p[...] = p + dt(-lr) * g / d


def adagrad_reference(p, g, s, step, lr, lr_decay, weight_decay, eps, maximize):
    """torch.optim.Adagrad's single-tensor rule in NumPy."""
    dt = p.dtype.type
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + dt(weight_decay) * p
    s[...] = s + g * g
    clr = lr / (1 + (step - 1) * lr_decay)
    p[...] = p + dt(-clr) * g / (np.sqrt(s) + dt(eps))


SGD_CONFIGS = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True),
    dict(lr=0.2, momentum=0.5, dampening=0.3, weight_decay=0.1, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=True, maximize=True),
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.1, nesterov=False, maximize=True),
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
    dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, decoupled=False,
         amsgrad=True, maximize=True),
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True,
         amsgrad=False, maximize=True),
]

RMSPROP_CONFIGS = [
    dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
         maximize=False),
    dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.0, centered=True,
         maximize=False),
    dict(lr=3e-3, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.9, centered=False,
         maximize=True),
    dict(lr=1e-2, alpha=0.8, eps=1e-8, weight_decay=0.05, momentum=0.5, centered=True,
         maximize=True),
    # 1 - alpha >= 0.5 takes lerp's other branch
    dict(lr=1e-2, alpha=0.3, eps=1e-8, weight_decay=0.0, momentum=0.1, centered=True,
         maximize=False),
]

ADAGRAD_CONFIGS = [
    dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False, init=0.0),
    dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, eps=1e-10, maximize=False, init=0.0),
    dict(lr=0.1, lr_decay=0.0, weight_decay=0.1, eps=1e-6, maximize=True, init=0.1),
    dict(lr=0.05, lr_decay=0.2, weight_decay=0.0, eps=1e-10, maximize=True, init=0.5),
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


@pytest.mark.parametrize("config", RMSPROP_CONFIGS)
def test_rmsprop_step_matches_reference(device, dtype, rng, config):
    shape = _shape(device)
    p_ref = rng.standard_normal(shape).astype(dtype)
    s_ref, a_ref, b_ref = (np.zeros(shape, dtype) for _ in range(3))
    p, s, a, b = (K.to_device(x.copy(), device) for x in (p_ref, s_ref, a_ref, b_ref))
    for _ in range(4):
        g = rng.standard_normal(shape).astype(dtype)
        K.rmsprop_step(p, K.to_device(g, device), s, a if config["centered"] else None,
                       b if config["momentum"] else None, **config)
        rmsprop_reference(p_ref, g, s_ref, a_ref, b_ref, **config)
    assert np.all(np.isfinite(p_ref))
    for got, want in ((p, p_ref), (s, s_ref), (a, a_ref), (b, b_ref)):
        assert K.device_of(got) == device and got.dtype == dtype
        np.testing.assert_allclose(K.to_host(got), want, rtol=RTOL[dtype], atol=0)
    if not config["centered"]:
        assert not np.any(K.to_host(a))  # an unused buffer is never written
    if not config["momentum"]:
        assert not np.any(K.to_host(b))


@pytest.mark.parametrize("config", ADAGRAD_CONFIGS)
def test_adagrad_step_matches_reference(device, dtype, rng, config):
    config = dict(config)
    init = config.pop("init")
    shape = _shape(device)
    p_ref = rng.standard_normal(shape).astype(dtype)
    s_ref = np.full(shape, init, dtype)
    p, s = K.to_device(p_ref.copy(), device), K.to_device(s_ref.copy(), device)
    for step in range(1, 5):
        g = rng.standard_normal(shape).astype(dtype)
        K.adagrad_step(p, K.to_device(g, device), s, step, **config)
        adagrad_reference(p_ref, g, s_ref, step, **config)
    for got, want in ((p, p_ref), (s, s_ref)):
        assert K.device_of(got) == device and got.dtype == dtype
        np.testing.assert_allclose(K.to_host(got), want, rtol=RTOL[dtype], atol=0)


def test_maximize_is_descent_on_the_negated_gradient(rng):
    """maximize=True with g gives exactly the update of maximize=False with -g."""
    p = rng.standard_normal(40)
    g = rng.standard_normal(40)
    cases = [
        lambda p, g, m, bufs: K.sgd_step(p, g, bufs[0], 0.1, 0.9, 0.0, 0.1, True, True, m),
        lambda p, g, m, bufs: K.adam_step(p, g, bufs[0], bufs[1], bufs[2], 1, 0.1, 0.9, 0.99,
                                          1e-8, 0.1, False, True, m),
        lambda p, g, m, bufs: K.rmsprop_step(p, g, bufs[0], bufs[1], bufs[2], 0.1, 0.9, 1e-8,
                                             0.1, 0.5, True, m),
        lambda p, g, m, bufs: K.adagrad_step(p, g, bufs[0], 1, 0.1, 0.0, 0.1, 1e-10, m),
    ]
    for run in cases:
        pa, pb = p.copy(), p.copy()
        bufs_a = [np.zeros(40) for _ in range(3)]
        bufs_b = [np.zeros(40) for _ in range(3)]
        run(pa, g, True, bufs_a)
        run(pb, -g, False, bufs_b)
        np.testing.assert_array_equal(pa, pb)
        assert not np.array_equal(pa, p)
        for x, y in zip(bufs_a, bufs_b):
            np.testing.assert_array_equal(x, y)


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
    K.rmsprop_step(p, p.copy(), p.copy(), p.copy(), p.copy(), 0.1, momentum=0.9, centered=True)
    K.adagrad_step(p, p.copy(), p.copy(), 1, 0.1)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop", "adagrad"])
def test_cpu_and_cuda_agree(cuda_device, dtype, rng, kind):
    shape = (6, 9)
    state = [rng.standard_normal(shape).astype(dtype)]
    state += [np.full(shape, 0.1, dtype)
              for _ in range({"sgd": 1, "adam": 3, "rmsprop": 3, "adagrad": 1}[kind])]
    cpu = [a.copy() for a in state]
    gpu = [K.to_device(a.copy(), cuda_device) for a in state]
    for step in range(1, 4):
        g = rng.standard_normal(shape).astype(dtype)
        for arrays, grad in ((cpu, g), (gpu, K.to_device(g, cuda_device))):
            if kind == "sgd":
                K.sgd_step(arrays[0], grad, arrays[1], 0.1, 0.9, 0.1, 0.01, False, step == 1,
                           step == 2)
            elif kind == "adam":
                K.adam_step(arrays[0], grad, arrays[1], arrays[2], arrays[3], step, 0.01,
                            0.9, 0.999, 1e-8, 0.01, True, True, step == 2)
            elif kind == "rmsprop":
                K.rmsprop_step(arrays[0], grad, arrays[1], arrays[2], arrays[3], 0.01, 0.9,
                               1e-8, 0.01, 0.5, True, step == 2)
            else:
                K.adagrad_step(arrays[0], grad, arrays[1], step, 0.1, 0.1, 0.01, 1e-10,
                               step == 2)
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


def test_rmsprop_and_adagrad_reject_bad_arguments(rng):
    p = rng.standard_normal(5)
    z = np.zeros_like
    with pytest.raises(ValueError, match="grad_avg: required when centered=True"):
        K.rmsprop_step(p, z(p), z(p), None, None, 0.1, centered=True)
    with pytest.raises(ValueError, match=r"momentum_buf: required when momentum > 0"):
        K.rmsprop_step(p, z(p), z(p), None, None, 0.1, momentum=0.5)
    with pytest.raises(ValueError, match=r"param and square_avg.*\(5,\).*\(4,\)"):
        K.rmsprop_step(p, z(p), np.zeros(4), None, None, 0.1)
    with pytest.raises(TypeError, match="grad_avg.*float32"):
        K.rmsprop_step(p, z(p), z(p), z(p, dtype=np.float32), None, 0.1, centered=True)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0.0, inf\), got -0.5"):
        K.rmsprop_step(p, z(p), z(p), None, None, 0.1, alpha=-0.5)
    with pytest.raises(ValueError, match=r"eps: expected a value in \[0.0, inf\)"):
        K.rmsprop_step(p, z(p), z(p), None, None, 0.1, eps=-1.0)
    with pytest.raises(ValueError, match="step: expected a positive integer"):
        K.adagrad_step(p, z(p), z(p), 0, 0.1)
    with pytest.raises(ValueError, match=r"lr_decay: expected a value in \[0.0, inf\)"):
        K.adagrad_step(p, z(p), z(p), 1, 0.1, lr_decay=-0.5)
    with pytest.raises(ValueError, match=r"param and state_sum.*\(5,\).*\(6,\)"):
        K.adagrad_step(p, z(p), np.zeros(6), 1, 0.1)
    with pytest.raises(ValueError, match="state_sum: must be C-contiguous"):
        K.adagrad_step(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2)).T, 1, 0.1)
    before = p.copy()
    with pytest.raises(TypeError, match="lr: expected a number"):
        K.adagrad_step(p, z(p), z(p), 1, None)
    np.testing.assert_array_equal(p, before)  # refused before any kernel ran
    K.adagrad_step(p, z(p), z(p), 3.0, 0.1)  # torch keeps the count as a float


@pytest.mark.cuda
def test_mixed_devices_are_rejected(cuda_device):
    p = np.zeros(4)
    with pytest.raises(ValueError, match="param is on 'cpu' but grad is on 'cuda'"):
        K.sgd_step(p, K.to_device(np.zeros(4), cuda_device), None, 0.1)
