"""T-REG: DPO with token-level reward regularisation from contrastive (opposite) prompting (P51: *T-REG:
Preference Optimization with Token-Level Reward Regularization*, Zhou et al., arXiv 2412.02685, ACL 2025).

Self-generated token rewards: an evaluator (the reference model) reads each response twice, once
after a prompt ``x+`` revised to ask for a *better* answer and once after ``x-`` asking for a *worse*
one; the normalised token reward is::

    r_hat_t = sigmoid( log pi_eval(y_t | x+, y_<t) - log pi_eval(y_t | x-, y_<t) ) - 0.5    in (-0.5, 0.5)   (P51)

The regulariser rewards agreement between DPO's implicit token rewards ``beta Delta_t`` and ``r_hat_t``
(their similarity ``sum_t r_hat_t beta Delta_t``); per response::

    L_REG(x, y) = - sum_t r_hat_t * beta * (log pi(y_t|s_t) - log pi_ref(y_t|s_t))                     (P51)

which has the gradient of the paper's weighted language-modelling form ``-sum_t beta r_hat_t log pi``
(the reference term is a constant). It is weighted per pair by DPO's own gradient scale
``w = sigmoid(R(y_l) - R(y_w))`` (no gradient) and added to DPO::

    L = L_DPO + alpha * mean_pairs[ w * (L_REG(x, y_w) + L_REG(x, y_l)) ]                               (P51)

Provenance: the official repository (github.com/wzhouad/T-REG) is not in the stored corpora; the
forms above (sigmoid - 0.5 normalisation, the sequence weight w, the sum over both responses and the
alpha grid {0.1, 0.25, 0.5}) come from a secondary summary of the paper (papernotes, ACL 2025 note
on arXiv 2412.02685) and are tagged [secondary source] until checked against the PDF. ``alpha``
defaults to 0.25, the middle of that grid. ``alpha = 0`` is sequence DPO exactly.

The revised prompts and the completions must put every response target at the same position in
all three sequences: build ``better_tokens`` / ``worse_tokens`` [2B, T+1] by left-padding the shorter
prompts (:func:`contrastive_prompt_rewards` checks the alignment).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range

__all__ = ["make_t_reg_loss", "contrastive_prompt_rewards", "normalised_token_rewards", "t_reg_regularizer"]

_F32 = jnp.float32
DEFAULT_ALPHA = 0.25


def normalised_token_rewards(better_logp, worse_logp, mask) -> jax.Array:
    """Returns float32 [B, T] ``sigmoid(better_logp - worse_logp) - 0.5`` (P51's r_hat), 0 where masked, no grad."""
    b, w, m = jnp.asarray(better_logp), jnp.asarray(worse_logp), jnp.asarray(mask).astype(bool)
    if b.ndim != 2 or w.shape != b.shape or m.shape != b.shape:
        raise ValueError(f"better_logp, worse_logp and mask must share one [B, T] shape, got {tuple(b.shape)}, "
                         f"{tuple(w.shape)} and {tuple(m.shape)}")
    d = jnp.where(m, b.astype(_F32) - w.astype(_F32), 0.0)
    return jax.lax.stop_gradient(jnp.where(m, jax.nn.sigmoid(d) - 0.5, 0.0))


def contrastive_prompt_rewards(evaluator, tokens, better_tokens, worse_tokens, mask, *, method: str = "cut"
                               ) -> jax.Array:
    """Returns float32 [B, T] P51 token rewards of ``tokens[:, 1:]`` scored after the better / worse prompts.

    ``evaluator`` (params, cfg) or Model (the reference); ``tokens``, ``better_tokens``,
    ``worse_tokens`` int [B, T+1] (the same responses after the original, the better- and the
    worse-asking prompt, left-padded so each response target sits at one position); ``mask`` bool
    [B, T] the response targets. Raises ValueError if a masked-in target differs between the three.
    """
    from tokjax.losses._distill import check_model_pair
    from tokjax.losses._next_token import reference_logp

    params, cfg = check_model_pair(evaluator, "evaluator")
    t, bt, wt = (np.asarray(x) for x in (tokens, better_tokens, worse_tokens))
    m = np.asarray(mask).astype(bool)
    if t.ndim != 2 or bt.shape != t.shape or wt.shape != t.shape or m.shape != (t.shape[0], t.shape[1] - 1):
        raise ValueError(f"tokens, better_tokens and worse_tokens must be [B, T+1] and mask [B, T], got "
                         f"{t.shape}, {bt.shape}, {wt.shape} and {m.shape}")
    for name, other in (("better_tokens", bt), ("worse_tokens", wt)):
        bad = m & (other[:, 1:] != t[:, 1:])
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"{name} is misaligned with tokens: response target {c} of row {r} is {other[r, c + 1]} "
                             f"instead of {t[r, c + 1]} (left-pad the revised prompts so targets keep their positions)")
    lb = reference_logp(params, cfg, jnp.asarray(bt), method=method)
    lw = reference_logp(params, cfg, jnp.asarray(wt), method=method)
    return normalised_token_rewards(lb, lw, m)


def t_reg_regularizer(policy_logp, ref_logp, mask, token_rewards, beta, valid=None) -> tuple[jax.Array, jax.Array]:
    """Returns (float32 [B] per-pair ``w * (L_REG(y_w) + L_REG(y_l))``, float32 [B] the weights w) (P51).

    All arrays [2B, T] with the B chosen rows first; ``token_rewards`` the r_hat (no gradient);
    ``w = sigmoid(R(y_l) - R(y_w))`` with R the DPO sequence implicit reward (no gradient).
    Pairs not ``valid`` (bool [B]) give 0.
    """
    lp, rl, m = jnp.asarray(policy_logp), jnp.asarray(ref_logp), jnp.asarray(mask).astype(bool)
    r = jnp.asarray(token_rewards)
    if lp.ndim != 2 or rl.shape != lp.shape or m.shape != lp.shape or r.shape != lp.shape:
        raise ValueError(f"policy_logp, ref_logp, mask and token_rewards must share one [2B, T] shape, got "
                         f"{tuple(lp.shape)}, {tuple(rl.shape)}, {tuple(m.shape)} and {tuple(r.shape)}")
    if lp.shape[0] % 2:
        raise ValueError(f"T-REG needs 2B rows (B chosen then B rejected), got {lp.shape[0]}")
    h = lp.shape[0] // 2
    b = jnp.asarray(beta, _F32)
    delta = jnp.where(m, jnp.where(m, lp.astype(_F32), 0.0) - jax.lax.stop_gradient(jnp.where(m, rl.astype(_F32),
                                                                                                0.0)), 0.0)
    r = jnp.where(m, jax.lax.stop_gradient(r.astype(_F32)), 0.0)
    reg = -jnp.sum(r * b * delta, axis=-1)  # [2B]
    seq = jax.lax.stop_gradient(b * jnp.sum(delta, -1))
    w = jax.nn.sigmoid(seq[h:] - seq[:h])
    per = w * (reg[:h] + reg[h:])
    if valid is not None:
        per = jnp.where(valid, per, 0.0)
    return per, w


def make_t_reg_loss(*, beta: float = 0.1, alpha: float = DEFAULT_ALPHA, ref: tuple | None = None,
                    evaluator: tuple | None = None, method: str = "cut", block_size: int | None = None) -> Callable:
    """Returns the T-REG train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` (P51): DPO + alpha * L_REG.

    The token rewards come from ``batch["token_rewards"]`` [2B, T] (precomputed with
    :func:`contrastive_prompt_rewards`), or are computed per step from ``batch["better_tokens"]`` /
    ``batch["worse_tokens"]`` [2B, T+1] under ``evaluator`` (default: ``ref``; the paper uses the
    reference policy). ``batch["hparams"]["alpha"]`` overrides ``alpha``. Metrics as
    :func:`tokjax.losses.dpo.make_dpo_loss` plus ``dpo_loss``, ``reg_loss``, ``reg_weight`` (mean w) and,
    with in-loss rewards, ``target_agreement`` (fraction of response targets equal across the three
    token arrays; below 1 means misaligned revised prompts).
    """
    from tokjax.losses._distill import check_model_pair, hparam_value
    from tokjax.losses._next_token import reference_logp
    from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
    from tokjax.losses.dpo import make_dpo_loss

    check_range(alpha, "alpha", lo=0.0)
    check_range(beta, "beta", lo=0.0, lo_open=True)
    bs = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    ev = evaluator if evaluator is not None else ref
    if ev is not None:
        ev = check_model_pair(ev, "evaluator")

    def regularizer(params, batch, stats, b, valid):
        metrics = {}
        if batch.get("token_rewards") is not None:
            r = jnp.asarray(batch["token_rewards"], _F32)
        else:
            if batch.get("better_tokens") is None or batch.get("worse_tokens") is None:
                raise ValueError("T-REG needs batch['token_rewards'] [2B, T] or batch['better_tokens'] and "
                                 "batch['worse_tokens'] [2B, T+1] (with an evaluator or ref model)")
            if ev is None:
                raise ValueError("T-REG with better/worse tokens needs an evaluator model (evaluator= or ref=)")
            bt, wt, t = (jnp.asarray(batch[k]) for k in ("better_tokens", "worse_tokens", "tokens"))
            if bt.shape != t.shape or wt.shape != t.shape:
                raise ValueError(f"better_tokens / worse_tokens must be [2B, T+1] = {tuple(t.shape)} like tokens, got "
                                 f"{tuple(bt.shape)} and {tuple(wt.shape)}")
            lb = reference_logp(ev[0], ev[1], bt, method=method, block_size=bs)
            lw = reference_logp(ev[0], ev[1], wt, method=method, block_size=bs)
            r = normalised_token_rewards(lb, lw, stats.mask)
            same = (bt[:, 1:] == t[:, 1:]) & (wt[:, 1:] == t[:, 1:])
            n = jnp.maximum(jnp.sum(stats.mask), 1).astype(_F32)
            metrics["target_agreement"] = jnp.sum(stats.mask & same) / n
        if r.shape != stats.logp.shape:
            raise ValueError(f"batch['token_rewards'] must be [2B, T] = {tuple(stats.logp.shape)}, got "
                             f"{tuple(r.shape)}")
        per, w = t_reg_regularizer(stats.logp, stats.ref_logp, stats.mask, r, b, valid)
        count = jnp.maximum(jnp.sum(valid), 1).astype(_F32)
        reg = jnp.sum(per) / count
        a = hparam_value(batch, "alpha", alpha)
        metrics.update({"reg_loss": jax.lax.stop_gradient(reg),
                        "reg_weight": jnp.sum(jnp.where(valid, w, 0.0)) / count})
        return a * reg, metrics

    return make_dpo_loss(beta=beta, ref=ref, method=method, block_size=bs, regularizer=regularizer)
