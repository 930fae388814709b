"""FIRST (P20): identifier-logit listwise reranking, sliding windows, the generated-permutation baseline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax.decoding.first_rerank as fr
from tokjax.model import Model, ModelConfig, forward, last_token_logits
from tests._chat_tokenizer import CharTok


@pytest.fixture(scope="module")
def model():
    return Model.init(ModelConfig(vocab_size=260, d_model=32, n_layers=2, n_heads=4, max_len=4096),
                      jax.random.PRNGKey(0))


def test_sliding_windows_bottom_up():
    assert fr.sliding_windows(20, 10, 5) == [(10, 20), (5, 15), (0, 10)]
    assert fr.sliding_windows(7, 10, 5) == [(0, 7)]
    assert fr.sliding_windows(12, 4, 4) == [(8, 12), (4, 8), (0, 4)]
    for bad in [(5, 1, 1), (5, 4, 0), (5, 4, 5), (0, 4, 2)]:
        with pytest.raises(ValueError):
            fr.sliding_windows(*bad)


def test_parse_permutation():
    assert fr.parse_permutation("[C] > [A] > [C] > [Z]", 3) == [2, 0, 1]
    assert fr.parse_permutation("nothing useful", 2) == [0, 1]
    assert fr.parse_permutation("[B] > [A] > [D]", 4) == [1, 0, 3, 2]


def test_prompt_and_identifiers():
    tok = CharTok()
    ids = fr.rerank_prompt(tok, "q", ["alpha", "beta"])
    assert ids[-1] == tok.encode("[")[0]
    assert "[B] beta" in tok.decode(ids)
    np.testing.assert_array_equal(fr.identifier_ids(tok, 3), [3 + ord("A"), 3 + ord("B"), 3 + ord("C")])

    class Multi(CharTok):
        def encode(self, text):
            return super().encode(text) * 2

    with pytest.raises(ValueError, match="single tokens"):
        fr.identifier_ids(Multi(), 2)


def test_window_scores_are_the_forwards_identifier_logits(model):
    tok = CharTok()
    prompts = [fr.rerank_prompt(tok, "q one", ["a b", "c d", "e"]), fr.rerank_prompt(tok, "q", ["x", "y"])]
    ids = fr.identifier_ids(tok, 3)
    got = fr.first_window_scores(model, prompts, ids, [3, 2], batch_size=2)
    for p, g in zip(prompts, got):
        z = np.asarray(forward(model.params, model.cfg, jnp.asarray([p])).logits[0, -1])
        np.testing.assert_allclose(g, z[ids[: len(g)]], rtol=1e-5, atol=1e-4)
    full = last_token_logits(model, prompts, batch_size=1)
    assert full.shape == (2, 260)


def test_windows_bubble_the_best_candidate_to_the_top(monkeypatch):
    """With scores equal to the true relevance, the best of 20 candidates rises from the bottom to rank 1."""
    rel = {f"p{i}": float(i == 19) + 0.01 * (20 - i) for i in range(20)}

    def fake_scores(model, prompts, id_tokens, sizes, batch_size=4):
        return [np.asarray([rel[p] for p in window]) for window in fake_scores.windows]

    def fake_prompt(tok, query, passages, answer_prefix="["):
        fake_scores.windows.append(list(passages))
        return [1]

    fake_scores.windows = []

    def run_windows(model, prompts, ids, sizes, batch_size=4):
        out = fake_scores(model, prompts, ids, sizes)
        fake_scores.windows = []
        return out

    monkeypatch.setattr(fr, "first_window_scores", run_windows)
    monkeypatch.setattr(fr, "rerank_prompt", fake_prompt)
    monkeypatch.setattr(fr, "identifier_ids", lambda tok, n: np.arange(n))
    cands = [f"p{i}" for i in range(20)]
    order = fr.first_rerank(None, CharTok(), ["q", "q2"], [cands, cands[:7]], window=10, stride=5)
    assert order[0][0] == 19 and sorted(order[0]) == list(range(20))
    assert sorted(order[1]) == list(range(7)) and order[1] == list(range(7))  # already in relevance order


def test_permutation_baseline_returns_permutations(model):
    tok = CharTok()
    cands = [["a", "b", "c"], ["d", "e"]]
    out = fr.permutation_rerank(model, tok, ["q", "r"], cands, window=3, stride=2, max_new_tokens=6)
    assert sorted(out[0]) == [0, 1, 2] and sorted(out[1]) == [0, 1]
    first = fr.first_rerank(model, tok, ["q", "r"], cands, window=3, stride=2)
    assert sorted(first[0]) == [0, 1, 2] and sorted(first[1]) == [0, 1]


def test_bad_input():
    tok = CharTok()
    with pytest.raises(ValueError, match="at least one passage"):
        fr.rerank_prompt(tok, "q", [])
    with pytest.raises(ValueError, match="identifiers A..Z"):
        fr.rerank_prompt(tok, "q", ["x"] * 27)
    with pytest.raises(ValueError, match="one candidate list per query"):
        fr.first_rerank(None, tok, ["q"], [])
    with pytest.raises(ValueError, match="at least one candidate"):
        fr.first_rerank(None, tok, ["q"], [[]])
    with pytest.raises(ValueError, match="chat template"):
        fr.rerank_prompt(object(), "q", ["x"])
