"""Demonstrations of the ideas the library is built on: ``python -m nn demo NAME``.

Each demo trains or inspects something small on the CPU (under two minutes on 2 cores), writes
its plots into a folder (default ``runs/demo-NAME``) and returns its finding: one or two
sentences with the numbers.  ``quick=True`` shrinks every budget to a few seconds for the
smoke tests; the findings then have the same form with less converged numbers.

``run_demo(name, out_dir=None, quick=False)`` returns the finding, a ``str`` that also
carries ``.values`` (the key numbers, for tests) and ``.files`` (the plots written).
"""
from __future__ import annotations

import os
import time

import numpy as np

import kernels as K

__all__ = ["DEMOS", "Finding", "run_demo", "add_arguments", "run_cli"]


class Finding(str):
    """The printed finding, with the numbers behind it (``.values``) and the plots (``.files``)."""

    def __new__(cls, text, values=None, files=()):
        self = super().__new__(cls, text)
        self.values = dict(values or {})
        self.files = list(files)
        return self


# ---------------------------------------------------------------------------- helpers
def _setup(seed):
    import nn
    nn.init.manual_seed(seed)
    return np.random.default_rng(seed)


def _digits(flat=False):
    import nn.data
    ds = nn.data.digits()
    x = ds.x.reshape(len(ds.x), -1) if flat else ds.x
    return x, ds.y


def _split(x, y, rng, test_fraction=0.25):
    order = rng.permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _batches(n, batch_size, rng):
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def _train(model, loss_fn, optimizer, x, y, steps, batch_size, rng, target_is_input=False,
           on_step=None):
    """Mini-batch training for ``steps`` steps; returns the per-step training losses."""
    model.train()
    losses = []
    while len(losses) < steps:
        for idx in _batches(len(x), batch_size, rng):
            xb = x[idx]
            loss = loss_fn(model(xb), xb if target_is_input else y[idx])
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            if on_step is not None:
                on_step(model, len(losses))
            optimizer.step()
            losses.append(float(loss))
            if len(losses) == steps:
                break
    return losses


def _predict(model, x, batch_size=512):
    model.eval()
    out = [K.to_host(model(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    model.train()
    return np.concatenate(out)


def _accuracy(model, x, y):
    return float(np.mean(_predict(model, x).argmax(axis=1) == y))


def _subplots(nrows=1, ncols=1, figsize=(5, 4)):
    from . import plots
    return plots.subplots(nrows, ncols, figsize=figsize)


def _save(fig, out_dir, name, files, tight=True):
    from . import plots
    if tight:
        fig.tight_layout()
    files.append(plots.save(fig, os.path.join(out_dir, name)))
    return files[-1]


# ---------------------------------------------------------------------------- vanishing gradients
def vanishing_gradients(out_dir, quick=False):
    """20-layer plain MLP against the same MLP with residual connections: |grad| against depth."""
    import nn
    from nn.diagnostics import layer_norms, plot_gradient_flow

    rng = _setup(0)
    x, y = _digits(flat=True)
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    depth, width = 20, 32
    sizes = [x.shape[1]] + [width] * (depth - 1) + [10]
    steps = 3 if quick else 300
    probe = (x_train[:64], y_train[:64]) if quick else (x_train[:256], y_train[:256])
    curves, first, acc = {}, {}, {}
    for kind in ("plain", "residual"):
        nn.init.manual_seed(1)  # the same initial weights for both
        model = nn.models.MLP(sizes, activation="relu", residual=kind == "residual")
        loss_fn = nn.CrossEntropyLoss()
        for when in ("init", "trained"):
            if when == "trained":
                # A small step: the residual stack starts with large activations.
                opt = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                _train(model, loss_fn, opt, x_train, y_train, steps, 64, rng)
            model.zero_grad()
            loss_fn(model(probe[0]), probe[1])
            model.backward(loss_fn.backward())
            norms = [g for g, _ in layer_norms(model, weights_only=True).values()]
            curves[f"{kind}, {when}"] = norms
            first[(kind, when)] = norms[0]
            model.zero_grad()
        acc[kind] = _accuracy(model, x_test, y_test)
    files = []
    plot_gradient_flow(curves, os.path.join(out_dir, "gradient_flow.png"),
                       title=f"{depth}-layer MLP: gradient norm against depth")
    files.append(os.path.join(out_dir, "gradient_flow.png"))
    plain, res = curves["plain, init"], curves["residual, init"]
    values = {"plain_first_init": first[("plain", "init")],
              "residual_first_init": first[("residual", "init")],
              "plain_last_init": plain[-1], "residual_last_init": res[-1],
              "plain_first_trained": first[("plain", "trained")],
              "residual_first_trained": first[("residual", "trained")],
              "plain_accuracy": acc["plain"], "residual_accuracy": acc["residual"], "steps": steps}
    text = (f"At initialisation the first layer of the {depth}-layer plain ReLU MLP gets |grad| = "
            f"{plain[0]:.2g}, {plain[-1] / plain[0]:.2g}x less than its last layer, while with "
            f"residual connections it gets {res[0]:.2g} ({res[0] / plain[0]:.2g}x the plain one). "
            f"After {steps} SGD steps the plain net reaches {acc['plain']:.1%} test accuracy "
            f"(first-layer |grad| {first[('plain', 'trained')]:.2g}) and the residual net "
            f"{acc['residual']:.1%}.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- zero init
def zero_init(out_dir, quick=False):
    """All-zero weights are a critical point; constant weights stay symmetric; random breaks it."""
    import nn
    from nn.curvature import flat_params

    rng = _setup(0)
    x, y = _digits(flat=True)
    # A balanced training set: with zero logits the output bias gradient is 1/K minus each
    # class's frequency, zero only when every class is equally frequent.
    per_class = min(np.bincount(y))
    keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    x_bal, y_bal = x[keep].astype(np.float64), y[keep]
    steps = 20 if quick else 600
    hidden = 32
    results = {}
    for init in ("zero", "constant", "random"):
        nn.init.manual_seed(2)
        model = nn.models.MLP([64, hidden, 10], activation="tanh").double()
        for name, p in model.named_parameters():
            if init == "zero":
                p.data[...] = 0.0
            elif init == "constant":
                p.data[...] = 0.1 if name.endswith("weight") else 0.0
            else:
                p.data[...] = 0.1 * rng.standard_normal(p.shape) if name.endswith("weight") else 0.0
        loss_fn = nn.CrossEntropyLoss()
        model.zero_grad()
        loss_fn(model(x_bal), y_bal)
        model.backward(loss_fn.backward())
        grads = {name: K.to_host(p.grad).copy() for name, p in model.named_parameters()}
        start = flat_params(model)
        opt = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _train(model, loss_fn, opt, x_train.astype(np.float64), y_train, steps, 64, rng)
        W1 = K.to_host(model.layers[0].weight.data)
        results[init] = {
            "grad_max": max(float(np.abs(g).max()) for g in grads.values()),
            "weight_grad_max": max(float(np.abs(g).max()) for n, g in grads.items()
                                   if n.endswith("weight")),
            "moved": float(np.abs(flat_params(model) - start).max()),
            "weights_max": max(float(np.abs(K.to_host(p.data)).max())
                               for n, p in model.named_parameters() if n.endswith("weight")),
            # how different the hidden units are: rows of the first weight matrix
            "unit_spread": float(np.abs(W1 - W1[:1]).max()),
            "accuracy": _accuracy(model, x_test.astype(np.float64), y_test),
        }
    z, c, r = results["zero"], results["constant"], results["random"]
    fig, ax = _subplots(figsize=(5, 3.2))
    names = ["all zero", "constant 0.1", "random N(0, 0.1)"]
    ax.bar(names, [z["accuracy"], c["accuracy"], r["accuracy"]], color=["grey", "tab:orange",
                                                                        "tab:blue"])
    ax.axhline(0.1, color="k", ls="--", lw=1, label="chance")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"64-{hidden}-10 tanh MLP after {steps} SGD steps")
    ax.legend()
    files = []
    _save(fig, out_dir, "accuracy_by_init.png", files)
    values = {f"{k}_{m}": v for k, res in results.items() for m, v in res.items()}
    values["steps"] = steps
    text = (f"With every weight and bias zero, every weight gradient is exactly "
            f"{z['weight_grad_max']:.3g} (the output bias's is {z['grad_max']:.1g}: 1/K minus the "
            f"class frequency, zero up to rounding on a balanced batch) and after {steps} SGD "
            f"steps every weight is still {z['weights_max']:.3g}, so test accuracy stays at "
            f"{z['accuracy']:.1%}; constant "
            f"weights 0.1 keep all {hidden} hidden units identical (max difference "
            f"{c['unit_spread']:.2g}, accuracy {c['accuracy']:.1%}), while small random weights "
            f"break the symmetry and reach {r['accuracy']:.1%}.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- image kernels
def image_kernels(out_dir, quick=False):
    """Blur, sharpen, edge and Sobel kernels applied with conv2d_forward to a real photograph."""
    import nn
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").astype(np.float32) / 255.0
    # ITU-R BT.601 luma weights: perceived brightness of the three channels.
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if quick:
        gray = gray[::6, ::6]
    x = np.ascontiguousarray(gray[None, None])
    names = ["blur", "sharpen", "edge", "sobel_x", "sobel_y"]
    out = {}
    for name in names:
        w = nn.init.image_kernel(name)[None, None]
        out[name] = K.conv2d_forward(x, w, padding=1)[0, 0]
    magnitude = np.hypot(out["sobel_x"], out["sobel_y"])

    # Reference: the same cross-correlation, zero padded, written out in NumPy.
    pad = np.pad(gray, 1)
    h, w_ = gray.shape
    worst = 0.0
    for name in names:
        k = nn.init.image_kernel(name)
        ref = sum(k[i, j] * pad[i:i + h, j:j + w_] for i in range(3) for j in range(3))
        worst = max(worst, float(np.abs(ref - out[name]).max()))

    def sharpness(img):  # mean |Laplacian| inside the border: how much fine detail there is
        lap = (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:]
               - 4 * img[1:-1, 1:-1])
        return float(np.mean(np.abs(lap)))

    inner = magnitude[1:-1, 1:-1].ravel()
    energy = np.sort(inner ** 2)[::-1]
    top10 = float(energy[:len(energy) // 10].sum() / energy.sum())
    values = {"sharpness_original": sharpness(gray), "sharpness_blur": sharpness(out["blur"]),
              "sharpness_sharpen": sharpness(out["sharpen"]), "sobel_top10_energy": top10,
              "max_abs_error": worst, "shape": gray.shape}

    panels = [("original (grayscale)", gray)] + [(n, out[n]) for n in names] + \
             [("Sobel magnitude", magnitude)]
    fig, axes = _subplots(2, 4, figsize=(13, 5.4))
    for ax, (title, img) in zip(axes.ravel(), panels):
        img = img[1:-1, 1:-1]  # the zero padding makes a frame of false edges; leave it out
        # Filter responses are near 0 almost everywhere and large on a few edge pixels: a
        # scale set by the largest values leaves the edges faint.  Clip at the 98th
        # percentile instead, and draw |response| bright on black (the edge filter, the
        # Sobel magnitude) or the signed Sobel responses grey-centred (0 is mid grey).
        if title in ("sobel_x", "sobel_y"):
            lim = float(np.percentile(np.abs(img), 98))
            ax.imshow(img, cmap="gray", vmin=-lim, vmax=lim)
            title += " (signed, 0 = grey)"
        elif title in ("edge", "Sobel magnitude"):
            img = np.abs(img)
            ax.imshow(img, cmap="gray", vmin=0, vmax=float(np.percentile(img, 98)))
            title += " |response|" if title == "edge" else ""
        else:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    axes.ravel()[-1].axis("off")
    axes.ravel()[-1].text(0, 0.5, "responses clipped at their\n98th percentile of |value|,\n"
                          "so edges show", fontsize=10, va="center")
    files = []
    _save(fig, out_dir, "image_kernels.png", files)
    agree = "exactly" if worst == 0 else f"to {worst:.1g}"
    text = (f"On the {gray.shape[1]}x{gray.shape[0]} china.jpg photograph, conv2d_forward "
            f"matches a NumPy cross-correlation {agree}; the blur kernel cuts the mean "
            f"|Laplacian| (fine detail) from {values['sharpness_original']:.4f} to "
            f"{values['sharpness_blur']:.4f} and sharpen raises it to "
            f"{values['sharpness_sharpen']:.4f}, while the Sobel magnitude is concentrated on "
            f"edges: the top 10% of pixels carry {top10:.0%} of its energy.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- landscape
_CNN_FEATURES = 16 * 2 * 2


def _cnn_body():
    """Two conv-relu-pool stages on 8x8 digits: 64 features."""
    import nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten())


def _small_cnn():
    import nn
    return nn.Sequential(_cnn_body(), nn.Linear(_CNN_FEATURES, 10))


def landscape(out_dir, quick=False):
    """A 2-D filter-normalised slice around a trained small CNN, with its training path."""
    import nn
    from nn import landscape as L
    from nn.curvature import Objective, flat_params

    rng = _setup(0)
    x, y = _digits()
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    model = _small_cnn()
    loss_fn = nn.CrossEntropyLoss()
    steps, record_every = (10, 5) if quick else (500, 20)
    path = [flat_params(model)]
    opt = nn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def on_step(m, i):
        if (i + 1) % record_every == 0:
            path.append(flat_params(m))

    _train(model, loss_fn, opt, x_train, y_train, steps, 64, rng, on_step=on_step)
    path.append(flat_params(model))
    acc = _accuracy(model, x_test, y_test)
    n_eval = 100 if quick else 500
    obj = Objective.from_model(model, nn.CrossEntropyLoss(), x_train[:n_eval], y_train[:n_eval])
    w = obj.w0
    d1 = L.random_direction(obj, seed=1)
    d2 = L.random_direction(obj, seed=2)
    n_grid = 3 if quick else 21
    alphas = np.linspace(-1, 1, n_grid)
    grid = L.slice_2d(obj, d1, d2, alphas, alphas)
    coords, kept = L.project(path, w, d1, d2)
    files = [L.plot_contour(alphas, alphas, grid, os.path.join(out_dir, "slice_random.png"),
                            trajectory=coords,
                            title="filter-normalised random plane (path projected)")]
    # The plane that holds the most of the path: its two principal directions.
    u1, u2, share = L.pca_directions(path, w)
    pc, _ = L.project(path, w, u1, u2)
    lo, hi = pc.min(axis=0), pc.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    a_pca = np.linspace(lo[0] - 0.2 * span[0], hi[0] + 0.2 * span[0], n_grid)
    b_pca = np.linspace(lo[1] - 0.2 * span[1], hi[1] + 0.2 * span[1], n_grid)
    grid_pca = L.slice_2d(obj, u1, u2, a_pca, b_pca)
    files.append(L.plot_contour(a_pca, b_pca, grid_pca, os.path.join(out_dir, "slice_pca.png"),
                                trajectory=pc, title="plane of the path's two principal directions",
                                xlabel=f"PC1 ({share[0]:.0%})", ylabel=f"PC2 ({share[1]:.0%})"))
    # The straight line from the initial to the trained weights (a little beyond both ends).
    t = np.linspace(-0.25, 1.25, 7 if quick else 31)
    line = L.interpolate(obj, path[0], w, t)
    files.append(L.plot_line(t, {"initial -> trained": line},
                             os.path.join(out_dir, "line_init_to_trained.png"),
                             xlabel="t in (1 - t) w_init + t w_trained", logy=True,
                             title="loss along the straight line"))
    inside = line[(t >= 0) & (t <= 1)]
    monotone = bool(np.all(np.diff(inside) <= 0))
    centre = grid[n_grid // 2, n_grid // 2]
    border = np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])
    values = {"accuracy": acc, "centre_loss": float(centre),
              "border_median": float(np.median(border)),
              "grid_min": float(grid.min()), "path_kept_in_random_plane": float(kept[0]),
              "pca_share": float(share.sum()), "steps": steps, "line": line.tolist(),
              "line_monotone": monotone}
    lowest = ("the centre is the lowest point of the slice" if grid.min() == centre else
              f"the slice's lowest point, {grid.min():.3f}, is off centre")
    text = (f"Around the trained CNN (test accuracy {acc:.1%}) the loss on a filter-normalised "
            f"random plane rises from {centre:.3f} at the centre to a median "
            f"{np.median(border):.2f} "
            f"at distance 1 (one filter norm) and {lowest}; the way back to the initial weights "
            f"has only {kept[0]:.1%} of its length in that random plane, while the training "
            f"path's two principal directions hold {share.sum():.0%} of its variance; on the "
            f"straight line from the initial to the trained weights the loss falls "
            f"{'monotonically' if monotone else '(not monotonically)'} from {inside[0]:.3f} "
            f"to {inside[-1]:.3f}.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- curvature
def curvature(out_dir, quick=False):
    """Top Hessian eigenvalue over training, and what lr < 2 / lambda_max means."""
    import nn
    from nn.curvature import Objective, flat_params, max_stable_lr, set_flat_params, \
        top_eigenvalues

    rng = _setup(0)
    x, y = _digits(flat=True)
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    model = nn.models.MLP([64, 32, 10], activation="tanh").double()
    x_train = x_train.astype(np.float64)
    x_test = x_test.astype(np.float64)
    loss_fn = nn.CrossEntropyLoss()
    lr = 0.1
    opt = nn.optim.SGD(model.parameters(), lr=lr)
    n_eval = 200 if quick else len(x_train)
    checkpoints = [0, 5] if quick else [0, 50, 100, 200, 400, 800, 1200, 1600]
    lams, done = [], 0
    for step in checkpoints:
        _train(model, loss_fn, opt, x_train, y_train, step - done, 32, rng) if step > done else None
        done = step
        obj = Objective.from_model(model, loss_fn, x_train[:n_eval], y_train[:n_eval])
        lams.append(float(top_eigenvalues(obj, k=1, tol=1e-4,
                                          max_iter=10 if quick else 40).eigenvalues[0]))
    acc = _accuracy(model, x_test, y_test)
    lam = lams[-1]
    limit = max_stable_lr(lam)
    # Full-batch gradient descent from the trained weights, just under and over the limit.
    gd_steps = 5 if quick else 40
    obj = Objective.from_model(model, loss_fn, x_train[:n_eval], y_train[:n_eval])
    w0 = flat_params(model)
    runs = {}
    for factor in (0.8, 1.5):
        w = w0.copy()
        losses = []
        for _ in range(gd_steps):
            loss, g = obj(w)
            losses.append(loss)
            w = w - factor * limit * g
        losses.append(obj.loss(w))
        runs[factor] = losses
    set_flat_params(model, w0)
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(checkpoints, lams, "o-", label="lambda_max")
    ax1.axhline(2 / lr, color="r", ls="--", label=f"2 / lr (lr = {lr})")
    ax1.set_xlabel("SGD step")
    ax1.set_ylabel("top Hessian eigenvalue")
    ax1.set_yscale("log")
    ax1.set_title("sharpness during SGD (64-32-10 tanh MLP)", fontsize=10)
    ax1.legend()
    for factor, losses in runs.items():
        ax2.semilogy(losses, label=f"lr = {factor} x 2/lambda_max")
    ax2.set_xlabel("full-batch GD step from the trained weights")
    ax2.set_ylabel("training loss")
    ax2.set_title("gradient descent just under and over lr = 2/lambda_max", fontsize=10)
    ax2.legend()
    files = []
    _save(fig, out_dir, "curvature.png", files)
    values = {"lambdas": lams, "steps": checkpoints, "lambda_final": lam, "lr": lr,
              "limit": limit, "accuracy": acc,
              "gd_below_start": runs[0.8][0], "gd_below_end": runs[0.8][-1],
              "gd_above_end": runs[1.5][-1]}
    peak = int(np.argmax(lams))
    text = (f"During SGD (lr {lr}) on a 64-32-10 tanh MLP the top Hessian eigenvalue went from "
            f"{lams[0]:.3g} to a peak of {lams[peak]:.3g} (step {checkpoints[peak]}) and ended at "
            f"{lam:.3g} (test accuracy {acc:.1%}), so lr stayed below 2/lambda_max at every "
            f"checkpoint (at least {max_stable_lr(lams[peak]):.3g}; {limit:.3g} at the end); "
            f"from the trained weights, full-batch GD with "
            f"lr = 0.8 x 2/lambda_max takes the loss from {runs[0.8][0]:.4f} to "
            f"{runs[0.8][-1]:.4f} in {gd_steps} steps, while 1.5 x 2/lambda_max drives it to "
            f"{runs[1.5][-1]:.4g}.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- transfer
def transfer(out_dir, quick=False):
    """CNN body trained on digits 0-4, frozen, new head on 5-9, against training from scratch."""
    import nn

    rng = _setup(0)
    x, y = _digits()
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    first = y_train < 5
    loss_fn = nn.CrossEntropyLoss()
    pre_steps = 30 if quick else 400
    base = nn.Sequential(_cnn_body(), nn.Linear(_CNN_FEATURES, 5))
    _train(base, loss_fn, nn.optim.Adam(base.parameters(), lr=1e-2),
           x_train[first], y_train[first], pre_steps, 64, rng)
    acc_first = _accuracy(base, x_test[y_test < 5], y_test[y_test < 5])

    # The small budget: a few labelled examples per new class, a few full-batch steps.
    budgets = (3,) if quick else (1, 3, 10)
    steps = 15 if quick else 100
    xt, yt = x_test[y_test >= 5], y_test[y_test >= 5] - 5
    results = {"transfer": [], "scratch": []}
    for per_class in budgets:
        idx = np.concatenate([np.flatnonzero(y_train == c)[:per_class] for c in range(5, 10)])
        xs, ys = x_train[idx], y_train[idx] - 5
        for kind in results:
            nn.init.manual_seed(5)
            if kind == "transfer":
                body = base[0].freeze()
                lr = 3e-3  # lower than pre-training's: the features are already good
            else:
                body = _cnn_body()
                lr = 1e-2
            model = nn.Sequential(body, nn.Linear(_CNN_FEATURES, 5))
            trainable = [p for p in model.parameters() if p.requires_grad]
            _train(model, loss_fn, nn.optim.Adam(trainable, lr=lr), xs, ys, steps, len(xs), rng)
            results[kind].append(_accuracy(model, xt, yt))
    base[0].unfreeze()
    fig, ax = _subplots(figsize=(5, 3.5))
    for kind, accs in results.items():
        ax.plot(budgets, accs, "o-", label=kind)
    ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labelled examples per class (digits 5-9)")
    ax.set_ylabel("test accuracy on digits 5-9")
    ax.set_title(f"{steps} fine-tuning steps")
    ax.legend()
    files = []
    _save(fig, out_dir, "transfer.png", files)
    values = {"accuracy_0_4": acc_first, "budgets": list(budgets), "steps": steps,
              "transfer": results["transfer"], "scratch": results["scratch"]}
    per = ", ".join(f"{b}: {t:.1%} vs {s_:.1%}" for b, t, s_ in
                    zip(budgets, results["transfer"], results["scratch"]))
    wins = sum(t > s_ for t, s_ in zip(results["transfer"], results["scratch"]))
    if wins == len(budgets):
        verdict = "the transferred features win at every budget"
    elif wins == 0:
        verdict = ("training from scratch wins at every budget: on these easy 8x8 digits the "
                   "features learnt on 0-4 do not help")
    else:
        verdict = (f"transfer wins at {wins} of {len(budgets)} budgets: on these easy 8x8 digits "
                   f"the features learnt on 0-4 are about as good as what {steps} steps learn "
                   f"from scratch")
    text = (f"A CNN body trained on digits 0-4 ({acc_first:.1%} test accuracy there), frozen, "
            f"with a new head fine-tuned at a lower learning rate for {steps} steps, against "
            f"the same CNN trained from scratch on the same budget, test accuracy on 5-9 by "
            f"labelled examples per class (transfer vs scratch): {per}; {verdict}.")
    return Finding(text, values, files)


# ---------------------------------------------------------------------------- autoencoder
def autoencoder(out_dir, quick=False):
    """An autoencoder on digits with a 2-D code: reconstructions and the code scatter by label."""
    import nn
    from nn import plots

    rng = _setup(0)
    x, y = _digits()
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    model = nn.models.Autoencoder(input_shape=(1, 8, 8), code_size=2, hidden=(64, 32))
    loss_fn = nn.MSELoss()
    steps, lr = (100, 1e-2) if quick else (2000, 3e-3)
    _train(model, loss_fn, nn.optim.Adam(model.parameters(), lr=lr), x_train, y_train, steps,
           64, rng, target_is_input=True)
    model.eval()
    x_hat = K.to_host(model(x_test))
    codes = K.to_host(model.encode(x_test))
    codes_train = K.to_host(model.encode(x_train))
    model.train()
    mse = float(np.mean((x_hat - x_test) ** 2))
    baseline = float(np.mean((x_train.mean(axis=0) - x_test) ** 2))
    # 5-nearest-neighbour vote in code space: do the codes keep the labels apart?
    d = ((codes[:, None, :] - codes_train[None, :, :]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1)[:, :5]
    votes = np.array([np.bincount(y_train[row], minlength=10).argmax() for row in nearest])
    knn = float(np.mean(votes == y_test))
    files = [plots.plot_reconstructions(x_test, x_hat,
                                        os.path.join(out_dir, "reconstructions.png")),
             plots.plot_codes(codes, y_test, os.path.join(out_dir, "codes.png"))]
    values = {"mse": mse, "baseline_mse": baseline, "knn_accuracy": knn, "steps": steps}
    text = (f"With a 2-number code the autoencoder reconstructs test digits with mean squared "
            f"error {mse:.4f}, against {baseline:.4f} for always answering the mean image, and "
            f"the codes keep the digits apart: a 5-nearest-neighbour vote in the 2-D code space "
            f"labels {knn:.1%} of the test digits correctly (chance 10%).")
    return Finding(text, values, [str(f) for f in files])


# ---------------------------------------------------------------------------- xor
def xor(out_dir, quick=False):
    """A linear model cannot fit XOR; a two-layer MLP can. Decision regions."""
    import nn
    import nn.data

    rng = _setup(0)
    ds = nn.data.xor(n=400, noise=0.15, seed=0)
    x, y = ds.x, ds.y
    steps = 150 if quick else 500
    models = {"linear": nn.Linear(2, 2),
              "MLP 2-8-2": nn.models.MLP([2, 8, 2], activation="tanh")}
    acc = {}
    fig, axes = _subplots(1, 2, figsize=(9, 4))
    grid = np.linspace(-2, 2, 201, dtype=np.float32)
    gx, gy = np.meshgrid(grid, grid)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    for ax, (name, model) in zip(axes, models.items()):
        loss_fn = nn.CrossEntropyLoss()
        _train(model, loss_fn, nn.optim.Adam(model.parameters(), lr=0.05), x, y, steps, len(x),
               rng)
        acc[name] = _accuracy(model, x, y)
        region = _predict(model, points).argmax(axis=1).reshape(gx.shape)
        ax.contourf(gx, gy, region, levels=[-0.5, 0.5, 1.5], colors=["#cfe2f3", "#f4cccc"])
        ax.contour(gx, gy, region, levels=[0.5], colors="k", linewidths=1)
        for label, colour in ((0, "tab:blue"), (1, "tab:red")):
            ax.scatter(x[y == label, 0], x[y == label, 1], color=colour, s=6,
                       label=f"class {label} points")
        ax.set_title(f"{name}: accuracy {acc[name]:.1%}")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    from matplotlib.patches import Patch
    handles = axes[0].get_legend_handles_labels()[0] + [
        Patch(color="#cfe2f3", label="predicted class 0"),
        Patch(color="#f4cccc", label="predicted class 1")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    files = []
    _save(fig, out_dir, "decision_regions.png", files, tight=False)
    values = {"linear_accuracy": acc["linear"], "mlp_accuracy": acc["MLP 2-8-2"], "steps": steps}
    text = (f"On XOR (400 noisy points) a linear model reaches {acc['linear']:.1%} training "
            f"accuracy (no straight line puts more than 3 of the 4 clusters on the right side: "
            f"at most 75%), while a 2-8-2 tanh MLP fits it: {acc['MLP 2-8-2']:.1%}.")
    return Finding(text, values, files)


DEMOS = {
    "vanishing-gradients": vanishing_gradients,
    "zero-init": zero_init,
    "image-kernels": image_kernels,
    "landscape": landscape,
    "curvature": curvature,
    "transfer": transfer,
    "autoencoder": autoencoder,
    "xor": xor,
}


def run_demo(name, out_dir=None, quick=False):
    """Run demo ``name``, plots into ``out_dir`` (default runs/demo-NAME); returns the finding."""
    if name not in DEMOS:
        raise ValueError(f"name: unknown demo {name!r}; expected one of {sorted(DEMOS)}")
    out_dir = os.path.join("runs", f"demo-{name}") if out_dir is None else os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    finding = DEMOS[name](out_dir, quick=quick)
    finding.values["seconds"] = time.perf_counter() - start
    finding.values["out_dir"] = out_dir
    return finding


# ---------------------------------------------------------------------------- command line
def add_arguments(parser):
    """The ``demo`` subcommand's arguments (``nn.cli`` calls this)."""
    parser.add_argument("name", choices=list(DEMOS), metavar="NAME",
                        help="one of: " + ", ".join(DEMOS))
    parser.add_argument("--out", default=None,
                        help="folder for the plots (default: runs/demo-NAME)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny budget (seconds): a smoke test, not the finding")


def run_cli(args, out=None):
    """Run the demo named in ``args``, print its finding and where the plots are; exit code."""
    import sys
    out = sys.stdout if out is None else out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("python -m nn demo: error: the demos draw plots and need matplotlib "
              "(pip install '.[plot]')", file=sys.stderr)
        return 1
    finding = run_demo(args.name, args.out, quick=args.quick)
    print(finding, file=out)
    print(f"plots written to {finding.values['out_dir']}: "
          f"{', '.join(os.path.basename(f) for f in finding.files)} "
          f"({finding.values['seconds']:.0f} s)", file=out)
    return 0
