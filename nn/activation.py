"""Activation layers: elementwise nonlinearities, Softmax and LogSoftmax.

Elementwise layers keep their input ``x`` (the kernels' backward takes it) and return
``grad_x = grad_y * f'(x)``; any shape, float32 or float64, output dtype = input dtype.
Softmax and LogSoftmax keep their output ``y`` instead, and work along any axis ``dim``
by moving it last and viewing the rest as rows of a 2-D array.
"""
from __future__ import annotations

import kernels as K

from .module import Module, recently_saved

__all__ = ["ReLU", "LeakyReLU", "ELU", "Tanh", "Sigmoid", "Softplus", "Step", "GELU",
           "Softmax", "LogSoftmax"]


class _Elementwise(Module):
    """y = f(x); the kernels' backward takes the saved input."""

    _op = None  # kernels.<op>_forward / <op>_backward, looked up when called

    def _params(self):
        return ()

    def forward(self, x):
        self.save_for_backward(x)
        return getattr(K, f"{self._op}_forward")(x, *self._params())

    def backward(self, grad_y):
        x = self.saved_tensors()
        return getattr(K, f"{self._op}_backward")(grad_y, x, *self._params())


class ReLU(_Elementwise):
    """max(x, 0).

    ``inplace=True`` (as in torch) writes the result into ``x`` and returns ``x`` itself,
    saving one activation: the backward only needs ``x > 0``, which the result keeps.  Where
    that is not safe, because a recent forward saved ``x`` for its backward (the output of
    BatchNorm with ``affine=False``, say), it computes out of place instead.  Like torch's, it overwrites its input otherwise, so it must not take an array
    that is still used elsewhere (such as a skip connection's input).
    """
    _op = "relu"

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        if not self.inplace or recently_saved(x):
            return super().forward(x)
        y = K.relu_forward(x)  # validates x; the same numerics as out of place
        if not getattr(getattr(x, "flags", None), "writeable", True):
            raise ValueError("ReLU(inplace=True): x is read-only; use ReLU() or pass a "
                             "writeable array")
        x[...] = y
        self.save_for_backward(x)
        return x

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope * x."""
    _op = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _params(self):
        return (self.negative_slope,)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(_Elementwise):
    """x if x > 0 else alpha * (exp(x) - 1)."""
    _op = "elu"

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = float(alpha)

    def _params(self):
        return (self.alpha,)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Tanh(_Elementwise):
    """tanh(x)."""
    _op = "tanh"


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""
    _op = "sigmoid"


class Softplus(_Elementwise):
    """log(1 + exp(beta * x)) / beta, linear above ``threshold`` (in units of beta * x)."""
    _op = "softplus"

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        self.beta = float(beta)
        self.threshold = float(threshold)

    def _params(self):
        return (self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class Step(_Elementwise):
    """Hard threshold (Heaviside): 1 where x > 0, else 0; its gradient is 0 everywhere."""
    _op = "step"


class GELU(_Elementwise):
    """x * Phi(x) with the exact normal CDF (torch's ``approximate='none'``)."""
    _op = "gelu"

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate != "none":
            raise ValueError(f"approximate: only 'none' (exact erf) is implemented, got "
                             f"{approximate!r}")
        self.approximate = approximate


class _AlongDim(Module):
    """Runs a 2-D row-wise kernel along axis ``dim`` of any array; saves the output."""

    _op = None  # kernels.<op>_forward / <op>_backward, looked up when called

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = -1 if dim is None else int(dim)

    def _rows(self, a, name="x"):
        """``a`` with axis ``dim`` moved last, as a contiguous 2-D array of rows."""
        K.checks.check_float(name, a)
        if a.ndim == 0 or not -a.ndim <= self.dim < a.ndim:
            raise ValueError(f"{type(self).__name__}: dim={self.dim} is out of range for an "
                             f"input of shape {tuple(a.shape)}")
        xp = K.array_module(K.device_of(a))
        moved = xp.moveaxis(a, self.dim, -1)
        return xp, moved.shape, xp.ascontiguousarray(moved).reshape(-1, moved.shape[-1])

    def _unrows(self, xp, moved_shape, rows):
        return xp.ascontiguousarray(xp.moveaxis(rows.reshape(moved_shape), -1, self.dim))

    def forward(self, x):
        xp, moved_shape, rows = self._rows(x)
        y_rows = getattr(K, f"{self._op}_forward")(rows)
        self.save_for_backward(y_rows)
        return self._unrows(xp, moved_shape, y_rows)

    def backward(self, grad_y):
        y_rows = self.saved_tensors()
        xp, moved_shape, g_rows = self._rows(grad_y, "grad_y")
        if g_rows.shape != y_rows.shape:
            raise ValueError(f"{type(self).__name__}: grad_y has shape {tuple(grad_y.shape)}, "
                             f"which does not match the forward output")
        grad_rows = getattr(K, f"{self._op}_backward")(g_rows, y_rows)
        return self._unrows(xp, moved_shape, grad_rows)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """exp(x) / sum(exp(x)) along ``dim`` (default -1: the last axis, the class axis of (N, K))."""
    _op = "softmax"


class LogSoftmax(_AlongDim):
    """x - log(sum(exp(x))) along ``dim`` (default -1)."""
    _op = "log_softmax"
