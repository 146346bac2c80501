"""The device report: what a user with a broken GPU setup runs first (``python -m kernels``)."""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform

from . import device as _device


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _blas():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl missing)"
    import numpy  # noqa: F401  (loads NumPy's BLAS so threadpoolctl can see it)
    try:
        import scipy.linalg  # noqa: F401  (Numba's np.dot calls SciPy's BLAS)
    except ImportError:
        pass
    rows = [f"{i.get('internal_api')} {i.get('version')} ({i.get('prefix')}, "
            f"{i.get('num_threads')} threads)"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(rows) or "none found"


_INSTALL_HINT = "pip install 'numba-dl[cuda]' brings it"


def _probe_driver():
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "libcuda.so.1 not found: no NVIDIA driver on this machine (or in this container)"
    rc = libcuda.cuInit(0)
    if rc != 0:
        return f"the driver failed to start (cuInit returned CUDA error {rc})"
    count = ctypes.c_int(0)
    rc = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return "the driver sees no GPU"
    return None


def _probe_cupy():
    if _device._cupy is None:
        return f"CuPy is {_device.cupy_status()}; {_INSTALL_HINT}"
    return None


def _probe_library(name):
    def probe():
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib
            load_nvidia_dynamic_lib(name)
        except Exception as exc:  # not found, or found but fails to load
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"lib{name} cannot be loaded ({first}); {_INSTALL_HINT}"
        return None
    return probe


def _probe_launch():
    import numpy as np
    from numba import cuda

    @cuda.jit
    def _one(a):
        a[0] = 42.0

    try:
        a = _device.to_device(np.zeros(1, dtype=np.float32), _device.CUDA)
        _device.launch(_one, 1, a)
        _device.synchronize()
        value = float(_device.to_host(a)[0])
    except Exception as exc:
        return f"a one-element kernel failed to launch ({type(exc).__name__}: {exc})"
    if value != 42.0:
        return f"a one-element kernel ran but wrote {value}, not 42.0"
    return None


# In the order a GPU setup is built: the first one that fails is the piece to fix.
GPU_PROBES = [("driver", _probe_driver), ("cupy", _probe_cupy),
              ("cublas", _probe_library("cublas")), ("nvrtc", _probe_library("nvrtc")),
              ("nvvm", _probe_library("nvvm")), ("launch", _probe_launch)]


def gpu_check() -> str:
    """One line: every GPU piece present, or the first one missing and why."""
    if _device.SIMULATOR:
        return "skipped: the 'cuda' device is the simulator (NUMBA_ENABLE_CUDASIM=1)"
    for name, probe in GPU_PROBES:
        problem = probe()
        if problem is not None:
            return f"missing {name}: {problem}"
    return "ok (" + ", ".join(name for name, _ in GPU_PROBES) + ")"


def report() -> dict:
    """The facts the report prints, as a dict."""
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:
        # Numba picks its layer on the first parallel launch; run a tiny kernel to learn it.
        from .activation import relu_forward
        import numpy as np
        relu_forward(np.zeros(4, dtype=np.float32))
        layer = numba.threading_layer()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "numba": numba.__version__,
        "numba-cuda": _version("numba-cuda"),
        "threading layer": layer,
        "numba threads": numba.get_num_threads(),
        "cpu cores": os.cpu_count(),
        "blas": _blas(),
        "gpu": _device.gpu_name(),
        "gpu check": gpu_check(),
        "cupy": _device.cupy_status(),
        "devices": ", ".join(_device.devices()),
    }


def doctor() -> str:
    """The device report as text."""
    facts = report()
    width = max(len(k) for k in facts)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in facts.items())
