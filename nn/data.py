"""Data: array data sets, a seeded mini-batch loader, splits, normalisation and file loaders.

* :class:`ArrayDataset` holds host arrays ``x`` (N, ...) and ``y`` (N,) int64 labels (or any
  per-sample targets).  Samples stay on the host; only batches move to the device.
* :class:`DataLoader` yields ``(x, y)`` batches already on the requested device.  With
  ``shuffle=True`` each pass draws one permutation from its NumPy ``Generator``, so the
  generator's state at the end of an epoch fixes every later epoch's order (checkpoints
  store it to resume exactly).
* :func:`split` cuts a data set into train/validation/test parts with a seed;
  :class:`Normalize` holds per-channel ``(x - mean) / std`` fitted on the training part only.
* Built-in sets, no download: :func:`digits` (scikit-learn's 1,797 8x8 handwritten digits as
  N x 1 x 8 x 8 float32 in [0, 1]) and small synthetic sets (:func:`blobs`, :func:`xor`,
  :func:`gaussian_images`).
* Loaders for data a user brings: MNIST / Fashion-MNIST IDX files (plain or ``.gz``) and
  ``.npz`` files holding ``x``/``y`` (optionally ``x_test``/``y_test``).  A missing or
  malformed file raises :class:`DataError` naming the file and what is wrong.
"""
from __future__ import annotations

import gzip
import math
import numbers
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

import kernels

__all__ = ["DataError", "MAX_CLASSES", "ArrayDataset", "DataLoader", "split", "Normalize",
           "digits", "blobs",
           "xor", "gaussian_images", "read_idx", "load_idx", "load_mnist", "load_npz",
           "load_dataset", "DATASETS"]


# Class labels are indices below this: far more classes than any data set here, while a
# confusion matrix of that size (800 MB of int64) still fits in memory.
MAX_CLASSES = 10_000


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the problem."""


# ---------------------------------------------------------------------- data sets and loader
class ArrayDataset:
    """Samples ``x[i]`` with targets ``y[i]``, both host (NumPy) arrays of the same length."""

    def __init__(self, x, y):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise ValueError(f"ArrayDataset: x and y must have the same length, got x "
                             f"{x.shape} and y {y.shape}")
        self.x = x
        self.y = y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]

    @property
    def sample_shape(self):
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self):
        """``max(y) + 1`` for integer labels (0 for an empty set)."""
        if self.y.dtype.kind not in "iu":
            raise ValueError(f"num_classes needs integer labels, y has dtype {self.y.dtype}")
        return int(self.y.max()) + 1 if len(self.y) else 0

    def subset(self, indices):
        indices = np.asarray(indices)
        return ArrayDataset(self.x[indices], self.y[indices])

    def __repr__(self):
        return (f"ArrayDataset(n={len(self)}, x={self.x.dtype}{list(self.sample_shape)}, "
                f"y={self.y.dtype}{list(self.y.shape[1:])})")


class DataLoader:
    """Mini-batches ``(x, y)`` of an :class:`ArrayDataset` (or of a tuple ``(x, y)`` of
    arrays, NumPy or anything ``np.asarray`` reads, torch CPU tensors included), moved to
    ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:0"``).

    ``shuffle`` draws one permutation per pass from ``generator`` (a NumPy ``Generator``;
    made from ``seed`` when not given).  ``drop_last`` skips a final short batch.  ``dtype``
    casts floating inputs (e.g. to the model's float32/float64); labels are left alone.
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, drop_last=False, generator=None,
                 seed=None, device=kernels.CPU, dtype=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if generator is not None and seed is not None:
            raise ValueError("DataLoader: pass a generator or a seed, not both")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator: expected a numpy.random.Generator, got "
                            f"{type(generator).__name__}")
        device = kernels.device.normalize_device(device)
        kernels.array_module(device)  # fails early, naming the device, when it is not there
        if isinstance(dataset, tuple):
            if len(dataset) != 2:
                raise ValueError(f"dataset: a tuple must be (x, y), got {len(dataset)} items")
            dataset = ArrayDataset(*(_host_array(a, name)
                                     for a, name in zip(dataset, ("x", "y"))))
        elif not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset: expected an ArrayDataset or a tuple (x, y) of arrays, "
                            f"got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator if generator is not None else np.random.default_rng(seed)
        self.device = device
        self.dtype = None if dtype is None else np.dtype(dtype)

    def __len__(self):
        n = len(self.dataset)
        if self.drop_last:
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.dataset)
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            # Fancy indexing copies, so a layer can never write into the data set.
            x, y = self.dataset[index]
            if self.dtype is not None and x.dtype.kind == "f" and x.dtype != self.dtype:
                x = x.astype(self.dtype)
            yield kernels.to_device(x, self.device), kernels.to_device(y, self.device)

    def __repr__(self):
        return (f"DataLoader(n={len(self.dataset)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, device={self.device!r})")


def _host_array(a, name):
    """``a`` as a host NumPy array; a torch tensor without a copy (``detach`` shares it)."""
    if type(a).__module__.split(".")[0] == "torch":
        if str(a.device) != "cpu":
            raise TypeError(f"{name}: a torch tensor on {str(a.device)!r}; pass "
                            f"{name}.cpu(): the loader keeps data on the host")
        return np.from_dlpack(a.detach())
    return kernels.to_host(a) if kernels.device._device_of_one(a) is not None else np.asarray(a)


def split(dataset, fractions=(0.8, 0.1, 0.1), seed=0):
    """Random disjoint parts of ``dataset`` with the given fractions (summing to 1) or sizes.

    Returns a list of :class:`ArrayDataset`, one per entry of ``fractions``; the same seed
    gives the same parts.  Rounding leftovers go to the first part.
    """
    n = len(dataset)
    fractions = list(fractions)
    if not fractions:
        raise ValueError("split: fractions must not be empty")
    if all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) for f in fractions):
        sizes = [int(f) for f in fractions]
        if any(s < 0 for s in sizes) or sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} must be non-negative and sum to the data "
                             f"set's length {n}")
    else:
        if not all(isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f)
                   for f in fractions):
            raise ValueError(f"split: fractions must be finite numbers, got {fractions}")
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split: fractions {fractions} must be non-negative and sum to 1")
        sizes = [int(np.floor(f * n)) for f in fractions]
        sizes[0] += n - sum(sizes)
    order = np.random.default_rng(seed).permutation(n)
    parts, start = [], 0
    for size in sizes:
        parts.append(dataset.subset(np.sort(order[start:start + size])))
        start += size
    return parts


class Normalize:
    """Per-channel ``(x - mean) / std``; channels are axis 1 (features for 2-D data).

    Fit it on the training split only (:meth:`fit`) and store :meth:`to_dict` in the run's
    config, so evaluation applies exactly the same numbers.
    """

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean {self.mean.shape} and std {self.std.shape} "
                             f"must have one value per channel each")
        if np.any(self.std <= 0) or not np.all(np.isfinite(self.std)):
            raise ValueError(f"Normalize: std must be positive and finite, got {self.std}")

    @classmethod
    def fit(cls, x, eps=1e-8):
        """Mean and (biased) std per channel of ``x`` (N, C, ...); constant channels get 1."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2:
            raise ValueError(f"Normalize.fit: expected (N, C, ...) data, got shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        std = np.where(std < eps, 1.0, std)
        return cls(mean, std)

    def __call__(self, x):
        if x.ndim < 2 or x.shape[1] != self.mean.size:
            raise ValueError(f"Normalize: expected (N, {self.mean.size}, ...) data, got "
                             f"shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = (x - self.mean.reshape(shape)) / self.std.reshape(shape)
        return out.astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def apply(self, dataset):
        """A new :class:`ArrayDataset` with normalised inputs and the same targets."""
        return ArrayDataset(self(dataset.x), dataset.y)

    def to_dict(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d):
        return cls(d["mean"], d["std"])

    def __repr__(self):
        return (f"Normalize(mean={np.round(self.mean, 4).tolist()}, "
                f"std={np.round(self.std, 4).tolist()})")


# ---------------------------------------------------------------------- built-in data sets
def digits():
    """scikit-learn's 8x8 digits: x (1797, 1, 8, 8) float32 in [0, 1], y (1797,) int64."""
    table = _digits_table()
    x = (table[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return ArrayDataset(x, table[:, 64].astype(np.int64))


def _digits_table():
    """(1797, 65) pixel values 0..16 and the label, as ``load_digits`` reads them.

    Importing ``sklearn.datasets`` costs 1.5-5 s here, a large part of a short training run,
    so the CSV it ships is read directly; ``load_digits`` is the fallback should the file
    ever move.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.exists(path):
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.concatenate([bunch.data, bunch.target[:, None]], axis=1)


def blobs(n=600, num_classes=3, num_features=2, spread=0.6, seed=0):
    """Gaussian clusters around random centres: x (n, num_features) float32, y (n,) int64."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-3.0, 3.0, size=(num_classes, num_features))
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = centres[y] + spread * rng.standard_normal((n, num_features))
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64))


def xor(n=400, noise=0.15, seed=0):
    """Points near the four corners of a square; the label is the XOR of the coordinates' signs."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 2, size=(n, 2))
    x = (2.0 * corners - 1.0) + noise * rng.standard_normal((n, 2))
    y = corners[:, 0] ^ corners[:, 1]
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64))


def gaussian_images(n=1000, num_classes=4, channels=1, size=8, noise=0.25, seed=0):
    """One random binary template per class plus Gaussian noise, clipped to [0, 1].

    x (n, channels, size, size) float32, y (n,) int64: a quick image task any CNN learns.
    """
    rng = np.random.default_rng(seed)
    templates = (rng.random((num_classes, channels, size, size)) > 0.5).astype(np.float64)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = templates[y] + noise * rng.standard_normal((n, channels, size, size))
    return ArrayDataset(np.clip(x, 0.0, 1.0).astype(np.float32), y.astype(np.int64))


# ---------------------------------------------------------------------- files
# IDX: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
# dimension, then the values in C order (big-endian).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# Untrusted files are read with bounded memory: a header is read and checked before the data
# it describes, data streams are read into an array of exactly the size the header implies
# (pages fill only as bytes arrive) and reading stops there, so a small compressed file that
# inflates to gigabytes, or a header that overstates its data, is refused without holding
# more than the legitimate data.  Only regular files are opened: a FIFO would block forever
# and /dev/zero never ends.
_CHUNK = 1 << 20


def _open_regular(path):
    """A binary file object for the regular file ``path`` (symlinks to regular files are
    fine), or :class:`DataError` for a missing file, a folder, a device, a FIFO, a socket."""
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before it can be refused.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DataError(f"{path}: is a folder, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{path}: not a regular file (a device, FIFO or socket); data "
                            f"files must be regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_exact(stream, dtype, shape, path, what):
    """An array of ``shape``/``dtype`` read from ``stream``, which must hold exactly that
    many bytes more; raises DataError for a short or a long stream."""
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    try:
        out = np.empty(count, dtype=dtype)
    except (MemoryError, ValueError):
        raise DataError(f"{path}: {what}: the header announces {shape} values of "
                        f"{dtype.str} ({nbytes} bytes), more than this machine can hold") from None
    view = memoryview(out.view(np.uint8).reshape(-1))
    done = 0
    try:
        while done < nbytes:
            n = stream.readinto(view[done:done + _CHUNK])
            if not n:
                raise DataError(f"{path}: {what} truncated: the header says {shape} values of "
                                f"{dtype.str} ({nbytes} bytes), the data ends after {done} bytes")
            done += n
        if stream.read(1):
            raise DataError(f"{path}: {what} has trailing bytes after the {shape} values of "
                            f"{dtype.str} ({nbytes} bytes) its header announces")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return out.reshape(shape)


def _check_size(size, dtype, shape, path, what):
    """``size`` bytes of data (known from the file system or the archive's directory) must
    be what the header announces; checked before anything is allocated or read."""
    nbytes = math.prod(shape) * dtype.itemsize
    if size != nbytes:
        state = "truncated" if size < nbytes else "has trailing bytes"
        raise DataError(f"{path}: {what} {state}: the header says {shape} values of "
                        f"{dtype.str} ({nbytes} bytes), there are {size} bytes")


def _idx_stream(f, path):
    """The file's IDX byte stream: decompressed on the fly when it is gzip (by its magic)."""
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":  # gzip magic, whatever the file is called
        return gzip.GzipFile(fileobj=f, mode="rb")
    if path.endswith(".gz"):
        raise DataError(f"{path}: named .gz but is not gzip-compressed")
    return f


def read_idx(path, count=None):
    """The array stored in an IDX file (plain or gzip), checked against its header.

    ``count``: the number of items (the first dimension) the caller expects; a header
    announcing another number is refused before any data is read.
    """
    path = os.fspath(path)
    with _open_regular(path) as f:
        stream = _idx_stream(f, path)
        try:
            head = stream.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: not an IDX file: {len(head)} bytes, shorter than the "
                                f"4-byte magic number")
            magic = struct.unpack(">I", head)[0]
            code, ndim = head[2], head[3]
            if head[:2] != b"\0\0" or code not in _IDX_TYPES or ndim == 0:
                raise DataError(f"{path}: bad IDX magic number 0x{magic:08X} (expected "
                                f"0x0000TTDD: type TT in 08 09 0B 0C 0D 0E, DD >= 1 dimensions; "
                                f"MNIST images are 0x00000803, labels 0x00000801)")
            raw = stream.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need "
                                f"{4 + 4 * ndim} bytes, the file has {4 + len(raw)}")
            dims = struct.unpack(f">{ndim}I", raw)
            if count is not None and dims[0] != count:
                raise DataError(f"{path}: {dims[0]} samples but {count} labels (from the "
                                f"headers, before reading any data)")
            dtype = np.dtype(_IDX_TYPES[code])
            if stream is f:   # uncompressed: the file's size must match before any allocation
                _check_size(os.fstat(f.fileno()).st_size - 4 - 4 * ndim, dtype, dims, path,
                            "IDX data")
            array = _read_exact(stream, dtype, dims, path, "IDX data")
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not dtype.isnative:   # big-endian on disk: swap in place rather than copy
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def _as_images(x, source):
    """(N, H, W) or (N, C, H, W) or (N, F) samples as float32; uint8 pixels scaled to [0, 1]."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim not in (2, 4):
        raise DataError(f"{source}: expected samples of shape (N, H, W), (N, C, H, W) or "
                        f"(N, F), got {x.shape}")
    if x.size == 0:
        raise DataError(f"{source}: no data: the samples have shape {x.shape}")
    if x.dtype == np.uint8:  # 8-bit pixels, as in MNIST
        return (x / np.float32(255.0)).astype(np.float32)
    if x.dtype.kind not in "fiu":
        raise DataError(f"{source}: expected numeric samples, got dtype {x.dtype}")
    with np.errstate(over="ignore"):   # too large for float32 shows as inf, refused below
        x = x.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        first = np.unravel_index(np.argmin(finite), x.shape)
        raise DataError(f"{source}: samples must be finite (in float32), found {x[first]} at "
                        f"index {tuple(int(i) for i in first)}")
    return x


def _as_labels(y, n, source):
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: expected integer labels of shape (N,), got {y.dtype} "
                        f"{y.shape}")
    if len(y) != n:
        raise DataError(f"{source}: {n} samples but {len(y)} labels")
    if len(y) == 0:
        raise DataError(f"{source}: no data: no labels (an empty data set)")
    # checked in the labels' own dtype: a uint64 label above 2**63 would wrap negative in
    # int64, and a label of 2**40 would size a confusion matrix of 2**80 cells
    low, high = y.min(), y.max()
    if low < 0:
        raise DataError(f"{source}: labels must be non-negative, found {low}")
    if high >= MAX_CLASSES:
        raise DataError(f"{source}: labels must be below {MAX_CLASSES} (class indices), found "
                        f"{high}")
    return y.astype(np.int64)


def load_idx(images_path, labels_path):
    """An :class:`ArrayDataset` from an IDX images file (N, H, W) and labels file (N,)."""
    # labels first: their count bounds what the images file may announce
    y = read_idx(labels_path)
    if y.ndim != 1:
        raise DataError(f"{labels_path}: expected a labels file with 1 dimension (N,), got "
                        f"{y.ndim} dimensions {y.shape}")
    x = read_idx(images_path, count=len(y))
    if x.ndim not in (3, 4):
        raise DataError(f"{images_path}: expected an images file with 3 dimensions (N, H, W), "
                        f"got {x.ndim} dimensions {x.shape}")
    source = f"{images_path} and {labels_path}"
    return ArrayDataset(_as_images(x, images_path), _as_labels(y, len(x), source))


def _find(folder, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


def load_mnist(path):
    """MNIST-style IDX data: ``(train, test)``, ``test`` None when only one pair is there.

    ``path`` is a folder with ``train-images-idx3-ubyte[.gz]`` and
    ``train-labels-idx1-ubyte[.gz]`` (and optionally the ``t10k-`` pair), or one images file
    whose labels file has the same name with ``images-idx3`` replaced by ``labels-idx1``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        pairs = {}
        for part in ("train", "t10k"):
            images = _find(path, f"{part}-images-idx3-ubyte")
            labels = _find(path, f"{part}-labels-idx1-ubyte")
            if (images is None) != (labels is None):
                missing = f"{part}-{'labels-idx1' if labels is None else 'images-idx3'}-ubyte"
                raise DataError(f"{path}: has {os.path.basename(images or labels)} but not "
                                f"{missing}[.gz]")
            if images is not None:
                pairs[part] = load_idx(images, labels)
        if "train" not in pairs:
            raise DataError(f"{path}: no train-images-idx3-ubyte[.gz] / "
                            f"train-labels-idx1-ubyte[.gz] files in this folder")
        return pairs["train"], pairs.get("t10k")
    base = os.path.basename(path)
    if "images-idx3" not in base:
        raise DataError(f"{path}: expected an IDX images file named like "
                        f"train-images-idx3-ubyte[.gz], or a folder holding one")
    labels = os.path.join(os.path.dirname(path), base.replace("images-idx3", "labels-idx1"))
    if not os.path.exists(labels):
        raise DataError(f"{labels}: file not found (the labels file for {path})")
    return load_idx(path, labels), None


def _npy_header(zf, name, path):
    """``(shape, dtype, fortran_order, stream)`` of member ``name`` of an .npz, the stream
    positioned at the data: only the ``.npy`` header has been read."""
    key = f"{path} [{name[:-4]}]"
    info = zf.getinfo(name)
    stream = zf.open(info)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, OSError, zlib.error) as exc:
        stream.close()
        raise DataError(f"{key}: not a readable .npy array ({exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        stream.close()
        raise DataError(f"{key}: holds Python objects or records (dtype {dtype}); expected a "
                        f"plain numeric array")
    shape = tuple(int(d) for d in shape)
    try:   # the archive's directory gives the member's size: compare it to the header first
        _check_size(info.file_size - stream.tell(), dtype, shape, path,
                    f"array {name[:-4]!r}")
    except DataError:
        stream.close()
        raise
    return shape, dtype, fortran, stream


def _npy_data(header, path, name):
    shape, dtype, fortran, stream = header
    with stream:
        a = _read_exact(stream, dtype, shape[::-1] if fortran else shape, path,
                        f"array {name[:-4]!r}")
    return a.T if fortran else a


def load_npz(path):
    """``(train, test)`` from an ``.npz`` with ``x``, ``y`` and optionally ``x_test``, ``y_test``.

    Nothing is unpickled.  Each array's ``.npy`` header (shape, dtype) is read and checked
    before its data (``x`` and ``y`` must agree on the sample count), and each member is read
    only up to the size its header implies, so a small archive that inflates to gigabytes is
    refused without holding them.
    """
    path = os.fspath(path)
    with _open_regular(path) as f:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
        with zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            if "x" not in members or "y" not in members:
                raise DataError(f"{path}: expected arrays named 'x' and 'y', found "
                                f"{sorted(members) or 'none'}")
            sets = []
            for xk, yk in (("x", "y"), ("x_test", "y_test")):
                if xk not in members and yk not in members:
                    sets.append(None)
                    continue
                if xk not in members or yk not in members:
                    raise DataError(f"{path}: has {xk if xk in members else yk!r} without "
                                    f"{yk if xk in members else xk!r}")
                try:
                    sets.append(_npz_pair(zf, members[xk], members[yk], path))
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
                        NotImplementedError, RuntimeError) as exc:
                    raise DataError(f"{path}: corrupt .npz archive ({type(exc).__name__}: "
                                    f"{exc})") from None
    return sets[0], sets[1]


def _npz_pair(zf, xname, yname, path):
    yh = _npy_header(zf, yname, path)
    y_source = f"{path} [{yname[:-4]}]"
    if len(yh[0]) != 1 or yh[1].kind not in "iu":
        yh[3].close()
        raise DataError(f"{y_source}: expected integer labels of shape (N,), got {yh[1]} "
                        f"{yh[0]}")
    xh = _npy_header(zf, xname, path)
    x_source = f"{path} [{xname[:-4]}]"
    if len(xh[0]) == 0 or xh[0][0] != yh[0][0]:
        xh[3].close()
        yh[3].close()
        raise DataError(f"{x_source}: {xh[0][0] if xh[0] else 0} samples but "
                        f"{yh[0][0]} labels in {y_source}")
    y = _npy_data(yh, path, yname)
    labels = _as_labels(y, len(y), y_source)
    x = _as_images(_npy_data(xh, path, xname), x_source)
    return ArrayDataset(x, labels)


DATASETS = ("digits", "synthetic")


def load_dataset(name, seed=0):
    """``(data, test)`` for ``"digits"``, ``"synthetic"``, or a path to IDX/.npz data.

    ``test`` is the source's own test set (MNIST's t10k files, an .npz's ``x_test``) or None,
    in which case the caller splits one off ``data``.
    """
    if name == "digits":
        return digits(), None
    if name == "synthetic":
        return gaussian_images(seed=seed), None
    path = os.fspath(name)
    if path.endswith(".npz"):
        return load_npz(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder (datasets: {', '.join(DATASETS)}, "
                        f"or a path to an .npz file or MNIST-style IDX files)")
    return load_mnist(path)
