"""Bad arguments to layers and helpers end in a clear error naming the argument (issue 13,
item 6); before, they were silently truncated or failed deep inside with unrelated errors."""
import numpy as np
import pytest

import kernels as K
import nn
from nn import data


@pytest.mark.parametrize("args,name", [((2.5, 3), "in_features"), ((0, 3), "in_features"),
                                       ((3, -1), "out_features"), ((True, 3), "in_features"),
                                       ((3, "4"), "out_features")])
def test_linear_constructor_checks_features(args, name):
    # before: Linear(2.5, 3) silently had 2 inputs; Linear(0, 3) raised ZeroDivisionError
    with pytest.raises(ValueError, match=f"^{name}: expected a positive integer"):
        nn.Linear(*args)


def test_linear_accepts_numpy_ints():
    layer = nn.Linear(np.int64(4), np.int32(2))
    assert (layer.in_features, layer.out_features) == (4, 2)


def test_linear_backward_checks_grad_y_dtype_and_shape():
    layer = nn.Linear(4, 3)
    x = np.ones((2, 4), np.float32)
    layer(x)
    # before: a float64 gradient was accepted and failed later in the optimizer
    with pytest.raises(TypeError, match="grad_y and x must have the same dtype"):
        layer.backward(np.ones((2, 3), np.float64))
    layer(x)
    with pytest.raises(ValueError, match=r"grad_y: expected shape \(2, 3\)"):
        layer.backward(np.ones((2, 4), np.float32))
    layer(x)
    with pytest.raises(TypeError, match="^grad_y: "):
        layer.backward(None)
    layer(x)
    assert layer.backward(np.ones((2, 3), np.float32)).shape == (2, 4)


@pytest.mark.parametrize("factor", [float("nan"), float("inf"), -float("inf"), (2, float("nan"))])
def test_upsample_refuses_non_finite_scale(factor):
    with pytest.raises(ValueError, match="^scale_factor: "):
        nn.Upsample(scale_factor=factor)


def test_upsample_size_on_empty_input():
    # before: ZeroDivisionError (integer modulo by zero)
    with pytest.raises(ValueError, match="non-empty H and W"):
        nn.Upsample(size=4)(np.zeros((1, 1, 0, 2), np.float32))
    with pytest.raises(ValueError, match="non-empty H and W"):
        nn.Upsample(scale_factor=2)(np.zeros((1, 1, 2, 0), np.float32))


@pytest.mark.parametrize("shape", [(1, 1, 6.0, 6), (1, 1, 6.5, 6), (1.0, 1, 6, 6)])
def test_shape_helpers_refuse_float_sizes(shape):
    w = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises((TypeError, ValueError), match="^x_shape: "):
        K.conv2d_output_shape(shape, w.shape)
    with pytest.raises((TypeError, ValueError), match="^x_shape: "):
        K.conv2d_backward_input(np.zeros((1, 1, 4, 4), np.float32), w, shape)
    with pytest.raises(ValueError, match="^x_shape: "):
        K.avg_pool2d_backward(np.zeros((1, 1, 3, 3), np.float32), shape, 2)


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.LeakyReLU(), nn.ELU(), nn.Tanh(), nn.Sigmoid(),
                                   nn.Softplus(), nn.Step(), nn.GELU(), nn.Softmax(),
                                   nn.LogSoftmax()])
def test_activations_called_with_none_name_x(layer):
    with pytest.raises(TypeError, match="^x: expected a float32 or float64 array"):
        layer(None)


@pytest.mark.parametrize("op", ["relu_forward", "sigmoid_forward", "tanh_forward"])
def test_kernels_called_with_none_name_x(op):
    with pytest.raises(TypeError, match="^x: "):
        getattr(K, op)(None)


@pytest.mark.parametrize("fractions", [(float("nan"), 0.5, 0.5), (0.5, float("inf"), 0.5),
                                       (0.5, "0.5")])
def test_split_refuses_non_finite_fractions(fractions):
    with pytest.raises(ValueError, match="^split: fractions must be finite numbers"):
        data.split(data.blobs(n=20), fractions)
