"""Tests for P73's vocabulary-key probe (tokjax.analysis.vocab_keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.analysis.vocab_keys import key_neighbours, key_rank_correlation, rank_key_spearman, unembedding_keys
from tokjax.model.forward import Inputs, forward

V, D = 64, 32


def planted_keys(rng, u, c):
    """Keys k_0 = u and k_v = c_v u + sqrt(1 - c_v^2) n_v with n_v unit vectors orthogonal to u."""
    n = rng.normal(size=(len(c), u.shape[0]))
    n -= (n @ u)[:, None] * u[None]
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return np.concatenate([u[None], c[:, None] * u[None] + np.sqrt(1 - c[:, None] ** 2) * n]).astype(np.float32)


@pytest.fixture(scope="module")
def untied():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=2, max_len=32, tied_embeddings=False)
    return tokjax.Model.init(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def tied():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=2, max_len=32)
    return tokjax.Model.init(cfg, jax.random.key(1))


def test_planted_unembedding_gives_correlation_one_through_the_forward(untied):
    """The head's keys are built around the query h: logit_v = |h| c_v and cos(k_v, k_top1) = c_v, so the
    key similarity alone sets the ranks and rho = 1; reversing the similarities (rank 2 farthest) gives -1."""
    tokens = np.array([[5, 9, 2, 33, 7]], np.int32)
    out = forward(untied.params, untied.cfg, Inputs(tokens=jnp.asarray(tokens)), compute_logits=False)
    h = np.asarray(out.hidden)[0, -1]
    u = h / np.linalg.norm(h)
    rng = np.random.default_rng(0)
    c = rng.uniform(-0.9, 0.9, V - 1)
    params = dict(untied.params, lm_head=jnp.asarray(planted_keys(rng, u, c).T))
    res = key_rank_correlation(params, untied.cfg, tokens, window=(2, V))
    assert int(res.top1[0]) == 0
    np.testing.assert_allclose(res.rho, [1.0], atol=1e-5)
    np.testing.assert_allclose(res.cos[0], np.sort(c)[::-1], atol=1e-5)  # rank order = similarity order
    # flip which tokens are similar: logits stay, cosines of the window reverse -> rho = -1
    keys = np.asarray(unembedding_keys(params, untied.cfg))
    order = 1 + np.argsort(-c)  # token ids by rank 2..V
    flipped = keys.copy()
    flipped[order] = planted_keys(rng, u, np.sort(c))[1:]  # rank 2 now gets the smallest cosine
    res2 = key_rank_correlation(params, untied.cfg, tokens, window=(2, V), keys=flipped)
    np.testing.assert_allclose(res2.rho, [-1.0], atol=1e-5)


def test_random_logits_and_keys_give_correlation_near_zero():
    k1, k2 = jax.random.split(jax.random.key(3))
    logits = jax.random.normal(k1, (256, 500))
    keys = jax.random.normal(k2, (500, 16))
    res = rank_key_spearman(logits, keys, window=(2, 100))
    assert res.rho.shape == (256,) and res.ids.shape == (256, 99) and res.cos.shape == (256, 99)
    assert abs(float(res.rho.mean())) < 0.03  # sd of the mean ~ 0.1 / 16
    assert float(res.rho.std()) > 0.05  # each row is a noisy estimate, not a constant


def test_key_similarity_logits_batched():
    """Every row's logits are a monotone function of cosine to its own top-1 key -> rho = 1 for every row."""
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(200, 8)).astype(np.float32)
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    top = np.array([3, 50, 199])
    logits = np.tanh(unit[top] @ unit.T) * 5.0
    logits[np.arange(3), top] = 10.0
    res = rank_key_spearman(logits, keys, window=(2, 60))
    np.testing.assert_array_equal(res.top1, top)
    np.testing.assert_allclose(res.rho, 1.0, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0), st.integers(3, 40))
def test_rho_in_range_and_invariant_to_key_norms_and_monotone_logits(seed, scale, width):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, 50)).astype(np.float32)
    keys = rng.normal(size=(50, 6)).astype(np.float32)
    w = (2, 2 + width)
    a = rank_key_spearman(logits, keys, window=w)
    b = rank_key_spearman(scale * logits + 1.0, keys * rng.uniform(0.5, 2.0, (50, 1)).astype(np.float32), window=w)
    assert np.all(np.abs(np.asarray(a.rho)) <= 1 + 1e-6) and np.all(np.isfinite(np.asarray(a.rho)))
    np.testing.assert_allclose(a.rho, b.rho, atol=1e-5)


def test_tied_model_uses_the_embedding_as_keys_and_lengths_pick_the_last_real_position(tied):
    cfg = tied.cfg
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, V, (5, 12)).astype(np.int32)
    lengths = np.array([12, 3, 7, 1, 12])
    padded = tokens.copy()
    for b, n in enumerate(lengths):
        padded[b, n:] = 0
    res = key_rank_correlation(tied.params, cfg, padded, lengths=lengths, window=(2, 40), batch_size=2)
    assert res.rho.shape == (5,)
    logits = forward(tied.params, cfg, Inputs(tokens=jnp.asarray(tokens)), compute_logits=True).logits
    want = rank_key_spearman(logits[np.arange(5), lengths - 1], tied.params["embed"], window=(2, 40))
    np.testing.assert_allclose(res.rho, want.rho, atol=1e-5)
    np.testing.assert_array_equal(res.top1, want.top1)
    assert unembedding_keys(tied.params, cfg) is tied.params["embed"]


def test_key_neighbours_match_brute_force(tied):
    keys = np.asarray(tied.params["embed"], np.float64)
    unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    ids = np.array([0, 7, 63])
    nbr, cos = key_neighbours(tied.params, tied.cfg, ids, k=5)
    sims = unit[ids] @ unit.T
    sims[np.arange(3), ids] = -np.inf
    np.testing.assert_array_equal(nbr, np.argsort(-sims, axis=1)[:, :5])
    np.testing.assert_allclose(cos, np.sort(sims, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert not np.any(np.asarray(nbr) == ids[:, None])


def test_bad_input(tied):
    p, cfg = tied.params, tied.cfg
    ok = np.zeros((2, 4), np.int32)
    for window in [(1, 10), (2, 3), (2, V + 1), (2.0, 10), [2, 10]]:
        with pytest.raises(ValueError, match="window"):
            key_rank_correlation(p, cfg, ok, window=window)
    with pytest.raises(ValueError, match="token ids"):
        key_rank_correlation(p, cfg, ok + V, window=(2, 10))
    with pytest.raises(ValueError, match=r"tokens must be int ids \[B, T\]"):
        key_rank_correlation(p, cfg, np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match="lengths"):
        key_rank_correlation(p, cfg, ok, lengths=[0, 4])
    with pytest.raises(ValueError, match="max_len"):
        key_rank_correlation(p, cfg, np.zeros((1, 40), np.int32))
    with pytest.raises(ValueError, match="keys must be a float"):
        key_rank_correlation(p, cfg, ok, window=(2, 10), keys=np.zeros((V - 1, D), np.float32))
    with pytest.raises(ValueError, match="ModelConfig"):
        key_rank_correlation(cfg, p, ok)
    with pytest.raises(ValueError, match="batch_size"):
        key_rank_correlation(p, cfg, ok, batch_size=0)
    with pytest.raises(ValueError, match="logits must be float"):
        rank_key_spearman(np.zeros((3,), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="k must be"):
        key_neighbours(p, cfg, [1], k=V)
    with pytest.raises(ValueError, match="ids must lie"):
        key_neighbours(p, cfg, [V], k=2)
