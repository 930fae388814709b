"""GRPO / DAPO policy-gradient core: group advantages and the clipped token-level surrogate.

The shared core of the token-level RL papers (issue 21; P63 high-entropy tokens, D3S, THR, LaSeR,
... plug in as token masks / weights, advantage shaping or auxiliary terms). Equations (GRPO,
Shao et al. 2024, DeepSeekMath; DAPO, Yu et al. 2025; TRL's ``GRPOTrainer``):

    rollouts: G per prompt, rows [g*G, (g+1)*G) of the batch (TRL's RepeatSampler order)
    A_i   = (R_i - mean_g R) / (std_g R + eps)        scale="group"   (GRPO; std unbiased, as torch)
          = (R_i - mean_g R) / (std_batch R + eps)    scale="batch"   (TRL scale_rewards="batch")
          =  R_i - mean_g R                           scale="none"    (Dr. GRPO)
    rloo: the centre is the mean of the *other* G-1 rewards, R_i - mean_{j != i} R_j
          = G / (G - 1) * (R_i - mean_g R)            (RLOO; scaled afterwards as above)
    token rewards (process supervision, DeepSeekMath sec. 4.1.3): rewards [B, T] at the positions
          of ``reward_mask``; each is normalised by its group's mean and std over all of the group's
          reward positions, and a token's advantage is the sum of the normalised rewards at or
          after it: A_{i,t} = sum_{s >= t} r~_{i,s}.

    r_{i,t} = pi_theta(o_{i,t} | .) / pi_old(o_{i,t} | .) = exp(logp - stop_grad(old_logp))
    L_{i,t} = w_{i,t} * ( -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * KL3_{i,t} )
    KL3     = exp(ref - logp) - (ref - logp) - 1      (k3 estimator of KL(pi_theta || pi_ref))

``w`` are TokenStats.weights (a LossTransform's token mask / weights; 1 = plain GRPO). Reductions
(as TRL's ``loss_type``): ``"token_mean"`` sum / number of counted tokens (DAPO, bnpo),
``"seq_mean"`` mean over each sequence's tokens then over sequences (GRPO), ``"const"`` sum /
(B * T) (Dr. GRPO). ``denominator="valid"`` counts every valid completion token (so a mask that
drops tokens only removes terms: P63's convention and TRL's); ``"kept"`` counts the tokens whose
weight is non-zero. A global ``normalizer`` (token count, sequence count or B*T over all
micro-batches / devices) makes micro-batch losses add up to the full-batch loss.

eps_low = 0.2, eps_high = 0.28 are DAPO's clip-higher defaults (eps_high = eps_low is GRPO's
symmetric clip); beta = 0 needs no reference model. ``eps_low``, ``eps_high`` and ``beta`` may be
traced arrays (a new value does not recompile).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._stats import TokenStats, reduce_loss
from tokjax.losses.registry import register_loss

__all__ = ["ADVANTAGE_SCALES", "DENOMINATORS", "GRPO_REDUCTIONS", "clipped_surrogate", "grpo_loss",
           "group_advantages", "k3_kl", "make_grpo_loss", "zero_advantage_groups"]

ADVANTAGE_SCALES = ("group", "batch", "none")
GRPO_REDUCTIONS = ("token_mean", "seq_mean", "const")
DENOMINATORS = ("valid", "kept")
_F32 = jnp.float32


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_group(n: int, group_size) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (rollouts per prompt), got {group_size!r}")
    if n % group_size:
        raise ValueError(f"the batch of {n} rollouts must be a multiple of group_size {group_size} "
                         "(G consecutive rows per prompt)")


def group_advantages(rewards, group_size: int, *, scale="group", rloo: bool = False, eps: float = 1e-4,
                     reward_mask=None) -> jax.Array:
    """Returns float32 GRPO advantages: [B] for sequence rewards [B], [B, T] for token rewards [B, T].

    ``scale``: "group" | "batch" | "none" (or True / False for "group" / "none"); ``rloo``: centre
    on the other rollouts' mean; ``eps`` (TRL: 1e-4) keeps an all-equal group at advantage 0.
    Token rewards need ``reward_mask`` [B, T] (the positions that carry a reward, e.g. step ends);
    the equations are in the module docstring. Non-finite rewards raise ValueError.
    """
    if isinstance(scale, bool):
        scale = "group" if scale else "none"
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES} (or a bool), got {scale!r}")
    check_range(eps, "eps", lo=0.0)
    rewards = jnp.asarray(rewards, _F32)
    if rewards.ndim not in (1, 2):
        raise ValueError(f"rewards must be [B] (one per rollout) or [B, T] (token rewards), got shape "
                         f"{tuple(rewards.shape)}")
    _check_group(rewards.shape[0], group_size)
    if _concrete(rewards) and not bool(np.all(np.isfinite(np.asarray(rewards)))):
        raise ValueError("rewards must be finite (got NaN or inf); score failed rollouts with a number, e.g. 0")
    G = group_size
    if rewards.ndim == 1:
        g = rewards.reshape(-1, G)
        mean = jnp.mean(g, axis=1, keepdims=True)
        centred = g - mean
        if rloo:
            centred = centred * (G / (G - 1))
        if scale == "group":
            centred = centred / (jnp.std(g, axis=1, ddof=1, keepdims=True) + eps)
        elif scale == "batch":
            centred = centred / (jnp.std(rewards, ddof=1) + eps)
        return centred.reshape(-1)
    if reward_mask is None:
        raise ValueError("token rewards [B, T] need reward_mask [B, T] (the positions that carry a reward)")
    rm = jnp.asarray(reward_mask).astype(bool)
    if rm.shape != rewards.shape:
        raise ValueError(f"reward_mask shape {tuple(rm.shape)} must equal rewards shape {tuple(rewards.shape)}")
    if rloo:
        raise ValueError("rloo is defined for one reward per rollout; token rewards use the group statistics")
    B, T = rewards.shape
    r = jnp.where(rm, rewards, 0.0).reshape(-1, G * T)
    m = rm.reshape(-1, G * T).astype(_F32)
    n = jnp.sum(m, axis=1, keepdims=True)
    mean = jnp.sum(r, axis=1, keepdims=True) / jnp.maximum(n, 1.0)
    norm = (r - mean) * m
    if scale == "group":
        var = jnp.sum(norm ** 2, axis=1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
        norm = norm / (jnp.sqrt(var) + eps)
    elif scale == "batch":
        flat_n = jnp.sum(m)
        flat_mean = jnp.sum(r) / jnp.maximum(flat_n, 1.0)
        var = jnp.sum(((r - flat_mean) * m) ** 2) / jnp.maximum(flat_n - 1.0, 1.0)
        norm = norm / (jnp.sqrt(var) + eps)
    norm = norm.reshape(B, T)
    return jnp.flip(jnp.cumsum(jnp.flip(norm, -1), axis=-1), -1)  # sum over s >= t


def zero_advantage_groups(rewards, group_size: int) -> jax.Array:
    """Returns the float32 fraction of groups whose rollouts all got the same reward (no GRPO signal)."""
    rewards = jnp.asarray(rewards, _F32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    _check_group(rewards.shape[0], group_size)
    g = rewards.reshape(-1, group_size)
    return jnp.mean(jnp.all(g == g[:, :1], axis=1).astype(_F32))


def _check_eps(eps_low, eps_high) -> None:
    check_range(eps_low, "eps_low", lo=0.0, hi=1.0, hi_open=True)
    check_range(eps_high, "eps_high", lo=0.0)


def clipped_surrogate(logp, old_logp, advantages, *, eps_low=0.2, eps_high=0.28):
    """Returns (objective [B, T] = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), ratio r [B, T]), float32.

    ``r = exp(logp - stop_gradient(old_logp))``; ``advantages`` is [B] (broadcast over tokens) or
    [B, T]. No mask is applied; the objective is to be *maximised*.
    """
    logp = jnp.asarray(logp, _F32)
    if logp.ndim != 2:
        raise ValueError(f"logp must have shape [B, T], got {tuple(logp.shape)}")
    old_logp = jnp.asarray(old_logp, _F32)
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp shape {tuple(old_logp.shape)} must equal logp shape {tuple(logp.shape)}")
    adv = jnp.asarray(advantages, _F32)
    if adv.shape == logp.shape[:1]:
        adv = adv[:, None]
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages must have shape [B]={logp.shape[:1]} or [B, T]={tuple(logp.shape)}, "
                         f"got {tuple(adv.shape)}")
    _check_eps(eps_low, eps_high)
    ratio = jnp.exp(logp - jax.lax.stop_gradient(old_logp))
    clipped = jnp.clip(ratio, 1.0 - jnp.asarray(eps_low, _F32), 1.0 + jnp.asarray(eps_high, _F32))
    return jnp.minimum(ratio * adv, clipped * adv), ratio


def k3_kl(logp, ref_logp) -> jax.Array:
    """Returns the per-token k3 estimate exp(ref - logp) - (ref - logp) - 1 >= 0 of KL(pi || pi_ref)."""
    d = jnp.asarray(ref_logp, _F32) - jnp.asarray(logp, _F32)
    return jnp.exp(d) - d - 1.0


def grpo_loss(stats: TokenStats, old_logp, advantages, *, eps_low=0.2, eps_high=0.28, beta=0.0,
              reduction: str = "token_mean", denominator: str = "valid", normalizer=None) -> tuple[jax.Array, dict]:
    """Returns (scalar loss to minimise, metrics) of the clipped GRPO/DAPO objective on ``stats``.

    ``stats`` [B, T] (``token_stats`` of the rollouts: ``mask`` = valid completion tokens,
    ``weights`` = a transform's token weights, ``ref_logp`` needed when ``beta`` > 0, ``entropy``
    reported when present); ``old_logp`` [B, T] the sampling policy's log-probs; ``advantages``
    [B] or [B, T]. Equation, reductions and ``denominator`` in the module docstring. Tokens outside
    the mask (pads with -inf log-probs included) enter neither the sum nor the gradient; an empty
    mask gives loss 0. Metrics: ``loss``, ``policy_loss``, ``kl``, ``clip_low`` / ``clip_high`` /
    ``clip_fraction`` (kept tokens whose ratio is clipped in the direction that stops the
    gradient), ``kept_fraction``, ``token_count``, ``entropy`` (when computed).
    """
    if not isinstance(stats, TokenStats):
        raise ValueError(f"stats must be a TokenStats (tokjax.losses.token_stats), got {type(stats).__name__}")
    if reduction not in GRPO_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GRPO_REDUCTIONS}, got {reduction!r}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    check_range(beta, "beta", lo=0.0)
    if _concrete(beta) and float(beta) > 0 and stats.ref_logp is None:
        raise ValueError("beta > 0 needs reference log-probs: TokenStats.ref_logp (batch['ref_logp'] or a "
                         "reference model); use beta=0 to train without a reference")
    mask = stats.mask
    keep = mask & (stats.weights != 0)
    # Dropped positions get finite stand-ins so a -inf pad log-prob cannot reach the gradient as NaN.
    logp = jnp.where(keep, stats.logp, 0.0)
    old = jnp.where(keep, jnp.asarray(old_logp, _F32), 0.0) if jnp.shape(old_logp) == logp.shape else old_logp
    objective, ratio = clipped_surrogate(logp, old, advantages, eps_low=eps_low, eps_high=eps_high)
    w = jnp.where(keep, stats.weights, 0.0)
    pg = -objective * w
    kl = jnp.zeros_like(pg)
    if stats.ref_logp is not None:
        kl = k3_kl(logp, jnp.where(keep, stats.ref_logp, 0.0))
    per_token = pg + jnp.asarray(beta, _F32) * kl * w
    counted = stats.replace(mask=mask if denominator == "valid" else keep)
    if reduction == "const" and normalizer is None:
        normalizer = float(math.prod(mask.shape))
    loss = reduce_loss(counted, reduction, per_token=per_token, normalizer=normalizer)
    policy_loss = reduce_loss(counted, reduction, per_token=pg, normalizer=normalizer)

    sg = jax.lax.stop_gradient
    adv = jnp.asarray(advantages, _F32)
    adv = adv[:, None] if adv.ndim == 1 else adv
    r = sg(ratio)
    low = keep & (r < 1.0 - jnp.asarray(eps_low, _F32)) & (adv < 0)
    high = keep & (r > 1.0 + jnp.asarray(eps_high, _F32)) & (adv > 0)
    n_keep = jnp.maximum(jnp.sum(keep), 1).astype(_F32)
    n_valid = jnp.sum(mask).astype(_F32)
    metrics = {
        "loss": loss, "policy_loss": policy_loss,
        "kl": jnp.sum(jnp.where(keep, sg(kl), 0.0)) / n_keep,
        "clip_low": jnp.sum(low) / n_keep, "clip_high": jnp.sum(high) / n_keep,
        "clip_fraction": jnp.sum(low | high) / n_keep,
        "kept_fraction": jnp.sum(keep) / jnp.maximum(n_valid, 1.0), "token_count": n_valid,
    }
    if stats.entropy is not None:
        metrics["entropy"] = jnp.sum(jnp.where(keep, sg(stats.entropy), 0.0)) / n_keep
    return loss, metrics


def _check_span(span) -> None:
    """Raises ValueError unless ``span`` (targets scored per row, see :func:`make_grpo_loss`) is None or an int >= 1."""
    if span is not None and (not isinstance(span, int) or isinstance(span, bool) or span < 1):
        raise ValueError(f"span must be None (every target) or a static int >= 1 (targets scored per row), "
                         f"got {span!r}")


def make_grpo_loss(*, eps_low=0.2, eps_high=0.28, beta=0.0, reduction: str = "token_mean",
                   denominator: str = "valid", entropy: bool = False, transforms=(), on_policy: bool = False,
                   span: int | None = None):
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`grpo_loss` in the train signature.

    Batch: the rollouts as :func:`tokjax.losses.token_stats` reads them (``tokens`` [B, T+1] with
    ``mask`` / ``prompt_lengths`` / ``lengths`` selecting completion tokens), ``old_logp`` [B, T],
    ``advantages`` [B] or [B, T], ``ref_logp`` [B, T] when ``beta`` > 0, optional ``normalizer``
    (the global denominator under gradient accumulation). ``transforms``: LossTransforms applied to
    the stats first (token masks / weights, e.g. P63's entropy mask).

    ``on_policy``: the parameters are the sampling policy's (one optimiser step per rollout batch), so
    ``old_logp`` is the stop-gradient of this forward's own log-probs (before the transforms), as TRL's
    ``num_iterations=1``: no separate old-logp forward and no ``batch["old_logp"]`` (the ratio is exactly 1,
    the gradient the GRPO one). ``span``: :func:`token_stats`'s option, the head runs on ``span`` targets per
    row from the first completion target (the rollouts' ``max_new_tokens``; None: every target).
    """
    from tokjax.losses._next_token import token_stats
    from tokjax.losses._stats import chain

    if reduction not in GRPO_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GRPO_REDUCTIONS}, got {reduction!r}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    _check_eps(eps_low, eps_high)
    check_range(beta, "beta", lo=0.0)
    _check_span(span)
    transform = chain(*transforms) if isinstance(transforms, (tuple, list)) else transforms
    needs = ("advantages",) if on_policy else ("old_logp", "advantages")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        for key in needs:
            if not isinstance(batch, dict) or key not in batch:
                raise ValueError(f"a GRPO batch needs '{key}' (and the rollout tokens); got keys "
                                 f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        stats = token_stats(params, cfg, batch, entropy=entropy or "entropy" in transform.requires, span=span)
        if on_policy:  # the sampling policy is these parameters: its log-probs are this forward's (what transforms see)
            batch = {**batch, "old_logp": jax.lax.stop_gradient(stats.logp)}
        stats, _ = transform.apply(stats, transform.init(), batch)
        return grpo_loss(stats, batch["old_logp"], batch["advantages"], eps_low=eps_low, eps_high=eps_high,
                         beta=beta, reduction=reduction, denominator=denominator, normalizer=batch.get("normalizer"))

    return loss_fn


def _grpo_factory(eps_low, eps_high, beta, reduction, denominator, entropy):
    return make_grpo_loss(eps_low=eps_low, eps_high=eps_high, beta=beta, reduction=reduction,
                          denominator=denominator, entropy=entropy)


register_loss("grpo", _grpo_factory,
              {"eps_low": 0.2, "eps_high": 0.28, "beta": 0.0, "reduction": "token_mean", "denominator": "valid",
               "entropy": False},
              doc="GRPO / DAPO clipped token-level policy gradient on rollouts (batch: tokens, mask, old_logp, "
                  "advantages[, ref_logp])", overwrite=True)
