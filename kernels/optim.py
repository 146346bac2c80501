"""Fused optimizer updates: one pass over a parameter does weight decay, moments and update.

Every array is one parameter's flat storage (any shape, C-contiguous), updated in place.
The rules are torch.optim's (single-tensor form), per element ``i``:

SGD  (``b`` momentum buffer, ``mu`` momentum, ``d`` dampening, ``wd`` weight decay)::

    g = grad + wd * p                                  (when wd != 0)
    b = g  on the first step, else  b = mu * b + (1 - d) * g        (when mu != 0)
    g = g + mu * b  (nesterov)   or   g = b                          (when mu != 0)
    p = p - lr * g

Adam / AdamW  (``m``, ``v`` moments, ``t`` the 1-based step, ``v_max`` for amsgrad)::

    p = p * (1 - lr * wd)   (AdamW, decoupled)   or   g = grad + wd * p   (Adam)
    m = lerp(m, g, 1 - beta1)
    v = beta2 * v + (1 - beta2) * g * g
    v_max = max(v_max, v);  v = v_max                                (amsgrad)
    p = p - (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

Scalars are folded in the launcher in float64 (as torch does in Python) and then cast to the
parameter's dtype, so a float32 parameter is updated in float32 arithmetic like torch's.
One loop iteration or one GPU thread updates one element: no races, no reductions.
"""
from __future__ import annotations

import math

from numba import cuda, njit, prange

from .checks import check_float, check_floats, check_same_shape, contiguous
from .device import array_module, dispatch

__all__ = ["sgd_step", "adam_step"]


# ---------------------------------------------------------------- SGD
@njit(parallel=True, cache=True)
def _sgd_step_cpu(param, grad, buf, neg_lr, weight_decay, momentum, one_minus_dampening,
                  use_weight_decay, use_momentum, nesterov, first_step):
    for i in prange(param.size):
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * param[i]
        if use_momentum:
            if first_step:
                b = g
            else:
                b = buf[i] * momentum + one_minus_dampening * g
            buf[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[i] = param[i] + neg_lr * g


@cuda.jit(cache=True)
def _sgd_step_cuda(param, grad, buf, neg_lr, weight_decay, momentum, one_minus_dampening,
                   use_weight_decay, use_momentum, nesterov, first_step):
    i = cuda.grid(1)
    if i < param.size:
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * param[i]
        if use_momentum:
            if first_step:
                b = g
            else:
                b = buf[i] * momentum + one_minus_dampening * g
            buf[i] = b
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        param[i] = param[i] + neg_lr * g


# ---------------------------------------------------------------- Adam / AdamW
# torch's lerp switches formula at weight 0.5 to stay accurate near both ends; so does this.
@njit(parallel=True, cache=True)
def _adam_step_cpu(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay,
                   decay_factor, w1, one_minus_w1, beta2, one_minus_beta2, bc2_sqrt, eps,
                   neg_step_size, use_l2, use_decoupled, amsgrad):
    for i in prange(param.size):
        p = param[i]
        g = grad[i]
        if use_decoupled:
            p = p * decay_factor
        if use_l2:
            g = g + weight_decay * p
        m = exp_avg[i]
        if w1 < 0.5:
            m = m + w1 * (g - m)
        else:
            m = g - (g - m) * one_minus_w1
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = math.sqrt(v) / bc2_sqrt + eps
        param[i] = p + neg_step_size * m / denom


@cuda.jit(cache=True)
def _adam_step_cuda(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, weight_decay,
                    decay_factor, w1, one_minus_w1, beta2, one_minus_beta2, bc2_sqrt, eps,
                    neg_step_size, use_l2, use_decoupled, amsgrad):
    i = cuda.grid(1)
    if i < param.size:
        p = param[i]
        g = grad[i]
        if use_decoupled:
            p = p * decay_factor
        if use_l2:
            g = g + weight_decay * p
        m = exp_avg[i]
        if w1 < 0.5:
            m = m + w1 * (g - m)
        else:
            m = g - (g - m) * one_minus_w1
        exp_avg[i] = m
        v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g
        exp_avg_sq[i] = v
        if amsgrad:
            v = max(max_exp_avg_sq[i], v)
            max_exp_avg_sq[i] = v
        denom = math.sqrt(v) / bc2_sqrt + eps
        param[i] = p + neg_step_size * m / denom


# ---------------------------------------------------------------- launchers
def _check_state(name, a, param):
    """An optimizer buffer: updated in place, so it must match ``param`` and be contiguous."""
    check_float(name, a)
    check_same_shape("param", param, name, a)
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (it is updated in place)")


def _check_number(name, value, low=0.0, high=None, high_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from None
    if not value >= low or (high is not None and (value >= high if high_open else value > high)):
        upper = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
        raise ValueError(f"{name}: expected a value in [{low}, {upper}, got {value!r}")
    return value


def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """One in-place SGD update of ``param`` (and ``momentum_buf``; None when momentum is 0).

    ``first_step`` starts the momentum buffer as a copy of the (decayed) gradient, as torch.
    """
    device = check_floats(param=param, grad=grad, momentum_buf=momentum_buf)
    check_same_shape("param", param, "grad", grad)
    if not param.flags.c_contiguous:
        raise ValueError("param: must be C-contiguous (it is updated in place)")
    lr = _check_number("lr", lr)
    momentum = _check_number("momentum", momentum)
    dampening = _check_number("dampening", dampening, high=1.0)
    weight_decay = _check_number("weight_decay", weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"nesterov: needs momentum > 0 and dampening == 0, got momentum="
                         f"{momentum}, dampening={dampening}")
    use_momentum = momentum != 0
    if use_momentum:
        if momentum_buf is None:
            raise ValueError(f"momentum_buf: required when momentum != 0 (momentum={momentum})")
        _check_state("momentum_buf", momentum_buf, param)
    xp = array_module(device)
    flat_param = param.reshape(-1)
    flat_grad = contiguous(xp, grad).reshape(-1)
    # Without momentum the buffer is never read or written; the read-only gradient stands in
    # (see adam_step for why it must not be an array the kernel writes).
    flat_buf = momentum_buf.reshape(-1) if use_momentum else flat_grad
    dt = param.dtype.type
    dispatch(device, _sgd_step_cpu, _sgd_step_cuda, param.size,
             flat_param, flat_grad, flat_buf, dt(-lr), dt(weight_decay), dt(momentum),
             dt(1.0 - dampening), weight_decay != 0, use_momentum, bool(nesterov),
             bool(first_step))


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9,
              beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False):
    """One in-place Adam (``decoupled=False``) or AdamW (``decoupled=True``) update.

    ``step`` is the 1-based count of this update (for bias correction); ``max_exp_avg_sq``
    is required with ``amsgrad`` and ignored (may be None) without it.
    """
    device = check_floats(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                          max_exp_avg_sq=max_exp_avg_sq if amsgrad else None)
    check_same_shape("param", param, "grad", grad)
    if not param.flags.c_contiguous:
        raise ValueError("param: must be C-contiguous (it is updated in place)")
    _check_state("exp_avg", exp_avg, param)
    _check_state("exp_avg_sq", exp_avg_sq, param)
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("max_exp_avg_sq: required when amsgrad=True")
        _check_state("max_exp_avg_sq", max_exp_avg_sq, param)
    if isinstance(step, bool) or not float(step) == int(step) or int(step) < 1:
        raise ValueError(f"step: expected a positive integer (1 on the first update), got "
                         f"{step!r}")
    step = int(step)
    lr = _check_number("lr", lr)
    beta1 = _check_number("beta1", beta1, high=1.0, high_open=True)
    beta2 = _check_number("beta2", beta2, high=1.0, high_open=True)
    eps = _check_number("eps", eps)
    weight_decay = _check_number("weight_decay", weight_decay)

    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bc2_sqrt = bias_correction2 ** 0.5
    xp = array_module(device)
    flat_param = param.reshape(-1)
    flat_grad = contiguous(xp, grad).reshape(-1)
    # Without amsgrad the running maximum is never touched and the (read-only) gradient
    # stands in for it: never a written array, since the simulator copies each argument in
    # and back out, and a second copy of a written array would undo its update.
    flat_max = max_exp_avg_sq.reshape(-1) if amsgrad else flat_grad
    dt = param.dtype.type
    w1 = dt(1 - beta1)
    dispatch(device, _adam_step_cpu, _adam_step_cuda, param.size,
             flat_param, flat_grad, exp_avg.reshape(-1), exp_avg_sq.reshape(-1), flat_max,
             dt(weight_decay), dt(1 - lr * weight_decay), w1, dt(1) - w1, dt(beta2),
             dt(1 - beta2), dt(bc2_sqrt), dt(eps), dt(-step_size),
             weight_decay != 0 and not decoupled, weight_decay != 0 and bool(decoupled),
             bool(amsgrad))
