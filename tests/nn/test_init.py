"""Initialisers: torch's formulas (fans, gains, bounds, standard deviations), explicit
generators, in-place filling of Parameters and arrays, and the named image kernels."""
import math

import numpy as np
import pytest

import kernels as K
import nn
from nn import init


def test_fans_follow_torch():
    assert init._calculate_fan_in_and_fan_out(np.zeros((7, 5))) == (5, 7)
    assert init._calculate_fan_in_and_fan_out(np.zeros((8, 3, 5, 4))) == (60, 160)
    with pytest.raises(ValueError, match="2 dimensions"):
        init._calculate_fan_in_and_fan_out(np.zeros(4))


@pytest.mark.parametrize("name, param, gain", [
    ("linear", None, 1.0), ("conv2d", None, 1.0), ("sigmoid", None, 1.0),
    ("tanh", None, 5 / 3), ("relu", None, math.sqrt(2)), ("leaky_relu", None,
                                                          math.sqrt(2 / (1 + 0.01 ** 2))),
    ("leaky_relu", 0.2, math.sqrt(2 / 1.04)), ("selu", None, 0.75),
])
def test_calculate_gain(name, param, gain):
    assert init.calculate_gain(name, param) == pytest.approx(gain, rel=1e-15)


def test_calculate_gain_rejects_unknown():
    with pytest.raises(ValueError, match="nonlinearity"):
        init.calculate_gain("swish")


SHAPE = (400, 300)  # 120000 draws: sample moments within a fraction of a percent


@pytest.mark.parametrize("fill, low, high", [
    (lambda w, g: init.uniform_(w, -2.0, 3.0, generator=g), -2.0, 3.0),
    (lambda w, g: init.kaiming_uniform_(w, generator=g), -math.sqrt(6 / 300), math.sqrt(6 / 300)),
    (lambda w, g: init.kaiming_uniform_(w, a=math.sqrt(5), generator=g), -1 / math.sqrt(300),
     1 / math.sqrt(300)),
    (lambda w, g: init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", generator=g),
     -math.sqrt(6 / 400), math.sqrt(6 / 400)),
    (lambda w, g: init.xavier_uniform_(w, gain=2.0, generator=g), -2 * math.sqrt(6 / 700),
     2 * math.sqrt(6 / 700)),
])
def test_uniform_initialisers_fill_their_bounds(fill, low, high):
    w = np.empty(SHAPE, np.float32)
    out = fill(w, np.random.default_rng(0))
    assert out is w
    assert w.min() >= low and w.max() <= high
    span = high - low
    assert w.min() < low + 0.001 * span and w.max() > high - 0.001 * span
    assert abs(w.mean() - (low + high) / 2) < 0.01 * span
    assert abs(w.std() - span / math.sqrt(12)) < 0.01 * span


@pytest.mark.parametrize("fill, mean, std", [
    (lambda w, g: init.normal_(w, 1.0, 0.5, generator=g), 1.0, 0.5),
    (lambda w, g: init.kaiming_normal_(w, nonlinearity="relu", generator=g), 0.0,
     math.sqrt(2 / 300)),
    (lambda w, g: init.kaiming_normal_(w, mode="fan_out", nonlinearity="tanh", generator=g),
     0.0, 5 / 3 / math.sqrt(400)),
    (lambda w, g: init.xavier_normal_(w, generator=g), 0.0, math.sqrt(2 / 700)),
])
def test_normal_initialisers_have_their_moments(fill, mean, std):
    w = np.empty(SHAPE)
    fill(w, np.random.default_rng(1))
    assert abs(w.mean() - mean) < 0.01 * std
    assert abs(w.std() - std) < 0.01 * std


def test_constant_fills_and_parameters_are_filled_in_place():
    p = nn.Parameter(np.empty((2, 3), np.float32))
    data = p.data
    assert init.constant_(p, 2.5) is p
    assert p.data is data and np.all(data == 2.5) and data.dtype == np.float32
    init.zeros_(p)
    assert not p.data.any()
    init.ones_(p)
    assert np.all(p.data == 1)
    with pytest.raises(TypeError, match="float"):
        init.zeros_(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform_(p, mode="fan_avg")


def test_generators_make_draws_repeatable():
    a, b, c = (np.empty((5, 4)) for _ in range(3))
    init.kaiming_uniform_(a, generator=np.random.default_rng(7))
    init.kaiming_uniform_(b, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    nn.manual_seed(7)
    init.normal_(a)
    nn.manual_seed(7)
    init.normal_(b)
    init.normal_(c)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


def test_layers_default_to_torch_initialisation():
    """kaiming_uniform_(a=sqrt(5)) weights and U(+-1/sqrt(fan_in)) biases."""
    nn.manual_seed(0)
    for layer, fan_in in ((nn.Linear(50, 40), 50), (nn.Conv2d(6, 40, 5), 150),
                          (nn.ConvTranspose2d(40, 6, 5), 150)):
        bound = 1 / math.sqrt(fan_in)
        w, b = layer.weight.data, layer.bias.data
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
        assert np.abs(b).max() <= bound
    nn.manual_seed(0)
    first = nn.Linear(3, 3).weight.data.copy()
    nn.manual_seed(0)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.data, first)
    bn = nn.BatchNorm2d(3)
    assert np.all(bn.weight.data == 1) and not bn.bias.data.any()


def test_image_kernels():
    np.testing.assert_array_equal(init.image_kernel("blur") * 8,
                                  [[0, 1, 0], [1, 4, 1], [0, 1, 0]])
    assert init.image_kernel("blur").sum() == pytest.approx(1.0)
    assert init.image_kernel("sharpen").sum() == 1 and init.image_kernel("edge").sum() == 0
    np.testing.assert_array_equal(init.image_kernel("sobel_y"), init.image_kernel("sobel_x").T)
    assert init.image_kernel("edge", np.float64).dtype == np.float64
    k = init.image_kernel("blur")
    k[0, 0] = 9  # a fresh array each time
    assert init.image_kernel("blur")[0, 0] == 0
    with pytest.raises(ValueError, match="unknown image kernel"):
        init.image_kernel("emboss")


def test_image_kernel_initialises_a_conv():
    conv = init.image_kernel_(nn.Conv2d(2, 3, 3), "sobel_x")
    assert np.all(conv.weight.data == init.image_kernel("sobel_x")) and not conv.bias.data.any()
    diag = init.image_kernel_(nn.Conv2d(2, 2, 5, bias=False).double(), "edge", diagonal=True)
    w = diag.weight.data
    np.testing.assert_array_equal(w[0, 0, 1:4, 1:4], init.image_kernel("edge"))
    assert not w[0, 1].any() and not w[1, 0].any()
    assert not w[0, 0, 0].any() and not w[0, 0, :, 4].any()
    with pytest.raises(ValueError, match="odd"):
        init.image_kernel_(nn.Conv2d(1, 1, 2), "blur")
    with pytest.raises(ValueError, match="diagonal"):
        init.image_kernel_(nn.Conv2d(1, 2, 3), "blur", diagonal=True)


def test_sobel_x_finds_vertical_edges():
    """A step that rises to the right: sobel_x responds, sobel_y does not."""
    image = np.zeros((1, 1, 5, 6), np.float32)
    image[..., 3:] = 1.0
    for name, responds in (("sobel_x", True), ("sobel_y", False)):
        conv = init.image_kernel_(nn.Conv2d(1, 1, 3), name)
        y = conv(image)
        assert bool(np.abs(y).max() > 0) is responds, name
        if responds:
            assert y.min() >= 0 and y[0, 0, :, 1:3].min() == 4  # columns straddling the edge


@pytest.mark.cuda
def test_initialisers_fill_device_arrays(cuda_device):
    conv = nn.Conv2d(1, 2, 3).to(cuda_device)
    init.image_kernel_(conv, "blur")
    assert K.device_of(conv.weight.data) == cuda_device
    np.testing.assert_array_equal(K.to_host(conv.weight.data)[1, 0], init.image_kernel("blur"))
    init.xavier_uniform_(conv.weight, generator=np.random.default_rng(0))
    assert K.device_of(conv.weight.data) == cuda_device
