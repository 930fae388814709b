"""pydocs_retrieval: held-out-sentence queries, graded qrels, seeded splits."""

import numpy as np
import pytest

from tokjax.data import pydocs_retrieval
from tokjax.metrics.retrieval import bm25_scores, mrr_at_k, ndcg_at_k


@pytest.fixture(scope="module")
def rs():
    return pydocs_retrieval(0)


def test_size_and_splits(rs):
    assert 600 <= len(rs.docs) <= 900 and len(rs.topics) > 50
    train, test = rs.split("train"), rs.split("test")
    assert len(train) + len(test) == len(rs.queries) > 300
    assert not set(train.tolist()) & set(test.tolist())
    assert abs(len(train) - len(test)) <= 1


def test_query_held_out_of_its_document(rs):
    for q, d in zip(rs.queries, rs.query_doc):
        assert q not in rs.docs[d]
        assert len(rs.docs[d].split()) >= 20


def test_qrels_grades(rs):
    rel = rs.qrels("test")
    rows = rs.split("test")
    assert rel.shape == (len(rows), len(rs.docs))
    assert np.all((rel == 2).sum(1) == 1)
    np.testing.assert_array_equal(np.argmax(rel, 1), rs.query_doc[rows])
    same = rs.doc_topic[None, :] == rs.doc_topic[rs.query_doc[rows]][:, None]
    np.testing.assert_array_equal(rel > 0, same)
    assert rs.qrels().shape == (len(rs.queries), len(rs.docs))
    assert rs.query_texts("test") == [rs.queries[i] for i in rows]


def test_seeded():
    a, b, c = pydocs_retrieval(3), pydocs_retrieval(3), pydocs_retrieval(4)
    assert a.queries == b.queries and a.query_split == b.query_split
    assert a.queries != c.queries or a.query_split != c.query_split


def test_bm25_solves_it_partly(rs):
    """Word-overlap retrieval finds many sources but not all: the set is neither trivial nor impossible."""
    words = {}

    def ids(text):
        return [words.setdefault(w, len(words)) for w in text.lower().split()]

    docs = [ids(d) for d in rs.docs]
    rows = rs.split("test")
    scores = bm25_scores([ids(rs.queries[i]) for i in rows], docs)
    rel = rs.qrels("test")
    mrr = float(np.mean(mrr_at_k(scores, (rel == 2).astype(np.float32), 10)))
    assert 0.2 < mrr < 0.95
    assert 0.0 < float(np.mean(ndcg_at_k(scores, rel, 10))) < 1.0


@pytest.mark.parametrize("kw", [dict(test_fraction=0.0), dict(test_fraction=1.0), dict(min_words=0)])
def test_bad_input(kw):
    with pytest.raises(ValueError):
        pydocs_retrieval(0, **kw)


def test_bad_split(rs):
    with pytest.raises(ValueError, match="split"):
        rs.split("validation")
