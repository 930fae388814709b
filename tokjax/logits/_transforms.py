"""Standard logit transforms: temperature, top-k, top-p, min-p, penalties, banned tokens, greedy.

Each returns masked logits with -inf for removed tokens and never empties a row that had a
finite entry. Hyperparameters are per-row runtime arrays in the state (see ``_base``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.logits._base import NEG_INF, LogitTransform, as_rows, check_range, hparam, masked_softmax


def _rank_desc(logits: jax.Array) -> jax.Array:
    """Returns int [B, V]: each entry's rank in descending order (ties broken by lower index first)."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


@dataclasses.dataclass(frozen=True)
class Temperature(LogitTransform):
    """Temperature scaling: logits / t per row (t > 0; t = 1 is the identity)."""

    temperature: object = hparam(1.0)

    def __post_init__(self):
        check_range(self.temperature, "temperature", lo=0.0, lo_open=True)

    def init(self, batch):
        return as_rows(self.temperature, batch, "temperature")

    def apply(self, logits, state, ctx):
        return logits / state[:, None], state


@dataclasses.dataclass(frozen=True)
class TopK(LogitTransform):
    """Top-k filtering: keeps the k largest logits of each row (exactly k when there are no -inf; ties by index)."""

    k: object = hparam(50)

    def __post_init__(self):
        check_range(self.k, "top_k", lo=1)

    def init(self, batch):
        return as_rows(self.k, batch, "top_k", jnp.int32)

    def apply(self, logits, state, ctx):
        keep = _rank_desc(logits) < state[:, None]
        return jnp.where(keep, logits, NEG_INF), state


@dataclasses.dataclass(frozen=True)
class TopP(LogitTransform):
    """Nucleus (top-p) filtering: keeps the smallest highest-probability set whose mass reaches p."""

    p: object = hparam(0.9)

    def __post_init__(self):
        check_range(self.p, "top_p", lo=0.0, hi=1.0, lo_open=True)

    def init(self, batch):
        return as_rows(self.p, batch, "top_p")

    def apply(self, logits, state, ctx):
        order = jnp.argsort(-logits, axis=-1, stable=True)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = masked_softmax(sorted_logits)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The top token has mass_before 0 < p, so a row is never emptied.
        keep_sorted = mass_before < state[:, None]
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        return jnp.where(keep, logits, NEG_INF), state


@dataclasses.dataclass(frozen=True)
class MinP(LogitTransform):
    """Min-p filtering: keeps tokens with probability >= p * (the row's top probability)."""

    p: object = hparam(0.05)

    def __post_init__(self):
        check_range(self.p, "min_p", lo=0.0, hi=1.0)

    def init(self, batch):
        return as_rows(self.p, batch, "min_p")

    def apply(self, logits, state, ctx):
        top = jnp.max(logits, axis=-1, keepdims=True)
        # log p_i - log p_max = logit_i - logit_max; compare in log space to avoid underflow.
        keep = (logits - top) >= jnp.log(jnp.maximum(state[:, None], 1e-38))
        keep = keep | (logits == top)
        return jnp.where(keep, logits, NEG_INF), state


def token_counts(ctx, vocab: int) -> jax.Array:
    """Returns int32 [B, V]: how often each token occurs in the valid part of ctx.tokens."""
    if ctx is None:
        raise ValueError("penalty transforms need a LogitContext with the tokens generated so far")
    B, S = ctx.tokens.shape
    valid = jnp.arange(S)[None, :] < ctx.lengths[:, None]
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, S))
    return jnp.zeros((B, vocab), jnp.int32).at[rows, jnp.clip(ctx.tokens, 0, vocab - 1)].add(valid.astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class RepetitionPenalty(LogitTransform):
    """CTRL's repetition penalty: seen tokens' positive logits / r, negative logits * r (r >= 1 penalises)."""

    penalty: object = hparam(1.1)

    def __post_init__(self):
        check_range(self.penalty, "repetition_penalty", lo=0.0, lo_open=True)

    def init(self, batch):
        return as_rows(self.penalty, batch, "repetition_penalty")

    def apply(self, logits, state, ctx):
        seen = token_counts(ctx, logits.shape[-1]) > 0
        r = state[:, None]
        pen = jnp.where(logits > 0, logits / r, logits * r)
        return jnp.where(seen, pen, logits), state


@dataclasses.dataclass(frozen=True)
class PresencePenalty(LogitTransform):
    """OpenAI-style presence and frequency penalties: logit - presence * [count > 0] - frequency * count."""

    presence: object = hparam(0.0)
    frequency: object = hparam(0.0)

    def __post_init__(self):
        check_range(self.presence, "presence_penalty")
        check_range(self.frequency, "frequency_penalty")

    def init(self, batch):
        return (as_rows(self.presence, batch, "presence_penalty"), as_rows(self.frequency, batch, "frequency_penalty"))

    def apply(self, logits, state, ctx):
        counts = token_counts(ctx, logits.shape[-1]).astype(jnp.float32)
        pres, freq = state
        return logits - pres[:, None] * (counts > 0) - freq[:, None] * counts, state


@dataclasses.dataclass(frozen=True)
class BanTokens(LogitTransform):
    """Token banning: sets the logits of the given token ids to -inf (ids are runtime values of static count)."""

    ids: object = hparam(())

    def __post_init__(self):
        import numpy as np

        arr = np.asarray(self.ids)
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0):
            raise ValueError(f"banned token ids must be non-negative integers, got {self.ids!r}")

    def __hash__(self):
        return hash((BanTokens, jnp.asarray(self.ids).shape))

    def __eq__(self, other):
        return type(other) is BanTokens and jnp.asarray(self.ids).shape == jnp.asarray(other.ids).shape

    def init(self, batch):
        ids = jnp.asarray(self.ids, jnp.int32).reshape(-1)
        return jnp.broadcast_to(ids, (batch, ids.shape[0]))

    def apply(self, logits, state, ctx):
        if state.shape[-1] == 0:
            return logits, state
        banned = jnp.zeros(logits.shape, bool).at[jnp.arange(logits.shape[0])[:, None], state].set(True, mode="drop")
        return jnp.where(banned, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class Greedy(LogitTransform):
    """Greedy filtering: keeps only each row's argmax (lowest index on ties), so sampling becomes greedy."""

    def apply(self, logits, state, ctx):
        keep = jnp.arange(logits.shape[-1])[None, :] == jnp.argmax(logits, axis=-1)[:, None]
        return jnp.where(keep, logits, NEG_INF), state


# Lower-case constructors, the way users spell them.
def temperature(t=1.0) -> Temperature:
    """Returns a Temperature transform (t > 0, scalar or per-row [B])."""
    return Temperature(t)


def top_k(k=50) -> TopK:
    """Returns a TopK transform (k >= 1, scalar or per-row [B])."""
    return TopK(k)


def top_p(p=0.9) -> TopP:
    """Returns a TopP (nucleus) transform (0 < p <= 1, scalar or per-row)."""
    return TopP(p)


def min_p(p=0.05) -> MinP:
    """Returns a MinP transform (0 <= p <= 1)."""
    return MinP(p)


def repetition_penalty(penalty=1.1) -> RepetitionPenalty:
    """Returns a RepetitionPenalty transform (penalty > 0; 1 is the identity)."""
    return RepetitionPenalty(penalty)


def presence_penalty(presence=0.0, frequency=0.0) -> PresencePenalty:
    """Returns a PresencePenalty transform (presence and frequency penalties)."""
    return PresencePenalty(presence, frequency)


def ban_tokens(ids) -> BanTokens:
    """Returns a BanTokens transform masking the given token ids."""
    return BanTokens(tuple(int(i) for i in jnp.asarray(ids).reshape(-1).tolist()))


def greedy() -> Greedy:
    """Returns the Greedy transform."""
    return Greedy()
