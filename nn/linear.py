"""Linear (fully connected) layer and shape-only layers: Identity, Flatten, Unflatten.

Linear, on ``x`` of shape ``(*, in_features)`` with ``weight (out_features, in_features)``:

    y      = x @ W.T + b                      (*, out_features)
    grad_x = grad_y @ W                       (*, in_features)
    grad_W = sum over rows of grad_y.T @ x    (out_features, in_features)
    grad_b = sum over rows of grad_y          (out_features,)

The products go to BLAS / cuBLAS through the array module.
"""
from __future__ import annotations

import math

import numpy as np

import kernels as K
from kernels.checks import check_float, check_same_dtype
from kernels.threads import single_threaded_blas

from . import init
from ._checks import check_input, new_parameter_array, place
from .module import Module, Parameter

__all__ = ["Linear", "Identity", "Flatten", "Unflatten"]


# Below this many flops a CPU product runs on one BLAS thread: right after a Numba parallel
# region (the neighbouring layers' kernels) Numba's threads still hold the cores, and a
# multi-threaded BLAS call then waits on them, while BLAS's own spinning threads slow the next
# Numba region (measured on the LeNet-5 head, 64x400 @ 400x120: 0.4 ms single-threaded
# against tens of ms with two BLAS threads on a busy 2-core machine; a whole SmallVGG step
# with its 32x4096 @ 4096x128 head: 103 ms with two BLAS threads there, 39 ms with one).
# Only products far larger than these heads keep every BLAS thread.
_SERIAL_BLAS_FLOPS = 1 << 28


def _matmul(device, a, b):
    xp = K.array_module(device)
    flops = 2 * a.size * (b.shape[-1] if b.ndim > 1 else 1)
    if device == K.CPU and flops < _SERIAL_BLAS_FLOPS:
        with single_threaded_blas():
            return xp.matmul(a, b)
    return xp.matmul(a, b)


def _features(name, value):
    # Like Conv2d's channel checks: int(2.5) would silently drop half a feature, and 0
    # features only fails later (a division by zero in the initialiser).
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


class Linear(Module):
    """y = x @ weight.T + bias; torch's layout and default initialisation."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = _features("in_features", in_features)
        self.out_features = _features("out_features", out_features)
        self.weight = Parameter(new_parameter_array((self.out_features, self.in_features),
                                                    dtype))
        self.bias = (Parameter(new_parameter_array((self.out_features,), dtype))
                     if bias else None)
        self.reset_parameters()
        place(self, device)

    def reset_parameters(self, generator=None):
        """torch's default: kaiming_uniform_(a=sqrt(5)) weight, U(+-1/sqrt(in_features)) bias."""
        init._default_layer_init(self.weight, self.bias, generator)

    def forward(self, x):
        if getattr(x, "ndim", 1) == 0:
            raise ValueError("Linear: x must have at least 1 dimension, got a scalar")
        device = check_input(self, x, channels=self.in_features, channel_axis=-1)
        y = _matmul(device, x, self.weight.data.T)
        if self.bias is not None:
            y += self.bias.data
        self.save_for_backward(x)
        return y

    def backward(self, grad_y, input_grad=True):
        """dL/dx, or None with ``input_grad=False`` (its matmul is then skipped)."""
        x = self.saved_tensors()
        # A float64 gradient into a float32 layer (or a wrong shape) would otherwise pass
        # through BLAS and only fail later, in the optimizer.
        check_float("grad_y", grad_y)
        check_same_dtype("grad_y", grad_y, "x", x)
        expected = tuple(x.shape[:-1]) + (self.out_features,)
        if tuple(grad_y.shape) != expected:
            raise ValueError(f"Linear: grad_y: expected shape {expected} (the forward's "
                             f"output), got {tuple(grad_y.shape)}")
        device = K.device_of(grad_y, x, names=["grad_y", "x"])
        w = self.weight
        if w.requires_grad:
            g2 = grad_y.reshape(-1, self.out_features)
            x2 = x.reshape(-1, self.in_features)
            w.accumulate(_matmul(device, g2.T, x2))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate(grad_y.reshape(-1, self.out_features).sum(axis=0))
        return _matmul(device, grad_y, w.data) if input_grad else None

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Identity(Module):
    """y = x (the same array); grad_x = grad_y."""

    # Only moves values: when the model's input needs no gradient, neither does its output
    # (module.chain_backward).
    _reshapes_only = True

    def __init__(self, *args, **kwargs):  # torch ignores its arguments too
        super().__init__()

    def forward(self, x):
        self.save_for_backward(True)
        return x

    def backward(self, grad_y):
        self.saved_tensors()
        return grad_y


def _axis(dim, ndim, what):
    if not -ndim <= dim < ndim:
        raise ValueError(f"{what}={dim} is out of range for a {ndim}-D input")
    return dim % ndim


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` into one (a view); backward restores the shape."""

    # Only moves values: when the model's input needs no gradient, neither does its output
    # (module.chain_backward).
    _reshapes_only = True

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def forward(self, x):
        if x.ndim == 0:
            return self._keep(x, x.reshape(1))
        start = _axis(self.start_dim, x.ndim, "Flatten: start_dim")
        end = _axis(self.end_dim, x.ndim, "Flatten: end_dim")
        if start > end:
            raise ValueError(f"Flatten: start_dim ({self.start_dim}) comes after end_dim "
                             f"({self.end_dim}) for a {x.ndim}-D input")
        shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
        return self._keep(x, x.reshape(shape))

    def _keep(self, x, y):
        self.save_for_backward(tuple(x.shape))
        return y

    def backward(self, grad_y):
        return grad_y.reshape(self.saved_tensors())

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size``; backward merges it back."""

    # Only moves values: when the model's input needs no gradient, neither does its output
    # (module.chain_backward).
    _reshapes_only = True

    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim = int(dim)
        self.unflattened_size = tuple(int(s) for s in unflattened_size)

    def forward(self, x):
        dim = _axis(self.dim, x.ndim, "Unflatten: dim")
        if math.prod(self.unflattened_size) != x.shape[dim]:
            raise ValueError(f"Unflatten: unflattened_size {self.unflattened_size} does not "
                             f"multiply to {x.shape[dim]}, the size of axis {self.dim} of an "
                             f"input of shape {tuple(x.shape)}")
        self.save_for_backward(tuple(x.shape))
        return x.reshape(x.shape[:dim] + self.unflattened_size + x.shape[dim + 1:])

    def backward(self, grad_y):
        return grad_y.reshape(self.saved_tensors())

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
