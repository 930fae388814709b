"""Sequence DPO and its implicit token rewards (P65: *From r to Q*: Your Language Model is Secretly a Q-Function*).

Rafailov et al. (arXiv 2404.12358) show that under the token-level MDP the DPO policy's per-token
log-ratio is an implicit token reward (a Q-function advantage)::

    r_t = beta * (log pi(y_t | s_t) - log pi_ref(y_t | s_t))                    (P65, implicit token reward)
    R(y) = sum_t r_t                                                               (sequence implicit reward)
    L_DPO = -log sigmoid( R(y_chosen) - R(y_rejected) )                            (DPO, TRL ``sigmoid`` loss)

i.e. sequence DPO *is* Bradley-Terry on summed token rewards, so a DPO-trained model assigns credit
token by token (argmin_t r_t points at the token that made a response bad). This module computes
these quantities from per-token log-probs (e.g. :func:`tokjax.losses.token_stats` ``logp`` /
``ref_logp``) and boolean target masks; nothing here depends on how the log-probs were produced.

Token-weighted DPO (the shared core of cDPO P17, TGDPO P48): per-token weights ``w_t >= 0``
(no gradient) scale each implicit token reward inside the margin::

    margin = sum_t w^c_t * beta * Delta^c_t - sum_t w^r_t * beta * Delta^r_t,    Delta_t = log pi - log pi_ref

``w == 1`` is sequence DPO bit for bit (``1.0 * x == x`` in floating point). :func:`make_dpo_loss`
reads the weights from ``batch["weights"]`` [2B, T] (``TokenStats.weights``), or from a
``token_weights(params, cfg, batch, stats)`` callable (how cDPO / TGDPO compute theirs).

Conventions (TRL ``DPOTrainer``, ``loss_type="sigmoid"``, ``f_divergence_type="reverse_kl"``,
``label_smoothing=0``): masked-out targets contribute 0 to the sums; the loss is the mean over
pairs. A pair whose chosen *or* rejected row has no unmasked target (padding) contributes zero
loss and zero gradient and is left out of the mean. ``beta`` > 0 may be a traced runtime array.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._distill import hparam_value
from tokjax.losses._stats import masked_token_arrays
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE

__all__ = [
    "bradley_terry_loss", "check_token_weights", "dpo_loss", "dpo_per_pair", "implicit_token_rewards", "make_dpo_loss",
    "sequence_implicit_reward",
]

_F32 = jnp.float32


def _check_beta(beta) -> jax.Array:
    check_range(beta, "beta", lo=0.0, lo_open=True)
    beta = jnp.asarray(beta, _F32)
    if beta.ndim != 0:
        raise ValueError(f"beta must be a scalar, got shape {tuple(beta.shape)}")
    return beta


def _check_triple(policy_logp, ref_logp, mask, what: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    (pl, rl), m = masked_token_arrays(mask, what, policy_logp=policy_logp, ref_logp=ref_logp)
    return pl, jax.lax.stop_gradient(rl), m


def implicit_token_rewards(policy_logp, ref_logp, mask, beta) -> jax.Array:
    """Returns float32 [B, T] P65 implicit token rewards ``beta * (log pi - log pi_ref)``, 0 where ``mask`` is False.

    ``policy_logp`` / ``ref_logp`` float [B, T] log-probs of the same targets (the reference gets no
    gradient); ``mask`` bool [B, T]; ``beta`` > 0, a scalar that may be traced.
    """
    beta = _check_beta(beta)
    pl, rl, m = _check_triple(policy_logp, ref_logp, mask, "")
    return jnp.where(m, beta * (pl - rl), 0.0)


def sequence_implicit_reward(policy_logp, ref_logp, mask, beta) -> jax.Array:
    """Returns float32 [B] DPO sequence implicit rewards ``beta * sum_t mask_t (log pi - log pi_ref)`` (P65's
    sum of :func:`implicit_token_rewards`)."""
    return jnp.sum(implicit_token_rewards(policy_logp, ref_logp, mask, beta), axis=-1)


def bradley_terry_loss(chosen_reward, rejected_reward) -> jax.Array:
    """Returns float32 [...] ``-log sigmoid(chosen_reward - rejected_reward)``, the Bradley-Terry negative
    log-likelihood (DPO when the rewards are :func:`sequence_implicit_reward`)."""
    c, r = jnp.asarray(chosen_reward, _F32), jnp.asarray(rejected_reward, _F32)
    if c.shape != r.shape:
        raise ValueError(f"chosen_reward and rejected_reward must have the same shape, got {c.shape} and {r.shape}")
    return -jax.nn.log_sigmoid(c - r)


def check_token_weights(weights, mask, what: str = "") -> jax.Array:
    """Returns float32 [B, T] ``weights`` under stop-gradient, 0 where ``mask`` is False.

    Raises ValueError unless ``weights`` is a floating [B, T] array of the mask's shape whose
    (concrete) entries are finite and >= 0; traced weights are only shape-checked.
    """
    w = jnp.asarray(weights)
    m = jnp.asarray(mask).astype(bool)
    if w.shape != m.shape:
        raise ValueError(f"{what}weights must be [batch, seq] = {tuple(m.shape)} like the log-probs, got shape "
                         f"{tuple(w.shape)}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"{what}weights must be floating point, got dtype {w.dtype}")
    if not isinstance(weights, jax.core.Tracer):
        arr = np.asarray(w, np.float64)
        if np.any(~np.isfinite(arr)) or np.any(arr < 0):
            bad = int(np.sum(~np.isfinite(arr) | (arr < 0)))
            raise ValueError(f"{what}weights must be finite and >= 0 (per-token multipliers of the implicit reward), "
                             f"got {bad} negative or non-finite entries")
    return jnp.where(m, jax.lax.stop_gradient(w.astype(_F32)), 0.0)


def _side_reward(pl, rl, m, beta, w):
    """Returns float32 [B] ``sum_t m_t w_t beta (pl - rl)`` (``w`` None: unweighted, the original expression)."""
    r = beta * (pl - rl)
    if w is not None:
        r = w * r
    return jnp.sum(jnp.where(m, r, 0.0), -1)


def dpo_per_pair(chosen_logp, chosen_ref_logp, chosen_mask, rejected_logp, rejected_ref_logp, rejected_mask,
                 beta, *, chosen_weights=None, rejected_weights=None) -> tuple[jax.Array, jax.Array]:
    """Returns (float32 [B] per-pair DPO losses, bool [B] valid) -- TRL ``sigmoid`` DPO (P65 eq.: BT on summed
    token rewards). Chosen arrays are [B, T], rejected [B, T'] (lengths may differ). Invalid pairs
    (a side with no unmasked target) have loss 0 and no gradient.

    ``chosen_weights`` [B, T] / ``rejected_weights`` [B, T'] (optional, >= 0, no gradient) weight each
    token's implicit reward: margin ``sum_t w^c_t beta Delta^c_t - sum_t w^r_t beta Delta^r_t`` (token-weighted
    DPO as in cDPO P17 / TGDPO P48); None or all ones is plain DPO, bit for bit.
    """
    beta = _check_beta(beta)
    cp, cr, cm = _check_triple(chosen_logp, chosen_ref_logp, chosen_mask, "chosen ")
    rp, rr, rm = _check_triple(rejected_logp, rejected_ref_logp, rejected_mask, "rejected ")
    if cp.shape[0] != rp.shape[0]:
        raise ValueError(f"chosen and rejected must have the same number of pairs, got {cp.shape[0]} and {rp.shape[0]}")
    cw = None if chosen_weights is None else check_token_weights(chosen_weights, cm, "chosen_")
    rw = None if rejected_weights is None else check_token_weights(rejected_weights, rm, "rejected_")
    return _pairs(cp, cr, cm, rp, rr, rm, beta, cw, rw)


def _pairs(cp, cr, cm, rp, rr, rm, beta, cw, rw):
    """Returns (per-pair loss, valid) of already checked arrays (weights may be None)."""
    valid = jnp.any(cm, -1) & jnp.any(rm, -1)
    margin = jnp.where(valid, _side_reward(cp, cr, cm, beta, cw) - _side_reward(rp, rr, rm, beta, rw), 0.0)
    return jnp.where(valid, -jax.nn.log_sigmoid(margin), 0.0), valid


def dpo_loss(chosen_logp, chosen_ref_logp, chosen_mask, rejected_logp, rejected_ref_logp, rejected_mask,
             beta, *, chosen_weights=None, rejected_weights=None) -> jax.Array:
    """Returns the float32 scalar sequence DPO loss (TRL ``sigmoid``), the mean of :func:`dpo_per_pair` over valid
    pairs (0 when none is valid):
    ``mean_b -log sigmoid(beta * [(log pi - log pi_ref)(y_c) - (log pi - log pi_ref)(y_r)])``
    (token-weighted with ``chosen_weights`` / ``rejected_weights``, see :func:`dpo_per_pair`).
    """
    per, valid = dpo_per_pair(chosen_logp, chosen_ref_logp, chosen_mask, rejected_logp, rejected_ref_logp,
                              rejected_mask, beta, chosen_weights=chosen_weights, rejected_weights=rejected_weights)
    return jnp.sum(per) / jnp.maximum(jnp.sum(valid), 1).astype(_F32)


def make_dpo_loss(*, beta: float = 0.1, ref: tuple | None = None, method: str = "cut",
                  block_size: int = DEFAULT_BLOCK_SIZE, token_weights: Callable | None = None,
                  regularizer: Callable | None = None) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: (token-weighted) sequence DPO in the
    train-loss signature.

    Batch (TRL layout, see :mod:`tokjax.losses._next_token` for the keys): ``tokens`` [2B, T+1] with
    the B chosen rows first and the B matching rejected rows after them; ``prompt_lengths`` /
    ``lengths`` / ``mask`` select the response targets; ``ref_logp`` [2B, T] or ``ref=(params, cfg)``
    gives the reference log-probs. ``batch["weights"]`` [2B, T] (or [2B, T+1] per token; default 1)
    weights each token's implicit reward (:func:`dpo_per_pair`); ``token_weights(params, cfg, batch,
    stats) -> [2B, T]`` computes them instead (cDPO, TGDPO; evaluated under stop-gradient).
    ``regularizer(params, batch, stats, beta, valid) -> (scalar, metrics)`` adds a term (T-REG).
    ``batch["hparams"]["beta"]`` overrides ``beta`` at run time.
    Metrics: ``loss``, ``reward_margin`` (mean unweighted R(y_c) - R(y_r) over valid pairs),
    ``reward_accuracy`` (fraction of valid pairs with a positive margin), ``pair_count``,
    ``weight_spread`` (mean |w_t - 1| over response tokens).
    """
    from tokjax.losses._next_token import METHODS, token_stats

    check_range(beta, "beta", lo=0.0, lo_open=True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        stats = token_stats(params, cfg, batch, method=method, block_size=block_size, ref=ref)
        if stats.ref_logp is None:
            raise ValueError("DPO needs reference log-probs: batch['ref_logp'] [2B, T] or "
                             "make_dpo_loss(ref=(params, cfg))")
        n = stats.logp.shape[0]
        if n % 2:
            raise ValueError(f"batch['tokens'] must hold 2B rows (B chosen then B rejected), got {n} rows")
        b = hparam_value(batch, "beta", beta)
        h = n // 2
        lp, rl, m = stats.logp, stats.ref_logp, stats.mask
        if token_weights is None:  # user weights (batch["weights"]): checked (finite, >= 0) when concrete
            w = stats.weights
            per, valid = dpo_per_pair(lp[:h], rl[:h], m[:h], lp[h:], rl[h:], m[h:], b, chosen_weights=w[:h],
                                      rejected_weights=w[h:])
        else:  # a method's own weights (TGDPO's 1 - alpha*beta*r_hat may be < 0, as in its official code)
            w = jax.lax.stop_gradient(jnp.asarray(token_weights(params, cfg, batch, stats), _F32))
            if w.shape != m.shape:
                raise ValueError(f"token weights must be [2B, T] = {tuple(m.shape)}, got {tuple(w.shape)}")
            bb = _check_beta(b)
            c3, r3 = _check_triple(lp[:h], rl[:h], m[:h], "chosen "), _check_triple(lp[h:], rl[h:], m[h:], "rejected ")
            per, valid = _pairs(*c3, *r3, bb, jnp.where(m[:h], w[:h], 0.0), jnp.where(m[h:], w[h:], 0.0))
        count = jnp.maximum(jnp.sum(valid), 1).astype(_F32)
        loss = jnp.sum(per) / count
        sg = jax.lax.stop_gradient
        margin = sequence_implicit_reward(sg(lp[:h]), rl[:h], m[:h], b) - sequence_implicit_reward(sg(lp[h:]), rl[h:],
                                                                                                   m[h:], b)
        ntok = jnp.maximum(jnp.sum(m), 1).astype(_F32)
        metrics = {"reward_margin": jnp.sum(jnp.where(valid, margin, 0.0)) / count,
                   "reward_accuracy": jnp.sum(valid & (margin > 0)) / count, "pair_count": jnp.sum(valid),
                   "weight_spread": jnp.sum(jnp.where(m, jnp.abs(w - 1.0), 0.0)) / ntok}
        if regularizer is not None:
            reg, reg_metrics = regularizer(params, batch, stats, b, valid)
            metrics["dpo_loss"] = loss
            loss = loss + reg
            metrics.update(reg_metrics)
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn
