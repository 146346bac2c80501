"""2-D convolution layers over NCHW arrays, on the conv kernels.

Conv2d:           x (N, C, H, W), weight (OC, C/groups, KH, KW), bias (OC,) -> y (N, OC, OH, OW)
                  OH = (H + 2*pad_h - dil_h*(KH-1) - 1) // stride_h + 1   (same for OW)
ConvTranspose2d:  x (N, C, H, W), weight (C, OC/groups, KH, KW), bias (OC,) -> y (N, OC, OH, OW)
                  OH = (H-1)*stride_h - 2*pad_h + dil_h*(KH-1) + output_padding_h + 1

Both keep their input for the backward pass; parameter gradients of frozen parameters are
not computed.
"""
from __future__ import annotations

import kernels as K
from kernels.checks import pair

from . import init
from ._checks import check_input, new_parameter_array, place
from .module import Module, Parameter

__all__ = ["Conv2d", "ConvTranspose2d"]


def _check_channels(in_channels, out_channels, groups):
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                    ("groups", groups)):
        if isinstance(v, bool) or int(v) != v or v <= 0:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")


def _check_padding_mode(padding_mode):
    if padding_mode != "zeros":
        raise ValueError(f"padding_mode: only 'zeros' is implemented, got {padding_mode!r}")


class _ConvBase(Module):
    """What Conv2d and ConvTranspose2d share; each names its kernel pair and arguments."""

    _forward_kernel = _backward_kernel = None  # set by the subclass

    def forward(self, x):
        check_input(self, x, ndims=(4,), channels=self.in_channels)
        self.save_for_backward(x)
        return type(self)._forward_kernel(x, self.weight.data, self._bias(), **self._conv_args())

    def backward(self, grad_y, input_grad=True):
        """dL/dx, or None with ``input_grad=False`` (its kernel is then not run at all)."""
        x = self.saved_tensors()
        grad_x, grad_w, grad_b = type(self)._backward_kernel(
            grad_y, x, self.weight.data, **self._conv_args(), **self._needs(input_grad))
        self._accumulate(grad_w, grad_b)
        return grad_x

    def _make_parameters(self, weight_shape, bias, device, dtype):
        self.weight = Parameter(new_parameter_array(weight_shape, dtype))
        self.bias = (Parameter(new_parameter_array((self.out_channels,), dtype))
                     if bias else None)
        self.reset_parameters()
        place(self, device)

    def reset_parameters(self, generator=None):
        """torch's default: kaiming_uniform_(a=sqrt(5)) weight, U(+-1/sqrt(fan_in)) bias."""
        init._default_layer_init(self.weight, self.bias, generator)

    def _needs(self, input_grad=True):
        return dict(need_input=bool(input_grad), need_weight=self.weight.requires_grad,
                    need_bias=self.bias is not None and self.bias.requires_grad)

    def _accumulate(self, grad_w, grad_b):
        if grad_w is not None and self.weight.requires_grad:
            self.weight.accumulate(grad_w)
        if grad_b is not None and self.bias is not None and self.bias.requires_grad:
            self.bias.accumulate(grad_b)

    def _bias(self):
        return None if self.bias is None else self.bias.data


class Conv2d(_ConvBase):
    """2-D cross-correlation with torch's arguments; ``padding``: int, pair, "same" or "valid"."""

    _forward_kernel = staticmethod(K.conv2d_forward)
    _backward_kernel = staticmethod(K.conv2d_backward)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        _check_padding_mode(padding_mode)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride = pair("stride", stride)
        self.dilation = pair("dilation", dilation)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got "
                                 f"{padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = pair("padding", padding, positive=False)
        self.padding_mode = padding_mode
        self._make_parameters((out_channels, in_channels // groups) + self.kernel_size, bias,
                              device, dtype)

    def _conv_args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class ConvTranspose2d(_ConvBase):
    """Transposed 2-D convolution (Conv2d's input gradient as a layer), torch's arguments."""

    _forward_kernel = staticmethod(K.conv_transpose2d_forward)
    _backward_kernel = staticmethod(K.conv_transpose2d_backward)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        _check_padding_mode(padding_mode)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride = pair("stride", stride)
        self.padding = pair("padding", padding, positive=False)
        self.output_padding = pair("output_padding", output_padding, positive=False)
        self.dilation = pair("dilation", dilation)
        for i in range(2):
            if self.output_padding[i] >= max(self.stride[i], self.dilation[i]):
                raise ValueError(f"output_padding={self.output_padding} must be smaller than "
                                 f"stride={self.stride} or dilation={self.dilation}")
        self.padding_mode = padding_mode
        self._make_parameters((in_channels, out_channels // groups) + self.kernel_size, bias,
                              device, dtype)

    def _conv_args(self):
        return dict(stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
