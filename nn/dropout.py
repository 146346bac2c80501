"""Inverted dropout: y = x * keep / (1 - p) in training, y = x in evaluation.

``keep`` is a Bernoulli(1 - p) mask.  On the CPU it is drawn from an explicit NumPy
``Generator`` (the one given to the layer, else :func:`nn.init.default_generator`, which
``nn.init.manual_seed`` resets).  On the GPU the generator only draws a seed and the mask is
made on the device (``kernels.dropout_mask``, a counter-based hash): copying a host mask over
every step would cost a transfer per layer and batch.  Scaling by 1/(1 - p)
keeps the expected activation unchanged, so evaluation needs no rescaling.
``grad_x = grad_y * keep / (1 - p)`` with the same mask.  ``set_mask`` fixes the mask, which
makes the layer deterministic (for gradient checks).
"""
from __future__ import annotations

import numpy as np

import kernels as K

from . import init
from .module import Module

__all__ = ["Dropout"]


def _times(a, mask):
    """``a * mask`` as an array: NumPy's ``*`` turns two 0-d arrays into a NumPy scalar,
    which the next layer's checks refuse."""
    xp = K.array_module(K.device_of(a))
    return xp.multiply(a, mask, out=xp.empty_like(a))


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5, generator=None):
        super().__init__()
        if isinstance(p, bool) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p: dropout probability must be in [0, 1], got {p!r}")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator: expected a numpy.random.Generator, got "
                            f"{type(generator).__name__}")
        self.p = float(p)
        self.generator = generator
        self.fixed_mask = None

    def set_mask(self, keep):
        """Use this boolean ``keep`` mask (True = kept) for every forward; None draws again."""
        self.fixed_mask = None if keep is None else K.to_host(keep).astype(bool)

    def _keep(self, shape):
        if self.fixed_mask is not None:
            if self.fixed_mask.shape != tuple(shape):
                raise ValueError(f"Dropout: the fixed mask has shape {self.fixed_mask.shape} "
                                 f"but the input has shape {tuple(shape)}")
            return self.fixed_mask
        gen = self.generator if self.generator is not None else init.default_generator()
        return gen.random(shape) >= self.p

    def forward(self, x):
        if not hasattr(x, "dtype") or np.dtype(x.dtype).kind != "f":
            raise TypeError(f"Dropout: x must be a float array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if not self.training or (self.p == 0.0 and self.fixed_mask is None):
            self.save_for_backward(None)
            return x
        device = K.device_of(x)
        if device != "cpu" and self.fixed_mask is None:
            gen = self.generator if self.generator is not None else init.default_generator()
            seed = int(gen.integers(0, 2 ** 63))
            mask = K.dropout_mask(x.shape, self.p, seed, x.dtype, device)
        else:
            scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
            mask = (self._keep(x.shape) * scale).astype(x.dtype)
            mask = K.to_device(mask, device)
        self.save_for_backward(mask)
        return _times(x, mask)

    def backward(self, grad_y):
        mask = self.saved_tensors()
        return grad_y if mask is None else _times(grad_y, mask)

    def extra_repr(self):
        return f"p={self.p}"
