import kernels


def test_warmup_calls_every_common_kernel():
    times = kernels.warmup()
    assert {"relu", "conv2d_forward", "conv2d_backward", "max_pool2d", "cross_entropy",
            "sgd_step", "adam_step"} <= set(times)
    assert all(t >= 0 for t in times.values())


# ---------------------------------------------------------------------- first-run detection
import glob  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
kw = importlib.import_module("kernels.warmup")


def _in_fresh_process(code, cache):
    """Run ``code`` with its own Numba cache folder; the last printed line, as JSON."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", "import importlib, json\n"
                           "kw = importlib.import_module('kernels.warmup')\n" + code],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLD = "print(json.dumps(kw.cold_calls(names=['relu'])))"


def test_cold_until_a_warmup_fills_the_cache_then_warm_in_new_processes(tmp_path):
    cache = tmp_path / "numba-cache"
    assert set(_in_fresh_process(COLD, cache)) == {"relu"}        # empty cache: cold
    times = _in_fresh_process("print(json.dumps(kw.warmup(names=['relu'])))", cache)
    assert set(times) == {"relu"}
    assert _in_fresh_process(COLD, cache) == {}                    # a new process: warm
    # The record says which kernels relu used; a signature Numba's index does not hold (as
    # after editing the source, or on another CPU) makes the call cold again.
    [record_path] = glob.glob(str(cache / "**" / "warmup.py*.json"), recursive=True)
    record = json.loads(open(record_path).read())
    used = record["calls"]["relu float32"]
    assert {fn for _, fn, _ in used} == {"_relu_forward_cpu", "_relu_backward_cpu"}
    record["calls"]["relu float32"] = [[m, fn, sig.replace("float32", "int8")]
                                       for m, fn, sig in used]
    with open(record_path, "w") as f:
        json.dump(record, f)
    assert set(_in_fresh_process(COLD, cache)) == {"relu"}


def test_unknown_warmup_names_are_refused():
    with pytest.raises(ValueError, match="names: unknown warmup calls \\['nope'\\]"):
        kw.cold_calls(names=["nope"])


def test_the_estimate_grows_with_the_load(monkeypatch):
    cold = {"relu": 1.5, "conv2d_forward": 6.5}
    monkeypatch.setattr(kw.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(kw.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert kw.estimate_seconds(cold) == pytest.approx(8.0)        # idle: the recorded times
    monkeypatch.setattr(kw.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    assert kw.estimate_seconds(cold) == pytest.approx(32.0)       # 4 jobs per core
