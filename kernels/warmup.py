"""Compile (or load from Numba's cache) the kernels a typical CNN uses, ahead of time.

Every CPU kernel is ``cache=True``: the first call in a new environment compiles it (seconds
per kernel), later processes load machine code from the cache (milliseconds).  ``warmup()``
makes those first calls on tiny inputs, so the cost is paid once, visibly, instead of in the
first training step.  It returns the seconds each call took, which is also how the compile
time benchmark (``benchmarks/bench_compile.py``) measures cold and warm starts.

Numba keeps its cache beside the source files (``kernels/__pycache__``; a user-wide folder
when that one is read-only, or ``NUMBA_CACHE_DIR``), keyed by the source file's path and
modification time, the function's bytecode and the CPU.  So a checkout and an installed copy
of the package compile separately, and editing a kernel file recompiles that file's kernels.
:func:`cold_calls` says, before anything runs, which warmup calls would compile: after a
warmup it records, in the same cache folder, which kernels and signatures each call used
(``warmup.<python>.json``), and later checks each of them against Numba's own cache index.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

__all__ = ["warmup", "cold_calls", "estimate_seconds", "COLD_SECONDS"]

# Seconds each call takes to compile with an empty cache on a quiet 2-core AVX-512 machine,
# used only to say "about N s" before a first warmup (afterwards a warmup's own times are
# recorded and used).  The whole warmup took 32 s there (benchmarks/bench_compile.py,
# 2026-11-22); the split between calls is that of a cold warmup measured on 2026-12-07 at
# load average 7.7 (253 s in all: relu 12.0, tanh 39.5, sigmoid 32.6, softmax 18.8,
# cross_entropy 14.0, conv2d_forward 51.4, conv2d_backward 59.5, max_pool2d 6.4,
# avg_pool2d 12.1, sgd_step 3.0, adam_step 3.6), scaled to 32 s.
COLD_SECONDS = {
    "relu": 1.5, "tanh": 5.0, "sigmoid": 4.1, "softmax": 2.4, "cross_entropy": 1.8,
    "conv2d_forward": 6.5, "conv2d_backward": 7.5, "max_pool2d": 0.8, "avg_pool2d": 1.5,
    "sgd_step": 0.4, "adam_step": 0.5,
}


def estimate_seconds(cold):
    """About how long compiling the ``cold`` calls takes here and now (seconds).

    The recorded times are for an idle machine; compiling is single-threaded work that
    shares the cores with everything else, so a load average above the core count
    stretches it about in proportion (measured: 253 s at load 7.7 on 2 cores, 32 s idle).
    """
    total = sum(cold.values())
    try:
        busy = os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        busy = 0.0
    return total * max(1.0, busy)


def _calls(dtype):
    from . import activation as A, conv as C, loss as L, optim as O, pool as P, softmax as S

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    logits = rng.standard_normal((4, 10)).astype(dtype)
    labels = rng.integers(0, 10, 4)
    p, g = np.zeros(64, dtype), np.ones(64, dtype)
    buf, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)

    def conv_backward():
        C.conv2d_backward(C.conv2d_forward(x, w, padding=1), x, w, padding=1)

    def max_pool():
        pooled, idx = P.max_pool2d_forward(x, 2, return_indices=True)
        P.max_pool2d_backward(pooled, idx, x.shape, 2)

    return {
        "relu": lambda: (A.relu_forward(x), A.relu_backward(x, x)),
        "tanh": lambda: (A.tanh_forward(x), A.tanh_backward(x, x)),
        "sigmoid": lambda: (A.sigmoid_forward(x), A.sigmoid_backward(x, x)),
        "softmax": lambda: S.softmax_forward(logits),
        "cross_entropy": lambda: L.cross_entropy_forward(logits, labels),
        "conv2d_forward": lambda: C.conv2d_forward(x, w, padding=1),
        "conv2d_backward": conv_backward,
        "max_pool2d": max_pool,
        "avg_pool2d": lambda: P.avg_pool2d_backward(P.avg_pool2d_forward(x, 2), x.shape, 2),
        "sgd_step": lambda: O.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.0, False, True),
        "adam_step": lambda: O.adam_step(p, g, m, v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                         False, False),
    }


def _dispatchers():
    """Every cached CPU dispatcher in the loaded ``kernels`` modules: ``{(module, name): d}``."""
    found = {}
    for modname, module in list(sys.modules.items()):
        if not (modname == "kernels" or modname.startswith("kernels.")) or module is None:
            continue
        for name, obj in list(vars(module).items()):
            cache = getattr(obj, "_cache", None)
            if cache is not None and hasattr(obj, "signatures") and \
                    getattr(cache, "_cache_file", None) is not None:
                found[(modname, name)] = obj
    return found


def _used(dispatchers):
    return {key: {str(sig) for sig in d.signatures} for key, d in dispatchers.items()}


def _record_path():
    """Where the record lives: Numba's cache folder for this copy of ``kernels``."""
    from . import activation

    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return os.path.join(activation._relu_forward_cpu._cache._cache_path, f"warmup.{tag}.json")


def _in_cache(d, sig_text):
    """True when Numba's index holds ``d`` at ``sig_text`` for this CPU, source and bytecode."""
    codegen = d.targetctx.codegen()
    for key in d._cache._cache_file._load_index():
        if str(key[0]) == sig_text and d._cache._index_key(key[0], codegen) == key:
            return True
    return False


def _select(calls, names):
    if names is None:
        return calls
    unknown = sorted(set(names) - set(calls))
    if unknown:
        raise ValueError(f"names: unknown warmup calls {unknown}; expected some of "
                         f"{sorted(calls)}")
    return {name: calls[name] for name in names}


def cold_calls(dtype=np.float32, names=None):
    """``{name: estimated seconds}`` of the warmup calls that would compile (not load).

    Every call is cold until a warmup has recorded what it uses; after that, a call is cold
    when any kernel signature it used is missing from Numba's cache or stale (source edited,
    another CPU, another Numba).  ``None`` when this cannot be told (an unknown Numba cache
    layout): then nothing is promised either way.
    """
    names = list(_select(_calls(dtype), names))
    suffix = np.dtype(dtype).name
    try:
        with open(_record_path()) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = {}
    except Exception:
        return None
    calls, seconds = record.get("calls", {}), record.get("seconds", {})
    try:
        dispatchers = _dispatchers()
        cold = {}
        for name in names:
            used = calls.get(f"{name} {suffix}")
            if used is None or not all(
                    (mod, fn) in dispatchers and _in_cache(dispatchers[(mod, fn)], sig)
                    for mod, fn, sig in used):
                cold[name] = float(seconds.get(f"{name} {suffix}", COLD_SECONDS.get(name, 2.0)))
        return cold
    except Exception:  # Numba's private cache layout changed: say nothing rather than wrong
        return None


def _write_record(calls, seconds):
    try:
        path = _record_path()
        try:
            with open(path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        # A call that compiled nothing new here ran after the same kernels were already
        # loaded in this process: what it needs is unknown, so its old entry stays.
        record.setdefault("calls", {}).update({k: v for k, v in calls.items() if v})
        record.setdefault("seconds", {}).update(seconds)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: the next run just says "compiling" again
        pass


def warmup(dtypes=(np.float32,), progress=None, names=None):
    """Run each common kernel once per dtype on tiny CPU inputs; ``{name: seconds}``.

    ``names``: only these calls (default all: the keys of :data:`COLD_SECONDS`).
    ``progress(name)`` is called before each call (for a progress bar).  What each call used
    is recorded beside Numba's cache, so that :func:`cold_calls` can tell the next process
    whether it would compile.
    """
    times, calls, cold_seconds = {}, {}, {}
    for dtype in dtypes:
        suffix = np.dtype(dtype).name
        for name, call in _select(_calls(dtype), names).items():
            if progress is not None:
                progress(name)
            before = _used(_dispatchers())
            t = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t
            times[name if len(dtypes) == 1 else f"{name} {suffix}"] = elapsed
            after = _used(_dispatchers())
            calls[f"{name} {suffix}"] = sorted(
                [mod, fn, sig] for (mod, fn), sigs in after.items()
                for sig in sigs - before.get((mod, fn), set()))
            if elapsed > 0.2:  # it compiled: keep the time for the next estimate
                cold_seconds[f"{name} {suffix}"] = round(elapsed, 2)
    _write_record(calls, cold_seconds)
    return times
