"""Synthetic vision / non-text data: digit glyphs and their videos, clustered point sets, K-lines."""

import collections
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data._glyphs import GLYPH_FONT, glyphs, moving_glyphs, render_glyphs
from tokjax.data._klines import OHLCV, klines
from tokjax.data._point_sets import count_clusters, point_sets, valid_point_sets


# ----------------------------------------------------------------------------------------- glyphs
def test_glyphs_shapes_ranges_and_labels():
    g = glyphs(300, size=16, seed=0)
    assert g.images.shape == (300, 16, 16) and g.images.dtype == np.float32
    assert g.images.min() >= 0 and g.images.max() <= 1
    assert g.labels.dtype == np.int32 and set(g.labels.tolist()) == set(range(10))
    for a in (g.left, g.top, g.large):
        assert a.dtype == bool and 0.3 < a.mean() < 0.7
    assert (g.images.reshape(300, -1).max(1) > 0.5).all() and (g.images.reshape(300, -1).sum(1) > 5).all()
    assert len(g) == 300


def test_glyphs_deterministic_by_seed():
    a, b, c = glyphs(20, seed=3), glyphs(20, seed=3), glyphs(20, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


@settings(max_examples=10)
@given(n=st.integers(1, 12), k=st.integers(0, 12), seed=st.integers(0, 2**31), size=st.sampled_from([8, 16, 24]))
def test_glyphs_prefix_stable(n, k, seed, size):
    k = min(k, n)
    big, small = glyphs(n, size=size, seed=seed), glyphs(k, size=size, seed=seed)
    np.testing.assert_array_equal(big.images[:k], small.images)
    np.testing.assert_array_equal(big.x[:k], small.x)


def test_render_at_unit_scale_is_the_bitmap():
    # cell centres on pixel centres, stroke radius 1/2: thresholding at 1/2 gives the font back
    img = render_glyphs(np.arange(10), 2.5 + 2, 3.5 + 3, 1.0, 0.0, 0.0, 0.5, size=12)
    for d in range(10):
        want = np.zeros((12, 12), bool)
        want[3:10, 2:7] = GLYPH_FONT[d]
        np.testing.assert_array_equal(img[d] > 0.5, want, err_msg=f"digit {d}")
    # '1' has no diagonal stroke: its rendering is exactly the 0/1 bitmap
    np.testing.assert_array_equal(img[1][3:10, 2:7], GLYPH_FONT[1].astype(np.float32))


@settings(max_examples=15)
@given(d=st.integers(0, 9), angle=st.floats(-0.5, 0.5), shear=st.floats(-0.3, 0.3),
       dx=st.floats(-2, 2), dy=st.floats(-2, 2), scale=st.floats(5.0, 6.0))
def test_render_follows_the_documented_affine_map(d, angle, shear, dx, dy, scale):
    # p = c + scale R(angle) [[1, shear], [0, 1]] (g - g0): at 64 px and a thin stroke the pixel under every
    # mapped on-cell centre is full ink and the pixel under every mapped off-cell centre is empty.
    size, c = 64, np.array([32 + dx, 32 + dy])
    img = render_glyphs([d], c[0], c[1], scale, angle, shear, 0.3, size=size)[0]
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    m = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    for r, col in itertools.product(range(7), range(5)):
        p = c + m @ (np.array([col, r]) - np.array([2.0, 3.0]))
        value = img[int(p[1]), int(p[0])]
        assert value == (1.0 if GLYPH_FONT[d, r, col] else 0.0), (r, col, value)


def _ink_is_whole(images, x, y, size, **shape):
    """Returns bool [n]: redrawing on a canvas 3x larger (same relative spot) adds no ink."""
    big = render_glyphs(x=x + size, y=y + size, size=3 * size, **shape)
    return np.isclose(big.reshape(len(x), -1).sum(1), images.reshape(len(x), -1).sum(1), rtol=1e-5, atol=1e-3)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31), size=st.sampled_from([8, 16, 32]))
def test_glyph_placement_labels_are_exact(seed, size):
    g = glyphs(100, size=size, seed=seed)
    mid, gap = size / 2, 0.03 * size - 1e-4
    np.testing.assert_array_equal(g.left, g.x < mid)
    np.testing.assert_array_equal(g.top, g.y < mid)
    assert (np.abs(g.x - mid) >= gap).all() and (np.abs(g.y - mid) >= gap).all()
    height = g.scale * 7 / size
    assert ((height >= 0.62 - 1e-6) & (height <= 0.72 + 1e-6) | ~g.large).all()
    assert ((height >= 0.42 - 1e-6) & (height <= 0.52 + 1e-6) | g.large).all()
    shape = dict(digits=g.labels, scale=g.scale, angle=g.angle, shear=g.shear, thickness=g.thickness)
    assert _ink_is_whole(g.images, g.x, g.y, size, **shape).all()  # no glyph is cut by the canvas edge
    redraw = render_glyphs(g.labels, g.x, g.y, size=size, scale=g.scale, angle=g.angle, shear=g.shear,
                           thickness=g.thickness)
    np.testing.assert_allclose(redraw, g.images, atol=2e-5)


def test_glyph_captions_and_fixed_digits():
    g = glyphs(40, seed=1, digits=np.arange(40) % 10)
    np.testing.assert_array_equal(g.labels, np.arange(40) % 10)
    caps = g.captions()
    assert len(caps) == 40
    for cap, d, lf, tp, lg in zip(caps, g.labels, g.left, g.top, g.large):
        assert cap == f"{d} {'left' if lf else 'right'} {'top' if tp else 'bottom'} {'large' if lg else 'small'}"


def test_glyph_noise():
    clean, noisy = glyphs(30, seed=2), glyphs(30, seed=2, noise=0.1)
    assert noisy.images.min() >= 0 and noisy.images.max() <= 1
    diff = noisy.images - clean.images
    assert 0.03 < np.abs(diff).mean() < 0.1
    np.testing.assert_array_equal(noisy.labels, clean.labels)


def test_moving_glyphs_constant_velocity_and_whole_frames():
    v = moving_glyphs(50, frames=5, size=16, seed=0)
    assert v.videos.shape == (50, 5, 16, 16) and v.videos.dtype == np.float32
    assert v.videos.min() >= 0 and v.videos.max() <= 1
    np.testing.assert_allclose(np.diff(v.x, axis=1), np.repeat(v.velocity[:, :1], 4, 1), atol=1e-4)
    np.testing.assert_allclose(np.diff(v.y, axis=1), np.repeat(v.velocity[:, 1:], 4, 1), atol=1e-4)
    rep = lambda a: np.repeat(a, 5)  # noqa: E731
    shape = dict(digits=rep(v.labels), scale=rep(v.scale), angle=rep(v.angle), shear=rep(v.shear),
                 thickness=rep(v.thickness))
    frames = v.videos.reshape(-1, 16, 16)
    assert _ink_is_whole(frames, v.x.reshape(-1), v.y.reshape(-1), 16, **shape).all()
    redraw = render_glyphs(x=v.x.reshape(-1), y=v.y.reshape(-1), size=16, **shape)
    np.testing.assert_allclose(redraw, frames, atol=2e-5)
    assert np.abs(v.velocity).max() > 0.5  # they do move
    w = moving_glyphs(3, frames=5, seed=0)
    np.testing.assert_array_equal(w.videos, v.videos[:3])
    assert moving_glyphs(2, frames=1, seed=0).videos.shape == (2, 1, 16, 16)


@pytest.mark.parametrize("call, match", [
    (lambda: glyphs(-1), "n must be"),
    (lambda: glyphs(2.5), "n must be"),
    (lambda: glyphs(4, size=7), "size must be >= 8"),
    (lambda: glyphs(3, digits=[1, 2]), r"shape \[3\]"),
    (lambda: glyphs(2, digits=[1, 10]), r"\[0, 9\]"),
    (lambda: glyphs(2, digits=[1.0, 2.0]), "integers"),
    (lambda: glyphs(2, noise=-0.1), "noise"),
    (lambda: glyphs(2, noise=float("nan")), "noise"),
    (lambda: moving_glyphs(2, frames=0), "frames must be"),
    (lambda: moving_glyphs(-2), "n must be"),
    (lambda: render_glyphs([1], 8, 8, 0.0), "scale and thickness"),
    (lambda: render_glyphs([1, 2], [8, 8, 8], 8, 1.0), "x must be"),
    (lambda: render_glyphs([1], float("nan"), 8, 1.0), "finite"),
])
def test_glyph_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_glyphs_empty():
    assert glyphs(0).images.shape == (0, 16, 16)
    assert moving_glyphs(0, frames=3).videos.shape == (0, 3, 16, 16)


# ------------------------------------------------------------------------------------- point sets
def _components_bfs(occ: np.ndarray, full: bool) -> int:
    """Oracle: connected components of one grid by breadth-first search."""
    dims = occ.ndim
    steps = [o for o in itertools.product((-1, 0, 1), repeat=dims) if any(o) and (full or sum(map(abs, o)) == 1)]
    seen = np.zeros_like(occ, bool)
    count = 0
    for start in zip(*np.nonzero(occ)):
        if seen[start]:
            continue
        count += 1
        seen[start] = True
        queue = collections.deque([start])
        while queue:
            c = queue.popleft()
            for o in steps:
                nb = tuple(a + b for a, b in zip(c, o))
                if all(0 <= v < s for v, s in zip(nb, occ.shape)) and occ[nb] and not seen[nb]:
                    seen[nb] = True
                    queue.append(nb)
    return count


@pytest.mark.parametrize("dims", [2, 3])
def test_point_sets_labels_are_cluster_counts(dims):
    p = point_sets(300, grid=8, seed=0, dims=dims)
    assert p.occupancy.shape == (300,) + (8,) * dims and p.occupancy.dtype == bool
    assert set(p.labels.tolist()) == {1, 2, 3, 4}
    np.testing.assert_array_equal(count_clusters(p.occupancy), p.labels)
    np.testing.assert_array_equal(count_clusters(p.occupancy, connectivity="face"), p.labels)
    assert valid_point_sets(p.points, p.num_points, p.labels, 8).all()
    for i in range(300):
        k = p.num_points[i]
        pts = p.points[i, :k]
        assert (p.points[i, k:] == -1).all() and (p.cluster_ids[i, k:] == -1).all()
        assert p.occupancy[i][tuple(pts.T)].all() and p.occupancy[i].sum() == k
        flat = np.ravel_multi_index(tuple(pts.T), (8,) * dims)
        assert (np.diff(flat) > 0).all()  # raster order, distinct
        ids = p.cluster_ids[i, :k]
        assert set(ids.tolist()) == set(range(p.labels[i]))
        cheb = np.abs(pts[:, None] - pts[None]).max(-1)
        assert (cheb[ids[:, None] != ids[None]] >= 2).all()  # clusters never touch
        for j in range(p.labels[i]):  # each cluster is face-connected
            one = np.zeros((8,) * dims, bool)
            one[tuple(pts[ids == j].T)] = True
            assert _components_bfs(one, full=False) == 1
    sizes = p.num_points / p.labels
    assert sizes.min() >= 1 and sizes.max() <= 8


def test_point_sets_deterministic():
    a, b = point_sets(30, seed=5), point_sets(30, seed=5)
    np.testing.assert_array_equal(a.occupancy, b.occupancy)
    assert not np.array_equal(a.occupancy, point_sets(30, seed=6).occupancy)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31), dims=st.sampled_from([2, 3]), density=st.floats(0.05, 0.6),
       g=st.integers(1, 6), full=st.booleans())
def test_count_clusters_matches_bfs(seed, dims, density, g, full):
    occ = np.random.default_rng(seed).random((4,) + (g,) * dims) < density
    want = [_components_bfs(o, full) for o in occ]
    got = count_clusters(occ, connectivity="full" if full else "face")
    np.testing.assert_array_equal(got, want)


def test_count_clusters_snake():
    # one long path: many propagation rounds; 2-D full vs face adjacency differ on a diagonal
    occ = np.zeros((1, 9, 9), bool)
    occ[0, ::2, :] = True
    occ[0, 1::4, -1] = True
    occ[0, 3::4, 0] = True
    assert count_clusters(occ)[0] == 1 and _components_bfs(occ[0], True) == 1
    diag = np.eye(5, dtype=bool)[None]
    assert count_clusters(diag)[0] == 1 and count_clusters(diag, connectivity="face")[0] == 5


def test_valid_point_sets_rejects_duplicates_off_grid_and_wrong_counts():
    p = point_sets(20, grid=8, seed=1)
    ok = valid_point_sets(p.points, p.num_points, p.labels, 8)
    assert ok.all()
    pts = p.points.copy()
    pts[0, 1] = pts[0, 0]  # duplicate point
    pts[1, 0] = (8, 0, 0)  # off the grid
    pts[2, 0] = (-1, 0, 0)  # negative
    labels = p.labels.copy()
    labels[3] = labels[3] % 4 + 1  # wrong count
    got = valid_point_sets(pts, p.num_points, labels, 8)
    assert not got[:4].any() and got[4:].all()
    # padding beyond num_points is ignored, even off the grid
    pts = p.points.copy()
    pts[:, -1] = 99
    wider = np.concatenate([p.points, np.full((20, 1, 3), 99)], 1)
    assert valid_point_sets(wider, p.num_points, p.labels, 8).all()
    assert valid_point_sets(np.zeros((1, 0, 3), int), [0], [0], 8).all()  # the empty set has 0 clusters


@pytest.mark.parametrize("call, match", [
    (lambda: point_sets(-1), "n must be"),
    (lambda: point_sets(2, grid=2), "grid must be >= 3"),
    (lambda: point_sets(2, dims=4), "dims must be 2 or 3"),
    (lambda: point_sets(2, max_clusters=0), "max_clusters"),
    (lambda: point_sets(2, cluster_size=(3, 2)), "lo <= hi"),
    (lambda: point_sets(2, cluster_size=(0, 2)), "cluster_size"),
    (lambda: point_sets(2, cluster_size=3), "cluster_size"),
    (lambda: point_sets(20, grid=3, dims=2, cluster_size=(4, 4)), "no room"),
    (lambda: count_clusters(np.zeros((2, 3))), "shape"),
    (lambda: count_clusters(np.full((1, 3, 3), 2)), "boolean"),
    (lambda: count_clusters(np.zeros((1, 3, 3), bool), connectivity="edge"), "connectivity"),
    (lambda: valid_point_sets(np.zeros((2, 3)), [0, 0], [1, 1], 8), "points must be"),
    (lambda: valid_point_sets(np.zeros((2, 3, 3)), [0, 0], [1, 1], 8), "integer"),
    (lambda: valid_point_sets(np.zeros((2, 3, 3), int), [4, 0], [1, 1], 8), "num_points"),
    (lambda: valid_point_sets(np.zeros((2, 3, 3), int), [1], [1, 1], 8), "shape"),
])
def test_point_set_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------- k-lines
def test_klines_ohlc_consistency_and_shapes():
    k = klines(64, 200, seed=0)
    assert OHLCV == ("open", "high", "low", "close", "volume")
    assert k.ohlcv.shape == (64, 200, 5) and k.variance.shape == (64, 200) and k.regimes.shape == (64, 200)
    o, h, l, c, v = np.moveaxis(k.ohlcv, -1, 0)
    assert (l <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all() and (l > 0).all()
    assert (v > 0).all() and np.isfinite(k.ohlcv).all()
    np.testing.assert_allclose(o[:, 0], 100.0)
    np.testing.assert_allclose(c[:, :-1], o[:, 1:], rtol=1e-12)  # no gaps: each bar opens at the last close
    np.testing.assert_allclose(np.log(c / o), k.log_returns, atol=1e-12)
    assert set(np.unique(k.regimes).tolist()) == {0, 1}


def test_klines_garch_recursion_is_exact():
    vol, mu, alpha, beta = np.array([0.01, 0.02, 0.04]), np.array([1e-3, 0.0, -2e-3]), 0.1, 0.85
    k = klines(16, 300, seed=2, vol=vol, mu=mu, alpha=alpha, beta=beta, stay=0.9)
    s, h = k.regimes, k.variance
    z = (k.log_returns - (mu[s] - h / 2)) / np.sqrt(h)
    np.testing.assert_allclose(k.drift, mu[s] - h / 2)
    np.testing.assert_allclose(h[:, 0], vol[s[:, 0]] ** 2)
    g = h / vol[s] ** 2  # the unit-mean GARCH(1,1) factor
    want = (1 - alpha - beta) + alpha * g[:, :-1] * z[:, :-1] ** 2 + beta * g[:, :-1]
    np.testing.assert_allclose(g[:, 1:], want, rtol=1e-9)
    # within a regime it is plain GARCH(1,1) on the shocks eps = sqrt(h) z
    same = s[:, 1:] == s[:, :-1]
    omega = vol[s[:, 1:]] ** 2 * (1 - alpha - beta)
    garch = omega + alpha * h[:, :-1] * z[:, :-1] ** 2 + beta * h[:, :-1]
    np.testing.assert_allclose(h[:, 1:][same], garch[same], rtol=1e-9)
    stays = (s[:, 1:] == s[:, :-1]).mean()
    assert abs(stays - 0.9) < 0.02


def test_klines_sample_variance_tracks_true_variance():
    k = klines(400, 250, seed=1)
    z = k.standardized_returns
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.02
    assert abs(np.mean(z**4) - 3) < 0.1  # Gaussian given the variance
    # bin bars by their true variance: in each decile the mean squared return (about its drift) matches it
    r, h = k.log_returns - k.drift, k.variance
    edges = np.quantile(h, np.linspace(0, 1, 11)[1:-1])
    bins = np.digitize(h, edges)
    ratios = np.array([(r[bins == b] ** 2).mean() / h[bins == b].mean() for b in range(10)])
    assert np.all(np.abs(ratios - 1) < 0.06), ratios
    # volatility clusters: squared returns are autocorrelated, standardized ones are not
    sq = (r**2).reshape(-1, 250)
    zz = (z**2).reshape(-1, 250)
    ac = lambda a: np.corrcoef(a[:, 1:].ravel(), a[:, :-1].ravel())[0, 1]  # noqa: E731
    assert ac(sq) > 0.05 and abs(ac(zz)) < 0.01
    # the turbulent regime is more volatile in the sample too
    ratio = r[k.regimes == 1].var() / r[k.regimes == 0].var()
    assert 5 < ratio < 7.5, ratio  # (0.025 / 0.01)^2 = 6.25


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31), alpha=st.floats(0, 0.3), beta=st.floats(0, 0.69), ticks=st.integers(1, 8),
       bars=st.integers(1, 30), n=st.integers(1, 5), k=st.integers(0, 5))
def test_klines_consistent_for_any_parameters(seed, alpha, beta, ticks, bars, n, k):
    kl = klines(n, bars, seed=seed, alpha=alpha, beta=beta, ticks=ticks)
    o, h, l, c, v = np.moveaxis(kl.ohlcv, -1, 0)
    assert (l <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all() and (l > 0).all() and (v > 0).all()
    assert (kl.variance > 0).all()
    k = min(k, n)
    np.testing.assert_array_equal(klines(k, bars, seed=seed, alpha=alpha, beta=beta, ticks=ticks).ohlcv,
                                  kl.ohlcv[:k])


def test_klines_deterministic_and_single_regime():
    np.testing.assert_array_equal(klines(3, 20, seed=7).ohlcv, klines(3, 20, seed=7).ohlcv)
    assert not np.array_equal(klines(3, 20, seed=7).ohlcv, klines(3, 20, seed=8).ohlcv)
    one = klines(4, 50, seed=0, vol=0.02, mu=0.0)
    assert (one.regimes == 0).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=-1), "n must be"),
    (dict(bars=0), "bars must be"),
    (dict(ticks=0), "ticks must be"),
    (dict(alpha=0.2, beta=0.8), "alpha \\+ beta"),
    (dict(alpha=-0.1), "alpha"),
    (dict(vol=(0.01, 0.0)), "vol must be > 0"),
    (dict(vol=(0.01, 0.02), mu=(0.0,)), "one entry per regime"),
    (dict(vol=()), "vol must be"),
    (dict(stay=1.5), "stay"),
    (dict(price=0.0), "price"),
    (dict(volume=-1.0), "volume"),
    (dict(mu=float("nan")), "finite"),
])
def test_klines_bad_input(kwargs, match):
    args = dict(n=2, bars=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        klines(**args)
