"""Run under ``mpiexec -n N python -m mpi4py dp_train.py OUT.json``.

Float64 data-parallel training of the tiny model on uneven shards of the same global
batches; rank 0 also trains the same model on whole batches in one process and writes how
far apart they ended, and whether all ranks hold bitwise-identical parameters.
"""
import json
import sys

import numpy as np

import dp_common as common
from nn import distributed as dist

STEPS = 30


def main(out_path):
    comm = dist.MPIComm()
    x, t = common.make_data(48)
    batches = common.global_batches(48, 10, steps=STEPS)  # uneven shards for 3 ranks
    dp = dist.DataParallel(common.TinyMLP(seed=comm.rank), comm)  # rank 0's weights win
    common.train(dp, x, t, batches, part=lambda idx: common.local_part(idx, comm.rank, comm.size))
    mine = common.flat_params(dp.module)
    everyone = comm.comm.gather(mine, root=0)
    if comm.rank == 0:
        single = common.flat_params(common.train(common.TinyMLP(seed=0), x, t, batches))
        result = {
            "size": comm.size,
            "steps": STEPS,
            "max_abs_diff_vs_single_process": float(np.max(np.abs(mine - single))),
            "changed_from_init": bool(np.any(mine != common.flat_params(common.TinyMLP(seed=0)))),
            "ranks_bitwise_identical": all(np.array_equal(p, mine) for p in everyone),
        }
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
