"""Layer behaviour beyond gradients: NumPy references (Linear, Conv2d, BatchNorm, Dropout,
Softmax), gradient accumulation, frozen parameters, input validation, containers, repr and
moving between devices."""
from collections import OrderedDict

import numpy as np
import pytest

import kernels as K
import nn


# ---------------------------------------------------------------- NumPy references
def conv2d_reference(x, w, b, stride, padding, dilation, groups):
    """Direct loops over every output element: slow and obvious."""
    N, C, H, W = x.shape
    OC, CG, KH, KW = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    OH = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    y = np.zeros((N, OC, OH, OW))
    per_group = OC // groups
    for n in range(N):
        for oc in range(OC):
            g = oc // per_group
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0 if b is None else b[oc]
                    for c in range(CG):
                        for kh in range(KH):
                            for kw in range(KW):
                                acc += (w[oc, c, kh, kw]
                                        * xp[n, g * CG + c, oh * sh + kh * dh, ow * sw + kw * dw])
                    y[n, oc, oh, ow] = acc
    return y


def test_linear_forward_reference(rng, dtype):
    layer = nn.Linear(5, 3).to(dtype=dtype)
    x = rng.standard_normal((4, 5)).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (4, 3)
    expected = x.astype(np.float64) @ layer.weight.data.T.astype(np.float64) + layer.bias.data
    np.testing.assert_allclose(y, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
])
def test_conv2d_forward_reference(rng, kwargs):
    layer = nn.Conv2d(4, 6, (3, 2), **kwargs).double()
    x = rng.standard_normal((2, 4, 6, 5))
    p = {k: (v, v) if isinstance(v, int) else v for k, v in kwargs.items() if k != "groups"}
    expected = conv2d_reference(x, layer.weight.data, layer.bias.data, p["stride"],
                                p["padding"], p["dilation"], kwargs["groups"])
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_conv2d_same_padding_keeps_size(rng):
    layer = nn.Conv2d(2, 3, 5, padding="same").double()
    x = rng.standard_normal((1, 2, 6, 7))
    y = layer(x)
    assert y.shape == (1, 3, 6, 7)
    expected = conv2d_reference(x, layer.weight.data, layer.bias.data, (1, 1), (2, 2), (1, 1), 1)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_train_and_running_stats_reference(rng):
    bn = nn.BatchNorm2d(3, momentum=0.2).double()
    bn.weight.data[...] = [1.0, 2.0, 0.5]
    bn.bias.data[...] = [0.0, -1.0, 3.0]
    x = rng.standard_normal((4, 3, 2, 5)) * 3 + 1
    y = bn(x)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    x_hat = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    expected = x_hat * bn.weight.data[None, :, None, None] + bn.bias.data[None, :, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    m = x.size // 3
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * m / (m - 1), rtol=1e-12)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    y_eval = bn(x)
    expected_eval = ((x - bn.running_mean[None, :, None, None])
                     / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
                     * bn.weight.data[None, :, None, None] + bn.bias.data[None, :, None, None])
    np.testing.assert_allclose(y_eval, expected_eval, rtol=1e-12, atol=1e-12)
    assert int(bn.num_batches_tracked) == 1  # evaluation leaves the statistics alone


def test_batchnorm_cumulative_average_when_momentum_is_none(rng):
    bn = nn.BatchNorm1d(2, momentum=None).double()
    batches = [rng.standard_normal((5, 2)) + i for i in range(3)]
    for x in batches:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in batches], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(bn.running_var,
                               np.mean([x.var(0, ddof=1) for x in batches], axis=0), rtol=1e-12)
    assert int(bn.num_batches_tracked) == 3


def test_batchnorm_training_needs_more_than_one_value_per_channel():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(np.zeros((1, 3), np.float32))
    bn.eval()
    assert bn(np.zeros((1, 3), np.float32)).shape == (1, 3)


def test_dropout_scales_kept_elements_and_drops_about_p():
    x = np.ones((200, 100))
    layer = nn.Dropout(0.3, generator=np.random.default_rng(5))
    y = layer(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-15)
    assert abs(1 - kept.mean() - 0.3) < 0.01  # 20000 draws: std of the mean is 0.003
    g = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(g), np.where(kept, g / 0.7, 0.0), rtol=1e-15)


def test_dropout_eval_identity_and_edge_probabilities(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    layer = nn.Dropout(0.5).eval()
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer.backward(x), x)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x), x)
    y = nn.Dropout(1.0)(x)
    assert y.dtype == np.float32 and not y.any()
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(1.5)
    with pytest.raises(TypeError, match="generator"):
        nn.Dropout(0.5, generator=3)


def test_dropout_masks_are_reproducible():
    x = np.ones((8, 8))
    a = nn.Dropout(0.5, generator=np.random.default_rng(11))(x)
    b = nn.Dropout(0.5, generator=np.random.default_rng(11))(x)
    np.testing.assert_array_equal(a, b)
    nn.manual_seed(3)
    c = nn.Dropout(0.5)(x)
    nn.manual_seed(3)
    d = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(c, d)
    assert not np.array_equal(c, nn.Dropout(0.5)(x))  # the generator moves on


def test_dropout_fixed_mask():
    layer = nn.Dropout(0.5)
    keep = np.array([[True, False], [False, True]])
    layer.set_mask(keep)
    np.testing.assert_array_equal(layer(np.ones((2, 2))), keep * 2.0)
    with pytest.raises(ValueError, match="fixed mask"):
        layer(np.ones((3, 2)))
    layer.set_mask(None)
    assert layer(np.ones((3, 2))).shape == (3, 2)


def test_softmax_along_a_middle_axis(rng):
    x = rng.standard_normal((2, 3, 4))
    y = nn.Softmax(dim=1)(x)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(nn.LogSoftmax(dim=1)(x), np.log(e / e.sum(axis=1, keepdims=True)),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dim=3"):
        nn.Softmax(dim=3)(x)


def test_global_avg_pool_is_the_plane_mean(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y = nn.GlobalAvgPool2d()(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-12)


def test_upsample_size_and_scale_factor_agree(rng):
    x = rng.standard_normal((1, 2, 2, 3))
    a = nn.Upsample(scale_factor=(2, 3))(x)
    b = nn.Upsample(size=(4, 9))(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x.repeat(2, axis=2).repeat(3, axis=3))
    with pytest.raises(ValueError, match="integer multiple"):
        nn.Upsample(size=(5, 9))(x)
    with pytest.raises(ValueError, match="exactly one"):
        nn.Upsample()
    with pytest.raises(ValueError, match="integer"):
        nn.Upsample(scale_factor=1.5)


# ---------------------------------------------------------------- accumulation and freezing
def _grads(layer):
    return {n: p.grad.copy() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(4, 3), (6, 4)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (4, 2, 4, 4)),
    (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)),
     (4, 1, 4, 4)),
])
def test_two_half_batches_accumulate_to_the_full_batch(make, shape, rng):
    layer = make().double()
    x = rng.standard_normal(shape)
    with nn.no_grad():  # only the output's shape: no backward follows
        g = rng.standard_normal(layer(x).shape)
    layer.zero_grad()
    layer(x)
    layer.backward(g)
    full = _grads(layer)
    layer.zero_grad()
    half = shape[0] // 2
    for part in (slice(0, half), slice(half, None)):
        layer(x[part])
        layer.backward(g[part])
    for name, value in _grads(layer).items():
        np.testing.assert_allclose(value, full[name], rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Linear(4, 3), (2, 4)),
    (lambda: nn.Conv2d(2, 3, 3), (2, 2, 4, 4)),
    (lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 2, 2, 2)),
    (lambda: nn.BatchNorm2d(2), (3, 2, 2, 2)),
])
def test_frozen_parameters_get_no_gradient_but_pass_one_through(make, shape, rng):
    x = rng.standard_normal(shape)
    nn.manual_seed(0)
    live = make().double()
    nn.manual_seed(0)
    frozen = make().double().freeze()
    before = {n: p.data.copy() for n, p in frozen.named_parameters()}
    g = rng.standard_normal(live(x).shape)
    grad_live = live.backward(g)
    frozen(x)
    grad_frozen = frozen.backward(g)
    np.testing.assert_allclose(grad_frozen, grad_live, rtol=1e-12, atol=1e-14)
    for name, p in frozen.named_parameters():
        assert p.grad is None and not p.requires_grad, name
        np.testing.assert_array_equal(p.data, before[name])
    frozen.unfreeze()
    frozen(x)
    frozen.backward(g)
    for (name, p), (_, q) in zip(frozen.named_parameters(), live.named_parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-12, err_msg=name)


def test_partly_frozen_model(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].freeze()
    model[2].bias.requires_grad = False
    model(rng.standard_normal((5, 3)))
    model.backward(rng.standard_normal((5, 2)))
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[2].weight.grad is not None and model[2].bias.grad is None


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("layer, x", [
    (lambda: nn.Linear(3, 2), np.zeros((2, 3))),
    (lambda: nn.Conv2d(1, 2, 3), np.zeros((1, 1, 4, 4))),
    (lambda: nn.ConvTranspose2d(1, 2, 3), np.zeros((1, 1, 4, 4))),
    (lambda: nn.BatchNorm1d(3), np.zeros((2, 3))),
    (lambda: nn.BatchNorm2d(3, affine=False), np.zeros((2, 3, 2, 2))),
])
def test_input_dtype_must_match_parameters(layer, x):
    with pytest.raises(TypeError, match="float64.*float32|float32.*float64"):
        layer()(x)  # parameters are float32 by default, the input float64


@pytest.mark.parametrize("layer, x, match", [
    (lambda: nn.Linear(3, 2), np.zeros((2, 4), np.float32), "3 channels"),
    (lambda: nn.Conv2d(2, 2, 3), np.zeros((1, 3, 4, 4), np.float32), "2 channels"),
    (lambda: nn.Conv2d(2, 2, 3), np.zeros((3, 4, 4), np.float32), "4-D"),
    (lambda: nn.BatchNorm1d(2), np.zeros((2, 2, 2, 2), np.float32), "2-D or 3-D"),
    (lambda: nn.MaxPool2d(2), np.zeros((2, 2), np.float32), "4-D"),
    (lambda: nn.Flatten(2, 1), np.zeros((2, 2, 2), np.float32), "start_dim"),
    (lambda: nn.Unflatten(1, (2, 2)), np.zeros((2, 3), np.float32), "unflattened_size"),
])
def test_bad_inputs_raise_clear_errors(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer()(x)


def test_non_float_inputs_are_rejected():
    with pytest.raises(TypeError, match="float"):
        nn.Linear(2, 2)(np.zeros((1, 2), np.int64))
    with pytest.raises(TypeError, match="float"):
        nn.Dropout(0.5)(np.zeros((1, 2), np.int64))


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), "groups"),
    (lambda: nn.Conv2d(2, 2, 3, stride=2, padding="same"), "same"),
    (lambda: nn.Conv2d(2, 2, 3, padding="full"), "padding"),
    (lambda: nn.Conv2d(2, 2, 0), "kernel_size"),
    (lambda: nn.Conv2d(2, 2, 3, padding_mode="reflect"), "padding_mode"),
    (lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), "output_padding"),
    (lambda: nn.MaxPool2d(2, padding=2), "padding"),
    (lambda: nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
    (lambda: nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
    (lambda: nn.GELU(approximate="erf"), "approximate"),
])
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_parameters_default_to_float32_and_follow_double():
    layer = nn.Conv2d(1, 2, 3)
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    layer.double()
    assert layer.weight.dtype == np.float64
    assert nn.Linear(2, 2, dtype=np.float64).weight.dtype == np.float64
    bn = nn.BatchNorm1d(2).double()
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64


# ---------------------------------------------------------------- containers
def test_sequential_indexing_and_names():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and isinstance(seq[-1], nn.Linear)
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail.state_dict()) == ["2.weight", "2.bias"]
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and isinstance(seq[3], nn.Sigmoid)
    named = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.Tanh()))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(TypeError, match="Module"):
        nn.Sequential(nn.Linear(2, 2), "relu")


def test_residual_adds_the_shortcut(rng):
    block = nn.Linear(3, 3).double()
    res = nn.Residual(block)
    x = rng.standard_normal((2, 3))
    np.testing.assert_allclose(res(x), block(x) + x, rtol=1e-15)
    g = rng.standard_normal((2, 3))
    np.testing.assert_allclose(res.backward(g), g @ block.weight.data + g, rtol=1e-12)
    bad = nn.Residual(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="shortcut"):
        bad(np.zeros((1, 3), np.float32))


def test_concat_splits_the_gradient(rng):
    a, b = nn.Conv2d(1, 2, 1).double(), nn.Identity()
    cat = nn.Concat(a, b)
    x = rng.standard_normal((2, 1, 3, 3))
    y = cat(x)
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(y[:, :2], a(x), rtol=1e-15)
    np.testing.assert_array_equal(y[:, 2:], x)
    g = rng.standard_normal(y.shape)
    cat(x)
    grad_x = cat.backward(g)
    expected = np.einsum("ncij,c->nij", g[:, :2], a.weight.data[:, 0, 0, 0])[:, None] + g[:, 2:]
    np.testing.assert_allclose(grad_x, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        nn.Concat(nn.Identity(), nn.MaxPool2d(2))(np.zeros((1, 1, 4, 4)))


def test_repr_is_readable():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6 * 14 * 14, 10, bias=False),
                          nn.Dropout(0.25), nn.BatchNorm1d(10))
    text = repr(model)
    assert text.splitlines()[0] == "Sequential("
    assert "(0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in text
    assert "(1): ReLU()" in text
    assert "(2): MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))" in text
    assert "(4): Linear(in_features=1176, out_features=10, bias=False)" in text
    assert "(5): Dropout(p=0.25)" in text
    assert "(6): BatchNorm1d(10, eps=1e-05, momentum=0.1" in text
    assert repr(nn.Residual(nn.Identity())).startswith("Residual(\n  (block): Identity()")


# ---------------------------------------------------------------- devices
@pytest.mark.cuda
def test_to_device_round_trip(cuda_device, rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                          nn.Linear(8, 2)).double()
    state = model.state_dict()
    model.to(cuda_device)
    assert model.device == cuda_device
    assert all(K.device_of(p.data) == cuda_device for p in model.parameters())
    assert all(K.device_of(b) == cuda_device for _, b in model.named_buffers())
    model.to("cpu")
    assert model.device == "cpu"
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)


@pytest.mark.cuda
def test_mixed_devices_raise(cuda_device):
    layer = nn.Linear(2, 2).to(cuda_device)
    with pytest.raises(ValueError, match="cuda.*cpu|cpu.*cuda"):
        layer(np.zeros((1, 2), np.float32))


@pytest.mark.cuda
def test_layers_built_on_a_device(cuda_device):
    for layer in (nn.Linear(2, 3, device=cuda_device), nn.Conv2d(1, 2, 3, device=cuda_device),
                  nn.ConvTranspose2d(1, 2, 3, device=cuda_device),
                  nn.BatchNorm2d(2, device=cuda_device, dtype=np.float64)):
        assert layer.device == cuda_device
        assert all(K.device_of(v) == "cpu" for v in layer.state_dict().values())
    assert K.device_of(layer.running_var) == cuda_device and layer.weight.dtype == np.float64
