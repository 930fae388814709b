"""P37 Soft Tokens, Hard Truths: soft / fuzzy chain-of-thought rollouts as a ``tokjax.generate`` Strategy.

While a row is in its chain of thought (CoT), each step feeds the next input embedding

    h~_t = softmax(z_{t-1} / tau) E + sigma * eps_t,   eps_t ~ N(0, I_d)

(tau = 0.5 "soft", 1e-4 "fuzzy"; the equations are in :mod:`tokjax.losses.soft_tokens`) instead of the
embedding of a sampled token, and the output records the CoT's *readout* token argmax z_{t-1} (the shown
text). The CoT ends when that readout is one of ``end_ids``: the end token enters as its own hard embedding
(deterministic given the CoT, so it carries no likelihood term) and the row then answers with hard tokens
drawn through ``generate``'s ``logits=`` transform (temperature, greedy, ...). eos ends a row as usual, also
inside the CoT.

What the RL loss needs comes back in ``GenerateOutput.stats`` (slot-aligned with ``GenerateOutput.tokens``
after :func:`rollout_arrays`): ``embeds`` [B, S, D] (the noisy input fed at each soft slot), ``kinds`` [B, S]
(:data:`~tokjax.losses.soft_tokens.KIND_SOFT` / ``KIND_HARD`` / ``KIND_NONE``) and ``loglik`` [B, S] (each
slot's log-likelihood under the rollout policy: the Gaussian log-density at soft slots, log p of the drawn
token under the transformed distribution at hard slots, 0 elsewhere), computed from the cached step logits;
:func:`tokjax.losses.soft_tokens.soft_token_logp` recomputes them with one full forward (the tests check
that the two agree).

Reuse of P72: :mod:`tokjax.decoding.soft_thinking` with ``max_topk = V`` and no filters feeds the same
noise-free mixture, but it has no noise, restricts the mixture to a top-k renormalised support in general
and records neither the inputs nor a likelihood, so it cannot drive RL; both share the P72/P37 idea of a
one-hot end-of-thinking token followed by ordinary decoding.

Exact reduction: ``sigma = 0`` and ``tau -> 0`` feed E[argmax z] at every CoT step, i.e. greedy decoding
(tokens equal ``generate(..., logits=greedy())`` when the answer is greedy too).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, commit_one, ends_greedy, eos_tuple
from tokjax.logits import LogitTransform, as_rows, hparam, masked_log_softmax, sample
from tokjax.losses.soft_tokens import (
    FUZZY_TAU, KIND_HARD, KIND_NONE, KIND_SOFT, SOFT_TAU, check_noise_scale, gaussian_log_density, soft_input,
)
from tokjax.logits._base import check_range
from tokjax.model import Inputs, ModelConfig, embed, embedding_matrix, forward

__all__ = ["SoftTokens", "SoftTokensState", "rollout_arrays", "soft_tokens"]

MODES = {"soft": SOFT_TAU, "fuzzy": FUZZY_TAU}


@struct.dataclass
class SoftTokensState:
    """Per-row state of a soft-token decode (``DecodeState.extra``)."""

    thinking: jax.Array  # [B] bool: still in the CoT
    soft_input: jax.Array  # [B] bool: the pending input is ``next_embed`` (not E[pending token])
    next_embed: jax.Array  # [B, D] float32: the noisy mixture to feed next
    embeds: jax.Array  # [B, S, D] float32: the input embedding fed at each soft slot
    kinds: jax.Array  # [B, S] int32: KIND_* of each slot
    loglik: jax.Array  # [B, S] float32: each slot's rollout-policy log-likelihood
    cot_tokens: jax.Array  # [B] int32: CoT steps taken (the end token included)
    tau: jax.Array  # [B]
    sigma: jax.Array  # [B]


@dataclasses.dataclass(frozen=True)
class SoftTokens(Strategy):
    """P37 soft / fuzzy CoT rollouts; build it with :func:`soft_tokens`.

    Static: ``end_ids`` (readout tokens that end the CoT). Runtime (no recompile): ``tau`` (> 0) and ``sigma``
    (>= 0), scalars or one per row.
    """

    end_ids: tuple = ()
    tau: object = hparam(SOFT_TAU)
    sigma: object = hparam(0.0)

    def validate(self, cfg: ModelConfig) -> None:
        if not self.end_ids:
            raise ValueError("soft_tokens needs at least one end-of-CoT token id (end_ids)")
        bad = [e for e in self.end_ids if not 0 <= e < cfg.vocab_size]
        if bad:
            raise ValueError(f"end_ids {bad} are outside the model's vocabulary [0, {cfg.vocab_size})")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> SoftTokensState:
        B, S = state.tokens.shape
        D = cfg.d_model
        return SoftTokensState(
            thinking=jnp.ones((B,), bool), soft_input=jnp.zeros((B,), bool),
            next_embed=jnp.zeros((B, D), jnp.float32), embeds=jnp.zeros((B, S, D), jnp.float32),
            kinds=jnp.zeros((B, S), jnp.int32), loglik=jnp.zeros((B, S), jnp.float32),
            cot_tokens=jnp.zeros((B,), jnp.int32),
            tau=as_rows(self.tau, B, "tau"), sigma=as_rows(self.sigma, B, "sigma"),
        )

    def state_axes(self, extra: SoftTokensState):
        row, rows2, rows3 = ("batch",), ("batch", None), ("batch", None, None)
        return SoftTokensState(thinking=row, soft_input=row, next_embed=rows2, embeds=rows3, kinds=rows2,
                               loglik=rows2, cot_tokens=row, tau=row, sigma=row)

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None):
        ex: SoftTokensState = state.extra
        B, S = state.tokens.shape
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        x = jnp.where(ex.soft_input[:, None, None], ex.next_embed[:, None, :].astype(cfg.dtype),
                      embed(params, cfg, pending))
        out = forward(params, cfg, Inputs(embeds=x), cache=state.cache)
        z = out.logits[:, 0].astype(jnp.float32)
        ctx = state.context()
        key, k_noise, k_tok = jax.random.split(state.key, 3)

        thinking = ex.thinking & ~state.done
        readout = jnp.argmax(z, axis=-1).astype(jnp.int32)  # argmax softmax(z / tau) for every tau > 0
        end = jnp.asarray(self.end_ids, jnp.int32)
        leaving = thinking & (readout[:, None] == end[None, :]).any(-1)
        eps = jax.random.normal(k_noise, (B, cfg.d_model), jnp.float32)
        x_next, mean = soft_input(z, embedding_matrix(params["embed"]), ex.tau, ex.sigma, eps)
        safe_sigma = jnp.where(ex.sigma > 0, ex.sigma, 1.0)
        soft_ll = jnp.where(ex.sigma > 0, gaussian_log_density(x_next, mean, safe_sigma), 0.0)

        z_answer, logit_state = transform.apply(z, state.logit_state, ctx)
        tok_answer, sstats = sample(k_tok, z_answer, greedy=ends_greedy(transform))
        hard_ll = jnp.take_along_axis(masked_log_softmax(z_answer), tok_answer[:, None], axis=1)[:, 0]
        masked = sstats.all_masked & ~thinking

        tok = jnp.where(thinking, readout, tok_answer)
        eos = eos_tuple(eos_id)
        stops = (readout[:, None] == jnp.asarray(eos, jnp.int32)[None, :]).any(-1) if eos else jnp.zeros((B,), bool)
        soft_now = thinking & ~leaving & ~stops  # a readout that ends the CoT or the row feeds no soft input
        kind = jnp.where(soft_now, KIND_SOFT, jnp.where(thinking, KIND_NONE, KIND_HARD)).astype(jnp.int32)
        ll = jnp.where(soft_now, soft_ll, jnp.where(thinking, 0.0, hard_ll))
        live = ~state.done & ~masked & (state.lengths < state.max_lengths)
        slot = jnp.where(live, state.lengths, S)  # out of range -> dropped
        rows = jnp.arange(B)
        extra = ex.replace(
            thinking=ex.thinking & ~leaving, soft_input=soft_now, next_embed=x_next,
            embeds=ex.embeds.at[rows, slot].set(jnp.where(soft_now[:, None], x_next, 0.0), mode="drop"),
            kinds=ex.kinds.at[rows, slot].set(kind, mode="drop"),
            loglik=ex.loglik.at[rows, slot].set(ll, mode="drop"),
            cot_tokens=ex.cot_tokens + thinking.astype(jnp.int32),
        )
        chosen = jnp.where(thinking[:, None], z / ex.tau[:, None], z_answer)
        return commit_one(state, tok, chosen, masked, eos_id, cache=out.cache, logit_state=logit_state, key=key,
                          extra=extra)

    def finalize(self, state: DecodeState) -> dict:
        ex: SoftTokensState = state.extra
        return {"cot_tokens": np.asarray(ex.cot_tokens), "still_thinking": np.asarray(ex.thinking),
                "embeds": np.asarray(ex.embeds), "kinds": np.asarray(ex.kinds), "loglik": np.asarray(ex.loglik)}


def soft_tokens(end_ids: int | Sequence[int], *, mode: str | None = None, tau=SOFT_TAU, sigma=0.0) -> SoftTokens:
    """Returns the P37 soft-token CoT strategy for ``tokjax.generate(..., strategy=...)``.

    ``end_ids``: the readout token id(s) that end the CoT. ``mode``: "soft" (tau = 0.5) or "fuzzy"
    (tau = 1e-4), overriding ``tau``; ``tau`` > 0 and ``sigma`` >= 0 (the noise scale, in embedding units)
    are runtime values (scalars or one per row). The answer follows ``generate``'s ``logits=``.
    """
    ends = eos_tuple(end_ids)
    if not ends or any(e < 0 for e in ends):
        raise ValueError(f"end_ids must be one or more non-negative token ids, got {end_ids!r}")
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)} (or None to give tau), got {mode!r}")
        tau = MODES[mode]
    check_range(tau, "tau (the CoT temperature)", lo=0.0, lo_open=True)
    check_noise_scale(sigma)
    return SoftTokens(end_ids=ends, tau=tau, sigma=sigma)


def rollout_arrays(out, width: int | None = None) -> dict:
    """Returns {"tokens", "kinds", "embeds", "loglik", "prompt_lengths", "lengths"} of a soft-token
    ``GenerateOutput``, slot-aligned with ``out.tokens`` (host numpy; ``width`` pads / checks the slot count)."""
    for k in ("kinds", "embeds", "loglik"):
        if k not in out.stats:
            raise ValueError(f"the output has no stats[{k!r}]: it was not decoded with the soft_tokens strategy")
    S = out.tokens.shape[1]
    W = S if width is None else int(width)
    if W < S:
        raise ValueError(f"width {W} is smaller than the output's {S} token slots")
    pad = lambda a: np.pad(a[:, :S], [(0, 0), (0, W - S)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    return {"tokens": pad(np.asarray(out.tokens)), "kinds": pad(out.stats["kinds"]), "embeds": pad(out.stats["embeds"]),
            "loglik": pad(out.stats["loglik"]), "prompt_lengths": np.asarray(out.prompt_lengths),
            "lengths": np.asarray(out.lengths)}
