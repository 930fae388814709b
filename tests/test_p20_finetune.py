"""P20 fine-tune arms of experiments/p20_first_rerank.py: teacher order, training windows, batch layout, lambda 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from experiments import p20_first_rerank as p20
from tests._chat_tokenizer import CharTok
from tokjax.decoding.first_rerank import identifier_ids, rerank_prompt
from tokjax.losses import next_token_loss
from tokjax.losses.registry import loss_from_spec


def test_teacher_order_is_grade_then_bm25_then_position():
    # grades [0, 2, 1, 1, 0], bm25 [5, 1, 2, 3, 5]: rank 0 = the grade-2 one, then grade 1 by bm25 (3 > 2),
    # then the grade-0 tie on bm25 broken by listing position
    np.testing.assert_array_equal(p20.teacher_ranks([0, 2, 1, 1, 0], [5, 1, 2, 3, 5]), [3, 0, 2, 1, 4])
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, s = rng.integers(0, 3, 8).astype(float), rng.normal(size=8)
        r = p20.teacher_ranks(g, s)
        order = np.argsort(r)  # candidates from the teacher's top down
        assert np.all(np.diff(g[order]) <= 0)
        same = np.diff(g[order]) == 0
        assert np.all(np.diff(s[order])[same] <= 0)
    assert p20.teacher_target([1, 2, 0]) == "C] > [A] > [B]"
    assert p20.teacher_target([0]) == "A]"
    for bad in ([0, 0, 1], [1, 2], []):
        with pytest.raises(ValueError, match="permutation"):
            p20.teacher_target(bad)
    with pytest.raises(ValueError, match="same|one shape"):
        p20.teacher_ranks([1, 0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        p20.teacher_ranks([1, 0], [np.nan, 1.0])


def test_training_windows_follow_the_schedule_and_force_the_source_in():
    Q, D, K = 4, 30, 20
    bm25 = -np.tile(np.arange(D, dtype=float), (Q, 1))  # doc d scores -d: top = 0..19 for every query
    top = np.tile(np.arange(K), (Q, 1))
    rel = np.zeros((Q, D))
    src = np.array([15, 25, 3, 29])
    rel[np.arange(Q), src] = 2
    rel[1, 12] = 1  # query 1: a grade-1 doc in its middle window
    wins = p20.training_windows(top, bm25, rel, src, 10)
    # schedule (10, 20), (5, 15), (0, 10): q0 -> bottom window (holds 15); q1 -> middle (holds 12; its source 25
    # replaces doc 19 outside it); q2 -> top (holds 3); q3 -> the bottom window again, source 29 forced in last
    assert [w[0] for w in wins] == [0, 1, 2, 3]
    np.testing.assert_array_equal(wins[0][1], np.arange(10, 20))
    np.testing.assert_array_equal(wins[1][1], np.arange(5, 15))
    np.testing.assert_array_equal(wins[2][1], np.arange(0, 10))
    np.testing.assert_array_equal(wins[3][1], list(range(10, 19)) + [29])
    assert wins[0][2][5] == 0 and wins[3][2][9] == 0  # the source is the teacher's top
    assert wins[1][2][7] == 0 and sorted(wins[1][2]) == list(range(10))
    np.testing.assert_array_equal(wins[2][2], [1, 2, 3, 0, 4, 5, 6, 7, 8, 9])  # then BM25 order
    # a window without a relevant doc falls back to the top window; a query with none there is skipped
    rel2 = np.zeros((Q, D))
    rel2[0, 2] = 1
    src2 = np.array([2, 2, 2, 2])  # in the top window of every query, graded for query 0 only
    got = p20.training_windows(top, bm25, rel2, src2, 10)
    assert [w[0] for w in got] == [0]
    np.testing.assert_array_equal(got[0][1], np.arange(10))
    assert len(p20.training_windows(top, bm25, rel, src, 2)) == 2
    with pytest.raises(ValueError):
        p20.training_windows(top, bm25, rel[:2], src, 2)
    with pytest.raises(ValueError):
        p20.training_windows(top, bm25, rel, src, 0)


def _layout():
    tok = CharTok()
    queries = ["find b", "q two"]
    passages = [["alpha", "beta", "gamma"], ["x y", "z"]]
    ranks = [np.array([1, 0, 2]), np.array([1, 0])]
    return tok, queries, passages, ranks, p20.finetune_layout(tok, queries, passages, ranks)


def test_layout_rows_are_prompt_then_teacher_permutation():
    tok, queries, passages, ranks, lay = _layout()
    ids = identifier_ids(tok, 3)
    for r in range(2):
        prompt = rerank_prompt(tok, queries[r], passages[r])
        pl, ln = lay["prompt_lengths"][r], lay["lengths"][r]
        assert pl == len(prompt)
        np.testing.assert_array_equal(lay["tokens"][r, :pl], prompt)
        assert tok.decode(lay["tokens"][r, pl:ln].tolist()) == ["B] > [A] > [C]", "B] > [A]"][r]
        assert lay["tokens"][r, pl] == ids[np.argmin(ranks[r])]  # the scored position predicts the top's id
        assert np.all(lay["tokens"][r, ln:] == 0)
    np.testing.assert_array_equal(lay["id_token_ids"], [ids, [ids[0], ids[1], ids[0]]])
    np.testing.assert_array_equal(lay["teacher_ranks"], [[1, 0, 2], [1, 0, -1]])
    assert lay["tokens"].shape[1] % 8 == 0

    class Eos(CharTok):
        eos_id = 259

    lay2 = p20.finetune_layout(Eos(), queries[:1], passages[:1], ranks[:1])
    assert lay2["tokens"][0, lay2["lengths"][0] - 1] == 259


def test_layout_bad_inputs():
    tok, queries, passages, ranks, _ = _layout()
    with pytest.raises(ValueError, match="one passage list"):
        p20.finetune_layout(tok, queries, passages[:1], ranks)
    with pytest.raises(ValueError, match="ranks for"):
        p20.finetune_layout(tok, queries[:1], passages[:1], [np.array([0, 1])])

    class Merging(CharTok):  # merges "B]" into one token: the scored position would not predict the id
        def encode(self, text):
            ids = super().encode(text)
            return [300] + ids[2:] if text.startswith("B]") else ids

    with pytest.raises(ValueError, match="teacher top's identifier"):
        p20.finetune_layout(Merging(), queries[:1], passages[:1], ranks[:1])


def test_lambda_zero_is_the_lm_only_loss_and_arms_share_the_batch_order():
    _, _, _, _, lay = _layout()
    cfg = tokjax.ModelConfig(vocab_size=260, d_model=16, n_layers=1, n_heads=2, max_len=1024)
    params = tokjax.Model.init(cfg, jax.random.key(0)).params
    batch = {k: jnp.asarray(v) for k, v in lay.items()}
    first, lm = loss_from_spec(p20.arm_loss(p20.FIRST_LAM)), loss_from_spec(p20.arm_loss(0.0))
    assert p20.arm_loss(p20.FIRST_LAM) == {"name": "first", "lam": 10.0}
    f = jax.jit(jax.value_and_grad(lambda p, b: lm(p, cfg, b)[0]))
    g = jax.jit(jax.value_and_grad(lambda p, b: next_token_loss(p, cfg, b)[0]))
    (a, ga), (b, gb) = f(params, batch), g(params, batch)
    assert float(a) == float(b)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    c = float(jax.jit(lambda p, b: first(p, cfg, b)[0])(params, batch))
    assert c > float(a)  # lambda 10 adds a positive rank term
    # the same seed gives both arms the same rows at every step; epochs are permutations
    rows = [p20.step_rows(s, 6, 2, seed=3) for s in range(6)]
    np.testing.assert_array_equal(np.sort(np.concatenate(rows[:3])), np.arange(6))
    np.testing.assert_array_equal(rows[1], p20.step_rows(1, 6, 2, seed=3))
    assert not np.array_equal(np.concatenate(rows[:3]), np.concatenate([p20.step_rows(s, 6, 2, 4) for s in range(3)]))
    with pytest.raises(ValueError):
        p20.step_rows(0, 2, 3, 0)


def test_first_loss_verdict():
    seeds = (0, 1, 2)
    assert p20.first_loss_verdict([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], seeds).status == "reproduced"  # ties count
    assert p20.first_loss_verdict([0.52, 0.51, 0.495], [0.5, 0.5, 0.5], seeds).status == "reproduced"
    assert p20.first_loss_verdict([0.53, 0.51, 0.48], [0.5, 0.5, 0.5], seeds).status == "inconclusive"  # -0.02 seed
    assert p20.first_loss_verdict([0.49, 0.5, 0.5], [0.5, 0.5, 0.5], seeds).status == "inconclusive"  # mean < 0
    v = p20.first_loss_verdict([0.47, 0.5, 0.49], [0.5, 0.5, 0.5], seeds)
    assert v.status == "not-reproduced" and v.diffs[0] == pytest.approx(-0.03)
    with pytest.raises(ValueError):
        p20.first_loss_verdict([0.5], [0.5, 0.5], seeds)


def test_quality_guard_needs_a_permutation_that_reranks():
    ident, moved = list(range(5)), [1, 0, 2, 3, 4]
    assert p20.reranked_share([ident, moved, ident, moved]) == 0.5
    assert p20.reranked_share([ident]) == 0.0
    with pytest.raises(ValueError, match="at least one query"):
        p20.reranked_share([])
    ok = p20.RULE_QUALITY.verdict([0.35], [0.35])
    assert ok.status == "reproduced"
    v, note = p20.guard_quality(ok, [0.5])
    assert v.status == "reproduced" and "[0.5]" in note
    v, note = p20.guard_quality(ok, [0.9, 1 / 60])  # one seed's permutation is the input order: no evidence
    assert v.status == "inconclusive" and "by the rule alone: reproduced" in note
    assert v.diffs == ok.diffs  # the numbers stay; only the status changes
    bad = p20.RULE_QUALITY.verdict([0.30], [0.35])
    assert p20.guard_quality(bad, [0.0])[0].status == "inconclusive"
