"""InfiGFusion GLD (P12): co-activation graphs of top-k logits and the sorting-based GW approximation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.infigfusion import (
    coactivation_graph, graph_on_logits_loss, make_gld_loss, sorted_gw, topk_features,
)


def _logits(seed, B=2, T=5, V=12, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def _numpy_model(seed=0, V=41):
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    specs = tokjax.model.param_specs(cfg)
    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec)), cfg


def exact_gw(a, b):
    """Returns min over node permutations P of (1/k^2) ||A - P B P^T||^2 (exact GW for PSD graphs), by brute force."""
    k = a.shape[0]
    best = np.inf
    for p in itertools.permutations(range(k)):
        idx = np.asarray(p)
        best = min(best, float(((a - b[np.ix_(idx, idx)]) ** 2).sum()) / k ** 2)
    return best


def _psd(seed, k, rank=3):
    z = np.random.default_rng(seed).normal(size=(rank, k))
    return (z.T @ z) / rank


def test_graph_matches_naive_loop():
    x = _logits(0)
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    for values in ("logits", "logprobs", "probs"):
        g = np.asarray(coactivation_graph(x, jnp.asarray(mask), k=4, temperature=2.0, values=values))
        xs = np.asarray(x, np.float64) / 2.0
        for b in range(2):
            acc, n = np.zeros((4, 4)), 0
            for t in range(5):
                if mask[b, t]:
                    row = xs[b, t]
                    if values != "logits":
                        row = row - row.max() - np.log(np.exp(row - row.max()).sum())
                        row = np.exp(row) if values == "probs" else row
                    z = np.sort(row)[::-1][:4]
                    acc += np.outer(z, z)
                    n += 1
            np.testing.assert_allclose(g[b], acc / max(n, 1), rtol=1e-5, atol=1e-6)
    assert np.all(g[1] == 0)


def test_sorting_bounds_sandwich_exact_gw():
    for seed in range(6):
        k = 3 + seed % 3
        a, b = _psd(seed, k), _psd(100 + seed, k)
        exact = exact_gw(a, b)
        up = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), "aligned"))
        lo = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), "degree"))
        assert lo <= exact * (1 + 1e-5) + 1e-7
        assert exact <= up * (1 + 1e-5) + 1e-7


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_aligned_is_exact_for_rank_one_nonnegative_graphs(seed, k):
    # One position with probability features: G = z z^T with z >= 0, where the rearrangement
    # inequality makes the degree-sorted matching optimal.
    r = np.random.default_rng(seed)
    s = jnp.asarray(r.normal(size=(1, 1, 9)) * 2, jnp.float32)
    t = jnp.asarray(r.normal(size=(1, 1, 7)) * 2, jnp.float32)
    gs = np.asarray(coactivation_graph(s, k=k, values="probs"))[0]
    gt = np.asarray(coactivation_graph(t, k=k, values="probs"))[0]
    loss = float(graph_on_logits_loss(s, t, k=k, values="probs"))
    np.testing.assert_allclose(loss, exact_gw(gs, gt), rtol=1e-4, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_graph_relabelling_invariance_and_zero_on_identical(seed, k):
    a, b = _psd(seed, k), _psd(seed + 1, k)
    p, q = np.random.default_rng(seed).permutation(k), np.random.default_rng(seed + 7).permutation(k)
    pa, qb = a[np.ix_(p, p)], b[np.ix_(q, q)]
    for method in ("aligned", "degree"):
        base = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), method))
        assert base >= 0
        np.testing.assert_allclose(float(sorted_gw(jnp.asarray(pa), jnp.asarray(qb), method)), base, rtol=1e-5,
                                   atol=1e-7)
        assert float(sorted_gw(jnp.asarray(a), jnp.asarray(pa), method)) <= 1e-10


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_loss_invariant_to_vocabulary_permutation_and_differing_vocab(seed):
    s, t = _logits(seed, V=10), _logits(seed + 1, V=14)
    base = float(graph_on_logits_loss(s, t, k=5))
    perm = np.random.default_rng(seed).permutation(10)
    np.testing.assert_allclose(float(graph_on_logits_loss(s[..., perm], t, k=5)), base, rtol=1e-5, atol=1e-7)
    assert float(graph_on_logits_loss(s, s, k=5)) == 0.0
    assert float(graph_on_logits_loss(s[..., perm], s, k=5)) == 0.0


def test_gradient_matches_finite_differences():
    s, t = _logits(3, B=2, T=3, V=8), _logits(4, B=2, T=3, V=8)
    mask = jnp.asarray([[1, 1, 0], [1, 0, 1]], bool)
    for method, values in (("aligned", "logits"), ("degree", "probs")):
        f = jax.jit(lambda x: graph_on_logits_loss(x, t, mask, k=3, temperature=1.5, values=values, method=method))
        g = np.asarray(jax.jit(jax.grad(f))(s))
        assert np.all(g[0, 2] == 0) and np.all(g[1, 1] == 0)  # masked positions get no gradient
        x0 = np.asarray(s, np.float64)
        for idx in [(0, 0, int(np.argmax(x0[0, 0]))), (1, 2, int(np.argmax(x0[1, 2]))), (0, 1, 0)]:
            e = np.zeros_like(x0)
            e[idx] = 1e-2
            fd = (float(f(jnp.asarray(x0 + e, jnp.float32))) - float(f(jnp.asarray(x0 - e, jnp.float32)))) / 2e-2
            np.testing.assert_allclose(g[idx], fd, rtol=3e-2, atol=1e-4)
    # the teacher gets no gradient
    gt = jax.grad(lambda y: graph_on_logits_loss(s, y, k=3))(t)
    assert np.all(np.asarray(gt) == 0)


def test_mask_normalizer_and_empty():
    s, t = _logits(5, B=4, T=3), _logits(6, B=4, T=3)
    gol = jax.jit(lambda x, y, m, n=None: graph_on_logits_loss(x, y, m, k=4, normalizer=n))
    mask = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 3)) < 0.7).at[2].set(False)
    full = gol(s, t, mask)
    # masked positions do not matter
    s2 = jnp.where(mask[..., None], s, 100.0)
    np.testing.assert_allclose(float(gol(s2, t, mask)), float(full), rtol=1e-6)
    # micro-batches with the global row count add up to the full-batch loss
    rows = float(jnp.sum(jnp.any(mask, -1)))
    parts = sum(float(gol(s[i:i + 2], t[i:i + 2], mask[i:i + 2], jnp.float32(rows))) for i in (0, 2))
    np.testing.assert_allclose(parts, float(full), rtol=1e-5)
    none = jnp.zeros((4, 3), bool)
    v, g = jax.jit(jax.value_and_grad(lambda x: graph_on_logits_loss(x, t, none, k=4)))(s)
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)


def test_runtime_temperature_no_recompile():
    s, t = _logits(7), _logits(8)
    traces = []

    @jax.jit
    def f(x, tau):
        traces.append(1)
        return graph_on_logits_loss(x, t, k=4, temperature=tau)

    a, b = f(s, jnp.float32(1.0)), f(s, jnp.float32(3.0))
    assert len(traces) == 1 and float(a) != float(b)
    np.testing.assert_allclose(float(a), float(graph_on_logits_loss(s, t, k=4)), rtol=1e-6)


def test_bad_inputs():
    s, t = _logits(0), _logits(1)
    with pytest.raises(ValueError, match="batch, seq"):
        graph_on_logits_loss(s, t[:, :3], k=4)
    with pytest.raises(ValueError, match="must not exceed"):
        graph_on_logits_loss(s, t, k=13)
    with pytest.raises(ValueError, match="temperature"):
        graph_on_logits_loss(s, t, k=4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        graph_on_logits_loss(s, t, k=4, temperature=-1.0)
    with pytest.raises(ValueError, match="mask shape"):
        graph_on_logits_loss(s, t, jnp.ones((2, 4), bool), k=4)
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        graph_on_logits_loss(s[0], t[0], k=4)
    with pytest.raises(ValueError, match="positive int"):
        graph_on_logits_loss(s, t, k=0)
    with pytest.raises(ValueError, match="values"):
        topk_features(s, 3, values="ranks")
    with pytest.raises(ValueError, match="method"):
        sorted_gw(jnp.eye(3), jnp.eye(3), "exact")
    with pytest.raises(ValueError, match="square"):
        sorted_gw(jnp.eye(3), jnp.eye(4))
    with pytest.raises(ValueError, match="normalizer"):
        graph_on_logits_loss(s, t, k=4, normalizer=-1.0)


def test_factory_train_signature():
    params, cfg = _numpy_model(0)
    t_params, _ = _numpy_model(1)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, size=(3, 9)), jnp.int32)
    batch = {"tokens": tokens, "lengths": jnp.array([9, 7, 5])}
    loss_fn = make_gld_loss((t_params, cfg), k=5, gld_weight=0.5, kd_weight=1.0)
    (loss, m), g = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, cfg, batch, None), has_aux=True))(params)
    assert set(m) >= {"loss", "ce", "kd", "gld", "token_count", "teacher_agreement"}
    np.testing.assert_allclose(float(loss), float(m["ce"] + m["kd"] + 0.5 * m["gld"]), rtol=1e-5)
    assert float(m["token_count"]) == 8 + 6 + 4
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    # runtime weight override; a student identical to its teacher has zero KD and zero GLD
    m0 = jax.jit(lambda p, b: loss_fn(p, cfg, b, None)[1])(t_params, {**batch, "hparams": {"gld_weight": 0.0,
                                                                                            "kd_weight": 0.0}})
    np.testing.assert_allclose(float(m0["loss"]), float(m0["ce"]), rtol=1e-6)
    assert abs(float(m0["kd"])) < 1e-5 and abs(float(m0["gld"])) < 1e-9 and float(m0["teacher_agreement"]) == 1.0
    with pytest.raises(ValueError, match="teacher"):
        make_gld_loss(params)
