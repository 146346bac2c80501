"""Communicators: ``rank``, ``size``, in-place ``broadcast``/``allreduce_sum``, ``barrier``.

:class:`SingleProcessComm` (default), :class:`MPIComm` (mpi4py), :class:`NCCLComm` (CuPy's
NCCL, GPUs) and :class:`FakeComm` (threads in one process, for tests).  mpi4py and CuPy are
imported only when an MPI or NCCL communicator is created.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np

import kernels


class Communicator:
    """The interface: ``rank``, ``size``, in-place ``broadcast``/``allreduce_sum``, ``barrier``."""

    rank = 0
    size = 1

    def broadcast(self, buf, root=0):
        """Overwrite ``buf`` on every rank with root's ``buf``; returns ``buf``."""
        raise NotImplementedError

    def allreduce_sum(self, buf):
        """Replace ``buf`` on every rank with the element-wise sum over ranks; returns ``buf``."""
        raise NotImplementedError

    def barrier(self):
        """Return only when every rank has called it."""
        raise NotImplementedError

    def abort(self, code=1):
        """End every rank of the group (after an error on this one)."""
        raise SystemExit(code)

    @property
    def is_main(self):
        """True on rank 0: the rank that prints and writes files."""
        return self.rank == 0

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


def _check_buffer(buf, name="buf"):
    if not hasattr(buf, "dtype") or not hasattr(buf, "shape"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (collectives work in place on "
                         f"its memory), got strides {buf.strides} for shape {tuple(buf.shape)}")


class SingleProcessComm(Communicator):
    """One process: rank 0 of 1; broadcast, allreduce and barrier leave everything as it is."""

    def broadcast(self, buf, root=0):
        _check_buffer(buf)
        if root != 0:
            raise ValueError(f"root: expected 0 for a single process, got {root}")
        return buf

    def allreduce_sum(self, buf):
        _check_buffer(buf)
        return buf

    def barrier(self):
        pass


class MPIComm(Communicator):
    """MPI through mpi4py (``COMM_WORLD`` unless ``comm`` is given).

    Arrays that live on a GPU are copied to the host for the collective and back: the MPI
    that pip installs (MPICH) does not read device memory.  Use :class:`NCCLComm` on GPUs.
    """

    def __init__(self, comm=None, abort_on_error=True):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError("MPIComm needs mpi4py and an MPI library: "
                              "pip install \".[mpi]\" (mpi4py and mpich)") from exc
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if abort_on_error and self.size > 1:
            _install_abort_hook(self)

    def _run(self, buf, op):
        _check_buffer(buf)
        if isinstance(buf, np.ndarray):  # host memory (SimCudaArray is host memory too)
            op(buf.view(np.ndarray))
            return buf
        host = np.ascontiguousarray(kernels.to_host(buf))
        op(host)
        buf[...] = kernels.to_device(host, kernels.device_of(buf))
        return buf

    def broadcast(self, buf, root=0):
        return self._run(buf, lambda a: self.comm.Bcast(a, root=root))

    def allreduce_sum(self, buf):
        return self._run(buf, lambda a: self.comm.Allreduce(self._MPI.IN_PLACE, a,
                                                            op=self._MPI.SUM))

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


def _install_abort_hook(comm):
    """Make an uncaught exception end all ranks (what ``python -m mpi4py`` does too)."""
    previous = sys.excepthook
    if getattr(previous, "_nn_distributed_abort", False):
        return

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        comm.abort(1)

    hook._nn_distributed_abort = True
    sys.excepthook = hook


class NCCLComm(Communicator):
    """NCCL through CuPy: one GPU per rank, collectives on CuPy's current stream.

    ``mpi`` (an :class:`MPIComm`, created when not given) starts the group: rank 0 makes the
    NCCL unique id and broadcasts it over MPI, then every rank joins with its rank number.
    Each rank uses GPU ``local_rank % device_count`` where ``local_rank`` counts ranks on
    the same machine, so one process per GPU on every node just works.  Untested here (no
    GPU in CI); it follows CuPy's documented ``cupy.cuda.nccl`` API.
    """

    def __init__(self, mpi=None):
        if kernels.SIMULATOR or "cuda" not in kernels.devices():
            raise RuntimeError("NCCLComm needs a real GPU with CuPy (the CUDA simulator has "
                               "no NCCL); use MPIComm instead")
        import importlib
        xp = kernels.array_module("cuda")  # CuPy itself on a real GPU
        # The one CuPy import outside kernels/device.py: NCCL is not part of the device layer.
        self._nccl = importlib.import_module("cupy.cuda.nccl")
        self._xp = xp
        self.mpi = MPIComm() if mpi is None else mpi
        self.rank, self.size = self.mpi.rank, self.mpi.size
        MPI = self.mpi._MPI
        local = self.mpi.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        local.Free()
        # CuPy's and Numba's current device both: collectives and kernels on the same GPU.
        kernels.device.select_gpu(self.local_rank % kernels.device.gpu_count())
        uid = self._nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.comm.bcast(uid, root=0)  # a tuple or bytes, depending on CuPy's version
        self.comm = self._nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {
            np.dtype(np.float16): self._nccl.NCCL_FLOAT16,
            np.dtype(np.float32): self._nccl.NCCL_FLOAT32,
            np.dtype(np.float64): self._nccl.NCCL_FLOAT64,
            np.dtype(np.int32): self._nccl.NCCL_INT32,
            np.dtype(np.int64): self._nccl.NCCL_INT64,
            np.dtype(np.uint8): self._nccl.NCCL_UINT8,
        }

    def _args(self, buf):
        _check_buffer(buf)
        if kernels.device_of(buf) != "cuda":
            raise ValueError(f"buf: NCCLComm works on GPU arrays, got one on "
                             f"{kernels.device_of(buf)!r}; use MPIComm for host arrays")
        dtype = np.dtype(buf.dtype)
        if dtype not in self._types:
            raise TypeError(f"buf: dtype {dtype} has no NCCL type; expected one of "
                            f"{sorted(str(d) for d in self._types)}")
        return buf.data.ptr, buf.size, self._types[dtype], self._xp.cuda.get_current_stream().ptr

    def broadcast(self, buf, root=0):
        ptr, count, dtype, stream = self._args(buf)
        self.comm.bcast(ptr, count, dtype, root, stream)
        return buf

    def allreduce_sum(self, buf):
        ptr, count, dtype, stream = self._args(buf)
        self.comm.allReduce(ptr, ptr, count, dtype, self._nccl.NCCL_SUM, stream)
        return buf

    def barrier(self):
        self._xp.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)


class _FakeGroup:
    def __init__(self, size, timeout):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.slots = [None] * size
        self.log = [[] for _ in range(size)]  # per rank: (op, dtype, size) of every collective


class FakeComm(Communicator):
    """One rank of an in-process group of threads, for tests without MPI.

    Collectives exchange copies through shared slots; every rank sums in rank order, so the
    results are bitwise identical on all ranks.  Every call is recorded in ``log`` as
    ``(op, dtype, size)``.  Ranks that call different collectives raise ``RuntimeError``.
    """

    def __init__(self, group, rank):
        self._group = group
        self.rank = rank
        self.size = group.size

    @property
    def log(self):
        return self._group.log[self.rank]

    @classmethod
    def group(cls, size, timeout=30.0):
        """``size`` communicators sharing one group (use each from its own thread)."""
        g = _FakeGroup(size, timeout)
        return [cls(g, r) for r in range(size)]

    @classmethod
    def run(cls, size, fn, timeout=30.0):
        """Run ``fn(comm)`` on ``size`` threads, one per rank; return the results by rank.

        An exception on any rank breaks the group (the others stop at their next collective)
        and is raised here.
        """
        comms = cls.group(size, timeout)
        results = [None] * size
        errors = [None] * size

        def target(r):
            try:
                results[r] = fn(comms[r])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                errors[r] = exc
                comms[r]._group.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        raised = [e for e in errors if e is not None]
        # a broken barrier on one rank is the echo of the real error on another
        real = [e for e in raised if not isinstance(e, threading.BrokenBarrierError)]
        if raised:
            raise (real or raised)[0]
        return results

    def _exchange(self, op, buf):
        g = self._group
        key = (op, str(buf.dtype), int(buf.size))
        g.log[self.rank].append(key)
        g.slots[self.rank] = (key, np.array(kernels.to_host(buf), copy=True))
        g.barrier.wait()
        keys = [s[0] for s in g.slots]
        if any(k != keys[0] for k in keys):
            g.barrier.abort()
            raise RuntimeError(f"ranks called different collectives: {keys}")
        arrays = [s[1] for s in g.slots]
        g.barrier.wait()  # everyone has read the slots before anyone overwrites them
        return arrays

    def _store(self, buf, host):
        buf[...] = kernels.to_device(host.reshape(buf.shape), kernels.device_of(buf))

    def broadcast(self, buf, root=0):
        _check_buffer(buf)
        if not 0 <= root < self.size:
            raise ValueError(f"root: expected 0 <= root < {self.size}, got {root}")
        arrays = self._exchange(("broadcast", root), buf)
        self._store(buf, arrays[root])
        return buf

    def allreduce_sum(self, buf):
        _check_buffer(buf)
        arrays = self._exchange("allreduce_sum", buf)
        total = arrays[0].copy()
        for a in arrays[1:]:
            total += a
        self._store(buf, total)
        return buf

    def barrier(self):
        self._group.log[self.rank].append(("barrier", None, 0))
        self._group.barrier.wait()

    def abort(self, code=1):
        self._group.barrier.abort()
        raise SystemExit(code)


def init(backend="mpi"):
    """The communicator for this run: ``"mpi"``, ``"nccl"`` (GPUs) or ``"single"``.

    ``"mpi"`` falls back to :class:`SingleProcessComm` when mpi4py is missing and the
    process was not started by an MPI launcher (so ``--distributed`` on one process works
    without the extra); under ``mpiexec`` a missing mpi4py is an error.
    """
    if backend == "single":
        return SingleProcessComm()
    if backend == "nccl":
        return NCCLComm()
    if backend != "mpi":
        raise ValueError(f"backend: expected 'mpi', 'nccl' or 'single', got {backend!r}")
    try:
        return MPIComm()
    except ImportError:
        launched = any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE",
                                                 "PMIX_RANK", "MPI_LOCALNRANKS"))
        if launched:
            raise
        return SingleProcessComm()


def allreduce_values(comm, values):
    """Sum a few numbers across ranks (e.g. loss sums and sample counts for metrics).

    Returns a float64 NumPy array in the order given; every rank gets the same values.
    """
    buf = np.array(values, dtype=np.float64).reshape(-1)
    comm.allreduce_sum(buf)
    return buf
