"""The device report: what a user with a broken GPU setup runs first (``python -m kernels``)."""
from __future__ import annotations

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
        "cupy": _device.cupy_status(),
        "devices": ", ".join(_device.devices()),
    }


def doctor() -> str:
    """The device report as text."""
    facts = report()
    width = max(len(k) for k in facts)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in facts.items())
