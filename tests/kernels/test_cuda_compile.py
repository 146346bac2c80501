"""Every ``@cuda.jit`` kernel compiles to PTX for real GPUs, with the signatures its launchers
pass, and the machine code is what a GPU wants: no float64 in float32 kernels, no register
spills, small register counts for elementwise kernels, no 64-bit division in the conv
unfolding kernels.

No GPU needed: Numba types and lowers the kernels, NVVM turns them into PTX, ptxas (when
found) into SASS.  The signatures come from running every launcher on the simulator with its
launches recorded (tests/kernels/cuda_signatures.py), so a launcher that passes a Python
float (float64) to a float32 kernel is caught here.  The compile tests skip only when Numba
cannot find NVVM/NVRTC; CI installs them with the ``cuda`` extra (``numba-cuda[cu12]``).
"""
import importlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

pytestmark = pytest.mark.skipif(kernels.SIMULATOR,
                                reason="the simulator replaces Numba's CUDA compiler")

CCS = [(8, 0), (9, 0)]
# GELU's erf/tanh are evaluated in float64 on purpose (kernels/activation.py): float32 erf
# lost 1e-6 relative accuracy near the tails.  Cost on a GPU: float64 runs at 1/2 (H100)
# to 1/64 (consumer cards) of the float32 rate; GELU is memory-bound on data-centre GPUs
# (about 120-160 f64 instructions per element), so the float32 GELU pays on consumer cards.
FLOAT64_ALLOWED = {"_gelu_forward_cuda", "_gelu_backward_cuda"}
# Elementwise kernels: one thread per element, nothing to keep live; more than 64 registers
# would halve the occupancy they need to hide memory latency.
ELEMENTWISE_MODULES = {"kernels.activation", "kernels.optim", "kernels.upsample"}
ELEMENTWISE_KERNELS = {"_mse_forward_cuda", "_mse_backward_cuda", "_bce_forward_cuda",
                       "_bce_backward_cuda", "_softmax_forward_cuda", "_log_softmax_forward_cuda",
                       "_softmax_backward_cuda", "_log_softmax_backward_cuda",
                       "_cross_entropy_grad_cuda", "_im2col_cuda", "_col2im_cuda"}
MAX_ELEMENTWISE_REGISTERS = 64


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """``{((module, kernel), argument types): launches}`` from the simulator."""
    path = tmp_path_factory.mktemp("signatures") / "signatures.pkl"
    script = Path(__file__).with_name("cuda_signatures.py")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(path, "rb") as f:
        return pickle.load(f)


def _all_cuda_kernels():
    import pkgutil

    from numba.cuda.dispatcher import CUDADispatcher
    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name == "__main__":
            continue
        mod = importlib.import_module(f"kernels.{info.name}")
        for name, obj in vars(mod).items():
            if (isinstance(obj, CUDADispatcher) and obj.py_func.__module__ == mod.__name__
                    and not obj.targetoptions.get("device")):   # kernels, not device functions
                found.add((mod.__name__, name))
    return found


def test_every_cuda_kernel_is_launched_by_the_recording(recorded):
    launched = {key for key, _ in recorded}
    missing = _all_cuda_kernels() - launched
    assert not missing, f"kernels no launcher call in cuda_signatures.py reaches: {missing}"
    assert len(launched) >= 40


def _compile(key, sig, cc):
    from numba import cuda
    kernel = getattr(importlib.import_module(key[0]), key[1])
    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
    return ptx


_MISSING_TOOLKIT = ("nvvm", "nvrtc", "libdevice", "dynamiclibnotfound", "cudasupporterror")


@pytest.fixture(scope="module")
def ptx(recorded):
    """``{(key, sig, cc): PTX}`` for every recorded signature and both compute capabilities."""
    from numba import cuda, types

    def probe(a):
        a[0] = 1.0
    try:
        cuda.compile_ptx(probe, (types.float32[::1],), cc=CCS[0])
    except Exception as exc:  # Numba raises several types for a missing toolkit piece
        text = f"{type(exc).__name__}: {exc}"
        if any(word in text.lower() for word in _MISSING_TOOLKIT):
            pytest.skip("NVVM/NVRTC not found, cannot compile to PTX (install the cuda extra, or "
                        f"numba-cuda[cu12]): {text.splitlines()[0][:200]}")
        raise
    return {(key, sig, cc): _compile(key, sig, cc) for key, sig in recorded for cc in CCS}


def _is_float32(sig):
    text = str(sig)
    return "float32" in text and "float64" not in text


def _float64_instructions(ptx_text):
    # Instructions (not declarations or comments) with a .f64 type suffix: arithmetic,
    # conversions to or from float64, float64 loads and stores.
    return [line.strip() for line in ptx_text.splitlines()
            if re.match(r"\s*(?:@%p\d+\s+)?[a-z][\w.]*\.f64\b", line)]


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_float32_kernels_have_no_float64_instructions(ptx, cc):
    leaks = {}
    for (key, sig, c), text in ptx.items():
        if c != cc or not _is_float32(sig):
            continue
        f64 = _float64_instructions(text)
        if key[1] in FLOAT64_ALLOWED:
            assert f64, f"{key[1]} is listed as computing in float64 but does not: drop it"
        elif f64:
            leaks[key[1]] = f64[:3]
    assert not leaks, f"float64 instructions in float32 kernels: {leaks}"


def test_the_float64_check_sees_float64():
    assert _float64_instructions("\tcvt.f64.f32 \t%fd1, %f1;\n\tadd.f32 %f2, %f1, %f1;") == [
        "cvt.f64.f32 \t%fd1, %f1;"]
    assert _float64_instructions(".param .f64 x,\n// add.f64\n\tmov.f32 %f1, 0f3F800000;") == []


@pytest.mark.parametrize("name", ["_im2col_cuda", "_col2im_cuda", "_max_pool2d_forward_cuda",
                                  "_max_pool2d_backward_cuda", "_avg_pool2d_forward_cuda",
                                  "_avg_pool2d_backward_cuda",
                                  "_global_avg_pool2d_backward_cuda"])
def test_conv_and_pool_index_math_has_no_64bit_division(ptx, name):
    """64-bit integer division is a ~70-instruction software routine on NVIDIA GPUs."""
    texts = [t for (key, _, _), t in ptx.items() if key[1] == name]
    assert texts
    for text in texts:
        assert not re.findall(r"\b(?:div|rem)\.[su]64\b", text), name


def _ptxas_candidates():
    seen = []
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        found = find_nvidia_binary_utility("ptxas")
        if found:
            seen.append(found)
    except Exception:
        pass
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            seen.append(os.path.join(home, "bin", "ptxas"))
    which = shutil.which("ptxas")
    if which:
        seen.append(which)
    return [p for i, p in enumerate(seen) if os.access(p, os.X_OK) and p not in seen[:i]]


def _ptxas_report(ptxas, text, cc, tmp_path):
    src = tmp_path / "kernel.ptx"
    src.write_text(text)
    run = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", str(src), "-o", os.devnull],
                         capture_output=True, text=True)
    if run.returncode:
        return None, run.stderr
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", run.stderr)]
    spills = [int(a) + int(b) for a, b in
              re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", run.stderr)]
    return (max(regs), sum(spills)), run.stderr


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
def test_no_spills_and_few_registers(ptx, cc, tmp_path):
    items = [(key, sig, text) for (key, sig, c), text in ptx.items() if c == cc]
    # The first ptxas that assembles this NVVM's PTX (a ptxas older than NVVM refuses it).
    ptxas = next((p for p in _ptxas_candidates()
                  if _ptxas_report(p, items[0][2], cc, tmp_path)[0] is not None), None)
    if ptxas is None:
        pytest.skip(f"no ptxas that accepts this PTX among {_ptxas_candidates()}")
    problems = []
    for key, sig, text in items:
        report, err = _ptxas_report(ptxas, text, cc, tmp_path)
        if report is None:
            problems.append(f"{key[1]}: ptxas failed: {err[-300:]}")
            continue
        regs, spills = report
        if spills:
            problems.append(f"{key[1]} {sig}: {spills} bytes spilled")
        elementwise = key[0] in ELEMENTWISE_MODULES or key[1] in ELEMENTWISE_KERNELS
        if elementwise and regs > MAX_ELEMENTWISE_REGISTERS:
            problems.append(f"{key[1]} {sig}: {regs} registers > {MAX_ELEMENTWISE_REGISTERS}")
    assert not problems, "\n".join(problems)
