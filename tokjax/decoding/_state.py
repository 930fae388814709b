"""DecodeState, the Strategy base class and ``commit``, shared by every decode strategy.

Convention: a row's sequence is ``tokens[b, :lengths[b]]``; the cache holds the first
``lengths[b] - 1`` of them. The last token is *pending*: the next step feeds it (plus any
draft tokens) to the model, so a step that commits n tokens needs one target call and a
rejected draft is undone by a per-row length write.
"""

from __future__ import annotations

import functools
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.logits import Chain, Greedy, LogitContext, LogitTransform, NamedChain, masked_log_softmax, sample
from tokjax.model import KVCache, ModelConfig, param_specs
from tokjax.model.params import ParamSpec
# KV_CACHE marks a KVCache in a ``Strategy.state_axes`` declaration (placed batch on "data",
# kv_heads on "model", as ``tokjax.parallel.cache_shardings`` says).
from tokjax.model.sharding import KV_CACHE

__all__ = [
    "DecodeState", "DecodeStats", "TokenLogprobs", "StopSequences", "Strategy", "KV_CACHE", "commit", "check_like",
    "ends_greedy", "unstacked_param_axes", "eos_tuple", "sample_and_commit", "commit_one",
]


Extra = TypeVar("Extra")


@struct.dataclass
class DecodeStats:
    """Counters accumulated by the decode loop.

    ``forward_calls``: target-model calls after the prefill. ``accepted``: int [max_accept]
    histogram of tokens committed per call (index n = calls that committed n+1 tokens, over
    live rows). ``draft_layer_evals``: layers evaluated by draft sources. ``masked_rows``:
    rows stopped because every logit was masked (-inf: every token banned). ``nan_rows``: rows
    stopped because a step's logits held NaN or +inf (a broken model, not a ban), and
    ``nan_step`` [B] the decode step where that happened (-1: never). Speculative strategies also
    fill, over live row-steps, ``position_accepted`` [max_accept - 1] (draft depth d was
    accepted) and ``position_reached`` [max_accept - 1] (depths < d were all accepted, so depth d
    was tried); their ratio is the per-position conditional acceptance rate.
    """

    forward_calls: jax.Array
    accepted: jax.Array
    draft_layer_evals: jax.Array
    masked_rows: jax.Array
    position_accepted: jax.Array = None
    position_reached: jax.Array = None
    nan_rows: jax.Array = None
    nan_step: jax.Array = None

    @classmethod
    def init(cls, batch: int, max_accept: int = 1) -> "DecodeStats":
        return cls(
            forward_calls=jnp.zeros((), jnp.int32),
            accepted=jnp.zeros((max_accept,), jnp.int32),
            draft_layer_evals=jnp.zeros((), jnp.int32),
            masked_rows=jnp.zeros((batch,), bool),
            position_accepted=jnp.zeros((max(max_accept - 1, 0),), jnp.int32),
            position_reached=jnp.zeros((max(max_accept - 1, 0),), jnp.int32),
            nan_rows=jnp.zeros((batch,), bool),
            nan_step=jnp.full((batch,), -1, jnp.int32),
        )


@struct.dataclass
class TokenLogprobs:
    """Log-probabilities ``commit`` records per buffer slot (allocated only when ``generate(logprobs=)`` asks).

    ``chosen`` [B, S] float32: log p(token at the slot) under the transformed distribution the
    token was chosen from. ``top_values`` / ``top_ids`` [B, S, k] (or None for k = 0): that
    distribution's k most likely tokens and their log-probabilities, most likely first.
    """

    chosen: jax.Array
    top_values: jax.Array | None = None
    top_ids: jax.Array | None = None

    @classmethod
    def init(cls, batch: int, width: int, k: int) -> "TokenLogprobs":
        top = k > 0
        return cls(
            chosen=jnp.zeros((batch, width), jnp.float32),
            top_values=jnp.full((batch, width, k), -jnp.inf, jnp.float32) if top else None,
            top_ids=jnp.full((batch, width, k), -1, jnp.int32) if top else None,
        )


@struct.dataclass
class StopSequences:
    """Token-id stop sequences ``commit`` checks (runtime arrays: new sequences do not recompile).

    ``tokens`` [K, L] int32: sequence k right-aligned, ``-2`` (matches anything) before it.
    ``min_lengths`` [B] int32: a match counts only when it ends at a slot >= ``min_lengths - 1``
    (``prompt length + min_new_tokens``: the row has generated at least min_new_tokens tokens).
    """

    tokens: jax.Array
    min_lengths: jax.Array


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
    logprobs: TokenLogprobs | None = None  # only when generate(logprobs=) asks for them
    stop: StopSequences | None = None  # only when generate(stop=) has token-id sequences
    # The decode layouts of the strategy's other models ({name: params}, Strategy.models), set by the driver for
    # init and each step and None in the loop's carry: read-only weights are neither donated nor copied.
    models: Any = None

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
    * ``models()`` ({}): other models the step runs (``{name: Model}``, e.g. a large model to
      route to). The driver lays each out as it lays out the target (the cached decode layout;
      sharded by the rules on a mesh) and hands ``init`` and every ``step`` the layouts as
      ``state.models[name]``; they stay out of the donated loop state, so no call copies them.
    * ``init(params, cfg, state) -> extra``: the strategy's own state (``DecodeState.extra``),
      built once before the loop from the same ``params`` layout that ``step`` receives.
    * ``state_axes(extra)``: how ``extra`` is laid out on a mesh (see the method).
    * ``persistent_state(extra)`` / ``resume(extra, saved)``: what ``generate`` returns as
      ``GenerateOutput.strategy_state`` and how a later call starts from it (hot start).
    * ``finalize(state) -> dict``: statistics added to ``GenerateOutput.stats``.
    * ``rows_per_prompt`` (1): decode rows per prompt. The driver prefills each prompt once and
      repeats its rows ``rows_per_prompt * n`` times (``generate(n=)``), prompt-major (prompt
      0's rows first), before ``init``; so ``DecodeState`` has ``B * rows_per_prompt * n`` rows
      (beam search: one row per beam).
    * ``output(state) -> (tokens [B_out, S], lengths [B_out]) | None`` (None): the rows
      ``generate`` returns instead of the decode rows (beam search: each prompt's best
      hypotheses). ``B_out`` must be a multiple of the number of prompts B (``B_out / B`` rows
      per prompt, prompt-major); the output's ``prompt_lengths`` repeat accordingly.

    ``step`` receives ``eos_id`` as None or a tuple of ints (every id that ends a row) and
    ends with :func:`commit`, passing the logits each committed token was chosen from so that
    log-probabilities (``generate(logprobs=)``), stop sequences and the NaN check work.
    """

    slack: int = 0
    max_accept: int = 1
    rows_per_prompt: int = 1
    # False for strategies that never draw random numbers (beam search): generate then needs no key=.
    samples: bool = True

    def validate(self, cfg: ModelConfig) -> None:
        return None

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> Extra:
        return None

    def models(self) -> dict:
        return {}

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

    def output(self, state: DecodeState) -> tuple[Any, Any] | None:
        """Returns None (return the decode rows), or (tokens [B_out, S], lengths [B_out]) to return instead."""
        return None


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


def eos_tuple(eos_id) -> tuple[int, ...]:
    """Returns ``eos_id`` (None, one id, or a sequence of ids) as a tuple of ints (empty for None)."""
    if eos_id is None:
        return ()
    if isinstance(eos_id, (int, np.integer)):
        return (int(eos_id),)
    return tuple(int(e) for e in eos_id)


def _first(hit: jax.Array, width: int) -> jax.Array:
    """Returns [B] the index of each row's first True in ``hit`` [B, A], or ``width`` when there is none."""
    return jnp.where(hit.any(-1), jnp.argmax(hit, axis=-1), width)


def _stop_hits(state: DecodeState, new_tokens: jax.Array) -> jax.Array:
    """Returns bool [B, A]: new token a ends one of ``state.stop``'s sequences (inside the completion)."""
    stop = state.stop
    L = stop.tokens.shape[1]
    B, A = new_tokens.shape
    # Window: the L-1 committed slots before the new tokens (prompt slots never match), then the new tokens.
    back = state.lengths[:, None] - (L - 1) + jnp.arange(L - 1)[None, :]
    prev = jnp.take_along_axis(state.tokens, jnp.clip(back, 0, None), axis=1)
    prev = jnp.where(back >= state.prompt_lengths[:, None], prev, -1)
    window = jnp.concatenate([prev, new_tokens], axis=1)  # [B, L - 1 + A]
    ends = window[:, jnp.arange(A)[:, None] + jnp.arange(L)[None, :]]  # [B, A, L]: the L tokens ending at a
    seqs = stop.tokens
    match = ((seqs[None, None] == -2) | (ends[:, :, None, :] == seqs[None, None])).all(-1).any(-1)  # [B, A]
    slot = state.lengths[:, None] + jnp.arange(A)[None, :]
    return match & (slot >= stop.min_lengths[:, None] - 1)


def commit(
    state: DecodeState, new_tokens: jax.Array, counts: jax.Array, eos_id, logits: jax.Array | None = None
) -> DecodeState:
    """Returns the state with up to ``counts[b]`` tokens of new_tokens [B, A] appended to each live row.

    Rows stop at an eos id (``eos_id``: None, an int or a tuple of ints; the eos is kept in the
    output), at the end of a token-id stop sequence (``state.stop``; kept too) or at their max
    length; the cache is rolled back to ``lengths - 1`` so the last committed token is the
    pending one.

    ``logits`` [B, A, V] (optional; every built-in strategy passes it): the transformed logits
    ``new_tokens[:, a]`` was chosen from (``new_tokens[:, a]`` is drawn from softmax(logits[:, a])).
    With them, commit (1) stops a row at the first position a < counts[b] whose logits hold NaN
    or +inf, committing only the tokens before it, and records the row in ``stats.nan_rows`` /
    ``stats.nan_step`` (so a strategy counts a token drawn from NaN logits in ``counts`` rather
    than treating the row as all-masked: ``sample``'s ``all_masked`` excludes NaN rows); and
    (2) when ``state.logprobs`` exists, writes log softmax(logits[:, a])[new_tokens[:, a]] (and
    the top-k) at each committed slot.
    """
    B, A = new_tokens.shape
    S = state.tokens.shape[1]
    live = ~state.done
    room = state.max_lengths - state.lengths
    asked = counts
    counts = jnp.where(live, jnp.minimum(counts, room), 0)
    idx = jnp.arange(A)[None, :]
    stats = state.stats
    stop_at = jnp.full((B,), A + 1, jnp.int32)  # new token index + 1 after which the row ends (A + 1: none)
    eos = eos_tuple(eos_id)
    if eos:
        is_eos = functools.reduce(jnp.logical_or, [new_tokens == e for e in eos]) & (idx < counts[:, None])
        stop_at = jnp.minimum(stop_at, _first(is_eos, A) + 1)
    if state.stop is not None:
        hit = _stop_hits(state, new_tokens) & (idx < counts[:, None])
        stop_at = jnp.minimum(stop_at, _first(hit, A) + 1)
    if logits is not None:
        if logits.shape[:2] != (B, A):
            raise ValueError(f"commit: logits must be [B, A, V] with [B, A]={(B, A)} as new_tokens, got {logits.shape}")
        bad = (jnp.isnan(logits) | (logits == jnp.inf)).any(-1) & (idx < asked[:, None])
        nan_at = _first(bad, A)
        hit_nan = live & (nan_at < A)
        counts = jnp.minimum(counts, nan_at)
        if stats.nan_rows is not None:
            stats = stats.replace(
                nan_rows=stats.nan_rows | hit_nan,
                nan_step=jnp.where(hit_nan & (stats.nan_step < 0), state.step, stats.nan_step),
            )
    else:
        hit_nan = jnp.zeros((B,), bool)
    hit_stop = stop_at <= counts
    counts = jnp.minimum(counts, stop_at)
    slots = state.lengths[:, None] + idx
    write = idx < counts[:, None]
    rows = jnp.arange(B)[:, None]
    slots = jnp.where(write, slots, S)  # out of range -> dropped
    tokens = state.tokens.at[rows, slots].set(new_tokens, mode="drop")
    lengths = state.lengths + counts
    done = state.done | hit_stop | hit_nan | (lengths >= state.max_lengths)
    hist = stats.accepted
    hist = hist.at[jnp.clip(counts - 1, 0, hist.shape[0] - 1)].add((live & (counts > 0)).astype(jnp.int32))
    stats = stats.replace(accepted=hist)
    cache = state.cache.set_lengths(lengths - 1)
    lp = state.logprobs
    if lp is not None:
        if logits is None:
            raise ValueError(
                "generate(logprobs=...) needs the strategy to pass the logits its tokens were chosen from to "
                "commit(..., logits=); this strategy does not"
            )
        logp = masked_log_softmax(logits)  # [B, A, V]
        chosen = jnp.take_along_axis(logp, new_tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
        lp = lp.replace(chosen=lp.chosen.at[rows, slots].set(chosen, mode="drop"))
        if lp.top_values is not None:
            values, ids = jax.lax.top_k(logp, lp.top_values.shape[-1])
            lp = lp.replace(
                top_values=lp.top_values.at[rows, slots].set(values, mode="drop"),
                top_ids=lp.top_ids.at[rows, slots].set(ids.astype(jnp.int32), mode="drop"),
            )
    return state.replace(tokens=tokens, lengths=lengths, done=done, cache=cache, stats=stats, logprobs=lp)


def sample_and_commit(state: DecodeState, raw_logits: jax.Array, transform: LogitTransform, eos_id,
                      **fields: Any) -> DecodeState:
    """Returns the state after one plain decode step from the target's raw next-token logits [B, V].

    The step every one-token-per-call strategy shares: the logit transform, one draw per row (argmax when
    the chain ends greedy, so greedy decoding spends no Gumbel draws), one target call counted, ``fields``
    (e.g. the new ``cache`` or ``extra``) set, then :func:`commit`. A row whose transformed logits are all
    masked commits nothing, is counted in ``stats.masked_rows`` and stops.
    """
    logits, logit_state = transform.apply(raw_logits, state.logit_state, state.context())
    key, sub = jax.random.split(state.key)
    tok, sstats = sample(sub, logits, greedy=ends_greedy(transform))
    return commit_one(state, tok, logits, sstats.all_masked, eos_id, logit_state=logit_state, key=key, **fields)


def commit_one(state: DecodeState, tok: jax.Array, logits: jax.Array, masked: jax.Array, eos_id,
               **fields: Any) -> DecodeState:
    """Returns the state after committing one chosen token per row, ``tok`` [B] drawn from ``logits`` [B, V]:
    one target call counted, ``fields`` set, :func:`commit`; rows with ``masked`` [B] (every token banned)
    commit nothing, are counted in ``stats.masked_rows`` and stop."""
    counts = jnp.where(masked, 0, 1).astype(jnp.int32)
    stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1,
                                masked_rows=state.stats.masked_rows | (masked & ~state.done))
    state = state.replace(stats=stats, **fields)
    state = commit(state, tok[:, None], counts, eos_id, logits=logits[:, None])
    return state.replace(done=state.done | masked)
