"""Export a model to ONNX: ``export_onnx(model, example_input, path, opset=17)``.

The graph is built with the ``onnx`` package's helpers, one converter per layer class, in
the model's evaluation mode (Dropout is the identity, BatchNorm uses its running statistics):

| layer                                  | ONNX                                        |
|----------------------------------------|---------------------------------------------|
| Linear                                 | Gemm (2-D input), MatMul + Add otherwise    |
| Conv2d / ConvTranspose2d               | Conv / ConvTranspose                        |
| MaxPool2d / AvgPool2d / GlobalAvgPool2d| MaxPool / AveragePool / GlobalAveragePool   |
| Upsample (nearest)                     | Resize (nearest, asymmetric, floor)         |
| BatchNorm1d / BatchNorm2d              | BatchNormalization (batch statistics when   |
|                                        | running stats are off: ReduceMean...)       |
| ReLU, LeakyReLU, ELU, Tanh, Sigmoid    | Relu, LeakyRelu, Elu, Tanh, Sigmoid         |
| Softplus(beta, threshold), Step, GELU  | Softplus + Where, Greater + Cast, Erf       |
|                                        | (Gelu from opset 20; approximate='tanh':    |
|                                        | Tanh of the cubic before it)                |
| SiLU, Mish, Hardtanh / ReLU6, PReLU    | Sigmoid + Mul, Softplus + Tanh + Mul, Clip, |
|                                        | PRelu (slopes as (C, 1, ...))               |
| Softmax / LogSoftmax                   | Softmax / LogSoftmax                        |
| Flatten / Unflatten / Identity         | Flatten or Reshape / Reshape / Identity     |
| Dropout                                | Identity                                    |
| Sequential, Residual, Concat           | their children, Add, Concat                 |
| the zoo (MLP, LeNet5, SmallVGG,        | their forward written with the above        |
| BasicBlock, ResNet, UNet, Autoencoder) | (Add for residuals, Concat for U-Net skips) |

The first axis of the input and output is a dynamic batch dimension (``"N"``); the other
axes keep the example's sizes.  The example input is run through the layers alongside, which
gives every intermediate shape (Flatten, Upsample to a size); the graph's output shape is
checked against the model's own forward.  A module with no converter (a loss, a ModuleList, a
user-defined Module) raises :class:`OnnxExportError` naming it and its path in the model;
``register_onnx(cls)`` adds a converter for one's own layer.  The model is checked with
``onnx.checker`` (full check, with shape inference) and written atomically.
"""
from __future__ import annotations

import math
import os

import numpy as np

import kernels as K

from . import activation as A
from . import container as C
from . import models as M
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .linear import Flatten, Identity, Linear, Unflatten
from .module import Module
from .norm import BatchNorm1d, BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d, Upsample

__all__ = ["export_onnx", "register_onnx", "OnnxExportError", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
_MIN_OPSET = 13  # Softmax/LogSoftmax on any axis, Resize's current inputs


class OnnxExportError(ValueError):
    """A model (or one of its layers) cannot be written as ONNX; the message names it."""


_CONVERTERS = {}


def register_onnx(cls):
    """Decorator: ``@register_onnx(MyLayer) def convert(g, module, x, scope) -> y``.

    ``x`` and the returned ``y`` are tensor names; ``g.value(x)`` is the example's value
    there, ``g.node(op, inputs, **attrs)`` adds a node and returns its output's name,
    ``g.const(array)`` an initializer, ``g.call(child, x, scope)`` converts a child and
    ``g.run(module, x)`` records ``module``'s own output value for a node's output.
    """
    def deco(fn):
        _CONVERTERS[cls] = fn
        return fn
    return deco


def _converter(module):
    cls = type(module)
    if cls in _CONVERTERS:
        return _CONVERTERS[cls]
    # A subclass may reuse its parent's converter only if it computes the same forward.
    for base in cls.__mro__[1:]:
        if base in _CONVERTERS and cls.forward is base.forward:
            return _CONVERTERS[base]
    return None


class _Graph:
    """Nodes, initializers and, for every tensor name, the example's value there."""

    def __init__(self, dtype, opset):
        from onnx import helper

        self.helper = helper
        self.dtype, self.opset = np.dtype(dtype), opset
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self._values, self._used = [], [], {}, set()

    def fresh(self, hint):
        base = hint.replace("/", ".") or "t"
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def value(self, name):
        return self._values[name]

    def set_value(self, name, value):
        self._values[name] = value
        return name

    def const(self, array, hint="const"):
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self._values[name] = array
        return name

    def node(self, op, inputs, hint=None, value=None, **attrs):
        out = self.fresh(hint or op)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        if value is not None:
            self._values[out] = value
        return out

    def run(self, module, x):
        """``module``'s output on the example's value at ``x`` (for the node being added)."""
        return module(self.value(x))

    def call(self, module, x, scope):
        fn = _converter(module)
        if fn is None:
            where = f" at {scope!r}" if scope else ""
            raise OnnxExportError(f"cannot export {type(module).__name__}{where}: there is no "
                                  f"ONNX converter for this layer (register one with "
                                  f"nn.register_onnx({type(module).__name__}))")
        y = fn(self, module, x, scope)
        if y not in self._values:
            raise OnnxExportError(f"the converter of {type(module).__name__} at {scope!r} "
                                  f"recorded no value for its output")
        return y

    def scalar(self, v, hint="c"):
        return self.const(np.array(v, dtype=self.dtype), hint)


def _join(scope, name):
    return f"{scope}.{name}" if scope else name


def _host(a):
    return None if a is None else np.asarray(K.to_host(a))


# ---------------------------------------------------------------- activations
def _simple(op, **fixed):
    def convert(g, m, x, scope):
        attrs = {k: (getattr(m, v) if isinstance(v, str) else v) for k, v in fixed.items()}
        return g.node(op, [x], scope or op, g.run(m, x), **attrs)
    return convert


register_onnx(A.ReLU)(_simple("Relu"))
register_onnx(A.Tanh)(_simple("Tanh"))
register_onnx(A.Sigmoid)(_simple("Sigmoid"))


def _exact_attribute(g, value):
    """ONNX float attributes are float32: fine for a float32 graph, or a float64 one whose
    value float32 holds exactly; otherwise the op is spelled out with a float64 constant."""
    return g.dtype == np.float32 or float(np.float32(value)) == value


@register_onnx(A.LeakyReLU)
def _leaky_relu(g, m, x, scope):
    y = g.run(m, x)
    if _exact_attribute(g, m.negative_slope):
        return g.node("LeakyRelu", [x], scope or "LeakyRelu", y, alpha=m.negative_slope)
    scaled = g.node("Mul", [x, g.scalar(m.negative_slope, "slope")], _join(scope, "scaled"))
    positive = g.node("Greater", [x, g.scalar(0.0, "zero")], _join(scope, "positive"))
    return g.node("Where", [positive, x, scaled], scope or "LeakyRelu", y)


@register_onnx(A.ELU)
def _elu(g, m, x, scope):
    y = g.run(m, x)
    if _exact_attribute(g, m.alpha):
        return g.node("Elu", [x], scope or "Elu", y, alpha=m.alpha)
    negative = g.node("Sub", [g.node("Exp", [x], _join(scope, "exp")), g.scalar(1.0, "one")],
                      _join(scope, "expm1"))
    negative = g.node("Mul", [negative, g.scalar(m.alpha, "alpha")], _join(scope, "negative"))
    positive = g.node("Greater", [x, g.scalar(0.0, "zero")], _join(scope, "positive"))
    return g.node("Where", [positive, x, negative], scope or "Elu", y)

def _along_dim(op):
    def convert(g, m, x, scope):
        y = g.run(m, x)
        if m.dtype is not None and m.dtype != g.dtype:
            raise OnnxExportError(f"cannot export {type(m).__name__} at {scope!r}: dtype="
                                  f"{m.dtype} differs from the graph's {g.dtype}")
        ndim = g.value(x).ndim
        # dim=None: the axis torch's implicit rule picks (as the layer's forward does)
        dim = m.dim if m.dim is not None else (0 if ndim in (0, 1, 3) else 1)
        return g.node(op, [x], scope or op, y, axis=dim)
    return convert


register_onnx(A.Softmax)(_along_dim("Softmax"))
register_onnx(A.LogSoftmax)(_along_dim("LogSoftmax"))
register_onnx(Identity)(_simple("Identity"))
register_onnx(Dropout)(_simple("Identity"))  # the evaluation-mode forward


@register_onnx(A.Softplus)
def _softplus(g, m, x, scope):
    # log(1 + exp(beta x)) / beta, and x itself where beta x > threshold, as the kernel does.
    y = g.run(m, x)
    bx = x if m.beta == 1.0 else g.node("Mul", [x, g.scalar(m.beta, "beta")], _join(scope, "bx"))
    soft = g.node("Softplus", [bx], _join(scope, "softplus"))
    if m.beta != 1.0:
        soft = g.node("Div", [soft, g.scalar(m.beta, "beta")], _join(scope, "div"))
    linear = g.node("Greater", [bx, g.scalar(m.threshold, "threshold")], _join(scope, "linear"))
    return g.node("Where", [linear, x, soft], scope or "Softplus", y)


@register_onnx(A.Step)
def _step(g, m, x, scope):
    positive = g.node("Greater", [x, g.scalar(0.0, "zero")], _join(scope, "positive"))
    return g.node("Cast", [positive], scope or "Step", g.run(m, x), to=g.elem_type)


@register_onnx(A.GELU)
def _gelu(g, m, x, scope):
    y = g.run(m, x)
    if g.opset >= 20:
        return g.node("Gelu", [x], scope or "Gelu", y, approximate=m.approximate)
    if m.approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3)))
        cube = g.node("Mul", [x, g.node("Mul", [x, x], _join(scope, "square"))],
                      _join(scope, "cube"))
        inner = g.node("Add", [x, g.node("Mul", [cube, g.scalar(0.044715, "c")],
                                         _join(scope, "scaled_cube"))], _join(scope, "inner"))
        inner = g.node("Mul", [inner, g.scalar(math.sqrt(2 / math.pi), "k")],
                       _join(scope, "z"))
        t = g.node("Add", [g.node("Tanh", [inner], _join(scope, "tanh")),
                           g.scalar(1.0, "one")], _join(scope, "add"))
        t = g.node("Mul", [x, t], _join(scope, "mul"))
        return g.node("Mul", [t, g.scalar(0.5, "half")], scope or "Gelu", y)
    # x * (1 + erf(x / sqrt 2)) / 2, the exact form (Gelu itself is opset 20).
    t = g.node("Div", [x, g.scalar(math.sqrt(2.0), "sqrt2")], _join(scope, "scaled"))
    t = g.node("Erf", [t], _join(scope, "erf"))
    t = g.node("Add", [t, g.scalar(1.0, "one")], _join(scope, "add"))
    t = g.node("Mul", [x, t], _join(scope, "mul"))
    return g.node("Mul", [t, g.scalar(0.5, "half")], scope or "Gelu", y)


@register_onnx(A.SiLU)
def _silu(g, m, x, scope):
    s = g.node("Sigmoid", [x], _join(scope, "sigmoid"))
    return g.node("Mul", [x, s], scope or "SiLU", g.run(m, x))


@register_onnx(A.Mish)
def _mish(g, m, x, scope):
    # Mish itself is opset 18; x tanh(softplus(x)) exports to every opset from 13
    t = g.node("Tanh", [g.node("Softplus", [x], _join(scope, "softplus"))], _join(scope, "tanh"))
    return g.node("Mul", [x, t], scope or "Mish", g.run(m, x))


@register_onnx(A.Hardtanh)  # and ReLU6, a Hardtanh with the same forward
def _hardtanh(g, m, x, scope):
    return g.node("Clip", [x, g.scalar(m.min_val, "min"), g.scalar(m.max_val, "max")],
                  scope or "Clip", g.run(m, x))


@register_onnx(A.PReLU)
def _prelu(g, m, x, scope):
    y = g.run(m, x)
    w = _host(m.weight.data)
    ndim = g.value(x).ndim
    if w.size > 1 and ndim >= 2:  # one slope per channel (axis 1), broadcast over the rest
        w = w.reshape((w.size,) + (1,) * (ndim - 2))
    return g.node("PRelu", [x, g.const(w, _join(scope, "weight"))], scope or "PRelu", y)


# ---------------------------------------------------------------- linear and shapes
@register_onnx(Linear)
def _linear(g, m, x, scope):
    y = g.run(m, x)
    w = _host(m.weight.data)
    b = None if m.bias is None else g.const(_host(m.bias.data), _join(scope, "bias"))
    if g.value(x).ndim == 2:
        inputs = [x, g.const(w, _join(scope, "weight"))] + ([b] if b else [])
        return g.node("Gemm", inputs, scope or "Gemm", y, transB=1)
    out = g.node("MatMul", [x, g.const(np.ascontiguousarray(w.T), _join(scope, "weight_t"))],
                 _join(scope, "matmul") if b else (scope or "MatMul"), None if b else y)
    return g.node("Add", [out, b], scope or "Add", y) if b else out


def _reshape(g, x, shape, scope, y):
    return g.node("Reshape", [x, g.const(np.array(shape, np.int64), _join(scope, "shape"))],
                  scope or "Reshape", y)


@register_onnx(Flatten)
def _flatten(g, m, x, scope):
    y = g.run(m, x)
    shape = g.value(x).shape
    if len(shape) >= 2 and m.start_dim in (1, 1 - len(shape)) and m.end_dim in (-1,
                                                                                len(shape) - 1):
        return g.node("Flatten", [x], scope or "Flatten", y, axis=1)
    # Keep the axes before start_dim as they come (0; the batch stays dynamic), merge the
    # rest into -1 up to end_dim, then the fixed sizes after it.
    return _reshape(g, x, _dynamic_first(y.shape, shape), scope, y)


def _dynamic_first(out_shape, in_shape):
    """A Reshape target for ``out_shape``: 0 (copy) for axis 0 when it is the input's batch
    axis, the fixed sizes elsewhere."""
    if len(out_shape) and len(in_shape) and out_shape[0] == in_shape[0]:
        return [0] + list(out_shape[1:])
    return [-1] + list(out_shape[1:])  # the batch merged into the first axis


@register_onnx(Unflatten)
def _unflatten(g, m, x, scope):
    y = g.run(m, x)
    if m.dim % g.value(x).ndim == 0:
        raise OnnxExportError(f"cannot export Unflatten at {scope!r}: it splits the batch "
                              f"axis, which the exported graph keeps dynamic")
    return _reshape(g, x, [0] + list(y.shape[1:]), scope, y)


# ---------------------------------------------------------------- convolutions and pooling
def _conv_pads(m, x_shape):
    if m.padding == "valid":
        return [0, 0, 0, 0]
    if m.padding == "same":  # the odd extra row/column at the bottom/right, like torch
        eh = m.dilation[0] * (m.kernel_size[0] - 1)
        ew = m.dilation[1] * (m.kernel_size[1] - 1)
        return [eh // 2, ew // 2, eh - eh // 2, ew - ew // 2]
    ph, pw = m.padding
    return [ph, pw, ph, pw]


@register_onnx(Conv2d)
def _conv(g, m, x, scope):
    inputs = [x, g.const(_host(m.weight.data), _join(scope, "weight"))]
    if m.bias is not None:
        inputs.append(g.const(_host(m.bias.data), _join(scope, "bias")))
    return g.node("Conv", inputs, scope or "Conv", g.run(m, x),
                  kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=_conv_pads(m, g.value(x).shape), dilations=list(m.dilation),
                  group=int(m.groups))


@register_onnx(ConvTranspose2d)
def _conv_transpose(g, m, x, scope):
    inputs = [x, g.const(_host(m.weight.data), _join(scope, "weight"))]
    if m.bias is not None:
        inputs.append(g.const(_host(m.bias.data), _join(scope, "bias")))
    ph, pw = m.padding
    return g.node("ConvTranspose", inputs, scope or "ConvTranspose", g.run(m, x),
                  kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=int(m.groups),
                  output_padding=list(m.output_padding))


@register_onnx(MaxPool2d)
def _max_pool(g, m, x, scope):
    ph, pw = m.padding
    return g.node("MaxPool", [x], scope or "MaxPool", g.run(m, x),
                  kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw])


@register_onnx(AvgPool2d)
def _avg_pool(g, m, x, scope):
    ph, pw = m.padding
    return g.node("AveragePool", [x], scope or "AveragePool", g.run(m, x),
                  kernel_shape=list(m.kernel_size), strides=list(m.stride),
                  pads=[ph, pw, ph, pw], count_include_pad=int(m.count_include_pad))


register_onnx(GlobalAvgPool2d)(_simple("GlobalAveragePool"))


@register_onnx(Upsample)
def _upsample(g, m, x, scope):
    y = g.run(m, x)
    (h, w), (oh, ow) = g.value(x).shape[2:], y.shape[2:]
    # Nearest with integer factors: output pixel o reads input floor(o / s) ("asymmetric"
    # coordinates, "floor" rounding), which is exactly repeating each pixel s times.
    scales = g.const(np.array([1.0, 1.0, oh / h, ow / w], np.float32), _join(scope, "scales"))
    return g.node("Resize", [x, "", scales], scope or "Resize", y, mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")


# ---------------------------------------------------------------- normalisation
def _batch_norm(g, m, x, scope):
    y = g.run(m, x)
    c = m.num_features
    dt = g.dtype
    weight = _host(m.weight.data) if m.affine else np.ones(c, dt)
    bias = _host(m.bias.data) if m.affine else np.zeros(c, dt)
    if m.track_running_stats:
        # epsilon is a float32 attribute; in a float64 graph the part float32 drops goes
        # into the variance instead, so var + eps is the same sum our forward takes.
        eps = float(np.float32(m.eps))
        var = _host(m.running_var) + dt.type(m.eps - eps) if dt == np.float64 \
            else _host(m.running_var)
        inputs = [x, g.const(weight, _join(scope, "weight")), g.const(bias, _join(scope, "bias")),
                  g.const(_host(m.running_mean), _join(scope, "running_mean")),
                  g.const(var, _join(scope, "running_var"))]
        return g.node("BatchNormalization", inputs, scope or "BatchNormalization", y,
                      epsilon=eps)
    # No running statistics: even in evaluation the batch's own mean and variance are used.
    ndim = g.value(x).ndim
    axes = [0] + list(range(2, ndim))
    shape = [1, c] + [1] * (ndim - 2)

    def reduce_mean(t, hint):
        if g.opset >= 18:
            return g.node("ReduceMean", [t, g.const(np.array(axes, np.int64), f"{hint}.axes")],
                          hint, keepdims=1)
        return g.node("ReduceMean", [t], hint, axes=axes, keepdims=1)

    centred = g.node("Sub", [x, reduce_mean(x, _join(scope, "mean"))], _join(scope, "centred"))
    var = reduce_mean(g.node("Mul", [centred, centred], _join(scope, "sq")), _join(scope, "var"))
    std = g.node("Sqrt", [g.node("Add", [var, g.scalar(m.eps, "eps")], _join(scope, "var_eps"))],
                 _join(scope, "std"))
    x_hat = g.node("Div", [centred, std], _join(scope, "x_hat"))
    scaled = g.node("Mul", [x_hat, g.const(weight.reshape(shape), _join(scope, "weight"))],
                    _join(scope, "scaled"))
    return g.node("Add", [scaled, g.const(bias.reshape(shape), _join(scope, "bias"))],
                  scope or "BatchNorm", y)


register_onnx(BatchNorm1d)(_batch_norm)
register_onnx(BatchNorm2d)(_batch_norm)


# ---------------------------------------------------------------- containers
def _chain(g, modules, x, scope):
    for name, child in modules:
        x = g.call(child, x, _join(scope, name))
    return x


@register_onnx(C.Sequential)
def _sequential(g, m, x, scope):
    return _chain(g, m.named_children(), x, scope)


def _add(g, a, b, scope, hint="add"):
    return g.node("Add", [a, b], _join(scope, hint), g.value(a) + g.value(b))


def _concat(g, names, axis, scope, hint="cat"):
    values = [g.value(n) for n in names]
    xp = K.array_module(K.device_of(*values))
    return g.node("Concat", names, _join(scope, hint), xp.concatenate(values, axis=axis),
                  axis=axis)


@register_onnx(C.Residual)
def _residual(g, m, x, scope):
    a = g.call(m.block, x, _join(scope, "block"))
    b = x if m.shortcut is None else g.call(m.shortcut, x, _join(scope, "shortcut"))
    return _add(g, a, b, scope)


@register_onnx(C.Concat)
def _concat_branches(g, m, x, scope):
    outs = [g.call(b, x, _join(scope, name)) for name, b in m.named_children()]
    return _concat(g, outs, m.dim % g.value(outs[0]).ndim, scope)


@register_onnx(C.Add)
def _add_branches(g, m, x, scope):
    outs = [g.call(b, x, _join(scope, name)) for name, b in m.named_children()]
    total = outs[0]
    for k, out in enumerate(outs[1:], 1):  # the forward's order of additions
        total = _add(g, total, out, scope, hint=f"add{k}")
    return total


# ---------------------------------------------------------------- the zoo
@register_onnx(M.MLP)
def _mlp(g, m, x, scope):
    return _chain(g, [("flatten", m.flatten), ("layers", m.layers)], x, scope)


@register_onnx(M.LeNet5)
@register_onnx(M.SmallVGG)
def _features_classifier(g, m, x, scope):
    return _chain(g, [("features", m.features), ("flatten", m.flatten),
                      ("classifier", m.classifier)], x, scope)


@register_onnx(M.BasicBlock)
def _basic_block(g, m, x, scope):
    h = _chain(g, [("conv1", m.conv1), ("bn1", m.bn1), ("relu1", m.relu1), ("conv2", m.conv2),
                   ("bn2", m.bn2)], x, scope)
    shortcut = x if m.downsample is None else g.call(m.downsample, x,
                                                     _join(scope, "downsample"))
    return g.call(m.relu2, _add(g, h, shortcut, scope), _join(scope, "relu2"))


@register_onnx(M.ResNet)
def _resnet(g, m, x, scope):
    stages = [(f"layer{i + 1}", s) for i, s in enumerate(m._stages())]
    return _chain(g, [("conv1", m.conv1), ("bn1", m.bn1), ("relu", m.relu), *stages,
                      ("avgpool", m.avgpool), ("flatten", m.flatten), ("fc", m.fc)], x, scope)


@register_onnx(M.UNet)
def _unet(g, m, x, scope):
    skips, h = [], x
    for i, (enc, pool) in enumerate(zip(m.encoders, m.pools)):
        h = g.call(enc, h, _join(scope, f"encoders.{i}"))
        skips.append(h)
        h = g.call(pool, h, _join(scope, f"pools.{i}"))
    h = g.call(m.bottleneck, h, _join(scope, "bottleneck"))
    for i in reversed(range(m.depth)):
        up = g.call(m.ups[i], h, _join(scope, f"ups.{i}"))
        h = _concat(g, [up, skips[i]], 1, scope, f"cat{i}")
        h = g.call(m.decoders[i], h, _join(scope, f"decoders.{i}"))
    return g.call(m.head, h, _join(scope, "head"))


@register_onnx(M.Autoencoder)
def _autoencoder(g, m, x, scope):
    return _chain(g, [("encoder", m.encoder), ("decoder", m.decoder)], x, scope)


# ---------------------------------------------------------------- export
def _float_dtype(model, example_input):
    if not hasattr(example_input, "dtype") or np.dtype(example_input.dtype).kind != "f":
        raise TypeError(f"example_input: expected a float32 or float64 array, got "
                        f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    dtype = np.dtype(example_input.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"example_input: expected float32 or float64, got {dtype}")
    for name, p in model.named_parameters():
        if p.dtype != dtype:
            raise TypeError(f"example_input has dtype {dtype} but parameter {name!r} has "
                            f"{p.dtype}; convert one of them (model.to(dtype=...))")
    return dtype


def export_onnx(model, example_input, path, opset=DEFAULT_OPSET, input_name="input",
                output_name="output"):
    """Write ``model`` (evaluation mode) as an ONNX file at ``path``; returns the ModelProto.

    ``example_input``: one batch (N, ...) the model accepts; it fixes every axis but the
    first, which stays dynamic.  ``opset``: the ONNX operator set, 13 or newer.
    """
    import onnx
    from onnx import helper

    if not isinstance(model, Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or \
            not _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset: expected an int from {_MIN_OPSET} to "
                         f"{onnx.defs.onnx_opset_version()}, got {opset!r}")
    if getattr(example_input, "ndim", 0) < 1:
        raise ValueError("example_input: expected an array with a batch axis first")
    dtype = _float_dtype(model, example_input)
    example = np.asarray(K.to_host(example_input))
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        g = _Graph(dtype, opset)
        x = g.set_value(g.fresh(input_name), K.to_device(example, _model_device(model)))
        y = g.call(model, x, "")
        expected = model(g.value(x))
    finally:
        for m, mode in was_training:
            object.__setattr__(m, "training", mode)
    if tuple(g.value(y).shape) != tuple(expected.shape):
        raise OnnxExportError(f"the exported graph gives shape {tuple(g.value(y).shape)} but "
                              f"{type(model).__name__} gives {tuple(expected.shape)}")
    out = g.node("Identity", [y], output_name)
    # The output's first axis is the batch when it has the example's batch size; otherwise
    # (a layer that merges the batch into another axis) it gets a name of its own.
    batch = "N" if expected.ndim and expected.shape[0] == example.shape[0] else "M"
    elem = g.elem_type
    graph = helper.make_graph(
        g.nodes, type(model).__name__,
        [helper.make_tensor_value_info(x, elem, ["N", *example.shape[1:]])],
        [helper.make_tensor_value_info(out, elem, [batch, *expected.shape[1:]])],
        initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="numba-dl")
    onnx.checker.check_model(proto, full_check=True)
    from .checkpoint import _write_atomic

    _write_atomic(os.fspath(path), proto.SerializeToString())
    return proto


def _model_device(model):
    for p in model.parameters():
        return p.device
    return K.CPU
