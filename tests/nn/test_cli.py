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
    (["train", "--optimizer", "lbfgs"], 2, "invalid choice: 'lbfgs' (choose from"),
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


# ---------------------------------------------------------------------- rough edges (issue 16)
@pytest.fixture(scope="module")
def tabular_npz(tmp_path_factory):
    """Rows of 5 features (not images), two classes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5)).astype(np.float32)
    path = tmp_path_factory.mktemp("tabular") / "rows.npz"
    np.savez(path, x=x, y=(x[:, 0] > 0).astype(np.int64))
    return str(path)


def test_mlp_on_tabular_data_skips_the_image_plots(tabular_npz, tmp_path, capsys):
    # Used to crash in plot_filters after training: a (F,) sample is not an image.
    run_dir = tmp_path / "rows"
    assert cli.main(["train", "--dataset", tabular_npz, "--model", "mlp", "--epochs", "1",
                     "--out", str(run_dir), "--quiet"]) == 0
    assert "run folder" in capsys.readouterr().out
    names = set(os.listdir(run_dir))
    assert "filters.png" not in names and cli.CHECKPOINT_NAME in names
    if plots.available():
        assert {"curves.png", "confusion.png"} <= names


def test_autoencoder_on_tabular_data_skips_the_image_plots(tabular_npz, tmp_path, capsys):
    run_dir = tmp_path / "ae-rows"
    assert cli.main(["train", "--dataset", tabular_npz, "--model", "autoencoder", "--epochs",
                     "1", "--out", str(run_dir), "--quiet"]) == 0
    names = set(os.listdir(run_dir))
    assert "reconstructions.png" not in names and "filters.png" not in names
    if plots.available():
        assert {"curves.png", "codes.png"} <= names


def test_a_run_folder_that_cannot_be_created_is_named_as_such(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["train", "--epochs", "1", "--out", str(blocker / "run")]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"cannot create the run folder {blocker / 'run'}" in line and "--out" in line


@pytest.mark.parametrize("rank, says", [("0", True), ("1", False)])
def test_several_ranks_without_distributed_say_so_once(rank, says, monkeypatch, capsys,
                                                       tmp_path):
    # What mpiexec -n 2 sets in each process it starts (MPICH's Hydra).
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", rank)
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    if says:
        line = one_line_error(err)
        assert "2 processes" in line and "--distributed" in line
    else:
        assert err == ""
    assert not (tmp_path / "r").exists()


def test_launcher_ranks_reads_mpich_and_open_mpi_variables():
    assert cli.launcher_ranks({}) == (1, 0)
    assert cli.launcher_ranks({"PMI_SIZE": "3", "PMI_RANK": "2"}) == (3, 2)
    assert cli.launcher_ranks({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}) == (4, 1)


def _clean_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def test_distributed_without_mpiexec_says_so_in_one_line(tiny_npz, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nn", "train", "--distributed", "--dataset",
                           tiny_npz, "--model", "mlp", "--epochs", "1", "--quiet", "--out",
                           str(tmp_path / "one")], cwd=ROOT, env=_clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = one_line_error(proc.stderr)
    assert "not started by mpiexec" in line and "1 process" in line and "mpiexec -n N" in line


def _mpiexec():
    import shutil
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return exe if os.path.exists(exe) else shutil.which("mpiexec")


@pytest.mark.skipif(_mpiexec() is None, reason="needs mpi4py and mpiexec (pip install '.[mpi]')")
def test_two_rank_run_says_how_many_ranks(tiny_npz, tmp_path):
    env = dict(_clean_env(), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "nn",
                           "train", "--distributed", "--dataset", tiny_npz, "--model", "mlp",
                           "--epochs", "1", "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("distributed: 2 ranks (mpi)") == 1, proc.stdout
    assert "not started by mpiexec" not in proc.stderr


def test_a_closed_pipe_ends_quietly():
    # `python -m nn summary ... | head -1`: the reader goes away before the output is written.
    proc = subprocess.Popen([sys.executable, "-m", "nn", "summary", "--model", "lenet"],
                            cwd=ROOT, env=_clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


# ---------------------------------------------------------------------- first run, threads
def test_first_epoch_that_compiles_is_announced(monkeypatch):
    import importlib

    from nn.train import compile_kernels_if_cold

    kw = importlib.import_module("kernels.warmup")
    import nn
    model = nn.Linear(3, 2)
    warmed, lines = [], []
    monkeypatch.setattr(kw, "cold_calls", lambda dtype: {"relu": 1.5, "conv2d_forward": 6.5})
    monkeypatch.setattr(kw.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(kw, "warmup", lambda dtypes, progress=None: warmed.append(dtypes))
    compile_kernels_if_cold(model, lines.append)
    assert lines == ["compiling kernels for this machine (first run only, about 8 s)"]
    assert warmed == [(np.dtype(np.float32),)]
    # Warm cache: not a word, nothing run.
    monkeypatch.setattr(kw, "cold_calls", lambda dtype: {})
    lines.clear()
    compile_kernels_if_cold(model, lines.append)
    assert lines == [] and len(warmed) == 1


def test_default_threads_one_for_small_models_all_cores_for_large():
    from nn import models

    lenet = models.LeNet5(in_channels=1, num_classes=10, input_size=8)
    threads, macs = cli.default_threads(lenet, (1, 8, 8), 32)
    assert threads == 1 and macs == 67_240 * 32                     # the README's summary
    vgg = models.SmallVGG(in_channels=3, num_classes=10, input_size=32)
    threads, macs = cli.default_threads(vgg, (3, 32, 32), 64)
    assert threads is None and macs >= cli.SMALL_BATCH_MACS


def test_train_says_when_it_picks_one_thread(tiny_npz, tmp_path, capsys):
    base = ["train", "--dataset", tiny_npz, "--model", "mlp", "--epochs", "1"]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "threads: 1 (a small model" in capsys.readouterr().out
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    assert "threads: 1" not in capsys.readouterr().out


@pytest.mark.parametrize("name, cls", [("rmsprop", "RMSprop"), ("adagrad", "Adagrad")])
def test_every_optimizer_trains_from_the_command_line(name, cls, tiny_npz, tmp_path):
    run_dir = tmp_path / name
    assert cli.main(["train", "--dataset", tiny_npz, "--model", "mlp", "--epochs", "2",
                     "--optimizer", name, "--lr", "0.01", "--out", str(run_dir), "--quiet"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    losses = [row["train_loss"] for row in metrics["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    built = cli.build_optimizer({"optimizer": name, "lr": 0.01, "weight_decay": 0.0,
                                 "momentum": 0.9}, [nn_param()])
    assert type(built).__name__ == cls


def nn_param():
    import nn
    return nn.Parameter(np.zeros(3, np.float32))
