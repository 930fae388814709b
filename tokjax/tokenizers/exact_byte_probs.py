"""Exact next-byte probabilities from a tokenized LM (P11: Phan et al., ICLR 2025, "Exact Byte-Level
Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles").

Byte-Token Representation lemma. A token LM with a canonical tokenizer ``enc`` defines a distribution over
byte strings; for a byte prefix x = x_1..x_n

    P(bytes start with x) = sum_{t in cover(x)} P(token sequence starts with t),

    cover(x) = { t_1..t_k valid : bytes(t_1..t_{k-1}) is a proper prefix of x,  bytes(t_1..t_k) starts with x }.

"Valid" means "a prefix of some canonical encoding"; it is checked as ``enc(dec(t)) == t``. A valid t_1..t_{k-1}
that decodes to x[:j] is therefore ``enc(x[:j])`` itself, so cover(x) is indexed by the split point j
(with n - j shorter than the longest token) and the last token:

    P(x . b) = sum_j  P(enc(x[:j])) * sum_{t : bytes(t) starts with x[j:] . b,  enc(x[:j]) + [t] valid} P(t | enc(x[:j]))

and the next-byte distribution is the normalised vector ``[P(x.b) for b in 0..255] + [P(x, end)]`` with
``P(x, end) = P(enc(x)) * P(eos | enc(x))``. For an LM that is exactly the push-forward of a byte source this is
P(x.b) / P(x) (tested against exhaustive enumeration); for a trained LM it is the paper's normalised estimate.
One model call per split point: every row ``context + enc(x[:j])`` is scored with one prefill of their common
prefix, a forked KV cache (``KVCache.fork``) and one cached forward (the ``score_continuations`` pattern), which
returns both P(enc(x[:j]) | common prefix) and the next-token distribution.

The naive baseline :func:`naive_byte_logprobs` conditions on ``enc(x)`` only and groups next tokens by their first
byte; it is wrong at a prompt boundary (after "ab" it gives 0 to "c" when "abc" would have been merged).

``model`` is a :class:`tokjax.model.Model` or any object with ``vocab_size`` and
``next_token_logprobs(sequences) -> float [N, V]`` (the log-probs of the next token after each id sequence; used by
the exact lookup LMs of the tests). The byte string is read after ``context_ids`` (default ``[tok.bos_id]``).

Not done (see the task report): model ensembles over different vocabularies, token healing / FIM prompts, the
paper's cache carried between successive bytes (each call rebuilds the cover), and split points inside a UTF-8
character (skipped, as in the official code: ``enc`` is only defined on text).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import weakref
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Inputs, Model, forward, prefill

__all__ = [
    "END", "ByteVocab", "byte_logprobs", "byte_prefix_logprob", "byte_text_logprob", "byte_generate",
    "naive_byte_logprobs", "is_canonical",
]

END = 256  # index of the end-of-text entry in the [257] next-byte vectors


# ---------------------------------------------------------------------------------------------------- vocabulary
@dataclasses.dataclass(frozen=True)
class ByteVocab:
    """Sorted byte table of a vocabulary: ``starting_with(p)`` lists the ids whose bytes start with ``p`` (a byte
    trie as one sorted array and a bisect), ``first_byte[i]`` (-1 for ids without bytes) and the longest token."""

    sorted_bytes: tuple[bytes, ...]
    sorted_ids: np.ndarray
    first_byte: np.ndarray
    id_to_bytes: tuple[bytes, ...]
    max_len: int

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "ByteVocab":
        """Returns the table of ``tok.id_to_bytes``; special tokens count as having no bytes."""
        table = getattr(tok, "id_to_bytes", None)
        if table is None:
            raise ValueError(f"tokenizer {type(tok).__name__} has no id_to_bytes table (tokjax Tokenizer protocol)")
        table = list(table)
        specials = frozenset(getattr(tok, "special_ids", ()))
        for i, b in enumerate(table):
            if not isinstance(b, (bytes, bytearray)):
                raise ValueError(f"tokenizer id_to_bytes[{i}] is {type(b).__name__}, expected bytes")
        byts = tuple(b"" if i in specials else bytes(b) for i, b in enumerate(table))
        ids = [i for i, b in enumerate(byts) if b]
        if not ids:
            raise ValueError("the tokenizer's vocabulary has no token with non-empty bytes (id_to_bytes is empty or "
                             "all special); exact byte probabilities need byte-level tokens")
        ids.sort(key=lambda i: byts[i])
        first = np.array([b[0] if b else -1 for b in byts], np.int64)
        return cls(tuple(byts[i] for i in ids), np.array(ids, np.int64), first, byts, max(len(byts[i]) for i in ids))

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_bytes)

    def starting_with(self, prefix: bytes) -> np.ndarray:
        """Returns the ids whose bytes start with ``prefix`` (all byte tokens for ``b""``)."""
        lo = bisect.bisect_left(self.sorted_bytes, prefix)
        hi = lo
        if prefix:
            # Every byte string starting with prefix sorts below prefix + b"\xff" * max_len + b"\xff".
            hi = bisect.bisect_left(self.sorted_bytes, prefix + b"\xff" * (self.max_len + 1), lo)
        else:
            hi = len(self.sorted_bytes)
        return self.sorted_ids[lo:hi]


_VOCABS: "weakref.WeakKeyDictionary[Any, ByteVocab]" = weakref.WeakKeyDictionary()


def _vocab(tok: Any) -> ByteVocab:
    try:
        v = _VOCABS.get(tok)
    except TypeError:  # not weak-referenceable
        return ByteVocab.from_tokenizer(tok)
    if v is None:
        v = ByteVocab.from_tokenizer(tok)
        _VOCABS[tok] = v
    return v


# ---------------------------------------------------------------------------------------------------- encoding
def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _utf8_split_ok(data: bytes) -> bool:
    """True if ``data`` is valid UTF-8 up to a possibly incomplete last character."""
    for cut in range(0, min(4, len(data) + 1)):
        if _text(data[: len(data) - cut]) is not None:
            return True
    return False


def _encode_many(tok: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    if hasattr(tok, "encode_batch"):
        return [list(r) for r in tok.encode_batch(texts)]
    return [list(tok.encode(t)) for t in texts]


def is_canonical(tok: Any, ids: Sequence[int]) -> bool:
    """Returns whether ``ids`` is a valid (prefix of a canonical) encoding: ``enc(dec(ids)) == ids``.

    Sequences whose bytes end inside a UTF-8 character cannot be re-encoded; they count as valid when their bytes
    are otherwise valid UTF-8 (the official code makes the same choice)."""
    v = _vocab(tok)
    ids = [int(i) for i in ids]
    data = b"".join(v.id_to_bytes[i] for i in ids)
    text = _text(data)
    if text is None:
        return _utf8_split_ok(data)
    return list(tok.encode(text)) == ids


def _valid_last(tok: Any, v: ByteVocab, left: bytes, left_ids: list[int], cands: np.ndarray) -> np.ndarray:
    """Returns the boolean mask of candidate last tokens t with ``left_ids + [t]`` valid."""
    keep = np.ones(len(cands), bool)
    texts, where = [], []
    for k, t in enumerate(cands.tolist()):
        text = _text(left + v.id_to_bytes[t])
        if text is None:
            keep[k] = _utf8_split_ok(left + v.id_to_bytes[t])
        else:
            texts.append(text)
            where.append(k)
    want_len = len(left_ids) + 1
    for k, enc in zip(where, _encode_many(tok, texts)):
        keep[k] = len(enc) == want_len and enc[:-1] == left_ids and enc[-1] == int(cands[k])
    return keep


# ---------------------------------------------------------------------------------------------------- model calls
@functools.partial(jax.jit, static_argnums=(1,))
def _rows_logprobs(params, cfg, prefix, rows):
    """Log-softmax of the next token at every position of ``rows`` [N, L] fed after ``prefix`` [1, P]."""
    P = prefix.shape[1]
    N, L = rows.shape
    cache = prefill(params, cfg, prefix, jnp.full((1,), P, jnp.int32), P + L).fork(N)
    x = jnp.concatenate([jnp.broadcast_to(prefix[:, -1:], (N, 1)), rows], axis=1)
    logits = forward(params, cfg, Inputs(tokens=x), cache=cache).logits
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _model_vocab(model: Any) -> int:
    if isinstance(model, Model):
        return int(model.cfg.vocab_size)
    if hasattr(model, "next_token_logprobs") and hasattr(model, "vocab_size"):
        return int(model.vocab_size)
    raise ValueError(f"model must be a tokjax Model or have vocab_size and next_token_logprobs(sequences), "
                     f"got {type(model).__name__}")


def _score_rows(model: Any, context: list[int], rows: list[list[int]], share: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (log P(row | context) [N], next-token log-probs [N, V]). With ``share`` a tokjax model prefills the
    rows' common leading tokens with the context, and the row log-probs miss that common part's log-prob (a
    constant that cancels in every normalised result)."""
    if not isinstance(model, Model):
        seqs, owners = [], []
        for r, row in enumerate(rows):
            for i in range(len(row) + 1):
                seqs.append(context + row[:i])
                owners.append((r, i))
        lp = np.asarray(model.next_token_logprobs(seqs), np.float64)
        if lp.shape != (len(seqs), model.vocab_size):
            raise ValueError(f"next_token_logprobs returned shape {lp.shape}, expected {(len(seqs), model.vocab_size)}")
        seq_lp = np.zeros(len(rows))
        nxt = np.zeros((len(rows), lp.shape[1]))
        for (r, i), row_lp in zip(owners, lp):
            if i < len(rows[r]):
                seq_lp[r] += row_lp[rows[r][i]]
            else:
                nxt[r] = row_lp
        return seq_lp, nxt
    common = 0
    if share:
        while all(len(r) > common for r in rows) and len({r[common] for r in rows}) == 1:
            common += 1
    prefix = context + rows[0][:common]
    tails = [r[common:] for r in rows]
    need = max(len(t) for t in tails) + 1
    width = _bucket(need)  # padded shapes: few compiles
    if len(prefix) + width > model.cfg.max_len:
        width = need
    if len(prefix) + width > model.cfg.max_len:
        raise ValueError(f"context ({len(context)}) + encoded prefix ({max(len(r) for r in rows)}) tokens exceed the "
                         f"model's max_len {model.cfg.max_len}")
    arr = np.zeros((_bucket(len(rows)), width - 1 if width > 1 else 1), np.int32)
    for i, t in enumerate(tails):
        arr[i, :len(t)] = t
    lp = np.asarray(_rows_logprobs(model.params, model.cfg, jnp.asarray([prefix], jnp.int32), jnp.asarray(arr)),
                    np.float64)
    seq_lp = np.array([sum(lp[i, k, t[k]] for k in range(len(t))) for i, t in enumerate(tails)])
    nxt = np.stack([lp[i, len(t)] for i, t in enumerate(tails)])
    return seq_lp, nxt


# ---------------------------------------------------------------------------------------------------- checks
def _check(model: Any, tok: Any, prefix_bytes: Any, context_ids: Any, eos_id: Any):
    if not isinstance(prefix_bytes, (bytes, bytearray)):
        raise ValueError(f"prefix_bytes must be bytes (e.g. 'text'.encode('utf-8')), got {type(prefix_bytes).__name__}")
    v = _vocab(tok)
    mv = _model_vocab(model)
    if mv < v.vocab_size:
        raise ValueError(f"model vocab_size {mv} is smaller than the tokenizer's {v.vocab_size}: the model and "
                         "tokenizer do not belong together")
    if context_ids is None:
        bos = getattr(tok, "bos_id", None)
        if bos is None:
            raise ValueError("the tokenizer has no bos token; pass context_ids (the token ids the byte string follows)")
        context = [int(bos)]
    else:
        context = [int(i) for i in np.asarray(context_ids, np.int64).reshape(-1)]
        if not context:
            raise ValueError("context_ids must hold at least one token (the first token is predicted from it)")
        if min(context) < 0 or max(context) >= mv:
            raise ValueError(f"context_ids must lie in [0, {mv}), got {context}")
    if eos_id is _DEFAULT:
        eos_id = getattr(tok, "eos_id", None)
    if eos_id is not None and not (0 <= int(eos_id) < mv):
        raise ValueError(f"eos_id {eos_id} outside [0, {mv})")
    return bytes(prefix_bytes), v, mv, context, (None if eos_id is None else int(eos_id))


class _Default:
    def __repr__(self) -> str:
        return "tok.eos_id"


_DEFAULT: Any = _Default()


# ---------------------------------------------------------------------------------------------------- cover sums
def _cover_masses(model, tok, x, v, context, eos_id, share=True) -> np.ndarray:
    """Returns log [P(x.b) for b in 0..255] + [log P(x, end)] as cover sums (relative to P(context); with ``share``
    also up to a constant common to all entries, see :func:`_score_rows`)."""
    n = len(x)
    js = [j for j in range(max(0, n - v.max_len + 1), n + 1) if _text(x[:j]) is not None]
    encs = _encode_many(tok, [x[:j].decode("utf-8") for j in js])
    splits, rows, cands = [], [], []
    for j, left_ids in zip(js, encs):
        c = v.starting_with(x[j:])
        if j < n:  # only tokens overhanging byte n add to some P(x.b)
            c = c[np.array([len(v.id_to_bytes[t]) > n - j for t in c.tolist()], bool)] if len(c) else c
        if len(c):
            c = c[_valid_last(tok, v, x[:j], left_ids, c)]
        if len(c) == 0 and not (j == n and eos_id is not None):
            continue
        splits.append(j)
        rows.append(left_ids)
        cands.append(c)
    out = np.full(257, -np.inf)
    if not rows:
        return out
    seq_lp, nxt = _score_rows(model, context, rows, share)
    for j, s_lp, lp, c in zip(splits, seq_lp, nxt, cands):
        if len(c):
            terms = s_lp + lp[c]
            nb = np.array([v.id_to_bytes[t][n - j] for t in c.tolist()])  # each token's byte at position n
            for b in np.unique(nb):
                out[b] = np.logaddexp(out[b], np.logaddexp.reduce(terms[nb == b]))
        if j == n and eos_id is not None:
            out[END] = np.logaddexp(out[END], s_lp + lp[eos_id])
    return out


def byte_logprobs(model: Any, tok: Any, prefix_bytes: bytes, *, context_ids: Sequence[int] | None = None,
                  eos_id: Any = _DEFAULT) -> np.ndarray:
    """Returns float64 [257] log-probabilities of the next byte after ``prefix_bytes`` (entries 0..255) and of the
    end of text (entry ``END`` = 256; -inf when ``eos_id`` is None), by the cover sum (module docstring, P11).

    ``context_ids``: token ids the byte string follows (default ``[tok.bos_id]``); ``eos_id``: the token that ends
    the text (default ``tok.eos_id``). The vector is normalised (logsumexp 0)."""
    x, v, mv, context, eos = _check(model, tok, prefix_bytes, context_ids, eos_id)
    out = _cover_masses(model, tok, x, v, context, eos)
    total = np.logaddexp.reduce(out)
    if not np.isfinite(total):
        raise ValueError(f"the model gives no mass to any continuation of {x[-20:]!r}")
    return out - total


def byte_prefix_logprob(model: Any, tok: Any, prefix_bytes: bytes, *, context_ids: Sequence[int] | None = None
                        ) -> float:
    """Returns log P(bytes start with ``prefix_bytes``) = log sum_{t in cover(x)} P(t | context) (the BTR lemma).

    Unnormalised: a trained LM also puts mass on non-canonical sequences, which this sum leaves out."""
    x, v, mv, context, eos = _check(model, tok, prefix_bytes, context_ids, None)
    if not x:
        return 0.0
    # cover(x) = the covers of x[:-1] . x[-1]: split points j < n, last token overhanging byte n - 1.
    out = _cover_masses(model, tok, x[:-1], v, context, None, share=False)
    return float(out[x[-1]])


def naive_byte_logprobs(model: Any, tok: Any, prefix_bytes: bytes, *, context_ids: Sequence[int] | None = None,
                        eos_id: Any = _DEFAULT) -> np.ndarray:
    """Returns the naive [257] next-byte log-probs: tokenize the prefix, take the next-token distribution after
    ``enc(prefix)`` and marginalise it by each token's first byte (the prompt-boundary baseline; not exact)."""
    x, v, mv, context, eos = _check(model, tok, prefix_bytes, context_ids, eos_id)
    text = _text(x)
    if text is None:
        raise ValueError("naive_byte_logprobs needs prefix_bytes that are valid UTF-8 (it tokenizes the prefix)")
    _, nxt = _score_rows(model, context, [list(tok.encode(text))])
    lp = nxt[0, : v.vocab_size]
    out = np.full(257, -np.inf)
    for b in np.unique(v.first_byte[v.first_byte >= 0]):
        out[b] = np.logaddexp.reduce(lp[v.first_byte == b])
    if eos is not None:
        out[END] = lp[eos]
    total = np.logaddexp.reduce(out)
    return out - total


def byte_text_logprob(model: Any, tok: Any, text_bytes: bytes, *, context_ids: Sequence[int] | None = None,
                      eos_id: Any = _DEFAULT, include_end: bool = False) -> float:
    """Returns sum_i log P(x_i | x_<i) over the bytes of ``text_bytes`` (chained :func:`byte_logprobs`), plus
    log P(end | x) when ``include_end``. Divide by ``-len(text_bytes) * log(2)`` for bits per byte."""
    x, v, mv, context, eos = _check(model, tok, text_bytes, context_ids, eos_id)
    total = 0.0
    for i in range(len(x) + int(include_end)):
        lp = byte_logprobs(model, tok, x[:i], context_ids=context, eos_id=eos)
        total += float(lp[x[i]] if i < len(x) else lp[END])
    return total


def byte_generate(model: Any, tok: Any, prefix_bytes: bytes, max_new_bytes: int, *,
                  context_ids: Sequence[int] | None = None, eos_id: Any = _DEFAULT) -> bytes:
    """Returns ``prefix_bytes`` extended greedily byte by byte (argmax of :func:`byte_logprobs`) until the end of
    text wins or ``max_new_bytes`` bytes were added; prompts may end anywhere, even inside a token."""
    if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, (int, np.integer)) or max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be an int >= 0, got {max_new_bytes!r}")
    x, v, mv, context, eos = _check(model, tok, prefix_bytes, context_ids, eos_id)
    for _ in range(int(max_new_bytes)):
        b = int(np.argmax(byte_logprobs(model, tok, x, context_ids=context, eos_id=eos)))
        if b == END:
            break
        x += bytes([b])
    return x
