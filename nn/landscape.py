"""Loss landscape slices: the loss along lines and planes through parameter space.

All functions take an :class:`nn.curvature.Objective` (``Objective.from_model(model, loss_fn,
x, y)`` or one around any NumPy function) and flat float64 vectors.

* 1-D slice:  ``L(w + a d)`` for ``a`` in ``alphas``.
* 2-D slice:  ``L(w + a d1 + b d2)`` on the grid ``alphas x betas`` (rows follow ``betas``,
  the layout ``matplotlib.contour(alphas, betas, Z)`` expects).
* Interpolation: ``L((1 - a) w_a + a w_b)``, e.g. from the initial to the trained weights.

Random directions are filter-normalised (Li et al., 2018): a Gaussian direction is cut like
the parameters, and each filter of it (a slice along the first axis of a weight tensor: one
output unit of a Linear, one output channel of a Conv2d) is rescaled to the norm of the
matching filter of ``w``.  Distances along the direction are then relative to the weights'
own scale, so slices of differently scaled networks are comparable.  One-dimensional tensors
(biases, normalisation parameters) get a zero direction by default (``bias="zero"``), or are
rescaled as one filter (``bias="filter"``).  A plain objective counts as one filter.

A training path ``w_0, ..., w_T`` is projected onto a plane through ``w`` by least squares
in the plane's basis; in high dimensions a random plane holds almost none of the path, so
:func:`pca_directions` gives the plane that holds the most of it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["random_direction", "filter_normalize", "slice_1d", "slice_2d", "interpolate",
           "project", "pca_directions", "plot_line", "plot_contour"]


def filter_normalize(direction, w, shapes, bias="zero"):
    """Rescale each filter of ``direction`` to the norm of the same filter of ``w``."""
    if bias not in ("zero", "filter"):
        raise ValueError(f"bias: expected 'zero' or 'filter', got {bias!r}")
    d = np.array(direction, dtype=np.float64).reshape(-1)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if d.shape != w.shape:
        raise ValueError(f"direction: expected shape {w.shape}, got {d.shape}")
    start = 0
    for shape in shapes:
        n = int(np.prod(shape))
        dv = d[start:start + n]
        if len(shape) <= 1 and bias == "zero":
            dv[:] = 0.0
        else:
            rows = shape[0] if len(shape) > 1 else 1
            dm = dv.reshape(rows, -1)
            wm = w[start:start + n].reshape(rows, -1)
            dn = np.linalg.norm(dm, axis=1, keepdims=True)
            wn = np.linalg.norm(wm, axis=1, keepdims=True)
            dm *= np.divide(wn, dn, out=np.zeros_like(dn), where=dn > 0)
        start += n
    return d


def random_direction(obj, w=None, seed=None, filter_normalized=True, bias="zero"):
    """A Gaussian direction the size of ``w``, filter-normalised to ``w`` by default."""
    w = obj.w0 if w is None else np.asarray(w, dtype=np.float64)
    d = np.random.default_rng(seed).standard_normal(w.size)
    return filter_normalize(d, w, obj.shapes, bias) if filter_normalized else d


def _vec(a, size, name):
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size != size:
        raise ValueError(f"{name}: expected {size} values, got {a.size}")
    return a


def slice_1d(obj, direction, alphas, w=None):
    """Losses ``L(w + a d)`` for each ``a`` in ``alphas``."""
    w = obj.w0 if w is None else _vec(w, obj.size, "w")
    d = _vec(direction, obj.size, "direction")
    return np.array([obj.loss(w + a * d) for a in np.asarray(alphas, dtype=np.float64)])


def slice_2d(obj, d1, d2, alphas, betas, w=None):
    """Losses ``L(w + a d1 + b d2)``, shape ``(len(betas), len(alphas))``."""
    w = obj.w0 if w is None else _vec(w, obj.size, "w")
    d1 = _vec(d1, obj.size, "d1")
    d2 = _vec(d2, obj.size, "d2")
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    grid = np.empty((betas.size, alphas.size))
    for i, b in enumerate(betas):
        for j, a in enumerate(alphas):
            grid[i, j] = obj.loss(w + a * d1 + b * d2)
    return grid


def interpolate(obj, w_a, w_b, alphas):
    """Losses along the line ``(1 - a) w_a + a w_b`` (``a`` outside [0, 1] extrapolates)."""
    w_a = _vec(w_a, obj.size, "w_a")
    w_b = _vec(w_b, obj.size, "w_b")
    return slice_1d(obj, w_b - w_a, alphas, w=w_a)


def project(points, w, d1, d2):
    """Coordinates ``(a, b)`` of each point's projection onto the plane ``w + a d1 + b d2``.

    Returns ``(coords, kept)``: ``coords`` of shape ``(len(points), 2)``, and for each point the
    fraction ``|projection| / |point - w|`` of its displacement that lies in the plane.
    """
    P = np.asarray(points, dtype=np.float64).reshape(len(points), -1) - np.asarray(w)
    B = np.stack([np.asarray(d1, dtype=np.float64), np.asarray(d2, dtype=np.float64)], axis=1)
    coords, *_ = np.linalg.lstsq(B, P.T, rcond=None)
    coords = coords.T
    norms = np.linalg.norm(P, axis=1)
    kept = np.divide(np.linalg.norm(coords @ B.T, axis=1), norms, out=np.ones_like(norms),
                     where=norms > 0)
    return coords, kept


def pca_directions(points, w):
    """The two principal directions of ``points - w`` (unit vectors) and their variance share."""
    P = np.asarray(points, dtype=np.float64).reshape(len(points), -1) - np.asarray(w)
    _, s, Vt = np.linalg.svd(P, full_matrices=False)
    share = s ** 2 / max(np.sum(s ** 2), 1e-300)
    return Vt[0], Vt[1], share[:2]


# ---------------------------------------------------------------------------- plots
def plot_line(alphas, curves, path, xlabel="alpha", ylabel="loss", title=None, logy=False):
    """Line plot of one or more slices: ``curves`` maps a label to losses. Writes ``path``."""
    from . import plots

    fig, ax = plots.subplots(figsize=(5, 3.5))
    for label, values in curves.items():
        ax.plot(alphas, values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(True, alpha=0.3)
    return plots.save(fig, path)


def plot_contour(alphas, betas, grid, path, trajectory=None, title=None, levels=30,
                 xlabel="direction 1", ylabel="direction 2"):
    """Filled contour of a 2-D slice, with an optional projected path (``(T, 2)`` coords).

    The path is drawn over the contours in black-edged white with its start and end marked.
    When it spans less than a twentieth of the plane (a random plane holds almost none of a
    training path), an inset magnifies the region around it, so it is visible either way.
    """
    from . import plots

    fig, ax = plots.subplots(figsize=(5.6, 4.6))
    # log levels: losses near a minimum span decades and linear levels hide the basin.
    z = np.log10(np.maximum(grid, 1e-12))
    cs = ax.contourf(alphas, betas, z, levels=levels, cmap="viridis")
    ax.contour(alphas, betas, z, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="log10 loss")
    if trajectory is not None:
        t = np.asarray(trajectory, dtype=np.float64)
        _draw_path(ax, t, legend=True)
        span = max(float(np.ptp(t[:, 0])), float(np.ptp(t[:, 1])))
        extent = max(float(np.ptp(alphas)), float(np.ptp(betas)))
        if span < extent / 20:
            # A magnified view of the path; the axes' ticks give its true size.
            # A magnified view of the path in the lower right; its title gives the true size.
            inset = ax.inset_axes([0.6, 0.05, 0.36, 0.36])
            _draw_path(inset, t, legend=False)
            pad = max(span, 1e-12) * 0.15
            inset.set_xlim(t[:, 0].min() - pad, t[:, 0].max() + pad)
            inset.set_ylim(t[:, 1].min() - pad, t[:, 1].max() + pad)
            inset.set_facecolor("#f4f4f4")
            inset.set_xticks([])
            inset.set_yticks([])
            inset.set_title(f"path magnified (it spans {span:.2g})", fontsize=7, pad=2,
                            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return plots.save(fig, path)


def _draw_path(ax, t, legend):
    ax.plot(t[:, 0], t[:, 1], "-", color="k", lw=3)  # a dark edge under the white line
    ax.plot(t[:, 0], t[:, 1], ".-", color="white", lw=1.5, ms=4,
            label="training path" if legend else None)
    ax.plot(t[-1, 0], t[-1, 1], "*", ms=13, mfc="red", mec="k",
            label="end (trained)" if legend else None)
    # A ring drawn last: the start stays visible where the path returns close to it.
    ax.plot(t[0, 0], t[0, 1], "o", ms=11, mfc="none", mec="orange", mew=2.5,
            label="start" if legend else None)
    if legend:
        ax.legend(loc="upper right", fontsize=8, facecolor="#dddddd")
