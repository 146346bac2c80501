"""Thread pools: Numba's threads call BLAS, so BLAS must not start threads of its own.

The CPU convolution runs one ``prange`` region in which every Numba thread calls ``np.dot``
(Numba sends it to SciPy's BLAS).  If that BLAS is allowed several threads, each call
starts or wakes its own pool, and on a small machine the two pools oversubscribe the cores:
measured here on VGG-size layers, single-threaded BLAS inside the region ran 1.7-2.3x
faster.  So kernels that call BLAS from parallel code run inside
:func:`single_threaded_blas`, which sets every loaded BLAS library (NumPy's and SciPy's
OpenBLAS are separate libraries in the wheels) to one thread and restores the old counts.

Parallel loops over work items hand them out one at a time (:func:`dynamic_schedule`) rather
than in one static block per thread: on a machine shared with other work a thread that is
descheduled no longer holds the whole call back, its items go to the others.  Kernels index
their per-thread workspaces with ``numba.get_thread_id()``, so results do not depend on
which thread ran an item.

Tiny problems run on one Numba thread (:func:`numba_threads`): a parallel region must wake
every thread of the team, which costs microseconds on an idle machine and milliseconds on a
busy one (measured: a 2x4x5x5 convolution took 2-7 ms with two threads on a loaded machine,
0.1 ms with one).

It talks to the libraries directly through threadpoolctl's per-library controllers, built
once: about 2 us per call, against 25-40 us for ``ThreadpoolController.limit`` and 0.6 ms
for ``threadpool_limits``.  Without threadpoolctl it does nothing.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numba

__all__ = ["single_threaded_blas", "blas_libraries", "numba_threads", "dynamic_schedule"]

_lock = threading.Lock()
_libs = None  # list of threadpoolctl library controllers, built on first use
_depth = 0     # nesting count: only the outermost region sets and restores
_saved = []


def _blas_controllers():
    global _libs
    if _libs is None:
        try:
            # load the BLAS that Numba's np.dot calls, so threadpoolctl can see it
            import scipy.linalg.cython_blas  # noqa: F401
            from threadpoolctl import ThreadpoolController
            _libs = [lib for lib in ThreadpoolController().lib_controllers
                     if lib.user_api == "blas"]
        except Exception:  # no threadpoolctl or SciPy: nothing to limit
            _libs = []
    return _libs


def _raw_setter(lib):
    """OpenBLAS's own ``openblas_set_num_threads`` for a pthreads OpenBLAS, else None.

    threadpoolctl lets only the first thread that set an OpenBLAS limit set it again (the
    pool is process-wide, so it guards against threads fighting); from any other Python
    thread ``set_num_threads`` silently does nothing.  A convolution called from a worker
    thread then ran BLAS multi-threaded, whose float32 GEMM rounds differently from the
    single-threaded one (27k of 102k outputs differed, by up to 1.4e-5).  This module
    serialises its changes under its own lock, so it may set the limit from any thread.
    """
    if getattr(lib, "internal_api", None) != "openblas" or lib.threading_layer == "openmp":
        return None
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            func = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if func is not None:
                return func
    return None


def _set_threads(lib, n):
    func = _raw_setter(lib)
    if func is None:
        lib.set_num_threads(n)
    else:
        func(n)


def blas_libraries():
    """``[(filepath, num_threads)]`` of the BLAS libraries the limit applies to."""
    return [(lib.filepath, lib.num_threads) for lib in _blas_controllers()]


@contextmanager
def single_threaded_blas():
    """Run the body with every BLAS library limited to one thread (nesting-safe)."""
    global _depth, _saved
    libs = _blas_controllers()
    with _lock:
        if _depth == 0:
            _saved = [lib.num_threads for lib in libs]
            for lib in libs:
                _set_threads(lib, 1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, n in zip(libs, _saved):
                    _set_threads(lib, n)


@contextmanager
def numba_threads(n):
    """Run the body's parallel regions on ``n`` Numba threads (at most the current count)."""
    old = numba.get_num_threads()
    n = max(1, min(n, old))
    if n == old:
        yield old
        return
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(old)


@contextmanager
def dynamic_schedule(chunksize=1):
    """Parallel loops in the body hand out ``chunksize`` iterations at a time."""
    old = numba.set_parallel_chunksize(chunksize)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(old)
