"""Dropout masks drawn where the data lives: counter-based, reproducible, no host copy.

    mask[i] = scale  if  bits(seed, i) >= threshold  else  0,     bits in [0, 2**24)

``bits`` is the top 24 bits of the splitmix64 finaliser of ``seed + (i + 1) * golden``: a
stateless hash, so element ``i`` of the mask depends only on ``(seed, i)``, on any device,
for any thread count or launch shape.  ``threshold = round(p * 2**24)``, so an element is kept
with probability ``1 - p`` (to 2**-24).  Integer comparisons keep float64 out of the kernel.
The caller draws ``seed`` from its own generator (``nn.Dropout`` from its NumPy Generator), so
``nn.init.manual_seed`` makes masks reproducible; the mask itself never crosses the bus.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange, uint64

from .device import SIMULATOR, array_module, dispatch

if SIMULATOR:
    import warnings
    # The simulator runs _bits on NumPy uint64 scalars, which warn on the (intended)
    # wrap-around of the hash's multiplications; compiled code wraps silently.
    warnings.filterwarnings("ignore", r"overflow encountered in scalar (multiply|add)",
                            RuntimeWarning, module=__name__)

__all__ = ["dropout_mask"]

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _bits(seed, i):
    z = uint64(seed) + (uint64(i) + uint64(1)) * uint64(_GOLDEN)
    z = (z ^ (z >> uint64(30))) * uint64(_MIX1)
    z = (z ^ (z >> uint64(27))) * uint64(_MIX2)
    z = z ^ (z >> uint64(31))
    return z >> uint64(40)


_bits_cpu = njit(inline="always")(_bits)
_bits_cuda = cuda.jit(device=True, inline=True)(_bits)


@njit(parallel=True, cache=True)
def _dropout_mask_cpu(mask, seed, threshold, scale, zero):
    for i in prange(mask.size):
        mask[i] = scale if _bits_cpu(seed, i) >= threshold else zero


@cuda.jit(cache=True)
def _dropout_mask_cuda(mask, seed, threshold, scale, zero):
    i = cuda.grid(1)
    if i < mask.size:
        mask[i] = scale if _bits_cuda(seed, i) >= threshold else zero


def dropout_mask(shape, p, seed, dtype, device):
    """``(keep / (1 - p))`` of ``shape`` on ``device``: each element kept with probability 1 - p."""
    if isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype: expected a float dtype, got {dtype}")
    xp = array_module(device)
    mask = xp.empty(tuple(shape), dtype=dtype)
    scale = dtype.type(0.0 if p == 1.0 else 1.0 / (1.0 - float(p)))
    threshold = np.uint64(round(float(p) * 2 ** 24))
    dispatch(device, _dropout_mask_cpu, _dropout_mask_cuda, mask.size, mask.reshape(-1),
             np.uint64(seed), threshold, scale, dtype.type(0))
    return mask
