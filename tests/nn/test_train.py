"""nn.train: the fit loop, metrics files, early stopping, exact resume, the NaN guard; nn.plots."""
import csv
import io
import json
import os
import sys

import numpy as np
import pytest

import kernels as K
import nn
from nn import data, plots
from nn.train import (CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME, NonFiniteLossError, Trainer,
                      evaluate)
from legacy_checkpoint import save_npz


def make_model(seed, dropout=True):
    nn.init.manual_seed(seed)
    layers = [nn.Linear(2, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.2))
    layers += [nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def loaders(seed=0, n=96, batch_size=16, train_labels=None):
    ds = data.blobs(n=n, num_classes=3, seed=seed)
    train, val = data.split(ds, (0.75, 0.25), seed=seed)
    if train_labels is not None:
        train = data.ArrayDataset(train.x, train_labels(train.y))
    return (data.DataLoader(train, batch_size=batch_size, shuffle=True, seed=seed + 1),
            data.DataLoader(val, batch_size=batch_size))


def make_trainer(model, run_dir=None, schedule=True, **options):
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = nn.optim.StepLR(optimizer, step_size=1, gamma=0.7) if schedule else None
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, scheduler, run_dir=run_dir,
                   quiet=True, **options)


def params(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_fit_learns_and_writes_metrics(tmp_path):
    model = make_model(0)
    train_loader, val_loader = loaders()
    trainer = make_trainer(model, tmp_path)
    history = trainer.fit(train_loader, val_loader, epochs=4)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.9
    np.testing.assert_allclose([row["lr"] for row in history], [0.1, 0.07, 0.049, 0.0343])
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["val_loss"]) == history[2]["val_loss"]
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["history"] == json.loads(json.dumps(history))
    assert summary["best_epoch"] == trainer.best_epoch
    ckpt = nn.load(tmp_path / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 4 and len(ckpt["history"]) == 4
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    result = evaluate(model, val_loader, nn.CrossEntropyLoss(), num_classes=3)
    assert result["confusion"].sum() == result["samples"] == len(val_loader.dataset)
    assert result["accuracy"] == np.trace(result["confusion"]) / result["samples"]


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, fmt):
    # Shuffling, dropout masks, momentum buffers and the schedule all carry over, from
    # today's safetensors checkpoint and from one in the .npz format of older runs.
    full = make_model(0)
    train_loader, val_loader = loaders()
    make_trainer(full, tmp_path / "full", restore_best=False).fit(train_loader, val_loader,
                                                                  epochs=3)

    first = make_model(0)
    train_loader, val_loader = loaders()
    make_trainer(first, tmp_path / "cut", restore_best=False).fit(train_loader, val_loader,
                                                                  epochs=2)
    resume_from = tmp_path / "cut" / CHECKPOINT_NAME
    if fmt == "npz":
        resume_from = tmp_path / "cut" / LEGACY_CHECKPOINT_NAME
        save_npz(nn.load(tmp_path / "cut" / CHECKPOINT_NAME), resume_from)
        os.unlink(tmp_path / "cut" / CHECKPOINT_NAME)
    # A fresh process would start from different weights and generators: make them differ.
    resumed = make_model(123)
    train_loader, val_loader = loaders()
    nn.init.default_generator().random(7)
    trainer = make_trainer(resumed, tmp_path / "cut", restore_best=False)
    history = trainer.fit(train_loader, val_loader, epochs=3, resume=resume_from)
    expected, got = params(full), params(resumed)
    assert expected.keys() == got.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    a = nn.load(tmp_path / "full" / CHECKPOINT_NAME)
    b = nn.load(tmp_path / "cut" / CHECKPOINT_NAME)
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in history]
    assert a["rng"] == b["rng"]
    for k, v in a["optimizer"]["state"].items():
        for name, arr in v.items():
            np.testing.assert_array_equal(b["optimizer"]["state"][k][name], arr)


def test_early_stopping_restores_the_best_epoch(tmp_path):
    # Train labels are shifted against the validation labels, so the better the model fits
    # the training data the worse its validation loss: epoch 1 stays the best.
    shift = lambda y: (y + 1) % 3  # noqa: E731
    model = make_model(0, dropout=False)
    train_loader, val_loader = loaders(train_labels=shift)
    trainer = make_trainer(model, tmp_path, schedule=False, patience=2)
    history = trainer.fit(train_loader, val_loader, epochs=20)
    losses = [row["val_loss"] for row in history]
    assert trainer.stopped_early and trainer.best_epoch == 1
    assert len(history) == 3 and losses[1] > losses[0] and losses[2] > losses[0]

    once = make_model(0, dropout=False)
    train_loader, val_loader = loaders(train_labels=shift)
    make_trainer(once, schedule=False).fit(train_loader, val_loader, epochs=1)
    best = params(once)
    for k, v in params(model).items():
        np.testing.assert_array_equal(v, best[k], err_msg=k)
    ckpt = nn.load(tmp_path / CHECKPOINT_NAME)
    assert ckpt["early_stopping"]["stopped"] and ckpt["early_stopping"]["best_epoch"] == 1
    for k, v in ckpt["best_model"].items():
        np.testing.assert_array_equal(v, best[k], err_msg=k)
    # Resuming a run that stopped early does not train further.
    again = make_model(5, dropout=False)
    train_loader, _ = loaders(train_labels=shift)
    assert len(make_trainer(again, schedule=False, patience=2).fit(
        train_loader, val_loader, epochs=20, resume=ckpt)) == 3


def test_non_finite_loss_stops_before_updating_or_saving(tmp_path):
    model = make_model(0, dropout=False)
    ds = data.blobs(n=60, num_classes=3, seed=0)
    loader = data.DataLoader(ds, batch_size=10)
    trainer = make_trainer(model, tmp_path)
    trainer.fit(loader, epochs=1)
    saved = params(model)
    ds.x[25, 0] = np.nan  # the third batch of the next epoch
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3 of 6"):
        trainer.fit(loader, epochs=2)
    ckpt = nn.load(tmp_path / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1
    for k, v in ckpt["model"].items():
        np.testing.assert_array_equal(v, saved[k])
    for p in model.parameters():
        assert np.isfinite(p.data).all()


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    import functools

    import tqdm
    # Redraw on every update so the test sees each state of the bar.
    monkeypatch.setattr(tqdm, "tqdm", functools.partial(tqdm.tqdm, mininterval=0, miniters=1))
    train_loader, val_loader = loaders()
    lines = []
    for quiet, stream in ((False, io.StringIO()), (True, FakeTerminal()), (False, FakeTerminal())):
        monkeypatch.setattr(sys, "stderr", stream)
        trainer = make_trainer(make_model(0), log=lines.append)
        trainer.quiet = quiet
        trainer.fit(train_loader, val_loader, epochs=1)
        shown = stream.getvalue()
        if quiet or not stream.isatty():
            assert shown == ""
        else:
            assert "epoch 1/1" in shown and "5/5" in shown and "loss=" in shown
    # The per-epoch line goes to the log unless quiet (two of the three runs).  A cold Numba
    # cache adds a "compiling kernels" line first; whether it is cold depends on what ran
    # before, so it is left out here (tests/kernels/test_warmup.py tests it).
    lines = [line for line in lines if not line.startswith("compiling kernels")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/1  train loss")


def test_patience_without_validation_data_is_refused():
    model = make_model(0)
    train_loader, _ = loaders()
    with pytest.raises(ValueError, match="needs validation data"):
        make_trainer(model, patience=2).fit(train_loader, epochs=1)


def test_reconstruction_task_and_plateau_schedule():
    nn.init.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    ds = data.blobs(n=64, num_classes=2, seed=1)
    train, val = data.split(ds, (0.75, 0.25), seed=0)
    optimizer = nn.optim.Adam(model.parameters(), lr=0.05)
    scheduler = nn.optim.ReduceLROnPlateau(optimizer, patience=1)
    trainer = Trainer(model, nn.MSELoss(), optimizer, scheduler, task="reconstruction",
                      quiet=True)
    history = trainer.fit(data.DataLoader(train, batch_size=16), data.DataLoader(val), epochs=5)
    assert "train_accuracy" not in history[0] and "val_accuracy" not in history[0]
    assert history[-1]["val_loss"] < history[0]["val_loss"]


@pytest.mark.cuda
@pytest.mark.skipif(not K.SIMULATOR, reason="strict_transfers() is a simulator mode")
def test_cuda_tests_here_run_in_strict_transfer_mode(cuda_device):
    assert K.device._strict is not None     # tests/nn/conftest.py
    with pytest.raises(K.ImplicitTransferError):
        float(K.to_device(np.ones(1), cuda_device).sum())


@pytest.mark.cuda
def test_fit_on_the_cuda_device_matches_the_cpu(cuda_device, tmp_path):
    """Also the validation pass (evaluate) and the checkpoint's finiteness check: in strict
    mode on the simulator (tests/nn/conftest.py), neither reads the device implicitly."""
    # Tiny on purpose: under the simulator every GPU thread is a Python thread.
    ds = data.blobs(n=16, num_classes=3, seed=0)
    results = {}
    for device in ("cpu", cuda_device):
        model = make_model(0, dropout=False).to(device)
        loader = data.DataLoader(ds, batch_size=8, shuffle=True, seed=0, device=device)
        trainer = make_trainer(model, tmp_path / device)
        history = trainer.fit(loader, data.DataLoader(ds, batch_size=16, device=device),
                              epochs=2)
        assert nn.load(tmp_path / device / CHECKPOINT_NAME)["epoch"] == 2
        results[device] = (history, params(model))
    (cpu_history, cpu_params), (gpu_history, gpu_params) = results["cpu"], results[cuda_device]
    np.testing.assert_allclose([r["val_loss"] for r in gpu_history],
                               [r["val_loss"] for r in cpu_history], rtol=1e-5)
    for k, v in cpu_params.items():
        np.testing.assert_allclose(gpu_params[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.skipif(not plots.available(), reason="matplotlib is not installed")
def test_plots_write_pngs(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e,
                "train_accuracy": 0.5 + e / 10, "val_accuracy": 0.4 + e / 10} for e in (1, 2, 3)]
    rng = np.random.default_rng(0)
    files = [
        plots.plot_history(history, tmp_path / "curves.png"),
        plots.plot_filters(rng.standard_normal((6, 1, 5, 5)), tmp_path / "conv.png"),
        plots.plot_filters(rng.standard_normal((4, 64)), tmp_path / "dense.png",
                           input_shape=(1, 8, 8)),
        plots.plot_confusion(rng.integers(0, 9, (10, 10)), tmp_path / "confusion.png"),
        plots.plot_reconstructions(rng.random((5, 1, 8, 8)), rng.random((5, 1, 8, 8)),
                                   tmp_path / "recon.png"),
        plots.plot_codes(rng.standard_normal((30, 2)), np.arange(30) % 10, tmp_path / "codes.png"),
    ]
    for f in files:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="input_shape"):
        plots.plot_filters(rng.standard_normal((4, 10)), tmp_path / "x.png", input_shape=(1, 8, 8))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_optimizer_found_inf_skips_every_update(name):
    """The flag the trainer guards steps with: while ``found_inf`` is nonzero, step() leaves
    parameters and buffers as they were; cleared, the same step updates them."""
    model = make_model(0, dropout=False)
    options = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    opt = getattr(nn.optim, name)(model.parameters(), lr=0.1, **options)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()                                    # buffers exist and are nonzero now
    before = params(model)
    buffers = {id(p): {k: np.array(v) for k, v in s.items() if isinstance(v, np.ndarray)}
               for p, s in opt.state.items()}
    opt.found_inf = np.array([np.inf], np.float32)
    opt.step()
    for k, v in params(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for p, s in opt.state.items():
        for k, v in buffers[id(p)].items():
            np.testing.assert_array_equal(s[k], v, err_msg=k)
    opt.found_inf = np.zeros(1, np.float32)
    opt.step()
    assert any(not np.array_equal(v, before[k]) for k, v in params(model).items())


def test_non_finite_loss_guard_with_an_optimizer_of_ones_own(tmp_path):
    """An optimizer whose update ignores ``found_inf`` still never applies a NaN loss's
    gradients: the trainer reads the flag before each of its steps instead."""
    class Plain(nn.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, {"lr": lr})

        def _check_group(self, group):
            pass

        def _update(self, p, state, group):
            p.data -= group["lr"] * p.grad

    model = make_model(0, dropout=False)
    ds = data.blobs(n=60, num_classes=3, seed=0)
    ds.x[5, 0] = np.nan                           # the first batch
    before = params(model)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch 1 of 6"):
        Trainer(model, nn.CrossEntropyLoss(), Plain(model.parameters(), 0.1),
                quiet=True).fit(data.DataLoader(ds, batch_size=10), epochs=1)
    for k, v in params(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
