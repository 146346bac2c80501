"""Data-parallel costs: allreduce time against payload size, and DataParallel's step-time
overhead on LeNet-5 (batch 64 of 1x28x28, SGD with momentum).

Run on 2 ranks (as many processes as this machine has cores), one Numba thread each:

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 mpiexec -n 2 python -m mpi4py -m pytest \\
        benchmarks/bench_distributed.py --benchmark-only -p no:cacheprovider

and the single-process reference (2 threads, global batch 64) with plain
``pytest benchmarks/bench_distributed.py --benchmark-only``.  Both ranks print a table; for
JSON, give each its own file: ``mpiexec -n 2 sh -c 'python -m mpi4py -m pytest ...
--benchmark-json=out.$PMI_RANK.json'``.  Every rank runs the same
benchmarks with fixed round counts (``pedantic``), so the collectives stay in lockstep; the
multi-rank cases skip in a single process and vice versa.

* ``test_allreduce[...]``: one in-place float32 allreduce; ``extra_info`` has the payload,
  algorithm bandwidth (payload / time) and bus bandwidth (2 (n-1)/n payload / time, the
  traffic each rank really sends), next to ``test_copy_baseline`` (a local copy of the same
  size in the same run).
* ``test_lenet_step[sync]`` / ``[no_sync]``: forward + backward + SGD step of LeNet-5 on this
  rank's 64/n samples, with and without the gradient allreduce: the difference is the
  DataParallel overhead (the allreduce, and waiting for the slower rank).
  ``test_lenet_gradient_sync`` times the gradient synchronisation alone.
  ``test_lenet_step_single_process`` is the one-process step on the whole batch of 64 (the
  throughput to compare with).

The loss gradient is a NumPy softmax cross-entropy (the same in every variant): what is
measured is the training step around it.
"""
import os

import numpy as np
import pytest

import nn
from nn import distributed as dist

_WORLD = dist.init("mpi")
GLOBAL_BATCH = 64
PAYLOADS = [2**10, 2**14, 2**17, 2**20, 2**22, 2**24, 25 * 2**20, 2**26]  # bytes
multi_rank = pytest.mark.skipif(_WORLD.size < 2, reason="run under mpiexec -n 2 (see the module "
                                "docstring)")
single_rank = pytest.mark.skipif(_WORLD.size > 1, reason="single-process reference")


def _rounds(nbytes):
    return int(np.clip(2**26 // max(nbytes, 1), 10, 300))


@multi_rank
@pytest.mark.parametrize("nbytes", PAYLOADS, ids=lambda b: f"{b // 1024}KiB")
def test_allreduce(benchmark, nbytes):
    buf = np.ones(nbytes // 4, dtype=np.float32)
    benchmark.pedantic(_WORLD.allreduce_sum, args=(buf,), setup=_WORLD.barrier,
                       rounds=_rounds(nbytes), warmup_rounds=3)
    n = _WORLD.size
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(bytes=nbytes, ranks=n, algbw_GBps=nbytes / t / 1e9,
                                busbw_GBps=2 * (n - 1) / n * nbytes / t / 1e9)


@multi_rank
@pytest.mark.parametrize("nbytes", PAYLOADS, ids=lambda b: f"{b // 1024}KiB")
def test_copy_baseline(benchmark, nbytes):
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    benchmark.pedantic(np.copyto, args=(dst, src), setup=_WORLD.barrier,
                       rounds=_rounds(nbytes), warmup_rounds=3)
    benchmark.extra_info.update(bytes=nbytes, GBps=2 * nbytes / benchmark.stats.stats.median / 1e9)


def _cross_entropy_grad(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)


def _lenet_problem(batch, comm):
    from nn.models import LeNet5

    rng = np.random.default_rng(comm.rank)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    nn.manual_seed(0)
    model = LeNet5(in_channels=1, num_classes=10, input_size=28)
    return model, x, labels


def _step(model, optimizer, x, labels):
    optimizer.zero_grad()
    logits = model(x)
    model.backward(_cross_entropy_grad(logits, labels))
    optimizer.step()


def _record_step(benchmark, batch, ranks):
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(ranks=ranks, local_batch=batch, global_batch=GLOBAL_BATCH,
                                numba_threads=int(os.environ.get("NUMBA_NUM_THREADS", "0")) or
                                "default", images_per_s=GLOBAL_BATCH / t)


@multi_rank
@pytest.mark.parametrize("mode", ["sync", "no_sync"])
def test_lenet_step(benchmark, mode):
    batch = GLOBAL_BATCH // _WORLD.size
    model, x, labels = _lenet_problem(batch, _WORLD)
    dp = dist.DataParallel(model, _WORLD)
    optimizer = nn.optim.SGD(dp.parameters(), lr=0.01, momentum=0.9)
    if mode == "sync":
        def run():
            _step(dp, optimizer, x, labels)
    else:
        def run():
            with dp.no_sync():
                _step(dp, optimizer, x, labels)
    benchmark.pedantic(run, setup=_WORLD.barrier, rounds=100, warmup_rounds=5)
    _record_step(benchmark, batch, _WORLD.size)


@multi_rank
def test_lenet_gradient_sync(benchmark):
    """The synchronisation alone: pack, allreduce and unpack LeNet's gradients (after a
    barrier, so waiting for a slower rank is not counted)."""
    batch = GLOBAL_BATCH // _WORLD.size
    model, x, labels = _lenet_problem(batch, _WORLD)
    dp = dist.DataParallel(model, _WORLD)
    with dp.no_sync():
        dp.backward(_cross_entropy_grad(dp(x), labels))
    benchmark.pedantic(dp.sync_gradients, kwargs={"num_samples": batch}, setup=_WORLD.barrier,
                       rounds=100, warmup_rounds=5)
    nbytes = sum(p.size * p.dtype.itemsize for p in model.parameters())
    benchmark.extra_info.update(ranks=_WORLD.size, gradient_bytes=nbytes,
                                buckets=len(dp.buckets))


@single_rank
def test_lenet_step_single_process(benchmark):
    model, x, labels = _lenet_problem(GLOBAL_BATCH, _WORLD)
    optimizer = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    benchmark.pedantic(_step, args=(model, optimizer, x, labels), rounds=100, warmup_rounds=5)
    _record_step(benchmark, GLOBAL_BATCH, 1)
