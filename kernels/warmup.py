"""Compile (or load from Numba's cache) the kernels a typical CNN uses, ahead of time.

Every CPU kernel is ``cache=True``: the first call in a new environment compiles it (seconds
per kernel), later processes load machine code from the cache (milliseconds).  ``warmup()``
makes those first calls on tiny inputs, so the cost is paid once, visibly, instead of in the
first training step.  It returns the seconds each call took, which is also how the compile
time benchmark (``benchmarks/bench_compile.py``) measures cold and warm starts.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["warmup"]


def _calls(dtype):
    from . import activation as A, conv as C, loss as L, optim as O, pool as P, softmax as S

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    y = C.conv2d_forward(x, w, padding=1)
    logits = rng.standard_normal((4, 10)).astype(dtype)
    labels = rng.integers(0, 10, 4)
    pooled, idx = P.max_pool2d_forward(x, 2, return_indices=True)
    p, g = np.zeros(64, dtype), np.ones(64, dtype)
    buf, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    return {
        "relu": lambda: (A.relu_forward(x), A.relu_backward(x, x)),
        "tanh": lambda: (A.tanh_forward(x), A.tanh_backward(x, x)),
        "sigmoid": lambda: (A.sigmoid_forward(x), A.sigmoid_backward(x, x)),
        "softmax": lambda: S.softmax_forward(logits),
        "cross_entropy": lambda: L.cross_entropy_forward(logits, labels),
        "conv2d_forward": lambda: C.conv2d_forward(x, w, padding=1),
        "conv2d_backward": lambda: C.conv2d_backward(y, x, w, padding=1),
        "max_pool2d": lambda: P.max_pool2d_backward(pooled, idx, x.shape, 2),
        "avg_pool2d": lambda: P.avg_pool2d_backward(P.avg_pool2d_forward(x, 2), x.shape, 2),
        "sgd_step": lambda: O.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.0, False, True),
        "adam_step": lambda: O.adam_step(p, g, m, v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                         False, False),
    }


def warmup(dtypes=(np.float32,)):
    """Run each common kernel once per dtype on tiny CPU inputs; ``{name: seconds}``."""
    times = {}
    for dtype in dtypes:
        suffix = "" if len(dtypes) == 1 else f" {np.dtype(dtype).name}"
        for name, call in _calls(dtype).items():
            t = time.perf_counter()
            call()
            times[name + suffix] = time.perf_counter() - t
    return times
