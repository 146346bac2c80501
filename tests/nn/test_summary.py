"""nn.summary: per-layer output shapes, units, weights and connections, with totals, printed
and returned; the model is left as it was."""
import numpy as np
import pytest

import kernels as K
import nn
from nn import models


def test_lenet5_summary_numbers(capsys):
    model = models.LeNet5(in_channels=1, num_classes=10, input_size=28)
    result = nn.summary(model, (1, 28, 28))
    rows = [(r.name, r.type, r.output_shape, r.units, r.weights, r.connections)
            for r in result.layers]
    assert rows == [
        ("features.0", "Conv2d", (-1, 6, 28, 28), 4704, 156, 6 * 28 * 28 * 25),
        ("features.1", "ReLU", (-1, 6, 28, 28), 4704, 0, 0),
        ("features.2", "MaxPool2d", (-1, 6, 14, 14), 1176, 0, 1176 * 4),
        ("features.3", "Conv2d", (-1, 16, 10, 10), 1600, 2416, 1600 * 6 * 25),
        ("features.4", "ReLU", (-1, 16, 10, 10), 1600, 0, 0),
        ("features.5", "MaxPool2d", (-1, 16, 5, 5), 400, 0, 400 * 4),
        ("flatten", "Flatten", (-1, 400), 400, 0, 0),
        ("classifier.0", "Linear", (-1, 120), 120, 48120, 48000),
        ("classifier.1", "ReLU", (-1, 120), 120, 0, 0),
        ("classifier.2", "Linear", (-1, 84), 84, 10164, 10080),
        ("classifier.3", "ReLU", (-1, 84), 84, 0, 0),
        ("classifier.4", "Linear", (-1, 10), 10, 850, 840),
    ]
    assert result.total_weights == result.total_params == result.trainable_params == 61706
    assert result.total_connections == 117600 + 4704 + 240000 + 1600 + 48000 + 10080 + 840
    assert result.total_units == sum(r[3] for r in rows)
    printed = capsys.readouterr().out
    assert printed.strip() == result.table().strip()
    lines = printed.splitlines()
    assert any(line.startswith("features.0 (Conv2d)") and "117,600" in line for line in lines)
    assert any(line.startswith("Total") and "61,706" in line for line in lines)
    assert "61,706 trainable" in printed


def test_summary_counts_frozen_weights_apart_and_can_be_quiet(capsys):
    model = models.MLP([4, 8, 3])
    model.layers[0].freeze()
    result = nn.summary(model, (4,), verbose=False)
    assert capsys.readouterr().out == ""
    assert [(r.name, r.weights, r.connections) for r in result.layers] == [
        ("flatten", 0, 0), ("layers.0", 0, 32), ("layers.1", 0, 0), ("layers.2", 27, 24)]
    assert result.total_params == 67 and result.trainable_params == 27
    assert "40 frozen" in result.table()


def test_summary_counts_conv_transpose_batchnorm_and_global_pool():
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2, stride=2), nn.BatchNorm2d(3),
                          nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(3, 1))
    result = nn.summary(model, (2, 4, 5), verbose=False)
    by_name = {r.name: r for r in result.layers}
    assert by_name["0"].output_shape == (-1, 3, 8, 10)
    assert by_name["0"].connections == 2 * 4 * 5 * 3 * 2 * 2  # every input pixel, every tap
    assert by_name["1"].connections == 3 * 8 * 10 and by_name["1"].weights == 6
    assert by_name["2"].connections == 3 * 8 * 10 and by_name["2"].output_shape == (-1, 3, 1, 1)


def test_summary_leaves_the_model_as_it_was(rng):
    model = models.SmallVGG(in_channels=1, num_classes=3, input_size=4, widths=(2,), hidden=4,
                            batch_norm=True, dropout=0.5)
    state = model.state_dict()
    model.classifier.eval()
    nn.summary(model, (1, 4, 4), verbose=False)
    assert model.training and model.features.training and not model.classifier.training
    for name, value in model.state_dict().items():  # BatchNorm statistics untouched
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(nn.BackwardError):
        model.backward(np.zeros((1, 3), np.float32))
    model.train()
    y = model(rng.standard_normal((2, 1, 4, 4)).astype(np.float32))
    assert model.backward(np.ones_like(y)).shape == (2, 1, 4, 4)


def test_summary_uses_the_model_dtype():
    result = nn.summary(nn.Linear(3, 2).double(), 3, verbose=False)
    assert result.layers[0].output_shape == (-1, 2) and result.input_shape == (3,)


@pytest.mark.cuda
def test_summary_on_the_cuda_device(cuda_device):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    model.to(cuda_device)
    result = nn.summary(model, (1, 4, 4), verbose=False)
    assert [r.output_shape for r in result.layers] == [(-1, 2, 2, 2), (-1, 2, 2, 2), (-1, 8),
                                                      (-1, 2)]
    assert result.total_weights == 20 + 18
    assert K.device_of(model[0].weight.data) == cuda_device
