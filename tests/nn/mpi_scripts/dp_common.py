"""A tiny model with a hand-written backward, its data and its training loop, shared by
tests/nn/test_distributed.py (in-process fake communicator) and the scripts it launches
under mpiexec.  Plain array code only, so it runs anywhere in milliseconds."""
import numpy as np

import kernels
import nn


class TinyMLP(nn.Module):
    """x (N, 4) -> tanh(x W1^T + b1) W2^T + b2 -> (N, 3); tracks a running input mean."""

    def __init__(self, seed=0, dtype=np.float64, device="cpu", momentum=0.1):
        super().__init__()
        rng = np.random.default_rng(seed)
        xp = kernels.array_module(device)

        def param(*shape):
            return nn.Parameter(kernels.to_device(rng.standard_normal(shape).astype(dtype) * 0.5,
                                                  device))

        self.w1, self.b1 = param(5, 4), param(5)
        self.w2, self.b2 = param(3, 5), param(3)
        self.register_buffer("running_mean", xp.zeros(4, dtype=dtype))
        self.momentum = momentum

    def forward(self, x):
        xp = kernels.array_module(kernels.device_of(x))
        if self.training:
            # replaced, not updated in place: DataParallel must cope with new buffer arrays
            self._set_buffer("running_mean", (1 - self.momentum) * self.running_mean
                             + self.momentum * x.mean(axis=0))
        h = xp.tanh(x @ self.w1.data.T + self.b1.data)
        self.save_for_backward(x, h)
        return h @ self.w2.data.T + self.b2.data

    def backward(self, grad_y):
        x, h = self.saved_tensors()
        self.w2.accumulate(grad_y.T @ h)
        self.b2.accumulate(grad_y.sum(axis=0))
        grad_h = (grad_y @ self.w2.data) * (1 - h * h)
        self.w1.accumulate(grad_h.T @ x)
        self.b1.accumulate(grad_h.sum(axis=0))
        return grad_h @ self.w1.data


def mse_grad(y, t):
    """Gradient of the mean over the batch of 0.5 * ||y - t||^2."""
    return (y - t) / y.shape[0]


def make_data(n=48, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(dtype)
    t = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2], x[:, 3]], axis=1).astype(dtype)
    return x, t


def global_batches(n, batch, steps, seed=2):
    """The same list of global index batches everywhere (a fixed shuffle per epoch)."""
    out = []
    epoch = 0
    while len(out) < steps:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        out += [order[i:i + batch] for i in range(0, n - batch + 1, batch)]
        epoch += 1
    return out[:steps]


def local_part(idx, rank, size):
    """Rank ``rank``'s contiguous share of a global batch (sizes differ by at most one)."""
    return np.array_split(idx, size)[rank]


def sgd_step(model, lr):
    for p in model.parameters():
        if p.grad is not None:
            p.data -= lr * p.grad
    model.zero_grad()


def train(model, x, t, batches, lr=0.1, part=None, device="cpu"):
    """Plain SGD over ``batches``; ``part(idx)`` picks this rank's share (None: the whole)."""
    for idx in batches:
        if part is not None:
            idx = part(idx)
        xb = kernels.to_device(x[idx], device)
        tb = kernels.to_device(t[idx], device)
        y = model(xb)
        model.backward(mse_grad(y, tb))
        sgd_step(model, lr)
    return model


def flat_params(model):
    return np.concatenate([kernels.to_host(p.data).ravel() for p in model.parameters()])
