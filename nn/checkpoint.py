"""Checkpoints that hold arrays and JSON only, written atomically and verified on load.

``save(obj, path)`` stores nested dicts / lists / tuples of arrays, numbers, strings, bools
and None (a model's ``state_dict()``, ``optimizer.state_dict()``, a schedule's state, the
epoch, ``rng.bit_generator.state``, a JSON-able config...).  ``load(path)`` gives the same
structure back, with host NumPy arrays bit for bit equal to the saved ones.

File format: safetensors (written and read with the ``safetensors`` package), so other tools
read the arrays directly:

* every array is a tensor under its path in ``obj`` joined with dots: ``nn.save(
  model.state_dict(), p)`` keys the weights exactly like torch's ``state_dict``
  (``features.0.weight``), and a training checkpoint's weights sit under ``model.`` +
  those keys (``optimizer.state.0.exp_avg``, ``rng.loader.state.state`` and so on beside them);
  a clash gets a ``#2``, ``#3``... suffix.  Dtypes safetensors has no name for (strings,
  complex128, big-endian) are stored as their raw bytes (uint8) and viewed back on load;
* the header metadata (str -> str) holds ``format``, ``version``, ``tree`` (the structure,
  as JSON), ``arrays`` (each tensor's dtype, shape and SHA-256, as JSON) and ``sha256``
  (of ``tree`` and ``arrays``), so flipped bits anywhere are detected.

The tree is tagged JSON so that integer dict keys (optimizer state), tuples and non-finite
floats survive: ``{"$dict": [[key, node]...]}``, ``{"$list": [...]}``, ``{"$tuple": [...]}``,
``{"$array": key}``, ``{"$scalar": key}`` (a NumPy scalar, stored as a 0-d array),
``{"$float": "nan" | "inf" | "-inf"}``; strings, ints, finite floats, bools and None as is.

A safetensors file without this metadata (one written by torch's ``save_file``, say) loads
as a flat ``{key: array}`` dict, ready for ``model.load_state_dict``.  Checkpoints of the
previous format (an uncompressed ``.npz`` with a ``__checkpoint__`` header entry) still
load, read defensively: every ``.npy`` member's header (dtype, shape) is checked against the
checkpoint's header and the member's stored size before its data is read, compressed
members are refused (this library never wrote any), so refusing a forged file never costs
more memory than the file's legitimate contents.

Only regular files are opened (a FIFO or a device is refused at once instead of blocking or
reading forever).  Nothing is ever unpickled: object arrays are refused when saving and
when loading.  Saving writes a temporary file ``.<name>.<random>.tmp`` in the target's
folder (created exclusively, so a planted link is never followed, with the usual
permissions: the kernel applies the process's umask), fsyncs it, ``os.replace``s it onto
the target and fsyncs the folder, so a crash at any moment leaves either the old or the new
checkpoint at ``path`` (a killed writer may leave its temporary file behind; a failed save
removes it).  Any damage (truncation, flipped bits, a file that is not a checkpoint) raises
:class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import stat
import zipfile

import numpy as np

__all__ = ["CheckpointError", "save", "load"]

FORMAT = "numba-dl-checkpoint"
VERSION = 2
_NPZ_VERSION = 1  # the previous format, still read
_HEADER = "__checkpoint__"
# Metadata keys only this library writes ("format" alone is common: torch writes "pt").
_OWN_META_KEYS = ("tree", "arrays", "sha256")

# safetensors' own dtypes (numpy API): arrays of these are stored as they are, so any
# safetensors reader (torch, JAX, the Hugging Face tools) sees real tensors.
_NATIVE_DTYPES = {np.dtype(t).newbyteorder("<").str for t in (
    np.float64, np.float32, np.float16, np.int64, np.uint64, np.int32, np.uint32, np.int16,
    np.uint16, np.int8, np.uint8, np.bool_, np.complex64)}


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


def _check_dtype(dtype, where):
    if dtype.hasobject or dtype.kind == "V":
        raise TypeError(f"nn.save: {where} is an array of dtype {dtype}; checkpoints hold "
                        f"only plain numeric, bool and string arrays (no pickled objects)")


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


class _Encoder:
    """Walks ``obj``, collecting its arrays as tensors under dotted keys and the tree."""

    def __init__(self):
        self.tensors, self.records = {}, {}
        self.taken = {"__metadata__"}  # safetensors' own header entry

    def key(self, parts):
        base = ".".join(parts) or "value"
        key, k = base, 1
        while key in self.taken:
            k += 1
            key = f"{base}#{k}"
        self.taken.add(key)
        return key

    def array(self, a, parts, where, tag):
        _check_dtype(a.dtype, where)
        key = self.key(parts)
        self.records[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _digest(a)}
        # Raw bytes for dtypes safetensors cannot name; the record says how to view them back.
        self.tensors[key] = a if a.dtype.str in _NATIVE_DTYPES else a.reshape(-1).view(np.uint8)
        return {tag: key}

    def encode(self, value, parts, where):
        if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
            return self.array(np.asarray(value), parts, where, "$scalar")
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"$float": repr(value)}
        host = _as_host_array(value)
        if host is not None:
            return self.array(host, parts, where, "$array")
        if isinstance(value, dict):
            items = []
            for key, v in value.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError(f"nn.save: {where} has a key {key!r} of type "
                                    f"{type(key).__name__}; dict keys must be str or int")
                items.append([key, self.encode(v, parts + [str(key)], f"{where}[{key!r}]")])
            return {"$dict": items}
        if isinstance(value, (list, tuple)):
            nodes = [self.encode(v, parts + [str(i)], f"{where}[{i}]")
                     for i, v in enumerate(value)]
            return {"$tuple" if isinstance(value, tuple) else "$list": nodes}
        raise TypeError(f"nn.save: {where} is a {type(value).__name__}; checkpoints hold "
                        f"arrays, numbers, strings, bools, None, and dicts/lists/tuples of them")


def _decode(node, arrays, path):
    if not isinstance(node, dict):
        if isinstance(node, list):
            raise CheckpointError(path, "malformed header (a bare list in the tree)")
        return node
    if len(node) != 1:
        raise CheckpointError(path, f"malformed header (node with keys {sorted(node)})")
    (tag, body), = node.items()
    try:
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
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"malformed header ({tag} node: {exc!r})") from None
    raise CheckpointError(path, f"malformed header (unknown tag {tag!r})")


def _header_digest(tree_text, arrays_text):
    return hashlib.sha256(f"{tree_text}\n{arrays_text}".encode()).hexdigest()


# ---------------------------------------------------------------- save
def save(obj, path):
    """Write ``obj`` (nested dicts/lists of arrays and JSON values) to ``path``, atomically.

    The file is safetensors whatever its name; ``.safetensors`` is the usual suffix.
    """
    from safetensors.numpy import save as st_save

    path = os.fspath(path)
    enc = _Encoder()
    tree = enc.encode(obj, [], "obj")
    tree_text = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    arrays_text = json.dumps(enc.records, separators=(",", ":"))
    metadata = {"format": FORMAT, "version": str(VERSION), "tree": tree_text,
                "arrays": arrays_text, "sha256": _header_digest(tree_text, arrays_text)}
    _write_atomic(path, st_save(enc.tensors, metadata=metadata))


def _create_temp(folder, name):
    """A new file ``.<name>.<random>.tmp`` in ``folder``, opened for writing.

    O_EXCL refuses any existing entry, a planted symlink included; mode 0o666 lets the
    kernel apply the umask, so the checkpoint gets the permissions of any new file (no need
    to read the process-wide umask, which can only be read by changing it).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _write_atomic(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    """Read a checkpoint written by :func:`save` (or the older ``.npz`` format), or any
    safetensors file as a flat ``{key: array}`` dict; arrays come back as host NumPy arrays.

    Raises :class:`CheckpointError` (a ValueError naming ``path``) for a damaged file or one
    that is not a regular file.
    """
    path = os.fspath(path)
    fd = _open_regular(path)
    with os.fdopen(fd, "rb") as f:
        try:
            size = os.fstat(fd).st_size
            magic = f.read(8)
            f.seek(0)
            if magic[:4] == b"PK\x03\x04":
                return _read_npz(f, path, size)
            return _read_safetensors(fd, path, size)
        except CheckpointError:
            raise
        except Exception as exc:  # zip, npy, safetensors and JSON parsers each fail their way
            raise CheckpointError(path, f"truncated or corrupted file "
                                        f"({type(exc).__name__}: {exc})") from exc


def _open_regular(path):
    """An fd on ``path`` if it is a regular file; a FIFO or device is refused, never waited on.

    O_NONBLOCK makes opening a FIFO return at once (without it, open waits for a writer);
    the type is then checked on the opened file itself, so nothing can be swapped in between.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))  # a missing file: FileNotFoundError, not damage
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                    "a folder" if stat.S_ISDIR(mode) else "not a regular file")
            raise CheckpointError(path, f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------- safetensors
def _read_safetensors(fd, path, size):
    # safetensors checks the header (its length, every tensor's dtype, shape and offsets)
    # against the file size when opening, before any tensor data is read.  Opening the
    # already-checked regular file through /proc keeps a swapped-in FIFO out.
    proc = f"/proc/self/fd/{fd}"
    source = proc if os.path.exists(proc) else path
    with _safe_open(source) as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
        if meta.get("format") != FORMAT and not any(k in meta for k in _OWN_META_KEYS):
            # A foreign file (torch's save_file, say): its tensors as a flat dict.
            return {key: _owned(f.get_tensor(key)) for key in keys}
        tree, records = _check_metadata(meta, path)
        if sorted(keys) != sorted(records):
            raise CheckpointError(path, f"tensors do not match the header (missing "
                                        f"{sorted(set(records) - set(keys))[:5]}, unexpected "
                                        f"{sorted(set(keys) - set(records))[:5]})")
        arrays = {}
        for key in keys:
            arrays[key] = _read_tensor(f, key, records[key], path)
    return _decode(tree, arrays, path)


def _safe_open(source):
    from safetensors import safe_open

    try:  # pread: a file truncated while being read gives an error, not a SIGBUS
        return safe_open(source, framework="np", backend="pread")
    except TypeError:  # older safetensors (0.4.5, say) always maps the file
        return safe_open(source, framework="np")


def _owned(a):
    return a if a.flags.writeable else a.copy()


def _check_metadata(meta, path):
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"not a checkpoint of this library (format "
                                    f"{meta.get('format')!r})")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(path, f"checkpoint format version {meta.get('version')!r} is not "
                                    f"supported (this library reads {VERSION} and the .npz "
                                    f"version {_NPZ_VERSION})")
    tree_text, arrays_text = meta.get("tree", ""), meta.get("arrays", "")
    if meta.get("sha256") != _header_digest(tree_text, arrays_text):
        raise CheckpointError(path, "header checksum mismatch (corrupted header)")
    return json.loads(tree_text), json.loads(arrays_text)


def _record_dtype(rec, where, path):
    try:
        dtype, shape = np.dtype(rec["dtype"]), tuple(int(s) for s in rec["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(path, f"{where}: malformed header record ({exc!r})") from None
    if dtype.hasobject or dtype.kind == "V":
        raise CheckpointError(path, f"{where}: object arrays are refused (dtype {dtype}); "
                                    f"checkpoints never hold pickled objects")
    return dtype, shape


def _read_tensor(f, key, rec, path):
    dtype, shape = _record_dtype(rec, f"tensor {key!r}", path)
    nbytes = math.prod(shape) * dtype.itemsize
    sl = f.get_slice(key)
    stored_shape, stored_dtype = tuple(sl.get_shape()), sl.get_dtype()
    if dtype.str in _NATIVE_DTYPES:
        expected = (_ST_NAMES.get(dtype.str), shape)
    else:
        expected = ("U8", (nbytes,))
    if (stored_dtype, stored_shape) != expected:
        raise CheckpointError(path, f"tensor {key!r} is {stored_dtype} {list(stored_shape)}, "
                                    f"the header says {rec['dtype']} {list(shape)}")
    a = _owned(f.get_tensor(key))  # writeable, like any loaded array
    if dtype.str not in _NATIVE_DTYPES:
        a = a.view(dtype).reshape(shape)
    if _digest(a) != rec.get("sha256"):
        raise CheckpointError(path, f"tensor {key!r} {dtype} {list(shape)}: checksum mismatch "
                                    f"(corrupted data)")
    return a


_ST_NAMES = {np.dtype(t).newbyteorder("<").str: name for t, name in (
    (np.float64, "F64"), (np.float32, "F32"), (np.float16, "F16"), (np.int64, "I64"),
    (np.uint64, "U64"), (np.int32, "I32"), (np.uint32, "U32"), (np.int16, "I16"),
    (np.uint16, "U16"), (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL"),
    (np.complex64, "C64"))}


# ---------------------------------------------------------------- the previous .npz format
def _read_npz(f, path, size):
    # zipfile keeps an object of some 500 bytes per entry of the central directory: a forged
    # directory of millions of 52-byte entries would cost ten times the file.  The end
    # record (the last 22 bytes: nn.save never wrote a zip comment) gives the count first.
    f.seek(max(size - 22, 0))
    end = f.read(22)
    if len(end) != 22 or end[:4] != b"PK\x05\x06":
        raise CheckpointError(path, "not a checkpoint (no zip end record where nn.save "
                                    "writes it)")
    if int.from_bytes(end[10:12], "little") == 0xFFFF:
        raise CheckpointError(path, "not a checkpoint (65535 or more zip entries)")
    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        members = {}
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or name[:-4] in members:
                raise CheckpointError(path, f"unexpected or repeated entry {name!r}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(path, f"entry {name!r} is compressed; checkpoints store "
                                            f"their arrays uncompressed")
            if info.compress_size != info.file_size or \
                    info.header_offset + info.compress_size > size:
                raise CheckpointError(path, f"entry {name!r} claims {info.file_size} bytes, "
                                            f"which its stored size ({info.compress_size}) or "
                                            f"the file ({size} bytes) cannot hold")
            members[name[:-4]] = info
        if _HEADER not in members:
            raise CheckpointError(path, f"not a checkpoint (no {_HEADER} entry; entries: "
                                        f"{sorted(members)[:5]})")
        raw = _read_member(zf, members[_HEADER], path, _HEADER,
                           lambda dtype, shape: (dtype == np.uint8 and len(shape) == 1
                                                 and shape[0] >= 64, "a uint8 vector"))
        raw = raw.tobytes()
        digest, text = raw[:64], raw[64:]
        if hashlib.sha256(text).hexdigest().encode() != digest:
            raise CheckpointError(path, "header checksum mismatch (corrupted header)")
        header = json.loads(text)
        if header.get("format") != FORMAT:
            raise CheckpointError(path, f"not a checkpoint of this library (format "
                                        f"{header.get('format')!r})")
        if header.get("version") != _NPZ_VERSION:
            raise CheckpointError(path, f"checkpoint format version {header.get('version')!r}"
                                        f" is not supported (this library reads {VERSION} and "
                                        f"the .npz version {_NPZ_VERSION})")
        records = header["arrays"]
        expected = {f"a{k}" for k in range(len(records))} | {_HEADER}
        if set(members) != expected:
            extra = sorted(set(members) - expected)
            missing = sorted(expected - set(members))
            raise CheckpointError(path, f"entries do not match the header (missing {missing},"
                                        f" unexpected {extra})")
        arrays = []
        for k, rec in enumerate(records):
            name = f"a{k}"
            dtype, shape = _record_dtype(rec, f"array {name}", path)
            a = _read_member(zf, members[name], path, name, lambda d, s: (
                d == dtype and s == shape, f"{dtype.str} {list(shape)}"))
            if _digest(a) != rec.get("sha256"):
                raise CheckpointError(path, f"array {name} {a.dtype} {list(a.shape)}: checksum "
                                            f"mismatch (corrupted data)")
            arrays.append(a)
        return _decode(header["tree"], arrays, path)


def _read_member(zf, info, path, name, expect):
    """One ``.npy`` member: its header checked (``expect(dtype, shape)`` and the member's
    size) before a byte of data is read, then the data read into one array of that size."""
    with zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise CheckpointError(path, f"array {name}: unsupported .npy version {version}")
        if dtype.hasobject or dtype.kind == "V":
            raise CheckpointError(path, f"array {name}: object arrays are refused (dtype "
                                        f"{dtype}); checkpoints never hold pickled objects")
        ok, wanted = expect(dtype, tuple(shape))
        if not ok:
            raise CheckpointError(path, f"array {name} is {dtype.str} {list(shape)}, the header "
                                        f"says {wanted}")
        nbytes = math.prod(shape) * dtype.itemsize
        if m.tell() + nbytes != info.file_size:
            raise CheckpointError(path, f"array {name}: {dtype.str} {list(shape)} needs "
                                        f"{nbytes} bytes but the entry holds "
                                        f"{info.file_size - m.tell()}")
        a = np.empty(shape, dtype, order="F" if fortran else "C")
        buf = memoryview(a.ravel(order="K").view(np.uint8))
        done = 0
        while done < nbytes:
            chunk = m.read(min(nbytes - done, 1 << 22))
            if not chunk:
                raise CheckpointError(path, f"array {name}: truncated data")
            buf[done:done + len(chunk)] = chunk
            done += len(chunk)
        if m.read(1):  # also makes zipfile check the entry's CRC
            raise CheckpointError(path, f"array {name}: more data than its header says")
    return np.ascontiguousarray(a) if fortran and a.ndim > 1 else a
