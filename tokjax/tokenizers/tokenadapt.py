"""P24 TokenAdapt: Achieving Tokenizer Flexibility in Language Models through Heuristic Adaptation and
Supertoken Learning (Sharthak et al., arXiv 2505.09738).

Initialises the embeddings of a new vocabulary for a frozen model. Tokens whose bytes are an old
token copy its row. Every other ("unique") token t mixes two estimates, computed in an auxiliary
embedding space phi (the paper embeds token strings with an external text-embedding model):

    local:  T_old(t) = (s_1 .. s_n)   (t re-tokenized by the old tokenizer)
            c_i = cos(phi(s_i), phi(t)) * [cos >= 0.7 * threshold] + 1/n + min(|s_i| / |t|, 1)
            w = softmax(c / temperature);           e_local = sum_i w_i E_old[s_i]
    global: N = top-k old tokens by cos(phi(t), phi(old)),  kept when cos >= threshold
            w = softmax(cos / temperature) over N;  e_global = sum_j w_j E_old[j]
    e(t) = (1 - global_weight) e_local + global_weight e_global   (e_local alone when N is empty)

(scores and defaults -- temperature 0.3, k 10, global_weight 0.3, threshold 0.6 -- follow the
official ``aloobun/tokenadapt`` code, ``src/heuristics.py`` / ``src/transplant.py``; an earlier
version there scored the local parts by (cos + length ratio) / 2). Lengths are counted in bytes.
Tokens with nothing to decompose get Normal(mean, std) of the old table, as in the official code.

The auxiliary space phi is an input (:func:`tokenadapt_aux`, or arrays passed to
:func:`tokenadapt_transfer`): ``"hidden"``, the transferred model's own mean-pooled final hidden
state of the text (:func:`aux_embeddings`); ``"embedding"``, the old input embeddings (a new token
is the mean of its parts); ``"tfidf"``, byte n-gram tf-idf vectors of the token strings
(:func:`byte_ngram_tfidf`); or any external embedder's vectors as a pair of arrays -- e.g. a real
language model's mean-pooled hidden states, computed by the caller (this module does not load
pretrained models: :mod:`tokjax.pretrained` sits above the tokenizers).

Supertokens (the paper's second contribution: a learned pre-tokenization that lets multi-word tokens
form, for compression) are a property of the new tokenizer, not of this initialiser: tokjax learns
them with ``BPETokenizer.train(texts, vocab_size, max_words=2)`` (pre-tokenization into runs of up to
two words, so merges cross word boundaries), and this module initialises a supertoken's embedding
like any other unique token (its parts are the old tokens of its bytes, spaces included).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Model, forward, masked_mean
from tokjax.tokenizers._vocab_transfer import (
    check_byte_tables,
    decompose_vocab,
    mean_of_parts,
    random_embeddings,
    with_vocab,
)

__all__ = ["tokenadapt_embeddings", "aux_embeddings", "byte_ngram_tfidf", "tokenadapt_aux", "tokenadapt_transfer"]

_NEG = -1e9


def _normalize(x, eps=1e-8):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("top_k",))
def tokenadapt_embeddings(
    old_table: jax.Array,
    ids: jax.Array,
    lengths: jax.Array,
    exact: jax.Array,
    part_ratio: jax.Array,
    aux_new: jax.Array,
    aux_old: jax.Array,
    fallback: jax.Array,
    *,
    temperature: Any = 0.3,
    global_weight: Any = 0.3,
    threshold: Any = 0.6,
    old_mask: jax.Array | None = None,
    top_k: int = 10,
) -> jax.Array:
    """Returns [N, D] TokenAdapt embeddings (P24 local + global hybrid heuristic, see the module docstring).

    ``ids`` [N, L] old-id decompositions (-1 padding, ``lengths`` [N]); ``exact`` [N] old id to copy
    (-1: none); ``part_ratio`` [N, L] = bytes(s_i) / bytes(t); ``aux_new`` [N, A] and ``aux_old``
    [V_old, A] auxiliary embeddings (a part s_i uses ``aux_old[s_i]``); ``fallback`` [N, D] rows for
    tokens with an empty decomposition; ``old_mask`` [V_old] bool: old tokens allowed as global
    neighbours (default all). ``temperature``, ``global_weight`` and ``threshold`` are runtime values.
    """
    V, D = old_table.shape
    N, L = ids.shape
    table = old_table.astype(jnp.float32)
    safe = jnp.clip(ids, 0, V - 1)
    valid = jnp.arange(L)[None, :] < lengths[:, None]
    q = _normalize(aux_new.astype(jnp.float32))
    ref = _normalize(aux_old.astype(jnp.float32))

    # local: parts weighted by similarity to the whole, uniform share and relative length
    sim = jnp.einsum("na,nla->nl", q, jnp.take(ref, safe, axis=0))
    n = jnp.maximum(lengths, 1).astype(jnp.float32)[:, None]
    score = sim * (sim >= 0.7 * threshold) + 1.0 / n + jnp.minimum(part_ratio, 1.0)
    w = jax.nn.softmax(jnp.where(valid, score / temperature, _NEG), axis=-1) * valid
    local = jnp.einsum("nl,nld->nd", w, jnp.take(table, safe, axis=0))

    # global: softmax over the thresholded top-k old neighbours in the auxiliary space
    sims = q @ ref.T
    if old_mask is not None:
        sims = jnp.where(old_mask[None, :], sims, -2.0)
    top, idx = jax.lax.top_k(sims, min(top_k, V))  # a vocabulary smaller than k: every old token
    keep = top >= threshold
    gw = jax.nn.softmax(jnp.where(keep, top / temperature, _NEG), axis=-1) * keep
    glob = jnp.einsum("nk,nkd->nd", gw, jnp.take(table, idx, axis=0))
    any_global = jnp.any(keep, axis=-1, keepdims=True)

    mixed = jnp.where(any_global, (1.0 - global_weight) * local + global_weight * glob, local)
    out = jnp.where((lengths > 0)[:, None], mixed, fallback.astype(jnp.float32))
    out = jnp.where((exact >= 0)[:, None], jnp.take(table, jnp.maximum(exact, 0), axis=0), out)
    return out.astype(old_table.dtype)


@functools.partial(jax.jit, static_argnames=("cfg", "pre"))
def _pooled_hidden(params, cfg, tokens, lengths, pre):
    h = forward(params, cfg, tokens, compute_logits=False).hidden[:, pre:].astype(jnp.float32)
    return masked_mean(h, jnp.arange(h.shape[1])[None, :] < lengths[:, None], axis=1)


def aux_embeddings(model: Model, ids: np.ndarray, lengths: np.ndarray, *, bos_id: int | None = None,
                   batch_size: int = 256) -> jax.Array:
    """Returns [N, D]: the model's final-normed hidden state mean-pooled over each row's tokens.

    An auxiliary space for TokenAdapt from any tokjax Model (the transferred model itself, or a
    larger language model the caller loads): row n is the text whose ids (in ``model``'s
    tokenizer) are ``ids[n, :lengths[n]]``, prefixed by ``bos_id`` when given (not pooled). Rows of
    length 0 give zeros. The pooling is compiled once per (config, width, batch size).
    """
    ids = np.asarray(ids, np.int32)
    lengths = np.asarray(lengths, np.int32)
    if ids.ndim != 2 or lengths.shape != (ids.shape[0],):
        raise ValueError(f"aux_embeddings needs ids [N, L] and lengths [N], got {ids.shape} and {lengths.shape}")
    N, L = ids.shape
    pre = 0 if bos_id is None else 1
    toks = np.zeros((N, L + pre), np.int32)
    if pre:
        toks[:, 0] = bos_id
    toks[:, pre:] = np.maximum(ids, 0)
    out = []
    for s in range(0, N, batch_size):
        t, lens = toks[s : s + batch_size], lengths[s : s + batch_size]
        n = t.shape[0]
        if n < batch_size:  # pad the last batch: one compiled shape
            t = np.concatenate([t, np.zeros((batch_size - n, t.shape[1]), np.int32)])
            lens = np.concatenate([lens, np.zeros((batch_size - n,), np.int32)])
        out.append(_pooled_hidden(model.params, model.cfg, jnp.asarray(t), jnp.asarray(lens), pre)[:n])
    if not out:
        return jnp.zeros((0, model.cfg.d_model), jnp.float32)
    return jnp.concatenate(out)


def byte_ngram_tfidf(texts: Sequence[bytes], *, n_max: int = 3) -> np.ndarray:
    """Returns [N, F] float32 L2-normalised tf-idf vectors of byte n-grams (n = 1..n_max) of ``texts``.

    A model-free auxiliary space for TokenAdapt: each text is framed by a start and an end mark
    (so prefixes and suffixes are features of their own), tf is the n-gram count, and
    idf = ln((1 + N) / (1 + df)) + 1 over the N texts given (smoothed, as scikit-learn's). Empty
    texts give zero rows. Features are the n-grams that occur in the texts, in first-seen order.
    """
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be an int >= 1, got {n_max!r}")
    vocab: dict[tuple, int] = {}
    rows: list[dict[int, int]] = []
    for t in texts:
        if not isinstance(t, (bytes, bytearray)):
            raise ValueError(f"byte_ngram_tfidf needs bytes, got {type(t).__name__}")
        counts: dict[int, int] = {}
        if t:
            seq = (-1, *t, -2)  # -1 / -2: start and end marks
            for n in range(1, int(n_max) + 1):
                for i in range(len(seq) - n + 1):
                    g = seq[i : i + n]
                    if n == 1 and g[0] < 0:
                        continue  # a bare mark says nothing about the text
                    j = vocab.setdefault(g, len(vocab))
                    counts[j] = counts.get(j, 0) + 1
        rows.append(counts)
    N, F = len(rows), max(len(vocab), 1)
    tf = np.zeros((N, F), np.float32)
    for i, c in enumerate(rows):
        if c:
            tf[i, list(c)] = list(c.values())
    df = (tf > 0).sum(0)
    x = tf * (np.log((1.0 + N) / (1.0 + df)) + 1.0)[None, :].astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


_AUX_KINDS = ("hidden", "embedding", "tfidf")


def tokenadapt_aux(model: Model, old_tok: Any, new_tok: Any, kind: str = "hidden", *,
                   maxlen: int = 16) -> tuple[jax.Array, jax.Array]:
    """Returns (aux_new [V_new, A], aux_old [V_old, A]): a built-in auxiliary space for TokenAdapt.

    ``kind``: ``"hidden"`` (``model``'s mean-pooled final hidden state of each token's text, the
    text given as its old-tokenizer parts), ``"embedding"`` (old input embeddings; a new token is
    the mean of its parts') or ``"tfidf"`` (:func:`byte_ngram_tfidf` of the token strings, fitted
    on both vocabularies together). Raises ValueError for another kind or unusable tokenizers.
    """
    if kind not in _AUX_KINDS:
        raise ValueError(f"aux must be one of {_AUX_KINDS} or a pair of arrays (aux_new, aux_old), got {kind!r}")
    old_bytes = check_byte_tables(old_tok, "old tokenizer")
    new_bytes = check_byte_tables(new_tok, "new tokenizer")
    V_old = old_tok.vocab_size
    if kind == "tfidf":
        x = byte_ngram_tfidf(list(new_bytes) + list(old_bytes))
        return jnp.asarray(x[: len(new_bytes)]), jnp.asarray(x[len(new_bytes) :])
    d = decompose_vocab(new_tok, old_tok, maxlen)
    if kind == "hidden":
        bos = old_tok.bos_id
        aux_new = aux_embeddings(model, d.ids, d.lengths, bos_id=bos)
        single = np.arange(V_old, dtype=np.int32)[:, None]
        return aux_new, aux_embeddings(model, single, np.ones((V_old,), np.int32), bos_id=bos)
    aux_old = model.params["embed"]
    return mean_of_parts(aux_old, jnp.asarray(d.ids), jnp.asarray(d.lengths)), aux_old


def tokenadapt_transfer(
    model: Model,
    old_tok: Any,
    new_tok: Any,
    *,
    temperature: float = 0.3,
    global_weight: float = 0.3,
    threshold: float = 0.6,
    top_k: int = 10,
    maxlen: int = 16,
    seed: int = 0,
    aux: Any = "hidden",
) -> Model:
    """Returns ``model`` with ``new_tok``'s vocabulary initialised by TokenAdapt (tied or untied heads).

    ``aux`` is the auxiliary embedding space: a kind of :func:`tokenadapt_aux` (``"hidden"``,
    ``"embedding"``, ``"tfidf"``) or a pair ``(aux_new [V_new, A], aux_old [V_old, A])`` of
    vectors from any embedder (the paper's external text-embedding model; row i embeds token i's
    text). Raises ValueError when either tokenizer lacks byte tables or loses bytes, or for bad
    settings or auxiliary arrays of the wrong shape.
    """
    if not 0.0 <= float(global_weight) <= 1.0:
        raise ValueError(f"global_weight must be in [0, 1], got {global_weight}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(aux, str):
        if aux not in _AUX_KINDS:
            raise ValueError(f"aux must be one of {_AUX_KINDS} or a pair of arrays (aux_new, aux_old), got {aux!r}")
    elif not (isinstance(aux, (tuple, list)) and len(aux) == 2):
        raise ValueError(f"aux must be one of {_AUX_KINDS} or a pair of arrays (aux_new, aux_old), got {type(aux).__name__}")
    d = decompose_vocab(new_tok, old_tok, maxlen)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= old_tok.vocab_size:
        raise ValueError(f"top_k must be an int in [1, {old_tok.vocab_size}], got {top_k!r}")
    old_bytes = old_tok.id_to_bytes
    new_bytes = new_tok.id_to_bytes
    if isinstance(aux, str):
        aux_new, aux_old = tokenadapt_aux(model, old_tok, new_tok, aux, maxlen=maxlen)
    else:
        aux_new, aux_old = (jnp.asarray(a, jnp.float32) for a in aux)
        if (aux_new.ndim != 2 or aux_old.ndim != 2 or aux_new.shape[0] != new_tok.vocab_size
                or aux_old.shape[0] != old_tok.vocab_size or aux_new.shape[1] != aux_old.shape[1]):
            raise ValueError(f"aux arrays must be [V_new={new_tok.vocab_size}, A] and [V_old={old_tok.vocab_size}, A], "
                             f"got {tuple(aux_new.shape)} and {tuple(aux_old.shape)}")
    ratio = np.zeros(d.ids.shape, np.float32)
    for i in range(d.ids.shape[0]):
        whole = len(new_bytes[i])
        for j in range(int(d.lengths[i])):
            ratio[i, j] = len(old_bytes[d.ids[i, j]]) / whole if whole else 0.0
    old_mask = jnp.asarray([bool(b) and i not in old_tok.special_ids for i, b in enumerate(old_bytes)])
    key = jax.random.key(seed)

    def init(table):
        fallback = random_embeddings(key, table, d.ids.shape[0])
        return tokenadapt_embeddings(
            table, jnp.asarray(d.ids), jnp.asarray(d.lengths), jnp.asarray(d.exact), jnp.asarray(ratio),
            aux_new, aux_old, fallback, temperature=temperature, global_weight=global_weight,
            threshold=threshold, old_mask=old_mask, top_k=int(top_k))

    emb = init(model.params["embed"])
    head = None if model.cfg.tied_embeddings else init(model.params["lm_head"].T).T
    return with_vocab(model, emb, head)
