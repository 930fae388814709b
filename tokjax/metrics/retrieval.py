"""Retrieval metrics: nDCG@k and MRR@k of score matrices, and BM25 scores of token-id documents.

    ndcg_at_k(scores [Q, D], qrels [Q, D], k)   DCG = sum_{i<k} rel_(i) / log2(i + 2), over IDCG
    mrr_at_k(scores [Q, D], qrels [Q, D], k)    1 / rank of the first document with rel > 0 (0 if none in the top k)
    bm25_scores(queries, docs, k1=0.9, b=0.4)   sum over query tokens t of
        idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
        idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

Gains are linear in the graded relevance, as trec_eval / pytrec_eval (and BEIR, which uses them)
compute nDCG; ranks break score ties by document index, lower first. A query without any relevant
document scores 0. BM25 follows Lucene / Pyserini (k1 = 0.9, b = 0.4, Lucene's idf); the
``(k1 + 1)`` factor, which Lucene 8 dropped, scales every score alike and changes no ranking. Query
tokens count with multiplicity.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bm25_scores", "mrr_at_k", "ndcg_at_k"]


def _check(scores, qrels, k):
    scores, qrels = jnp.asarray(scores, jnp.float32), jnp.asarray(qrels, jnp.float32)
    if scores.ndim != 2 or scores.shape != qrels.shape:
        raise ValueError(f"scores and qrels must both be [queries, documents], got {scores.shape} and {qrels.shape}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1 (the rank cut-off), got {k!r}")
    if not isinstance(qrels, jax.core.Tracer) and bool(jnp.any(qrels < 0)):
        raise ValueError("qrels must be graded relevances >= 0")
    return scores, qrels, min(k, scores.shape[1])


def _ranked(scores, qrels, k):
    """Returns the relevances of each query's top-k documents, in rank order (ties: lower index first)."""
    order = jnp.argsort(-scores, axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(qrels, order, axis=1)


def ndcg_at_k(scores, qrels, k: int = 10) -> jax.Array:
    """Returns float32 [Q] nDCG@k of ranking documents by ``scores`` against graded ``qrels`` (module docstring)."""
    scores, qrels, k = _check(scores, qrels, k)
    discount = 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)
    dcg = jnp.sum(_ranked(scores, qrels, k) * discount, axis=1)
    ideal = jnp.sum(-jnp.sort(-qrels, axis=1)[:, :k] * discount, axis=1)
    return jnp.where(ideal > 0, dcg / jnp.where(ideal > 0, ideal, 1.0), 0.0)


def mrr_at_k(scores, qrels, k: int = 10) -> jax.Array:
    """Returns float32 [Q] reciprocal rank of the first relevant document within the top k (0 if none)."""
    scores, qrels, k = _check(scores, qrels, k)
    hit = _ranked(scores, qrels, k) > 0
    first = jnp.argmax(hit, axis=1)
    return jnp.where(jnp.any(hit, axis=1), 1.0 / (first + 1.0), 0.0)


def bm25_scores(queries: Sequence[Sequence[int]], docs: Sequence[Sequence[int]], *, k1: float = 0.9,
                b: float = 0.4) -> np.ndarray:
    """Returns float32 [Q, D] BM25 scores of token-id ``queries`` against token-id ``docs`` (module docstring)."""
    if not docs:
        raise ValueError("bm25_scores needs at least one document")
    if not (k1 >= 0 and 0 <= b <= 1):
        raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    vocab: dict[int, int] = {}
    rows, cols, lengths = [], [], []
    for d, doc in enumerate(docs):
        ids = np.asarray(doc, np.int64).ravel()
        lengths.append(len(ids))
        for t in ids.tolist():
            rows.append(d)
            cols.append(vocab.setdefault(t, len(vocab)))
    tf = np.zeros((len(docs), max(len(vocab), 1)), np.float64)
    np.add.at(tf, (np.asarray(rows, np.int64), np.asarray(cols, np.int64)), 1.0)
    dl = np.asarray(lengths, np.float64)
    avgdl = max(dl.mean(), 1e-9)
    df = (tf > 0).sum(0)
    idf = np.log(1.0 + (len(docs) - df + 0.5) / (df + 0.5))
    norm = tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * dl[:, None] / avgdl))
    term_scores = norm * idf[None, :]  # [D, V]
    out = np.zeros((len(queries), len(docs)), np.float64)
    for q, query in enumerate(queries):
        for t in np.asarray(query, np.int64).ravel().tolist():
            j = vocab.get(t)
            if j is not None:
                out[q] += term_scores[:, j]
    return out.astype(np.float32)
