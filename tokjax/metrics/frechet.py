"""Fréchet distance between two sets of feature vectors (the FID formula on any features).

    frechet_distance(x [N, F], y [M, F])
        = ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x^{1/2} S_y S_x^{1/2})^{1/2})

with ``mu`` the feature means and ``S`` the unbiased (ddof = 1) covariances, as ``np.cov`` and the
reference FID code compute them. It is the squared 2-Wasserstein distance between the Gaussians
N(mu_x, S_x) and N(mu_y, S_y). tokjax uses it on a small classifier's features
(``tokjax.vision.quality.fd_proxy``) as a download-free stand-in for FID.

Numerics: everything is float64 numpy on the host (an evaluation metric, not part of a jitted
step). ``S_x^{1/2}`` and ``S_y^{1/2}`` are symmetric eigendecomposition roots with eigenvalues
clamped at 0, so a rank-deficient covariance (N <= F) is fine and no complex numbers appear (the
``scipy.linalg.sqrtm`` route of the reference code can return them). The trace of the outer root
is computed as the sum of the singular values of ``S_y^{1/2} S_x^{1/2}``: the eigenvalues of
``S_x^{1/2} S_y S_x^{1/2} = (S_y^{1/2} S_x^{1/2})^T (S_y^{1/2} S_x^{1/2})`` are exactly those singular
values squared, and taking them directly avoids the square root of a squared matrix, whose small
eigenvalues would carry errors of order sqrt(machine eps) * ||S|| (so FD(X, X) stays at rounding
level, ~1e-13 * ||S||). The result is clamped at 0.

    frechet_from_stats(mu1, s1, mu2, s2)   the same formula from given means and covariances
    bootstrap_se(fn, x, y, n_boot, seed)   standard error of fn(x, y) by resampling rows of x and y
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["bootstrap_se", "frechet_distance", "frechet_from_stats"]


def _features(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a feature array [rows, features], got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {a.shape[0]}")
    if a.shape[1] < 1:
        raise ValueError(f"{name} needs at least 1 feature column, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; features must be finite")
    return a


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Returns the symmetric square root of a symmetric matrix, eigenvalues clamped at 0."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_stats(mu1, s1, mu2, s2) -> float:
    """Returns the Fréchet distance between N(mu1, s1) and N(mu2, s2) (module docstring formula).

    ``mu1``, ``mu2``: [F]; ``s1``, ``s2``: [F, F] covariances (symmetrised as (s + s^T) / 2; negative
    eigenvalues from rounding are clamped at 0). Raises ValueError on mismatched shapes or non-finite
    values.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise ValueError(f"means must be vectors [F], got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature widths differ: means of shape {mu1.shape} and {mu2.shape}")
    f = mu1.shape[0]
    if s1.shape != (f, f) or s2.shape != (f, f):
        raise ValueError(f"covariances must be [{f}, {f}] to match the means, got {s1.shape} and {s2.shape}")
    for name, a in (("mu1", mu1), ("s1", s1), ("mu2", mu2), ("s2", s2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf; statistics must be finite")
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    r1, r2 = _psd_sqrt(s1), _psd_sqrt(s2)
    # Tr (S1^1/2 S2 S1^1/2)^1/2 = nuclear norm of S2^1/2 S1^1/2 (module docstring).
    cross = np.linalg.svd(r2 @ r1, compute_uv=False).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross
    return float(max(fd, 0.0))


def frechet_distance(x, y) -> float:
    """Returns the Fréchet distance between the Gaussian fits of features ``x`` [N, F] and ``y`` [M, F].

    Means and unbiased covariances in float64, then :func:`frechet_from_stats`. Raises ValueError when
    the feature widths differ, either set has fewer than 2 rows, or any value is NaN or inf.
    """
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: x has {x.shape[1]} features, y has {y.shape[1]}")
    return frechet_from_stats(x.mean(0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]),
                              y.mean(0), np.cov(y, rowvar=False, ddof=1).reshape(y.shape[1], y.shape[1]))


def bootstrap_se(fn: Callable[[np.ndarray, np.ndarray], float], x, y, n_boot: int = 100, seed: int = 0) -> float:
    """Returns the bootstrap standard error of ``fn(x, y)``: the std (ddof = 1) over ``n_boot`` replicas.

    Each replica resamples the rows of ``x`` and, independently, of ``y`` with replacement (same sizes).
    ``fn`` is e.g. :func:`frechet_distance`. Note that the bootstrap FD is biased upwards (duplicated rows
    shrink the covariance); the SE measures the spread, not that bias.
    """
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or len(x) < 1 or len(y) < 1:
        raise ValueError(f"x and y must have a leading row axis with at least one row, got {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    vals = [fn(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]) for _ in range(int(n_boot))]
    return float(np.std(np.asarray(vals, np.float64), ddof=1))
