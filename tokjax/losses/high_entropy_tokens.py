"""High-entropy minority tokens (P63): DAPO policy gradient restricted to the top-rho entropy tokens.

Paper: *Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning
for LLM Reasoning* (Wang et al., arXiv 2506.01939; official code Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR
on verl; TRL implements it as ``GRPOConfig.top_entropy_quantile``). Only a small fraction of
chain-of-thought tokens have high entropy ("forking tokens"); updating only those (rho = 20%) is
as good as updating all tokens at 8B and better at 14B/32B.

The objective is DAPO's (token-level normalisation, clip-higher, no KL) times an entropy mask:

    H_{i,t}  = -sum_v pi_theta(v | q, o_{i,<t}) log pi_theta(v | q, o_{i,<t})          (entropy, nats)
    tau_rho  = the (1 - rho)-quantile of {H_{i,t} : (i, t) valid} over the whole batch
    r_{i,t}  = pi_theta(o_{i,t} | ...) / pi_old(o_{i,t} | ...)
    J(theta) = 1 / (sum_i |o_i|) * sum_i sum_t 1[H_{i,t} >= tau_rho]
               * min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i)         (P63 eq., DAPO)
    A_i      = (R_i - mean_g R) / std_g R                                              (GRPO, per group g)

with eps_low = 0.2, eps_high = 0.28. The normaliser counts *all* valid tokens (not only the kept
ones), as in TRL and the paper's equation, so rho = 1 is exactly full-token DAPO and a smaller rho
only removes terms. The loss minimised is -J.

Functions: :func:`token_entropy`, :func:`top_entropy_mask`, :func:`group_advantages`,
:func:`dapo_token_objective`, :func:`dapo_loss`. All are pure and jit-compatible; ``rho``,
``eps_low`` and ``eps_high`` may be traced arrays (a new value does not recompile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range, entropy
from tokjax.losses import grpo

__all__ = [
    "DAPO_EPS_HIGH", "DAPO_EPS_LOW", "dapo_loss", "dapo_token_objective", "group_advantages",
    "token_entropy", "top_entropy_mask",
]

DAPO_EPS_LOW = 0.2
DAPO_EPS_HIGH = 0.28
_F32 = jnp.float32
# rho * n_valid within this relative distance of an integer counts as that integer, so float32
# rounding (0.2f * 10 = 2.0000000298) never keeps one token too many.
_COUNT_RTOL = 1e-6


def _as_mask(mask, shape, name="mask") -> jax.Array:
    if mask is None:
        return jnp.ones(shape, bool)
    mask = jnp.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} shape {tuple(mask.shape)} must equal {tuple(shape)}")
    return mask.astype(bool)


def token_entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Returns float32 [...] entropies H = -sum_v p_v log p_v (nats) of ``logits`` [..., V]; 0 where ``mask`` is False.

    Computed in float32 from ``log_softmax`` (stable for large logits); ``-inf`` logits (banned
    tokens) contribute 0. ``mask`` [...] is optional (default: all valid).
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    mask = _as_mask(mask, logits.shape[:-1])
    return jnp.where(mask, entropy(logits), 0.0)


def top_entropy_mask(entropy: jax.Array, mask: jax.Array | None, rho) -> jax.Array:
    """Returns bool [...]: the valid tokens whose entropy is in the top ``rho`` fraction of the batch (P63).

    With n = number of valid tokens (``mask`` True) and k = ceil(rho * n), the threshold tau is
    the k-th largest valid entropy, and a token is kept iff it is valid and ``entropy >= tau``.
    So exactly k tokens are kept when the valid entropies are distinct; tokens tied with the
    threshold are all kept (more than k). Pads are never kept; n = 0 keeps nothing; rho = 1 keeps
    every valid token. The quantile is over all valid tokens of the array (the whole batch, not
    per sequence); under data parallelism gather the entropies first (TRL gathers across processes).

    Compared with TRL's ``torch.quantile(H_valid, 1 - rho)`` (linear interpolation), which keeps
    floor(rho * n + 1 - rho) distinct tokens: identical when rho * n is an integer, otherwise TRL
    may keep floor(rho * n) where this keeps ceil(rho * n).

    ``rho`` is a scalar in (0, 1] (a traced array is allowed and not range-checked).
    """
    entropy = jnp.asarray(entropy, _F32)
    mask = _as_mask(mask, entropy.shape)
    if jnp.ndim(rho) != 0:
        raise ValueError(f"rho must be a scalar, got shape {tuple(jnp.shape(rho))}")
    check_range(rho, "rho", lo=0.0, lo_open=True, hi=1.0)
    rho = jnp.asarray(rho, _F32)
    flat = jnp.where(mask, entropy, -jnp.inf).reshape(-1)
    n = jnp.sum(mask).astype(_F32)
    target = rho * n
    k = jnp.ceil(target - _COUNT_RTOL * jnp.maximum(target, 1.0))
    k = jnp.clip(k, 1.0, jnp.maximum(n, 1.0)).astype(jnp.int32)
    desc = -jnp.sort(-flat)
    tau = desc[k - 1]
    return mask & (entropy >= tau) & (n > 0)


def group_advantages(rewards: jax.Array, group_size: int, *, scale: bool = True, eps: float = 1e-6) -> jax.Array:
    """Returns float32 [B] GRPO advantages A_i = (R_i - mean_g R) / (std_g R + eps) of ``rewards`` [B].

    :func:`tokjax.losses.grpo.group_advantages` with this module's historical defaults (``scale``
    a bool, ``eps`` 1e-6); rows [g*G, (g+1)*G) are the G rollouts of prompt g, ``std`` is unbiased,
    ``scale=False`` gives Dr. GRPO's mean-only centring, an all-equal group gets advantage 0.
    """
    rewards = jnp.asarray(rewards, _F32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape [B], got {tuple(rewards.shape)}")
    return grpo.group_advantages(rewards, group_size, scale="group" if scale else "none", eps=eps)


def dapo_token_objective(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, *,
                         eps_low=DAPO_EPS_LOW, eps_high=DAPO_EPS_HIGH) -> jax.Array:
    """Returns float32 [B, T] per-token clipped surrogate min(r A, clip(r, 1 - eps_low, 1 + eps_high) A).

    ``r = exp(logp - stop_gradient(old_logp))``; ``advantages`` is [B] (one per sequence, broadcast
    over tokens) or [B, T]. No mask is applied here; see :func:`dapo_loss`. (The objective of
    :func:`tokjax.losses.grpo.clipped_surrogate`.)
    """
    return grpo.clipped_surrogate(logp, old_logp, advantages, eps_low=eps_low, eps_high=eps_high)[0]


def dapo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array | None = None, *,
              token_mask: jax.Array | None = None, eps_low=DAPO_EPS_LOW, eps_high=DAPO_EPS_HIGH,
              normalizer=None) -> jax.Array:
    """Returns the scalar DAPO loss -J (P63 eq. with ``token_mask``), float32.

    ``-(1 / N) * sum_{i,t} mask * token_mask * min(r A, clip(r, 1-eps_low, 1+eps_high) A)`` with
    N = ``normalizer`` if given (e.g. the global valid-token count under data parallelism or
    gradient accumulation) else the number of valid tokens ``sum(mask)`` -- the same N whatever
    ``token_mask`` keeps, so ``token_mask=top_entropy_mask(H, mask, rho)`` is the P63 loss and
    rho = 1 is full-token DAPO exactly. N = 0 gives loss 0 and gradient 0.

    Shapes: ``logp``, ``old_logp``, ``mask``, ``token_mask`` [B, T]; ``advantages`` [B] or [B, T].
    """
    logp = jnp.asarray(logp, _F32)
    mask = _as_mask(mask, logp.shape)
    keep = mask & _as_mask(token_mask, logp.shape, "token_mask") if token_mask is not None else mask
    # Zero the log-probs of dropped tokens so a -inf pad log-prob cannot turn into a NaN gradient.
    old_logp = jnp.asarray(old_logp, _F32)
    safe_old = jnp.where(keep, old_logp, 0.0) if old_logp.shape == logp.shape else old_logp
    per_token = dapo_token_objective(jnp.where(keep, logp, 0.0), safe_old, advantages,
                                     eps_low=eps_low, eps_high=eps_high)
    if normalizer is None:
        n = jnp.sum(mask).astype(_F32)
    else:
        check_range(normalizer, "normalizer", lo=0.0)
        n = jnp.asarray(normalizer, _F32)
    total = jnp.sum(jnp.where(keep, per_token, 0.0))
    return jnp.where(n > 0, -total / jnp.where(n > 0, n, 1.0), 0.0)
