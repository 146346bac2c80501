"""Interoperability (issue 16, item 5): torch tensors and other array producers as inputs,
Parameter read as an array, device aliases, ReLU(inplace=True), DataLoader from (x, y)."""
import numpy as np
import pytest

import kernels as K
import nn
from kernels.device import normalize_device

torch = pytest.importorskip("torch")


def test_torch_cpu_tensors_are_read_without_a_copy(rng):
    layer = nn.Linear(3, 2).double()
    t = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = layer(t)
    np.testing.assert_allclose(y, t.detach().numpy() @ layer.weight.data.T
                               + layer.bias.data, rtol=1e-12)
    # The array the layer saved for backward shares the tensor's memory.
    saved = layer._saved[-1][0][0]
    assert np.shares_memory(saved, t.detach().numpy())
    layer.backward(np.ones((4, 2)))


def test_torch_labels_and_predictions_work_in_losses(rng):
    loss_fn = nn.CrossEntropyLoss()
    logits = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    ours = float(loss_fn(logits, labels))
    assert ours == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)),
                                 rel=1e-12)
    assert loss_fn.backward().shape == (5, 3)


class _ArrayLike:
    """Only ``__array__`` (e.g. a pandas or xarray object)."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class _DLPackOnly:
    """Only the DLPack protocol (e.g. JAX or TensorFlow CPU arrays)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


class _GpuDLPack:
    def __dlpack__(self, **kwargs):
        raise BufferError("unsupported device")

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA


@pytest.mark.parametrize("wrap", [_ArrayLike, _DLPackOnly])
def test_array_protocols_are_accepted_without_a_copy(wrap, rng):
    a = rng.standard_normal((2, 3))
    out = nn.as_array(wrap(a))
    assert isinstance(out, np.ndarray) and np.shares_memory(out, a)
    np.testing.assert_array_equal(nn.Tanh()(wrap(a)), nn.Tanh()(a))


class _CudaArrayInterface:
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                "version": 3}

    def __array__(self, dtype=None, copy=None):  # a hidden device-to-host copy
        raise AssertionError("must not be called")


def test_unreadable_inputs_are_refused_with_how_to_convert():
    with pytest.raises(TypeError, match=r"cupy.asarray"):
        nn.ReLU()(_CudaArrayInterface())
    with pytest.raises(TypeError, match="convert it to a NumPy array"):
        nn.ReLU()(_GpuDLPack())
    if torch.cuda.is_available():  # pragma: no cover - CPU-only CI
        with pytest.raises(TypeError, match=r"cupy.from_dlpack"):
            nn.ReLU()(torch.ones(2, device="cuda"))


def test_parameter_reads_like_its_array():
    p = nn.Parameter(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert np.asarray(p) is p.data
    np.testing.assert_array_equal(np.asarray(p, dtype=np.float32), p.data)
    assert np.asarray(p, dtype=np.float32).dtype == np.float32
    np.testing.assert_array_equal(p * 2, p.data * 2)
    np.testing.assert_array_equal(2 * p, p.data * 2)
    np.testing.assert_array_equal(p + p, p.data * 2)
    np.testing.assert_array_equal(p @ np.ones(3), p.data.sum(axis=1))
    np.testing.assert_array_equal(-p, -p.data)
    np.testing.assert_array_equal(np.exp(p), np.exp(p.data))
    assert isinstance(p * 2, np.ndarray) and len(p) == 2 and p.ndim == 2
    np.testing.assert_array_equal(p[1], [3, 4, 5])
    data = p.data
    p -= 1.0  # in place, so optimizers and views still see the same array
    assert p.data is data and p.data[0, 0] == -1.0
    p[0, 0] = 7.0
    assert data[0, 0] == 7.0


@pytest.mark.cuda
def test_parameter_on_the_gpu_refuses_implicit_host_conversion(cuda_device):
    p = nn.Parameter(K.to_device(np.ones(3), cuda_device))
    with pytest.raises(TypeError, match="to_host"):
        np.asarray(p)


@pytest.mark.parametrize("name, want", [("cpu", "cpu"), ("CPU", "cpu"), ("cuda", "cuda"),
                                        ("cuda:0", "cuda")])
def test_device_names_torch_users_write(name, want):
    assert normalize_device(name) == want
    assert normalize_device(torch.device(name.lower())) == want


@pytest.mark.parametrize("bad", ["cuda:1", "tpu", None, ""])
def test_other_device_names_are_refused(bad):
    with pytest.raises(ValueError, match="device"):
        normalize_device(bad)


def test_module_cpu_and_to_aliases():
    layer = nn.Linear(2, 2)
    assert layer.to("CPU").device == "cpu"
    assert layer.cpu() is layer and layer.device == "cpu"
    assert K.to_device(np.ones(2), "cpu") is not None
    with pytest.raises(ValueError, match="only one GPU"):
        layer.cuda(1)


@pytest.mark.cuda
def test_module_cuda_alias(cuda_device):
    layer = nn.Linear(2, 2).cuda()
    assert layer.device == "cuda"
    assert nn.Linear(2, 2).to("cuda:0").device == "cuda"
    assert K.device_of(K.to_device(np.ones(2), "cuda:0")) == "cuda"
    assert layer.cpu().device == "cpu"


def test_relu_inplace_returns_its_input_and_backpropagates(rng):
    x = rng.standard_normal((3, 4))
    x_copy = x.copy()
    layer = nn.ReLU(inplace=True)
    y = layer(x)
    assert y is x
    np.testing.assert_array_equal(x, np.maximum(x_copy, 0))
    g = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(layer.backward(g), g * (x_copy > 0))
    assert repr(layer) == "ReLU(inplace=True)" and repr(nn.ReLU()) == "ReLU()"


def test_relu_inplace_matches_torch_in_a_model(rng):
    nn.manual_seed(0)
    ours = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 2)).double()
    ref = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    ref.load_state_dict(ours.state_dict())
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(ours(x), ref(x))
    g = rng.standard_normal((3, 2))
    np.testing.assert_array_equal(ours.backward(g), ref.backward(g))
    assert nn.gradcheck_module(ours, x).ok


def test_relu_inplace_refuses_a_read_only_input():
    x = np.ones(3)
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"ReLU\(inplace=True\)"):
        nn.ReLU(inplace=True)(x)


def test_dataloader_from_a_tuple(rng):
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    batches = list(nn.data.DataLoader((x, y), batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    torch_batches = list(nn.data.DataLoader((tx, ty), batch_size=4, device="cuda:0"
                                            if "cuda" in K.devices() else "cpu"))
    np.testing.assert_array_equal(K.to_host(torch_batches[0][0]), x[:4])
    with pytest.raises(ValueError, match=r"\(x, y\)"):
        nn.data.DataLoader((x, y, y))
    with pytest.raises(TypeError, match="tuple"):
        nn.data.DataLoader(5)


@pytest.mark.parametrize("before", [
    lambda: nn.BatchNorm1d(4, affine=False),
    lambda: nn.BatchNorm1d(4, affine=False, track_running_stats=False),
])
def test_relu_inplace_keeps_a_saved_output_intact(before, rng):
    """BatchNorm(affine=False) returns the array it saved for backward: overwriting it
    would corrupt its gradient, so ReLU computes out of place there."""
    x = rng.standard_normal((6, 4))
    ours = nn.Sequential(before(), nn.ReLU(inplace=True)).double()
    ref = nn.Sequential(before(), nn.ReLU()).double()
    g = rng.standard_normal((6, 4))
    np.testing.assert_array_equal(ours(x), ref(x))
    np.testing.assert_array_equal(ours.backward(g), ref.backward(g))
    assert nn.gradcheck_module(ours, x).ok
