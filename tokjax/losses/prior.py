"""PRIOR (P78): weight each caption token by how badly a text-only reference model predicts it.

Paper: *Prioritizing Image-Related Tokens Enhances Vision-Language Pre-Training* (Chen, Peng,
Zhang, Ji; arXiv 2505.08971; repository Yangyi-Chen/PRIOR holds a README only). A reference LM
trained on the captions *without* the image gives P_r(t_i | t_<i); tokens it finds hard are the
ones that depend on the image, and they get more weight in the next-token loss:

    w_i = (1 - P_r(t_i | t_<i))^alpha                                          (P78, alpha = 1)
    L   = - sum_i k * (w_i / sum_j w_j) * log p_theta(t_i | image, t_<i)       (P78, k = caption length)

i.e. the weights are normalised per sequence to sum to its number of (masked-in) tokens, so the
loss scale of plain NTP is kept. They carry no gradient (the reference is fixed). The default
alpha = 1 and the per-sequence normalisation come from a secondary source [unverified against
the paper's equation: the official code is not released and the paper text was not available].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range, hparam
from tokjax.losses._stats import LossTransform, TokenStats

__all__ = ["NORMALIZE", "Prior", "prior", "prior_weights"]

NORMALIZE = ("sequence", "none")
_F32 = jnp.float32


def prior_weights(ref_logp: jax.Array, mask: jax.Array | None = None, alpha=1.0, *,
                  normalize: str = "sequence") -> jax.Array:
    """Returns float32 [..., T] stop-gradient PRIOR weights ``(1 - P_ref)^alpha`` (P78), 0 off the mask.

    ``ref_logp`` [..., T] holds log P_ref of each target. With ``normalize="sequence"`` (default)
    each row is rescaled so its weights sum to its number of masked-in tokens (k w_i / sum_j w_j);
    a row whose raw weights are all 0 (every token certain under the reference) falls back to
    weight 1 per token. ``normalize="none"`` returns the raw ``(1 - P_ref)^alpha``.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    check_range(alpha, "alpha", lo=0.0)
    ref_logp = jnp.asarray(ref_logp, _F32)
    mask = jnp.ones(ref_logp.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if mask.shape != ref_logp.shape:
        raise ValueError(f"mask shape {mask.shape} must equal ref_logp shape {ref_logp.shape}")
    ref_logp = jax.lax.stop_gradient(jnp.minimum(ref_logp, 0.0))
    alpha = jax.lax.stop_gradient(jnp.asarray(alpha, _F32))
    miss = -jnp.expm1(ref_logp)  # 1 - P_ref, accurate when P_ref is near 1
    raw = jnp.where(mask, jnp.power(miss, alpha), 0.0)
    if normalize == "none":
        return jax.lax.stop_gradient(raw)
    n = jnp.sum(mask.astype(_F32), axis=-1, keepdims=True)
    total = jnp.sum(raw, axis=-1, keepdims=True)
    ok = total > 0
    w = jnp.where(ok, raw * n / jnp.where(ok, total, 1.0), mask.astype(_F32))
    return jax.lax.stop_gradient(w)


@dataclasses.dataclass(frozen=True)
class Prior(LossTransform):
    """The PRIOR loss transform (P78): multiplies the token weights by
    :func:`prior_weights` of ``stats.ref_logp`` (alpha is a runtime hyperparameter in the state)."""

    alpha: object = hparam(1.0)
    normalize: str = "sequence"
    requires = ("ref_logp",)

    def __post_init__(self):
        check_range(self.alpha, "alpha", lo=0.0)
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {self.normalize!r}")

    def init(self):
        return {"alpha": jnp.asarray(self.alpha, _F32)}

    def apply(self, stats: TokenStats, state, batch):
        if stats.ref_logp is None:
            raise ValueError("PRIOR needs reference log-probs: TokenStats.ref_logp (batch['ref_logp'] or "
                             "next_token_loss(..., ref=(ref_params, ref_cfg)))")
        w = prior_weights(stats.ref_logp, stats.mask, state["alpha"], normalize=self.normalize)
        return stats.replace(weights=stats.weights * w), state


def prior(alpha: float = 1.0, *, normalize: str = "sequence") -> Prior:
    """Returns the PRIOR loss transform: token weights ``(1 - P_ref)^alpha`` normalised per sequence (P78)."""
    return Prior(alpha=alpha, normalize=normalize)
