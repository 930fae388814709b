"""P42 (Gupta et al., ICLR 2024): "Language Model Cascades: Token-level uncertainty and beyond".

A cascade answers with a small model M_s and defers hard inputs to a large model M_l. For a
greedy output ``y`` of M_s with per-token log-probs ``u_t = log P_s(y_t | x, y_<t)``, t = 1..n,
the deferral rules compared by the paper are *confidence* scores (defer x iff s(x) < theta)::

    Chow-Sum            s = sum_t u_t                  (length bias: long outputs look unsure)
    Chow-Avg            s = (1/n) sum_t u_t            (the opposite bias)
    Chow-Quantile-a     s = quantile_a({u_t})          (a = 0: the least likely token)
    post-hoc            s = -g(phi(x)),  phi = [quantile_a({u_t}) for a in grid, n, (pooled M_s hidden)]
                        g: a small MLP trained to predict 1[quality(M_l) > quality(M_s)]

Sweeping theta gives the deferral (cost-quality) curve; its area is the summary metric.

Unverified (no official code; concepts from the abstract and NOTES-decoding P42): the exact
quantile grid (default 0, 0.1, ..., 1 here; the notes say 0, 0.01, ..., 1), whether the length
feature is raw or normalised (raw here), the MLP size and loss (2 layers, binary cross-entropy
here), and the quantile interpolation (numpy's default "linear" here). The optional embedding
from an intermediate large-model layer is available through :func:`pooled_hidden` with
``layer=k`` but is not part of the default feature vector.

All score functions are pure, batched and jit-compatible; ``alpha`` and ``grid`` are runtime arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokjax.losses import token_stats
from tokjax.model import ModelConfig, forward, masked_mean

__all__ = [
    "DEFAULT_GRID", "DeferralCurve", "DeferralMLP", "TokenScores", "chow_avg", "chow_quantile", "chow_sum",
    "deferral_batch", "deferral_curve", "deferral_mlp_logits", "deferral_mlp_loss", "init_deferral_mlp",
    "masked_quantile", "masked_quantiles", "pooled_hidden", "posthoc_features", "posthoc_score", "token_scores",
]

DEFAULT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 4).tolist())


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class TokenScores(NamedTuple):
    """Per-token log-probs of each row's continuation under one model, with their mask and a pooled embedding.

    ``logp`` [B, T-1]: log P(tokens[:, t+1] | tokens[:, :t+1]) where ``mask`` is True, 0 elsewhere;
    ``mask`` [B, T-1]: True for continuation targets (prompt_lengths <= t+1 < lengths);
    ``pooled`` [B, D]: the final hidden state averaged over each row's tokens 0..lengths-1.
    """

    logp: jax.Array
    mask: jax.Array
    pooled: jax.Array


def _check_lengths(tokens, prompt_lengths, lengths):
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer [batch, seq] array, got {tokens.dtype} {tokens.shape}")
    B, T = tokens.shape
    if T < 2:
        raise ValueError(f"tokens need at least 2 positions (prompt + continuation), got seq {T}")
    for name, v in (("prompt_lengths", prompt_lengths), ("lengths", lengths)):
        if v.shape != (B,):
            raise ValueError(f"{name} must have shape [batch]=({B},), got {v.shape}")
    if _concrete(prompt_lengths) and _concrete(lengths):
        p, n = np.asarray(prompt_lengths), np.asarray(lengths)
        if (p < 1).any() or (p > n).any() or (n > T).any():
            raise ValueError(f"need 1 <= prompt_lengths <= lengths <= seq={T}; got prompt_lengths={p.tolist()}, "
                             f"lengths={n.tolist()}")


def token_scores(params, cfg: ModelConfig, tokens, prompt_lengths, lengths) -> TokenScores:
    """Returns TokenScores: teacher-forced log-probs of each row's continuation under one model (P42 u_t).

    ``tokens`` [B, T]: prompt then continuation, padding after ``lengths``; the continuation is
    ``tokens[b, prompt_lengths[b]:lengths[b]]``. One forward pass; masked positions hold 0.
    """
    tokens = jnp.asarray(tokens)
    prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    _check_lengths(tokens, prompt_lengths, lengths)
    # The model reads all T tokens (the pooled embedding includes the last one), so the batch uses
    # the inputs/targets split with a dummy last target; lengths <= T masks it out.
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
    stats = token_stats(params, cfg, {"inputs": tokens, "targets": targets, "prompt_lengths": prompt_lengths,
                                      "lengths": lengths}, hidden=True)
    mask = stats.mask[:, :-1]
    return TokenScores(jnp.where(mask, stats.logp[:, :-1], 0.0), mask, _pool(stats.hidden, lengths))


def _pool(hidden, lengths):
    valid = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
    return masked_mean(hidden.astype(jnp.float32), valid)


def pooled_hidden(params, cfg: ModelConfig, tokens, lengths, *, layer: int | None = None) -> jax.Array:
    """Returns [B, D]: the residual stream after ``layer`` layers (default all, final-normed), mean-pooled
    over each row's first ``lengths`` tokens (P42's small-model / intermediate large-model embedding)."""
    tokens = jnp.asarray(tokens)
    lengths = jnp.asarray(lengths, jnp.int32)
    _check_lengths(tokens, jnp.minimum(lengths, 1), lengths)
    end = cfg.n_layers if layer is None else int(layer)
    if not 1 <= end <= cfg.n_layers:
        raise ValueError(f"layer must lie in [1, n_layers={cfg.n_layers}], got {layer}")
    out = forward(params, cfg, tokens, layers=(0, end), compute_logits=False)
    return _pool(out.hidden, lengths)


def _check_scores(logp, mask):
    if logp.ndim != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp and mask must both be [batch, steps]; got {logp.shape} and {mask.shape}")
    if mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean, got {mask.dtype}")
    if _concrete(logp) and _concrete(mask) and not np.isfinite(np.asarray(logp)[np.asarray(mask)]).all():
        raise ValueError("logp must be finite where mask is True")


def chow_sum(logp, mask) -> jax.Array:
    """Returns [B]: Chow-Sum, s = sum_t u_t = log P_s(y | x) over each row's valid tokens (P42)."""
    logp, mask = jnp.asarray(logp, jnp.float32), jnp.asarray(mask)
    _check_scores(logp, mask)
    return jnp.sum(jnp.where(mask, logp, 0.0), axis=-1)


def chow_avg(logp, mask) -> jax.Array:
    """Returns [B]: Chow-Avg, s = (1/n) sum_t u_t (0 for a row with no valid token) (P42)."""
    logp, mask = jnp.asarray(logp, jnp.float32), jnp.asarray(mask)
    _check_scores(logp, mask)
    n = mask.sum(-1)
    return jnp.sum(jnp.where(mask, logp, 0.0), axis=-1) / jnp.maximum(n, 1)


def _sorted_valid(values, mask):
    values, mask = jnp.asarray(values, jnp.float32), jnp.asarray(mask)
    _check_scores(values, mask)
    n = mask.sum(-1)
    if _concrete(n) and (np.asarray(n) == 0).any():
        raise ValueError(f"rows {np.flatnonzero(np.asarray(n) == 0).tolist()} have no valid token; a quantile needs >= 1")
    return jnp.sort(jnp.where(mask, values, jnp.inf), axis=-1), n  # valid values first, ascending


def _interp_quantile(srt, n, a):
    """Returns [B, K]: linear-interpolation quantiles at levels a [B, K] of each row's first n sorted values."""
    if _concrete(a) and not ((np.asarray(a) >= 0) & (np.asarray(a) <= 1)).all():
        raise ValueError(f"quantile levels must lie in [0, 1], got {np.asarray(a).ravel().tolist()}")
    last = jnp.maximum(n - 1, 0)[:, None]
    h = a * last.astype(jnp.float32)
    lo = jnp.clip(jnp.floor(h).astype(jnp.int32), 0, last)
    hi = jnp.minimum(lo + 1, last)
    v_lo = jnp.take_along_axis(srt, lo, axis=-1)
    v_hi = jnp.take_along_axis(srt, hi, axis=-1)
    q = v_lo + (h - lo) * (v_hi - v_lo)
    return jnp.where((n > 0)[:, None], q, 0.0)


def masked_quantile(values, mask, alpha) -> jax.Array:
    """Returns [B]: each row's alpha-quantile of its valid values (``alpha`` scalar or [B], runtime).

    Linear interpolation as ``numpy.quantile``: with the n valid values sorted v_(0) <= ... <= v_(n-1),
    h = alpha (n - 1), q = v_(floor h) + (h - floor h)(v_(ceil h) - v_(floor h)). A row with no valid
    value gives 0 under jit (ValueError outside jit).
    """
    srt, n = _sorted_valid(values, mask)
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape[0] != srt.shape[0]):
        raise ValueError(f"alpha must be a scalar or [batch]={srt.shape[0]}, got shape {alpha.shape}")
    a = jnp.broadcast_to(alpha, (srt.shape[0],))[:, None]
    return _interp_quantile(srt, n, a)[:, 0]


def masked_quantiles(values, mask, grid) -> jax.Array:
    """Returns [B, Q]: each row's quantiles of its valid values at the levels ``grid`` [Q] (see masked_quantile)."""
    srt, n = _sorted_valid(values, mask)
    grid = jnp.asarray(grid, jnp.float32)
    if grid.ndim != 1 or grid.shape[0] < 1:
        raise ValueError(f"grid must be a non-empty 1-D array of quantile levels, got shape {grid.shape}")
    return _interp_quantile(srt, n, jnp.broadcast_to(grid[None, :], (srt.shape[0], grid.shape[0])))


def chow_quantile(logp, mask, alpha) -> jax.Array:
    """Returns [B]: Chow-Quantile-alpha, s = quantile_alpha({u_t}); alpha = 0 is the min token log-prob (P42)."""
    return masked_quantile(logp, mask, alpha)


def posthoc_features(logp, mask, grid=DEFAULT_GRID, pooled=None) -> jax.Array:
    """Returns [B, Q + 1 (+ D)]: P42's post-hoc feature vector phi = [quantile_a(u) for a in grid, n, (pooled)].

    ``n`` is the raw number of output tokens; ``pooled`` [B, D] is an optional small-model embedding.
    """
    logp, mask = jnp.asarray(logp, jnp.float32), jnp.asarray(mask)
    feats = [masked_quantiles(logp, mask, grid), mask.sum(-1, keepdims=True).astype(jnp.float32)]
    if pooled is not None:
        pooled = jnp.asarray(pooled, jnp.float32)
        if pooled.ndim != 2 or pooled.shape[0] != logp.shape[0]:
            raise ValueError(f"pooled must be [batch={logp.shape[0]}, D], got shape {pooled.shape}")
        feats.append(pooled)
    return jnp.concatenate(feats, axis=-1)


# ------------------------------------------------------------------------------ post-hoc MLP
class DeferralMLP(NamedTuple):
    """The post-hoc deferral rule g: feature standardisation followed by a 1-hidden-layer GELU MLP (P42).

    Fit it with ``tokjax.train.recipes.cascades.train_deferral_mlp`` (loss: :func:`deferral_mlp_loss`).
    """

    mean: jax.Array
    std: jax.Array
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array


def init_deferral_mlp(key, n_features: int, hidden: int = 32) -> DeferralMLP:
    """Returns a freshly initialised DeferralMLP for ``n_features`` inputs (identity standardisation)."""
    if n_features < 1 or hidden < 1:
        raise ValueError(f"n_features and hidden must be >= 1, got {n_features}, {hidden}")
    k1, k2 = jax.random.split(key)
    return DeferralMLP(
        jnp.zeros((n_features,)), jnp.ones((n_features,)),
        jax.random.normal(k1, (n_features, hidden)) / np.sqrt(n_features), jnp.zeros((hidden,)),
        jax.random.normal(k2, (hidden,)) / np.sqrt(hidden), jnp.zeros(()),
    )


def deferral_mlp_logits(mlp: DeferralMLP, features) -> jax.Array:
    """Returns [B]: logit of P(large model beats small model | phi), g(phi) in P42."""
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2 or features.shape[1] != mlp.w1.shape[0]:
        raise ValueError(f"features must be [batch, {mlp.w1.shape[0]}], got shape {features.shape}")
    x = (features - mlp.mean) / mlp.std
    return jax.nn.gelu(x @ mlp.w1 + mlp.b1) @ mlp.w2 + mlp.b2


def posthoc_score(mlp: DeferralMLP, features) -> jax.Array:
    """Returns [B]: the post-hoc confidence s = -g(phi) (defer iff s < theta, like the Chow scores)."""
    return -deferral_mlp_logits(mlp, features)


def deferral_batch(features, targets) -> dict:
    """Returns the full-batch training dict of the post-hoc rule: ``features`` [N, F], ``labels`` [N] (the
    ``targets``) and the feature standardisation ``mean``/``std`` [F] (fixed from the data, not trained).

    ``targets`` is P42's 1[quality(M_l) > quality(M_s)] (soft targets in [0, 1] are allowed). The key
    is ``labels`` because ``targets`` means next-token ids in a tokjax.train batch.
    """
    features = jnp.asarray(features, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    if features.ndim != 2 or targets.shape != (features.shape[0],) or features.shape[0] < 1:
        raise ValueError(f"need features [N, F] and targets [N]; got {features.shape} and {targets.shape}")
    t = np.asarray(targets)
    if not ((t >= 0) & (t <= 1)).all():
        raise ValueError("targets must lie in [0, 1]")
    if not np.isfinite(np.asarray(features)).all():
        raise ValueError("features must be finite")
    return {"features": features, "labels": targets, "mean": features.mean(0), "std": features.std(0) + 1e-6}


def deferral_mlp_loss(params, cfg, batch, rng=None):
    """Returns (loss, metrics): binary cross-entropy of the post-hoc rule on a :func:`deferral_batch`.

    The train-loss signature with ``params`` the trainable part of a DeferralMLP, a dict
    ``{"w1", "b1", "w2", "b2"}`` (the standardisation comes from the batch); ``cfg`` is unused
    (None: the MLP is no transformer). Metrics: ``loss`` and ``accuracy`` (sign of g vs label > 0.5).
    """
    del cfg, rng
    mlp = DeferralMLP(batch["mean"], batch["std"], params["w1"], params["b1"], params["w2"], params["b2"])
    logits = deferral_mlp_logits(mlp, batch["features"])
    labels = batch["labels"]
    loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean((logits > 0) == (labels > 0.5))
    return loss, {"loss": loss, "accuracy": accuracy}


# ------------------------------------------------------------------------------ deferral curve
class DeferralCurve(NamedTuple):
    """A deferral (cost-quality) curve: ``rates`` [N+1] = k/N, ``quality`` [N+1] the mean cascade quality when
    the k least confident inputs go to the large model, ``auc`` the trapezoid area under quality(rate)."""

    rates: jax.Array
    quality: jax.Array
    auc: jax.Array


def deferral_curve(scores, small_quality, large_quality) -> DeferralCurve:
    """Returns the DeferralCurve of a confidence score (P42's cost-quality curve and its area).

    Deferring the k lowest-score inputs gives quality_k = (1/N)[sum_i q_s(i) + sum_{i deferred}
    (q_l(i) - q_s(i))]; quality_0 = mean q_s, quality_N = mean q_l. Tied scores are deferred as a
    group in random order, so they contribute their mean gain (the curve does not depend on tie order).
    AUC = (1/N) sum_k (quality_k + quality_{k+1}) / 2.
    """
    s = jnp.asarray(scores, jnp.float32)
    qs = jnp.asarray(small_quality, jnp.float32)
    ql = jnp.asarray(large_quality, jnp.float32)
    if s.ndim != 1 or s.shape[0] < 1 or qs.shape != s.shape or ql.shape != s.shape:
        raise ValueError(f"scores, small_quality, large_quality must be 1-D of one length >= 1; got "
                         f"{s.shape}, {qs.shape}, {ql.shape}")
    for name, v in (("scores", s), ("small_quality", qs), ("large_quality", ql)):
        if _concrete(v) and not np.isfinite(np.asarray(v)).all():
            raise ValueError(f"{name} must be finite")
    N = s.shape[0]
    order = jnp.argsort(s, stable=True)
    s_sorted = s[order]
    gain = (ql - qs)[order]
    group = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int32), (jnp.diff(s_sorted) != 0).astype(jnp.int32)]))
    g_sum = jax.ops.segment_sum(gain, group, num_segments=N)
    g_cnt = jax.ops.segment_sum(jnp.ones_like(gain), group, num_segments=N)
    gain = (g_sum / jnp.maximum(g_cnt, 1.0))[group]
    quality = qs.mean() + jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(gain)]) / N
    rates = jnp.arange(N + 1, dtype=jnp.float32) / N
    auc = jnp.sum(quality[1:] + quality[:-1]) / (2 * N)
    return DeferralCurve(rates, quality, auc)
