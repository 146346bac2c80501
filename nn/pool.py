"""Pooling and upsampling layers over NCHW arrays, on the pool kernels.

MaxPool2d / AvgPool2d:  (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*pad - KH) // stride + 1
GlobalAvgPool2d:        (N, C, H, W) -> (N, C, 1, 1), the mean over each plane
                        (torch's ``AdaptiveAvgPool2d(1)``; follow with Flatten for (N, C))
Upsample (nearest):     (N, C, H, W) -> (N, C, s*H, s*W), each pixel repeated s x s times

MaxPool2d keeps the argmax indices for its backward; the others keep only the input shape.
"""
from __future__ import annotations

import math
import numbers

import kernels as K
from kernels.checks import pair

from ._checks import check_input
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Upsample"]


def _window(kernel_size, stride, padding):
    kernel_size = pair("kernel_size", kernel_size)
    stride = kernel_size if stride is None else pair("stride", stride)
    padding = pair("padding", padding, positive=False)
    for k, p in zip(kernel_size, padding):
        if p > k // 2:
            raise ValueError(f"padding={padding} must be at most half of "
                             f"kernel_size={kernel_size}")
    return kernel_size, stride, padding


def _unsupported(name, value, default):
    if value != default:
        raise ValueError(f"{name}={value!r} is not implemented (only {default!r})")


class MaxPool2d(Module):
    """Maximum over each window (padding counts as -inf); torch's argument order."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        _unsupported("dilation", dilation, 1)
        _unsupported("return_indices", return_indices, False)
        _unsupported("ceil_mode", ceil_mode, False)
        self.kernel_size, self.stride, self.padding = _window(kernel_size, stride, padding)

    def forward(self, x):
        check_input(self, x, ndims=(4,))
        y, indices = K.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                          return_indices=True)
        self.save_for_backward(indices, tuple(x.shape))
        return y

    def backward(self, grad_y):
        indices, x_shape = self.saved_tensors()
        return K.max_pool2d_backward(grad_y, indices, x_shape, self.kernel_size, self.stride,
                                     self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Mean over each window; ``count_include_pad``: whether padding counts in the divisor."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        _unsupported("ceil_mode", ceil_mode, False)
        _unsupported("divisor_override", divisor_override, None)
        self.kernel_size, self.stride, self.padding = _window(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        check_input(self, x, ndims=(4,))
        self.save_for_backward(tuple(x.shape))
        return K.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                    count_include_pad=self.count_include_pad)

    def backward(self, grad_y):
        x_shape = self.saved_tensors()
        return K.avg_pool2d_backward(grad_y, x_shape, self.kernel_size, self.stride,
                                     self.padding, count_include_pad=self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, count_include_pad={self.count_include_pad}")


class GlobalAvgPool2d(Module):
    """Mean over each (H, W) plane: (N, C, H, W) -> (N, C, 1, 1), like AdaptiveAvgPool2d(1)."""

    def forward(self, x):
        check_input(self, x, ndims=(4,))
        self.save_for_backward(tuple(x.shape))
        return K.global_avg_pool2d_forward(x)

    def backward(self, grad_y):
        return K.global_avg_pool2d_backward(grad_y, self.saved_tensors())


class Upsample(Module):
    """Nearest-neighbour upsampling by integer factors (torch's signature: ``size`` first).

    Give ``scale_factor`` (an int, or a pair ``(sh, sw)`` of ints) or ``size`` (an int or a
    pair) that is an integer multiple of the input's height and width.
    """

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        if mode != "nearest":
            raise ValueError(f"mode: only 'nearest' is implemented, got {mode!r}")
        if align_corners is not None:
            raise ValueError("align_corners applies to interpolating modes, not 'nearest'")
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample: give exactly one of size and scale_factor")
        self.size = None if size is None else pair("size", size)
        self.scale_factor = None
        if scale_factor is not None:
            factors = (scale_factor if isinstance(scale_factor, (tuple, list))
                       else (scale_factor, scale_factor))
            # NaN and inf are checked first: int() of them raises its own, unnamed error
            if any(isinstance(f, bool) or not isinstance(f, numbers.Real)
                   or not math.isfinite(f) or int(f) != f for f in factors):
                raise ValueError(f"scale_factor: only finite integer factors are implemented, "
                                 f"got {scale_factor!r}")
            self.scale_factor = pair("scale_factor", tuple(int(f) for f in factors))
        self.mode = mode

    def _factors(self, x):
        if self.scale_factor is not None:
            return self.scale_factor
        (h, w), (oh, ow) = x.shape[2:], self.size
        if h == 0 or w == 0:
            raise ValueError(f"Upsample: x must have non-empty H and W, got shape "
                             f"{tuple(x.shape)}")
        if oh % h or ow % w:
            raise ValueError(f"Upsample: size={self.size} is not an integer multiple of the "
                             f"input's (H, W) = ({h}, {w})")
        return oh // h, ow // w

    def forward(self, x):
        check_input(self, x, ndims=(4,))
        factors = self._factors(x)
        self.save_for_backward(factors)
        return K.upsample_nearest2d_forward(x, factors)

    def backward(self, grad_y):
        return K.upsample_nearest2d_backward(grad_y, self.saved_tensors())

    def extra_repr(self):
        if self.size is not None:
            return f"size={self.size}, mode={self.mode!r}"
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"
