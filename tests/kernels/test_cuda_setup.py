"""The CUDA setup without a GPU: the probe names the first missing piece, synchronize() and
device selection behave when CuPy has no GPU, and the simulator says what it is."""
import ctypes
import importlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import kernels
from kernels import device as D
R = importlib.import_module("kernels.report")


def _driver_present():
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def test_gpu_check_names_the_first_missing_piece(monkeypatch):
    calls = []

    def ok(name):
        return lambda: calls.append(name)

    def missing(name):
        return lambda: calls.append(name) or f"{name} is not here"

    monkeypatch.setattr(D, "SIMULATOR", False)
    monkeypatch.setattr(R, "GPU_PROBES", [("driver", ok("driver")), ("cublas", missing("cublas")),
                                          ("nvvm", missing("nvvm"))])
    assert R.gpu_check() == "missing cublas: cublas is not here"
    assert calls == ["driver", "cublas"]          # stops at the first missing piece
    monkeypatch.setattr(R, "GPU_PROBES", [("driver", ok("driver")), ("launch", ok("launch"))])
    assert R.gpu_check() == "ok (driver, launch)"


def test_probe_order_follows_the_setup():
    assert [name for name, _ in R.GPU_PROBES] == ["driver", "cupy", "cublas", "nvrtc", "nvvm",
                                                  "launch"]


def test_library_probe_says_what_failed_and_how_to_install():
    problem = R._probe_library("no_such_nvidia_library")()
    assert problem.startswith("libno_such_nvidia_library cannot be loaded")
    assert "numba-dl[cuda]" in problem


def test_cupy_probe_without_cupy(monkeypatch):
    monkeypatch.setattr(D, "_cupy", None)
    monkeypatch.setattr(D, "_cupy_error", "ModuleNotFoundError: No module named 'cupy'")
    assert "No module named 'cupy'" in R._probe_cupy()


@pytest.mark.skipif(kernels.SIMULATOR or _driver_present(),
                    reason="needs a machine without an NVIDIA driver, outside the simulator")
def test_report_names_the_missing_driver_in_one_line():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-m", "kernels"], capture_output=True, text=True,
                         check=True, env=env).stdout
    lines = [line for line in out.splitlines() if line.startswith("gpu check")]
    assert len(lines) == 1
    assert "missing driver: libcuda.so.1 not found" in lines[0]


class _NoGpuCupy(types.SimpleNamespace):
    """CuPy installed on a machine without a GPU: every runtime call raises."""

    class CUDARuntimeError(RuntimeError):
        pass

    def __init__(self):
        def fail(*_):
            raise self.CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        stream = types.SimpleNamespace(synchronize=fail, ptr=0)
        runtime = types.SimpleNamespace(getDeviceCount=fail)
        super().__init__(cuda=types.SimpleNamespace(runtime=runtime, Device=fail,
                                                    get_current_stream=lambda: stream),
                         __version__="14.0-fake")


def test_synchronize_is_a_no_op_when_cupy_has_no_gpu(monkeypatch):
    monkeypatch.setattr(D, "SIMULATOR", False)
    monkeypatch.setattr(D, "_cupy", _NoGpuCupy())
    assert D.cuda_available() is False
    D.synchronize()               # raised CUDARuntimeError before
    kernels.synchronize("cuda")
    assert D.gpu_count() == 0
    with pytest.raises(ValueError, match=r"index: expected a GPU index in \[0, 0\), got 0"):
        D.select_gpu(0)


def test_select_gpu_selects_cupy_and_numba(monkeypatch):
    chosen = []

    class Device:
        def __init__(self, i):
            self.i = i

        def use(self):
            chosen.append(("cupy", self.i))

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Device=Device, runtime=types.SimpleNamespace(getDeviceCount=lambda: 2)))
    monkeypatch.setattr(D, "SIMULATOR", False)
    monkeypatch.setattr(D, "_cupy", fake)
    monkeypatch.setattr(D, "cuda_available", lambda: True)
    monkeypatch.setattr(D.cuda, "select_device", lambda i: chosen.append(("numba", i)))
    D.select_gpu(1)
    assert chosen == [("cupy", 1), ("numba", 1)]
    with pytest.raises(ValueError, match="index"):
        D.select_gpu(2)


def test_nccl_comm_selects_the_device_through_select_gpu():
    # NCCLComm cannot run here (no GPU, no NCCL); check it goes through the one place that
    # selects both CuPy's and Numba's device rather than CuPy's alone.
    import inspect

    from nn.distributed import comm
    src = inspect.getsource(comm.NCCLComm.__init__)
    assert "select_gpu(" in src and "Device(" not in src


_SIM_SCRIPT = """
import numpy as np, kernels
x = np.arange(8, dtype=np.float32)
print("cpu", kernels.relu_forward(x - 4).sum())
d = kernels.to_device(x, "cuda")
kernels.to_host(kernels.relu_forward(d)); kernels.to_host(kernels.relu_forward(d))
"""


def test_simulator_warns_once_on_first_cuda_use():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-c", _SIM_SCRIPT], capture_output=True, text=True,
                         check=True, env=env)
    assert run.stderr.count("simulator") == 1, run.stderr
    assert D.SIMULATOR_WARNING in run.stderr
    assert "for testing only" in D.SIMULATOR_WARNING and "slower" in D.SIMULATOR_WARNING
    # Nothing printed before the cuda device is touched, nor when it never is.
    cpu_only = subprocess.run([sys.executable, "-c", _SIM_SCRIPT.split("d = ")[0]],
                              capture_output=True, text=True, check=True, env=env)
    assert "simulator" not in cpu_only.stderr


def test_launch_refuses_more_threads_than_32bit_indices_allow():
    def kernel():
        raise AssertionError("must not run")
    with pytest.raises(ValueError, match="launch: 4294967296 threads for kernel, more than"):
        D.launch(kernel, 2 ** 32)


@pytest.mark.skipif(kernels.SIMULATOR or _driver_present(),
                    reason="needs a machine without an NVIDIA driver, outside the simulator")
def test_gpu_check_script_stops_at_the_gpu_step_without_a_gpu():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, GPU_CHECK_OFFLINE="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    run = subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu_check.sh")], cwd=root,
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "== 2/5 device report" in run.stdout and "== 3/5" not in run.stdout
    assert "NO GPU: missing driver: libcuda.so.1 not found" in run.stdout
