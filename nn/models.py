"""Model zoo: small classic networks, each a Module with a hand-written backward.

| model       | input                      | output                     |
|-------------|----------------------------|----------------------------|
| MLP         | (N, sizes[0]) or (N, ...)  | (N, sizes[-1])             |
| LeNet5      | (N, C, S, S), S >= 8       | (N, num_classes)           |
| SmallVGG    | (N, C, S, S), S % 2^k == 0 | (N, num_classes)           |
| ResNet      | (N, C, H, W), any size     | (N, num_classes)           |
| UNet        | (N, C, H, W), H, W % 2^depth == 0 | (N, out_channels, H, W) |
| Autoencoder | (N, *input_shape)          | (N, *input_shape) in (0, 1) |

Parameter names follow the usual PyTorch layouts (``features.0.weight``,
``classifier.0.weight``, torchvision's ``layer1.0.conv1.weight`` for ResNet), so weights map
one to one onto the same architecture written in torch.
"""
from __future__ import annotations

import kernels as K

from .activation import (ELU, GELU, Hardtanh, LeakyReLU, Mish, PReLU, ReLU, ReLU6, Sigmoid,
                         SiLU, Softplus, Step, Tanh)
from .container import ModuleList, Residual, Sequential
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .linear import Flatten, Identity, Linear, Unflatten
from .module import Module, call_backward, chain_backward
from .norm import BatchNorm2d
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d

__all__ = ["ACTIVATIONS", "get_activation", "MLP", "LeNet5", "SmallVGG", "BasicBlock", "ResNet",
           "UNet", "Autoencoder"]

ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU,
               "elu": ELU, "gelu": GELU, "softplus": Softplus, "identity": Identity,
               "step": Step, "silu": SiLU, "mish": Mish, "hardtanh": Hardtanh, "relu6": ReLU6,
               "prelu": PReLU}


def get_activation(name):
    """A new activation layer from its name (see ``ACTIVATIONS``) or a Module class."""
    if isinstance(name, type) and issubclass(name, Module):
        return name()
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: unknown {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(Module):
    """Fully connected layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``, activations between.

    Inputs with more than two dimensions are flattened per sample.  ``residual=True`` wraps
    every hidden layer whose width does not change in a :class:`Residual` (x + f(Wx + b)),
    which keeps gradients alive in deep stacks.  ``dropout > 0`` adds Dropout after each
    hidden activation.
    """

    def __init__(self, sizes, activation="relu", residual=False, dropout=0.0):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) <= 0:
            raise ValueError(f"sizes: expected at least two positive sizes, got {sizes}")
        self.sizes, self.activation_name, self.residual = sizes, activation, bool(residual)
        self.flatten = Flatten()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i == len(sizes) - 2:
                layers.append(Linear(a, b))
                break
            hidden = [Linear(a, b), get_activation(activation)]
            if dropout > 0:
                hidden.append(Dropout(dropout))
            if residual and a == b:
                layers.append(Residual(Sequential(*hidden)))
            else:
                layers.extend(hidden)
        self.layers = Sequential(*layers)

    def forward(self, x):
        return self.layers(self.flatten(x))

    def backward(self, grad_y, input_grad=True):
        return chain_backward([self.flatten, self.layers], grad_y, input_grad)


def _lenet_paddings(input_size):
    """Paddings that keep LeNet-5 valid down to 8x8 inputs (28 -> 28 -> 14 -> 10 -> 5)."""
    p1 = 2 if input_size < 32 else 0
    after_pool1 = (input_size + 2 * p1 - 4) // 2
    p2 = 0 if after_pool1 >= 6 else 2
    after_pool2 = (after_pool1 + 2 * p2 - 4) // 2
    return p1, p2, after_pool2


class LeNet5(Module):
    """conv5(6) - pool - conv5(16) - pool - fc120 - fc84 - fc(num_classes).

    ``input_size`` (square images, >= 8) picks the paddings: below 32 the first convolution
    pads by 2 (the usual MNIST variant: 28 -> 28 -> 14 -> 10 -> 5); when the second one would
    leave less than 2x2 it pads by 2 as well (8x8 digits: 8 -> 8 -> 4 -> 4 -> 2, so the first
    fully connected layer sees 16*2*2 = 64 inputs).  ``pool="avg"`` and
    ``activation="tanh"`` give the 1998 flavour; the defaults are max pooling and ReLU.
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, activation="relu",
                 pool="max"):
        super().__init__()
        if input_size < 8:
            raise ValueError(f"input_size: LeNet5 needs at least 8x8 inputs, got {input_size}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool: expected 'max' or 'avg', got {pool!r}")
        self.input_size = int(input_size)
        p1, p2, s = _lenet_paddings(self.input_size)
        pool_cls = MaxPool2d if pool == "max" else AvgPool2d
        self.features = Sequential(
            Conv2d(in_channels, 6, 5, padding=p1), get_activation(activation), pool_cls(2),
            Conv2d(6, 16, 5, padding=p2), get_activation(activation), pool_cls(2))
        self.flatten = Flatten()
        self.classifier = Sequential(
            Linear(16 * s * s, 120), get_activation(activation),
            Linear(120, 84), get_activation(activation),
            Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))

    def backward(self, grad_y, input_grad=True):
        return chain_backward([self.features, self.flatten, self.classifier], grad_y,
                              input_grad)


class SmallVGG(Module):
    """VGG-style: per width, conv3-relu-conv3-relu-maxpool2; then fc(hidden)-relu-fc(num_classes).

    ``input_size`` must be divisible by ``2 ** len(widths)``.  ``batch_norm`` puts BatchNorm2d
    after each convolution; ``dropout`` adds Dropout before the last layer.
    """

    def __init__(self, in_channels=3, num_classes=10, input_size=32, widths=(32, 64),
                 hidden=128, batch_norm=False, dropout=0.0):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or input_size % (2 ** len(widths)) or input_size < 2 ** len(widths):
            raise ValueError(f"input_size={input_size} must be a positive multiple of "
                             f"2**len(widths) = {2 ** len(widths)}")
        layers, c = [], in_channels
        for w in widths:
            for cin in (c, w):
                layers.append(Conv2d(cin, w, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(BatchNorm2d(w))
                layers.append(ReLU())
            layers.append(MaxPool2d(2))
            c = w
        self.features = Sequential(*layers)
        self.flatten = Flatten()
        s = input_size // 2 ** len(widths)
        head = [Linear(c * s * s, hidden), ReLU()]
        if dropout > 0:
            head.append(Dropout(dropout))
        head.append(Linear(hidden, num_classes))
        self.classifier = Sequential(*head)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))

    def backward(self, grad_y, input_grad=True):
        return chain_backward([self.features, self.flatten, self.classifier], grad_y,
                              input_grad)


class BasicBlock(Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or ``downsample`` (1x1 conv with the stride + BatchNorm2d)
    when the stride or the channel count changes.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(out_channels)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                BatchNorm2d(out_channels))
        self.relu2 = ReLU()

    def forward(self, x):
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(h + shortcut)

    def backward(self, grad_y):
        g = self.relu2.backward(grad_y)
        grad_shortcut = g if self.downsample is None else self.downsample.backward(g)
        grad_block = self.conv1.backward(self.bn1.backward(self.relu1.backward(
            self.conv2.backward(self.bn2.backward(g)))))
        return grad_block + grad_shortcut


class ResNet(Module):
    """CIFAR-style ResNet: conv3-bn-relu stem, one stage of BasicBlocks per width (stride 2
    from the second stage on), global average pooling and a linear head.  Any input size.
    """

    def __init__(self, in_channels=3, num_classes=10, widths=(16, 32, 64), blocks_per_stage=1):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or blocks_per_stage < 1:
            raise ValueError(f"ResNet needs at least one width and one block per stage, got "
                             f"widths={widths}, blocks_per_stage={blocks_per_stage}")
        self.conv1 = Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = BatchNorm2d(widths[0])
        self.relu = ReLU()
        c = widths[0]
        self.num_stages = len(widths)
        for i, w in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
            setattr(self, f"layer{i + 1}", Sequential(*blocks))
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.fc = Linear(c, num_classes)

    def _stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        for stage in self._stages():
            h = stage(h)
        return self.fc(self.flatten(self.avgpool(h)))

    def backward(self, grad_y, input_grad=True):
        g = self.avgpool.backward(self.flatten.backward(self.fc.backward(grad_y)))
        for stage in reversed(self._stages()):
            g = stage.backward(g)
        return call_backward(self.conv1, self.bn1.backward(self.relu.backward(g)), input_grad)


def _double_conv(cin, cout, batch_norm):
    layers = []
    for a in (cin, cout):
        layers.append(Conv2d(a, cout, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(BatchNorm2d(cout))
        layers.append(ReLU())
    return Sequential(*layers)


class UNet(Module):
    """U-Net: ``depth`` levels of (double conv, max-pool), a bottleneck, then for each level
    (2x2 stride-2 transposed conv, concat with the encoder's feature map, double conv), and a
    1x1 convolution to ``out_channels``.  Level i has ``base * 2**i`` channels.

    The skips are routed explicitly: the decoder at level i sees
    ``cat([upsampled, skip_i], channels)``; backward splits that gradient, sends the first part
    through the transposed conv and adds the second to the gradient arriving at the encoder
    output of level i (which fans out to the pool and the skip).
    """

    def __init__(self, in_channels=1, out_channels=1, base=8, depth=2, batch_norm=False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth: expected at least 1, got {depth}")
        self.depth = int(depth)
        widths = [base * 2 ** i for i in range(self.depth + 1)]
        self.encoders = ModuleList(
            _double_conv(in_channels if i == 0 else widths[i - 1], widths[i], batch_norm)
            for i in range(self.depth))
        self.pools = ModuleList(MaxPool2d(2) for _ in range(self.depth))
        self.bottleneck = _double_conv(widths[-2], widths[-1], batch_norm)
        self.ups = ModuleList(ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                              for i in range(self.depth))
        self.decoders = ModuleList(_double_conv(2 * widths[i], widths[i], batch_norm)
                                   for i in range(self.depth))
        self.head = Conv2d(widths[0], out_channels, 1)

    def forward(self, x):
        multiple = 2 ** self.depth
        if getattr(x, "ndim", 0) == 4 and (x.shape[2] % multiple or x.shape[3] % multiple):
            raise ValueError(f"UNet: height and width must be multiples of 2**depth = "
                             f"{multiple}, got input shape {tuple(x.shape)}")
        skips, h = [], x
        for enc, pool in zip(self.encoders, self.pools):
            h = enc(h)
            skips.append(h)
            h = pool(h)
        h = self.bottleneck(h)
        for i in reversed(range(self.depth)):
            up = self.ups[i](h)
            xp = K.array_module(K.device_of(up))
            h = self.decoders[i](xp.concatenate([up, skips[i]], axis=1))
        self.save_for_backward([s.shape[1] for s in skips])
        return self.head(h)

    def backward(self, grad_y, input_grad=True):
        skip_channels = self.saved_tensors()
        g = self.head.backward(grad_y)
        grad_skips = [None] * self.depth
        for i in range(self.depth):
            g = self.decoders[i].backward(g)
            up_channels = g.shape[1] - skip_channels[i]
            grad_skips[i] = g[:, up_channels:]
            g = self.ups[i].backward(g[:, :up_channels])
        g = self.bottleneck.backward(g)
        for i in reversed(range(self.depth)):
            g = call_backward(self.encoders[i], self.pools[i].backward(g) + grad_skips[i],
                              input_grad or i > 0)
        return g if input_grad else None


class Autoencoder(Module):
    """Mirrored fully connected encoder/decoder with a ``code_size`` bottleneck and a sigmoid
    output (inputs scaled to [0, 1]).  ``encode(x)`` gives the codes, ``decode(z)`` images.
    """

    def __init__(self, input_shape=(1, 8, 8), code_size=2, hidden=(64, 32), activation="relu"):
        super().__init__()
        self.input_shape = ((int(input_shape),) if isinstance(input_shape, int)
                            else tuple(int(s) for s in input_shape))
        d = 1
        for s in self.input_shape:
            d *= s
        sizes = [d, *[int(h) for h in hidden], int(code_size)]
        enc, dec = [Flatten()], []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            enc.append(Linear(a, b))
            if i < len(sizes) - 2:
                enc.append(get_activation(activation))
        back = sizes[::-1]
        for i, (a, b) in enumerate(zip(back[:-1], back[1:])):
            dec.append(Linear(a, b))
            dec.append(get_activation(activation) if i < len(back) - 2 else Sigmoid())
        dec.append(Unflatten(1, self.input_shape))
        self.encoder = Sequential(*enc)
        self.decoder = Sequential(*dec)

    def encode(self, x):
        """The codes, (N, code_size)."""
        return self.encoder(x)

    def decode(self, z):
        """Reconstructions, (N, *input_shape), from codes."""
        return self.decoder(z)

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def backward(self, grad_y, input_grad=True):
        return chain_backward([self.encoder, self.decoder], grad_y, input_grad)
