"""What the figures show: titles, the kept epoch, colour scales, the landscape path, legends."""
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from nn import landscape as L  # noqa: E402
from nn import plots  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved through nn.plots.save, kept for inspection (and still written)."""
    saved = []
    real = plots.save

    def keep(fig, path, **kw):
        saved.append(fig)
        return real(fig, path, **kw)

    monkeypatch.setattr(plots, "save", keep)
    return saved


def _history():
    return [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e + (0.3 if e > 3 else 0),
             "train_accuracy": 0.5 + e / 20, "val_accuracy": 0.5 + e / 25} for e in range(1, 7)]


def test_curves_are_titled_and_mark_the_kept_epoch(figures, tmp_path):
    path = plots.plot_history(_history(), str(tmp_path / "c.png"), title="lenet on digits",
                              best_epoch=3)
    assert os.path.getsize(path) > 1000
    fig = figures[-1]
    assert fig._suptitle.get_text() == "lenet on digits"
    for ax in fig.axes:
        kept = [line for line in ax.get_lines() if line.get_label() == "kept: epoch 3"]
        assert len(kept) == 1 and list(kept[0].get_xdata()) == [3, 3]


def test_filters_share_one_symmetric_scale_with_a_colorbar(figures, tmp_path):
    w = np.random.default_rng(0).standard_normal((6, 1, 5, 5))
    w[2] *= 4
    plots.plot_filters(w, str(tmp_path / "f.png"))
    fig = figures[-1]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 6
    lim = np.abs(w).max()
    assert all(im.get_clim() == pytest.approx((-lim, lim)) for im in images)
    assert len(fig.axes) == 7 and fig.axes[-1].get_ylabel() == "weight"   # the colorbar


def test_a_linear_layer_on_tabular_rows_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="plot_filters"):
        plots.plot_filters(np.zeros((4, 5)), str(tmp_path / "f.png"), input_shape=(5,))


def test_a_tiny_landscape_path_gets_a_magnified_inset(figures, tmp_path):
    a = np.linspace(-1, 1, 5)
    grid = np.exp(np.add.outer(a ** 2, a ** 2))
    tiny = np.cumsum(np.full((8, 2), 1e-4), axis=0)
    L.plot_contour(a, a, grid, str(tmp_path / "small.png"), trajectory=tiny)
    main = figures[-1].axes[0]
    [inset] = main.child_axes
    assert "path magnified" in inset.get_title()
    assert inset.get_xlim()[1] - inset.get_xlim()[0] < 1e-2      # zoomed on the path
    wide = np.stack([np.linspace(-0.8, 0, 8), np.linspace(0.5, 0, 8)], axis=1)
    L.plot_contour(a, a, grid, str(tmp_path / "big.png"), trajectory=wide)
    assert not figures[-1].axes[0].child_axes                     # visible as it is


def test_decision_regions_have_axis_labels_and_a_legend(figures, tmp_path):
    from nn.demos import run_demo

    run_demo("xor", tmp_path / "xor", quick=True)
    fig = figures[-1]
    for ax in fig.axes:
        assert ax.get_xlabel() == "x1" and ax.get_ylabel() == "x2"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["class 0 points", "class 1 points", "predicted class 0",
                      "predicted class 1"]


def test_no_plot_code_switches_the_global_backend():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    offenders = []
    for folder in ("nn", "benchmarks", "kernels"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.endswith(".py"):
                text = open(os.path.join(root, folder, name), encoding="utf-8").read()
                if "matplotlib.use(" in text or "import matplotlib.pyplot" in text:
                    offenders.append(f"{folder}/{name}")
    assert not offenders, offenders
