"""SAP, Sequential Autoregressive Prompting (P76), and prefix-LM decoding as a Strategy of ``tokjax.generate``.

Paper: *Bidirectional Language Models Are Also Few-shot Learners* (Patel, Li, Rasooli, Constant,
Raffel, Callison-Burch; ICLR 2023; P76). No official code was found (tokjax's notes,
``papers/NOTES-decoding.md`` P76); this module follows the paper's description and is written from
scratch. The model is a span-corruption (T5 / mT5) model; in tokjax a decoder-only transformer
trained in prefix-LM form (:mod:`tokjax.losses.span_corruption`), i.e. the corrupted text is a
bidirectional prefix and the infill is written causally after it.

SAP (P76's prompting loop; ``s_0`` = ``<extra_id_0>``, the first sentinel)::

    out = []
    repeat:
        span = greedy infill of  prompt ++ out ++ [s_0]      (the model writes "s_0 w1 w2 ... s_1")
        out += span[:k]                                      keep only the first k tokens
    until a stop token (newline / end of the answer) is kept, the model closes the span at once
    (an empty infill), or len(out) reaches max_new_tokens

The stop token itself is not part of the output. One-shot infill (:func:`infill`, P76's
baseline) is a single call: the whole span up to its closing sentinel, which for a span-corruption
model is short (spans average ``mean_noise_span_length`` tokens in training), hence truncated
outputs; SAP re-prompts with the growing output so the model keeps writing.

How much of each infill is kept is not settled by the notes (tagged *unverified* there; as we
recall the paper's Figure 1 keeps only the first couple of words of each infill, but the paper's
text was not at hand to check it): ``k`` is a runtime argument here, and the P76 experiment picks
it on a validation split. Greedy decoding writes left to right, so the first ``k`` tokens of the
full infill are the tokens of an infill stopped after ``k`` tokens: each SAP call asks
``generate`` for ``k`` tokens only.

Each infill is greedy decoding through ``tokjax.generate`` with the :class:`PrefixLM` strategy:
the generate prompt is ``prompt ++ out ++ [s_0]`` (the bidirectional prefix) followed by one more
``s_0`` (the first target token, the decoder-side start: span-corruption targets begin with the
span's sentinel), generation ends at any sentinel. :class:`PrefixLM` re-encodes the prompt once
under ``Prefix(prompt_length - causal_tail)`` into its own KV cache (the driver's causal prefill
would let prefix tokens see only their left context) and then decodes one token per step against
that cache, exactly as the full prefix-LM forward would (tested). The outer loop (append, re-prompt)
is a host loop: every iteration changes the bidirectional prefix, so nothing can be reused from the
previous call (P76 re-encodes each iteration too).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, sample_and_commit
from tokjax.logits import LogitTransform, greedy
from tokjax.losses.span_corruption import check_sentinel_ids
from tokjax.model import Inputs, KVCache, ModelConfig, Taps, forward
from tokjax.model.attention import Prefix

__all__ = ["PrefixLM", "PrefixLMState", "SAPOutput", "infill", "prefix_lm", "sap", "sap_prompt"]

STOP, EMPTY, LENGTH = "stop", "empty", "length"  # why a SAP row ended


@struct.dataclass
class PrefixLMState:
    """The prefix-LM strategy's state: its own KV cache of the prompt encoded under the prefix mask."""

    cache: KVCache


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class PrefixLM(Strategy):
    """Decoding of a prefix LM: each prompt's first ``prompt_length - causal_tail`` tokens attend bidirectionally.

    The last ``causal_tail`` (>= 1, static) prompt tokens and every generated token are causal (they
    see the whole prefix and earlier tokens), which is how :mod:`tokjax.losses.span_corruption` trains
    (``causal_tail=1``: the target's leading sentinel). ``init`` encodes the prompt under
    ``Prefix(prompt_lengths - causal_tail)`` into the strategy's cache; ``step`` is plain sampling
    (one token per row, any logit transform) against that cache.
    """

    causal_tail: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        if not _is_int(self.causal_tail) or self.causal_tail < 1:
            raise ValueError(f"causal_tail must be an int >= 1 (the pending token is decoded causally), got "
                             f"{self.causal_tail!r}")
        if cfg.mixer == "mamba":
            raise ValueError("prefix-LM decoding needs attention (a bidirectional prefix); a mixer='mamba' model "
                             "is causal only")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> PrefixLMState:
        pl = np.asarray(state.prompt_lengths)
        if pl.min() <= self.causal_tail:
            raise ValueError(f"prefix-LM decoding needs prompts longer than causal_tail={self.causal_tail} (a non-"
                             f"empty bidirectional prefix), got a prompt of {int(pl.min())} token(s)")
        B, S = state.tokens.shape
        capacity = state.cache.k[0].shape[2]
        valid = jnp.arange(S)[None, :] < state.prompt_lengths[:, None]
        tokens = jnp.where(valid, state.tokens, 0)  # pad_id need not be a token id
        out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False,
                      taps=Taps(layers="all", sites=("keys", "values")),
                      mask=Prefix(state.prompt_lengths - self.causal_tail))
        empty = KVCache.init(cfg, B, capacity)

        def lay(new, buf):  # [B, S, KV, hd] -> head-major [B, KV, capacity, hd]
            return jax.lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), (0, 0, 0, 0))

        cache = empty.replace(k=tuple(lay(out.taps["keys"][i], b) for i, b in enumerate(empty.k)),
                              v=tuple(lay(out.taps["values"][i], b) for i, b in enumerate(empty.v)))
        return PrefixLMState(cache=cache.set_lengths(state.prompt_lengths - 1))

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, s: DecodeState, eos_id=None) -> DecodeState:
        pending = jnp.take_along_axis(s.tokens, (s.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=s.extra.cache)
        s = sample_and_commit(s, out.logits[:, 0], transform, eos_id)
        # The pending token was written at slot lengths_before - 1; the cache holds lengths - 1 slots.
        return s.replace(extra=PrefixLMState(cache=out.cache.set_lengths(s.lengths - 1)))


def prefix_lm(*, causal_tail: int = 1) -> PrefixLM:
    """Returns the prefix-LM strategy: ``tokjax.generate(model, prompts, strategy=prefix_lm(), ...)``.

    Raises ValueError for ``causal_tail`` that is not an int >= 1.
    """
    if not _is_int(causal_tail) or causal_tail < 1:
        raise ValueError(f"causal_tail must be an int >= 1 (the pending token is decoded causally), got "
                         f"{causal_tail!r}")
    return PrefixLM(causal_tail=int(causal_tail))


# --------------------------------------------------------------------------------------- SAP
@dataclasses.dataclass(frozen=True)
class SAPOutput:
    """What :func:`sap` returns: each row's output tokens (without the stop token) and how it ended.

    ``outputs``: list of int32 arrays; ``iterations`` int [B]: infill calls per row; ``ended``: per
    row ``"stop"`` (a stop token was kept), ``"empty"`` (the model closed the span at once) or
    ``"length"`` (``max_new_tokens`` reached); ``calls``: generate calls (batched over live rows).
    """

    outputs: list
    iterations: np.ndarray
    ended: list
    calls: int


def _check_model(model) -> ModelConfig:
    if not (hasattr(model, "params") and isinstance(getattr(model, "cfg", None), ModelConfig)):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    return model.cfg


def _check_prompts(prompts, V: int) -> list[np.ndarray]:
    if isinstance(prompts, (np.ndarray, jax.Array)) and np.ndim(prompts) == 2:
        raise ValueError("prompts must be a list of token-id lists (one per row, unpadded), got a 2-D array; "
                         "pass [row[:n] for row, n in zip(array, lengths)]")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}")
    rows = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1 or a.size == 0 or (a.dtype.kind not in "iu"):
            raise ValueError(f"prompts[{i}] must be a non-empty 1-D list of int token ids, got {a.dtype} "
                             f"shape {a.shape}")
        if a.min() < 0 or a.max() >= V:
            raise ValueError(f"prompts[{i}] has token ids outside [0, vocab_size={V}): range [{a.min()}, {a.max()}]")
        rows.append(a.astype(np.int32))
    return rows


def _check_sentinels(sentinel_ids, V: int, prompts: list[np.ndarray]) -> np.ndarray:
    sent = check_sentinel_ids(sentinel_ids, V, at_least=2)
    for i, p in enumerate(prompts):
        if np.any(p == sent[0]):
            raise ValueError(f"prompts[{i}] contains the infill sentinel {int(sent[0])} (sentinel_ids[0]); SAP "
                             "appends it after the prompt, so the prompt must not hold it")
    return sent


def sap_prompt(prompt: Sequence[int], output: Sequence[int], sentinel: int) -> list[int]:
    """Returns the generate prompt of one SAP infill: ``prompt ++ output ++ [s_0]`` (bidirectional) ``++ [s_0]``.

    The trailing ``s_0`` is the infill's first token (span-corruption targets begin with the span's
    sentinel), decoded causally (:class:`PrefixLM` with ``causal_tail=1``).
    """
    return [int(t) for t in prompt] + [int(t) for t in output] + [int(sentinel), int(sentinel)]


def _infill_calls(model, rows: list[list[int]], sent: np.ndarray, budget: int, pad_id: int) -> list[np.ndarray]:
    """Returns each row's greedy infill (without the closing sentinel), up to ``budget`` tokens: one generate call."""
    from tokjax.decoding.driver import generate

    out = generate(model, rows, max_new_tokens=budget, logits=greedy(), strategy=PrefixLM(causal_tail=1),
                   eos_id=tuple(int(s) for s in sent), pad_id=pad_id)
    spans = []
    for c in out.completions():
        c = np.asarray(c, np.int32)
        hit = np.flatnonzero(np.isin(c, sent))
        spans.append(c[:hit[0]] if hit.size else c)
    return spans


def _check_budget(cfg: ModelConfig, prompts: list[np.ndarray], extra: int, what: str) -> None:
    need = max(len(p) for p in prompts) + extra
    if need > cfg.max_len:
        raise ValueError(f"{what}: the longest prompt ({max(len(p) for p in prompts)} tokens) + 2 sentinels + "
                         f"max_new_tokens needs {need} positions, more than the model's max_len={cfg.max_len}")


def infill(model, prompts, *, sentinel_ids: Sequence[int], max_new_tokens: int, pad_id: int = 0) -> list[np.ndarray]:
    """Returns each prompt's one-shot greedy infill: the span after ``prompt ++ [s_0]`` up to its closing sentinel.

    P76's baseline (one infill, no re-prompting). ``sentinel_ids``: the sentinel ids, ``s_0`` first
    (at least 2; any of them closes the span). ``max_new_tokens`` (>= 1) bounds the span.

    Raises ValueError: no/invalid sentinels, the sentinel inside a prompt, bad prompts or budget.
    """
    cfg = _check_model(model)
    rows = _check_prompts(prompts, cfg.vocab_size)
    sent = _check_sentinels(sentinel_ids, cfg.vocab_size, rows)
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    _check_budget(cfg, rows, int(max_new_tokens) + 2, "infill")
    return _infill_calls(model, [sap_prompt(p, [], sent[0]) for p in rows], sent, int(max_new_tokens), pad_id)


def sap(model, prompts, *, sentinel_ids: Sequence[int], k: int = 2, max_new_tokens: int,
        stop_ids: Sequence[int] = (), pad_id: int = 0) -> SAPOutput:
    """Returns a :class:`SAPOutput`: P76's Sequential Autoregressive Prompting of a span-corruption prefix LM.

    Per row (module docstring): infill ``prompt ++ out ++ [s_0]`` greedily, append the first ``k``
    tokens of the span to ``out``, repeat until a ``stop_ids`` token is kept (the output ends before
    it), the infill is empty, or ``out`` has ``max_new_tokens`` tokens. Live rows share one batched
    ``tokjax.generate`` call per iteration (padded to a power of two rows to reuse compiled loops).

    ``sentinel_ids``: ``s_0`` first, at least 2 ids (any sentinel closes a span); ``k`` >= 1 tokens
    kept per infill (P76: a short prefix of each infill; unverified, pick it on validation data);
    ``stop_ids``: tokens that end an answer (newline, a pair separator), not sentinels.

    Raises ValueError: missing or invalid sentinel ids, the infill sentinel inside a prompt, ``k`` < 1,
    ``max_new_tokens`` < 1, stop ids that are sentinels or out of range, prompts too long for the model.
    """
    cfg = _check_model(model)
    V = cfg.vocab_size
    rows = _check_prompts(prompts, V)
    sent = _check_sentinels(sentinel_ids, V, rows)
    if not _is_int(k) or k < 1:
        raise ValueError(f"k (tokens kept from each infill) must be an int >= 1, got {k!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    stops = np.asarray(list(stop_ids), np.int64).reshape(-1)
    if stops.size and (stops.min() < 0 or stops.max() >= V):
        raise ValueError(f"stop_ids must be token ids in [0, vocab_size={V}), got {stops.tolist()}")
    if np.isin(stops, sent).any():
        raise ValueError(f"stop_ids {stops.tolist()} include a sentinel id ({sent.tolist()}): sentinels close an "
                         "infill, they cannot end the answer")
    k, budget = int(k), int(max_new_tokens)
    _check_budget(cfg, rows, budget + 2, "sap")
    outs: list[list[int]] = [[] for _ in rows]
    iters = np.zeros(len(rows), np.int64)
    ended = [""] * len(rows)
    live = list(range(len(rows)))
    calls = 0
    while live:
        batch = [sap_prompt(rows[i], outs[i], sent[0]) for i in live]
        # Pad the live rows to a power of two (copies of a live row, discarded) so that shrinking batches
        # reuse a few compiled decode loops instead of compiling one per batch size.
        batch += [batch[0]] * ((1 << (len(batch) - 1).bit_length()) - len(batch))
        spans = _infill_calls(model, batch, sent, k, pad_id)[:len(live)]
        calls += 1
        still = []
        for i, span in zip(live, spans):
            iters[i] += 1
            kept = span[:min(k, budget - len(outs[i]))].tolist()
            hit = [j for j, t in enumerate(kept) if t in set(stops.tolist())]
            if hit:
                outs[i] += kept[:hit[0]]
                ended[i] = STOP
            elif not kept:
                ended[i] = EMPTY
            else:
                outs[i] += kept
                if len(outs[i]) >= budget:
                    ended[i] = LENGTH
                else:
                    still.append(i)
        live = still
    return SAPOutput(outputs=[np.asarray(o, np.int32) for o in outs], iterations=iters, ended=ended, calls=calls)
