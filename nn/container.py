"""Containers: Sequential, ModuleList, and the two graph shapes a chain cannot express.

Sequential(m0, m1, ...):     y = m_k(...m1(m0(x))); backward walks the children in reverse.
Residual(block, shortcut):   y = block(x) + shortcut(x)  (shortcut None: the identity)
                             grad_x = block.backward(grad_y) + shortcut.backward(grad_y)
Concat(b0, b1, ..., dim=1):  y = cat([b0(x), b1(x), ...], dim)
                             grad_x = sum_i b_i.backward(slice_i(grad_y))
Add(b0, b1, ...):            y = b0(x) + b1(x) + ...   (an Identity() branch is a skip)
                             grad_x = sum_i b_i.backward(grad_y)

Residual, Concat and Add all fan one input out to several branches, so the input gradient is
the sum of the branches' input gradients.  Concat is the U-Net skip: with
``Concat(Sequential(down..., up...), Identity())`` on an encoder feature map, the decoder
sees ``[upsampled, skip]`` along the channels and the skip's share of the gradient returns to
that same feature map.  (``nn.models.UNet`` routes its skips explicitly instead, which reads
more easily for a multi-level network; both compute the same thing.)
"""
from __future__ import annotations

from collections import OrderedDict

import kernels as K

from .module import Module, chain_backward

__all__ = ["Sequential", "ModuleList", "Residual", "Concat", "Add"]


def _check_module(m, where):
    if not isinstance(m, Module):
        raise TypeError(f"{where}: expected a Module, got {type(m).__name__}")
    return m


class ModuleList(Module):
    """A list of modules whose parameters are registered ("0.weight", ...); it has no forward."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), _check_module(module, type(self).__name__))
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, index):
        items = list(self._modules.values())
        if isinstance(index, slice):
            return type(self)(items[index])
        return items[index]


class Sequential(ModuleList):
    """Children applied in order; ``Sequential(OrderedDict(name=module))`` names them."""

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            Module.__init__(self)
            for name, m in modules[0].items():
                self.add_module(name, _check_module(m, "Sequential"))
        else:
            super().__init__(modules)

    def __getitem__(self, index):
        if isinstance(index, slice):  # keeps the children's names, as torch does
            return Sequential(OrderedDict(list(self._modules.items())[index]))
        return list(self._modules.values())[index]

    def forward(self, x):
        self.save_for_backward(True)
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_y, input_grad=True):
        """``input_grad=False``: the first child skips dL/dx, and this returns None."""
        self.saved_tensors()
        return chain_backward(list(self._modules.values()), grad_y, input_grad)


class Residual(Module):
    """y = block(x) + shortcut(x); the identity shortcut when ``shortcut`` is None."""

    def __init__(self, block, shortcut=None):
        super().__init__()
        self.block = _check_module(block, "Residual: block")
        self.shortcut = None if shortcut is None else _check_module(shortcut,
                                                                    "Residual: shortcut")

    def forward(self, x):
        a = self.block(x)
        b = x if self.shortcut is None else self.shortcut(x)
        if a.shape != b.shape:
            raise ValueError(f"Residual: block output {tuple(a.shape)} and shortcut output "
                             f"{tuple(b.shape)} differ; give a shortcut that matches shapes")
        self.save_for_backward(True)
        return a + b

    def backward(self, grad_y):
        self.saved_tensors()
        if self.shortcut is None:
            return self.block.backward(grad_y) + grad_y
        # Reverse of the forward's order: a module shared by both pops its latest context first.
        grad_shortcut = self.shortcut.backward(grad_y)
        return self.block.backward(grad_y) + grad_shortcut


class Concat(Module):
    """Concatenate the branches' outputs along ``dim`` (default: channels); gradients split."""

    def __init__(self, *branches, dim=1):
        super().__init__()
        if not branches:
            raise ValueError("Concat: give at least one branch")
        for i, b in enumerate(branches):
            self.add_module(str(i), _check_module(b, f"Concat: branch {i}"))
        self.dim = int(dim)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x):
        outs = [b(x) for b in self._modules.values()]
        first = outs[0]
        dim = self.dim % first.ndim
        for i, o in enumerate(outs[1:], 1):
            if o.ndim != first.ndim or (o.shape[:dim] + o.shape[dim + 1:]
                                        != first.shape[:dim] + first.shape[dim + 1:]):
                raise ValueError(f"Concat: branch {i} output {tuple(o.shape)} does not match "
                                 f"branch 0 output {tuple(first.shape)} outside dim {self.dim}")
        xp = K.array_module(K.device_of(*outs))
        self.save_for_backward(dim, [o.shape[dim] for o in outs])
        return xp.concatenate(outs, axis=dim)

    def backward(self, grad_y):
        dim, sizes = self.saved_tensors()
        grads = []
        stop = grad_y.shape[dim]
        # Reverse of the forward's order: a module shared by branches pops its latest first.
        for b, size in zip(reversed(self._modules.values()), reversed(sizes)):
            index = (slice(None),) * dim + (slice(stop - size, stop),)
            stop -= size
            grads.append(b.backward(grad_y[index]))
        return _sum(grads)

    def extra_repr(self):
        return f"dim={self.dim}"


class Add(Module):
    """Sum of the branches' outputs, each branch fed the same input; gradients fan back in.

    ``Add(block, nn.Identity())`` is a residual connection; ``Add(conv3x3, conv1x1,
    nn.Identity())`` is a multi-branch block (Inception/RepVGG style).  Every branch must
    give the same shape.
    """

    def __init__(self, *branches):
        super().__init__()
        if not branches:
            raise ValueError("Add: give at least one branch")
        for i, b in enumerate(branches):
            self.add_module(str(i), _check_module(b, f"Add: branch {i}"))

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def forward(self, x):
        outs = [b(x) for b in self._modules.values()]
        for i, o in enumerate(outs[1:], 1):
            if o.shape != outs[0].shape:
                raise ValueError(f"Add: branch {i} output {tuple(o.shape)} does not match "
                                 f"branch 0 output {tuple(outs[0].shape)}")
        self.save_for_backward(True)
        return _sum(outs)

    def backward(self, grad_y):
        self.saved_tensors()
        # Reverse order: a module shared by two branches pops its latest context first.
        return _sum([b.backward(grad_y) for b in reversed(self._modules.values())])


def _sum(arrays):
    """The sum, in a new array once there are two terms (the first may be an input)."""
    total = arrays[0] + arrays[1] if len(arrays) > 1 else arrays[0]
    for a in arrays[2:]:
        total += a
    return total
