"""DataParallel: one model per rank, gradients averaged over ranks in flat buckets."""
from __future__ import annotations

import contextlib

import numpy as np

import kernels

from ..module import Module, is_grad_enabled
from .comm import SingleProcessComm


class _Bucket:
    """Trainable parameters that travel together in one flat buffer (one allreduce)."""

    def __init__(self, names, params, header):
        self.names = names
        self.params = params
        self.header = header  # leading slots: [sample count, has-grad flag per parameter]
        self.offsets = []
        off = header
        for p in params:
            self.offsets.append(off)
            off += p.size
        self.numel = off
        self.buf = None

    def buffer(self, dtype, device):
        if self.buf is None:
            self.buf = kernels.array_module(device).zeros(self.numel, dtype=dtype)
        return self.buf


class DataParallel(Module):
    """Wraps ``module`` for data-parallel training over ``comm``.

    * At construction, rank 0's parameters and buffers are broadcast, so all ranks start
      identical.
    * ``forward`` delegates and, in training mode, counts the local samples (``len(x)``).
    * ``backward`` delegates, then averages the gradients across ranks with one allreduce per
      bucket of about ``bucket_cap_mb`` MiB (flat buffers; parameters in reverse registration
      order, a new bucket where the dtype or device changes), weighting each rank by its
      sample count since the last sync.
      Parameters without a gradient on any rank keep ``grad = None``; a rank without one
      contributes zeros.  Inside ``with dp.no_sync():`` gradients only accumulate locally.
    * BatchNorm running statistics (and every other buffer): with ``buffers="broadcast"``
      (the default, as torch's DDP) rank 0's buffers are broadcast at every gradient sync,
      so after each step all ranks hold rank 0's statistics, computed from rank 0's shards;
      ``buffers="average"`` averages floating-point buffers over ranks instead (statistics
      of all shards; integer buffers still come from rank 0); ``None`` leaves them alone.
      Normalisation in training uses each rank's local batch statistics (no SyncBatchNorm),
      so a model with BatchNorm matches single-process training only approximately.

    ``state_dict``/``load_state_dict`` are the wrapped module's (no ``module.`` prefix), so
    checkpoints load into the bare model.  Every rank must call ``backward`` (and so every
    collective) the same number of times: give each rank the same number of batches
    (:class:`ShardedLoader` and :class:`DistributedSampler` do).
    """

    def __init__(self, module, comm=None, bucket_cap_mb=25, buffers="broadcast"):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if buffers not in ("broadcast", "average", None):
            raise ValueError(f"buffers: expected 'broadcast', 'average' or None, got {buffers!r}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb: expected a positive size, got {bucket_cap_mb}")
        self.module = module
        object.__setattr__(self, "comm", SingleProcessComm() if comm is None else comm)
        object.__setattr__(self, "bucket_cap_bytes", int(bucket_cap_mb * 2**20))
        object.__setattr__(self, "buffer_mode", buffers)
        object.__setattr__(self, "_samples", 0)
        object.__setattr__(self, "_sync", True)
        object.__setattr__(self, "_buckets", None)
        object.__setattr__(self, "_bucket_key", None)
        self._check_same_model()
        self._sync_state(self._named_params_and_buffers(), "broadcast")

    # ------------------------------------------------------------------ passes
    def forward(self, x, *args, **kwargs):
        if self.training and is_grad_enabled():  # a no_grad forward gets no backward
            object.__setattr__(self, "_samples", self._samples + int(x.shape[0]))
        return self.module(x, *args, **kwargs)

    def backward(self, grad_y):
        grad_x = self.module.backward(grad_y)
        if self._sync:
            self.sync_gradients()
        return grad_x

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (e.g. micro-batches); the next synced backward averages."""
        previous = self._sync
        object.__setattr__(self, "_sync", False)
        try:
            yield self
        finally:
            object.__setattr__(self, "_sync", previous)

    # ------------------------------------------------------------------ synchronisation
    @property
    def buckets(self):
        """The gradient buckets as lists of parameter names (in allreduce order)."""
        return [list(b.names) for b in self._current_buckets()]

    def _current_buckets(self):
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        key = tuple((n, id(p), p.shape, str(p.dtype), p.device) for n, p in named)
        if key != self._bucket_key:
            object.__setattr__(self, "_buckets", self._make_buckets(named[::-1]))
            object.__setattr__(self, "_bucket_key", key)
        return self._buckets

    def _make_buckets(self, named):
        buckets, names, params, nbytes = [], [], [], 0

        def close():
            header = 1 + len(named) if not buckets else 0
            buckets.append(_Bucket(list(names), list(params), header))

        for n, p in named:
            group_changes = params and (p.dtype != params[0].dtype or p.device != params[0].device)
            size = p.size * p.dtype.itemsize
            if params and (group_changes or nbytes + size > self.bucket_cap_bytes):
                close()
                names, params, nbytes = [], [], 0
            names.append(n)
            params.append(p)
            nbytes += size
        if params:
            close()
        return buckets

    def sync_gradients(self, num_samples=None):
        """Average gradients over ranks, weighted by sample counts (called by ``backward``).

        ``num_samples`` overrides the counted local samples.  When no rank counted any (no
        training-mode forward through this wrapper), every rank weighs 1.
        """
        samples = self._samples if num_samples is None else int(num_samples)
        object.__setattr__(self, "_samples", 0)
        if self.comm.size == 1:
            return
        weight = float(samples) if samples > 0 else 1.0
        buckets = self._current_buckets()
        total = None
        flags = None
        index = 0  # parameter position over all buckets (for the has-grad flags)
        for b in buckets:
            p0 = b.params[0]
            xp = kernels.array_module(p0.device)
            buf = b.buffer(p0.dtype, p0.device)
            if b.header:
                header = [weight] + [0.0 if p.grad is None else 1.0 for p in _all_params(buckets)]
                buf[:b.header] = kernels.to_device(np.array(header, dtype=buf.dtype), p0.device)
            for p, off in zip(b.params, b.offsets):
                seg = buf[off:off + p.size]
                if p.grad is None:
                    seg[...] = 0
                else:
                    xp.multiply(p.grad.reshape(-1), weight, out=seg)
            self.comm.allreduce_sum(buf)
            if b.header:
                header = kernels.to_host(buf[:b.header])
                total = float(header[0])
                flags = header[1:]
            for p, off in zip(b.params, b.offsets):
                if flags[index] > 0:
                    p.grad = (buf[off:off + p.size] / total).reshape(p.shape)
                index += 1
        if self.buffer_mode is not None:
            self.sync_buffers()

    def sync_buffers(self):
        """Make buffers (BatchNorm running statistics) equal on all ranks (see the class doc)."""
        if self.comm.size > 1 and self.buffer_mode is not None:
            self._sync_state(self._named_buffers_in_place(), self.buffer_mode)

    def _named_params_and_buffers(self):
        return [(n, p.data) for n, p in self.module.named_parameters()] + \
            self._named_buffers_in_place()

    def _named_buffers_in_place(self):
        return [(n, b) for n, b in self.module.named_buffers() if hasattr(b, "dtype")]

    def _sync_state(self, named_arrays, mode):
        """Broadcast (or average) arrays in place, one collective per (dtype, device)."""
        if self.comm.size == 1:
            return
        groups = {}
        for _, a in named_arrays:
            groups.setdefault((str(a.dtype), kernels.device_of(a)), []).append(a)
        # sorted: every rank issues the collectives in the same order
        for (dtype, device), items in sorted(groups.items()):
            xp = kernels.array_module(device)
            flat = xp.concatenate([a.reshape(-1) for a in items])
            if mode == "average" and np.dtype(dtype).kind == "f":
                self.comm.allreduce_sum(flat)
                flat /= self.comm.size
            else:
                self.comm.broadcast(flat, root=0)
            off = 0
            for a in items:
                a[...] = flat[off:off + a.size].reshape(a.shape)
                off += a.size

    def _check_same_model(self):
        """Fail on every rank (not hang) when ranks wrap models of different shapes."""
        if self.comm.size == 1:
            return
        shapes = [p.shape for _, p in self.module.named_parameters()]
        sig = np.array([len(shapes), sum(int(np.prod(s)) for s in shapes),
                        sum((i + 1) * (int(np.prod(s)) + len(s)) for i, s in enumerate(shapes))],
                       dtype=np.float64)
        total = sig.copy()
        self.comm.allreduce_sum(total)
        if not np.array_equal(total, sig * self.comm.size):
            raise ValueError(f"DataParallel: the ranks wrap different models (rank {self.comm.rank}"
                             f" has {len(shapes)} parameters, {int(sig[1])} values); every rank "
                             f"must build the same architecture")

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state, strict=True):
        return self.module.load_state_dict(state, strict=strict)

    def extra_repr(self):
        return f"rank={self.comm.rank}, size={self.comm.size}, buffers={self.buffer_mode!r}"


def _all_params(buckets):
    for b in buckets:
        yield from b.params
