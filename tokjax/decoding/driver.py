"""The one decode driver: ``generate`` / ``stream``, a jitted ``lax.while_loop`` over fixed-size buffers.

    out = generate(model, prompt, key=key, max_new_tokens=64, logits=chain(top_p(0.9), temperature(0.7)))

The strategy (plain sampling by default) decides what one step does; the loop, the buffers,
stopping, statistics, the pending-token cache convention (see ``_state``), hot start
(``strategy_state=``) and sharded decoding (``mesh=``) are shared by every strategy,
speculative and two-model ones included.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokjax.decoding._state import DecodeState, DecodeStats, Strategy, commit, ends_greedy
from tokjax.logits import Identity, LogitTransform, sample
from tokjax.model import Inputs, Model, ModelConfig, forward, prefill, unstack_layers
from tokjax.model.sharding import (
    DEFAULT_RULES, ShardingRules, axes_shardings, cache_shardings, logical_sharding, shard_model, state_shardings,
)

__all__ = ["TRACE_COUNTS", "GenerateOutput", "Sampling", "generate", "stream", "prepare_prompt", "decode_state_shardings"]

# How many times each jitted function has been traced; tests use it to prove that changing a
# runtime hyperparameter (temperature, top-p, tau, ...) does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Sampling(Strategy):
    """The default strategy: one target call per step, one sampled (or argmax) token per row."""

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache)
        logits, logit_state = transform.apply(out.logits[:, 0], state.logit_state, state.context())
        key, sub = jax.random.split(state.key)
        tok, sstats = sample(sub, logits, greedy=ends_greedy(transform))
        counts = jnp.where(sstats.all_masked, 0, 1).astype(jnp.int32)
        stats = state.stats.replace(
            forward_calls=state.stats.forward_calls + 1,
            masked_rows=state.stats.masked_rows | (sstats.all_masked & ~state.done),
        )
        state = state.replace(cache=out.cache, logit_state=logit_state, key=key, stats=stats)
        state = commit(state, tok[:, None], counts, eos_id)
        return state.replace(done=state.done | sstats.all_masked)


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """What generate returns: host numpy token buffers, statistics, and the strategy's state for hot start.

    ``tokens`` [B, S]: prompt then generated tokens, contiguous per row, ``pad_id`` after
    ``lengths[b]``. ``stats``: forward_calls, tokens_per_call, accepted histogram, masked rows,
    plus the strategy's ``finalize`` statistics. ``strategy_state``: the strategy's
    ``persistent_state`` (device arrays; e.g. Token Recycling's table), to pass as
    ``generate(..., strategy_state=)`` to a later call.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    stats: dict
    strategy_state: Any = None

    def completions(self) -> list[np.ndarray]:
        """Returns each row's generated tokens (without the prompt)."""
        return [self.tokens[b, p:n] for b, (p, n) in enumerate(zip(self.prompt_lengths, self.lengths))]


def prepare_prompt(prompt, prompt_lengths, cfg: ModelConfig, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens int32 [B, P] padded with ``pad_id``, lengths int32 [B]) after checking the prompt."""
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (list, tuple, np.ndarray)):
        rows = [np.asarray(r, np.int64).reshape(-1) for r in prompt]
        if prompt_lengths is not None:
            raise ValueError("pass prompt_lengths only with a padded [batch, seq] prompt array, not a list of rows")
        lens = np.array([len(r) for r in rows], np.int32)
        P = int(lens.max()) if len(lens) else 0
        arr = np.full((len(rows), max(P, 1)), pad_id, np.int64)
        for b, r in enumerate(rows):
            arr[b, : len(r)] = r
    else:
        arr = np.asarray(prompt)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"prompt must be [batch, seq] token ids or a list of id lists, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise ValueError(f"prompt token ids must be integers, got dtype {arr.dtype}")
        if prompt_lengths is None:
            lens = np.full((arr.shape[0],), arr.shape[1], np.int32)
        else:
            lens = np.asarray(prompt_lengths, np.int32).reshape(-1)
            if lens.shape != (arr.shape[0],):
                raise ValueError(
                    f"prompt_lengths must have one entry per prompt row ({arr.shape[0]}), got shape {lens.shape}"
                )
    B = arr.shape[0]
    if B < 1:
        raise ValueError("prompt has no rows")
    if np.any(lens < 1) or np.any(lens > arr.shape[1]):
        raise ValueError(f"prompt lengths must lie in [1, {arr.shape[1]}] (the padded width), got {lens.tolist()}")
    valid = np.arange(arr.shape[1])[None, :] < lens[:, None]
    vals = arr[valid]
    if vals.size and (vals.min() < 0 or vals.max() >= cfg.vocab_size):
        raise ValueError(
            f"prompt token ids must lie in [0, {cfg.vocab_size}), got values in [{vals.min()}, {vals.max()}]"
        )
    arr = np.where(valid, arr, pad_id).astype(np.int32)
    return arr, lens


def _loop(params, state, *, cfg, strategy, transform, max_steps, eos_id):
    TRACE_COUNTS["decode_loop"] += 1

    def cond(s):
        return (s.step < max_steps) & ~jnp.all(s.done)

    def body(s):
        s = strategy.step(params, cfg, transform, s, eos_id=eos_id)
        return s.replace(step=s.step + 1)

    # The library's one decode loop (this module was tokjax/decoding/generate.py before the function
    # stopped shadowing it); every decoder is a Strategy stepped here.
    return jax.lax.while_loop(cond, body, state)


def _one_step(params, state, *, cfg, strategy, transform, eos_id):
    TRACE_COUNTS["decode_step"] += 1
    s = strategy.step(params, cfg, transform, state, eos_id=eos_id)
    return s.replace(step=s.step + 1)


_loop_jit = jax.jit(_loop, static_argnames=("cfg", "strategy", "transform", "max_steps", "eos_id"), donate_argnames=("state",))
_step_jit = jax.jit(_one_step, static_argnames=("cfg", "strategy", "transform", "eos_id"), donate_argnames=("state",))


def _base(strategy, name: str):
    """Returns ``strategy.<name>``, or the Strategy default for strategies written before the base class existed."""
    fn = getattr(strategy, name, None)
    return functools.partial(getattr(Strategy, name), strategy) if fn is None else fn


def decode_state_shardings(state: DecodeState, strategy, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    """Returns a DecodeState of NamedShardings: per-row buffers batch on "data", the cache by ``cache_shardings``,
    the strategy state as its ``state_axes`` declares, logit-transform state by its leading batch dimension.
    """
    B = state.tokens.shape[0]
    rep = NamedSharding(mesh, PartitionSpec())
    row = lambda x: logical_sharding(x.shape, ("batch",) + (None,) * (x.ndim - 1), mesh, rules)  # noqa: E731
    stats = jax.tree.map(lambda _: rep, state.stats).replace(masked_rows=row(state.stats.masked_rows))
    return state.replace(
        tokens=row(state.tokens), lengths=row(state.lengths), prompt_lengths=row(state.prompt_lengths),
        max_lengths=row(state.max_lengths), done=row(state.done), cache=cache_shardings(state.cache, mesh, rules),
        # Logit transforms keep per-row state with the batch first (their only layout convention).
        logit_state=state_shardings(state.logit_state, B, mesh, rules),
        key=rep, step=rep, stats=stats,
        extra=axes_shardings(state.extra, _base(strategy, "state_axes")(state.extra), mesh, rules),
    )


def _on_mesh(params, mesh: Mesh) -> bool:
    return all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh for x in jax.tree.leaves(params))


def _setup(model, prompt, *, key, max_new_tokens, prompt_lengths, logits, strategy, eos_id, pad_id,
           strategy_state=None, mesh=None, rules=None):
    if not isinstance(model, Model):
        raise ValueError(f"generate expects a tokjax Model (params + cfg), got {type(model).__name__}")
    cfg = model.cfg
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    transform = Identity() if logits is None else logits
    if not isinstance(transform, LogitTransform):
        raise ValueError(f"logits must be a LogitTransform (e.g. tokjax.logits.temperature(0.7)), got {type(logits).__name__}")
    strategy = Sampling() if strategy is None else strategy
    if not isinstance(strategy, Strategy):  # written before the base class: the core attributes must exist
        for attr in ("slack", "max_accept", "step"):
            if not hasattr(strategy, attr):
                raise ValueError(f"strategy {type(strategy).__name__} lacks {attr!r}; subclass tokjax.decoding.Strategy")
    _base(strategy, "validate")(cfg)
    if eos_id is not None and not (0 <= int(eos_id) < cfg.vocab_size):
        raise ValueError(f"eos_id must lie in [0, {cfg.vocab_size}), got {eos_id}")
    if rules is not None and mesh is None:
        raise ValueError("rules= applies to sharded decoding; pass mesh= too")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (see tokjax.parallel.make_mesh), got {type(mesh).__name__}")
    rules = DEFAULT_RULES if rules is None else rules
    tokens, lens = prepare_prompt(prompt, prompt_lengths, cfg, pad_id)
    B, P = tokens.shape
    if int(lens.max()) > cfg.max_len:
        raise ValueError(f"prompt of {int(lens.max())} tokens is longer than the model's max_len={cfg.max_len}")
    if int(lens.max()) + max_new_tokens > cfg.max_len:
        raise ValueError(
            f"prompt ({int(lens.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_len={cfg.max_len}; shorten one of them"
        )
    if key is None:
        if not ends_greedy(transform):
            raise ValueError("generate needs key= (a jax.random key) for sampling; pass logits=greedy() for greedy")
        key = jax.random.key(0)
    total = P + max_new_tokens
    capacity = total + strategy.slack
    buf = np.full((B, total), pad_id, np.int32)
    buf[:, :P] = tokens
    if mesh is not None and not _on_mesh(model.params, mesh):
        model = shard_model(model, mesh, rules)
    # Per-layer weight buffers read in place (see tokjax.model.unstack_layers); q/k/v and gate/up
    # fused into one matmul each, except on a mesh, where fusing would concatenate head-sharded
    # weights and force a reshard every step. init and step both receive exactly these params.
    params = unstack_layers(model.params, fuse=mesh is None)
    cache = prefill(params, cfg, jnp.asarray(tokens), jnp.asarray(lens), capacity)
    state = DecodeState(
        tokens=jnp.asarray(buf),
        lengths=jnp.array(lens),
        prompt_lengths=jnp.array(lens),
        max_lengths=jnp.array(lens + max_new_tokens),
        done=jnp.zeros((B,), bool),
        cache=cache,
        # Copies: the state is donated to the loop, and the caller may reuse its key and arrays.
        logit_state=jax.tree.map(jnp.copy, transform.init(B)),
        key=jnp.copy(key),
        step=jnp.zeros((), jnp.int32),
        stats=DecodeStats.init(B, strategy.max_accept),
    )
    extra = _base(strategy, "init")(params, cfg, state)
    if strategy_state is not None:
        extra = _base(strategy, "resume")(extra, strategy_state)
    state = state.replace(extra=extra)
    if mesh is not None:
        state = jax.device_put(state, decode_state_shardings(state, strategy, mesh, rules))
    return cfg, transform, strategy, (None if eos_id is None else int(eos_id)), state, params


def _output(state: DecodeState, strategy, pad_id: int) -> GenerateOutput:
    # Single process: np.asarray gathers sharded arrays; multi-host would need process_allgather.
    tokens = np.asarray(state.tokens)
    lengths = np.asarray(state.lengths)
    tokens = np.where(np.arange(tokens.shape[1])[None, :] < lengths[:, None], tokens, pad_id)
    prompt_lengths = np.asarray(state.prompt_lengths)
    calls = int(state.stats.forward_calls)
    generated = int((lengths - prompt_lengths).sum())
    stats = {
        "forward_calls": calls,
        "generated_tokens": generated,
        # per live row and call: how many tokens one target call committed for a row on average
        # (rows that already stopped are not counted, so ragged batches are not penalised)
        "tokens_per_call": generated / max(int(np.asarray(state.stats.accepted).sum()), 1),
        "tokens_per_batch_call": generated / max(calls * tokens.shape[0], 1),
        "accepted_histogram": np.asarray(state.stats.accepted).tolist(),
        "draft_layer_evals": int(state.stats.draft_layer_evals),
        "masked_rows": np.asarray(state.stats.masked_rows).tolist(),
    }
    if state.stats.position_accepted is not None and state.stats.position_accepted.shape[0]:
        acc = np.asarray(state.stats.position_accepted)
        reached = np.asarray(state.stats.position_reached)
        row_steps = max(int(np.asarray(state.stats.accepted).sum()), 1)
        # conditional: P(depth d accepted | depths < d accepted); marginal: over all live row-steps
        stats["position_accepted"] = acc.tolist()
        stats["position_acceptance"] = (acc / np.maximum(reached, 1)).tolist()
        stats["position_acceptance_marginal"] = (acc / row_steps).tolist()
        stats["mean_accepted_drafts"] = float(acc.sum() / row_steps)
    stats.update(_base(strategy, "finalize")(state))
    return GenerateOutput(
        tokens=tokens, lengths=lengths, prompt_lengths=prompt_lengths, stats=stats,
        strategy_state=_base(strategy, "persistent_state")(state.extra),
    )


def generate(
    model: Model,
    prompt: Any,
    *,
    key: jax.Array | None = None,
    max_new_tokens: int,
    prompt_lengths: Sequence[int] | None = None,
    logits: LogitTransform | None = None,
    strategy: Strategy | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    strategy_state: Any = None,
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
) -> GenerateOutput:
    """Returns a GenerateOutput with each row's prompt followed by up to ``max_new_tokens`` new tokens.

    ``prompt``: a padded [B, P] id array (with ``prompt_lengths``) or a list of id lists of
    different lengths. ``logits``: a LogitTransform applied to every step's next-token logits
    (temperature, top-p, ...; changing its hyperparameters does not recompile). ``strategy``:
    how a step proposes and commits tokens (default plain sampling). Rows stop at ``eos_id``
    (included in the output) or at their token budget; the loop stops when every row is done.

    ``strategy_state``: the ``strategy_state`` of an earlier output with the same strategy
    (hot start: e.g. Token Recycling's table or STAND's n-gram tables carry over; not aliased,
    the caller's copy is left intact). ``mesh`` (and ``rules``, default
    ``tokjax.parallel.DEFAULT_RULES``): decode sharded over a ("data", "model") mesh: params
    are sharded by ``rules`` unless already on ``mesh``, rows split over "data", caches' kv
    heads over "model", strategy state as its ``state_axes`` declares. Same tokens as one device.
    """
    cfg, transform, strategy, eos, state, params = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths, logits=logits,
        strategy=strategy, eos_id=eos_id, pad_id=pad_id, strategy_state=strategy_state, mesh=mesh, rules=rules,
    )
    state = _loop_jit(params, state, cfg=cfg, strategy=strategy, transform=transform, max_steps=max_new_tokens, eos_id=eos)
    return _output(state, strategy, pad_id)


def stream(
    model: Model,
    prompt: Any,
    *,
    key: jax.Array | None = None,
    max_new_tokens: int,
    prompt_lengths: Sequence[int] | None = None,
    logits: LogitTransform | None = None,
    strategy: Strategy | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    strategy_state: Any = None,
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
) -> Iterator[list[np.ndarray]]:
    """Yields, after every decode step, the tokens each row committed in that step (a list of B arrays).

    Runs the same jitted step as :func:`generate`, one call per step from Python, so its output
    equals generate's for the same arguments and key.
    """
    cfg, transform, strategy, eos, state, params = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths, logits=logits,
        strategy=strategy, eos_id=eos_id, pad_id=pad_id, strategy_state=strategy_state, mesh=mesh, rules=rules,
    )
    for _ in range(max_new_tokens):
        if bool(jnp.all(state.done)):
            return
        before = np.asarray(state.lengths)
        state = _step_jit(params, state, cfg=cfg, strategy=strategy, transform=transform, eos_id=eos)
        after = np.asarray(state.lengths)
        toks = np.asarray(state.tokens)
        yield [toks[b, before[b]:after[b]] for b in range(toks.shape[0])]
