import subprocess
import sys

import numpy as np
import pytest

import kernels
from kernels.device import SimCudaArray


def test_cpu_always_available():
    assert kernels.devices()[0] == "cpu"
    assert kernels.array_module("cpu") is np


def test_numpy_arrays_are_cpu():
    assert kernels.device_of(np.zeros(3), None, np.ones((2, 2))) == "cpu"


def test_device_of_rejects_non_arrays():
    with pytest.raises(TypeError, match="argument 1"):
        kernels.device_of(np.zeros(3), [1, 2, 3])
    with pytest.raises(TypeError):
        kernels.device_of()


def test_unknown_device_name():
    with pytest.raises(ValueError, match="device"):
        kernels.array_module("tpu")
    with pytest.raises(ValueError, match="device"):
        kernels.to_device(np.zeros(2), "gpu")


def test_to_host_is_identity_on_cpu():
    a = np.arange(4.0)
    assert kernels.to_host(a) is a
    assert kernels.to_device(a, "cpu") is a


@pytest.mark.cuda
def test_round_trip_and_mixed_devices(cuda_device):
    a = np.arange(6.0).reshape(2, 3)
    d = kernels.to_device(a, cuda_device)
    assert kernels.device_of(d) == "cuda"
    assert not isinstance(kernels.to_host(d), SimCudaArray)
    np.testing.assert_array_equal(kernels.to_host(d), a)
    with pytest.raises(ValueError, match="different devices.*'cpu'.*'cuda'"):
        kernels.device_of(a, d, names=["x", "w"])


@pytest.mark.cuda
def test_array_module_keeps_arrays_on_device(cuda_device):
    xp = kernels.array_module(cuda_device)
    z = xp.zeros((3, 4), dtype=np.float32)
    assert kernels.device_of(z) == "cuda"
    assert kernels.device_of(z + 1, z.reshape(-1), xp.matmul(z, z.T), z.sum(axis=0)) == "cuda"
    assert float(z.sum()) == 0.0


def test_report_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "kernels"], capture_output=True, text=True,
                         check=True).stdout
    for key in ("numba", "numba-cuda", "threading layer", "numba threads", "blas", "gpu", "cupy"):
        assert key in out
