"""Tests of tokjax.metrics.frechet: zero on identical sets, symmetry, Gaussian closed forms, a scipy
sqrtm oracle, monotonicity in added noise, invariances, bootstrap SE and bad-input errors."""

import importlib.util

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokjax.metrics.frechet import bootstrap_se, frechet_distance, frechet_from_stats

HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def _features(seed, n, f, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(f, f))
    return scale * (rng.normal(size=(n, f)) @ mix + rng.normal(size=f))


def _scipy_fd(mu1, s1, mu2, s2):
    """The reference FID formula (pytorch-fid style) with scipy's general matrix square root."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _random_spd(rng, f, rank=None):
    a = rng.normal(size=(f, rank or f))
    return a @ a.T / (rank or f) + (0 if rank else 0.1 * np.eye(f))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
@pytest.mark.parametrize("n,f", [(2, 1), (5, 16), (500, 64), (40, 64)])  # 40 < 64: singular covariance
def test_identical_sets_give_zero(n, f, scale):
    x = _features(0, n, f, scale)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-6)  # row order is irrelevant


@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), m=st.integers(2, 60), f=st.integers(1, 12))
def test_symmetric(seed, n, m, f):
    x, y = _features(seed, n, f), _features(seed + 1, m, f) + 0.5
    a, b = frechet_distance(x, y), frechet_distance(y, x)
    assert a >= 0.0
    assert a == pytest.approx(b, rel=1e-8, abs=1e-8)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, v1) and N(m2, v2) = (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
    assert frechet_from_stats([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)


@given(seed=st.integers(0, 10_000), f=st.integers(1, 10))
def test_commuting_covariances_closed_form(seed, f):
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    a, b = rng.uniform(0, 3, f), rng.uniform(0, 3, f)
    a[0] = 0.0  # a singular covariance is fine
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_from_stats(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-6)  # sqrt of a rounded 0 eigenvalue: ~sqrt(eps)


def test_samples_of_known_gaussians_match_the_closed_form():
    rng = np.random.default_rng(3)
    f, n = 4, 200_000
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 3.0])
    x = mu1 + sd1 * rng.normal(size=(n, f))
    y = mu2 + sd2 * rng.normal(size=(n, f))
    want = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)  # = 1.25 + 5.25 = 6.5
    assert want == pytest.approx(6.5)
    assert frechet_distance(x, y) == pytest.approx(want, rel=0.01)


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy is not installed")
@given(seed=st.integers(0, 10_000), f=st.integers(1, 12))
def test_matches_scipy_sqrtm_reference(seed, f):
    rng = np.random.default_rng(seed)
    s1, s2 = _random_spd(rng, f), _random_spd(rng, f)
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy is not installed")
def test_matches_scipy_on_feature_sets():
    x, y = _features(1, 300, 20), _features(2, 250, 20) * 0.7
    want = _scipy_fd(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-6)


def test_strictly_rising_with_added_noise():
    x = _features(5, 2000, 16)
    noise = np.random.default_rng(6).normal(size=x.shape)
    same = [frechet_distance(x, x + s * noise) for s in (0.0, 0.1, 0.3, 1.0)]
    assert same[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(same, same[1:])), same
    # Against an independent sample of the same distribution: a positive floor, then rising.
    x2 = _features(5, 4000, 16)[2000:]
    other = [frechet_distance(x, x2 + s * noise) for s in (0.0, 0.1, 0.3, 1.0)]
    assert other[0] > 0
    assert all(a < b for a, b in zip(other, other[1:])), other


@given(seed=st.integers(0, 10_000), f=st.integers(1, 8))
def test_invariant_under_shared_rotation_and_translation(seed, f):
    rng = np.random.default_rng(seed)
    x, y = _features(seed, 30, f), _features(seed + 7, 25, f) * 1.3
    q, _ = np.linalg.qr(rng.normal(size=(f, f)))
    t = rng.normal(size=f) * 10
    assert frechet_distance(x @ q + t, y @ q + t) == pytest.approx(frechet_distance(x, y), rel=1e-7, abs=1e-8)


def test_mean_shift_only():
    x = _features(8, 100, 6)
    shift = np.arange(6.0)
    assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)


def test_bootstrap_se():
    x, y = _features(0, 400, 4), _features(1, 400, 4) + 0.3
    se = bootstrap_se(frechet_distance, x, y, n_boot=30, seed=0)
    assert se > 0
    assert se == bootstrap_se(frechet_distance, x, y, n_boot=30, seed=0)  # seeded
    se_big = bootstrap_se(frechet_distance, np.concatenate([x] * 4), np.concatenate([y] * 4), n_boot=30, seed=0)
    assert se_big < se  # more rows, smaller standard error (~1/2 here)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_se(frechet_distance, x, y, n_boot=1)


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((5, 3)), np.zeros((5, 4)), "widths differ"),
    (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2 rows"),
    (np.zeros((5, 3)), np.zeros((1, 3)), "at least 2 rows"),
    (np.zeros(5), np.zeros(5), r"\[rows, features\]"),
    (np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), r"\[rows, features\]"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((3, 2)), "NaN or inf"),
    (np.zeros((3, 2)), np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or inf"),
])
def test_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(x, y)


def test_bad_stats():
    with pytest.raises(ValueError, match="widths differ"):
        frechet_from_stats(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="covariances"):
        frechet_from_stats(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_from_stats(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
