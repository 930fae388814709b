"""Synthetic K-lines (OHLCV bars) from a regime-switching GBM with GARCH(1,1) volatility, true variance kept.

The generating process, for each series and bar t = 0..bars-1:

    regime       s_t ~ Markov chain on {0..R-1}:  P(s_t = s_{t-1}) = stay, otherwise uniform over the
                 other regimes; s_0 from the chain's stationary distribution (uniform);
    variance     h_t = vol_{s_t}^2 * g_t: the regime sets the volatility level at once and a unit-mean
                 GARCH(1,1) factor g_t clusters it,
                 g_t = (1 - alpha - beta) + alpha * u_{t-1}^2 + beta * g_{t-1},   u_t = sqrt(g_t) * z_t,
                 g_0 = 1 (the stationary mean: E g_t = 1 when alpha + beta < 1);
                 equivalently h_t = vol_{s_t}^2 (1 - alpha - beta) + vol_{s_t}^2 / vol_{s_{t-1}}^2 *
                 (alpha * eps_{t-1}^2 + beta * h_{t-1}), i.e. GARCH(1,1) within a regime;
    shock        eps_t = sqrt(h_t) * z_t,  z_t ~ N(0, 1);
    log return   r_t = log(C_t / C_{t-1}) = mu_{s_t} - h_t / 2 + eps_t    (the GBM drift correction),
    intra-bar    the bar is ``ticks`` steps of a Gaussian random walk in log price from O_t = C_{t-1}
                 (C_{-1} = ``price``) whose increments sum to r_t: tick increments
                 (mu_{s_t} - h_t / 2) / m + sqrt(h_t / m) * z_{t,j}, j = 1..m, and z_t = sum_j z_{t,j} / sqrt(m);
                 H_t / L_t are the largest / smallest of the m + 1 prices (open included), C_t the last;
    volume       V_t = volume * exp(kappa * log(h_t / vol_{s_t}^2) / 2 + lam * (|z_t| - sqrt(2/pi)) + nu * xi_t),
                 xi_t ~ N(0, 1): more trading when volatility is high and on large moves (note
                 log(h_t / vol_{s_t}^2) = log g_t).

So ``variance[:, t]`` = h_t is the exact conditional variance of r_t given the past and the
regime, and (r_t - mu_{s_t} + h_t / 2) / sqrt(h_t) = z_t is standard normal. By construction
L_t <= min(O_t, C_t) <= max(O_t, C_t) <= H_t, every price is positive and every volume too.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["KLines", "klines", "OHLCV"]

#: column order of :attr:`KLines.ohlcv`
OHLCV = ("open", "high", "low", "close", "volume")


@dataclasses.dataclass(frozen=True, eq=False)
class KLines:
    """OHLCV series with the process that generated them.

    Attributes:
      ohlcv: float64 ``[n, bars, 5]``, columns :data:`OHLCV` (open, high, low, close, volume).
      variance: float64 ``[n, bars]``, h_t: the true conditional variance of each bar's log return.
      regimes: int32 ``[n, bars]``, the regime s_t of each bar.
      log_returns: float64 ``[n, bars]``, r_t = log(close_t / close_{t-1}) (close_{-1} = the start price).
      drift: float64 ``[n, bars]``, the conditional mean mu_{s_t} - h_t / 2 of r_t.
    """

    ohlcv: np.ndarray
    variance: np.ndarray
    regimes: np.ndarray
    log_returns: np.ndarray
    drift: np.ndarray

    def __len__(self) -> int:
        return int(self.ohlcv.shape[0])

    @property
    def standardized_returns(self) -> np.ndarray:
        """Returns float64 ``[n, bars]``: (r_t - drift_t) / sqrt(h_t), i.i.d. N(0, 1) by construction."""
        return (self.log_returns - self.drift) / np.sqrt(self.variance)


def _floats(name: str, value, *, positive: bool = False) -> np.ndarray:
    a = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be a finite number or a non-empty 1-D sequence (one per regime), got {value!r}")
    if positive and (a <= 0).any():
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return a


def _scalar(name: str, value, lo: float, hi: float, *, closed_hi: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and lo <= v and (v <= hi if closed_hi else v < hi)):
        raise ValueError(f"{name} must lie in [{lo}, {hi}{']' if closed_hi else ')'}, got {value!r}")
    return v


def klines(
    n: int,
    bars: int,
    seed: int = 0,
    *,
    vol=(0.01, 0.025),
    mu=(5e-4, -1e-3),
    alpha: float = 0.08,
    beta: float = 0.9,
    stay: float = 0.98,
    ticks: int = 16,
    price: float = 100.0,
    volume: float = 1e6,
    kappa: float = 1.0,
    lam: float = 0.5,
    nu: float = 0.3,
) -> KLines:
    """Returns :class:`KLines`: ``n`` seeded series of ``bars`` OHLCV bars (equations in the module docstring).

    ``vol`` and ``mu`` give each regime's volatility level (E h_t = vol^2) and drift per bar (equal lengths R; the
    default is a calm rising and a turbulent falling regime), ``alpha`` / ``beta`` the GARCH(1,1)
    coefficients (alpha, beta >= 0, alpha + beta < 1), ``stay`` the probability that a regime
    persists for one more bar, ``ticks`` the random-walk steps per bar, ``price`` the first open,
    ``volume`` the typical volume and ``kappa``, ``lam``, ``nu`` its sensitivity to volatility, to the
    size of the move and its own noise. Deterministic in ``seed``; the first k series do not depend on ``n``.

    Raises:
      ValueError: ``n`` < 0, ``bars`` < 1, ``ticks`` < 1, ``vol`` <= 0, ``vol``/``mu`` of different lengths,
        ``alpha``/``beta`` < 0 or ``alpha + beta >= 1``, ``stay`` outside [0, 1], ``price``/``volume`` <= 0,
        or non-finite parameters.
    """
    n = check_int("n", n, 0)
    bars = check_int("bars", bars, 1)
    ticks = check_int("ticks", ticks, 1)
    vol = _floats("vol", vol, positive=True)
    mu = _floats("mu", mu)
    if vol.shape != mu.shape:
        raise ValueError(f"vol and mu need one entry per regime each, got {vol.size} and {mu.size}")
    alpha = _scalar("alpha", alpha, 0.0, 1.0)
    beta = _scalar("beta", beta, 0.0, 1.0)
    if alpha + beta >= 1:
        raise ValueError(f"alpha + beta must be < 1 (a stationary GARCH(1,1)), got {alpha} + {beta}")
    stay = _scalar("stay", stay, 0.0, 1.0, closed_hi=True)
    price = _scalar("price", price, 0.0, math.inf)
    volume = _scalar("volume", volume, 0.0, math.inf)
    if price <= 0 or volume <= 0:
        raise ValueError(f"price and volume must be > 0, got {price} and {volume}")
    kappa, lam, nu = (_scalar(k, v, -math.inf, math.inf) for k, v in (("kappa", kappa), ("lam", lam), ("nu", nu)))
    R = vol.size

    # Independent streams, each one row-major draw with n leading, so series i never depends on n.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    u_regime = streams[0].random((n, bars))
    z_ticks = streams[1].standard_normal((n, bars, ticks))
    xi = streams[2].standard_normal((n, bars))
    u_other = streams[3].random((n, bars))  # which other regime a switch goes to

    regimes = np.empty((n, bars), np.int64)
    regimes[:, 0] = np.minimum((u_regime[:, 0] * R).astype(np.int64), R - 1)
    for t in range(1, bars):
        prev = regimes[:, t - 1]
        other = (prev + 1 + np.minimum((u_other[:, t] * (R - 1)).astype(np.int64), max(R - 2, 0))) % R
        regimes[:, t] = np.where((u_regime[:, t] < stay) | (R == 1), prev, other)

    z = z_ticks.sum(-1) / math.sqrt(ticks)
    g = np.empty((n, bars))
    g_t = np.ones(n)
    for t in range(bars):
        if t:
            g_t = (1 - alpha - beta) + alpha * g_t * z[:, t - 1] ** 2 + beta * g_t
        g[:, t] = g_t
    h = vol[regimes] ** 2 * g
    drift = mu[regimes] - h / 2
    increments = drift[..., None] / ticks + np.sqrt(h / ticks)[..., None] * z_ticks  # [n, bars, m]
    path = np.cumsum(increments, -1)  # log(price / open) after each tick
    log_returns = path[..., -1]
    log_open = math.log(price) + np.concatenate([np.zeros((n, 1)), np.cumsum(log_returns, -1)[:, :-1]], -1)
    o = np.exp(log_open)
    c = np.exp(log_open + log_returns)
    hi = np.exp(log_open + np.maximum(path.max(-1), 0.0))
    lo = np.exp(log_open + np.minimum(path.min(-1), 0.0))
    # the extremes are max/min over the same prices, so rounding never puts open/close outside them
    hi = np.maximum(hi, np.maximum(o, c))
    lo = np.minimum(lo, np.minimum(o, c))
    v = volume * np.exp(kappa * np.log(h / vol[regimes] ** 2) / 2 + lam * (np.abs(z) - math.sqrt(2 / math.pi))
                        + nu * xi)
    ohlcv = np.stack([o, hi, lo, c, v], -1)
    return KLines(ohlcv=ohlcv, variance=h, regimes=regimes.astype(np.int32), log_returns=log_returns, drift=drift)
