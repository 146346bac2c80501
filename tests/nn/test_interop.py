"""Models leaving the library: ONNX files run by onnxruntime, safetensors weights read by torch.

ONNX: every zoo model and every layer case is exported (``nn.export_onnx``, checked by
``onnx.checker``) and run by onnxruntime on the CPU, on a batch of another size than the
example's (the batch axis is dynamic), and compared with our evaluation-mode forward.
Tolerance: the two sides round differently (onnxruntime's own GEMM and convolution kernels
sum in other orders), so each output element may differ by a few units of the dtype's
rounding error times the sum of the magnitudes that produced it; measured against the
output's largest magnitude that is below 1e-6 in float32 here, and the issue's bound is
1e-5 relative: |ours - theirs| <= 1e-5 * (|ours| + max|ours|).  In float64 the same
reasoning gives about 1e-15; 1e-12 leaves room for deeper models.  (Elementwise relative
error alone is meaningless for outputs that cancel to nearly 0.)  onnxruntime's CPU provider
has no float64 kernels for several ops (Conv, pooling, Resize...): those float64 cases skip
there, and every float64 graph is also run by onnx's NumPy reference evaluator.

safetensors: weights saved here load with ``safetensors.torch.load_file`` into the torch twin
of the model with ``load_state_dict(strict=True)``, and a torch model's file loads into ours,
bit for bit both ways.
"""
import os

import numpy as np
import pytest

import nn
from nn import models

from nn_layer_cases import CASES, build


def _optional(name):
    """The module, or None: the ONNX tests and the torch tests each skip on their own."""
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


onnx, ort = _optional("onnx"), _optional("onnxruntime")
torch, st_torch = _optional("torch"), _optional("safetensors.torch")
needs_onnx = pytest.mark.skipif(onnx is None or ort is None,
                                reason="needs onnx and onnxruntime (the interop extra)")
needs_torch = pytest.mark.skipif(torch is None or st_torch is None,
                                 reason="needs torch and safetensors")

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _randomize_batch_norm(model, rng):
    """Non-trivial running statistics and affine parameters, so eval mode tests something."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            if m.track_running_stats:
                m.running_mean[...] = rng.standard_normal(c)
                m.running_var[...] = rng.uniform(0.5, 2.0, c)
            if m.affine:
                m.weight.data[...] = rng.uniform(0.5, 1.5, c)
                m.bias.data[...] = rng.standard_normal(c)


ZOO = {
    "mlp": (lambda: models.MLP([64, 32, 32, 10], residual=True, dropout=0.2), (1, 8, 8)),
    "mlp_tanh": (lambda: models.MLP([12, 16, 3], activation="tanh"), (12,)),
    "lenet": (lambda: models.LeNet5(1, 10, 8), (1, 8, 8)),
    "lenet_1998": (lambda: models.LeNet5(1, 10, 28, activation="tanh", pool="avg"),
                   (1, 28, 28)),
    "vgg_bn": (lambda: models.SmallVGG(3, 10, 8, widths=(4, 8), hidden=16, batch_norm=True,
                                       dropout=0.5), (3, 8, 8)),
    "resnet": (lambda: models.ResNet(3, 10, widths=(4, 8, 8), blocks_per_stage=2), (3, 9, 7)),
    "unet": (lambda: models.UNet(1, 2, base=4, depth=2), (1, 8, 8)),
    "unet_bn": (lambda: models.UNet(2, 1, base=4, depth=1, batch_norm=True), (2, 6, 4)),
    "autoencoder": (lambda: models.Autoencoder((1, 8, 8), code_size=3, activation="elu"),
                    (1, 8, 8)),
}


def _session(path):
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's error classes are not importable
        if "NOT_IMPLEMENTED" in str(exc) or type(exc).__name__ == "NotImplemented":
            pytest.skip(f"onnxruntime has no CPU kernel for this: {str(exc)[:200]}")
        raise


def _check(model, x_example, x_run, tmp_path, dtype):
    path = tmp_path / "model.onnx"
    mode = [m.training for m in model.modules()]
    proto = nn.export_onnx(model, x_example, path)
    assert [m.training for m in model.modules()] == mode  # put back in its own mode
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    model.eval()
    want = model(x_run)
    got = _session(path).run(None, {"input": x_run})[0]
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.max(np.abs(want))))
    return got


@needs_onnx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_match_onnxruntime(name, dtype, tmp_path):
    build_model, sample = ZOO[name]
    nn.manual_seed(0)
    rng = np.random.default_rng(1)
    model = build_model().to(dtype=dtype)
    _randomize_batch_norm(model, rng)
    example = rng.standard_normal((2, *sample)).astype(dtype)
    x = rng.standard_normal((5, *sample)).astype(dtype)
    _check(model, example, x, tmp_path, dtype)


def _case_ids():
    return [c.id for c in CASES]


@needs_onnx
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=_case_ids())
def test_every_layer_matches_onnxruntime(case, dtype, tmp_path):
    if len(case.shape) < 2:
        pytest.skip("a 1-D input has no batch axis to export")
    layer, x = build(case, dtype=dtype)
    layer.eval()
    rng = np.random.default_rng(2)
    if case.id == "batch_norm2d_untracked_eval" or case.id.startswith("log_softmax_dim0"):
        bigger = x  # statistics (or softmax) across the batch: the batch is part of the input
    else:
        bigger = rng.standard_normal((x.shape[0] + 2, *x.shape[1:])).astype(dtype)
    _check(layer, x, bigger, tmp_path, dtype)


REFERENCE_CASES = [pytest.param(("zoo", n), id=n) for n in sorted(ZOO)] + [
    pytest.param(("layer", c), id=c.id) for c in CASES if len(c.shape) >= 2]


def _erf_class():
    from onnx.reference.ops._op import OpRunUnaryNum
    from scipy.special import erf

    class Erf(OpRunUnaryNum):
        """The reference's own Erf rounds to float32 (np.vectorize(math.erf, otypes="f"))."""
        op_domain = ""

        def _run(self, x):
            return (erf(x).astype(x.dtype),)

    return Erf


@needs_onnx
@pytest.mark.parametrize("what", REFERENCE_CASES)
def test_float64_graphs_match_the_onnx_reference_evaluator(what, tmp_path):
    """Where onnxruntime has no float64 kernels (convolutions, pooling, Resize...), onnx's
    own NumPy reference implementation runs the float64 graph: this checks the graph's
    meaning to float64 precision, attributes and all."""
    from onnx.reference import ReferenceEvaluator

    kind, item = what
    rng = np.random.default_rng(6)
    if kind == "zoo":
        nn.manual_seed(0)
        model = ZOO[item][0]().to(dtype=np.float64)
        _randomize_batch_norm(model, rng)
        x = rng.standard_normal((3, *ZOO[item][1]))
    else:
        model, x = build(item, dtype=np.float64)
    nn.export_onnx(model, x, tmp_path / "m.onnx")
    model.eval()
    want = model(x)
    evaluator = ReferenceEvaluator(onnx.load(str(tmp_path / "m.onnx")), new_ops=[_erf_class()])
    got = evaluator.run(None, {"input": x})[0]
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.max(np.abs(want)))


def test_every_layer_class_and_zoo_model_has_a_converter():
    """A new layer in nn (or a new zoo model) must come with its ONNX converter."""
    from nn import activation, container, conv, dropout, linear, norm, pool
    from nn.onnx_export import _converter

    names = [(m, n) for m in (activation, container, conv, dropout, linear, norm, pool, models)
             for n in m.__all__]
    classes = [getattr(m, n) for m, n in names if isinstance(getattr(m, n), type)
               and issubclass(getattr(m, n), nn.Module)]
    assert len(classes) > 25
    missing = [c.__name__ for c in classes
               if c is not nn.ModuleList and _converter(c.__new__(c)) is None]
    assert missing == []
    covered = {type(build(c)[0]) for c in CASES} | {type(b()) for b, _ in ZOO.values()}
    untested = [c.__name__ for c in classes if c not in covered and c is not nn.ModuleList]
    assert untested == ["BasicBlock"]  # inside every ResNet


@needs_onnx
def test_the_onnx_file_has_the_expected_operators(tmp_path):
    model = models.UNet(1, 1, base=4, depth=1, batch_norm=True)
    proto = nn.export_onnx(model, np.zeros((1, 1, 4, 4), np.float32), tmp_path / "u.onnx")
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "ConvTranspose", "MaxPool", "BatchNormalization", "Relu", "Concat"} <= ops
    resnet = nn.export_onnx(models.ResNet(1, 3, widths=(2, 4)),
                            np.zeros((1, 1, 4, 4), np.float32), tmp_path / "r.onnx")
    ops = [n.op_type for n in resnet.graph.node]
    assert {"Add", "GlobalAveragePool", "Flatten", "Gemm"} <= set(ops)
    assert ops.count("Add") == 2  # one residual sum per block
    assert resnet.opset_import[0].version == nn.onnx_export.DEFAULT_OPSET


@needs_onnx
def test_opsets_and_gelu(tmp_path):
    layer = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Softmax(dim=1))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for opset in (13, 18, 20):
        proto = nn.export_onnx(layer, x, tmp_path / "g.onnx", opset=opset)
        assert ("Gelu" in {n.op_type for n in proto.graph.node}) == (opset >= 20)
        got = _session(tmp_path / "g.onnx").run(None, {"input": x})[0]
        np.testing.assert_allclose(got, layer(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="opset: expected an int from 13"):
        nn.export_onnx(layer, x, tmp_path / "g.onnx", opset=11)


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class Relu2(nn.ReLU):
    def forward(self, x):  # not ReLU's forward: ReLU's converter must not be borrowed
        return super().forward(x) * 2


@needs_onnx
def test_a_layer_without_a_converter_is_named(tmp_path):
    x = np.ones((2, 3), np.float32)
    model = nn.Sequential(nn.Linear(3, 3), nn.Residual(nn.Sequential(Doubler())))
    with pytest.raises(nn.OnnxExportError, match="cannot export Doubler at '1.block.0'"):
        nn.export_onnx(model, x, tmp_path / "m.onnx")
    with pytest.raises(nn.OnnxExportError, match="cannot export Relu2 at '0'"):
        nn.export_onnx(nn.Sequential(Relu2()), x, tmp_path / "m.onnx")
    with pytest.raises(nn.OnnxExportError, match="cannot export MSELoss"):
        nn.export_onnx(nn.MSELoss(), x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@needs_onnx
def test_register_a_converter_for_ones_own_layer(tmp_path):
    @nn.register_onnx(Doubler)
    def _doubler(g, m, x, scope):
        return g.node("Mul", [x, g.scalar(2.0)], scope, g.run(m, x))

    try:
        model = nn.Sequential(nn.Linear(3, 2), Doubler())
        x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
        nn.export_onnx(model, x, tmp_path / "d.onnx")
        got = _session(tmp_path / "d.onnx").run(None, {"input": x})[0]
        np.testing.assert_allclose(got, model(x), rtol=1e-6)
    finally:
        del nn.onnx_export._CONVERTERS[Doubler]


@needs_onnx
def test_bad_arguments(tmp_path):
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="example_input: expected a float32 or float64 array"):
        nn.export_onnx(model, np.ones((2, 3), np.int64), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="parameter 'weight' has float32"):
        nn.export_onnx(model, np.ones((2, 3)), tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        nn.export_onnx(lambda x: x, np.ones((2, 3), np.float32), tmp_path / "m.onnx")


# ---------------------------------------------------------------- safetensors <-> torch
def twin(model):
    from nn_torch_mirror import twin as make_twin  # imports torch

    return make_twin(model)


def _bits(a):
    return np.ascontiguousarray(a).tobytes()


@needs_torch
@pytest.mark.parametrize("name", sorted(ZOO))
def test_our_weights_load_strictly_into_the_torch_twin(name, tmp_path):
    build_model, sample = ZOO[name]
    nn.manual_seed(3)
    model = build_model()
    _randomize_batch_norm(model, np.random.default_rng(4))
    nn.save(model.state_dict(), tmp_path / "w.safetensors")
    tensors = st_torch.load_file(tmp_path / "w.safetensors")
    t = twin(model)
    t.load_state_dict(tensors, strict=True)
    ours = model.state_dict()
    for k, v in t.state_dict().items():
        assert v.numpy().dtype == ours[k].dtype and _bits(v.numpy()) == _bits(ours[k]), k
    # And the same weights compute the same function on the torch side.
    model.eval()
    t.eval()
    x = np.random.default_rng(5).standard_normal((3, *sample)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(t(torch.from_numpy(x)).numpy(), model(x), rtol=1e-4,
                                   atol=1e-5)


@needs_torch
@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_torch_models_file_loads_into_ours(name, tmp_path):
    build_model, _ = ZOO[name]
    model = build_model()
    t = twin(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in t.parameters():
            p.uniform_(-1, 1)
        for m in t.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(11)
    st_torch.save_file(t.state_dict(), tmp_path / "torch.safetensors")
    model.load_state_dict(nn.load(tmp_path / "torch.safetensors"), strict=True)
    ours = model.state_dict()
    for k, v in t.state_dict().items():
        assert _bits(ours[k]) == _bits(v.numpy()) and ours[k].shape == tuple(v.shape), k


@needs_torch
def test_a_training_checkpoints_model_part_is_a_torch_state_dict(tmp_path):
    nn.manual_seed(0)
    model = models.SmallVGG(1, 3, 8, widths=(2, 4), hidden=8, batch_norm=True)
    rng = np.random.default_rng(0)
    ds = nn.data.ArrayDataset(rng.standard_normal((24, 1, 8, 8)).astype(np.float32),
                              rng.integers(0, 3, 24))
    loader = nn.data.DataLoader(ds, batch_size=8, shuffle=True, generator=rng)
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.Adam(model.parameters()),
                         run_dir=tmp_path, quiet=True)
    trainer.fit(loader, epochs=1)
    tensors = st_torch.load_file(tmp_path / nn.train.CHECKPOINT_NAME)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    t = twin(model)
    t.load_state_dict(weights, strict=True)
    for k, v in model.state_dict().items():
        assert _bits(t.state_dict()[k].numpy()) == _bits(v), k


# ---------------------------------------------------------------- python -m nn export
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from nn import cli, data

    digits = data.digits()
    folder = tmp_path_factory.mktemp("export")
    path = folder / "tiny.npz"
    np.savez(path, x=np.round(digits.x[:200, 0] * 255).astype(np.uint8), y=digits.y[:200])
    run = folder / "run"
    assert cli.main(["train", "--dataset", str(path), "--model", "lenet", "--epochs", "1",
                     "--out", str(run), "--quiet"]) == 0
    return run


@needs_onnx
@needs_torch
def test_cli_export_safetensors_and_onnx(trained_run, tmp_path, capsys):
    from nn import cli

    ckpt = nn.load(trained_run / nn.train.CHECKPOINT_NAME)
    weights = ckpt.get("best_model") or ckpt["model"]
    assert cli.main(["export", str(trained_run), "--format", "safetensors"]) == 0
    assert f"safetensors: {trained_run / 'model.safetensors'}" in capsys.readouterr().out
    tensors = st_torch.load_file(trained_run / "model.safetensors")
    assert sorted(tensors) == sorted(weights)
    model = models.LeNet5(1, 10, 8)
    model.load_state_dict(weights)
    twin(model).load_state_dict(tensors, strict=True)
    for k, v in tensors.items():
        assert _bits(v.numpy()) == _bits(weights[k]), k

    out = tmp_path / "lenet.onnx"
    assert cli.main(["export", str(trained_run / nn.train.CHECKPOINT_NAME), "--format", "onnx",
                     "--out", str(out)]) == 0
    assert f"onnx: {out} (lenet, input (N, 1, 8, 8))" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = np.random.default_rng(0).standard_normal((7, 1, 8, 8)).astype(np.float32)
    got = _session(out).run(None, {"input": x})[0]
    model.eval()
    want = model(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))

    assert cli.main(["export", str(trained_run), "--format", "onnx", "--opset", "7"]) == 1
    assert "opset: expected an int from 13" in capsys.readouterr().err
    assert not os.path.exists(trained_run / "model.onnx")


@needs_onnx
@pytest.mark.cuda
def test_a_model_on_the_gpu_exports_the_same_graph(cuda_device, tmp_path):
    import kernels as K

    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Residual(nn.Sequential(nn.Linear(2, 2))))
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    on_host = nn.export_onnx(model, x, tmp_path / "cpu.onnx")
    model.to(cuda_device)
    on_device = nn.export_onnx(model, K.to_device(x, cuda_device), tmp_path / "gpu.onnx")
    assert on_device.SerializeToString() == on_host.SerializeToString()
