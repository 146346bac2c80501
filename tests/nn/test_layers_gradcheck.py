"""Every layer: backward against central differences (input and every parameter), in float64,
on the CPU and the CUDA path; the same results on both devices; float32 follows float64;
the saved context is used once (BackwardError otherwise)."""
import numpy as np
import pytest

import kernels as K
import nn
from nn_layer_cases import CASES, build

CASE_IDS = [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case, device):
    layer, x = build(case, device)
    report = nn.gradcheck_module(layer, x, tol=1e-6)
    checked = {t.name for t in report.tensors}
    assert checked == {"input"} | {n for n, _ in layer.named_parameters()}
    assert report.worst_error <= 1e-6


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward_needs_a_fresh_forward(case):
    layer, x = build(case)
    with pytest.raises(nn.BackwardError):
        layer.backward(np.ones_like(x))
    y = layer(x)
    layer.backward(np.ones_like(y))
    with pytest.raises(nn.BackwardError):
        layer.backward(np.ones_like(y))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_follows_float64(case):
    layer64, x64 = build(case, dtype=np.float64)
    layer32, x32 = build(case, dtype=np.float32)
    y64, y32 = layer64(x64), layer32(x32)
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    g = np.random.default_rng(1).standard_normal(y64.shape)
    gx64 = layer64.backward(g)
    gx32 = layer32.backward(g.astype(np.float32))
    assert gx32.dtype == np.float32
    np.testing.assert_allclose(gx32, gx64, rtol=1e-4, atol=1e-5)
    for (name, p32), (_, p64) in zip(layer32.named_parameters(), layer64.named_parameters()):
        assert p32.grad.dtype == np.float32, name
        np.testing.assert_allclose(p32.grad, p64.grad, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_matches_cpu(case, cuda_device):
    layer_gpu, x_gpu = build(case, cuda_device)
    layer_cpu, x_cpu = build(case, "cpu", sized_for=cuda_device)
    y_cpu, y_gpu = layer_cpu(x_cpu), layer_gpu(x_gpu)
    assert K.device_of(y_gpu) == "cuda"
    np.testing.assert_allclose(K.to_host(y_gpu), y_cpu, rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(2).standard_normal(y_cpu.shape)
    gx_gpu = layer_gpu.backward(K.to_device(g, cuda_device))
    assert K.device_of(gx_gpu) == "cuda"
    np.testing.assert_allclose(K.to_host(gx_gpu), layer_cpu.backward(g), rtol=1e-12,
                               atol=1e-12)
    for (name, pc), (_, pg) in zip(layer_cpu.named_parameters(), layer_gpu.named_parameters()):
        assert K.device_of(pg.grad) == "cuda"
        np.testing.assert_allclose(K.to_host(pg.grad), pc.grad, rtol=1e-12, atol=1e-12,
                                   err_msg=name)
