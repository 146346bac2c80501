"""Compile time, apart from steady state: first calls in fresh processes, cold and warm cache.

Every kernel is ``cache=True``, so a first call either compiles (cold: an empty
``NUMBA_CACHE_DIR``) or loads machine code from the cache (warm: the same folder again).
Each case runs ``compile_probe.py`` in a new Python process; ``extra_info`` holds the
per-kernel first-call seconds.  Targets: import to first LeNet-5 step under 3 s warm and
under 60 s cold.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("compile_probe.py")
ROOT = PROBE.parents[1]


def probe(what, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, str(PROBE), what], env=env, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("numba-cache")


@pytest.mark.parametrize("what", ["kernels", "lenet"])
@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_first_call(benchmark, record, cache_dir, what, cache):
    # Cold: a folder of its own, empty.  Warm: a folder one untimed process has filled.
    folder = cache_dir / f"{what}-{cache}"
    if cache == "warm":
        probe(what, folder)
    times = benchmark.pedantic(probe, args=(what, folder), rounds=1, iterations=1)
    record(benchmark, case=f"first call: {what} ({cache} cache)", impl="ours", shape="")
    benchmark.extra_info["first_call_s"] = times
    benchmark.extra_info["total_s"] = sum(times.values())
    for name, seconds in times.items():
        print(f"{what:8s} {cache:5s} {name:40s} {seconds:8.3f} s")
