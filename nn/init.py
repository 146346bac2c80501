"""Parameter initialisers with torch.nn.init's names and formulas, plus named image kernels.

Every initialiser fills its argument in place (a :class:`~nn.Parameter` or an array, on any
device) and returns it.  Random ones draw from an explicit NumPy ``Generator``: the
``generator=`` argument, or else this module's default generator, which
:func:`manual_seed` resets (layers use it for their default initialisation, and Dropout for
its masks when it has no generator of its own, so one seed makes a whole run repeatable).
Values are drawn in float64 on the host and cast to the target's dtype.

For a weight of shape ``(out, in, *kernel)``: ``fan_in = in * prod(kernel)``,
``fan_out = out * prod(kernel)``.

    kaiming_uniform_:  U(-b, b),  b = gain * sqrt(3 / fan)
    kaiming_normal_:   N(0, s^2), s = gain / sqrt(fan)
    xavier_uniform_:   U(-b, b),  b = gain * sqrt(6 / (fan_in + fan_out))
    xavier_normal_:    N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))

with ``fan`` chosen by ``mode`` ("fan_in" or "fan_out") and ``gain = calculate_gain(...)``.
"""
from __future__ import annotations

import math

import numpy as np

import kernels

from .module import Parameter

__all__ = ["manual_seed", "default_generator", "calculate_gain", "uniform_", "normal_",
           "constant_", "zeros_", "ones_", "kaiming_uniform_", "kaiming_normal_",
           "xavier_uniform_", "xavier_normal_", "image_kernel", "image_kernel_",
           "IMAGE_KERNELS"]

DEFAULT_SEED = 0
_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed):
    """Reset the default generator (used by layer initialisation and Dropout) to ``seed``."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator():
    """The module-level NumPy ``Generator`` used when no ``generator=`` is given."""
    return _generator


def _array(tensor):
    """The array behind a Parameter (or the array itself)."""
    data = tensor.data if isinstance(tensor, Parameter) else tensor
    if not hasattr(data, "dtype") or np.dtype(data.dtype).kind != "f":
        raise TypeError(f"tensor: expected a float Parameter or array, got "
                        f"{type(tensor).__name__} with dtype {getattr(data, 'dtype', None)}")
    return data


def _fill(tensor, values):
    data = _array(tensor)
    values = np.asarray(values, dtype=np.float64).astype(data.dtype)
    data[...] = kernels.to_device(values, kernels.device_of(data))
    return tensor


def _gen(generator):
    return _generator if generator is None else generator


def calculate_gain(nonlinearity, param=None):
    """torch's gain: linear/conv/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2/(1+a^2)).

    (selu: 3/4.)  ``param`` is leaky_relu's negative slope (default 0.01).
    """
    linear_like = ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d", "sigmoid")
    if nonlinearity in linear_like:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, bool) or not isinstance(param, (int, float)):
            raise ValueError(f"param: expected a number for leaky_relu's slope, got {param!r}")
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity: unsupported {nonlinearity!r}; expected one of "
                     f"{linear_like + ('tanh', 'relu', 'leaky_relu', 'selu')}")


def _calculate_fan_in_and_fan_out(tensor):
    shape = tuple(_array(tensor).shape)
    if len(shape) < 2:
        raise ValueError(f"tensor: fan in and fan out need at least 2 dimensions, got shape "
                         f"{shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(tensor, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode: expected 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    return _fill(tensor, _gen(generator).uniform(a, b, size=_array(tensor).shape))


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std^2)."""
    return _fill(tensor, _gen(generator).normal(mean, std, size=_array(tensor).shape))


def constant_(tensor, val):
    """Fill with ``val``."""
    return _fill(tensor, np.full(_array(tensor).shape, val, dtype=np.float64))


def zeros_(tensor):
    """Fill with 0."""
    return constant_(tensor, 0.0)


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan)."""
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / _fan(tensor, mode))
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He normal: N(0, (gain / sqrt(fan))^2)."""
    gain = calculate_gain(nonlinearity, a)
    return normal_(tensor, 0.0, gain / math.sqrt(_fan(tensor, mode)), generator)


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """Glorot uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """Glorot normal: N(0, (gain * sqrt(2 / (fan_in + fan_out)))^2)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _default_layer_init(weight, bias, generator=None):
    """torch's Linear/Conv init: kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in))."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = _calculate_fan_in_and_fan_out(weight)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        uniform_(bias, -bound, bound, generator)


# ---------------------------------------------------------------- named image kernels
# Deep-learning "convolution" is cross-correlation (no kernel flip), so sobel_x responds
# positively where intensity grows to the right: it finds vertical edges; sobel_y grows
# downwards and finds horizontal edges.
IMAGE_KERNELS = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "blur": [[0, 1 / 8, 0], [1 / 8, 4 / 8, 1 / 8], [0, 1 / 8, 0]],
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "edge": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
}


def image_kernel(name, dtype=np.float32):
    """A fresh 3x3 array: identity, blur, sharpen, edge (Laplacian), sobel_x or sobel_y."""
    if name not in IMAGE_KERNELS:
        raise ValueError(f"name: unknown image kernel {name!r}; expected one of "
                         f"{sorted(IMAGE_KERNELS)}")
    return np.array(IMAGE_KERNELS[name], dtype=dtype)


def image_kernel_(conv, name, diagonal=False):
    """Set a Conv2d's (or a 4-D weight's) filters to the named image kernel; returns ``conv``.

    The 3x3 kernel sits at the centre of each ``(KH, KW)`` slice (odd sizes >= 3), zeros
    around it.  ``diagonal=False``: every ``(oc, ic)`` slice gets the kernel, so each output
    channel filters the sum of its input channels.  ``diagonal=True``: only slices with
    ``oc == ic`` (channel indices within a group) get it, others are zero, so each channel
    is filtered on its own (needs as many output channels per group as inputs per group).
    A bias, when present, is set to zero.
    """
    weight = getattr(conv, "weight", conv)
    bias = getattr(conv, "bias", None)
    w = _array(weight)
    if w.ndim != 4:
        raise ValueError(f"conv: expected a Conv2d or a 4-D weight, got shape {tuple(w.shape)}")
    oc_n, ic_n, kh, kw = w.shape
    if kh < 3 or kw < 3 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv: image kernels need odd kernel sizes >= 3, got ({kh}, {kw})")
    base = image_kernel(name, np.float64)
    values = np.zeros(w.shape, dtype=np.float64)
    top, left = (kh - 3) // 2, (kw - 3) // 2
    if diagonal:
        groups = getattr(conv, "groups", 1)
        per_group_out = oc_n // groups
        if per_group_out != ic_n:
            raise ValueError(f"conv: diagonal=True needs out_channels/groups == in_channels/"
                             f"groups, got {per_group_out} and {ic_n}")
        for oc in range(oc_n):
            values[oc, oc % per_group_out, top:top + 3, left:left + 3] = base
    else:
        values[:, :, top:top + 3, left:left + 3] = base
    _fill(weight, values)
    if bias is not None:
        zeros_(bias)
    return conv
