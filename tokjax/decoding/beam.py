"""Beam search as a Strategy, with transformers' semantics (``generate(num_beams=...)``, do_sample=False).

    out = tokjax.generate(model, prompts, key=key, max_new_tokens=20, eos_id=eos,
                          strategy=tokjax.decoding.beam(4, length_penalty=1.0, num_return_sequences=2))
    out.tokens            # [B * 2, S]: each prompt's 2 best hypotheses, best first
    out.stats["sequence_scores"]

Beams are decode rows: prompt b's K = ``num_beams`` running beams are rows b*K .. b*K + K - 1
(the driver prefills each prompt once and repeats its rows, ``rows_per_prompt``). One step, as
transformers 5's ``GenerationMixin._beam_search`` and its helpers (``_get_top_k_continuations``,
``_get_running_beams_for_next_iteration``, ``_update_finished_beams``,
``_check_early_stop_heuristic``) do it:

1. ``s[k, v] = transform(log_softmax(logits[k]))[v]``: the ``logits=`` chain plays transformers'
   logits processors, which beam search applies to the log-probabilities (no renormalisation
   after them). ``acc[k, v] = score[k] + s[k, v]``; the beam scores start at (0, -1e9, ...,
   -1e9), so the first step expands beam 0 only (all K rows hold the same prompt).
2. The ``C = max(2, 1 + n_eos) * K`` best of the K * V accumulated scores per prompt (sorted
   descending); candidate c = (parent beam ``idx // V``, token ``idx % V``).
3. A candidate *finishes* when its token is an eos id or it is the ``max_new_tokens``-th token.
   The K best non-finishing candidates are the next running beams: the cache rows, token
   buffers and logit-transform state of each new beam are copied from its parent's row.
4. Finishing candidates among the first K of C (not the spare ones) become hypotheses with score
   ``acc / L ** length_penalty``, L = generated tokens including the eos; each prompt keeps the
   K best hypotheses it has seen (a fixed-size buffer, ``BeamState.fin_*``).
5. Stopping, per prompt: no hypothesis is added (and the prompt is done) once the *early-stop
   heuristic* holds, i.e. every one of the K slots holds a hypothesis and the best running beam
   cannot beat the worst of them: ``score[0] / g ** length_penalty <= min(fin_scores)``, with g
   the tokens generated so far (``early_stopping=False`` or True) or ``max_new_tokens`` when
   ``early_stopping="never"`` and ``length_penalty > 0`` (an upper bound for a growing
   denominator: the canonical beam search, transformers' docstring). ``early_stopping=True``
   stops as soon as K hypotheses exist. A prompt also stops at ``max_new_tokens``, where every
   candidate finishes.

Transformers runs the whole batch until every prompt stops, but a stopped prompt can add no
hypothesis, so stopping each prompt on its own (its rows frozen) returns the same beams.

The output (``Strategy.output``): the ``num_return_sequences`` best hypotheses of each prompt,
best first (B * num_return_sequences rows, prompt-major), their scores as
``stats["sequence_scores"]`` (transformers' ``sequences_scores``). Sampling warpers (temperature,
top-k, top-p, min-p, greedy) are rejected: transformers skips them when do_sample=False, and
beam search ranks candidates itself. Penalties and bans (repetition_penalty, presence_penalty,
ban_tokens) act as transformers' processors do.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import tokjax.logits as L
from tokjax.decoding._state import DecodeState, Strategy, commit
from tokjax.logits import Chain, LogitTransform, NamedChain, as_rows, check_int_option, check_range, hparam
from tokjax.model import Inputs, ModelConfig, forward, take_rows

__all__ = ["Beam", "BeamState", "beam"]

# transformers' "minus infinity" for beam bookkeeping; kept as the same finite constant so float32
# sums (score - 1e9) order candidates exactly as transformers' do.
_NEG = -1.0e9
# Transforms that only shape a sampling distribution (transformers' warpers, skipped by beam search);
# later additions to tokjax.logits are looked up by name so this module need not change.
_SAMPLING_NAMES = ("Temperature", "TopK", "TopP", "MinP", "Greedy", "TypicalP", "Typical", "EpsilonCutoff",
                   "Epsilon", "EtaCutoff", "Eta")


@struct.dataclass
class BeamState:
    """Beam search's ``DecodeState.extra``, per prompt b (B prompts, K beams, S buffer slots).

    ``scores`` [B, K]: accumulated log-probs of the running beams (sorted, best first).
    ``fin_tokens`` [B, K, S], ``fin_lengths`` [B, K], ``fin_scores`` [B, K], ``fin_done`` [B, K]:
    the K best finished hypotheses (full rows: prompt + generated), their lengths, length-penalised
    scores and whether the slot holds a hypothesis (else its score is about -1e9), best first.
    ``open`` [B]: transformers' ``is_early_stop_heuristic_unsatisfied`` (hypotheses may still be
    added). ``length_penalty`` [B]: the runtime hyperparameter, one per prompt.
    """

    scores: jax.Array
    fin_tokens: jax.Array
    fin_lengths: jax.Array
    fin_scores: jax.Array
    fin_done: jax.Array
    open: jax.Array
    length_penalty: jax.Array


def _sampling_types() -> tuple[type, ...]:
    return tuple(t for t in (getattr(L, n, None) for n in _SAMPLING_NAMES) if isinstance(t, type))


def _members(transform: LogitTransform):
    if isinstance(transform, Chain):
        for t in transform.transforms:
            yield from _members(t)
    elif isinstance(transform, NamedChain):
        for _, t in transform.named:
            yield from _members(t)
    else:
        yield transform


def check_transform(transform: LogitTransform) -> None:
    """Returns None; raises ValueError when ``transform`` contains a sampling-only transform."""
    bad = [type(t).__name__ for t in _members(transform) if isinstance(t, _sampling_types())]
    if bad:
        raise ValueError(
            f"beam search does not sample, so logits= must not contain the sampling transforms {bad}: "
            "transformers skips temperature/top-k/top-p/min-p/typical/epsilon/eta when do_sample=False, and "
            "greedy() would leave one candidate per beam. Drop them; processors that change the scores "
            "(repetition_penalty, presence_penalty, ban_tokens) are allowed"
        )


def _eos_ids(eos_id) -> tuple[int, ...]:
    if eos_id is None:
        return ()
    return tuple(int(e) for e in np.atleast_1d(np.asarray(eos_id)).reshape(-1))


def _per_prompt(x: jax.Array, K: int) -> jax.Array:
    """Returns row values [B*K] of a per-row array as one value per prompt [B] (its beam 0's)."""
    return x[::K]


@dataclasses.dataclass(frozen=True)
class Beam(Strategy):
    """Beam search (see the module docstring); build it with :func:`beam`.

    Static: ``num_beams``, ``early_stopping`` (False / True / "never"), ``num_return_sequences``.
    Runtime (not part of the jit key): ``length_penalty`` (scalar or one per prompt).
    """

    samples = False  # deterministic: generate needs no key=
    num_beams: int = 1
    early_stopping: Any = False
    num_return_sequences: int = 1
    length_penalty: Any = hparam(1.0)

    def __post_init__(self):
        K = check_int_option(self.num_beams, "num_beams", lo=1)
        n = check_int_option(self.num_return_sequences, "num_return_sequences", lo=1)
        if n > K:
            raise ValueError(
                f"num_return_sequences={n} must be <= num_beams={K}: beam search keeps num_beams hypotheses per prompt"
            )
        es = self.early_stopping
        if not (es is True or es is False or (isinstance(es, str) and es == "never")):
            raise ValueError(f"early_stopping must be True, False or 'never', got {es!r}")
        check_range(self.length_penalty, "length_penalty")
        if np.ndim(self.length_penalty) > 1:
            raise ValueError(
                f"length_penalty must be a scalar or one value per prompt, got shape {np.shape(self.length_penalty)}"
            )
        # normalised so the static jit key does not depend on how the caller spelled them
        object.__setattr__(self, "num_beams", K)
        object.__setattr__(self, "num_return_sequences", n)
        object.__setattr__(self, "early_stopping", "never" if isinstance(es, str) else es)

    @property
    def rows_per_prompt(self) -> int:
        return self.num_beams

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> BeamState:
        R, S = state.tokens.shape
        K = self.num_beams
        if R % K:
            raise ValueError(f"beam search with num_beams={K} needs num_beams rows per prompt, got {R} decode rows")
        B = R // K
        if not isinstance(state.tokens, jax.core.Tracer):
            # A driver without rows_per_prompt would hand distinct prompts over as one prompt's beams.
            toks = np.asarray(state.tokens).reshape(B, K, S)
            lens = np.asarray(state.prompt_lengths).reshape(B, K)
            if not ((toks == toks[:, :1]).all() and (lens == lens[:, :1]).all()):
                raise ValueError(
                    f"beam search needs each prompt repeated num_beams={K} times as consecutive decode rows "
                    "(Strategy.rows_per_prompt); this generate did not repeat them"
                )
        if state.stop is not None:
            # a stop sequence would end single beam rows mid-search; transformers' beam search would
            # instead finish the candidate as a hypothesis
            raise ValueError("beam search does not support stop= sequences; use eos_id= (one id or several)")
        lp = as_rows(self.length_penalty, B, "length_penalty")
        return BeamState(
            scores=jnp.zeros((B, K), jnp.float32).at[:, 1:].set(_NEG),
            fin_tokens=state.tokens.reshape(B, K, S),
            fin_lengths=state.prompt_lengths.reshape(B, K),
            fin_scores=jnp.full((B, K), _NEG, jnp.float32),
            fin_done=jnp.zeros((B, K), bool),
            open=jnp.ones((B,), bool),
            length_penalty=lp,
        )

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        check_transform(transform)
        ex: BeamState = state.extra
        R, S = state.tokens.shape
        K = self.num_beams
        B = R // K
        eos = _eos_ids(eos_id)
        C = max(2, 1 + len(eos)) * K

        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache)
        logp = jax.nn.log_softmax(out.logits[:, 0].astype(jnp.float32), axis=-1)
        logp, logit_state = transform.apply(logp, state.logit_state, state.context())
        V = logp.shape[-1]
        if C > K * V:
            raise ValueError(f"beam search keeps {C} candidates per step, more than num_beams * vocab = {K * V}")
        acc = (logp.reshape(B, K, V) + ex.scores[:, :, None]).reshape(B, K * V)
        top, idx = jax.lax.top_k(acc, C)  # [B, C], sorted descending
        parent, tok = idx // V, (idx % V).astype(jnp.int32)

        prompt_len = _per_prompt(state.prompt_lengths, K)
        gen = _per_prompt(state.lengths, K) - prompt_len  # tokens generated so far (same for every beam)
        max_new = _per_prompt(state.max_lengths, K) - prompt_len
        live = ~_per_prompt(state.done, K)
        hits = (gen + 1 >= max_new)[:, None]
        for e in eos:
            hits = hits | (tok == e)

        # Running beams: the K best candidates that do not finish.
        run_scores, pick = jax.lax.top_k(top + hits.astype(jnp.float32) * _NEG, K)
        run_parent = jnp.take_along_axis(parent, pick, axis=1)
        run_tok = jnp.take_along_axis(tok, pick, axis=1)

        # Hypotheses: finishing candidates among the first K, scored with the length penalty; the
        # -1e9 terms are added one by one as transformers does, so float32 ties order the same.
        lp = ex.length_penalty
        cand = top / jnp.power((gen + 1).astype(jnp.float32), lp)[:, None]
        full = jnp.all(ex.fin_done, axis=-1) & (self.early_stopping is True)
        cand = cand + full[:, None].astype(jnp.float32) * _NEG
        cand = cand + (~ex.open)[:, None].astype(jnp.float32) * _NEG
        just = hits & (jnp.arange(C) < K)[None, :]
        cand = cand + (~just).astype(jnp.float32) * _NEG
        merged = jnp.concatenate([ex.fin_scores, cand], axis=1)  # [B, K + C]
        fin_scores, sel = jax.lax.top_k(merged, K)
        from_old = sel < K
        old_slot = jnp.minimum(sel, K - 1)
        new_c = jnp.maximum(sel - K, 0)
        b_idx = jnp.arange(B)[:, None]
        first = (jnp.arange(B) * K)[:, None]
        cand_rows = state.tokens[first + jnp.take_along_axis(parent, new_c, axis=1)]  # [B, K, S]
        end = (prompt_len + gen)[:, None]  # slot of the candidate's new token
        cand_rows = cand_rows.at[b_idx, jnp.arange(K)[None, :], jnp.broadcast_to(end, (B, K))].set(
            jnp.take_along_axis(tok, new_c, axis=1), mode="drop")
        fin_tokens = jnp.where(from_old[:, :, None], ex.fin_tokens[b_idx, old_slot], cand_rows)
        fin_lengths = jnp.where(from_old, ex.fin_lengths[b_idx, old_slot], end + 1)
        fin_done = jnp.where(from_old, ex.fin_done[b_idx, old_slot], jnp.take_along_axis(just, new_c, axis=1))

        # Early-stop heuristic after the step (transformers' _check_early_stop_heuristic).
        if self.early_stopping == "never":
            hyp_len = jnp.where(lp > 0, max_new, gen + 1)
        else:
            hyp_len = gen + 1
        best = run_scores[:, :1] / jnp.power(hyp_len.astype(jnp.float32), lp)[:, None]
        worst = jnp.where(fin_done, jnp.min(fin_scores, axis=-1, keepdims=True), _NEG)
        open_ = ex.open & jnp.any(best > worst, axis=-1)
        stop = ~open_ | (gen + 1 >= max_new)
        if self.early_stopping is True:
            stop = stop | jnp.all(fin_done, axis=-1)

        # Stopped prompts keep their state (nothing could change their hypotheses any more).
        keep = lambda new, old: jnp.where(live.reshape((B,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
        extra = ex.replace(
            scores=keep(run_scores, ex.scores), fin_tokens=keep(fin_tokens, ex.fin_tokens),
            fin_lengths=keep(fin_lengths, ex.fin_lengths), fin_scores=keep(fin_scores, ex.fin_scores),
            fin_done=keep(fin_done, ex.fin_done), open=keep(open_, ex.open),
        )
        live_rows = jnp.repeat(live, K)
        src = jnp.where(live_rows, (first + run_parent).reshape(R), jnp.arange(R))
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1)
        state = state.replace(
            tokens=state.tokens[src], cache=out.cache.select_rows(src), logit_state=take_rows(logit_state, src, R),
            stats=stats, extra=extra,
        )
        # The parent's scores each new token was chosen from: commit's NaN / +inf check reads them.
        state = commit(state, run_tok.reshape(R, 1), live_rows.astype(jnp.int32), None, logits=logp[src][:, None])
        return state.replace(done=state.done | jnp.repeat(stop, K))

    def output(self, state: DecodeState) -> tuple[jax.Array, jax.Array]:
        """Returns (tokens [B * num_return_sequences, S], lengths): each prompt's best hypotheses, best first."""
        ex: BeamState = state.extra
        n = self.num_return_sequences
        B, _, S = ex.fin_tokens.shape
        return ex.fin_tokens[:, :n].reshape(B * n, S), ex.fin_lengths[:, :n].reshape(B * n)

    def persistent_state(self, extra: BeamState) -> None:
        return None  # the hypotheses belong to these prompts

    def resume(self, extra: BeamState, saved) -> BeamState:
        raise ValueError("beam search keeps no state across requests; pass strategy_state=None")

    def finalize(self, state: DecodeState) -> dict:
        """Returns ``sequence_scores`` [B * num_return_sequences] (numpy float32): transformers' sequences_scores,
        sum of log-probs / generated_length ** length_penalty, aligned with the output rows."""
        ex: BeamState = state.extra
        return {"sequence_scores": np.asarray(ex.fin_scores[:, : self.num_return_sequences]).reshape(-1)}


def beam(num_beams: int, length_penalty=1.0, early_stopping: bool | str = False,
         num_return_sequences: int = 1) -> Beam:
    """Returns the beam search strategy (transformers' semantics; see :mod:`tokjax.decoding.beam`).

    ``num_beams``: beams per prompt (>= 1). ``length_penalty``: exponent of the generated length
    dividing a finished hypothesis' summed log-probs (> 0 favours longer ones, < 0 shorter ones;
    scalar or one per prompt, a runtime value). ``early_stopping``: True stops a prompt once it has
    num_beams hypotheses; False (transformers' default) stops once its best running beam, scored at
    the current length, cannot beat the worst kept hypothesis; "never" bounds that beam at
    max_new_tokens when length_penalty > 0 (the canonical beam search). ``num_return_sequences``:
    hypotheses returned per prompt (<= num_beams), best first; scores in ``stats["sequence_scores"]``.
    """
    return Beam(num_beams=num_beams, early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                length_penalty=length_penalty)
