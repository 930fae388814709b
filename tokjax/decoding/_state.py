"""DecodeState, the Strategy base class and ``commit``, shared by every decode strategy.

Convention: a row's sequence is ``tokens[b, :lengths[b]]``; the cache holds the first
``lengths[b] - 1`` of them. The last token is *pending*: the next step feeds it (plus any
draft tokens) to the model, so a step that commits n tokens needs one target call and a
rejected draft is undone by a per-row length write.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.logits import Chain, Greedy, LogitContext, LogitTransform, NamedChain
from tokjax.model import KVCache, ModelConfig, param_specs
from tokjax.model.params import ParamSpec
# KV_CACHE marks a KVCache in a ``Strategy.state_axes`` declaration (placed batch on "data",
# kv_heads on "model", as ``tokjax.parallel.cache_shardings`` says).
from tokjax.model.sharding import KV_CACHE

__all__ = [
    "DecodeState", "DecodeStats", "Strategy", "KV_CACHE", "commit", "check_like", "ends_greedy", "unstacked_param_axes",
]


Extra = TypeVar("Extra")


@struct.dataclass
class DecodeStats:
    """Counters accumulated by the decode loop.

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
class DecodeState(Generic[Extra]):
    """The carry of the jitted decode loop (fixed-size buffers only); ``extra`` is the strategy's own state."""

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
    extra: Extra = None  # strategy-specific state (draft caches, n-gram tables, a second model, ...)

    def context(self) -> LogitContext:
        """Returns the LogitContext the logit transforms see."""
        return LogitContext(tokens=self.tokens, lengths=self.lengths, step=self.step)


def ends_greedy(transform: LogitTransform) -> bool:
    """Returns whether ``transform`` ends in ``tokjax.logits.greedy()`` (so a step may take the argmax directly)."""
    if isinstance(transform, Greedy):
        return True
    if isinstance(transform, Chain) and transform.transforms:
        return ends_greedy(transform.transforms[-1])
    if isinstance(transform, NamedChain) and transform.named:
        return ends_greedy(transform.named[-1][1])
    return False


def check_like(saved: Any, fresh: Any, what: str) -> Any:
    """Returns a copy of ``saved`` after checking it has ``fresh``'s tree structure, shapes and dtypes.

    A copy because the decode state is donated to the loop and the caller keeps its own.
    """
    same = jax.tree.structure(saved) == jax.tree.structure(fresh) and all(
        jnp.shape(a) == jnp.shape(b) and jnp.result_type(a) == jnp.result_type(b)
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(fresh))
    )
    if not same:
        raise ValueError(
            f"{what} must be shaped like the strategy's own state ({type(fresh).__name__} with leaf shapes "
            f"{[tuple(jnp.shape(x)) for x in jax.tree.leaves(fresh)]}), got {type(saved).__name__} with "
            f"{[tuple(jnp.shape(x)) for x in jax.tree.leaves(saved)]}; pass the strategy_state of a previous "
            "generate call with the same strategy and model"
        )
    return jax.tree.map(jnp.copy, saved)


class Strategy(Generic[Extra]):
    """Base class of decode strategies: what one step of ``tokjax.generate`` does, with defaults for the rest.

    A subclass is a frozen, hashable dataclass (it is a static jit argument; runtime
    hyperparameters are ``tokjax.logits.hparam`` fields, excluded from the hash, and reach the
    loop through the state ``init`` builds). It must define ``step``; everything else has a
    default here:

    * ``slack`` (0): extra cache slots needed beyond the final sequence length (draft tokens).
    * ``max_accept`` (1): most tokens one step can commit per row.
    * ``validate(cfg)``: raise ValueError for a target model the strategy cannot run on.
    * ``init(params, cfg, state) -> extra``: the strategy's own state (``DecodeState.extra``),
      built once before the loop from the same ``params`` layout that ``step`` receives.
    * ``state_axes(extra)``: how ``extra`` is laid out on a mesh (see the method).
    * ``persistent_state(extra)`` / ``resume(extra, saved)``: what ``generate`` returns as
      ``GenerateOutput.strategy_state`` and how a later call starts from it (hot start).
    * ``finalize(state) -> dict``: statistics added to ``GenerateOutput.stats``.
    """

    slack: int = 0
    max_accept: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        return None

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> Extra:
        return None

    def step(
        self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id: int | None = None
    ) -> DecodeState:
        raise NotImplementedError(f"{type(self).__name__} must define step(params, cfg, transform, state, eos_id)")

    def state_axes(self, extra: Extra) -> Any:
        """Returns the logical axes of ``extra`` for sharded decoding (``generate(..., mesh=)``).

        A pytree shaped like ``extra`` down to its arrays, with at each array a tuple of logical
        axis names (``("batch", None)``; see ``tokjax.parallel.LOGICAL_AXES``) or None
        (replicated), and :data:`KV_CACHE` at each KVCache. None for the whole tree (the
        default) replicates everything: always correct, since placement never changes values.
        """
        return None

    def persistent_state(self, extra: Extra) -> Any:
        """Returns the part of the final state a later ``generate`` call may start from (default: all of it)."""
        return extra

    def resume(self, extra: Extra, saved: Any) -> Extra:
        """Returns the fresh state ``extra`` with ``saved`` (a previous ``persistent_state``) swapped in."""
        return check_like(saved, extra, "strategy_state")

    def finalize(self, state: DecodeState) -> dict:
        """Returns statistics of the finished decode (host values), merged into ``GenerateOutput.stats``."""
        return {}


def unstacked_param_axes(cfg: ModelConfig, *, fused: bool = False) -> Any:
    """Returns the logical axes of ``unstack_layers(params, fuse=fused)`` (a tuple of per-layer dicts): a
    ``Strategy.state_axes`` entry for a second model's weights. Fused q/k/v and gate/up concatenate
    head- and mlp-split weights, so those two are replicated over heads and mlp."""
    specs = param_specs(cfg)
    axes = jax.tree.map(lambda s: s.axes, specs, is_leaf=lambda x: isinstance(x, ParamSpec))
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)  # noqa: E731
    layer = dict(jax.tree.map(lambda a: a[1:], axes["layers"], is_leaf=is_axes))
    if fused and "wq" in layer:
        for name in ("wq", "wk", "wv"):
            del layer[name]
        layer["wqkv"] = ("embed", None, "head_dim")
    if fused and "w_gate" in layer:
        del layer["w_gate"], layer["w_up"]
        layer["w_gate_up"] = ("embed", None)
    return {**axes, "layers": tuple(dict(layer) for _ in range(cfg.n_layers))}


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
