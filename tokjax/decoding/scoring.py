"""Score several continuations of one prefix: one prefill, forked caches, per-token log-probs.

    out = score_continuations(model, prefix_ids, [cont_a, cont_b, ...])
    out.logprobs[i]   float32 [len(cont_i)]: log p(cont_i[j] | prefix, cont_i[:j])
    out.totals        float32 [C]: their sums (the continuation's log-likelihood)

The prefix is prefilled once (``tokjax.model.prefill``; its last token stays pending), the cache
is forked once per continuation (``KVCache.fork``) and every continuation is read in one cached
forward. Used for multiple-choice scoring, reranking and infilling checks; equal to scoring each
``prefix + continuation`` separately with ``tokjax.losses.token_stats`` (tested to 1e-5).
Continuations are scored ``batch_size`` at a time (one compile per distinct padded shape).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits import target_logprobs
from tokjax.model import Inputs, Model, forward, prefill
from tokjax.model.ops import check_int_values

__all__ = ["ScoredContinuations", "score_continuations"]


@dataclasses.dataclass
class ScoredContinuations:
    """Per-token log-probs of each continuation (host arrays) and their sums."""

    logprobs: list
    totals: np.ndarray


@functools.partial(jax.jit, static_argnums=(1,))
def _score(params, cfg, prefix, conts):
    P = prefix.shape[1]
    C, L = conts.shape
    cache = prefill(params, cfg, prefix, jnp.full((1,), P, jnp.int32), P + L).fork(C)
    x = jnp.concatenate([jnp.broadcast_to(prefix[:, -1:], (C, 1)), conts[:, :-1]], axis=1)
    logits = forward(params, cfg, Inputs(tokens=x), cache=cache).logits
    return target_logprobs(logits, conts)


def score_continuations(model: Model, prefix: Sequence[int], continuations: Sequence[Sequence[int]], *,
                        batch_size: int = 16) -> ScoredContinuations:
    """Returns the per-token log-probs of every continuation after ``prefix`` (module docstring)."""
    prefix_arr = np.asarray(prefix, np.int64).reshape(-1)
    if prefix_arr.size == 0:
        raise ValueError("prefix must hold at least one token (the continuation's first token is predicted from it)")
    if not continuations:
        raise ValueError("give at least one continuation")
    conts = [np.asarray(c, np.int64).reshape(-1) for c in continuations]
    empty = [i for i, c in enumerate(conts) if c.size == 0]
    if empty:
        raise ValueError(f"continuations {empty[:5]} are empty; every continuation needs at least one token")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    V = model.cfg.vocab_size
    check_int_values(prefix_arr, "prefix", 0, V)
    for c in conts:
        check_int_values(c, "continuation ids", 0, V)
    L = max(c.size for c in conts)
    if prefix_arr.size + L > model.cfg.max_len:
        raise ValueError(f"prefix ({prefix_arr.size}) + longest continuation ({L}) exceed the model's max_len "
                         f"{model.cfg.max_len}")
    padded = np.zeros((len(conts), L), np.int32)
    for i, c in enumerate(conts):
        padded[i, :c.size] = c
    rows = min(batch_size, len(conts))
    out = []
    for start in range(0, len(conts), rows):
        chunk = padded[start:start + rows]
        n = len(chunk)
        if n < rows:  # pad the last chunk to the compiled shape
            chunk = np.concatenate([chunk, np.zeros((rows - n, L), np.int32)])
        lp = _score(model.params, model.cfg, jnp.asarray(prefix_arr[None], jnp.int32), jnp.asarray(chunk))
        out.append(np.asarray(lp)[:n])
    lp = np.concatenate(out)
    per = [lp[i, :c.size] for i, c in enumerate(conts)]
    return ScoredContinuations(logprobs=per, totals=np.array([p.sum() for p in per], np.float32))
