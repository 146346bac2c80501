"""``python -m nn``: train / evaluate / summary end to end on a tiny budget, exit codes, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nn import cli, data, plots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A 200-sample slice of the digits as an .npz file (x uint8 pixels, y labels)."""
    digits = data.digits()
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=np.round(digits.x[:200, 0] * 255).astype(np.uint8), y=digits.y[:200])
    return str(path)


def run_module(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "nn", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_train_then_evaluate_as_processes(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    train = run_module("train", "--dataset", tiny_npz, "--model", "mlp", "--epochs", "1",
                       "--batch-size", "32", "--out", str(run_dir), "--quiet")
    assert train.returncode == 0, train.stderr
    assert f"run folder: {run_dir}" in train.stdout
    names = set(os.listdir(run_dir))
    assert {"checkpoint.safetensors", "config.json", "metrics.csv", "metrics.json",
            "test.json"} <= names
    if plots.available():
        assert {"curves.png", "filters.png", "confusion.png"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "mlp" and config["dataset"] == tiny_npz
    assert config["sample_shape"] == [1, 8, 8] and config["num_classes"] == 10
    assert len(config["normalize"]["mean"]) == 1

    evaluate = run_module("evaluate", str(run_dir / "checkpoint.safetensors"))
    assert evaluate.returncode == 0, evaluate.stderr
    test = json.loads((run_dir / "test.json").read_text())
    correct = round(test["accuracy"] * test["samples"])
    assert f"accuracy {100 * test['accuracy']:.2f}% ({correct}/{test['samples']})" \
        in evaluate.stdout
    assert "confusion matrix" in evaluate.stdout and "true\\pred" in evaluate.stdout

    bad = run_module("train", "--model", "transformer")
    assert bad.returncode == 2
    line = one_line_error(bad.stderr)
    assert "invalid choice: 'transformer'" in line and "mlp" in line and "autoencoder" in line


def test_resume_continues_the_same_run(tiny_npz, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    base = ["train", "--dataset", tiny_npz, "--model", "mlp", "--batch-size", "50",
            "--out", str(run_dir), "--schedule", "step"]
    assert cli.main(base + ["--epochs", "1"]) == 0
    first = capsys.readouterr().out
    assert "epoch 1/1" in first and "test: accuracy" in first
    # Without matplotlib: one notice, no figures, and everything else as usual.
    monkeypatch.setattr(plots, "available", lambda: False)
    for png in run_dir.glob("*.png"):
        png.unlink()
    assert cli.main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    second = capsys.readouterr().out
    assert plots.MISSING_NOTICE in second and "epoch 2/2" in second and "epoch 1/" not in second
    assert not list(run_dir.glob("*.png"))
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir), "--lr", "0.5"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "cannot change: --lr" in line


def test_an_old_run_folder_with_an_npz_checkpoint_resumes(tiny_npz, tmp_path, capsys):
    import nn
    from legacy_checkpoint import save_npz

    base = ["train", "--dataset", tiny_npz, "--model", "mlp", "--batch-size", "50", "--quiet",
            "--schedule", "step", "--epochs", "2"]
    assert cli.main(base + ["--out", str(tmp_path / "straight")]) == 0
    old = tmp_path / "old"
    assert cli.main(base[:-1] + ["1", "--out", str(old)]) == 0
    save_npz(nn.load(old / "checkpoint.safetensors"), old / "checkpoint.npz")
    os.unlink(old / "checkpoint.safetensors")
    assert cli.main(["evaluate", str(old)]) == 0
    assert cli.main(["train", "--resume", str(old), "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    resumed, straight = (nn.load(d / "checkpoint.safetensors") for d in (old, tmp_path /
                                                                        "straight"))
    assert resumed["epoch"] == 2
    for k, v in straight["model"].items():
        np.testing.assert_array_equal(resumed["model"][k], v, err_msg=k)


def test_autoencoder_run_writes_its_figures(tiny_npz, tmp_path, capsys):
    run_dir = tmp_path / "ae"
    assert cli.main(["train", "--dataset", tiny_npz, "--model", "autoencoder", "--epochs", "1",
                     "--out", str(run_dir), "--quiet"]) == 0
    assert "run folder" in capsys.readouterr().out
    if plots.available():
        assert {"reconstructions.png", "codes.png", "curves.png"} <= set(os.listdir(run_dir))
    assert cli.main(["evaluate", str(run_dir)]) == 0
    assert "reconstruction loss (MSE)" in capsys.readouterr().out


def test_summary(capsys):
    assert cli.main(["summary", "--model", "lenet"]) == 0
    out = capsys.readouterr().out
    assert "LeNet5" in out and "Connections" in out and "Total" in out
    assert cli.main(["summary", "--model", "mlp", "--input-shape", "1,28,28"]) == 0
    assert "784" in capsys.readouterr().out.replace(",", "")


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--bogus"], 2, "unrecognized arguments: --bogus (valid options: --batch-size"),
    (["train", "--epochs", "0"], 2, "expected a positive int"),
    (["train", "--lr", "abc"], 2, "expected a positive float"),
    (["train", "--optimizer", "rmsprop"], 2, "invalid choice: 'rmsprop' (choose from"),
    (["train", "--schedule", "linear"], 2, "warmup-cosine"),
    (["summary"], 2, "required: --model"),
    (["train", "--dataset", "/no/such/data.npz"], 1, "/no/such/data.npz: file not found"),
    (["train", "--dataset", "/no/such/folder"], 1, "no such file or folder"),
    (["evaluate", "/no/such/checkpoint.safetensors"], 1, "checkpoint not found"),
    (["export", "/no/such/run", "--format", "onnx"], 1, "checkpoint not found"),
    (["export", "/no/such/run"], 2, "required: --format"),
    (["export", "/no/such/run", "--format", "tflite"], 2, "invalid choice: 'tflite'"),
    (["train", "--resume", "/no/such/run"], 1, "checkpoint not found"),
])
def test_bad_input_gives_one_line_and_an_exit_code(argv, code, message, capsys):
    try:
        got = cli.main(argv)
    except SystemExit as exc:
        got = exc.code
    assert got == code
    captured = capsys.readouterr()
    assert message in one_line_error(captured.err)


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, capsys):
    import nn

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.safetensors"
    nn.save({"weights": np.zeros(3)}, foreign)
    for path, message in ((broken, str(broken)), (foreign, "not a checkpoint written by")):
        assert cli.main(["evaluate", str(path)]) == 1
        assert message in one_line_error(capsys.readouterr().err)


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().err
