"""Parameters and the Module base class: the chain rule, written by hand.

A module's ``forward(x)`` computes its output and keeps what its backward needs
(``self.save_for_backward(...)``); ``backward(grad_y)`` takes those back
(``self.saved_tensors()``), adds each trainable parameter's gradient into ``param.grad``
and returns ``grad_x``.  Gradients accumulate across backward calls until ``zero_grad()``,
as in PyTorch.

Saved contexts (what ``save_for_backward`` keeps):

* In training mode each forward pushes its context on the module's own stack and each
  ``backward`` pops the most recent one, so forward(a), forward(b), backward(g_b),
  backward(g_a) is right, and so is a module used twice inside one forward (weight
  sharing).  A backward always pairs with the most recent forward still waiting: a forward
  that will never get a backward (evaluation, logging) belongs under :class:`no_grad` or
  in ``eval()`` mode.  When a forward finds contexts that were skipped over by a later
  backward (the sign of such a stray forward), it drops them with an
  :class:`UnusedContextWarning`; a stack that grows past 64 waiting forwards warns too.
* In eval mode a module keeps only the contexts of the latest top-level forward (the call
  of the outermost module), apart from its training-mode stack: ``backward`` in eval mode
  works for that forward, evaluation loops hold no memory, and an eval-mode forward
  between a training forward and its backward does not disturb it.
* Under ``with nn.no_grad():`` (also a decorator) nothing is saved.
* ``backward`` without a waiting forward raises :class:`BackwardError`.

A module that does not define ``backward`` gets :meth:`Module.backward`: when its forward
only chains its children (see there) it runs them in reverse; otherwise it says what to
write.

``model.backward(grad_y, input_grad=False)``: the gradient of the model's input is not
wanted (the trainer's case: the input is data).  Chains pass it to their first child, down to
the first Conv2d or Linear, which then skips its input-gradient kernel; such a call may
return None.  Layers whose ``backward`` takes only ``grad_y`` (users' own) are called as
before (:func:`call_backward` looks at the signature), so the keyword is always safe to pass.

Attribute names, ``state_dict`` keys and weight layouts follow ``torch.nn``, so a state dict
maps one to one onto the same architecture in PyTorch.
"""
from __future__ import annotations

import collections
import functools
import inspect
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict

import numpy as np

import kernels
from kernels.device import normalize_device

# The README section a user who writes their own module is sent to.
README_SECTION = "README.md, section \"Your own layer: forward and backward\""

# A training-mode stack this deep warns (and again at each doubling): forwards without
# their backward hold one batch of activations each.
_DEEP_STACK = 64


class BackwardError(RuntimeError):
    """``backward`` was called without a matching ``forward``."""


class UnusedContextWarning(RuntimeWarning):
    """Training-mode forwards kept contexts that no backward will use (see :class:`Module`)."""


# ---------------------------------------------------------------------- grad mode
class _State(threading.local):
    """Per thread, as torch's grad mode: whether forwards save, and the call nesting."""

    def __init__(self):
        self.enabled = True
        self.forward_id = 0     # counts top-level forwards
        self.records = []       # per active Module.__call__ (its length is the nesting):
        #                         the child calls seen, or None when not recorded
        self.warned = -1        # the top-level forward that already warned
        self.recent = collections.deque(maxlen=8)  # weak refs to recently saved arrays


_state = _State()


def is_grad_enabled():
    """False inside :class:`no_grad`: forwards then save nothing for backward."""
    return _state.enabled


class _GradMode:
    _enabled = True

    def __init__(self):
        self._prev = []

    def __enter__(self):
        self._prev.append(_state.enabled)
        _state.enabled = self._enabled
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Forwards inside save no context (for evaluation and logging); as in torch, also a
    decorator.  A ``backward`` for such a forward raises :class:`BackwardError`."""
    _enabled = False


class enable_grad(_GradMode):
    """Forwards save their context again (inside a :class:`no_grad` block)."""
    _enabled = True


# ---------------------------------------------------------------------- inputs
def as_array(a, name="input"):
    """``a`` as an array the kernels take: NumPy and CuPy arrays pass; torch CPU tensors and
    anything with ``__dlpack__`` or ``__array__`` become NumPy arrays without a copy where
    their producer allows; a GPU tensor is refused with how to convert it.  Other values
    (numbers, None) pass unchanged."""
    if a is None or isinstance(a, (np.ndarray, np.generic, bool, int, float, complex, str)):
        return a
    if kernels.device._device_of_one(a) is not None:  # CuPy array
        return a
    if isinstance(a, Parameter):
        return a.data
    kind = f"{type(a).__module__}.{type(a).__qualname__}"
    if type(a).__module__.split(".")[0] == "torch":
        dev = str(getattr(a, "device", "cpu"))
        if dev != "cpu":
            raise TypeError(f"{name}: a torch tensor on {dev!r}; pass it as a CuPy array "
                            f"(cupy.from_dlpack(t.detach())) for the 'cuda' device, or as "
                            f"t.detach().cpu() for the CPU")
        # No autograd here: the values are what matter, and detach() shares them.
        return np.from_dlpack(a.detach()) if hasattr(a, "detach") else np.asarray(a)
    if hasattr(a, "__cuda_array_interface__"):  # e.g. a Numba device array
        raise TypeError(f"{name}: a {kind} lives on the GPU; wrap it as a CuPy array "
                        f"(cupy.asarray(a), no copy) for the 'cuda' device")
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            if not hasattr(a, "__array__"):
                raise TypeError(f"{name}: cannot read a {kind} as a host array through "
                                f"DLPack ({exc}); convert it to a NumPy array (host) or a "
                                f"CuPy array (GPU) first") from None
    if hasattr(a, "__array__") or hasattr(a, "__array_interface__"):
        return np.asarray(a)
    return a


class Parameter:
    """A trainable array: ``.data`` (the values), ``.grad`` (same shape, or None), ``.requires_grad``.

    It reads like its data: ``np.asarray(p)`` is ``p.data`` (host parameters only),
    ``p * 2``, ``p @ x``, ``p[0]`` and ``len(p)`` give plain arrays, and ``p -= lr * g``
    updates ``p.data`` in place.
    """

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
    def ndim(self):
        return self.data.ndim

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

    # ---- reading like an array
    def __array__(self, dtype=None, copy=None):
        if not isinstance(self.data, np.ndarray) or isinstance(self.data,
                                                                kernels.SimCudaArray):
            raise TypeError(f"np.asarray(Parameter): the parameter lives on "
                            f"{self.device!r}; use kernels.to_host(p.data) for a host copy")
        a = self.data if dtype is None else self.data.astype(dtype, copy=False)
        return a.copy() if copy else a

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]

    def __setitem__(self, index, value):
        self.data[index] = _unwrap(value)

    def __neg__(self):
        return -self.data

    def __pos__(self):
        return +self.data

    def __abs__(self):
        return abs(self.data)

    def __repr__(self):
        return (f"Parameter(shape={self.shape}, dtype={self.dtype}, "
                f"requires_grad={self.requires_grad})")


def _unwrap(value):
    return value.data if isinstance(value, Parameter) else value


def _binary(op):
    def forward(self, other):
        return getattr(self.data, f"__{op}__")(_unwrap(other))

    def reflected(self, other):
        return getattr(self.data, f"__r{op}__")(_unwrap(other))

    def inplace(self, other):
        getattr(self.data, f"__i{op}__")(_unwrap(other))  # the same array: optimizers see it
        return self
    return forward, reflected, inplace


for _op in ("add", "sub", "mul", "truediv", "floordiv", "pow", "matmul"):
    _f, _r, _i = _binary(_op)
    setattr(Parameter, f"__{_op}__", _f)
    setattr(Parameter, f"__r{_op}__", _r)
    setattr(Parameter, f"__i{_op}__", _i)
del _op, _f, _r, _i


class Module:
    """Base class of every layer, loss and model.

    Write ``forward(x)``; write ``backward(grad_y)`` too unless forward only chains the
    children (then the default :meth:`backward` runs them in reverse).  Contexts saved with
    :meth:`save_for_backward` form a stack per module in training mode, a single forward's
    worth in eval mode, and nothing under :class:`no_grad` (details in the module docstring
    of ``nn.module`` and in the README section "Your own layer: forward and backward").
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_saved", None)       # training mode: stack of contexts
        object.__setattr__(self, "_saved_eval", None)  # eval mode: (forward id, contexts)
        object.__setattr__(self, "_no_grad_forward", False)
        object.__setattr__(self, "_saves", 0)  # counts save_for_backward calls
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

    def backward(self, grad_y, input_grad=True):
        """dL/dx for dL/dy = ``grad_y`` of the latest forward; adds parameter gradients.

        ``input_grad=False``: dL/dx is not wanted; the chain passes it to its first child and
        returns None (see the module docstring).

        Every layer of the library defines its own.  A module that defines only ``forward``
        gets this one, which handles the chain case: when ``forward`` calls its children one
        after the other, each child's output (the same array, unchanged) being the next
        child's input, the first child taking ``forward``'s input and the last child's output
        being returned, then ``backward`` calls the children's ``backward`` in reverse order.
        A child may appear more than once (shared weights).  Anything else (arithmetic or a
        reshape between children, two branches, several inputs) raises
        ``NotImplementedError`` naming what broke the chain: define
        ``backward(self, grad_y)`` then (README: "Your own layer: forward and backward").

        Writing one: take back what ``forward`` kept with ``self.saved_tensors()``, add each
        trainable parameter's gradient with ``param.accumulate(grad)``, call the children's
        ``backward`` in the reverse order of their forward calls (a shared child pops its
        latest context first), sum the gradients of an input used more than once, and
        return dL/dx with the shape of ``x``.  Check it with ``nn.gradcheck_module``.
        """
        ctx = self.saved_tensors()
        if not isinstance(ctx, _Chain):
            raise NotImplementedError(
                f"{type(self).__name__} saves a context in forward() but does not define "
                f"backward(); define backward(self, grad_y) returning dL/dx (see "
                f"{README_SECTION})")
        if ctx.problem is not None:
            raise NotImplementedError(
                f"{type(self).__name__} does not define backward(), and its forward() is not a "
                f"chain of child modules: {ctx.problem}.  The default backward only runs the "
                f"children in reverse when each child's output is the next child's input.  "
                f"Define backward(self, grad_y) in {type(self).__name__}, calling each "
                f"child's backward in reverse order and adding the gradients of branches "
                f"(see {README_SECTION})")
        return chain_backward(ctx.children, grad_y, input_grad)

    def __call__(self, *args, **kwargs):
        st = _state
        for a in args:
            if type(a) is not np.ndarray:  # the common case costs one check per argument
                args = tuple(as_array(a, f"{type(self).__name__} argument {i}")
                             for i, a in enumerate(args))
                break
        if kwargs:
            kwargs = {k: as_array(v, k) for k, v in kwargs.items()}
        records = st.records
        top = not records
        if top:
            st.forward_id += 1
        enabled = st.enabled
        state = self.__dict__
        state["_no_grad_forward"] = not enabled
        record = [] if enabled and type(self).backward is Module.backward else None
        saves = state["_saves"]
        records.append(record)
        try:
            y = self.forward(*args, **kwargs)
            if record is not None:  # saved inside the call: it belongs to this forward
                chain = _Chain.of(record, args, kwargs, y)
                if self._saves != saves:
                    chain = _Chain((), "forward() calls save_for_backward() itself")
                self.save_for_backward(chain)
        except BaseException:
            if top:  # the contexts of a forward that failed half way will never be used
                for m in self.modules():
                    m._drop_forward(st.forward_id)
            raise
        finally:
            records.pop()
        if records and records[-1] is not None:
            records[-1].append((self, args, kwargs, y))
        return y

    # ------------------------------------------------------------------ saved contexts
    def save_for_backward(self, *values):
        """Keep what ``backward`` needs; :meth:`saved_tensors` takes it back once.

        Training mode pushes on this module's stack, eval mode keeps the latest top-level
        forward's contexts only, and under :class:`no_grad` nothing is kept.
        """
        st = _state
        if not st.enabled:
            return
        state = self.__dict__
        state["_saves"] += 1
        for v in values:
            if hasattr(v, "base") and hasattr(v, "shape"):
                _remember(v)
        if not st.records:  # forward() called directly, not through the module: its own pass
            st.forward_id += 1
        if not self.training:
            kept = self._saved_eval
            if kept is None or kept[0] != st.forward_id:
                kept = (st.forward_id, [])
                object.__setattr__(self, "_saved_eval", kept)
            kept[1].append(values)
            return
        stack = state["_saved"]
        if stack is None:
            stack = state["_saved"] = []
        if stack and stack[-1][2]:
            # A backward popped a later context over these: they were a stray forward's, or
            # a forward whose backward never came.  Either way no backward will use them.
            self._warn(f"{type(self).__name__}: {len(stack)} training-mode forward(s) never "
                       f"got their backward(); their saved contexts are dropped.  backward() "
                       f"pairs with the most recent forward(), so an extra forward between a "
                       f"forward and its backward (evaluation, logging) gave that backward "
                       f"the wrong context: run such forwards under `with nn.no_grad():` or "
                       f"in eval() mode")
            stack.clear()
        stack.append([values, st.forward_id, False])
        depth = len(stack)
        if depth >= _DEEP_STACK and not depth & (depth - 1):
            self._warn(f"{type(self).__name__}: {depth} training-mode forwards are waiting for "
                       f"their backward(), each holding its saved arrays; if they will never "
                       f"get one, run them under `with nn.no_grad():` or in eval() mode")

    def saved_tensors(self):
        """What the latest waiting forward saved; raises :class:`BackwardError` if nothing."""
        if not self.training:
            kept = self._saved_eval
            if kept is None or not kept[1]:
                self._no_context()
            values = kept[1].pop()
        else:
            stack = self._saved
            if not stack:
                self._no_context()
            values = stack.pop()[0]
            if stack:  # skipped over: a later forward's backward came first (the push
                stack[-1][2] = True  # checks only the top, so marking the top is enough)
        return values if len(values) != 1 else values[0]

    def _no_context(self):
        name = type(self).__name__
        if self._no_grad_forward:
            why = (f"its last forward ran under nn.no_grad(), which saves nothing; run the "
                   f"forward outside no_grad() to backpropagate")
        else:
            why = ("each forward() serves one backward(), and training and eval mode keep "
                   "separate contexts (was the mode switched between forward and backward?)")
        hint = ""
        if type(self).backward is Module.backward and not self._no_grad_forward:
            hint = ("; the default backward needs the module called as model(x), which "
                    "records the children, not model.forward(x)")
        raise BackwardError(f"{name}.backward() called before forward(), or twice for one "
                            f"forward(): {why}{hint}")

    def _drop_forward(self, forward_id):
        stack = self._saved
        if stack:
            stack[:] = [e for e in stack if e[1] != forward_id]
        kept = self._saved_eval
        if kept is not None and kept[0] == forward_id:
            object.__setattr__(self, "_saved_eval", None)

    def _warn(self, message):
        st = _state
        if st.warned != st.forward_id:  # one warning per top-level forward, not per layer
            st.warned = st.forward_id
            warnings.warn(message, UnusedContextWarning, stacklevel=_caller_level())

    def clear_saved(self):
        """Drop every context waiting for a backward, in this module and its children."""
        for m in self.modules():
            object.__setattr__(m, "_saved", None)
            object.__setattr__(m, "_saved_eval", None)
        return self

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
        """Move parameters, gradients and buffers to ``device`` and/or cast floats to ``dtype``.

        ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:0"`` (one GPU).  Waiting contexts are
        dropped: they live on the old device.
        """
        if device is not None:
            device = normalize_device(device)

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
        return self.clear_saved()

    def cuda(self, device=None):
        """``to("cuda")``; ``device`` may be None, 0 or ``"cuda:0"`` (one GPU)."""
        if device not in (None, 0, "cuda", "cuda:0"):
            raise ValueError(f"device: only one GPU (0, 'cuda' or 'cuda:0'), got {device!r}")
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

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


def _owner(a):
    """The array that owns ``a``'s memory (NumPy and CuPy keep it in ``.base``)."""
    return a if a.base is None else a.base


def _remember(a):
    try:
        _state.recent.append(weakref.ref(_owner(a)))
    except TypeError:  # an array type without weak references: nothing to protect
        pass


def recently_saved(a):
    """True if ``a`` shares its owner with an array one of the last few forwards saved for
    backward: overwriting it in place (``ReLU(inplace=True)``) would corrupt that backward."""
    owner = _owner(a)
    return any(ref() is owner for ref in _state.recent)


def _takes_input_grad(backward):
    try:
        params = inspect.signature(backward).parameters
    except (TypeError, ValueError):  # a builtin or otherwise opaque callable
        return False
    return "input_grad" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call_backward(module, grad_y, input_grad=True):
    """``module.backward(grad_y)``, passing ``input_grad=False`` on when the module takes it.

    A ``backward(self, grad_y)`` of a user's own layer is called without it and computes
    dL/dx as always (wasted work, never a wrong result).
    """
    if input_grad or not _takes_input_grad(module.backward):
        return module.backward(grad_y)
    return module.backward(grad_y, input_grad=False)


def chain_backward(children, grad_y, input_grad=True):
    """Backward through ``children`` called one after the other in forward (dL/dx, or None
    with ``input_grad=False``).

    Without an input gradient, leading children that only reshape (``Flatten``,
    ``Unflatten``, ``Identity``: class attribute ``_reshapes_only``) need no gradient of
    their output either: their contexts are dropped unread, and the first child after them
    is told ``input_grad=False``.
    """
    first = 0
    if not input_grad:
        while first < len(children) and getattr(children[first], "_reshapes_only", False) \
                and not children[first]._modules:
            first += 1
    for i in range(len(children) - 1, first - 1, -1):
        grad_y = call_backward(children[i], grad_y, input_grad or i > first)
    for i in range(first - 1, -1, -1):
        children[i].saved_tensors()   # the context its backward would have taken
    return grad_y if input_grad else None


def _caller_level():
    """The ``stacklevel`` of the first frame outside ``nn/`` (the user's call)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == here:
        frame, level = frame.f_back, level + 1
    return level


class _Chain:
    """What the default backward needs: the children of a chain forward, in call order, or
    why the forward was not a chain."""

    __slots__ = ("children", "problem")

    def __init__(self, children, problem):
        self.children = children
        self.problem = problem

    @classmethod
    def of(cls, calls, args, kwargs, y):
        """``calls``: (child, args, kwargs, output) for each child called by one forward."""
        def label(i, child):
            return f"child {i} ({type(child).__name__})"

        if len(args) != 1 or kwargs:
            return cls((), f"forward() takes {len(args)} positional and {len(kwargs)} keyword "
                           f"arguments, not one input")
        x = args[0]
        if not calls:
            if y is x:
                return cls((), None)
            return cls((), "forward() calls no child module but returns a new array")
        previous, previous_label = x, "the input of forward()"
        for i, (child, c_args, c_kwargs, c_y) in enumerate(calls):
            if len(c_args) != 1 or c_kwargs:
                return cls((), f"{label(i, child)} is called with {len(c_args)} positional "
                               f"and {len(c_kwargs)} keyword arguments")
            if c_args[0] is not previous:
                return cls((), f"the input of {label(i, child)} is not {previous_label} (an "
                               f"operation between them, e.g. arithmetic or a reshape, has "
                               f"no backward, or the children form branches)")
            previous, previous_label = c_y, f"the output of {label(i, child)}"
        if y is not previous:
            return cls((), f"forward() does not return {previous_label} (the returned array "
                           f"was changed or computed after the last child)")
        return cls(tuple(c[0] for c in calls), None)
