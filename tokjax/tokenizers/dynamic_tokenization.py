"""P39 Retrofitting (Large) Language Models with Dynamic Tokenization (Feher, Vulic, Minixhofer; ACL 2025).

Dynamic tokenization re-tokenizes each *batch*: starting from the base tokenization, it repeatedly
counts the adjacent pairs over all sequences of the batch and merges the most frequent one everywhere
(batch-level BPE), until a target sequence-length reduction is reached. A pair may merge only when
the merged token stays inside one pretoken / word (``boundary``) and never when either side is a
special token. The new tokens get embeddings from their parts -- here the mean of the old
embeddings of the base tokens they cover (FVT), or a ZeTT hypernetwork (:mod:`tokjax.tokenizers.zett`):

    repeat M times:  (a, b) = argmax_{(x, y) valid} count_batch(x, y);  replace every (a, b) by ab
    M = min{ m : sum_b len_m(b) <= (1 - target_reduction) * sum_b len_0(b) }  (capped by num_merges)
    E[ab] = mean(E_old[base tokens of ab])

Layout of the ids a :class:`DynamicBatch` holds: ``0 .. V-1`` are the old ids, ``V + k`` is the
k-th merge of this batch (``parts[k]`` = its two halves, themselves old or earlier new ids).

    joinable = joinable_mask(tokenizer, ids, lengths)            # host side, from the text
    batch = dynamic_merges(ids, lengths, joinable, vocab_size=V, max_new_tokens=256,
                           num_merges=256, target_reduction=0.2)  # jit-compatible
    table = dynamic_embeddings(params["embed"], batch.parts, batch.num_new)   # [V + 256, D]
    logits = forward(params, cfg, batch.ids, embedding=table, head=table.T,
                     logit_bias=new_token_bias(V, batch.parts.shape[0], batch.num_new))

Ties between equally frequent pairs go to the smallest (left id, right id); the official code takes
the first pair seen (Counter order). The official ``"pretokens"`` test re-runs the pre-tokenizer on
the merged string; here the pretoken spans of the whole row are computed once from its text, which
is the same for pretokenizers whose spans do not depend on context beyond the merged string.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.tokenizers._vocab_transfer import check_byte_tables
from tokjax.tokenizers._zett_hypernet import hypernet_embeddings

__all__ = [
    "DynamicBatch",
    "BOUNDARIES",
    "joinable_mask",
    "dynamic_merges",
    "dynamic_tokenize",
    "apply_merges",
    "expand_ids",
    "new_token_decompositions",
    "dynamic_embeddings",
    "hypernet_dynamic_embeddings",
    "new_token_bias",
]

BOUNDARIES = ("pretoken", "word", "any")
_WORD_RE = re.compile(rb"\s?\S+|\s+(?!\S)|\s+")
_NEG = -1e9  # finite "minus infinity": unused vocabulary slots must not turn the softmax into NaN


class DynamicBatch(NamedTuple):
    """A dynamically tokenized batch (a pytree): its ids and the merges that made the new ones.

    ``ids`` int32 [B, T] (positions past ``lengths`` hold ``pad_id``), ``lengths`` int32 [B],
    ``joinable`` bool [B, T] (position i may merge with i + 1), ``parts`` int32 [K, 2] (merge k made
    id ``vocab_size + k`` from ``parts[k]``; -1 for unused rows), ``num_new`` int32 [] merges done.
    """

    ids: jax.Array
    lengths: jax.Array
    joinable: jax.Array
    parts: jax.Array
    num_new: jax.Array


# --------------------------------------------------------------------------- boundaries
def _unit_breaks_pretoken(tokenizer: Any, data: bytes) -> set[int]:
    pre = getattr(getattr(tokenizer, "hf", None), "pre_tokenizer", None)
    if pre is None:
        raise ValueError(
            f"boundary='pretoken' needs a tokenizer with a Hugging Face pre-tokenizer (BPETokenizer); "
            f"{type(tokenizer).__name__} has none -- use boundary='word' or 'any'"
        )
    # Invalid UTF-8 (a window cut inside a character) becomes one U+FFFD per byte so char and
    # byte offsets stay in step.
    text = data.decode("utf-8", errors="surrogateescape")
    widths = [1 if 0xDC80 <= ord(c) <= 0xDCFF else len(c.encode("utf-8")) for c in text]
    clean = "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)
    offsets = np.concatenate([[0], np.cumsum(widths)]).astype(int)
    return {int(offsets[end]) for _, (_, end) in pre.pre_tokenize_str(clean)}


def _unit_breaks_word(data: bytes) -> set[int]:
    return {m.end() for m in _WORD_RE.finditer(data)}


def joinable_mask(tokenizer: Any, ids: Any, lengths: Any | None = None, boundary: str = "pretoken") -> np.ndarray:
    """Returns bool [B, T]: whether token i of each row may be merged with token i + 1.

    False at the last real token, past ``lengths``, next to a special token, and where the text
    has a ``boundary`` between the two tokens: ``"pretoken"`` (the tokenizer's own pre-tokenizer,
    the paper's default), ``"word"`` (whitespace-delimited words, a leading space attaches to the
    word as in GPT-2) or ``"any"`` (only special tokens block merges). Raises ValueError for a
    tokenizer without byte tables, an unknown boundary or ids outside the vocabulary.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    table = check_byte_tables(tokenizer)
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be an int array [batch, seq], got shape {ids.shape} dtype {ids.dtype}")
    B, T = ids.shape
    lengths = np.full((B,), T, np.int64) if lengths is None else np.asarray(lengths).astype(np.int64)
    if lengths.shape != (B,) or (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"lengths must be [batch={B}] ints in [0, {T}], got {lengths}")
    special = tokenizer.special_ids
    out = np.zeros((B, T), bool)
    for b in range(B):
        row = ids[b, : lengths[b]].tolist()
        if row and (min(row) < 0 or max(row) >= len(table)):
            raise ValueError(f"ids[{b}] has ids outside [0, {len(table)})")
        ends, pos, data = [], 0, []
        for i in row:
            data.append(table[i])
            pos += len(table[i])
            ends.append(pos)
        blob = b"".join(data)
        # Specials (empty bytes) split the text: boundaries are found per special-free segment.
        breaks: set[int] = set()
        if boundary != "any":
            cuts = [ends[j] for j, i in enumerate(row) if i in special] + [len(blob)]
            start = 0
            for stop in cuts:
                seg = blob[start:stop]
                if seg:
                    found = _unit_breaks_pretoken(tokenizer, seg) if boundary == "pretoken" else _unit_breaks_word(seg)
                    breaks |= {start + e for e in found}
                start = stop
        for j in range(len(row) - 1):
            if row[j] in special or row[j + 1] in special:
                continue
            if ends[j] in breaks:
                continue
            out[b, j] = True
    return out


# ------------------------------------------------------------------------------- merges
def _valid_pairs(ids, joinable, lengths):
    B, T = ids.shape
    pos = jnp.arange(T)[None, :]
    valid = joinable & (pos + 1 < lengths[:, None])
    right = jnp.concatenate([ids[:, 1:], jnp.zeros((B, 1), ids.dtype)], axis=1)
    return valid, right


def _best_pair(ids, joinable, lengths):
    """Returns (left, right, found): the most frequent valid adjacent pair (ties: smallest pair)."""
    valid, right = _valid_pairs(ids, joinable, lengths)
    sentinel = jnp.iinfo(jnp.int32).max
    l = jnp.where(valid, ids, sentinel).reshape(-1)
    r = jnp.where(valid, right, sentinel).reshape(-1)
    order = jnp.lexsort((r, l))
    ls, rs = l[order], r[order]
    first = jnp.concatenate([jnp.array([True]), (ls[1:] != ls[:-1]) | (rs[1:] != rs[:-1])])
    seg = jnp.cumsum(first) - 1
    counts = jax.ops.segment_sum((ls != sentinel).astype(jnp.int32), seg, num_segments=ls.shape[0])
    best = jnp.argmax(counts)  # segments are in (left, right) order: ties go to the smallest pair
    start = jnp.argmax(seg == best)
    return ls[start], rs[start], counts[best] > 0


def _apply_pair(ids, joinable, lengths, a, c, active, new_id, pad_id):
    """Returns (ids, joinable, lengths) with every valid (a, c) replaced by ``new_id``, left to right."""
    B, T = ids.shape
    pos = jnp.arange(T)[None, :]
    valid, right = _valid_pairs(ids, joinable, lengths)
    match = valid & (ids == a) & (right == c) & active
    idx = jnp.broadcast_to(pos, (B, T))
    last_miss = jax.lax.cummax(jnp.where(match, -1, idx), axis=1)
    take = match & ((idx - last_miss - 1) % 2 == 0)  # leftmost-first, non-overlapping (runs of a == c)
    prev_take = jnp.concatenate([jnp.zeros((B, 1), bool), take[:, :-1]], axis=1)
    keep = ~prev_take & (pos < lengths[:, None])
    merged_ids = jnp.where(take, new_id, ids)
    next_join = jnp.concatenate([joinable[:, 1:], jnp.zeros((B, 1), bool)], axis=1)
    merged_join = jnp.where(take, next_join, joinable)
    dest = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, T)
    rows = jnp.arange(B)[:, None]
    out_ids = jnp.full((B, T), pad_id, ids.dtype).at[rows, dest].set(merged_ids, mode="drop")
    out_join = jnp.zeros((B, T), bool).at[rows, dest].set(merged_join, mode="drop")
    return out_ids, out_join, lengths - jnp.sum(take, axis=1).astype(lengths.dtype)


def _merge_step(ids, joinable, lengths, num_new, parts, vocab_size, pad_id):
    a, c, found = _best_pair(ids, joinable, lengths)
    ids, joinable, lengths = _apply_pair(ids, joinable, lengths, a, c, found, vocab_size + num_new, pad_id)
    pair = jnp.where(found, jnp.stack([a, c]).astype(parts.dtype), -1)
    return ids, joinable, lengths, parts.at[num_new].set(pair, mode="drop"), found


def apply_merges(batch: DynamicBatch, parts: jax.Array, num_new: Any, *, vocab_size: int, pad_id: Any = 0) -> DynamicBatch:
    """Returns ``batch`` re-tokenized by a given merge list (``parts`` [K, 2], the first ``num_new`` used), in order.

    Lets one batch's merges tokenize other text (e.g. leave-one-out scoring, where a row must not
    choose its own vocabulary). Jit-compatible; ``batch`` usually comes straight from the base
    tokenization (``num_new`` 0).
    """
    parts = jnp.asarray(parts, jnp.int32)
    return _apply_merges(batch.ids, batch.lengths, batch.joinable, parts, jnp.asarray(num_new, jnp.int32),
                         jnp.asarray(pad_id, jnp.int32), int(vocab_size))


@functools.partial(jax.jit, static_argnums=(6,))
def _apply_merges(ids, lengths, joinable, parts, num_new, pad_id, vocab_size):
    def body(k, carry):
        ids, join, lens = carry
        return _apply_pair(ids, join, lens, parts[k, 0], parts[k, 1], k < num_new, vocab_size + k, pad_id)

    ids, join, lens = jax.lax.fori_loop(0, parts.shape[0], body, (ids, joinable, lengths))
    used = (jnp.arange(parts.shape[0]) < num_new)[:, None]
    return DynamicBatch(ids=ids, lengths=lens, joinable=join, parts=jnp.where(used, parts, -1), num_new=num_new)


def dynamic_merges(
    ids: jax.Array,
    lengths: jax.Array,
    joinable: jax.Array,
    *,
    vocab_size: int,
    max_new_tokens: int,
    num_merges: Any = None,
    target_reduction: Any = 1.0,
    pad_id: Any = 0,
) -> DynamicBatch:
    """Returns the batch after batch-level BPE merges (P39): merge the most frequent valid pair, repeat.

    Merging stops after ``num_merges`` merges (default ``max_new_tokens``), once the batch's total
    length is at most ``(1 - target_reduction)`` times the original, or when no valid pair is left.
    ``num_merges`` and ``target_reduction`` are runtime values (a sweep does not recompile);
    ``vocab_size`` and ``max_new_tokens`` fix shapes. Jit-compatible; validation of concrete
    inputs raises ValueError.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be an int array [batch, seq], got shape {ids.shape} dtype {ids.dtype}")
    B, T = ids.shape
    lengths = jnp.asarray(lengths)
    joinable = jnp.asarray(joinable)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if joinable.shape != (B, T) or joinable.dtype != jnp.bool_:
        raise ValueError(f"joinable must be bool [{B}, {T}], got {joinable.dtype} {joinable.shape}")
    if not isinstance(ids, jax.core.Tracer) and ids.size:
        concrete = np.asarray(ids)  # numpy, so a constant captured by an outer jit is still checked
        lo, hi = int(concrete.min()), int(concrete.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"ids must lie in [0, vocab_size={vocab_size}), got [{lo}, {hi}]")
    if (vocab_size + max_new_tokens) >= np.iinfo(np.int32).max:
        raise ValueError("vocab_size + max_new_tokens must fit in int32")
    num_merges = max_new_tokens if num_merges is None else num_merges
    for name, v in (("num_merges", num_merges), ("target_reduction", target_reduction)):
        if not isinstance(v, jax.core.Tracer):
            x = float(np.asarray(v))
            if not np.isfinite(x) or x < 0 or (name == "target_reduction" and x > 1):
                raise ValueError(f"{name} must be {'in [0, 1]' if name == 'target_reduction' else '>= 0'}, got {v!r}")
    return _dynamic_merges(ids.astype(jnp.int32), lengths.astype(jnp.int32), joinable,
                           jnp.asarray(num_merges, jnp.int32), jnp.asarray(target_reduction, jnp.float32),
                           jnp.asarray(pad_id, jnp.int32), int(vocab_size), int(max_new_tokens))


@functools.partial(jax.jit, static_argnums=(6, 7))
def _dynamic_merges(ids, lengths, joinable, num_merges, target_reduction, pad_id, vocab_size, max_new):
    original = jnp.sum(lengths).astype(jnp.float32)
    target = (1.0 - target_reduction) * original
    parts = jnp.full((max_new, 2), -1, jnp.int32)
    cap = jnp.minimum(num_merges, max_new)

    def cond(state):
        ids, join, lens, parts, n, more = state
        return more & (n < cap) & (jnp.sum(lens).astype(jnp.float32) > target)

    def body(state):
        ids, join, lens, parts, n, _ = state
        ids, join, lens, parts, found = _merge_step(ids, join, lens, n, parts, vocab_size, pad_id)
        return ids, join, lens, parts, n + found.astype(jnp.int32), found

    # Not a decode loop: BPE-style merging runs until no merge applies (data-dependent count).
    ids, join, lens, parts, n, _ = jax.lax.while_loop(
        cond, body, (ids, joinable, lengths, parts, jnp.int32(0), jnp.array(True)))
    return DynamicBatch(ids=ids, lengths=lens, joinable=join, parts=parts, num_new=n)


def dynamic_tokenize(
    tokenizer: Any,
    texts: list[str],
    *,
    max_new_tokens: int = 256,
    num_merges: Any = None,
    target_reduction: Any = 1.0,
    boundary: str = "pretoken",
    add_bos: bool = False,
) -> DynamicBatch:
    """Returns the dynamic tokenization of ``texts`` as one batch (base encoding, boundaries, merges)."""
    from tokjax.tokenizers import pad_batch

    rows = tokenizer.encode_batch(texts, add_bos=add_bos)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids, lengths = pad_batch(rows, pad)
    join = joinable_mask(tokenizer, ids, lengths, boundary)
    return dynamic_merges(ids, lengths, join, vocab_size=tokenizer.vocab_size, max_new_tokens=max_new_tokens,
                          num_merges=num_merges, target_reduction=target_reduction, pad_id=pad)


# ------------------------------------------------------------------- reconstruction
def expand_ids(batch: DynamicBatch, vocab_size: int) -> list[list[int]]:
    """Returns each row of ``batch`` with every new token replaced by the old ids it covers (host side)."""
    parts = np.asarray(batch.parts)
    memo: dict[int, list[int]] = {}

    def leaves(i: int) -> list[int]:
        if i < vocab_size:
            return [i]
        if i not in memo:
            a, c = parts[i - vocab_size]
            if a < 0:
                raise ValueError(f"id {i} refers to an unused merge slot")
            memo[i] = leaves(int(a)) + leaves(int(c))
        return memo[i]

    ids, lengths = np.asarray(batch.ids), np.asarray(batch.lengths)
    return [[x for i in ids[b, : lengths[b]].tolist() for x in leaves(int(i))] for b in range(ids.shape[0])]


@functools.partial(jax.jit, static_argnums=(1, 2))
def new_token_decompositions(parts: jax.Array, vocab_size: int, maxlen: int) -> tuple[jax.Array, jax.Array]:
    """Returns (old ids [K, maxlen] with -1 padding, lengths [K] capped at maxlen) of every merge's base tokens."""
    K = parts.shape[0]
    table = jnp.full((vocab_size + K, maxlen), -1, jnp.int32).at[:vocab_size, 0].set(jnp.arange(vocab_size))
    lens = jnp.zeros((vocab_size + K,), jnp.int32).at[:vocab_size].set(1)

    def body(k, carry):
        table, lens = carry
        a, c = parts[k, 0], parts[k, 1]
        used = a >= 0
        a, c = jnp.maximum(a, 0), jnp.maximum(c, 0)
        la, lc = lens[a], lens[c]
        slot = jnp.arange(maxlen)
        # right part shifted by len(a): position j takes c's token j - la
        from_c = jnp.take(table[c], jnp.clip(slot - la, 0, maxlen - 1))
        row = jnp.where(slot < la, table[a], jnp.where(slot < la + lc, from_c, -1))
        row = jnp.where(used, row, -1)
        n = jnp.where(used, jnp.minimum(la + lc, maxlen), 0)
        return table.at[vocab_size + k].set(row), lens.at[vocab_size + k].set(n)

    table, lens = jax.lax.fori_loop(0, K, body, (table, lens))
    return table[vocab_size:], lens[vocab_size:]


@jax.jit
def dynamic_embeddings(old_table: jax.Array, parts: jax.Array, num_new: jax.Array) -> jax.Array:
    """Returns [V + K, D]: the old table followed by each merge's mean-of-parts embedding.

    E[V + k] = sum of E_old over the base tokens of merge k / their number (exact at any depth,
    computed from running sums); rows of unused merge slots are zero (mask them with
    :func:`new_token_bias`).
    """
    V, D = old_table.shape
    K = parts.shape[0]
    sums = jnp.concatenate([old_table.astype(jnp.float32), jnp.zeros((K, D), jnp.float32)])
    counts = jnp.concatenate([jnp.ones((V,), jnp.float32), jnp.zeros((K,), jnp.float32)])

    def body(k, carry):
        sums, counts = carry
        a, c = jnp.maximum(parts[k, 0], 0), jnp.maximum(parts[k, 1], 0)
        used = (k < num_new) & (parts[k, 0] >= 0)
        s = jnp.where(used, sums[a] + sums[c], 0.0)
        n = jnp.where(used, counts[a] + counts[c], 0.0)
        return sums.at[V + k].set(s), counts.at[V + k].set(n)

    sums, counts = jax.lax.fori_loop(0, K, body, (sums, counts))
    return (sums / jnp.maximum(counts, 1.0)[:, None]).astype(old_table.dtype)


def hypernet_dynamic_embeddings(hypernet: Any, old_table: jax.Array, parts: jax.Array, num_new: jax.Array) -> jax.Array:
    """Returns [V + K, D]: the old table followed by ZeTT hypernetwork embeddings of each merge (P39 with P26).

    Each merge is decomposed into the base tokens it covers (truncated to the hypernet's
    ``maxlen``) and embedded by :func:`tokjax.tokenizers.zett.hypernet_embeddings`; unused slots are
    zero. Jit-compatible (``hypernet`` is a pytree).
    """
    V = old_table.shape[0]
    K = parts.shape[0]
    dec, lens = new_token_decompositions(parts, V, hypernet.cfg.maxlen)
    e, _, _ = hypernet_embeddings(hypernet, old_table, dec, lens)
    used = (jnp.arange(K) < num_new)[:, None]
    return jnp.concatenate([old_table, jnp.where(used, e, 0.0).astype(old_table.dtype)])


def new_token_bias(vocab_size: int, max_new_tokens: int, num_new: jax.Array) -> jax.Array:
    """Returns float32 [V + K]: 0 for old ids and used merges, a large negative number for unused slots."""
    k = jnp.arange(max_new_tokens)
    return jnp.concatenate([jnp.zeros((vocab_size,), jnp.float32), jnp.where(k < num_new, 0.0, _NEG)])
