"""conv2d / conv_transpose2d kernels: NumPy references, gradient checks, CPU against CUDA.

Both CPU designs (``algo="direct"`` and ``algo="gemm"``) are tested on every property; the
GEMM design is also run with one-row column bands so that band edges are exercised.
Tolerances are error bounds, not guesses: a sum of K products rounded in a dtype with unit
roundoff u is within about K*u*sum(|terms|) of the exact value, and sum(|terms|) is the same
convolution applied to |x| and |w|.
"""
from unittest import mock

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import kernels as K
import kernels.conv as KC
from kernels import threads
from nn import gradcheck
from reference_conv import conv2d_reference, conv_transpose2d_reference, same_padding

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # CI does not install torch; it is only an extra cross-check
    torch = None

ALGOS = ["direct", "gemm"]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def assert_within(actual, exact, bound, terms, dtype, what):
    """|actual - exact| <= 2 * (terms + 1) * u * bound, elementwise (plus a tiny floor)."""
    actual = K.to_host(actual).astype(np.float64)
    tol = 2.0 * (terms + 1) * EPS[dtype] * np.asarray(bound) + 1e-300
    err = np.abs(actual - exact)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else ()
    assert np.all(err <= tol), (f"{what}: error {err[worst]:.3g} above bound {tol[worst]:.3g} "
                                f"at {worst}")


def pads_of(padding, w_shape, dilation):
    if padding == "same":
        return same_padding(w_shape[2], w_shape[3], dilation)
    if padding == "valid":
        return (0, 0, 0, 0)
    return (padding[0], padding[0], padding[1], padding[1])


@st.composite
def conv_configs(draw, max_side=7, max_channels=3):
    """A valid conv2d problem: shapes, stride, padding (ints/'same'/'valid'), dilation, groups."""
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, max_channels))
    ocg = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["ints", "ints", "ints", "same", "valid"]))
    if mode == "same":
        stride, padding = (1, 1), "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2))) if mode == "ints" else "valid"
    pt, pb, pl, pr = pads_of(padding, (0, 0, kh, kw), (dh, dw))
    # smallest image the dilated kernel fits into, plus up to a few pixels
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - pt - pb), max_side))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - pl - pr), max_side))
    n = draw(st.integers(1, 3))
    return dict(x_shape=(n, cg * groups, h, w), w_shape=(ocg * groups, cg, kh, kw),
                stride=stride, padding=padding, dilation=(dh, dw), groups=groups,
                bias=draw(st.booleans()), algo=draw(st.sampled_from(ALGOS)),
                bands=draw(st.sampled_from(BANDS)), seed=draw(st.integers(0, 2**16)))


def make_inputs(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
    w = rng.standard_normal(cfg["w_shape"]).astype(dtype)
    b = rng.standard_normal(cfg["w_shape"][0]).astype(dtype) if cfg["bias"] else None
    return x, w, b


def conv_args(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                groups=cfg["groups"])


BANDS = ["default", "rows", "samples"]


def band_patch(cfg):
    """The GEMM design's column bands: the default, one output row each (band edges
    everywhere), or as many whole samples as fit (several samples in one GEMM)."""
    if cfg["bands"] == "rows":
        return mock.patch.object(KC, "_BAND_BYTES", 1)
    return mock.patch.object(KC, "_MIN_BLOCKS", 1 if cfg["bands"] == "samples" else KC._MIN_BLOCKS)


def reference(cfg, x, w, b):
    pads = pads_of(cfg["padding"], cfg["w_shape"], cfg["dilation"])
    args = dict(stride=cfg["stride"], padding=pads, dilation=cfg["dilation"], groups=cfg["groups"])
    exact = conv2d_reference(x, w, b, **args)
    bound = conv2d_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args)
    return exact, bound


# ---------------------------------------------------------------- the reference itself
def test_reference_matches_hand_computed_values():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y = conv2d_reference(x, w, np.array([0.5]), stride=(2, 2))
    # x[i, j] - x[i+1, j+1] = -5 everywhere, plus the bias
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), -4.5))
    y = conv2d_reference(x, w, None, padding=(1, 0, 1, 0))
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == -x[0, 0, 0, 0]   # only the bottom-right tap is inside


@pytest.mark.skipif(torch is None, reason="torch not installed (optional cross-check)")
@pytest.mark.parametrize("padding", [(1, 2), "same", "valid"])
def test_reference_matches_torch(padding, rng):
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 2, 3))
    b = rng.standard_normal(6)
    stride = (1, 1) if padding == "same" else (2, 1)
    expected = F.conv2d(*map(torch.from_numpy, (x, w, b)), stride=stride, padding=padding,
                        dilation=(2, 1), groups=2).numpy()
    got = conv2d_reference(x, w, b, stride, pads_of(padding, w.shape, (2, 1)), (2, 1), 2)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    xt = rng.standard_normal((2, 4, 3, 4))
    wt = rng.standard_normal((4, 3, 3, 2))
    expected = F.conv_transpose2d(torch.from_numpy(xt), torch.from_numpy(wt), None, (2, 3),
                                  (1, 0), (1, 2), 2, (1, 2)).numpy()
    got = conv_transpose2d_reference(xt, wt, None, (2, 3), (1, 0), (1, 2), 2, (1, 2))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- conv2d forward
@PROPERTY
@given(cfg=conv_configs())
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_forward_matches_reference(cfg, dtype):
    x, w, b = make_inputs(cfg, dtype)
    with band_patch(cfg):
        y = K.conv2d_forward(x, w, b, **conv_args(cfg), algo=cfg["algo"])
    exact, bound = reference(cfg, x, w, b)
    assert y.dtype == dtype and y.shape == exact.shape
    taps = w.shape[1] * w.shape[2] * w.shape[3]
    assert_within(y, exact, bound, taps, dtype, "y")


FIXED = [  # x shape, w shape, stride, padding, dilation, groups
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1),
    ((2, 3, 9, 7), (4, 3, 3, 2), (2, 1), (1, 0), 1, 1),
    ((2, 4, 8, 8), (6, 2, 3, 3), 1, 2, 2, 2),
    ((1, 6, 6, 5), (6, 1, 3, 3), 1, 1, 1, 6),            # depthwise
    ((3, 4, 5, 6), (8, 4, 1, 1), 1, 0, 1, 1),            # pointwise
    ((2, 2, 7, 6), (3, 2, 2, 2), 1, "same", (2, 1), 1),  # even kernel: asymmetric 'same'
    ((1, 3, 4, 4), (2, 3, 4, 4), 3, 0, 1, 1),            # kernel = image
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", FIXED, ids=lambda c: "x{}w{}".format(*c[:2]))
def test_forward_fixed_grid(case, algo, dtype):
    xs, ws, stride, padding, dilation, groups = case
    cfg = dict(w_shape=ws, stride=KC._pair("stride", stride, 1), padding=padding,
               dilation=KC._pair("dilation", dilation, 1), groups=groups)
    if not isinstance(padding, str):
        cfg["padding"] = KC._pair("padding", padding, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    y = K.conv2d_forward(x, w, b, stride, padding, dilation, groups, algo=algo)
    exact, bound = reference(cfg, x, w, b)
    assert_within(y, exact, bound, np.prod(ws[1:]), dtype, "y")


def test_forward_medium_shapes_many_bands():
    """Bigger than the property tests: several samples, bands and threads in the GEMM design."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 8, 13, 11)).astype(np.float32)
    w = rng.standard_normal((10, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    cfg = dict(w_shape=w.shape, stride=(1, 2), padding=(1, 1), dilation=(2, 1), groups=2)
    exact, bound = reference(cfg, x, w, b)
    for band_bytes, min_blocks in ((1, 8), (4096, 8), (KC._BAND_BYTES, 8), (KC._BAND_BYTES, 1)):
        with mock.patch.object(KC, "_BAND_BYTES", band_bytes), \
                mock.patch.object(KC, "_MIN_BLOCKS", min_blocks):
            for algo in ALGOS:
                y = K.conv2d_forward(x, w, b, (1, 2), 1, (2, 1), 2, algo=algo)
                assert_within(y, exact, bound, 36, np.float32,
                              f"y ({algo}, bands of {band_bytes} B, {min_blocks} blocks)")


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((2, 3, 10, 12))[:, :, ::2, 1::2]
    w = rng.standard_normal((4, 3, 5, 3)).transpose(0, 1, 3, 2)[:, :, :, :3]
    b = rng.standard_normal(8)[::2]
    for algo in ALGOS:
        y = K.conv2d_forward(x, w, b, padding=1, algo=algo)
        np.testing.assert_array_equal(
            y, K.conv2d_forward(*map(np.ascontiguousarray, (x, w, b)), padding=1, algo=algo))


@pytest.mark.parametrize("algo", ALGOS)
def test_empty_batch(algo):
    x = np.zeros((0, 4, 6, 6), dtype=np.float32)
    w = np.ones((2, 4, 3, 3), dtype=np.float32)
    y = K.conv2d_forward(x, w, np.ones(2, np.float32), algo=algo)
    assert y.shape == (0, 2, 4, 4)
    gx, gw, gb = K.conv2d_backward(np.zeros(y.shape, np.float32), x, w, algo=algo)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, np.zeros_like(w))
    np.testing.assert_array_equal(gb, np.zeros(2, np.float32))
    assert K.conv_transpose2d_forward(np.zeros((0, 2, 3, 3), np.float32), w).shape == (0, 4, 5, 5)


def test_output_shape_helpers():
    assert K.conv2d_output_shape((2, 3, 32, 30), (8, 3, 3, 3), 2, 1) == (2, 8, 16, 15)
    assert K.conv2d_output_shape((1, 4, 7, 8), (4, 2, 2, 4), 1, "same", 1, 2) == (1, 4, 7, 8)
    assert K.conv_transpose2d_output_shape((2, 4, 5, 5), (4, 3, 3, 3), 2, 1, 1, 1) == (2, 3, 10, 10)
    assert K.conv_transpose2d_output_shape((2, 4, 5, 5), (4, 3, 3, 3), 2, 1, 1, 2) == (2, 6, 10, 10)


# ---------------------------------------------------------------- conv2d backward
def conv_backward_fns(cfg):
    args = conv_args(cfg)
    algo = cfg["algo"]

    def forward(x, w, b):
        return K.conv2d_forward(x, w, b, **args, algo=algo)

    def backward(grad_y, x, w, b):
        return K.conv2d_backward(grad_y, x, w, **args, need_bias=b is not None, algo=algo)
    return forward, backward


@PROPERTY
@given(cfg=conv_configs(max_side=5, max_channels=2))
def test_backward_gradcheck_f64(cfg):
    x, w, b = make_inputs(cfg, np.float64)
    b = np.zeros(w.shape[0]) if b is None else b
    forward, backward = conv_backward_fns(cfg)
    with band_patch(cfg):
        report = gradcheck(forward, backward, {"x": x, "w": w, "b": b})
    assert report.worst_error <= 1e-6 and len(report.tensors) == 3


@PROPERTY
@given(cfg=conv_configs())
def test_backward_f32_matches_f64(cfg):
    """float32 gradients within their rounding bound of the (gradchecked) float64 ones."""
    x, w, _ = make_inputs(cfg, np.float32)
    args = conv_args(cfg)
    y_shape = K.conv2d_output_shape(x.shape, w.shape, **args)
    gy = np.random.default_rng(cfg["seed"] + 1).standard_normal(y_shape).astype(np.float32)
    with band_patch(cfg):
        got = K.conv2d_backward(gy, x, w, **args, algo=cfg["algo"])
        exact = K.conv2d_backward(*(a.astype(np.float64) for a in (gy, x, w)), **args,
                                  algo=cfg["algo"])
        bound = K.conv2d_backward(*(np.abs(a).astype(np.float64) for a in (gy, x, w)), **args,
                                  algo=cfg["algo"])
    n, oc, oh, ow = y_shape
    terms = (oc // cfg["groups"] * w.shape[2] * w.shape[3], n * oh * ow, n * oh * ow)
    for name, g, e, bd, t in zip(("grad_x", "grad_w", "grad_b"), got, exact, bound, terms):
        assert g.dtype == np.float32
        assert_within(g, e, bd, t, np.float32, name)


def test_backward_need_flags_and_single_pass_functions(rng):
    x = rng.standard_normal((2, 4, 6, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    gy = rng.standard_normal((2, 6, 3, 3))
    args = dict(stride=2, padding=1, dilation=1, groups=2)
    gx, gw, gb = K.conv2d_backward(gy, x, w, **args)
    assert K.conv2d_backward(gy, x, w, **args, need_input=False, need_weight=False,
                             need_bias=False) == (None, None, None)
    np.testing.assert_array_equal(K.conv2d_backward_input(gy, w, x.shape, **args), gx)
    np.testing.assert_array_equal(K.conv2d_backward_weight(gy, x, w.shape, **args), gw)
    np.testing.assert_array_equal(K.conv2d_backward_bias(gy), gb)
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)), rtol=1e-13)


@pytest.mark.skipif(torch is None, reason="torch not installed (optional cross-check)")
@pytest.mark.parametrize("algo", ALGOS)
def test_backward_matches_torch(algo, rng):
    x = rng.standard_normal((3, 6, 9, 8))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    args = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, **args)
    gy = rng.standard_normal(ty.shape)
    ty.backward(torch.from_numpy(gy))
    got = K.conv2d_backward(gy, x, w, **args, algo=algo)
    for g, t in zip(got, (tx, tw, tb)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- conv_transpose2d
@st.composite
def transpose_configs(draw, max_side=5, max_channels=2):
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, max_channels))
    ocg = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    oph = draw(st.integers(0, max(sh, dh) - 1))
    opw = draw(st.integers(0, max(sw, dw) - 1))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    # padding may not remove the whole output
    ph = draw(st.integers(0, max(0, min(2, ((h - 1) * sh + dh * (kh - 1) + oph) // 2))))
    pw = draw(st.integers(0, max(0, min(2, ((w - 1) * sw + dw * (kw - 1) + opw) // 2))))
    return dict(x_shape=(draw(st.integers(1, 3)), cg * groups, h, w),
                w_shape=(cg * groups, ocg, kh, kw), stride=(sh, sw), padding=(ph, pw),
                output_padding=(oph, opw), groups=groups, dilation=(dh, dw),
                bias=draw(st.booleans()), algo=draw(st.sampled_from(ALGOS)),
                bands=draw(st.sampled_from(BANDS)), seed=draw(st.integers(0, 2**16)))


def transpose_args(cfg):
    return dict(stride=cfg["stride"], padding=cfg["padding"],
                output_padding=cfg["output_padding"], groups=cfg["groups"],
                dilation=cfg["dilation"])


def transpose_inputs(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
    w = rng.standard_normal(cfg["w_shape"]).astype(dtype)
    oc = cfg["w_shape"][1] * cfg["groups"]
    b = rng.standard_normal(oc).astype(dtype) if cfg["bias"] else None
    return x, w, b


@PROPERTY
@given(cfg=transpose_configs(max_side=6, max_channels=3))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_transpose_forward_matches_reference(cfg, dtype):
    x, w, b = transpose_inputs(cfg, dtype)
    with band_patch(cfg):
        y = K.conv_transpose2d_forward(x, w, b, **transpose_args(cfg), algo=cfg["algo"])
    exact = conv_transpose2d_reference(x, w, b, **transpose_args(cfg))
    bound = conv_transpose2d_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b),
                                       **transpose_args(cfg))
    assert y.dtype == dtype and y.shape == exact.shape
    # each output sums at most C/groups * KH * KW products, plus the bias
    terms = w.shape[0] // cfg["groups"] * w.shape[2] * w.shape[3] + 1
    assert_within(y, exact, bound, terms, dtype, "y")


@PROPERTY
@given(cfg=transpose_configs())
def test_transpose_backward_gradcheck_f64(cfg):
    x, w, b = transpose_inputs(cfg, np.float64)
    b = np.zeros(w.shape[1] * cfg["groups"]) if b is None else b
    args, algo = transpose_args(cfg), cfg["algo"]

    def forward(x, w, b):
        return K.conv_transpose2d_forward(x, w, b, **args, algo=algo)

    def backward(grad_y, x, w, b):
        return K.conv_transpose2d_backward(grad_y, x, w, **args, algo=algo)
    with band_patch(cfg):
        report = gradcheck(forward, backward, {"x": x, "w": w, "b": b})
    assert report.worst_error <= 1e-6 and len(report.tensors) == 3


@PROPERTY
@given(cfg=transpose_configs(max_side=6, max_channels=3))
def test_transpose_backward_f32_matches_f64(cfg):
    x, w, _ = transpose_inputs(cfg, np.float32)
    args = transpose_args(cfg)
    y_shape = K.conv_transpose2d_output_shape(x.shape, w.shape, **args)
    gy = np.random.default_rng(cfg["seed"] + 1).standard_normal(y_shape).astype(np.float32)
    with band_patch(cfg):
        got = K.conv_transpose2d_backward(gy, x, w, **args, algo=cfg["algo"])
        exact = K.conv_transpose2d_backward(*(a.astype(np.float64) for a in (gy, x, w)),
                                            **args, algo=cfg["algo"])
        bound = K.conv_transpose2d_backward(*(np.abs(a).astype(np.float64) for a in (gy, x, w)),
                                            **args, algo=cfg["algo"])
    n, c, h, w_ = x.shape
    # grad_x sums OC/groups*KH*KW products; grad_w and grad_b sum over every position
    terms = (w.shape[1] * w.shape[2] * w.shape[3], n * h * w_, n * y_shape[2] * y_shape[3])
    for name, g, e, bd, t in zip(("grad_x", "grad_w", "grad_b"), got, exact, bound, terms):
        assert g.dtype == np.float32
        assert_within(g, e, bd, t, np.float32, name)


@PROPERTY
@given(cfg=conv_configs())
def test_adjoint_identity(cfg):
    """<conv2d(x), y> == <x, conv_transpose2d(y)> with the same weight and geometry."""
    if cfg["padding"] == "same":   # conv_transpose2d has no 'same'; use the ints it means
        pt, pb, pl, pr = pads_of("same", cfg["w_shape"], cfg["dilation"])
        assume((pt, pl) == (pb, pr))
        cfg = dict(cfg, padding=(pt, pl))
    if cfg["padding"] == "valid":
        cfg = dict(cfg, padding=(0, 0))
    x, w, _ = make_inputs(cfg, np.float64)
    args = conv_args(cfg)
    n, oc, oh, ow = K.conv2d_output_shape(x.shape, w.shape, **args)
    (sh, sw), (ph, pw), (dh, dw) = cfg["stride"], cfg["padding"], cfg["dilation"]
    # the output_padding that makes conv_transpose2d's output the size of x
    oph = x.shape[2] - ((oh - 1) * sh - 2 * ph + dh * (w.shape[2] - 1) + 1)
    opw = x.shape[3] - ((ow - 1) * sw - 2 * pw + dw * (w.shape[3] - 1) + 1)
    # sizes that leave input rows unused need more output_padding than torch allows
    assume((oph < sh or oph < dh) and (opw < sw or opw < dw))
    yv = np.random.default_rng(cfg["seed"] + 7).standard_normal((n, oc, oh, ow))
    with band_patch(cfg):
        lhs = np.sum(K.conv2d_forward(x, w, None, **args, algo=cfg["algo"]) * yv)
        back = K.conv_transpose2d_forward(yv, w, None, cfg["stride"], cfg["padding"],
                                          (oph, opw), cfg["groups"], cfg["dilation"],
                                          algo=cfg["algo"])
    rhs = np.sum(x * back)
    scale = np.sum(np.abs(K.conv2d_forward(np.abs(x), np.abs(w), None, **args)) * np.abs(yv))
    assert abs(lhs - rhs) <= 1e-12 * max(scale, 1.0)


@pytest.mark.skipif(torch is None, reason="torch not installed (optional cross-check)")
def test_transpose_matches_torch_unet_decoder(rng):
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float32)
    w = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    ty = F.conv_transpose2d(tx, tw, tb, stride=2)
    gy = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.from_numpy(gy))
    for algo in ALGOS:
        y = K.conv_transpose2d_forward(x, w, b, 2, algo=algo)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        for g, t in zip(K.conv_transpose2d_backward(gy, x, w, 2, algo=algo), (tx, tw, tb)):
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("algo", ALGOS)
def test_repeated_calls_and_thread_counts_bitwise_identical(algo, rng):
    x = rng.standard_normal((9, 6, 12, 11)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    args = dict(stride=1, padding=1, dilation=1, groups=2)
    gy = rng.standard_normal(K.conv2d_output_shape(x.shape, w.shape, **args)).astype(np.float32)

    def run():
        y = K.conv2d_forward(x, w, None, **args, algo=algo)
        return (y,) + K.conv2d_backward(gy, x, w, **args, algo=algo)
    first = run()
    for _ in range(3):
        for a, b in zip(first, run()):
            np.testing.assert_array_equal(a, b)
    n_threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        for a, b in zip(first, run()):
            np.testing.assert_array_equal(a, b)
    finally:
        numba.set_num_threads(n_threads)


def test_blas_thread_count_is_restored():
    before = threads.blas_libraries()
    x = np.ones((2, 4, 8, 8), dtype=np.float32)
    w = np.ones((4, 4, 3, 3), dtype=np.float32)
    with threads.single_threaded_blas():
        assert all(n == 1 for _, n in threads.blas_libraries())
        K.conv2d_forward(x, w, algo="gemm")   # nests inside this region
        assert all(n == 1 for _, n in threads.blas_libraries())
    assert threads.blas_libraries() == before


# ---------------------------------------------------------------- validation
def bad_call(fn, *args, match, error=ValueError, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


def test_validation_messages():
    x = np.zeros((2, 4, 8, 8), dtype=np.float32)
    w = np.zeros((6, 2, 3, 3), dtype=np.float32)
    gy = np.zeros((2, 6, 6, 6), dtype=np.float32)
    f = K.conv2d_forward
    bad_call(f, x[0], w, match=r"x: expected a 4-D array, got shape \(4, 8, 8\)")
    bad_call(f, x, w[0], match=r"w: expected a 4-D array")
    bad_call(f, x, w, groups=1, match=r"x: expected 2 channels .*\(6, 2, 3, 3\).*\(2, 4, 8, 8\)")
    bad_call(f, x, np.zeros((6, 1, 3, 3), np.float32), groups=3,
             match=r"groups: 3 does not divide the 4 input channels")
    bad_call(f, x, np.zeros((5, 2, 3, 3), np.float32), groups=2,
             match=r"groups: 2 does not divide the 5 output channels")
    bad_call(f, x, w, groups=0, match=r"groups: expected a positive integer, got 0")
    bad_call(f, x, np.zeros((6, 2, 9, 3), np.float32), groups=2,
             match=r"w: the kernel 9x3 .* larger than the padded input 8x8")
    bad_call(f, x, w, groups=2, dilation=4, match=r"kernel 3x3 with dilation \(4, 4\) spans 9x9")
    bad_call(f, x, w, groups=2, stride=0, match=r"stride: expected positive values, got 0")
    bad_call(f, x, w, groups=2, stride=(1, -1), match=r"stride: expected positive")
    bad_call(f, x, w, groups=2, dilation=0, match=r"dilation: expected positive values")
    bad_call(f, x, w, groups=2, padding=-1, match=r"padding: expected non-negative values, got -1")
    bad_call(f, x, w, groups=2, padding=(1, 2, 3), match=r"padding: expected an int or a pair")
    bad_call(f, x, w, groups=2, padding="full", match=r"padding: expected an int, a pair, 'same'")
    bad_call(f, x, w, groups=2, padding="same", stride=2, match=r"padding='same' needs stride 1")
    bad_call(f, x, w, groups=2, stride=1.5, match=r"stride: expected an int", error=TypeError)
    bad_call(f, x, w.astype(np.float64), groups=2,
             match=r"x and w must have the same dtype: x is float32, w is float64", error=TypeError)
    bad_call(f, x, w, np.zeros(6, np.float64), groups=2, match=r"b is float64", error=TypeError)
    bad_call(f, x, w, np.zeros(5, np.float32), groups=2,
             match=r"b: expected shape \(6,\) .* got \(5,\)")
    bad_call(f, x.astype(np.int32), w, match=r"x: expected dtype float32 or float64, got int32",
             error=TypeError)
    bad_call(f, x, w, groups=2, algo="fft", match=r"algo: expected one of")
    bad_call(K.conv2d_backward, gy[:, :, :5], x, w, groups=2,
             match=r"grad_y: expected shape \(2, 6, 6, 6\) .* got \(2, 6, 5, 6\)")
    bad_call(K.conv2d_backward, gy.astype(np.float64), x, w, groups=2,
             match=r"grad_y and x must have the same dtype", error=TypeError)
    bad_call(K.conv2d_backward_input, gy, w, (2, 4, 8, 9), groups=2,
             match=r"grad_y: expected shape \(2, 6, 6, 7\)")
    bad_call(K.conv2d_backward_input, gy, w, (2, 4, 8), groups=2, match=r"x_shape: expected 4")
    bad_call(K.conv2d_backward_weight, gy, x, (6, 2, 3, 4), groups=2,
             match=r"grad_y: expected shape \(2, 6, 6, 5\)")


def test_transpose_validation_messages():
    x = np.zeros((2, 4, 5, 5), dtype=np.float32)
    w = np.zeros((4, 3, 3, 3), dtype=np.float32)
    f = K.conv_transpose2d_forward
    bad_call(f, x, np.zeros((6, 3, 3, 3), np.float32),
             match=r"x: expected 6 channels .*\(6, 3, 3, 3\).*got x of shape \(2, 4, 5, 5\)")
    bad_call(f, x, w, stride=2, output_padding=2,
             match=r"output_padding: must be smaller than stride or dilation")
    bad_call(f, x, w, stride=2, output_padding=(1, 2), match=r"output_padding")
    bad_call(f, x, w, output_padding=-1, match=r"output_padding: expected non-negative")
    bad_call(f, x, w, groups=3, match=r"groups: 3 does not divide the 4 input channels")
    bad_call(f, x, w, padding="same", match=r"padding: conv_transpose2d takes an int or a pair")
    bad_call(f, x, w, padding=9, match=r"padding: the output size would be")
    bad_call(f, x, w, np.zeros(4, np.float32), match=r"b: expected shape \(3,\)")
    bad_call(K.conv_transpose2d_backward, np.zeros((2, 3, 7, 8), np.float32), x, w,
             match=r"grad_y: expected shape \(2, 3, 7, 7\)")
    # output_padding below the dilation (but not the stride) is allowed, as in torch
    y = f(x, w, stride=1, output_padding=1, dilation=2)
    assert y.shape == (2, 3, 10, 10)


@pytest.mark.cuda
def test_mixed_devices_rejected(cuda_device):
    x = np.zeros((1, 2, 5, 5), dtype=np.float32)
    w = K.to_device(np.zeros((2, 2, 3, 3), dtype=np.float32), cuda_device)
    bad_call(K.conv2d_forward, x, w, match=r"different devices: x is on 'cpu' but w is on 'cuda'")
    bad_call(K.conv_transpose2d_forward, x, w, match=r"different devices")


# ---------------------------------------------------------------- CUDA against the CPU
SIM_GRID = [  # small enough for the simulator: a few hundred threads per launch
    ((2, 4, 6, 5), (4, 2, 3, 3), 1, 1, 1, 2),
    ((1, 3, 7, 7), (2, 3, 3, 2), (2, 1), (0, 1), (1, 2), 1),
    ((2, 3, 5, 5), (3, 1, 3, 3), 1, "same", 1, 3),
    ((1, 2, 6, 6), (3, 2, 2, 2), 1, "same", 2, 1),
    ((2, 2, 4, 4), (3, 2, 1, 1), 1, 0, 1, 1),
]


def cpu_cuda_close(a_cuda, b_cpu, dtype):
    np.testing.assert_allclose(K.to_host(a_cuda), b_cpu, rtol=50 * EPS[dtype],
                               atol=50 * EPS[dtype] * max(1.0, float(np.abs(b_cpu).max())))


@pytest.mark.cuda
@pytest.mark.parametrize("case", SIM_GRID, ids=lambda c: "x{}w{}".format(*c[:2]))
def test_cuda_matches_cpu_grid(case, cuda_device, dtype):
    xs, ws, stride, padding, dilation, groups = case
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = K.conv2d_forward(x, w, b, **args)
    gy = rng.standard_normal(y.shape).astype(dtype)
    d = [K.to_device(a, cuda_device) for a in (x, w, b, gy)]
    yd = K.conv2d_forward(d[0], d[1], d[2], **args)
    assert K.device_of(yd) == "cuda" and yd.dtype == dtype
    cpu_cuda_close(yd, y, dtype)
    for got, want in zip(K.conv2d_backward(d[3], d[0], d[1], **args),
                         K.conv2d_backward(gy, x, w, **args)):
        assert K.device_of(got) == "cuda"
        cpu_cuda_close(got, want, dtype)


SIM_PROPERTY = settings(max_examples=30, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.cuda
@SIM_PROPERTY
@given(cfg=conv_configs(max_side=5, max_channels=2))
def test_cuda_matches_reference_random(cfg):
    if "cuda" not in K.devices():
        pytest.skip("no CUDA device")
    x, w, b = make_inputs(cfg, np.float64)
    args = conv_args(cfg)
    y = K.conv2d_forward(K.to_device(x, "cuda"), K.to_device(w, "cuda"),
                         None if b is None else K.to_device(b, "cuda"), **args)
    exact, bound = reference(cfg, x, w, b)
    assert_within(y, exact, bound, np.prod(w.shape[1:]), np.float64, "y")
    gy = np.random.default_rng(cfg["seed"]).standard_normal(exact.shape)
    got = K.conv2d_backward(*(K.to_device(a, "cuda") for a in (gy, x, w)), **args)
    for g, want in zip(got, K.conv2d_backward(gy, x, w, **args)):
        cpu_cuda_close(g, want, np.float64)


@pytest.mark.cuda
@SIM_PROPERTY
@given(cfg=transpose_configs(max_side=4))
def test_cuda_transpose_matches_reference_random(cfg):
    if "cuda" not in K.devices():
        pytest.skip("no CUDA device")
    x, w, b = transpose_inputs(cfg, np.float64)
    args = transpose_args(cfg)
    d = [None if a is None else K.to_device(a, "cuda") for a in (x, w, b)]
    y = K.conv_transpose2d_forward(*d, **args)
    exact = conv_transpose2d_reference(x, w, b, **args)
    bound = conv_transpose2d_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b),
                                       **args)
    assert_within(y, exact, bound, w.shape[0] * w.shape[2] * w.shape[3] + 1, np.float64, "y")
    gy = np.random.default_rng(cfg["seed"]).standard_normal(exact.shape)
    got = K.conv_transpose2d_backward(K.to_device(gy, "cuda"), d[0], d[1], **args)
    for g, want in zip(got, K.conv_transpose2d_backward(gy, x, w, **args)):
        cpu_cuda_close(g, want, np.float64)


@pytest.mark.cuda
def test_cuda_transpose_matches_cpu(cuda_device):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 3, 3))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    args = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    y = K.conv_transpose2d_forward(x, w, b, **args)
    gy = rng.standard_normal(y.shape)
    d = [K.to_device(a, cuda_device) for a in (x, w, b, gy)]
    cpu_cuda_close(K.conv_transpose2d_forward(d[0], d[1], d[2], **args), y, np.float64)
    for got, want in zip(K.conv_transpose2d_backward(d[3], d[0], d[1], **args),
                         K.conv_transpose2d_backward(gy, x, w, **args)):
        cpu_cuda_close(got, want, np.float64)


@pytest.mark.cuda
def test_cuda_repeated_calls_bitwise_identical(cuda_device):
    rng = np.random.default_rng(6)
    x = K.to_device(rng.standard_normal((2, 2, 5, 5)).astype(np.float32), cuda_device)
    w = K.to_device(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), cuda_device)
    gy = K.to_device(rng.standard_normal((2, 3, 5, 5)).astype(np.float32), cuda_device)

    def run():
        return [K.to_host(a) for a in
                (K.conv2d_forward(x, w, padding=1),) + K.conv2d_backward(gy, x, w, padding=1)]
    first = run()
    for a, b in zip(first, run()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the CUDA kernels compile for a GPU
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_cuda_kernels_lower_for_a_real_gpu(dtype):
    """The simulator never type-checks kernels: lower them to LLVM IR as a GPU build would."""
    from numba import types

    from cuda_lowering import array, float64_ops, lower_for_gpu
    from kernels import conv_cuda

    f, i = numba.from_dtype(dtype), types.int64
    kernels_and_args = [
        (conv_cuda._im2col_cuda, [array(f, 4), array(f, 4)] + [i] * 11 + [f, f]),
        (conv_cuda._col2im_cuda, [array(f, 4), array(f, 4)] + [i] * 12 + [f]),
        (conv_cuda._bias_partials_cuda, [array(f, 2), array(f, 3), f]),
        (conv_cuda._bias_finish_cuda, [array(f, 1), array(f, 2), f]),
    ]
    for kernel, args in kernels_and_args:
        ir = lower_for_gpu(kernel, args)
        if dtype == np.float32:
            assert float64_ops(ir) == 0, kernel.__name__


# ---------------------------------------------------------------- CUDA bias gradient: a block per channel
@pytest.mark.cuda
def test_conv_bias_gradient_launches_a_block_per_channel(cuda_device, monkeypatch):
    """The bias gradient was one thread per channel in one block, summing N*H*W values
    serially; it is now a reduction with at least one block per output channel, summed in a
    fixed order (the same bits on every run)."""
    from kernels import conv_cuda
    from kernels import device as D

    launches = []
    real_launch = conv_cuda.launch

    def spy(kernel, n_threads, *args, block=256):
        launches.append((kernel, n_threads, block))
        return real_launch(kernel, n_threads, *args, block=block)

    monkeypatch.setattr(conv_cuda, "launch", spy)
    rng = np.random.default_rng(3)
    gy_host = rng.standard_normal((3, 5, 7, 9)).astype(np.float32)   # N*P = 189: one warp
    gy = D.to_device(gy_host, cuda_device)
    first = K.to_host(K.conv2d_backward_bias(gy))
    (kernel, n_threads, block), _ = launches[:2]
    assert kernel is conv_cuda._bias_partials_cuda
    assert -(-n_threads // block) == 5 and block == 32
    np.testing.assert_allclose(first, gy_host.astype(np.float64).sum(axis=(0, 2, 3)),
                               rtol=4 * 189 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(first, K.to_host(K.conv2d_backward_bias(gy)))


def test_conv_bias_block_sizes():
    from kernels.conv_cuda import _bias_block
    assert [_bias_block(n) for n in (1, 256, 257, 2048, 10 ** 6)] == [32, 32, 64, 256, 256]


# ---------------------------------------------------------------- CUDA forward: NCHW from cuBLAS, bias in the GEMM
@pytest.mark.cuda
@pytest.mark.parametrize("groups, bias", [(1, True), (2, True), (1, False)])
def test_conv_cuda_forward_writes_the_output_from_the_gemm(cuda_device, monkeypatch, groups,
                                                          bias):
    """The forward used to copy the GEMM result into y (a transpose) and add the bias in a
    separate pass; cuBLAS now writes y itself, with the bias as the weights' last column."""
    from kernels import conv_cuda

    xp = K.array_module(cuda_device)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 5))
    w = rng.standard_normal((6, 4 // groups, 3, 3))
    b = rng.standard_normal(6) if bias else None
    outs = []
    real_matmul = xp.matmul

    def spy(a, c, out=None):
        outs.append(out)
        return real_matmul(a, c, out=out)

    monkeypatch.setattr(xp, "matmul", spy, raising=False)
    launches = []
    real_launch = conv_cuda.launch
    monkeypatch.setattr(conv_cuda, "launch", lambda k, n, *a, **kw: (launches.append(k),
                                                                      real_launch(k, n, *a, **kw)))
    dev = [None if a is None else K.to_device(a, cuda_device) for a in (x, w, b)]
    y = K.conv2d_forward(*dev, padding=1, groups=groups)
    assert len(outs) == 1 and outs[0] is not None and np.shares_memory(outs[0], y)
    assert launches == [conv_cuda._im2col_cuda]            # no other pass over y
    np.testing.assert_allclose(K.to_host(y), K.conv2d_forward(x, w, b, padding=1, groups=groups),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
def test_conv_cuda_backward_skips_the_input_gradient_when_not_needed(cuda_device, monkeypatch):
    from kernels import conv_cuda

    launches = []
    real_launch = conv_cuda.launch
    monkeypatch.setattr(conv_cuda, "launch", lambda k, n, *a, **kw: (launches.append(k),
                                                                      real_launch(k, n, *a, **kw)))
    rng = np.random.default_rng(5)
    x = K.to_device(rng.standard_normal((2, 2, 4, 4)), cuda_device)
    w = K.to_device(rng.standard_normal((3, 2, 3, 3)), cuda_device)
    gy = K.to_device(rng.standard_normal((2, 3, 4, 4)), cuda_device)
    gx, gw, gb = K.conv2d_backward(gy, x, w, padding=1, need_input=False)
    assert gx is None and gw is not None and gb is not None
    assert conv_cuda._col2im_cuda not in launches
