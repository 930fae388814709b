"""Shared helpers for vocabulary-transfer methods (P24 TokenAdapt, P26 ZeTT, P39 dynamic tokenization).

* :func:`check_byte_tables` / :func:`check_byte_coverage` -- the byte-level preconditions, with clear errors.
* :func:`decompose_vocab` -- each new token's bytes re-tokenized by the old tokenizer ("surface form matrix").
* :func:`mean_of_parts` -- the FVT baseline (mean of the old embeddings of a token's parts), jit-compatible.
* :func:`random_embeddings` -- Normal(mean, std of the old table) rows, the usual "random init" baseline.
* :func:`eval_windows` / :func:`bits_per_byte` -- per-byte cross-entropy, the only fair comparison across tokenizers.
* :func:`with_vocab` -- a Model whose vocabulary tables are replaced (what ``transfer`` functions return).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses import token_stats
from tokjax.model import Model, ModelConfig, masked_mean

_LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """Each token of a new vocabulary written as old ids (ZeTT's "surface form matrix").

    ``ids`` int32 [V_new, maxlen] (``-1`` past ``lengths``), ``lengths`` int32 [V_new] (0 for rows with no
    decomposition: unused ids and special tokens with no counterpart), ``truncated`` bool [V_new],
    ``exact`` int32 [V_new]: the old id whose bytes equal the new token's (or the old special token of the
    same role), else -1.
    """

    ids: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    exact: np.ndarray

    @property
    def maxlen(self) -> int:
        return int(self.ids.shape[1])


# --------------------------------------------------------------------------------- checks
def check_byte_tables(tokenizer: Any, what: str = "tokenizer") -> list[bytes]:
    """Returns ``tokenizer.id_to_bytes`` after checking the tokenizer has usable byte tables.

    A byte-level transform needs ``id_to_bytes`` (one ``bytes`` per id, ``vocab_size`` long) and
    ``bytes_to_id``; anything else raises ValueError naming what is missing.
    """
    try:
        table = tokenizer.id_to_bytes
        inverse = tokenizer.bytes_to_id
        size = int(tokenizer.vocab_size)
    except Exception as err:  # a missing attribute or a property that raises
        raise ValueError(
            f"{what} ({type(tokenizer).__name__}) has no byte tables: byte-level vocabulary transfer needs "
            f"id_to_bytes, bytes_to_id and vocab_size (BPETokenizer or ByteTokenizer); got {err!r}"
        ) from None
    if not isinstance(inverse, dict):
        raise ValueError(f"{what}.bytes_to_id must be a dict bytes -> id, got {type(inverse).__name__}")
    if not isinstance(table, (list, tuple)) or len(table) != size:
        raise ValueError(
            f"{what}.id_to_bytes must be a list of {size} bytes (one per id), got "
            f"{type(table).__name__} of length {len(table) if hasattr(table, '__len__') else '?'}"
        )
    for i, b in enumerate(table):
        if not isinstance(b, bytes):
            raise ValueError(f"{what}.id_to_bytes[{i}] must be bytes, got {type(b).__name__}")
    return list(table)


def check_byte_coverage(tokenizer: Any, what: str = "tokenizer") -> None:
    """Returns None if every single byte 0..255 is a token of ``tokenizer``; ValueError listing the lost bytes."""
    check_byte_tables(tokenizer, what)
    inverse = tokenizer.bytes_to_id
    missing = [b for b in range(256) if bytes([b]) not in inverse]
    if missing:
        shown = ", ".join(f"0x{b:02x}" for b in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{what} loses bytes: {len(missing)} of the 256 single bytes have no token ({shown}); "
            f"vocabulary transfer needs a byte-complete vocabulary so every text stays representable"
        )


def special_counterparts(new_tok: Any, old_tok: Any) -> dict[int, int]:
    """Returns {new special id: old special id} matched by role (bos/eos/pad), then by token name."""
    out: dict[int, int] = {}
    for role in ("bos_id", "eos_id", "pad_id"):
        n, o = getattr(new_tok, role, None), getattr(old_tok, role, None)
        if n is not None and o is not None:
            out.setdefault(int(n), int(o))
    new_names = getattr(new_tok, "special_tokens", ())
    for name in new_names:
        n = _token_to_id(new_tok, name)
        o = _token_to_id(old_tok, name)
        if n is not None and o is not None and o in old_tok.special_ids:
            out.setdefault(int(n), int(o))
    return out


def _token_to_id(tok: Any, name: str) -> int | None:
    fn = getattr(tok, "token_to_id", None)
    return None if fn is None else fn(name)


# ------------------------------------------------------------------------- decomposition
def _byte_encoder() -> dict[int, str]:
    from tokjax.tokenizers._bpe import _byte_decoder

    return {b: c for c, b in _byte_decoder().items()}


def old_tokenize_bytes(old_tok: Any, data: bytes) -> list[int]:
    """Returns old ids whose bytes concatenate to ``data``: the old BPE model run on these bytes, else greedy longest match.

    The BPE model is applied to the bytes as one piece (no pre-tokenization), as ZeTT's
    ``get_surface_form_matrix`` does; tokenizers without a Hugging Face model (ByteTokenizer) and
    any mismatch fall back to greedy longest-prefix matching on ``bytes_to_id``.
    """
    if not data:
        return []
    table = old_tok.id_to_bytes
    hf = getattr(old_tok, "hf", None)
    if hf is not None:
        try:
            enc = _byte_encoder()
            pieces = hf.model.tokenize("".join(enc[b] for b in data))
            ids = [int(p.id) for p in pieces]
            if b"".join(table[i] for i in ids) == data:
                return ids
        except Exception:  # an exotic model/alphabet: the greedy path below is always valid
            pass
    inverse = old_tok.bytes_to_id
    longest = max((len(b) for b in inverse), default=1)
    ids, pos = [], 0
    while pos < len(data):
        for size in range(min(longest, len(data) - pos), 0, -1):
            i = inverse.get(data[pos : pos + size])
            if i is not None:
                ids.append(int(i))
                pos += size
                break
        else:
            raise ValueError(f"old tokenizer cannot represent byte 0x{data[pos]:02x}")
    return ids


def decompose_vocab(new_tok: Any, old_tok: Any, maxlen: int = 8) -> Decomposition:
    """Returns every new token's decomposition into old ids (rows of ``maxlen``; see :class:`Decomposition`).

    Both tokenizers must have byte tables and cover all 256 bytes (ValueError otherwise). A new
    special token maps to the old special token of the same role or name (length 1), or to nothing.
    """
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"maxlen must be a positive int, got {maxlen!r}")
    new_table = check_byte_tables(new_tok, "new tokenizer")
    check_byte_tables(old_tok, "old tokenizer")
    check_byte_coverage(new_tok, "new tokenizer")
    check_byte_coverage(old_tok, "old tokenizer")
    specials = special_counterparts(new_tok, old_tok)
    new_special = new_tok.special_ids
    old_inverse = old_tok.bytes_to_id
    V = len(new_table)
    ids = np.full((V, maxlen), -1, np.int32)
    lengths = np.zeros((V,), np.int32)
    truncated = np.zeros((V,), bool)
    exact = np.full((V,), -1, np.int32)
    for i, b in enumerate(new_table):
        if i in new_special:
            if i in specials:
                ids[i, 0], lengths[i], exact[i] = specials[i], 1, specials[i]
            continue
        if not b:
            continue
        parts = old_tokenize_bytes(old_tok, b)
        if old_inverse.get(b) is not None:
            exact[i] = old_inverse[b]
        k = min(len(parts), maxlen)
        ids[i, :k] = parts[:k]
        lengths[i] = k
        truncated[i] = len(parts) > maxlen
    return Decomposition(ids=ids, lengths=lengths, truncated=truncated, exact=exact)


# ----------------------------------------------------------------------- embedding inits
@jax.jit
def mean_of_parts(old_table: jax.Array, ids: jax.Array, lengths: jax.Array) -> jax.Array:
    """Returns [N, D]: row n is the mean of ``old_table[ids[n, :lengths[n]]]`` (FVT), or the table mean when empty.

    FVT (Gee et al. 2022), the baseline of P24/P26/P39: e(t) = (1/|T_old(t)|) sum_{s in T_old(t)} E_old[s].
    """
    valid = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
    rows = jnp.take(old_table, jnp.clip(ids, 0, old_table.shape[0] - 1), axis=0).astype(jnp.float32)
    fallback = jnp.mean(old_table.astype(jnp.float32), axis=0)
    empty = (lengths <= 0)[:, None]
    return jnp.where(empty, fallback, masked_mean(rows, valid, axis=1)).astype(old_table.dtype)


def random_embeddings(key: jax.Array, old_table: jax.Array, n: int) -> jax.Array:
    """Returns [n, D] rows drawn from Normal(mean, std) of ``old_table`` (TokenAdapt's fallback, the random baseline)."""
    mu = jnp.mean(old_table)
    sd = jnp.std(old_table)
    return (mu + sd * jax.random.normal(key, (n, old_table.shape[1]))).astype(old_table.dtype)


def with_vocab(model: Model, embedding: jax.Array, head: jax.Array | None = None) -> Model:
    """Returns a copy of ``model`` whose vocabulary is ``embedding`` [V', D] (and ``head`` [D, V'] when untied)."""
    cfg = model.cfg
    embedding = jnp.asarray(embedding)
    if embedding.ndim != 2 or embedding.shape[1] != cfg.d_model:
        raise ValueError(f"embedding must be [V', d_model={cfg.d_model}], got {embedding.shape}")
    params = dict(model.params)
    params["embed"] = embedding.astype(model.params["embed"].dtype)
    if not cfg.tied_embeddings:
        if head is None:
            raise ValueError("the model has an untied lm_head: pass head [d_model, V'] as well")
        if head.shape != (cfg.d_model, embedding.shape[0]):
            raise ValueError(f"head must be [{cfg.d_model}, {embedding.shape[0]}], got {head.shape}")
        params["lm_head"] = jnp.asarray(head).astype(model.params["lm_head"].dtype)
    return Model(params=params, cfg=cfg.replace(vocab_size=int(embedding.shape[0])))


# ------------------------------------------------------------------------ bits per byte
@dataclasses.dataclass(frozen=True)
class EvalWindows:
    """Evaluation windows of a text: ``tokens`` int32 [N, T+1] (bos + text, pad after), ``mask`` float32 [N, T]
    over the targets, and ``num_bytes``, the UTF-8 bytes of the text they cover (the bits-per-byte denominator)."""

    tokens: np.ndarray
    mask: np.ndarray
    num_bytes: int

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def eval_windows(tokenizer: Any, docs: Sequence[str], seq_len: int) -> EvalWindows:
    """Returns every document cut into chunks of ``seq_len`` tokens, each chunk prefixed by bos and padded.

    Every text token is a target exactly once, so the summed loss divided by the documents' UTF-8
    bytes is a per-byte cross-entropy that is comparable across tokenizers.
    """
    if tokenizer.bos_id is None or tokenizer.pad_id is None:
        raise ValueError("eval_windows needs a tokenizer with bos and pad tokens")
    rows, masks, nbytes = [], [], 0
    for doc in docs:
        ids = tokenizer.encode(doc)
        nbytes += len(doc.encode("utf-8"))
        for s in range(0, len(ids), seq_len):
            chunk = ids[s : s + seq_len]
            row = np.full(seq_len + 1, tokenizer.pad_id, np.int32)
            row[0] = tokenizer.bos_id
            row[1 : 1 + len(chunk)] = chunk
            m = np.zeros(seq_len, np.float32)
            m[: len(chunk)] = 1.0
            rows.append(row)
            masks.append(m)
    if not rows:
        raise ValueError("eval_windows got no text")
    return EvalWindows(np.stack(rows), np.stack(masks), nbytes)


@functools.partial(jax.jit, static_argnums=(1,))
def _nll_sum(params, cfg, tokens, mask, embedding, head, logit_bias):
    stats = token_stats(params, cfg, {"tokens": tokens, "mask": mask}, embedding=embedding, head=head,
                        logit_bias=logit_bias)
    return -jnp.sum(jnp.where(stats.mask, stats.logp, 0.0))


def nll_sum(
    params: Any,
    cfg: ModelConfig,
    tokens: np.ndarray,
    mask: np.ndarray,
    *,
    embedding: jax.Array | None = None,
    head: jax.Array | None = None,
    logit_bias: jax.Array | None = None,
    batch_size: int = 32,
) -> float:
    """Returns the summed next-token NLL (nats) of ``tokens`` [N, T+1] over ``mask`` [N, T], batched.

    ``embedding``/``head``/``logit_bias`` override the vocabulary tables (tokenizer transfer); the
    batch is padded to a fixed size so a sweep compiles once.
    """
    tokens = np.asarray(tokens, np.int32)
    mask = np.asarray(mask, np.float32)
    if embedding is not None and head is None and cfg.tied_embeddings:
        head = jnp.asarray(embedding).T
    total = 0.0
    for s in range(0, tokens.shape[0], batch_size):
        t, m = tokens[s : s + batch_size], mask[s : s + batch_size]
        if t.shape[0] < batch_size:  # pad with masked rows: one compiled shape
            pad = batch_size - t.shape[0]
            t = np.concatenate([t, np.repeat(t[:1], pad, 0)])
            m = np.concatenate([m, np.zeros((pad, m.shape[1]), np.float32)])
        total += float(_nll_sum(params, cfg, jnp.asarray(t), jnp.asarray(m), embedding, head, logit_bias))
    return total


def bits_per_byte(
    params: Any,
    cfg: ModelConfig,
    windows: EvalWindows,
    *,
    embedding: jax.Array | None = None,
    head: jax.Array | None = None,
    logit_bias: jax.Array | None = None,
    batch_size: int = 32,
) -> float:
    """Returns the cross-entropy of ``windows`` in bits per UTF-8 byte (summed NLL / ln 2 / bytes)."""
    nats = nll_sum(params, cfg, windows.tokens, windows.mask, embedding=embedding, head=head,
                   logit_bias=logit_bias, batch_size=batch_size)
    return nats / _LN2 / windows.num_bytes
