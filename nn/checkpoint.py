"""Checkpoints that hold arrays and JSON only, written atomically and verified on load.

``save(obj, path)`` stores nested dicts / lists / tuples of arrays, numbers, strings, bools
and None (a model's ``state_dict()``, ``optimizer.state_dict()``, a schedule's state, the
epoch, ``rng.bit_generator.state``, a JSON-able config...).  ``load(path)`` gives the same
structure back, with host NumPy arrays bit for bit equal to the saved ones.

File format: an uncompressed ``.npz`` (a zip of ``.npy`` files, readable by
``np.load(path, allow_pickle=False)``) with

* ``a0``, ``a1``, ...: the arrays, in the order the header lists them;
* ``__checkpoint__``: a uint8 array: the hex SHA-256 of the JSON text, then the JSON text
  ``{"format", "version", "arrays": [{"dtype", "shape", "sha256"}...], "tree"}``.

The tree is tagged JSON so that integer dict keys (optimizer state), tuples and non-finite
floats survive: ``{"$dict": [[key, node]...]}``, ``{"$list": [...]}``, ``{"$tuple": [...]}``,
``{"$array": k}``, ``{"$scalar": k}`` (a NumPy scalar, stored as a 0-d array),
``{"$float": "nan" | "inf" | "-inf"}``; strings, ints, finite floats, bools and None as is.

Nothing is ever unpickled: object arrays are refused when saving and when loading.  Saving
writes a temporary file ``.<name>.<random>.tmp`` in the target's folder, fsyncs it,
``os.replace``s it onto the target and fsyncs the folder, so a crash at any moment leaves
either the old or the new checkpoint at ``path`` (a killed writer may leave its temporary
file behind; a failed save removes it).  Any damage (truncation, flipped bits, a file that
is not a checkpoint) raises :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

import numpy as np

__all__ = ["CheckpointError", "save", "load"]

FORMAT = "numba-dl-checkpoint"
VERSION = 1
_HEADER = "__checkpoint__"

# Read once: mkstemp creates files 0600, and a checkpoint should get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint file is damaged, incomplete or not a checkpoint; ``.path`` names it."""

    def __init__(self, path, what):
        self.path = path
        super().__init__(f"cannot load checkpoint {path!r}: {what}")


# ---------------------------------------------------------------- encoding
def _as_host_array(value):
    """A C-contiguous host ndarray for a NumPy/CuPy array, or None for anything else."""
    # np.asarray(order="C") rather than np.ascontiguousarray, which turns 0-d into 1-d.
    if isinstance(value, np.ndarray):
        return np.asarray(value, order="C").view(np.ndarray)
    if hasattr(value, "__cuda_array_interface__"):
        import kernels  # only for device arrays, so this module also loads on its own
        return np.asarray(kernels.to_host(value), order="C")
    return None


def _array_record(a, where):
    if a.dtype.hasobject or a.dtype.kind == "V":
        raise TypeError(f"nn.save: {where} is an array of dtype {a.dtype}; checkpoints hold "
                        f"only plain numeric, bool and string arrays (no pickled objects)")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _digest(a)}


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def _encode(value, arrays, records, where):
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        a = np.asarray(value)
        records.append(_array_record(a, where))
        arrays.append(a)
        return {"$scalar": len(arrays) - 1}
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    host = _as_host_array(value)
    if host is not None:
        records.append(_array_record(host, where))
        arrays.append(host)
        return {"$array": len(arrays) - 1}
    if isinstance(value, dict):
        items = []
        for key, v in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"nn.save: {where} has a key {key!r} of type "
                                f"{type(key).__name__}; dict keys must be str or int")
            items.append([key, _encode(v, arrays, records, f"{where}[{key!r}]")])
        return {"$dict": items}
    if isinstance(value, (list, tuple)):
        nodes = [_encode(v, arrays, records, f"{where}[{i}]") for i, v in enumerate(value)]
        return {"$tuple" if isinstance(value, tuple) else "$list": nodes}
    raise TypeError(f"nn.save: {where} is a {type(value).__name__}; checkpoints hold arrays, "
                    f"numbers, strings, bools, None, and dicts/lists/tuples of them")


def _decode(node, arrays, path):
    if not isinstance(node, dict):
        if isinstance(node, list):
            raise CheckpointError(path, "malformed header (a bare list in the tree)")
        return node
    if len(node) != 1:
        raise CheckpointError(path, f"malformed header (node with keys {sorted(node)})")
    (tag, body), = node.items()
    if tag == "$dict":
        return {key: _decode(v, arrays, path) for key, v in body}
    if tag == "$list":
        return [_decode(v, arrays, path) for v in body]
    if tag == "$tuple":
        return tuple(_decode(v, arrays, path) for v in body)
    if tag == "$array":
        return arrays[body]
    if tag == "$scalar":
        return arrays[body][()]
    if tag == "$float":
        return float(body)
    raise CheckpointError(path, f"malformed header (unknown tag {tag!r})")


# ---------------------------------------------------------------- save
def save(obj, path):
    """Write ``obj`` (nested dicts/lists of arrays and JSON values) to ``path``, atomically."""
    path = os.fspath(path)
    arrays, records = [], []
    tree = _encode(obj, arrays, records, "obj")
    text = json.dumps({"format": FORMAT, "version": VERSION, "arrays": records, "tree": tree},
                      allow_nan=False, separators=(",", ":")).encode()
    header = np.frombuffer(hashlib.sha256(text).hexdigest().encode() + text, dtype=np.uint8)
    entries = {f"a{k}": a for k, a in enumerate(arrays)}
    entries[_HEADER] = header

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    """Make the rename itself durable (the folder's entry now points at the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the data itself is already synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- load
def load(path):
    """Read a checkpoint written by :func:`save`; arrays come back as host NumPy arrays.

    Raises :class:`CheckpointError` (a ValueError naming ``path``) for a damaged file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:  # a missing file is a FileNotFoundError, not damage
        try:
            return _read(f, path)
        except CheckpointError:
            raise
        except Exception as exc:  # zip, npy and JSON parsers each fail in their own way
            raise CheckpointError(path, f"truncated or corrupted file "
                                        f"({type(exc).__name__}: {exc})") from exc


def _read(f, path):
    npz = np.load(f, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(path, "not a checkpoint (a single .npy array, not an archive)")
    with npz:
        if _HEADER not in npz.files:
            raise CheckpointError(path, f"not a checkpoint (no {_HEADER} entry; entries: "
                                        f"{npz.files[:5]})")
        raw = npz[_HEADER]
        if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size < 64:
            raise CheckpointError(path, "malformed header entry")
        raw = raw.tobytes()
        digest, text = raw[:64], raw[64:]
        if hashlib.sha256(text).hexdigest().encode() != digest:
            raise CheckpointError(path, "header checksum mismatch (corrupted header)")
        header = json.loads(text)
        if header.get("format") != FORMAT:
            raise CheckpointError(path, f"not a checkpoint of this library (format "
                                        f"{header.get('format')!r})")
        if header.get("version") != VERSION:
            raise CheckpointError(path, f"checkpoint format version {header.get('version')!r}"
                                        f" is not supported (this library reads {VERSION})")
        records = header["arrays"]
        expected = {f"a{k}" for k in range(len(records))} | {_HEADER}
        if set(npz.files) != expected:
            extra = sorted(set(npz.files) - expected)
            missing = sorted(expected - set(npz.files))
            raise CheckpointError(path, f"entries do not match the header (missing {missing},"
                                        f" unexpected {extra})")
        arrays = []
        for k, rec in enumerate(records):
            a = npz[f"a{k}"]
            if a.dtype.str != rec["dtype"] or list(a.shape) != rec["shape"]:
                raise CheckpointError(path, f"array a{k} is {a.dtype.str} {list(a.shape)}, the "
                                            f"header says {rec['dtype']} {rec['shape']}")
            if _digest(a) != rec["sha256"]:
                raise CheckpointError(path, f"array a{k} {a.dtype} {list(a.shape)}: checksum "
                                            f"mismatch (corrupted data)")
            arrays.append(a)
        return _decode(header["tree"], arrays, path)
