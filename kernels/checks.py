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
    if not given:   # e.g. relu_forward(None): name the array, not device_of's internals
        name = next(iter(arrays), "x")
        raise TypeError(f"{name}: expected a float32 or float64 array, got None")
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


# Geometry integers (sizes, strides, paddings, dilations, output paddings, scale factors)
# and every extent derived from them (padded input, dilated kernel, output size) stay at or
# below 2**31 - 1.  Then the kernels' index arithmetic, at most a product of two such values
# plus a few more, cannot leave int64 (Numba computes it in int64 without overflow checks,
# so a larger value reads outside the buffers), and a CUDA grid dimension fits too.
MAX_EXTENT = 2**31 - 1


def _check_max(name, value, shown):
    if value > MAX_EXTENT:
        raise ValueError(f"{name}: expected values at most {MAX_EXTENT} (2**31 - 1), got "
                         f"{shown!r}")


def check_positive_int(name, value):
    """A positive int at most :data:`MAX_EXTENT` (a size, stride, dilation or factor)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    _check_max(name, value, value)
    return int(value)


def check_nonnegative_int(name, value):
    """A non-negative int at most :data:`MAX_EXTENT` (a padding)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    _check_max(name, value, value)
    return int(value)


def check_extent(name, value, detail=""):
    """An extent derived from geometry arguments (an output size, a padded size) must stay
    at most :data:`MAX_EXTENT`; ``name`` is the argument to blame."""
    if value > MAX_EXTENT:
        raise ValueError(f"{name}: the resulting size {value} exceeds {MAX_EXTENT} "
                         f"(2**31 - 1){detail}")
    return value


def check_numel(name, shape, itemsize, detail=""):
    """The array a launcher would allocate, ``shape`` of ``itemsize``-byte elements, must be
    addressable (at most 2**63 - 1 bytes); ``name`` is the argument to blame."""
    total = itemsize
    for s in shape:
        total *= int(s)
    if total > 2**63 - 1:
        raise ValueError(f"{name}: the result would have shape {tuple(shape)}, {total} bytes, "
                         f"more than any machine can address{detail}")


def pair(name, value, positive=True):
    """An int or a pair of ints as ``(h, w)``, each checked (at most :data:`MAX_EXTENT`)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
        h, w = value
    else:
        h = w = value
    check = check_positive_int if positive else check_nonnegative_int
    return check(name, h), check(name, w)


def check_shape(name, shape, ndim=4):
    """A shape argument (``x_shape``, ``w_shape``): ``ndim`` non-negative ints, each at most
    :data:`MAX_EXTENT`; float sizes (even 6.0) are refused rather than truncated."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise TypeError(f"{name}: expected a {ndim}-tuple of ints, got {shape!r}")
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected {ndim} sizes, got {shape!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{name}: expected a {ndim}-tuple of ints, got {shape!r}")
        if s < 0:
            raise ValueError(f"{name}: expected non-negative sizes, got {shape!r}")
        if s > MAX_EXTENT:
            raise ValueError(f"{name}: expected sizes at most {MAX_EXTENT} (2**31 - 1), got "
                             f"{shape!r}")
    return tuple(int(s) for s in shape)
