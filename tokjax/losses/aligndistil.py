"""AlignDistil (P15): token-level alignment as distillation from an adaptively extrapolated DPO teacher.

Paper: *AlignDistil: Token-Level Language Model Alignment as Adaptive Policy Distillation*
(Zhang et al., ACL 2025; official code songmzhang/AlignDistil, read for this module:
``OpenRLHF/openrlhf/trainer/aligndistil_offpolicy_trainer.py``, ``reward_boost_type="aligndistil"``,
and ``train_scripts/.../aligndistil_off_policy.sh``). Three models read the same tokens: the
student pi_theta, a DPO model (logits z_d) and a *reverse* DPO model trained on swapped
preference pairs (logits z_r). The DPO reward ``beta (log pi_d - log pi_r)`` is contrasted
token by token, and the student distils a logit extrapolation whose step adapts per token:

    w_t   = beta2 * sum_v |pi_d(v|s_t) - pi_r(v|s_t)| + eps       (total variation without the 1/2; eps = 1e-3)
    z*_t  = z_d,t + w_t (z_d,t - z_r,t)
    l_t   = (beta / w_t) * KL( pi_theta(.|s_t) || softmax(z*_t / T) )                       (P15)

a reverse KL over the full vocabulary, with the teachers and w_t fixed (no gradient). The
official run sums l_t over a response's completion tokens, divides by its length
(``--reward_len_norm``) and averages over the batch -- tokjax's ``reduction="seq_mean"`` (the
default here) -- with beta = 0.1, beta2 = 10, T = 1, on the *chosen* responses (off-policy).
``adaptive=False`` gives the fixed-step variant (``theorem1_contrast``): w = beta / beta2 and the
multiplier beta / w = beta2. For fixed w the per-token minimiser is pi_theta = softmax(z*/T), and
with w -> 0 the target is the DPO model itself.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range
from tokjax.losses._distill import (
    agreement, check_distill_factory, check_logits, check_temperature, hparam_value, kl_from_logits,
    read_distill_batch, reduce_per_token,
)
from tokjax.losses._stats import token_count

__all__ = [
    "DIVERGENCES", "adaptive_weight", "aligndistil_loss", "aligndistil_per_token", "extrapolated_logits",
    "make_aligndistil_loss",
]

DIVERGENCES = ("reverse", "forward")
_F32 = jnp.float32


def adaptive_weight(dpo_logits, reverse_logits, beta2=10.0, eps=1e-3) -> jax.Array:
    """Returns float32 [...] stop-gradient ``w = beta2 * sum_v |pi_d(v) - pi_r(v)| + eps`` (P15's token-adaptive step).

    ``dpo_logits`` / ``reverse_logits`` [..., V]. ``beta2`` >= 0 and ``eps`` > 0 may be traced.
    """
    check_range(beta2, "beta2", lo=0.0)
    check_range(eps, "eps", lo=0.0, lo_open=True)
    pd = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(dpo_logits, _F32)), axis=-1)
    pr = jax.nn.softmax(jax.lax.stop_gradient(jnp.asarray(reverse_logits, _F32)), axis=-1)
    tv = jnp.sum(jnp.abs(pd - pr), axis=-1)
    return jax.lax.stop_gradient(jnp.asarray(beta2, _F32) * tv + jnp.asarray(eps, _F32))


def extrapolated_logits(dpo_logits, reverse_logits, weight) -> jax.Array:
    """Returns float32 [..., V] ``z_d + w (z_d - z_r)`` (P15's teacher logits); ``weight`` [...] or a scalar;
    no gradient."""
    zd = jax.lax.stop_gradient(jnp.asarray(dpo_logits, _F32))
    zr = jax.lax.stop_gradient(jnp.asarray(reverse_logits, _F32))
    w = jax.lax.stop_gradient(jnp.asarray(weight, _F32))
    return zd + w[..., None] * (zd - zr) if w.ndim else zd + w * (zd - zr)


def aligndistil_per_token(
    student_logits, dpo_logits, reverse_logits, *, beta=0.1, beta2=10.0, temperature=1.0, eps=1e-3,
    adaptive: bool = True, divergence: str = "reverse",
) -> tuple[jax.Array, jax.Array]:
    """Returns (per-token loss [B, T], step w [B, T]) of AlignDistil (P15) for logits [B, T, V] (see the module doc).

    ``divergence="reverse"`` is the paper's ``KL(pi_theta || pi*)``; ``"forward"`` uses
    ``KL(pi* || pi_theta)``. ``beta``, ``beta2``, ``temperature``, ``eps`` may be traced.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    check_range(beta, "beta", lo=0.0, lo_open=True)
    check_range(beta2, "beta2", lo=0.0, lo_open=not adaptive)
    check_temperature(temperature)
    (s, zd, zr), _ = check_logits(("student_logits", student_logits), ("dpo_logits", dpo_logits),
                                   ("reverse_logits", reverse_logits))
    beta = jnp.asarray(beta, _F32)
    if adaptive:
        w = adaptive_weight(zd, zr, beta2, eps)
    else:
        w = jnp.broadcast_to(beta / jnp.asarray(beta2, _F32), s.shape[:2])
    target = extrapolated_logits(zd, zr, w) / jnp.asarray(temperature, _F32)
    kl = kl_from_logits(s, target) if divergence == "reverse" else kl_from_logits(target, s)
    return (beta / w) * kl, w


def aligndistil_loss(
    student_logits, dpo_logits, reverse_logits, mask=None, *, beta=0.1, beta2=10.0, temperature=1.0, eps=1e-3,
    adaptive: bool = True, divergence: str = "reverse", reduction: str = "seq_mean", normalizer=None,
) -> jax.Array:
    """Returns the AlignDistil loss (P15): per-token ``(beta / w_t) KL(pi_theta || softmax(z*_t / T))`` reduced.

    Logits [B, T, V] of the student, the DPO model and the reverse-DPO model (the same V);
    ``mask`` [B, T] the completion targets. ``reduction`` (default ``"seq_mean"``: the official
    length-normalised per-response sum, averaged over responses) and ``normalizer`` as in
    :func:`tokjax.losses.reduce_loss`; an empty mask gives 0 and a zero gradient.
    """
    (s,), m = check_logits(("student_logits", student_logits), mask=mask)
    per_tok, _ = aligndistil_per_token(s, dpo_logits, reverse_logits, beta=beta, beta2=beta2, temperature=temperature,
                                       eps=eps, adaptive=adaptive, divergence=divergence)
    return reduce_per_token(per_tok, m, reduction, normalizer)


def make_aligndistil_loss(
    dpo_model, reverse_model, *, beta: float = 0.1, beta2: float = 10.0, temperature: float = 1.0, eps: float = 1e-3,
    adaptive: bool = True, divergence: str = "reverse", reduction: str = "seq_mean",
) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: AlignDistil (P15) on a batch of responses.

    ``dpo_model`` / ``reverse_model``: fixed ``(params, cfg)`` pairs or tokjax.Models sharing the
    student's vocabulary. Batch: ``tokens`` [B, T+1] (prompt + chosen response, off-policy, or
    samples, on-policy) with ``prompt_lengths`` / ``lengths`` / ``mask`` selecting the response
    targets. Runtime overrides in ``batch["hparams"]``: ``beta``, ``beta2``, ``temperature``.
    Metrics: ``loss``, ``mean_weight`` (mean w_t), ``kl_to_dpo`` (token-mean reverse KL to the
    DPO model), ``token_count``, ``dpo_agreement``.
    """
    fixed = check_distill_factory(reduction=reduction, temperature=temperature, dpo_model=dpo_model,
                                  reverse_model=reverse_model)
    check_range(beta, "beta", lo=0.0, lo_open=True)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        b = read_distill_batch(batch, fixed)
        zd, zr = b.fixed
        mask = b.mask
        s_logits, _ = b.student_logits(params, cfg)
        per_tok, w = aligndistil_per_token(
            s_logits, zd, zr, beta=hparam_value(batch, "beta", beta), beta2=hparam_value(batch, "beta2", beta2),
            temperature=hparam_value(batch, "temperature", temperature), eps=eps, adaptive=adaptive,
            divergence=divergence)
        loss = reduce_per_token(per_tok, mask, reduction, b.normalizer)
        n = jnp.maximum(token_count(mask), 1.0)
        sg = jax.lax.stop_gradient
        kl_d = jnp.sum(jnp.where(mask, kl_from_logits(sg(s_logits), zd), 0.0)) / n
        return loss, {"loss": loss, "mean_weight": jnp.sum(jnp.where(mask, w, 0.0)) / n, "kl_to_dpo": kl_d,
                      "token_count": token_count(mask), "dpo_agreement": agreement(s_logits, zd, mask)}

    return loss_fn
