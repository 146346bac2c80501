"""Hostile inputs to the data loaders, the run folder and the command line (issue 13).

Item 2: data files are read with bounded memory (headers before data, streams stopped at
the size a header implies, regular files only).  Item 3: bad data or checkpoint content ends
in one line from the CLI.  Item 4: a run folder is locked and never silently reused; stale
temporary files are removed.  Item 5: writes never follow planted symlinks; the data set a
checkpoint's config names is checked like a --dataset path.
"""
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

import nn
from nn import cli, data, train
from nn.data import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOMB = 200 * 1024 * 1024   # bytes of zeros a small compressed file inflates to
SLACK = 4 * 1024 * 1024    # read buffers and interpreter noise allowed on top


def one_line_error(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr
    return lines[0]


def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr()


def run_module(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "nn", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def peak_memory(fn):
    """(result or exception, peak bytes traced while running fn)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - the caller checks what it is
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def zeros_deflated(n):
    """``n`` zero bytes in 1 MiB pieces (never all at once), for writing into a compressor."""
    piece = bytes(1 << 20)
    for _ in range(n // len(piece)):
        yield piece


# ---------------------------------------------------------------- files
def npy_bytes(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_npz(path, members, bomb=None, compress=zipfile.ZIP_DEFLATED):
    """An .npz with the given arrays; ``bomb`` names a member followed by BOMB zero bytes."""
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, a in members.items():
            raw = npy_bytes(a)
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                f.write(raw)
                if name == bomb:
                    for piece in zeros_deflated(BOMB):
                        f.write(piece)


def idx_header(dtype_code, dims):
    return bytes([0, 0, dtype_code, len(dims)]) + b"".join(
        int(d).to_bytes(4, "big") for d in dims)


def write_idx_pair(folder, images, labels, images_tail=None, gz=True):
    folder.mkdir(exist_ok=True)
    ipath = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    lpath = folder / "train-labels-idx1-ubyte"
    lpath.write_bytes(idx_header(0x08, labels.shape) + labels.tobytes())
    opener = gzip.open if gz else open
    with opener(ipath, "wb") as f:
        f.write(idx_header(0x08, images.shape) + images.tobytes())
        for piece in images_tail or ():
            f.write(piece)
    return ipath, lpath


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
            rng.integers(0, 10, 10).astype(np.uint8))


def test_npz_member_inflating_past_its_header_is_refused_cheaply(tmp_path, small):
    x, y = small
    path = tmp_path / "bomb.npz"
    write_npz(path, {"x": x, "y": y}, bomb="x")
    assert path.stat().st_size < 2 * 1024 * 1024   # 200 MB of zeros deflate to ~200 kB
    result, peak = peak_memory(lambda: data.load_npz(path))
    assert isinstance(result, DataError) and "has trailing bytes" in str(result), result
    # before: np.load inflated the whole 200 MB member before checking anything
    assert peak < 2 * (x.nbytes + y.nbytes) + SLACK, peak


def test_npz_counts_are_checked_from_the_headers(tmp_path, small):
    # x announces (and holds) 200 MB of zeros, 200 kB deflated, for 10 labels: before, np.load
    # inflated all of x and only then compared the counts
    x, y = small
    path = tmp_path / "counts.npz"
    shape = (BOMB // 1024, 32, 32)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            for piece in zeros_deflated(BOMB):
                f.write(piece)
        zf.writestr("y.npy", npy_bytes(y))
    assert path.stat().st_size < 2 * 1024 * 1024
    result, peak = peak_memory(lambda: data.load_npz(path))
    assert isinstance(result, DataError), result
    assert f"{shape[0]} samples but 10 labels" in str(result)
    assert peak < SLACK, peak


def test_npz_object_arrays_and_garbage_are_refused(tmp_path, small):
    x, y = small
    path = tmp_path / "obj.npz"
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array([{}], dtype=object), allow_pickle=True)
        zf.writestr("x.npy", buf.getvalue())
        zf.writestr("y.npy", npy_bytes(y))
    with pytest.raises(DataError, match="Python objects"):
        data.load_npz(path)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="junk.npz"):
        data.load_npz(tmp_path / "junk.npz")


def test_npz_round_trip_still_works(tmp_path, small):
    x, y = small
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=x, y=y, x_test=np.asfortranarray(x[:4].astype(np.float64)),
                        y_test=y[:4].astype(np.int32))
    train_set, test_set = data.load_npz(path)
    np.testing.assert_array_equal(train_set.x[:, 0], x / np.float32(255))
    np.testing.assert_array_equal(test_set.x[:, 0], x[:4].astype(np.float32))
    np.testing.assert_array_equal(test_set.y, y[:4])


def test_idx_gz_inflating_past_its_header_is_refused_cheaply(tmp_path, small):
    x, y = small
    ipath, lpath = write_idx_pair(tmp_path / "bomb", x, y, images_tail=zeros_deflated(BOMB))
    assert ipath.stat().st_size < 2 * 1024 * 1024
    result, peak = peak_memory(lambda: data.load_idx(ipath, lpath))
    assert isinstance(result, DataError) and "trailing bytes" in str(result), result
    # before: gzip.decompress inflated all 200 MB first
    assert peak < 2 * (x.nbytes + y.nbytes) + SLACK, peak


def test_idx_headers_overstating_their_data(tmp_path, small):
    x, y = small
    plain = tmp_path / "big-images-idx3-ubyte"
    plain.write_bytes(idx_header(0x08, (2**31, 8, 8)) + x.tobytes())
    result, peak = peak_memory(lambda: data.read_idx(plain))
    assert isinstance(result, DataError) and "truncated" in str(result), result
    assert peak < SLACK, peak   # refused from the file size, before any allocation
    zipped = tmp_path / "big-labels-idx1-ubyte.gz"
    with gzip.open(zipped, "wb") as f:
        f.write(idx_header(0x08, (2**32 - 1,)) + y.tobytes())
    with pytest.raises(DataError, match="truncated|more than this machine"):
        data.read_idx(zipped)
    # images announcing another count than the labels: refused from the headers
    ipath, lpath = write_idx_pair(tmp_path / "mismatch", np.zeros((3000, 8, 8), np.uint8), y)
    result, peak = peak_memory(lambda: data.load_idx(ipath, lpath))
    assert isinstance(result, DataError) and "3000 samples but 10 labels" in str(result)
    assert peak < SLACK, peak


def _isolated(code, timeout=60):
    """Run ``code`` in a fresh interpreter under a memory cap and a timeout, so that the
    behaviour before the fix (reading /dev/zero forever, blocking on a FIFO) fails the test
    instead of taking the machine down or hanging the suite."""
    prelude = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.RLIM_INFINITY))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                             capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("hung (a special file was opened and read)")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(not os.path.exists("/dev/zero") or not hasattr(os, "mkfifo"),
                    reason="needs /dev/zero and FIFOs")
def test_special_files_are_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_header(0x08, (2,)) + b"\0\1")
    os.symlink("/dev/zero", folder / "train-images-idx3-ubyte")
    os.mkfifo(tmp_path / "fifo.npz")
    os.mkfifo(tmp_path / "fifo-images-idx3-ubyte")
    out = _isolated(f"""
        from nn import data
        for call, arg in ((data.load_mnist, {str(folder)!r}),
                          (data.read_idx, {str(folder / "train-images-idx3-ubyte")!r}),
                          (data.load_npz, {str(tmp_path / "fifo.npz")!r}),
                          (data.read_idx, {str(tmp_path / "fifo-images-idx3-ubyte")!r})):
            try:
                call(arg)
            except data.DataError as exc:
                print(exc)
    """)
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all("not a regular file" in line for line in lines), out


def test_symlink_to_a_regular_file_is_fine(tmp_path, small):
    x, y = small
    real = tmp_path / "real.npz"
    np.savez(real, x=x, y=y)
    os.symlink(real, tmp_path / "link.npz")
    assert len(data.load_npz(tmp_path / "link.npz")[0]) == 10


# ---------------------------------------------------------------- one-line CLI errors on data
@pytest.mark.parametrize("x, y, message", [
    (np.full((40, 1, 8, 8), np.nan, np.float32), np.arange(40) % 4, "samples must be finite"),
    (np.full((40, 1, 8, 8), 1e300), np.arange(40) % 4, "samples must be finite"),
    (np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), "no data"),
    (np.zeros((40, 1, 0, 8), np.float32), np.arange(40) % 4, "no data"),
    (np.zeros((40, 8), np.float32), np.r_[np.arange(39) % 4, 2**40], "labels must be below"),
    (np.zeros((40, 8), np.float32), np.r_[np.arange(39, dtype=np.uint64) % 4, np.uint64(2**64 - 1)],
     "labels must be below"),
])
def test_bad_data_gives_one_line(tmp_path, x, y, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    # a separate process: warnings printed before the error line count against it
    out = run_module("train", "--dataset", str(path), "--model", "mlp", "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--quiet")
    assert out.returncode == 1
    assert message in one_line_error(out.stderr)


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch MLP run on a small .npz; returns (run folder, data path)."""
    folder = tmp_path_factory.mktemp("hardening")
    digits = data.digits()
    npz = folder / "tiny.npz"
    np.savez(npz, x=np.round(digits.x[:200, 0] * 255).astype(np.uint8), y=digits.y[:200])
    run_dir = folder / "run"
    assert cli.main(["train", "--dataset", str(npz), "--model", "mlp", "--epochs", "1",
                     "--batch-size", "50", "--out", str(run_dir), "--quiet",
                     "--patience", "3"]) == 0
    return run_dir, npz


def edited_checkpoint(finished_run, tmp_path, edit):
    ckpt = nn.load(finished_run[0] / train.CHECKPOINT_NAME)
    edit(ckpt)
    path = tmp_path / "edited" / train.CHECKPOINT_NAME
    path.parent.mkdir()
    nn.save(ckpt, path)
    return path


def _set(*keys, value):
    def edit(ckpt):
        node = ckpt
        for k in keys[:-1]:
            node = node[k]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return edit


CONFIG_CASES = [
    (_set("config", "seed", value=KeyError), "config field 'seed': missing"),
    (_set("config", "seed", value="zero"), "config field 'seed': expected an int"),
    (_set("config", "seed", value=-3), "config field 'seed'"),
    (_set("config", "batch_size", value=0), "config field 'batch_size'"),
    (_set("config", "batch_size", value=2.5), "config field 'batch_size'"),
    (_set("config", "lr", value=float("nan")), "config field 'lr'"),
    (_set("config", "optimizer", value="lbfgs"), "config field 'optimizer'"),
    (_set("config", "model", value=["mlp"]), "config field 'model'"),
    (_set("config", "normalize", "std", value=[0.0]), "config field 'normalize'"),
    (_set("config", "normalize", "std", value=["one"]), "config field 'normalize'"),
    (_set("config", "num_classes", value=2**40), "config field 'num_classes'"),
    (_set("config", "sample_shape", value=[1, 2**20, 2**20]), "config field 'sample_shape'"),
    (_set("config", "dataset", value=7), "config field 'dataset'"),
]


@pytest.mark.parametrize("edit, message", CONFIG_CASES)
def test_bad_checkpoint_config_gives_one_line(finished_run, tmp_path, capsys, edit, message):
    path = edited_checkpoint(finished_run, tmp_path, edit)
    for argv in (["evaluate", str(path)], ["train", "--resume", str(path)]):
        code, out = run_cli(argv, capsys)
        assert code == 1, out
        assert message in one_line_error(out.err)


STATE_CASES = [
    (_set("epoch", value=-1), "'epoch'"),
    (_set("epoch", value="1"), "'epoch'"),
    (_set("history", value={"epoch": 1}), "'history'"),
    (_set("history", value=[]), "'history'"),
    (_set("rng", value=[1, 2]), "'rng'"),
    (_set("rng", "init", value={"bit_generator": "nonsense"}), "'rng'"),
    (_set("optimizer", value={"state": {}, "param_groups": "x"}), "'optimizer'"),
    (_set("optimizer", "param_groups", value=[]), "'optimizer'"),
    (_set("early_stopping", value=None), "'early_stopping'"),
    (_set("early_stopping", "bad_epochs", value=-1), "'early_stopping.bad_epochs'"),
    (_set("model", "0.weight", value=np.zeros((3, 3), np.float32)), "'model'"),
    (_set("best_model", "0.weight", value=np.zeros((3, 3), np.float32)), "'best_model'"),
]


@pytest.mark.parametrize("edit, message", STATE_CASES)
def test_bad_checkpoint_state_gives_one_line_on_resume(finished_run, tmp_path, capsys, edit,
                                                       message):
    path = edited_checkpoint(finished_run, tmp_path, edit)
    code, out = run_cli(["train", "--resume", str(path), "--epochs", "2", "--quiet"], capsys)
    assert code == 1, out
    line = one_line_error(out.err)
    assert "checkpoint field" in line and message in line, line


def test_mismatched_weights_give_one_line_on_evaluate(finished_run, tmp_path, capsys):
    def edit(ckpt):
        ckpt["best_model"] = None
        ckpt["model"]["0.weight"] = np.zeros((3, 3), np.float32)
    path = edited_checkpoint(finished_run, tmp_path, edit)
    code, out = run_cli(["evaluate", str(path)], capsys)
    assert code == 1
    assert "weights do not fit" in one_line_error(out.err)


def test_unknown_optimizer_or_schedule_never_falls_back():
    params = nn.Linear(2, 2).parameters()
    config = dict(cli.TRAIN_DEFAULTS, optimizer="lbfgs")
    with pytest.raises(cli.UserError, match="unknown optimizer 'lbfgs'"):
        cli.build_optimizer(config, params)   # before: silently AdamW
    optimizer = cli.build_optimizer(dict(cli.TRAIN_DEFAULTS), nn.Linear(2, 2).parameters())
    with pytest.raises(cli.UserError, match="unknown schedule 'linear'"):
        cli.build_scheduler(dict(cli.TRAIN_DEFAULTS, schedule="linear"), optimizer)


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--lr", "inf"], ["--lr", "nan"],
                                  ["--weight-decay", "inf"]])
def test_parser_refuses_what_would_fail_later(argv, capsys):
    code, out = run_cli(["train"] + argv, capsys)
    assert code == 2
    one_line_error(out.err)


def test_json_files_are_strict(tmp_path):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    path = tmp_path / "test.json"
    cli._write_json(str(path), {"loss": float("nan"), "rows": [np.float32("inf"), 1.5]})
    assert strict(path.read_text()) == {"loss": None, "rows": [None, 1.5]}
    trainer = train.Trainer(nn.Linear(2, 2), nn.MSELoss(), nn.optim.SGD(
        nn.Linear(2, 2).parameters(), lr=0.1), run_dir=str(tmp_path / "run"), quiet=True)
    trainer.history = [{"epoch": 1, "train_loss": float("inf"), "val_loss": float("nan")}]
    trainer.write_metrics()
    summary = strict((tmp_path / "run" / "metrics.json").read_text())
    assert summary["history"][0]["val_loss"] is None


# ---------------------------------------------------------------- run folders
def test_a_folder_holding_another_runs_checkpoint_is_refused(finished_run, tmp_path, capsys):
    run_dir, npz = finished_run
    before = (run_dir / train.CHECKPOINT_NAME).read_bytes()
    code, out = run_cli(["train", "--dataset", str(npz), "--model", "mlp", "--epochs", "1",
                         "--out", str(run_dir), "--quiet"], capsys)
    assert code == 1
    assert "already holds another run's checkpoint" in one_line_error(out.err)
    assert (run_dir / train.CHECKPOINT_NAME).read_bytes() == before
    # --resume naming another checkpoint may not take this folder either
    other = edited_checkpoint(finished_run, tmp_path, lambda ckpt: None)
    code, out = run_cli(["train", "--resume", str(other), "--out", str(run_dir), "--epochs",
                         "2", "--quiet"], capsys)
    assert code == 1
    assert "already holds another run's checkpoint" in one_line_error(out.err)
    assert (run_dir / train.CHECKPOINT_NAME).read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_locked_folder_is_refused(tmp_path, capsys, finished_run):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nn.train import RunLock; "
         f"RunLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out = run_cli(["train", "--dataset", str(finished_run[1]), "--model", "mlp",
                             "--epochs", "1", "--out", str(run_dir), "--quiet"], capsys)
        assert code == 1
        assert "another training run is using this folder" in one_line_error(out.err)
        assert not (run_dir / train.CHECKPOINT_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder: no stale lock after a kill
    with train.RunLock(run_dir):
        pass


def test_run_lock_is_reentrant_in_one_process(tmp_path):
    with train.RunLock(tmp_path):
        with train.RunLock(tmp_path):
            pass
        assert train._HELD_LOCKS
    assert not train._HELD_LOCKS


def test_stale_temporary_files_are_removed_on_resume(finished_run, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run[0], run_dir)
    stale = [f".{train.CHECKPOINT_NAME}.0123abcd4567.tmp", ".metrics.json.89ab.tmp",
             "metrics.csv.tmp4242"]
    for name in stale:
        (run_dir / name).write_bytes(bytes(1000))
    keep = [".notes.tmp", "checkpoint.npz.bak", "mine.tmp123"]
    for name in keep:
        (run_dir / name).write_text("user file")
    code, out = run_cli(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"], capsys)
    assert code == 0, out.err
    names = set(os.listdir(run_dir))
    assert not names & set(stale)
    assert set(keep) <= names
    assert not [n for n in names if n.endswith(".tmp") and n.startswith(".")
                and n != ".notes.tmp"]


# ---------------------------------------------------------------- safe writes
def test_writes_never_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "shared"
    folder.mkdir()
    # the names the old code used: <file>.tmp<pid>
    os.symlink(victim, folder / f"config.json.tmp{os.getpid()}")
    os.symlink(victim, folder / f"metrics.csv.tmp{os.getpid()}")
    cli._write_json(str(folder / "config.json"), {"a": 1})
    train.write_atomic(str(folder / "metrics.csv"), "epoch\n1\n")
    assert victim.read_text() == "precious"
    assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert not (folder / "config.json").is_symlink()
    # no temporary file is left behind
    assert sorted(os.listdir(folder)) == sorted(
        ["config.json", "metrics.csv", f"config.json.tmp{os.getpid()}",
         f"metrics.csv.tmp{os.getpid()}"])


def test_atomic_write_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        train.write_atomic(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_evaluate_checks_the_configs_dataset_path(finished_run, tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")
    path = edited_checkpoint(finished_run, tmp_path,
                             _set("config", "dataset", value=str(tmp_path / "fifo.npz")))
    try:
        out = run_module("evaluate", str(path), timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("evaluate hung on a FIFO named by the checkpoint's config")
    assert out.returncode == 1
    line = one_line_error(out.stderr)
    assert "the data set its config names" in line and "not a regular file" in line
