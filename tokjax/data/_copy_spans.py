"""Random token sequences in which spans are copied later (induction / n-gram tests)."""

from __future__ import annotations

import dataclasses

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["CopySpans", "copy_spans"]


@dataclasses.dataclass(frozen=True)
class CopySpans:
    """Token sequences with repeated spans.

    Attributes:
      tokens: int32 ``[n, length]``, uniform ids in ``[0, vocab)`` except that
        ``tokens[i, dst[i, j]:dst[i, j] + span_len] == tokens[i, src[i, j]:src[i, j] + span_len]``.
      src: int32 ``[n, repeats]`` start of each original span (sorted per row).
      dst: int32 ``[n, repeats]`` start of its copy; ``dst >= src + span_len``.
      span_len: tokens per span.
      vocab: vocabulary size.

    All ``2 * repeats`` spans of a row are pairwise disjoint.
    """

    tokens: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    span_len: int
    vocab: int

    @property
    def copy_mask(self) -> np.ndarray:
        """Returns bool ``[n, length]``, True at positions inside a copied span."""
        n, length = self.tokens.shape
        mask = np.zeros((n, length), dtype=bool)
        if self.dst.size:
            pos = self.dst[:, :, None] + np.arange(self.span_len)[None, None, :]
            rows = np.broadcast_to(np.arange(n)[:, None, None], pos.shape)
            mask[rows.reshape(-1), pos.reshape(-1)] = True
        return mask




def copy_spans(
    n: int,
    length: int,
    vocab: int,
    span_len: int,
    repeats: int = 1,
    seed: int = 0,
) -> CopySpans:
    """Returns :class:`CopySpans`: ``n`` random sequences where spans recur later.

    In each row ``2 * repeats`` disjoint slots of ``span_len`` tokens are placed
    uniformly at random (a random composition of the free space), the slots
    are paired at random, and the later slot of each pair is overwritten with
    a copy of the earlier one.  Everything else is i.i.d. uniform over
    ``[0, vocab)``.

    Raises:
      ValueError: ``n < 0``, ``vocab < 1``, ``span_len < 1``, ``repeats < 0``
        or ``length < 2 * repeats * span_len``.
    """
    n = check_int("n", n, 0)
    length = check_int("length", length, 1)
    vocab = check_int("vocab", vocab, 1)
    span_len = check_int("span_len", span_len, 1)
    repeats = check_int("repeats", repeats, 0)
    if vocab - 1 > np.iinfo(np.int32).max:
        raise ValueError(f"vocab must fit int32, got {vocab}")
    need = 2 * repeats * span_len
    if length < need:
        raise ValueError(
            f"length={length} is too short for {repeats} repeat(s) of span_len={span_len}: "
            f"needs at least 2 * repeats * span_len = {need}"
        )
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(n, length), dtype=np.int64).astype(np.int32)
    src = np.zeros((n, repeats), dtype=np.int32)
    dst = np.zeros((n, repeats), dtype=np.int32)
    k = 2 * repeats
    free = length - need
    for i in range(n):
        if repeats == 0:
            continue
        # Random composition of `free` into k+1 non-negative gaps (stars and bars).
        bars = np.sort(rng.choice(free + k, size=k, replace=False))
        gaps_before = bars - np.arange(k)  # free cells before slot j
        starts = gaps_before + np.arange(k) * span_len
        order = rng.permutation(k).reshape(repeats, 2)
        pairs = np.sort(starts[order], axis=1)
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        src[i], dst[i] = pairs[:, 0], pairs[:, 1]
        for s, d in pairs:
            tokens[i, d : d + span_len] = tokens[i, s : s + span_len]
    return CopySpans(tokens=tokens, src=src, dst=dst, span_len=span_len, vocab=vocab)
