"""Batch normalisation: BatchNorm1d on (N, C) or (N, C, L), BatchNorm2d on (N, C, H, W).

Statistics are per channel c over the other axes (m values each):

    mean_c = sum(x) / m,   var_c = sum((x - mean_c)^2) / m          (biased: used to normalise)
    x_hat  = (x - mean_c) / sqrt(var_c + eps),   y = weight_c * x_hat + bias_c

Training (or ``track_running_stats=False``) uses the batch's statistics; training also
updates the running ones with the unbiased variance, as torch does:

    running = (1 - momentum) * running + momentum * batch_stat     (momentum=None: cumulative
                                                                    average over batches)
Evaluation uses ``running_mean`` / ``running_var``.  Backward, with g = grad_y * weight:

    batch stats:    grad_x = (g - mean_c(g) - x_hat * mean_c(g * x_hat)) / sqrt(var_c + eps)
    running stats:  grad_x = g / sqrt(running_var_c + eps)
    grad_weight_c = sum(grad_y * x_hat),   grad_bias_c = sum(grad_y)

The reductions are array-module glue (no kernel of their own).
"""
from __future__ import annotations

import numpy as np

import kernels as K

from . import init
from ._checks import check_input, new_parameter_array, place
from .module import Module, Parameter

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    _ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None):
        super().__init__()
        self.num_features = int(num_features)
        # torch refuses eps <= 0 in a training forward only; here at construction, before a
        # constant channel in evaluation could divide by sqrt(0 + eps) = 0.
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
            raise TypeError(f"eps: expected a positive number, got {type(eps).__name__}")
        if not float(eps) > 0 or not np.isfinite(float(eps)):
            raise ValueError(f"eps: expected a positive finite number, got {eps!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        shape = (self.num_features,)
        if self.affine:
            self.weight = Parameter(new_parameter_array(shape, dtype))
            self.bias = Parameter(new_parameter_array(shape, dtype))
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            dt = new_parameter_array((), dtype).dtype
            self.register_buffer("running_mean", np.zeros(shape, dtype=dt))
            self.register_buffer("running_var", np.ones(shape, dtype=dt))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.reset_parameters()
        place(self, device)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        """torch's default: running stats reset, weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def _check(self, x):
        device = check_input(self, x, ndims=self._ndims, channels=self.num_features)
        if not self.affine and self.track_running_stats:
            if x.dtype != self.running_mean.dtype:
                raise TypeError(f"{type(self).__name__}: x has dtype {x.dtype} but "
                                f"running_mean has dtype {self.running_mean.dtype}")
            K.device_of(x, self.running_mean, names=["x", "running_mean"])
        return device

    def forward(self, x):
        device = self._check(x)
        xp = K.array_module(device)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        count = x.size // self.num_features
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            if self.training and count <= 1:
                raise ValueError(f"{type(self).__name__}: training needs more than one value "
                                 f"per channel, got input shape {tuple(x.shape)}")
            mean = x.mean(axis=axes)
            centred = x - mean.reshape(shape)
            var = (centred * centred).mean(axis=axes)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, count)
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - mean.reshape(shape)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centred * inv_std.reshape(shape)
        self.save_for_backward(x_hat, inv_std, use_batch)
        if not self.affine:
            return x_hat
        return x_hat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape)

    def _update_running(self, mean, var, count):
        self.num_batches_tracked += 1
        if self.momentum is None:
            # On the buffer's device: float() of it would stall a GPU every batch.
            factor = 1.0 / self.num_batches_tracked
        else:
            factor = self.momentum
        unbiased = var * (count / (count - 1))
        # In place, so that anything holding these arrays (e.g. a state dict view) stays in step.
        self.running_mean *= 1.0 - factor
        self.running_mean += factor * mean
        self.running_var *= 1.0 - factor
        self.running_var += factor * unbiased

    def backward(self, grad_y):
        x_hat, inv_std, use_batch = self.saved_tensors()
        if grad_y.shape != x_hat.shape:
            raise ValueError(f"{type(self).__name__}: grad_y has shape {tuple(grad_y.shape)}, "
                             f"expected {tuple(x_hat.shape)}")
        axes = (0,) + tuple(range(2, grad_y.ndim))
        shape = (1, self.num_features) + (1,) * (grad_y.ndim - 2)
        if self.affine:
            if self.weight.requires_grad:
                self.weight.accumulate((grad_y * x_hat).sum(axis=axes))
            if self.bias.requires_grad:
                self.bias.accumulate(grad_y.sum(axis=axes))
            g = grad_y * self.weight.data.reshape(shape)
        else:
            g = grad_y
        if use_batch:
            g_mean = g.mean(axis=axes, keepdims=True)
            gx_mean = (g * x_hat).mean(axis=axes, keepdims=True)
            g = g - g_mean - x_hat * gx_mean
        return g * inv_std.reshape(shape)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) inputs, per channel C."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) inputs, per channel C."""
    _ndims = (4,)
