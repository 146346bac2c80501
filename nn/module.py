"""Parameters and the Module base class: the chain rule, written by hand.

A module's ``forward(x)`` computes its output and keeps what its backward needs
(``self.save_for_backward(...)``); ``backward(grad_y)`` takes those back
(``self.saved_tensors()``), adds each trainable parameter's gradient into ``param.grad``
and returns ``grad_x``.  Gradients accumulate across backward calls until ``zero_grad()``,
as in PyTorch.  A saved context is used once: calling ``backward`` before ``forward``, or
twice for one forward, raises :class:`BackwardError`.

Attribute names, ``state_dict`` keys and weight layouts follow ``torch.nn``, so a state dict
maps one to one onto the same architecture in PyTorch.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

import kernels


class BackwardError(RuntimeError):
    """``backward`` was called without a matching ``forward``."""


class Parameter:
    """A trainable array: ``.data`` (the values), ``.grad`` (same shape, or None), ``.requires_grad``."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        if not hasattr(data, "dtype"):
            data = np.asarray(data, dtype=np.float32)
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return int(self.data.size)

    @property
    def device(self):
        return kernels.device_of(self.data)

    def accumulate(self, grad):
        """Add ``grad`` into ``.grad`` (frozen parameters ignore it).

        ``grad`` must be an array the caller will not reuse: it may be kept as ``.grad``.
        """
        if not self.requires_grad:
            return
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient shape {tuple(grad.shape)} does not match parameter "
                             f"shape {self.shape}")
        if self.grad is None:
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self):
        return (f"Parameter(shape={self.shape}, dtype={self.dtype}, "
                f"requires_grad={self.requires_grad})")


class Module:
    """Base class of every layer, loss and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_saved", None)
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before setting attributes")
        if name in self._buffers and not isinstance(value, (Parameter, Module)):
            # Assigning to a registered buffer (``self.running_mean = ...``) keeps it a buffer,
            # as in torch; otherwise it would silently drop out of the state dict.
            self._set_buffer(name, value)
            return
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name, value):
        """A non-trainable array that belongs to the state (e.g. BatchNorm's running mean)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def _set_buffer(self, name, value):
        object.__setattr__(self, name, value)
        self._buffers[name] = value

    def add_module(self, name, module):
        setattr(self, name, module)

    # ------------------------------------------------------------------ passes
    def forward(self, x):
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def backward(self, grad_y):
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def save_for_backward(self, *values):
        """Keep what ``backward`` needs; it is taken back once by :meth:`saved_tensors`."""
        object.__setattr__(self, "_saved", values)

    def saved_tensors(self):
        """What ``forward`` saved; raises :class:`BackwardError` if there is nothing."""
        saved = self._saved
        if saved is None:
            raise BackwardError(f"{type(self).__name__}.backward() called before forward(), or "
                                f"twice for one forward(); run forward() again first")
        object.__setattr__(self, "_saved", None)
        return saved if len(saved) != 1 else saved[0]

    # ------------------------------------------------------------------ traversal
    def named_children(self):
        return iter(self._modules.items())

    def children(self):
        return iter(self._modules.values())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        if recurse:
            for cname, child in self._modules.items():
                yield from child.named_parameters(f"{prefix}.{cname}" if prefix else cname)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix=""):
        for name, b in self._buffers.items():
            yield (f"{prefix}.{name}" if prefix else name), b
        for cname, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}.{cname}" if prefix else cname)

    # ------------------------------------------------------------------ modes and state
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        """Forget accumulated gradients (``.grad = None``, PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    def freeze(self):
        """Stop computing and applying gradients for every parameter of this module.

        Gradients still flow through the frozen layers to the layers before them.
        """
        for p in self.parameters():
            p.requires_grad = False
            p.grad = None
        return self

    def unfreeze(self):
        for p in self.parameters():
            p.requires_grad = True
        return self

    @property
    def device(self):
        """The device of the first parameter or buffer (``"cpu"`` for a module with none)."""
        for p in self.parameters():
            return kernels.device_of(p.data)
        for _, b in self.named_buffers():
            return kernels.device_of(b)
        return kernels.CPU

    def to(self, device=None, dtype=None):
        """Move parameters, gradients and buffers to ``device`` and/or cast floats to ``dtype``."""
        def convert(a, cast):
            if device is not None:
                a = kernels.to_device(a, device)
            if dtype is not None and cast and a.dtype != np.dtype(dtype):
                a = a.astype(dtype)
            return a

        for m in self.modules():
            for p in m._parameters.values():
                p.data = convert(p.data, True)
                if p.grad is not None:
                    p.grad = convert(p.grad, True)
            for name, b in list(m._buffers.items()):
                m._set_buffer(name, convert(b, b.dtype.kind == "f"))
            object.__setattr__(m, "_saved", None)
        return self

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    def state_dict(self):
        """Parameters and buffers by dotted name (torch's keys), as host NumPy copies."""
        state = OrderedDict()
        # torch's order: each module's own parameters, then its own buffers, then its children.
        for mname, m in self.named_modules():
            prefix = f"{mname}." if mname else ""
            for name, p in m._parameters.items():
                state[prefix + name] = kernels.to_host(p.data).copy()
            for name, b in m._buffers.items():
                state[prefix + name] = kernels.to_host(b).copy()
        return state

    def load_state_dict(self, state, strict=True):
        """Copy values in by name; with ``strict`` every mismatch is listed in one error.

        Returns ``(missing, unexpected)`` key lists (both empty when strict succeeds).
        """
        targets = OrderedDict()
        for name, p in self.named_parameters():
            targets[name] = ("param", p)
        for mname, m in self.named_modules():
            for bname in m._buffers:
                targets[f"{mname}.{bname}" if mname else bname] = ("buffer", (m, bname))
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        wrong_shape = []
        for k, (kind, target) in targets.items():
            if k not in state:
                continue
            have = target.shape if kind == "param" else tuple(getattr(*target).shape)
            got = tuple(np.shape(state[k]))
            if have != got:
                wrong_shape.append(f"{k}: expected {have}, got {got}")
        if wrong_shape or (strict and (missing or unexpected)):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(unexpected))
            if wrong_shape:
                parts.append("wrong shapes: " + "; ".join(wrong_shape))
            raise ValueError(f"load_state_dict into {type(self).__name__} failed: "
                           + " | ".join(parts))
        for k, (kind, target) in targets.items():
            if k not in state:
                continue
            if kind == "param":
                dev, dt = target.device, target.dtype
                target.data = kernels.to_device(np.asarray(state[k]).astype(dt, copy=True), dev)
            else:
                m, bname = target
                old = getattr(m, bname)
                value = np.asarray(state[k]).astype(old.dtype, copy=True)
                m._set_buffer(bname, kernels.to_device(value, kernels.device_of(old)))
        return missing, unexpected

    # ------------------------------------------------------------------ display
    def extra_repr(self):
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._modules:
            return head + ")"
        lines = [head]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
