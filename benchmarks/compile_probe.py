"""Run in a fresh process by ``bench_compile.py``: first-call times, printed as JSON.

    python benchmarks/compile_probe.py kernels   # first call of each kernel (compile or cache load)
    python benchmarks/compile_probe.py lenet     # from `import nn` to the end of one LeNet-5 step

Whether the Numba cache is cold or warm is up to the caller (``NUMBA_CACHE_DIR``).
"""
import json
import sys
import time


def first_calls():
    import numpy as np

    import kernels as K

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 12, 12)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    logits = rng.standard_normal((8, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    y = K.conv2d_forward(x, w, padding=1)
    pooled, idx = K.max_pool2d_forward(x, 2, return_indices=True)
    p, g = np.zeros(100, np.float32), np.ones(100, np.float32)
    buf, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    calls = {
        "relu_forward": lambda: K.relu_forward(x),
        "relu_backward": lambda: K.relu_backward(x, x),
        "tanh_forward": lambda: K.tanh_forward(x),
        "sigmoid_forward": lambda: K.sigmoid_forward(x),
        "gelu_forward": lambda: K.gelu_forward(x),
        "softmax_forward": lambda: K.softmax_forward(logits),
        "cross_entropy_forward": lambda: K.cross_entropy_forward(logits, labels),
        "conv2d_forward": lambda: K.conv2d_forward(x, w, padding=1),
        "conv2d_backward": lambda: K.conv2d_backward(y, x, w, padding=1),
        "max_pool2d_forward": lambda: K.max_pool2d_forward(x, 2, return_indices=True),
        "max_pool2d_backward": lambda: K.max_pool2d_backward(pooled, idx, x.shape, 2),
        "avg_pool2d_forward": lambda: K.avg_pool2d_forward(x, 2),
        "sgd_step": lambda: K.sgd_step(p, g, buf, 0.1, 0.9, 0.0, 0.0, False, True),
        "adam_step": lambda: K.adam_step(p, g, m, v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                         False, False),
    }
    out = {}
    for name, fn in calls.items():
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t
    return out


def lenet_first_step():
    t0 = time.perf_counter()
    import numpy as np

    import nn

    rng = np.random.default_rng(0)
    model = nn.models.LeNet5()
    loss_fn = nn.CrossEntropyLoss()
    opt = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
    opt.step()
    opt.zero_grad()
    return {"import nn to end of first LeNet-5 step": time.perf_counter() - t0}


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "kernels"
    result = first_calls() if what == "kernels" else lenet_first_step()
    print(json.dumps(result))
