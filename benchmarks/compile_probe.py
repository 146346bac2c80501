"""Run in a fresh process by ``bench_compile.py``: first-call times, printed as JSON.

    python benchmarks/compile_probe.py kernels   # kernels.warmup(): each kernel's first call
    python benchmarks/compile_probe.py lenet     # from `import nn` to the end of one LeNet-5 step

Whether the Numba cache is cold or warm is up to the caller (``NUMBA_CACHE_DIR``).
"""
import json
import sys
import time


def first_calls():
    import kernels

    return kernels.warmup()


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
