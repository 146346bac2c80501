"""Landscape slices against closed forms on a quadratic; normalisation, projections, plots."""
import numpy as np
import pytest

from nn import landscape as L

from curvature_models import quadratic, tiny_mlp

EIGS = np.array([4.0, 2.0, 1.0, 0.5, -0.5])


def test_filter_normalize_matches_each_filter_norm(rng):
    shapes = [(3, 2, 2), (3,), (2, 3)]
    w = rng.standard_normal(12 + 3 + 6)
    d = rng.standard_normal(w.size)
    d_before = d.copy()
    out = L.filter_normalize(d, w, shapes)
    w_parts = [w[:12].reshape(3, 4), w[15:].reshape(2, 3)]
    d_parts = [d[:12].reshape(3, 4), d[15:].reshape(2, 3)]
    o_parts = [out[:12].reshape(3, 4), out[15:].reshape(2, 3)]
    for wp, dp, op in zip(w_parts, d_parts, o_parts):
        np.testing.assert_allclose(np.linalg.norm(op, axis=1), np.linalg.norm(wp, axis=1))
        # each filter keeps its direction: only its length changes
        cos = np.sum(op * dp, axis=1) / np.linalg.norm(op, axis=1) / np.linalg.norm(dp, axis=1)
        np.testing.assert_allclose(cos, 1.0)
    np.testing.assert_array_equal(out[12:15], 0.0)  # biases ignored by default
    whole = L.filter_normalize(d, w, shapes, bias="filter")
    assert np.linalg.norm(whole[12:15]) == pytest.approx(np.linalg.norm(w[12:15]))
    np.testing.assert_array_equal(d, d_before)  # the input is not rescaled in place
    zero_w = w.copy()
    zero_w[:4] = 0.0  # a dead filter gets a zero direction, not a division by zero
    np.testing.assert_array_equal(L.filter_normalize(d, zero_w, shapes)[:4], 0.0)
    with pytest.raises(ValueError, match="bias"):
        L.filter_normalize(d, w, shapes, bias="keep")
    with pytest.raises(ValueError, match="direction: expected shape"):
        L.filter_normalize(d[:5], w, shapes)


def test_random_direction_is_seeded_and_normalised():
    obj, _ = tiny_mlp()
    d1 = L.random_direction(obj, seed=3)
    np.testing.assert_array_equal(d1, L.random_direction(obj, seed=3))
    assert not np.array_equal(d1, L.random_direction(obj, seed=4))
    W1 = obj.split(obj.w0)[0]
    np.testing.assert_allclose(np.linalg.norm(obj.split(d1)[0], axis=1), np.linalg.norm(W1, axis=1))
    np.testing.assert_array_equal(obj.split(d1)[1], 0.0)
    # a plain objective is one filter: the direction has the norm of w
    q, _ = quadratic(EIGS)
    assert np.linalg.norm(L.random_direction(q, seed=0)) == pytest.approx(np.linalg.norm(q.w0))
    raw = L.random_direction(q, seed=0, filter_normalized=False)
    np.testing.assert_array_equal(raw, np.random.default_rng(0).standard_normal(q.size))


def test_slices_of_a_quadratic_match_the_closed_form(rng):
    obj, A = quadratic(EIGS)
    w = obj.w0
    g = obj.grad(w)
    f0 = obj.loss(w)
    d1, d2 = rng.standard_normal((2, w.size))
    alphas = np.linspace(-1, 1, 7)
    betas = np.linspace(-0.5, 1.5, 5)
    line = L.slice_1d(obj, d1, alphas)
    np.testing.assert_allclose(line, f0 + alphas * (g @ d1) + 0.5 * alphas ** 2 * (d1 @ A @ d1),
                               rtol=1e-12, atol=1e-12)
    grid = L.slice_2d(obj, d1, d2, alphas, betas)
    assert grid.shape == (5, 7)
    a, b = np.meshgrid(alphas, betas)
    expect = (f0 + a * (g @ d1) + b * (g @ d2) + 0.5 * a ** 2 * (d1 @ A @ d1)
              + a * b * (d1 @ A @ d2) + 0.5 * b ** 2 * (d2 @ A @ d2))
    np.testing.assert_allclose(grid, expect, rtol=1e-12, atol=1e-12)
    assert grid[1, 3] == pytest.approx(f0)  # beta 0 is row 1, alpha 0 is column 3


def test_interpolation_between_two_points(rng):
    obj, _ = quadratic(EIGS)
    w_a = obj.w0
    w_b = rng.standard_normal(obj.size)
    alphas = np.array([-0.5, 0.0, 0.3, 1.0, 1.5])
    out = L.interpolate(obj, w_a, w_b, alphas)
    expect = [obj.loss((1 - a) * w_a + a * w_b) for a in alphas]
    np.testing.assert_allclose(out, expect, rtol=1e-12)
    assert out[1] == obj.loss(w_a) and out[3] == pytest.approx(obj.loss(w_b), rel=1e-12)
    with pytest.raises(ValueError, match="w_b: expected 5 values"):
        L.interpolate(obj, w_a, w_b[:3], alphas)


def test_project_recovers_coordinates_and_measures_what_is_left(rng):
    w = rng.standard_normal(10)
    d1, d2 = rng.standard_normal((2, 10))
    coords = rng.standard_normal((6, 2))
    points = w + coords @ np.stack([d1, d2])
    got, kept = L.project(points, w, d1, d2)
    np.testing.assert_allclose(got, coords, atol=1e-12)
    np.testing.assert_allclose(kept, 1.0)
    # a displacement orthogonal to the plane is invisible in it
    normal = rng.standard_normal(10)
    B = np.stack([d1, d2], axis=1)
    normal -= B @ np.linalg.lstsq(B, normal, rcond=None)[0]
    got, kept = L.project([w + normal, w + normal + d1], w, d1, d2)
    np.testing.assert_allclose(got, [[0, 0], [1, 0]], atol=1e-12)
    assert kept[0] == pytest.approx(0.0, abs=1e-12)
    assert kept[1] == pytest.approx(np.linalg.norm(d1) / np.linalg.norm(normal + d1))


def test_pca_directions_of_a_straight_path(rng):
    w = rng.standard_normal(8)
    line = rng.standard_normal(8)
    side = rng.standard_normal(8)
    t = np.linspace(0, 1, 12)
    path = w + np.outer(t, line) + 1e-3 * np.outer(np.sin(7 * t), side)
    u1, u2, share = L.pca_directions(path, w)
    assert abs(u1 @ line) / np.linalg.norm(line) == pytest.approx(1.0, abs=1e-5)
    assert abs(u1 @ u2) < 1e-12 and np.linalg.norm(u2) == pytest.approx(1.0)
    assert share[0] > 0.999999 and share[1] < 1e-6


def test_model_objective_slice_passes_through_the_current_loss():
    obj, loss = tiny_mlp()
    d = L.random_direction(obj, seed=1)
    out = L.slice_1d(obj, d, [0.0, 0.5])
    assert out[0] == loss(obj.w0)
    assert out[1] == loss(obj.w0 + 0.5 * d)


def test_plots_write_images(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    obj, _ = quadratic(EIGS)
    d1 = L.random_direction(obj, seed=0)
    d2 = L.random_direction(obj, seed=1)
    alphas = np.linspace(-1, 1, 9)
    grid = L.slice_2d(obj, d1, d2, alphas, alphas)
    grid = grid - grid.min() + 0.1  # positive, for the log-scaled contour levels
    p1 = L.plot_contour(alphas, alphas, grid, tmp_path / "sub" / "c.png",
                        trajectory=np.array([[0.5, 0.5], [0.1, 0.2], [0, 0]]), title="t")
    p2 = L.plot_line(alphas, {"d1": grid[4], "d2": grid[:, 4]}, tmp_path / "l.png", logy=True)
    for p in (p1, p2):
        img = plt.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas
