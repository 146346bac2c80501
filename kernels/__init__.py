"""Numba kernels for deep learning: one file per op family, CPU loop beside CUDA kernel.

Public functions are ``<op>_forward`` / ``<op>_backward``; the device is read from the
arrays (NumPy -> CPU, CuPy or the simulator's arrays -> CUDA) by :mod:`kernels.device`.
"""
from .device import (CPU, CUDA, SIMULATOR, ImplicitTransferError, SimCudaArray,  # noqa: F401
                     array_module, check_errors, cuda_available, defer_check, device_of, devices,
                     strict_transfers, synchronize, to_device, to_host)
from .report import doctor, report  # noqa: F401
from .activation import *  # noqa: F401,F403
from .softmax import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .pool import *  # noqa: F401,F403
from .upsample import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .dropout import *  # noqa: F401,F403
from .warmup import warmup  # noqa: F401
