"""Input validation shared by every kernel launcher.

Numba kernels do not check bounds, so a wrong shape corrupts memory instead of raising.
Every public kernel function validates its arguments here first, with a message that
names the argument and shows what was expected and what was given.
"""
from __future__ import annotations

import numpy as np

from .device import device_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float(name, a, ndim=None):
    """``a`` must be a float32/float64 array (of ``ndim`` dimensions when given)."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name}: expected a float32 or float64 array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(a.shape)} "
                         f"({a.ndim}-D)")


def check_same_shape(name_a, a, name_b, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} and {name_b} must have the same shape: "
                         f"{name_a} is {tuple(a.shape)}, {name_b} is {tuple(b.shape)}")


def check_same_dtype(name_a, a, name_b, b):
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype: "
                        f"{name_a} is {a.dtype}, {name_b} is {b.dtype}")


def check_floats(**arrays):
    """Several float arrays of one dtype on one device; returns that device.

    Pass them by keyword so messages can name them; ``None`` values are skipped.
    """
    given = {k: v for k, v in arrays.items() if v is not None}
    for name, a in given.items():
        check_float(name, a)
    names = list(given)
    device = device_of(*given.values(), names=names)
    first = names[0]
    for name in names[1:]:
        check_same_dtype(first, given[first], name, given[name])
    return device


def contiguous(xp, a):
    """``a`` as a C-contiguous array of the same dtype (a copy only when needed)."""
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_nonnegative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return int(value)


def pair(name, value, positive=True):
    """An int or a pair of ints as ``(h, w)``, each checked."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
        h, w = value
    else:
        h = w = value
    check = check_positive_int if positive else check_nonnegative_int
    return check(name, h), check(name, w)
