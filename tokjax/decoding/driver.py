"""The one decode driver: ``generate`` / ``stream``, a jitted ``lax.while_loop`` over fixed-size buffers.

    out = generate(model, prompt, key=key, max_new_tokens=64, logits=chain(top_p(0.9), temperature(0.7)))

The strategy (plain sampling by default) decides what one step does; the loop, the buffers,
stopping (eos ids, stop sequences and strings, ``min_new_tokens``), per-token log-probabilities,
``n`` samples per prompt, shape bucketing, the NaN check, statistics, the pending-token cache
convention (see ``_state``), hot start (``strategy_state=``) and sharded decoding (``mesh=``) are
shared by every strategy, speculative and two-model ones included.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import numbers
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokjax.decoding._inputs import check_key, prepare_prompt
from tokjax.decoding._state import (
    DecodeState, DecodeStats, StopSequences, Strategy, TokenLogprobs, ends_greedy, sample_and_commit,
)
from tokjax.logits import Identity, LogitTransform, chain
from tokjax.model import Inputs, Model, ModelConfig, forward, prefill
from tokjax.model.quant import Int8Weight
from tokjax.model.layout import decode_layout  # noqa: F401 - re-exported (tokjax.decoding.driver.decode_layout)
from tokjax.model.sharding import (
    DEFAULT_RULES, ShardingRules, axes_shardings, cache_shardings, logical_sharding, shard_model, state_shardings,
)

__all__ = [
    "TRACE_COUNTS", "GenerateOutput", "NonFiniteLogitsError", "Sampling", "MinNewTokens", "generate", "stream",
    "prepare_prompt", "decode_state_shardings", "bucket_size",
]

# How many times each jitted function has been traced; tests use it to prove that changing a
# runtime hyperparameter (temperature, top-p, tau, ...), a prompt length or a token budget
# within its bucket does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()

# Decode steps between two stop-string checks (generate runs the jitted loop in chunks of this many
# steps and decodes the new text in between; the loop state carries over exactly).
STOP_STRING_CHUNK = 8
MIN_BUCKET = 16
ON_NAN = ("raise", "stop")


class NonFiniteLogitsError(ValueError):
    """Raised by generate / stream when the model produced NaN or +inf logits (``on_nan="raise"``)."""


@dataclasses.dataclass(frozen=True)
class Sampling(Strategy):
    """The default strategy: one target call per step, one sampled (or argmax) token per row."""

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache)
        return sample_and_commit(state, out.logits[:, 0], transform, eos_id, cache=out.cache)


@dataclasses.dataclass(frozen=True)
class MinNewTokens(LogitTransform):
    """Bans ``ids`` (the eos ids) while a row has generated fewer than ``min_new_tokens`` tokens.

    transformers' ``MinNewTokensLengthLogitsProcessor``: logits[b, v] = -inf for v in ``ids``
    while ``ctx.lengths[b] < until[b]``, with ``until = prompt length + min_new_tokens`` (the
    next token goes to slot ``ctx.lengths``). ``until`` is per-row state that ``generate`` fills
    in (``init`` gives 0: no ban), so a new ``min_new_tokens`` does not recompile; the state
    never changes during decoding, so it runs inside speculative verification too.
    """

    ids: tuple = ()

    def init(self, batch: int) -> dict:
        return {"until": jnp.zeros((batch,), jnp.int32)}

    def apply(self, logits, state, ctx):
        V = logits.shape[-1]
        banned = jnp.zeros((V,), bool).at[jnp.asarray(self.ids, jnp.int32)].set(True)
        early = ctx.lengths < state["until"]
        return jnp.where(early[:, None] & banned[None, :], -jnp.inf, logits), state


@dataclasses.dataclass(frozen=True)
class GenerateOutput:
    """What generate returns: host numpy token buffers, statistics, and the strategy's state for hot start.

    ``tokens`` [B, S] int32: row b is its prompt followed by its generated tokens, contiguous,
    ``tokens[b, :lengths[b]]``; every slot from ``lengths[b]`` on holds ``pad_id`` (the
    ``generate(pad_id=)`` argument, 0 by default), and so does the prompt's own padding. S is
    the prompt array's width + max_new_tokens, whatever the bucketing. With ``generate(n=k)``
    rows are prompt-major: prompt 0's k samples, then prompt 1's, ...

    ``prompt_lengths`` [B], ``lengths`` [B]: where each row's completion starts and ends.

    ``logprobs`` [B, S] float32 (``generate(logprobs=0 or k)``, else None): at each generated
    slot, the log-probability of that token under the distribution the step drew it from,
    i.e. after the logit transform (temperature, top-p, ..., ``greedy()`` gives 0.0) and, for
    speculative strategies, the verifier's transformed target distribution at that position.
    Prompt and padding slots hold 0.0, so ``logprobs.sum(1)`` is each completion's log-probability.
    ``top_logprobs`` / ``top_ids`` [B, S, k] (``logprobs=k >= 1``): that distribution's k most
    likely tokens, most likely first, as vLLM returns them; -inf / -1 outside the completion.

    ``stats``: forward_calls, tokens_per_call, accepted histogram, ``masked_rows`` (rows ended
    because every token was banned), ``nan_rows`` / ``nan_steps`` (rows ended by NaN or +inf
    logits, ``on_nan="stop"``), ``stop_strings`` (rows ended by a stop string), plus the
    strategy's ``finalize`` statistics. ``strategy_state``: the strategy's ``persistent_state``
    (device arrays; e.g. Token Recycling's table), to pass as ``generate(..., strategy_state=)``
    to a later call.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    stats: dict
    strategy_state: Any = None
    logprobs: np.ndarray | None = None
    top_logprobs: np.ndarray | None = None
    top_ids: np.ndarray | None = None

    def completions(self) -> list[np.ndarray]:
        """Returns each row's generated tokens (without the prompt; an eos or stop sequence that ended it included)."""
        return [self.tokens[b, p:n] for b, (p, n) in enumerate(zip(self.prompt_lengths, self.lengths))]

    def texts(self, tokenizer) -> list[str]:
        """Returns each row's completion decoded with ``tokenizer`` (``tokenizer.decode``; special tokens such
        as eos decode to nothing with tokjax tokenizers). A stop string that ended a row is part of its text,
        as transformers' StopStringCriteria leaves it."""
        if not callable(getattr(tokenizer, "decode", None)):
            raise ValueError(f"texts needs a tokenizer with a decode(ids) method, got {type(tokenizer).__name__}")
        return [tokenizer.decode(c.tolist()) for c in self.completions()]


def bucket_size(n: int, cap: int | None = None) -> int:
    """Returns the bucket of a prompt width or token budget ``n``: the next power of two, at least
    MIN_BUCKET (and at most ``cap`` when given, but never below ``n``)."""
    b = max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())
    return max(int(n), b if cap is None else min(b, cap))


def _loop(params, models, state, max_steps, *, cfg, strategy, transform, eos_id):
    TRACE_COUNTS["decode_loop"] += 1

    def cond(s):
        return (s.step < max_steps) & ~jnp.all(s.done)

    def body(s):
        # The strategy's other models are loop invariants like the target's params: outside the carry, so
        # the loop neither donates nor copies them.
        s = strategy.step(params, cfg, transform, s.replace(models=models), eos_id=eos_id)
        return s.replace(step=s.step + 1, models=None)

    # The library's one decode loop (this module was tokjax/decoding/generate.py before the function
    # stopped shadowing it); every decoder is a Strategy stepped here. max_steps is a runtime value:
    # a new token budget within its bucket, or running the loop in chunks (stop strings), does not retrace.
    return jax.lax.while_loop(cond, body, state)


def _one_step(params, models, state, *, cfg, strategy, transform, eos_id):
    TRACE_COUNTS["decode_step"] += 1
    s = strategy.step(params, cfg, transform, state.replace(models=models), eos_id=eos_id)
    return s.replace(step=s.step + 1, models=None)


_loop_jit = jax.jit(_loop, static_argnames=("cfg", "strategy", "transform", "eos_id"), donate_argnames=("state",))
_step_jit = jax.jit(_one_step, static_argnames=("cfg", "strategy", "transform", "eos_id"), donate_argnames=("state",))


def _base(strategy, name: str):
    """Returns ``strategy.<name>``, or the Strategy default for strategies written before the base class existed."""
    fn = getattr(strategy, name, None)
    return functools.partial(getattr(Strategy, name), strategy) if fn is None else fn


def _has_output(strategy) -> bool:
    return getattr(type(strategy), "output", Strategy.output) is not Strategy.output


def decode_state_shardings(state: DecodeState, strategy, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES):
    """Returns a DecodeState of NamedShardings: per-row buffers batch on "data", the cache by ``cache_shardings``,
    the strategy state as its ``state_axes`` declares, logit-transform state by its leading batch dimension.
    """
    B = state.tokens.shape[0]
    rep = NamedSharding(mesh, PartitionSpec())
    row = lambda x: logical_sharding(x.shape, ("batch",) + (None,) * (x.ndim - 1), mesh, rules)  # noqa: E731
    stats = jax.tree.map(lambda _: rep, state.stats).replace(masked_rows=row(state.stats.masked_rows))
    if state.stats.nan_rows is not None:
        stats = stats.replace(nan_rows=row(state.stats.nan_rows), nan_step=row(state.stats.nan_step))
    return state.replace(
        tokens=row(state.tokens), lengths=row(state.lengths), prompt_lengths=row(state.prompt_lengths),
        max_lengths=row(state.max_lengths), done=row(state.done), cache=cache_shardings(state.cache, mesh, rules),
        # Logit transforms keep per-row state with the batch first (their only layout convention).
        logit_state=state_shardings(state.logit_state, B, mesh, rules),
        key=rep, step=rep, stats=stats,
        extra=axes_shardings(state.extra, _base(strategy, "state_axes")(state.extra), mesh, rules),
        logprobs=None if state.logprobs is None else jax.tree.map(row, state.logprobs),
        stop=None if state.stop is None else StopSequences(tokens=rep, min_lengths=row(state.stop.min_lengths)),
    )


def _on_mesh(params, mesh: Mesh) -> bool:
    return all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh for x in jax.tree.leaves(params))


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_eos(eos_id, V: int) -> tuple[int, ...]:
    """Returns the eos ids as a tuple of distinct ints (empty for None); ValueError for anything else."""
    if eos_id is None:
        return ()
    items = [eos_id] if _is_int(eos_id) else eos_id
    if isinstance(items, np.ndarray):
        items = items.tolist() if items.ndim == 1 else [items]
    if not isinstance(items, (list, tuple)) or not items or not all(_is_int(e) for e in items):
        raise ValueError(f"eos_id must be an int or a non-empty list of ints (every id that ends a row), got {eos_id!r}")
    bad = [int(e) for e in items if not 0 <= int(e) < V]
    if bad:
        raise ValueError(f"eos_id values must lie in [0, {V}), got {bad}")
    return tuple(dict.fromkeys(int(e) for e in items))


def _check_stop(stop, tokenizer, V: int) -> tuple[list[list[int]], list[str]]:
    """Returns (token-id stop sequences, stop strings) from ``stop=``."""
    if stop is None:
        return [], []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise ValueError(f"stop must be a list of stop strings and/or token-id sequences (lists of ints), got "
                         f"{type(stop).__name__}")
    seqs, strings = [], []
    for item in stop:
        if isinstance(item, str):
            if not item:
                raise ValueError("stop strings must be non-empty")
            strings.append(item)
        elif _is_int(item):
            raise ValueError(
                f"stop must hold stop strings or token-id sequences (lists of ints), got the bare int {item!r}: "
                f"write stop=[[{item}]] for a one-token sequence, or pass it in eos_id=[...]"
            )
        else:
            arr = np.asarray(item)
            if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
                raise ValueError(f"a stop sequence must be a non-empty flat list of int token ids, got {item!r}")
            if arr.min() < 0 or arr.max() >= V:
                raise ValueError(f"stop sequence token ids must lie in [0, {V}), got {arr.tolist()}")
            seqs.append([int(x) for x in arr])
    if strings and not callable(getattr(tokenizer, "decode", None)):
        raise ValueError("stop strings are matched on decoded text: pass tokenizer= (an object with decode(ids)), "
                         f"got tokenizer={tokenizer!r}")
    return seqs, strings


@dataclasses.dataclass
class _Run:
    """What _setup prepares for one generate / stream call (host-side metadata next to the device state)."""

    cfg: ModelConfig
    transform: LogitTransform
    strategy: Any
    eos: tuple | None
    state: DecodeState
    params: Any
    models: Any  # {name: decode layout} of the strategy's other models (Strategy.models)
    max_new_tokens: int
    width: int  # output width: the prompt array's width + max_new_tokens
    prompts: int  # B, the number of prompts
    pad_id: int
    stop_strings: list
    tokenizer: Any
    min_new_tokens: int
    on_nan: str

    def __iter__(self):
        # _setup returned this 6-tuple before it returned a _Run; tests unpack it to inspect state placement.
        return iter((self.cfg, self.transform, self.strategy, self.eos, self.state, self.params))


def _setup(model, prompt, *, key, max_new_tokens, prompt_lengths, logits, strategy, eos_id, pad_id,
           strategy_state=None, mesh=None, rules=None, logprobs=None, stop=None, tokenizer=None, min_new_tokens=0,
           n=1, bucket=True, on_nan="raise", padding_side="right") -> _Run:
    if not isinstance(model, Model):
        raise ValueError(f"generate expects a tokjax Model (params + cfg), got {type(model).__name__}")
    cfg = model.cfg
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    transform = Identity() if logits is None else logits
    if not isinstance(transform, LogitTransform):
        raise ValueError(f"logits must be a LogitTransform (e.g. tokjax.logits.temperature(0.7)), got {type(logits).__name__}")
    strategy = Sampling() if strategy is None else strategy
    if not isinstance(strategy, Strategy):  # written before the base class: the core attributes must exist
        for attr in ("slack", "max_accept", "step"):
            if not hasattr(strategy, attr):
                raise ValueError(f"strategy {type(strategy).__name__} lacks {attr!r}; subclass tokjax.decoding.Strategy")
    _base(strategy, "validate")(cfg)
    if cfg.mixer == "mamba" and strategy.slack > 0:  # slack > 0: it writes tokens it may not commit, then rolls back
        raise ValueError(f"{type(strategy).__name__} writes tokens it may not commit and rolls the cache back "
                         f"(slack={strategy.slack}); a mixer='mamba' model's recurrent state cannot be rolled back: "
                         "decode it with plain sampling, greedy or beam search")
    eos = _check_eos(eos_id, cfg.vocab_size)
    seqs, strings = _check_stop(stop, tokenizer, cfg.vocab_size)
    if not _is_int(min_new_tokens) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be an int >= 0, got {min_new_tokens!r}")
    if not _is_int(n) or n < 1:
        raise ValueError(f"n (samples per prompt) must be an int >= 1, got {n!r}")
    if not isinstance(bucket, bool):
        raise ValueError(f"bucket must be True or False, got {bucket!r}")
    if on_nan not in ON_NAN:
        raise ValueError(f"on_nan must be 'raise' or 'stop', got {on_nan!r}")
    if logprobs is not None:
        if not _is_int(logprobs) or not 0 <= logprobs <= cfg.vocab_size:
            raise ValueError(f"logprobs must be None or an int in [0, vocab_size={cfg.vocab_size}] (0: the chosen "
                             f"tokens' log-probabilities only; k: also the top k), got {logprobs!r}")
        if _has_output(strategy):
            raise ValueError(f"logprobs are recorded per decode row; {type(strategy).__name__} returns other rows "
                             "(Strategy.output), so generate(logprobs=) is not supported with it")
    if _has_output(strategy) and strings:
        raise ValueError(f"{type(strategy).__name__} returns its own rows (Strategy.output): stop strings and n > 1 "
                         "are not supported with it (stop strings are matched on decode rows)")
    if n > 1 and not getattr(strategy, "samples", True):
        raise ValueError(f"{type(strategy).__name__} never samples: stop strings and n > 1 are not supported with it "
                         "(n > 1 would repeat the same deterministic search)")
    reps = int(getattr(strategy, "rows_per_prompt", 1)) * int(n)
    if rules is not None and mesh is None:
        raise ValueError("rules= applies to sharded decoding; pass mesh= too")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (see tokjax.parallel.make_mesh), got {type(mesh).__name__}")
    rules = DEFAULT_RULES if rules is None else rules
    tokens, lens = prepare_prompt(prompt, prompt_lengths, cfg, pad_id, padding_side=padding_side)
    B, P = tokens.shape
    if int(lens.max()) > cfg.max_len:
        raise ValueError(f"prompt of {int(lens.max())} tokens is longer than the model's max_len={cfg.max_len}")
    if int(lens.max()) + max_new_tokens > cfg.max_len:
        raise ValueError(
            f"prompt ({int(lens.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_len={cfg.max_len}; shorten one of them"
        )
    if key is None:
        if getattr(strategy, "samples", True) and not ends_greedy(transform):
            raise ValueError("generate needs key= (a jax.random key) for sampling; pass logits=greedy() for greedy")
        key = jax.random.key(0)
    else:
        key = check_key(key)
    # Bucketed shapes: the prompt array is padded to a power-of-two width (never past max_len: a
    # learned position table has max_len rows) and the buffers get a power-of-two budget, so new
    # prompt lengths and budgets reuse the compiled loop. Rows still stop at their real budget.
    Pb = bucket_size(P, cfg.max_len) if bucket else P
    Mb = bucket_size(max_new_tokens) if bucket else max_new_tokens
    total = Pb + Mb
    capacity = total + strategy.slack
    valid = np.arange(P)[None, :] < lens[:, None]
    prefill_tokens = np.zeros((B, Pb), np.int32)
    prefill_tokens[:, :P] = np.where(valid, tokens, 0)  # a real id in the padding (pad_id need not be one)
    buf = np.full((B, total), pad_id, np.int32)
    buf[:, :P] = tokens
    if mesh is not None and any(isinstance(w, Int8Weight) for w in jax.tree.leaves(
            model.params, is_leaf=lambda w: isinstance(w, Int8Weight))):
        raise ValueError("int8 weights (tokjax.model.quant.quantize_int8) are a single-device decode layout; "
                         "generate them with mesh=None, or shard the float model")
    if mesh is not None and not _on_mesh(model.params, mesh):
        model = shard_model(model, mesh, rules)
    # Per-layer weight buffers read in place (see tokjax.model.unstack_layers); q/k/v and gate/up
    # fused into one matmul each, except on a mesh, where fusing would concatenate head-sharded
    # weights and force a reshard every step. init and step both receive exactly these params.
    params = decode_layout(model.params, fuse=mesh is None, cfg=cfg)
    models = _strategy_models(strategy, mesh, rules)
    # One prefill per prompt; n samples (and a strategy's rows_per_prompt) fork its cache rows.
    cache = prefill(params, cfg, jnp.asarray(prefill_tokens), jnp.asarray(lens), capacity)
    if reps > 1:
        cache = cache.fork(reps)
        buf, lens = np.repeat(buf, reps, axis=0), np.repeat(lens, reps)
    R = B * reps
    # Copies: the state is donated to the loop, and the caller may reuse its key and arrays.
    logit_state = jax.tree.map(jnp.copy, transform.init(R))
    if eos and min_new_tokens > 0:
        transform = chain(MinNewTokens(eos), transform)
        logit_state = ({"until": jnp.asarray(lens + min_new_tokens, jnp.int32)}, logit_state)
    stop_state = None
    if seqs:
        L = max(len(s) for s in seqs)
        table = np.full((len(seqs), L), -2, np.int32)
        for k, s in enumerate(seqs):
            table[k, L - len(s):] = s
        stop_state = StopSequences(tokens=jnp.asarray(table), min_lengths=jnp.asarray(lens + min_new_tokens, jnp.int32))
    state = DecodeState(
        tokens=jnp.asarray(buf),
        lengths=jnp.array(lens),
        prompt_lengths=jnp.array(lens),
        max_lengths=jnp.array(lens + max_new_tokens),
        done=jnp.zeros((R,), bool),
        cache=cache,
        logit_state=logit_state,
        key=jnp.copy(key),
        step=jnp.zeros((), jnp.int32),
        stats=DecodeStats.init(R, strategy.max_accept),
        logprobs=None if logprobs is None else TokenLogprobs.init(R, total, int(logprobs)),
        stop=stop_state,
    )
    extra = _base(strategy, "init")(params, cfg, state.replace(models=models))
    if strategy_state is not None:
        extra = _base(strategy, "resume")(extra, strategy_state)
    state = state.replace(extra=extra)
    if mesh is not None:
        state = jax.device_put(state, decode_state_shardings(state, strategy, mesh, rules))
    return _Run(
        cfg=cfg, transform=transform, strategy=strategy, eos=eos or None, state=state, params=params, models=models,
        max_new_tokens=max_new_tokens, width=P + max_new_tokens, prompts=B, pad_id=pad_id, stop_strings=strings,
        tokenizer=tokenizer, min_new_tokens=int(min_new_tokens), on_nan=on_nan,
    )


def _strategy_models(strategy, mesh, rules) -> dict:
    """Returns {name: decode layout} of ``strategy.models()``, laid out (and on a mesh, sharded) as the target is."""
    found = _base(strategy, "models")()
    if not isinstance(found, dict) or not all(isinstance(m, Model) for m in found.values()):
        raise ValueError(f"{type(strategy).__name__}.models() must return a dict of tokjax Models, got {found!r:.80}")
    out = {}
    for name, m in found.items():
        if mesh is not None and not _on_mesh(m.params, mesh):
            m = shard_model(m, mesh, rules)
        out[name] = decode_layout(m.params, fuse=mesh is None, cfg=m.cfg)
    return out


def _stop_string_end(tokenizer, completion: np.ndarray, stops: list[str], first: int) -> int | None:
    """Returns the smallest k >= ``first`` such that an occurrence of a stop string in the decoded text of
    ``completion[:k]`` ends inside token k's text (transformers' StopStringCriteria: the token that completes
    the stop string, overhang included, ends the row), or None."""
    n = len(completion)
    if first > n or not any(s in tokenizer.decode(completion.tolist()) for s in stops):
        return None
    prev = tokenizer.decode(completion[: first - 1].tolist())
    for k in range(first, n + 1):
        cur = tokenizer.decode(completion[:k].tolist())
        if any(s in cur[max(0, len(prev) - len(s) + 1):] for s in stops):
            return k
        prev = cur
    return None


class _StopStrings:
    """Host-side stop-string matching between chunks of the decode loop (per row: how far it was checked and
    where a stop string cut it)."""

    def __init__(self, run: _Run, rows: int):
        self.run = run
        self.checked = np.zeros((rows,), np.int64)  # completion tokens already known not to end a stop string
        self.cut = np.full((rows,), -1, np.int64)  # absolute length a stop string ended the row at

    def update(self, tokens: np.ndarray, lengths: np.ndarray, prompt_lengths: np.ndarray) -> np.ndarray:
        """Returns bool [rows]: rows that a stop string ended in the tokens committed since the last call."""
        new = np.zeros(self.cut.shape, bool)
        for b in np.nonzero(self.cut < 0)[0]:
            comp = tokens[b, prompt_lengths[b]:lengths[b]]
            if len(comp) <= self.checked[b]:
                continue
            first = max(int(self.checked[b]) + 1, self.run.min_new_tokens, 1)
            k = _stop_string_end(self.run.tokenizer, comp, self.run.stop_strings, first)
            self.checked[b] = len(comp)
            if k is not None:
                self.cut[b] = prompt_lengths[b] + k
                new[b] = True
        return new


def _mark_done(state: DecodeState, rows: np.ndarray) -> DecodeState:
    mask = jax.device_put(jnp.asarray(rows), state.done.sharding)
    return state.replace(done=state.done | mask)


def _nan_check(run: _Run, state: DecodeState) -> None:
    if run.on_nan != "raise" or state.stats.nan_rows is None:
        return
    bad = np.asarray(state.stats.nan_rows)
    if bad.any():
        rows = np.nonzero(bad)[0]
        steps = np.asarray(state.stats.nan_step)[rows]
        raise NonFiniteLogitsError(
            f"the model produced non-finite logits (NaN or +inf) for decode rows {rows.tolist()[:16]} at decode steps "
            f"{steps.tolist()[:16]} (step 0 predicts the first new token); this is not a banned-token row, the "
            "params or a logit transform are broken (check that the weights are finite). Pass on_nan='stop' to end "
            "those rows instead and read stats['nan_rows']"
        )


def _output(state: DecodeState, run: _Run, cut: np.ndarray | None = None) -> GenerateOutput:
    strategy, pad_id, W = run.strategy, run.pad_id, run.width
    # Single process: np.asarray gathers sharded arrays; multi-host would need process_allgather.
    lengths = np.asarray(state.lengths)
    prompt_lengths = np.asarray(state.prompt_lengths)
    if cut is not None:
        lengths = np.where(cut >= 0, np.minimum(lengths, cut), lengths)
    custom = _base(strategy, "output")(state)
    if custom is not None:
        tokens, lengths = np.asarray(custom[0]), np.asarray(custom[1]).astype(np.int32)
        if tokens.shape[0] != lengths.shape[0] or tokens.shape[0] % run.prompts:
            raise ValueError(
                f"{type(strategy).__name__}.output returned {tokens.shape[0]} token rows and {lengths.shape[0]} "
                f"lengths; expected the same number, a multiple of the {run.prompts} prompts"
            )
        per = tokens.shape[0] // run.prompts
        prompt_lengths = np.repeat(prompt_lengths[:: prompt_lengths.shape[0] // run.prompts], per)
    else:
        tokens = np.asarray(state.tokens)
    tokens = tokens[:, :W]
    in_row = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    tokens = np.where(in_row, tokens, pad_id).astype(np.int32)
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
    if state.stats.nan_rows is not None:
        stats["nan_rows"] = np.asarray(state.stats.nan_rows).tolist()
        stats["nan_steps"] = np.asarray(state.stats.nan_step).tolist()
    if run.stop_strings:
        stats["stop_strings"] = (cut >= 0).tolist()
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
    lp = top_values = top_ids = None
    if state.logprobs is not None:
        gen = in_row & (np.arange(tokens.shape[1])[None, :] >= prompt_lengths[:, None])
        lp = np.where(gen, np.asarray(state.logprobs.chosen)[:, :W], 0.0).astype(np.float32)
        if state.logprobs.top_values is not None:
            top_values = np.where(gen[..., None], np.asarray(state.logprobs.top_values)[:, :W], -np.inf)
            top_values = top_values.astype(np.float32)
            top_ids = np.where(gen[..., None], np.asarray(state.logprobs.top_ids)[:, :W], -1).astype(np.int32)
    return GenerateOutput(
        tokens=tokens, lengths=lengths.astype(np.int32), prompt_lengths=prompt_lengths, stats=stats,
        strategy_state=_base(strategy, "persistent_state")(state.extra),
        logprobs=lp, top_logprobs=top_values, top_ids=top_ids,
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
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    strategy_state: Any = None,
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
    logprobs: int | None = None,
    stop: Sequence[str | Sequence[int]] | None = None,
    tokenizer: Any = None,
    min_new_tokens: int = 0,
    n: int = 1,
    bucket: bool = True,
    on_nan: str = "raise",
    padding_side: str = "right",
) -> GenerateOutput:
    """Returns a GenerateOutput with each row's prompt followed by up to ``max_new_tokens`` new tokens.

    ``prompt``: a padded [B, P] id array (with ``prompt_lengths``: one length per row or a 0/1
    attention mask; ``padding_side="left"`` for left-padded arrays) or a list of id lists of
    different lengths. ``logits``: a LogitTransform applied to every step's next-token logits
    (temperature, top-p, ...; changing its hyperparameters does not recompile). ``strategy``:
    how a step proposes and commits tokens (default plain sampling). ``key``: a jax.random key
    (needed unless ``logits`` ends in ``greedy()``).

    Stopping. A row ends at its token budget, at an ``eos_id`` (one id or a list: chat models
    have several, e.g. SmolLM2's ``<|im_end|>`` and ``<|endoftext|>``), at a token-id stop
    sequence or a stop string of ``stop`` (a list mixing lists of ids and strings; strings are
    matched on the decoded completion and need ``tokenizer=``), or, under ``on_nan="stop"``,
    at NaN logits. The eos, the stop sequence, and the token that completes a stop string
    (with any text it has past the stop string) are kept in the output, as transformers does:
    the tokens are those of the same run without ``stop``, cut after that token. Token
    sequences are checked inside the jitted loop; stop strings between chunks of
    ``STOP_STRING_CHUNK`` steps (the loop state carries over exactly) and only in the
    completion, not the prompt. ``min_new_tokens``: the eos ids are banned (logits -inf, also
    inside speculative verification) until a row has that many new tokens, and stop sequences
    and strings count only when they end at or after its ``min_new_tokens``-th new token.
    The loop ends when every row has ended.

    Outputs. ``logprobs``: None (default: nothing recorded, nothing computed), 0 (the
    log-probability of each generated token, ``GenerateOutput.logprobs``) or k >= 1 (also the
    top k, ``top_logprobs`` / ``top_ids``), all under the transformed distribution each token
    was drawn from (for speculative strategies: the verifier's target distribution at that
    position). ``pad_id`` fills every slot of ``GenerateOutput.tokens`` outside a row's prompt
    and completion. ``n``: samples per prompt; each prompt is prefilled once and its cache
    rows are forked, and the output holds B * n rows, prompt-major (prompt 0's samples first).
    The samples are the rows of a run on each prompt repeated n times with the same key.

    Shapes. With ``bucket=True`` (default) the prompt array's width and ``max_new_tokens`` are
    rounded up to powers of two (at least 16) for the compiled buffers, so new prompt lengths
    and budgets in the same bucket reuse the compiled loop; every row still stops at its own
    budget and the output is the same as with ``bucket=False`` (which compiles exact shapes).

    Non-finite logits. A step whose logits hold NaN or +inf (a broken model or transform,
    distinct from a row whose tokens are all banned, ``stats["masked_rows"]``) ends that row.
    ``on_nan="raise"`` (default) then raises NonFiniteLogitsError naming the rows and decode
    steps; ``on_nan="stop"`` returns, with ``stats["nan_rows"]`` / ``stats["nan_steps"]``.

    ``strategy_state``: the ``strategy_state`` of an earlier output with the same strategy
    (hot start: e.g. Token Recycling's table or STAND's n-gram tables carry over; not aliased,
    the caller's copy is left intact). ``mesh`` (and ``rules``, default
    ``tokjax.parallel.DEFAULT_RULES``): decode sharded over a ("data", "model") mesh: params
    are sharded by ``rules`` unless already on ``mesh``, rows split over "data", caches' kv
    heads over "model", strategy state as its ``state_axes`` declares. Same tokens as one device.
    """
    run = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths, logits=logits,
        strategy=strategy, eos_id=eos_id, pad_id=pad_id, strategy_state=strategy_state, mesh=mesh, rules=rules,
        logprobs=logprobs, stop=stop, tokenizer=tokenizer, min_new_tokens=min_new_tokens, n=n, bucket=bucket,
        on_nan=on_nan, padding_side=padding_side,
    )
    loop = functools.partial(
        _loop_jit, run.params, run.models, cfg=run.cfg, strategy=run.strategy, transform=run.transform, eos_id=run.eos,
    )
    state = run.state
    cut = None
    if not run.stop_strings:
        state = loop(state, jnp.int32(run.max_new_tokens))
    else:
        matcher = _StopStrings(run, state.tokens.shape[0])
        prompt_lengths = np.asarray(state.prompt_lengths)
        steps = 0
        while True:
            steps = min(steps + STOP_STRING_CHUNK, run.max_new_tokens)
            state = loop(state, jnp.int32(steps))
            new = matcher.update(np.asarray(state.tokens), np.asarray(state.lengths), prompt_lengths)
            if new.any():
                state = _mark_done(state, matcher.cut >= 0)
            if steps >= run.max_new_tokens or int(state.step) < steps or bool(np.asarray(state.done).all()):
                break
        cut = matcher.cut
    _nan_check(run, state)
    return _output(state, run, cut)


def stream(
    model: Model,
    prompt: Any,
    *,
    key: jax.Array | None = None,
    max_new_tokens: int,
    prompt_lengths: Sequence[int] | None = None,
    logits: LogitTransform | None = None,
    strategy: Strategy | None = None,
    eos_id: int | Sequence[int] | None = None,
    pad_id: int = 0,
    strategy_state: Any = None,
    mesh: Mesh | None = None,
    rules: ShardingRules | None = None,
    stop: Sequence[str | Sequence[int]] | None = None,
    tokenizer: Any = None,
    min_new_tokens: int = 0,
    n: int = 1,
    bucket: bool = True,
    on_nan: str = "raise",
    padding_side: str = "right",
) -> Iterator[list[np.ndarray]]:
    """Yields, after every decode step, the tokens each row committed in that step (a list of B * n arrays).

    Runs the same jitted step as :func:`generate`, one call per step from Python, so its output
    equals generate's for the same arguments and key; the arguments mean what they mean there.
    Stop strings are checked after every step (a row's last yielded tokens end with the token
    that completed the stop string); ``on_nan="raise"`` raises at the step that produced NaN
    logits. Log-probabilities and strategies with their own ``output`` (beam search) need the
    whole run: use :func:`generate`.
    """
    if strategy is not None and _has_output(strategy):
        raise ValueError(f"{type(strategy).__name__} returns its own output rows (Strategy.output), which exist only at "
                         "the end of the run; use generate")
    run = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths, logits=logits,
        strategy=strategy, eos_id=eos_id, pad_id=pad_id, strategy_state=strategy_state, mesh=mesh, rules=rules,
        stop=stop, tokenizer=tokenizer, min_new_tokens=min_new_tokens, n=n, bucket=bucket, on_nan=on_nan,
        padding_side=padding_side,
    )
    state = run.state
    rows = state.tokens.shape[0]
    matcher = _StopStrings(run, rows) if run.stop_strings else None
    prompt_lengths = np.asarray(state.prompt_lengths)
    for _ in range(run.max_new_tokens):
        if bool(jnp.all(state.done)):
            return
        before = np.asarray(state.lengths)
        state = _step_jit(run.params, run.models, state, cfg=run.cfg, strategy=run.strategy, transform=run.transform, eos_id=run.eos)
        _nan_check(run, state)
        after = np.asarray(state.lengths)
        toks = np.asarray(state.tokens)
        if matcher is not None:
            if matcher.update(toks, after, prompt_lengths).any():
                state = _mark_done(state, matcher.cut >= 0)
            after = np.where(matcher.cut >= 0, np.minimum(after, matcher.cut), after)
        yield [toks[b, before[b]:max(after[b], before[b])] for b in range(rows)]
