"""Input validation shared by the layers: clear errors before any kernel runs."""
from __future__ import annotations

import numpy as np

import kernels


def new_parameter_array(shape, dtype):
    """A zero host array for a parameter; ``dtype`` None means float32 (torch's default)."""
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
    return np.zeros(shape, dtype=dtype)


def place(module, device):
    """Move a freshly initialised module to ``device`` (None: stay on the CPU).

    Initialisers draw on the host, so layers are built there and moved once at the end.
    """
    if device is not None and device != kernels.CPU:
        module.to(device)
    return module


def check_input(module, x, ndims=None, channels=None, channel_axis=1, what="x"):
    """``x`` must be a float array whose dtype and device match the module's parameters.

    ``ndims``: allowed numbers of dimensions; ``channels``: required size of ``channel_axis``.
    Returns the device.
    """
    name = type(module).__name__
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name}: {what} must be an array, got {type(x).__name__}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{name}: {what} must be float32 or float64, got dtype {x.dtype}")
    if ndims is not None and x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: {what} must be {want}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{name}: {what} must have {channels} channels on axis "
                         f"{channel_axis}, got shape {tuple(x.shape)}")
    device = kernels.device_of(x, names=[what])
    for pname, p in module._parameters.items():
        if p.dtype != x.dtype:
            raise TypeError(f"{name}: {what} has dtype {x.dtype} but {pname} has dtype "
                            f"{p.dtype}; cast the input (x.astype) or the module "
                            f"(.float() / .double())")
        pdev = p.device
        if pdev != device:
            raise ValueError(f"{name}: {what} is on {device!r} but {pname} is on {pdev!r}; "
                             f"move one with to_device() / module.to()")
        break
    return device
