"""The float32 inputs the accuracy tests of the fast-math paths sweep (about 2 million)."""
import math

import numpy as np


def float32_grid():
    """A dense linear sweep of [-30, 30], log-uniform magnitudes from 1e-30 to 1e4 of both
    signs, normal samples, and the edge values where approximations saturate or overflow."""
    rng = np.random.default_rng(0)
    magnitudes = np.exp(rng.uniform(math.log(1e-30), math.log(1e4), 500_000))
    return np.concatenate([
        np.linspace(-30, 30, 1_000_001),
        magnitudes * rng.choice([-1.0, 1.0], magnitudes.size),
        rng.standard_normal(500_000) * 3,
        [0.0, -0.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4],
    ]).astype(np.float32)
