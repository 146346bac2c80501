"""No host round trips in a training step on the cuda device (checked on the simulator, made
stricter than a GPU by kernels.strict_transfers): label and probability checks stay on the
device until the next explicit read, dropout masks are drawn on the device, BatchNorm's
cumulative average reads no counter on the host."""
import numpy as np
import pytest

import kernels as K
import nn
from nn.models import LeNet5, SmallVGG, UNet

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not K.SIMULATOR, reason="strict_transfers() is a simulator mode")]


def _dev(a):
    return K.to_device(np.asarray(a), "cuda")


def test_strict_mode_refuses_implicit_reads_and_counts_explicit_ones():
    a = _dev(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert float(a.sum()) == 15.0              # outside the mode: allowed
    xp = K.array_module("cuda")
    with K.strict_transfers() as count:
        total = a.sum()
        assert K.device_of(total) == "cuda" and total.shape == ()   # a 0-d device array
        for read in (float, int, bool, lambda v: v.item(), lambda v: v.tolist(),
                     lambda v: [0, 1][v]):
            with pytest.raises(K.ImplicitTransferError, match="kernels.to_host"):
                read(total.astype(np.int64))
        assert (count.to_host, count.to_device) == (0, 0)
        assert float(K.to_host(total)) == 15.0
        K.to_device(np.ones(2), "cuda")
        xp.asarray(np.ones(2))
        xp.asarray(a)                           # already on the device: no transfer
        assert (count.to_host, count.to_device) == (1, 2)
    assert float(a.sum()) == 15.0               # the mode ends with the block


def _step(model, x, target, loss_fn):
    opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad()
    loss = loss_fn(model(x), target)
    model.backward(loss_fn.backward())
    opt.step()
    return loss


@pytest.mark.parametrize("name", ["lenet5", "smallvgg", "unet"])
def test_a_training_step_makes_no_transfers(name):
    nn.manual_seed(0)
    rng = np.random.default_rng(0)
    if name == "lenet5":
        model, shape, loss_fn = LeNet5(1, 10, input_size=8), (2, 1, 8, 8), nn.CrossEntropyLoss()
    elif name == "smallvgg":
        model = SmallVGG(3, 10, input_size=8, widths=(4, 8), batch_norm=True, dropout=0.5)
        shape, loss_fn = (2, 3, 8, 8), nn.CrossEntropyLoss()
    else:
        model = UNet(1, 1, base=4, depth=1, batch_norm=True)
        shape, loss_fn = (2, 1, 8, 8), nn.BCEWithLogitsLoss()
    model.to("cuda").train()
    x = _dev(rng.standard_normal(shape).astype(np.float32))
    if name == "unet":
        target = _dev((rng.random(shape) > 0.5).astype(np.float32))
    else:
        target = _dev(np.array([1, 3]))
    _step(model, x, target, loss_fn)            # first step: lazily created state
    with K.strict_transfers() as count:
        loss = _step(model, x, target, loss_fn)
    assert (count.to_host, count.to_device) == (0, 0)
    assert np.isfinite(float(K.to_host(loss)))


def test_batchnorm_cumulative_average_stays_on_device():
    bn = nn.BatchNorm2d(3, momentum=None).to("cuda").train()
    x = _dev(np.random.default_rng(1).standard_normal((4, 3, 2, 2)).astype(np.float32))
    with K.strict_transfers() as count:
        bn(x)
        bn(x * 3)
    assert (count.to_host, count.to_device) == (0, 0)
    # Cumulative average of the two batches' statistics, as torch's momentum=None.
    xs = [K.to_host(x), 3 * K.to_host(x)]
    mean = np.mean([b.mean(axis=(0, 2, 3)) for b in xs], axis=0)
    np.testing.assert_allclose(K.to_host(bn.running_mean), mean, rtol=1e-5, atol=1e-6)


def test_bad_labels_are_reported_at_the_next_read():
    logits = _dev(np.zeros((2, 3), np.float32))
    with K.strict_transfers() as count:
        loss, _ = K.cross_entropy_forward(logits, _dev(np.array([0, 3])))
    assert count.to_host == 0                   # nothing read at the call
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 3\), got "
                                         r"values in \[0, 3\]"):
        K.to_host(loss)
    K.to_host(loss)                             # reported once, then cleared
    K.cross_entropy_forward(logits, _dev(np.array([-1, 0])))
    with pytest.raises(ValueError, match=r"got values in \[-1, 0\]"):
        K.check_errors()
    K.check_errors()


def test_bce_probability_check_is_deferred():
    loss_fn = nn.BCELoss()
    p = _dev(np.array([0.5, 1.5], np.float32))
    with K.strict_transfers():
        loss_fn(p, _dev(np.array([0.0, 1.0], np.float32)))
    with pytest.raises(ValueError, match=r"p: BCELoss expects probabilities in \[0, 1\], got "
                                         r"values in \[0.5, 1.5\]"):
        K.check_errors()


def test_dropout_mask_on_device_matches_the_cpu_and_p():
    n, p = 20000, 0.3
    cpu = K.dropout_mask((n,), p, 2024, np.float32, "cpu")
    gpu = K.to_host(K.dropout_mask((n,), p, 2024, np.float32, "cuda"))
    np.testing.assert_array_equal(cpu, gpu)     # same (seed, index) -> same draw anywhere
    dropped = (cpu == 0).mean()
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / n)   # 5 sigma of a Bernoulli mean
    assert set(np.unique(cpu)) == {np.float32(0), np.float32(1 / (1 - p))}
    assert not np.array_equal(cpu, K.dropout_mask((n,), p, 2025, np.float32, "cpu"))


def test_dropout_on_device_is_reproducible_and_transfer_free():
    x = _dev(np.ones((4, 8), np.float32))
    nn.manual_seed(3)
    layer = nn.Dropout(0.5).to("cuda")
    with K.strict_transfers() as count:
        a = layer(x)
        b = layer(x)
    assert (count.to_host, count.to_device) == (0, 0)
    nn.manual_seed(3)
    again = nn.Dropout(0.5).to("cuda")(x)
    np.testing.assert_array_equal(K.to_host(a), K.to_host(again))
    assert not np.array_equal(K.to_host(a), K.to_host(b))
    np.testing.assert_array_equal(K.to_host(layer.backward(x)), K.to_host(b))


@pytest.mark.parametrize("include", [True, False])
def test_average_pooling_divisors_are_made_on_the_device(include):
    x = _dev(np.random.default_rng(2).standard_normal((1, 2, 5, 5)).astype(np.float32))
    with K.strict_transfers() as count:
        y = K.avg_pool2d_forward(x, 3, stride=2, padding=1, count_include_pad=include)
        K.avg_pool2d_backward(y, x.shape, 3, stride=2, padding=1, count_include_pad=include)
    assert (count.to_host, count.to_device) == (0, 0)
    ref = K.avg_pool2d_forward(K.to_host(x), 3, stride=2, padding=1, count_include_pad=include)
    np.testing.assert_allclose(K.to_host(y), ref, rtol=1e-6)


def test_deferred_checks_are_bounded(monkeypatch):
    from kernels import device as D
    monkeypatch.setattr(D, "MAX_DEFERRED", 4)
    logits = _dev(np.zeros((2, 3), np.float32))
    good = _dev(np.array([0, 2]))
    with K.strict_transfers() as count:
        for _ in range(3):
            K.cross_entropy_forward(logits, good)
        assert count.to_host == 0 and len(D._deferred) == 3
        K.cross_entropy_forward(logits, good)   # the fourth reads all four in one transfer
        assert count.to_host == 1 and D._deferred == []


# ---------------------------------------------------------------- a whole Trainer epoch
def _model(name):
    nn.manual_seed(0)
    if name == "lenet5":
        return LeNet5(1, 3, input_size=8), nn.CrossEntropyLoss(), "classification", 1
    if name == "smallvgg":
        model = SmallVGG(1, 3, input_size=8, widths=(4, 8), batch_norm=True, dropout=0.5)
        return model, nn.CrossEntropyLoss(), "classification", 1
    # the UNet reconstructs its input (gaussian_images are in [0, 1])
    return UNet(1, 1, base=4, depth=1, batch_norm=True), nn.BCEWithLogitsLoss(), \
        "reconstruction", 1


def _loader(n, batch_size=2):
    from nn import data
    return data.DataLoader(data.gaussian_images(n=n, num_classes=3, size=8, seed=1),
                           batch_size=batch_size, device="cuda")


@pytest.mark.parametrize("name", ["lenet5", "smallvgg", "unet"])
def test_a_trainer_epoch_reads_nothing_per_batch(name):
    """Over a Trainer.fit epoch the only host-to-device copies are the batches (x and y
    from the loader) and the device-to-host reads are a fixed number per epoch, whatever
    the number of batches: the epoch's totals (one read), plus the label checks deferred
    by cross-entropy (one read, classification only)."""
    per_epoch = {"lenet5": 2, "smallvgg": 2, "unet": 1}[name]
    model, loss_fn, task, _ = _model(name)
    model.to("cuda")
    trainer = nn.train.Trainer(model, loss_fn, nn.optim.SGD(model.parameters(), lr=0.01,
                                                            momentum=0.9),
                               task=task, quiet=True)
    trainer.fit(_loader(2), epochs=1)       # lazily created state (momentum buffers...)
    for epochs, batches in ((2, 1), (3, 3)):
        with K.strict_transfers() as count:
            history = trainer.fit(_loader(2 * batches), epochs=epochs)
        assert count.to_device == 2 * batches, (batches, count)
        assert count.to_host == per_epoch, (batches, count)
        assert np.isfinite(history[-1]["train_loss"])
        if task == "classification":
            assert 0.0 <= history[-1]["train_accuracy"] <= 1.0


def _params(model):
    return {k: K.to_host(v).copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bad_batch", [1, 2])
def test_a_nan_loss_on_the_device_leaves_the_weights_untouched(bad_batch):
    from nn import data
    from nn.train import NonFiniteLossError

    ds = data.gaussian_images(n=6, num_classes=3, size=8, seed=1)
    ds.x[2 * bad_batch - 1, 0, 0, 0] = np.nan
    model, loss_fn, task, _ = _model("lenet5")
    model.to("cuda")
    opt = nn.optim.Adam(model.parameters(), lr=0.01)
    trainer = nn.train.Trainer(model, loss_fn, opt, task=task, quiet=True)
    # The same start, trained only on the batches before the bad one.
    twin, _, _, _ = _model("lenet5")
    twin.to("cuda")
    if bad_batch > 1:
        good = data.ArrayDataset(ds.x[:2 * (bad_batch - 1)], ds.y[:2 * (bad_batch - 1)])
        nn.train.Trainer(twin, loss_fn, nn.optim.Adam(twin.parameters(), lr=0.01), task=task,
                         quiet=True).fit(data.DataLoader(good, batch_size=2, device="cuda"),
                                         epochs=1)
    expected = _params(twin)
    with K.strict_transfers() as count:
        with pytest.raises(NonFiniteLossError, match=rf"\(nan\) at epoch 1, batch "
                                                     rf"{bad_batch} of 3"):
            trainer.fit(data.DataLoader(ds, batch_size=2, device="cuda"), epochs=1)
    assert count.to_host == 2               # read at the end of the epoch, not per batch
    got = _params(model)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert opt.found_inf is None            # the trainer's flag does not outlive the epoch


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop", "adagrad"])
def test_optimizer_kernels_skip_on_a_device_flag(kind):
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(10).astype(np.float32)
    g = _dev(rng.standard_normal(10).astype(np.float32))
    # square averages above any gradient average squared (RMSprop centered takes a sqrt)
    bufs = [_dev((2 + rng.random(10)).astype(np.float32))] + [
        _dev((0.5 * rng.random(10)).astype(np.float32)) for _ in range(2)]

    def step(p, found_inf):
        if kind == "sgd":
            K.sgd_step(p, g, bufs[0], 0.1, momentum=0.9, found_inf=found_inf)
        elif kind == "adam":
            K.adam_step(p, g, bufs[0], bufs[1], bufs[2], 1, 0.1, amsgrad=True,
                        found_inf=found_inf)
        elif kind == "rmsprop":
            K.rmsprop_step(p, g, bufs[0], bufs[1], bufs[2], 0.1, momentum=0.9, centered=True,
                           found_inf=found_inf)
        else:
            K.adagrad_step(p, g, bufs[0], 1, 0.1, found_inf=found_inf)

    before = [K.to_host(b).copy() for b in bufs]
    p = _dev(p0)
    with K.strict_transfers() as count:
        step(p, _dev(np.ones(1, np.float32)) > 0)        # a device bool flag, set
    assert count.to_host == 0 and count.to_device == 1  # the flag's own upload only
    np.testing.assert_array_equal(K.to_host(p), p0)
    for b, b0 in zip(bufs, before):
        np.testing.assert_array_equal(K.to_host(b), b0)
    step(p, _dev(np.zeros(1, np.float32)))             # clear: the update happens
    assert not np.array_equal(K.to_host(p), p0)
    with pytest.raises(ValueError, match=r"found_inf: expected an array on the parameter's "
                                         r"device \(cuda\), got one on cpu"):
        step(p, np.zeros(1, np.float32))
    with pytest.raises(ValueError, match=r"found_inf: expected a 1-element array, got shape "
                                         r"\(2,\)"):
        step(p, _dev(np.zeros(2, np.float32)))


def test_the_progress_bar_reads_at_most_bar_reads_times_per_epoch(monkeypatch):
    import io
    import sys

    pytest.importorskip("tqdm")
    from nn import data
    from nn.train import BAR_READS

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2)).to("cuda")
    batches = 4 * BAR_READS
    loader = data.DataLoader(data.blobs(n=batches, num_classes=2, seed=0), batch_size=1,
                             device="cuda")
    trainer = nn.train.Trainer(model, nn.MSELoss(), nn.optim.SGD(model.parameters(), lr=0.01),
                               task="reconstruction", log=lambda line: None)
    trainer.fit(loader, epochs=1)
    with K.strict_transfers() as count:
        trainer.fit(loader, epochs=2)
    assert count.to_host == BAR_READS + 1   # the bar's refreshes and the epoch's end
    assert "loss=" in sys.stderr.getvalue()
