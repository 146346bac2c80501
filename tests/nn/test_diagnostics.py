"""Gradient-flow diagnostics: norms against NumPy, recording, dead ReLU units, the plot."""
import numpy as np
import pytest

import nn
from nn import diagnostics as D
from nn.activation import ReLU
from nn.linear import Linear


class Chain(nn.Module):
    """A minimal sequential container (the test does not depend on nn.Sequential)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, f"l{i}", layer)
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, grad_y):
        for layer in reversed(self.layers):
            grad_y = layer.backward(grad_y)
        return grad_y


def mlp(rng, sizes=(4, 6, 5, 3)):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = Linear(a, b, dtype=np.float64)
        lin.weight.data[...] = rng.standard_normal((b, a))
        lin.bias.data[...] = rng.standard_normal(b)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Chain(*layers)


def test_layer_norms_match_numpy(rng):
    model = mlp(rng)
    x = rng.standard_normal((7, 4))
    model.backward(np.ones_like(model(x)))
    norms = D.layer_norms(model)
    assert list(norms) == ["l0.weight", "l0.bias", "l2.weight", "l2.bias", "l4.weight", "l4.bias"]
    for name, p in model.named_parameters():
        g, w = norms[name]
        assert g == pytest.approx(np.linalg.norm(p.grad))
        assert w == pytest.approx(np.linalg.norm(p.data))
    assert list(D.layer_norms(model, weights_only=True)) == ["l0.weight", "l2.weight", "l4.weight"]
    model.zero_grad()
    model.l2.freeze()
    norms = D.layer_norms(model)
    assert "l2.weight" not in norms and norms["l0.weight"][0] == 0.0


def test_gradient_flow_records_steps(rng, tmp_path):
    model = mlp(rng)
    x = rng.standard_normal((7, 4))
    flow = D.GradientFlow(every=2)
    expected = []
    for step in range(5):
        model.zero_grad()
        model.backward(model(x) * 0.1)
        if step % 2 == 0:
            expected.append([np.linalg.norm(model.l0.weight.grad),
                             np.linalg.norm(model.l2.weight.grad),
                             np.linalg.norm(model.l4.weight.grad)])
        flow.record(model)
        for p in model.parameters():
            p.data -= 0.05 * p.grad
    assert flow.steps == [0, 2, 4]
    assert flow.names == ["l0.weight", "l2.weight", "l4.weight"]
    np.testing.assert_allclose(flow.grad_norms, expected, rtol=1e-12)
    assert flow.param_norms.shape == (3, 3)
    assert "3 steps" in flow.summary()

    class FakeTrainer:
        pass

    trainer = FakeTrainer()
    trainer.model = model
    flow.on_after_backward(trainer)
    flow.on_after_backward(trainer)
    assert flow.steps == [0, 2, 4, 6]
    model.l4.freeze()
    with pytest.raises(ValueError, match="parameters changed"):
        flow.record(model)  # every=2: this call is skipped, the next one records
        flow.record(model)
    pytest.importorskip("matplotlib")
    path = flow.plot(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 5000 and str(path).endswith("flow.png")
    with pytest.raises(ValueError, match="every"):
        D.GradientFlow(every=0)


def test_dead_relu_fraction_on_features(rng):
    model = mlp(rng, sizes=(3, 4, 2))
    # units 0 and 2 get a large negative pre-activation whatever the input: dead
    model.l0.weight.data[[0, 2]] = 0.0
    model.l0.bias.data[[0, 2]] = -5.0
    model.l0.bias.data[[1, 3]] = 50.0  # always alive
    x = rng.standard_normal((16, 3))
    y_before = model(x).copy()
    assert D.dead_relu_fraction(model, x) == {"l1": 0.5}
    # the model is untouched: same output, plain forward again, nothing left for backward
    assert "forward" not in model.l1.__dict__
    with pytest.raises(nn.BackwardError):
        model.l1.backward(np.ones((16, 4)))
    np.testing.assert_array_equal(model(x), y_before)


def test_dead_relu_fraction_on_channels(rng):
    model = Chain(ReLU())
    x = np.abs(rng.standard_normal((2, 3, 4, 4))) + 0.1
    x[:, 1] *= -1  # channel 1 negative everywhere: dead
    x[0, 2] *= -1  # channel 2 negative in one sample only, positive in the other: alive
    assert D.dead_relu_fraction(model, x) == {"l0": pytest.approx(1 / 3)}


def test_dead_relu_fraction_inside_library_containers(rng):
    model = nn.models.MLP([4, 6, 5, 3]).double()
    hidden = model.layers[0]
    hidden.weight.data[:2] = 0.0
    hidden.bias.data[:2] = -1.0  # 2 of the first layer's 6 units can never fire
    x = rng.standard_normal((32, 4))
    fractions = D.dead_relu_fraction(model, x)
    assert list(fractions) == ["layers.1", "layers.3"]
    assert fractions["layers.1"] == pytest.approx(2 / 6)
    assert 0.0 <= fractions["layers.3"] < 1.0
    with pytest.raises(nn.BackwardError):  # the diagnostic pass leaves nothing for backward
        model.backward(np.ones((32, 3)))


@pytest.mark.cuda
def test_norms_and_dead_units_on_the_cuda_device_match_the_cpu(cuda_device, rng):
    import kernels as K
    model = nn.models.MLP([4, 6, 3]).double()
    model.layers[0].bias.data[:3] = -50.0
    x = rng.standard_normal((8, 4))
    model.backward(np.ones_like(model(x)))
    cpu_norms, cpu_dead = D.layer_norms(model), D.dead_relu_fraction(model, x)
    model.to(cuda_device)
    model.zero_grad()
    xd = K.to_device(x, cuda_device)
    y = model(xd)
    model.backward(K.array_module(cuda_device).ones_like(y))
    gpu_norms = D.layer_norms(model)
    for name, (g, w) in cpu_norms.items():
        assert gpu_norms[name][0] == pytest.approx(g) and gpu_norms[name][1] == pytest.approx(w)
    assert D.dead_relu_fraction(model, xd) == cpu_dead == {"layers.1": 0.5}


def test_gradient_flow_attached_to_the_trainer_records_every_step(rng):
    import nn.data
    model = nn.models.MLP([4, 6, 3]).double()
    ds = nn.data.ArrayDataset(rng.standard_normal((40, 4)), rng.integers(0, 3, 40))
    loader = nn.data.DataLoader(ds, batch_size=16)
    opt = nn.optim.SGD(model.parameters(), lr=0.1)
    flow = D.GradientFlow().attach(model, opt)
    nn.Trainer(model, nn.CrossEntropyLoss(), opt, quiet=True).fit(loader, epochs=2)
    assert flow.steps == list(range(6))  # 3 batches x 2 epochs
    assert flow.names == ["layers.0.weight", "layers.2.weight"]
    # the last record holds the gradients of the last step, still in .grad after it
    last = [g for g, _ in D.layer_norms(model, weights_only=True).values()]
    np.testing.assert_allclose(flow.grad_norms[-1], last, rtol=1e-12)
    assert np.all(flow.grad_norms > 0)
    flow.detach()
    assert "step" not in vars(opt)
    model.backward(np.ones_like(model(ds.x[:4])))
    opt.step()
    assert len(flow.steps) == 6  # detached: no more records
    again = D.GradientFlow().attach(model, opt)
    with pytest.raises(RuntimeError, match="already attached"):
        again.attach(model, opt)
    again.detach()
