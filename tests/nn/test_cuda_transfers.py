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
