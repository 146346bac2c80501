"""Benchmarks for kernels/activation.py, kernels/softmax.py and kernels/loss.py.

    python -m pytest benchmarks/bench_activation.py --benchmark-only [--benchmark-json=a.json]

Every activation, forward and backward, on a 64 MiB float32 array (past the 32 MiB L3: a
memory-bound op) and on a LeNet activation 64x6x24x24 (864 KiB: cache-resident, so overheads
show), next to ``numpy.copyto`` of the same array in the same run.  ``bytes`` counts memory
traffic as the op needs it: forward reads x and writes y (2 arrays); backward reads grad_y
and x and writes grad_x (3 arrays), except identity (copies grad_y: 2) and step (writes zeros:
1).  ``copy_fraction`` divides the op's GB/s by that of a copy moving the same bytes, measured
in the same run.  NumPy (forward only) and PyTorch (forward, and the ATen backward kernels
autograd calls) run the same shapes; PyTorch with Numba's thread count.  The "kernel" cases
time the CPU loop alone writing into an existing array, as numpy.copyto does.

Softmax, log-softmax and the fused cross-entropy run on 256x1000 and 64x10 logits.
CUDA variants run on a real GPU only.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special

import kernels as K
from kernels import activation

# At least 20 rounds: allocating a fresh 64 MiB output now and then stalls for tens of ms in
# the kernel (page faults, huge-page compaction), which a handful of rounds cannot outvote.
pytestmark = pytest.mark.benchmark(min_rounds=20)

SHAPES = {"64MiB": (16 * 2 ** 20,), "lenet": (64, 6, 24, 24)}
PARAMS = {"leaky_relu": {"negative_slope": 0.01}, "elu": {"alpha": 1.0},
          "softplus": {"beta": 1.0, "threshold": 20.0}, "gelu_tanh": {"approximate": "tanh"},
          "hardtanh": {"min_val": -1.0, "max_val": 1.0}}
OPS = ["identity", "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "step", "gelu",
       "gelu_tanh", "silu", "mish", "hardtanh", "relu6", "prelu"]
FUNCTION = {"gelu_tanh": "gelu"}   # the public kernel behind a case (default: its name)
# Ops without a CPU loop of their own to time alone: relu6 runs hardtanh's, prelu's takes its
# slopes as an array and channel geometry (its public function is timed above).
NO_KERNEL_CASE = ("identity", "step", "relu6", "prelu")
BACKWARD_ARRAYS = {"identity": 2, "step": 1}   # arrays moved by the backward; others 3


def _arrays(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 3
    g = rng.standard_normal(shape, dtype=np.float32)
    return x, g


def _ours(op, direction, x, g):
    params = PARAMS.get(op, {})
    name = FUNCTION.get(op, op)
    if op == "prelu":  # one shared slope, torch's default PReLU()
        w = K.to_device(np.full(1, 0.25, x.dtype), K.device_of(x))
        if direction == "fwd":
            return lambda: K.prelu_forward(x, w)
        return lambda: K.prelu_backward(g, x, w)
    if direction == "fwd":
        fn = getattr(K, f"{name}_forward")
        return lambda: fn(x, **params)
    fn = getattr(K, f"{name}_backward")
    return lambda: fn(g, x, **params)


def _bytes(op, direction, x):
    return x.nbytes * (2 if direction == "fwd" else BACKWARD_ARRAYS.get(op, 3))


# ---------------------------------------------------------------- copy baseline
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_copyto(benchmark, record, warm, machine, shape_name):
    x, _ = _arrays(SHAPES[shape_name])
    dst = np.empty_like(x)
    warm(np.copyto, dst, x)
    benchmark(np.copyto, dst, x)
    # The large copy is the run's bandwidth roof for benchmarks/report.py.
    record(benchmark, case="copy" if shape_name == "64MiB" else f"copy {shape_name}",
           impl="peak" if shape_name == "64MiB" else "numpy", shape=shape_name,
           bytes=2 * x.nbytes, machine=machine)


# ---------------------------------------------------------------- activations
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op", OPS)
def test_activation(benchmark, record, warm, machine, op, direction, shape_name):
    x, g = _arrays(SHAPES[shape_name])
    fn = _ours(op, direction, x, g)
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {direction} {shape_name}", shape=shape_name,
           bytes=_bytes(op, direction, x), machine=machine, first_call_s=first)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op", [op for op in OPS if op not in NO_KERNEL_CASE])
def test_activation_kernel(benchmark, record, warm, machine, op, direction, shape_name):
    """The CPU loop alone, into a preallocated output: like for like with numpy.copyto.

    The public functions allocate their output; a fresh 64 MiB array costs the kernel's page
    faults and zeroing on first touch, which numpy.copyto into an existing array does not pay.
    """
    x, g = _arrays(SHAPES[shape_name])
    out = np.empty_like(x)
    params = tuple(np.float32(p) for p in PARAMS.get(op, {}).values()
                   if not isinstance(p, str))
    kernel = getattr(activation, f"_{op}_{'forward' if direction == 'fwd' else 'backward'}_cpu")
    args = (out, x, *params) if direction == "fwd" else (out, g, x, *params)
    args = tuple(a.reshape(-1) if isinstance(a, np.ndarray) else a for a in args)
    first = warm(kernel, *args)
    benchmark(kernel, *args)
    record(benchmark, case=f"{op} {direction} {shape_name} kernel", shape=shape_name,
           bytes=_bytes(op, direction, x), machine=machine, first_call_s=first)


_NUMPY = {
    "identity": lambda x: x.copy(),
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, np.float32(0.01) * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "tanh": np.tanh,
    "sigmoid": scipy.special.expit,
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
    "step": lambda x: (x > 0).astype(np.float32),
    "gelu": lambda x: x * scipy.special.ndtr(x),
    "gelu_tanh": lambda x: np.float32(0.5) * x * (np.float32(1) + np.tanh(
        np.float32(0.7978845608) * (x + np.float32(0.044715) * x * x * x))),
    "silu": lambda x: x * scipy.special.expit(x),
    "mish": lambda x: x * np.tanh(np.logaddexp(np.float32(0), x)),
    "hardtanh": lambda x: np.clip(x, np.float32(-1), np.float32(1)),
    "relu6": lambda x: np.clip(x, np.float32(0), np.float32(6)),
    "prelu": lambda x: np.where(x > 0, x, np.float32(0.25) * x),
}


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("op", OPS)
def test_activation_numpy(benchmark, record, warm, machine, op, shape_name):
    x, _ = _arrays(SHAPES[shape_name])
    fn = _NUMPY[op]
    with np.errstate(all="ignore"):  # np.where evaluates expm1 on the positive side too
        warm(fn, x)
        benchmark(fn, x)
    record(benchmark, case=f"{op} fwd {shape_name}", impl="numpy", shape=shape_name,
           bytes=2 * x.nbytes, machine=machine)


def _torch_fn(torch, op, direction, x, g):
    F = torch.nn.functional
    aten = torch.ops.aten
    w = torch.full((1,), 0.25, dtype=x.dtype)
    if direction == "fwd":
        return {
            "identity": lambda: x.clone(),
            "relu": lambda: torch.relu(x),
            "leaky_relu": lambda: F.leaky_relu(x, 0.01),
            "elu": lambda: F.elu(x, 1.0),
            "tanh": lambda: torch.tanh(x),
            "sigmoid": lambda: torch.sigmoid(x),
            "softplus": lambda: F.softplus(x, 1.0, 20.0),
            "step": lambda: torch.heaviside(x, torch.zeros((), dtype=x.dtype)),
            "gelu": lambda: F.gelu(x),
            "gelu_tanh": lambda: F.gelu(x, approximate="tanh"),
            "silu": lambda: F.silu(x),
            "mish": lambda: F.mish(x),
            "hardtanh": lambda: F.hardtanh(x, -1.0, 1.0),
            "relu6": lambda: F.relu6(x),
            "prelu": lambda: F.prelu(x, w),
        }[op]
    # tanh and sigmoid backward take the forward's output in ATen; it is computed outside.
    y_tanh, y_sigmoid = torch.tanh(x), torch.sigmoid(x)
    # prelu: ATen's kernel writes grad_x and the per-element weight gradient; autograd then
    # sums the latter, as ours does (both timed)
    return {
        "identity": lambda: g.clone(),
        "relu": lambda: aten.threshold_backward(g, x, 0),
        "leaky_relu": lambda: aten.leaky_relu_backward(g, x, 0.01, False),
        "elu": lambda: aten.elu_backward(g, 1.0, 1, 1, False, x),
        "tanh": lambda: aten.tanh_backward(g, y_tanh),
        "sigmoid": lambda: aten.sigmoid_backward(g, y_sigmoid),
        "softplus": lambda: aten.softplus_backward(g, x, 1.0, 20.0),
        "step": lambda: torch.zeros_like(x),
        "gelu": lambda: aten.gelu_backward(g, x, approximate="none"),
        "gelu_tanh": lambda: aten.gelu_backward(g, x, approximate="tanh"),
        "silu": lambda: aten.silu_backward(g, x),
        "mish": lambda: aten.mish_backward(g, x),
        "hardtanh": lambda: aten.hardtanh_backward(g, x, -1.0, 1.0),
        "relu6": lambda: aten.hardtanh_backward(g, x, 0.0, 6.0),
        "prelu": lambda: aten._prelu_kernel_backward(g, x, w)[1].sum(),
    }[op]


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op", OPS)
def test_activation_torch(benchmark, record, warm, machine, torch_or_skip, op, direction,
                          shape_name):
    torch = torch_or_skip
    x, g = (torch.from_numpy(a) for a in _arrays(SHAPES[shape_name]))
    fn = _torch_fn(torch, op, direction, x, g)
    warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {direction} {shape_name}", impl="torch", shape=shape_name,
           bytes=_bytes(op, direction, x.numpy()), machine=machine)


@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("op", OPS)
def test_activation_cuda(benchmark, record, warm, cuda_or_skip, op, direction, shape_name):
    x, g = (K.to_device(a, "cuda") for a in _arrays(SHAPES[shape_name]))
    call = _ours(op, direction, x, g)

    def fn():
        call()
        K.synchronize()

    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {direction} {shape_name}", device="cuda", shape=shape_name,
           bytes=_bytes(op, direction, x), first_call_s=first)


# ---------------------------------------------------------------- softmax and cross-entropy
ROW_SHAPES = {"256x1000": (256, 1000), "64x10": (64, 10)}
ROW_OPS = ["softmax fwd", "softmax bwd", "log_softmax fwd", "log_softmax bwd", "cross_entropy"]
ROW_ARRAYS = {"fwd": 2, "bwd": 3, "cross_entropy": 2}   # cross-entropy: read logits, write grad


def _row_arrays(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 3
    g = rng.standard_normal(shape, dtype=np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    return x, g, labels


def _row_ours(op, x, g, labels):
    if op == "cross_entropy":
        return lambda: K.cross_entropy_forward(x, labels)
    name, direction = op.split()
    forward = getattr(K, f"{name}_forward")
    if direction == "fwd":
        return lambda: forward(x)
    backward, y = getattr(K, f"{name}_backward"), forward(x)
    return lambda: backward(g, y)


def _row_bytes(op, x):
    return x.nbytes * ROW_ARRAYS[op.split()[-1]]


@pytest.mark.parametrize("shape_name", list(ROW_SHAPES))
@pytest.mark.parametrize("op", ROW_OPS)
def test_rows(benchmark, record, warm, machine, op, shape_name):
    x, g, labels = _row_arrays(ROW_SHAPES[shape_name])
    fn = _row_ours(op, x, g, labels)
    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {shape_name}", shape=shape_name, bytes=_row_bytes(op, x),
           machine=machine, first_call_s=first)


@pytest.mark.parametrize("shape_name", list(ROW_SHAPES))
@pytest.mark.parametrize("op", ROW_OPS)
def test_rows_torch(benchmark, record, warm, machine, torch_or_skip, op, shape_name):
    torch = torch_or_skip
    x, g, labels = _row_arrays(ROW_SHAPES[shape_name])
    x, g, labels = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(labels)
    aten = torch.ops.aten
    if op == "cross_entropy":
        # what a training step runs: the loss and the gradient of the logits, via autograd
        xr = x.clone().requires_grad_(True)

        def fn():
            xr.grad = None
            torch.nn.functional.cross_entropy(xr, labels).backward()
    else:
        name, direction = op.split()
        forward = torch.softmax if name == "softmax" else torch.log_softmax
        backward = (aten._softmax_backward_data if name == "softmax"
                    else aten._log_softmax_backward_data)
        y = forward(x, 1)
        fn = ((lambda: forward(x, 1)) if direction == "fwd"
              else (lambda: backward(g, y, 1, torch.float32)))
    warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {shape_name}", impl="torch", shape=shape_name,
           bytes=_row_bytes(op, x.numpy()), machine=machine)


@pytest.mark.parametrize("shape_name", list(ROW_SHAPES))
@pytest.mark.parametrize("op", ROW_OPS)
def test_rows_cuda(benchmark, record, warm, cuda_or_skip, op, shape_name):
    x, g, labels = _row_arrays(ROW_SHAPES[shape_name])
    x, g, labels = (K.to_device(a, "cuda") for a in (x, g, labels))
    call = _row_ours(op, x, g, labels)

    def fn():
        call()
        K.synchronize()

    first = warm(fn)
    benchmark(fn)
    record(benchmark, case=f"{op} {shape_name}", device="cuda", shape=shape_name,
           bytes=_row_bytes(op, x), first_call_s=first)
