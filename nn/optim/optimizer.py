"""Optimizers with torch.optim's update rules, parameter groups and state dicts.

Each ``step()`` runs one fused kernel per parameter (:func:`kernels.sgd_step`,
:func:`kernels.adam_step`, :func:`kernels.rmsprop_step`, :func:`kernels.adagrad_step`) that
applies weight decay, updates the momentum or moment buffers and the parameter in place, on
the parameter's own device and in its own dtype.

``state_dict()`` has torch's layout: ``{"state": {index: {name: array or number}},
"param_groups": [{hyperparameters..., "params": [index, ...]}]}`` where indices number the
parameters across groups in order.  The state keys (``momentum_buffer``; ``step``,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; ``square_avg``, ``grad_avg``; ``sum``) and
the group keys, in torch 2.13's order, are torch's, so a torch optimizer's state dict with its
tensors turned into NumPy arrays loads here and ours loads into torch.  Arrays are host NumPy
copies and everything else is JSON-able, so :func:`nn.save` can store it without pickle.

torch's implementation switches ``foreach``, ``fused`` and ``capturable`` are kept in the
groups (so the layouts match) and accepted: every step here is one fused kernel per parameter
whatever they say.  ``capturable=True`` (CUDA-graph capture) and ``differentiable=True``
(autograd through the step) have no counterpart and raise NotImplementedError.

``optimizer.found_inf`` (None by default; the attribute torch's fused optimizers read when a
``GradScaler`` sets it): a 1-element array on the parameters' device.  While it is nonzero,
``step()`` leaves every parameter and buffer untouched, and on a GPU the kernels read it
there, so a step guarded by a flag computed on the device needs no host round trip (the
Trainer's non-finite-loss guard).  Host-side counters (``step``, SGD's first step) still
count a skipped step: the flag is meant to stop a run at its next read, not to be resumed.
"""
from __future__ import annotations

import numpy as np

import kernels as K

from ..module import Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


def _check_range(name, value, low=0.0, high=None, high_open=True):
    """A float hyperparameter in ``[low, high)`` (or ``[low, inf)``); ValueError otherwise.

    The message starts as torch's (``Invalid momentum value: -1.0``) and adds the range.
    """
    if name == "learning rate" and hasattr(value, "shape"):
        # torch takes a one-element tensor lr (kept as a tensor for CUDA graphs); here the
        # rate is a plain number, and torch's own error comes first for a longer one.
        if int(np.prod(value.shape)) != 1:
            raise ValueError(f"Tensor lr must be 1-element (lr has shape {tuple(value.shape)})")
        raise TypeError(f"lr: expected a number, got a one-element {type(value).__name__}; "
                        f"pass float(lr)")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:
        upper = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
        raise ValueError(f"Invalid {name}: {value} (expected a value in [{low}, {upper})")


def _check_flag(group, name):
    value = group[name]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def _check_switches(group):
    """torch's implementation switches present in ``group``: accepted or clearly refused."""
    for name in ("foreach", "fused"):
        if name in group and group[name] not in (None, True, False):
            raise TypeError(f"{name}: expected None, True or False, got {group[name]!r}")
    if group.get("fused") and group.get("foreach"):
        raise ValueError("`fused` and `foreach` cannot be `True` together (fused=True, "
                         "foreach=True)")
    if group.get("fused") and group.get("differentiable"):
        raise ValueError("`fused` does not support `differentiable` (fused=True, "
                         "differentiable=True)")
    if group.get("differentiable"):
        raise NotImplementedError("differentiable=True: autograd through the optimizer step "
                                  "is not supported (gradients are written by hand here)")
    if group.get("capturable"):
        raise NotImplementedError("capturable=True: CUDA-graph capture is not supported; the "
                                  "step count lives on the host")
    _check_flag(group, "maximize")


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``step`` and state dicts.

    Subclasses set ``defaults``, check a group in :meth:`_check_group` and update one
    parameter in :meth:`_update`.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}  # Parameter -> dict of buffers and counters
        self.found_inf = None  # a device flag: skip the updates while nonzero (see above)
        self.param_groups = []
        if isinstance(params, Parameter):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Parameters or dicts, but got a single Parameter (pass [p] or "
                            "model.parameters())")
        if isinstance(params, dict):
            params = [params]
        if isinstance(params, set):
            raise TypeError("params: use a list, not a set (a set's order changes between "
                            "runs, and state dicts depend on it)")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group):
        """Add a group ``{"params": [...], "lr": ..., ...}``; missing options take the defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group: missing the 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, set):
            raise TypeError("param_group['params']: use a list, not a set (a set's order "
                            "changes between runs, and state dicts depend on it)")
        params = [params] if isinstance(params, Parameter) else list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names and len(names) != len(params):
            raise ValueError(f"all optimizer params should be with/without names. Some param "
                             f"names are missing (param_group['params'] has {len(names)} named "
                             f"of {len(params)})")
        for k, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"param_group['params'][{k}]: the optimizer can only optimize "
                                f"nn.Parameter objects, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("param_group['params']: a parameter appears more than once")
        for k, other in enumerate(self.param_groups):
            if bool(names) != ("param_names" in other):
                raise ValueError(f"all optimizer param groups should be with/without names. "
                                 f"cannot add param group {'with' if names else 'without'} "
                                 f"names to the optimizer (group {k} is "
                                 f"{'without' if names else 'with'} names)")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        if names:
            group["param_names"] = names
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        """Raise ValueError for invalid hyperparameters in ``group``."""

    # ------------------------------------------------------------------ steps
    def zero_grad(self, set_to_none=True):
        """Forget the gradients: ``.grad = None`` (torch's default), or fill them with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient and requires one; returns ``closure()``."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                self._update(p, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p, state, group):
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [...]}``, host arrays (torch's layout)."""
        index = {}
        groups = []
        for group in self.param_groups:
            saved = {k: (list(v) if isinstance(v, list) else v)
                     for k, v in group.items() if k != "params"}
            saved["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(saved)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    state[index[id(p)]] = {k: (K.to_host(v).copy() if hasattr(v, "shape") else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore groups' hyperparameters and per-parameter state saved by :meth:`state_dict`.

        Arrays move to each parameter's device and dtype.  Everything is checked before
        anything changes: the number of groups and of parameters per group, and every
        buffer's shape.
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"optimizer state_dict: expected the keys ['param_groups', 'state'],"
                             f" got {got}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"optimizer state_dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        by_index = {}
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"optimizer state_dict: parameter group {g} holds "
                                 f"{len(saved['params'])} parameters, this optimizer's holds "
                                 f"{len(group['params'])}")
            for i, p in zip(saved["params"], group["params"]):
                by_index[int(i)] = p
        new_state = {}
        for key, entry in state_dict["state"].items():
            if int(key) not in by_index:
                raise ValueError(f"optimizer state_dict: state for parameter {key}, which no "
                                 f"parameter group lists")
            p = by_index[int(key)]
            restored = {}
            for name, value in entry.items():
                if hasattr(value, "shape") and np.ndim(value) == 0:
                    value = K.to_host(value).item()
                if name == "step" and isinstance(value, float) and value.is_integer():
                    value = int(value)  # torch keeps the count as a float tensor
                if hasattr(value, "shape"):
                    if tuple(value.shape) != p.shape:
                        raise ValueError(f"optimizer state_dict: state[{key}][{name!r}] has shape"
                                         f" {tuple(value.shape)}, parameter has {p.shape}")
                    value = K.to_device(np.array(K.to_host(value), dtype=p.dtype), p.device)
                restored[name] = value
            new_state[p] = restored
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new = {k: (list(v) if isinstance(v, list) else v)
                   for k, v in saved.items() if k != "params"}
            # Options a state dict from an older version (or torch's) lacks take the defaults,
            # as torch's __setstate__ does.
            for key, value in self.defaults.items():
                new.setdefault(key, value)
            if "betas" in new:
                new["betas"] = tuple(new["betas"])
            new["params"] = group["params"]
            if "param_names" in group and "param_names" not in new:
                new["param_names"] = group["param_names"]
            self._check_group(new)
            new_groups.append(new)
        # Update the group dicts in place: schedulers hold references to them.
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """Stochastic gradient descent with torch's momentum, dampening, Nesterov and weight decay."""

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    def _check_group(self, group):
        _check_range("learning rate", group["lr"])
        _check_range("momentum value", group["momentum"])
        _check_range("dampening", group["dampening"], high=1.0, high_open=False)
        _check_range("weight_decay value", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        _check_switches(group)

    def _update(self, p, state, group):
        momentum = group["momentum"]
        buf = state.get("momentum_buffer")
        first = buf is None
        if momentum != 0 and first:
            buf = K.array_module(p.device).empty_like(p.data)
            state["momentum_buffer"] = buf
        K.sgd_step(p.data, p.grad, buf if momentum != 0 else None, group["lr"], momentum,
                   group["dampening"], group["weight_decay"], group["nesterov"], first,
                   group["maximize"], found_inf=getattr(self, "found_inf", None))


class Adam(Optimizer):
    """Adam (optionally AMSGrad); ``decoupled_weight_decay=True`` makes it AdamW."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, foreach=foreach,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _check_group(self, group):
        _check_range("learning rate", group["lr"])
        _check_range("epsilon value", group["eps"])
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: expected a pair, got {betas!r}")
        _check_range("beta parameter at index 0", betas[0], high=1.0)
        _check_range("beta parameter at index 1", betas[1], high=1.0)
        _check_range("weight_decay value", group["weight_decay"])
        _check_switches(group)

    def _update(self, p, state, group):
        xp = K.array_module(p.device)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        K.adam_step(p.data, p.grad, state["exp_avg"], state["exp_avg_sq"],
                    state.get("max_exp_avg_sq"), state["step"], group["lr"], beta1, beta2,
                    group["eps"], group["weight_decay"], group["decoupled_weight_decay"],
                    group["amsgrad"], group["maximize"],
                    found_inf=getattr(self, "found_inf", None))


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * weight_decay`` before the Adam step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


class RMSprop(Optimizer):
    """RMSprop as torch's: a running average of squared gradients scales each step.

    ``centered`` subtracts the squared running average of the gradients (an estimate of the
    variance instead of the second moment); ``momentum > 0`` adds a momentum buffer.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps,
                                      centered=centered, weight_decay=weight_decay,
                                      capturable=capturable, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable))

    def _check_group(self, group):
        _check_range("learning rate", group["lr"])
        _check_range("epsilon value", group["eps"])
        _check_range("momentum value", group["momentum"])
        _check_range("weight_decay value", group["weight_decay"])
        _check_range("alpha value", group["alpha"])
        _check_flag(group, "centered")
        _check_switches(group)

    def _update(self, p, state, group):
        xp = K.array_module(p.device)
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.data)
        # As torch, the buffers are created with the state; one a later change of the group's
        # options asks for is created then (torch would fail with a KeyError).
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(p.data)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = xp.zeros_like(p.data)
        state["step"] += 1
        K.rmsprop_step(p.data, p.grad, state["square_avg"], state.get("grad_avg"),
                       state.get("momentum_buffer"), group["lr"], group["alpha"], group["eps"],
                       group["weight_decay"], group["momentum"], group["centered"],
                       group["maximize"], found_inf=getattr(self, "found_inf", None))


class Adagrad(Optimizer):
    """Adagrad as torch's: each element's step shrinks with its sum of squared gradients.

    As torch, the state (``step`` 0 and ``sum`` filled with ``initial_accumulator_value``)
    exists from construction, so a fresh optimizer's state dict already lists it, and the
    constructor's ``initial_accumulator_value`` fills every sum, also one of a group that
    names its own value or one added later with :meth:`add_param_group`.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused))
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state.setdefault(p, {}))

    def _check_group(self, group):
        _check_range("learning rate", group["lr"])
        _check_range("lr_decay value", group["lr_decay"])
        _check_range("weight_decay value", group["weight_decay"])
        _check_range("initial_accumulator_value value", group["initial_accumulator_value"])
        _check_range("epsilon value", group["eps"])
        _check_switches(group)

    def _init_state(self, p, state):
        state["step"] = 0
        xp = K.array_module(p.device)
        state["sum"] = xp.full(p.shape, self.defaults["initial_accumulator_value"], p.dtype)

    def _update(self, p, state, group):
        if not state:
            self._init_state(p, state)
        state["step"] += 1
        K.adagrad_step(p.data, p.grad, state["sum"], state["step"], group["lr"],
                       group["lr_decay"], group["weight_decay"], group["eps"],
                       group["maximize"], found_inf=getattr(self, "found_inf", None))
