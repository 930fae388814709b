"""PromptReps (P3): prompted last-state dense vectors, in-text sparse vectors, min-max hybrid fusion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.analysis.promptreps import (
    PASSAGE_PROMPT, STOPWORDS, encode_prompted, hybrid_scores, mean_pooled, minmax_rows, prompt_ids, sparse_reps,
    sparse_scores, text_token_ids,
)
from tokjax.model import Model, ModelConfig, forward
from tests._chat_tokenizer import CharTok


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=260, d_model=32, n_layers=2, n_heads=4, max_len=512)
    return Model.init(cfg, jax.random.PRNGKey(0))


def test_prompt_ids_end_with_the_assistant_prefix():
    tok = CharTok()
    ids = prompt_ids(tok, ["alpha beta"])[0]
    pre = tok.encode(PASSAGE_PROMPT[1])
    assert ids[-len(pre):] == pre
    assert tok.encode("alpha beta") == ids[ids.index(tok.encode('"')[0]) + 1:][:10]


def test_text_token_ids_drop_stopwords():
    tok = CharTok()
    assert "the" in STOPWORDS
    assert text_token_ids(tok, "The the THE") == []
    assert text_token_ids(tok, "The cat, the CAT!") == sorted(set(tok.encode("cat")))


@pytest.mark.slow
def test_encode_equals_unbatched_forward(model):
    tok = CharTok()
    lists = prompt_ids(tok, ["short", "a somewhat longer passage of text", "mid length text"])
    dense, logits = encode_prompted(model, lists, batch_size=2, bucket=16)
    for i, ids in enumerate(lists):
        out = forward(model.params, model.cfg, jnp.asarray([ids]))
        h = np.asarray(out.hidden[0, -1])
        np.testing.assert_allclose(dense[i], h / np.linalg.norm(h), atol=2e-5)
        np.testing.assert_allclose(logits[i], np.asarray(out.logits[0, -1]), atol=2e-4, rtol=1e-5)
    d1, l1 = encode_prompted(model, lists, batch_size=1, bucket=8)
    np.testing.assert_allclose(d1, dense, atol=2e-5)
    pooled = mean_pooled(model, lists, batch_size=2)
    out = forward(model.params, model.cfg, jnp.asarray([lists[0]]))
    m = np.asarray(out.hidden[0]).mean(0)
    np.testing.assert_allclose(pooled[0], m / np.linalg.norm(m), atol=2e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(0, 12))
def test_sparse_weights_nonnegative_and_only_on_text_ids(seed, top_k, n_ids):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(2, 40)).astype(np.float32)
    ids = [sorted(rng.choice(40, n_ids, replace=False).tolist()), [5, 7]]
    rep = sparse_reps(logits, ids, top_k=top_k, quantize=False)
    for r in range(2):
        keep = rep.weights[r] > 0
        assert np.all(rep.weights[r] >= 0)
        if ids[r]:
            assert set(rep.ids[r][keep].tolist()) <= set(ids[r])
            assert keep.sum() <= min(top_k, len(ids[r]))
            expect = np.sort(np.log1p(np.maximum(logits[r, ids[r]], 0)))[::-1][:top_k]
            np.testing.assert_allclose(np.sort(rep.weights[r])[::-1][:len(expect)], expect, rtol=1e-6)
        else:  # the official fallback: top 10 of the whole vocabulary
            assert set(rep.ids[r][keep].tolist()) <= set(np.argsort(-logits[r])[:10].tolist())
    q = sparse_reps(logits, ids, top_k=top_k)
    assert np.all(q.weights == np.rint(q.weights))


def test_sparse_scores_match_dense_reference():
    rng = np.random.default_rng(0)
    zq, zd = rng.normal(0, 2, (3, 50)), rng.normal(0, 2, (4, 50))
    idq = [rng.choice(50, 6, replace=False) for _ in range(3)]
    idd = [rng.choice(50, 9, replace=False) for _ in range(4)]
    q, d = sparse_reps(zq, idq, quantize=False), sparse_reps(zd, idd, quantize=False)

    def dense(z, ids):
        out = np.zeros_like(z)
        for r, i in enumerate(ids):
            out[r, i] = np.log1p(np.maximum(z[r, i], 0))
        return out

    np.testing.assert_allclose(sparse_scores(q, d), dense(zq, idq) @ dense(zd, idd).T, rtol=1e-5, atol=1e-6)


def test_hybrid_is_weighted_minmax():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 7)), rng.normal(size=(3, 7)) * 100
    m = minmax_rows(a)
    assert m.min() == 0 and m.max() == 1
    np.testing.assert_allclose(hybrid_scores(a, b, 1.0), m, atol=1e-6)
    np.testing.assert_allclose(hybrid_scores(a, b, 0.3), 0.3 * m + 0.7 * minmax_rows(b), atol=1e-6)
    assert np.all(minmax_rows(np.ones((2, 3))) == 0)


def test_bad_input(model):
    tok = CharTok()
    with pytest.raises(ValueError, match="alpha"):
        hybrid_scores(np.zeros((1, 2)), np.zeros((1, 2)), 1.5)
    with pytest.raises(ValueError, match="shape"):
        hybrid_scores(np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="prompt"):
        prompt_ids(tok, ["x"], ("no placeholder", ""))
    with pytest.raises(ValueError, match="chat template"):
        prompt_ids(object(), ["x"])
    with pytest.raises(ValueError, match="ids must be in"):
        sparse_reps(np.zeros((1, 5)), [[7]])
    with pytest.raises(ValueError, match="non-empty"):
        encode_prompted(model, [[1, 2], []])
    with pytest.raises(ValueError, match="max_len"):
        encode_prompted(model, [[3] * 600])
