"""Layer cases shared by the nn layer tests: how to build each layer and what to feed it.

A case builds a float64 layer on the CPU; ``shape`` is its input on the CPU and
``cuda_shape`` (with ``cuda_build``, a smaller layer) a smaller one for the simulator, which
runs each GPU thread in Python: a gradient check costs two forwards per input and parameter
element there.
``kinks`` are input values where the layer is not differentiable (inputs are sampled away
from them); ``prepare(layer, rng, x_shape)`` sets extra state (fixed masks, statistics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import kernels as K
import nn
from nn.gradcheck import sample_away_from_kinks


@dataclass
class Case:
    id: str
    build: Callable
    shape: tuple
    cuda_shape: tuple = None
    kinks: tuple = ()
    prepare: Callable = None
    mode: str = "train"
    cuda_build: Callable = None

    def input_shape(self, device):
        return self.cuda_shape if (device == "cuda" and self.cuda_shape) else self.shape

    def builder(self, device):
        return self.cuda_build if (device == "cuda" and self.cuda_build) else self.build


def _dropout_mask(layer, rng, shape):
    layer.set_mask(rng.random(shape) >= layer.p)


def _bn_stats(layer, rng, shape):
    """Non-trivial affine parameters and running statistics, so eval mode tests something."""
    c = layer.num_features
    if layer.affine:
        layer.weight.data[...] = rng.uniform(0.5, 1.5, c)
        layer.bias.data[...] = rng.standard_normal(c)
    if layer.track_running_stats:
        layer.running_mean[...] = rng.standard_normal(c)
        layer.running_var[...] = rng.uniform(0.5, 2.0, c)


def _linear_block(n):
    return nn.Sequential(nn.Linear(n, n), nn.Tanh(), nn.Linear(n, n))


CASES = [
    # fully connected and shape layers (no kernels: array-module glue only)
    Case("linear", lambda: nn.Linear(3, 2), (4, 3)),
    Case("linear_nobias_3d", lambda: nn.Linear(3, 2, bias=False), (2, 2, 3)),
    Case("linear_1d", lambda: nn.Linear(3, 2), (3,)),
    Case("identity", lambda: nn.Identity(), (2, 3)),
    Case("flatten", lambda: nn.Flatten(), (2, 3, 2)),
    Case("flatten_0_1", lambda: nn.Flatten(0, 1), (2, 3, 2)),
    Case("unflatten", lambda: nn.Unflatten(1, (2, 3)), (2, 6)),
    # activations
    Case("relu", lambda: nn.ReLU(), (3, 4), (2, 2), kinks=(0.0,)),
    Case("leaky_relu", lambda: nn.LeakyReLU(0.1), (3, 4), (2, 2), kinks=(0.0,)),
    Case("elu", lambda: nn.ELU(alpha=0.7), (3, 4), (2, 2), kinks=(0.0,)),
    Case("tanh", lambda: nn.Tanh(), (3, 4), (2, 2)),
    Case("sigmoid", lambda: nn.Sigmoid(), (3, 4), (2, 2)),
    Case("softplus", lambda: nn.Softplus(beta=2.0, threshold=3.0), (3, 4), (2, 2),
         kinks=(1.5,)),
    Case("step", lambda: nn.Step(), (3, 4), (2, 2), kinks=(0.0,)),
    Case("gelu", lambda: nn.GELU(), (3, 4), (2, 2)),
    Case("gelu_tanh", lambda: nn.GELU(approximate="tanh"), (3, 4), (2, 2)),
    Case("silu", lambda: nn.SiLU(), (3, 4), (2, 2)),
    Case("mish", lambda: nn.Mish(), (3, 4), (2, 2)),
    Case("hardtanh", lambda: nn.Hardtanh(-0.5, 2.0), (3, 4), (2, 2), kinks=(-0.5, 2.0)),
    Case("relu6", lambda: nn.ReLU6(), (3, 4), (2, 2), kinks=(0.0, 6.0)),
    Case("prelu", lambda: nn.PReLU(), (3, 4), (2, 2), kinks=(0.0,)),
    Case("prelu_channels", lambda: nn.PReLU(3, init=0.1), (2, 3, 2), (1, 3, 2), kinks=(0.0,)),
    Case("softmax", lambda: nn.Softmax(), (3, 5), (2, 2)),
    Case("softmax_dim1_3d", lambda: nn.Softmax(dim=1), (2, 3, 2), (1, 2, 2)),
    Case("log_softmax", lambda: nn.LogSoftmax(dim=-1), (3, 5), (2, 2)),
    Case("log_softmax_dim0", lambda: nn.LogSoftmax(dim=0), (3, 2, 2), (2, 1, 2)),
    # convolutions
    Case("conv2d", lambda: nn.Conv2d(2, 3, 3), (2, 2, 5, 5), (1, 1, 2, 3),
         cuda_build=lambda: nn.Conv2d(1, 1, 2)),
    Case("conv2d_stride_pad", lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1), (2, 2, 5, 5),
         (1, 1, 3, 3), cuda_build=lambda: nn.Conv2d(1, 1, 3, stride=2, padding=1)),
    Case("conv2d_dilation_nobias", lambda: nn.Conv2d(1, 2, 2, dilation=2, bias=False),
         (1, 1, 5, 4), (1, 1, 3, 3)),
    Case("conv2d_groups", lambda: nn.Conv2d(4, 2, (1, 3), groups=2, padding=(0, 1)),
         (1, 4, 3, 3), (1, 2, 1, 3), cuda_build=lambda: nn.Conv2d(2, 2, (1, 2), groups=2)),
    Case("conv2d_same", lambda: nn.Conv2d(1, 2, (3, 2), padding="same"), (2, 1, 4, 4),
         (1, 1, 2, 3)),
    Case("conv_transpose2d", lambda: nn.ConvTranspose2d(2, 1, 3, stride=2, padding=1,
                                                        output_padding=1),
         (1, 2, 3, 3), (1, 1, 2, 2),
         cuda_build=lambda: nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1)),
    Case("conv_transpose2d_groups", lambda: nn.ConvTranspose2d(2, 2, 2, groups=2, bias=False),
         (2, 2, 2, 3), (1, 2, 1, 2)),
    # pooling and upsampling
    Case("max_pool2d", lambda: nn.MaxPool2d(2), (2, 2, 4, 4), (1, 1, 2, 4)),
    Case("max_pool2d_pad", lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 2, 5, 5),
         (1, 1, 3, 3)),
    Case("avg_pool2d", lambda: nn.AvgPool2d(2), (2, 2, 4, 4), (1, 1, 2, 4)),
    Case("avg_pool2d_exclude_pad", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         (1, 2, 5, 5), (1, 1, 3, 3)),
    Case("global_avg_pool2d", lambda: nn.GlobalAvgPool2d(), (2, 3, 2, 3), (1, 2, 2, 2)),
    Case("upsample", lambda: nn.Upsample(scale_factor=2), (1, 2, 2, 3), (1, 1, 1, 2)),
    Case("upsample_size", lambda: nn.Upsample(size=(4, 3)), (1, 1, 2, 1)),
    # normalisation and dropout, in both modes (array-module glue only)
    Case("batch_norm1d", lambda: nn.BatchNorm1d(3), (4, 3), prepare=_bn_stats),
    Case("batch_norm1d_eval", lambda: nn.BatchNorm1d(3), (4, 3), prepare=_bn_stats,
         mode="eval"),
    Case("batch_norm1d_ncl", lambda: nn.BatchNorm1d(2), (3, 2, 2), prepare=_bn_stats),
    Case("batch_norm2d", lambda: nn.BatchNorm2d(2), (2, 2, 2, 3), prepare=_bn_stats),
    Case("batch_norm2d_eval", lambda: nn.BatchNorm2d(2), (2, 2, 2, 3), prepare=_bn_stats,
         mode="eval"),
    Case("batch_norm2d_no_affine", lambda: nn.BatchNorm2d(2, affine=False), (2, 2, 2, 2),
         prepare=_bn_stats),
    Case("batch_norm2d_untracked_eval", lambda: nn.BatchNorm2d(2, track_running_stats=False),
         (2, 2, 2, 2), prepare=_bn_stats, mode="eval"),
    Case("dropout", lambda: nn.Dropout(0.4), (3, 4), prepare=_dropout_mask),
    Case("dropout_eval", lambda: nn.Dropout(0.4), (3, 4), mode="eval"),
    # containers
    Case("sequential", lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
         (2, 3), (1, 3), cuda_build=lambda: nn.Sequential(nn.Linear(3, 2), nn.Tanh(),
                                                         nn.Linear(2, 1))),
    Case("residual_identity", lambda: nn.Residual(_linear_block(3)), (2, 3), (1, 2),
         cuda_build=lambda: nn.Residual(_linear_block(2))),
    Case("residual_projection", lambda: nn.Residual(nn.Sequential(nn.Linear(3, 2), nn.Tanh()),
                                                    nn.Linear(3, 2, bias=False)), (2, 3),
         (1, 3)),
    Case("concat", lambda: nn.Concat(nn.Conv2d(1, 2, 1), nn.Identity(),
                                     nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Tanh())),
         (1, 1, 3, 3), (1, 1, 2, 2),
         cuda_build=lambda: nn.Concat(nn.Conv2d(1, 2, 1), nn.Identity(), nn.Tanh())),
    Case("add", lambda: nn.Add(nn.Sequential(nn.Linear(3, 3), nn.Tanh()), nn.Identity(),
                               nn.Linear(3, 3, bias=False)), (2, 3), (1, 3)),
]


def build(case, device="cpu", dtype=np.float64, seed=0, sized_for=None):
    """The case's layer in ``dtype`` on ``device`` with its input, prepared and in its mode.

    ``sized_for``: take the layer and input shape meant for that device (default ``device``),
    e.g. the simulator's small configuration on the CPU, to compare the two devices.
    """
    sized_for = device if sized_for is None else sized_for
    nn.manual_seed(seed)
    rng = np.random.default_rng(seed)
    layer = case.builder(sized_for)().to(dtype=dtype)
    shape = case.input_shape(sized_for)
    if case.prepare is not None:
        case.prepare(layer, rng, shape)
    layer.to(device)
    layer.train(case.mode == "train")
    x = sample_away_from_kinks(rng, shape, kinks=case.kinks, margin=0.05, dtype=dtype)
    return layer, K.to_device(x, device)
