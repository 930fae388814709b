"""DecodeState and the Strategy protocol shared by every decode strategy.

Convention: a row's sequence is ``tokens[b, :lengths[b]]``; the cache holds the first
``lengths[b] - 1`` of them. The last token is *pending*: the next step feeds it (plus any
draft tokens) to the model, so a step that commits n tokens needs one target call and a
rejected draft is undone by a per-row length write.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.logits import LogitContext, LogitTransform
from tokjax.model import KVCache, ModelConfig


@struct.dataclass
class DecodeStats:
    """Returns nothing; counters accumulated by the decode loop.

    ``forward_calls``: target-model calls after the prefill. ``accepted``: int [max_accept]
    histogram of tokens committed per call (index n = calls that committed n+1 tokens, over
    live rows). ``draft_layer_evals``: layers evaluated by draft sources. ``masked_rows``:
    rows stopped because every logit was masked. Speculative strategies also fill, over
    live row-steps, ``position_accepted`` [max_accept - 1] (draft depth d was accepted) and
    ``position_reached`` [max_accept - 1] (depths < d were all accepted, so depth d was
    tried); their ratio is the per-position conditional acceptance rate.
    """

    forward_calls: jax.Array
    accepted: jax.Array
    draft_layer_evals: jax.Array
    masked_rows: jax.Array
    position_accepted: jax.Array = None
    position_reached: jax.Array = None

    @classmethod
    def init(cls, batch: int, max_accept: int = 1) -> "DecodeStats":
        return cls(
            forward_calls=jnp.zeros((), jnp.int32),
            accepted=jnp.zeros((max_accept,), jnp.int32),
            draft_layer_evals=jnp.zeros((), jnp.int32),
            masked_rows=jnp.zeros((batch,), bool),
            position_accepted=jnp.zeros((max(max_accept - 1, 0),), jnp.int32),
            position_reached=jnp.zeros((max(max_accept - 1, 0),), jnp.int32),
        )


@struct.dataclass
class DecodeState:
    """Returns nothing; the carry of the jitted decode loop (fixed-size buffers only)."""

    tokens: jax.Array  # [B, S] int32
    lengths: jax.Array  # [B] int32
    prompt_lengths: jax.Array  # [B] int32
    max_lengths: jax.Array  # [B] int32: prompt length + max_new_tokens
    done: jax.Array  # [B] bool
    cache: KVCache
    logit_state: Any
    key: jax.Array
    step: jax.Array  # scalar int32
    stats: DecodeStats
    extra: Any = None  # strategy-specific state (draft caches, n-gram tables, ...)

    def context(self) -> LogitContext:
        """Returns the LogitContext the logit transforms see."""
        return LogitContext(tokens=self.tokens, lengths=self.lengths, step=self.step)


class Strategy(Protocol):
    """A decode strategy: a frozen, hashable dataclass (it is a static jit argument).

    ``slack``: extra cache slots it needs beyond the final sequence length (draft tokens).
    ``max_accept``: most tokens one step can commit per row.
    """

    slack: int
    max_accept: int

    def validate(self, cfg: ModelConfig) -> None: ...

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> Any: ...

    def step(
        self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id: int | None = None
    ) -> DecodeState: ...


def commit(state: DecodeState, new_tokens: jax.Array, counts: jax.Array, eos_id: int | None) -> DecodeState:
    """Returns the state with up to ``counts[b]`` tokens of new_tokens [B, A] appended to each live row.

    Rows stop at eos (kept in the output) or at their max length; the cache is rolled back
    to ``lengths - 1`` so the last committed token is the pending one.
    """
    B, A = new_tokens.shape
    S = state.tokens.shape[1]
    live = ~state.done
    room = state.max_lengths - state.lengths
    counts = jnp.where(live, jnp.minimum(counts, room), 0)
    idx = jnp.arange(A)[None, :]
    if eos_id is not None:
        is_eos = (new_tokens == eos_id) & (idx < counts[:, None])
        first_eos = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1) + 1, A + 1)
        counts = jnp.minimum(counts, first_eos)
        hit_eos = first_eos <= counts
    else:
        hit_eos = jnp.zeros((B,), bool)
    slots = state.lengths[:, None] + idx
    write = idx < counts[:, None]
    rows = jnp.arange(B)[:, None]
    slots = jnp.where(write, slots, S)  # out of range -> dropped
    tokens = state.tokens.at[rows, slots].set(new_tokens, mode="drop")
    lengths = state.lengths + counts
    done = state.done | hit_eos | (lengths >= state.max_lengths)
    hist = state.stats.accepted
    hist = hist.at[jnp.clip(counts - 1, 0, hist.shape[0] - 1)].add((live & (counts > 0)).astype(jnp.int32))
    stats = state.stats.replace(accepted=hist)
    cache = state.cache.set_lengths(lengths - 1)
    return state.replace(tokens=tokens, lengths=lengths, done=done, cache=cache, stats=stats)
