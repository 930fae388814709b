"""TensorBLEU (P75): batched per-sentence and corpus BLEU on token-id arrays, jit-compatible.

Filipek, "TensorBLEU: Vectorized GPU-based BLEU Score Implementation for Per-Sentence
In-Training Evaluation" (2025). BLEU (Papineni et al. 2002) for candidate ``c`` with references
``{r_j}``::

    p_n  = sum_g min(count_c(g), max_j count_{r_j}(g)) / max(1, #n-grams of c)     (clipped precision)
    BP   = 1 if |c| > r else exp(1 - r/|c|)     (r: the closest reference length, shorter on ties;
                                                 BP = 0 for an empty candidate)
    BLEU = BP * exp(sum_n w_n log p_n)

The paper's idea is to count n-grams in a *compact, batch-specific dictionary* (``torch.unique``
over the batch's n-grams) rather than hashing into a vocabulary-sized space. Here the dictionary
is built with static shapes, per sentence: the sentence's reference n-grams (all slots, R
positions) are the dictionary, and an n-gram's id is where its key first occurs among them when
sorted, or R when no reference has it (such a candidate n-gram can never be matched, nor can any
longer n-gram it starts). Unigram keys are the tokens; an n-gram's key packs the pair (id of its
leading (n-1)-gram, id of its last token) into one int32. Each order therefore costs one batched
single-key sort of the reference positions plus a binary search per position, and never forms an
``n``-wide key or a ``[B, #unique]`` count matrix (memory is linear in the number of tokens). Candidate and reference counts are then ``segment_sum`` over those ids.

Conventions follow NLTK's ``sentence_bleu`` / ``corpus_bleu`` (tested equal to 1e-6):
  * a candidate with no unigram match scores 0 whatever the smoothing;
  * ``smoothing`` is NLTK's ``SmoothingFunction`` method 0-3, the paper's list:
    ``"none"`` (method0: a zero precision becomes ``sys.float_info.min``),
    ``"floor"`` (method1: a zero numerator becomes ``epsilon``),
    ``"add-k"`` (method2 generalised: ``(m + k) / (l + k)`` for n >= 2, unigrams unsmoothed; NLTK's k = 1),
    ``"exp"`` (method3, NIST: the i-th zero precision becomes ``1 / (2^i * l)``);
  * reference slots of length 0 are absent (padding for a variable number of references); they
    neither count n-grams nor take part in the closest-reference-length choice. A sentence with
    no reference scores 0.

The official PyTorch code differs on these points (first index on length ties, add-k on unigrams
too, ``exp`` as a 1e-12 floor, unmasked empty references); we follow NLTK so the scores are the
standard ones.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "SMOOTHINGS",
    "BleuStats",
    "bleu_from_stats",
    "bleu_stats",
    "tensor_corpus_bleu",
    "tensor_sentence_bleu",
]

SMOOTHINGS: tuple[str, ...] = ("none", "floor", "add-k", "exp")
# NLTK method0 puts sys.float_info.min in place of a zero precision; its log fits in float32.
_LOG_FLOAT_MIN = math.log(sys.float_info.min)


class BleuStats(NamedTuple):
    """Sufficient statistics of BLEU, per sentence (leading axis B) or summed over a corpus."""

    numerators: jax.Array  # [..., N] clipped n-gram matches per order
    denominators: jax.Array  # [..., N] max(1, number of candidate n-grams) per order
    candidate_lengths: jax.Array  # [...] |c|
    reference_lengths: jax.Array  # [...] r, the closest reference length


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _lengths_before_pad(tokens: jax.Array, pad_id) -> jax.Array:
    """Returns the number of tokens before the first `pad_id` along the last axis."""
    is_pad = tokens == pad_id
    return jnp.where(is_pad.any(-1), jnp.argmax(is_pad, -1), tokens.shape[-1]).astype(jnp.int32)


def _check_lengths(name: str, lengths, shape: tuple[int, ...], max_len: int) -> jax.Array:
    lengths = jnp.asarray(lengths)
    if lengths.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {lengths.dtype}")
    if _is_concrete(lengths) and lengths.size:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > max_len:
            raise ValueError(f"{name} must lie in [0, {max_len}] (the padded length), got min {lo}, max {hi}")
    return jnp.clip(lengths, 0, max_len).astype(jnp.int32)


def _validate(candidates, references, candidate_lengths, reference_lengths, pad_id, max_n):
    """Returns (candidates, references, candidate_lengths, reference_lengths) checked and int32."""
    if not isinstance(max_n, int) or isinstance(max_n, bool) or max_n < 1:
        raise ValueError(f"max_n must be a Python int >= 1 (the highest n-gram order), got {max_n!r}")
    candidates, references = jnp.asarray(candidates), jnp.asarray(references)
    if candidates.ndim != 2:
        raise ValueError(f"candidates must be [B, T] token ids, got shape {candidates.shape}")
    if references.ndim != 3:
        raise ValueError(f"references must be [B, R, T'] token ids, got shape {references.shape}")
    if references.shape[0] != candidates.shape[0]:
        raise ValueError(f"candidates and references disagree on the batch size: "
                         f"{candidates.shape[0]} vs {references.shape[0]}")
    for name, x in (("candidates", candidates), ("references", references)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be integer token ids, got dtype {x.dtype}")
    if pad_id is None and (candidate_lengths is None or reference_lengths is None):
        raise ValueError("give pad_id, or both candidate_lengths [B] and reference_lengths [B, R]")
    b, r, t_ref = references.shape
    if candidate_lengths is None:
        candidate_lengths = _lengths_before_pad(candidates, pad_id)
    if reference_lengths is None:
        reference_lengths = _lengths_before_pad(references, pad_id)
    candidate_lengths = _check_lengths("candidate_lengths", candidate_lengths, (b,), candidates.shape[1])
    reference_lengths = _check_lengths("reference_lengths", reference_lengths, (b, r), t_ref)
    return candidates.astype(jnp.int32), references.astype(jnp.int32), candidate_lengths, reference_lengths


_PACKED_KEY_LIMIT = 2**31  # pair keys prev_id * (R + 1) + token_id must stay below it (int32)


def _lookup(keys: jax.Array, t: int) -> jax.Array:
    """Returns an id per position of ``keys`` [B, t + R]: where the key first occurs in its row's sorted
    reference part (positions t..), or R when no reference position holds it.

    Sorting only the reference part (the dictionary) and binary-searching every position is the cheap
    form on XLA's CPU backend: a single-key sort of R entries per row, no position payload.
    """
    R = keys.shape[1] - t
    ordered = jax.lax.sort(keys[:, t:], dimension=1)
    pos = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left", method="scan_unrolled"))(ordered, keys)
    pos = pos.astype(jnp.int32)
    hit = jnp.take_along_axis(ordered, jnp.minimum(pos, R - 1), axis=1) == keys
    return jnp.where(hit, pos, R)


def _joint_pair_ids(primary: jax.Array, secondary: jax.Array) -> jax.Array:
    """Returns a dense id per position of [B, W], equal iff the (primary, secondary) pairs are, by a
    two-key sort carrying the positions (the path for rows too long to pack a pair into an int32)."""
    b, w = primary.shape
    perm = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32), (b, w))
    p, s, perm = jax.lax.sort((primary, secondary, perm), dimension=1, num_keys=2)
    new = jnp.concatenate([jnp.ones((b, 1), bool), (p[:, 1:] != p[:, :-1]) | (s[:, 1:] != s[:, :-1])], axis=1)
    ranks = jnp.cumsum(new, axis=1, dtype=jnp.int32) - 1
    return jnp.zeros_like(ranks).at[jnp.arange(b)[:, None], perm].set(ranks)


def _closest_reference_length(cand_len: jax.Array, ref_len: jax.Array) -> jax.Array:
    """Returns r per sentence: the present reference length closest to |c|, the shorter on ties."""
    big = jnp.iinfo(jnp.int32).max // 2
    key = jnp.abs(ref_len - cand_len[:, None]) * (ref_len.max(initial=0) + 1) + ref_len
    key = jnp.where(ref_len > 0, key, big)
    return jnp.take_along_axis(ref_len, jnp.argmin(key, -1)[:, None], -1)[:, 0] * (ref_len > 0).any(-1)


def bleu_stats(candidates, references, *, candidate_lengths=None, reference_lengths=None,
               pad_id: int | None = None, max_n: int = 4) -> BleuStats:
    """Returns per-sentence BLEU statistics ([B, max_n] clipped matches and totals, |c|, r).

    ``candidates`` [B, T] and ``references`` [B, R, T'] are integer token ids; the valid prefix of
    each row is given by ``candidate_lengths`` [B] and ``reference_lengths`` [B, R], or by the first
    ``pad_id``. Reference slots of length 0 are absent. ``max_n`` is static.
    """
    candidates, references, cand_len, ref_len = _validate(
        candidates, references, candidate_lengths, reference_lengths, pad_id, max_n)
    b, t = candidates.shape
    _, r, t_ref = references.shape
    R = r * t_ref
    packed = R > 0 and (R + 1) * (R + 1) < _PACKED_KEY_LIMIT
    # Ids per sentence row [candidate | reference slots]: with ``packed``, where an n-gram first occurs
    # among the row's reference n-grams, or R (a candidate n-gram no reference has: it can never be
    # matched, nor can any longer n-gram it starts, and its count is clipped to 0); an (n-1)-gram id
    # and a token id then pack into one int32 key. Otherwise dense ids over the whole row from a
    # two-key sort.
    w = R + 1 if packed else t + R
    row_tokens = jnp.concatenate([candidates, references.reshape(b, R)], axis=1)
    if packed:
        tok = _lookup(row_tokens, t)
    else:
        tok = _joint_pair_ids(row_tokens, jnp.zeros_like(row_tokens))
    cand_tok = jnp.pad(tok[:, :t], ((0, 0), (0, max_n - 1)))
    ref_tok = jnp.pad(tok[:, t:].reshape(b, r, t_ref), ((0, 0), (0, 0), (0, max_n - 1)))
    cand_pos, ref_pos = jnp.arange(t), jnp.arange(t_ref)
    row = (jnp.arange(b, dtype=jnp.int32) * w)[:, None]
    ids = tok
    nums, dens = [], []
    for n in range(1, max_n + 1):
        if n > 1:  # the n-gram at i = (the (n-1)-gram at i, token i+n-1); the pad filler is never counted
            last = jnp.concatenate([cand_tok[:, n - 1:n - 1 + t],
                                    ref_tok[:, :, n - 1:n - 1 + t_ref].reshape(b, R)], axis=1)
            ids = _lookup(ids * w + last, t) if packed else _joint_pair_ids(ids, last)
        gid = ids + row  # global segment per (sentence, n-gram)
        cand_valid = (cand_pos[None, :] + n <= cand_len[:, None]).astype(jnp.int32)
        cand_count = jax.ops.segment_sum(cand_valid.ravel(), gid[:, :t].ravel(), b * w)
        ref_gid = gid[:, t:].reshape(b, r, t_ref)
        ref_valid = (ref_pos[None, None, :] + n <= ref_len[:, :, None]).astype(jnp.int32)
        max_ref = jnp.zeros((b * w,), jnp.int32)
        for j in range(r):
            max_ref = jnp.maximum(max_ref, jax.ops.segment_sum(ref_valid[:, j].ravel(), ref_gid[:, j].ravel(), b * w))
        nums.append(jnp.minimum(cand_count, max_ref).reshape(b, w).sum(-1))
        dens.append(jnp.maximum(1, cand_len - n + 1))
    return BleuStats(jnp.stack(nums, -1), jnp.stack(dens, -1), cand_len,
                     _closest_reference_length(cand_len, ref_len))


def _check_smoothing(smoothing: str) -> None:
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")


def _weights(weights, max_n: int, dtype) -> jax.Array:
    if weights is None:
        return jnp.full((max_n,), 1.0 / max_n, dtype)
    weights = jnp.asarray(weights, dtype)
    if weights.shape != (max_n,):
        raise ValueError(f"weights must have shape ({max_n},) (one per n-gram order), got {weights.shape}")
    return weights


def bleu_from_stats(stats: BleuStats, weights=None, *, smoothing: str = "none",
                    epsilon=0.1, k=1.0) -> jax.Array:
    """Returns BLEU (shape of ``stats.candidate_lengths``) from per-sentence or summed statistics.

    ``weights`` [N] (default uniform), ``epsilon`` ("floor") and ``k`` ("add-k") are runtime
    values; ``smoothing`` is static (see the module docstring).
    """
    _check_smoothing(smoothing)
    dtype = jnp.result_type(float)
    num = stats.numerators.astype(dtype)
    den = stats.denominators.astype(dtype)
    max_n = num.shape[-1]
    w = _weights(weights, max_n, dtype)
    zero = num == 0
    if smoothing == "none":
        logp = jnp.where(zero, _LOG_FLOAT_MIN, jnp.log(jnp.where(zero, 1.0, num)) - jnp.log(den))
        used = jnp.ones_like(zero)
    elif smoothing == "floor":
        p_num = jnp.where(zero, jnp.asarray(epsilon, dtype), num)
        used = p_num > 0
        logp = jnp.log(jnp.where(used, p_num, 1.0)) - jnp.log(den)
    elif smoothing == "add-k":
        kk = jnp.where(jnp.arange(max_n) == 0, 0.0, jnp.asarray(k, dtype))
        p_num, p_den = num + kk, den + kk
        used = p_num > 0  # NLTK drops orders whose smoothed precision is 0 (k = 0)
        logp = jnp.log(jnp.where(used, p_num, 1.0)) - jnp.log(p_den)
    else:  # "exp": the i-th order with no match gets 1 / (2^i * den)
        i = jnp.cumsum(zero, -1).astype(dtype)
        logp = jnp.where(zero, -i * math.log(2.0), jnp.log(jnp.where(zero, 1.0, num))) - jnp.log(den)
        used = jnp.ones_like(zero)
    log_mean = jnp.sum(jnp.where(used, w * logp, 0.0), -1)
    c = stats.candidate_lengths.astype(dtype)
    r = stats.reference_lengths.astype(dtype)
    bp = jnp.where(c > r, 1.0, jnp.where(c == 0, 0.0, jnp.exp(1.0 - r / jnp.where(c == 0, 1.0, c))))
    return jnp.where(num[..., 0] == 0, 0.0, bp * jnp.exp(log_mean))


def tensor_sentence_bleu(candidates, references, *, candidate_lengths=None, reference_lengths=None,
                         pad_id: int | None = None, max_n: int = 4, weights=None, smoothing: str = "none",
                         epsilon=0.1, k=1.0) -> jax.Array:
    """Returns per-sentence BLEU [B] of candidates [B, T] against references [B, R, T'] (P75).

    Equals NLTK ``sentence_bleu(refs, cand, weights, smoothing_function=method{0..3})`` per row.
    Static: ``max_n``, ``smoothing``, ``pad_id``; runtime: ``weights`` [max_n], ``epsilon``, ``k``.
    Jit with e.g. ``jax.jit(tensor_sentence_bleu, static_argnames=("max_n", "smoothing", "pad_id"))``.
    """
    _check_smoothing(smoothing)
    stats = bleu_stats(candidates, references, candidate_lengths=candidate_lengths,
                       reference_lengths=reference_lengths, pad_id=pad_id, max_n=max_n)
    return bleu_from_stats(stats, weights, smoothing=smoothing, epsilon=epsilon, k=k)


def tensor_corpus_bleu(candidates, references, *, candidate_lengths=None, reference_lengths=None,
                       pad_id: int | None = None, max_n: int = 4, weights=None, smoothing: str = "none",
                       epsilon=0.1, k=1.0) -> jax.Array:
    """Returns corpus BLEU (a scalar) of the batch: statistics summed over sentences, then BLEU.

    Equals NLTK ``corpus_bleu``; arguments as :func:`tensor_sentence_bleu`.
    """
    _check_smoothing(smoothing)
    stats = bleu_stats(candidates, references, candidate_lengths=candidate_lengths,
                       reference_lengths=reference_lengths, pad_id=pad_id, max_n=max_n)
    summed = BleuStats(*(x.sum(0) for x in stats))
    return bleu_from_stats(summed, weights, smoothing=smoothing, epsilon=epsilon, k=k)
