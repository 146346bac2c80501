"""Loss functions as modules: ``loss = fn(pred, target)``, then ``grad_pred = fn.backward()``.

The loss is a 0-d array on the inputs' device (``float(loss)`` works).  ``backward`` takes
an optional ``grad_loss`` (dL/dloss, default 1) and returns dL/dpred, same shape and dtype as
``pred``.  ``reduction`` is ``"mean"`` (torch's default) or ``"sum"``.

    MSELoss            (pred - target)^2
    CrossEntropyLoss   -sum_k q_k log softmax(logits)_k, logits (N, K), integer labels (N,),
                       q = (1 - s) onehot(label) + s / K with label smoothing s; mean over N
    BCEWithLogitsLoss  -(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))
    BCELoss            -(t log p + (1 - t) log(1 - p)), each log clamped at -100 like torch,
                       for probabilities p in [0, 1]
"""
from __future__ import annotations

import numpy as np

import kernels as K
from kernels.checks import check_floats, check_same_shape

from .module import Module

__all__ = ["MSELoss", "CrossEntropyLoss", "BCEWithLogitsLoss", "BCELoss"]

# torch's floor for p (1 - p) in BCELoss's gradient, so p = 0 or 1 gives a large finite value.
_BCE_EPS = 1e-12


def _check_reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    return reduction


def _scale(grad, grad_loss):
    """``grad * grad_loss`` in ``grad``'s dtype (no copy for the usual ``grad_loss = 1``)."""
    try:
        factor = float(grad_loss)
    except (TypeError, ValueError):
        raise TypeError(f"grad_loss: expected a number or a 0-d array, got "
                        f"{type(grad_loss).__name__} {getattr(grad_loss, 'shape', '')}") from None
    if factor == 1.0:
        return grad
    # multiply with out=: NumPy's ``*`` on a 0-d array returns a NumPy scalar, not an array
    xp = K.array_module(K.device_of(grad))
    return xp.multiply(grad, grad.dtype.type(factor), out=xp.empty_like(grad))


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def backward(self, grad_loss=1.0):
        """dL/dpred for ``L = grad_loss * loss`` of the last forward."""
        return _scale(self._grad(self.saved_tensors()), grad_loss)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Mean (or summed) squared error between ``pred`` and ``target`` of one shape."""

    def forward(self, pred, target):
        loss = K.mse_forward(pred, target, reduction=self.reduction)
        self.save_for_backward(pred, target)
        return loss

    def _grad(self, saved):
        pred, target = saved
        return K.mse_backward(pred, target, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits ``(N, K)`` against integer class labels ``(N,)``.

    Forward and gradient come from one fused kernel; the gradient is kept for ``backward``.
    """

    def __init__(self, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1], got "
                             f"{label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits, labels):
        loss, grad = K.cross_entropy_forward(logits, labels, reduction=self.reduction,
                                             label_smoothing=self.label_smoothing)
        self.save_for_backward(grad)
        return loss

    def _grad(self, grad):
        return grad

    def extra_repr(self):
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (sigmoid folded in, stable for large |x|)."""

    def forward(self, logits, target):
        loss = K.bce_with_logits_forward(logits, target, reduction=self.reduction)
        self.save_for_backward(logits, target)
        return loss

    def _grad(self, saved):
        logits, target = saved
        return K.bce_with_logits_backward(logits, target, reduction=self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities ``p`` in [0, 1] (prefer BCEWithLogitsLoss).

    Elementwise array glue on the inputs' device: no kernel of its own, as it is a handful of
    memory-bound operations on a usually small output.
    """

    def forward(self, p, target):
        device = check_floats(p=p, target=target)
        check_same_shape("p", p, "target", target)
        xp = K.array_module(device)
        if p.size:
            low, high = p.min(), p.max()

            def message(low=low, high=high):
                return (f"p: BCELoss expects probabilities in [0, 1], got values in "
                        f"[{float(K.to_host(low))}, {float(K.to_host(high))}]")
            if device == "cpu":
                if not (low >= 0.0 and high <= 1.0):
                    raise ValueError(message())
            else:
                # Checked on the device, raised at the next host read (kernels.to_host or
                # kernels.check_errors): reading p.min()/max() here would stall a GPU.
                K.defer_check(~((low >= 0.0) & (high <= 1.0)), message)
        with np.errstate(divide="ignore"):  # log(0) = -inf is clamped to -100 just below
            log_p = xp.maximum(xp.log(p), -100.0)
            log_q = xp.maximum(xp.log1p(-p), -100.0)
        losses = -(target * log_p + (1 - target) * log_q)
        total = losses.sum() if self.reduction == "sum" else losses.mean()
        self.save_for_backward(p, target)
        return xp.asarray(total, dtype=p.dtype)

    def _grad(self, saved):
        p, target = saved
        xp = K.array_module(K.device_of(p))
        grad = (p - target) / xp.maximum((1 - p) * p, _BCE_EPS)
        if self.reduction == "mean":
            grad = grad / p.dtype.type(p.size)
        return xp.asarray(grad)  # a 0-d p gives a NumPy scalar above; callers need an array
