"""nn.optim's SGD, Adam, AdamW, RMSprop and Adagrad against torch's documented update rules
(and torch 2.13 itself: step by step, over hypothesis-drawn configurations, and through state
dicts passed between the two).

(Named test_optimizers.py, not test_optim.py: pytest cannot collect two test modules with one
basename from the package-less tests/kernels and tests/nn folders.)
"""
import inspect
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels as K
import nn

TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


# ---------------------------------------------------------------- NumPy references
class ReferenceSGD:
    """torch.optim.SGD's algorithm as its documentation writes it, in float64."""

    def __init__(self, groups):
        self.groups = groups  # [{"params": [ndarray], "lr", "momentum", ...}]
        self.buf = {}

    def step(self, grads):
        for group in self.groups:
            for p in group["params"]:
                g = grads.get(id(p))
                if g is None:
                    continue
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p
                if group["momentum"]:
                    if id(p) not in self.buf:
                        self.buf[id(p)] = g.copy()
                    else:
                        b = self.buf[id(p)]
                        self.buf[id(p)] = group["momentum"] * b + (1 - group["dampening"]) * g
                    b = self.buf[id(p)]
                    g = g + group["momentum"] * b if group["nesterov"] else b
                p -= group["lr"] * g


class ReferenceAdam:
    """torch.optim.Adam / AdamW's documented algorithm, in float64."""

    def __init__(self, groups, decoupled):
        self.groups = groups
        self.decoupled = decoupled
        self.state = {}

    def step(self, grads):
        for group in self.groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                g = grads.get(id(p))
                if g is None:
                    continue
                s = self.state.setdefault(id(p), dict(t=0, m=0 * p, v=0 * p, vmax=0 * p))
                s["t"] += 1
                if self.decoupled:
                    p *= 1 - lr * wd
                elif wd:
                    g = g + wd * p
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                m_hat = s["m"] / (1 - b1 ** s["t"])
                if group["amsgrad"]:
                    s["vmax"] = np.maximum(s["vmax"], s["v"])
                    v_hat = s["vmax"] / (1 - b2 ** s["t"])
                else:
                    v_hat = s["v"] / (1 - b2 ** s["t"])
                p -= lr * m_hat / (np.sqrt(v_hat) + group["eps"])


class ReferenceRMSprop:
    """torch.optim.RMSprop's documented algorithm, in float64."""

    def __init__(self, groups):
        self.groups = groups
        self.state = {}

    def step(self, grads):
        for group in self.groups:
            for p in group["params"]:
                g = grads.get(id(p))
                if g is None:
                    continue
                g = -g if group["maximize"] else g
                s = self.state.setdefault(id(p), dict(v=0 * p, a=0 * p, b=0 * p))
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p
                alpha = group["alpha"]
                s["v"] = alpha * s["v"] + (1 - alpha) * g * g
                v = s["v"]
                if group["centered"]:
                    s["a"] = alpha * s["a"] + (1 - alpha) * g
                    v = v - s["a"] ** 2
                step = g / (np.sqrt(v) + group["eps"])
                if group["momentum"] > 0:
                    s["b"] = group["momentum"] * s["b"] + step
                    step = s["b"]
                p -= group["lr"] * step


class ReferenceAdagrad:
    """torch.optim.Adagrad's documented algorithm, in float64."""

    def __init__(self, groups, initial_accumulator_value):
        self.groups = groups
        self.init = initial_accumulator_value
        self.state = {}

    def step(self, grads):
        for group in self.groups:
            for p in group["params"]:
                g = grads.get(id(p))
                if g is None:
                    continue
                g = -g if group["maximize"] else g
                s = self.state.setdefault(id(p), dict(t=0, sum=0 * p + self.init))
                s["t"] += 1
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * p
                clr = group["lr"] / (1 + (s["t"] - 1) * group["lr_decay"])
                s["sum"] = s["sum"] + g * g
                p -= clr * g / (np.sqrt(s["sum"]) + group["eps"])


SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]


def _setup(rng, dtype, device):
    values = [rng.standard_normal(s) for s in SHAPES]
    params = [nn.Parameter(K.to_device(v.astype(dtype), device)) for v in values]
    params[3].requires_grad = False  # frozen: must never move, even if it has a gradient
    return values, params


def _grads(rng, step):
    """Gradients per parameter index; parameter 1 has none on step 2 (skipped that step)."""
    grads = {k: rng.standard_normal(s) for k, s in enumerate(SHAPES)}
    if step == 2:
        grads[1] = None
    return grads


def _run(make_ours, make_ref, dtype, device, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    values, params = _setup(rng, dtype, device)
    ref_values = [v.copy() for v in values]
    ours = make_ours(params)
    ref = make_ref(ref_values)
    for step in range(steps):
        grads = _grads(rng, step)
        for k, p in enumerate(params):
            p.grad = None if grads[k] is None else K.to_device(grads[k].astype(dtype), device)
        ours.step()
        ref.step({id(ref_values[k]): g for k, g in grads.items()
                  if g is not None and params[k].requires_grad})
    for k, p in enumerate(params):
        assert p.data.dtype == dtype and K.device_of(p.data) == device
        np.testing.assert_allclose(K.to_host(p.data), ref_values[k], **TOL[dtype],
                                   err_msg=f"parameter {k}")
    np.testing.assert_array_equal(K.to_host(params[3].data), values[3].astype(dtype))
    # Adagrad creates every parameter's state up front (as torch); it never steps the frozen one
    assert params[3] not in ours.state or ours.state[params[3]]["step"] == 0
    return ours, params


SGD_GROUPS = [
    dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True),
    dict(momentum=0.8, dampening=0.25, weight_decay=0.1, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True, maximize=True),
]


def _device_dtype_cases():
    return [pytest.param("cpu", np.float64, id="cpu-f64"),
            pytest.param("cpu", np.float32, id="cpu-f32"),
            pytest.param("cuda", np.float64, id="cuda-f64", marks=pytest.mark.cuda)]


@pytest.fixture
def skip_without():
    def check(device):
        if device not in K.devices():
            pytest.skip("no CUDA device: no GPU with CuPy, and NUMBA_ENABLE_CUDASIM is not set")
    return check


@pytest.mark.parametrize("device,dtype", _device_dtype_cases())
@pytest.mark.parametrize("options", SGD_GROUPS)
def test_sgd_matches_reference_with_groups(device, dtype, options, skip_without):
    skip_without(device)

    def ours(params):
        return nn.optim.SGD([{"params": params[:2], "lr": 0.05},
                             {"params": params[2:], "lr": 0.2, "momentum": 0.5}], lr=0.1,
                            **options)

    def ref(values):
        body = dict(options, params=values[:2], lr=0.05)
        head = dict(options, params=values[2:], lr=0.2, momentum=0.5)
        sign = -1.0 if options.get("maximize") else 1.0
        return _Negated(ReferenceSGD([body, head]), sign)

    opt, params = _run(ours, ref, dtype, device)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.2]
    assert opt.param_groups[1]["momentum"] == 0.5
    assert opt.param_groups[0]["momentum"] == options["momentum"]


class _Negated:
    """A reference run on the negated gradients: what ``maximize=True`` must do."""

    def __init__(self, ref, sign):
        self.ref, self.sign = ref, sign

    def step(self, grads):
        self.ref.step({k: self.sign * g for k, g in grads.items()})


ADAM_OPTIONS = [
    dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True),
    dict(betas=(0.3, 0.9), eps=1e-8, weight_decay=0.1, amsgrad=False),
    dict(betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, amsgrad=True, maximize=True),
]


@pytest.mark.parametrize("device,dtype", _device_dtype_cases())
@pytest.mark.parametrize("options", ADAM_OPTIONS)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_matches_reference_with_groups(device, dtype, options, cls, skip_without):
    skip_without(device)
    decoupled = cls == "AdamW"

    def ours(params):
        return getattr(nn.optim, cls)([{"params": params[:2], "lr": 0.01},
                                       {"params": params[2:], "lr": 0.03}], **options)

    def ref(values):
        ref = ReferenceAdam([dict(options, params=values[:2], lr=0.01),
                             dict(options, params=values[2:], lr=0.03)], decoupled)
        return _Negated(ref, -1.0 if options.get("maximize") else 1.0)

    _run(ours, ref, dtype, device)


RMSPROP_OPTIONS = [
    dict(alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False),
    dict(alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0, centered=True, maximize=False),
    dict(alpha=0.95, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=False, maximize=True),
    dict(alpha=0.8, eps=1e-8, weight_decay=0.1, momentum=0.1, centered=True, maximize=True),
]


@pytest.mark.parametrize("device,dtype", _device_dtype_cases())
@pytest.mark.parametrize("options", RMSPROP_OPTIONS)
def test_rmsprop_matches_reference_with_groups(device, dtype, options, skip_without):
    skip_without(device)

    def ours(params):
        return nn.optim.RMSprop([{"params": params[:2], "lr": 0.01},
                                 {"params": params[2:], "lr": 0.003, "momentum": 0.5}],
                                **options)

    def ref(values):
        return ReferenceRMSprop([dict(options, params=values[:2], lr=0.01),
                                 dict(options, params=values[2:], lr=0.003, momentum=0.5)])

    opt, params = _run(ours, ref, dtype, device)
    # the second group's momentum (0.5) creates buffers even where the first group's is 0
    assert "momentum_buffer" in opt.state[params[2]]
    assert ("momentum_buffer" in opt.state[params[0]]) == (options["momentum"] > 0)
    assert ("grad_avg" in opt.state[params[0]]) == options["centered"]


ADAGRAD_OPTIONS = [
    dict(lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, maximize=False),
    dict(lr_decay=0.5, weight_decay=0.1, initial_accumulator_value=0, eps=1e-10,
         maximize=False),
    dict(lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-6,
         maximize=True),
]


@pytest.mark.parametrize("device,dtype", _device_dtype_cases())
@pytest.mark.parametrize("options", ADAGRAD_OPTIONS)
def test_adagrad_matches_reference_with_groups(device, dtype, options, skip_without):
    skip_without(device)

    def ours(params):
        return nn.optim.Adagrad([{"params": params[:2], "lr": 0.1},
                                 {"params": params[2:], "lr": 0.03, "lr_decay": 0.2}],
                                **options)

    def ref(values):
        group = {k: v for k, v in options.items() if k != "initial_accumulator_value"}
        return ReferenceAdagrad([dict(group, params=values[:2], lr=0.1),
                                 dict(group, params=values[2:], lr=0.03, lr_decay=0.2)],
                                options["initial_accumulator_value"])

    _run(ours, ref, dtype, device)


def test_defaults_are_torchs():
    """Without torch: the defaults torch 2.13 documents, in its group-key order."""
    p = [nn.Parameter(np.zeros(3))]
    groups = {name: {k: v for k, v in getattr(nn.optim, name)(p).param_groups[0].items()
                     if k != "params"}
              for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")}
    assert list(groups["SGD"].items()) == list(dict(
        lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False,
        foreach=None, differentiable=False, fused=None).items())
    adam = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                maximize=False, foreach=None, capturable=False, differentiable=False,
                fused=None, decoupled_weight_decay=False)
    assert list(groups["Adam"].items()) == list(adam.items())
    assert list(groups["AdamW"].items()) == list(dict(adam, weight_decay=1e-2,
                                                      decoupled_weight_decay=True).items())
    assert list(groups["RMSprop"].items()) == list(dict(
        lr=1e-2, momentum=0, alpha=0.99, eps=1e-8, centered=False, weight_decay=0,
        capturable=False, foreach=None, maximize=False, differentiable=False).items())
    assert list(groups["Adagrad"].items()) == list(dict(
        lr=1e-2, lr_decay=0, eps=1e-10, weight_decay=0, initial_accumulator_value=0,
        foreach=None, maximize=False, differentiable=False, fused=None).items())


OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_signature_and_group_keys_are_torchs(name):
    """Same argument names, order, kinds and defaults as torch 2.13, and the same groups."""
    torch = pytest.importorskip("torch")
    ours_sig = inspect.signature(getattr(nn.optim, name))
    theirs_sig = inspect.signature(getattr(torch.optim, name))
    assert [(q.name, q.kind, q.default) for q in ours_sig.parameters.values()] == [
        (q.name, q.kind, q.default) for q in theirs_sig.parameters.values()]
    ours = getattr(nn.optim, name)([nn.Parameter(np.zeros(3))], lr=0.1)
    theirs = getattr(torch.optim, name)([torch.zeros(3, requires_grad=True)], lr=0.1)
    strip = lambda g: [(k, v) for k, v in g.items() if k != "params"]  # noqa: E731
    assert strip(ours.state_dict()["param_groups"][0]) == strip(
        theirs.state_dict()["param_groups"][0])


# ---------------------------------------------------------------- against torch itself
def _torch_run(lib, cls_name, options, dtype, steps=6, nudge=False):
    """Parameters after ``steps`` steps of ``lib`` ("ours" or "torch"), as float64 arrays.

    Two groups, one parameter without a gradient on step 3.  Start values and gradients are
    drawn in float64 and rounded to ``dtype``, so runs in both dtypes see the same numbers;
    ``nudge`` moves each of them one ulp up.
    """
    up = (lambda a: np.nextafter(a, np.inf)) if nudge else (lambda a: a)  # noqa: E731
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    values = [up(rng.standard_normal(s).astype(np.float32).astype(dtype)) for s in SHAPES[:3]]
    if lib == "torch":
        params = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    else:
        params = [nn.Parameter(v.copy()) for v in values]
    groups = [{"params": params[:1], "lr": 0.02}, {"params": params[1:]}]
    opt = getattr(torch.optim if lib == "torch" else nn.optim, cls_name)(groups, **options)
    for step in range(steps):
        for k, p in enumerate(params):
            g = up(rng.standard_normal(p.shape).astype(np.float32).astype(dtype))
            g = None if step == 3 and k == 2 else g
            p.grad = torch.tensor(g) if lib == "torch" and g is not None else g
        opt.step()
    out = [p.detach().numpy() if lib == "torch" else p.data for p in params]
    assert all(a.dtype == dtype for a in out)
    return [a.astype(np.float64) for a in out]


def _torch_case(cls_name, options, dtype):
    ours = _torch_run("ours", cls_name, options, dtype)
    theirs = _torch_run("torch", cls_name, options, dtype)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def _torch_case_conditioned(cls_name, options):
    """float32 against torch 2.13 where the configuration may be ill-conditioned.

    Some configurations amplify rounding errors: centered RMSprop with a small ``alpha``
    takes the square root of ``s - a*a``, a difference of nearly equal numbers, and momentum
    carries the error on.  There float32 results (torch's included) are off the float64 ones
    by far more than a few ulps, and two correct float32 implementations that round a little
    differently (torch's compiler may fuse multiply-adds, ours does not) disagree as much.
    The amplification is measured, not guessed: ``spread`` is how far torch's float32 result
    moves when every input moves by one ulp.  Ours must be within a few times that (plus
    torch's own float32 error) of torch in float64 from the same inputs; where the
    configuration is well-conditioned this is the plain float32 tolerance.
    """
    truth = _torch_run("torch", cls_name, options, np.float64)
    theirs = _torch_run("torch", cls_name, options, np.float32)
    nudged = _torch_run("torch", cls_name, options, np.float32, nudge=True)
    ours = _torch_run("ours", cls_name, options, np.float32)
    for k, (a, b, c, t) in enumerate(zip(ours, theirs, nudged, truth)):
        amplified = np.max(np.abs(b - t)) + np.max(np.abs(c - b))
        bound = 4 * amplified + TOL[np.float32]["rtol"] * np.max(np.abs(t)) + 1e-6
        assert np.max(np.abs(a - t)) <= bound, (k, np.max(np.abs(a - t)), amplified)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cls_name,options", [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-2)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True, eps=1e-6)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, maximize=True)),
    ("RMSprop", dict()),
    ("RMSprop", dict(lr=1e-3, weight_decay=0.1)),
    ("RMSprop", dict(weight_decay=0.1, centered=True)),
    ("RMSprop", dict(maximize=True, weight_decay=0.1)),
    ("RMSprop", dict(weight_decay=0.1, centered=True, momentum=0.1, maximize=True)),
    ("RMSprop", dict(alpha=0.3, momentum=0.9, eps=1e-6)),
    ("Adagrad", dict()),
    ("Adagrad", dict(weight_decay=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1, weight_decay=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, eps=1e-6)),
])
def test_matches_torch(cls_name, options, dtype):
    _torch_case(cls_name, options, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", OPTIMIZERS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_hypothesis_configurations_match_torch(name, dtype, data):
    """100 random hyperparameter combinations per optimizer and dtype, six steps against
    torch (two parameter groups, one parameter without a gradient on one step); in float32
    relative to torch's own float32 error (see _torch_case_conditioned)."""
    pytest.importorskip("torch")
    unit = st.floats(0.0, 0.95)
    options = dict(lr=data.draw(st.floats(1e-4, 0.2)), maximize=data.draw(st.booleans()),
                   weight_decay=data.draw(st.sampled_from([0.0, 1e-3, 0.1])))
    if name == "SGD":
        options["momentum"] = data.draw(st.sampled_from([0.0, 0.5, 0.9]))
        if options["momentum"] and data.draw(st.booleans()):
            options["nesterov"] = True
        else:
            options["dampening"] = data.draw(unit)
    elif name in ("Adam", "AdamW"):
        options.update(betas=(data.draw(unit), data.draw(st.floats(0.5, 0.999))),
                       eps=data.draw(st.sampled_from([1e-8, 1e-6])),
                       amsgrad=data.draw(st.booleans()))
    elif name == "RMSprop":
        options.update(alpha=data.draw(st.floats(0.05, 0.999)),
                       eps=data.draw(st.sampled_from([1e-8, 1e-6, 1e-3])),
                       momentum=data.draw(st.sampled_from([0.0, 0.1, 0.9])),
                       centered=data.draw(st.booleans()))
    else:
        options.update(lr_decay=data.draw(st.sampled_from([0.0, 0.1, 1.0])),
                       initial_accumulator_value=data.draw(st.sampled_from([0.0, 0.1, 1.0])),
                       eps=data.draw(st.sampled_from([1e-10, 1e-6])))
    if dtype == np.float64:
        _torch_case(name, options, dtype)
    else:
        _torch_case_conditioned(name, options)


# ---------------------------------------------------------------- state dicts
def _train(opt_factory, params, rng_seed, steps):
    rng = np.random.default_rng(rng_seed)
    opt = opt_factory(params) if callable(opt_factory) else opt_factory
    for _ in range(steps):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(p.dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("factory", [
    lambda ps: nn.optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.3}], lr=0.1,
                            momentum=0.9, nesterov=True),
    lambda ps: nn.optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.01),
    lambda ps: nn.optim.AdamW([{"params": ps[:2], "lr": 0.02}, {"params": ps[2:]}]),
    lambda ps: nn.optim.RMSprop([{"params": ps[:1], "momentum": 0.9}, {"params": ps[1:]}],
                                centered=True, maximize=True),
    lambda ps: nn.optim.Adagrad([{"params": ps[:2], "lr_decay": 0.1}, {"params": ps[2:]}],
                                initial_accumulator_value=0.1),
], ids=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_state_dict_round_trip_continues_exactly(factory, tmp_path):
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]]

    # Uninterrupted: six steps with one optimizer.
    uninterrupted = [nn.Parameter(v.copy()) for v in start]
    opt_a = factory(uninterrupted)
    _train(opt_a, uninterrupted, 1, 3)
    _train(opt_a, uninterrupted, 2, 3)

    # Interrupted: three steps, save everything through a checkpoint, rebuild, three more.
    first = [nn.Parameter(v.copy()) for v in start]
    opt_b = factory(first)
    _train(opt_b, first, 1, 3)
    sd = opt_b.state_dict()
    json.dumps(sd["param_groups"])  # hyperparameters are JSON-able
    assert all(isinstance(v, np.ndarray) or isinstance(v, int)
               for s in sd["state"].values() for v in s.values())
    nn.save({"params": [p.data for p in first], "optimizer": sd}, tmp_path / "ck.npz")
    ck = nn.load(tmp_path / "ck.npz")
    resumed = [nn.Parameter(a) for a in ck["params"]]
    opt_c = factory(resumed)
    opt_c.load_state_dict(ck["optimizer"])
    _train(opt_c, resumed, 2, 3)
    for a, b in zip(uninterrupted, resumed):
        np.testing.assert_array_equal(a.data, b.data)
    hyper = lambda opt: [{k: v for k, v in g.items() if k != "params"}  # noqa: E731
                         for g in opt.param_groups]
    assert hyper(opt_c) == hyper(opt_a)


def _to_numpy(obj):
    """A torch state dict with every tensor as a NumPy array (what a converter would write)."""
    torch = pytest.importorskip("torch")
    if isinstance(obj, torch.Tensor):
        return obj.detach().numpy().copy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


def _to_torch(obj):
    torch = pytest.importorskip("torch")
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_torch(v) for v in obj]
    return obj


TORCH_STATE_CASES = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2, maximize=True)),
]


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
@pytest.mark.parametrize("cls_name,options", TORCH_STATE_CASES)
def test_state_dicts_travel_between_torch_and_ours(cls_name, options, direction):
    """Three steps in one library, the state dict moves (as NumPy arrays), three more in the
    other: the parameters follow torch's uninterrupted run, and both state dicts have the same
    keys at every level."""
    torch = pytest.importorskip("torch")
    dtype = np.float64
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s).astype(dtype) for s in SHAPES[:3]]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES[:3]] for _ in range(6)]
    groups = lambda ps: [{"params": ps[:1], "lr": 0.02}, {"params": ps[1:]}]  # noqa: E731

    def torch_run(values, steps, state=None):
        tps = [torch.tensor(v.copy(), requires_grad=True) for v in values]
        opt = getattr(torch.optim, cls_name)(groups(tps), **options)
        if state is not None:
            opt.load_state_dict(state)
        for gs in steps:
            for tp, g in zip(tps, gs):
                tp.grad = torch.tensor(g)
            opt.step()
        return [tp.detach().numpy().copy() for tp in tps], opt

    def our_run(values, steps, state=None):
        ps = [nn.Parameter(v.copy()) for v in values]
        opt = getattr(nn.optim, cls_name)(groups(ps), **options)
        if state is not None:
            opt.load_state_dict(state)
        for gs in steps:
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
        return [p.data.copy() for p in ps], opt

    want, uninterrupted = torch_run(start, grads)
    if direction == "torch_to_ours":
        middle, first = torch_run(start, grads[:3])
        got, second = our_run(middle, grads[3:], _to_numpy(first.state_dict()))
    else:
        middle, first = our_run(start, grads[:3])
        sd = first.state_dict()
        json.dumps(sd["param_groups"])
        got, second = torch_run(middle, grads[3:], _to_torch(sd))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # the continued run's state is the uninterrupted torch run's, key for key
    ours, theirs = _to_numpy(second.state_dict()), _to_numpy(uninterrupted.state_dict())
    assert list(ours) == list(theirs) == ["state", "param_groups"]
    assert sorted(ours["state"]) == sorted(theirs["state"])
    for k in ours["state"]:
        assert sorted(ours["state"][k]) == sorted(theirs["state"][k])
        for name, value in ours["state"][k].items():
            np.testing.assert_allclose(value, theirs["state"][k][name], rtol=1e-12,
                                       atol=1e-14, err_msg=f"state[{k}][{name!r}]")
    assert ours["param_groups"] == theirs["param_groups"]
    # and ours has the same layout as torch's (first is the optimizer that was saved)
    saved_ours = _to_numpy(first.state_dict() if direction == "ours_to_torch"
                           else second.state_dict())
    assert [list(g) for g in saved_ours["param_groups"]] == [
        list(g) for g in theirs["param_groups"]]


def test_a_state_dict_without_the_new_options_still_loads():
    """Checkpoints written before maximize and torch's switches existed take the defaults."""
    ps = [nn.Parameter(np.ones(3))]
    old = {"state": {0: {"step": np.int64(2), "exp_avg": np.full(3, 0.5),
                         "exp_avg_sq": np.full(3, 0.25)}},
           "param_groups": [{"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8,
                             "weight_decay": 0.0, "amsgrad": False,
                             "decoupled_weight_decay": False, "params": [0]}]}
    opt = nn.optim.Adam(ps, maximize=True)
    opt.load_state_dict(old)
    group = opt.param_groups[0]
    assert group["maximize"] is True and group["foreach"] is None and group["betas"] == (
        0.9, 0.999)
    assert opt.state[ps[0]]["step"] == 2
    ps[0].grad = np.ones(3)
    opt.step()
    assert opt.state[ps[0]]["step"] == 3


def test_adagrad_state_exists_from_the_start_as_torchs():
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2, np.float32))]
    opt = nn.optim.Adagrad([{"params": ps[:1]}, {"params": ps[1:],
                                                  "initial_accumulator_value": 5.0}],
                           initial_accumulator_value=0.5)
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and sd["state"][0]["step"] == 0
    # torch fills every sum with the constructor's value, even for a group naming its own
    np.testing.assert_array_equal(sd["state"][1]["sum"], np.full(2, 0.5, np.float32))
    assert sd["state"][1]["sum"].dtype == np.float32
    late = nn.Parameter(np.ones(4))
    opt.add_param_group({"params": [late]})
    late.grad = np.ones(4)
    opt.step()
    np.testing.assert_allclose(opt.state[late]["sum"], np.full(4, 1.5))


def test_state_dict_layout_is_torchs():
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2)), nn.Parameter(np.ones(4))]
    opt = nn.optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5}])
    ps[1].grad = np.ones(2)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert list(sd["state"]) == [1]
    assert sorted(sd["state"][1]) == ["exp_avg", "exp_avg_sq", "step"]
    assert sd["state"][1]["step"] == 1
    assert sd["param_groups"][1]["lr"] == 0.5
    # the state dict holds copies, not the live buffers
    sd["state"][1]["exp_avg"][...] = 99
    assert not np.any(opt.state[ps[1]]["exp_avg"] == 99)


def test_load_state_dict_learning_rate_and_mismatches():
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))]
    opt = nn.optim.SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.05
    other = nn.optim.SGD([nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))], lr=0.1,
                         momentum=0.9)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="group 0 holds 2 parameters.*holds 1"):
        nn.optim.SGD([nn.Parameter(np.ones(3))], momentum=0.9).load_state_dict(sd)
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer has 1"):
        sd2 = opt.state_dict()
        sd2["param_groups"].append(dict(sd2["param_groups"][0], params=[]))
        other.load_state_dict(sd2)
    wrong = nn.optim.SGD([nn.Parameter(np.ones(3)), nn.Parameter(np.ones(5))], momentum=0.9)
    with pytest.raises(ValueError, match=r"state\[1\]\['momentum_buffer'\] has shape \(2,\), "
                                         r"parameter has \(5,\)"):
        wrong.load_state_dict(sd)
    assert wrong.state == {}  # nothing changed by the failed load


@pytest.mark.cuda
def test_state_moves_to_the_parameters_device_and_dtype(cuda_device):
    host = [nn.Parameter(np.ones(4)), nn.Parameter(np.ones(3))]
    opt = nn.optim.Adam(host, lr=0.1)
    for p in host:
        p.grad = np.full(p.shape, 0.5)
    opt.step()
    dev = [nn.Parameter(K.to_device(p.data.astype(np.float32), cuda_device)) for p in host]
    opt2 = nn.optim.Adam(dev, lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    for p in dev:
        for name in ("exp_avg", "exp_avg_sq"):
            buf = opt2.state[p][name]
            assert K.device_of(buf) == cuda_device and buf.dtype == np.float32
        p.grad = K.to_device(np.full(p.shape, 0.5, np.float32), cuda_device)
    opt2.step()
    opt.step()
    for a, b in zip(host, dev):
        np.testing.assert_allclose(K.to_host(b.data), a.data, rtol=1e-6)


# ---------------------------------------------------------------- behaviour and errors
def test_zero_grad():
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2))]
    opt = nn.optim.SGD(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones(p.shape)
    opt.zero_grad(set_to_none=False)
    assert all(np.all(p.grad == 0) for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)
    opt.step()  # nothing to do: no gradients
    assert all(np.all(p.data == 1) for p in ps)


def test_step_returns_closure_value_and_minimises():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 3))
    target = rng.standard_normal(8)
    for make in (lambda ps: nn.optim.SGD(ps, lr=0.02, momentum=0.9),
                 lambda ps: nn.optim.Adam(ps, lr=0.05)):
        w = nn.Parameter(np.zeros(3))
        opt = make([w])

        def closure():
            r = a @ w.data - target
            w.grad = a.T @ r
            return 0.5 * float(r @ r)

        first = opt.step(closure)
        for _ in range(300):
            last = opt.step(closure)
        best = np.linalg.lstsq(a, target, rcond=None)[0]
        assert last < first
        np.testing.assert_allclose(w.data, best, atol=1e-3)


def test_named_parameters_and_add_param_group():
    ps = [nn.Parameter(np.ones(3)), nn.Parameter(np.ones(2)), nn.Parameter(np.ones(1))]
    opt = nn.optim.SGD([("body.weight", ps[0])], lr=0.1)
    assert opt.param_groups[0]["param_names"] == ["body.weight"]
    opt.add_param_group({"params": [("head.weight", ps[1])], "lr": 0.5})
    assert opt.param_groups[1]["params"] == [ps[1]] and opt.param_groups[1]["lr"] == 0.5
    assert opt.state_dict()["param_groups"][1]["param_names"] == ["head.weight"]
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [("again", ps[0])]})
    # torch's rule: every group named or none (state dicts match parameters by position)
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without "
                                         "names. cannot add param group without names"):
        opt.add_param_group({"params": ps[2]})
    unnamed = nn.optim.SGD([ps[0]])
    unnamed.add_param_group({"params": ps[1], "lr": 0.5})  # a bare Parameter in a group is fine
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without "
                                         "names. cannot add param group with names"):
        unnamed.add_param_group({"params": [("c", ps[2])]})
    assert len(unnamed.param_groups) == 2


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_torch_error_inputs_are_rejected_alike(name):
    """The error inputs torch 2.13's OptimInfo gives every optimizer, with torch's wording."""
    cls = getattr(nn.optim, name)
    a, b = nn.Parameter(np.ones((1, 1))), nn.Parameter(np.ones((1, 1)))
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an "
                                        "iterable of Parameters or dicts, but got a single"):
        cls(a)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter "
                                         "group"):
        cls([{"params": a}, {"params": a}])
    with pytest.raises(ValueError, match="all optimizer params should be with/without names. "
                                         "Some param names are missing"):
        cls([("weight", a), b])
    with pytest.raises(ValueError, match="all optimizer param groups should be with/without "
                                         "names. cannot add param group with names to the "
                                         "optimizer"):
        cls([{"params": [a], "lr": 1e-2}, {"params": [("weight", b)]}])
    with pytest.raises(ValueError, match="Invalid learning rate: -0.5"):
        cls([a], lr=-0.5)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        cls([a], lr=np.array([0.001, 0.001]))
    with pytest.raises(TypeError, match="lr: expected a number, got a one-element ndarray"):
        cls([a], lr=np.array(0.001))  # a torch-only form: refused, named
    with pytest.raises(NotImplementedError, match="differentiable=True"):
        cls([a], differentiable=True)
    with pytest.raises(TypeError, match="maximize: expected True or False, got 'yes'"):
        cls([a], maximize="yes")


def test_optimizer_specific_torch_errors():
    p = [nn.Parameter(np.ones(2))]
    with pytest.raises(ValueError, match="Invalid momentum value: -1.0"):
        nn.optim.RMSprop(p, lr=1e-2, momentum=-1.0)
    with pytest.raises(ValueError, match="Invalid alpha value: -0.1"):
        nn.optim.RMSprop(p, alpha=-0.1)
    with pytest.raises(ValueError, match="Invalid epsilon value: -1"):
        nn.optim.RMSprop(p, eps=-1)
    with pytest.raises(ValueError, match="Invalid lr_decay value: -0.5"):
        nn.optim.Adagrad(p, lr=1e-2, lr_decay=-0.5)
    with pytest.raises(ValueError, match="Invalid initial_accumulator_value value: -1"):
        nn.optim.Adagrad(p, initial_accumulator_value=-1)
    with pytest.raises(ValueError, match="`fused` and `foreach` cannot be `True` together"):
        nn.optim.Adagrad(p, foreach=True, fused=True)
    with pytest.raises(ValueError, match="`fused` does not support `differentiable`"):
        nn.optim.Adam(p, fused=True, differentiable=True)
    with pytest.raises(NotImplementedError, match="capturable=True"):
        nn.optim.RMSprop(p, capturable=True)
    with pytest.raises(TypeError, match="centered: expected True or False"):
        nn.optim.RMSprop(p, centered=None)
    # implementation switches with no effect on the result are accepted and kept
    opt = nn.optim.AdamW(p, foreach=True)
    assert opt.param_groups[0]["foreach"] is True
    assert nn.optim.SGD(p, fused=True).param_groups[0]["fused"] is True


def test_bad_arguments():
    p = nn.Parameter(np.ones(3))
    with pytest.raises(TypeError, match="single Parameter"):
        nn.optim.SGD(p)  # before this release a bare Parameter was quietly wrapped
    with pytest.raises(ValueError, match="empty parameter list"):
        nn.optim.SGD([])
    with pytest.raises(TypeError, match=r"params'\]\[0\].*nn.Parameter.*ndarray"):
        nn.optim.SGD([np.ones(3)])
    with pytest.raises(ValueError, match="appears more than once"):
        nn.optim.SGD([p, p])
    with pytest.raises(TypeError, match="not a set"):
        nn.optim.SGD({p})
    with pytest.raises(ValueError, match="Invalid learning rate"):
        nn.optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        nn.optim.SGD([p], nesterov=True)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        nn.optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon"):
        nn.optim.AdamW([p], eps=-1e-8)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        nn.optim.SGD([{"params": [p], "lr": -0.5}])


def test_gradient_dtype_mismatch_is_reported():
    p = nn.Parameter(np.ones(3, np.float32))
    p.grad = np.ones(3)
    with pytest.raises(TypeError, match="param.*float32.*grad.*float64"):
        nn.optim.SGD([p], lr=0.1).step()


def test_repr_lists_groups():
    opt = nn.optim.SGD([nn.Parameter(np.ones(1))], lr=0.5, momentum=0.9)
    text = repr(opt)
    assert text.startswith("SGD (") and "Parameter Group 0" in text and "lr: 0.5" in text
