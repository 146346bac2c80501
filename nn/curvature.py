"""Curvature of a loss without autograd: Hessian-vector products from hand-derived gradients.

Every tool works on a flat parameter vector ``w`` (float64, on the host) through an
:class:`Objective`, ``obj(w) -> (loss, grad)``.  ``Objective.from_model(model, loss_fn, x, y)``
builds one from a module's forward/backward and a loss module; ``Objective(fn, w0)`` wraps
any NumPy function (a quadratic, a logistic regression) the same way.

Hessian-vector product, by a central difference of the gradient along ``u = v / |v|``::

    H v  ~=  |v| * (g(w + h u) - g(w - h u)) / (2 h),     h = eps**(1/3) * max(|w|, 1)

The truncation error grows like ``h**2`` and the rounding error like ``eps * |g| / h``; they
balance at ``h ~ eps**(1/3)`` times the scale of ``w`` (``eps`` of the model's dtype), so the
step moves the whole parameter vector by a relative ``eps**(1/3)``: about 6e-6 in float64
(relative error ~1e-10) and 5e-3 in float32 (relative error ~1e-5).  For a quadratic the
gradient is linear and the difference is exact up to rounding.

On top of it: the dense Hessian of a small model (:func:`hessian`), the top-k eigenvalues
(Lanczos with full reorthogonalisation, or power iteration with deflation), the smallest
eigenvalue (a negative one means a saddle point), Hutchinson's trace estimate
``tr H = E[z^T H z]`` over Rademacher ``z``, and the curvature ``v^T H v / v^T v`` along a
direction.  Gradient descent on a quadratic is stable only when ``lr < 2 / lambda_max``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import to_device, to_host

from .module import enable_grad, no_grad

__all__ = ["Objective", "flat_params", "set_flat_params", "flat_grads", "hvp", "hessian",
           "EigenResult", "top_eigenvalues", "smallest_eigenvalue", "TraceEstimate",
           "hutchinson_trace", "directional_curvature", "max_stable_lr"]


# ---------------------------------------------------------------------------- flat vectors
def _trainable(model):
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def flat_params(model):
    """The trainable parameters of ``model`` concatenated into one float64 host vector."""
    parts = [to_host(p.data).astype(np.float64).reshape(-1) for _, p in _trainable(model)]
    return np.concatenate(parts) if parts else np.zeros(0)


def set_flat_params(model, w):
    """Write a flat vector (from :func:`flat_params`) back into the parameters, in place."""
    params = _trainable(model)
    total = sum(p.size for _, p in params)
    w = np.asarray(w)
    if w.shape != (total,):
        raise ValueError(f"w: expected a flat vector of shape ({total},) for "
                         f"{type(model).__name__}, got {w.shape}")
    start = 0
    for _, p in params:
        chunk = w[start:start + p.size].reshape(p.shape).astype(p.dtype)
        p.data[...] = to_device(chunk, p.device)
        start += p.size


def flat_grads(model):
    """The trainable parameters' ``.grad`` as one float64 host vector (zeros where None)."""
    parts = []
    for _, p in _trainable(model):
        g = np.zeros(p.shape) if p.grad is None else to_host(p.grad).astype(np.float64)
        parts.append(g.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


# ---------------------------------------------------------------------------- the objective
class Objective:
    """A loss over a flat parameter vector: ``obj(w) -> (loss, grad)``, both float64 on the host.

    ``fn(w)`` returns ``(loss, grad)``; ``loss_fn(w)`` (optional) returns the loss alone,
    faster when no gradient is needed.  ``w0`` is the point the tools default to.  ``shapes``
    lists the parameter tensors the flat vector is made of (for filter normalisation in
    :mod:`nn.landscape`); a plain vector counts as one filter, shape ``(1, n)``.  ``dtype`` is
    the precision the loss is computed in, which sets the finite-difference step.
    """

    def __init__(self, fn, w0, loss_fn=None, shapes=None, names=None, dtype=np.float64):
        self.fn = fn
        self.w0 = np.array(w0, dtype=np.float64).reshape(-1)
        self._loss_fn = loss_fn
        self.shapes = [tuple(s) for s in shapes] if shapes is not None else [(1, self.w0.size)]
        self.names = (list(names) if names is not None
                      else [f"p{i}" for i in range(len(self.shapes))])
        total = sum(int(np.prod(s)) for s in self.shapes)
        if total != self.w0.size:
            raise ValueError(f"shapes: {self.shapes} hold {total} values, but w0 has "
                             f"{self.w0.size}")
        self.dtype = np.dtype(dtype)
        self.n_grad = 0  # gradient evaluations so far: the cost of every tool below
        self.n_loss = 0

    @property
    def size(self):
        return self.w0.size

    def __call__(self, w):
        self.n_grad += 1
        loss, grad = self.fn(np.asarray(w, dtype=np.float64))
        return float(loss), np.asarray(grad, dtype=np.float64).reshape(-1)

    def grad(self, w):
        return self(w)[1]

    def loss(self, w):
        if self._loss_fn is None:
            return self(w)[0]
        self.n_loss += 1
        return float(self._loss_fn(np.asarray(w, dtype=np.float64)))

    def split(self, w):
        """The flat vector cut into arrays of ``self.shapes``."""
        out, start = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(np.asarray(w[start:start + n]).reshape(s))
            start += n
        return out

    @classmethod
    def from_model(cls, model, loss_fn, x, y, batch_size=None, train_mode=False):
        """The mean loss of ``loss_fn(model(x), y)`` as a function of the trainable parameters.

        ``x``/``y`` are used in chunks of ``batch_size`` (all at once when None); the loss and
        gradient are the size-weighted means over chunks, so they equal the full-batch values.
        The model runs in eval mode unless ``train_mode`` (dropout and batch statistics make
        the loss random or batch-dependent otherwise).  Each call writes ``w`` into the model
        and restores the parameters, gradients, buffers and mode afterwards.
        """
        params = _trainable(model)
        if not params:
            raise ValueError(f"model: {type(model).__name__} has no trainable parameters")
        n = len(x)
        step = n if batch_size is None else int(batch_size)
        chunks = [(x[i:i + step], y[i:i + step], min(step, n - i) / n) for i in range(0, n, step)]
        w0 = flat_params(model)

        def run(w, need_grad):
            saved = [(p, p.data.copy(), p.grad) for _, p in params]
            mode = [(m, m.training) for m in model.modules()]
            # train mode updates BatchNorm's running statistics: put them back too
            buffers = [(m, name, b.copy()) for m in model.modules()
                       for name, b in m._buffers.items()]
            try:
                set_flat_params(model, w)
                model.train(train_mode)
                for _, p in params:
                    p.grad = None
                total = 0.0
                for xb, yb, weight in chunks:
                    with enable_grad() if need_grad else no_grad():  # loss alone: keep nothing
                        loss = loss_fn(model(xb), yb)
                    total += weight * float(loss)
                    if need_grad:
                        model.backward(loss_fn.backward() * weight)
                return total, (flat_grads(model) if need_grad else None)
            finally:
                for p, data, grad in saved:
                    p.data[...] = data
                    p.grad = grad
                for m, training in mode:
                    object.__setattr__(m, "training", training)
                    object.__setattr__(m, "_saved", None)  # nothing of ours for a backward
                for m, name, b in buffers:
                    m._set_buffer(name, b)

        obj = cls(lambda w: run(w, True), w0, loss_fn=lambda w: run(w, False)[0],
                  shapes=[p.shape for _, p in params], names=[name for name, _ in params],
                  dtype=params[0][1].dtype)
        return obj


def _point(obj, w):
    return obj.w0 if w is None else np.asarray(w, dtype=np.float64).reshape(-1)


def _step(obj, w):
    return float(np.finfo(obj.dtype).eps ** (1 / 3) * max(np.linalg.norm(w), 1.0))


# ---------------------------------------------------------------------------- products
def hvp(obj, v, w=None, h=None):
    """``H(w) v`` by a central difference of the gradient (step from the parameter scale)."""
    w = _point(obj, w)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape != w.shape:
        raise ValueError(f"v: expected shape {w.shape}, got {v.shape}")
    scale = np.linalg.norm(v)
    if scale == 0:
        return np.zeros_like(w)
    u = v / scale
    h = _step(obj, w) if h is None else float(h)
    return (obj.grad(w + h * u) - obj.grad(w - h * u)) * (scale / (2 * h))


def hessian(obj, w=None, h=None):
    """The dense, symmetrised Hessian from one HVP per coordinate (2n gradients; small models)."""
    w = _point(obj, w)
    n = w.size
    H = np.empty((n, n))
    e = np.zeros(n)
    for i in range(n):
        e[i] = 1.0
        H[:, i] = hvp(obj, e, w, h)
        e[i] = 0.0
    return (H + H.T) / 2


def directional_curvature(obj, direction, w=None, normalize=True, h=None):
    """``v^T H v`` along ``direction`` (divided by ``v^T v`` when ``normalize``)."""
    w = _point(obj, w)
    v = np.asarray(direction, dtype=np.float64).reshape(-1)
    vv = float(v @ v)
    if vv == 0:
        raise ValueError("direction: must be non-zero")
    curv = float(v @ hvp(obj, v, w, h))
    return curv / vv if normalize else curv


# ---------------------------------------------------------------------------- eigenvalues
@dataclass
class EigenResult:
    """Eigenvalues (best first), unit eigenvectors as columns, residual norms ``|Hv - lv|``."""

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    n_hvp: int
    converged: bool


def _default_tol(obj):
    # The HVP's relative noise is about eps**(2/3); asking for less than ~10x that never converges.
    return max(1e-6, 10 * float(np.finfo(obj.dtype).eps) ** (2 / 3))


def _lanczos(matvec, n, k, which, tol, max_iter, rng):
    k = min(k, n)
    m_max = min(n, max_iter)
    Q = np.zeros((min(m_max, 16), n))  # the Krylov basis; grows by doubling as needed
    alphas, betas = [], []
    q = rng.standard_normal(n)
    q /= np.linalg.norm(q)
    q_prev, beta = np.zeros(n), 0.0
    for j in range(m_max):
        if j == len(Q):
            Q = np.concatenate([Q, np.zeros((min(len(Q), m_max - len(Q)), n))])
        Q[j] = q
        z = matvec(q)
        alpha = float(q @ z)
        z = z - alpha * q - beta * q_prev
        # Full reorthogonalisation, twice ("twice is enough"): without it rounding brings back
        # converged directions and the Ritz values sprout spurious copies.
        for _ in range(2):
            z -= Q[:j + 1].T @ (Q[:j + 1] @ z)
        beta = float(np.linalg.norm(z))
        alphas.append(alpha)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        order = np.argsort(-theta) if which == "largest" else np.argsort(theta)
        idx = order[:k]
        residuals = beta * np.abs(S[-1, idx])
        scale = max(np.max(np.abs(theta)), 1e-300)
        exhausted = beta <= 1e-12 * scale or j + 1 == n
        converged = len(idx) == k and bool(np.all(residuals <= tol * scale))
        if converged or exhausted or j + 1 == m_max:
            vectors = Q[:j + 1].T @ S[:, idx]
            return EigenResult(theta[idx], vectors, residuals, j + 1, converged or exhausted)
        betas.append(beta)
        q_prev, q = q, z / beta
    raise AssertionError("unreachable")


def _power(matvec, n, k, tol, max_iter, rng):
    values, vectors, residuals, count, ok = [], [], [], 0, True
    for _ in range(min(k, n)):
        V = np.array(vectors).T if vectors else np.zeros((n, 0))
        v = rng.standard_normal(n)
        lam, r = 0.0, np.inf
        for _ in range(max_iter):
            # Deflation by projection: the eigenvectors already found are removed from the
            # iterate (and from H v), so the iteration converges to the next one.
            v -= V @ (V.T @ v)
            v /= np.linalg.norm(v)
            hv = matvec(v)
            count += 1
            hv -= V @ (V.T @ hv)
            lam = float(v @ hv)
            r = float(np.linalg.norm(hv - lam * v))
            if r <= tol * max(abs(lam), 1e-300):
                break
            v = hv
        else:
            ok = False
        values.append(lam)
        vectors.append(v)
        residuals.append(r)
    return EigenResult(np.array(values), np.array(vectors).T, np.array(residuals), count, ok)


def top_eigenvalues(obj, k=1, w=None, method="lanczos", tol=None, max_iter=None, seed=0):
    """The ``k`` largest Hessian eigenvalues at ``w`` (and eigenvectors) as an :class:`EigenResult`.

    ``method="lanczos"`` (default) finds the algebraically largest; ``"power"`` (power
    iteration with deflation) finds the largest in magnitude, which differ when H has large
    negative eigenvalues.  ``tol`` bounds the residual relative to ``|lambda|``.
    """
    w = _point(obj, w)
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    tol = _default_tol(obj) if tol is None else float(tol)
    rng = np.random.default_rng(seed)
    h = _step(obj, w)
    matvec = lambda v: hvp(obj, v, w, h)  # noqa: E731
    if method == "lanczos":
        return _lanczos(matvec, w.size, k, "largest", tol, max_iter or 200, rng)
    if method == "power":
        return _power(matvec, w.size, k, tol, max_iter or 1000, rng)
    raise ValueError(f"method: expected 'lanczos' or 'power', got {method!r}")


def smallest_eigenvalue(obj, w=None, tol=None, max_iter=200, seed=0):
    """The algebraically smallest Hessian eigenvalue (Lanczos); negative at a saddle point."""
    w = _point(obj, w)
    tol = _default_tol(obj) if tol is None else float(tol)
    h = _step(obj, w)
    res = _lanczos(lambda v: hvp(obj, v, w, h), w.size, 1, "smallest", tol, max_iter,
                   np.random.default_rng(seed))
    return float(res.eigenvalues[0])


def max_stable_lr(lambda_max):
    """2 / lambda_max: above this learning rate gradient descent diverges on the local quadratic."""
    return 2.0 / lambda_max if lambda_max > 0 else float("inf")


# ---------------------------------------------------------------------------- trace
@dataclass
class TraceEstimate:
    """Hutchinson's estimate of ``tr H``: the mean of ``z^T H z`` and its standard error."""

    estimate: float
    stderr: float
    samples: np.ndarray


def hutchinson_trace(obj, w=None, n_samples=64, seed=0):
    """``tr H ~= mean(z^T H z)`` over Rademacher ``z`` (unbiased; variance 2 sum_{i!=j} H_ij^2)."""
    w = _point(obj, w)
    if n_samples < 2:
        raise ValueError(f"n_samples: need at least 2 for a standard error, got {n_samples}")
    rng = np.random.default_rng(seed)
    h = _step(obj, w)
    samples = np.empty(n_samples)
    for i in range(n_samples):
        z = rng.integers(0, 2, w.size) * 2.0 - 1.0
        samples[i] = z @ hvp(obj, z, w, h)
    return TraceEstimate(float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(n_samples)),
                         samples)
