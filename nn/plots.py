"""PNG figures: the one place the package draws with matplotlib.

Training-run figures (curves, first-layer filters, confusion matrix, autoencoder views) live
here, and every other module that draws (demos, landscapes, gradient flow) makes its figures
with :func:`subplots` and writes them with :func:`save`.  matplotlib is optional (the
``plot`` extra) and imported only when a figure is drawn.  Figures are drawn on the Agg canvas
directly (no pyplot, no ``matplotlib.use``), so nothing global such as the user's backend
choice changes and no figure stays open.  :func:`available` says whether plotting can
happen; callers print a one-line notice and skip when it cannot.
"""
from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["available", "MISSING_NOTICE", "figure", "subplots", "save", "plot_history",
           "plot_filters", "plot_confusion", "plot_reconstructions", "plot_codes"]

MISSING_NOTICE = "matplotlib is not installed (pip install '.[plot]'): skipping plots"


def available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def figure(width, height):
    """A matplotlib ``Figure`` on its own Agg canvas (``width`` x ``height`` inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows=1, ncols=1, figsize=(5, 4), **kwargs):
    """``(fig, axes)`` as ``pyplot.subplots`` gives them, on an Agg canvas of its own."""
    fig = figure(*figsize)
    axes = fig.subplots(nrows, ncols, **kwargs)
    return fig, axes


def save(fig, path, dpi=110):
    """Write ``fig`` as a PNG at ``path`` (making its folder); returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path




def plot_history(history, path, title=None, best_epoch=None):
    """Loss (and accuracy, when recorded) per epoch for training and validation.

    ``title`` (e.g. "lenet on digits") heads the figure; ``best_epoch``, the epoch whose
    weights were kept, is marked with a dashed line and its validation values circled.
    """
    epochs = [row["epoch"] for row in history]
    has_acc = any("train_accuracy" in row for row in history)
    fig = figure(10 if has_acc else 5.5, 3.8)
    panels = [("loss", "loss")] + ([("accuracy", "accuracy (%)")] if has_acc else [])
    for i, (key, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        scale = 100.0 if key == "accuracy" else 1.0
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{key}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else scale * v for v in values], style,
                        markersize=3, label="validation" if split == "val" else split)
        if best_epoch is not None and best_epoch in epochs:
            row = history[epochs.index(best_epoch)]
            ax.axvline(best_epoch, color="k", ls="--", lw=1,
                       label=f"kept: epoch {best_epoch}")
            value = row.get(f"val_{key}")
            if value is not None:
                ax.plot([best_epoch], [scale * value], "o", ms=9, mfc="none", mec="k")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "loss" and all(row.get("train_loss", 1) > 0 for row in history):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def _grid(count):
    cols = min(count, 8)
    return int(math.ceil(count / cols)), cols


def plot_filters(weight, path, input_shape=None,
                 title="first-layer filters (one colour scale for all, white = 0)"):
    """Each output unit's weights as a small image.

    ``weight`` is a Conv2d weight (OC, C, KH, KW) - one image per filter, channels averaged
    unless C is 3 (drawn as RGB) - or a Linear weight (out, in) with ``input_shape``
    (C, H, W) whose product is ``in``, each row drawn as an H x W image.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim == 2:
        if input_shape is None or int(np.prod(input_shape)) != w.shape[1]:
            raise ValueError(f"plot_filters: a Linear weight {w.shape} needs input_shape whose "
                             f"product is {w.shape[1]}, got {input_shape}")
        w = w.reshape((w.shape[0],) + tuple(input_shape)[-3:]) if len(input_shape) == 3 \
            else w.reshape((w.shape[0], 1) + tuple(input_shape))
    if w.ndim != 4:
        raise ValueError(f"plot_filters: expected a (OC, C, KH, KW) or (out, in) weight, got "
                         f"shape {w.shape}")
    w = w[:64]
    rows, cols = _grid(len(w))
    fig = figure(1.1 * cols + 1.0, 1.1 * rows + 0.5)
    fig.suptitle(title)
    # One colour scale for all filters, symmetric about 0: a weight's sign and size read the
    # same in every panel (white is 0), and the colorbar gives the numbers.
    rgb = w.shape[1] == 3
    lim = float(np.abs(w).max()) + 1e-12 if rgb else \
        float(np.abs(w.mean(axis=1)).max()) + 1e-12
    axes = []
    image = None
    for i, f in enumerate(w):
        ax = fig.add_subplot(rows, cols, i + 1)
        if rgb:  # each channel mapped from [-lim, lim] to [0, 1]: grey is 0
            ax.imshow(np.transpose((f + lim) / (2 * lim), (1, 2, 0)))
        else:
            image = ax.imshow(f.mean(axis=0), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks([])
        ax.set_yticks([])
        axes.append(ax)
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label="weight")
    else:
        fig.text(0.5, 0.0, f"RGB: each channel from -{lim:.2g} (0) to {lim:.2g} (1); grey is 0",
                 ha="center", fontsize=8)
    return save(fig, path)


def plot_confusion(matrix, path, title="confusion matrix (test split)"):
    """Counts with the true class on rows and the predicted class on columns."""
    m = np.asarray(matrix)
    k = m.shape[0]
    fig = figure(0.45 * k + 2.2, 0.45 * k + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(m, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] > m.max() / 2 else "black")
    return save(fig, path)


def plot_reconstructions(x, x_hat, path, count=10):
    """Inputs (top row) above their reconstructions (bottom row); images (N, C, H, W)."""
    x = np.asarray(x)[:count]
    x_hat = np.asarray(x_hat)[:count]
    n = len(x)
    fig = figure(1.0 * n, 2.3)
    fig.suptitle("inputs (top) and reconstructions (bottom)")
    for row, images in enumerate((x, x_hat)):
        for i, img in enumerate(images):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.imshow(img.mean(axis=0) if img.ndim == 3 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    return save(fig, path)


def plot_codes(codes, labels, path, title="2-D codes of the test split"):
    """A scatter of 2-D codes coloured by label."""
    codes = np.asarray(codes).reshape(len(codes), -1)
    if codes.shape[1] < 2:
        raise ValueError(f"plot_codes: needs codes with at least 2 dimensions, got {codes.shape}")
    labels = np.asarray(labels)
    fig = figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    # tab10 gives each of up to ten classes its own colour when the range is fixed.
    limits = {"vmin": -0.5, "vmax": 9.5} if labels.max(initial=0) < 10 else {}
    points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=10, **limits)
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("code 1")
    ax.set_ylabel("code 2")
    ax.set_title(title)
    return save(fig, path)
