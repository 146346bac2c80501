"""Every ``(kernel, argument types)`` the CUDA launchers pass, recorded without a GPU.

Run as a script under the simulator (``NUMBA_ENABLE_CUDASIM=1``): it replaces
``kernels.device.launch`` (and every module's imported copy) by a recorder that notes the
kernel and the Numba types of its arguments instead of running it, then drives every public
kernel function in float32 and float64 and a training step of LeNet-5, SmallVGG and UNet
(with BatchNorm and Dropout) on the ``"cuda"`` device.  The recording is written with pickle
to the path given as the first argument (test data in a temporary folder, not a checkpoint).

Recording instead of running keeps this to seconds: outputs hold whatever ``empty`` gave, so
nothing here may depend on the values the kernels would have computed.
"""
import pickle
import sys

import numba
import numpy as np


def _argtype(a):
    t = numba.typeof(a)
    # np.broadcast_to views are read-only on the host; CuPy has no read-only arrays.
    if isinstance(t, numba.types.Array) and not t.mutable:
        t = t.copy(readonly=False)
    return t


def _install_recorder(seen):
    import importlib
    import pkgutil

    import kernels
    from kernels import device as D

    names = [info.name for info in pkgutil.iter_modules(kernels.__path__)
             if info.name != "__main__"]   # importing __main__ would print the report
    by_id = {}
    for name_ in names:
        mod = importlib.import_module(f"kernels.{name_}")
        for name, obj in vars(mod).items():
            if type(obj).__name__ == "FakeCUDAKernel":
                by_id[id(obj)] = (mod.__name__, name)

    def record(kernel, n_threads, *args, block=256):
        if n_threads <= 0:
            return
        key = by_id[id(kernel)]
        sig = tuple(_argtype(a) for a in D._kernel_args(args))
        seen.setdefault((key, sig), 0)
        seen[(key, sig)] += 1

    original = D.launch
    for name_ in names:
        mod = importlib.import_module(f"kernels.{name_}")
        if getattr(mod, "launch", None) is original:
            mod.launch = record


def _drive_kernels(dtype):
    import kernels as K

    def dev(a):
        return K.to_device(np.ascontiguousarray(a), "cuda")

    rng = np.random.default_rng(0)
    x = dev(rng.standard_normal((2, 4, 6, 6)).astype(dtype))
    for name in K.activation.__all__:
        if name.startswith("prelu"):
            continue  # takes a weight: below
        if name.endswith("_forward"):
            getattr(K, name)(x)
        else:
            getattr(K, name)(x, x)
    K.gelu_forward(x, approximate="tanh")
    K.gelu_backward(x, x, approximate="tanh")
    for slopes in (1, 4):   # one shared slope; one per channel
        wp = dev(rng.standard_normal(slopes).astype(dtype))
        K.prelu_forward(x, wp)
        K.prelu_backward(x, x, wp)
    labels = dev(np.array([0, 4, 2]))
    for width in (5, 70):   # one thread per row; a block per row
        logits = dev(rng.standard_normal((3, width)).astype(dtype))
        for fwd, bwd in (("softmax_forward", "softmax_backward"),
                         ("log_softmax_forward", "log_softmax_backward")):
            y = getattr(K, fwd)(logits)
            getattr(K, bwd)(logits, y)
        for reduction in ("mean", "sum"):
            for smoothing in (0.0, 0.1):
                K.cross_entropy_forward(logits, labels, reduction=reduction,
                                        label_smoothing=smoothing)
            K.mse_forward(logits, logits, reduction=reduction)
            K.mse_backward(logits, logits, reduction=reduction)
            K.bce_with_logits_forward(logits, logits, reduction=reduction)
            K.bce_with_logits_backward(logits, logits, reduction=reduction)
    y, idx = K.max_pool2d_forward(x, 2, return_indices=True)
    K.max_pool2d_forward(x, 3, stride=2, padding=1)
    K.max_pool2d_backward(y, idx, x.shape, 2)
    for include in (True, False):
        y = K.avg_pool2d_forward(x, 3, stride=2, padding=1, count_include_pad=include)
        K.avg_pool2d_backward(y, x.shape, 3, stride=2, padding=1, count_include_pad=include)
    K.global_avg_pool2d_backward(K.global_avg_pool2d_forward(x), x.shape)
    K.upsample_nearest2d_backward(K.upsample_nearest2d_forward(x, 2), 2)
    w = dev(rng.standard_normal((6, 2, 3, 3)).astype(dtype))
    b = dev(np.zeros(6, dtype))
    for kw in ({}, {"stride": 2, "padding": 1}, {"dilation": 2, "groups": 2}):
        g = kw.get("groups", 1)
        wg = w if g == 2 else dev(rng.standard_normal((6, 4, 3, 3)).astype(dtype))
        y = K.conv2d_forward(x, wg, b, **kw)
        K.conv2d_forward(x, wg, None, **kw)
        K.conv2d_backward(y, x, wg, **kw)
        K.conv2d_backward(y, x, wg, need_input=False, **kw)
        K.conv2d_backward_bias(y)
    wt = dev(rng.standard_normal((4, 3, 2, 2)).astype(dtype))
    yt = K.conv_transpose2d_forward(x, wt, dev(np.zeros(3, dtype)), stride=2)
    K.conv_transpose2d_backward(yt, x, wt, stride=2)
    p = dev(rng.standard_normal(10).astype(dtype))
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        K.sgd_step(p, p, dev(np.zeros(10, dtype)), 0.1, momentum, 0.0, 1e-4, nesterov)
    for amsgrad in (False, True):
        K.adam_step(p, p, dev(np.zeros(10, dtype)), dev(np.zeros(10, dtype)),
                    dev(np.zeros(10, dtype)) if amsgrad else None, 1, 1e-3)

    def zeros():
        return dev(np.zeros(10, dtype))
    for momentum, centered in ((0.0, False), (0.9, False), (0.0, True), (0.9, True)):
        K.rmsprop_step(p, p, zeros(), zeros() if centered else None,
                       zeros() if momentum else None, 1e-3, momentum=momentum,
                       centered=centered)
    K.adagrad_step(p, p, zeros(), 1, 1e-2)


def _drive_models():
    import nn
    from nn.models import LeNet5, SmallVGG, UNet

    rng = np.random.default_rng(0)
    cases = [
        (LeNet5(1, 10, input_size=8), (2, 1, 8, 8), nn.CrossEntropyLoss(), "labels"),
        (SmallVGG(3, 10, input_size=8, widths=(4, 8), batch_norm=True, dropout=0.5), (2, 3, 8, 8),
         nn.CrossEntropyLoss(), "labels"),
        (UNet(1, 1, base=4, depth=1, batch_norm=True), (2, 1, 8, 8), nn.BCEWithLogitsLoss(),
         "mask"),
    ]
    for model, shape, loss_fn, kind in cases:
        model.to("cuda").train()
        opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = _to_cuda(rng.standard_normal(shape))
        if kind == "labels":
            t = _to_cuda(np.array([1, 3]), dtype=np.int64)
        else:
            t = _to_cuda((rng.random((shape[0], 1) + shape[2:]) > 0.5))
        opt.zero_grad()
        out = model(x)
        loss_fn(out, t)
        model.backward(loss_fn.backward())
        opt.step()


def _to_cuda(a, dtype=np.float32):
    import kernels as K
    return K.to_device(np.asarray(a, dtype=dtype), "cuda")


def record():
    """``{((module, kernel name), argument types): launches}``; needs the simulator."""
    import kernels
    if not kernels.SIMULATOR:
        raise RuntimeError("run under NUMBA_ENABLE_CUDASIM=1")
    seen = {}
    _install_recorder(seen)
    np.seterr(all="ignore")   # outputs are uninitialised: overflow warnings mean nothing here
    for dtype in (np.float32, np.float64):
        _drive_kernels(dtype)
    _drive_models()
    return seen


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as f:
        pickle.dump(record(), f)
