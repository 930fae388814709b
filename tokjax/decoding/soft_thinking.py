"""P72 Soft Thinking: reason with "concept tokens" (probability-weighted embedding mixtures), then answer.

Paper: "Soft Thinking: Unlocking the Reasoning Potential of LLMs in Continuous Concept Space" (P72; official
code eric-ai-lab/Soft-Thinking, a patched SGLang: the sampler and ``Req.update_topk_info`` in
``managers/schedule_batch.py``). While a row *thinks*, each step turns the model's logits z into a concept
token instead of one discrete token::

    p  = softmax(z / T);   H = -sum_v p_v log p_v            (entropy before the filters)
    p  <- top-k, top-p, min-p filters of p, renormalised
    (pi, idx) = top max_topk of p;   pi <- pi / sum(pi)
    e_next = sum_j pi_j E[idx_j]                              (the next step's input embedding)
    shown token = idx_0                                        (what the output text records)

Thinking ends when the shown token is the end-of-thinking id (``</think>``'s last token in the official
code; any ``end_ids`` here), or by **Cold Stop**: a per-row counter of consecutive steps with H < ``cold_stop_entropy``
(reset to 0 by any step at or above it; official ``low_entropy_steps``) that reaches ``cold_stop_steps``
replaces that step's token with ``end_ids[0]`` and resets. The end token enters as a one-hot embedding;
from then on the row decodes discretely with ``generate``'s ``logits=`` transform (greedy or sampling).
``cold_stop_entropy = 0`` disables Cold Stop (the official ``> 0`` guard). Official defaults:
max_topk 10, T 0.6, top-p 0.95, top-k 30, min-p 0.001, Cold Stop 0.01 / 256 steps (its README warns that
models below 7-14B gain little).

Not implemented: the optional Dirichlet / Gumbel-softmax perturbations of the follow-up work, and the
official abort of a request whose entropy stays low for ``cold_stop_steps`` steps *after* thinking.

``max_topk = 1`` feeds 1.0 * E[argmax], bit-identical to greedy decoding of the same tokens, so
``generate(model, p, strategy=soft_thinking(end_ids, max_topk=1), logits=greedy())`` equals greedy
decoding (the first exact reduction the tests check).

Built as a :class:`~tokjax.decoding.Strategy` of ``tokjax.generate``: one target call per step on the
shared forward (``Inputs(embeds=...)``), the driver's loop, stopping, logprobs and hot start.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, commit_one, ends_greedy, eos_tuple
from tokjax.logits import (
    LogitContext, LogitTransform, as_rows, chain, check_range, entropy, hparam, masked_softmax, sample,
)
from tokjax.logits import min_p as _min_p, top_k as _top_k, top_p as _top_p
from tokjax.model import Inputs, ModelConfig, embed, forward

__all__ = ["SoftThinking", "SoftThinkingState", "concept_token", "default_filters", "mix_embeddings",
           "soft_thinking"]


def default_filters(top_k: int | None = 30, top_p: float | None = 0.95, min_p: float | None = 0.001):
    """Returns the official thinking-mode filters in the official order (top-k, then top-p, then min-p) as one
    LogitTransform, or None when all three are None (a None leaves that filter out)."""
    parts = [f(v) for f, v in ((_top_k, top_k), (_top_p, top_p), (_min_p, min_p)) if v is not None]
    return chain(*parts) if parts else None


def concept_token(
    logits: jax.Array, temperature: jax.Array, max_topk: int, filters: LogitTransform | None = None,
    filter_state=None, ctx: LogitContext | None = None,
):
    """Returns (weights [B, K], ids [B, K], entropy [B], filtered log-space logits [B, V], filter_state).

    ``logits`` [B, V] raw; ``temperature`` scalar or [B] (> 0); the weights are the top ``max_topk`` of
    softmax(filters(z / T)), renormalised to sum to 1, most likely first (``ids[:, 0]`` is the shown token);
    ``entropy`` is H(softmax(z / T)) in nats, before the filters. A row whose filters ban every token gets
    weight 1 on its argmax (never NaN).
    """
    B, V = logits.shape
    if not 1 <= max_topk <= V:
        raise ValueError(f"max_topk must be in [1, vocab size {V}], got {max_topk}")
    t = as_rows(temperature, B, "temperature")
    z = logits.astype(jnp.float32) / t[:, None]
    h = entropy(z)
    if filters is not None:
        z_f, filter_state = filters.apply(z, filter_state, ctx)
    else:
        z_f = z
    p = masked_softmax(z_f)
    w, ids = jax.lax.top_k(p, max_topk)
    total = w.sum(-1, keepdims=True)
    empty = total[:, 0] <= 0
    fallback = jax.nn.one_hot(0, max_topk, dtype=w.dtype)[None, :]
    w = jnp.where(empty[:, None], fallback, w / jnp.where(empty[:, None], 1.0, total))
    ids = jnp.where(empty[:, None], jnp.argmax(z, -1)[:, None].astype(ids.dtype), ids)
    z_f = jnp.where(empty[:, None], z, z_f)
    return w, ids.astype(jnp.int32), h, z_f, filter_state


def mix_embeddings(params, cfg: ModelConfig, weights: jax.Array, ids: jax.Array) -> jax.Array:
    """Returns the concept-token embeddings sum_j weights[b, j] * E[ids[b, j]] as [B, 1, D] (compute dtype)."""
    e = embed(params, cfg, ids).astype(jnp.float32)  # [B, K, D]
    return jnp.einsum("bk,bkd->bd", weights.astype(jnp.float32), e)[:, None, :].astype(cfg.dtype)


@struct.dataclass
class SoftThinkingState:
    """Soft Thinking's per-row decode state (``DecodeState.extra``)."""

    thinking: jax.Array  # [B] bool: the row is still in thinking mode
    soft_input: jax.Array  # [B] bool: the pending input is the concept token below (not E[pending token])
    weights: jax.Array  # [B, K] float32 concept-token weights
    ids: jax.Array  # [B, K] int32 concept-token ids
    low_steps: jax.Array  # [B] int32 consecutive thinking steps with H < cold_stop_entropy
    think_tokens: jax.Array  # [B] int32 tokens emitted in thinking mode (the end token included)
    cold_stopped: jax.Array  # [B] bool: thinking ended by Cold Stop
    filter_state: object
    temperature: jax.Array  # [B]
    cold_entropy: jax.Array  # [B]
    cold_steps: jax.Array  # [B] int32


@dataclasses.dataclass(frozen=True)
class SoftThinking(Strategy):
    """P72 Soft Thinking as a decode strategy; build it with :func:`soft_thinking`.

    Static: ``end_ids`` (tokens that end thinking; Cold Stop forces ``end_ids[0]``), ``max_topk``,
    ``filters`` (thinking-mode LogitTransform applied to z / T). Runtime (no recompile): ``temperature``,
    ``cold_stop_entropy`` (nats; 0 disables), ``cold_stop_steps``.
    """

    end_ids: tuple = ()
    max_topk: int = 10
    filters: LogitTransform | None = None
    temperature: object = hparam(0.6)
    cold_stop_entropy: object = hparam(0.01)
    cold_stop_steps: object = hparam(256)

    def validate(self, cfg: ModelConfig) -> None:
        V = cfg.vocab_size
        if not self.end_ids:
            raise ValueError("soft_thinking needs at least one end-of-thinking token id (end_ids)")
        bad = [e for e in self.end_ids if not 0 <= e < V]
        if bad:
            raise ValueError(f"end_ids {bad} are outside the model's vocabulary [0, {V})")
        if not 1 <= self.max_topk <= V:
            raise ValueError(f"max_topk must be in [1, vocab size {V}], got {self.max_topk}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> SoftThinkingState:
        B = state.tokens.shape[0]
        K = self.max_topk
        steps = np.asarray(self.cold_stop_steps)
        if np.any(steps < 1) or np.any(steps != np.round(steps)):
            raise ValueError(f"cold_stop_steps must be integers >= 1, got {self.cold_stop_steps!r}")
        return SoftThinkingState(
            thinking=jnp.ones((B,), bool),
            soft_input=jnp.zeros((B,), bool),
            weights=jnp.zeros((B, K), jnp.float32),
            ids=jnp.zeros((B, K), jnp.int32),
            low_steps=jnp.zeros((B,), jnp.int32),
            think_tokens=jnp.zeros((B,), jnp.int32),
            cold_stopped=jnp.zeros((B,), bool),
            filter_state=self.filters.init(B) if self.filters is not None else None,
            temperature=as_rows(self.temperature, B, "temperature"),
            cold_entropy=as_rows(self.cold_stop_entropy, B, "cold_stop_entropy"),
            cold_steps=as_rows(steps, B, "cold_stop_steps", jnp.int32),
        )

    def state_axes(self, extra: SoftThinkingState):
        row, rows2 = ("batch",), ("batch", None)
        return SoftThinkingState(
            thinking=row, soft_input=row, weights=rows2, ids=rows2, low_steps=row, think_tokens=row,
            cold_stopped=row, filter_state=None, temperature=row, cold_entropy=row, cold_steps=row,
        )

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None):
        ex: SoftThinkingState = state.extra
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        x = jnp.where(ex.soft_input[:, None, None], mix_embeddings(params, cfg, ex.weights, ex.ids),
                      embed(params, cfg, pending))
        out = forward(params, cfg, Inputs(embeds=x), cache=state.cache)
        z = out.logits[:, 0]
        ctx = state.context()

        w, ids, h, z_think, filter_state = concept_token(z, ex.temperature, self.max_topk, self.filters,
                                                         ex.filter_state, ctx)
        thinking = ex.thinking & ~state.done
        low = jnp.where(thinking & (h < ex.cold_entropy), ex.low_steps + 1, 0)
        cold = thinking & (ex.cold_entropy > 0) & (low >= ex.cold_steps)
        end = jnp.asarray(self.end_ids, jnp.int32)
        forced = jax.nn.one_hot(end[0], z.shape[-1], dtype=jnp.float32)
        z_think = jnp.where(cold[:, None], jnp.where(forced > 0, 0.0, -jnp.inf), z_think)
        tok_think = jnp.where(cold, end[0], ids[:, 0])
        leaving = thinking & (tok_think[:, None] == end[None, :]).any(-1)

        z_answer, logit_state = transform.apply(z, state.logit_state, ctx)
        key, sub = jax.random.split(state.key)
        tok_answer, sstats = sample(sub, z_answer, greedy=ends_greedy(transform))
        masked = sstats.all_masked & ~thinking

        tok = jnp.where(thinking, tok_think, tok_answer)
        chosen = jnp.where(thinking[:, None], z_think, z_answer)
        extra = ex.replace(
            thinking=ex.thinking & ~leaving,
            soft_input=thinking & ~leaving,
            weights=w, ids=ids,
            low_steps=jnp.where(cold | ~thinking, 0, low),
            think_tokens=ex.think_tokens + thinking.astype(jnp.int32),
            cold_stopped=ex.cold_stopped | cold,
            filter_state=filter_state,
        )
        return commit_one(state, tok, chosen, masked, eos_id, cache=out.cache, logit_state=logit_state, key=key,
                          extra=extra)

    def finalize(self, state: DecodeState) -> dict:
        ex: SoftThinkingState = state.extra
        return {"think_tokens": np.asarray(ex.think_tokens), "cold_stopped": np.asarray(ex.cold_stopped),
                "still_thinking": np.asarray(ex.thinking)}


def soft_thinking(
    end_ids: int | Sequence[int], *, max_topk: int = 10, temperature=0.6, top_k: int | None = 30,
    top_p: float | None = 0.95, min_p: float | None = 0.001, filters: LogitTransform | None = None,
    cold_stop_entropy=0.01, cold_stop_steps=256,
) -> SoftThinking:
    """Returns the P72 Soft Thinking strategy for ``tokjax.generate(..., strategy=...)``.

    ``end_ids``: the token id(s) that end thinking (Cold Stop forces the first). ``filters`` replaces the
    default top-k / top-p / min-p chain (pass ``tokjax.logits.Identity()`` for none); a ``None`` among
    ``top_k`` / ``top_p`` / ``min_p`` leaves that filter out. ``temperature`` > 0,
    ``cold_stop_entropy`` >= 0 (nats; 0 disables Cold Stop) and ``cold_stop_steps`` >= 1 are runtime
    values (scalars or one per row). The answer after thinking follows ``generate``'s ``logits=``.
    """
    ends = eos_tuple(end_ids)
    if any(e < 0 for e in ends):
        raise ValueError(f"end_ids must be non-negative token ids, got {ends}")
    if isinstance(max_topk, bool) or not isinstance(max_topk, (int, np.integer)) or max_topk < 1:
        raise ValueError(f"max_topk must be an int >= 1, got {max_topk!r}")
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    check_range(cold_stop_entropy, "cold_stop_entropy", lo=0.0)
    check_range(cold_stop_steps, "cold_stop_steps", lo=1)
    if filters is None:
        filters = default_filters(top_k, top_p, min_p)
    return SoftThinking(end_ids=ends, max_topk=int(max_topk), filters=filters, temperature=temperature,
                        cold_stop_entropy=cold_stop_entropy, cold_stop_steps=cold_stop_steps)
