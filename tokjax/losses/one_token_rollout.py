"""One-Token Rollout (P25): supervised fine-tuning as a one-step policy gradient at every position.

Paper: *One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient* (Ming, Wu et
al., arXiv 2509.26313; no official code found). Each target position t is a one-step episode from the
state s_t (the prefix): K candidate tokens are drawn from the current policy at temperature tau, with
the gradient stopped through the draw, the data's token y_t is the reward signal, and the policy-gradient
surrogate is::

    a_{t,k} ~ pi_theta^tau(. | s_t)   (stop-grad; k = 1..K)                                     (P25)
    r(a) = 1 if a = y_t else r_neg
    L = -(1 / sum_t m_t) sum_t m_t w_t (1/K) sum_k r(a_{t,k}) log pi_theta(a_{t,k} | s_t)

``m`` is the target mask (completion tokens), ``w`` the batch's per-token weights (1 by default) and
``pi^tau = softmax(z / tau)``; the log-probability is the policy's own (tau = 1). Its expectation over the
draw (the K -> infinity limit, :func:`otr_expected_loss`) has the gradient::

    E[grad L_t] = -[pi^tau(y) grad log pi(y) + r_neg sum_{a != y} pi^tau(a) grad log pi(a)]

and at tau = 1, since sum_a pi(a) grad log pi(a) = 0, this is ``-(1 - r_neg) p(y) grad log p(y)``:
SFT's gradient weighted by the model's own probability of the target (r_neg = 0: exactly
``p(y) grad log p(y)``, the unbiasedness check of the notes). r_neg <= 0 penalises wrong samples.

**Unverified** (the paper's text was not available; NOTES-losses P25): the number of samples K (default
16; the notes' estimator check found a single estimate's relative error 1.55 at K = 4, so K >= 16), the
sampling temperature tau (default 1.0) and the wrong-sample reward r_neg (default 0.0, the notes'
equation; secondary summaries say the paper's second term penalises wrong samples, value unknown).

**Sampling** (:func:`gumbel_max_sample`) is Gumbel-max streamed over vocabulary chunks: per chunk the
logits ``h W[:, chunk]`` [N, C] get K independent Gumbel draws [N, K, C], and a running (max, argmax)
per (position, sample) is kept, so nothing larger than [N, K, C] is materialised. The noise of vocabulary
column v is drawn from ``fold_in(key, v)``, so a fixed key gives the same samples for every chunk size.
Log-probabilities come from :func:`tokjax.losses.token_stats` (``logp`` of the target and ``lse`` from the
streaming head, no [B, T, V] logits with ``method="cut"``); a wrong sample's is ``h . W[:, a] - lse``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_int_option, check_range
from tokjax.losses._distill import hparam_value
from tokjax.losses._stats import TokenStats, reduce_loss, token_count
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
from tokjax.losses.registry import register_loss

__all__ = ["DEFAULT_CHUNK_SIZE", "REDUCTIONS", "gumbel_max_sample", "make_one_token_rollout_loss",
           "one_token_rollout_loss", "otr_expected_loss", "otr_rewards", "sampled_logp"]

DEFAULT_CHUNK_SIZE = 4096
REDUCTIONS = ("token_mean", "sum", "const", "seq_mean")
_F32 = jnp.float32


def _check_tau(tau):
    check_range(tau, "tau (the sampling temperature)", lo=0.0, lo_open=True)
    return jnp.asarray(tau, _F32)


def _check_r_neg(r_neg):
    check_range(r_neg, "r_neg (the reward of a wrong sample, a penalty)", hi=0.0)
    return jnp.asarray(r_neg, _F32)


def _check_head(head, layout: str) -> tuple[jax.Array, int, int]:
    """Returns (head, D, V) of a [D, V] (``layout="dv"``) or [V, D] (``"vd"``, a tied embedding) head."""
    if layout not in ("dv", "vd"):
        raise ValueError(f"layout must be 'dv' (head [D, V]) or 'vd' (head [V, D], a tied embedding), got {layout!r}")
    head = jnp.asarray(head)
    if head.ndim != 2:
        raise ValueError(f"head must be a 2-D matrix ([D, V] or [V, D]), got shape {tuple(head.shape)}")
    D, V = head.shape if layout == "dv" else head.shape[::-1]
    return head, D, V


def gumbel_max_sample(hidden: jax.Array, head: jax.Array, key: jax.Array, k: int, *, tau=1.0, layout: str = "dv",
                      bias: jax.Array | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
    """Returns int32 [N, K]: K independent draws per row from ``softmax((hidden @ head + bias) / tau)`` (P25 rollout).

    ``hidden`` [N, D] final-normed states, ``head`` [D, V] (``layout="dv"``) or [V, D] (``"vd"``), ``bias``
    optional [V]. Gumbel-max over vocabulary chunks of ``chunk_size`` columns: ``argmax_v (z_v / tau + G_v)``
    with G ~ Gumbel(0, 1) from ``fold_in(key, v)`` per column v, so the draws do not depend on
    ``chunk_size``; at most an [N, K, chunk_size] block exists at a time. No gradient flows (the samples
    are integers and the inputs are stop-gradient'ed). ``tau`` > 0 may be a traced array.
    """
    k = check_int_option(k, "k (samples per position)", lo=1)
    chunk_size = check_int_option(chunk_size, "chunk_size", lo=1)
    tau = _check_tau(tau)
    head, D, V = _check_head(head, layout)
    w = jax.lax.stop_gradient(head)
    h = jax.lax.stop_gradient(jnp.asarray(hidden)).astype(_F32)
    if h.ndim != 2 or h.shape[1] != D:
        raise ValueError(f"hidden must be [N, D={D}] to match the head, got shape {tuple(h.shape)}")
    if bias is not None and jnp.shape(bias) != (V,):
        raise ValueError(f"bias must be [V={V}], got shape {tuple(jnp.shape(bias))}")
    N = h.shape[0]
    C = min(chunk_size, V)
    nc = -(-V // C)
    vax = 1 if layout == "dv" else 0  # the vocabulary axis of the stored head (a tied [V, D] is read in place)
    bp = None if bias is None else jax.lax.stop_gradient(jnp.asarray(bias, _F32))
    spec = "nd,dc->nc" if layout == "dv" else "nd,cd->nc"

    def body(carry, i):
        best, arg = carry
        start = jnp.minimum(i * C, V - C)  # the last chunk is shifted back (no padded copy of the head) ...
        cols = start + jnp.arange(C)
        z = jnp.einsum(spec, h, jax.lax.dynamic_slice_in_dim(w, start, C, axis=vax).astype(_F32))  # [N, C]
        if bp is not None:
            z = z + jax.lax.dynamic_slice_in_dim(bp, start, C)
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, cols)
        g = jax.vmap(lambda kk: jax.random.gumbel(kk, (N, k), _F32))(keys)  # [C, N, K]
        score = jnp.moveaxis(g, 0, -1) + (z / tau)[:, None, :]  # [N, K, C]
        score = jnp.where(cols >= i * C, score, -jnp.inf)  # ... and skips the columns it re-reads
        loc = jnp.argmax(score, axis=-1)
        val = jnp.take_along_axis(score, loc[..., None], -1)[..., 0]
        better = val > best  # strict: an earlier chunk keeps ties, as one argmax over the whole row would
        return (jnp.where(better, val, best), jnp.where(better, start + loc, arg)), None

    init = (jnp.full((N, k), -jnp.inf, _F32), jnp.zeros((N, k), jnp.int32))
    (_, arg), _ = jax.lax.scan(body, init, jnp.arange(nc))
    return arg.astype(jnp.int32)


def sampled_logp(hidden: jax.Array, head: jax.Array, samples: jax.Array, lse: jax.Array, *, layout: str = "dv",
                 bias: jax.Array | None = None) -> jax.Array:
    """Returns float32 [N, K] ``log pi(a_k) = h . W[:, a_k] (+ bias[a_k]) - lse`` (differentiable in h, W, lse).

    ``samples`` int [N, K] token ids, ``lse`` [N] the log-partition of each row (``TokenStats.lse``)."""
    head, D, V = _check_head(head, layout)
    h = jnp.asarray(hidden)
    samples = jnp.asarray(samples)
    if samples.ndim != 2 or samples.shape[0] != h.shape[0] or jnp.shape(lse) != (h.shape[0],):
        raise ValueError(f"samples must be [N, K] and lse [N] with N = {h.shape[0]}, got {tuple(samples.shape)} and "
                         f"{tuple(jnp.shape(lse))}")
    if layout == "dv":
        z = jnp.einsum("nd,dnk->nk", h.astype(_F32), jnp.take(head, samples, axis=1).astype(_F32))
    else:  # rows of the tied embedding: [N, K, D]
        z = jnp.einsum("nd,nkd->nk", h.astype(_F32), jnp.take(head, samples, axis=0).astype(_F32))
    if bias is not None:
        z = z + jnp.asarray(bias, _F32)[samples]
    return z - jnp.asarray(lse, _F32)[:, None]


def otr_rewards(samples: jax.Array, targets: jax.Array, r_neg=0.0) -> jax.Array:
    """Returns float32 [..., K] P25 rewards ``r(a_k) = 1[a_k = y] + r_neg 1[a_k != y]`` (no gradient).

    ``samples`` int [..., K], ``targets`` int [...]; ``r_neg`` <= 0 (a runtime array is fine)."""
    r_neg = _check_r_neg(r_neg)
    samples, targets = jnp.asarray(samples), jnp.asarray(targets)
    if samples.shape[:-1] != targets.shape:
        raise ValueError(f"samples must be [..., K] over targets {tuple(targets.shape)}, got {tuple(samples.shape)}")
    hit = samples == targets[..., None]
    return jax.lax.stop_gradient(jnp.where(hit, 1.0, r_neg).astype(_F32))


def one_token_rollout_loss(stats: TokenStats, sample_logp: jax.Array, hits: jax.Array, *, r_neg=0.0,
                           reduction: str = "token_mean", normalizer=None) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of the P25 surrogate from TokenStats and K samples per target.

    ``L = reduce_t m_t w_t (-(1/K) sum_k r(a_k) log pi(a_k))`` with ``r = 1`` for a sample equal to the
    target (its log-prob is ``stats.logp``, so with r_neg = 0 the gradient is (hits/K) grad log p(y)
    through the same head as SFT) and ``r_neg`` otherwise (log-prob ``sample_logp``). ``sample_logp``
    float [B, T, K] (only read where the sample missed), ``hits`` bool [B, T, K]. ``reduction`` in
    :data:`REDUCTIONS` (``token_mean``: divided by the masked-in target count, or ``normalizer``).
    Metrics: ``loss``, ``nll`` (token-mean -log p(y)), ``hit_rate`` (fraction of samples equal to the
    target), ``p_target`` (token-mean p(y)), ``token_count``. An empty mask gives 0, not NaN.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    r_neg = _check_r_neg(r_neg)
    B, T = stats.logp.shape
    hits = jnp.asarray(hits)
    if hits.ndim != 3 or hits.shape[:2] != (B, T) or jnp.shape(sample_logp) != hits.shape:
        raise ValueError(f"hits and sample_logp must both be [B, T, K] with [B, T] = {B, T}, got "
                         f"{tuple(hits.shape)} and {tuple(jnp.shape(sample_logp))}")
    hits = jax.lax.stop_gradient(hits.astype(bool))
    K = hits.shape[-1]
    m = stats.mask
    lp_y = jnp.where(m, stats.logp, 0.0)  # masked entries zeroed first: padding never reaches the gradient
    lp_s = jnp.where(m[..., None] & ~hits, jnp.asarray(sample_logp, _F32), 0.0)
    n_hit = jnp.sum(hits.astype(_F32), -1)
    per_tok = -(n_hit * lp_y + r_neg * jnp.sum(lp_s, -1)) / K * stats.weights
    loss = reduce_loss(stats, reduction, per_token=per_tok, normalizer=normalizer)
    n = token_count(m)
    safe = jnp.maximum(n, 1.0)
    sg = jax.lax.stop_gradient
    metrics = {"loss": loss, "nll": sg(-jnp.sum(lp_y) / safe),
               "hit_rate": sg(jnp.sum(jnp.where(m, n_hit, 0.0)) / K / safe),
               "p_target": sg(jnp.sum(jnp.where(m, jnp.exp(lp_y), 0.0)) / safe), "token_count": n}
    return loss, metrics


def otr_expected_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *, tau=1.0,
                      r_neg=0.0) -> jax.Array:
    """Returns the float32 K -> infinity P25 surrogate ``-mean_t sum_a sg(pi^tau(a)) r(a) log pi(a)`` (token mean).

    The expectation of :func:`one_token_rollout_loss` over the draw, computed exactly over the categorical
    from full ``logits`` [B, T, V] (a reference for tests and small vocabularies); its gradient is
    ``-mean_t [pi^tau(y) grad log pi(y) + r_neg sum_{a != y} pi^tau(a) grad log pi(a)]``, which at tau = 1
    is ``-(1 - r_neg) mean_t p(y) grad log p(y)``. ``mask`` [B, T] (default all); empty -> 0.
    """
    tau, r_neg = _check_tau(tau), _check_r_neg(r_neg)
    z = jnp.asarray(logits, _F32)
    y = jnp.asarray(targets)
    if z.ndim != 3 or y.shape != z.shape[:2]:
        raise ValueError(f"logits must be [B, T, V] and targets [B, T], got {tuple(z.shape)} and {tuple(y.shape)}")
    m = jnp.ones(y.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if m.shape != y.shape:
        raise ValueError(f"mask must be [B, T]={tuple(y.shape)}, got {tuple(m.shape)}")
    logp = jax.nn.log_softmax(z, -1)
    q = jax.lax.stop_gradient(jax.nn.softmax(z / tau, -1))
    r = jnp.where(jnp.arange(z.shape[-1]) == y[..., None], 1.0, r_neg)
    per_tok = -jnp.sum(q * r * logp, -1)
    n = jnp.sum(m.astype(_F32))
    return jnp.where(n > 0, jnp.sum(jnp.where(m, per_tok, 0.0)) / jnp.maximum(n, 1.0), 0.0)


def make_one_token_rollout_loss(*, k: int = 16, tau=1.0, r_neg=0.0, method: str = "cut",
                                block_size: int = DEFAULT_BLOCK_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE,
                                reduction: str = "token_mean") -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: the P25 OTR loss for ``tokjax.train``.

    One forward pass: :func:`tokjax.losses.token_stats` (``logp``, ``lse`` and the final hidden states),
    K draws per target by :func:`gumbel_max_sample` from ``rng`` (required; the train loop passes
    ``fold_in(rng, step)``), wrong samples' log-probs by :func:`sampled_logp`, then
    :func:`one_token_rollout_loss`. ``batch["hparams"]["tau"]`` / ``["r_neg"]`` override ``tau`` (> 0) and
    ``r_neg`` (<= 0) at run time without recompiling. Batch keys as :func:`tokjax.losses.next_token_loss`
    (``tokens``, ``prompt_lengths``, ``mask``, ``weights``, ``normalizer``...).
    """
    from tokjax.losses._next_token import METHODS

    k = check_int_option(k, "k (samples per position)", lo=1)
    chunk_size = check_int_option(chunk_size, "chunk_size", lo=1)
    block_size = check_int_option(block_size, "block_size", lo=1)
    _check_tau(tau)
    _check_r_neg(r_neg)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")

    def loss_fn(params, cfg, batch, rng=None):
        from tokjax.losses._next_token import token_stats
        from tokjax.model.forward import head_matrix

        if rng is None:
            raise ValueError("the one-token-rollout loss samples K tokens per position: it needs an rng key")
        stats = token_stats(params, cfg, batch, method=method, block_size=block_size, hidden=True)
        B, T = stats.logp.shape
        h = stats.hidden.reshape(B * T, -1)
        w, layout = head_matrix(params, cfg)
        w = w.astype(cfg.dtype)
        samples = gumbel_max_sample(h, w, rng, k, tau=hparam_value(batch, "tau", tau), layout=layout,
                                    chunk_size=chunk_size)
        targets = batch["tokens"][:, 1:] if "tokens" in batch else batch["targets"]
        hits = samples.reshape(B, T, k) == jnp.asarray(targets)[..., None]
        lp_s = sampled_logp(h, w, samples, stats.lse.reshape(-1), layout=layout).reshape(B, T, k)
        stats = stats.replace(hidden=None)
        return one_token_rollout_loss(stats, lp_s, hits, r_neg=hparam_value(batch, "r_neg", r_neg),
                                      reduction=reduction, normalizer=batch.get("normalizer"))

    return loss_fn


def _otr_factory(k, tau, r_neg, method, block_size, chunk_size, reduction):
    return make_one_token_rollout_loss(k=k, tau=float(tau), r_neg=float(r_neg), method=method, block_size=block_size,
                                       chunk_size=chunk_size, reduction=reduction)


register_loss("otr", _otr_factory,
              {"k": 16, "tau": 1.0, "r_neg": 0.0, "method": "cut", "block_size": DEFAULT_BLOCK_SIZE,
               "chunk_size": DEFAULT_CHUNK_SIZE, "reduction": "token_mean"},
              doc="P25 one-token rollout: K samples per target from pi^tau, reward 1[a = y] (r_neg otherwise), "
                  "policy-gradient surrogate (batch: tokens[, prompt_lengths, mask]); needs the train rng",
              overwrite=True)
