"""TGDPO: DPO with token-level reward guidance (P48: *TGDPO: Harnessing Token-Level Reward Guidance for
Enhancing Direct Preference Optimization*, Zhu et al., ICML 2025).

A token reward from a frozen DPO-trained model ``pi_rm`` (no gradient)::

    r_hat_t = log pi_rm(y_t | s_t) - log pi_ref(y_t | s_t)

scales each token's implicit reward inside the DPO margin::

    L = -log sigmoid( sum_t beta (1 + alpha beta r_hat^w_t) Delta^w_t - sum_t beta (1 - alpha beta r_hat^l_t) Delta^l_t )
                                                                                                        (P48)

i.e. token-weighted DPO (:func:`tokjax.losses.dpo.dpo_per_pair`) with weights ``1 + alpha beta r_hat``
on chosen and ``1 - alpha beta r_hat`` on rejected tokens. Checked against the official trainer
(dvlab-research/TGDPO ``src/llamafactory/train/tgdpo/trainer.py``, ``loss_type == "sigmoid"``:
``beta * (1 + tgdpo_alpha * beta * reward_chosen_logratios) * chosen_logratios``, and ``1 - ...`` on
the rejected side; the reward model runs under ``torch.no_grad``) and its example config
(``examples/llama3_8b_instruct_tgdpo.yaml``: ``pref_beta: 0.1``, ``tgdpo_alpha: 0.5``). As in the
official code the weights are not clipped: with ``alpha beta = 0.05`` they stay near 1 unless
``|r_hat|`` reaches tens of nats. ``alpha = 0`` is sequence DPO.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range

__all__ = ["make_tgdpo_loss", "tgdpo_weights"]

_F32 = jnp.float32


def tgdpo_weights(rm_logp, ref_logp, mask, *, alpha, beta, n_pairs: int | None = None) -> jax.Array:
    """Returns float32 [2B, T] TGDPO weights (P48): ``1 + alpha beta r_hat`` on the B chosen rows, ``1 - alpha
    beta r_hat`` on the B rejected rows, with ``r_hat = rm_logp - ref_logp``; 1 where ``mask`` is False;
    no gradient. ``rm_logp`` / ``ref_logp`` float [2B, T] (chosen rows first), ``mask`` bool [2B, T];
    ``alpha`` >= 0, ``beta`` > 0 (may be traced)."""
    check_range(alpha, "alpha", lo=0.0)
    check_range(beta, "beta", lo=0.0, lo_open=True)
    rm, rf, m = jnp.asarray(rm_logp), jnp.asarray(ref_logp), jnp.asarray(mask).astype(bool)
    if rm.ndim != 2 or rf.shape != rm.shape or m.shape != rm.shape:
        raise ValueError(f"rm_logp, ref_logp and mask must share one [2B, T] shape, got {tuple(rm.shape)}, "
                         f"{tuple(rf.shape)} and {tuple(m.shape)}")
    n = rm.shape[0]
    if n % 2 or (n_pairs is not None and n != 2 * n_pairs):
        raise ValueError(f"TGDPO weights need 2B rows (B chosen then B rejected), got {n}")
    r_hat = jnp.where(m, jax.lax.stop_gradient(rm.astype(_F32) - rf.astype(_F32)), 0.0)
    ab = jnp.asarray(alpha, _F32) * jnp.asarray(beta, _F32)
    sign = jnp.concatenate([jnp.ones((n // 2, 1), _F32), -jnp.ones((n // 2, 1), _F32)], axis=0)
    return jnp.where(m, 1.0 + sign * ab * r_hat, 1.0)


def make_tgdpo_loss(*, beta: float = 0.1, alpha: float = 0.5, ref: tuple | None = None,
                    reward_model: tuple | None = None, method: str = "cut",
                    block_size: int | None = None) -> Callable:
    """Returns the TGDPO train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` (P48).

    ``reward_model`` (params, cfg) (a DPO-trained model with the reference's vocabulary, no gradient)
    or None: then ``batch["rm_logp"]`` [2B, T] carries its per-target log-probs. The reference is
    ``ref`` or ``batch["ref_logp"]`` as in :func:`tokjax.losses.dpo.make_dpo_loss`, whose batch layout
    and metrics this shares (``weight_spread`` = mean |w - 1|). ``batch["hparams"]["alpha"]``
    overrides ``alpha`` at run time.
    """
    from tokjax.losses._distill import check_model_pair, hparam_value
    from tokjax.losses._next_token import reference_logp
    from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
    from tokjax.losses.dpo import make_dpo_loss

    check_range(alpha, "alpha", lo=0.0)
    check_range(beta, "beta", lo=0.0, lo_open=True)
    bs = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if reward_model is not None:
        rm_params, rm_cfg = check_model_pair(reward_model, "reward_model")
        if ref is not None and ref[1].vocab_size != rm_cfg.vocab_size:
            raise ValueError(f"reward_model must share the reference's vocabulary, got vocab_size {rm_cfg.vocab_size} "
                             f"and {ref[1].vocab_size}")

    def token_weights(params, cfg, batch, stats):
        if reward_model is None:
            if batch.get("rm_logp") is None:
                raise ValueError("TGDPO needs the reward model's log-probs: batch['rm_logp'] [2B, T] or "
                                 "make_tgdpo_loss(reward_model=(params, cfg))")
            rm = jnp.asarray(batch["rm_logp"], _F32)
        else:
            if rm_cfg.vocab_size != cfg.vocab_size:
                raise ValueError(f"reward_model must share the policy's vocabulary, got vocab_size "
                                 f"{rm_cfg.vocab_size} and {cfg.vocab_size}")
            rm = reference_logp(rm_params, rm_cfg, jnp.asarray(batch["tokens"]), method=method, block_size=bs)
        if rm.shape != stats.logp.shape:
            raise ValueError(f"batch['rm_logp'] must be [2B, T] = {tuple(stats.logp.shape)}, got {tuple(rm.shape)}")
        return tgdpo_weights(rm, stats.ref_logp, stats.mask, alpha=hparam_value(batch, "alpha", alpha),
                             beta=hparam_value(batch, "beta", beta))

    return make_dpo_loss(beta=beta, ref=ref, method=method, block_size=bs, token_weights=token_weights)
