"""Run under ``mpiexec -n 2 python -m mpi4py dp_crash.py``: rank 1 raises mid-training
while rank 0 waits in the gradient allreduce.  The job must end, non-zero, within seconds."""
import dp_common as common
from nn import distributed as dist


def main():
    comm = dist.MPIComm()
    x, t = common.make_data(16)
    dp = dist.DataParallel(common.TinyMLP(seed=0), comm)
    for step in range(1000):
        if comm.rank == 1 and step == 3:
            raise RuntimeError("deliberate failure on rank 1")
        y = dp(x)
        dp.backward(common.mse_grad(y, t))
        common.sgd_step(dp, 0.01)


if __name__ == "__main__":
    main()
