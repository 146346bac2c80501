"""The README's "Differences from PyTorch" table says only what the code does.

Every ``nn.…``/``kernels.…`` name the table mentions must exist, the DataLoader defaults it
lists must be the signature's (and torch's, when installed), and each behaviour row is run.
"""
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import kernels
import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _section(title):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _table_rows():
    rows = {}
    for line in _section("Differences from PyTorch").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


def _names(text):
    """Dotted ``nn.``/``kernels.`` names inside backticks, without call arguments."""
    found = set()
    for code in re.findall(r"`([^`]+)`", text):
        for name in re.findall(r"\b((?:nn|kernels)(?:\.[A-Za-z_]\w*)+)", code):
            found.add(name)
    return found


def _resolve(name):
    obj = {"nn": nn, "kernels": kernels}[name.split(".")[0]]
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def test_the_table_has_the_rows_the_issue_asks_for():
    rows = _table_rows()
    for key in ("gradients", "the loss", "forward and backward", "`DataLoader` defaults",
                "default seeding", "dtypes", "devices"):
        assert key in rows, sorted(rows)


def test_every_name_the_table_and_limitations_mention_exists():
    names = _names(_section("Differences from PyTorch")) | _names(_section("Limitations"))
    assert {"nn.no_grad", "nn.manual_seed", "nn.data.DataLoader", "kernels.devices"} <= names
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except AttributeError:
            missing.append(name)
    assert not missing, f"README names that do not exist: {missing}"


def test_dataloader_defaults_are_the_ones_listed():
    here = _table_rows()["`DataLoader` defaults"][1]
    listed = dict(re.findall(r"(\w+)=([^,)`]+)", here.split("`nn.data.DataLoader(")[1]))
    signature = inspect.signature(nn.data.DataLoader).parameters
    assert listed, here
    for key, text in listed.items():
        assert signature[key].default == eval(text), (key, text)  # literals only: 64, "cpu"
    torch = pytest.importorskip("torch")
    theirs = _table_rows()["`DataLoader` defaults"][0]
    torch_sig = inspect.signature(torch.utils.data.DataLoader).parameters
    for key, text in re.findall(r"`(\w+)=([^`]+)`", theirs):
        assert torch_sig[key].default == eval(text), (key, text)


def test_loss_row_model_backward_takes_the_loss_gradient():
    rng = np.random.default_rng(0)
    model, loss_fn = nn.Linear(4, 3), nn.CrossEntropyLoss()
    x, labels = rng.standard_normal((5, 4)).astype(np.float32), rng.integers(0, 3, 5)
    loss = loss_fn(model(x), labels)
    assert np.ndim(loss) == 0 and isinstance(float(loss), float)
    grad_pred = loss_fn.backward()
    assert grad_pred.shape == (5, 3)
    assert model.backward(grad_pred).shape == x.shape
    assert model.weight.grad is not None


def test_forward_backward_row_contexts_stack_and_no_grad_saves_nothing():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((5, 3))
    g_a, g_b = rng.standard_normal((2, 2)), rng.standard_normal((5, 2))
    model(a)
    model(b)
    grad_b = model.backward(g_b)   # pops b's context first
    grad_a = model.backward(g_a)
    model(a)
    assert np.allclose(grad_a, model.backward(g_a)) and grad_b.shape == b.shape
    with nn.no_grad():
        model(a)
    with pytest.raises(nn.BackwardError):
        model.backward(g_a)
    # Eval mode between a training forward and its backward changes nothing.
    model(a)
    model.eval()
    model(b)
    model.train()
    assert np.allclose(model.backward(g_a), grad_a)


def test_dtype_row_float32_default_and_dtype_follows_input():
    layer = nn.Linear(2, 3)
    assert layer.weight.data.dtype == np.float32
    assert layer(np.ones((1, 2), np.float32)).dtype == np.float32
    assert layer.double()(np.ones((1, 2))).dtype == np.float64


def test_seeding_row_a_fresh_process_starts_at_seed_0():
    code = ("import numpy as np, nn; a = nn.Linear(3, 2).weight.data.copy(); nn.manual_seed(0); "
            "b = nn.Linear(3, 2).weight.data; np.random.seed(5); nn.manual_seed(0); "
            "c = nn.Linear(3, 2).weight.data; print(np.array_equal(a, b) and np.array_equal(b, c))")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_devices_row():
    assert "cpu" in kernels.devices()
    assert set(kernels.devices()) <= {"cpu", "cuda"}
