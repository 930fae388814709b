"""P20 FIRST objective: LM + lambda * weighted RankNet on the first identifier position's logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses import make_loss, next_token_loss
from tokjax.losses.first_rank import (
    first_loss, identifier_scores, make_first_loss, ranknet_loss, ranknet_pair_weights,
)


def _official_rank_net(scores, true_rank, weighted=True):
    """numpy port of FIRST's per-example ranking term (llm-reranker train_ranking.py + utils/loss.py::rank_net).

    true_rank[k] = the teacher's 0-based rank of candidate k. The official code builds y_true by giving candidate
    k the true_rank[k]-th largest predicted score, keeps pairs with y_true_i > y_true_j, ranks y_true (1-based)
    for the weight 1/(rank_i + rank_j) and takes BCEWithLogits(weight) against 1: a plain mean over pairs.
    """
    s = np.asarray(scores, np.float64)
    y_true = np.sort(s)[::-1][np.asarray(true_rank)]
    order = np.argsort(-y_true, kind="stable")
    ranks = np.empty(len(s), np.int64)
    ranks[order] = np.arange(1, len(s) + 1)
    terms = []
    for i in range(len(s)):
        for j in range(len(s)):
            if y_true[i] - y_true[j] > 0:
                w = 1.0 / (ranks[i] + ranks[j]) if weighted else 1.0
                terms.append(w * np.log1p(np.exp(-(s[i] - s[j]))))
    return np.mean(terms) if terms else np.nan


def _random_ranks(rng, B, W):
    """Returns int [B, W] teacher ranks: per row a permutation of 0..n-1 on n random slots, -1 elsewhere."""
    ranks = np.full((B, W), -1, np.int64)
    for b in range(B):
        n = int(rng.integers(1, W + 1))
        slots = rng.permutation(W)[:n]
        ranks[b, slots] = rng.permutation(n)
    return ranks


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), weighting=st.sampled_from(["inverse_rank_sum", "uniform"]))
def test_ranknet_equals_the_official_pairwise_reference(seed, weighting):
    B, W = 4, 7  # one shape (one compile); rows hold 1..7 real candidates at random slots, padding elsewhere
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(B, W)) * 3).astype(np.float32)
    ranks = _random_ranks(rng, B, W)
    scores_pad = np.where(ranks >= 0, scores, np.float32(np.nan))  # padding may hold anything, NaN included
    loss, met = ranknet_loss(scores_pad, ranks, weighting=weighting)
    rows = []
    for b in range(B):
        real = ranks[b] >= 0
        rows.append(_official_rank_net(scores[b, real], ranks[b, real], weighted=weighting == "inverse_rank_sum"))
    rows = [r for r in rows if np.isfinite(r)]  # a one-candidate row has no pairs: left out of the mean
    want = np.mean(rows) if rows else 0.0
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
    assert int(met["rank_pairs"]) == sum(int((r >= 0).sum()) * (int((r >= 0).sum()) - 1) // 2 for r in ranks)
    # the weights: 1 / (r_i + r_j) with 1-based ranks, only on pairs i above j
    w = np.asarray(ranknet_pair_weights(ranks, weighting))
    for b in range(B):
        for i in range(W):
            for j in range(W):
                above = ranks[b, i] >= 0 and ranks[b, j] >= 0 and ranks[b, i] < ranks[b, j]
                expect = (1.0 / (ranks[b, i] + ranks[b, j] + 2) if weighting == "inverse_rank_sum" else 1.0) if above \
                    else 0.0
                assert abs(w[b, i, j] - expect) < 1e-7
    g = jax.grad(lambda s: ranknet_loss(s, ranks, weighting=weighting)[0])(jnp.asarray(scores_pad))
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[ranks < 0] == 0)


def test_gradient_pushes_the_teacher_top_up_and_the_bottom_down():
    rng = np.random.default_rng(0)
    ranks = np.asarray([[2, 0, 3, 1], [1, 3, 0, 2]])
    scores = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    g = np.asarray(jax.grad(lambda s: ranknet_loss(s, ranks)[0])(scores))
    top, bottom = ranks == 0, ranks == 3
    assert np.all(g[top] < 0) and np.all(g[bottom] > 0)
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-7)  # each pair term moves its two scores oppositely
    # sorted scores in the teacher's order score lower than the reverse order
    good = np.where(ranks == 0, 3.0, np.where(ranks == 1, 2.0, np.where(ranks == 2, 1.0, 0.0))).astype(np.float32)
    lo, met = ranknet_loss(good, ranks)
    hi, _ = ranknet_loss(-good, ranks)
    assert float(lo) < float(hi) and float(met["rank_pair_acc"]) == 1.0 and float(met["rank_top1"]) == 1.0


CFG = tokjax.ModelConfig(vocab_size=19, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=12)
IDS = np.asarray([3, 4, 5, 6], np.int32)  # identifiers "A".."D"
LBR = 2  # "["


def _toy_batch(rng, B, P=7, order=None):
    """Prompt: 2 filler tokens, the 4 ids listed in the teacher's order (or ``order`` for every row), then "[";
    target: the teacher's order."""
    toks, ranks = [], []
    for _ in range(B):
        perm = rng.permutation(4) if order is None else np.asarray(order)  # perm[k] = the candidate at rank k
        r = np.empty(4, np.int64)
        r[perm] = np.arange(4)
        prompt = [int(rng.integers(10, 19)), int(rng.integers(10, 19))] + IDS[perm].tolist() + [LBR]
        toks.append(prompt + IDS[perm].tolist())
        ranks.append(r)
    return {"tokens": np.asarray(toks, np.int32), "prompt_lengths": np.full(B, P, np.int32),
            "id_token_ids": IDS, "teacher_ranks": np.asarray(ranks, np.int32)}


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_lambda_zero_is_next_token_loss_and_scores_are_the_logits():
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    batch = _toy_batch(np.random.default_rng(1), 3)
    f = jax.jit(jax.value_and_grad(lambda p, lam: first_loss(p, CFG, batch, lam=lam, block_size=8)[0]))
    h = jax.jit(jax.value_and_grad(lambda p: next_token_loss(p, CFG, batch, block_size=8)[0]))
    (a, ga), (b, gb) = f(params, jnp.float32(0.0)), h(params)
    assert float(a) == float(b)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)  # 0 * the rank gradient: summation order only
    # lam is a runtime array: the same compiled function, a larger loss and a different gradient
    c, gc = f(params, jnp.float32(10.0))
    assert float(c) > float(a)
    assert max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(gc), jax.tree.leaves(ga))) > 1e-5
    # the total is lm + lam * ranknet(the full forward's logits at prompt_length - 1, columns = the ids)
    inputs = tokjax.model.Inputs(tokens=jnp.asarray(batch["tokens"][:, :-1]))
    fwd = jax.jit(lambda p, c: tokjax.model.forward(p, c, inputs), static_argnums=1)
    want = np.asarray(fwd(params, CFG).logits)[:, 6][:, IDS]
    np.testing.assert_allclose(float(c), float(a) + 10.0 * float(ranknet_loss(want, batch["teacher_ranks"])[0]),
                               rtol=1e-5)
    # both head layouts (tied embedding [V, D], separate lm_head [D, V]) read the logits' columns
    untied = tokjax.ModelConfig(vocab_size=19, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=12,
                                tied_embeddings=False)
    for cfg, p in ((CFG, params), (untied, tokjax.Model.init(untied, jax.random.key(1)).params)):
        out = fwd(p, cfg)
        got = identifier_scores(p, cfg, out.hidden, np.full(3, 6, np.int32), IDS)
        np.testing.assert_allclose(np.asarray(got), np.asarray(out.logits)[:, 6][:, IDS], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # the score-gradient test stays in the default suite
def test_a_rank_gradient_step_raises_the_teacher_top_identifier():
    params = tokjax.Model.init(CFG, jax.random.key(2)).params
    batch = _toy_batch(np.random.default_rng(3), 8)
    top = batch["teacher_ranks"] == 0

    @jax.jit
    def scores(p):
        hidden = tokjax.model.forward(p, CFG, tokjax.model.Inputs(tokens=jnp.asarray(batch["tokens"][:, :-1])),
                                      compute_logits=False).hidden
        return identifier_scores(p, CFG, hidden, batch["prompt_lengths"] - 1, IDS)

    def margin(p):  # the teacher top's logit minus the mean of the others, averaged over rows
        s = scores(p)
        return float(jnp.mean(jnp.sum(jnp.where(top, s, 0), -1) - jnp.sum(jnp.where(top, 0, s), -1) / 3))

    g = jax.jit(jax.grad(lambda p: ranknet_loss(scores(p), batch["teacher_ranks"])[0]))(params)
    stepped = jax.tree.map(lambda x, d: x - 0.5 * d, params, g)
    assert margin(stepped) > margin(params) + 1e-3


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_registered_first_loss_trains_and_beats_lm_only_on_the_rank_term():
    from tokjax.train import TrainConfig, train

    assert make_loss("first") is make_loss("first")
    data = _toy_batch(np.random.default_rng(4), 16, order=[2, 0, 3, 1])  # one teacher order, varied fillers
    params = tokjax.Model.init(CFG, jax.random.key(5)).params
    tc = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=15, batch_size=16, seq_len=10, log_every=1, eval_every=0,
                     checkpoint_every=0, weight_decay=0.0)
    runs = {}
    for lam in (1.0, 0.0):  # FIRST vs LM-only: lam 0 through batch["hparams"] (the rank term only measured)
        batch = data if lam else {**data, "hparams": {"lam": np.float32(0.0)}}
        _, hist = train(CFG, tc, lambda s: batch, loss_fn=make_loss("first", lam=1.0, block_size=8), params=params,
                        progress=False)
        runs[lam] = hist["train"]
    rank = [e["rank_loss"] for e in runs[1.0]]
    assert rank[-1] < 0.5 * rank[0], rank
    assert runs[1.0][-1]["lm_loss"] < runs[1.0][0]["lm_loss"]
    assert runs[1.0][-1]["rank_top1"] == 1.0
    assert runs[1.0][0]["rank_loss"] == runs[0.0][0]["rank_loss"]
    assert runs[0.0][0]["loss"] == runs[0.0][0]["lm_loss"] < runs[1.0][0]["loss"]
    assert rank[-1] < runs[0.0][-1]["rank_loss"], (rank[-1], runs[0.0][-1]["rank_loss"])


def test_bad_inputs_are_clear_errors():
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    good = _toy_batch(np.random.default_rng(0), 2)
    fn = make_first_loss(block_size=8)
    with pytest.raises(ValueError, match="missing"):
        fn(params, CFG, {k: v for k, v in good.items() if k != "teacher_ranks"})
    with pytest.raises(ValueError, match="prompt_lengths"):
        fn(params, CFG, {k: v for k, v in good.items() if k != "prompt_lengths"})
    with pytest.raises(ValueError, match="dict batch"):
        fn(params, CFG, [good["tokens"]])
    with pytest.raises(ValueError, match="permutation"):
        fn(params, CFG, {**good, "teacher_ranks": np.asarray([[0, 0, 1, 2], [0, 1, 2, 3]], np.int32)})
    with pytest.raises(ValueError, match="permutation"):
        fn(params, CFG, {**good, "teacher_ranks": np.asarray([[0, 1, 2, 4], [0, 1, 2, 3]], np.int32)})
    with pytest.raises(ValueError, match="id_token_ids must lie"):
        fn(params, CFG, {**good, "id_token_ids": np.asarray([3, 4, 5, 19], np.int32)})
    with pytest.raises(ValueError, match="identifiers per row"):
        fn(params, CFG, {**good, "id_token_ids": IDS[:3]})
    with pytest.raises(ValueError, match="one row per sequence"):
        fn(params, CFG, {**good, "teacher_ranks": good["teacher_ranks"][:1]})
    with pytest.raises(ValueError, match="rank positions"):
        fn(params, CFG, {**good, "rank_positions": np.asarray([3, 10], np.int32)})
    with pytest.raises(ValueError, match="prompt_lengths must be >= 1"):
        fn(params, CFG, {**good, "prompt_lengths": np.asarray([0, 7], np.int32)})
    with pytest.raises(ValueError, match="lam"):
        fn(params, CFG, {**good, "hparams": {"lam": -1.0}})
    with pytest.raises(ValueError, match="lam"):
        make_first_loss(lam=float("nan"))
    with pytest.raises(ValueError, match="weighting"):
        make_loss("first", weighting="ndcg")
    with pytest.raises(ValueError, match="method"):
        make_first_loss(method="fast")
    with pytest.raises(ValueError, match="teacher_ranks must be int"):
        ranknet_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="must equal"):
        ranknet_loss(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="scores must be float"):
        ranknet_loss(np.zeros((2, 3), np.int32), np.asarray([[0, 1, 2]] * 2))
    # nothing in range but no pairs: a finite 0, not NaN
    loss, met = ranknet_loss(np.zeros((2, 3), np.float32), np.asarray([[0, -1, -1], [-1, -1, 0]]))
    assert float(loss) == 0.0 and int(met["rank_pairs"]) == 0
