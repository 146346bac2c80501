"""Model zoo: shapes for given input sizes and channel counts, whole-model gradient checks at
tiny sizes (central differences; CUDA for an MLP and a tiny CNN), torch-like state_dict keys,
and, with torch installed, outputs and every gradient against autograd on a torch twin."""
import numpy as np
import pytest

import kernels as K
import nn
from nn import models
from nn.gradcheck import relative_error

try:
    import torch
    from nn_torch_mirror import twin
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def sampled_gradcheck(model, x, samples, seed=0, eps=1e-5, tol=1e-6):
    """Central differences for ``samples`` random elements of the input and of each parameter.

    Big models have too many parameters to difference them all; the analytic gradient is
    still computed in full, and every sampled element must agree to ``tol``.
    """
    device = K.device_of(x)
    rng = np.random.default_rng(seed)
    x = K.to_host(x).copy()
    with nn.no_grad():  # the forwards without a backward keep no context
        y = K.to_host(model(K.to_device(x, device))).copy()
    g = rng.standard_normal(y.shape)
    model.zero_grad()
    model(K.to_device(x, device))
    grad_x = K.to_host(model.backward(K.to_device(g.astype(y.dtype), device)))
    targets = [("input", x, grad_x, None)]
    for name, p in model.named_parameters():
        host = K.to_host(p.data).copy()
        targets.append((name, host, K.to_host(p.grad), p))
    worst = {}
    for name, values, analytic, param in targets:
        flat = values.reshape(-1)
        for i in rng.choice(flat.size, min(samples, flat.size), replace=False):
            outputs = []
            for step in (eps, -eps):
                saved = flat[i]
                flat[i] = saved + step
                if param is not None:
                    param.data[...] = K.to_device(values, device)
                with nn.no_grad():
                    outputs.append(K.to_host(model(K.to_device(x, device))).copy())
                flat[i] = saved
            if param is not None:
                param.data[...] = K.to_device(values, device)
            numeric = float(np.sum(g * (outputs[0] - outputs[1]))) / (2 * eps)
            err = float(relative_error(analytic.reshape(-1)[i], numeric))
            worst[name] = max(worst.get(name, 0.0), err)
    bad = {k: v for k, v in worst.items() if v > tol}
    assert not bad, f"gradient check failed (tolerance {tol}): {bad}"
    return worst


def tiny(name):
    """Each zoo model at a tiny size, with an input for it (float64, CPU)."""
    rng = np.random.default_rng(0)
    nn.manual_seed(0)
    if name == "mlp":
        model, shape = models.MLP([6, 4, 4, 3], activation="tanh", residual=True), (3, 6)
    elif name == "lenet5":
        model, shape = models.LeNet5(in_channels=1, num_classes=3, input_size=8), (2, 1, 8, 8)
    elif name == "small_vgg":
        model = models.SmallVGG(in_channels=2, num_classes=3, input_size=4, widths=(3, 4),
                                hidden=5)
        shape = (2, 2, 4, 4)
    elif name == "resnet":
        model = models.ResNet(in_channels=2, num_classes=3, widths=(2, 3), blocks_per_stage=1)
        shape = (3, 2, 4, 4)
    elif name == "resnet_2blocks":
        model = models.ResNet(in_channels=1, num_classes=2, widths=(2, 2, 3),
                              blocks_per_stage=2)
        shape = (2, 1, 5, 5)
    elif name == "unet":
        model, shape = models.UNet(in_channels=1, out_channels=2, base=1, depth=2), (2, 1, 4, 4)
    elif name == "autoencoder":
        model = models.Autoencoder(input_shape=(1, 3, 3), code_size=2, hidden=(4, 3),
                                   activation="tanh")
        shape = (2, 1, 3, 3)
    return model.double(), rng.standard_normal(shape)


ZOO = ["mlp", "lenet5", "small_vgg", "resnet", "unet", "autoencoder"]


@pytest.mark.parametrize("name", ZOO)
def test_whole_model_gradient_check(name):
    model, x = tiny(name)
    if name in ("mlp", "autoencoder"):
        report = nn.gradcheck_module(model, x)
        assert {t.name for t in report.tensors} == {"input"} | {
            n for n, _ in model.named_parameters()}
    else:
        worst = sampled_gradcheck(model, x, samples=4)
        assert set(worst) == {"input"} | {n for n, _ in model.named_parameters()}


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.parametrize("name", ZOO + ["resnet_2blocks"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_matches_torch_autograd(name, mode):
    model, x = tiny(name)
    ref = twin(model).double()
    model.train(mode == "train")
    ref.train(mode == "train")
    state = model.state_dict()
    assert list(state) == list(ref.state_dict())
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = ref(xt)
    y = model(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-9, atol=1e-12)
    g = np.random.default_rng(1).standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(model.backward(g), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    ref_params = dict(ref.named_parameters())
    for pname, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, ref_params[pname].grad.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=pname)
    after = model.state_dict()
    for bname, value in ref.state_dict().items():
        np.testing.assert_allclose(after[bname], value.numpy(), rtol=1e-12, err_msg=bname)


@pytest.mark.cuda
def test_mlp_gradient_check_on_cuda(cuda_device):
    model, x = tiny("mlp")
    model.to(cuda_device)
    report = nn.gradcheck_module(model, K.to_device(x, cuda_device))
    assert report.worst_error <= 1e-6 and len(report.tensors) == 7


@pytest.mark.cuda
def test_tiny_cnn_gradient_check_on_cuda(cuda_device):
    nn.manual_seed(1)
    model = models.SmallVGG(in_channels=1, num_classes=2, input_size=2, widths=(1,),
                            hidden=2).double()
    x = np.random.default_rng(1).standard_normal((2, 1, 2, 2))
    cpu_out = model(x)
    model.to(cuda_device)
    np.testing.assert_allclose(K.to_host(model(K.to_device(x, cuda_device))), cpu_out,
                               rtol=1e-12)
    worst = sampled_gradcheck(model, K.to_device(x, cuda_device), samples=3)
    assert len(worst) == 1 + len(list(model.parameters()))


@pytest.mark.cuda
@pytest.mark.parametrize("name", ZOO)
def test_model_cuda_matches_cpu(name, cuda_device):
    model, x = tiny(name)
    y = model(x)
    g = np.random.default_rng(1).standard_normal(y.shape)
    grad_x = model.backward(g)
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    model.to(cuda_device)
    y_gpu = model(K.to_device(x, cuda_device))
    np.testing.assert_allclose(K.to_host(y_gpu), y, rtol=1e-10, atol=1e-12)
    grad_x_gpu = model.backward(K.to_device(g, cuda_device))
    np.testing.assert_allclose(K.to_host(grad_x_gpu), grad_x, rtol=1e-10, atol=1e-12)
    for pname, p in model.named_parameters():
        assert K.device_of(p.grad) == cuda_device
        np.testing.assert_allclose(K.to_host(p.grad), grads[pname], rtol=1e-10, atol=1e-12,
                                   err_msg=pname)


# ---------------------------------------------------------------- shapes and structure
@pytest.mark.parametrize("act", sorted(models.ACTIVATIONS))
def test_mlp_activations_and_flattening(act):
    model = models.MLP([12, 5, 2], activation=act)
    assert isinstance(model.layers[1], models.ACTIVATIONS[act])
    y = model(np.zeros((4, 3, 2, 2), np.float32))
    assert y.shape == (4, 2) and y.dtype == np.float32
    assert model.backward(np.ones_like(y)).shape == (4, 3, 2, 2)
    with pytest.raises(ValueError, match="activation"):
        models.MLP([2, 2, 2], activation="swish")


def test_mlp_structure_and_keys():
    model = models.MLP([4, 8, 8, 8, 2], activation="sigmoid", residual=True, dropout=0.1)
    assert list(model.state_dict()) == [
        "layers.0.weight", "layers.0.bias", "layers.3.block.0.weight", "layers.3.block.0.bias",
        "layers.4.block.0.weight", "layers.4.block.0.bias", "layers.5.weight", "layers.5.bias"]
    assert isinstance(model.layers[3], nn.Residual) and isinstance(model.layers[2], nn.Dropout)
    with pytest.raises(ValueError, match="sizes"):
        models.MLP([4])


@pytest.mark.parametrize("size, fc_in", [(8, 64), (16, 64), (28, 400), (32, 400)])
def test_lenet5_input_sizes(size, fc_in):
    model = models.LeNet5(in_channels=3, num_classes=7, input_size=size)
    assert model.classifier[0].in_features == fc_in
    y = model(np.zeros((2, 3, size, size), np.float32))
    assert y.shape == (2, 7)
    assert list(model.state_dict()) == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias",
        "classifier.4.weight", "classifier.4.bias"]
    with pytest.raises(ValueError, match="at least 8"):
        models.LeNet5(input_size=6)


def test_lenet5_classic_flavour():
    model = models.LeNet5(input_size=32, activation="tanh", pool="avg")
    assert isinstance(model.features[1], nn.Tanh) and isinstance(model.features[2], nn.AvgPool2d)
    assert model.features[0].padding == (0, 0)


def test_small_vgg_shapes_and_keys():
    model = models.SmallVGG(in_channels=3, num_classes=10, input_size=8, widths=(4, 8),
                            batch_norm=True)
    assert model(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 10)
    keys = list(model.state_dict())
    assert keys[:7] == ["features.0.weight", "features.1.weight", "features.1.bias",
                        "features.1.running_mean", "features.1.running_var",
                        "features.1.num_batches_tracked", "features.3.weight"]
    assert keys[-4:] == ["classifier.0.weight", "classifier.0.bias", "classifier.2.weight",
                         "classifier.2.bias"]
    assert model.classifier[0].in_features == 8 * 2 * 2
    with pytest.raises(ValueError, match="multiple"):
        models.SmallVGG(input_size=6)


def test_resnet_shapes_and_torchvision_keys():
    model = models.ResNet(in_channels=3, num_classes=10, widths=(4, 8), blocks_per_stage=2)
    assert model(np.zeros((2, 3, 6, 6), np.float32)).shape == (2, 10)
    keys = list(model.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer1.0.downsample.0.weight" not in keys  # same shape: identity shortcut
    assert "layer2.0.downsample.0.weight" in keys and "layer2.0.downsample.1.running_var" in keys
    assert "layer2.1.downsample.0.weight" not in keys
    assert "layer2.1.conv2.weight" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    assert model.layer2[0].conv1.stride == (2, 2)


def test_unet_shapes_and_keys():
    model = models.UNet(in_channels=3, out_channels=2, base=4, depth=3)
    assert model(np.zeros((1, 3, 8, 16), np.float32)).shape == (1, 2, 8, 16)
    keys = list(model.state_dict())
    assert "encoders.2.2.weight" in keys and "bottleneck.0.weight" in keys
    assert model.ups[2].weight.shape == (32, 16, 2, 2)
    assert model.decoders[0][0].weight.shape == (4, 8, 3, 3)
    assert keys[-2:] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="multiples"):
        model(np.zeros((1, 3, 8, 12), np.float32))


def test_unet_equals_the_same_network_built_from_concat(rng):
    """nn.Concat routes a U-Net skip like UNet's explicit code (container docstring's claim)."""
    nn.manual_seed(3)
    unet = models.UNet(in_channels=1, out_channels=1, base=2, depth=1).double()
    chained = nn.Sequential(
        unet.encoders[0],
        nn.Concat(nn.Sequential(unet.pools[0], unet.bottleneck, unet.ups[0]), nn.Identity()),
        unet.decoders[0], unet.head)
    x = rng.standard_normal((2, 1, 4, 4))
    g = rng.standard_normal((2, 1, 4, 4))
    y = unet(x)
    grad_x = unet.backward(g)
    grads = {n: p.grad.copy() for n, p in unet.named_parameters()}
    unet.zero_grad()
    np.testing.assert_allclose(chained(x), y, rtol=1e-12)
    np.testing.assert_allclose(chained.backward(g), grad_x, rtol=1e-12)
    for name, p in unet.named_parameters():
        np.testing.assert_allclose(p.grad, grads[name], rtol=1e-12, err_msg=name)


def test_autoencoder_encode_decode():
    model = models.Autoencoder(input_shape=(1, 8, 8), code_size=2)
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    code = model.encode(x)
    assert code.shape == (5, 2)
    recon = model.decode(code)
    assert recon.shape == (5, 1, 8, 8) and recon.min() > 0 and recon.max() < 1
    y = model(x)
    np.testing.assert_allclose(y, recon, rtol=1e-6)
    assert model.backward(np.ones_like(y)).shape == x.shape
    assert list(model.state_dict())[:2] == ["encoder.1.weight", "encoder.1.bias"]
    assert models.Autoencoder(input_shape=64, code_size=3)(np.zeros((2, 64), np.float32)).shape \
        == (2, 64)


def test_models_backward_before_forward():
    for name in ZOO:
        model, x = tiny(name)
        with pytest.raises(nn.BackwardError):
            model.backward(np.zeros((2, 3)))
