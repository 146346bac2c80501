"""Losses: cross-entropy from logits, mean squared error, binary cross-entropy with logits.

    cross_entropy   logits (N, K), labels (N,) int32/int64 in [0, K)
                    q = (1 - eps) onehot(label) + eps / K             (label smoothing eps)
                    loss_n = -sum_k q_k log_softmax(logits_n)_k
                           = log s - (1 - eps) (x_label - m) - eps/K sum_k (x_k - m)
                    grad_n = softmax(logits_n) - q_n                   (fused with the forward)
    mse             pred, target: any shape;  loss_i = (pred_i - target_i)**2
                    grad = 2 (pred - target)
    bce_with_logits logits, target: any shape
                    loss_i = max(x, 0) - x t + log(1 + exp(-|x|))     (never overflows)
                    grad = sigmoid(x) - t

``reduction="mean"`` divides the sum by N for cross-entropy (torch) and by the number of
elements for the others; ``"sum"`` does not.  Gradients are for a loss gradient of 1.  Losses
come back as 0-d arrays of the input's dtype on the input's device.

Each kernel writes one partial loss per row (cross-entropy) or per element (the others), then
``xp.sum`` adds the partials in a fixed order: the loss does not depend on the thread count.
On CUDA, cross-entropy runs one thread per row for the row statistics, then one thread per
logit for the gradient.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from numba import cuda, njit, prange

from . import fastmath as fm
from .checks import check_float, check_floats, check_same_shape, contiguous
from .device import CPU, array_module, defer_check, device_of, dispatch, launch, to_host
from .softmax import (WIDE_ROW, _combine_max_sum_cuda, _exp_shifted, _row_max,
                      row_stats_partials)

__all__ = ["cross_entropy_forward", "mse_forward", "mse_backward", "bce_with_logits_forward",
           "bce_with_logits_backward"]

# Same flags as kernels/activation.py: no zero-division test, fused multiply-adds.
_cpu = njit(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})


# ---------------------------------------------------------------- cross-entropy (fused)
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _row_sum_shifted(a, c):
    # sum_k (a_k - c): subtracting first keeps the sum small when c, the row's maximum, is large.
    s = a.dtype.type(0)
    for k in range(a.size):
        s += a[k] - c
    return s


@_cpu
def _cross_entropy_cpu(losses, grad, x, labels, smoothing, scale):
    K = x.shape[1]
    on = x.dtype.type(1) - smoothing   # weight of the label's log-probability
    off = smoothing / x.dtype.type(K)  # weight of every class's log-probability
    for n in prange(x.shape[0]):
        label = labels[n]
        m = _row_max(x[n])
        s64 = _exp_shifted(grad[n], x[n], m)
        s = x.dtype.type(s64)
        loss = math.log(s64) - on * (x[n, label] - m)
        if smoothing != 0:
            loss -= off * _row_sum_shifted(x[n], m)
        losses[n] = loss
        for k in range(K):
            q = off + on if k == label else off
            grad[n, k] = (grad[n, k] / s - q) * scale


@cuda.jit(device=True, inline=True)
def _write_row_loss_cuda(losses, m_out, s_out, x, labels, smoothing, n, m, s, shifted):
    """Row n's loss from its maximum m, sum s of exp(x - m) and sum of (x - m); keeps m, s."""
    K = x.shape[1]
    # Clamped: a bad label is reported by the deferred check, never read out of bounds.
    label = min(max(labels[n], 0), K - 1)
    loss = math.log(s) - (x.dtype.type(1) - smoothing) * (x[n, label] - m)
    losses[n] = loss - smoothing / x.dtype.type(K) * shifted
    m_out[n] = m
    s_out[n] = s


@cuda.jit(cache=True)
def _cross_entropy_rows_cuda(losses, m_out, s_out, x, labels, smoothing):
    n = cuda.grid(1)
    if n < x.shape[0]:
        K = x.shape[1]
        m = x[n, 0]
        for k in range(1, K):
            v = x[n, k]
            m = v if v > m else m
        s = x.dtype.type(0)
        shifted = x.dtype.type(0)
        for k in range(K):
            s += math.exp(x[n, k] - m)
            shifted += x[n, k] - m
        _write_row_loss_cuda(losses, m_out, s_out, x, labels, smoothing, n, m, s, shifted)


@cuda.jit(cache=True)
def _cross_entropy_finish_cuda(losses, m_out, s_out, pm, ps, pt, x, labels, smoothing):
    # Wide rows: the row's m, s and sum of (x - m) from the block-per-row partials
    # (kernels/softmax.py), then the same loss as _cross_entropy_rows_cuda.
    n = cuda.grid(1)
    if n < x.shape[0]:
        K = x.shape[1]
        B = pm.shape[1]
        m, s = _combine_max_sum_cuda(pm, ps, n)
        shifted = x.dtype.type(0)
        q = K // B
        r = K - q * B
        for j in range(B):
            # pt[n, j] sums (x - pm[n, j]) over the thread's elements (x[n, j::B], q or q + 1
            # of them): re-centre it on the row's maximum m.
            count = q + 1 if j < r else q
            shifted += pt[n, j] + x.dtype.type(count) * (pm[n, j] - m)
        _write_row_loss_cuda(losses, m_out, s_out, x, labels, smoothing, n, m, s, shifted)


@cuda.jit(cache=True)
def _cross_entropy_grad_cuda(grad, x, labels, m, s, smoothing, scale):
    i = cuda.grid(1)
    if i < x.size:
        K = x.shape[1]
        n = i // K
        k = i - n * K
        q = smoothing / x.dtype.type(K)
        if k == labels[n]:
            q += x.dtype.type(1) - smoothing
        grad[n, k] = (math.exp(x[n, k] - m[n]) / s[n] - q) * scale


# ---------------------------------------------------------------- mse
@_cpu
def _mse_forward_cpu(losses, pred, target):
    for i in prange(pred.size):
        d = pred[i] - target[i]
        losses[i] = d * d


@cuda.jit(cache=True)
def _mse_forward_cuda(losses, pred, target):
    i = cuda.grid(1)
    if i < pred.size:
        d = pred[i] - target[i]
        losses[i] = d * d


@_cpu
def _mse_backward_cpu(grad, pred, target, scale):
    for i in prange(pred.size):
        grad[i] = (pred[i] - target[i]) * scale


@cuda.jit(cache=True)
def _mse_backward_cuda(grad, pred, target, scale):
    i = cuda.grid(1)
    if i < pred.size:
        grad[i] = (pred[i] - target[i]) * scale


# ---------------------------------------------------------------- bce with logits
@_cpu
def _bce_forward_cpu(losses, x, target):
    for i in prange(x.size):
        v = x[i]
        # (max(v, 0) - v t) first: at v = 100, t = 1 it is exactly 0, and the tiny
        # log(1 + e**-100) survives instead of being rounded away.
        losses[i] = ((v if v > 0 else 0) - v * target[i]) + fm.softplus(-abs(v))


@cuda.jit(cache=True)
def _bce_forward_cuda(losses, x, target):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        losses[i] = (((v if v > 0 else x.dtype.type(0)) - v * target[i])
                     + math.log1p(math.exp(-abs(v))))


@_cpu
def _bce_backward_cpu(grad, x, target, scale):
    for i in prange(x.size):
        grad[i] = (fm.sigmoid(x[i]) - target[i]) * scale


@cuda.jit(cache=True)
def _bce_backward_cuda(grad, x, target, scale):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        one = x.dtype.type(1)
        e = math.exp(-abs(v))
        grad[i] = ((one if v >= 0 else e) / (one + e) - target[i]) * scale


# ---------------------------------------------------------------- launchers
def _check_reduction(reduction):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")


def _total(xp, partials, dtype, count, reduction):
    """The loss as a 0-d array: the partials summed in a fixed order, divided for "mean"."""
    if reduction == "mean" and count == 0:
        return xp.asarray(np.nan, dtype=dtype)  # torch's mean of nothing, without a warning
    total = xp.sum(partials, dtype=dtype)
    if reduction == "mean":
        total = total / dtype.type(count)
    return xp.asarray(total, dtype=dtype)


def _pair(name_a, a, name_b, b):
    """Two float arrays of one shape, dtype and device, made contiguous and flat."""
    device = check_floats(**{name_a: a, name_b: b})
    check_same_shape(name_a, a, name_b, b)
    xp = array_module(device)
    return device, xp, contiguous(xp, a), contiguous(xp, b)


def _elementwise_loss(cpu_kernel, cuda_kernel, name_a, a, name_b, b, reduction):
    _check_reduction(reduction)
    device, xp, a, b = _pair(name_a, a, name_b, b)
    losses = xp.empty(a.size, dtype=a.dtype)
    dispatch(device, cpu_kernel, cuda_kernel, a.size, losses, a.reshape(-1), b.reshape(-1))
    return _total(xp, losses, a.dtype, a.size, reduction)


def _elementwise_grad(cpu_kernel, cuda_kernel, name_a, a, name_b, b, reduction, factor):
    _check_reduction(reduction)
    device, xp, a, b = _pair(name_a, a, name_b, b)
    scale = factor / a.size if reduction == "mean" and a.size else factor
    grad = xp.empty_like(a)
    dispatch(device, cpu_kernel, cuda_kernel, a.size, grad.reshape(-1), a.reshape(-1),
             b.reshape(-1), a.dtype.type(scale))
    return grad


def cross_entropy_forward(logits, labels, reduction="mean", label_smoothing=0.0):
    """``(loss, grad_logits)`` of softmax cross-entropy with integer ``labels``, fused."""
    _check_reduction(reduction)
    check_float("logits", logits, ndim=2)
    if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
            or not 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
    if not hasattr(labels, "dtype") or np.dtype(labels.dtype) not in (np.int32, np.int64):
        raise TypeError(f"labels: expected an int32 or int64 array, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    N, K = logits.shape
    if labels.shape != (N,):
        raise ValueError(f"labels: expected shape ({N},) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    device = device_of(logits, labels, names=["logits", "labels"])
    xp = array_module(device)
    if N and K == 0:
        raise ValueError(f"logits: need at least one class, got shape {tuple(logits.shape)}")
    if N:
        low, high = labels.min(), labels.max()

        def message(low=low, high=high):
            return (f"labels: expected class indices in [0, {K}), got values in "
                    f"[{int(to_host(low))}, {int(to_host(high))}]")
        if device == CPU:
            if low < 0 or high >= K:
                raise ValueError(message())
        else:
            # Reading low/high here would stall the GPU twice per call: the verdict stays on
            # the device and is raised at the next read (kernels.to_host / check_errors); the
            # kernels clamp labels, so a bad one never reads outside the logits.
            defer_check((low < 0) | (high >= K), message)
    logits, labels = contiguous(xp, logits), contiguous(xp, labels)
    dtype = logits.dtype
    smoothing = dtype.type(label_smoothing)
    scale = dtype.type(1.0 / N if reduction == "mean" and N else 1.0)
    losses = xp.empty(N, dtype=dtype)
    grad = xp.empty_like(logits)
    if N:
        if device == CPU:
            dispatch(CPU, _cross_entropy_cpu, None, logits.size, losses, grad, logits, labels,
                     smoothing, scale)
        else:
            m = xp.empty(N, dtype=dtype)
            s = xp.empty(N, dtype=dtype)
            if K < WIDE_ROW:
                launch(_cross_entropy_rows_cuda, N, losses, m, s, logits, labels, smoothing)
            else:   # a block per row for the statistics
                pm, ps, pt = row_stats_partials(xp, logits)
                launch(_cross_entropy_finish_cuda, N, losses, m, s, pm, ps, pt, logits, labels,
                       smoothing)
            launch(_cross_entropy_grad_cuda, logits.size, grad, logits, labels, m, s,
                   smoothing, scale)
    return _total(xp, losses, dtype, N, reduction), grad


def mse_forward(pred, target, reduction="mean"):
    """Mean (or sum) of ``(pred - target)**2``."""
    return _elementwise_loss(_mse_forward_cpu, _mse_forward_cuda, "pred", pred, "target",
                             target, reduction)


def mse_backward(pred, target, reduction="mean"):
    """``2 (pred - target)``, divided by the element count for ``"mean"``."""
    return _elementwise_grad(_mse_backward_cpu, _mse_backward_cuda, "pred", pred, "target",
                             target, reduction, 2.0)


def bce_with_logits_forward(logits, target, reduction="mean"):
    """Mean (or sum) of ``max(x, 0) - x t + log(1 + exp(-|x|))``."""
    return _elementwise_loss(_bce_forward_cpu, _bce_forward_cuda, "logits", logits, "target",
                             target, reduction)


def bce_with_logits_backward(logits, target, reduction="mean"):
    """``sigmoid(logits) - target``, divided by the element count for ``"mean"``."""
    return _elementwise_grad(_bce_backward_cpu, _bce_backward_cuda, "logits", logits,
                             "target", target, reduction, 1.0)
