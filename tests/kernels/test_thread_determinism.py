"""Every CPU kernel gives bitwise the same results when called from another Python thread.

The promise in kernels/conv_cpu.py (results independent of the thread count and run) did not
hold from a second thread: threadpoolctl lets only the first thread that limited OpenBLAS
change its (process-wide) thread count, so from any other thread ``single_threaded_blas``
silently did nothing and the GEMM convolution ran OpenBLAS multi-threaded, whose float32
GEMM rounds differently (27k of 102k outputs differed by up to 1.4e-5).  The comparison is
bitwise: every kernel's arithmetic is fixed by the shapes alone.
"""
import threading

import numpy as np
import pytest

import kernels as K
from kernels import threads


def _cases():
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w = f32(8, 16, 20, 20), f32(32, 16, 3, 3)
    gy = f32(8, 32, 20, 20)
    xs, ws = f32(4, 6, 9, 9), f32(6, 1, 3, 3)       # depthwise: the direct loops
    gys = f32(4, 6, 9, 9)
    xt, wt = f32(4, 8, 7, 7), f32(8, 12, 3, 3)
    gyt = f32(4, 12, 15, 15)
    xp_ = f32(4, 8, 16, 16)
    gp, ga, gg, gu = f32(4, 8, 8, 8), f32(4, 8, 8, 8), f32(4, 8, 1, 1), f32(4, 8, 32, 32)
    logits, labels = f32(64, 10), rng.integers(0, 10, 64)
    a = f32(64, 100)
    p, g = f32(5000), f32(5000)

    def conv(algo):
        return lambda: (K.conv2d_forward(x, w, None, padding=1, algo=algo),
                        *K.conv2d_backward(gy, x, w, padding=1, algo=algo))

    def depthwise():
        return (K.conv2d_forward(xs, ws, None, padding=1, groups=6),
                *K.conv2d_backward(gys, xs, ws, padding=1, groups=6))

    def transpose(algo):
        return lambda: (K.conv_transpose2d_forward(xt, wt, None, stride=2, padding=0,
                                                   algo=algo),
                        *K.conv_transpose2d_backward(gyt, xt, wt, stride=2, algo=algo))

    def pools():
        y, idx = K.max_pool2d_forward(xp_, 2, return_indices=True)
        return (y, idx, K.max_pool2d_backward(gp, idx, xp_.shape, 2),
                K.avg_pool2d_forward(xp_, 3, 2, 1),
                K.avg_pool2d_backward(ga, xp_.shape, 3, 2, 1),
                K.global_avg_pool2d_forward(xp_), K.global_avg_pool2d_backward(gg, xp_.shape),
                K.upsample_nearest2d_forward(xp_, 2), K.upsample_nearest2d_backward(gu, 2))

    def elementwise():
        out = []
        for op in ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu",
                   "step", "identity"):
            y = getattr(K, f"{op}_forward")(a)
            out += [y, getattr(K, f"{op}_backward")(a, a)]
        y = K.softmax_forward(a)
        out += [y, K.softmax_backward(a, y)]
        y = K.log_softmax_forward(a)
        out += [y, K.log_softmax_backward(a, y)]
        return out

    def losses():
        loss, grad = K.cross_entropy_forward(logits, labels, label_smoothing=0.1)
        t = (a > 0).astype(np.float32)
        return (np.asarray(loss), grad, np.asarray(K.mse_forward(a, t)), K.mse_backward(a, t),
                np.asarray(K.bce_with_logits_forward(a, t)), K.bce_with_logits_backward(a, t))

    def optim():
        p1, b1 = p.copy(), np.zeros_like(p)
        K.sgd_step(p1, g, b1, 0.1, momentum=0.9, weight_decay=1e-4)
        p2, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        K.adam_step(p2, g, m, v, None, 1, 1e-3, weight_decay=1e-2, decoupled=True)
        return p1, b1, p2, m, v

    return {"conv2d-gemm": conv("gemm"), "conv2d-direct": conv("direct"),
            "conv2d-depthwise": depthwise, "conv_transpose2d-gemm": transpose("gemm"),
            "conv_transpose2d-direct": transpose("direct"), "pool-upsample": pools,
            "activations-softmax": elementwise, "losses": losses, "optim": optim}


CASES = _cases()


def _in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.parametrize("name", list(CASES))
def test_worker_thread_gives_bitwise_identical_results(name):
    fn = CASES[name]
    first = fn()   # the main thread goes first, as in the failing report
    for results in (_in_thread(fn), fn(), _in_thread(fn)):
        assert len(results) == len(first)
        for i, (a, b) in enumerate(zip(first, results)):
            if a is None:
                assert b is None
                continue
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                          err_msg=f"{name}: output {i}")


def test_blas_limit_applies_in_every_thread():
    if not threads.blas_libraries():
        pytest.skip("no BLAS library visible to threadpoolctl")
    with threads.single_threaded_blas():   # the main thread becomes threadpoolctl's owner
        pass

    def limited():
        with threads.single_threaded_blas():
            return [n for _, n in threads.blas_libraries()]
    assert all(n == 1 for n in _in_thread(limited))
