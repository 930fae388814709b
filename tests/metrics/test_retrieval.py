"""nDCG@k, MRR@k and BM25 (tokjax.metrics.retrieval) against plain-Python references."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.metrics import bm25_scores, mrr_at_k, ndcg_at_k


def naive_ndcg(scores, rels, k):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    dcg = sum(rels[d] / math.log2(r + 2) for r, d in enumerate(order))
    ideal = sum(g / math.log2(r + 2) for r, g in enumerate(sorted(rels, reverse=True)[:k]))
    return dcg / ideal if ideal > 0 else 0.0


def naive_mrr(scores, rels, k):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return next((1.0 / (r + 1) for r, d in enumerate(order) if rels[d] > 0), 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 5, 15]))  # few shapes: each compiles once
def test_ndcg_and_mrr_equal_naive_loops_and_lie_in_unit_interval(seed, k):
    q, d = 3, 10
    r = np.random.default_rng(seed)
    scores = r.integers(0, 4, (q, d)).astype(np.float32)  # small integers: many ties
    qrels = r.choice([0, 0, 0, 1, 2], (q, d)).astype(np.float32)
    got_n, got_m = np.asarray(ndcg_at_k(scores, qrels, k)), np.asarray(mrr_at_k(scores, qrels, k))
    for i in range(q):
        assert got_n[i] == pytest.approx(naive_ndcg(scores[i], qrels[i], k), abs=1e-6)
        assert got_m[i] == pytest.approx(naive_mrr(scores[i], qrels[i], k), abs=1e-6)
    assert np.all((got_n >= 0) & (got_n <= 1 + 1e-6))
    np.testing.assert_allclose(ndcg_at_k(qrels, qrels, k)[qrels.max(1) > 0], 1.0, rtol=1e-6)  # ideal ranking


def test_bm25_equals_the_formula_written_per_term():
    docs = [[1, 2, 2, 3], [2, 4], [5, 5, 5, 1, 6, 7], [8]]
    queries = [[2], [5, 1], [9], [2, 2]]
    N, avgdl, k1, b = len(docs), np.mean([len(d) for d in docs]), 0.9, 0.4

    def score(query, doc):
        s = 0.0
        for t in query:
            df = sum(t in d for d in docs)
            tf = doc.count(t)
            idf = math.log(1 + (N - df + 0.5) / (df + 0.5))
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avgdl)) if tf else 0.0
        return s

    want = np.array([[score(q, d) for d in docs] for q in queries])
    np.testing.assert_allclose(bm25_scores(queries, docs), want, rtol=1e-6)
    assert np.all(bm25_scores([[9]], docs) == 0)


def test_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(np.zeros((1, 3)), np.zeros((1, 3)), 0)
    with pytest.raises(ValueError, match="queries, documents"):
        mrr_at_k(np.zeros((1, 3)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=">= 0"):
        ndcg_at_k(np.zeros((1, 3)), -np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least one document"):
        bm25_scores([[1]], [])
    with pytest.raises(ValueError, match="k1"):
        bm25_scores([[1]], [[1]], b=2.0)
