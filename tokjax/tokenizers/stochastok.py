"""StochasTok: random token splits that keep the text byte-exact (paper P36).

Paper: "StochasTok: Improving Fine-Grained Subword Understanding in LLMs" (Sims et al., 2025,
P36). A token ``t`` can be split into any pair of vocabulary tokens ``(a, b)`` with

    bytes(a) + bytes(b) == bytes(t)                                  (the expansion table)

and StochasTok repeats, ``floor(len(ids) * p)`` times, "pick a uniform position i; if ``ids[i]``
has expansions, replace it by a uniformly chosen pair" (pieces may be split again, so the
sequence grows). The text never changes, only its tokenization.

Two forms, same algorithm:

* :func:`stochastok` -- a tokenizer transform ``Tokenizer -> Tokenizer`` (host side, numpy RNG),
  exactly the reference loop.
* :func:`stochastok_split` -- a jitted op on padded id arrays ``[B, T]`` with a static cap on the
  number of split attempts and a runtime ``p``; :func:`stochastok_loss` wraps it around a
  training loss so ``tokjax.train`` pipelines expand every batch on the fly
  (:func:`tokjax.train.recipes.stochastok.train_stochastok` is the one call that does it).

The reference implementation caches the table as JSON, which turns its int keys into strings so
that ``token_id in expansions`` never hits again and nothing is ever split; the table here is
built in memory from the tokenizer's byte tables (keys stay ints; a test checks hits > 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.losses import next_token_loss
from tokjax.tokenizers._base import WrappedTokenizer

__all__ = [
    "ExpansionTable",
    "StochasTokTokenizer",
    "build_expansions",
    "expand_ids",
    "expansion_table",
    "stochastok",
    "stochastok_loss",
    "stochastok_split",
]


def _byte_tables(tokenizer: Any) -> tuple[list[bytes], dict[bytes, int], frozenset[int]]:
    """Returns (id_to_bytes, bytes_to_id, special_ids) of ``tokenizer``; ValueError if it has no byte tables."""
    try:
        id_to_bytes = tokenizer.id_to_bytes
        bytes_to_id = tokenizer.bytes_to_id
    except (AttributeError, NotImplementedError):
        raise ValueError(
            f"StochasTok needs a tokenizer with byte tables (id_to_bytes, bytes_to_id), "
            f"got {type(tokenizer).__name__}"
        ) from None
    if len(id_to_bytes) != tokenizer.vocab_size:
        raise ValueError(
            f"tokenizer.id_to_bytes has {len(id_to_bytes)} entries but vocab_size is {tokenizer.vocab_size}"
        )
    return list(id_to_bytes), dict(bytes_to_id), frozenset(getattr(tokenizer, "special_ids", frozenset()))


def build_expansions(tokenizer: Any) -> dict[int, list[tuple[int, int]]]:
    """Returns ``{token id: [(a, b), ...]}``: every pair of vocabulary tokens whose bytes concatenate to the token.

    Every split point of the token's bytes is tried (not only the BPE merge that created it);
    special tokens are never split nor produced. Keys are Python ints. Tokens with no
    expansion (single bytes, or no split with both halves in the vocabulary) are absent.
    """
    id_to_bytes, bytes_to_id, specials = _byte_tables(tokenizer)
    out: dict[int, list[tuple[int, int]]] = {}
    for t, raw in enumerate(id_to_bytes):
        if t in specials or len(raw) < 2:
            continue
        pairs = []
        for j in range(1, len(raw)):
            a = bytes_to_id.get(raw[:j])
            b = bytes_to_id.get(raw[j:])
            if a is not None and b is not None and a not in specials and b not in specials:
                pairs.append((int(a), int(b)))
        if pairs:
            out[int(t)] = pairs
    return out


def _check_p(p: Any) -> float:
    """Returns ``p`` as a float after checking it lies in [0, 1]."""
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"StochasTok p must be a number in [0, 1], got {p!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"StochasTok p must lie in [0, 1] (the fraction of positions to try splitting), got {p!r}")
    return value


def _check_max_splits(max_splits: Any, *, allow_none: bool) -> int | None:
    if max_splits is None and allow_none:
        return None
    if isinstance(max_splits, bool) or not isinstance(max_splits, (int, np.integer)) or max_splits < 0:
        raise ValueError(f"max_splits must be a non-negative int{' or None' if allow_none else ''}, got {max_splits!r}")
    return int(max_splits)


def expand_ids(
    ids: Sequence[int],
    expansions: dict[int, list[tuple[int, int]]],
    p: float,
    rng: np.random.Generator,
    *,
    max_splits: int | None = None,
) -> list[int]:
    """Returns ``ids`` after ``floor(len(ids) * p)`` StochasTok split attempts (the paper's loop, host side).

    Each attempt picks a uniform position of the *current* sequence and, if that token has
    expansions, replaces it by one chosen uniformly; ``max_splits`` caps the successful splits.
    """
    p = _check_p(p)
    max_splits = _check_max_splits(max_splits, allow_none=True)
    out = [int(i) for i in ids]
    attempts = int(len(out) * p)
    done = 0
    for _ in range(attempts):
        if max_splits is not None and done >= max_splits:
            break
        i = int(rng.integers(len(out)))
        options = expansions.get(out[i])
        if options:
            a, b = options[int(rng.integers(len(options)))]
            out[i : i + 1] = [a, b]
            done += 1
    return out


class StochasTokTokenizer(WrappedTokenizer):
    """Tokenizer whose ``encode`` applies StochasTok splits to ``base.encode``; everything else is ``base``'s.

    Decoding is unchanged, so ``decode(encode(s)) == s`` whenever it holds for ``base``.
    Special tokens added by ``add_bos``/``add_eos`` are never split.
    """

    def __init__(self, base: Any, p: float, *, seed: int | np.random.Generator | None = 0,
                 max_splits: int | None = None) -> None:
        super().__init__(base)
        self.p = _check_p(p)
        self.max_splits = _check_max_splits(max_splits, allow_none=True)
        self.expansions = build_expansions(base)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"StochasTokTokenizer(p={self.p}, base={self.base!r})"

    def _encode_text(self, text: str) -> list[int]:
        # fresh randomness on every call
        return expand_ids(self.base.encode(text), self.expansions, self.p, self.rng, max_splits=self.max_splits)


def stochastok(tokenizer: Any, p: float, *, seed: int | np.random.Generator | None = 0,
               max_splits: int | None = None) -> StochasTokTokenizer:
    """Returns the StochasTok transform of ``tokenizer``: same vocabulary and decode, randomly split encodings.

    P36, Sims et al. 2025: ``floor(len * p)`` attempts, each splitting a uniformly chosen token
    into a uniformly chosen pair ``(a, b)`` with ``bytes(a) + bytes(b) == bytes(t)``. ``p`` lies in
    [0, 1] (0.1 for pretraining in the paper, 1.0 for its addition task); ``seed`` seeds the
    numpy RNG. Raises ValueError for ``p`` outside [0, 1] or a tokenizer without byte tables.
    """
    return StochasTokTokenizer(tokenizer, p, seed=seed, max_splits=max_splits)


# ------------------------------------------------------------------------- device side
@struct.dataclass
class ExpansionTable:
    """StochasTok's expansion table as device arrays, for jitted splitting.

    ``pairs`` int32 [V, K, 2]: the first ``counts[t]`` rows of ``pairs[t]`` are token t's
    expansions (the rest are zeros); ``counts`` int32 [V].
    """

    pairs: jax.Array
    counts: jax.Array

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[0])


def expansion_table(tokenizer: Any) -> ExpansionTable:
    """Returns the :class:`ExpansionTable` of ``tokenizer`` (from :func:`build_expansions`)."""
    expansions = build_expansions(tokenizer)
    V = tokenizer.vocab_size
    K = max((len(v) for v in expansions.values()), default=1)
    pairs = np.zeros((V, K, 2), np.int32)
    counts = np.zeros((V,), np.int32)
    for t, opts in expansions.items():
        pairs[t, : len(opts)] = np.asarray(opts, np.int32)
        counts[t] = len(opts)
    return ExpansionTable(pairs=jnp.asarray(pairs), counts=jnp.asarray(counts))


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


@functools.partial(jax.jit, static_argnames=("max_splits", "truncate"))
def _split(ids, lengths, key, p, pairs, counts, pad_id, *, max_splits, truncate):
    B, T = ids.shape
    V = counts.shape[0]
    # The small epsilon makes float32 agree with the host's float64 floor(len * p) at p = 0.7, len = 10 etc.
    attempts = jnp.minimum(jnp.floor(lengths.astype(jnp.float32) * p + 1e-4).astype(jnp.int32), max_splits)
    pos = jnp.arange(T)[None, :]

    def body(k, carry):
        ids, lengths, n_split = carry
        sub = jax.random.fold_in(key, k)
        ku, kc = jax.random.split(sub)
        u = jax.random.uniform(ku, (B, 2))
        i = jnp.minimum((u[:, 0] * lengths).astype(jnp.int32), jnp.maximum(lengths - 1, 0))
        tok = jnp.take_along_axis(ids, i[:, None], axis=1)[:, 0]
        n_opt = counts[jnp.clip(tok, 0, V - 1)]
        room = truncate | (lengths < T)
        do = (k < attempts) & (n_opt > 0) & (lengths > 0) & room
        choice = jnp.minimum((u[:, 1] * n_opt).astype(jnp.int32), jnp.maximum(n_opt - 1, 0))
        ab = pairs[jnp.clip(tok, 0, V - 1), choice]  # [B, 2]
        shifted = jnp.concatenate([ids[:, :1], ids[:, :-1]], axis=1)  # token at t-1
        ii = i[:, None]
        new = jnp.where(pos < ii, ids, jnp.where(pos == ii, ab[:, :1], jnp.where(pos == ii + 1, ab[:, 1:], shifted)))
        ids = jnp.where(do[:, None], new, ids)
        lengths = jnp.where(do, jnp.minimum(lengths + 1, T), lengths)
        return ids, lengths, n_split + do.astype(jnp.int32)

    ids, lengths, n_split = jax.lax.fori_loop(0, max_splits, body, (ids, lengths, jnp.zeros((B,), jnp.int32)))
    ids = jnp.where(pos < lengths[:, None], ids, pad_id)
    return ids, lengths, n_split


def stochastok_split(
    ids: jax.Array,
    lengths: jax.Array,
    key: jax.Array,
    p: float | jax.Array,
    table: ExpansionTable,
    *,
    max_splits: int,
    pad_id: int = 0,
    truncate: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(ids, lengths, n_split)``: StochasTok applied to padded rows ``ids`` [B, T] on device.

    P36: row b makes ``min(floor(lengths[b] * p), max_splits)`` attempts; each picks a uniform
    position ``i < length`` and, if token ``ids[b, i]`` has expansions, replaces it by a uniform
    pair ``(a, b)`` (``bytes(a) + bytes(b) == bytes(ids[b, i])``), shifting the tail right.
    ``p`` is a runtime scalar (changing it does not recompile); ``max_splits`` (static) bounds
    the loop. A full row (length T) is left alone unless ``truncate=True``, which drops its
    last token instead (what packed training windows want). Positions at or beyond the new
    length hold ``pad_id``. ``n_split`` [B] counts the splits made.
    """
    if not isinstance(table, ExpansionTable):
        raise ValueError(f"table must be an ExpansionTable (see expansion_table(tokenizer)), got {type(table).__name__}")
    max_splits = _check_max_splits(max_splits, allow_none=False)
    ids = jnp.asarray(ids)
    lengths = jnp.asarray(lengths)
    if ids.ndim != 2:
        raise ValueError(f"ids must be [batch, seq], got shape {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    if lengths.shape != ids.shape[:1] or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be int [batch] = [{ids.shape[0]}], got {lengths.dtype} {lengths.shape}")
    if _is_concrete(p):
        _check_p(p)
    if _is_concrete(ids) and ids.size:
        host = np.asarray(ids)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= table.vocab_size:
            raise ValueError(f"ids must lie in [0, {table.vocab_size}) (the table's vocabulary), got [{lo}, {hi}]")
    if _is_concrete(lengths) and lengths.size:
        host = np.asarray(lengths)
        if int(host.min()) < 0 or int(host.max()) > ids.shape[1]:
            raise ValueError(f"lengths must lie in [0, {ids.shape[1]}], got {host.tolist()}")
    return _split(
        ids.astype(jnp.int32), lengths.astype(jnp.int32), key, jnp.asarray(p, jnp.float32),
        table.pairs, table.counts, jnp.asarray(pad_id, jnp.int32), max_splits=max_splits, truncate=bool(truncate),
    )


def stochastok_loss(
    table: ExpansionTable, p: float, *, max_splits: int, loss_fn: Callable | None = None
) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng)`` that StochasTok-splits ``batch['tokens']`` first.

    For ``tokjax.train.train(..., loss_fn=...)``: each packed window [B, T+1] is split on device
    with the step's ``rng`` (``truncate=True``: tokens pushed past the window end are dropped,
    as when an expanded stream is re-packed), then the base loss (default next-token
    cross-entropy) runs on it. Batches carrying ``mask``/``weights`` are rejected, because
    splitting moves tokens away from their per-position weights.
    """
    _check_p(p)
    max_splits = _check_max_splits(max_splits, allow_none=False)
    if loss_fn is None:
        loss_fn = next_token_loss
    p_arr = jnp.asarray(p, jnp.float32)

    def wrapped(params, cfg, batch, rng):
        if any(batch.get(k) is not None for k in ("mask", "weights")):
            raise ValueError("stochastok_loss cannot split batches with 'mask'/'weights' (they would misalign)")
        tokens = batch["tokens"]
        B, T = tokens.shape
        key = jax.random.fold_in(rng if rng is not None else jax.random.PRNGKey(0), 0x5707)
        split, _, _ = stochastok_split(tokens, jnp.full((B,), T, jnp.int32), key, p_arr, table,
                                       max_splits=max_splits, truncate=True)
        return loss_fn(params, cfg, {**batch, "tokens": split.astype(tokens.dtype)}, rng)

    return wrapped
