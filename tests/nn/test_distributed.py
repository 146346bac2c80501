"""nn.distributed: communicators, DataParallel, DistributedSampler.

The in-process FakeComm (threads) covers bucketing, weighted averaging, buffers and sharding
without MPI.  With mpi4py and mpiexec installed (the ``mpi`` extra), real ``mpiexec -n 2``
and ``-n 3`` runs check float64 training against one process, bitwise-identical ranks, and
that a crash on one rank ends the job quickly.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kernels
from nn import distributed as dist

SCRIPTS = Path(__file__).parent / "mpi_scripts"
sys.path.insert(0, str(SCRIPTS))
import dp_common as common  # noqa: E402


# ---------------------------------------------------------------------------- communicators
def test_single_process_comm_is_identity():
    comm = dist.SingleProcessComm()
    a = np.arange(6.0)
    assert comm.rank == 0 and comm.size == 1 and comm.is_main
    assert comm.allreduce_sum(a) is a and np.array_equal(a, np.arange(6.0))
    assert comm.broadcast(a, root=0) is a
    comm.barrier()
    with pytest.raises(ValueError, match="root"):
        comm.broadcast(a, root=1)


def test_collectives_reject_non_contiguous_and_non_arrays():
    comm = dist.SingleProcessComm()
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce_sum(np.zeros((4, 4))[:, ::2])
    with pytest.raises(TypeError, match="array"):
        comm.allreduce_sum([1.0, 2.0])


def test_fake_comm_allreduce_and_broadcast():
    def body(comm):
        a = np.full(5, comm.rank + 1.0) / 3
        comm.allreduce_sum(a)
        b = np.full((2, 2), float(comm.rank), dtype=np.float32)
        comm.broadcast(b, root=2)
        comm.barrier()
        return a, b, list(comm.log)

    out = dist.FakeComm.run(3, body)
    expected = np.full(5, 1 / 3) + np.full(5, 2 / 3) + np.full(5, 3 / 3)
    for a, b, log in out:
        assert np.array_equal(a, out[0][0])  # bitwise the same on every rank
        np.testing.assert_allclose(a, expected, rtol=1e-15)
        assert b.dtype == np.float32 and np.all(b == 2.0)
        assert log == [("allreduce_sum", "float64", 5), (("broadcast", 2), "float32", 4),
                       ("barrier", None, 0)]


def test_fake_comm_mismatched_collectives_raise_instead_of_hanging():
    def body(comm):
        comm.allreduce_sum(np.zeros(3 if comm.rank == 0 else 4))

    with pytest.raises(RuntimeError, match="different collectives"):
        dist.FakeComm.run(2, body)


def test_fake_comm_error_on_one_rank_reaches_the_caller():
    def body(comm):
        if comm.rank == 1:
            raise KeyError("boom on rank 1")
        comm.allreduce_sum(np.zeros(2))

    with pytest.raises(KeyError, match="boom"):
        dist.FakeComm.run(2, body)


def test_allreduce_values_sums_metrics():
    out = dist.FakeComm.run(3, lambda c: dist.allreduce_values(c, [c.rank, 1.0, 0.5]))
    for v in out:
        assert v.dtype == np.float64 and v.tolist() == [3.0, 3.0, 1.5]


def test_init_single_and_bad_backend():
    assert isinstance(dist.init("single"), dist.SingleProcessComm)
    with pytest.raises(ValueError, match="backend"):
        dist.init("gloo")


def test_nccl_comm_refuses_without_a_real_gpu():
    if "cuda" in kernels.devices() and not kernels.SIMULATOR:
        pytest.skip("a real GPU is present")
    with pytest.raises(RuntimeError, match="real GPU"):
        dist.NCCLComm()


# ---------------------------------------------------------------------------- DataParallel
def _wrap(comm, seed=None, **kwargs):
    # ranks start from different weights on purpose: construction must broadcast rank 0's
    model = common.TinyMLP(seed=comm.rank if seed is None else seed)
    return dist.DataParallel(model, comm, **kwargs)


def test_construction_broadcasts_rank0_parameters_and_buffers():
    def body(comm):
        model = common.TinyMLP(seed=10 + comm.rank)
        model.running_mean[:] = comm.rank + 5.0
        dist.DataParallel(model, comm)
        return common.flat_params(model), model.running_mean.copy()

    out = dist.FakeComm.run(3, body)
    ref = common.flat_params(common.TinyMLP(seed=10))
    for params, running in out:
        assert np.array_equal(params, ref)
        assert np.all(running == 5.0)


def test_gradients_are_sample_weighted_average_of_the_global_batch():
    """Uneven local batches (3, 3, 2): the result is the gradient of the global mean loss."""
    x, t = common.make_data(8)

    def body(comm):
        dp = _wrap(comm, seed=0)
        idx = common.local_part(np.arange(8), comm.rank, comm.size)
        dp.backward(common.mse_grad(dp(x[idx]), t[idx]))
        return {n: p.grad.copy() for n, p in dp.module.named_parameters()}

    out = dist.FakeComm.run(3, body)
    ref = common.TinyMLP(seed=0)
    ref.backward(common.mse_grad(ref(x), t))
    for grads in out:
        for name, p in ref.named_parameters():
            np.testing.assert_allclose(grads[name], p.grad, rtol=1e-13, atol=1e-15)
            assert np.array_equal(grads[name], out[0][name])


def test_training_matches_single_process_and_ranks_stay_identical():
    x, t = common.make_data(48)
    batches = common.global_batches(48, 10, steps=20)  # 10 over 3 ranks: 4, 3, 3

    def body(comm):
        dp = _wrap(comm)
        common.train(dp, x, t, batches,
                     part=lambda idx: common.local_part(idx, comm.rank, comm.size))
        return common.flat_params(dp.module)

    out = dist.FakeComm.run(3, body)
    ref = common.flat_params(common.train(common.TinyMLP(seed=0), x, t, batches))
    np.testing.assert_allclose(out[0], ref, rtol=0, atol=1e-10)
    assert not np.array_equal(ref, common.flat_params(common.TinyMLP(seed=0)))  # it trained
    for params in out[1:]:
        assert np.array_equal(params, out[0])


def _allreduce_sizes(comm):
    return [size for op, _, size in comm.log if op == "allreduce_sum"]


def test_one_allreduce_per_bucket_in_reverse_order():
    x, t = common.make_data(4)

    def body(comm):
        # reverse order b2, w2, b1, w1 = 3, 15, 5, 20 doubles: a 200-byte cap holds the
        # first three (184 bytes) and leaves w1 (160 bytes) to a bucket of its own
        dp = _wrap(comm, bucket_cap_mb=200 / 2**20)
        before = len(_allreduce_sizes(comm))
        dp.backward(common.mse_grad(dp(x), t))
        return dp.buckets, _allreduce_sizes(comm)[before:]

    for buckets, sizes in dist.FakeComm.run(2, body):
        assert buckets == [["b2", "w2", "b1"], ["w1"]]
        # the first bucket leads with the sample count and one has-grad flag per parameter
        assert sizes == [1 + 4 + 3 + 15 + 5, 20]


def test_bucket_cap_splits_and_default_cap_makes_one_bucket():
    def body(comm):
        small = _wrap(comm, bucket_cap_mb=8 * 16 / 2**20)  # 16 doubles per bucket
        big = _wrap(comm)
        return small.buckets, big.buckets

    for small, big in dist.FakeComm.run(2, body):
        # b2 (3) fits; w2 (15) would overflow it -> new bucket; w1 (20) is over the cap alone
        assert small == [["b2"], ["w2"], ["b1"], ["w1"]]
        assert big == [["b2", "w2", "b1", "w1"]]


def test_buckets_split_by_dtype_and_skip_frozen_parameters():
    def body(comm):
        model = common.TinyMLP(seed=0)
        model.w2.data = model.w2.data.astype(np.float32)
        model.b1.requires_grad = False
        return dist.DataParallel(model, comm).buckets

    for buckets in dist.FakeComm.run(2, body):
        assert buckets == [["b2"], ["w2"], ["w1"]]


def test_parameter_without_gradient_on_some_or_all_ranks():
    x, t = common.make_data(4)

    def body(comm):
        dp = _wrap(comm, seed=0)
        dp.backward(common.mse_grad(dp(x), t))
        if comm.rank == 1:
            dp.module.w1.grad = None  # as if rank 1 never reached that layer
        dp.module.b2.grad = None      # nobody has one
        dp.sync_gradients(num_samples=4)
        m = dp.module
        return m.w1.grad.copy(), m.b2.grad, m.w2.grad.copy()

    ref = common.TinyMLP(seed=0)
    ref.backward(common.mse_grad(ref(x), t))
    for w1, b2, w2 in dist.FakeComm.run(2, body):
        np.testing.assert_allclose(w1, ref.w1.grad / 2, rtol=1e-14)
        assert b2 is None
        np.testing.assert_allclose(w2, ref.w2.grad, rtol=1e-14)


def test_no_sync_accumulates_then_one_sync_averages():
    x, t = common.make_data(8)

    def body(comm):
        dp = _wrap(comm, seed=0)
        idx = common.local_part(np.arange(8), comm.rank, comm.size)  # 4 each
        with dp.no_sync():
            dp.backward(common.mse_grad(dp(x[idx[:2]]), t[idx[:2]]))
        calls = len(_allreduce_sizes(comm))
        dp.backward(common.mse_grad(dp(x[idx[2:]]), t[idx[2:]]))
        return dp.module.w1.grad.copy(), len(_allreduce_sizes(comm)) - calls

    # each rank's local sum of two 2-sample means, weighted by 4 samples, over 8 samples:
    # = mean over ranks of (mean_a + mean_b)
    ref_parts = []
    for r in range(2):
        idx = common.local_part(np.arange(8), r, 2)
        m = common.TinyMLP(seed=0)
        for part in (idx[:2], idx[2:]):
            m.backward(common.mse_grad(m(x[part]), t[part]))
        ref_parts.append(m.w1.grad)
    for w1, calls in dist.FakeComm.run(2, body):
        assert calls == 1
        np.testing.assert_allclose(w1, (ref_parts[0] + ref_parts[1]) / 2, rtol=1e-13)


@pytest.mark.parametrize("mode", ["broadcast", "average", None])
def test_buffer_sync_modes(mode):
    x, t = common.make_data(8)

    def body(comm):
        dp = _wrap(comm, seed=0, buffers=mode)
        idx = common.local_part(np.arange(8), comm.rank, comm.size)
        dp.backward(common.mse_grad(dp(x[idx]), t[idx]))
        return dp.module.running_mean.copy()

    out = dist.FakeComm.run(2, body)
    local = [0.1 * x[common.local_part(np.arange(8), r, 2)].mean(axis=0) for r in range(2)]
    expected = {"broadcast": [local[0], local[0]],
                "average": [(local[0] + local[1]) / 2] * 2,
                None: local}[mode]
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    if mode is not None:
        assert np.array_equal(out[0], out[1])


def test_different_models_fail_on_every_rank():
    class Wider(common.TinyMLP):
        def __init__(self):
            super().__init__()
            import nn
            self.extra = nn.Parameter(np.zeros(3))

    def body(comm):
        try:
            dist.DataParallel(Wider() if comm.rank == 1 else common.TinyMLP(), comm)
        except ValueError as exc:
            return str(exc)
        return None

    out = dist.FakeComm.run(2, body)
    assert all(msg is not None and "different models" in msg for msg in out)


def test_single_process_data_parallel_changes_nothing():
    x, t = common.make_data(8)
    dp = dist.DataParallel(common.TinyMLP(seed=0))
    ref = common.TinyMLP(seed=0)
    dp.backward(common.mse_grad(dp(x), t))
    ref.backward(common.mse_grad(ref(x), t))
    for (n, p), (_, q) in zip(dp.module.named_parameters(), ref.named_parameters()):
        assert np.array_equal(p.grad, q.grad), n


def test_state_dict_has_the_bare_module_keys_and_bad_arguments_raise():
    dp = dist.DataParallel(common.TinyMLP(seed=0))
    assert list(dp.state_dict()) == ["w1", "b1", "w2", "b2", "running_mean"]
    dp.load_state_dict(common.TinyMLP(seed=3).state_dict())
    assert np.array_equal(common.flat_params(dp.module), common.flat_params(common.TinyMLP(seed=3)))
    assert "size=1" in repr(dp)
    with pytest.raises(TypeError, match="module"):
        dist.DataParallel(object())
    with pytest.raises(ValueError, match="buffers"):
        dist.DataParallel(common.TinyMLP(), buffers="sum")
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        dist.DataParallel(common.TinyMLP(), bucket_cap_mb=0)


@pytest.mark.cuda
def test_data_parallel_on_the_cuda_device(cuda_device):
    x, t = common.make_data(8)
    batches = common.global_batches(8, 4, steps=3)

    def body(comm):
        dp = dist.DataParallel(common.TinyMLP(seed=comm.rank, device=cuda_device), comm)
        common.train(dp, x, t, batches, device=cuda_device,
                     part=lambda idx: common.local_part(idx, comm.rank, comm.size))
        assert kernels.device_of(dp.module.w1.data) == cuda_device
        return common.flat_params(dp.module)

    out = dist.FakeComm.run(2, body)
    ref = common.flat_params(common.train(common.TinyMLP(seed=0), x, t, batches))
    np.testing.assert_allclose(out[0], ref, rtol=0, atol=1e-12)
    assert np.array_equal(out[0], out[1])


# ---------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("n,size,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False),
                                              (2, 3, False), (0, 2, False)])
def test_sampler_shards_cover_the_epoch(n, size, drop_last):
    samplers = [dist.DistributedSampler(n, r, size, shuffle=True, seed=7, drop_last=drop_last)
                for r in range(size)]
    shards = [s.indices() for s in samplers]
    per_rank = n // size if drop_last else -(-n // size)
    assert all(len(s) == per_rank == len(sh) for s, sh in zip(samplers, shards))
    together = np.concatenate(shards)
    if drop_last:
        assert len(set(together.tolist())) == len(together)  # no repeats
    elif n:
        assert set(together.tolist()) == set(range(n))  # everyone is seen
    assert all(sh.dtype == np.int64 for sh in shards)


def test_sampler_shuffles_by_epoch_with_a_shared_seed():
    a = dist.DistributedSampler(20, 0, 2, seed=3)
    b = dist.DistributedSampler(20, 0, 2, seed=3)
    first = a.indices()
    assert np.array_equal(first, b.indices())
    a.set_epoch(1)
    assert not np.array_equal(first, a.indices())
    b.set_epoch(1)
    assert np.array_equal(a.indices(), b.indices())
    assert list(iter(a)) == a.indices().tolist()
    union = np.concatenate([dist.DistributedSampler(20, r, 2, seed=3).indices() for r in (0, 1)])
    assert sorted(union.tolist()) == list(range(20))


def test_sampler_without_shuffle_matches_torch_layout():
    # torch pads by repeating the first indices and strides by rank
    s = [dist.DistributedSampler(5, r, 3, shuffle=False).indices().tolist() for r in range(3)]
    assert s == [[0, 3], [1, 4], [2, 0]]
    s = [dist.DistributedSampler(5, r, 3, shuffle=False, drop_last=True).indices().tolist()
         for r in range(3)]
    assert s == [[0], [1], [2]]
    torch = pytest.importorskip("torch")
    from torch.utils.data.distributed import DistributedSampler as TorchSampler
    for n, size, drop in [(5, 3, False), (5, 3, True), (2, 3, False), (9, 2, False)]:
        for r in range(size):
            mine = dist.DistributedSampler(n, r, size, shuffle=False, drop_last=drop)
            theirs = TorchSampler(range(n), num_replicas=size, rank=r, shuffle=False,
                                  drop_last=drop)
            assert mine.indices().tolist() == list(theirs) and len(mine) == len(theirs)
    del torch


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        dist.DistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="n:"):
        dist.DistributedSampler(-1)
    comm = dist.SingleProcessComm()
    assert len(dist.DistributedSampler.for_comm(7, comm)) == 7


# ---------------------------------------------------------------------------- real MPI
def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = Path(sys.executable).parent / "mpiexec"
    return str(exe) if exe.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs mpi4py and mpiexec "
                               "(pip install '.[mpi]')")


def _run_mpi(n, *args, timeout=60):
    """``mpiexec -n N python -m mpi4py ARGS...`` from the checkout, one thread per rank."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", *map(str, args)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - start


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_mpi_training_matches_single_process(n, tmp_path):
    out = tmp_path / "result.json"
    proc, _ = _run_mpi(n, SCRIPTS / "dp_train.py", out, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["size"] == n
    assert result["steps"] >= 24
    assert result["max_abs_diff_vs_single_process"] <= 1e-10
    assert result["changed_from_init"]
    assert result["ranks_bitwise_identical"], result


@needs_mpi
def test_mpi_crash_on_one_rank_ends_all_ranks():
    # The surviving rank waits in an allreduce that can never finish: only MPI_Abort ends it.
    # Without it the job hangs for ever, which the timeout turns into a failure; the timeout
    # is generous because two ranks starting Python on a loaded 2-core machine can take tens
    # of seconds, and how fast the job ends is not what this test is about.
    proc, _ = _run_mpi(2, SCRIPTS / "dp_crash.py", timeout=240)
    assert proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------- sharded loader
@pytest.mark.parametrize("n,batch,size,drop_last", [(23, 8, 3, False), (23, 8, 3, True),
                                                    (17, 8, 2, False), (16, 8, 2, False)])
def test_sharded_loader_splits_the_single_process_batches(n, batch, size, drop_last):
    from nn.data import ArrayDataset, DataLoader

    data = ArrayDataset(np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n))

    def loader():
        return DataLoader(data, batch_size=batch, shuffle=True, seed=5, drop_last=drop_last)

    whole = [y for _, y in loader()]
    if not drop_last and len(whole[-1]) < size:
        whole = whole[:-1]  # too small to give every rank a sample: skipped everywhere

    def body(comm):
        sharded = dist.ShardedLoader(loader(), comm)
        epoch = [(x, y) for x, y in sharded]
        return len(sharded), epoch, sharded.generator.bit_generator.state

    out = dist.FakeComm.run(size, body)
    for length, epoch, state in out:
        assert length == len(whole) == len(epoch)
        assert state == out[0][2]  # the shared generator advanced the same everywhere
    for b, ys in enumerate(whole):
        parts = [out[r][1][b][1] for r in range(size)]
        assert np.array_equal(np.concatenate(parts), ys)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        for r in range(size):
            x, y = out[r][1][b]
            assert x.dtype == np.float32 and np.array_equal(x[:, 0], 2 * y.astype(np.float32))


@pytest.mark.parametrize("mode", ["broadcast", "average"])
def test_batchnorm_running_statistics_agree_across_ranks(mode):
    import nn

    x = np.random.default_rng(0).standard_normal((12, 4))

    # built before the threads start: layer initialisation draws from one global generator
    models = [_bn_model(seed) for seed in (0, 1)]  # rank 0's weights are broadcast

    def body(comm):
        dp = dist.DataParallel(models[comm.rank], comm, buffers=mode)
        part = x[comm.rank * 6:(comm.rank + 1) * 6]
        for _ in range(2):
            y = dp(part)
            dp.backward(np.ones_like(y) / len(y))
        return {k: v for k, v in dp.state_dict().items() if "1." in k}

    out = dist.FakeComm.run(2, body)
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert np.array_equal(out[0][key], out[1][key]), key
    assert out[0]["1.num_batches_tracked"] == 2
    rank0_only = _alone_running_mean(x[:6])
    if mode == "broadcast":
        np.testing.assert_allclose(out[0]["1.running_mean"], rank0_only, rtol=1e-14)
    else:
        assert not np.allclose(out[0]["1.running_mean"], rank0_only)


def _bn_model(seed):
    import nn

    nn.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    return model.double()


def _alone_running_mean(part):
    """Rank 0's running mean had it run alone on its shard (what 'broadcast' keeps)."""
    model = _bn_model(0)
    for _ in range(2):
        y = model(part)
        model.backward(np.ones_like(y) / len(y))
        for p in model.parameters():  # the averaged gradients never touch the weights here
            p.grad = None
    return model.state_dict()["1.running_mean"]


def test_sharded_evaluation_adds_up_to_the_whole_set():
    from nn.data import ArrayDataset, DataLoader
    from nn.train import evaluate

    x, _ = common.make_data(23)
    labels = np.random.default_rng(3).integers(0, 3, 23)
    data = ArrayDataset(x, labels)

    def loss_fn(out, y):  # mean cross-entropy
        z = out - out.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y])

    model = common.TinyMLP(seed=0)
    whole = evaluate(model, DataLoader(data, batch_size=5), loss_fn, num_classes=3)

    models = [common.TinyMLP(seed=0) for _ in range(3)]  # one per thread: eval() flips modes

    def body(comm):
        part = dist.shard_dataset(data, comm)
        local = evaluate(models[comm.rank], DataLoader(part, batch_size=5), loss_fn,
                         num_classes=3)
        return len(part), dist.reduce_evaluation(comm, local)

    out = dist.FakeComm.run(3, body)
    assert [n for n, _ in out] == [8, 8, 7]
    for _, got in out:
        assert got["samples"] == 23
        np.testing.assert_allclose(got["loss"], whole["loss"], rtol=1e-13)
        assert got["accuracy"] == whole["accuracy"]
        assert np.array_equal(got["confusion"], whole["confusion"])
        assert got["loss"] == out[0][1]["loss"]  # identical on every rank


# ---------------------------------------------------------------------------- NCCL, mocked
class _FakeNcclModule:
    """Stands in for ``cupy.cuda.nccl``: records calls in the documented argument order."""
    NCCL_SUM, NCCL_INT32, NCCL_INT64, NCCL_UINT8 = 0, 2, 4, 1
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8

    def __init__(self):
        self.calls = []
        module = self

        class NcclCommunicator:
            def __init__(self, ndev, commId, rank):
                module.calls.append(("init", ndev, commId, rank))

            def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
                module.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))

            def bcast(self, buff, count, datatype, root, stream):
                module.calls.append(("bcast", buff, count, datatype, root, stream))

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        return b"unique-id"


class _FakeDeviceArray(kernels.SimCudaArray):
    @property
    def data(self):  # CuPy's ndarray.data is a MemoryPointer with .ptr
        return type("MemoryPointer", (), {"ptr": self.ctypes.data})()


def test_nccl_comm_calls_cupy_nccl_as_documented(monkeypatch):
    """No GPU here: checks the calls NCCLComm makes against CuPy's documented signatures."""
    from types import SimpleNamespace

    nccl = _FakeNcclModule()
    used = []
    stream = SimpleNamespace(ptr=1234, synchronize=lambda: used.append("sync"))
    xp = SimpleNamespace(cuda=SimpleNamespace(
        Device=lambda i: SimpleNamespace(use=lambda: used.append(("device", i))),
        runtime=SimpleNamespace(getDeviceCount=lambda: 4),
        get_current_stream=lambda: stream))
    monkeypatch.setattr(kernels, "SIMULATOR", False)
    monkeypatch.setattr(kernels, "devices", lambda: ["cpu", "cuda"])
    monkeypatch.setattr(kernels, "array_module", lambda device: xp)
    # The device layer selects CuPy's and Numba's GPU together (kernels.device.select_gpu).
    monkeypatch.setattr(kernels.device, "gpu_count", lambda: 4)
    monkeypatch.setattr(kernels.device, "select_gpu", lambda i: used.append(("device", i)))
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    local = SimpleNamespace(Get_rank=lambda: 5, Free=lambda: None)
    mpi = SimpleNamespace(
        rank=0, size=2, _MPI=SimpleNamespace(COMM_TYPE_SHARED=1),
        comm=SimpleNamespace(Split_type=lambda kind, key: local, bcast=lambda obj, root: obj),
        barrier=lambda: used.append("mpi barrier"))

    comm = dist.NCCLComm(mpi=mpi)
    assert (comm.rank, comm.size, comm.local_rank) == (0, 2, 5)
    assert used == [("device", 5 % 4)]
    assert nccl.calls == [("init", 2, b"unique-id", 0)]
    a = np.zeros(6).view(_FakeDeviceArray)
    b = np.zeros(3, dtype=np.float32).view(_FakeDeviceArray)
    assert comm.allreduce_sum(a) is a
    comm.broadcast(b, root=1)
    comm.barrier()
    ptr_a, ptr_b = a.data.ptr, b.data.ptr
    assert nccl.calls[1:] == [("allReduce", ptr_a, ptr_a, 6, nccl.NCCL_FLOAT64, nccl.NCCL_SUM, 1234),
                              ("bcast", ptr_b, 3, nccl.NCCL_FLOAT32, 1, 1234)]
    assert used[1:] == ["sync", "mpi barrier"]
    with pytest.raises(TypeError, match="NCCL type"):
        comm.allreduce_sum(np.zeros(2, dtype=np.complex64).view(_FakeDeviceArray))
    with pytest.raises(ValueError, match="GPU arrays"):
        comm.allreduce_sum(np.zeros(2))


@needs_mpi
def test_mpi_cli_train_resumes_and_matches_one_process(tmp_path):
    """``mpiexec -n 2 python -m mpi4py -m nn train --distributed``: rank 0 alone prints and
    writes; 1 epoch + resume to 2 on 2 ranks ends where one process ends after 2 epochs."""
    from nn.checkpoint import load
    from nn.cli import main

    options = ["--model", "mlp", "--dataset", "synthetic", "--schedule", "none",
               "--batch-size", "50", "--quiet"]
    dist_dir, single_dir = tmp_path / "dist", tmp_path / "single"
    proc, _ = _run_mpi(2, "-m", "nn", "train", "--distributed", *options, "--epochs", 1,
                       "--out", dist_dir, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("run folder:") == 1  # printed by rank 0 only
    proc, _ = _run_mpi(2, "-m", "nn", "train", "--distributed", "--resume", dist_dir,
                       "--epochs", 2, "--quiet", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main(["train", *options, "--epochs", "2", "--out", str(single_dir)]) == 0

    got, want = (load(d / "checkpoint.safetensors") for d in (dist_dir, single_dir))
    assert got["epoch"] == want["epoch"] == 2
    for key, value in want["model"].items():  # float32: summation order differs by rank
        np.testing.assert_allclose(got["model"][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    for row_got, row_want in zip(got["history"], want["history"], strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert row_got[key] == pytest.approx(row_want[key], rel=1e-4), key
