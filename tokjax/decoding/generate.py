"""generate: one jitted ``lax.while_loop`` over fixed-size buffers, batched prompts of any lengths.

    out = generate(model, prompt, key=key, max_new_tokens=64, logits=chain(top_p(0.9), temperature(0.7)))

The strategy (plain sampling by default) decides what one step does; the loop, the buffers,
stopping, statistics and the pending-token cache convention (see ``_state``) are shared by
every strategy, speculative ones included.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding._state import DecodeState, DecodeStats, Strategy, commit
from tokjax.logits import Chain, Greedy, Identity, LogitTransform, NamedChain, sample
from tokjax.logits import Stats as SampleStats
from tokjax.model import Inputs, KVCache, Model, ModelConfig, forward, unstack_layers

# How many times each jitted function has been traced; tests use it to prove that changing a
# runtime hyperparameter (temperature, top-p, ...) does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Returns nothing; the default strategy: one target call per step, one sampled token per row."""

    slack: int = 0
    max_accept: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        return None

    def init(self, params, cfg, state):
        return None

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache)
        logits, logit_state = transform.apply(out.logits[:, 0], state.logit_state, state.context())
        key, sub = jax.random.split(state.key)
        if _ends_greedy(transform):  # argmax directly: no Gumbel noise over the vocabulary
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            sstats = SampleStats(all_masked=~jnp.isfinite(logits).any(-1))
        else:
            tok, sstats = sample(sub, logits)
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
    """Returns nothing; what generate returns (host numpy arrays).

    ``tokens`` [B, S]: prompt then generated tokens, contiguous per row, ``pad_id`` after
    ``lengths[b]``. ``stats``: forward_calls, tokens_per_call, accepted histogram, masked rows.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    stats: dict

    def completions(self) -> list[np.ndarray]:
        """Returns each row's generated tokens (without the prompt)."""
        return [self.tokens[b, p:n] for b, (p, n) in enumerate(zip(self.prompt_lengths, self.lengths))]


def _prepare_prompt(prompt, prompt_lengths, cfg: ModelConfig, pad_id: int):
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


def _prefill(params, cfg, tokens, lengths, capacity):
    B, P = tokens.shape
    cache = KVCache.init(cfg, B, capacity)
    out = forward(params, cfg, Inputs(tokens=tokens), cache=cache, compute_logits=False)
    return out.cache.set_lengths(lengths - 1)


def _loop(params, state, *, cfg, strategy, transform, max_steps, eos_id):
    TRACE_COUNTS["decode_loop"] += 1

    def cond(s):
        return (s.step < max_steps) & ~jnp.all(s.done)

    def body(s):
        s = strategy.step(params, cfg, transform, s, eos_id=eos_id)
        return s.replace(step=s.step + 1)

    return jax.lax.while_loop(cond, body, state)


def _one_step(params, state, *, cfg, strategy, transform, eos_id):
    TRACE_COUNTS["decode_step"] += 1
    s = strategy.step(params, cfg, transform, state, eos_id=eos_id)
    return s.replace(step=s.step + 1)


_prefill_jit = jax.jit(_prefill, static_argnames=("cfg", "capacity"))
_loop_jit = jax.jit(_loop, static_argnames=("cfg", "strategy", "transform", "max_steps", "eos_id"), donate_argnames=("state",))
_step_jit = jax.jit(_one_step, static_argnames=("cfg", "strategy", "transform", "eos_id"), donate_argnames=("state",))


def _ends_greedy(t) -> bool:
    if isinstance(t, Greedy):
        return True
    if isinstance(t, Chain) and t.transforms:
        return _ends_greedy(t.transforms[-1])
    if isinstance(t, NamedChain) and t.named:
        return _ends_greedy(t.named[-1][1])
    return False


def _setup(model, prompt, *, key, max_new_tokens, prompt_lengths, logits, strategy, eos_id, pad_id, fuse=False):
    if not isinstance(model, Model):
        raise ValueError(f"generate expects a tokjax Model (params + cfg), got {type(model).__name__}")
    cfg = model.cfg
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    transform = Identity() if logits is None else logits
    if not isinstance(transform, LogitTransform):
        raise ValueError(f"logits must be a LogitTransform (e.g. tokjax.logits.temperature(0.7)), got {type(logits).__name__}")
    strategy = Sampling() if strategy is None else strategy
    for attr in ("slack", "max_accept", "step"):
        if not hasattr(strategy, attr):
            raise ValueError(f"strategy {type(strategy).__name__} lacks {attr!r}; see tokjax.decoding.Strategy")
    if hasattr(strategy, "validate"):
        strategy.validate(cfg)
    if eos_id is not None and not (0 <= int(eos_id) < cfg.vocab_size):
        raise ValueError(f"eos_id must lie in [0, {cfg.vocab_size}), got {eos_id}")
    tokens, lens = _prepare_prompt(prompt, prompt_lengths, cfg, pad_id)
    B, P = tokens.shape
    if int(lens.max()) > cfg.max_len:
        raise ValueError(f"prompt of {int(lens.max())} tokens is longer than the model's max_len={cfg.max_len}")
    if int(lens.max()) + max_new_tokens > cfg.max_len:
        raise ValueError(
            f"prompt ({int(lens.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_len={cfg.max_len}; shorten one of them"
        )
    greedy_only = _ends_greedy(transform)
    if key is None:
        if not greedy_only:
            raise ValueError("generate needs key= (a jax.random key) for sampling; pass logits=greedy() for greedy")
        key = jax.random.key(0)
    total = P + max_new_tokens
    capacity = total + strategy.slack
    buf = np.full((B, total), pad_id, np.int32)
    buf[:, :P] = tokens
    params = unstack_layers(model.params, fuse=fuse)
    cache = _prefill_jit(params, cfg, jnp.asarray(tokens), jnp.asarray(lens), capacity)
    # Separate device buffers: the state is donated, and a buffer may be donated only once.
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
    state = state.replace(extra=strategy.init(model.params, cfg, state))
    return cfg, transform, strategy, (None if eos_id is None else int(eos_id)), state, params


def _output(state: DecodeState, pad_id: int) -> GenerateOutput:
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
    return GenerateOutput(tokens=tokens, lengths=lengths, prompt_lengths=prompt_lengths, stats=stats)


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
) -> GenerateOutput:
    """Returns a GenerateOutput with each row's prompt followed by up to ``max_new_tokens`` new tokens.

    ``prompt``: a padded [B, P] id array (with ``prompt_lengths``) or a list of id lists of
    different lengths. ``logits``: a LogitTransform applied to every step's next-token logits
    (temperature, top-p, ...; changing its hyperparameters does not recompile). ``strategy``:
    how a step proposes and commits tokens (default plain sampling). Rows stop at ``eos_id``
    (included in the output) or at their token budget; the loop stops when every row is done.
    """
    # params: per-layer (and fused q/k/v, gate/up) weight buffers, read in place by prefill and
    # the decode loop (see tokjax.model.unstack_layers).
    cfg, transform, strategy, eos, state, params = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
        logits=logits, strategy=strategy, eos_id=eos_id, pad_id=pad_id, fuse=True,
    )
    state = _loop_jit(params, state, cfg=cfg, strategy=strategy, transform=transform, max_steps=max_new_tokens, eos_id=eos)
    return _output(state, pad_id)


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
) -> Iterator[list[np.ndarray]]:
    """Yields, after every decode step, the tokens each row committed in that step (a list of B arrays).

    Runs the same jitted step as :func:`generate`, one call per step from Python, so its output
    equals generate's for the same arguments and key.
    """
    cfg, transform, strategy, eos, state, params = _setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
        logits=logits, strategy=strategy, eos_id=eos_id, pad_id=pad_id, fuse=True,
    )
    for _ in range(max_new_tokens):
        if bool(jnp.all(state.done)):
            return
        before = np.asarray(state.lengths)
        state = _step_jit(params, state, cfg=cfg, strategy=strategy, transform=transform, eos_id=eos)
        after = np.asarray(state.lengths)
        toks = np.asarray(state.tokens)
        yield [toks[b, before[b]:after[b]] for b in range(toks.shape[0])]
