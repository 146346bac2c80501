"""Fused optimizer steps against NumPy and torch.optim on one large float32 parameter.

    python -m pytest benchmarks/bench_optim.py --benchmark-only

Cases: ``sgd_momentum`` (momentum 0.9, weight decay 1e-4), ``adam`` (default betas, weight
decay 0), ``rmsprop`` (torch's defaults), ``rmsprop_centered`` (centered, momentum 0.9) and
``adagrad`` (torch's defaults), each on 1M and 10M parameters.  All are memory-bound: the work
of one call is the bytes it must move, ``5 * 4 * n`` for SGD with momentum (read p, g, buf;
write p, buf), ``7 * 4 * n`` for Adam (read p, g, m, v; write p, m, v), ``5 * 4 * n`` for
RMSprop and Adagrad (read p, g, one average; write p and it) and ``9 * 4 * n`` for centered
RMSprop with momentum (read p, g and three buffers; write p and them).  ``extra_info`` has
``bytes`` and ``GB/s`` (bytes over the median); compare with the machine's copy bandwidth
(about 30 GB/s for arrays past the L3 on the 2-core CI machine, per PERFORMANCE.md).

* ``impl=ours``: :func:`kernels.sgd_step` / :func:`kernels.adam_step` (one fused pass);
* ``impl=numpy``: the same update with in-place NumPy ops (several passes, as an array
  library without fusion does it);
* ``impl=torch``: ``torch.optim.SGD`` / ``Adam`` / ``RMSprop`` / ``Adagrad`` with
  ``foreach=True`` when torch is importable, with as many threads as Numba uses.

(``rmsprop_centered`` has no NumPy row.)

The CUDA variants run on a real GPU only (skipped under the simulator and without one).
"""
import numba
import numpy as np
import pytest

import kernels as K

SIZES = {"1M": 1 << 20, "10M": 10 << 20}
LR, MOMENTUM, WD = 1e-3, 0.9, 1e-4
BETAS, EPS = (0.9, 0.999), 1e-8
ALPHA = 0.99
BYTES_PER_ELEMENT = {"sgd_momentum": 5 * 4, "adam": 7 * 4, "rmsprop": 5 * 4,
                     "rmsprop_centered": 9 * 4, "adagrad": 5 * 4}
CASES = list(BYTES_PER_ELEMENT)
NUMPY_CASES = ["sgd_momentum", "adam", "rmsprop", "adagrad"]

try:
    import torch
    torch.set_num_threads(numba.get_num_threads())
except ImportError:  # torch is an optional comparison
    torch = None

needs_gpu = pytest.mark.skipif(K.SIMULATOR or "cuda" not in K.devices(),
                               reason="needs a real GPU (not the simulator)")


def _arrays(n, device="cpu"):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    return [K.to_device(a, device) for a in (p, g, np.zeros(n, np.float32),
                                             np.zeros(n, np.float32), np.zeros(n, np.float32))]


def _record(benchmark, case, impl, size, device="cpu"):
    n = SIZES[size]
    nbytes = BYTES_PER_ELEMENT[case] * n
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(case=case, impl=impl, device=device, shape=f"{size} float32",
                                bytes=nbytes, **{"GB/s": round(nbytes / t / 1e9, 2)})


def _ours(case, p, g, a, b, c, device):
    step = [0]

    def sgd():
        K.sgd_step(p, g, a, LR, MOMENTUM, 0.0, WD, False, False)
        K.synchronize(device)

    def adam():
        step[0] += 1
        K.adam_step(p, g, a, b, None, step[0], LR, BETAS[0], BETAS[1], EPS)
        K.synchronize(device)

    def rmsprop():
        K.rmsprop_step(p, g, a, None, None, LR, ALPHA)
        K.synchronize(device)

    def rmsprop_centered():
        K.rmsprop_step(p, g, a, b, c, LR, ALPHA, momentum=MOMENTUM, centered=True)
        K.synchronize(device)

    def adagrad():
        step[0] += 1
        K.adagrad_step(p, g, a, step[0], LR)
        K.synchronize(device)

    fn = dict(sgd_momentum=sgd, adam=adam, rmsprop=rmsprop, rmsprop_centered=rmsprop_centered,
              adagrad=adagrad)[case]
    fn()  # compile outside the timing
    return fn


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", CASES)
def test_ours_cpu(benchmark, case, size):
    fn = _ours(case, *_arrays(SIZES[size]), "cpu")
    benchmark(fn)
    _record(benchmark, case, "ours", size)


@needs_gpu
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", CASES)
def test_ours_cuda(benchmark, case, size):
    fn = _ours(case, *_arrays(SIZES[size], "cuda"), "cuda")
    benchmark(fn)
    _record(benchmark, case, "ours", size, "cuda")


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", NUMPY_CASES)
def test_numpy(benchmark, case, size):
    p, g, a, b, _ = _arrays(SIZES[size])
    tmp = np.empty_like(p)
    step = [0]
    f = np.float32

    # Every operation writes into an existing array (out=): no allocation is timed.
    def sgd():
        np.multiply(p, f(WD), out=tmp)
        np.add(tmp, g, out=tmp)                   # g + wd p
        np.multiply(a, f(MOMENTUM), out=a)
        np.add(a, tmp, out=a)                     # buf = mu buf + g  (dampening 0)
        np.multiply(a, f(-LR), out=tmp)
        np.add(p, tmp, out=p)

    def adam():
        step[0] += 1
        t = step[0]
        np.subtract(g, a, out=tmp)
        np.multiply(tmp, f(1 - BETAS[0]), out=tmp)
        np.add(a, tmp, out=a)                     # m = lerp(m, g, 1 - beta1)
        np.multiply(b, f(BETAS[1]), out=b)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, f(1 - BETAS[1]), out=tmp)
        np.add(b, tmp, out=b)                     # v = beta2 v + (1 - beta2) g^2
        np.sqrt(b, out=tmp)
        np.divide(tmp, f((1 - BETAS[1] ** t) ** 0.5), out=tmp)
        np.add(tmp, f(EPS), out=tmp)
        np.divide(a, tmp, out=tmp)
        np.multiply(tmp, f(-LR / (1 - BETAS[0] ** t)), out=tmp)
        np.add(p, tmp, out=p)

    def rmsprop():
        np.multiply(a, f(ALPHA), out=a)
        np.multiply(g, g, out=tmp)
        np.multiply(tmp, f(1 - ALPHA), out=tmp)
        np.add(a, tmp, out=a)                     # s = alpha s + (1 - alpha) g^2
        np.sqrt(a, out=tmp)
        np.add(tmp, f(EPS), out=tmp)
        np.divide(g, tmp, out=tmp)
        np.multiply(tmp, f(-LR), out=tmp)
        np.add(p, tmp, out=p)

    def adagrad():
        step[0] += 1                              # lr_decay 0: the rate stays LR
        np.multiply(g, g, out=tmp)
        np.add(a, tmp, out=a)                     # sum += g^2
        np.sqrt(a, out=tmp)
        np.add(tmp, f(1e-10), out=tmp)
        np.divide(g, tmp, out=tmp)
        np.multiply(tmp, f(-LR), out=tmp)
        np.add(p, tmp, out=p)

    benchmark(dict(sgd_momentum=sgd, adam=adam, rmsprop=rmsprop, adagrad=adagrad)[case])
    _record(benchmark, case, "numpy", size)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", CASES)
def test_torch(benchmark, case, size):
    p, g, _, _, _ = _arrays(SIZES[size])
    tp = torch.from_numpy(p).requires_grad_()
    tp.grad = torch.from_numpy(g)
    if case == "sgd_momentum":
        opt = torch.optim.SGD([tp], lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=True)
    elif case == "adam":
        opt = torch.optim.Adam([tp], lr=LR, betas=BETAS, eps=EPS, foreach=True)
    elif case == "rmsprop":
        opt = torch.optim.RMSprop([tp], lr=LR, alpha=ALPHA, foreach=True)
    elif case == "rmsprop_centered":
        opt = torch.optim.RMSprop([tp], lr=LR, alpha=ALPHA, momentum=MOMENTUM, centered=True,
                                  foreach=True)
    else:
        opt = torch.optim.Adagrad([tp], lr=LR, foreach=True)
    opt.step()  # creates the state outside the timing
    benchmark(opt.step)
    _record(benchmark, case, "torch", size)
