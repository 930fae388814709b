"""Cautious Next Token Prediction (CNTP, P6; Wang et al., Findings ACL 2025) as a decode strategy.

At every step the processed next-token distribution ``p`` (after the logit transform) has
entropy ``H = -sum p log p`` (nats). The row samples

    N = floor(1 + (N_max - 1) * clip((H - H_lo) / (H_hi - H_lo), 0, 1))

trials from the current position. Each trial's first token is drawn from ``p`` itself (the
step's distribution is reused, as the official code effectively does), then the trial keeps
sampling until it emits a stop token (punctuation ids, runtime set) or reaches the static
``max_trial_len``. The trial with the lowest perplexity ``exp(-mean log p(y_i))`` is
committed together with its KV cache. ``N == 1`` is plain sampling with the same PRNG stream
as :class:`tokjax.decoding.Sampling`.

    strat = cautious(stop_ids=[tok.encode(",")[0], tok.encode(".")[0]], h_lo=0.01, h_hi=1.5)
    out = tokjax.generate(model, prompts, key=key, max_new_tokens=64, strategy=strat)

Batched and jitted: a step forks the KV cache of the batch into ``B * N_max`` trial rows and
runs the trials as one masked batch in a ``lax.while_loop`` (skipped by ``lax.cond`` when no
row has ``N > 1``); rows never wait on each other's decisions, only share the loop length.
``h_lo``, ``h_hi`` and ``stop_ids`` are runtime values (changing them does not recompile);
``max_trials`` (``N_max``) and ``max_trial_len`` are static shapes.

Matched compute. CNTP feeds the model several times the tokens of plain sampling (every trial
token counts, ``stats["forward_tokens"]``). :func:`best_of_n` is the sequence-level baseline at
equal cost: ``n`` whole samples per prompt from ``generate(n=n, logprobs=0)``, the one with the
lowest perplexity kept (the same ranking as CNTP's trials, over the whole sequence).

Differences from the official code (github.com/wyzjack/CNTP, ``_sample_reflect_perplexity``,
batch 1): its trials have no length cap (only punctuation / the stopping criteria end them) and
re-run the step's forward for their first token (same distribution as reusing ``p``); here a
trial also ends at ``max_trial_len`` or the row's token budget, and eos is a stop token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, commit, ends_greedy, eos_tuple
from tokjax.decoding.driver import GenerateOutput, generate
from tokjax.logits import LogitContext, LogitTransform, entropy, hparam, masked_log_softmax, sample
from tokjax.model import Inputs, KVCache, ModelConfig, forward, repeat_rows, take_rows, where_rows

__all__ = ["BestOfN", "Cautious", "CautiousState", "TrialResult", "best_of_n", "cautious", "cautious_generate",
           "num_trials", "run_trials", "sequence_nll"]


@struct.dataclass
class CautiousState:
    """CNTP's decode state (``DecodeState.extra``): runtime hyperparameters and per-row counters.

    ``h_lo``, ``h_hi`` [B] entropy thresholds (nats); ``stop_mask`` [V] bool, the stop-token set.
    Counters per row: ``trial_tokens`` (tokens fed to the model inside trials, live trials
    only), ``cautious_steps`` (steps with N > 1), ``trials`` (sum of N over those steps).
    """

    h_lo: jax.Array
    h_hi: jax.Array
    stop_mask: jax.Array
    trial_tokens: jax.Array
    cautious_steps: jax.Array
    trials: jax.Array


@struct.dataclass
class TrialResult:
    """The trials of one CNTP step and their min-perplexity winner (what :func:`run_trials` returns).

    ``tokens`` [B, N_max, T], ``lengths`` [B, N_max] (0 for trials beyond N), ``logp_sum``
    [B, N_max] sum of processed log-probs of each trial's tokens, ``winner`` [B] the
    min-perplexity trial, ``cache`` / ``logit_state`` of the winning trial rows (B rows),
    ``fed`` [B] tokens fed to the model inside live trials, ``calls`` scalar forward calls.
    ``logits`` [B, T, V] (only with ``run_trials(keep_logits=True)``): the processed logits the
    winning trial's token t was drawn from (t = 0: the step's logits).
    """

    tokens: jax.Array
    lengths: jax.Array
    logp_sum: jax.Array
    winner: jax.Array
    cache: KVCache
    logit_state: Any
    fed: jax.Array
    calls: jax.Array
    logits: jax.Array | None = None


def num_trials(entropy: jax.Array, h_lo: jax.Array, h_hi: jax.Array, max_trials: int) -> jax.Array:
    """Returns N [B] int32 = floor(1 + (max_trials - 1) * clip((H - h_lo) / (h_hi - h_lo), 0, 1)) (CNTP eq.)."""
    frac = jnp.clip((entropy - h_lo) / (h_hi - h_lo), 0.0, 1.0)  # h_hi = inf -> 0 -> N = 1
    return jnp.floor(1.0 + (max_trials - 1) * frac).astype(jnp.int32)


def _draw(key, logits, greedy: bool):
    tok, st = sample(key, logits, greedy=greedy)  # greedy: argmax, no Gumbel noise (as Sampling)
    return tok, st.all_masked


def run_trials(
    params,
    cfg: ModelConfig,
    transform: LogitTransform,
    *,
    cache: KVCache,
    tokens: jax.Array,
    lengths: jax.Array,
    step_logits: jax.Array,
    logit_state: Any,
    first_token: jax.Array,
    n: jax.Array,
    limit: jax.Array,
    stop_mask: jax.Array,
    key: jax.Array,
    step: jax.Array,
    max_trials: int,
    max_trial_len: int,
    greedy: bool = False,
    keep_logits: bool = False,
) -> TrialResult:
    """Returns the CNTP trials of one step and the min-perplexity winner per row.

    ``cache`` holds each row's prefix through its pending token (as after the step's forward);
    ``tokens`` [B, S] / ``lengths`` [B] the sequence buffer (the trial starts at ``lengths``);
    ``step_logits`` [B, V] the step's processed logits; trial 0 of row b starts with
    ``first_token[b]`` (the step's own sample), trials 1.. draw their first token from the same
    logits. Row b runs ``n[b]`` trials of at most ``limit[b]`` (<= max_trial_len) tokens, each
    ending at its first token in ``stop_mask``. Perplexity ties go to the lowest trial index.
    ``keep_logits``: also return the winner's per-token logits (``TrialResult.logits``; for
    ``generate(logprobs=)``, which costs a [B * max_trials, max_trial_len, V] buffer).
    """
    B, V = step_logits.shape
    R, T = max_trials, max_trial_len
    S = tokens.shape[1]
    flat = B * R
    k_first, k_loop = jax.random.split(jax.random.fold_in(key, 1))
    step_logp = masked_log_softmax(step_logits)
    rep_logits = jnp.repeat(step_logits, R, axis=0)
    others, masked0 = _draw(k_first, rep_logits, greedy)
    trial_idx = jnp.tile(jnp.arange(R), B)
    first = jnp.where(trial_idx == 0, jnp.repeat(first_token, R), others).reshape(B, R)
    lp0 = jnp.take_along_axis(step_logp, first, axis=1)
    in_use = jnp.arange(R)[None, :] < n[:, None]
    stop = lambda t: stop_mask[t]  # noqa: E731
    active = in_use & ~stop(first) & (limit[:, None] > 1) & ~masked0.reshape(B, R)
    trial_toks = jnp.zeros((B, R, T), jnp.int32).at[:, :, 0].set(first)
    trial_lens = jnp.where(in_use, 1, 0).astype(jnp.int32)
    logp_sum = jnp.where(in_use, lp0, 0.0)
    rows = jnp.arange(flat)
    base_len = jnp.repeat(lengths, R)
    buf = jnp.repeat(tokens, R, axis=0).at[rows, base_len].set(first.reshape(-1), mode="drop")
    carry = dict(
        t=jnp.ones((), jnp.int32), toks=trial_toks, lens=trial_lens, active=active, logp=logp_sum,
        cache=cache.fork(R), lstate=repeat_rows(logit_state, B, R), buf=buf,
        fed=jnp.zeros((B,), jnp.int32), calls=jnp.zeros((), jnp.int32),
    )
    if keep_logits:
        carry["logits"] = jnp.zeros((flat, T, V), jnp.float32).at[:, 0].set(rep_logits)
    lim = jnp.repeat(limit, R).reshape(B, R)

    def cond(c):
        return (c["t"] < T) & jnp.any(c["active"])

    def body(c):
        t = c["t"]
        feed = c["toks"][:, :, t - 1].reshape(flat, 1)
        out = forward(params, cfg, Inputs(tokens=feed), cache=c["cache"])
        act = c["active"].reshape(-1)
        ctx = LogitContext(tokens=c["buf"], lengths=base_len + c["lens"].reshape(-1), step=step)
        logits, lstate = transform.apply(out.logits[:, 0], c["lstate"], ctx)
        lstate = where_rows(act, lstate, c["lstate"])
        y, masked = _draw(jax.random.fold_in(k_loop, t), logits, greedy)
        lp = jnp.take_along_axis(masked_log_softmax(logits), y[:, None], axis=1)[:, 0]
        grow = act & ~masked
        y2, lp2, grow2 = y.reshape(B, R), lp.reshape(B, R), grow.reshape(B, R)
        toks = c["toks"].at[:, :, t].set(jnp.where(grow2, y2, 0))
        lens = c["lens"] + grow2.astype(jnp.int32)
        logp = c["logp"] + jnp.where(grow2, lp2, 0.0)
        slot = jnp.where(grow, base_len + t, S)
        buf = c["buf"].at[rows, slot].set(y, mode="drop")
        active = grow2 & ~stop(y2) & (lens < lim)
        new = dict(t=t + 1, toks=toks, lens=lens, active=active, logp=logp, cache=out.cache, lstate=lstate,
                   buf=buf, fed=c["fed"] + c["active"].sum(-1).astype(jnp.int32), calls=c["calls"] + 1)
        if keep_logits:
            new["logits"] = c["logits"].at[:, t].set(logits)
        return new

    # Inner loop inherent to CNTP: each trial runs to its next stop token (a data-dependent
    # length) inside one step of the shared driver; the driver's loop is not duplicated.
    c = jax.lax.while_loop(cond, body, carry)
    mean_nll = -c["logp"] / jnp.maximum(c["lens"], 1)
    winner = jnp.argmin(jnp.where(in_use, mean_nll, jnp.inf), axis=1).astype(jnp.int32)
    pick = jnp.arange(B) * R + winner
    return TrialResult(
        tokens=c["toks"], lengths=c["lens"], logp_sum=c["logp"], winner=winner,
        cache=c["cache"].select_rows(pick), logit_state=take_rows(c["lstate"], pick, flat),
        fed=c["fed"], calls=c["calls"], logits=c["logits"][pick] if keep_logits else None,
    )


@dataclasses.dataclass(frozen=True)
class Cautious(Strategy):
    """The CNTP strategy: forks up to N_max trials to the next stop token and commits the min-perplexity one.

    Static: ``max_trials`` (N_max) and ``max_trial_len``. Runtime (excluded from the jit key):
    ``h_lo``, ``h_hi`` (scalar or per-row, nats; ``h_hi`` may be inf = never cautious) and
    ``stop_ids`` (the stop-token set; eos also ends a trial).
    """

    max_trials: int = 10
    max_trial_len: int = 16
    h_lo: Any = hparam(0.01)
    h_hi: Any = hparam(1.5)
    stop_ids: tuple = hparam(())

    @property
    def slack(self) -> int:  # trial rows run up to max_trial_len tokens past a row's length
        return self.max_trial_len

    @property
    def max_accept(self) -> int:
        return self.max_trial_len

    def validate(self, cfg: ModelConfig) -> None:
        _check_thresholds(self.h_lo, self.h_hi)
        ids = np.asarray(self.stop_ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            raise ValueError(f"stop_ids must lie in [0, {cfg.vocab_size}), got {ids.tolist()}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> CautiousState:
        B = state.tokens.shape[0]
        h_lo = _rows(self.h_lo, B, "h_lo")
        h_hi = _rows(self.h_hi, B, "h_hi")
        ids = jnp.asarray(np.asarray(self.stop_ids, np.int64).reshape(-1), jnp.int32)
        zeros = jnp.zeros((B,), jnp.int32)
        return CautiousState(
            h_lo=h_lo, h_hi=h_hi, stop_mask=jnp.zeros((cfg.vocab_size,), bool).at[ids].set(True),
            trial_tokens=zeros, cautious_steps=jnp.copy(zeros), trials=jnp.copy(zeros),
        )

    def state_axes(self, extra: CautiousState) -> CautiousState:
        row = ("batch",)
        return CautiousState(h_lo=row, h_hi=row, stop_mask=None, trial_tokens=row, cautious_steps=row, trials=row)

    def finalize(self, state: DecodeState) -> dict:
        """Returns per-row ``trial_tokens``, ``cautious_steps``, ``trials`` and the total ``forward_tokens``
        (tokens fed to the model after the prefill: one per live row-step plus every live trial token)."""
        ex: CautiousState = state.extra
        trial_tokens = np.asarray(ex.trial_tokens)
        steps = int(np.asarray(state.stats.accepted).sum())  # committed row-steps over live rows
        return {
            "trial_tokens": trial_tokens.tolist(),
            "cautious_steps": np.asarray(ex.cautious_steps).tolist(),
            "trials": np.asarray(ex.trials).tolist(),
            "forward_tokens": int(steps + trial_tokens.sum()),
        }

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None):
        ex: CautiousState = state.extra
        B = state.tokens.shape[0]
        R, T = self.max_trials, self.max_trial_len
        # The trial loop inside a step (run_trials) is inherent to CNTP: one committed chunk needs
        # N sampled continuations of up to max_trial_len tokens, whose count depends on the data.
        greedy = ends_greedy(transform)
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache)
        logits, logit_state = transform.apply(out.logits[:, 0], state.logit_state, state.context())
        key, sub = jax.random.split(state.key)  # the same stream as Sampling: N == 1 rows match it
        tok, all_masked = _draw(sub, logits, greedy)
        live = ~state.done & ~all_masked
        n = jnp.where(live, num_trials(entropy(masked_log_softmax(logits)), ex.h_lo, ex.h_hi, R), 1)
        room = state.max_lengths - state.lengths
        limit = jnp.where(n > 1, jnp.clip(room, 1, T), 1)
        stop_mask = ex.stop_mask if not eos_id else ex.stop_mask.at[jnp.asarray(eos_tuple(eos_id))].set(True)
        keep = state.logprobs is not None  # generate(logprobs=): commit needs every trial token's logits

        def plain(_):
            toks = jnp.zeros((B, T), jnp.int32).at[:, 0].set(tok)
            lg = jnp.zeros((B, T) + logits.shape[1:], jnp.float32).at[:, 0].set(logits) if keep else None
            return toks, jnp.ones((B,), jnp.int32), out.cache, logit_state, jnp.zeros((B,), jnp.int32), jnp.int32(0), lg

        def cautious_branch(_):
            tr = run_trials(
                params, cfg, transform, cache=out.cache, tokens=state.tokens, lengths=state.lengths,
                step_logits=logits, logit_state=logit_state, first_token=tok, n=n, limit=limit,
                stop_mask=stop_mask, key=sub, step=state.step, max_trials=R, max_trial_len=T, greedy=greedy,
                keep_logits=keep,
            )
            rows = jnp.arange(B)
            toks = tr.tokens[rows, tr.winner]
            counts = tr.lengths[rows, tr.winner]
            return toks, counts, tr.cache, tr.logit_state, tr.fed, tr.calls, tr.logits

        if R == 1:
            new, counts, cache, logit_state, fed, calls, new_logits = plain(None)
        else:
            new, counts, cache, logit_state, fed, calls, new_logits = jax.lax.cond(
                jnp.any(n > 1), cautious_branch, plain, None)
        if new_logits is None:  # no log-probabilities asked: the step's logits suffice for commit's NaN check
            new_logits = jnp.broadcast_to(logits[:, None], (B, T) + logits.shape[1:])
        counts = jnp.where(all_masked, 0, counts)
        stats = state.stats.replace(
            forward_calls=state.stats.forward_calls + 1 + calls,
            masked_rows=state.stats.masked_rows | (all_masked & ~state.done),
        )
        ex = ex.replace(
            trial_tokens=ex.trial_tokens + fed,
            cautious_steps=ex.cautious_steps + (n > 1).astype(jnp.int32),
            trials=ex.trials + jnp.where(n > 1, n, 0),
        )
        state = state.replace(cache=cache, logit_state=logit_state, key=key, stats=stats, extra=ex)
        state = commit(state, new, counts, eos_id, logits=new_logits)
        return state.replace(done=state.done | all_masked)


def _check_thresholds(h_lo, h_hi) -> None:
    lo = np.asarray(h_lo, np.float64)
    hi = np.asarray(h_hi, np.float64)
    if not np.all(np.isfinite(lo)) or np.any(lo < 0):
        raise ValueError(f"h_lo must be finite and >= 0 (nats), got {h_lo!r}")
    try:
        lo_b, hi_b = np.broadcast_arrays(lo, hi)
    except ValueError:
        raise ValueError(f"h_lo and h_hi must be scalars or per-row arrays of one shape, got {h_lo!r}, {h_hi!r}") from None
    if np.any(np.isnan(hi_b)) or np.any(hi_b <= lo_b):
        raise ValueError(f"h_hi must be > h_lo (inf switches CNTP off), got h_lo={h_lo!r}, h_hi={h_hi!r}")


def _rows(value, batch: int, name: str) -> jax.Array:
    arr = np.asarray(value, np.float64)
    if arr.ndim == 0:
        arr = np.full((batch,), float(arr))
    if arr.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape [batch={batch}], got shape {arr.shape}")
    return jnp.asarray(arr, jnp.float32)


def cautious(
    *, stop_ids: Sequence[int], h_lo=0.01, h_hi=1.5, max_trials: int = 10, max_trial_len: int = 16
) -> Cautious:
    """Returns a :class:`Cautious` strategy after checking its arguments (official defaults: 10, 0.01, 1.5).

    ``stop_ids``: token ids that end a trial (the paper uses punctuation ``. , \\n ? ! : ; ) ] }``).
    ``h_lo`` < ``h_hi`` (nats; ``h_hi`` may be ``inf`` to switch CNTP off, scalar or per-row).
    """
    for name, v in (("max_trials", max_trials), ("max_trial_len", max_trial_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    ids = np.asarray(stop_ids)
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"stop_ids must be integer token ids, got dtype {ids.dtype}")
    _check_thresholds(h_lo, h_hi)
    ids_t = tuple(int(i) for i in ids.reshape(-1))
    return Cautious(int(max_trials), int(max_trial_len), h_lo, h_hi, ids_t)


def cautious_generate(model, prompt, *, key=None, max_new_tokens: int, stop_ids: Sequence[int], h_lo=0.01,
                      h_hi=1.5, max_trials: int = 10, max_trial_len: int = 16, logits=None, eos_id=None,
                      prompt_lengths=None, pad_id: int = 0) -> GenerateOutput:
    """Returns ``tokjax.generate(model, prompt, strategy=cautious(...))``: a GenerateOutput of CNTP decoding
    whose ``stats`` add per-row ``trial_tokens``, ``cautious_steps``, ``trials`` and ``forward_tokens``
    (tokens fed to the model after the prefill; plain sampling feeds one per generated token).
    """
    strategy = cautious(stop_ids=stop_ids, h_lo=h_lo, h_hi=h_hi, max_trials=max_trials, max_trial_len=max_trial_len)
    return generate(model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
                    logits=logits, strategy=strategy, eos_id=eos_id, pad_id=pad_id)


# ------------------------------------------------------------------------------ matched-compute baseline
@dataclasses.dataclass(frozen=True)
class BestOfN:
    """Best-of-N by sequence perplexity (CNTP's matched-compute baseline): ``n`` whole samples per prompt.

    ``samples``: the GenerateOutput of ``generate(n=n, logprobs=0)`` (B * n rows, prompt-major);
    ``nll`` [B * n]: each sample's mean negative log-prob per generated token (log perplexity);
    ``winner`` [B]: the row of ``samples`` with the lowest ``nll`` per prompt (ties: lowest index);
    ``forward_tokens``: tokens fed to the model after the prefill, one per generated token
    (the prompt is prefilled once per prompt and its cache forked, so samples add no prefill).
    """

    samples: GenerateOutput
    nll: np.ndarray
    winner: np.ndarray
    forward_tokens: int

    @property
    def n(self) -> int:
        return self.samples.tokens.shape[0] // self.winner.shape[0]

    def best_rows(self) -> list[np.ndarray]:
        """Returns the winning completion (generated tokens only) of each prompt."""
        comps = self.samples.completions()
        return [comps[int(i)] for i in self.winner]


def sequence_nll(logprobs, prompt_lengths, lengths) -> np.ndarray:
    """Returns [B]: -(1/n_b) sum_t log p(y_t) over each row's generated slots prompt_lengths <= t < lengths,
    the log of the sequence perplexity CNTP ranks its trials by (P6), here over whole samples (inf where a
    row generated nothing)."""
    lp = np.asarray(logprobs, np.float64)
    p, n = np.asarray(prompt_lengths), np.asarray(lengths)
    if lp.ndim != 2 or p.shape != (lp.shape[0],) or n.shape != p.shape:
        raise ValueError(f"need logprobs [B, S] and prompt_lengths, lengths [B]; got {lp.shape}, {p.shape}, {n.shape}")
    slots = np.arange(lp.shape[1])[None, :]
    valid = (slots >= p[:, None]) & (slots < n[:, None])
    count = valid.sum(1)
    total = np.where(valid, lp, 0.0).sum(1)
    return np.where(count > 0, -total / np.maximum(count, 1), np.inf)


def best_of_n(model, prompt, *, n: int, key, max_new_tokens: int, logits=None, eos_id=None, prompt_lengths=None,
              pad_id: int = 0) -> BestOfN:
    """Returns BestOfN: ``n`` samples per prompt from ``tokjax.generate(n=n, logprobs=0)``, the lowest-perplexity
    one kept per prompt (P6's selection rule, exp(-mean log p(y_i)), applied to whole sequences).

    The log-probs are those generate records under the transformed distribution each token was drawn
    from (the quantity CNTP ranks its trials by); at temperature 1 with no truncation they equal the
    model's teacher-forced ``token_stats`` log-probs. This is the sequence-level, matched-compute
    counterpart of CNTP: choose ``n`` so that ``forward_tokens`` matches CNTP's ``stats["forward_tokens"]``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    out = generate(model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
                   logits=logits, eos_id=eos_id, pad_id=pad_id, n=int(n), logprobs=0)
    nll = sequence_nll(out.logprobs, out.prompt_lengths, out.lengths)
    B = out.tokens.shape[0] // n
    winner = np.argmin(nll.reshape(B, n), axis=1) + np.arange(B) * n  # argmin: ties go to the lowest index
    return BestOfN(samples=out, nll=nll, winner=winner.astype(np.int64),
                   forward_tokens=int(out.stats["generated_tokens"]))
