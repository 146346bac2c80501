"""Gradient checking: hand-derived backward passes against central differences.

For a function ``y = f(x_1, ..., x_k)`` and its hand-written backward, the checker draws a
fixed random ``grad_y`` and compares, for every element of every input, the analytic
``dL/dx`` of the scalar ``L = sum(grad_y * f(x))`` with the central difference
``sum(grad_y * (f(x + h e_i) - f(x - h e_i))) / 2h`` computed in float64.  Differencing the
outputs before the weighted sum keeps the rounding noise of outputs that do not depend on
``x_i`` out of the estimate (they cancel exactly, since the kernels are deterministic).

The error of one element is ``|a - n| / max(|a| + |n|, floor)``: relative, with a small
absolute floor so that elements whose true gradient is zero do not divide by zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels import device_of, to_device, to_host

from .module import no_grad


class GradcheckError(AssertionError):
    """A backward pass disagrees with finite differences; the message names the tensor."""


@dataclass
class TensorReport:
    name: str
    shape: tuple
    worst_error: float
    worst_index: tuple
    analytic: float
    numeric: float

    def __str__(self):
        return (f"{self.name} {self.shape}: worst relative error {self.worst_error:.3g} at "
                f"{self.worst_index} (analytic {self.analytic:.10g}, numeric {self.numeric:.10g})")


@dataclass
class GradcheckReport:
    tensors: list = field(default_factory=list)
    tolerance: float = 1e-6

    @property
    def worst_error(self):
        return max((t.worst_error for t in self.tensors), default=0.0)

    @property
    def ok(self):
        return self.worst_error <= self.tolerance

    def __str__(self):
        return "\n".join(str(t) for t in self.tensors)


def relative_error(a, b, floor=1e-8):
    """``|a-b| / max(|a|+|b|, floor)`` elementwise, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), floor)


def _compare(name, analytic, numeric, floor):
    err = relative_error(analytic, numeric, floor)
    if err.size == 0:
        return TensorReport(name, analytic.shape, 0.0, (), 0.0, 0.0)
    idx = np.unravel_index(int(np.argmax(err)), err.shape)
    return TensorReport(name, tuple(analytic.shape), float(err[idx]), tuple(int(i) for i in idx),
                        float(analytic[idx]), float(numeric[idx]))


def _raise_if_bad(report, what):
    bad = [t for t in report.tensors if not t.worst_error <= report.tolerance]
    if bad:
        lines = "\n  ".join(str(t) for t in bad)
        raise GradcheckError(f"gradient check failed for {what} (tolerance "
                             f"{report.tolerance:g}):\n  {lines}")


def gradcheck(forward, backward, inputs, *, wrt=None, eps=1e-5, tol=1e-6, floor=1e-8,
              seed=0, raise_on_failure=True):
    """Check ``backward`` against central differences of ``forward``.

    ``forward(*inputs)`` returns an array (or a scalar), and runs under :class:`nn.no_grad`
    (modules keep nothing); ``backward(grad_y, *inputs)`` runs its own forward if it needs
    one, and returns one gradient per input (a tuple, or a single array when there is one input),
    ``None`` for inputs that have no gradient.  ``inputs`` is a dict ``name -> array``
    (or a list, named ``input 0``...); float64 arrays give meaningful results.  ``wrt``
    restricts the check to some names.  Returns a :class:`GradcheckReport`; raises
    :class:`GradcheckError` naming the failing input when ``raise_on_failure``.
    """
    if not isinstance(inputs, dict):
        inputs = {f"input {i}": a for i, a in enumerate(inputs)}
    names = list(inputs)
    arrays = list(inputs.values())
    device = device_of(*[a for a in arrays if hasattr(a, "dtype")])
    host = [to_host(a).copy() if hasattr(a, "dtype") else a for a in arrays]

    def run(values):
        dev = [to_device(v, device) if isinstance(v, np.ndarray) else v for v in values]
        with no_grad():  # these forwards get no backward: a module must not keep them
            out = forward(*dev)
        # A copy: the output may be a view of the input (Identity, Flatten), which the
        # perturbation loop changes in place.
        return (np.array(to_host(out), copy=True) if hasattr(out, "dtype")
                else np.asarray(out, dtype=np.float64))

    y = run(host)
    rng = np.random.default_rng(seed)
    grad_y = rng.standard_normal(np.shape(y))
    grad_y_dev = to_device(grad_y.astype(y.dtype), device) if np.ndim(y) else float(grad_y)

    grads = backward(grad_y_dev, *[to_device(v, device) if isinstance(v, np.ndarray) else v
                                   for v in host])
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(names):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(names)} inputs")

    def directional(plus, minus):
        return float(np.sum(grad_y * (plus - minus)))

    report = GradcheckReport(tolerance=tol)
    for k, (name, grad) in enumerate(zip(names, grads)):
        if wrt is not None and name not in wrt:
            continue
        if grad is None or not isinstance(host[k], np.ndarray):
            continue
        analytic = to_host(grad).astype(np.float64)
        if analytic.shape != host[k].shape:
            raise ValueError(f"backward's gradient for {name} has shape {analytic.shape}, "
                             f"expected {host[k].shape}")
        numeric = np.zeros_like(analytic)
        flat = host[k].reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            plus = run(host)
            flat[i] = saved - eps
            minus = run(host)
            flat[i] = saved
            numeric.reshape(-1)[i] = directional(plus, minus) / (2 * eps)
        report.tensors.append(_compare(name, analytic, numeric, floor))
    if raise_on_failure:
        _raise_if_bad(report, getattr(forward, "__name__", "forward"))
    return report


def gradcheck_module(module, x, *, eps=1e-5, tol=1e-6, floor=1e-8, seed=0,
                     check_input=True, raise_on_failure=True):
    """Check a module's ``backward`` for its input and every trainable parameter.

    The module is run in whatever mode (train/eval) it is in; modules with randomness
    (Dropout) must be made deterministic by the caller.  Parameters are perturbed in place
    and restored.
    """
    device = device_of(x)
    x_host = to_host(x).astype(np.float64, copy=True) if x.dtype.kind == "f" else to_host(x)
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]

    def out():
        with no_grad():  # no backward follows: keep no context
            y = module(to_device(x_host, device))
        return np.array(to_host(y), copy=True)  # y may be a view of x (Identity, Flatten)

    y = out()
    rng = np.random.default_rng(seed)
    grad_y = rng.standard_normal(y.shape)

    module.zero_grad()
    module(to_device(x_host, device))  # called, not .forward(): a chain module records
    grad_x = module.backward(to_device(grad_y.astype(y.dtype), device))
    analytic = {n: to_host(p.grad).astype(np.float64).copy() for n, p in params}


    def numeric_for(values, write):
        numeric = np.zeros(values.shape, dtype=np.float64)
        flat = values.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            write()
            plus = out()
            flat[i] = saved - eps
            write()
            minus = out()
            flat[i] = saved
            write()
            numeric.reshape(-1)[i] = float(np.sum(grad_y * (plus - minus))) / (2 * eps)
        return numeric

    report = GradcheckReport(tolerance=tol)
    if check_input and x.dtype.kind == "f":
        report.tensors.append(_compare("input", to_host(grad_x).astype(np.float64),
                                       numeric_for(x_host, lambda: None), floor))
    for name, p in params:
        values = to_host(p.data).copy()

        def write(values=values, p=p):
            p.data[...] = to_device(values, device)

        report.tensors.append(_compare(name, analytic[name], numeric_for(values, write), floor))
    module.zero_grad()
    if raise_on_failure:
        _raise_if_bad(report, type(module).__name__)
    return report


def sample_away_from_kinks(rng, shape, kinks=(0.0,), margin=0.05, scale=1.0, dtype=np.float64):
    """Standard-normal samples times ``scale`` with none within ``margin`` of a kink.

    Central differences straddling a kink (relu at 0, a max-pool tie) measure neither side's
    derivative; samples too close to one are pushed out to the margin.
    """
    x = np.asarray(rng.standard_normal(shape) * scale)
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, margin, -margin)
    return x.astype(dtype)
