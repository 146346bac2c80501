"""Layers against PyTorch: the same state_dict keys and shapes (hard-coded, and against real
torch when importable), and, with torch, the same forward outputs, input gradients and
parameter gradients after loading our state_dict into the torch layer."""
import numpy as np
import pytest

import nn
from nn_layer_cases import CASES, build

# Expected state_dict (key -> shape) per case, written out so the check runs without torch.
EXPECTED_STATE = {
    "linear": {"weight": (2, 3), "bias": (2,)},
    "linear_nobias_3d": {"weight": (2, 3)},
    "linear_1d": {"weight": (2, 3), "bias": (2,)},
    "conv2d": {"weight": (3, 2, 3, 3), "bias": (3,)},
    "conv2d_stride_pad": {"weight": (2, 2, 3, 3), "bias": (2,)},
    "conv2d_dilation_nobias": {"weight": (2, 1, 2, 2)},
    "conv2d_groups": {"weight": (2, 2, 1, 3), "bias": (2,)},
    "conv2d_same": {"weight": (2, 1, 3, 2), "bias": (2,)},
    "conv_transpose2d": {"weight": (2, 1, 3, 3), "bias": (1,)},
    "conv_transpose2d_groups": {"weight": (2, 1, 2, 2)},
    "batch_norm1d": {"weight": (3,), "bias": (3,), "running_mean": (3,), "running_var": (3,),
                     "num_batches_tracked": ()},
    "batch_norm1d_eval": {"weight": (3,), "bias": (3,), "running_mean": (3,),
                          "running_var": (3,), "num_batches_tracked": ()},
    "batch_norm1d_ncl": {"weight": (2,), "bias": (2,), "running_mean": (2,),
                         "running_var": (2,), "num_batches_tracked": ()},
    "batch_norm2d": {"weight": (2,), "bias": (2,), "running_mean": (2,), "running_var": (2,),
                     "num_batches_tracked": ()},
    "batch_norm2d_eval": {"weight": (2,), "bias": (2,), "running_mean": (2,),
                          "running_var": (2,), "num_batches_tracked": ()},
    "batch_norm2d_no_affine": {"running_mean": (2,), "running_var": (2,),
                               "num_batches_tracked": ()},
    "batch_norm2d_untracked_eval": {"weight": (2,), "bias": (2,)},
    "sequential": {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4), "2.bias": (2,)},
    "residual_identity": {"block.0.weight": (3, 3), "block.0.bias": (3,),
                          "block.2.weight": (3, 3), "block.2.bias": (3,)},
    "residual_projection": {"block.0.weight": (2, 3), "block.0.bias": (2,),
                            "shortcut.weight": (2, 3)},
    "concat": {"0.weight": (2, 1, 1, 1), "0.bias": (2,), "2.0.weight": (1, 1, 3, 3),
               "2.0.bias": (1,)},
    "add": {"0.0.weight": (3, 3), "0.0.bias": (3,), "2.weight": (3, 3)},
    "prelu": {"weight": (1,)},
    "prelu_channels": {"weight": (3,)},
}
PARAMETER_FREE = ["identity", "flatten", "flatten_0_1", "unflatten", "relu", "leaky_relu",
                  "elu", "tanh", "sigmoid", "softplus", "step", "gelu", "gelu_tanh", "silu",
                  "mish", "hardtanh", "relu6", "softmax",
                  "softmax_dim1_3d", "log_softmax", "log_softmax_dim0", "max_pool2d",
                  "max_pool2d_pad", "avg_pool2d", "avg_pool2d_exclude_pad",
                  "global_avg_pool2d", "upsample", "upsample_size", "dropout", "dropout_eval"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_state_dict_keys_and_shapes(case):
    layer = case.build()
    expected = EXPECTED_STATE.get(case.id)
    if expected is None:
        assert case.id in PARAMETER_FREE, f"no expected state written for {case.id}"
        expected = {}
    state = layer.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert all(isinstance(v, np.ndarray) for v in state.values())


# ---------------------------------------------------------------- real torch
try:
    import torch
    import torch.nn as tnn
except ImportError:  # pragma: no cover - torch is optional
    torch = None


def _torch_layer(case_id):
    """The torch layer with the same constructor arguments as the case's."""
    class Heaviside(tnn.Module):
        def forward(self, x):
            return (x > 0).to(x.dtype) + 0 * x  # a graph node whose gradient is 0

    table = {
        "linear": lambda: tnn.Linear(3, 2),
        "linear_nobias_3d": lambda: tnn.Linear(3, 2, bias=False),
        "linear_1d": lambda: tnn.Linear(3, 2),
        "identity": lambda: tnn.Identity(),
        "flatten": lambda: tnn.Flatten(),
        "flatten_0_1": lambda: tnn.Flatten(0, 1),
        "unflatten": lambda: tnn.Unflatten(1, (2, 3)),
        "relu": lambda: tnn.ReLU(),
        "leaky_relu": lambda: tnn.LeakyReLU(0.1),
        "elu": lambda: tnn.ELU(alpha=0.7),
        "tanh": lambda: tnn.Tanh(),
        "sigmoid": lambda: tnn.Sigmoid(),
        "softplus": lambda: tnn.Softplus(beta=2.0, threshold=3.0),
        "step": lambda: Heaviside(),
        "gelu": lambda: tnn.GELU(),
        "gelu_tanh": lambda: tnn.GELU(approximate="tanh"),
        "silu": lambda: tnn.SiLU(),
        "mish": lambda: tnn.Mish(),
        "hardtanh": lambda: tnn.Hardtanh(-0.5, 2.0),
        "relu6": lambda: tnn.ReLU6(),
        "prelu": lambda: tnn.PReLU(),
        "prelu_channels": lambda: tnn.PReLU(3, init=0.1),
        "softmax": lambda: tnn.Softmax(dim=-1),
        "softmax_dim1_3d": lambda: tnn.Softmax(dim=1),
        "log_softmax": lambda: tnn.LogSoftmax(dim=-1),
        "log_softmax_dim0": lambda: tnn.LogSoftmax(dim=0),
        "conv2d": lambda: tnn.Conv2d(2, 3, 3),
        "conv2d_stride_pad": lambda: tnn.Conv2d(2, 2, 3, stride=2, padding=1),
        "conv2d_dilation_nobias": lambda: tnn.Conv2d(1, 2, 2, dilation=2, bias=False),
        "conv2d_groups": lambda: tnn.Conv2d(4, 2, (1, 3), groups=2, padding=(0, 1)),
        "conv2d_same": lambda: tnn.Conv2d(1, 2, (3, 2), padding="same"),
        "conv_transpose2d": lambda: tnn.ConvTranspose2d(2, 1, 3, stride=2, padding=1,
                                                        output_padding=1),
        "conv_transpose2d_groups": lambda: tnn.ConvTranspose2d(2, 2, 2, groups=2, bias=False),
        "max_pool2d": lambda: tnn.MaxPool2d(2),
        "max_pool2d_pad": lambda: tnn.MaxPool2d(3, stride=2, padding=1),
        "avg_pool2d": lambda: tnn.AvgPool2d(2),
        "avg_pool2d_exclude_pad": lambda: tnn.AvgPool2d(3, 2, 1, count_include_pad=False),
        "global_avg_pool2d": lambda: tnn.AdaptiveAvgPool2d(1),
        "upsample": lambda: tnn.Upsample(scale_factor=2),
        "upsample_size": lambda: tnn.Upsample(size=(4, 3)),
        "batch_norm1d": lambda: tnn.BatchNorm1d(3),
        "batch_norm1d_eval": lambda: tnn.BatchNorm1d(3),
        "batch_norm1d_ncl": lambda: tnn.BatchNorm1d(2),
        "batch_norm2d": lambda: tnn.BatchNorm2d(2),
        "batch_norm2d_eval": lambda: tnn.BatchNorm2d(2),
        "batch_norm2d_no_affine": lambda: tnn.BatchNorm2d(2, affine=False),
        "batch_norm2d_untracked_eval": lambda: tnn.BatchNorm2d(2, track_running_stats=False),
        "dropout_eval": lambda: tnn.Dropout(0.4),
        "sequential": lambda: tnn.Sequential(tnn.Linear(3, 4), tnn.Tanh(), tnn.Linear(4, 2)),
    }
    return table.get(case_id)


TORCH_CASES = [c for c in CASES if torch is not None and _torch_layer(c.id) is not None]


@pytest.mark.skipif(torch is None, reason="torch is not installed")
@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note on its own speed
@pytest.mark.parametrize("case", TORCH_CASES, ids=[c.id for c in TORCH_CASES])
def test_matches_torch(case):
    layer, x = build(case)
    ref = _torch_layer(case.id)().double()
    ref.train(layer.training)
    state = layer.state_dict()
    ref_state = ref.state_dict()
    assert list(state) == list(ref_state)
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {k: tuple(v.shape) for k, v in ref_state.items()}
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = ref(xt)
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = np.random.default_rng(3).standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    grad_x = layer.backward(g)
    np.testing.assert_allclose(grad_x, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    ref_params = dict(ref.named_parameters())
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, ref_params[name].grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
    # Buffers after the step: BatchNorm's running statistics and batch counter.
    after = layer.state_dict()
    for name, value in ref.state_dict().items():
        np.testing.assert_allclose(after[name], value.numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
