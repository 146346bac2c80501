"""nn.save / nn.load: exact round trips, atomic under SIGKILL, damage detected, no pickle."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kernels as K
import nn
from nn.checkpoint import CheckpointError

CHECKPOINT_PY = Path(nn.checkpoint.__file__).resolve()


def assert_same(a, b, where="obj"):
    """Equal structure, types and bitwise-equal arrays (NaN payloads included)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray) or isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.weight = nn.Parameter(rng.standard_normal((3, 4)).astype(np.float32))
        self.bias = nn.Parameter(np.zeros(3, np.float32))
        self.register_buffer("count", np.array([7], np.int64))


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    weird = np.array([np.nan, -0.0, np.inf, 1e-310], np.float64)  # NaN, signed zero, subnormal
    obj = {
        "f32": rng.standard_normal((5, 6)).astype(np.float32),
        "f64": rng.standard_normal((2, 3, 4)),
        "int": rng.integers(-10**12, 10**12, size=(7,)),
        "u8": np.arange(10, dtype=np.uint8),
        "bool": np.array([True, False]),
        "zero_d": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4)),
        "weird": weird,
        "transposed": np.arange(12.0).reshape(3, 4).T,  # saved in C order, same values
        "scalars": [np.float32(1.25), np.int64(-3), np.float64(0.1)],
        "nested": {"list": [1, 2.5, "three", None, True, [np.ones(2)]], "tuple": (0.9, 0.999)},
        7: "int key",
        "floats": [math.inf, -math.inf, math.nan, 1e300, 0.1],
        "big": 2 ** 100,
        "text": "ünïcode ✓",
    }
    path = tmp_path / "ckpt.npz"
    nn.save(obj, path)
    back = nn.load(path)
    expect = dict(obj, transposed=np.ascontiguousarray(obj["transposed"]))
    assert_same(expect, back)
    assert all(isinstance(v, np.ndarray) and type(v) is np.ndarray
               for v in (back["f32"], back["weird"]))


def test_training_state_round_trip(tmp_path):
    model = Tiny()
    opt = nn.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    sched = nn.optim.CosineAnnealingLR(opt, T_max=5)
    for p in model.parameters():
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()
    sched.step()
    rng = np.random.default_rng(42)
    rng.random(5)
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(),
           "scheduler": sched.state_dict(), "epoch": 3, "rng": rng.bit_generator.state,
           "config": {"lr": 0.01, "layers": [4, 3], "name": "tiny"}}
    nn.save(obj, tmp_path / "train.ckpt")
    back = nn.load(tmp_path / "train.ckpt")
    assert_same(dict(obj, model=dict(obj["model"])), back)

    fresh = Tiny()
    fresh.load_state_dict(back["model"])
    np.testing.assert_array_equal(fresh.weight.data, model.weight.data)
    restored = np.random.default_rng()
    restored.bit_generator.state = back["rng"]
    np.testing.assert_array_equal(restored.random(4), rng.random(4))


@pytest.mark.cuda
def test_device_arrays_are_saved_from_the_host_copy(cuda_device, tmp_path):
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    nn.save({"w": K.to_device(a, cuda_device)}, tmp_path / "d.ckpt")
    back = nn.load(tmp_path / "d.ckpt")["w"]
    assert type(back) is np.ndarray
    np.testing.assert_array_equal(back, a)


def test_no_temporary_files_after_success(tmp_path):
    for v in range(3):
        nn.save({"v": v, "a": np.full(10, v)}, tmp_path / "model.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]
    assert nn.load(tmp_path / "model.ckpt")["v"] == 2
    mode = (tmp_path / "model.ckpt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's private 0600


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.ckpt"
    nn.save({"v": 1}, path)

    def broken_savez(f, **entries):
        f.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        nn.save({"v": 2, "a": np.ones(100)}, path)
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]
    monkeypatch.undo()
    assert nn.load(path) == {"v": 1}


def test_unsupported_values_are_refused_before_writing(tmp_path):
    path = tmp_path / "x.ckpt"
    with pytest.raises(TypeError, match=r"obj\['model'\]\['w'\] is an array of dtype object"):
        nn.save({"model": {"w": np.array([1, "a"], dtype=object)}}, path)
    with pytest.raises(TypeError, match=r"obj\['config'\]\['fn'\] is a function"):
        nn.save({"config": {"fn": lambda x: x}}, path)
    with pytest.raises(TypeError, match=r"key \(1, 2\) of type tuple"):
        nn.save({(1, 2): 3}, path)
    with pytest.raises(TypeError, match="dtype"):
        nn.save({"rec": np.zeros(2, dtype=[("a", "f4"), ("b", "i4")])}, path)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- damaged files
def _sample_file(tmp_path):
    obj = {"weight": np.arange(64, dtype=np.float32).reshape(8, 8) + 0.5,
           "bias": np.linspace(-1, 1, 5), "step": np.int64(9), "epoch": 4}
    path = tmp_path / "good.ckpt"
    nn.save(obj, path)
    return obj, path, path.read_bytes()


def test_truncated_files_raise_naming_the_file(tmp_path):
    _, _, data = _sample_file(tmp_path)
    bad = tmp_path / "truncated.ckpt"
    cuts = sorted({0, 1, 30, 100, len(data) // 2, len(data) - 23, len(data) - 1}
                  | set(np.random.default_rng(0).integers(1, len(data), 25).tolist()))
    for n in cuts:
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated.ckpt") as info:
            nn.load(bad)
        assert isinstance(info.value, ValueError) and info.value.path == str(bad)


def test_bit_flips_never_give_wrong_values(tmp_path):
    obj, _, data = _sample_file(tmp_path)
    bad = tmp_path / "flipped.ckpt"
    # Where the arrays' bytes and the JSON header lie: a flip there must always be detected.
    payload = []
    for a in (obj["weight"], obj["bias"]):
        start = data.find(a.tobytes())
        payload += [start, start + a.nbytes // 2, start + a.nbytes - 1]
    header = data.find(b'{"format"')
    payload += [header + 2, header + 40, data.find(b'"sha256"') + 20]
    rng = np.random.default_rng(3)
    positions = payload + rng.integers(0, len(data), 120).tolist()
    detected = 0
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(damaged))
        try:
            back = nn.load(bad)
        except CheckpointError as exc:
            assert "flipped.ckpt" in str(exc)
            detected += 1
            continue
        assert pos not in payload, f"flip at byte {pos} (array or header) went unnoticed"
        # A flip in zip bookkeeping the reader ignores (timestamps, version fields) is harmless.
        assert_same(obj, back)
    assert detected >= len(payload)


def test_not_a_checkpoint(tmp_path):
    cases = {"random.bin": np.random.default_rng(0).bytes(300),
             "empty.bin": b"",
             "text.txt": b"hello world\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "single.npy", np.ones(3))
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    for name in list(cases) + ["single.npy", "plain.npz"]:
        with pytest.raises(CheckpointError, match=name):
            nn.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.ckpt")


class _Exploit:
    """Unpickling this would create a marker file: proof that no pickle ever runs."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_raw(path, header, **arrays):
    text = json.dumps(header).encode()
    raw = np.frombuffer(hashlib.sha256(text).hexdigest().encode() + text, np.uint8)
    np.savez(path, __checkpoint__=raw, **arrays)


def test_pickled_object_arrays_are_refused(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Exploit()
    header = {"format": "numba-dl-checkpoint", "version": 1, "tree": {"$array": 0},
              "arrays": [{"dtype": "|O", "shape": [1], "sha256": "0" * 64}]}
    path = tmp_path / "evil.npz"
    _write_raw(path, header, a0=evil)
    with pytest.raises(CheckpointError, match="evil.npz.*[Oo]bject arrays"):
        nn.load(path)
    assert not _Exploit.marker.exists()


def test_header_and_entries_must_agree(tmp_path):
    good = {"format": "numba-dl-checkpoint", "version": 1, "tree": {"$array": 0},
            "arrays": [{"dtype": "<f8", "shape": [3], "sha256": hashlib.sha256(
                np.ones(3).tobytes()).hexdigest()}]}
    path = tmp_path / "h.npz"
    _write_raw(path, good, a0=np.ones(3))
    np.testing.assert_array_equal(nn.load(path), np.ones(3))
    _write_raw(path, dict(good, version=99), a0=np.ones(3))
    with pytest.raises(CheckpointError, match="version 99"):
        nn.load(path)
    _write_raw(path, good, a0=np.ones(4))
    with pytest.raises(CheckpointError, match="a0 is <f8 \\[4\\], the header says <f8 \\[3\\]"):
        nn.load(path)
    _write_raw(path, good, a0=np.ones(3), a1=np.ones(1))
    with pytest.raises(CheckpointError, match="unexpected \\['a1'\\]"):
        nn.load(path)
    _write_raw(path, good, a0=np.full(3, 2.0))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        nn.load(path)


# ---------------------------------------------------------------- killed writers
CONTENT = r"""
import numpy as np

def content(version):
    return {"version": version,
            "weights": np.full(250_000, version, np.float32),
            "nested": {"ints": np.arange(1000) + version, "scale": [version, 0.5 * version]}}
"""

# A process that forks writers on request: each writer saves versions start, start + 1, ...
# until it is killed, and logs "b V" before and "s V" after each save to its own log file with
# single unbuffered writes.  Forking from a warm process keeps each kill to milliseconds
# instead of a fresh interpreter's start-up; the writers are still separate processes killed
# mid-write.
SPAWNER = CONTENT + r"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ckpt)
path = sys.argv[2]
for line in sys.stdin:
    command, value, log = line.split()
    if command == "reap":
        os.waitpid(int(value), 0)
        print("reaped", flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        version = int(value)
        while True:
            os.write(fd, b"b %d\n" % version)
            ckpt.save(content(version), path)
            os.write(fd, b"s %d\n" % version)
            version += 1
    print(pid, flush=True)
"""


def _wait_for_saves(log, count, timeout=120.0):
    """Block until the writer logging to ``log`` has finished ``count`` saves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("s ") >= count:
            return
        time.sleep(0.001)
    raise AssertionError(f"the writer finished fewer than {count} saves in {timeout} s")


def test_killed_writers_never_leave_a_broken_checkpoint(tmp_path):
    """SIGKILL writers at random moments: the file at the path is always a complete version.

    Nothing here depends on how fast the machine is: each writer is killed only after it has
    finished a first save (so completed saves are certain), at a random moment in a later one,
    and the rounds go on until kills have landed inside a save (the writer's log ends with a
    "b" line) several times, however long a save takes under load.
    """
    scope = {}
    exec(CONTENT, scope)
    content = scope["content"]
    path = tmp_path / "model.ckpt"
    nn.save(content(0), path)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER, str(CHECKPOINT_PY), str(path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    rng = np.random.default_rng(0)
    interrupted = rounds = 0
    try:
        while rounds < 25 or interrupted < 5:
            rounds += 1
            assert rounds <= 400, f"only {interrupted} of 400 kills landed inside a save"
            log = tmp_path / f"writer{rounds}.log"
            spawner.stdin.write(f"write {1000 * rounds} {log}\n")
            spawner.stdin.flush()
            pid = int(spawner.stdout.readline())
            _wait_for_saves(log, 1)
            time.sleep(rng.uniform(0.0, 0.01))
            os.kill(pid, signal.SIGKILL)
            spawner.stdin.write(f"reap {pid} -\n")
            spawner.stdin.flush()
            assert spawner.stdout.readline() == "reaped\n"  # the writer is gone
            events = log.read_text().split()
            last_event, last_version = events[-2], int(events[-1])
            saved = last_version if last_event == "s" else last_version - 1
            back = nn.load(path)
            # The path holds the last completed save, or the one in flight if the kill came
            # after its rename and before the writer could log it.
            assert back["version"] in (saved, last_version), (back["version"], events[-4:])
            assert_same(content(back["version"]), back)
            interrupted += last_event == "b"
    finally:
        spawner.stdin.close()
        spawner.wait(timeout=60)
    leftovers = [n for n in os.listdir(tmp_path)
                 if n != "model.ckpt" and not n.endswith(".log")]
    assert all(n.startswith(".model.ckpt.") for n in leftovers), leftovers
