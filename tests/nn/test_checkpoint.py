"""nn.save / nn.load: exact round trips, atomic under SIGKILL, damage detected, no pickle,
old .npz checkpoints read with bounded memory, special files refused."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import kernels as K
import nn
from nn.checkpoint import CheckpointError
from legacy_checkpoint import save_npz, write_raw

CHECKPOINT_PY = Path(nn.checkpoint.__file__).resolve()
LEGACY_FILE = Path(__file__).parent / "data" / "legacy_v1.npz"


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
    obj.update({"strings": np.array(["a", "bcd"]), "c128": np.arange(3) * 1j,
                "big_endian": np.arange(4, dtype=">f8"), "__metadata__": np.ones(1)})
    path = tmp_path / "ckpt.safetensors"
    nn.save(obj, path)
    back = nn.load(path)
    expect = dict(obj, transposed=np.ascontiguousarray(obj["transposed"]))
    assert_same(expect, back)
    assert all(isinstance(v, np.ndarray) and type(v) is np.ndarray and v.flags.writeable
               for v in (back["f32"], back["weird"]))


def test_the_file_is_safetensors_with_readable_keys(tmp_path):
    """Any safetensors reader sees the arrays under their dotted paths in the object."""
    from safetensors.numpy import load_file

    model = Tiny()
    opt = nn.optim.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()
    nn.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2,
             "names": np.array(["x"])}, tmp_path / "c.safetensors")
    tensors = load_file(tmp_path / "c.safetensors")
    assert {"model.weight", "model.bias", "model.count", "optimizer.state.0.exp_avg",
            "optimizer.state.1.exp_avg_sq"} <= set(tensors)
    np.testing.assert_array_equal(tensors["model.weight"], model.weight.data)
    assert tensors["names"].dtype == np.uint8  # strings travel as their raw bytes
    nn.save(model.state_dict(), tmp_path / "w.safetensors")
    assert sorted(load_file(tmp_path / "w.safetensors")) == ["bias", "count", "weight"]


def test_clashing_keys_get_a_suffix(tmp_path):
    obj = {"a.b": np.zeros(1), "a": {"b": np.ones(1)}}
    nn.save(obj, tmp_path / "k.safetensors")
    assert_same(obj, nn.load(tmp_path / "k.safetensors"))


def test_a_foreign_safetensors_file_loads_as_a_flat_dict(tmp_path):
    from safetensors.numpy import save_file

    tensors = {"features.0.weight": np.ones((2, 3), np.float32), "fc.bias": np.arange(2.0)}
    save_file(tensors, tmp_path / "torch.safetensors", metadata={"format": "pt"})
    back = nn.load(tmp_path / "torch.safetensors")
    assert sorted(back) == sorted(tensors)
    for k in tensors:
        assert_same(tensors[k], back[k])


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

    def broken_fsync(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
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


# ---------------------------------------------------------------- the previous .npz format
def _legacy_content():
    """What tests/nn/data/legacy_v1.npz holds (written by the previous nn.save)."""
    rng = np.random.default_rng(5)
    return {"format": "demo", "epoch": 3,
            "model": {"0.weight": rng.standard_normal((4, 3)).astype(np.float32),
                      "0.bias": np.zeros(4, np.float32), "1.num_batches_tracked": np.array(7)},
            "optimizer": {"state": {0: {"step": np.int64(3), "exp_avg": np.full((4, 3), 0.5)}},
                          "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}]},
            "history": [{"loss": 1.5, "val": math.nan}], "names": np.array(["a", "bc"])}


def test_a_checkpoint_written_by_the_previous_version_still_loads(tmp_path):
    assert LEGACY_FILE.read_bytes()[:4] == b"PK\x03\x04"
    assert_same(_legacy_content(), nn.load(LEGACY_FILE))
    save_npz(_legacy_content(), tmp_path / "again.npz")  # the test's writer agrees
    assert_same(_legacy_content(), nn.load(tmp_path / "again.npz"))


def _writers():
    def st(obj, path):
        nn.save(obj, path)
    return [pytest.param(st, id="safetensors"), pytest.param(save_npz, id="npz")]


# ---------------------------------------------------------------- damaged files
def _sample_file(tmp_path, write=nn.save):
    obj = {"weight": np.arange(64, dtype=np.float32).reshape(8, 8) + 0.5,
           "bias": np.linspace(-1, 1, 5), "step": np.int64(9), "epoch": 4}
    path = tmp_path / "good.ckpt"
    write(obj, path)
    return obj, path, path.read_bytes()


@pytest.mark.parametrize("write", _writers())
def test_truncated_files_raise_naming_the_file(tmp_path, write):
    _, _, data = _sample_file(tmp_path, write)
    bad = tmp_path / "truncated.ckpt"
    cuts = sorted({0, 1, 8, 30, 100, len(data) // 2, len(data) - 23, len(data) - 1}
                  | set(np.random.default_rng(0).integers(1, len(data), 25).tolist()))
    for n in cuts:
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated.ckpt") as info:
            nn.load(bad)
        assert isinstance(info.value, ValueError) and info.value.path == str(bad)


@pytest.mark.parametrize("write", _writers())
def test_bit_flips_never_give_wrong_values(tmp_path, write):
    obj, _, data = _sample_file(tmp_path, write)
    bad = tmp_path / "flipped.ckpt"
    # Where the arrays' bytes and the JSON header lie: a flip there must always be detected.
    payload = []
    for a in (obj["weight"], obj["bias"]):
        start = data.find(a.tobytes())
        payload += [start, start + a.nbytes // 2, start + a.nbytes - 1]
    for marker in (b'format', b'tree', b'sha256', b'"shape'):
        at = data.find(marker)
        assert at >= 0, marker
        payload += [at + 2, at + 12]
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
        # A flip in bookkeeping the reader ignores (zip timestamps, header padding) is harmless.
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


def test_pickled_object_arrays_are_refused(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Exploit()
    header = {"format": "numba-dl-checkpoint", "version": 1, "tree": {"$array": 0},
              "arrays": [{"dtype": "|O", "shape": [1], "sha256": "0" * 64}]}
    path = tmp_path / "evil.npz"
    write_raw(path, header, a0=evil)
    with pytest.raises(CheckpointError, match="evil.npz.*[Oo]bject arrays"):
        nn.load(path)
    # The same lie in the entry only: the header promises floats, the .npy holds pickles.
    header["arrays"][0]["dtype"] = "<f8"
    write_raw(path, header, a0=evil)
    with pytest.raises(CheckpointError, match="evil.npz.*[Oo]bject arrays"):
        nn.load(path)
    assert not _Exploit.marker.exists()


def test_header_and_entries_must_agree(tmp_path):
    good = {"format": "numba-dl-checkpoint", "version": 1, "tree": {"$array": 0},
            "arrays": [{"dtype": "<f8", "shape": [3], "sha256": hashlib.sha256(
                np.ones(3).tobytes()).hexdigest()}]}
    path = tmp_path / "h.npz"
    write_raw(path, good, a0=np.ones(3))
    np.testing.assert_array_equal(nn.load(path), np.ones(3))
    write_raw(path, dict(good, version=99), a0=np.ones(3))
    with pytest.raises(CheckpointError, match="version 99"):
        nn.load(path)
    write_raw(path, good, a0=np.ones(4))
    with pytest.raises(CheckpointError, match="a0 is <f8 \\[4\\], the header says <f8 \\[3\\]"):
        nn.load(path)
    write_raw(path, good, a0=np.ones(3), a1=np.ones(1))
    with pytest.raises(CheckpointError, match="unexpected \\['a1'\\]"):
        nn.load(path)
    write_raw(path, good, a0=np.full(3, 2.0))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        nn.load(path)


def test_safetensors_tensors_must_match_the_header(tmp_path):
    from safetensors.numpy import save_file
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    nn.save({"w": np.ones(3), "n": 1}, path)
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    forged = tmp_path / "forged.safetensors"
    save_file({"w": np.ones(4)}, forged, metadata=meta)  # a shape the header does not list
    with pytest.raises(CheckpointError, match="tensor 'w' is F64 \\[4\\], the header says <f8 "
                                              "\\[3\\]"):
        nn.load(forged)
    save_file({"w": np.ones(3), "x": np.ones(1)}, forged, metadata=meta)
    with pytest.raises(CheckpointError, match="unexpected \\['x'\\]"):
        nn.load(forged)
    save_file({"w": np.full(3, 2.0)}, forged, metadata=meta)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        nn.load(forged)
    save_file({"w": np.ones(3)}, forged, metadata=dict(meta, tree='{"$array":"x"}'))
    with pytest.raises(CheckpointError, match="header checksum mismatch"):
        nn.load(forged)
    save_file({"w": np.ones(3)}, forged, metadata=dict(meta, version="9"))
    with pytest.raises(CheckpointError, match="version '9'"):
        nn.load(forged)


# ---------------------------------------------------------------- bounded reads
def _safetensors_bytes(header, data):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


FORGED = {
    "shape far beyond the data": ({"w": {"dtype": "F32", "shape": [10 ** 9],
                                         "data_offsets": [0, 4 * 10 ** 9]}}, 16),
    "offsets past the end": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8),
    "shape and offsets disagree": ({"w": {"dtype": "F32", "shape": [2 ** 31, 2 ** 31],
                                          "data_offsets": [0, 16]}}, 16),
    "overflowing shape": ({"w": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62],
                                 "data_offsets": [0, 16]}}, 16),
    "data after the last tensor": ({"w": {"dtype": "F32", "shape": [4],
                                          "data_offsets": [0, 16]}}, 64),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_safetensors_headers_are_refused_before_reading_data(tmp_path, case):
    header, data_size = FORGED[case]
    path = tmp_path / "forged.safetensors"
    path.write_bytes(_safetensors_bytes(header, bytes(data_size)))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="forged.safetensors"):
            nn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_huge_header_length_is_refused(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes((2 ** 62).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(CheckpointError, match="h.safetensors"):
        nn.load(path)


def _npy_header(dtype, shape):
    """The bytes of a .npy header for ``dtype``/``shape`` (no data)."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(
        np.dtype(dtype)), "fortran_order": False, "shape": shape})
    return b"\x93NUMPY\x01\x00"[:0] + buf.getvalue()


def _zip(path, members, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _good_members(array):
    text = json.dumps({"format": "numba-dl-checkpoint", "version": 1, "tree": {"$array": 0},
                       "arrays": [{"dtype": array.dtype.str, "shape": list(array.shape),
                                   "sha256": hashlib.sha256(array.tobytes()).hexdigest()}]},
                      separators=(",", ":")).encode()
    raw = np.frombuffer(hashlib.sha256(text).hexdigest().encode() + text, np.uint8)
    import io
    out = {}
    for name, a in (("__checkpoint__.npy", raw), ("a0.npy", array)):
        buf = io.BytesIO()
        np.save(buf, a)
        out[name] = buf.getvalue()
    return out


def _peak_of_load(path):
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            nn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


def test_a_compressed_bomb_is_refused_without_inflating_it(tmp_path):
    """40 MB of zeros deflate to 40 kB; the reader refuses the compressed entry unread."""
    members = _good_members(np.zeros(5_000_000))
    path = tmp_path / "bomb.npz"
    _zip(path, members, zipfile.ZIP_DEFLATED)
    size = path.stat().st_size
    assert size < 100_000
    error, peak = _peak_of_load(path)
    assert "is compressed" in str(error)
    assert peak < 2 * size + (1 << 20)
    # The same members stored load fine: only compression is refused.
    _zip(path, members)
    np.testing.assert_array_equal(nn.load(path), np.zeros(5_000_000))


def test_a_member_whose_header_promises_more_than_it_holds_is_refused(tmp_path):
    """A 1 kB member whose .npy header says (10**9,) float64: refused before allocating."""
    members = _good_members(np.zeros(100))
    members["a0.npy"] = _npy_header("<f8", (10 ** 9,)) + bytes(800)
    path = tmp_path / "lying.npz"
    _zip(path, members)
    error, peak = _peak_of_load(path)
    assert "a0 is <f8 [1000000000], the header says <f8 [100]" in str(error)
    assert peak < 1 << 20
    # Header and checkpoint header agree, but the member holds less (or more) data.
    for data in (bytes(400), bytes(1600)):
        members["a0.npy"] = _npy_header("<f8", (100,)) + data
        _zip(path, members)
        error, peak = _peak_of_load(path)
        assert "a0: <f8 [100] needs 800 bytes" in str(error)


def test_a_zip_entry_claiming_more_than_the_file_is_refused(tmp_path):
    members = _good_members(np.arange(100.0))
    path = tmp_path / "sizes.npz"
    _zip(path, members)
    data = bytearray(path.read_bytes())
    # Forge a0's uncompressed and compressed sizes in the central directory to 2 GB.
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"a0.npy"))
    central = data.find(b"PK\x01\x02", central + 1) if data[central + 46:central + 52] != \
        b"a0.npy" else central
    assert data[central + 46:central + 52] == b"a0.npy"
    data[central + 20:central + 28] = (2 ** 31).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    error, peak = _peak_of_load(path)
    assert "sizes.npz" in str(error)
    assert peak < 1 << 20


def test_a_zip_of_countless_entries_is_refused_before_listing_them(tmp_path):
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(70_000):
            zf.writestr(f"a{k}.npy", b"")
    error, peak = _peak_of_load(path)
    assert "65535 or more zip entries" in str(error)
    assert peak < 1 << 20
    path.write_bytes(path.read_bytes() + b"comment")  # nn.save never wrote zip comments
    assert "no zip end record" in str(_peak_of_load(path)[0])


# ---------------------------------------------------------------- special files
def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "checkpoint.safetensors"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_load_error(fifo)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("nn.load blocked on a FIFO")
    assert "not a regular file (a FIFO)" in outcome[0]


def _load_error(path):
    try:
        nn.load(path)
    except CheckpointError as exc:
        return str(exc)
    except OSError as exc:  # what a writer-less FIFO might give if it were opened blocking
        return f"OSError {exc}"
    return "loaded"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_devices_and_folders_are_refused(tmp_path):
    for target, kind in (("/dev/zero", "a device"), (str(tmp_path), "a folder")):
        with pytest.raises(CheckpointError, match=f"not a regular file \\({kind}\\)"):
            nn.load(target)
    link = tmp_path / "link.npz"
    link.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="a device"):
        nn.load(link)


def test_importing_checkpoint_leaves_the_umask_alone(tmp_path):
    """The module never calls os.umask (setting it, even briefly, races with other threads
    creating files), and saved files still get the umask's permissions."""
    script = f"""
import os
os.umask(0o027)
def forbidden(*a):
    raise AssertionError("os.umask called")
os.umask = forbidden
import numpy as np
import nn.checkpoint as c
c.save({{"a": np.ones(2)}}, {str(tmp_path / "u.safetensors")!r})
print(oct(os.stat({str(tmp_path / "u.safetensors")!r}).st_mode & 0o777))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0o640"


def test_save_never_follows_a_planted_link(tmp_path, monkeypatch):
    """Every temporary name is created exclusively: an existing entry (a link an attacker
    planted where the random name would go) is skipped, never written through."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(nn.checkpoint.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".c.safetensors.aaaa.tmp").symlink_to(victim)
    nn.save({"a": np.ones(2)}, tmp_path / "c.safetensors")
    assert victim.read_text() == "keep"
    np.testing.assert_array_equal(nn.load(tmp_path / "c.safetensors")["a"], np.ones(2))


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
