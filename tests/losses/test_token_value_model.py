"""P50 TVM: trie labels vs a brute-force count (jitted and host versions), convergence to the true value on a
known Markov toy, the BCE value and gradient, ORM = TVM on unanimous problems, best-of-N reranking, the
registered loss through tokjax.train with a frozen trunk, and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.losses.registry import make_loss
from tokjax.losses.token_value_model import (
    make_tvm_loss, outcome_labels, rerank_best_of_n, token_values, trie_value_labels, trie_value_labels_host,
    tvm_loss, tvm_per_token, value_head, value_head_init,
)
from tokjax.model import Model, ModelConfig


def brute_labels(paths, correct, mask):
    """v[p, a, t] = mean outcome of the paths b valid at t whose tokens equal a's on [0, t] (a valid at t)."""
    P, N, T = paths.shape
    out = np.zeros((P, N, T))
    for p in range(P):
        for a in range(N):
            for t in range(T):
                if not mask[p, a, t]:
                    continue
                share = [b for b in range(N) if mask[p, b, t] and np.array_equal(paths[p, a, :t + 1], paths[p, b, :t + 1])]
                out[p, a, t] = np.mean([correct[p, b] for b in share])
    return out


_jit_labels = jax.jit(trie_value_labels)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 3), st.integers(1, 7), st.integers(1, 6), st.integers(1, 3), st.integers(0, 2 ** 31 - 1),
       st.booleans())
def test_trie_labels_equal_a_brute_force_count(P, N, T, vocab, seed, holes):
    rng = np.random.default_rng(seed)
    paths = rng.integers(0, vocab, (P, N, T))
    correct = rng.integers(0, 2, (P, N))
    if holes:  # any mask, not only prefixes
        mask = rng.random((P, N, T)) < 0.7
    else:  # each path a prefix of the row (a completion that ends), as rollouts are
        mask = np.arange(T)[None, None, :] < rng.integers(0, T + 1, (P, N))[..., None]
    want = brute_labels(paths, correct, mask)
    # padded to one fixed shape (one compile): extra paths and positions masked out change no label
    pad = ((0, 3 - P), (0, 7 - N), (0, 6 - T))
    got = np.asarray(_jit_labels(np.pad(paths, pad, constant_values=1), np.pad(correct, pad[:2], constant_values=1),
                                 np.pad(mask, pad)))[:P, :N, :T]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(trie_value_labels_host(paths, correct, mask), want, atol=1e-6)
    if P == 1:  # a single problem as [N, T]
        np.testing.assert_allclose(np.asarray(trie_value_labels(paths[0], correct[0], mask[0])), want[0], atol=1e-6)


# A known Markov chain: L i.i.d. bits, P(1) = Q; a path is correct iff it has >= K ones. V(prefix) is binomial.
L, Q, K = 8, 0.6, 5


def true_value(prefix_ones: int, t: int) -> float:
    """P(>= K ones in all L bits | prefix_ones ones among the first t + 1)."""
    rest, need = L - t - 1, K - prefix_ones
    return float(sum(math.comb(rest, j) * Q ** j * (1 - Q) ** (rest - j) for j in range(max(need, 0), rest + 1)))


def toy_mae(n: int, seed: int, labels_fn) -> float:
    paths = (np.random.default_rng(seed).random((4, n, L)) < Q).astype(np.int32)
    correct = (paths.sum(-1) >= K).astype(np.float32)
    v = np.asarray(labels_fn(paths, correct, np.ones(paths.shape, bool)))
    ones = np.cumsum(paths, -1)
    exact = np.vectorize(true_value)(ones, np.arange(L)[None, None, :])
    return float(np.mean(np.abs(v - exact)))


def test_labels_converge_to_the_true_value_as_n_grows():
    maes = [np.mean([toy_mae(n, s, trie_value_labels_host) for s in range(3)]) for n in (16, 256, 2048)]
    assert maes[0] > 1.5 * maes[1] > 2.25 * maes[2], maes
    assert maes[2] < 0.02, maes
    # the jitted labels give the same numbers at a size the N x N table affords
    assert toy_mae(64, 0, trie_value_labels) == pytest.approx(toy_mae(64, 0, trie_value_labels_host), abs=1e-6)


def test_bce_value_and_gradient_match_the_closed_form():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5)).astype(np.float32) * 3
    v = rng.random((3, 5)).astype(np.float32)
    m = rng.random((3, 5)) < 0.6
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    bce = -(v * np.log(p) + (1 - v) * np.log(1 - p))
    assert float(tvm_loss(z, v, m)) == pytest.approx(bce[m].mean(), rel=1e-5)
    g = np.asarray(jax.grad(lambda z: tvm_loss(z, v, m))(jnp.asarray(z)))
    np.testing.assert_allclose(g, np.where(m, (p - v) / m.sum(), 0.0), atol=1e-6)  # d BCE / dz = sigmoid(z) - v
    np.testing.assert_allclose(np.asarray(tvm_per_token(z, v, kind="mse")), (p - v) ** 2, atol=1e-6)
    assert float(tvm_loss(z, v, np.zeros_like(m))) == 0.0  # empty mask: 0, not NaN
    # finite differences through the head on features (the registered loss with cfg None)
    feats = rng.normal(size=(3, 5, 4)).astype(np.float32)
    head = value_head_init(jax.random.key(1), 4, bias=0.3)
    batch = {"features": feats, "labels": v, "mask": m}
    fn = make_tvm_loss()
    g = jax.grad(lambda h: fn({"value_head": h}, None, batch)[0])(head)
    eps = 1e-3
    for i in range(4):
        d = np.zeros(4, np.float32)
        d[i] = eps
        up = fn({"value_head": {"w": head["w"] + d, "b": head["b"]}}, None, batch)[0]
        dn = fn({"value_head": {"w": head["w"] - d, "b": head["b"]}}, None, batch)[0]
        assert float(g["w"][i]) == pytest.approx(float(up - dn) / (2 * eps), abs=2e-3)


def test_orm_equals_tvm_when_a_problems_paths_all_agree():
    rng = np.random.default_rng(3)
    paths = rng.integers(0, 3, (2, 6, 5))
    mask = np.arange(5)[None, None, :] < rng.integers(1, 6, (2, 6))[..., None]
    correct = np.array([[1] * 6, [0] * 6])
    np.testing.assert_allclose(np.asarray(trie_value_labels(paths, correct, mask)),
                               np.asarray(outcome_labels(correct, mask)))
    # and they differ when outcomes mix: a shared first token gets the problem's mean
    mixed = np.array([[1, 0, 0, 0, 1, 1], [0] * 6])
    same_start = paths.copy()
    same_start[:, :, 0] = 0
    v = np.asarray(trie_value_labels(same_start, mixed, np.ones_like(mask)))
    np.testing.assert_allclose(v[0, :, 0], 0.5)


def test_rerank_scores_by_the_last_valid_token_and_picks_the_best_per_group():
    values = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.7], [0.3, 0.3, 0.3], [0.8, 0.1, 0.0]], np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    scores, best = rerank_best_of_n(values, mask, 2)
    np.testing.assert_allclose(np.asarray(scores), [0.1, 0.7, 0.3, 0.1])
    assert np.asarray(best).tolist() == [1, 0]
    _, best_min = rerank_best_of_n(values, mask, 2, aggregate="min")
    assert np.asarray(best_min).tolist() == [1, 0]  # mins 0.1 / 0.2 and 0.3 / 0.1
    _, best_mean = rerank_best_of_n(values, mask, 2, aggregate="mean")
    assert np.asarray(best_mean).tolist() == [1, 1]  # means 0.1 / 0.467 and 0.3 / 0.45
    s, _ = rerank_best_of_n(values, np.zeros_like(mask), 4)
    assert np.all(np.isneginf(np.asarray(s)))
    tie, b = rerank_best_of_n(np.ones((4, 2)), np.ones((4, 2), bool), 4)
    assert int(b[0]) == 0  # ties pick the first path


def test_registered_tvm_loss_trains_the_head_with_a_frozen_trunk():
    from tokjax.train import TrainConfig, train

    cfg = ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    start = Model.init(cfg, jax.random.key(0)).params
    params = {**start, "value_head": value_head_init(jax.random.key(1), cfg.d_model)}
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, (16, 8)).astype(np.int32)
    labels = (tokens % 2).astype(np.float32)  # the value is a function of the token read
    mask = np.ones(tokens.shape, bool)
    tc = TrainConfig(lr=1e-1, warmup_steps=0, total_steps=12, batch_size=16, seq_len=7, log_every=1, eval_every=0,
                     checkpoint_every=0, weight_decay=0.0, trainable=("value_head",), loss={"name": "tvm"})
    model, hist = train(cfg, tc, lambda s: {"tokens": tokens, "labels": labels, "mask": mask}, params=params,
                        progress=False)
    losses = [e["loss"] for e in hist["train"]]
    assert losses[-1] < losses[0] - 0.05, losses
    for k in start:
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(model.params[k]), jax.tree.leaves(start[k])))
    v = np.asarray(token_values(model.params, cfg, tokens))
    assert v.shape == tokens.shape and np.all((v > 0) & (v < 1))
    assert make_loss("tvm", kind="mse") is make_loss("tvm", kind="mse")


def test_bad_input_is_a_clear_error():
    p = np.zeros((2, 3, 4), np.int32)
    with pytest.raises(ValueError, match=r"correct must be \[P, N\]"):
        trie_value_labels(p, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="0/1"):
        trie_value_labels(p, np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="integer token ids"):
        trie_value_labels_host(p.astype(np.float32), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask must have the shape"):
        trie_value_labels(p, np.zeros((2, 3)), np.ones((2, 3, 5), bool))
    with pytest.raises(ValueError, match="paths must be int"):
        trie_value_labels(np.zeros(4, np.int32), np.zeros(4))
    with pytest.raises(ValueError, match="labels must lie in"):
        tvm_loss(np.zeros((2, 3)), np.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="kind must be one of"):
        tvm_per_token(np.zeros(3), np.zeros(3), kind="hinge")
    with pytest.raises(ValueError, match="labels shape"):
        tvm_loss(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="group_size"):
        rerank_best_of_n(np.zeros((6, 3)), np.ones((6, 3), bool), 4)
    with pytest.raises(ValueError, match="aggregate"):
        rerank_best_of_n(np.zeros((6, 3)), np.ones((6, 3), bool), 3, aggregate="max")
    with pytest.raises(ValueError, match="d_model"):
        value_head_init(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="hidden must be"):
        value_head(value_head_init(jax.random.key(0), 4), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="no 'value_head' entry"):
        make_tvm_loss()({}, None, {"features": np.zeros((1, 2, 4)), "labels": np.zeros((1, 2)), "mask": np.ones((1, 2))})
    with pytest.raises(ValueError, match="batch keys"):
        make_tvm_loss()({"value_head": value_head_init(jax.random.key(0), 4)}, None, {"labels": np.zeros((1, 2))})
    with pytest.raises(ValueError, match="kind"):
        make_loss("tvm", kind="l1")
    with pytest.raises(ValueError, match="mask must be correct's shape"):
        outcome_labels(np.zeros(3), np.ones((4, 2), bool))


@pytest.mark.slow  # default-suite time; the other tests of this file keep the method covered
def test_recipe_labels_rollouts_on_completion_tokens_only():
    from tokjax.train.recipes.token_value_model import completion_mask, path_labels
    from tokjax.train.rl import Rollouts

    # 2 problems x 2 paths; prompt [1, 2] then completions; 0 pads; eos = 9 is a labelled token
    tokens = np.array([[1, 2, 5, 6, 9, 0], [1, 2, 5, 7, 9, 0], [1, 3, 4, 9, 0, 0], [1, 3, 4, 9, 0, 0]], np.int32)
    r = Rollouts(tokens=tokens, prompt_lengths=np.array([2, 2, 2, 2]), lengths=np.array([5, 5, 4, 4]),
                 truncated=np.zeros(4, bool), completions=[t[2:] for t in tokens], answers=[0, 0, 1, 1],
                 group_size=2, rewards=np.array([1, 0, 1, 1], np.float32))
    m = completion_mask(r)
    assert m.sum(1).tolist() == [3, 3, 2, 2] and not m[:, :2].any()
    tvm = path_labels(r, "tvm")
    np.testing.assert_allclose(tvm[0], [0, 0, 0.5, 1, 1, 0])  # shared "5" -> 1/2, then the paths split
    np.testing.assert_allclose(tvm[1], [0, 0, 0.5, 0, 0, 0])
    np.testing.assert_allclose(tvm[2:], path_labels(r, "orm")[2:])  # unanimous problem: TVM = ORM
    with pytest.raises(ValueError, match="labeling"):
        path_labels(r, "prm")
