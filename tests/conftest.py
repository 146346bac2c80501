"""Shared fixtures: the device axis, dtypes, and the simulator's size limits.

``pytest`` runs the CPU cases; CUDA cases (marked ``cuda``) skip unless a GPU or the
simulator is present.  ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda`` runs them on the simulator.
"""
import numpy as np
import pytest
from hypothesis import settings

import kernels

# Property tests draw the same examples on every run and machine (the seed comes from each
# test's name), so CI's verdict on a commit is reproducible.  A test's own @settings keeps this;
# to explore new examples locally: pytest --hypothesis-profile=explore.
settings.register_profile("numba-dl", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("numba-dl")

CUDA_PARAM = pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")


@pytest.fixture(params=["cpu", CUDA_PARAM])
def device(request):
    if request.param not in kernels.devices():
        pytest.skip("no CUDA device: no GPU with CuPy, and NUMBA_ENABLE_CUDASIM is not set")
    return request.param


@pytest.fixture
def cuda_device():
    """For tests that compare the CPU with the CUDA path: mark them ``@pytest.mark.cuda``."""
    if "cuda" not in kernels.devices():
        pytest.skip("no CUDA device: no GPU with CuPy, and NUMBA_ENABLE_CUDASIM is not set")
    return "cuda"


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def simulated():
    """True under the CUDA simulator: keep launches to a few thousand threads."""
    return kernels.SIMULATOR


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
