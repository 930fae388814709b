"""Insertion decoding (P14 Insertion Language Models) as a Strategy of ``tokjax.generate``.

Paper: *Insertion Language Models: Sequence Generation with Arbitrary-Position Insertions* (P14).
Official code read: ``dhruvdcoder/xlm-core`` @ 51c7813, ``xlm-models/ilm/predictor_ilm.py``
(``ILMPredictorWithLengthClassification._predict_single_step`` / ``_compute_stopping_mask`` /
``decode``) and ``nn.py`` (``sample_over_last_two_dims``); the model and loss are in
:mod:`tokjax.losses.insertion`. Our code is written from scratch.

One step, for every live row (P14's decoding rule)::

    l, s   = ILM(x, pos)                      one bidirectional forward over prompt + partial output,
                                              tokens in insertion order, ``pos`` their sequence positions
    p_stop = softmax(s)[stop]                 stop head on the CLS slot (the prompt's first token)
    stop the row if p_stop >= threshold       (xlm-core: ``predict = p < threshold``)
    else (i, v) = argmax / sample of the joint softmax over allowed (slot i, token v)
         append v with position pos[i] + 1; every token with pos > pos[i] moves one right

Allowed slots: the prompt's last token (the first gap, xlm-core's ``[BOS]``) and every generated
token (``ILMPredictor.generate`` suppresses the other prompt slots); ``suppress_ids`` are never
inserted (xlm-core suppresses its mask, eos, cls and bos ids). No KV cache: the whole row is
re-encoded each step, as the official predictor does (a new token changes every position after
it). The driver's buffer holds the tokens in insertion order (``commit`` appends, so a row's
``tokens[b, :lengths[b]]`` is prompt then inserted tokens in the order they were inserted); the
strategy keeps their positions and ``output`` returns each row sorted by position (xlm-core's
``decode``), i.e. the generated sequence. ``finalize`` adds ``insertion_order`` (for each row,
the buffer column of each output token: sorting by position ids reproduces the order of
insertions), ``stopped`` (rows the stop head ended) and ``p_stop`` (its last value per row).

The driver's logit transform acts on the flattened joint logits ``[B, S * V]`` (the distribution
over (slot, token) pairs, as ``sample_over_last_two_dims`` flattens them), so only
vocabulary-agnostic transforms are accepted: temperature, top-k (k pairs), top-p, min-p and
greedy, alone or chained. ``stop_threshold`` is a runtime hyperparameter (a new value does not
recompile).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, commit, ends_greedy
from tokjax.logits import (
    Chain, Greedy, Identity, LogitTransform, MinP, NamedChain, Temperature, TopK, TopP, as_rows, check_range, hparam,
    sample,
)
from tokjax.losses.insertion import STOP, STOP_KEY, ilm_forward
from tokjax.model import ModelConfig

__all__ = ["Insertion", "InsertionState", "JOINT_TRANSFORMS", "insert_tokens", "insertion", "sort_by_position"]

# Logit transforms whose meaning does not depend on the last axis being the vocabulary.
JOINT_TRANSFORMS = (Identity, Greedy, Temperature, TopK, TopP, MinP)
_FAR = np.iinfo(np.int32).max


@struct.dataclass
class InsertionState:
    """The insertion strategy's state: each buffer column's sequence position and the stop bookkeeping."""

    positions: jax.Array  # [B, S] int32: sequence position of each buffer column (valid columns < lengths)
    threshold: jax.Array  # [B] float32 stop threshold (runtime)
    stopped: jax.Array  # [B] bool: the stop head ended the row
    p_stop: jax.Array  # [B] float32: the stop head's last probability of "stop"


def insert_tokens(positions: jax.Array, lengths: jax.Array, anchor: jax.Array, inserted: jax.Array) -> jax.Array:
    """Returns ``positions`` [B, S] after row b appended a token at column ``lengths[b]`` right after ``anchor[b]``.

    Only rows with ``inserted[b]``: every valid column whose position exceeds the anchor's moves
    one right and the new column gets ``positions[anchor] + 1`` (xlm-core's ``_predict_single_step``).
    ``lengths`` are the lengths *before* the insertion. Pure and jit-compatible.
    """
    B, S = positions.shape
    col = jnp.arange(S)[None, :]
    valid = col < lengths[:, None]
    a = jnp.take_along_axis(positions, anchor[:, None], axis=1)  # [B, 1]
    shifted = jnp.where(inserted[:, None] & valid & (positions > a), positions + 1, positions)
    new_col = inserted[:, None] & (col == lengths[:, None])
    return jnp.where(new_col, a + 1, shifted).astype(jnp.int32)


def sort_by_position(tokens: jax.Array, positions: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (tokens [B, S] of each row in position order, order [B, S]: the source column of each output slot).

    Columns past ``lengths[b]`` go last, in column order.
    """
    S = tokens.shape[1]
    col = jnp.arange(S)[None, :]
    key = jnp.where(col < lengths[:, None], positions, _FAR)
    order = jnp.argsort(key, axis=1, stable=True).astype(jnp.int32)
    return jnp.take_along_axis(tokens, order, axis=1), order


def _check_transform(t: LogitTransform) -> None:
    if isinstance(t, Chain):
        for x in t.transforms:
            _check_transform(x)
    elif isinstance(t, NamedChain):
        for _, x in t.named:
            _check_transform(x)
    elif not isinstance(t, JOINT_TRANSFORMS):
        raise ValueError(
            f"the insertion strategy samples from the joint (slot x token) distribution, flattened to [B, S*V]; "
            f"{type(t).__name__} reads the last axis as the vocabulary, so it cannot apply. Use temperature, top_k, "
            f"top_p, min_p or greedy (alone or chained); ban tokens with insertion(suppress_ids=...) (also: no "
            f"min_new_tokens with eos_id under this strategy)"
        )


@dataclasses.dataclass(frozen=True)
class Insertion(Strategy):
    """P14 insertion decoding (module docstring). Build it with :func:`insertion`.

    Static: ``suppress_ids`` (token ids never inserted). Runtime: ``stop_threshold`` (scalar or one
    per row). The model's params need the stop head (``tokjax.losses.insertion.init_stop_head``).
    """

    suppress_ids: tuple = ()
    stop_threshold: Any = hparam(0.5)

    def validate(self, cfg: ModelConfig) -> None:
        bad = [i for i in self.suppress_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise ValueError(f"suppress_ids must be token ids in [0, {cfg.vocab_size}), got {bad}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> InsertionState:
        if not isinstance(params, dict) or STOP_KEY not in params:
            raise ValueError(f"the insertion strategy needs an ILM: params[{STOP_KEY!r}] (the stop head) is missing; "
                             "add it with tokjax.losses.insertion.init_stop_head and train with the 'ilm' loss")
        B, S = state.tokens.shape
        pl = np.asarray(state.prompt_lengths)
        if pl.min() < 2:
            raise ValueError(f"insertion decoding needs prompts of >= 2 tokens ([cls] ... [bos]: the stop head reads "
                             f"the first token, the first gap follows the last), got a prompt of {int(pl.min())}")
        check_range(self.stop_threshold, "stop_threshold", 0.0, 1.0, lo_open=True, hi_open=True)
        return InsertionState(
            positions=jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S)),
            threshold=as_rows(self.stop_threshold, B, "stop_threshold"),
            stopped=jnp.zeros((B,), bool),
            p_stop=jnp.zeros((B,), jnp.float32),
        )

    def state_axes(self, extra: InsertionState) -> InsertionState:
        row = ("batch",)
        return InsertionState(positions=("batch", None), threshold=row, stopped=row, p_stop=row)

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, s: DecodeState, eos_id=None) -> DecodeState:
        _check_transform(transform)
        ex: InsertionState = s.extra
        B, S = s.tokens.shape
        V = cfg.vocab_size
        col = jnp.arange(S)[None, :]
        valid = col < s.lengths[:, None]
        pos = jnp.where(valid, ex.positions, 0)
        logits, stop2 = ilm_forward(params, cfg, s.tokens, pos, s.lengths)
        p_stop = jax.nn.softmax(stop2, axis=-1)[:, STOP]
        allowed = valid & (col >= s.prompt_lengths[:, None] - 1)
        logits = jnp.where(allowed[:, :, None], logits, -jnp.inf)
        if self.suppress_ids:
            logits = logits.at[:, :, jnp.asarray(self.suppress_ids, jnp.int32)].set(-jnp.inf)
        flat, logit_state = transform.apply(logits.reshape(B, S * V), s.logit_state, s.context())
        key, sub = jax.random.split(s.key)
        pick, sst = sample(sub, flat, greedy=ends_greedy(transform))
        slot, tok = pick // V, pick % V
        live = ~s.done
        want_stop = live & (p_stop >= ex.threshold)
        counts = jnp.where(want_stop | sst.all_masked, 0, 1).astype(jnp.int32)
        stats = s.stats.replace(forward_calls=s.stats.forward_calls + 1,
                                masked_rows=s.stats.masked_rows | (sst.all_masked & live & ~want_stop))
        before = s.lengths
        s = s.replace(logit_state=logit_state, key=key, stats=stats)
        s = commit(s, tok[:, None], counts, eos_id, logits=flat[:, None])
        inserted = s.lengths > before
        positions = insert_tokens(ex.positions, before, slot, inserted)
        extra = ex.replace(positions=positions, stopped=ex.stopped | want_stop,
                           p_stop=jnp.where(live, p_stop, ex.p_stop))
        return s.replace(extra=extra, done=s.done | want_stop | (sst.all_masked & live))

    def output(self, state: DecodeState):
        ex: InsertionState = state.extra
        tokens, _ = sort_by_position(state.tokens, ex.positions, state.lengths)
        return tokens, state.lengths

    def persistent_state(self, extra: InsertionState) -> None:
        return None  # positions belong to this request's rows

    def resume(self, extra: InsertionState, saved) -> InsertionState:
        raise ValueError("insertion decoding keeps no state across requests; pass strategy_state=None")

    def finalize(self, state: DecodeState) -> dict:
        """Returns ``insertion_order`` (list per row: the buffer column of each output token, in output order; the
        generated ones are columns >= the prompt length, numbered in insertion order), ``stopped`` and ``p_stop``."""
        ex: InsertionState = state.extra
        _, order = sort_by_position(state.tokens, ex.positions, state.lengths)
        order, lengths = np.asarray(order), np.asarray(state.lengths)
        return {
            "insertion_order": [order[b, :lengths[b]].tolist() for b in range(order.shape[0])],
            "stopped": np.asarray(ex.stopped).tolist(),
            "p_stop": np.asarray(ex.p_stop).tolist(),
        }


def insertion(*, stop_threshold=0.5, suppress_ids=()) -> Insertion:
    """Returns the P14 insertion strategy: ``tokjax.generate(ilm, prompts, strategy=insertion(...), ...)``.

    ``stop_threshold`` in (0, 1) (scalar or one per row; runtime): a row stops when the stop head's
    probability of "stop" reaches it. ``suppress_ids``: token ids never inserted (special tokens).
    ``generate``'s output rows are then sorted by position (prompt, then the generated sequence);
    ``max_new_tokens`` bounds the insertions per row; the logit transform (``logits=``) acts on the
    joint (slot, token) distribution (``greedy()`` = the joint argmax).

    Raises:
      ValueError: a threshold outside (0, 1) or NaN, or suppress ids that are not ints.
    """
    check_range(stop_threshold, "stop_threshold", 0.0, 1.0, lo_open=True, hi_open=True)
    t = np.asarray(stop_threshold, np.float32)
    if t.ndim > 1:
        raise ValueError(f"stop_threshold must be a scalar or one value per row, got shape {t.shape}")
    ids = np.asarray(suppress_ids).reshape(-1)
    if ids.size and (ids.dtype.kind not in "iu"):
        raise ValueError(f"suppress_ids must be int token ids, got {suppress_ids!r}")
    return Insertion(suppress_ids=tuple(dict.fromkeys(int(i) for i in ids)), stop_threshold=stop_threshold)
