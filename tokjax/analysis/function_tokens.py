"""Function tokens (P27; Zhang, Lin, Li, "Memory Retrieval and Consolidation in Large Language Models through
Function Tokens", arXiv 2510.08203): which tokens activate the model's features, and where the loss sits.

The paper's hypothesis: a small set of *function tokens* (punctuation, articles, prepositions,
conjunctions: the highest-frequency tokens) activates most of the features an LLM has (memory
retrieval), and pre-training loss is dominated by predicting *content* tokens that follow
function tokens (memory consolidation). Its evidence: (i) a token-feature bipartite graph built
from SAE activations on the residual stream (Gemma2-9B, 10,000 documents), in which a handful of
function tokens reach the majority of features; (ii) training loss split by (previous token type,
next token type).

* :func:`function_token_set` -- the smallest set of most frequent token ids whose occurrences
  reach a ``coverage`` share of all tokens.
* :func:`feature_coverage` -- the bipartite graph (token t -- feature f when f fires at some
  occurrence of t): the share of active features that a token set reaches, and every token's degree.
* :func:`loss_table` -- mean next-token loss by (previous, next) token type in {function, content}^2.

What was checked against the paper: its abstract (arXiv 2510.08203v1) states the hypothesis, the
bipartite-graph result ("a small number of function tokens activate the majority of features")
and the loss result ("the training loss is dominated by predicting the next content tokens
following function tokens"); secondary summaries of the full text say function tokens are
*operationally defined as high-frequency tokens*, that the graph is built from SAE features of a
middle residual layer of Gemma2-9B, and that the top function tokens reach over 70% of them. The
exact frequency cut-off (here: cumulative token frequency >= ``coverage``, 40% by default, as
our paper notes propose), whether frequency is counted over tokens or documents, and the feature
activation threshold were NOT verified (the full text could not be read here; no official code was
located). ``coverage`` and ``threshold`` are therefore arguments.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FeatureCoverage", "LossTable", "feature_coverage", "function_token_set", "loss_table", "token_counts"]

_F32 = jnp.float32


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


# --------------------------------------------------------------------------------- token sets
def token_counts(token_ids, vocab_size: int, *, mask=None) -> np.ndarray:
    """Returns int64 [vocab_size]: how often each id occurs in ``token_ids`` (any shape; where ``mask`` is true)."""
    ids = np.asarray(token_ids)
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), got [{ids.min()}, {ids.max()}]")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != ids.shape:
            raise ValueError(f"mask must have the shape of token_ids {ids.shape}, got {m.shape}")
        ids = ids[m.astype(bool)]
    return np.bincount(ids.reshape(-1), minlength=vocab_size).astype(np.int64)


def function_token_set(counts, coverage: float = 0.4) -> np.ndarray:
    """Returns int64 [m]: the smallest set of most frequent token ids whose counts reach ``coverage`` of all tokens.

    ``counts`` [V] (non-negative, e.g. :func:`token_counts`): ids sorted by count, descending (ties:
    lower id first), are taken until their cumulative count c_m satisfies c_m >= coverage * sum(counts)
    (float64 arithmetic); m is the smallest such m, and no other m-1 tokens could reach the share,
    since the top m-1 counts are the largest m-1. ``coverage`` in (0, 1]. Ids come back in
    frequency order. (P27's function tokens; the 0.4 default is our notes' proposal, unverified.)
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size < 1:
        raise ValueError(f"counts must be a 1-D [vocab_size] array, got shape {c.shape}")
    if c.dtype.kind not in "iuf":
        raise ValueError(f"counts must be numbers, got dtype {c.dtype}")
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)) or c.min() < 0:
        raise ValueError("counts must be finite and non-negative")
    total = c.sum()
    if total <= 0:
        raise ValueError("counts sum to 0: no token occurrences to cover")
    cov = float(coverage)
    if not (np.isfinite(cov) and 0 < cov <= 1):
        raise ValueError(f"coverage must lie in (0, 1], got {coverage!r}")
    order = np.argsort(-c, kind="stable")
    cum = np.cumsum(c[order])
    m = int(np.searchsorted(cum, cov * total, side="left")) + 1
    return order[: min(m, c.size)].astype(np.int64)


def _token_mask(token_set, vocab_size: int | None, ids_max: int | None, name: str = "token_set") -> jax.Array:
    """Returns bool [V] from a bool mask [V] or int ids [S]."""
    s = jnp.asarray(token_set)
    if s.dtype == jnp.bool_:
        if s.ndim != 1 or (vocab_size is not None and s.shape[0] != vocab_size):
            want = "" if vocab_size is None else f"={vocab_size}"
            raise ValueError(f"{name} as a mask must be bool [vocab_size{want}], got shape {s.shape}")
        return s
    if s.ndim != 1 or not jnp.issubdtype(s.dtype, jnp.integer):
        raise ValueError(f"{name} must be int token ids [S] or a bool mask [vocab_size], got shape {s.shape} "
                         f"dtype {s.dtype}")
    if vocab_size is None:
        if not _concrete(s) or ids_max is None:
            raise ValueError(f"pass vocab_size= to use {name} as token ids under jit")
        vocab_size = max(ids_max, int(s.max()) if s.size else -1) + 1
    if _concrete(s) and s.size and (int(s.min()) < 0 or int(s.max()) >= vocab_size):
        raise ValueError(f"{name} ids must lie in [0, vocab_size={vocab_size}), got [{int(s.min())}, {int(s.max())}]")
    return jnp.zeros((vocab_size,), bool).at[s].set(True)


# --------------------------------------------------------------------------- bipartite graph
class FeatureCoverage(NamedTuple):
    """The token-feature bipartite graph summarised for one token set.

    ``coverage``: n_covered / n_active (0 when no feature is active); ``n_active``: features with at
    least one edge; ``n_covered``: features with an edge to a token of the set; ``degree`` int32 [V]:
    distinct features each token id activates; ``active`` / ``covered`` bool [F] per feature.
    """

    coverage: jax.Array
    n_active: jax.Array
    n_covered: jax.Array
    degree: jax.Array
    active: jax.Array
    covered: jax.Array


@functools.partial(jax.jit, static_argnames=("V", "F"))
def _coverage(tok, idx, val, in_set, threshold, V: int, F: int) -> FeatureCoverage:
    K = idx.shape[-1]
    tok = jnp.broadcast_to(tok[:, None], (tok.shape[0], K)).reshape(-1)
    feat = idx.reshape(-1)
    on = val.reshape(-1) > threshold
    active = jnp.zeros((F,), jnp.int32).at[feat].max(on.astype(jnp.int32)) > 0
    hit = on & in_set[tok]
    covered = jnp.zeros((F,), jnp.int32).at[feat].max(hit.astype(jnp.int32)) > 0
    # Distinct (token, feature) edges: sort the pairs (inactive ones pushed past the end as token V),
    # count the first of each run per token.
    t_key = jnp.where(on, tok, V)
    order = jnp.lexsort((feat, t_key))
    ts, fs = t_key[order], feat[order]
    first = jnp.concatenate([jnp.ones((1,), bool), (ts[1:] != ts[:-1]) | (fs[1:] != fs[:-1])])
    new_edge = first & (ts < V)
    degree = jax.ops.segment_sum(new_edge.astype(jnp.int32), jnp.minimum(ts, V - 1), num_segments=V)
    n_active = jnp.sum(active)
    n_covered = jnp.sum(covered)
    cov = jnp.where(n_active > 0, n_covered / jnp.maximum(n_active, 1), 0.0).astype(_F32)
    return FeatureCoverage(cov, n_active, n_covered, degree, active, covered)


def feature_coverage(token_ids, sae_codes, token_set, *, vocab_size: int | None = None,
                     n_features: int | None = None, threshold: float = 0.0) -> FeatureCoverage:
    """Returns the :class:`FeatureCoverage` of ``token_set`` in the token-feature graph of SAE activations (P27).

    Edge (t, f) when feature f's code exceeds ``threshold`` at some position holding token t.
    ``token_ids`` int [N] (or any shape [...]); ``sae_codes`` dense float [..., F] aligned with them,
    or sparse ``(indices, values)`` [..., K] (:class:`tokjax.analysis.sae.SparseCodes`; then
    ``n_features`` gives F, default max index + 1); ``token_set`` int ids [S] or bool [V]
    (e.g. :func:`function_token_set`). ``coverage`` = |features adjacent to the set| / |features
    with any edge| -- the paper's "function tokens activate the majority of features". ``vocab_size``
    defaults to the largest id seen + 1 (required under jit with ids). Dense codes become N x F
    pairs: pass sparse codes for large sets.
    """
    tok = jnp.asarray(token_ids)
    if not jnp.issubdtype(tok.dtype, jnp.integer):
        raise ValueError(f"token_ids must be integers, got dtype {tok.dtype}")
    if isinstance(sae_codes, (tuple, list)) and len(sae_codes) == 2:
        idx, val = jnp.asarray(sae_codes[0]), jnp.asarray(sae_codes[1])
        if idx.shape != val.shape or idx.shape[:-1] != tok.shape or not jnp.issubdtype(idx.dtype, jnp.integer):
            raise ValueError(f"sparse codes must be int indices and values of shape [*token_ids.shape, K] = "
                             f"[{', '.join(map(str, tok.shape))}, K], got {idx.shape} {idx.dtype} and {val.shape}")
        if n_features is None:
            if not _concrete(idx):
                raise ValueError("pass n_features= for sparse codes under jit")
            n_features = int(idx.max()) + 1 if idx.size else 1
        if _concrete(idx) and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_features):
            raise ValueError(f"sparse code indices must lie in [0, n_features={n_features}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
    else:
        val = jnp.asarray(sae_codes)
        if val.shape[:-1] != tok.shape or val.ndim != tok.ndim + 1:
            raise ValueError(f"dense codes must be [*token_ids.shape, F] = [{', '.join(map(str, tok.shape))}, F], "
                             f"got {val.shape}")
        if n_features is not None and n_features != val.shape[-1]:
            raise ValueError(f"n_features={n_features} disagrees with the dense codes' last axis {val.shape[-1]}")
        n_features = val.shape[-1]
        idx = jnp.broadcast_to(jnp.arange(n_features, dtype=jnp.int32), val.shape)
    if not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise ValueError(f"n_features must be an int >= 1, got {n_features!r}")
    if not jnp.issubdtype(val.dtype, jnp.floating):
        raise ValueError(f"code values must be floating point, got dtype {val.dtype}")
    if tok.size == 0:
        raise ValueError("token_ids is empty: no positions to build the graph from")
    if _concrete(val) and not bool(jnp.all(jnp.isfinite(val))):
        raise ValueError("sae codes hold non-finite values (NaN or inf)")
    ids_max = int(tok.max()) if _concrete(tok) else None
    if _concrete(tok) and int(tok.min()) < 0:
        raise ValueError(f"token ids must be >= 0, got {int(tok.min())}")
    in_set = _token_mask(token_set, vocab_size, ids_max)
    V = int(in_set.shape[0])
    if ids_max is not None and ids_max >= V:
        raise ValueError(f"token ids must lie in [0, vocab_size={V}), got max {ids_max}")
    thr = jnp.asarray(threshold, _F32)
    if thr.ndim != 0 or (_concrete(thr) and not bool(jnp.isfinite(thr))):
        raise ValueError(f"threshold must be a finite scalar, got {threshold!r}")
    K = idx.shape[-1]
    return _coverage(tok.reshape(-1).astype(jnp.int32), idx.reshape(-1, K).astype(jnp.int32),
                     val.reshape(-1, K).astype(_F32), in_set, thr, V=V, F=int(n_features))


# -------------------------------------------------------------------------------- loss table
class LossTable(NamedTuple):
    """Next-token loss by (previous token type, next token type); axis 0 = previous, axis 1 = next, index 0 =
    function, 1 = content. ``mean`` [2, 2] (0 where ``count`` is 0), ``count`` [2, 2] predicted positions,
    ``total`` [2, 2] summed loss, ``share`` [2, 2] = total / sum(total) (the share of the whole loss)."""

    mean: jax.Array
    count: jax.Array
    total: jax.Array
    share: jax.Array


@jax.jit
def _loss_table(tokens, losses, is_function, mask) -> LossTable:
    prev_content = (~is_function[tokens[:, :-1]]).astype(jnp.int32)
    next_content = (~is_function[tokens[:, 1:]]).astype(jnp.int32)
    cell = (2 * prev_content + next_content).reshape(-1)
    w = mask.reshape(-1)
    total = jax.ops.segment_sum(losses.reshape(-1) * w, cell, num_segments=4).reshape(2, 2)
    count = jax.ops.segment_sum(w, cell, num_segments=4).reshape(2, 2)
    mean = jnp.where(count > 0, total / jnp.maximum(count, 1e-30), 0.0)
    whole = jnp.sum(total)
    share = jnp.where(whole != 0, total / jnp.where(whole != 0, whole, 1.0), 0.0)
    return LossTable(mean, count, total, share)


def loss_table(token_ids, losses, is_function, *, mask=None) -> LossTable:
    """Returns the :class:`LossTable` of next-token ``losses`` split by the types of the previous and next token (P27).

    ``token_ids`` int [B, T+1]; ``losses`` float [B, T], where ``losses[b, t]`` is the loss of
    predicting ``token_ids[b, t+1]`` after ``token_ids[b, t]`` (e.g. ``-token_stats(...).logp``);
    ``is_function`` bool [V] (or int ids [S], e.g. :func:`function_token_set`; then V = the largest
    id seen + 1); ``mask`` [B, T] (float or bool weights; default all 1). The paper's
    finding is that the (function -> content) cell dominates the training loss (``share``).
    """
    tok = jnp.asarray(token_ids)
    ls = jnp.asarray(losses)
    if tok.ndim != 2 or tok.shape[1] < 2 or not jnp.issubdtype(tok.dtype, jnp.integer):
        raise ValueError(f"token_ids must be int [B, T+1] with T+1 >= 2, got shape {tok.shape} dtype {tok.dtype}")
    want = (tok.shape[0], tok.shape[1] - 1)
    if ls.shape != want or not jnp.issubdtype(ls.dtype, jnp.floating):
        raise ValueError(f"losses must be float [B, T] = {list(want)} (one per predicted token), got shape {ls.shape} "
                         f"dtype {ls.dtype}")
    if mask is None:
        m = jnp.ones(want, _F32)
    else:
        m = jnp.asarray(mask)
        if m.shape != want:
            raise ValueError(f"mask must be [B, T] = {list(want)}, got shape {m.shape}")
        m = m.astype(_F32)
    if _concrete(ls, m):
        if not bool(jnp.all(jnp.isfinite(jnp.where(m != 0, ls, 0.0)))):
            raise ValueError("losses hold non-finite values (NaN or inf) at unmasked positions")
        if bool(jnp.any(m < 0)) or not bool(jnp.all(jnp.isfinite(m))):
            raise ValueError("mask weights must be finite and >= 0")
    ids_max = int(tok.max()) if _concrete(tok) else None
    if _concrete(tok) and int(tok.min()) < 0:
        raise ValueError(f"token ids must be >= 0, got {int(tok.min())}")
    isf = _token_mask(is_function, None, ids_max, "is_function")
    if ids_max is not None and ids_max >= isf.shape[0]:
        raise ValueError(f"token ids must lie in [0, V={isf.shape[0]}) (the length of is_function), got max {ids_max}")
    return _loss_table(tok.astype(jnp.int32), ls.astype(_F32), isf, m)
