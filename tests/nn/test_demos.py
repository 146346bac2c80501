"""Smoke tests of every demo on its quick budget: the findings' key numbers must make sense."""
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nn.demos import DEMOS, Finding, run_demo  # noqa: E402


def run(name, tmp_path):
    finding = run_demo(name, tmp_path / name, quick=True)
    assert isinstance(finding, Finding) and len(finding) > 40
    assert finding.files, "every demo writes at least one plot"
    for f in finding.files:
        assert os.path.getsize(f) > 5000, f
        assert os.path.dirname(f) == str(tmp_path / name)
    return finding.values


def test_vanishing_gradients(tmp_path):
    v = run("vanishing-gradients", tmp_path)
    # the plain stack's gradient dies towards the input; the residual one's does not
    assert v["plain_first_init"] < 1e-3 * v["plain_last_init"]
    assert v["residual_first_init"] > 1e3 * v["plain_first_init"]
    assert v["residual_first_init"] > 0.1 * v["residual_last_init"]


def test_zero_init(tmp_path):
    v = run("zero-init", tmp_path)
    assert v["zero_weight_grad_max"] == 0.0  # exactly: every weight gradient is a product with 0
    assert v["zero_grad_max"] < 1e-12  # the output bias: 1/K - class frequency, 0 up to rounding
    assert v["zero_weights_max"] == 0.0  # and training never moves the weights
    assert v["zero_accuracy"] < 0.15
    assert v["constant_unit_spread"] < 1e-10  # hidden units stay identical
    assert v["constant_moved"] > 0  # although the weights do move
    assert v["random_unit_spread"] > 0.01
    assert v["random_accuracy"] > v["zero_accuracy"] + 0.3


def test_image_kernels(tmp_path):
    v = run("image-kernels", tmp_path)
    assert v["max_abs_error"] < 1e-5
    assert v["sharpness_blur"] < 0.8 * v["sharpness_original"] < 0.8 * v["sharpness_sharpen"]
    assert 0.3 < v["sobel_top10_energy"] <= 1.0


def test_landscape(tmp_path):
    v = run("landscape", tmp_path)
    assert v["centre_loss"] < v["border_median"]
    assert v["centre_loss"] == pytest.approx(v["grid_min"], rel=0.5)
    assert 0.0 <= v["path_kept_in_random_plane"] < 0.5
    assert 0.5 < v["pca_share"] <= 1.0
    line = v["line"]  # t = -0.25 ... 1.25 in 7 steps: t = 0 is index 1, t = 1 is index 5
    assert line[5] == pytest.approx(v["centre_loss"], rel=1e-6)  # t = 1: the trained weights
    assert line[1] > line[5]  # the initial weights have the higher loss


def test_curvature(tmp_path):
    v = run("curvature", tmp_path)
    assert all(lam > 0 for lam in v["lambdas"])
    assert v["limit"] == pytest.approx(2 / v["lambda_final"])
    assert v["gd_below_end"] <= v["gd_below_start"]  # below 2/lambda: GD still descends
    assert v["gd_above_end"] > v["gd_below_end"]


def test_transfer(tmp_path):
    v = run("transfer", tmp_path)
    assert v["accuracy_0_4"] > 0.5  # chance is 0.2
    assert len(v["transfer"]) == len(v["scratch"]) == len(v["budgets"])
    assert all(0.0 <= a <= 1.0 for a in v["transfer"] + v["scratch"])
    assert v["transfer"][0] > 0.3  # the frozen features already separate the new digits


def test_autoencoder(tmp_path):
    v = run("autoencoder", tmp_path)
    assert v["mse"] < v["baseline_mse"]
    assert v["knn_accuracy"] > 0.2


def test_xor(tmp_path):
    v = run("xor", tmp_path)
    assert v["linear_accuracy"] <= 0.75
    assert v["mlp_accuracy"] == 1.0


def test_unknown_demo_and_the_command_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown demo 'nope'"):
        run_demo("nope")
    assert set(DEMOS) == {"vanishing-gradients", "zero-init", "image-kernels", "landscape",
                          "curvature", "transfer", "autoencoder", "xor"}
    from nn import cli
    assert cli.main(["demo", "xor", "--quick", "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "XOR" in printed and "decision_regions.png" in printed
    assert np.any([f.endswith(".png") for f in os.listdir(tmp_path / "cli")])
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
