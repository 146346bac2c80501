"""Build the PyTorch twin of one of our modules: same layers, same child names, same forward.

Used to check whole models against autograd: load our state_dict into the twin (strict, so
keys and shapes must agree), run both on the same input, compare outputs and gradients.
Only imported by tests that skip without torch.
"""
from collections import OrderedDict

import torch
import torch.nn as tnn

import nn
from nn import models


class Heaviside(tnn.Module):
    def forward(self, x):
        return (x > 0).to(x.dtype) + 0 * x  # a graph node whose gradient is 0


def _leaf(m):
    if isinstance(m, nn.Linear):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if isinstance(m, nn.Conv2d):
        return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                          m.dilation, m.groups, bias=m.bias is not None)
    if isinstance(m, nn.ConvTranspose2d):
        return tnn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                   m.padding, m.output_padding, m.groups,
                                   bias=m.bias is not None, dilation=m.dilation)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = tnn.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else tnn.BatchNorm2d
        return cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.AvgPool2d):
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                             count_include_pad=m.count_include_pad)
    if isinstance(m, nn.GlobalAvgPool2d):
        return tnn.AdaptiveAvgPool2d(1)
    if isinstance(m, nn.Flatten):
        return tnn.Flatten(m.start_dim, m.end_dim)
    if isinstance(m, nn.Unflatten):
        return tnn.Unflatten(m.dim, m.unflattened_size)
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    if isinstance(m, nn.LeakyReLU):
        return tnn.LeakyReLU(m.negative_slope)
    if isinstance(m, nn.ELU):
        return tnn.ELU(m.alpha)
    if isinstance(m, nn.Softplus):
        return tnn.Softplus(m.beta, m.threshold)
    if isinstance(m, nn.Step):
        return Heaviside()
    if isinstance(m, nn.GELU):
        return tnn.GELU(approximate=m.approximate)
    if isinstance(m, nn.ReLU6):
        return tnn.ReLU6()
    if isinstance(m, nn.Hardtanh):
        return tnn.Hardtanh(m.min_val, m.max_val)
    if isinstance(m, nn.PReLU):
        return tnn.PReLU(m.num_parameters, m.init)
    simple = {nn.ReLU: tnn.ReLU, nn.Tanh: tnn.Tanh, nn.Sigmoid: tnn.Sigmoid, nn.SiLU: tnn.SiLU,
              nn.Mish: tnn.Mish, nn.Identity: tnn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    raise TypeError(f"no torch twin for {type(m).__name__}")


def _residual(t, x):
    return t.block(x) + (t.shortcut(x) if hasattr(t, "shortcut") else x)


def _basic_block(t, x):
    h = t.bn2(t.conv2(t.relu1(t.bn1(t.conv1(x)))))
    return t.relu2(h + (t.downsample(x) if hasattr(t, "downsample") else x))


def _resnet(t, x):
    h = t.relu(t.bn1(t.conv1(x)))
    for name, child in t.named_children():
        if name.startswith("layer"):
            h = child(h)
    return t.fc(t.flatten(t.avgpool(h)))


def _unet(t, x):
    skips, h = [], x
    for enc, pool in zip(t.encoders, t.pools):
        h = enc(h)
        skips.append(h)
        h = pool(h)
    h = t.bottleneck(h)
    for i in reversed(range(len(t.ups))):
        h = t.decoders[i](torch.cat([t.ups[i](h), skips[i]], dim=1))
    return t.head(h)


FORWARDS = {
    models.MLP: lambda t, x: t.layers(t.flatten(x)),
    models.LeNet5: lambda t, x: t.classifier(t.flatten(t.features(x))),
    models.SmallVGG: lambda t, x: t.classifier(t.flatten(t.features(x))),
    models.BasicBlock: _basic_block,
    models.ResNet: _resnet,
    models.UNet: _unet,
    models.Autoencoder: lambda t, x: t.decoder(t.encoder(x)),
    nn.Residual: _residual,
}


class Twin(tnn.Module):
    def __init__(self, children, forward):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)
        self._forward = forward

    def forward(self, x):
        return self._forward(self, x)


def twin(m):
    """The torch module mirroring ``m`` (float64 like ours after ``.double()``)."""
    children = OrderedDict((name, twin(c)) for name, c in m.named_children())
    if isinstance(m, nn.Sequential):
        return tnn.Sequential(children)
    if isinstance(m, nn.ModuleList):
        return tnn.ModuleList(children.values())
    if type(m) in FORWARDS:
        return Twin(children, FORWARDS[type(m)])
    return _leaf(m)
