"""``summary(model, input_shape)``: a per-layer table of shapes, units, weights and connections.

It runs one forward pass on a batch of one zero sample, in evaluation mode (so BatchNorm's
running statistics and Dropout's generator are untouched), recording every leaf module's
output as it is called; afterwards the modes are restored and no saved state is left behind.
Per layer, per sample:

* units:        activations = elements of the layer's output
* weights:      trainable parameters of the layer
* connections:  multiply-adds: Linear ``in * out`` (per row), Conv2d
  ``OC * C/groups * KH * KW * OH * OW``, ConvTranspose2d ``C * OC/groups * KH * KW * H * W``,
  BatchNorm one per output element; pooling counts the inputs each output reads
  (``KH * KW``, or ``H * W`` for the global pool); elementwise and shape layers 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import kernels

from .conv import Conv2d, ConvTranspose2d
from .linear import Linear
from .norm import _BatchNorm
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    name: str
    type: str
    output_shape: tuple
    units: int
    weights: int
    connections: int


@dataclass
class ModelSummary:
    input_shape: tuple
    layers: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0

    @property
    def total_units(self):
        return sum(row.units for row in self.layers)

    @property
    def total_weights(self):
        return sum(row.weights for row in self.layers)

    @property
    def total_connections(self):
        return sum(row.connections for row in self.layers)

    def table(self):
        """The summary as a fixed-width text table."""
        head = ("Layer (type)", "Output shape", "Units", "Weights", "Connections")
        rows = [(f"{r.name} ({r.type})", str(r.output_shape), f"{r.units:,}",
                 f"{r.weights:,}", f"{r.connections:,}") for r in self.layers]
        total = ("Total", "", f"{self.total_units:,}", f"{self.total_weights:,}",
                 f"{self.total_connections:,}")
        widths = [max(len(r[i]) for r in [head, total, *rows]) for i in range(5)]

        def line(r):
            return "  ".join(r[i].ljust(widths[i]) if i < 2 else r[i].rjust(widths[i])
                             for i in range(5))

        rule = "-" * len(line(head))
        out = [f"Input shape: {(-1, *self.input_shape)} (per sample: units, weights and "
               f"connections = multiply-adds)", rule, line(head), rule]
        out += [line(r) for r in rows]
        out += [rule, line(total), rule,
                f"Parameters: {self.total_params:,} ({self.trainable_params:,} trainable, "
                f"{self.total_params - self.trainable_params:,} frozen)"]
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _connections(module, in_shape, out_shape):
    out_elems = math.prod(out_shape[1:])
    if isinstance(module, Linear):
        return out_elems * module.in_features
    if isinstance(module, Conv2d):
        kh, kw = module.kernel_size
        return out_elems * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, ConvTranspose2d):
        kh, kw = module.kernel_size
        return (math.prod(in_shape[1:]) * (module.out_channels // module.groups) * kh * kw)
    if isinstance(module, _BatchNorm):
        return out_elems
    if isinstance(module, (MaxPool2d, AvgPool2d)):
        return out_elems * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, GlobalAvgPool2d):
        return math.prod(in_shape[1:])
    return 0


def summary(model, input_shape, device=None, verbose=True):
    """Print (``verbose``) and return a :class:`ModelSummary` of ``model`` on one sample.

    ``input_shape`` excludes the batch axis, e.g. ``(1, 28, 28)``; ``device`` defaults to the
    model's.  The input dtype is the model's parameter dtype (float32 when it has none).
    """
    input_shape = (int(input_shape),) if np.isscalar(input_shape) else tuple(input_shape)
    device = model.device if device is None else device
    dtype = next((p.dtype for p in model.parameters()), np.dtype(np.float32))
    names = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name or type(m).__name__)
    leaves = list({id(m): m for m in model.modules()
                   if not m._modules or m._parameters}.values())
    records = []

    def hook(m, original):
        def forward(*args, **kwargs):
            y = original(*args, **kwargs)
            records.append((m, tuple(args[0].shape) if args else (), tuple(y.shape)))
            return y
        return forward

    modes = [(m, m.training) for m in model.modules()]
    for m in leaves:
        object.__setattr__(m, "forward", hook(m, m.forward))
    try:
        model.eval()
        x = kernels.to_device(np.zeros((1, *input_shape), dtype=dtype), device)
        model(x)
    finally:
        for m in leaves:
            m.__dict__.pop("forward", None)
        for m, mode in modes:
            object.__setattr__(m, "training", mode)
            object.__setattr__(m, "_saved", None)

    result = ModelSummary(input_shape=input_shape)
    for m, in_shape, out_shape in records:
        own = list(m._parameters.values())
        result.layers.append(LayerSummary(
            name=names[id(m)], type=type(m).__name__, output_shape=(-1, *out_shape[1:]),
            units=math.prod(out_shape[1:]),
            weights=sum(p.size for p in own if p.requires_grad),
            connections=_connections(m, in_shape, out_shape)))
    params = list(model.parameters())
    result.total_params = sum(p.size for p in params)
    result.trainable_params = sum(p.size for p in params if p.requires_grad)
    if verbose:
        print(result.table())
    return result
