"""Modules users write themselves: the README's examples (run from the README itself, so
they keep working), the default backward of a chain forward and its refusal of anything
else, and the branching containers (Add, and Residual/Concat with shared modules)."""
import re
from pathlib import Path

import numpy as np
import pytest

import nn

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Your own layer: forward and backward"


def _section_code():
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end if end >= 0 else None], re.S)


@pytest.fixture(scope="module")
def readme():
    """The namespace left by running the section's Python blocks in order."""
    blocks = _section_code()
    assert len(blocks) >= 4, "the README section lost its examples"
    namespace = {"__name__": "readme_example"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README block {i}", "exec"), namespace)
    return namespace


def test_readme_examples_run_and_their_backward_passes_check(readme):
    assert readme["report"].worst_error <= 1e-6  # the last module of the README's loop
    for make in (readme["Net"], readme["Swish"], lambda: readme["ScaledSkip"](4)):
        report = nn.gradcheck_module(make().double(), readme["x64"])
        assert report.ok, str(report)


def test_readme_net_trains_without_a_backward_of_its_own(readme):
    Net = readme["Net"]
    assert "backward" not in Net.__dict__
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    nn.manual_seed(0)
    model, loss_fn = Net(), nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        losses.append(float(loss_fn(model(x), labels)))
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.5 * losses[0]


def test_readme_skip_block_gradient_matches_its_formula(readme):
    # y = x + alpha * tanh(W x + b): dL/dalpha = sum_n g * h, checked directly as well.
    block = readme["ScaledSkip"](3).double()
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    block(x)
    block.backward(g)
    h = np.tanh(x @ block.f[0].weight.data.T + block.f[0].bias.data)
    np.testing.assert_allclose(block.alpha.grad, (g * h).sum(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------- the default backward
class Chain(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.a = nn.Linear(n, n)
        self.act = nn.Tanh()
        self.b = nn.Linear(n, n)

    def forward(self, x):
        h = self.a(x)
        h = self.act(h)
        return self.b(h)


class SharedTwice(nn.Module):
    """The same Linear twice in one chain: shared weights, gradients from both uses."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.fc(self.act(self.fc(x)))


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Chain()
        self.mid = nn.Sequential(nn.ReLU(), nn.Residual(nn.Linear(3, 3)))
        self.last = Chain()

    def forward(self, x):
        return self.last(self.mid(self.first(x)))


class PassThrough(nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize("make", [Chain, SharedTwice, Nested])
def test_chain_forward_needs_no_backward(make, rng):
    x = rng.standard_normal((4, 3))
    report = nn.gradcheck_module(make().double(), x)
    assert report.ok, str(report)


def test_shared_child_gets_the_gradient_of_both_uses(rng):
    m = SharedTwice().double()
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    m(x)
    m.backward(g)
    w, b = m.fc.weight.data, m.fc.bias.data
    h1 = x @ w.T + b
    t = np.tanh(h1)
    g1 = (g @ w) * (1 - t ** 2)
    np.testing.assert_allclose(m.fc.weight.grad, g.T @ t + g1.T @ x, rtol=1e-12)


def test_identity_forward_passes_the_gradient(rng):
    g = rng.standard_normal((2, 3))
    m = PassThrough()
    m(np.zeros((2, 3)))
    assert m.backward(g) is g


class Scaled(Chain):
    def forward(self, x):
        return self.b(2.0 * self.act(self.a(x)))


class Reshaped(Chain):
    def forward(self, x):
        return self.b(self.act(self.a(x)).reshape(x.shape))


class Branches(Chain):
    def forward(self, x):
        return self.a(x) + self.b(x)


class TwoInputs(Chain):
    def forward(self, x, z):
        return self.b(self.a(x))


class ChangedAfter(Chain):
    def forward(self, x):
        return self.b(self.act(self.a(x))) + 1.0


class NoChildren(nn.Module):
    def forward(self, x):
        return x * 2.0


class SavesButNoBackward(nn.Module):
    def forward(self, x):
        self.save_for_backward(x)
        return x


@pytest.mark.parametrize("make, args, where", [
    (Scaled, 1, r"input of child 2 \(Linear\) is not the output of child 1 \(Tanh\)"),
    (Reshaped, 1, r"input of child 2 \(Linear\)"),
    (Branches, 1, r"input of child 1 \(Linear\) is not the output of child 0"),
    (TwoInputs, 2, r"forward\(\) takes 2 positional"),
    (ChangedAfter, 1, r"does not return the output of child 2"),
    (NoChildren, 1, r"calls no child module"),
])
def test_a_forward_that_is_not_a_chain_says_what_to_write(make, args, where, rng):
    m = make()
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = m(*([x] * args))
    with pytest.raises(NotImplementedError, match=where) as info:
        m.backward(np.ones_like(y))
    message = str(info.value)
    assert f"Define backward(self, grad_y) in {make.__name__}" in message
    assert "Your own layer: forward and backward" in message


def test_saving_without_backward_is_refused(rng):
    m = SavesButNoBackward()
    m(np.ones(3))
    with pytest.raises(NotImplementedError, match="does not define backward"):
        m.backward(np.ones(3))


def test_calling_forward_directly_leaves_nothing_to_run(rng):
    m = Chain().double()
    x = rng.standard_normal((2, 3))
    y = m.forward(x)  # not m(x): the children calls are not recorded for m
    with pytest.raises(nn.BackwardError, match=r"model\(x\)"):
        m.backward(np.ones_like(y))


def test_module_backward_has_a_docstring():
    doc = nn.Module.backward.__doc__
    assert "reverse" in doc and "Your own layer" in doc


# ---------------------------------------------------------------------- branching containers
def test_add_sums_branches_and_their_gradients(rng):
    m = nn.Add(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.Tanh()),
               nn.Identity()).double()
    x = rng.standard_normal((4, 3))
    y = m(x)
    expected = (x @ m[0].weight.data.T + m[0].bias.data
                + np.tanh(x @ m[1][0].weight.data.T + m[1][0].bias.data) + x)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    assert nn.gradcheck_module(m, x).ok
    assert nn.Add is nn.container.Add


def test_add_single_branch_and_errors(rng):
    x = rng.standard_normal((2, 3))
    assert nn.gradcheck_module(nn.Add(nn.Linear(3, 3)).double(), x).ok
    with pytest.raises(ValueError, match="at least one branch"):
        nn.Add()
    with pytest.raises(TypeError, match="branch 1"):
        nn.Add(nn.Identity(), "relu")
    with pytest.raises(ValueError, match=r"branch 1 output \(2, 2\) does not match"):
        nn.Add(nn.Identity(), nn.Linear(3, 2)).double()(x)


@pytest.mark.parametrize("make", [
    lambda lin: nn.Add(lin, nn.Sequential(nn.Tanh(), lin)),
    lambda lin: nn.Residual(lin, nn.Sequential(nn.Tanh(), lin)),
    lambda lin: nn.Concat(lin, nn.Sequential(nn.Tanh(), lin)),
])
def test_branches_sharing_a_module_backpropagate_through_both_uses(make, rng):
    m = make(nn.Linear(3, 3)).double()
    report = nn.gradcheck_module(m, rng.standard_normal((4, 3)))
    assert report.ok, str(report)
