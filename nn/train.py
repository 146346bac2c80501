"""The fit loop: epochs of mini-batch training, validation, metrics, early stopping, checkpoints.

One epoch is: for each training batch, ``y = model(x)``, ``loss = loss_fn(y, target)``,
``model.backward(loss_fn.backward(), input_grad=False)`` (no gradient for the data: the first
layer skips that kernel), ``optimizer.step()``; then one pass over the
validation data in eval mode, one schedule step, the history row, and a checkpoint.

A checkpoint (``checkpoint.safetensors``, written atomically with :func:`nn.save` every
epoch; its weights sit under ``model.`` + the torch ``state_dict`` keys) holds everything the
next epoch depends on: model and optimizer state, the schedule, the epoch, the history, the
early-stopping state with the best weights so far, and the RNG states (the training
loader's shuffling generator, every module's own generator such as Dropout's, and
:mod:`nn.init`'s default generator).  Resuming from it continues exactly as if the run had
never stopped: on the CPU the parameters come out bitwise identical for the same seed.

Targets: ``task="classification"`` trains on the loader's labels and reports accuracy;
``task="reconstruction"`` trains the model to reproduce its input (autoencoders).
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import sys
import time

import numpy as np

import kernels

from . import init as nn_init
from .module import call_backward, no_grad

__all__ = ["Trainer", "fit", "evaluate", "NonFiniteLossError", "RunFolderBusyError", "RunLock",
           "remove_stale_temps", "write_atomic", "json_text", "CheckpointStateError",
           "CHECKPOINT_NAME", "LEGACY_CHECKPOINT_NAME", "TRAIN_FORMAT", "TASKS"]

CHECKPOINT_NAME = "checkpoint.safetensors"
# What run folders held before checkpoints became safetensors; --resume still finds it.
LEGACY_CHECKPOINT_NAME = "checkpoint.npz"
TASKS = ("classification", "reconstruction")
TRAIN_FORMAT = "nn.train/1"


class CheckpointStateError(ValueError):
    """A training checkpoint's content does not fit the run (missing or ill-typed fields,
    weights of other shapes, a foreign optimizer state...); the message names the field."""


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN/inf loss (or parameters); nothing non-finite was written to disk."""


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _checked_trainer_fields(state):
    """``(epoch, history, early_stopping, rng)`` of a training checkpoint, type-checked."""
    def bad(field, expected, got):
        raise CheckpointStateError(f"checkpoint field {field!r}: expected {expected}, got "
                                   f"{got!r}"[:300])

    missing = [k for k in ("epoch", "model", "optimizer", "scheduler", "rng", "history",
                           "early_stopping", "best_model") if k not in state]
    if missing:
        raise CheckpointStateError(f"checkpoint fields missing: {', '.join(missing)}")
    epoch = state["epoch"]
    if not _is_int(epoch) or epoch < 0:
        bad("epoch", "a non-negative integer", epoch)
    history = state["history"]
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and all(isinstance(k, str) for k in row) for row in history):
        bad("history", "a list of dicts (one row per epoch)", history)
    if len(history) != epoch:
        bad("history", f"{epoch} rows (one per epoch done)", f"{len(history)} rows")
    stop = state["early_stopping"]
    if not isinstance(stop, dict):
        bad("early_stopping", "a dict", stop)
    for key, ok, expected in (
            ("best_epoch", lambda v: v is None or (_is_int(v) and 0 <= v <= epoch),
             f"None or an epoch in 0..{epoch}"),
            ("best_val_loss", lambda v: v is None or _is_number(v), "None or a number"),
            ("bad_epochs", lambda v: _is_int(v) and 0 <= v <= epoch,
             f"an integer in 0..{epoch}"),
            ("stopped", lambda v: isinstance(v, (bool, np.bool_)), "true or false")):
        if key not in stop or not ok(stop[key]):
            bad(f"early_stopping.{key}", expected, stop.get(key, "<missing>"))
    rng = state["rng"]
    if not isinstance(rng, dict) or not {"loader", "modules", "init"} <= set(rng) \
            or not isinstance(rng["modules"], dict) \
            or not all(v is None or isinstance(v, dict) for v in (rng["loader"], rng["init"])) \
            or rng["init"] is None:
        bad("rng", "a dict of generator states {'loader', 'modules', 'init'}", rng)
    if state["best_model"] is not None and not isinstance(state["best_model"], dict):
        bad("best_model", "None or a state dict", state["best_model"])
    if not isinstance(state["model"], dict):
        bad("model", "a state dict", state["model"])
    return (int(epoch), [dict(row) for row in history],
            {k: (int(v) if _is_int(v) else v) for k, v in stop.items()}, rng)


def _is_plateau(scheduler):
    # ReduceLROnPlateau is the one schedule whose step() takes the monitored metric.
    return type(scheduler).__name__ == "ReduceLROnPlateau"


def _current_lr(optimizer):
    return float(optimizer.param_groups[0]["lr"])


def _create_temp(folder, name):
    """A new file ``.<name>.<random>.tmp`` in ``folder``, opened for writing: ``(fd, path)``.

    The name is unpredictable and the file is created exclusively (``O_EXCL``, and
    ``O_NOFOLLOW`` where it exists), so a file or symlink someone planted in a shared run
    folder is never opened, let alone written through.  Mode 0o666 lets the kernel apply
    the umask, as for any new file (reading the umask would mean changing it).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: cannot create a temporary file for {name}")


def write_atomic(path, text):
    """Replace ``path`` by a file holding ``text``: the old or the new content, never a mix,
    written through a fresh temporary file in the same folder (see :func:`_create_temp`)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite_or_none(obj.item())
    return obj


def json_text(obj):
    """``obj`` as strict JSON text: NaN and infinities (which ``json.dumps`` would write as
    the bare, invalid tokens ``NaN`` / ``Infinity``) become ``null``."""
    return json.dumps(_finite_or_none(obj), indent=1, allow_nan=False) + "\n"


class RunFolderBusyError(RuntimeError):
    """Another process is training into the same run folder (it holds the folder's lock)."""


LOCK_NAME = ".lock"
# Files this package writes into a run folder; their temporary files are named
# ``.<file>.<random>.tmp`` (nn.save and write_atomic alike), older versions wrote
# ``<file>.tmp<pid>``.
RUN_FILES = (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, "metrics.csv", "metrics.json", "config.json", "test.json")
# Locks held by this process, by real path: a run folder locked by the CLI is entered again
# by its Trainer, and a second flock() on another descriptor would refuse the process itself.
_HELD_LOCKS = {}


class RunLock:
    """An exclusive, advisory lock on a run folder (``flock`` on ``<run_dir>/.lock``).

    Two trainings given the same folder would overwrite each other's checkpoint and
    metrics without a word; the second one now stops with :class:`RunFolderBusyError`.
    The lock goes away with the process, so a killed run never leaves the folder locked.
    Re-entrant within one process.  Where ``fcntl`` does not exist (Windows) it locks
    nothing.
    """

    def __init__(self, run_dir):
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.key = None

    def acquire(self):
        key = os.path.realpath(self.run_dir)
        held = _HELD_LOCKS.get(key)
        if held is not None:
            held[1] += 1
            self.key = key
            return self
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform
            fcntl = None
        fd = None
        if fcntl is not None:
            fd = os.open(os.path.join(self.run_dir, LOCK_NAME),
                         os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunFolderBusyError(
                    f"{self.run_dir}: another training run is using this folder (it holds "
                    f"{LOCK_NAME}); wait for it to finish or choose another --out") from None
        _HELD_LOCKS[key] = [fd, 1]
        self.key = key
        return self

    def release(self):
        if self.key is None:
            return
        held = _HELD_LOCKS[self.key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD_LOCKS[self.key]
            if held[0] is not None:
                os.close(held[0])   # closing the descriptor drops the flock
        self.key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def remove_stale_temps(run_dir):
    """Remove temporary files that killed saves left in ``run_dir``; returns their names.

    Call it only while holding the folder's :class:`RunLock`: then no save of another run
    can be in flight there, and every such file is garbage (after 20 kills during saves
    they held 254 MB).  Only names this package generates are touched: ``.<file>.*.tmp``
    and the older ``<file>.tmp<pid>`` for the files in :data:`RUN_FILES`.
    """
    removed = []
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        for target in RUN_FILES:
            if (name.startswith(f".{target}.") and name.endswith(".tmp")) or (
                    name.startswith(f"{target}.tmp") and name[len(target) + 4:].isdigit()):
                try:
                    os.unlink(os.path.join(run_dir, name))   # a link is removed, not followed
                    removed.append(name)
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    pass
                break
    return removed


def _progress(total, desc, enabled):
    """A tqdm bar on stderr, or None when quiet or when stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)


# The progress bar shows the running loss; on a GPU showing it is a read, so the bar's loss is
# refreshed at most this many times per epoch there (every batch on the CPU).
BAR_READS = 10


def _honours_found_inf(optimizer):
    """Whether ``optimizer.step()`` skips its updates while ``optimizer.found_inf`` is set.

    The built-in optimizers' updates do (their kernels read the flag); an optimizer with an
    update of its own may not, and the trainer then reads the flag on the host every batch.
    """
    from .optim import optimizer as builtin
    return getattr(type(optimizer), "_update", None) in {
        builtin.SGD._update, builtin.Adam._update, builtin.RMSprop._update,
        builtin.Adagrad._update}


class _EpochStats:
    """An epoch's running loss, correct count and non-finite-loss flag, kept on the device
    of the model's outputs and read on the host only by :meth:`read` (one transfer).

    While it lives, ``optimizer.found_inf`` is its flag: from the first non-finite loss on,
    every ``optimizer.step()`` of the epoch leaves the weights as they were.
    """

    def __init__(self, device, optimizer=None):
        xp = self.xp = kernels.array_module(device)
        self.loss_sum = xp.zeros((), dtype=xp.float64)
        self.hits = xp.zeros((), dtype=xp.int64)
        self.found_inf = xp.zeros(1, dtype=xp.float32)
        self.bad_batch = xp.zeros((), dtype=xp.int64)   # 0: none yet (batches count from 1)
        self.bad_loss = xp.zeros((), dtype=xp.float64)
        self.total = 0
        self.host = None   # the last values read
        # Reads are free on the CPU: check every batch there, before its backward pass.
        self.read_each_batch = device == "cpu" or (optimizer is not None
                                                   and not _honours_found_inf(optimizer))
        self.optimizer = optimizer
        self._previous = getattr(optimizer, "found_inf", None)
        if optimizer is not None:
            optimizer.found_inf = self.found_inf

    def add(self, batch, loss, n, out, labels):
        """Count batch ``batch`` (``n`` samples); ``out`` and ``labels`` for accuracy, or
        ``out=None``.  Only device operations: nothing is read here."""
        xp = self.xp
        loss = xp.asarray(loss)
        bad = ~xp.isfinite(loss)
        first = bad & (self.found_inf.reshape(()) == 0)
        self.bad_batch = xp.where(first, batch, self.bad_batch)
        self.bad_loss = xp.where(first, loss.astype(xp.float64), self.bad_loss)
        xp.maximum(self.found_inf, bad.astype(xp.float32), out=self.found_inf)
        self.loss_sum = self.loss_sum + loss.astype(xp.float64) * n
        if out is not None:
            self.hits = self.hits + (xp.argmax(out, axis=1) == labels).sum()
        self.total += n

    def read(self):
        """The totals so far on the host (one device-to-host transfer)."""
        xp = self.xp
        values = kernels.to_host(xp.stack([self.loss_sum, self.hits.astype(xp.float64),
                                           self.bad_batch.astype(xp.float64), self.bad_loss]))
        loss_sum, hits, bad_batch, bad_loss = (float(v) for v in values)
        self.host = {"loss": loss_sum, "correct": int(hits), "total": self.total,
                     "bad_batch": int(bad_batch) or None, "bad_loss": bad_loss}
        return self.host

    def release(self):
        if self.optimizer is not None:
            self.optimizer.found_inf = self._previous


@no_grad()  # no backward follows: neither the model nor the loss keeps a context
def evaluate(model, loader, loss_fn, task="classification", num_classes=None):
    """Mean loss, and for classification accuracy and the confusion matrix, over ``loader``.

    Runs in eval mode under :class:`nn.no_grad` and restores the model's previous mode.  The
    confusion matrix has the true class on rows and the predicted class on columns
    (``num_classes`` x ``num_classes``, from the largest label or logit index seen when not
    given).  Nothing is read from the device per batch: the sums and the (label, prediction)
    pairs are read once at the end (two transfers).
    """
    was_training = model.training
    model.eval()
    stats, total, xp = None, 0, None
    labels, preds = [], []   # kept where they are and read once, at the end
    try:
        for batch, (x, y) in enumerate(loader, start=1):
            out = model(x)
            target = x if task == "reconstruction" else y
            loss = loss_fn(out, target)
            if stats is None:
                device = kernels.device_of(out)
                xp = kernels.array_module(device)
                stats = _EpochStats(device)
            stats.add(batch, loss, len(x), out if task == "classification" else None, y)
            total += len(x)
            if task == "classification":
                labels.append(y)
                preds.append(xp.argmax(out, axis=1))
                if num_classes is None or out.shape[1] > num_classes:
                    num_classes = int(out.shape[1])
    finally:
        model.train(was_training)
    # A non-finite batch loss makes the sum, and so the mean, non-finite: the caller reports it.
    host = {"loss": 0.0, "correct": 0} if stats is None else stats.read()
    result = {"loss": host["loss"] / max(total, 1), "samples": total}
    if task == "classification":
        confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        if labels:
            pairs = kernels.to_host(xp.stack([xp.concatenate(labels),
                                              xp.concatenate(preds).astype(labels[0].dtype)]))
            np.add.at(confusion, (pairs[0], pairs[1]), 1)
        result["accuracy"] = host["correct"] / max(total, 1)
        result["confusion"] = confusion
    return result


class Trainer:
    """Trains ``model`` with ``loss_fn`` and ``optimizer`` (and an optional LR ``scheduler``).

    ``run_dir``: where the checkpoint and the metrics (``metrics.csv``, ``metrics.json``)
    go each epoch (None: keep everything in memory).  ``patience``: stop when the
    validation loss has not improved for that many epochs (None: never stop early).
    ``restore_best``: end with the weights of the epoch with the best validation loss.
    ``quiet``: no progress bar and no per-epoch lines (``log`` prints those lines).
    ``config``: a JSON-able dict stored in every checkpoint (how to rebuild the run).
    ``comm``: an ``nn.distributed`` communicator for data-parallel training (the model
    wrapped in ``DataParallel``, the loaders sharded): training metrics are summed over the
    ranks, validation results (from each rank's shard) are reduced, and only rank 0 logs and
    writes files.
    """

    def __init__(self, model, loss_fn, optimizer, scheduler=None, *, task="classification",
                 run_dir=None, patience=None, restore_best=True, quiet=False, config=None,
                 log=print, comm=None):
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if patience is not None and (isinstance(patience, bool) or int(patience) != patience
                                     or patience < 1):
            raise ValueError(f"patience: expected a positive integer or None, got {patience!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.task = task
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.patience = None if patience is None else int(patience)
        self.restore_best = restore_best
        self.quiet = quiet
        self.config = dict(config or {})
        self.log = log
        self.comm = comm
        self.is_main = comm is None or comm.rank == 0
        if not self.is_main:
            self.quiet = True
        self.history = []
        self.epoch = 0
        self.best_epoch = None
        self.best_val_loss = math.inf
        self.best_state = None
        self.bad_epochs = 0
        self.stopped_early = False
        if self.run_dir is not None:
            os.makedirs(self.run_dir, exist_ok=True)

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self):
        return None if self.run_dir is None else os.path.join(self.run_dir, CHECKPOINT_NAME)

    # ------------------------------------------------------------------ RNG state
    def _module_generators(self):
        for name, m in self.model.named_modules():
            gen = getattr(m, "generator", None)
            if isinstance(gen, np.random.Generator):
                yield name, gen

    def _rng_state(self, train_loader):
        generator = getattr(train_loader, "generator", None)
        return {
            "loader": None if generator is None else generator.bit_generator.state,
            "modules": {name: gen.bit_generator.state for name, gen in self._module_generators()},
            "init": nn_init.default_generator().bit_generator.state,
        }

    def _set_rng_state(self, train_loader, state):
        if state["loader"] is not None:
            train_loader.generator.bit_generator.state = state["loader"]
        for name, gen in self._module_generators():
            if name in state["modules"]:
                gen.bit_generator.state = state["modules"][name]
        nn_init.default_generator().bit_generator.state = state["init"]

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, train_loader):
        """Everything a resumed run needs, as arrays and JSON values (for :func:`nn.save`)."""
        return {
            "format": TRAIN_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": self._rng_state(train_loader),
            "history": self.history,
            "early_stopping": {"best_epoch": self.best_epoch,
                               "best_val_loss": (None if math.isinf(self.best_val_loss)
                                                 else self.best_val_loss),
                               "bad_epochs": self.bad_epochs,
                               "stopped": self.stopped_early},
            "best_model": self.best_state,
            "task": self.task,
            "config": self.config,
        }

    def load_state_dict(self, state, train_loader):
        """Continue from a checkpoint written by :meth:`state_dict`.

        Every field is checked first (types, a non-negative epoch, the history's rows...);
        a checkpoint whose content does not fit raises :class:`CheckpointStateError` naming
        the field instead of a KeyError or TypeError from deep inside.
        """
        if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
            raise ValueError(f"not a training checkpoint (expected format {TRAIN_FORMAT!r}, got "
                             f"{state.get('format') if isinstance(state, dict) else state!r})")
        epoch, history, stop, rng = _checked_trainer_fields(state)
        if state["best_model"] is not None:
            # restored at the end of fit(): a mismatch must show now, not after training
            want = {k: tuple(np.shape(v)) for k, v in self.model.state_dict().items()}
            got = {k: tuple(np.shape(v)) for k, v in state["best_model"].items()}
            for key in list(want) + [k for k in got if k not in want]:
                if want.get(key) != got.get(key):
                    raise CheckpointStateError(
                        f"checkpoint field 'best_model': {key} has shape "
                        f"{got.get(key, '<missing>')}, the model's is "
                        f"{want.get(key, '<no such entry>')}")
        for field, load in (
                ("model", lambda: self.model.load_state_dict(state["model"])),
                ("optimizer", lambda: self.optimizer.load_state_dict(state["optimizer"])),
                ("scheduler", lambda: self.scheduler is not None
                 and state["scheduler"] is not None
                 and self.scheduler.load_state_dict(state["scheduler"])),
                ("rng", lambda: self._set_rng_state(train_loader, rng))):
            try:
                load()
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
                raise CheckpointStateError(f"checkpoint field {field!r}: {what}") from None
        self.epoch = epoch
        self.history = history
        self.best_epoch = stop["best_epoch"]
        self.best_val_loss = (math.inf if stop["best_val_loss"] is None
                              else float(stop["best_val_loss"]))
        self.bad_epochs = stop["bad_epochs"]
        self.stopped_early = bool(stop["stopped"])
        self.best_state = state["best_model"]

    def save_checkpoint(self, train_loader):
        from .checkpoint import save

        if not self._parameters_finite():
            raise NonFiniteLossError(f"parameters became non-finite during epoch {self.epoch}; "
                                     f"the checkpoint was not written")
        save(self.state_dict(train_loader), self.checkpoint_path)

    def _parameters_finite(self):
        """Whether every parameter is finite: one read per device, not one per parameter."""
        verdicts = {}
        for p in self.model.parameters():
            device = kernels.device_of(p.data)
            verdicts.setdefault(device, []).append(
                kernels.array_module(device).isfinite(p.data).all())
        return all(bool(kernels.to_host(kernels.array_module(device).stack(flags)).all())
                   for device, flags in verdicts.items())

    # ------------------------------------------------------------------ metrics files
    def write_metrics(self):
        if self.run_dir is None or not self.is_main:
            return
        keys = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        lines = [",".join(keys)]
        for row in self.history:
            lines.append(",".join("" if row.get(k) is None else repr(row[k]) for k in keys))
        write_atomic(os.path.join(self.run_dir, "metrics.csv"), "\n".join(lines) + "\n")
        summary = {"history": self.history, "best_epoch": self.best_epoch,
                   "best_val_loss": (None if math.isinf(self.best_val_loss)
                                     else self.best_val_loss),
                   "stopped_early": self.stopped_early}
        write_atomic(os.path.join(self.run_dir, "metrics.json"), json_text(summary))

    # ------------------------------------------------------------------ the loop
    def _train_epoch(self, loader, epochs):
        """One pass over ``loader``; returns the history row.

        No value of a batch is read on the host while training on a GPU: the running loss,
        the correct count and a non-finite-loss flag stay on the device, the optimizer reads
        the flag there (``optimizer.found_inf``) and leaves the weights untouched once a
        loss was not finite, and the flag is read with the running totals at
        :meth:`_EpochStats.read` points: after every batch on the CPU (free there, and it
        stops before the bad batch's backward pass, as always), otherwise at the end of the
        epoch and at the progress bar's refreshes (at most ``BAR_READS`` per epoch).
        """
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        model.train()
        n_batches = len(loader)
        bar = _progress(n_batches, f"epoch {self.epoch}/{epochs}", not self.quiet)
        bar_every = max(1, -(-n_batches // BAR_READS))
        stats = None
        start = time.perf_counter()
        try:
            for batch, (x, y) in enumerate(loader, start=1):
                out = model(x)
                target = x if self.task == "reconstruction" else y
                loss = loss_fn(out, target)
                if stats is None:
                    stats = _EpochStats(kernels.device_of(out), optimizer)
                stats.add(batch, loss, len(x),
                          out if self.task == "classification" else None, y)
                if stats.read_each_batch or (bar is not None and batch % bar_every == 0):
                    self._raise_if_non_finite(stats.read(), n_batches)
                optimizer.zero_grad()
                # The input is data: the first layer skips its input gradient.
                call_backward(model, loss_fn.backward(), input_grad=False)
                optimizer.step()
                if bar is not None:
                    bar.update(1)
                    if stats.host is not None:
                        bar.set_postfix(loss=f"{stats.host['loss'] / stats.host['total']:.4f}",
                                        refresh=False)
        finally:
            if bar is not None:
                bar.close()
            if stats is not None:
                stats.release()
        # Checks a GPU kept on the device (label ranges, say) are read once per epoch.
        kernels.check_errors()
        host = {"loss": 0.0, "correct": 0, "total": 0} if stats is None else stats.read()
        self._raise_if_non_finite(host, n_batches)
        total_loss, total, correct = host["loss"], host["total"], host["correct"]
        if self.comm is not None and self.comm.size > 1:
            from .distributed import allreduce_values
            total_loss, total, correct = allreduce_values(
                self.comm, [total_loss, total, correct]).tolist()
        row = {"epoch": self.epoch, "lr": _current_lr(optimizer),
               "train_loss": total_loss / max(total, 1)}
        if self.task == "classification":
            row["train_accuracy"] = correct / max(total, 1)
        row["train_seconds"] = time.perf_counter() - start
        return row

    def _raise_if_non_finite(self, host, n_batches):
        if host.get("bad_batch") is not None:
            raise NonFiniteLossError(
                f"non-finite loss ({host['bad_loss']}) at epoch {self.epoch}, batch "
                f"{host['bad_batch']} of {n_batches}: training stopped before updating the "
                f"weights with it; nothing from this epoch was saved (try a lower learning "
                f"rate)")

    def fit(self, train_loader, val_loader=None, epochs=10, resume=None):
        """Train until ``epochs`` epochs are done in total (or early stopping); returns history.

        ``resume``: a checkpoint path (safetensors, or the older ``.npz``) or a loaded
        checkpoint dict to continue from.  With a ``run_dir``, the folder's :class:`RunLock`
        is held throughout, and temporary files of killed saves found there are removed first.
        """
        if self.run_dir is None or not self.is_main:
            return self._fit(train_loader, val_loader, epochs, resume)
        with RunLock(self.run_dir):
            remove_stale_temps(self.run_dir)
            return self._fit(train_loader, val_loader, epochs, resume)

    def _fit(self, train_loader, val_loader, epochs, resume):
        if resume is not None:
            if not isinstance(resume, dict):
                from .checkpoint import load
                resume = load(resume)
            self.load_state_dict(resume, train_loader)
        if self.patience is not None and val_loader is None:
            raise ValueError("patience (early stopping) needs validation data: pass val_loader")
        if not self.quiet and self.epoch < epochs:
            compile_kernels_if_cold(self.model, self.log)
        while self.epoch < epochs and not self.stopped_early:
            self.epoch += 1
            row = self._train_epoch(train_loader, epochs)
            if val_loader is not None:
                val = evaluate(self.model, val_loader, self.loss_fn, self.task)
                if self.comm is not None and self.comm.size > 1:
                    from .distributed import reduce_evaluation
                    val = reduce_evaluation(self.comm, val)
                row["val_loss"] = val["loss"]
                if "accuracy" in val:
                    row["val_accuracy"] = val["accuracy"]
                if not math.isfinite(val["loss"]):
                    raise NonFiniteLossError(f"non-finite validation loss ({val['loss']}) "
                                             f"after epoch {self.epoch}; nothing was saved")
                self._track_best(val["loss"])
            if self.scheduler is not None:
                if _is_plateau(self.scheduler):
                    if val_loader is None:
                        raise ValueError("ReduceLROnPlateau needs validation data")
                    self.scheduler.step(row["val_loss"])
                else:
                    self.scheduler.step()
            self.history.append(row)
            if self.checkpoint_path is not None and self.is_main:
                self.save_checkpoint(train_loader)
            self.write_metrics()
            if not self.quiet:
                self.log(self.format_row(row, epochs))
        if self.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

    def _track_best(self, val_loss):
        if val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.best_epoch = self.epoch
            self.best_state = self.model.state_dict()
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                self.stopped_early = True

    def format_row(self, row, epochs):
        parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}",
                 f"train loss {row['train_loss']:.4f}"]
        if "train_accuracy" in row:
            parts.append(f"acc {100 * row['train_accuracy']:5.1f}%")
        if "val_loss" in row:
            parts.append(f"| val loss {row['val_loss']:.4f}")
            if "val_accuracy" in row:
                parts.append(f"acc {100 * row['val_accuracy']:5.1f}%")
        parts.append(f"| lr {row['lr']:.3g} | {row['train_seconds']:.2f} s")
        if self.best_epoch == row["epoch"]:
            parts.append("*")
        if self.stopped_early and row is self.history[-1]:
            parts.append(f"(early stop: no improvement for {self.patience} epochs; best "
                         f"epoch {self.best_epoch})")
        return "  ".join(parts)


def fit(model, train_loader, val_loader=None, *, loss_fn, optimizer, scheduler=None,
        epochs=10, **trainer_options):
    """``Trainer(model, loss_fn, optimizer, scheduler, ...).fit(...)``; returns the Trainer."""
    trainer = Trainer(model, loss_fn, optimizer, scheduler, **trainer_options)
    trainer.fit(train_loader, val_loader, epochs=epochs)
    return trainer


def compile_kernels_if_cold(model, log, show_progress=True):
    """Before a first epoch on the CPU: compile the common kernels, saying so, when cold.

    The first run of a fresh install compiles every kernel it calls (tens of seconds, see
    ``kernels.warmup``); without a word that looks like a hang.  When the warmup calls would
    compile, this logs "compiling kernels for this machine (first run only, about N s)" and
    runs them with a progress bar; when Numba's cache already holds them it does nothing.
    Returns the seconds spent (0.0 when nothing was cold).
    """
    import importlib

    # (``kernels.warmup`` as an attribute is the function; the module is what is needed.)
    kw = importlib.import_module("kernels.warmup")

    params = list(model.parameters())
    if not params or kernels.device_of(params[0].data) != "cpu":
        return 0.0
    dtype = params[0].data.dtype
    if dtype not in (np.float32, np.float64):
        return 0.0
    cold = kw.cold_calls(dtype)
    if not cold:
        return 0.0
    log(f"compiling kernels for this machine (first run only, about "
        f"{max(1, round(kw.estimate_seconds(cold))):d} s)")
    bar = _progress(len(kw.COLD_SECONDS), "compiling", show_progress)
    if bar is not None:
        bar.unit = "kernel"
    start = time.perf_counter()
    try:
        kw.warmup(dtypes=(dtype,), progress=None if bar is None else
                  lambda name: (bar.set_postfix_str(name, refresh=False), bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - start
