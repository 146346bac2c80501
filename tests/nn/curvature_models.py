"""Small objectives with hand-derived gradients for the curvature and landscape tests.

Each builder returns an :class:`nn.curvature.Objective` plus what the test needs to check it
(a known Hessian, or the pieces to compute one independently).
"""
import numpy as np

from nn.curvature import Objective


def quadratic(eigenvalues, seed=0):
    """``f(w) = 1/2 w^T A w + b^T w``, ``A = Q diag(eigenvalues) Q^T`` for a random rotation Q."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = Q @ np.diag(eigenvalues) @ Q.T
    A = (A + A.T) / 2
    b = rng.standard_normal(n)
    w0 = rng.standard_normal(n)

    def fn(w):
        return 0.5 * w @ A @ w + b @ w, A @ w + b

    return Objective(fn, w0), A


def logistic_regression(n_samples=60, n_features=6, l2=1e-2, seed=0):
    """Mean binary cross-entropy of ``sigmoid(X w)`` plus ``l2/2 |w|^2``; exact Hessian returned."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    t = (X @ rng.standard_normal(n_features) + 0.5 * rng.standard_normal(n_samples) > 0) * 1.0
    w0 = 0.3 * rng.standard_normal(n_features)

    def probs(w):
        return 1 / (1 + np.exp(-(X @ w)))

    def loss(w):
        z = X @ w
        # log(1 + e^z) - t z, written to stay finite for large |z|
        return np.mean(np.logaddexp(0, z) - t * z) + 0.5 * l2 * w @ w

    def fn(w):
        return loss(w), X.T @ (probs(w) - t) / n_samples + l2 * w

    def exact_hessian(w):
        p = probs(w)
        return (X.T * (p * (1 - p))) @ X / n_samples + l2 * np.eye(n_features)

    return Objective(fn, w0, loss_fn=loss), exact_hessian


def tiny_mlp(n_samples=20, d=3, hidden=5, out=2, seed=0):
    """``y = W2 tanh(W1 x + b1) + b2`` with loss ``mean_n |y - t|^2 / 2``, float64, by hand."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, d))
    T = rng.standard_normal((n_samples, out))
    shapes = [(hidden, d), (hidden,), (out, hidden), (out,)]
    w0 = np.concatenate([rng.standard_normal(int(np.prod(s))) * 0.7 for s in shapes])

    def unpack(w):
        out_, start = [], 0
        for s in shapes:
            n = int(np.prod(s))
            out_.append(w[start:start + n].reshape(s))
            start += n
        return out_

    def loss(w):
        W1, b1, W2, b2 = unpack(w)
        y = np.tanh(X @ W1.T + b1) @ W2.T + b2
        return 0.5 * np.sum((y - T) ** 2) / n_samples

    def fn(w):
        W1, b1, W2, b2 = unpack(w)
        a = np.tanh(X @ W1.T + b1)
        y = a @ W2.T + b2
        gy = (y - T) / n_samples
        gz = (gy @ W2) * (1 - a ** 2)
        grad = [gz.T @ X, gz.sum(0), gy.T @ a, gy.sum(0)]
        return 0.5 * np.sum((y - T) ** 2) / n_samples, np.concatenate([g.ravel() for g in grad])

    return Objective(fn, w0, loss_fn=loss, shapes=shapes), loss


def hessian_from_losses(loss, w, h=1e-4):
    """The Hessian from second differences of the loss alone (independent of any gradient code)."""
    n = w.size
    H = np.empty((n, n))
    E = np.eye(n) * h
    for i in range(n):
        for j in range(i, n):
            H[i, j] = H[j, i] = (loss(w + E[i] + E[j]) - loss(w + E[i] - E[j])
                                 - loss(w - E[i] + E[j]) + loss(w - E[i] - E[j])) / (4 * h * h)
    return H
