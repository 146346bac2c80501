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

RMSprop  (``s`` square average, ``a`` gradient average when centered, ``b`` momentum buffer)::

    g = grad + wd * p                                  (when wd != 0)
    s = alpha * s + (1 - alpha) * g * g
    a = lerp(a, g, 1 - alpha);  d = sqrt(s - a * a) + eps            (centered)
    d = sqrt(s) + eps                                                 (otherwise)
    b = mu * b + g / d;  p = p - lr * b                              (when mu > 0)
    p = p - lr * g / d                                                (otherwise)

Adagrad  (``s`` the running sum of squares, starting at ``initial_accumulator_value``)::

    g = grad + wd * p                                  (when wd != 0)
    s = s + g * g
    p = p - (lr / (1 + (t - 1) * lr_decay)) * g / (sqrt(s) + eps)

``maximize`` (every optimizer) negates the gradient first, before weight decay, as torch.
Each rule is written in the order torch's single-tensor code rounds it (``addcmul``,
``addcdiv`` and ``lerp`` evaluate ``(value * t1) * t2``, ``(value * t1) / t2`` and switch
formulas at ``|weight| = 0.5``), so float32 results agree with torch's to an ulp or two.

Scalars are folded in the launcher in float64 (as torch does in Python) and then cast to the
parameter's dtype, so a float32 parameter is updated in float32 arithmetic like torch's.
One loop iteration or one GPU thread updates one element: no races, no reductions.
"""
from __future__ import annotations

import math

from numba import cuda, njit, prange

from .checks import check_float, check_floats, check_same_shape, contiguous
from .device import CPU, array_module, device_of, dispatch

__all__ = ["sgd_step", "adam_step", "rmsprop_step", "adagrad_step"]


# ---------------------------------------------------------------- SGD
@njit(parallel=True, cache=True)
def _sgd_step_cpu(param, grad, buf, neg_lr, weight_decay, momentum, one_minus_dampening,
                  use_weight_decay, use_momentum, nesterov, first_step, maximize):
    for i in prange(param.size):
        g = -grad[i] if maximize else grad[i]
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
                   use_weight_decay, use_momentum, nesterov, first_step, maximize, found_inf):
    i = cuda.grid(1)
    if i < param.size and found_inf[0] == 0:
        g = -grad[i] if maximize else grad[i]
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
                   neg_step_size, use_l2, use_decoupled, amsgrad, maximize):
    for i in prange(param.size):
        p = param[i]
        g = -grad[i] if maximize else grad[i]
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
                    neg_step_size, use_l2, use_decoupled, amsgrad, maximize, found_inf):
    i = cuda.grid(1)
    if i < param.size and found_inf[0] == 0:
        p = param[i]
        g = -grad[i] if maximize else grad[i]
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


# ---------------------------------------------------------------- RMSprop / Adagrad
# The per-element rules are written once and compiled twice: inlined into the CPU loop and as
# a CUDA device function, so the two devices cannot drift apart.
def _rmsprop_rule(p, g, s, a, b, alpha, one_minus_alpha, w, one_minus_w, eps, weight_decay,
                  momentum, neg_lr, use_weight_decay, centered, use_momentum, maximize):
    """One element's RMSprop update; returns the new (param, square_avg, grad_avg, buf)."""
    if maximize:
        g = -g
    if use_weight_decay:
        g = g + weight_decay * p
    s = s * alpha + one_minus_alpha * g * g
    if centered:
        # torch's lerp, including its switch of formula at |weight| = 0.5 (alpha may exceed 1)
        if abs(w) < 0.5:
            a = a + w * (g - a)
        else:
            a = g - (g - a) * one_minus_w
        d = math.sqrt(s + (-a) * a) + eps
    else:
        d = math.sqrt(s) + eps
    if use_momentum:
        b = b * momentum + g / d
        p = p + neg_lr * b
    else:
        p = p + neg_lr * g / d
    return p, s, a, b


def _adagrad_rule(p, g, s, eps, weight_decay, neg_clr, use_weight_decay, maximize):
    """One element's Adagrad update; returns the new (param, sum)."""
    if maximize:
        g = -g
    if use_weight_decay:
        g = g + weight_decay * p
    s = s + g * g
    p = p + neg_clr * g / (math.sqrt(s) + eps)
    return p, s


_rmsprop_rule_cpu = njit(inline="always")(_rmsprop_rule)
# inline=True: the rule is compiled into each kernel rather than called, which also lets
# cuda.compile_ptx build the kernels without a GPU (tests/kernels/test_cuda_compile.py; a
# separately compiled device function asks the driver for the current device).
_rmsprop_rule_cuda = cuda.jit(device=True, inline=True)(_rmsprop_rule)
_adagrad_rule_cpu = njit(inline="always")(_adagrad_rule)
_adagrad_rule_cuda = cuda.jit(device=True, inline=True)(_adagrad_rule)


# One loop per combination of the two buffers: a load or store under a condition, even a
# loop-invariant one, stops LLVM vectorising the loop (3-4x slower single-threaded on 1M
# float32).  The GPU kernel below needs no such split.
@njit(parallel=True, cache=True)
def _rmsprop_step_cpu(param, grad, square_avg, grad_avg, buf, alpha, one_minus_alpha, w,
                      one_minus_w, eps, weight_decay, momentum, neg_lr, use_weight_decay,
                      centered, use_momentum, maximize):
    if centered and use_momentum:
        for i in prange(param.size):
            param[i], square_avg[i], grad_avg[i], buf[i] = _rmsprop_rule_cpu(
                param[i], grad[i], square_avg[i], grad_avg[i], buf[i],
                alpha, one_minus_alpha, w, one_minus_w, eps, weight_decay, momentum, neg_lr,
                use_weight_decay, True, True, maximize)
    elif centered:
        for i in prange(param.size):
            param[i], square_avg[i], grad_avg[i], _ = _rmsprop_rule_cpu(
                param[i], grad[i], square_avg[i], grad_avg[i], grad[i],
                alpha, one_minus_alpha, w, one_minus_w, eps, weight_decay, momentum, neg_lr,
                use_weight_decay, True, False, maximize)
    elif use_momentum:
        for i in prange(param.size):
            param[i], square_avg[i], _, buf[i] = _rmsprop_rule_cpu(
                param[i], grad[i], square_avg[i], grad[i], buf[i],
                alpha, one_minus_alpha, w, one_minus_w, eps, weight_decay, momentum, neg_lr,
                use_weight_decay, False, True, maximize)
    else:
        for i in prange(param.size):
            param[i], square_avg[i], _, _ = _rmsprop_rule_cpu(
                param[i], grad[i], square_avg[i], grad[i], grad[i],
                alpha, one_minus_alpha, w, one_minus_w, eps, weight_decay, momentum, neg_lr,
                use_weight_decay, False, False, maximize)


@cuda.jit(cache=True)
def _rmsprop_step_cuda(param, grad, square_avg, grad_avg, buf, alpha, one_minus_alpha, w,
                       one_minus_w, eps, weight_decay, momentum, neg_lr, use_weight_decay,
                       centered, use_momentum, maximize, found_inf):
    i = cuda.grid(1)
    if i < param.size and found_inf[0] == 0:
        p, s, a, b = _rmsprop_rule_cuda(
            param[i], grad[i], square_avg[i], grad_avg[i] if centered else param[i],
            buf[i] if use_momentum else param[i], alpha, one_minus_alpha, w, one_minus_w, eps,
            weight_decay, momentum, neg_lr, use_weight_decay, centered, use_momentum, maximize)
        param[i] = p
        square_avg[i] = s
        if centered:
            grad_avg[i] = a
        if use_momentum:
            buf[i] = b


@njit(parallel=True, cache=True)
def _adagrad_step_cpu(param, grad, state_sum, eps, weight_decay, neg_clr, use_weight_decay,
                      maximize):
    for i in prange(param.size):
        p, s = _adagrad_rule_cpu(param[i], grad[i], state_sum[i], eps, weight_decay, neg_clr,
                                 use_weight_decay, maximize)
        param[i] = p
        state_sum[i] = s


@cuda.jit(cache=True)
def _adagrad_step_cuda(param, grad, state_sum, eps, weight_decay, neg_clr, use_weight_decay,
                       maximize, found_inf):
    i = cuda.grid(1)
    if i < param.size and found_inf[0] == 0:
        p, s = _adagrad_rule_cuda(param[i], grad[i], state_sum[i], eps, weight_decay, neg_clr,
                                  use_weight_decay, maximize)
        param[i] = p
        state_sum[i] = s


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


def _check_step(step):
    """The 1-based count of this update; torch keeps it as a float, so 3.0 is accepted."""
    try:
        ok = not isinstance(step, bool) and float(step) == int(step) and int(step) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"step: expected a positive integer (1 on the first update), got "
                         f"{step!r}")
    return int(step)


def _check_found_inf(found_inf, device, xp):
    """``found_inf`` as the kernels take it: a 1-element float32 array on ``device``.

    None (never skip) becomes a device zero on the GPU.  Nothing here reads the flag on the
    host: a GPU kernel reads it itself, so a step guarded by a flag computed on the device
    (the Trainer's "loss was non-finite") costs no device-to-host transfer.
    """
    if found_inf is None:
        return None if device == CPU else xp.zeros(1, dtype=xp.float32)
    if not hasattr(found_inf, "shape") or not hasattr(found_inf, "dtype"):
        raise TypeError(f"found_inf: expected None or a 1-element array, got "
                        f"{type(found_inf).__name__}")
    if found_inf.size != 1:
        raise ValueError(f"found_inf: expected a 1-element array, got shape "
                         f"{tuple(found_inf.shape)}")
    where = device_of(found_inf)
    if where != device:
        raise ValueError(f"found_inf: expected an array on the parameter's device ({device}), "
                         f"got one on {where}")
    return found_inf.reshape(1).astype(xp.float32, copy=False)


def _dispatch_step(device, cpu_kernel, cuda_kernel, n, args, found_inf):
    """Run one optimizer kernel unless ``found_inf`` (from :func:`_check_found_inf`) is set.

    On the CPU the flag is in host memory and read here; on a GPU every thread reads it.
    """
    if device == CPU:
        if found_inf is not None and found_inf[0] != 0:
            return
        dispatch(device, cpu_kernel, cuda_kernel, n, *args)
    else:
        dispatch(device, cpu_kernel, cuda_kernel, n, *args, found_inf)


def sgd_step(param, grad, momentum_buf, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False, maximize=False, found_inf=None):
    """One in-place SGD update of ``param`` (and ``momentum_buf``; None when momentum is 0).

    ``first_step`` starts the momentum buffer as a copy of the (decayed) gradient, as torch;
    ``maximize`` ascends the gradient instead.  ``found_inf``: see :func:`adam_step`.
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
    found_inf = _check_found_inf(found_inf, device, xp)
    _dispatch_step(device, _sgd_step_cpu, _sgd_step_cuda, param.size, (
        flat_param, flat_grad, flat_buf, dt(-lr), dt(weight_decay), dt(momentum),
        dt(1.0 - dampening), weight_decay != 0, use_momentum, bool(nesterov), bool(first_step),
        bool(maximize)), found_inf)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9,
              beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
              maximize=False, found_inf=None):
    """One in-place Adam (``decoupled=False``) or AdamW (``decoupled=True``) update.

    ``step`` is the 1-based count of this update (for bias correction); ``max_exp_avg_sq``
    is required with ``amsgrad`` and ignored (may be None) without it; ``maximize`` ascends
    the gradient instead.

    ``found_inf`` (every optimizer step takes it, as torch's fused optimizers do): None, or a
    1-element array on the parameter's device; when it is nonzero the parameter and every
    buffer are left untouched.  A GPU kernel reads it on the device, so a flag computed there
    ("this batch's loss was not finite") guards the step without a host round trip.
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
    step = _check_step(step)
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
    found_inf = _check_found_inf(found_inf, device, xp)
    _dispatch_step(device, _adam_step_cpu, _adam_step_cuda, param.size, (
        flat_param, flat_grad, exp_avg.reshape(-1), exp_avg_sq.reshape(-1), flat_max,
        dt(weight_decay), dt(1 - lr * weight_decay), w1, dt(1) - w1, dt(beta2), dt(1 - beta2),
        dt(bc2_sqrt), dt(eps), dt(-step_size), weight_decay != 0 and not decoupled,
        weight_decay != 0 and bool(decoupled), bool(amsgrad), bool(maximize)), found_inf)


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buf, lr, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False, maximize=False,
                 found_inf=None):
    """One in-place RMSprop update of ``param`` and its buffers.

    ``grad_avg`` is required with ``centered`` and ``momentum_buf`` when ``momentum > 0``;
    otherwise they are ignored (may be None).  Buffers start at zero, as torch's.
    ``found_inf``: see :func:`adam_step`.
    """
    centered = bool(centered)
    lr = _check_number("lr", lr)
    alpha = _check_number("alpha", alpha)
    eps = _check_number("eps", eps)
    weight_decay = _check_number("weight_decay", weight_decay)
    momentum = _check_number("momentum", momentum)
    use_momentum = momentum > 0
    device = check_floats(param=param, grad=grad, square_avg=square_avg,
                          grad_avg=grad_avg if centered else None,
                          momentum_buf=momentum_buf if use_momentum else None)
    check_same_shape("param", param, "grad", grad)
    if not param.flags.c_contiguous:
        raise ValueError("param: must be C-contiguous (it is updated in place)")
    _check_state("square_avg", square_avg, param)
    if centered:
        if grad_avg is None:
            raise ValueError("grad_avg: required when centered=True")
        _check_state("grad_avg", grad_avg, param)
    if use_momentum:
        if momentum_buf is None:
            raise ValueError(f"momentum_buf: required when momentum > 0 (momentum={momentum})")
        _check_state("momentum_buf", momentum_buf, param)
    xp = array_module(device)
    flat_grad = contiguous(xp, grad).reshape(-1)
    # Unused buffers: the read-only gradient stands in (see adam_step for why).
    flat_avg = grad_avg.reshape(-1) if centered else flat_grad
    flat_buf = momentum_buf.reshape(-1) if use_momentum else flat_grad
    dt = param.dtype.type
    w = dt(1 - alpha)
    found_inf = _check_found_inf(found_inf, device, xp)
    _dispatch_step(device, _rmsprop_step_cpu, _rmsprop_step_cuda, param.size, (
        param.reshape(-1), flat_grad, square_avg.reshape(-1), flat_avg, flat_buf, dt(alpha),
        dt(1 - alpha), w, dt(1) - w, dt(eps), dt(weight_decay), dt(momentum), dt(-lr),
        weight_decay != 0, centered, use_momentum, bool(maximize)), found_inf)


def adagrad_step(param, grad, state_sum, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                 maximize=False, found_inf=None):
    """One in-place Adagrad update of ``param`` and ``state_sum``.

    ``step`` is the 1-based count of this update: the learning rate decays to
    ``lr / (1 + (step - 1) * lr_decay)``.  ``found_inf``: see :func:`adam_step`.
    """
    device = check_floats(param=param, grad=grad, state_sum=state_sum)
    check_same_shape("param", param, "grad", grad)
    if not param.flags.c_contiguous:
        raise ValueError("param: must be C-contiguous (it is updated in place)")
    _check_state("state_sum", state_sum, param)
    step = _check_step(step)
    lr = _check_number("lr", lr)
    lr_decay = _check_number("lr_decay", lr_decay)
    weight_decay = _check_number("weight_decay", weight_decay)
    eps = _check_number("eps", eps)
    clr = lr / (1 + (step - 1) * lr_decay)
    xp = array_module(device)
    dt = param.dtype.type
    found_inf = _check_found_inf(found_inf, device, xp)
    _dispatch_step(device, _adagrad_step_cpu, _adagrad_step_cuda, param.size, (
        param.reshape(-1), contiguous(xp, grad).reshape(-1), state_sum.reshape(-1), dt(eps),
        dt(weight_decay), dt(-clr), weight_decay != 0, bool(maximize)), found_inf)
