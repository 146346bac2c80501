"""Run under ``mpiexec -n N python -m mpi4py dp_mismatch.py KIND``: the last rank differs from
the others in one way (KIND: transposed weights, dtype, seed, batch size); every rank must
stop with the same one-line error (printed by rank 0 only) instead of training on."""
import sys

import numpy as np

import dp_common as common
import nn
from nn import distributed as dist


class Transposed(common.TinyMLP):
    """w1 stored as (4, 5) instead of (5, 4): the same number of values."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(np.zeros((4, 5)))


def main(kind):
    comm = dist.MPIComm()
    odd = comm.rank == comm.size - 1
    model = Transposed() if kind == "transposed" and odd else common.TinyMLP(
        dtype=np.float32 if kind == "dtype" and odd else np.float64)
    config = {"seed": 1 if kind == "seed" and odd else 0,
              "batch_size": 64 if kind == "batch_size" and odd else 32}
    try:
        dist.DataParallel(model, comm, config=config)
    except dist.RanksDisagreeError as exc:
        if not exc.quiet:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)
    print("no error", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
