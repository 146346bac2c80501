"""Which samples each rank trains on: DistributedSampler and ShardedLoader."""
from __future__ import annotations

import numpy as np

import kernels


class DistributedSampler:
    """This rank's share of ``n`` sample indices, reshuffled each epoch with a shared seed.

    Every rank draws the same permutation (``seed`` and the epoch from :meth:`set_epoch`)
    and takes every ``size``-th index starting at ``rank``.  As torch: with ``drop_last``
    the tail that does not divide evenly is dropped; otherwise the list is padded by
    repeating its first indices, so every rank gets ``len(self)`` samples.
    """

    def __init__(self, n, rank=0, size=1, shuffle=True, seed=0, drop_last=False):
        n = int(n)
        if n < 0:
            raise ValueError(f"n: expected a number of samples >= 0, got {n}")
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"rank/size: expected 0 <= rank < size, got rank={rank}, size={size}")
        self.n, self.rank, self.size = n, int(rank), int(size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        if drop_last:
            self.num_samples = n // size
        else:
            self.num_samples = -(-n // size)
        self.total_size = self.num_samples * size

    @classmethod
    def for_comm(cls, n, comm, **kwargs):
        return cls(n, rank=comm.rank, size=comm.size, **kwargs)

    def set_epoch(self, epoch):
        """Use a different shuffle for ``epoch`` (the same on every rank)."""
        self.epoch = int(epoch)

    def indices(self):
        """This rank's indices for the current epoch (int64 NumPy array)."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.total_size > self.n and self.n > 0:
            reps = -(-(self.total_size - self.n) // self.n)
            order = np.concatenate([order] + [order] * reps)
        order = order[:self.total_size]
        return order[self.rank:self.total_size:self.size].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples


class ShardedLoader:
    """This rank's share of every global batch of an ``nn.data.DataLoader``.

    Every rank draws the loader's permutation from the same seeded generator, cuts the same
    global batches of ``loader.batch_size``, and keeps its contiguous ``1/size`` of each
    (sizes differ by at most one; :class:`DataParallel` weights them).  So N ranks train on
    exactly the global batches one process would see, and checkpoints that store
    ``loader.generator`` resume the same way.  A final global batch with fewer samples than
    ranks is skipped on every rank (each rank needs at least one sample per step).
    """

    def __init__(self, loader, comm):
        self.loader = loader
        self.comm = comm

    @property
    def generator(self):
        return self.loader.generator

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def batch_size(self):
        return self.loader.batch_size

    @property
    def device(self):
        return self.loader.device

    def _global_batches(self):
        n = len(self.loader.dataset)
        order = self.loader.generator.permutation(n) if self.loader.shuffle else np.arange(n)
        bs = self.loader.batch_size
        for start in range(0, n, bs):
            index = order[start:start + bs]
            if len(index) < (bs if self.loader.drop_last else self.comm.size):
                break
            yield index

    def __len__(self):
        n, bs, size = len(self.loader.dataset), self.loader.batch_size, self.comm.size
        full, tail = divmod(n, bs)
        return full + (1 if tail and not self.loader.drop_last and tail >= size else 0)

    def __iter__(self):
        loader = self.loader
        for index in self._global_batches():
            part = np.array_split(index, self.comm.size)[self.comm.rank]
            x, y = loader.dataset[part]
            if loader.dtype is not None and x.dtype.kind == "f" and x.dtype != loader.dtype:
                x = x.astype(loader.dtype)
            yield kernels.to_device(x, loader.device), kernels.to_device(y, loader.device)

    def __repr__(self):
        return f"ShardedLoader({self.loader!r}, rank={self.comm.rank}, size={self.comm.size})"


def shard_dataset(dataset, comm):
    """This rank's contiguous ``1/size`` of ``dataset`` (no padding, no repeats), for
    evaluation: each sample is evaluated once, then :func:`reduce_evaluation` adds up."""
    index = np.array_split(np.arange(len(dataset)), comm.size)[comm.rank]
    return dataset.subset(index)


def reduce_evaluation(comm, result):
    """Combine ``nn.train.evaluate`` results of the ranks' shards into the whole set's.

    Sums samples, loss x samples, correct predictions and the confusion matrix over ranks;
    every rank gets the same numbers (so decisions taken from them, such as early stopping,
    agree everywhere).
    """
    n = float(result["samples"])
    values = [n, result["loss"] * n]
    if "accuracy" in result:
        values.append(round(result["accuracy"] * n))
    if "confusion" in result:
        values += np.asarray(result["confusion"], dtype=np.float64).ravel().tolist()
    buf = np.array(values, dtype=np.float64)
    comm.allreduce_sum(buf)
    out = dict(result)
    total = int(buf[0])
    out["samples"] = total
    out["loss"] = float(buf[1]) / max(total, 1)
    if "accuracy" in result:
        out["accuracy"] = float(buf[2]) / max(total, 1)
    if "confusion" in result:
        confusion = np.asarray(result["confusion"])
        out["confusion"] = np.rint(buf[3:]).astype(np.int64).reshape(confusion.shape)
    return out
