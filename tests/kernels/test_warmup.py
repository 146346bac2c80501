import kernels


def test_warmup_calls_every_common_kernel():
    times = kernels.warmup()
    assert {"relu", "conv2d_forward", "conv2d_backward", "max_pool2d", "cross_entropy",
            "sgd_step", "adam_step"} <= set(times)
    assert all(t >= 0 for t in times.values())
