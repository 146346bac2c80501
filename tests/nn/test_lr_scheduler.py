"""Learning-rate schedules against torch's closed-form formulas, and torch itself when present."""
import json
import math

import numpy as np
import pytest

import nn
from nn.optim import lr_scheduler as S

BASE = (0.1, 0.02)  # two parameter groups with their own rates


def _optimizer(cls=None):
    cls = cls or nn.optim.SGD
    return cls([{"params": [nn.Parameter(np.ones(2))], "lr": BASE[0]},
                {"params": [nn.Parameter(np.ones(3))], "lr": BASE[1]}], lr=0.5)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


# Closed forms from torch's documentation, per epoch t and base rate b.
CASES = {
    "step": (lambda o: S.StepLR(o, step_size=3, gamma=0.5),
             lambda b, t: b * 0.5 ** (t // 3)),
    "exponential": (lambda o: S.ExponentialLR(o, gamma=0.9),
                    lambda b, t: b * 0.9 ** t),
    "cosine": (lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
               lambda b, t: 1e-3 + (b - 1e-3) * (1 + math.cos(math.pi * t / 10)) / 2),
    "linear": (lambda o: S.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=4),
               lambda b, t: b * (0.25 + 0.75 * min(t, 4) / 4)),
    "linear-decay": (lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=6),
                     lambda b, t: b * (1.0 - 0.9 * min(t, 6) / 6)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_follows_closed_form(name):
    make, formula = CASES[name]
    opt = _optimizer()
    sched = make(opt)
    for t in range(25):  # past T_max: the cosine climbs back up, as torch's does
        want = [formula(b, t) for b in BASE]
        np.testing.assert_allclose(sched.get_last_lr(), want, rtol=1e-12, atol=1e-15)
        assert _lrs(opt) == sched.get_last_lr()
        opt.step()
        sched.step()
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASE)


def test_warmup_then_cosine():
    opt = _optimizer()
    sched = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=5),
                                 S.CosineAnnealingLR(opt, T_max=10)], milestones=[5])
    seen = []
    for _ in range(16):
        seen.append(sched.get_last_lr()[0])
        sched.step()
    warm = [0.1 * (0.1 + 0.9 * t / 5) for t in range(5)]
    cos = [0.1 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    np.testing.assert_allclose(seen, warm + cos, rtol=1e-12, atol=1e-15)


def test_reduce_on_plateau_by_hand():
    opt = _optimizer()
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=[0.03, 0.0])
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.5, 0.6]
    history = []
    for m in metrics:
        sched.step(m)
        history.append(sched.get_last_lr())
    # best 0.9 at step 2; the 3rd bad step after it (5) cuts; the cooldown swallows step 6;
    # the 3rd bad step after that (9) cuts again, the first group stopping at its min_lr.
    want = [[0.1, 0.02]] * 4 + [[0.05, 0.01]] * 4 + [[0.03, 0.005]] * 3
    np.testing.assert_allclose(history, want, rtol=1e-15)


def test_reduce_on_plateau_max_mode_and_abs_threshold():
    opt = _optimizer()
    sched = S.ReduceLROnPlateau(opt, mode="max", threshold=0.1, threshold_mode="abs",
                                patience=0)
    sched.step(1.0)   # improvement over -inf
    sched.step(1.05)  # not better by more than 0.1: cut
    assert sched.get_last_lr() == pytest.approx([0.01, 0.002])
    sched.step(1.2)   # better by 0.15: kept
    assert sched.get_last_lr() == pytest.approx([0.01, 0.002])


def test_schedules_drive_the_optimizer():
    p = nn.Parameter(np.zeros(1))
    opt = nn.optim.SGD([p], lr=1.0)
    sched = S.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(4):
        p.grad = np.ones(1)
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.data, [-(1 + 1 + 0.1 + 0.1)], rtol=1e-14)


# ---------------------------------------------------------------- against torch
TORCH_CASES = {
    "step": lambda m, o: m.StepLR(o, step_size=3, gamma=0.5),
    "exponential": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "cosine": lambda m, o: m.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
    "linear": lambda m, o: m.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6),
    "warmup-cosine": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=4), m.CosineAnnealingLR(o, T_max=9)],
        milestones=[4]),
    "warmup-step": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=1.5), m.StepLR(o, step_size=2, gamma=0.3),
            m.LinearLR(o, start_factor=0.5, total_iters=3)], milestones=[3, 8]),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    make = TORCH_CASES[name]
    ours_opt = _optimizer()
    w = [torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]
    theirs_opt = torch.optim.SGD([{"params": [w[0]], "lr": BASE[0]},
                                  {"params": [w[1]], "lr": BASE[1]}], lr=0.5)
    ours, theirs = make(S, ours_opt), make(torch.optim.lr_scheduler, theirs_opt)
    for _ in range(30):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-13, abs=1e-16)
        assert _lrs(ours_opt) == pytest.approx(_lrs(theirs_opt), rel=1e-13, abs=1e-16)
        theirs_opt.step()
        ours.step()
        theirs.step()


@pytest.mark.parametrize("kwargs", [
    dict(factor=0.5, patience=2),
    dict(mode="max", factor=0.3, patience=1, threshold=0.05, cooldown=2),
    dict(factor=0.2, patience=0, threshold_mode="abs", threshold=0.01, min_lr=0.004),
])
def test_reduce_on_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    ours_opt = _optimizer()
    theirs_opt = torch.optim.SGD([{"params": [torch.zeros(2)], "lr": BASE[0]},
                                  {"params": [torch.zeros(3)], "lr": BASE[1]}])
    ours = S.ReduceLROnPlateau(ours_opt, **kwargs)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs_opt, **kwargs)
    metrics = np.random.default_rng(0).random(40).cumsum() * 0.1 % 1.0
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert ours.get_last_lr() == theirs.get_last_lr()


# ---------------------------------------------------------------- state
RESUME = {
    "step": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "cosine": lambda o: S.CosineAnnealingLR(o, T_max=6, eta_min=1e-3),
    "linear": lambda o: S.LinearLR(o, start_factor=0.3, total_iters=8),
    "warmup-cosine": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=3), S.CosineAnnealingLR(o, T_max=9)],
        milestones=[3]),
    "plateau": lambda o: S.ReduceLROnPlateau(o, patience=1, factor=0.5),
}


def _advance(sched, opt, epochs, start):
    out = []
    for t in range(start, start + epochs):
        opt.step()
        if isinstance(sched, S.ReduceLROnPlateau):
            sched.step(1.0 + 0.1 * (t % 3))
        else:
            sched.step()
        out.append(sched.get_last_lr())
    return out


@pytest.mark.parametrize("name", list(RESUME))
def test_state_dict_round_trip_continues_exactly(name, tmp_path):
    opt_a = _optimizer()
    sched_a = RESUME[name](opt_a)
    first = _advance(sched_a, opt_a, 5, 0)
    straight = _advance(sched_a, opt_a, 8, 5)

    opt_b = _optimizer()
    sched_b = RESUME[name](opt_b)
    assert _advance(sched_b, opt_b, 5, 0) == first
    state = sched_b.state_dict()
    json.dumps(state)  # numbers and lists only (inf allowed by Python's json)
    nn.save({"optimizer": opt_b.state_dict(), "scheduler": state}, tmp_path / "s.ckpt")
    ck = nn.load(tmp_path / "s.ckpt")

    # torch's documented order: build the schedule, then load the optimizer, then the schedule
    opt_c = _optimizer()
    sched_c = RESUME[name](opt_c)
    opt_c.load_state_dict(ck["optimizer"])
    sched_c.load_state_dict(ck["scheduler"])
    assert _advance(sched_c, opt_c, 8, 5) == straight
    assert _lrs(opt_c) == _lrs(opt_a)


def test_bad_arguments():
    opt = _optimizer()
    with pytest.raises(TypeError, match="optimizer: expected an nn.optim.Optimizer"):
        S.StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="step_size: expected a positive integer"):
        S.StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max"):
        S.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="start_factor"):
        S.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="factor: expected a value < 1.0"):
        S.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(ValueError, match="mode"):
        S.ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="min_lr: expected 2 values"):
        S.ReduceLROnPlateau(opt, min_lr=[0.1])
    with pytest.raises(ValueError, match="milestones: expected 1"):
        S.SequentialLR(opt, [S.StepLR(opt, 2), S.StepLR(opt, 3)], milestones=[])
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(nn.optim.SGD([nn.Parameter(np.ones(1))]), step_size=2, last_epoch=4)
    with pytest.raises(ValueError, match="unexpected keys"):
        S.StepLR(opt, step_size=2).load_state_dict(S.CosineAnnealingLR(opt, 5).state_dict())


def test_both_import_paths():
    assert nn.optim.StepLR is nn.optim.lr_scheduler.StepLR
    assert nn.optim.LinearLR is S.LinearLR
