"""Data-parallel training: communicators, :class:`DataParallel`, samplers and loaders.

Every rank (process) holds a full copy of the model and trains on its own shard of each
global batch.  After each backward the gradients are averaged across ranks, weighted by
each rank's local sample count, so every rank takes the same optimizer step and the model
stays identical everywhere::

    grad = sum_r (n_r * grad_r) / sum_r n_r        (grad_r: mean-loss gradient on rank r)

which is the gradient of the mean loss over the global batch, as one process would get it.

Communicators (all with ``rank``, ``size``, ``broadcast(buf, root)``, ``allreduce_sum(buf)``
- both in place on a contiguous array - and ``barrier()``):

* :class:`SingleProcessComm` - the default; rank 0 of 1, every call a no-op.
* :class:`MPIComm` - MPI through mpi4py (``pip install ".[mpi]"``).  GPU arrays are staged
  through host memory (the MPI from PyPI is not CUDA-aware).
* :class:`NCCLComm` - NCCL through CuPy for GPU arrays, one GPU per rank; the NCCL unique id
  is passed over MPI.
* :class:`FakeComm` - an in-process group of threads for tests (``FakeComm.run(size, fn)``).

Data: :class:`DistributedSampler` (torch's: each rank a strided share of the epoch's
shuffled indices) and :class:`ShardedLoader` (each rank a share of every global batch of an
``nn.data.DataLoader``, so N ranks see exactly one process's global batches) for training;
:func:`shard_dataset` and :func:`reduce_evaluation` to evaluate each sample once and add up.

The heavy imports (mpi4py, CuPy's NCCL) happen only when those classes are constructed.

Launch with ``mpiexec -n N python -m mpi4py script.py``: ``-m mpi4py`` turns an uncaught
exception on one rank into ``MPI_Abort``, which ends every rank instead of leaving the others
waiting in a collective.  :class:`MPIComm` installs the same guard when it is created.
"""
from .comm import (Communicator, FakeComm, MPIComm, NCCLComm, SingleProcessComm,  # noqa: F401
                   allreduce_values, init)
from .data import DistributedSampler, ShardedLoader, reduce_evaluation, shard_dataset  # noqa: F401
from .parallel import (DataParallel, RanksDisagreeError, check_agreement,  # noqa: F401
                       describe_run)

__all__ = [
    "Communicator", "SingleProcessComm", "MPIComm", "NCCLComm", "FakeComm",
    "DataParallel", "RanksDisagreeError", "check_agreement", "describe_run",
    "DistributedSampler", "ShardedLoader", "shard_dataset", "reduce_evaluation",
    "init", "allreduce_values",
]
