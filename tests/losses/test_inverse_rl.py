"""P60 inverse RL as TD-regularised MLE (offline IQLearn with Q = logits, V = logsumexp)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses import next_token_loss
from tokjax.losses.inverse_rl import inverse_rl_loss, make_inverse_rl_loss, soft_q, td_rewards


def _span_mask(B, T, starts, ends):
    return (np.arange(T)[None, :] >= np.asarray(starts)[:, None]) & (np.arange(T)[None, :] < np.asarray(ends)[:, None])


def _stats(seed, B, T, V=7):
    r = np.random.default_rng(seed)
    z = r.normal(size=(B, T, V)) * 2.0
    y = r.integers(0, V, size=(B, T))
    lse = np.log(np.exp(z).sum(-1))
    logp = np.take_along_axis(z, y[..., None], -1)[..., 0] - lse
    return z, y, logp.astype(np.float32), lse.astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 4), T=st.integers(1, 9), data=st.data())
def test_telescoping_identity(seed, B, T, data):
    # sum_t [Q(s_t,a_t) - V(s_{t+1})] = sum_t log pi + V(s_0) - V(s_T) over each row's response span
    starts = [data.draw(st.integers(0, T - 1)) for _ in range(B)]
    ends = [data.draw(st.integers(s + 1, T)) for s in starts]
    z, y, logp, lse = _stats(seed, B, T)
    m = _span_mask(B, T, starts, ends)
    q = np.asarray(soft_q(logp, lse, m), np.float64)
    for b in range(B):
        s, e = starts[b], ends[b]
        np.testing.assert_allclose(q[b, s:e], np.take_along_axis(z[b], y[b][:, None], -1)[s:e, 0], rtol=1e-5, atol=1e-5)
        v_next = [lse[b, t + 1] if t + 1 < e else 0.0 for t in range(s, e)]  # terminal after the span: V = 0
        lhs = sum(float(q[b, t]) - float(v) for t, v in zip(range(s, e), v_next))
        rhs = float(np.sum(logp[b, s:e], dtype=np.float64)) + float(lse[b, s]) - 0.0
        np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-5)
        # with gamma = 1 the summed TD rewards telescope the same way
        np.testing.assert_allclose(float(np.sum(np.asarray(td_rewards(logp, lse, m, 1.0), np.float64)[b])), rhs,
                                   rtol=1e-6, atol=1e-5)


def test_td_rewards_match_loop_and_loss_matches_naive():
    B, T = 3, 6
    _, _, logp, lse = _stats(0, B, T)
    m = _span_mask(B, T, [0, 2, 1], [6, 5, 2])
    g, lam = 0.9, 0.3
    r = np.asarray(td_rewards(logp, lse, m, g))
    want = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if m[b, t]:
                nxt = lse[b, t + 1] if t + 1 < T and m[b, t + 1] else 0.0
                want[b, t] = logp[b, t] + lse[b, t] - g * nxt
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)
    loss, met = inverse_rl_loss(logp, lse, m, lam=lam, gamma=g)
    naive = (-np.sum(logp[m]) + lam * np.sum(want[m] ** 2)) / m.sum()
    np.testing.assert_allclose(float(loss), naive, rtol=1e-5)
    assert float(met["token_count"]) == m.sum()


CFG = tokjax.ModelConfig(vocab_size=17, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)


@pytest.mark.slow
def test_lambda_zero_is_next_token_loss_value_and_gradient(method="cut"):
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    toks = np.random.default_rng(0).integers(0, 17, (3, 9)).astype(np.int32)
    batch = {"tokens": toks, "prompt_lengths": np.asarray([2, 3, 1], np.int32)}
    irl = make_inverse_rl_loss(lam=0.0, method=method, block_size=8)
    f = jax.jit(jax.value_and_grad(lambda p: irl(p, CFG, batch)[0]))
    h = jax.jit(jax.value_and_grad(lambda p: next_token_loss(p, CFG, batch, method=method, block_size=8)[0]))
    (a, ga), (b, gb) = f(params), h(params)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # lam > 0 changes the gradient, and lse gradients flow (the TD term depends on V)
    irl2 = make_inverse_rl_loss(lam=0.5, method=method, block_size=8)
    c, gc = jax.jit(jax.value_and_grad(lambda p: irl2(p, CFG, batch)[0]))(params)
    assert float(c) > float(a)
    assert max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(gc), jax.tree.leaves(ga))) > 1e-5


def test_padded_minus_inf_is_finite():
    B, T = 2, 5
    _, _, logp, lse = _stats(1, B, T)
    m = _span_mask(B, T, [1, 0], [4, 2])
    logp[~m] = -np.inf
    lse[~m] = np.nan
    f = lambda lp, v: inverse_rl_loss(lp, v, m, lam=0.7, gamma=0.95)[0]  # noqa: E731
    loss = f(jnp.asarray(logp), jnp.asarray(lse))
    g1, g2 = jax.grad(f, argnums=(0, 1))(jnp.asarray(logp), jnp.asarray(lse))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    assert np.all(np.asarray(g1)[~m] == 0) and np.all(np.asarray(g2)[~m] == 0)


def test_bad_inputs():
    _, _, logp, lse = _stats(2, 2, 4)
    m = np.ones((2, 4), bool)
    for g in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="gamma"):
            td_rewards(logp, lse, m, g)
    with pytest.raises(ValueError, match="lam"):
        inverse_rl_loss(logp, lse, m, lam=-1.0)
    with pytest.raises(ValueError, match="same|share"):
        inverse_rl_loss(logp, lse[:, :-1], m, lam=0.1)
    with pytest.raises(ValueError, match="reduction"):
        inverse_rl_loss(logp, lse, m, lam=0.1, reduction="mean")
    with pytest.raises(ValueError, match="gamma"):
        make_inverse_rl_loss(gamma=2.0)
