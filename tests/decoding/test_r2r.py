"""Tests for P46 R2R small-large token routing (tokjax.decoding.r2r)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS
from tokjax.decoding.r2r import (
    RouterFeatures, apply_router, divergence_data, init_router, r2r, recall_threshold, router_features, router_probs,
)
from tokjax.train.recipes.r2r import train_router
from tokjax.model import forward

from tests.decoding._routing_pair import K, NEW, PROMPTS, V, make_pair, make_router  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def router():
    return make_router()


def gen(small, strategy, **kw):
    kw.setdefault("logits", L.greedy())
    return tokjax.generate(small, PROMPTS, max_new_tokens=NEW, strategy=strategy, eos_id=7, **kw)


@pytest.mark.slow
def test_theta_zero_equals_llm_and_above_one_equals_slm(pair, router):
    small, large = pair
    ref_l = tokjax.generate(large, PROMPTS, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    ref_s = tokjax.generate(small, PROMPTS, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    assert not np.array_equal(ref_l.tokens, ref_s.tokens)  # the check below can fail
    for kind, theta, ref, frac in (("mlp", 0.0, ref_l, 1.0), ("mlp", 1.5, ref_s, 0.0), ("random", 0.0, ref_l, 1.0),
                                   ("random", 1.5, ref_s, 0.0), ("entropy", np.inf, ref_s, 0.0)):
        out = gen(small, r2r(large, router, theta=theta, kind=kind))
        np.testing.assert_array_equal(out.tokens, ref.tokens, err_msg=f"{kind} theta={theta}")
        np.testing.assert_array_equal(out.lengths, ref.lengths)
        np.testing.assert_allclose(out.stats["llm_fraction"], frac)


@pytest.mark.slow
def test_never_routing_equals_slm_sampling(pair, router):
    small, large = pair
    key = jax.random.key(3)
    ref = tokjax.generate(small, PROMPTS, key=key, max_new_tokens=NEW, logits=L.temperature(0.8))
    out = tokjax.generate(small, PROMPTS, key=key, max_new_tokens=NEW, logits=L.temperature(0.8),
                          strategy=r2r(large, router, theta=2.0))
    np.testing.assert_array_equal(out.tokens, ref.tokens)


def test_router_features_match_direct_computation(pair):
    small, _ = pair
    x = jnp.asarray([[1, 2, 3, 4, 5, 6]], jnp.int32)
    out = forward(small.params, small.cfg, x)
    y = jnp.asarray([[3, 0, 31, 9, 9, 2]], jnp.int32)
    f = router_features(small.params, small.cfg, out.hidden, out.logits, y, k=K)
    assert f.hidden.shape == (1, 6, 32) and f.embedding.shape == (1, 6, 32) and f.top_logits.shape == (1, 6, K)
    z = np.asarray(out.logits, np.float64)
    np.testing.assert_allclose(f.top_logits, -np.sort(-z, axis=-1)[..., :K], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f.embedding, np.asarray(small.params["embed"])[np.asarray(y)], rtol=1e-6)
    np.testing.assert_allclose(f.hidden, out.hidden, rtol=1e-6)
    assert (np.diff(np.asarray(f.top_logits), axis=-1) <= 0).all()


@pytest.mark.slow
def test_routing_decisions_match_teacher_forced_router(pair, router):
    """Each generated token is the LLM argmax where p_div(SLM step) >= theta, else the SLM argmax (naive recomputation)."""
    small, large = pair
    probe = gen(small, r2r(large, router, theta=2.0))
    theta = float(np.median(probe.stats["router_score"]))
    out = gen(small, r2r(large, router, theta=theta))
    assert 0 < out.stats["llm_fraction"].mean() < 1
    width = out.tokens.shape[1]
    fs = jax.jit(lambda x: forward(small.params, small.cfg, x))
    fl = jax.jit(lambda x: forward(large.params, large.cfg, x).logits)
    for b in range(len(PROMPTS)):
        p, n = out.prompt_lengths[b], out.lengths[b]
        x = np.zeros((1, width), np.int32)
        x[0, :n] = out.tokens[b, :n]
        o = fs(x)
        ys = jnp.argmax(o.logits, -1).astype(jnp.int32)
        prob = np.asarray(router_probs(router, router_features(small.params, small.cfg, o.hidden, o.logits, ys, k=K)))[0]
        yl = np.asarray(jnp.argmax(fl(x), -1))[0]
        for t in range(p, n):
            pos = t - p
            assert out.stats["router_score"][b, pos] == pytest.approx(prob[t - 1], abs=1e-5)
            if abs(prob[t - 1] - theta) < 1e-5:
                continue
            use = prob[t - 1] >= theta
            assert out.stats["routed"][b, pos] == use
            assert out.tokens[b, t] == (yl[t - 1] if use else int(ys[0, t - 1])), (b, t)


def test_changing_theta_or_kind_does_not_recompile(pair, router):
    small, large = pair
    gen(small, r2r(large, router, theta=0.3))
    before = TRACE_COUNTS["decode_loop"]
    for kind, theta in (("mlp", 0.7), ("entropy", 1.0), ("random", np.array([0.1, 0.5, 0.9, 2.0]))):
        gen(small, r2r(large, router, theta=theta, kind=kind))
    assert TRACE_COUNTS["decode_loop"] == before


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), lo=st.floats(0.0, 1.0), hi=st.floats(0.0, 1.0))
def test_routed_fraction_is_monotone_in_theta(router, seed, lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    rng = np.random.default_rng(seed)
    f = RouterFeatures(rng.normal(size=(64, 32)), rng.normal(size=(64, 32)), -np.sort(-rng.normal(size=(64, K)) * 3))
    p = np.asarray(router_probs(router, jax.tree.map(jnp.asarray, f)))
    assert ((p >= 0) & (p <= 1)).all()
    assert (p >= hi).mean() <= (p >= lo).mean()
    # the same probabilities one row at a time: no cross-row leakage
    np.testing.assert_allclose(p[:3], [float(router_probs(router, RouterFeatures(*(a[i:i + 1] for a in f)))[0])
                                       for i in range(3)], rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), recall=st.floats(0.5, 1.0))
def test_recall_threshold_meets_recall_and_is_largest(seed, recall):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    p = np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)
    t = recall_threshold(p, y, recall)
    grid = np.linspace(0.01, 0.99, 100)
    if y.any():
        assert (p[y] >= t).mean() >= recall
        assert all((p[y] >= g).mean() < recall for g in grid[grid > t + 1e-12])
    assert recall_threshold(p, y, min(1.0, recall + 0.05)) <= t


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_train_router_learns_separable_labels_through_train():
    rng = np.random.default_rng(0)
    n = 512
    f = RouterFeatures(rng.normal(size=(n, 16)).astype(np.float32), rng.normal(size=(n, 16)).astype(np.float32),
                       -np.sort(-rng.normal(size=(n, 4)), axis=-1).astype(np.float32))
    labels = f.hidden[:, 0] + f.top_logits[:, 0] > 0.5
    router = train_router(f, labels, key=jax.random.key(0), steps=150, batch_size=128, learning_rate=3e-3,
                          dims=(16,), dropout=0.0)
    p = np.asarray(router_probs(router, jax.tree.map(jnp.asarray, f)))
    assert ((p >= 0.5) == labels).mean() > 0.9
    np.testing.assert_allclose(router["norm"]["mean"][:16], f.hidden.mean(0), atol=1e-5)


def test_divergence_data_labels_are_argmax_disagreement(pair):
    small, large = pair
    x = np.random.default_rng(1).integers(0, V, (3, 10))
    mask = np.ones_like(x, bool)
    mask[1, 5:] = False
    feats, labels, y_s, y_l, h_s = divergence_data(small, large, x, k=K, mask=mask, batch_size=2)
    assert labels.shape == (25,) and feats.hidden.shape == (25, 32) and feats.top_logits.shape == (25, K)
    ys = np.argmax(np.asarray(forward(small.params, small.cfg, jnp.asarray(x)).logits), -1)
    yl = np.argmax(np.asarray(forward(large.params, large.cfg, jnp.asarray(x)).logits), -1)
    np.testing.assert_array_equal(labels, (ys != yl)[mask])
    np.testing.assert_array_equal(y_s, ys[mask])
    np.testing.assert_array_equal(y_l, yl[mask])
    np.testing.assert_allclose(h_s, np.asarray(L.entropy(forward(small.params, small.cfg, jnp.asarray(x)).logits))[mask],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.embedding, np.asarray(small.params["embed"])[ys[mask]], rtol=1e-6)
    assert 0 < labels.mean() < 1


def test_bad_inputs(pair, router):
    small, large = pair
    other = tokjax.Model.init(tokjax.ModelConfig(vocab_size=V + 1, d_model=32, n_layers=1, n_heads=2, max_len=48),
                              jax.random.PRNGKey(2))
    with pytest.raises(ValueError, match="kind"):
        r2r(large, router, theta=0.5, kind="oracle")
    with pytest.raises(ValueError, match="NaN"):
        r2r(large, router, theta=np.nan)
    with pytest.raises(ValueError, match="needs a router"):
        r2r(large, None, theta=0.5)
    with pytest.raises(ValueError, match="top_k"):
        r2r(large, router, theta=0.5, top_k=K + 1)
    with pytest.raises(ValueError, match="Model"):
        r2r(large.params, router, theta=0.5)
    with pytest.raises(ValueError, match="vocab"):
        gen(small, r2r(other, router, theta=0.5))
    with pytest.raises(ValueError, match="d_model"):
        gen(small, r2r(large, init_router(jax.random.key(0), 48, top_k=K, dims=(8,)), theta=0.5))
    with pytest.raises(ValueError, match="theta"):
        gen(small, r2r(large, router, theta=np.ones(3)))
    with pytest.raises(ValueError, match="max_len"):
        tokjax.generate(small, PROMPTS, max_new_tokens=60, logits=L.greedy(), strategy=r2r(large, router, theta=0.5))
    out = forward(small.params, small.cfg, jnp.asarray([[1, 2]]))
    with pytest.raises(ValueError, match="k must"):
        router_features(small.params, small.cfg, out.hidden, out.logits, jnp.asarray([[1, 2]]), k=V + 1)
    with pytest.raises(ValueError, match="tokens must lie"):
        router_features(small.params, small.cfg, out.hidden, out.logits, jnp.asarray([[1, V]]), k=K)
    with pytest.raises(ValueError, match="hidden must be"):
        router_features(small.params, small.cfg, out.hidden[..., :5], out.logits, jnp.asarray([[1, 2]]), k=K)
    with pytest.raises(ValueError, match="this router reads"):
        apply_router(router, RouterFeatures(jnp.zeros((2, 32)), jnp.zeros((2, 32)), jnp.zeros((2, K + 1))))
    with pytest.raises(ValueError, match="recall"):
        recall_threshold([0.5], [True], recall=0.0)
    with pytest.raises(ValueError, match="dims"):
        init_router(jax.random.key(0), 32, dims=())
    with pytest.raises(ValueError, match="vocabulary"):
        divergence_data(small, other, np.zeros((1, 4), np.int32))
