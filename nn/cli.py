"""``python -m nn``: train, evaluate and summarise models from the command line.

    python -m nn train                      # small CNN on the bundled 8x8 digits, CPU
    python -m nn train --model mlp --optimizer sgd --lr 0.05 --schedule cosine
    python -m nn evaluate runs/<run>/checkpoint.safetensors
    python -m nn summary --model resnet
    python -m nn export runs/<run> --format onnx

Each subcommand is one entry in :data:`COMMANDS`: a function that adds its arguments to its
parser and a function that runs it and returns the exit code.  A new subcommand (say
``demo``) is one more entry.  User errors (a bad path, a bad checkpoint, a bad value) end
with one line on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import sys
import time

import numpy as np

import kernels

from kernels.threads import numba_threads

from . import data as nn_data
from .train import (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, TRAIN_FORMAT, CheckpointStateError,
                    NonFiniteLossError, RunFolderBusyError, RunLock, Trainer, evaluate, json_text,
                    write_atomic)

PROG = "python -m nn"
MODELS = ("mlp", "lenet", "vgg", "resnet", "autoencoder")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "cosine", "exponential", "plateau", "warmup", "warmup-cosine")
SPLITS = ("train", "val", "test")

# What `python -m nn train` does with no options: a small CNN on digits, on the CPU.
TRAIN_DEFAULTS = {
    "model": "lenet", "dataset": "digits", "device": "cpu", "epochs": 30, "batch_size": 32,
    "lr": 2e-3, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0,
    "schedule": "cosine", "patience": 8, "seed": 0, "val_fraction": 0.1,
    "test_fraction": 0.1,
}
# The largest sample (values per sample) a checkpoint's config may describe: far above any
# data set this package trains on, far below what would exhaust memory when building a model.
MAX_SAMPLE_SIZE = 1 << 24
# Options a resumed run may change; everything else comes from the checkpoint's config.
RESUME_MAY_CHANGE = ("epochs", "device", "out", "quiet", "threads", "distributed")


class UserError(Exception):
    """A problem with what the user asked for; the CLI prints its message on one line."""


# ---------------------------------------------------------------------- argument parsing
class _Parser(argparse.ArgumentParser):
    """argparse that reports an error on one line and lists the valid options."""

    def error(self, message):
        if message.startswith("unrecognized arguments"):
            options = sorted({s for a in self._actions for s in a.option_strings
                              if s.startswith("--")})
            message += f" (valid options: {', '.join(options)})"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got "
                                             f"{text!r}") from None
        if not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0.0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 1,28,28) or F, got {text!r}")
    return shape


# A run config read back from a checkpoint is data, not trusted input: each field is checked
# with the rule its command-line option has (the same parsing function, given the value's
# text), after a type check, since JSON may hold a string or a list where a number belongs.
def _choice(options):
    def parse(text):
        if text not in options:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(options)}, got "
                                             f"{text!r}")
        return text
    return parse


def _config_rules():
    return {
        "model": (str, _choice(MODELS)), "device": (str, _choice(("cpu", "cuda"))),
        "epochs": (int, _positive(int)), "batch_size": (int, _positive(int)),
        "lr": (float, _positive(float)), "optimizer": (str, _choice(OPTIMIZERS)),
        "momentum": (float, _fraction), "weight_decay": (float, _nonnegative_float),
        "schedule": (str, _choice(SCHEDULES)), "patience": (int, _positive(int)),
        "seed": (int, _nonnegative_int), "val_fraction": (float, _fraction),
        "test_fraction": (float, _fraction), "dataset": (str, _dataset_name),
    }


def _dataset_name(text):
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a data set name or a path, got {text!r}")
    return text


def validate_config(config, source):
    """Check a run config read from ``source`` (a checkpoint) like the command line's
    arguments; raises :class:`UserError` naming the first bad field."""
    if not isinstance(config, dict):
        raise UserError(f"{source}: the checkpoint's config is not a dict")

    def bad(key, why):
        raise UserError(f"{source}: config field {key!r}: {why}")

    for key, (kind, parse) in _config_rules().items():
        if key not in config:
            bad(key, "missing")
        value = config[key]
        if key == "patience" and value is None:
            continue
        ok = (isinstance(value, str) if kind is str else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            bad(key, f"expected {'a string' if kind is str else 'an ' + kind.__name__}, got "
                     f"{value!r}"[:200])
        try:
            parse(value if kind is str else repr(value))
        except argparse.ArgumentTypeError as exc:
            bad(key, str(exc))
    if config["val_fraction"] + config["test_fraction"] >= 1.0:
        bad("val_fraction", "val_fraction + test_fraction must be below 1")
    shape = config.get("sample_shape")
    if shape is not None:
        if (not isinstance(shape, list) or len(shape) not in (1, 3)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                           for v in shape) or math.prod(shape) > MAX_SAMPLE_SIZE):
            bad("sample_shape", f"expected [C, H, W] or [F] of positive ints, at most "
                                f"{MAX_SAMPLE_SIZE} values in all, got {shape!r}"[:200])
    classes = config.get("num_classes")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool)
                                or not 1 <= classes <= nn_data.MAX_CLASSES):
        bad("num_classes", f"expected an integer in 1..{nn_data.MAX_CLASSES}, got {classes!r}")
    norm = config.get("normalize")
    if norm is not None:
        try:
            ok = (isinstance(norm, dict) and set(norm) == {"mean", "std"}
                  and all(isinstance(norm[k], list) and norm[k] and all(
                      isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) for v in norm[k]) for k in ("mean", "std"))
                  and len(norm["mean"]) == len(norm["std"])
                  and all(v > 0 for v in norm["std"]))
        except TypeError:
            ok = False
        if not ok:
            bad("normalize", f"expected {{'mean': [...], 'std': [...]}} of finite numbers, "
                             f"std positive, got {norm!r}"[:200])
    return config


def _add_train(p):
    d = TRAIN_DEFAULTS
    p.add_argument("--model", choices=MODELS,
                   help=f"architecture (default {d['model']}): " + ", ".join(MODELS))
    p.add_argument("--dataset", metavar="NAME|PATH",
                   help=f"digits, synthetic, a .npz file with x/y arrays, or MNIST-style IDX "
                        f"files (a folder or an images file) (default {d['dataset']})")
    p.add_argument("--device", choices=("cpu", "cuda"), help=f"(default {d['device']})")
    p.add_argument("--epochs", type=_positive(int), metavar="N",
                   help=f"total epochs (default {d['epochs']})")
    p.add_argument("--batch-size", type=_positive(int), metavar="N",
                   help=f"(default {d['batch_size']})")
    p.add_argument("--lr", type=_positive(float), metavar="X",
                   help=f"learning rate (default {d['lr']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default {d['optimizer']})")
    p.add_argument("--momentum", type=_fraction, metavar="X",
                   help=f"SGD momentum (default {d['momentum']})")
    p.add_argument("--weight-decay", type=_nonnegative_float, metavar="X",
                   help=f"(default {d['weight_decay']})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning-rate schedule, stepped once per epoch (default "
                        f"{d['schedule']}): step (x0.1 every third of the epochs), cosine "
                        f"(to 0 over the epochs), exponential (x0.9 per epoch), plateau (x0.5 "
                        f"after 2 epochs without a better validation loss), warmup (linear "
                        f"from 0.1x over the first epochs/5, at most 5), warmup-cosine")
    p.add_argument("--patience", type=_positive(int), metavar="N",
                   help=f"stop after this many epochs without a better validation loss "
                        f"(default {d['patience']})")
    p.add_argument("--seed", type=_nonnegative_int, metavar="N",
                   help=f"seeds the split, shuffling, initialisation and dropout (default "
                        f"{d['seed']})")
    p.add_argument("--out", metavar="DIR",
                   help="run folder (default runs/<time>-<model>-<dataset>)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint (or its run folder) with its own config; "
                        "only " + ", ".join("--" + k for k in RESUME_MAY_CHANGE) + " may change")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of 'mpiexec -n N python -m mpi4py "
                        "-m nn train --distributed' (NCCL with --device cuda); --batch-size "
                        "stays the global batch; rank 0 prints and writes the run folder")
    _add_threads(p)


def _add_threads(p):
    p.add_argument("--threads", type=_positive(int), metavar="N",
                   help=f"Numba threads for the CPU kernels (default: 1 for models under "
                        f"{SMALL_BATCH_MACS // 1_000_000}M multiply-adds per batch, where "
                        f"waking more threads costs more than it gives on a busy machine; "
                        f"all cores otherwise)")


def _add_evaluate(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint written by train (or its run folder)")
    p.add_argument("--split", choices=SPLITS, default="test", help="(default test)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default cpu)")
    p.add_argument("--batch-size", type=_positive(int), default=256, help="(default 256)")
    _add_threads(p)


def _add_summary(p):
    p.add_argument("--model", choices=MODELS, required=True, help=", ".join(MODELS))
    p.add_argument("--input-shape", type=_shape, default=(1, 8, 8), metavar="C,H,W",
                   help="one sample's shape (default 1,8,8: the digits)")
    p.add_argument("--num-classes", type=_positive(int), default=10, help="(default 10)")


# ---------------------------------------------------------------------- building a run
def _check_device(device):
    if device not in kernels.devices():
        raise UserError(f"device 'cuda' is not available here (no GPU with CuPy, and the "
                        f"simulator is off); available: {', '.join(kernels.devices())}")


def build_model(name, sample_shape, num_classes):
    """The zoo model ``name`` sized for samples of ``sample_shape`` and ``num_classes``."""
    shape = tuple(int(s) for s in sample_shape)
    try:
        return _zoo_model(name, shape, num_classes)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot build model {name!r} for samples of shape {shape}: "
                        f"{exc}") from None


def _zoo_model(name, shape, num_classes):
    from . import models

    flat = int(np.prod(shape))
    if name == "mlp":
        return models.MLP([flat, 128, 64, num_classes])
    if name == "autoencoder":
        return models.Autoencoder(input_shape=shape, code_size=2)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise UserError(f"model {name!r} needs square images (C, H, H), the data has samples "
                        f"of shape {shape}; use --model mlp")
    channels, size = shape[0], shape[1]
    if name == "lenet":
        return models.LeNet5(in_channels=channels, num_classes=num_classes, input_size=size)
    if name == "vgg":
        return models.SmallVGG(in_channels=channels, num_classes=num_classes, input_size=size)
    if name == "resnet":
        return models.ResNet(in_channels=channels, num_classes=num_classes)
    raise UserError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def task_of(model_name):
    return "reconstruction" if model_name == "autoencoder" else "classification"


def build_loss(task):
    from . import losses

    return losses.MSELoss() if task == "reconstruction" else losses.CrossEntropyLoss()


def build_optimizer(config, parameters):
    from . import optim

    name, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "sgd":
        return optim.SGD(parameters, lr=lr, momentum=config["momentum"], weight_decay=wd)
    if name == "adam":
        return optim.Adam(parameters, lr=lr, weight_decay=wd)
    if name == "adamw":
        return optim.AdamW(parameters, lr=lr, weight_decay=wd)
    # --momentum is SGD's (default 0.9); RMSprop keeps torch's default of none.
    if name == "rmsprop":
        return optim.RMSprop(parameters, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return optim.Adagrad(parameters, lr=lr, weight_decay=wd)
    raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def build_scheduler(config, optimizer):
    from . import optim

    name, epochs = config["schedule"], config["epochs"]
    warm = max(1, min(5, epochs // 5))
    if name == "none":
        return None
    if name == "step":
        return optim.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return optim.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "exponential":
        return optim.ExponentialLR(optimizer, gamma=0.9)
    if name == "plateau":
        return optim.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    if name == "warmup":
        return optim.LinearLR(optimizer, start_factor=0.1, total_iters=warm)
    if name != "warmup-cosine":
        raise UserError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    return optim.SequentialLR(optimizer, [
        optim.LinearLR(optimizer, start_factor=0.1, total_iters=warm),
        optim.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warm))], milestones=[warm])


def prepare_data(config):
    """``(train, val, test)`` data sets for a config; fits and records normalisation once.

    The split is drawn from the config's seed, and the normalisation is fitted on the
    training part only and stored in ``config["normalize"]``, so evaluating a checkpoint
    later rebuilds exactly the same three parts with the same numbers.
    """
    source, test = nn_data.load_dataset(config["dataset"], seed=config["seed"])
    if config["dataset"] not in nn_data.DATASETS:
        config["dataset"] = os.path.abspath(config["dataset"])
    val_f, test_f = config["val_fraction"], 0.0 if test is not None else config["test_fraction"]
    train, val, split_test = nn_data.split(source, (1.0 - val_f - test_f, val_f, test_f),
                                           seed=config["seed"])
    test = test if test is not None else split_test
    if min(len(train), len(val), len(test)) == 0:
        raise UserError(f"dataset {config['dataset']}: {len(source)} samples are too few for "
                        f"train/validation/test splits")
    if task_of(config["model"]) == "reconstruction":
        config["normalize"] = None
    elif config.get("normalize") is None:
        config["normalize"] = nn_data.Normalize.fit(train.x).to_dict()
    if config["normalize"] is not None:
        norm = nn_data.Normalize.from_dict(config["normalize"])
        train, val, test = norm.apply(train), norm.apply(val), norm.apply(test)
    config["sample_shape"] = list(train.sample_shape)
    config["num_classes"] = max(p.num_classes for p in (train, val, test))
    return train, val, test


def _rng(seed, stream):
    # Independent streams per purpose from one seed: changing how many numbers one of them
    # draws never shifts another.
    return np.random.default_rng([stream, seed])


def _resolve_run_dir(config, out):
    if out:
        return os.path.abspath(out)
    name = config["dataset"] if config["dataset"] in nn_data.DATASETS else "data"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.abspath(os.path.join("runs", f"{stamp}-{config['model']}-{name}"))
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


def _make_run_dir(run_dir):
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {run_dir} (set it with --out DIR): "
                        f"{exc.strerror or exc}") from None


# Variables MPI launchers set in every process they start (MPICH/Hydra, Open MPI, PMIx).
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launcher_ranks(environ=None):
    """``(size, rank)`` as an MPI launcher announced them, or ``(1, 0)`` without one."""
    environ = os.environ if environ is None else environ

    def first(names, default):
        for name in names:
            try:
                return int(environ[name])
            except (KeyError, ValueError):
                continue
        return default

    return first(_LAUNCHER_SIZE, 1), first(_LAUNCHER_RANK, 0)


def _checkpoint_file(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        legacy = os.path.join(path, LEGACY_CHECKPOINT_NAME)  # a run folder from before
        path = os.path.join(path, CHECKPOINT_NAME)
        if not os.path.exists(path) and os.path.exists(legacy):
            path = legacy
    if not os.path.exists(path):
        raise UserError(f"{path}: checkpoint not found")
    return path


def _load_checkpoint(path):
    from .checkpoint import load

    ckpt = load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_FORMAT \
            or not isinstance(ckpt.get("config"), dict) or "model" not in ckpt:
        raise UserError(f"{path}: not a checkpoint written by '{PROG} train'")
    validate_config(ckpt["config"], path)
    return ckpt


def _model_parameters(model):
    return sum(p.size for p in model.parameters())


# ---------------------------------------------------------------------- threads
# Below this many multiply-adds per training batch the CPU kernels run on one Numba thread
# unless --threads says otherwise.  Every parallel region wakes every thread, and on a busy
# machine each region then waits for a free core: LeNet-5 on the 8x8 digits (2.2M
# multiply-adds per batch of 32) took 3.3 s per epoch with 2 threads and 0.32 s with one on
# the 2-core development machine under other work (README, "Threads").  Above it a step
# holds tens of milliseconds of arithmetic per core, enough to pay for waking the threads.
SMALL_BATCH_MACS = 100_000_000


def default_threads(model, sample_shape, batch_size):
    """``(threads, multiply_adds_per_batch)``: 1 for small models, None (all cores) otherwise."""
    from .summary import summary as nn_summary

    macs = nn_summary(model, tuple(sample_shape), verbose=False).total_connections * batch_size
    return (1 if macs < SMALL_BATCH_MACS else None), macs


def _choose_threads(args, model, config, batch_size, held, say):
    """Apply the default thread rule when --threads is not given (CPU runs only)."""
    if getattr(args, "threads", None) or config["device"] != "cpu":
        return
    threads, macs = default_threads(model, config["sample_shape"], batch_size)
    if threads is not None:
        held.enter_context(numba_threads(threads))
        say(f"threads: 1 (a small model, {macs / 1e6:.1f}M multiply-adds per batch of "
            f"{batch_size}; --threads N to use more cores)")


# ---------------------------------------------------------------------- train
def run_train(args, out=None):
    with contextlib.ExitStack() as held:   # the run folder's lock and the thread count, released on any exit
        return _run_train(args, out, held)


def _claim_run_dir(run_dir, resume_path, held):
    """Lock ``run_dir`` for this run and refuse it when it holds another run's checkpoint.

    Two trainings given the same ``--out`` overwrote each other without a word; now the
    second finds the lock (a run in progress) or the first one's checkpoint (a finished or
    killed run), and only ``--resume`` naming that checkpoint may continue in the folder.
    """
    _make_run_dir(run_dir)
    held.enter_context(RunLock(run_dir))
    for name in (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME):
        existing = os.path.join(run_dir, name)
        if not os.path.lexists(existing):
            continue
        named = (resume_path is not None and os.path.exists(existing)
                 and os.path.samefile(existing, resume_path))
        if not named:
            raise UserError(f"{run_dir} already holds another run's checkpoint: continue it "
                            f"with --resume {run_dir}, or choose another --out")
        break


def _run_train(args, out, held):
    out = out or sys.stdout
    start = time.perf_counter()
    ranks, rank = launcher_ranks()
    distributed = bool(getattr(args, "distributed", False))
    if ranks > 1 and not distributed:
        # Each process would train the same model alone and write the same run folder.
        if rank == 0:
            print(f"{PROG} train: error: started as {ranks} processes (by mpiexec) without "
                  f"--distributed: add --distributed to train one model on all of them, or "
                  f"start one process", file=sys.stderr)
        return 1
    given = {k: v for k, v in vars(args).items() if v is not None and v is not False}
    resume = None
    if args.resume:
        path = _checkpoint_file(args.resume)
        resume = _load_checkpoint(path)
        config = dict(resume["config"])
        fixed = [k for k in given if k not in RESUME_MAY_CHANGE + ("resume", "command")]
        if fixed:
            raise UserError("--resume continues the checkpoint's own config; these options "
                            "cannot change: " + ", ".join("--" + k.replace("_", "-")
                                                          for k in fixed))
        for key in ("epochs", "device"):
            if key in given:
                config[key] = given[key]
        run_dir = os.path.abspath(args.out) if args.out else os.path.dirname(os.path.abspath(path))
    else:
        config = dict(TRAIN_DEFAULTS)
        config.update({k: v for k, v in given.items() if k in TRAIN_DEFAULTS})
        run_dir = _resolve_run_dir(config, args.out)
    _check_device(config["device"])
    comm = None
    if distributed:
        from . import distributed as dist
        backend = "nccl" if config["device"] == "cuda" and not kernels.SIMULATOR else "mpi"
        comm = dist.init(backend)
        if comm.size == 1:
            launched = any(k in os.environ for k in _LAUNCHER_SIZE + _LAUNCHER_RANK)
            how = "mpiexec -n 1" if launched else "a process not started by mpiexec"
            print(f"{PROG} train: note: --distributed in {how}: training on 1 process (for N: "
                  f"mpiexec -n N python -m mpi4py -m nn train --distributed)", file=sys.stderr)
    is_main = comm is None or comm.is_main
    quiet = bool(args.quiet) or not is_main
    if is_main:  # before the data is read: a bad --out fails in a second, not after training
        _claim_run_dir(run_dir, path if resume is not None else None, held)

    def say(*parts):
        if not quiet:
            print(*parts, file=out, flush=True)

    from . import init as nn_init
    train, val, test = prepare_data(config)
    task = task_of(config["model"])
    nn_init.manual_seed(config["seed"])
    model = build_model(config["model"], config["sample_shape"], config["num_classes"])
    model.to(config["device"])
    loss_fn = build_loss(task)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer)
    loader = lambda ds, shuffle: nn_data.DataLoader(  # noqa: E731
        ds, batch_size=config["batch_size"], shuffle=shuffle,
        generator=_rng(config["seed"], 1) if shuffle else None, device=config["device"])
    train_loader, val_loader = loader(train, True), loader(val, False)
    trained = model
    if comm is not None:  # every rank: its share of each global batch, and of validation
        train_loader = dist.ShardedLoader(train_loader, comm)
        val_loader = loader(dist.shard_dataset(val, comm), False)
        # the config too: ranks with other seeds or batch sizes are refused, not trained
        trained = dist.DataParallel(model, comm, config=config)

    if is_main:
        _write_json(os.path.join(run_dir, "config.json"), config)
    classes = f", {config['num_classes']} classes" if task == "classification" else ""
    say(f"data: {config['dataset']}: {len(train)} train / {len(val)} validation / {len(test)} "
        f"test samples of shape {tuple(config['sample_shape'])}{classes}")
    say(f"model: {config['model']} ({type(model).__name__}, {_model_parameters(model):,} "
        f"parameters) on {config['device']}; {config['optimizer']} lr {config['lr']:g}, "
        f"schedule {config['schedule']}, batch {config['batch_size']}, up to "
        f"{config['epochs']} epochs")
    if comm is not None and comm.size > 1:
        say(f"distributed: {comm.size} ranks ({backend}), each trains on its share of every "
            f"batch of {config['batch_size']}; rank 0 prints and writes the run folder")
    if resume is not None:
        say(f"resuming from {args.resume} after epoch {resume['epoch']}")
    compiled = 0.0
    if not quiet and config["device"] == "cpu":
        from .train import compile_kernels_if_cold
        # Before the thread rule's one-sample forward pass, which would compile unannounced.
        compiled = compile_kernels_if_cold(model, lambda line: print(line, file=out, flush=True))
    _choose_threads(args, model, config, config["batch_size"], held, say)
    trainer = Trainer(trained, loss_fn, optimizer, scheduler, task=task,
                      run_dir=run_dir if is_main else None, comm=comm,
                      patience=config["patience"], quiet=quiet, config=config,
                      log=lambda line: print(line, file=out, flush=True))
    trainer.fit(train_loader, val_loader, epochs=config["epochs"], resume=resume)
    if not is_main:  # rank 0 holds the same weights and does the rest
        return 0

    with np.errstate(all="ignore"):   # a diverged model's test loss is reported, not warned
        result = evaluate(model, loader(test, False), loss_fn, task, config.get("num_classes"))
    _write_json(os.path.join(run_dir, "test.json"), _jsonable(result, trainer.best_epoch))
    if task == "classification":
        correct = int(np.trace(result["confusion"]))
        say(f"test: accuracy {100 * result['accuracy']:.2f}% ({correct}/{result['samples']}), "
            f"loss {result['loss']:.4f} (weights of epoch {trainer.best_epoch})")
    else:
        say(f"test: reconstruction loss (MSE) {result['loss']:.5f} (weights of epoch "
            f"{trainer.best_epoch})")
    written = write_plots(run_dir, trainer.history, model, config, test, result, say,
                          best_epoch=trainer.best_epoch)
    files = sorted(set(os.listdir(run_dir)) & ({CHECKPOINT_NAME, "config.json", "metrics.csv",
                                                 "metrics.json", "test.json"} | set(written)))
    print(f"run folder: {run_dir}", file=out)
    say(f"  {', '.join(files)}")
    say(f"  total {time.perf_counter() - start:.1f} s" + (
        f" ({compiled:.0f} s of it compiling kernels for this machine)" if compiled else ""))
    return 0


def _jsonable(result, best_epoch):
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
    out["best_epoch"] = best_epoch
    return out


def _write_json(path, obj):
    # Strict JSON (no bare NaN), through an unpredictable temporary file that never follows
    # a planted symlink (nn.train.write_atomic).
    write_atomic(path, json_text(obj))


def write_plots(run_dir, history, model, config, test, result, say, best_epoch=None):
    """The run's PNG figures; returns their file names (none without matplotlib)."""
    from . import plots

    if not plots.available():
        say(plots.MISSING_NOTICE)
        return []
    written = []

    def save(name, draw, *a, **kw):
        draw(*a, os.path.join(run_dir, name), **kw)
        written.append(name)

    dataset = config["dataset"] if config["dataset"] in nn_data.DATASETS else \
        os.path.basename(config["dataset"])
    save("curves.png", plots.plot_history, history,
         title=f"{config['model']} on {dataset}", best_epoch=best_epoch)
    # Filters are drawn as images: only for image samples (C, H, W), not tabular (F,) rows.
    image = len(config["sample_shape"]) == 3
    first = _first_layer_weight(model, config["sample_shape"]) if image else None
    if first is not None:
        save("filters.png", plots.plot_filters, first, input_shape=config["sample_shape"])
    if "confusion" in result:
        save("confusion.png", plots.plot_confusion, result["confusion"])
    if task_of(config["model"]) == "reconstruction":
        x = test.x[:256]
        xd = kernels.to_device(x, config["device"])
        model.eval()
        recon = kernels.to_host(model(xd))
        codes = kernels.to_host(model.encode(xd))
        if image:
            save("reconstructions.png", plots.plot_reconstructions, x, recon)
        if codes.reshape(len(codes), -1).shape[1] >= 2:
            save("codes.png", plots.plot_codes, codes, test.y[:256])
    return written


def _first_layer_weight(model, sample_shape):
    """The first Conv2d/Linear weight that reads the input directly (host copy), or None."""
    flat = int(np.prod(sample_shape))
    for _, module in model.named_modules():
        weight = getattr(module, "weight", None)
        shape = getattr(weight, "shape", ())
        if len(shape) == 4 and shape[1] == sample_shape[0]:
            return kernels.to_host(weight.data)
        if len(shape) == 2 and shape[1] == flat:
            return kernels.to_host(weight.data)
        if len(shape) in (2, 4):
            return None
    return None


# ---------------------------------------------------------------------- evaluate
def run_evaluate(args, out=None):
    with contextlib.ExitStack() as held:
        return _run_evaluate(args, out, held)


def _run_evaluate(args, out, held):
    out = out or sys.stdout
    path = _checkpoint_file(args.checkpoint)
    ckpt = _load_checkpoint(path)
    config = dict(ckpt["config"])
    config["device"] = args.device
    _check_device(args.device)
    try:  # the path in the config is checked like a --dataset path, by the same loaders
        train, val, test = prepare_data(config)
    except nn_data.DataError as exc:
        raise UserError(f"{path}: the data set its config names: {exc}") from None
    split = {"train": train, "val": val, "test": test}[args.split]
    task = task_of(config["model"])
    model = build_model(config["model"], config["sample_shape"], config["num_classes"])
    best = ckpt.get("best_model")
    weights = best if isinstance(best, dict) and best else ckpt["model"]
    try:
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: the checkpoint's weights do not fit its config: "
                        f"{exc}") from None
    model.to(args.device)
    _choose_threads(args, model, config, args.batch_size, held, lambda *a: None)
    loader = nn_data.DataLoader(split, batch_size=args.batch_size, device=args.device)
    result = evaluate(model, loader, build_loss(task), task, config["num_classes"])
    which = "best" if weights is best else "last"
    stop = ckpt.get("early_stopping")
    epoch = (stop.get("best_epoch") if isinstance(stop, dict) else None) if which == "best" \
        else ckpt.get("epoch")
    print(f"checkpoint: {path} ({config['model']} on {config['dataset']}, {which} weights, "
          f"epoch {epoch})", file=out)
    if task == "classification":
        correct = int(np.trace(result["confusion"]))
        print(f"{args.split}: accuracy {100 * result['accuracy']:.2f}% ({correct}/"
              f"{result['samples']}), loss {result['loss']:.4f}", file=out)
        print("confusion matrix (rows: true class, columns: predicted class):", file=out)
        print(format_confusion(result["confusion"]), file=out)
    else:
        print(f"{args.split}: reconstruction loss (MSE) {result['loss']:.5f} over "
              f"{result['samples']} samples", file=out)
    return 0


def format_confusion(matrix):
    k = matrix.shape[0]
    width = max(3, len(str(matrix.max())) + 1)
    lines = ["true\\pred" + "".join(f"{j:>{width}}" for j in range(k))]
    for i in range(k):
        lines.append(f"{i:>9}" + "".join(f"{v:>{width}}" for v in matrix[i]))
    return "\n".join(lines)


# ---------------------------------------------------------------------- summary
def run_summary(args, out=None):
    out = out or sys.stdout
    from .summary import summary as nn_summary

    model = build_model(args.model, args.input_shape, args.num_classes)
    result = nn_summary(model, tuple(args.input_shape), verbose=False)
    print(f"{args.model} ({type(model).__name__}) for samples of shape "
          f"{tuple(args.input_shape)}, {args.num_classes} classes", file=out)
    print(result.table(), file=out)
    return 0


def _add_demo(p):
    from .demos import add_arguments
    add_arguments(p)


def run_demo(args, out=None):
    from .demos import run_cli
    return run_cli(args, out)


# ---------------------------------------------------------------------- entry point
# ---------------------------------------------------------------------- export
EXPORT_FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}


def _add_export(p):
    p.add_argument("run", metavar="RUN", help="a run folder or a checkpoint written by train")
    p.add_argument("--format", choices=tuple(EXPORT_FORMATS), required=True,
                   help="safetensors: the weights under torch's state_dict keys; onnx: the "
                        "model in evaluation mode, batch axis dynamic")
    p.add_argument("--out", metavar="PATH",
                   help="output file (default: model.safetensors or model.onnx in the run "
                        "folder)")
    p.add_argument("--opset", type=_positive(int), default=None,
                   help="ONNX operator set, 13 or newer (default 17)")


def run_export(args, out=None):
    """The best weights of a run (the last ones without validation) as one file."""
    import nn
    from .onnx_export import DEFAULT_OPSET

    out = out or sys.stdout
    path = _checkpoint_file(args.run)
    ckpt = _load_checkpoint(path)
    config = ckpt["config"]
    weights = ckpt.get("best_model") or ckpt["model"]
    target = args.out or os.path.join(os.path.dirname(os.path.abspath(path)),
                                      "model" + EXPORT_FORMATS[args.format])
    model = build_model(config.get("model"), config.get("sample_shape") or (),
                        config.get("num_classes"))
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: the weights do not fit a {config.get('model')!r} model "
                        f"({exc})") from None
    if args.format == "safetensors":
        nn.save(model.state_dict(), target)
    else:
        example = np.zeros((1, *config["sample_shape"]), next(model.parameters()).dtype)
        try:
            nn.export_onnx(model, example, target, opset=args.opset or DEFAULT_OPSET)
        except ImportError as exc:
            raise UserError(f"ONNX export needs the onnx package (pip install "
                            f"'numba-dl[interop]'): {exc}") from None
        except ValueError as exc:  # OnnxExportError, or an opset this onnx does not know
            raise UserError(str(exc)) from None
    print(f"{args.format}: {target} ({config.get('model')}, input (N, "
          f"{', '.join(str(s) for s in config['sample_shape'])}))", file=out)
    return 0


COMMANDS = {
    # name: (help, add arguments, run)
    "train": ("train a model and write a run folder (checkpoint, metrics, plots, config)",
              _add_train, run_train),
    "evaluate": ("accuracy, loss and confusion matrix of a checkpoint on its test split",
                 _add_evaluate, run_evaluate),
    "summary": ("a model's layers with output shapes, units, weights and connections",
                _add_summary, run_summary),
    "demo": ("run a demonstration (vanishing-gradients, zero-init, xor, ...): print its "
             "finding, write its plots", _add_demo, run_demo),
    "export": ("write a run's weights as safetensors (a torch state_dict) or its model as "
               "ONNX", _add_export, run_export),
}



def make_parser():
    parser = _Parser(prog=PROG, description="Train and inspect the numba-dl model zoo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    parser.commands = {}
    for name, (help_text, add, _) in COMMANDS.items():
        parser.commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        add(parser.commands[name])
    return parser


def _user_errors():
    errors = [UserError, nn_data.DataError, NonFiniteLossError, OSError, RunFolderBusyError,
              CheckpointStateError]
    try:
        from .distributed import RanksDisagreeError
        errors.append(RanksDisagreeError)
    except ImportError:
        pass
    try:
        from .checkpoint import CheckpointError
        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv=None):
    """Run the command line; returns the exit code (0 success, 1 error, 2 usage, 130 ^C)."""
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Reported by the subcommand's parser, which can list its own valid options.
        (parser.commands.get(args.command) or parser).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run = COMMANDS[args.command][2]
    threads = getattr(args, "threads", None)
    try:
        with numba_threads(threads) if threads else contextlib.nullcontext():
            code = run(args)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return code
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other command-line tools do.
        # Pointing stdout at /dev/null keeps the interpreter's final flush from complaining.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured): nothing to flush
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the broken pipe
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (the last finished epoch's checkpoint is "
              f"kept; continue with --resume)", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if getattr(exc, "quiet", False):   # said once, by rank 0, not once per rank
            return 1
        message = str(exc).strip().splitlines()
        print(f"{PROG} {args.command}: error: {message[0] if message else type(exc).__name__}",
              file=sys.stderr)
        return 1
