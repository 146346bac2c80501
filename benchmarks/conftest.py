"""Shared benchmark fixtures: machine baselines, work accounting, PyTorch and CUDA gates.

Run the benchmarks with ``python -m pytest benchmarks/bench_x.py --benchmark-only`` (add
``--benchmark-json=out.json`` for ``benchmarks/report.py``).  A benchmark file uses these:

``machine`` (session fixture)
    Baselines measured once per session, on first use: ``machine.copy_gbps(nbytes)`` is the
    rate of ``numpy.copyto`` moving ``nbytes`` (read + written, so an array of ``nbytes/2``),
    cached per size; ``machine.sgemm_gflops`` is a float32 2048x2048 matmul through NumPy's
    BLAS.  Use them to say how far an op is from the memory or compute roof of *this* run.

``record(benchmark, case=..., impl=..., shape=..., bytes=..., flops=..., machine=...)``
    (a fixture returning the function, so benchmark files need not import this one.)  Call
    after ``benchmark(...)``: puts the keys ``benchmarks/report.py`` reads into
    ``benchmark.extra_info`` (``case``, ``impl`` = "ours" / "numpy" / "torch" / "peak",
    ``device``, ``shape``, ``bytes``, ``flops``) and, from the median, ``GB/s`` and
    ``GFLOP/s``; with ``machine``, also ``copy_fraction`` (of a copy moving the same bytes)
    and ``sgemm_fraction``.  The row also goes into the table printed at the end of the run.

``warm(fn, *args)`` (also a fixture)
    Calls ``fn`` once outside the timing (compilation, cache loading, first-touch of memory)
    and returns that call's seconds, to be recorded apart (``first_call_s``).

``torch_or_skip`` (session fixture)
    The ``torch`` module with ``torch.set_num_threads(numba.get_num_threads())`` so the two
    libraries get the same cores; the benchmark is skipped when PyTorch is not importable.

``cuda_or_skip`` (fixture)
    Skips unless a real GPU with CuPy is present (never under the simulator); returns
    ``"cuda"``.  Timed CUDA functions must end with ``kernels.synchronize()``.
"""
from __future__ import annotations

import time

import numba
import numpy as np
import pytest

import kernels as K

_ROWS = []  # (name, extra_info, median seconds) of every recorded benchmark, for the summary


def median_seconds(fn, min_time=0.2, min_reps=5, max_reps=1000):
    """Median wall time of ``fn()`` over repeated calls (at least ``min_time`` in total)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or
                                     time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


class Machine:
    """Copy bandwidth and sgemm rate of this machine, measured lazily and cached."""

    def __init__(self):
        self._copy = {}
        self._sgemm = None

    def copy_gbps(self, nbytes=512 * 2 ** 20):
        """GB/s of numpy.copyto moving ``nbytes`` in all (read + write); default past any L3."""
        n = max(int(nbytes) // 2 // 4, 1)
        if n not in self._copy:
            src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
            dst = np.empty_like(src)
            self._copy[n] = 2 * src.nbytes / median_seconds(lambda: np.copyto(dst, src)) / 1e9
        return self._copy[n]

    @property
    def sgemm_gflops(self):
        """GFLOP/s of a float32 2048x2048 matrix product (2 n**3 flops)."""
        if self._sgemm is None:
            rng = np.random.default_rng(0)
            a, b = (rng.standard_normal((2048, 2048)).astype(np.float32) for _ in range(2))
            out = np.empty_like(a)
            self._sgemm = 2 * 2048 ** 3 / median_seconds(lambda: np.matmul(a, b, out=out)) / 1e9
        return self._sgemm


@pytest.fixture(scope="session")
def machine():
    return Machine()


def _warm(fn, *args):
    """Run ``fn(*args)`` once (compile, load caches, touch memory); return its seconds."""
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _record(benchmark, *, case, impl="ours", device="cpu", shape="", bytes=None, flops=None,
           machine=None, **extra):
    """Describe the benchmark that just ran in ``benchmark.extra_info`` (see the module doc)."""
    info = dict(case=case, impl=impl, device=device, shape=shape, **extra)
    if bytes is not None:
        info["bytes"] = int(bytes)
    if flops is not None:
        info["flops"] = int(flops)
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    if median:
        if bytes is not None:
            info["GB/s"] = bytes / median / 1e9
            if machine is not None:
                info["copy_GBps"] = machine.copy_gbps(bytes)
                info["copy_fraction"] = info["GB/s"] / info["copy_GBps"]
        if flops is not None:
            info["GFLOP/s"] = flops / median / 1e9
            if machine is not None:
                info["sgemm_fraction"] = info["GFLOP/s"] / machine.sgemm_gflops
        _ROWS.append((benchmark.name, info, median))
    benchmark.extra_info.update(info)


@pytest.fixture(scope="session")
def warm():
    return _warm


@pytest.fixture(scope="session")
def record():
    return _record


@pytest.fixture(scope="session")
def torch_or_skip():
    try:
        import torch
    except ImportError:
        pytest.skip("PyTorch is not installed")
    torch.set_num_threads(numba.get_num_threads())
    return torch


@pytest.fixture
def cuda_or_skip():
    if K.SIMULATOR or not K.cuda_available():
        pytest.skip("needs a real GPU with CuPy (not the simulator)")
    return "cuda"


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("work rates (median)")
    tr.write_line(f"{'case':34s} {'impl':6s} {'device':6s} {'shape':18s} {'ms':>9s} "
                  f"{'GB/s':>7s} {'of copy':>7s} {'GFLOP/s':>8s}")
    for _name, info, median in _ROWS:
        gbs = f"{info['GB/s']:.1f}" if "GB/s" in info else ""
        frac = f"{100 * info['copy_fraction']:.0f}%" if "copy_fraction" in info else ""
        gflops = f"{info['GFLOP/s']:.1f}" if "GFLOP/s" in info else ""
        tr.write_line(f"{info['case'][:34]:34s} {info['impl']:6s} {info['device']:6s} "
                      f"{str(info['shape'])[:18]:18s} {1e3 * median:9.3f} {gbs:>7s} {frac:>7s} "
                      f"{gflops:>8s}")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Thread counts and environment into the JSON, for ``report.py``'s header and --compare."""
    import os
    import platform

    from kernels.threads import blas_libraries

    blas = [n for _, n in blas_libraries()]
    threads = {"numba": numba.get_num_threads()}
    if blas:
        threads["blas"] = max(blas)
    try:
        import torch
        threads["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "numba": numba.__version__, "threading layer": numba.config.THREADING_LAYER}
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        if name in os.environ:
            env[name] = os.environ[name]
    if hasattr(os, "getloadavg"):
        env["load average at start"] = f"{os.getloadavg()[0]:.2f}"
    machine_info["threads"] = threads
    machine_info["environment"] = env
