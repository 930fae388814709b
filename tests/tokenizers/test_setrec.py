"""SETRec (P55): sparse set mask, shared positions, one-pass query decoding, permutation invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.tokenizers import setrec as setrec_mod
from tokjax.tokenizers.setrec import (
    init_setrec, item_tokens, setrec_layout, setrec_loss, setrec_query_states, setrec_scores,
)

N_ITEMS, D_CF, D_FEAT, N_SEM = 30, 8, 12, 2
Q = 1 + N_SEM


@pytest.fixture(scope="module")
def setup():
    cfg = tokjax.ModelConfig(vocab_size=4, d_model=32, n_layers=2, n_heads=4, max_len=64)
    params = tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params
    sp = init_setrec(jax.random.PRNGKey(1), d_cf=D_CF, d_feat=D_FEAT, d_model=32, n_sem=N_SEM)
    r = np.random.default_rng(0)
    cf = jnp.asarray(r.normal(size=(N_ITEMS, D_CF)), jnp.float32)
    feats = jnp.asarray(r.normal(size=(N_ITEMS, D_FEAT)), jnp.float32)
    return cfg, params, sp, cf, feats


def _naive_layout(n_items, q):
    T = n_items * q + q
    vis = np.zeros((T, T), bool)
    for i in range(T):
        for j in range(T):
            if i < n_items * q:  # history token of item i // q
                vis[i, j] = (j == i) or (j < n_items * q and j // q < i // q)
            else:  # query slot
                vis[i, j] = (j == i) or j < n_items * q
    pos = np.array([i // q if i < n_items * q else n_items for i in range(T)])
    return vis, pos


@settings(max_examples=15, deadline=None, derandomize=True)
@given(n_items=st.integers(0, 6), q=st.integers(1, 4))
def test_layout_matches_a_naive_loop(n_items, q):
    vis, pos = setrec_layout(n_items, q)
    want_vis, want_pos = _naive_layout(n_items, q)
    np.testing.assert_array_equal(np.asarray(vis[0]), want_vis)
    np.testing.assert_array_equal(np.asarray(pos), want_pos)
    cvis, cpos = setrec_layout(n_items, q, causal=True)
    np.testing.assert_array_equal(np.asarray(cvis[0]), np.tril(np.ones_like(want_vis)))


def test_padded_items_are_invisible():
    vis, _ = setrec_layout(3, 2, item_valid=jnp.asarray([[False, True, True]]))
    v = np.asarray(vis[0])
    assert not v[2:, :2].any()  # nobody else sees item 0's tokens
    assert v[0, 0] and v[1, 1]


def _shuffle_within_items(hist, seed):
    r = np.random.default_rng(seed)
    h = np.asarray(hist).copy()
    for b in range(h.shape[0]):
        for k in range(h.shape[1]):
            h[b, k] = h[b, k, r.permutation(h.shape[2])]
    return jnp.asarray(h)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_are_invariant_to_order_inside_items_but_not_under_causal(setup, seed):
    cfg, params, sp, cf, feats = setup
    cat, _ = item_tokens(sp, cf, feats)
    ids = jnp.asarray(np.random.default_rng(seed).integers(0, N_ITEMS, size=(4, 6)))
    hist = cat[ids]
    shuffled = _shuffle_within_items(hist, seed + 10)
    assert not np.allclose(np.asarray(hist), np.asarray(shuffled))
    f = jax.jit(setrec_query_states, static_argnums=(1,), static_argnames=("causal",))
    s1, _ = setrec_scores(f(params, cfg, sp, hist), cat)
    s2, _ = setrec_scores(f(params, cfg, sp, shuffled), cat)
    np.testing.assert_allclose(np.asarray(s1), np.asarray(s2), atol=1e-6 * max(1.0, float(jnp.abs(s1).max())))
    c1, _ = setrec_scores(f(params, cfg, sp, hist, causal=True), cat)
    c2, _ = setrec_scores(f(params, cfg, sp, shuffled, causal=True), cat)
    assert float(jnp.abs(c1 - c2).max()) > 1e-3


def test_one_forward_pass_decodes_every_slot(setup, monkeypatch):
    cfg, params, sp, cf, feats = setup
    calls = []
    real = setrec_mod.forward
    monkeypatch.setattr(setrec_mod, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    cat, _ = item_tokens(sp, cf, feats)
    h = setrec_query_states(params, cfg, sp, cat[jnp.zeros((2, 5), jnp.int32)])
    assert h.shape == (2, Q, 32) and len(calls) == 1


def test_scores_equal_the_weighted_slot_dot_products(setup):
    cfg, params, sp, cf, feats = setup
    cat, _ = item_tokens(sp, cf, feats)
    h = jax.random.normal(jax.random.PRNGKey(3), (2, Q, 32))
    beta = jnp.asarray([1.0, 0.3, 0.7])
    score, slot = setrec_scores(h, cat, beta)
    naive = np.zeros((2, N_ITEMS))
    for b in range(2):
        for i in range(N_ITEMS):
            naive[b, i] = sum(float(beta[q]) * float(jnp.dot(h[b, q], cat[i, q])) for q in range(Q))
    np.testing.assert_allclose(np.asarray(score), naive, rtol=1e-4, atol=1e-4)
    assert slot.shape == (Q, 2, N_ITEMS)


def test_loss_trains(setup):
    import optax

    cfg, params, sp, cf, feats = setup
    r = np.random.default_rng(1)
    hist = jnp.asarray(r.integers(0, N_ITEMS, size=(16, 4)))
    target = (hist[:, -1] + 1) % N_ITEMS
    hist = hist.at[0, 0].set(-1)  # one padded item
    opt = optax.adam(3e-3)
    both = (params, sp)
    state = opt.init(both)

    @jax.jit
    def step(both, state):
        (loss, m), g = jax.value_and_grad(lambda b: setrec_loss(b[0], cfg, b[1], cf, feats, hist, target, 0.1),
                                          has_aux=True)(both)
        u, state = opt.update(g, state, both)
        return optax.apply_updates(both, u), state, loss

    losses = []
    for _ in range(20):
        both, state, loss = step(both, state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5


def test_bad_inputs(setup):
    cfg, params, sp, cf, feats = setup
    with pytest.raises(ValueError, match="history must be"):
        setrec_query_states(params, cfg, sp, jnp.zeros((2, 3, Q + 1, 32)))
    with pytest.raises(ValueError, match="max_len"):
        setrec_query_states(params, cfg, sp, jnp.zeros((1, 70, Q, 32)))
    with pytest.raises(ValueError, match="catalog"):
        setrec_scores(jnp.zeros((2, Q, 32)), jnp.zeros((5, Q, 16)))
    with pytest.raises(ValueError, match="item_valid"):
        setrec_layout(3, 2, item_valid=jnp.ones((1, 4), bool))
    with pytest.raises(ValueError, match="n_sem"):
        init_setrec(jax.random.PRNGKey(0), d_cf=2, d_feat=2, d_model=8, n_sem=-1)


def test_loss_and_scores_match_the_values_recorded_before_issue_12(setup):
    """fixtures/setrec_before.npz: recorded with the hand-written log_softmax; now target_logprobs."""
    from pathlib import Path

    cfg, params, sp, cf, feats = setup
    z = np.load(Path(__file__).parent / "fixtures" / "setrec_before.npz")
    hist, tgt = jnp.asarray(z["hist"]), jnp.asarray(z["tgt"])
    for causal in (0, 1):
        loss, m = setrec_loss(params, cfg, sp, cf, feats, hist, tgt, 0.1, causal=bool(causal))
        np.testing.assert_allclose(float(loss), float(z[f"loss_{causal}"]), rtol=1e-5)
        np.testing.assert_allclose(float(m["ce"]), float(z[f"ce_{causal}"]), rtol=1e-5)
        np.testing.assert_allclose(float(m["recon_mse"]), float(z[f"mse_{causal}"]), rtol=1e-5)
    toks, _ = item_tokens(sp, cf, feats)
    h = setrec_query_states(params, cfg, sp, toks[jnp.maximum(hist, 0)], item_valid=hist >= 0)
    np.testing.assert_allclose(setrec_scores(h, toks)[0], z["scores"], rtol=1e-5, atol=1e-5)
