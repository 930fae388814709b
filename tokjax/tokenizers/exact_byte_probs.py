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
Only split points whose covers can reach byte n are scored (some token starts with x[j:] and overhangs n).
Their rows ``context + enc(x[:j])`` share all but their last tokens: one prefill of the shared tokens (a KV
cache in ``tokjax.generate``'s layout, ``KVCache.fork`` per row) and one cached forward of the rows' tails give
both P(enc(x[:j]) | context) and the next-token distribution, in shapes bucketed to powers of two.

The naive baseline :func:`naive_byte_logprobs` conditions on ``enc(x)`` only and groups next tokens by their first
byte; it is wrong at a prompt boundary (after "ab" it gives 0 to "c" when "abc" would have been merged).

``model`` is a :class:`tokjax.model.Model` or any object with ``vocab_size`` and
``next_token_logprobs(sequences) -> float [N, V]`` (the log-probs of the next token after each id sequence; used by
the exact lookup LMs of the tests). The byte string is read after ``context_ids`` (default ``[tok.bos_id]``).

Regex pre-tokenizers (GPT-2 byte-level BPE: SmolLM2, tokjax's BPETokenizer). "A valid t_1..t_{k-1} that decodes
to x[:j] is enc(x[:j])" fails for whitespace runs: ``\\s+(?!\\S)`` keeps a trailing whitespace run whole at the
end of a text but splits its last character off before a word, so "a\\n\\nP" is [a][\\n][\\n][P] while
enc("a\\n\\n") is [a][\\n\\n]. Such split points get the second left encoding ``enc(x[:j-1]) + enc(x[j-1])``
as well (when x[:j] ends in >= 2 whitespace characters, the last not a space); without it the byte after a blank
line had probability 0. Both encodings are distinct token sequences, so nothing is counted twice.

Whole texts (:func:`byte_conditionals`, used by :func:`byte_text_logprob`): every ``enc(x[:j])`` is scored once
by batched cache-free forwards over [8, T] blocks (T a multiple of 32), and each split point's valid-last-token
mask is computed once instead of once per byte. For regex pre-tokenizers the mask is computed on a short tail:
the GPT-2 regex always cuts between a non-space character and a space, or between characters of different
classes (letter / digit / other ASCII, except after an apostrophe), whatever follows, and has no look-behind, so
``enc(s) = enc(s[:c]) + enc(s[c:])`` at such a cut c; the mask then depends on the tail after the last cut
(cached per tail), ids whose first character is at such a cut after the tail are valid iff ``enc(bytes(t)) ==
[t]`` (cached per id), and only the rest are re-encoded. The slow per-id check stays the reference (tests
compare the two on prose and code). Measured on one loaded CPU core: a 64-byte passage costs ~15-30 s with
SmolLM2 (49152 ids; the forwards dominate once the per-tail masks are cached) and ~0.1-2 s with tiny-pydocs;
:func:`byte_generate` carries the scored split points from byte to byte (one new split point per byte).

Ensembles: the equal-weight byte-level ensemble of models with different vocabularies is the average of their
next-byte distributions, (p_1(b | x) + p_2(b | x)) / 2 (experiments/p11_exact_byte_probs.py; the official
generate.py that combines models was not in the searched index, so the equal probability average is our
reading of the paper, unverified).

Baselines: :func:`naive_byte_logprobs` and :func:`token_healing`. Not done: FIM prompts with a suffix, and split
points inside a UTF-8 character (skipped, as in the official code: ``enc`` is only defined on text).
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

from tokjax.model import Inputs, Model, decode_layout, forward, prefill

__all__ = [
    "END", "ByteVocab", "byte_conditionals", "byte_logprobs", "byte_prefix_logprob", "byte_text_logprob",
    "byte_generate",
    "naive_byte_logprobs", "is_canonical", "token_healing",
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


# ---------------------------------------------------------------------------------------------------- fast masks
# Characters of the GPT-2 pre-tokenizer regex
# ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+) by class;
# only ASCII characters are classified (anything else takes the slow path).
_CLASS = {**{c: "L" for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}, **{c: "N" for c in "0123456789"},
          **{c: "W" for c in " \t\n\r\x0b\x0c"}, **{c: "P" for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}}


def _boundary(a: str, b: str) -> bool:
    """True if the GPT-2 regex always cuts between the characters a and b (whatever follows b): a is not
    whitespace, and b is whitespace or of another class (letter / digit / other), except after an apostrophe
    (contractions). A match never spans such a pair and the regex has no look-behind, so the pieces before the
    cut do not depend on the text after it and those after it do not depend on the text before it."""
    ca, cb = _CLASS.get(a), _CLASS.get(b)
    return ca is not None and cb is not None and ca != "W" and (cb == "W" or (ca != cb and a != "'"))


def _regex_pretokenized(tok: Any) -> bool:
    """True if ``tok`` is a Hugging Face byte-level BPE whose pre-tokenizer is the GPT-2 regex, alone or after a
    digit split (tokjax's BPETokenizer / ChatBPETokenizer, SmolLM2), with no normalizer: then ``enc(s) =
    enc(s[:c]) + enc(s[c:])`` at every cut c where :func:`_boundary` holds."""
    import json

    hf = getattr(tok, "_hf", None)
    if hf is None or not hasattr(hf, "to_str"):
        return False
    try:
        spec = json.loads(hf.to_str())
    except Exception:  # noqa: BLE001 - an unreadable spec only disables the fast path
        return False
    if spec.get("normalizer") is not None or (spec.get("model") or {}).get("type") != "BPE":
        return False
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not parts:
        return False
    *splits, last = parts
    if last.get("type") != "ByteLevel" or not last.get("use_regex", True) or last.get("add_prefix_space"):
        return False
    from tokjax.tokenizers._digits import digit_policy_from_pattern

    for sp in splits:  # digit splits only add cuts between digits and non-digits / inside digit runs
        if sp.get("type") == "Digits":
            continue
        pat = (sp.get("pattern") or {}).get("Regex")
        if sp.get("type") == "Split" and sp.get("behavior") == "Isolated" and pat is not None \
                and digit_policy_from_pattern(pat) is not None:
            continue
        return False
    return True


def _last_cut(left: str) -> int:
    """Returns the last index c where the regex always splits ``left`` (0 if none): enc(left) is
    enc(left[:c]) + enc(left[c:])."""
    for c in range(len(left) - 1, 0, -1):
        if _boundary(left[c - 1], left[c]):
            return c
    return 0


class _Masks:
    """Per-tokenizer cache of valid-last-token masks (``enc(left) + [t]`` valid, for every id t).

    Slow path: one canonical encode of ``left + bytes(t)`` per id (:func:`_valid_last`). Fast path (tokenizers
    with :func:`_regex_pretokenized`): cut ``left`` at its last :func:`_boundary`; the mask then depends on the
    tail after the cut only (cached per tail). Ids whose first character is at a boundary after the tail are
    valid iff ``enc(bytes(t)) == [t]`` (cached per id); the others are checked by encoding ``tail + bytes(t)``
    (a short text). Exactly the slow path's answer (tested)."""

    def __init__(self, tok: Any, v: ByteVocab):
        self.tok, self.v = tok, v
        self.fast = _regex_pretokenized(tok)
        self.tails: dict[Any, np.ndarray] = {}
        ids = v.sorted_ids
        self.has_bytes = np.zeros(v.vocab_size, bool)
        self.has_bytes[ids] = True
        self._single: np.ndarray | None = None
        first = [_text(v.id_to_bytes[i][:1]) for i in range(v.vocab_size)]
        self.first_char = np.array([c if c else "" for c in first], object)

    def single(self) -> np.ndarray:
        """[V] bool: ``[t]`` alone is valid (``enc(bytes(t)) == [t]``; undecodable bytes as in is_canonical)."""
        if self._single is None:
            self._single = self._check("", [], np.flatnonzero(self.has_bytes))
        return self._single

    def _check(self, left: str, left_ids: list[int], cands: np.ndarray) -> np.ndarray:
        out = np.zeros(self.v.vocab_size, bool)
        out[cands] = _valid_last(self.tok, self.v, left.encode("utf-8"), left_ids, cands)
        return out

    def mask(self, left: str, left_ids: list[int]) -> np.ndarray:
        """Returns the [V] bool mask of ids t with ``left_ids + [t]`` valid (``left_ids = enc(left)``)."""
        all_ids = np.flatnonzero(self.has_bytes)
        if not self.fast:
            return self._check(left, left_ids, all_ids)
        tail = left[_last_cut(left):]
        hit = self.tails.get(tail)
        if hit is not None:
            return hit
        tail_ids = _encode_many(self.tok, [tail])[0] if tail else []
        if not tail:
            out = self.single().copy()
        else:
            a = tail[-1]
            at_cut = np.array([bool(f) and _boundary(a, f) for f in self.first_char], bool) & self.has_bytes
            out = np.where(at_cut, self.single(), False)
            rest = np.flatnonzero(self.has_bytes & ~at_cut)
            out |= self._check(tail, tail_ids, rest)
        if len(self.tails) >= 512:
            self.tails.pop(next(iter(self.tails)))
        self.tails[tail] = out
        return out


    def alt_left(self, left: str) -> list[int] | None:
        """Returns the second valid encoding of ``left`` that regex pre-tokenizers have, or None.

        The GPT-2 regex's ``\\s+(?!\\S)`` keeps a whitespace run whole at the end of a text, but before a
        non-space character it splits the run's last character off: "a\\n\\nP" is [a][\\n][\\n][P] while
        enc("a\\n\\n") is [a][\\n\\n]. So when ``left`` ends in >= 2 whitespace characters and the last is not
        a space (a space joins the next word, a cover of the previous split point), the covers through
        ``enc(left[:-1]) + enc(left[-1])`` have mass too; ``enc(left)`` is the only other valid encoding."""
        if not self.fast or len(left) < 2 or left[-1] not in "\t\n\r\x0b\x0c" or _CLASS.get(left[-2]) != "W":
            return None
        a, b = _encode_many(self.tok, [left[:-1], left[-1]])
        return a + b

    def alt_mask(self, left: str, alt_ids: list[int]) -> np.ndarray:
        """:meth:`mask` for ``alt_ids`` = :meth:`alt_left` (``left``), cached per tail (e.g. "\\n\\n")."""
        tail = left[_last_cut(left):]
        hit = self.tails.get(("alt", tail))
        if hit is not None:
            return hit
        a, b = _encode_many(self.tok, [tail[:-1], tail[-1]])
        out = self._check(tail, a + b, np.flatnonzero(self.has_bytes))
        if len(self.tails) >= 512:
            self.tails.pop(next(iter(self.tails)))
        self.tails[("alt", tail)] = out
        return out


_MASKS: "weakref.WeakKeyDictionary[Any, _Masks]" = weakref.WeakKeyDictionary()


def _masks(tok: Any) -> _Masks:
    try:
        m = _MASKS.get(tok)
    except TypeError:
        return _Masks(tok, _vocab(tok))
    if m is None:
        m = _Masks(tok, _vocab(tok))
        _MASKS[tok] = m
    return m


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


@functools.partial(jax.jit, static_argnums=(1,))
def _batch_scores(params, cfg, tokens, lengths, start):
    """For rows ``tokens`` [B, T] (right-padded, true ``lengths`` [B]): sum of log P(tokens[k+1] | tokens[:k+1])
    over k in [start - 1, length - 1) and the next-token log-probs after the whole row [B, V]."""
    lp = jax.nn.log_softmax(forward(params, cfg, Inputs(tokens=tokens)).logits.astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(lp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    k = jnp.arange(tokens.shape[1] - 1)[None]
    seq = jnp.sum(jnp.where((k >= start - 1) & (k < lengths[:, None] - 1), tgt, 0.0), axis=1)
    nxt = jnp.take_along_axis(lp, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return seq, nxt


def _score_batched(model: Any, context: list[int], rows: list[list[int]], batch: int = 8
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (log P(row | context) [N], next-token log-probs [N, V]) of every row, for a tokjax Model by
    forwards over [batch, T] blocks of ``context + row`` (T a multiple of 32: few compiles, no cache)."""
    if not isinstance(model, Model):
        return _score_rows(model, context, rows, share=False)
    longest = len(context) + max(len(r) for r in rows)
    if longest > model.cfg.max_len:
        raise ValueError(f"context ({len(context)}) + encoded prefix ({longest - len(context)}) tokens exceed the "
                         f"model's max_len {model.cfg.max_len}")
    width = min(-(-longest // 32) * 32, model.cfg.max_len)
    seqs, nxts = [], []
    for lo in range(0, len(rows), batch):
        block = rows[lo:lo + batch]
        arr = np.zeros((batch, width), np.int32)
        lens = np.ones(batch, np.int32) * len(context)
        for i, r in enumerate(block):
            arr[i, :len(context) + len(r)] = context + r
            lens[i] = len(context) + len(r)
        arr[len(block):, :len(context)] = context
        seq, nxt = _batch_scores(model.params, model.cfg, jnp.asarray(arr), jnp.asarray(lens), len(context))
        seqs.append(np.asarray(seq, np.float64)[:len(block)])
        nxts.append(np.asarray(nxt, np.float64)[:len(block)])
    return np.concatenate(seqs), np.concatenate(nxts)


@functools.partial(jax.jit, static_argnums=(1, 4))
def _prefill_base(params, cfg, base, length, capacity):
    return prefill(params, cfg, base, length, capacity)


@functools.partial(jax.jit, static_argnums=(1,))
def _tail_scores(params, cfg, cache, x, lengths):
    """For rows ``x`` [N, W] fed after a one-row ``cache`` (x[:, 0] its pending token, then ``lengths`` [N] tail
    tokens, right-padded): sum of the tail tokens' log-probs and the next-token log-probs after each tail."""
    lp = jax.nn.log_softmax(forward(params, cfg, Inputs(tokens=x), cache=cache.fork(x.shape[0])).logits
                            .astype(jnp.float32), axis=-1)
    tgt = jnp.take_along_axis(lp[:, :-1], x[:, 1:, None], axis=-1)[..., 0]
    seq = jnp.sum(jnp.where(jnp.arange(x.shape[1] - 1)[None] < lengths[:, None], tgt, 0.0), axis=1)
    return seq, jnp.take_along_axis(lp, lengths[:, None, None], axis=1)[:, 0]


class _BaseCache:
    """Scores rows ``context + row`` of a tokjax Model against one prefilled KV cache of their common leading
    tokens (the base), forwarding only each row's tail: a byte generator's rows share all but their last few
    tokens. The base is re-chosen (a new prefill) when a row does not start with it or its tail outgrows
    ``REBASE_TAIL`` tokens (rows that share less than all but ``MAX_TAIL`` tokens take the cache-free path);
    results equal :func:`_score_batched` (log P(row | context), next-token log-probs)."""

    MAX_TAIL, REBASE_TAIL, KEEP_BACK, CHUNK = 96, 24, 8, 8

    def __init__(self, model: Model, context: list[int]):
        self.model, self.context = model, context
        self.params = decode_layout(model.params, fuse=True, cfg=model.cfg)  # tokjax.generate's cached-forward layout
        self.base: list[int] | None = None

    def _rebase(self, seqs: list[list[int]]) -> None:
        common = len(seqs[0])
        for s in seqs[1:]:
            common = next((i for i, (a, b) in enumerate(zip(seqs[0][:common], s)) if a != b), min(common, len(s)))
        # Leave a single row's last tokens out of the base: the next byte may re-merge them.
        common = max(len(self.context), common - (self.KEEP_BACK if len(seqs) == 1 else 0))
        cfg = self.model.cfg
        self.base = seqs[0][:common]
        width = min(max(64, _bucket(len(self.base))), cfg.max_len)  # powers of two: few compiled shapes
        self.capacity = min(width + self.MAX_TAIL + 32, cfg.max_len)
        arr = np.zeros((1, width), np.int32)
        arr[0, :len(self.base)] = self.base
        length = jnp.asarray([len(self.base)], jnp.int32)
        self.cache = _prefill_base(self.params, cfg, jnp.asarray(arr), length, self.capacity)
        self.base_lp = float(_score_batched(self.model, self.context, [self.base[len(self.context):]], batch=1)[0][0])

    def __call__(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        seqs = [self.context + r for r in rows]
        longest = max(len(s) for s in seqs)
        if longest > self.model.cfg.max_len:
            raise ValueError(f"context ({len(self.context)}) + encoded prefix ({longest - len(self.context)}) tokens "
                             f"exceed the model's max_len {self.model.cfg.max_len}")
        if self.base is None or any(s[:len(self.base)] != self.base or len(s) - len(self.base) > self.REBASE_TAIL
                                    for s in seqs):
            self._rebase(seqs)
        n = len(self.base)
        if n + self.MAX_TAIL + 1 > self.capacity or longest - n > self.MAX_TAIL:  # near max_len, or rows that
            return _score_batched(self.model, self.context, rows)  # share too little: the cache-free path
        seq_out, nxt_out = [], []
        for lo in range(0, len(seqs), self.CHUNK):
            block = seqs[lo:lo + self.CHUNK]
            tails = [s[n:] for s in block]
            width = max(8, _bucket(max(len(t) for t in tails) + 1))
            if n - 1 + width > self.capacity:  # the padded tail would run past the cache (near max_len)
                seq, nxt = _score_batched(self.model, self.context, [s[len(self.context):] for s in block])
                seq_out.append(seq)
                nxt_out.append(nxt)
                continue
            arr = np.zeros((_bucket(len(block)), width), np.int32)
            arr[:, 0] = self.base[-1]
            lens = np.zeros(len(arr), np.int32)
            for i, t in enumerate(tails):
                arr[i, 1:1 + len(t)] = t
                lens[i] = len(t)
            seq, nxt = _tail_scores(self.params, self.model.cfg, self.cache, jnp.asarray(arr), jnp.asarray(lens))
            seq_out.append(self.base_lp + np.asarray(seq, np.float64)[:len(block)])
            nxt_out.append(np.asarray(nxt, np.float64)[:len(block)])
        return np.concatenate(seq_out), np.concatenate(nxt_out)


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
    masks = _masks(tok)
    lefts = []
    for j, left_ids in zip(js, encs):
        lefts.append((j, left_ids))
        alt = masks.alt_left(x[:j].decode("utf-8"))
        if alt is not None and alt != left_ids:
            lefts.append((j, alt))
    splits, rows, cands = [], [], []
    for j, left_ids in lefts:
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
    covers = _Covers(model, tok, v, context, eos, cached=True)
    covers.add(x, _live_splits(x, v, covers.lens))
    return covers.next_byte(x, len(x))


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
    _, nxt = _score_batched(model, context, [list(tok.encode(text))], batch=1)
    lp = nxt[0, : v.vocab_size]
    out = np.full(257, -np.inf)
    for b in np.unique(v.first_byte[v.first_byte >= 0]):
        out[b] = np.logaddexp.reduce(lp[v.first_byte == b])
    if eos is not None:
        out[END] = lp[eos]
    total = np.logaddexp.reduce(out)
    return out - total


def token_healing(model: Any, tok: Any, prefix_bytes: bytes, *, context_ids: Sequence[int] | None = None
                  ) -> list[int]:
    """Returns the token-healed prompt ids: ``context + enc(prefix)`` with its last token t replaced by the most
    likely token (greedy) whose bytes start with bytes(t) (the prompt-boundary baseline of P11: back off one
    token, then a constrained first step; the caller generates on from the returned ids). A prompt that
    encodes to no token returns the context."""
    x, v, mv, context, _ = _check(model, tok, prefix_bytes, context_ids, None)
    text = _text(x)
    if text is None:
        raise ValueError("token_healing needs prefix_bytes that are valid UTF-8 (it tokenizes the prefix)")
    ids = list(tok.encode(text))
    if not ids:
        return context
    cands = v.starting_with(v.id_to_bytes[ids[-1]])
    if len(cands) == 0:  # a special token: nothing to heal
        return context + ids
    _, nxt = _score_batched(model, context, [ids[:-1]], batch=1)
    return context + ids[:-1] + [int(cands[int(np.argmax(nxt[0][cands]))])]


def byte_text_logprob(model: Any, tok: Any, text_bytes: bytes, *, context_ids: Sequence[int] | None = None,
                      eos_id: Any = _DEFAULT, include_end: bool = False) -> float:
    """Returns sum_i log P(x_i | x_<i) over the bytes of ``text_bytes`` (chained :func:`byte_logprobs`), plus
    log P(end | x) when ``include_end``. Divide by ``-len(text_bytes) * log(2)`` for bits per byte."""
    x, v, mv, context, eos = _check(model, tok, text_bytes, context_ids, eos_id)
    lp = byte_conditionals(model, tok, x, context_ids=context, eos_id=eos)
    n = len(x)
    return float(lp[np.arange(n), np.frombuffer(x, np.uint8)].sum() + (lp[n, END] if include_end else 0.0))


def _grouped_logsumexp(terms: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """out[k] = logsumexp(terms[keys == k]) (-inf where empty), for int keys in [0, size)."""
    out = np.full(size, -np.inf)
    if len(terms) == 0:
        return out
    order = np.argsort(keys, kind="stable")
    k, t = keys[order], terms[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    out[k[starts]] = np.logaddexp.reduceat(t, starts)
    return out


class _Covers:
    """The left encodings ``enc(x[:j])`` of a byte string that grows at its end, each scored once, and the
    next-byte cover sums built from them (shared by :func:`byte_conditionals` and :func:`byte_generate`).

    Scores are log P(enc(x[:j]) | context) and the next-token log-probs after it, from batched cache-free
    forwards (:func:`_score_batched`); each split point's valid-last-token mask is computed once, on first use.
    Appending bytes never changes an earlier split point's encoding, so a generator scores one new split point
    per byte (two after a whitespace run with a second encoding)."""

    def __init__(self, model: Any, tok: Any, v: ByteVocab, context: list[int], eos: int | None,
                 cached: bool = False):
        self.model, self.tok, self.v, self.context, self.eos = model, tok, v, context, eos
        self.base = _BaseCache(model, context) if cached and isinstance(model, Model) else None
        self.masks = _masks(tok)
        self.lens = np.array([len(b) for b in v.id_to_bytes])
        self.lefts: dict[int, tuple[int, list[int], bool]] = {}  # row -> (split point, left ids, second encoding?)
        self.seq_lp: dict[int, float] = {}
        self.nxt: dict[int, np.ndarray] = {}
        self.by_j: dict[int, list[int]] = {}
        self.valid: dict[int, np.ndarray] = {}
        self._rows = 0

    def add(self, x: bytes, js: Sequence[int], batch: int = 8) -> None:
        """Scores the split points ``js`` of ``x`` (those where ``x[:j]`` is valid UTF-8)."""
        js = [j for j in js if _text(x[:j]) is not None]
        if not js:
            return
        new = []
        for j, left_ids in zip(js, _encode_many(self.tok, [x[:j].decode("utf-8") for j in js])):
            new.append((j, left_ids, False))
            alt = self.masks.alt_left(x[:j].decode("utf-8"))
            if alt is not None and alt != left_ids:
                new.append((j, alt, True))
        rows = [ids for _, ids, _ in new]
        seq_lp, nxt = (self.base(rows) if self.base is not None
                       else _score_batched(self.model, self.context, rows, batch=min(batch, _bucket(len(new)))))
        for row, s_lp, lp in zip(new, seq_lp, nxt):
            k, self._rows = self._rows, self._rows + 1
            self.lefts[k], self.seq_lp[k], self.nxt[k] = row, float(s_lp), lp
            self.by_j.setdefault(row[0], []).append(k)

    def drop_before(self, j0: int) -> None:
        """Forgets the split points below ``j0`` (no longer reachable by a token of at most ``max_len`` bytes)."""
        for j in [j for j in self.by_j if j < j0]:
            for k in self.by_j.pop(j):
                for d in (self.lefts, self.seq_lp, self.nxt, self.valid):
                    d.pop(k, None)

    def next_byte(self, x: bytes, i: int) -> np.ndarray:
        """Returns the normalised [257] next-byte log-probs after ``x[:i]`` from the scored split points."""
        v, lens, eos = self.v, self.lens, self.eos
        acc = np.full(257, -np.inf)
        for j in range(max(0, i - v.max_len + 1), i + 1):
            for k in self.by_j.get(j, ()):
                if k not in self.valid:
                    left, ids, alt = x[:j].decode("utf-8"), self.lefts[k][1], self.lefts[k][2]
                    self.valid[k] = self.masks.alt_mask(left, ids) if alt else self.masks.mask(left, ids)
                c = v.starting_with(x[j:i])
                c = c[(lens[c] > i - j) & self.valid[k][c]]
                if len(c):
                    nb = np.array([v.id_to_bytes[t][i - j] for t in c.tolist()]) if j < i else v.first_byte[c]
                    acc[:256] = np.logaddexp(acc[:256], _grouped_logsumexp(self.seq_lp[k] + self.nxt[k][c], nb, 256))
                if j == i and eos is not None:
                    acc[END] = np.logaddexp(acc[END], self.seq_lp[k] + self.nxt[k][eos])
        total = np.logaddexp.reduce(acc)
        if not np.isfinite(total):
            raise ValueError(f"the model gives no mass to any continuation of {x[:i][-20:]!r}")
        return acc - total


def _live_splits(x: bytes, v: ByteVocab, lens: np.ndarray) -> list[int]:
    """Returns the split points j <= n = len(x) whose covers can reach byte n: j = n, and j < n where some token
    starts with x[j:] and overhangs n (then also for every later byte): most of the max_len window is dead
    before any model call."""
    n = len(x)
    return [j for j in range(max(0, n - v.max_len + 1), n)
            if (c := v.starting_with(x[j:])).size and (lens[c] > n - j).any()] + [n]


def byte_conditionals(model: Any, tok: Any, text_bytes: bytes, *, context_ids: Sequence[int] | None = None,
                      eos_id: Any = _DEFAULT) -> np.ndarray:
    """Returns float64 [n + 1, 257]: row i is :func:`byte_logprobs` after ``text_bytes[:i]`` (i = 0..n), for all
    prefixes of one text at once. Same cover sums; the model scores each ``enc(x[:j])`` once (batched forwards
    over [8, T] blocks) and each split point's valid-last-token mask is computed once (cached by the fast
    canonicality path of regex pre-tokenizers), instead of per byte."""
    x, v, mv, context, eos = _check(model, tok, text_bytes, context_ids, eos_id)
    n = len(x)
    covers = _Covers(model, tok, v, context, eos)
    covers.add(x, range(n + 1))
    out = np.full((n + 1, 257), -np.inf)
    for i in range(n + 1):
        out[i] = covers.next_byte(x, i)
        covers.valid = {k: m for k, m in covers.valid.items() if covers.lefts[k][0] > i - v.max_len + 1}
    return out


def byte_generate(model: Any, tok: Any, prefix_bytes: bytes, max_new_bytes: int, *,
                  context_ids: Sequence[int] | None = None, eos_id: Any = _DEFAULT,
                  stop: bytes | Sequence[bytes] = ()) -> bytes:
    """Returns ``prefix_bytes`` extended greedily byte by byte (argmax of the exact next-byte distribution,
    :func:`byte_logprobs`) until the end of text wins, a ``stop`` byte string (e.g. ``b"\n"``) ends the output
    (kept), or ``max_new_bytes`` bytes were added; prompts may end anywhere, even inside a token.

    Incremental: the split points of the prompt's last ``max_len`` bytes are scored once, then one new split
    point per generated byte, and split points more than the longest token behind are dropped. A tokjax Model
    prefills the rows' common leading tokens once (KV cache) and forwards only each row's last tokens, in
    shapes bucketed to multiples of 32 (no compile per byte)."""
    if isinstance(max_new_bytes, bool) or not isinstance(max_new_bytes, (int, np.integer)) or max_new_bytes < 0:
        raise ValueError(f"max_new_bytes must be an int >= 0, got {max_new_bytes!r}")
    stops = [stop] if isinstance(stop, (bytes, bytearray)) else list(stop)
    if any(not isinstance(s, (bytes, bytearray)) or not s for s in stops):
        raise ValueError(f"stop must be a non-empty bytes string or a list of them, got {stop!r}")
    x, v, mv, context, eos = _check(model, tok, prefix_bytes, context_ids, eos_id)
    n0 = len(x)
    covers = _Covers(model, tok, v, context, eos, cached=True)
    covers.add(x, _live_splits(x, v, covers.lens))
    for _ in range(int(max_new_bytes)):
        b = int(np.argmax(covers.next_byte(x, len(x))))
        if b == END:
            break
        x += bytes([b])
        if any(x[n0:].endswith(s) for s in stops):
            break
        covers.drop_before(len(x) - v.max_len + 1)
        covers.add(x, [len(x)])
    return x
