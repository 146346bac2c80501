"""The machine's roofs, measured in the same run as everything else.

``sgemm``: float32 matrix product through NumPy's BLAS (the compute roof, "peak").
``copy``: ``numpy.copyto`` of an array far larger than the last-level cache (the bandwidth
roof; bytes counted as read + written).  ``benchmarks/report.py`` reads these two rows
(``impl="peak"``) to print fractions of peak and to draw the roofline.
"""
import numpy as np
import pytest


@pytest.mark.parametrize("n", [2048])
def test_sgemm_peak(benchmark, record, n):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty_like(a)
    benchmark(np.matmul, a, b, out=out)
    record(benchmark, case="sgemm", impl="peak", shape=f"{n}x{n} f32", flops=2 * n ** 3)


def test_copy_bandwidth(benchmark, record):
    n = 64 * 2 ** 20  # 256 MiB of float32 each way: far past the 32 MiB L3
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    benchmark(np.copyto, dst, src)
    record(benchmark, case="copy", impl="peak", shape="256 MiB f32", bytes=2 * src.nbytes)
