"""Activation layers: elementwise nonlinearities, PReLU, Softmax and LogSoftmax.

Elementwise layers keep their input ``x`` (the kernels' backward takes it) and return
``grad_x = grad_y * f'(x)``; any shape, float32 or float64, output dtype = input dtype.
PReLU also adds ``grad_weight`` into its learnable slopes.  Softmax and LogSoftmax keep their
output ``y`` instead, and work along any axis ``dim`` by moving it last and viewing the rest as
rows of a 2-D array; ``dim=None`` (torch's default) picks torch's implicit axis with torch's
deprecation warning.
"""
from __future__ import annotations

import warnings

import numpy as np

import kernels as K

from . import init
from ._checks import check_input, new_parameter_array, place
from .module import Module, Parameter, recently_saved

__all__ = ["ReLU", "LeakyReLU", "ELU", "Tanh", "Sigmoid", "Softplus", "Step", "GELU",
           "SiLU", "Mish", "Hardtanh", "ReLU6", "PReLU", "Softmax", "LogSoftmax"]


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


class _InPlace(_Elementwise):
    """``inplace=True`` (as in torch) writes the result into ``x`` and returns ``x`` itself.

    Layers whose backward reads the same from the output as from the input (``_from_output``:
    ReLU and Hardtanh, where y <= 0 exactly where x <= 0, and so on) keep the overwritten ``x``
    and save one activation.  The others keep a copy of ``x``: the caller's array is still
    overwritten, as torch's is, but nothing is saved.  Where overwriting is not safe, because a
    recent forward saved ``x`` for its backward (the output of BatchNorm with ``affine=False``,
    say), the layer computes out of place instead.  Like torch's, it overwrites its input
    otherwise, so it must not take an array that is still used elsewhere (such as a skip
    connection's input).
    """
    _from_output = False

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        if not self.inplace or recently_saved(x):
            return super().forward(x)
        y = getattr(K, f"{self._op}_forward")(x, *self._params())  # validates x
        if not getattr(getattr(x, "flags", None), "writeable", True):
            raise ValueError(f"{type(self).__name__}(inplace=True): x is read-only; use "
                             f"inplace=False or pass a writeable array")
        saved = None if self._from_output else K.array_module(K.device_of(x)).array(x, copy=True)
        x[...] = y
        self.save_for_backward(x if self._from_output else saved)
        return x

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class ReLU(_InPlace):
    """max(x, 0); ``inplace=True`` as in torch (see ``_InPlace``)."""
    _op = "relu"
    _from_output = True


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
    """x * Phi(x) with the exact normal CDF (``approximate='none'``, torch's default), or
    torch's tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))."""
    _op = "gelu"

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def _params(self):
        return (self.approximate,)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class SiLU(_InPlace):
    """x * sigmoid(x) (swish)."""
    _op = "silu"


class Mish(_InPlace):
    """x * tanh(softplus(x))."""
    _op = "mish"


class Hardtanh(_InPlace):
    """x clamped to [min_val, max_val]; gradient 1 strictly inside, 0 outside and at the ends."""
    _op = "hardtanh"
    _from_output = True  # y <= min_val exactly where x <= min_val, and likewise at max_val

    def __init__(self, min_val=-1.0, max_val=1.0, inplace=False):
        super().__init__(inplace)
        self.min_val, self.max_val = min_val, max_val  # as given: the repr shows them as torch's
        if not float(max_val) > float(min_val):
            raise ValueError(f"max_val: expected a number above min_val={min_val!r}, got "
                             f"{max_val!r}")

    def _params(self):
        return (self.min_val, self.max_val)

    def extra_repr(self):
        inplace = ", inplace=True" if self.inplace else ""
        return f"min_val={self.min_val}, max_val={self.max_val}{inplace}"


class ReLU6(Hardtanh):
    """min(max(x, 0), 6): Hardtanh(0, 6), as torch defines it."""

    def __init__(self, inplace=False):
        super().__init__(0.0, 6.0, inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class PReLU(Module):
    """x if x > 0 else weight[c] * x with learnable slopes ``weight`` (num_parameters,).

    ``num_parameters=1`` shares one slope; otherwise one per channel, the channel being axis 1
    of the input (axis 0 of a 1-D input), as in torch.  ``init`` is every slope's start value.
    """

    def __init__(self, num_parameters=1, init=0.25, device=None, dtype=None):
        super().__init__()
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, (int, np.integer)) \
                or num_parameters < 1:
            raise ValueError(f"num_parameters: expected a positive integer, got "
                             f"{num_parameters!r}")
        self.num_parameters = int(num_parameters)
        self.init = float(init)
        self.weight = Parameter(new_parameter_array((self.num_parameters,), dtype))
        self.reset_parameters()
        place(self, device)

    def reset_parameters(self):
        init.constant_(self.weight, self.init)

    def forward(self, x):
        check_input(self, x)
        self.save_for_backward(x)
        return K.prelu_forward(x, self.weight.data)

    def backward(self, grad_y):
        x = self.saved_tensors()
        grad_x, grad_w = K.prelu_backward(grad_y, x, self.weight.data)
        self.weight.accumulate(grad_w)
        return grad_x

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class _AlongDim(Module):
    """Runs a 2-D row-wise kernel along axis ``dim`` of any array; saves the output.

    ``dtype`` (float32 or float64, as torch.nn.functional.softmax's) casts the input before the
    operation, so the output has that dtype; the backward casts the gradient back to the
    input's dtype, as torch's autograd does.
    """

    _op = None  # kernels.<op>_forward / <op>_backward, looked up when called

    def __init__(self, dim=None, *, dtype=None):
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
            raise TypeError(f"dim: expected an integer or None, got {type(dim).__name__}")
        self.dim = None if dim is None else int(dim)
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        self.dtype = dtype

    def _axis(self, ndim):
        if self.dim is None:
            # torch.nn.functional._get_softmax_dim: the same choice and the same warning
            name = type(self).__name__.lower()
            warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                          f"Change the call to include dim=X as an argument.", UserWarning,
                          stacklevel=4)
            return 0 if ndim in (0, 1, 3) else 1
        return self.dim

    def _rows(self, a, dim, name="x"):
        """``a`` with axis ``dim`` moved last, as a contiguous 2-D array of rows.

        A 0-d array is one row of one element (torch accepts dim 0 or -1 for it)."""
        K.checks.check_float(name, a)
        ndim = max(a.ndim, 1)
        if not -ndim <= dim < ndim:
            raise ValueError(f"{type(self).__name__}: dim={dim} is out of range for an "
                             f"input of shape {tuple(a.shape)} (expected {-ndim} to {ndim - 1})")
        xp = K.array_module(K.device_of(a))
        if a.ndim == 0:
            return xp, a.shape, xp.ascontiguousarray(a).reshape(1, 1)
        moved = xp.moveaxis(a, dim, -1)
        # the row count from the shape: reshape(-1, 0) cannot infer it for an empty axis
        rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
        return xp, moved.shape, xp.ascontiguousarray(moved).reshape(rows, moved.shape[-1])

    def _unrows(self, xp, moved_shape, rows, dim):
        if len(moved_shape) == 0:
            return rows.reshape(())
        return xp.ascontiguousarray(xp.moveaxis(rows.reshape(moved_shape), -1, dim))

    def forward(self, x):
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            K.checks.check_float("x", x)  # raises, naming x and what it expected
        dim = self._axis(x.ndim)
        in_dtype = x.dtype
        if self.dtype is not None and x.dtype != self.dtype:
            if np.dtype(x.dtype).kind != "f":
                raise TypeError(f"{type(self).__name__}: x must be float32 or float64, got "
                                f"dtype {x.dtype}")
            x = x.astype(self.dtype)
        xp, moved_shape, rows = self._rows(x, dim)
        y_rows = getattr(K, f"{self._op}_forward")(rows)
        self.save_for_backward(y_rows, dim, in_dtype)
        return self._unrows(xp, moved_shape, y_rows, dim)

    def backward(self, grad_y):
        y_rows, dim, in_dtype = self.saved_tensors()
        xp, moved_shape, g_rows = self._rows(grad_y, dim, "grad_y")
        if g_rows.shape != y_rows.shape:
            raise ValueError(f"{type(self).__name__}: grad_y has shape {tuple(grad_y.shape)}, "
                             f"which does not match the forward output")
        grad_rows = getattr(K, f"{self._op}_backward")(g_rows, y_rows)
        return self._unrows(xp, moved_shape, grad_rows, dim).astype(in_dtype, copy=False)

    def extra_repr(self):
        dtype = "" if self.dtype is None else f", dtype={self.dtype}"
        return f"dim={self.dim}{dtype}"


class Softmax(_AlongDim):
    """exp(x) / sum(exp(x)) along ``dim`` (None: torch's implicit axis, with its warning)."""
    _op = "softmax"


class LogSoftmax(_AlongDim):
    """x - log(sum(exp(x))) along ``dim`` (None: torch's implicit axis, with its warning)."""
    _op = "log_softmax"
