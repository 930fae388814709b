"""D3S (P56): dynamic dual-level down-sampling of rollouts and tokens for GRPO.

Paper: *Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy
Optimization* (Wang et al., arXiv 2509.22115, ICLR 2026; code only in the supplement). GRPO's
signal is diluted by uninformative rollouts and tokens; D3S updates on fewer of both:

* **Sample level.** From the rollouts of a prompt keep the subset S of size m that maximises the
  variance of the advantages, ``S* = argmax_{|S| = m} Var_{i in S}(A_i)`` (the paper proves
  Var(A) is positively correlated with an upper bound of the policy-gradient norm). ``scope="group"``
  selects within each prompt's G rollouts (the paper's intra-group D3S-I); ``scope="batch"`` treats
  the whole batch as one pool (cross-group).
* **Token level.** Among the valid tokens of the kept rollouts keep the top ``rho_tok`` fraction
  by ``s_{i,t} = |A_{i,t}| * H_{i,t}`` (advantage magnitude times the policy's entropy), so the
  update goes where the policy is both uncertain and its outcome matters.
* **Dynamic schedule.** Both ratios start aggressive (small) and relax (grow) as training
  proceeds, a curriculum against overfitting to the high-signal subset.
* **Loss.** GRPO's clipped surrogate on the kept set, normalised by the number of *kept* tokens
  (``grpo_loss(..., denominator="kept")``).

Exact subset search (derived here; the paper does not spell out its search). Write the values of a
pool sorted, a_(1) <= ... <= a_(G). For a fixed m >= 2 a max-variance subset is a prefix plus a
suffix of the sorted order, {a_(1..k)} U {a_(G-m+k+1..G)} for some 0 <= k <= m. Proof: let S be
optimal with mean mu, a in S and b not in S. Swapping them changes m Var by
``f(b) - (a - mu)^2`` with ``f(b) = (b - mu)^2 - (b - a)^2 / m`` (from
``sum_{S'} (x - mu')^2 = sum_{S'} (x - mu)^2 - m (mu' - mu)^2``, mu' = mu + (b - a)/m), and
``f(a) = (a - mu)^2``. f is strictly convex in b (leading coefficient 1 - 1/m > 0), so if
b < a < b' for two unselected values, max(f(b), f(b')) > f(a) and one swap increases the
variance: no optimal subset leaves out values on both sides of a selected one (ties aside, which
do not change the variance). So scanning the m + 1 prefix/suffix splits with prefix sums of a and
a^2 finds the optimum in O(G log G) per pool, jit-compatible with ``m`` a traced value.

What the paper's text (abstract and summaries reachable here) confirms: the Var(A) criterion, the
|A|*H token score, the aggressive-to-relaxed schedule, intra- and cross-group variants. **Unverified**
(the method section and supplement were not reachable): the ratio values, the schedule's shape
(linear here), whether advantages are recomputed on the kept subset (here: no, the full group's
advantages are kept), the token quantile's scope (here: over the batch, as P63), how ties are
broken (here: exactly k tokens, ties by position) and the denominator (kept tokens, as the issue asks).

Functions: :func:`subset_size`, :func:`max_variance_subset`, :func:`token_scores`,
:func:`d3s_token_mask`, :func:`linear_ratio`; :class:`D3STokenMask` (a LossTransform for
:func:`tokjax.losses.grpo.make_grpo_loss` / ``rl_train(transforms=...)``) and :class:`D3S` (the
schedule plus ``select`` for ``rl_train(select=...)``). Ratios are runtime float32 arrays: a new
value does not recompile.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range, hparam
from tokjax.losses._stats import LossTransform, TokenStats

__all__ = ["D3S", "D3STokenMask", "SCOPES", "TOKEN_RATIO_KEY", "d3s_token_mask", "linear_ratio",
           "max_variance_subset", "subset_size", "token_scores"]

SCOPES = ("group", "batch")
TOKEN_RATIO_KEY = "d3s_token_ratio"
_F32 = jnp.float32
_COUNT_RTOL = 1e-6


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_ratio(ratio, name: str) -> None:
    if jnp.ndim(ratio) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(jnp.shape(ratio))}")
    check_range(ratio, name, lo=0.0, lo_open=True, hi=1.0)


def subset_size(ratio, pool: int) -> jax.Array:
    """Returns int32 m = clip(ceil(ratio * pool), 2, pool): how many of a pool of rollouts to keep.

    ``ratio`` in (0, 1] (a traced array is allowed); at least 2 so the kept set has a variance.
    """
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 2:
        raise ValueError(f"pool must be an int >= 2 (rollouts to choose from), got {pool!r}")
    _check_ratio(ratio, "sample ratio")
    t = jnp.asarray(ratio, _F32) * pool
    return jnp.clip(jnp.ceil(t - _COUNT_RTOL * jnp.maximum(t, 1.0)), 2, pool).astype(jnp.int32)


def max_variance_subset(values, group_size: int, size) -> jax.Array:
    """Returns bool [B]: in each group of ``group_size`` consecutive rows, the ``size`` rows whose values
    have the largest variance (P56's sample-level selection, exact; the algorithm is in the module docstring).

    ``values`` [B] float (advantages); ``size`` an int or int array in [2, group_size] (traced is
    fine). Ties between equally good subsets go to the one with the fewest low values (smallest k),
    and equal values keep their row order (stable sort).
    """
    v = jnp.asarray(values, _F32)
    if v.ndim != 1:
        raise ValueError(f"values must be [B] (one advantage per rollout), got shape {tuple(v.shape)}")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
    if v.shape[0] % group_size:
        raise ValueError(f"the batch of {v.shape[0]} rows must be a multiple of group_size {group_size}")
    if _concrete(v) and not bool(np.all(np.isfinite(np.asarray(v)))):
        raise ValueError("values must be finite (got NaN or inf)")
    G = group_size
    if _concrete(size):
        s = np.asarray(size)
        if s.ndim != 0 or not np.issubdtype(s.dtype, np.integer) or not 2 <= int(s) <= G:
            raise ValueError(f"size must be an int in [2, group_size={G}], got {size!r}")
    m = jnp.asarray(size, jnp.int32)
    g = v.reshape(-1, G)
    g = g - jnp.mean(g, axis=1, keepdims=True)  # variance is shift-invariant; centring keeps float32 exact
    order = jnp.argsort(g, axis=1, stable=True)
    s = jnp.take_along_axis(g, order, axis=1)
    zero = jnp.zeros((g.shape[0], 1), _F32)
    p1 = jnp.concatenate([zero, jnp.cumsum(s, axis=1)], axis=1)  # [N, G+1]
    p2 = jnp.concatenate([zero, jnp.cumsum(s * s, axis=1)], axis=1)
    k = jnp.arange(G + 1)  # number of values taken from the bottom
    hi_start = jnp.clip(G - m + k, 0, G)  # the suffix starts here
    total = p1[:, k] + p1[:, G:] - p1[:, hi_start]
    total2 = p2[:, k] + p2[:, G:] - p2[:, hi_start]
    mf = m.astype(_F32)
    var = total2 / mf - (total / mf) ** 2
    var = jnp.where((k <= m)[None, :], var, -jnp.inf)
    best = jnp.argmax(var, axis=1)[:, None]  # first maximum: smallest k
    rank = jnp.arange(G)[None, :]
    keep_sorted = (rank < best) | (rank >= G - m + best)
    inv = jnp.argsort(order, axis=1)
    return jnp.take_along_axis(keep_sorted, inv, axis=1).reshape(-1)


def token_scores(advantages, entropy) -> jax.Array:
    """Returns float32 [B, T] scores |A_{i,t}| * H_{i,t} (P56's token criterion); ``advantages`` [B] or [B, T]."""
    h = jnp.asarray(entropy, _F32)
    if h.ndim != 2:
        raise ValueError(f"entropy must be [B, T], got shape {tuple(h.shape)}")
    a = jnp.asarray(advantages, _F32)
    if a.shape == h.shape[:1]:
        a = a[:, None]
    elif a.shape != h.shape:
        raise ValueError(f"advantages must be [B]={h.shape[:1]} or [B, T]={tuple(h.shape)}, got {tuple(a.shape)}")
    return jnp.abs(a) * h


def d3s_token_mask(advantages, entropy, mask, ratio) -> jax.Array:
    """Returns bool [B, T]: exactly k = ceil(ratio * n_valid) valid tokens (``mask``), those with the largest
    |A| * H over the batch (P56 token level).

    Equal scores are ordered by position (row-major), so exactly k tokens are kept even when many
    tie; that matters here because every token of a zero-advantage rollout scores 0 (a
    threshold rule that keeps ties would keep all of them). ``ratio`` = 1 keeps every valid token;
    no valid token keeps nothing. ``ratio`` may be a traced scalar.
    """
    _check_ratio(ratio, "token ratio")
    score = token_scores(advantages, entropy)
    mask = jnp.ones(score.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if mask.shape != score.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal {tuple(score.shape)}")
    flat = jnp.where(mask, score, -jnp.inf).reshape(-1)
    n = jnp.sum(mask).astype(_F32)
    t = jnp.asarray(ratio, _F32) * n
    k = jnp.ceil(t - _COUNT_RTOL * jnp.maximum(t, 1.0)).astype(jnp.int32)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.shape[0], dtype=jnp.int32))
    return mask & (rank < k).reshape(score.shape)


def linear_ratio(step, start, end, ramp_steps) -> jax.Array:
    """Returns float32 start + (end - start) * min(step / ramp_steps, 1): the aggressive -> relaxed schedule.

    All arguments may be runtime arrays; ``start``, ``end`` in (0, 1] and ``ramp_steps`` > 0 are
    checked when concrete.
    """
    for name, x in (("start", start), ("end", end)):
        _check_ratio(x, name)
    check_range(ramp_steps, "ramp_steps", lo=0.0, lo_open=True)
    check_range(step, "step", lo=0.0)
    frac = jnp.minimum(jnp.asarray(step, _F32) / jnp.asarray(ramp_steps, _F32), 1.0)
    return jnp.asarray(start, _F32) + (jnp.asarray(end, _F32) - jnp.asarray(start, _F32)) * frac


@dataclasses.dataclass(frozen=True)
class D3STokenMask(LossTransform):
    """LossTransform: zero the weights of the tokens outside the top ``ratio`` |A| * H fraction (P56 token level).

    Reads ``batch["advantages"]`` ([B] or [B, T]) and the stats' entropy (``requires``); the ratio
    is ``batch[key]`` when the batch carries it (what :meth:`D3S.select` puts there each step),
    else the state's ``ratio`` (a float32 array). Combine with ``grpo_loss(denominator="kept")``.
    """

    ratio: object = hparam(1.0)
    key: str = TOKEN_RATIO_KEY
    requires = ("entropy",)

    def __post_init__(self):
        _check_ratio(self.ratio, "ratio")

    def init(self):
        return {"ratio": jnp.asarray(self.ratio, _F32)}

    def apply(self, stats: TokenStats, state, batch):
        if stats.entropy is None:
            raise ValueError("D3STokenMask needs TokenStats.entropy (token_stats(..., entropy=True))")
        if not isinstance(batch, dict) or "advantages" not in batch:
            raise ValueError("D3STokenMask needs batch['advantages'] ([B] or [B, T])")
        ratio = batch.get(self.key, state["ratio"])
        keep = d3s_token_mask(batch["advantages"], jax.lax.stop_gradient(stats.entropy), stats.mask, ratio)
        return stats.replace(weights=jnp.where(keep, stats.weights, 0.0)), state


@dataclasses.dataclass(frozen=True)
class D3S:
    """The D3S schedule and sample selector for :func:`tokjax.train.rl.rl_train` (P56).

        d3s = D3S(steps=300)
        rl_train(model, task, RLConfig(denominator="kept", ...), select=d3s.select,
                 transforms=(d3s.transform(),))

    Ratios go linearly from ``*_start`` (aggressive) to ``*_end`` (relaxed) over ``ramp`` x
    ``steps`` steps, then stay (:func:`linear_ratio`). ``sample_*``: fraction of each pool kept by
    :func:`max_variance_subset` (``scope``: "group" = each prompt's G rollouts, "batch" = all);
    ``token_*``: fraction of the kept rows' valid tokens kept by :func:`d3s_token_mask`.
    All four at 1 is plain GRPO with the kept-token denominator (= the valid-token one).
    """

    steps: int
    sample_start: float = 0.5
    sample_end: float = 0.75
    token_start: float = 0.3
    token_end: float = 0.6
    ramp: float = 1.0
    scope: str = "group"

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"D3S.steps must be an int >= 1 (the run's RL steps), got {self.steps!r}")
        for name in ("sample_start", "sample_end", "token_start", "token_end"):
            _check_ratio(getattr(self, name), f"D3S.{name}")
        check_range(self.ramp, "D3S.ramp", lo=0.0, lo_open=True)
        if self.scope not in SCOPES:
            raise ValueError(f"D3S.scope must be one of {SCOPES}, got {self.scope!r}")

    def ratios(self, step) -> tuple[jax.Array, jax.Array]:
        """Returns (sample ratio, token ratio) at RL step ``step`` (float32 scalars)."""
        ramp = max(self.ramp * self.steps, 1e-9)
        return (linear_ratio(step, self.sample_start, self.sample_end, ramp),
                linear_ratio(step, self.token_start, self.token_end, ramp))

    def select(self, rollouts, advantages, step) -> dict:
        """Returns {"keep": bool [B], TOKEN_RATIO_KEY: float32 token ratio}: rl_train's ``select`` plug point."""
        adv = jnp.asarray(advantages, _F32)
        if adv.ndim != 1:
            raise ValueError(f"D3S.select needs one advantage per rollout [B], got shape {tuple(adv.shape)}")
        pool = rollouts.group_size if self.scope == "group" else int(adv.shape[0])
        sample_ratio, token_ratio = self.ratios(step)
        keep = max_variance_subset(adv, pool, subset_size(sample_ratio, pool))
        return {"keep": np.asarray(keep), TOKEN_RATIO_KEY: token_ratio}

    def transform(self) -> D3STokenMask:
        """Returns the token-level LossTransform (its ratio comes from ``select`` each step)."""
        return D3STokenMask(ratio=float(self.token_start))
