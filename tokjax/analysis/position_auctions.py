"""P35 Position auctions in AI-generated content (Balseiro et al. 2025, arXiv 2506.03309; no official code).

Sponsored creatives (ads) ``j = 0..n-1`` are inserted at candidate positions ``i = 0..m-1`` inside generated
text (position ``i`` = "after sentence ``i``"). ``theta[i, j] >= 0`` is the stand-alone insertion score (CTR proxy)
of creative ``j`` at position ``i`` -- one estimate per (position, creative) pair, e.g. from an LM
(:func:`insertion_scores`), not the separable ``alpha_i * beta_j`` of classic position auctions. An allocation is a
0/1 matrix ``alloc [m, n]``: every creative at most once, every position at most one creative, at most ``max_ads``
creatives shown (the paper's ``K``); a creative may be left out and a position may stay empty.

User models (the paper's ``pi_i(x, sigma)``):

* **MNL** (order-insensitive; confirmed from a public summary of the paper: ``pi = sum_j x exp(rho) / (1 + sum x
  exp(rho))`` with ``theta = exp(rho)``)::

      P(click on creative j) = sum_i alloc[i,j] theta[i,j] / (1 + sum_{(k,l) shown} theta[k,l])

  Welfare ``sum_j w_j P(click j)`` (``w`` = bids; Myerson virtual values for revenue) is a ratio of two linear
  functions of the matching, maximised exactly by Dinkelbach iteration: ``lambda <- value``, then a max-weight
  matching on ``(w_j - lambda) theta[i,j]`` (``scipy.optimize.linear_sum_assignment``, pairs with non-positive weight
  left out, <= ``max_ads`` pairs) until the matching's value stops increasing (:func:`mnl_allocation`).
* **Cascade** (order-sensitive; reconstructed, unverified -- the paper's exact cascade parameters were not
  readable here): positions are read in rendering order ``order`` (default: text order 0..m-1; the paper lets the
  auctioneer choose the rendering permutation ``sigma``); at a shown pair the user clicks with probability
  ``theta[i,j]`` (so ``theta`` must be in [0, 1]) and stops after a click, otherwise reads on::

      P(click on the creative at the t-th rendered position) = theta_t * prod_{s<t} (1 - theta_s)

  :func:`cascade_allocation` is exact (dynamic programme over positions x subsets of creatives, n <= 16).
  :func:`cascade_allocation_approx` stands in for the paper's approximately optimal mechanism, which is NOT
  reproduced (reconstructed, unverified): the max-weight matching on ``w_j theta[i,j]`` (which upper-bounds the
  cascade optimum), pruned to its best sub-list along the rendering order, or the best single pair if that is
  better; this is >= OPT / min(K, m, n) (OPT <= sum of the matching's pairs <= K * best single pair).

Mechanisms: :func:`vcg_auction` (welfare-maximising allocation, VCG/Clarke payments: ``p_j = W*_{-j} - (W* -
b_j x_j)``; truthful because the allocation is exactly optimal) and :func:`revenue_auction` (Myerson: the same
optimiser on virtual values ``phi_j(b_j)``, threshold payments ``p_j = b_j x_j(b_j) - int_0^{b_j} x_j(z) dz``).
Payments are expected payments per impression (``price per click = p_j / x_j``).

The matching and mechanisms run on the host (numpy/scipy); :func:`mnl_click_probs` and
:func:`cascade_click_probs` also accept jax arrays with leading batch axes (jit-compatible).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "AuctionResult",
    "brute_force_allocation",
    "cascade_allocation",
    "cascade_allocation_approx",
    "cascade_click_probs",
    "insertion_scores",
    "max_weight_matching",
    "mnl_allocation",
    "mnl_click_probs",
    "revenue_auction",
    "separable_fit",
    "threshold_payments",
    "uniform_virtual_value",
    "vcg_auction",
    "welfare",
]

MODELS = ("mnl", "cascade")


# ----------------------------------------------------------------------------------------------- validation
def _check_theta(theta, *, cascade: bool = False) -> np.ndarray:
    t = np.asarray(theta, dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(f"theta must be a 2-D array [num_positions, num_ads], got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("theta holds NaN or inf; insertion scores must be finite and >= 0")
    if np.any(t < 0):
        raise ValueError(f"theta must be >= 0 (click-through scores), got min {t.min():g}")
    if cascade and np.any(t > 1):
        raise ValueError(f"the cascade model reads theta as click probabilities in [0, 1], got max {t.max():g}")
    return t


def _check_weights(weights, n: int, *, name: str = "bids", allow_negative: bool = False) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one entry per ad (theta has {n} ad columns), "
                         f"got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} hold NaN or inf; expected finite values")
    if not allow_negative and np.any(w < 0):
        raise ValueError(f"{name} must be >= 0 (values per click), got min {w.min():g}")
    return w


def _check_k(max_ads, m: int, n: int) -> int:
    cap = min(m, n)
    if max_ads is None:
        return cap
    if isinstance(max_ads, bool) or not isinstance(max_ads, (int, np.integer)) or max_ads < 0:
        raise ValueError(f"max_ads must be None or an int >= 0, got {max_ads!r}")
    return min(int(max_ads), cap)


def _check_order(order, m: int) -> np.ndarray:
    if order is None:
        return np.arange(m)
    o = np.asarray(order)
    if o.shape != (m,) or not np.issubdtype(o.dtype, np.integer) or sorted(o.tolist()) != list(range(m)):
        raise ValueError(f"order must be a permutation of the {m} positions (rendering order), got {order!r}")
    return o


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return model


# ----------------------------------------------------------------------------------------------- user models
def mnl_click_probs(theta, alloc):
    """Returns P(click on each ad) [..., n] under MNL: ``sum_i alloc theta / (1 + sum of shown theta)``.

    Works on numpy or jax arrays with leading batch axes (no validation: call on checked inputs).
    """
    s = (alloc * theta).sum(axis=-2)
    return s / (1.0 + s.sum(axis=-1, keepdims=True))


def cascade_click_probs(theta, alloc, order=None):
    """Returns P(click on each ad) [..., n] under the cascade model (reconstructed, unverified; module docstring).

    ``order``: rendering order of the positions (default text order). numpy or jax arrays, leading batch axes.
    """
    xp = np
    if not isinstance(theta, np.ndarray) or not isinstance(alloc, np.ndarray):
        import jax.numpy as jnp
        xp = jnp
    if order is not None:
        theta = theta[..., order, :]
        alloc = alloc[..., order, :]
    p = (alloc * theta).sum(axis=-1)  # click probability at each rendered position [..., m]
    keep = xp.cumprod(1.0 - p, axis=-1)
    before = xp.concatenate([xp.ones_like(keep[..., :1]), keep[..., :-1]], axis=-1)
    return (alloc * theta * before[..., :, None]).sum(axis=-2)


def welfare(theta, weights, alloc, *, model: str = "mnl", order=None) -> float:
    """Returns ``sum_j weights_j P(click j)`` of an allocation under ``model`` ("mnl" or "cascade")."""
    _check_model(model)
    t = _check_theta(theta, cascade=model == "cascade")
    w = _check_weights(weights, t.shape[1], name="weights", allow_negative=True)
    a = np.asarray(alloc, dtype=np.float64)
    if a.shape != t.shape:
        raise ValueError(f"alloc must have theta's shape {t.shape}, got {a.shape}")
    return float(w @ _clicks(t, a, model, None if order is None else _check_order(order, t.shape[0])))


def _clicks(t, a, model, order):
    return mnl_click_probs(t, a) if model == "mnl" else cascade_click_probs(t, a, order)


# ----------------------------------------------------------------------------------------------- optimisers
def max_weight_matching(weights, max_ads=None) -> np.ndarray:
    """Returns the 0/1 matching [m, n] maximising the sum of ``weights[i, j]`` over its pairs.

    Only pairs with positive weight are kept (ads may be left out, positions may stay empty); at most ``max_ads``
    pairs. ``scipy.optimize.linear_sum_assignment`` on an augmented matrix: one "left out" column per ad and
    ``m - K`` blocker rows that must take real positions (so at most K positions go to ads).
    """
    from scipy.optimize import linear_sum_assignment

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be a finite 2-D array [num_positions, num_ads], got shape {w.shape}")
    m, n = w.shape
    k = _check_k(max_ads, m, n)
    out = np.zeros((m, n))
    if k == 0:
        return out
    b = m - k  # blocker rows
    gain = np.zeros((n + b, m + n))
    gain[:n, :m] = np.maximum(w, 0.0).T
    cost = -gain
    cost[n:, m:] = np.inf  # blockers must sit on real positions
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols):
        if r < n and c < m and w[c, r] > 0:
            out[c, r] = 1.0
    return out


def mnl_allocation(theta, weights, max_ads=None, *, max_iter: int = 200) -> tuple[np.ndarray, float]:
    """Returns (alloc [m, n], value) maximising MNL welfare ``sum_j w_j P(click j)`` by Dinkelbach iteration.

    ``weights`` may be negative (virtual values): such ads are never shown. Exact: stops when the matching that
    maximises ``sum (w_j - lambda) theta[i,j]`` no longer has a value above ``lambda`` (then no matching does).
    """
    t = _check_theta(theta)
    w = _check_weights(weights, t.shape[1], name="weights", allow_negative=True)
    k = _check_k(max_ads, *t.shape)
    lam, best = 0.0, np.zeros_like(t)
    for _ in range(max_iter):
        x = max_weight_matching((w[None, :] - lam) * t, k)
        val = float(w @ mnl_click_probs(t, x))
        if not val > lam:
            break
        lam, best = val, x
    return best, lam


def cascade_allocation(theta, weights, max_ads=None, *, order=None) -> tuple[np.ndarray, float]:
    """Returns the exact welfare-maximising (alloc, value) under the cascade model (rendering order ``order``).

    Dynamic programme ``f(t, A, c)`` = best value of rendered positions t.. with available ads A and c more
    slots: ``max(f(t+1, A, c), max_{j in A} w_j p + (1 - p) f(t+1, A - j, c - 1))``. Needs n <= 16 ads.
    """
    t = _check_theta(theta, cascade=True)
    w = _check_weights(weights, t.shape[1], name="weights", allow_negative=True)
    m, n = t.shape
    if n > 16:
        raise ValueError(f"cascade_allocation enumerates subsets of ads: at most 16 ads, got {n} "
                         "(use cascade_allocation_approx)")
    k = _check_k(max_ads, m, n)
    o = _check_order(order, m)
    tt = t[o]  # rows in rendering order

    @functools.lru_cache(maxsize=None)
    def f(pos: int, avail: int, c: int):
        if pos == m or c == 0 or avail == 0:
            return 0.0, ()
        best, plan = f(pos + 1, avail, c)
        for j in range(n):
            if avail >> j & 1 and w[j] > 0 and tt[pos, j] > 0:
                rest, rplan = f(pos + 1, avail & ~(1 << j), c - 1)
                val = w[j] * tt[pos, j] + (1.0 - tt[pos, j]) * rest
                if val > best:
                    best, plan = val, ((pos, j),) + rplan
        return best, plan

    val, plan = f(0, (1 << n) - 1, k)
    alloc = np.zeros_like(t)
    for pos, j in plan:
        alloc[o[pos], j] = 1.0
    return alloc, float(w @ cascade_click_probs(t, alloc, o))


def cascade_allocation_approx(theta, weights, max_ads=None, *, order=None) -> tuple[np.ndarray, float]:
    """Returns an approximately optimal cascade (alloc, value), >= OPT / min(K, m, n) (reconstructed, unverified).

    Not the paper's algorithm (not readable here): the max-weight matching on ``w_j theta[i,j]`` (>= OPT),
    pruned to its best sub-list along the rendering order (exact DP over keep/drop), or the best single pair
    when that is worth more. Polynomial: one assignment plus O(m).
    """
    t = _check_theta(theta, cascade=True)
    w = _check_weights(weights, t.shape[1], name="weights", allow_negative=True)
    m, n = t.shape
    k = _check_k(max_ads, m, n)
    o = _check_order(order, m)
    x = max_weight_matching(w[None, :] * t, k)
    pairs = [(int(i), int(np.argmax(x[i]))) for i in o if x[i].any()]  # in rendering order
    best, keep = 0.0, []
    for i, j in reversed(pairs):  # keep/drop DP from the last rendered pair backwards
        take = w[j] * t[i, j] + (1.0 - t[i, j]) * best
        if take > best:
            best, keep = take, [(i, j)] + keep
    alloc = np.zeros_like(t)
    for i, j in keep:
        alloc[i, j] = 1.0
    if k > 0:
        single = w[None, :] * t
        i, j = np.unravel_index(int(np.argmax(single)), single.shape)
        if single[i, j] > best:
            alloc = np.zeros_like(t)
            alloc[i, j] = 1.0
    return alloc, float(w @ cascade_click_probs(t, alloc, o))


def brute_force_allocation(theta, weights, max_ads=None, *, model: str = "mnl", order=None
                           ) -> tuple[np.ndarray, float]:
    """Returns (alloc, value) maximising welfare over every matching with <= max_ads pairs (reference; tiny only)."""
    _check_model(model)
    t = _check_theta(theta, cascade=model == "cascade")
    w = _check_weights(weights, t.shape[1], name="weights", allow_negative=True)
    m, n = t.shape
    if m * n > 36:
        raise ValueError(f"brute force enumerates every matching: at most 36 (position, ad) pairs, got {m}x{n}")
    k = _check_k(max_ads, m, n)
    o = None if order is None else _check_order(order, m)
    best, best_a = 0.0, np.zeros_like(t)
    for size in range(1, k + 1):
        for ads in itertools.combinations(range(n), size):
            for pos in itertools.permutations(range(m), size):
                a = np.zeros_like(t)
                a[list(pos), list(ads)] = 1.0
                val = float(w @ _clicks(t, a, model, o))
                if val > best:
                    best, best_a = val, a
    return best_a, best


def _allocate(t, w, k, model, order):
    if model == "mnl":
        return mnl_allocation(t, w, k)
    return cascade_allocation(t, w, k, order=order)


# ----------------------------------------------------------------------------------------------- mechanisms
@dataclasses.dataclass(frozen=True)
class AuctionResult:
    """Outcome of a mechanism: allocation [m, n], objective value, per-ad click probabilities and payments.

    ``payments`` are expected payments per impression; ``prices`` per click (0 where an ad gets no clicks).
    """

    alloc: np.ndarray
    value: float
    clicks: np.ndarray
    payments: np.ndarray

    @property
    def prices(self) -> np.ndarray:
        c = self.clicks
        return np.where(c > 0, self.payments / np.where(c > 0, c, 1.0), 0.0)

    def utility(self, values) -> np.ndarray:
        """Returns each ad's expected utility ``values_j * clicks_j - payments_j``."""
        return np.asarray(values, np.float64) * self.clicks - self.payments


def _check_auction(theta, bids, max_ads, model, order):
    """Returns the checked (theta, bids, max_ads, order) of a mechanism call."""
    _check_model(model)
    t = _check_theta(theta, cascade=model == "cascade")
    b = _check_weights(bids, t.shape[1])
    return t, b, _check_k(max_ads, *t.shape), _check_order(order, t.shape[0])


def vcg_auction(theta, bids, max_ads=None, *, model: str = "mnl", order=None) -> AuctionResult:
    """Returns the welfare-maximising allocation (exact, Dinkelbach or cascade DP) with VCG (Clarke) payments.

    ``p_j = W*_{-j} - (W* - b_j x_j)``: the optimal welfare without ad j minus the others' welfare now.
    """
    t, b, k, o = _check_auction(theta, bids, max_ads, model, order)
    m, n = t.shape
    alloc, val = _allocate(t, b, k, model, o)
    clicks = _clicks(t, alloc, model, o)
    pay = np.zeros(n)
    for j in range(n):
        if clicks[j] <= 0:
            continue
        keep = [i for i in range(n) if i != j]
        _, w_minus = _allocate(t[:, keep], b[keep], min(k, n - 1), model, o)
        pay[j] = max(w_minus - (val - b[j] * clicks[j]), 0.0)
    return AuctionResult(alloc=alloc, value=val, clicks=clicks, payments=pay)


def uniform_virtual_value(high: float) -> Callable[[np.ndarray], np.ndarray]:
    """Returns Myerson's virtual value of U[0, high] values: ``phi(b) = b - (1 - F(b)) / f(b) = 2 b - high``."""
    if not (isinstance(high, (int, float)) and math.isfinite(high) and high > 0):
        raise ValueError(f"high must be a finite number > 0, got {high!r}")
    return lambda b: 2.0 * np.asarray(b, np.float64) - high


def threshold_payments(rule: Callable[[np.ndarray], np.ndarray], bids, *, tol: float = 1e-9) -> np.ndarray:
    """Returns Myerson's payments ``p_j = b_j x_j(b_j) - int_0^{b_j} x_j(z) dz`` of a monotone allocation rule.

    ``rule(bids) -> clicks [n]``. ``x_j(.)`` is a step function (finitely many allocations); its jumps are found by
    bisection to ``tol`` (times the bid), so the integral is exact up to ``tol * b_j`` per jump.
    """
    b = np.asarray(bids, np.float64)
    pay = np.zeros(b.shape[0])
    for j in range(b.shape[0]):
        if b[j] <= 0:
            continue

        def x(z, j=j):
            bb = b.copy()
            bb[j] = z
            return float(rule(bb)[j])

        eps = tol * b[j]
        stack, area = [(0.0, b[j], x(0.0), x(b[j]))], 0.0
        while stack:
            lo, hi, xl, xh = stack.pop()
            if xh - xl <= 1e-15:
                area += xl * (hi - lo)
            elif hi - lo <= eps:
                area += 0.5 * (xl + xh) * (hi - lo)
            else:
                mid = 0.5 * (lo + hi)
                xm = x(mid)
                stack += [(lo, mid, xl, xm), (mid, hi, xm, xh)]
        pay[j] = max(b[j] * x(b[j]) - area, 0.0)
    return pay


def revenue_auction(theta, bids, virtual_value: Callable[[np.ndarray], np.ndarray], max_ads=None, *,
                    model: str = "mnl", order=None, tol: float = 1e-9) -> AuctionResult:
    """Returns Myerson's revenue-maximising auction: the welfare optimiser on virtual values ``phi(bids)``.

    ``virtual_value``: maps the bid vector to virtual values elementwise and must be nondecreasing (regular
    distributions, e.g. :func:`uniform_virtual_value`); ads with negative virtual value are never shown.
    ``value`` is the expected virtual welfare (= expected revenue in expectation over values); payments are the
    threshold payments of :func:`threshold_payments`.
    """
    t, b, k, o = _check_auction(theta, bids, max_ads, model, order)
    m, n = t.shape

    def phi(bb):
        v = np.asarray(virtual_value(bb), np.float64)
        if v.shape != (n,) or not np.all(np.isfinite(v)):
            raise ValueError(f"virtual_value must return {n} finite values, got {v!r}")
        return v

    def rule(bb):
        a, _ = _allocate(t, phi(bb), k, model, o)
        return _clicks(t, a, model, o)

    alloc, val = _allocate(t, phi(b), k, model, o)
    clicks = _clicks(t, alloc, model, o)
    return AuctionResult(alloc=alloc, value=val, clicks=clicks, payments=threshold_payments(rule, b, tol=tol))


# ----------------------------------------------------------------------------------------------- LM scores
def insertion_scores(model, sentences: Sequence[Sequence[int]], creatives: Sequence[Sequence[int]], *,
                     prefix: Sequence[int] = (), normalize: str = "row", batch_size: int = 16) -> np.ndarray:
    """Returns theta [m, n]: insertion scores of creative j (token ids) after sentence i of a text.

    ``lp[i, j]`` = mean per-token log-prob of creative j given ``prefix + sentences[0] + ... + sentences[i]``
    (one prefill per position and forked caches: :func:`tokjax.decoding.score_continuations`).
    ``normalize="none"``: ``theta = exp(lp)`` (geometric-mean token probability, in (0, 1]);
    ``"row"`` (default): ``theta[i] = softmax_j lp[i, :]`` -- each creative's share at that position, which removes
    the effect of the prefix growing with i (in (0, 1), so the cascade model accepts it too).
    """
    from tokjax.decoding import score_continuations

    if normalize not in ("none", "row"):
        raise ValueError(f"normalize must be 'none' or 'row', got {normalize!r}")
    if not sentences or not creatives:
        raise ValueError("give at least one sentence and one creative (lists of token ids)")
    m, n = len(sentences), len(creatives)
    lp = np.zeros((m, n))
    ctx = [int(x) for x in prefix]
    for i, s in enumerate(sentences):
        ctx = ctx + [int(x) for x in s]
        out = score_continuations(model, ctx, creatives, batch_size=batch_size)
        lp[i] = [float(np.mean(p)) for p in out.logprobs]
    if normalize == "none":
        return np.exp(lp)
    z = lp - lp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def separable_fit(theta) -> np.ndarray:
    """Returns the best rank-1 fit ``a_i * b_j`` of theta (Frobenius; top singular pair, >= 0) -- the classic
    separable position-auction CTR model, for comparing against per-pair scores."""
    t = _check_theta(theta)
    u, s, vt = np.linalg.svd(t, full_matrices=False)
    a, b = np.abs(u[:, 0]) * s[0], np.abs(vt[0])
    return np.outer(a, b)
