"""Devices: the one place that decides where an array lives and how kernels reach it.

Two devices exist:

* ``"cpu"``  - NumPy arrays; kernels are ``@njit(parallel=True, cache=True)`` loops.
* ``"cuda"`` - CuPy arrays on a real GPU; kernels are ``@cuda.jit`` and are launched on
  CuPy's current stream.  With ``NUMBA_ENABLE_CUDASIM=1`` and no GPU, ``"cuda"`` still
  exists: arrays are :class:`SimCudaArray` (a NumPy subclass that marks "this lives on the
  simulated GPU") and the very same ``@cuda.jit`` kernels run on Numba's simulator.  Code
  above the kernels cannot tell the two apart: it asks :func:`array_module` for ``xp`` and
  :func:`launch` for a kernel launch.

Nothing outside this file asks which device it is on; everything goes through
:func:`device_of`.
"""
from __future__ import annotations

import os
import sys
import types

import numpy as np

# With CuPy arrays Numba would otherwise synchronise every argument's stream on every launch.
# We launch on CuPy's current stream ourselves, so that synchronisation is redundant.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

from numba import cuda  # noqa: E402  (must follow the environment setting above)

CPU = "cpu"
CUDA = "cuda"

# numba.cuda reads the same variable when it is first imported, so the two always agree.
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

_cupy = None
_cupy_error = None
if not SIMULATOR:
    try:
        import cupy as _cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA runtime that fails to load
        _cupy, _cupy_error = None, f"{type(exc).__name__}: {exc}"
else:
    _cupy_error = "not used under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"


class ImplicitTransferError(RuntimeError):
    """A device array was read on the host other than through :func:`to_host`."""


class TransferCounter:
    """Explicit transfers seen inside :func:`strict_transfers`."""

    def __init__(self):
        self.to_host = 0     # device -> host
        self.to_device = 0   # host -> device

    def __repr__(self):
        return f"TransferCounter(to_host={self.to_host}, to_device={self.to_device})"


_strict = None   # the active TransferCounter while strict_transfers() is on


class strict_transfers:
    """Simulator only: make the device stricter than a GPU, and count transfers.

    Inside ``with strict_transfers() as count:`` a simulated device array refuses to be read
    on the host implicitly (``float``, ``int``, ``bool``, ``operator.index``, ``.item()``,
    ``.tolist()``: each is a hidden device-to-host copy and a stall on a real GPU) with
    :class:`ImplicitTransferError`; reductions return 0-d device arrays as CuPy's do instead
    of host scalars; and ``count.to_host`` / ``count.to_device`` count the explicit
    transfers (:func:`to_host`, :func:`to_device`, ``xp.asarray`` of host data).
    ``np.asarray(device_array)`` cannot be intercepted on a NumPy subclass; the array it
    returns is a CPU array, which the launchers' device checks then refuse to mix.
    """

    def __enter__(self):
        global _strict
        if not SIMULATOR:
            raise RuntimeError("strict_transfers() needs the CUDA simulator "
                               "(NUMBA_ENABLE_CUDASIM=1)")
        self._previous, _strict = _strict, TransferCounter()
        return _strict

    def __exit__(self, *exc):
        global _strict
        _strict = self._previous
        return False


def _implicit(what, method):
    def read(self, *args):
        if _strict is not None:
            raise ImplicitTransferError(
                f"{what} of a simulated device array of shape {self.shape} reads it on the "
                "host (an implicit device-to-host transfer that stalls a GPU); keep the value "
                "on the device, or read it explicitly with kernels.to_host()")
        return method(self, *args)
    read.__name__ = method.__name__
    return read


class SimCudaArray(np.ndarray):
    """A NumPy array that stands for device memory under the CUDA simulator.

    NumPy keeps the subclass through ufuncs, slicing and most functions, so ``xp`` code
    written for CuPy runs unchanged and :func:`device_of` still reports ``"cuda"``.
    """

    def __array_finalize__(self, obj):  # nothing to carry; the class itself is the mark
        pass

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # 0-d results of reductions come back as NumPy scalars, which float() reads like
        # CuPy's 0-d arrays; under strict_transfers() they stay 0-d device arrays, as on CuPy.
        if return_scalar and _strict is None:
            return arr[()]
        return np.asarray(arr).view(SimCudaArray)

    __float__ = _implicit("float()", np.ndarray.__float__)
    __int__ = _implicit("int()", np.ndarray.__int__)
    __bool__ = _implicit("bool()", np.ndarray.__bool__)
    __index__ = _implicit("operator.index()", np.ndarray.__index__)
    item = _implicit(".item()", np.ndarray.item)
    tolist = _implicit(".tolist()", np.ndarray.tolist)

    def get(self):
        """CuPy's ``ndarray.get()``: a host (NumPy) copy."""
        return np.array(self, copy=True).view(np.ndarray)


def _sim_wrap(value):
    if type(value) is np.ndarray:
        return value.view(SimCudaArray)
    if isinstance(value, tuple):
        return tuple(_sim_wrap(v) for v in value)
    if isinstance(value, list):
        return [_sim_wrap(v) for v in value]
    return value


class _SimArrayModule(types.ModuleType):
    """``xp`` for the simulated GPU: NumPy whose array results are :class:`SimCudaArray`."""

    def __init__(self):
        super().__init__("simulated_cupy")
        self.ndarray = SimCudaArray
        self.random = _SimSubmodule(np.random)
        self.linalg = _SimSubmodule(np.linalg)

    def __getattr__(self, name):
        return _sim_attr(np, name)

    def asnumpy(self, a):
        return to_host(a)


class _SimSubmodule:
    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return _sim_attr(self._module, name)


# xp functions that copy host data to the device when given host data (CuPy's behaviour).
_UPLOADS = {"asarray", "array", "asanyarray", "ascontiguousarray"}


def _sim_attr(module, name):
    attr = getattr(module, name)
    if callable(attr) and not isinstance(attr, type):
        def wrapped(*args, **kwargs):
            if (_strict is not None and name in _UPLOADS and args
                    and not isinstance(args[0], SimCudaArray)):
                _strict.to_device += 1
            return _sim_wrap(attr(*args, **kwargs))
        wrapped.__name__ = name
        wrapped.__doc__ = attr.__doc__
        return wrapped
    return attr


_SIM_XP = _SimArrayModule() if SIMULATOR else None


def cuda_available() -> bool:
    """True when the ``"cuda"`` device can be used: a GPU with CuPy, or the simulator."""
    if SIMULATOR:
        return True
    if _cupy is None:
        return False
    try:
        return cuda.is_available() and _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def devices() -> list[str]:
    """Names of the devices available in this process, ``"cpu"`` first."""
    return [CPU, CUDA] if cuda_available() else [CPU]


def _device_of_one(a):
    if isinstance(a, SimCudaArray):
        return CUDA
    if isinstance(a, np.ndarray):
        return CPU
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return CUDA
    return None


def device_of(*arrays, names=None) -> str:
    """The device all ``arrays`` live on; ``None`` entries are ignored.

    Raises ``TypeError`` for something that is not an array, and ``ValueError`` naming both
    devices when the arrays live on different ones.  ``names`` (same length) labels the
    arrays in the messages.
    """
    names = names or [f"argument {i}" for i in range(len(arrays))]
    found = None
    found_name = None
    for name, a in zip(names, arrays):
        if a is None:
            continue
        dev = _device_of_one(a)
        if dev is None:
            raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(a).__name__}")
        if found is None:
            found, found_name = dev, name
        elif dev != found:
            raise ValueError(f"arrays on different devices: {found_name} is on {found!r} "
                             f"but {name} is on {dev!r}; move them with to_device() first")
    if found is None:
        raise TypeError("device_of() needs at least one array")
    return found


SIMULATOR_WARNING = ("kernels: the 'cuda' device is Numba's CUDA simulator "
                     "(NUMBA_ENABLE_CUDASIM=1): for testing only, thousands of times slower "
                     "than a GPU or the 'cpu' device")
_simulator_warned = False


def _warn_simulator():
    # Once per process, on the first use of the simulated device, so nobody mistakes its
    # speed for the library's: one line on stderr, not a warning category a filter can hide.
    global _simulator_warned
    if SIMULATOR and not _simulator_warned:
        _simulator_warned = True
        print(SIMULATOR_WARNING, file=sys.stderr, flush=True)


def normalize_device(device):
    """``"cpu"`` or ``"cuda"`` for the names torch users write: ``"cuda:0"`` (one GPU),
    ``"CPU"``, or a ``torch.device``.  Other names are a ``ValueError``."""
    name = str(device).strip().lower() if device is not None else device
    if name == "cuda:0":
        name = CUDA
    if name not in (CPU, CUDA):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:0', got {device!r}")
    return name


def _check_device_name(device):
    device = normalize_device(device)
    if device == CUDA:
        _warn_simulator()
    if device == CUDA and not cuda_available():
        raise ValueError("device: 'cuda' is not available here (no GPU with CuPy, and the "
                         "simulator is off; set NUMBA_ENABLE_CUDASIM=1 to use the simulator). "
                         f"Available: {devices()}")
    return device


def array_module(device):
    """``numpy`` for ``"cpu"``; ``cupy`` (or its simulated stand-in) for ``"cuda"``."""
    device = _check_device_name(device)
    if device == CPU:
        return np
    return _SIM_XP if SIMULATOR else _cupy


def to_device(a, device):
    """A copy of ``a`` on ``device`` (``a`` itself when it is already there)."""
    device = _check_device_name(device)
    if _device_of_one(a) == device:
        return a
    host = to_host(a) if _device_of_one(a) is not None else np.asarray(a)
    if device == CPU:
        return host
    if SIMULATOR:
        if _strict is not None:
            _strict.to_device += 1
        return np.array(host, copy=True).view(SimCudaArray)
    return _cupy.asarray(host)


def to_host(a):
    """A NumPy array with the values of ``a`` (no copy when ``a`` is already on the CPU).

    Reading a device array is a synchronisation point, so checks deferred on the device
    (:func:`defer_check`) are raised here first.
    """
    if _device_of_one(a) == CUDA and _deferred:
        check_errors()
    return _to_host(a)


def _to_host(a):
    if isinstance(a, SimCudaArray):
        if _strict is not None:
            _strict.to_host += 1
        return np.array(a, copy=True).view(np.ndarray)
    if isinstance(a, np.ndarray):
        return a
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


# ---------------------------------------------------------------- checks deferred on the device
# A launcher that would have to read device data to validate it (labels in range, say)
# computes the verdict on the device instead and queues it here; the next explicit read
# (to_host) or check_errors() reads every pending verdict in one transfer.
_deferred = []
# Past this many pending verdicts they are read (one transfer per this many checks), so a
# loop that never reads explicitly cannot grow the queue without bound.
MAX_DEFERRED = 256


def defer_check(bad, message):
    """Queue the 0-d device boolean ``bad``; ``message()`` builds the error text if it is true.

    ``message`` should hold only small device values (0-d reductions), not the checked
    arrays, so a queued check keeps no batch alive.
    """
    _deferred.append((bad, message))
    if len(_deferred) >= MAX_DEFERRED:
        check_errors()


def check_errors():
    """Raise the first pending deferred check that failed (``ValueError``); clear them all."""
    if not _deferred:
        return
    pending = list(_deferred)
    _deferred.clear()
    xp = array_module(CUDA)
    flags = _to_host(xp.stack([xp.asarray(bad).reshape(()) for bad, _ in pending]))
    for failed, (_, message) in zip(flags, pending):
        if failed:
            raise ValueError(message())


def synchronize(device=CUDA):
    """Wait for queued GPU work (a no-op on the CPU, the simulator, and without a GPU).

    Without a usable GPU nothing can have been queued, so there is nothing to wait for;
    asking CuPy anyway would raise its raw ``CUDARuntimeError`` (no driver / no device).
    """
    if device == CUDA and not SIMULATOR and cuda_available():
        _cupy.cuda.get_current_stream().synchronize()


def gpu_count() -> int:
    """Number of GPUs this process can use (0 without CuPy or a driver; 1 on the simulator)."""
    if SIMULATOR:
        return 1
    if not cuda_available():
        return 0
    return int(_cupy.cuda.runtime.getDeviceCount())


def select_gpu(index: int) -> None:
    """Make GPU ``index`` current for both CuPy (arrays, cuBLAS) and Numba (kernel launches).

    The two keep separate notions of the current device; selecting only CuPy's would launch
    Numba's kernels on GPU 0 with pointers into another GPU's memory.
    """
    count = gpu_count()
    if not 0 <= index < count:
        raise ValueError(f"index: expected a GPU index in [0, {count}), got {index}")
    if SIMULATOR:
        return
    _cupy.cuda.Device(index).use()
    cuda.select_device(index)


def _kernel_args(args):
    # The simulator wants plain ndarrays; a real GPU takes CuPy arrays as they are.
    if SIMULATOR:
        return tuple(a.view(np.ndarray) if isinstance(a, SimCudaArray) else a for a in args)
    return args


# Kernels split their thread index with 32-bit unsigned divisions (a 64-bit division is a
# long software routine on NVIDIA GPUs), which is exact below this many threads.
MAX_LAUNCH_THREADS = 2 ** 32 - 1


def launch(kernel, n_threads, *args, block=256):
    """Launch a 1-D ``@cuda.jit`` kernel with at least ``n_threads`` threads.

    On a GPU it runs on CuPy's current stream, so it orders correctly with CuPy's own work.
    """
    if n_threads <= 0:
        return
    if n_threads > MAX_LAUNCH_THREADS:
        raise ValueError(f"launch: {n_threads} threads for {getattr(kernel, '__name__', kernel)}"
                         f", more than the {MAX_LAUNCH_THREADS} the kernels' 32-bit index math "
                         "allows; split the batch")
    if SIMULATOR:
        _warn_simulator()
        # The simulator runs every thread of every block as a Python thread, even past the
        # bounds check: a block no larger than needed saves most of a tiny launch's time.
        block = min(block, (n_threads + 31) // 32 * 32)
    grid = (n_threads + block - 1) // block
    if SIMULATOR:
        kernel[grid, block](*_kernel_args(args))
    else:
        stream = cuda.external_stream(_cupy.cuda.get_current_stream().ptr)
        kernel[grid, block, stream](*args)


def launch_2d(kernel, shape, *args, block=(16, 16)):
    """Launch a 2-D ``@cuda.jit`` kernel covering ``shape = (rows, cols)`` threads."""
    rows, cols = shape
    if rows <= 0 or cols <= 0:
        return
    if SIMULATOR:
        _warn_simulator()
        block = (min(block[0], rows), min(block[1], cols))
    grid = ((rows + block[0] - 1) // block[0], (cols + block[1] - 1) // block[1])
    if SIMULATOR:
        kernel[grid, block](*_kernel_args(args))
    else:
        stream = cuda.external_stream(_cupy.cuda.get_current_stream().ptr)
        kernel[grid, block, stream](*args)


def cupy_status() -> str:
    """CuPy's version, or why it is not in use."""
    if _cupy is not None:
        return _cupy.__version__
    return f"not available ({_cupy_error})"


def gpu_name() -> str:
    """The GPU's name, ``"simulator"``, or ``"none"``."""
    if SIMULATOR:
        return "simulator"
    if not cuda_available():
        return "none"
    try:
        props = _cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:  # pragma: no cover - only on a broken GPU setup
        return f"unknown ({exc})"


# Below this many elements a CPU kernel runs on one thread: waking the others costs more
# (microseconds on an idle machine, milliseconds on a busy one) than splitting saves.
PARALLEL_MIN_ELEMENTS = 1 << 15


def dispatch(device, cpu_kernel, cuda_kernel, n_threads, *args, work=None):
    """Run ``cpu_kernel(*args)`` on the CPU, or launch ``cuda_kernel`` with ``n_threads``.

    Kernel launchers call this once the arguments are validated and the outputs allocated;
    it is the only ``if device`` a kernel file needs.  ``work`` (default ``n_threads``) is the
    number of elements the call touches: below :data:`PARALLEL_MIN_ELEMENTS` the CPU kernel
    runs on one Numba thread.
    """
    if device == CPU:
        if (n_threads if work is None else work) < PARALLEL_MIN_ELEMENTS:
            from .threads import numba_threads
            with numba_threads(1):
                cpu_kernel(*args)
        else:
            cpu_kernel(*args)
    else:
        launch(cuda_kernel, n_threads, *args)
