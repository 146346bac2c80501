"""Gradient-flow diagnostics: per-layer gradient and parameter norms, dead ReLU units, plots.

* :func:`layer_norms` reads, after a backward pass, ``|grad|`` and ``|param|`` (Frobenius
  norms) of every trainable parameter, in the order of ``model.named_parameters()`` - for a
  feed-forward network that is the order of depth.
* :class:`GradientFlow` records them at every training step.  Call ``flow.record(model)``
  after ``model.backward(...)`` in a hand-written loop; or ``flow.attach(model, optimizer)``
  once, which records just before every ``optimizer.step()`` (when the gradients are
  there), so it works inside any fit loop, ``nn.Trainer`` included, until ``flow.detach()``;
  or call ``on_after_backward(trainer)`` from a fit loop's callback hook.
* :func:`dead_relu_fraction` runs the model on a batch and reports, for every ReLU layer,
  the fraction of its units that output zero for every sample.  A unit is one feature of a
  ``(N, F)`` output, or one channel of an ``(N, C, H, W)`` output (zero at every position).
  A dead unit passes no gradient and, once dead, cannot come back by gradient descent.
* :func:`plot_gradient_flow` draws gradient norm against depth (log scale), one line per
  run or step - vanishing gradients show up as a slope down towards the input.
"""
from __future__ import annotations

import numpy as np

from kernels import array_module, device_of, to_host

__all__ = ["layer_norms", "GradientFlow", "dead_relu_fraction", "plot_gradient_flow"]


def _norm(a):
    xp = array_module(device_of(a))
    return float(to_host(xp.sqrt(xp.sum(a.astype(np.float64) ** 2))))


def layer_norms(model, weights_only=False):
    """``{name: (grad_norm, param_norm)}`` for every trainable parameter (grad None -> 0).

    ``weights_only`` keeps parameters with at least 2 dimensions (the weights of Linear and
    Conv layers, one per layer), the usual x-axis of a gradient-flow plot.
    """
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or (weights_only and len(p.shape) < 2):
            continue
        out[name] = (0.0 if p.grad is None else _norm(p.grad), _norm(p.data))
    return out


class GradientFlow:
    """Per-step records of per-layer gradient and parameter norms.

    ``steps`` lists the step numbers, ``names`` the parameters, ``grad_norms`` and
    ``param_norms`` are ``(steps, layers)`` arrays.  ``every`` records one step in that many.
    """

    def __init__(self, weights_only=True, every=1):
        if every < 1:
            raise ValueError(f"every: expected a positive integer, got {every}")
        self.weights_only = weights_only
        self.every = int(every)
        self.names = None
        self.steps = []
        self._grads, self._params = [], []
        self._count = 0
        self._attached = None

    def record(self, model, step=None):
        """Record the norms now (call after backward, before the optimizer step)."""
        self._count += 1
        if (self._count - 1) % self.every:
            return
        norms = layer_norms(model, self.weights_only)
        if self.names is None:
            self.names = list(norms)
        elif list(norms) != self.names:
            raise ValueError(f"model: its trainable parameters changed between records "
                             f"(had {self.names}, now {list(norms)})")
        self.steps.append(self._count - 1 if step is None else step)
        self._grads.append([g for g, _ in norms.values()])
        self._params.append([p for _, p in norms.values()])

    def attach(self, model, optimizer):
        """Record ``model`` just before each ``optimizer.step()`` from now on; returns self."""
        if self._attached is not None:
            raise RuntimeError("GradientFlow: already attached; call detach() first")
        step = optimizer.step

        def recording_step(*args, **kwargs):
            self.record(model)
            return step(*args, **kwargs)

        optimizer.step = recording_step
        self._attached = optimizer
        return self

    def detach(self):
        """Stop recording at the optimizer's steps (undo :meth:`attach`)."""
        optimizer = self._attached
        if optimizer is not None:
            del optimizer.step  # the instance attribute: the class's step shows again
            self._attached = None

    def on_after_backward(self, trainer):
        """Fit-loop callback hook: the trainer has run backward and not yet stepped."""
        self.record(trainer.model)

    @property
    def grad_norms(self):
        return np.array(self._grads).reshape(len(self.steps), -1)

    @property
    def param_norms(self):
        return np.array(self._params).reshape(len(self.steps), -1)

    def summary(self):
        """One line: first- and last-layer gradient norms at the first and last record."""
        g = self.grad_norms
        if not len(g):
            return "no steps recorded"
        return (f"{len(self.steps)} steps; first layer |grad| {g[0, 0]:.3g} -> {g[-1, 0]:.3g}, "
                f"last layer {g[0, -1]:.3g} -> {g[-1, -1]:.3g}")

    def plot(self, path, steps=None, title="gradient flow"):
        """Gradient norm against depth at the recorded steps (default: first and last)."""
        rows = [0, len(self.steps) - 1] if steps is None else [self.steps.index(s) for s in steps]
        curves = {f"step {self.steps[r]}": self.grad_norms[r] for r in dict.fromkeys(rows)}
        return plot_gradient_flow(curves, path, names=self.names, title=title)


def dead_relu_fraction(model, x):
    """``{relu_layer_name: fraction of its units that are zero for every sample of x}``.

    Runs one forward pass in the model's current mode; nothing is kept for backward.
    """
    from .activation import ReLU

    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, ReLU)]
    alive = {}

    def watch(name, module):
        forward = type(module).forward

        def recording(x_in):
            y = forward(module, x_in)
            xp = array_module(device_of(y))
            positive = y > 0
            # reduce over the batch and any spatial axes: one flag per feature / channel
            axes = (0,) + tuple(range(2, y.ndim))
            seen = to_host(xp.any(positive, axis=axes)) if y.ndim > 1 else to_host(positive)
            alive[name] = seen if name not in alive else (alive[name] | seen)
            return y

        return recording

    for name, m in relus:
        m.forward = watch(name, m)
    try:
        model(x)
    finally:
        for _, m in relus:
            del m.forward
            object.__setattr__(m, "_saved", None)
        for m in model.modules():
            object.__setattr__(m, "_saved", None)
    return {name: float(1.0 - np.mean(alive[name])) for name, _ in relus if name in alive}


def plot_gradient_flow(curves, path, names=None, title="gradient flow"):
    """Gradient norm (log) against layer depth; ``curves`` maps a label to per-layer norms."""
    from . import plots

    fig, ax = plots.subplots(figsize=(6, 3.8))
    for label, values in curves.items():
        values = np.asarray(values, dtype=np.float64)
        # a zero gradient (a dead layer) has no logarithm: it shows as a gap in the line
        ax.semilogy(np.arange(1, values.size + 1), np.where(values > 0, values, np.nan), "o-",
                    ms=3, label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer (input -> output)")
    ax.set_ylabel("|gradient| of the weight")
    if names is not None and len(names) <= 12:
        ax.set_xticks(np.arange(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, path)
