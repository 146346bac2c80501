"""DataParallel: one model per rank, gradients averaged over ranks in flat buckets."""
from __future__ import annotations

import contextlib
import hashlib
import json

import numpy as np

import kernels

from ..module import Module, is_grad_enabled
from .comm import NCCLComm, SingleProcessComm


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

    ``config``: the training configuration (a JSON-able dict: seed, batch size, ...).  At
    construction every rank hashes its parameters' and buffers' names, shapes and dtypes
    together with ``config`` and the hashes are compared with one allreduce; on a mismatch
    every rank raises :class:`RanksDisagreeError` naming the first difference (ranks with
    transposed weights used to pass and silently reshape, other dtypes or batch sizes ended
    in raw MPI errors, different seeds went unnoticed).

    ``state_dict``/``load_state_dict`` are the wrapped module's (no ``module.`` prefix), so
    checkpoints load into the bare model.  Every rank must call ``backward`` (and so every
    collective) the same number of times: give each rank the same number of batches
    (:class:`ShardedLoader` and :class:`DistributedSampler` do).
    """

    def __init__(self, module, comm=None, bucket_cap_mb=25, buffers="broadcast", config=None):
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
        self._check_same_model(config)
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

    def _check_same_model(self, config=None):
        """Fail on every rank (not hang, not silently reshape) when ranks disagree on the
        model or the training config; see :func:`check_agreement`."""
        check_agreement(self.comm, describe_run(self.module, config))

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


# ---------------------------------------------------------------- agreement between ranks
class RanksDisagreeError(ValueError):
    """The ranks of a data-parallel run built different models or configs.

    Raised on every rank with the same one-line message; ``quiet`` is True on ranks other
    than 0, so a command line prints it once.
    """

    def __init__(self, message, rank=0):
        super().__init__(message)
        self.rank = rank
        self.quiet = rank != 0


def describe_run(module, config=None):
    """Lines that must be equal on every rank: each parameter's and buffer's name, shape and
    dtype (in registration order), then the config's entries (sorted by key)."""
    lines = [f"parameter {name}: shape {tuple(p.shape)}, dtype {np.dtype(p.dtype)}"
             for name, p in module.named_parameters()]
    for mname, m in module.named_modules():
        for bname, buf in m._buffers.items():
            if buf is not None:
                lines.append(f"buffer {mname + '.' if mname else ''}{bname}: shape "
                             f"{tuple(buf.shape)}, dtype {np.dtype(buf.dtype)}")
    for key in sorted(config or {}):
        lines.append(f"config {key} = {json.dumps(config[key], sort_keys=True, default=str)}")
    return lines


def _collective(comm, op, host):
    """Run ``op`` ("allreduce_sum" or ("broadcast", root)) on a host array, staged through
    the GPU for NCCL (which only takes GPU arrays); returns the host result."""
    on_gpu = isinstance(comm, NCCLComm)
    buf = kernels.to_device(host, "cuda") if on_gpu else host
    if op == "allreduce_sum":
        comm.allreduce_sum(buf)
    else:
        comm.broadcast(buf, root=op[1])
    return kernels.to_host(buf) if on_gpu else buf


def _digest_parts(lines):
    # 16-bit pieces of the SHA-256: their sums and sums of squares over ranks are exact in
    # float64, and both match size * own value (and its square) only when all ranks agree.
    digest = hashlib.sha256("\n".join(lines).encode()).digest()
    return np.frombuffer(digest, dtype=">u2").astype(np.float64)


def _broadcast_text(comm, text, root):
    data = np.frombuffer(text.encode(), dtype=np.uint8) if comm.rank == root else None
    length = _collective(comm, ("broadcast", root),
                         np.array([0 if data is None else data.size], dtype=np.int64))
    buf = data.copy() if data is not None else np.zeros(int(length[0]), dtype=np.uint8)
    if buf.size:
        buf = _collective(comm, ("broadcast", root), buf)
    return bytes(np.asarray(buf)).decode()


def _first_difference(reference, lines, rank):
    """How ``lines`` (this rank's) first differ from rank 0's, or "" when they do not."""
    def key(line):
        return line.split(":", 1)[0] if not line.startswith("config ") \
            else line.split(" = ", 1)[0]
    ours = {key(line): line for line in lines}
    theirs = {key(line): line for line in reference}
    for line in reference:
        if ours.get(key(line)) != line:
            return f"rank 0 has '{line}' but rank {rank} has '{ours.get(key(line), '<nothing>')}'"
    for line in lines:
        if key(line) not in theirs:
            return f"rank 0 has '<nothing>' but rank {rank} has '{line}'"
    for i, (a, b) in enumerate(zip(reference, lines)):
        if a != b:
            return (f"rank 0 has '{a}' at position {i} but rank {rank} has '{b}' there "
                    f"(the same entries in another order)")
    return ""


def check_agreement(comm, lines):
    """Raise :class:`RanksDisagreeError` on every rank unless every rank passed the same
    ``lines``: one allreduce of a hash when they agree; when not, rank 0's lines are
    broadcast and the first line where some rank differs is named."""
    if comm.size == 1:
        return
    parts = _digest_parts(lines)
    sums = _collective(comm, "allreduce_sum", np.concatenate([parts, parts * parts]))
    n = parts.size
    if np.array_equal(sums[:n], parts * comm.size) and \
            np.array_equal(sums[n:], parts * parts * comm.size):
        return
    reference = _broadcast_text(comm, "\n".join(lines), 0).split("\n")
    mine = _first_difference(reference, lines, comm.rank)
    # the lowest rank that differs from rank 0 tells everyone how
    flags = np.zeros(comm.size, dtype=np.float64)
    flags[comm.rank] = 1.0 if mine else 0.0
    flags = _collective(comm, "allreduce_sum", flags)
    odd = next((r for r in range(comm.size) if flags[r] > 0), None)
    what = (_broadcast_text(comm, mine, odd) if odd is not None
            else "the same lines but not the same hash")
    raise RanksDisagreeError(
        f"DataParallel: the ranks wrap different models or configs: {what} (every rank "
        f"must build the same architecture with the same training options)", comm.rank)
