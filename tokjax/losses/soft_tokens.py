"""P37 Soft Tokens, Hard Truths: RL on a continuous chain of thought (noisy soft / fuzzy input embeddings).

Paper: Butt, Kwiatkowski, Labiad, Kempe, Ollivier, "Soft Tokens, Hard Truths" (P37; arXiv 2509.19170, Meta FAIR;
code "TBD"). During the chain of thought (CoT) the model does not sample a token: its next *input embedding* is
the probability-weighted mixture of the embedding table plus Gaussian noise, which is what RL explores::

    p_{t-1}   = softmax(z_{t-1} / tau)                       (z: the logits after step t-1)
    h~_t      = p_{t-1} E + sigma * eps_t,   eps_t ~ N(0, I_d)                                 (CoT input)
    tau = 0.5: "soft" tokens;  tau = 1e-4: "fuzzy" tokens (p E is nearly the argmax token's embedding);
    hard tokens: y_t ~ softmax(z_{t-1}), input E[y_t] (ordinary sampling)

The answer after the CoT is sampled with hard tokens. The policy's log-likelihood of a rollout is

    log pi(rollout) = sum_{soft t} log N(h~_t; p_{t-1} E, sigma^2 I_d) + sum_{hard t} log pi(y_t | ...)
    log N(x; mu, sigma^2 I) = -||x - mu||^2 / (2 sigma^2) - d log sigma - (d / 2) log(2 pi)

with the gradient flowing through p_{t-1} (the logits, hence every weight), not through the sampled h~_t, which
are data, nor through E in the mean p E (the notes: "gradients flow through p into the logits"; E still trains
through hard inputs and a tied head). With E in the mean trainable, the fuzzy limit would keep a score
eps / sigma on the argmax row of E, which no hard-token likelihood has.

RL is RLOO with a verifiable reward: A_i = R_i - mean_{j != i} R_j over the G rollouts of a prompt,
loss = -A_i * log pi(rollout_i). Here that loss is tokjax's GRPO core
(:func:`tokjax.losses.grpo.grpo_loss`) with the per-position log-likelihood above in place of the token
log-prob: on-policy (one update per rollout batch, so the ratio is exactly 1 and no clip is active) and with
``group_advantages(rewards, G, scale="none", rloo=True)`` it is the RLOO policy gradient; a batch whose
every position is hard is GRPO on the hard tokens (equal up to float rounding: naive vs cut head).

Position kinds (``batch["kinds"]`` [B, W], per token slot, like ``tokens``):

* :data:`KIND_SOFT` (2): the slot's input was the noisy mixture ``batch["embeds"][b, s]``; its term is the
  Gaussian log-density under the mean from the logits at s - 1;
* :data:`KIND_HARD` (1): the slot's token was sampled; its term is log softmax(z_{s-1} / temperature)[y_s];
* :data:`KIND_NONE` (0): no term (the prompt, padding, or a deterministic slot such as the end-of-CoT token
  that the CoT's argmax readout chose).

**Reductions.** (i) All slots hard: the loss equals ``grpo_loss`` on :func:`tokjax.losses.token_stats` of the
same tokens (the hard likelihood), values and gradients. (ii) tau -> 0 and sigma -> 0: a soft/fuzzy rollout is
the greedy hard rollout (the strategy's test) and each CoT slot's Gaussian term loses its dependence on the
weights (its gradient is ~ exp(-gap / tau) / tau, exactly 0 in float32 once p is one-hot; its value is a
weight-free constant), as does the tempered hard log-likelihood log softmax(z / tau)[argmax] = 0 of the same
greedy token; the loss's gradient reduces to the hard likelihood's of the answer given the greedy CoT. The
Gaussian density itself has no sigma -> 0 limit (its score grows like 1 / sigma), so (ii) is a statement about
the joint limit with tau -> 0 first, not about sigma alone.

The rollouts come from :class:`tokjax.decoding.soft_tokens.SoftTokens` (a ``tokjax.generate`` Strategy that
records ``embeds``, ``kinds`` and the rollout-time log-likelihood of each slot). tau, sigma and the hard
temperature are runtime arrays (batch entries; a new value does not recompile). Unverified in the notes:
the paper's sigma and how the CoT ends (here: when the CoT's argmax readout is one of ``end_ids``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._stats import TokenStats, check_token_ids, shifted_completion_mask
from tokjax.losses.grpo import DENOMINATORS, GRPO_REDUCTIONS, grpo_loss
from tokjax.losses.registry import register_loss
from tokjax.model.forward import Inputs, embed, embedding_matrix, forward

__all__ = ["FUZZY_TAU", "KIND_HARD", "KIND_NONE", "KIND_SOFT", "SOFT_TAU", "check_noise_scale",
           "cot_log_likelihood", "gaussian_log_density", "make_soft_tokens_loss", "soft_input", "soft_mixture",
           "soft_token_logp", "soft_tokens_loss"]

KIND_NONE, KIND_HARD, KIND_SOFT = 0, 1, 2
SOFT_TAU, FUZZY_TAU = 0.5, 1e-4
_F32 = jnp.float32
_LOG_2PI = math.log(2.0 * math.pi)


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _trailing(x, ndim: int, name: str) -> jax.Array:
    """Returns ``x`` (scalar or [B] / [B, T]) as float32 with trailing unit axes up to ``ndim`` axes."""
    x = jnp.asarray(x, _F32)
    if x.ndim > ndim:
        raise ValueError(f"{name} must be a scalar or one value per row, got shape {tuple(x.shape)}")
    return x.reshape(x.shape + (1,) * (ndim - x.ndim)) if x.ndim else x


def check_noise_scale(sigma, *, allow_zero: bool = True) -> None:
    """Returns None; ValueError unless ``sigma`` (scalar or per row) is finite and >= 0 (> 0 when
    ``allow_zero`` is False: the Gaussian log-density needs sigma > 0)."""
    check_range(sigma, "sigma (the CoT noise scale)", lo=0.0, lo_open=not allow_zero)


def soft_mixture(logits: jax.Array, table: jax.Array, tau) -> jax.Array:
    """Returns the noise-free CoT input p E [..., D] float32, p = softmax(logits / tau) over the last axis (P37).

    ``logits`` [..., V]; ``table`` the input embedding matrix E [V, D]; ``tau`` > 0, a scalar or one value per
    leading row (broadcast over the remaining axes).
    """
    check_range(tau, "tau (the CoT temperature)", lo=0.0, lo_open=True)
    logits = jnp.asarray(logits)
    if logits.shape[-1] != table.shape[0]:
        raise ValueError(f"logits have {logits.shape[-1]} entries but the embedding table has {table.shape[0]} rows")
    t = _trailing(tau, logits.ndim, "tau")
    p = jax.nn.softmax(logits.astype(_F32) / t, axis=-1)
    return p @ table.astype(_F32)


def soft_input(logits: jax.Array, table: jax.Array, tau, sigma, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (h~ = p E + sigma * noise, the mean p E), each [..., D] float32: the next CoT input (P37).

    ``noise`` [..., D] standard normal draws; ``sigma`` >= 0, a scalar or one value per leading row.
    """
    check_noise_scale(sigma)
    mean = soft_mixture(logits, table, tau)
    if jnp.shape(noise) != mean.shape:
        raise ValueError(f"noise must have the mixture's shape {tuple(mean.shape)}, got {tuple(jnp.shape(noise))}")
    return mean + _trailing(sigma, mean.ndim, "sigma") * jnp.asarray(noise, _F32), mean


def gaussian_log_density(x: jax.Array, mean: jax.Array, sigma) -> jax.Array:
    """Returns log N(x; mean, sigma^2 I_d) [...] float32 of ``x``, ``mean`` [..., d]; ``sigma`` > 0 (scalar or per
    leading row)."""
    check_noise_scale(sigma, allow_zero=False)
    x, mean = jnp.asarray(x, _F32), jnp.asarray(mean, _F32)
    if x.shape != mean.shape:
        raise ValueError(f"x and mean must have the same shape, got {tuple(x.shape)} and {tuple(mean.shape)}")
    s = _trailing(sigma, x.ndim - 1, "sigma")
    d = x.shape[-1]
    sq = jnp.sum(jnp.square(x - mean), axis=-1)
    return -sq / (2.0 * s * s) - d * jnp.log(s) - 0.5 * d * _LOG_2PI


def cot_log_likelihood(logits_prev: jax.Array, x: jax.Array, table: jax.Array, tau, sigma) -> jax.Array:
    """Returns log N(x; softmax(logits_prev / tau) E, sigma^2 I) [...] float32: the P37 policy log-likelihood of
    the soft CoT input ``x`` [..., D] given the previous step's logits [..., V] (differentiable in the logits
    and E)."""
    return gaussian_log_density(x, soft_mixture(logits_prev, table, tau), sigma)


def _check_kinds(kinds, shape) -> jax.Array:
    kinds = jnp.asarray(kinds)
    if kinds.shape != shape:
        raise ValueError(f"batch['kinds'] must be [B, W]={shape} like batch['tokens'] (one kind per token slot), "
                         f"got {tuple(kinds.shape)}")
    if not jnp.issubdtype(kinds.dtype, jnp.integer):
        raise ValueError(f"batch['kinds'] must be integers (0 none, 1 hard, 2 soft), got dtype {kinds.dtype}")
    if _concrete(kinds):
        bad = np.setdiff1d(np.unique(np.asarray(kinds)), [KIND_NONE, KIND_HARD, KIND_SOFT])
        if bad.size:
            raise ValueError(f"batch['kinds'] values must be {KIND_NONE} (no term), {KIND_HARD} (hard token) or "
                             f"{KIND_SOFT} (soft input), got {bad.tolist()}")
    return kinds.astype(jnp.int32)


def soft_token_logp(params, cfg, batch: dict) -> TokenStats:
    """Returns TokenStats [B, W-1] whose ``logp`` is each slot's P37 policy log-likelihood (see the module doc).

    Batch: ``tokens`` int [B, W] (the shown tokens: the CoT's argmax readout at soft slots), ``kinds`` int
    [B, W] (0 none, 1 hard, 2 soft; per token slot), ``embeds`` float [B, W, D] (the noisy input h~ at soft
    slots; other slots are ignored and may hold anything finite), ``tau`` and ``sigma`` (scalars or [B];
    sigma > 0 where a soft slot exists), optional ``temperature`` (hard tokens' sampling temperature, default
    1), ``prompt_lengths`` / ``lengths`` / ``mask`` as :func:`tokjax.losses.token_stats`. Target t scores slot
    t + 1 from the logits at slot t; the mask keeps the slots with kind != 0 inside the completion. One
    forward reads E[token] at hard / none slots and ``embeds`` at soft slots ([B, W-1, V] logits are
    materialised: meant for small vocabularies or short CoTs).
    """
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise ValueError("a soft-token batch must be a dict with 'tokens' [B, W], 'kinds' [B, W] and 'embeds' "
                         f"[B, W, D]; got {type(batch).__name__}")
    for key in ("kinds", "embeds", "tau", "sigma"):
        if key not in batch:
            raise ValueError(f"a soft-token batch needs {key!r} (keys: 'tokens', 'kinds', 'embeds', 'tau', 'sigma'); "
                             f"got {sorted(batch)}")
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    B, W = tokens.shape
    if _concrete(tokens) and int(np.max(np.asarray(tokens))) >= cfg.vocab_size:
        raise ValueError(f"batch['tokens'] holds ids >= the vocabulary size {cfg.vocab_size}")
    kinds = _check_kinds(batch["kinds"], (B, W))
    embeds = jnp.asarray(batch["embeds"])
    if embeds.shape != (B, W, cfg.d_model):
        raise ValueError(f"batch['embeds'] must be [B, W, D]={(B, W, cfg.d_model)} (the input embedding of every "
                         f"soft slot), got {tuple(embeds.shape)}")
    tau, sigma = batch["tau"], batch["sigma"]
    temperature = batch.get("temperature", 1.0)
    check_range(tau, "tau (the CoT temperature)", lo=0.0, lo_open=True)
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    if _concrete(kinds) and bool(np.any(np.asarray(kinds) == KIND_SOFT)):
        check_noise_scale(sigma, allow_zero=False)
    else:
        check_noise_scale(sigma)
    table = jax.lax.stop_gradient(embedding_matrix(params["embed"]))  # the mean's gradient flows through p only (see the module doc)
    soft = kinds == KIND_SOFT
    x = jnp.where(soft[..., None], jax.lax.stop_gradient(embeds).astype(cfg.dtype), embed(params, cfg, tokens))
    z = forward(params, cfg, Inputs(embeds=x[:, :-1])).logits.astype(_F32)  # [B, W-1, V]
    y = tokens[:, 1:]
    hard_lp = jax.nn.log_softmax(z / _trailing(temperature, 3, "temperature"), axis=-1)
    hard_lp = jnp.take_along_axis(hard_lp, y[..., None], axis=-1)[..., 0]
    # sigma = 0 is allowed without soft slots: a finite stand-in keeps the (unused) Gaussian branch finite.
    s = jnp.asarray(sigma, _F32)
    s = jnp.where(s > 0, s, 1.0)
    soft_lp = cot_log_likelihood(z, jax.lax.stop_gradient(embeds[:, 1:]).astype(_F32), table, tau, s)
    k = kinds[:, 1:]
    mask = shifted_completion_mask(tokens, batch.get("prompt_lengths"), batch.get("lengths")) & (k != KIND_NONE)
    if batch.get("mask") is not None:
        m = jnp.asarray(batch["mask"]).astype(bool)
        mask &= m[:, 1:] if m.shape == (B, W) else m
    logp = jnp.where(k == KIND_SOFT, soft_lp, hard_lp)
    return TokenStats.create(jnp.where(mask, logp, 0.0), mask)


def soft_tokens_loss(params, cfg, batch: dict, rng=None, *, eps_low=0.2, eps_high=0.28, reduction="token_mean",
                     denominator="valid") -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the GRPO/RLOO policy-gradient loss on the P37 log-likelihoods of a soft-token batch.

    The batch of :func:`soft_token_logp` plus ``old_logp`` [B, W-1] (the same log-likelihoods under the rollout
    policy, no gradient) and ``advantages`` [B] (RLOO: ``group_advantages(r, G, scale="none", rloo=True)``).
    Metrics: GRPO's, plus ``soft_fraction`` (counted slots that are soft) and ``soft_logp`` (their mean
    log-likelihood).
    """
    del rng
    for key in ("old_logp", "advantages"):
        if not isinstance(batch, dict) or key not in batch:
            raise ValueError(f"a soft-token RL batch needs '{key}' (and tokens, kinds, embeds, tau, sigma); got keys "
                             f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
    stats = soft_token_logp(params, cfg, batch)
    loss, metrics = grpo_loss(stats, batch["old_logp"], batch["advantages"], eps_low=eps_low, eps_high=eps_high,
                              reduction=reduction, denominator=denominator, normalizer=batch.get("normalizer"))
    soft = (jnp.asarray(batch["kinds"])[:, 1:] == KIND_SOFT) & stats.mask
    n = jnp.maximum(jnp.sum(stats.mask), 1)
    metrics = {**metrics, "soft_fraction": jnp.sum(soft) / n,
               "soft_logp": jnp.sum(jnp.where(soft, stats.logp, 0.0)) / jnp.maximum(jnp.sum(soft), 1)}
    return loss, metrics


def make_soft_tokens_loss(*, eps_low=0.2, eps_high=0.28, reduction: str = "token_mean",
                          denominator: str = "valid"):
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`soft_tokens_loss` (options
    validated now)."""
    check_range(eps_low, "eps_low", lo=0.0, hi=1.0, hi_open=True)
    check_range(eps_high, "eps_high", lo=0.0)
    if reduction not in GRPO_REDUCTIONS:
        raise ValueError(f"reduction must be one of {GRPO_REDUCTIONS}, got {reduction!r}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")

    def loss_fn(params, cfg, batch, rng=None):
        return soft_tokens_loss(params, cfg, batch, rng, eps_low=eps_low, eps_high=eps_high, reduction=reduction,
                                denominator=denominator)

    return loss_fn


register_loss("soft_tokens", lambda **o: make_soft_tokens_loss(**o),
              {"eps_low": 0.2, "eps_high": 0.28, "reduction": "token_mean", "denominator": "valid"},
              doc="P37 soft/fuzzy-token RL: GRPO/RLOO on Gaussian CoT log-likelihoods log N(h~; softmax(z/tau)E, "
                  "sigma^2 I) plus hard answer log-probs (batch: tokens, kinds, embeds, tau, sigma, old_logp, "
                  "advantages)", overwrite=True)
