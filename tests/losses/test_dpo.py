"""Sequence DPO (TRL sigmoid) and P65 implicit token rewards."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.dpo import (
    bradley_terry_loss, dpo_loss, dpo_per_pair, implicit_token_rewards, make_dpo_loss, sequence_implicit_reward,
)


def _pair(seed, B=4, T=5, T2=6, p_mask=0.7):
    r = np.random.default_rng(seed)
    lp = lambda *s: -np.abs(r.normal(size=s) * 2.0).astype(np.float32)  # noqa: E731
    cm = r.uniform(size=(B, T)) < p_mask
    rm = r.uniform(size=(B, T2)) < p_mask
    cm[:, 0] = True
    rm[:, 0] = True
    return lp(B, T), lp(B, T), cm, lp(B, T2), lp(B, T2), rm


def naive_dpo(cp, cr, cm, rp, rr, rm, beta):
    """Returns the TRL sigmoid DPO loss in float64 NumPy, looping over pairs and tokens."""
    losses = []
    for b in range(cp.shape[0]):
        if not (cm[b].any() and rm[b].any()):
            continue
        dc = sum(float(cp[b, t]) - float(cr[b, t]) for t in range(cp.shape[1]) if cm[b, t])
        dr = sum(float(rp[b, t]) - float(rr[b, t]) for t in range(rp.shape[1]) if rm[b, t])
        z = beta * (dc - dr)
        losses.append(np.log1p(np.exp(-z)))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_matches_naive_reference(beta):
    args = _pair(0)
    got = float(dpo_loss(*args, jnp.float32(beta)))
    np.testing.assert_allclose(got, naive_dpo(*args, beta), rtol=1e-5, atol=1e-6)


def test_token_rewards_sum_to_sequence_reward_and_bt_equals_dpo():
    cp, cr, cm, rp, rr, rm = _pair(1)
    beta = 0.3
    tc = implicit_token_rewards(cp, cr, cm, beta)
    tr = implicit_token_rewards(rp, rr, rm, beta)
    np.testing.assert_allclose(tc, np.where(cm, beta * (cp - cr), 0.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jnp.sum(tc, -1), sequence_implicit_reward(cp, cr, cm, beta), rtol=1e-6, atol=1e-6)
    bt = -jax.nn.log_sigmoid(jnp.sum(tc, -1) - jnp.sum(tr, -1))
    np.testing.assert_allclose(jnp.mean(bt), dpo_loss(cp, cr, cm, rp, rr, rm, beta), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bradley_terry_loss(jnp.sum(tc, -1), jnp.sum(tr, -1)), bt, rtol=1e-6)


def test_all_masked_rows_contribute_zero_loss_and_grad():
    cp, cr, cm, rp, rr, rm = _pair(2)
    cm[1] = False  # pair 1: chosen side is padding
    rm[3] = False  # pair 3: rejected side is padding
    cp[1] = -np.inf  # padding garbage must not leak into values or gradients
    rp[3] = np.nan
    per, valid = dpo_per_pair(cp, cr, cm, rp, rr, rm, 0.2)
    assert list(np.asarray(valid)) == [True, False, True, False]
    assert float(per[1]) == 0.0 and float(per[3]) == 0.0
    keep = np.array([0, 2])
    ref = dpo_loss(cp[keep], cr[keep], cm[keep], rp[keep], rr[keep], rm[keep], 0.2)
    np.testing.assert_allclose(dpo_loss(cp, cr, cm, rp, rr, rm, 0.2), ref, rtol=1e-6)
    gc, gr = jax.grad(lambda a, b: dpo_loss(a, cr, cm, b, rr, rm, 0.2), argnums=(0, 1))(jnp.asarray(cp),
                                                                                         jnp.asarray(rp))
    assert np.all(np.isfinite(gc)) and np.all(np.isfinite(gr))
    assert np.all(np.asarray(gc)[1] == 0) and np.all(np.asarray(gr)[3] == 0)
    assert np.all(np.asarray(gc)[~cm] == 0) and np.all(np.asarray(gr)[~rm] == 0)
    assert np.any(np.asarray(gc)[0] != 0)
    z = np.zeros_like(cm)
    assert float(dpo_loss(cp, cr, z, rp, rr, rm, 0.2)) == 0.0


def test_beta_is_a_runtime_array_under_jit():
    args = _pair(3)
    f = jax.jit(lambda b: dpo_loss(*args, b))
    for beta in (0.05, 1.0):
        np.testing.assert_allclose(f(jnp.float32(beta)), naive_dpo(*args, beta), rtol=1e-5)
    assert f._cache_size() == 1


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.01, 5.0), B=st.integers(1, 4), T=st.integers(1, 6))
def test_properties(seed, beta, B, T):
    cp, cr, cm, rp, rr, rm = _pair(seed, B=B, T=T, T2=T + 1, p_mask=0.6)
    loss = float(dpo_loss(cp, cr, cm, rp, rr, rm, beta))
    assert loss >= 0.0 and np.isfinite(loss)
    np.testing.assert_allclose(loss, naive_dpo(cp, cr, cm, rp, rr, rm, beta), rtol=1e-4, atol=1e-5)
    # policy == reference gives zero rewards and loss log 2
    np.testing.assert_allclose(float(dpo_loss(cr, cr, cm, rr, rr, rm, beta)), np.log(2.0), rtol=1e-6)
    # swapping chosen and rejected flips the margin: l(m) - l(-m) = -m
    per, _ = dpo_per_pair(cp, cr, cm, rp, rr, rm, beta)
    sw, _ = dpo_per_pair(rp, rr, rm, cp, cr, cm, beta)
    m = sequence_implicit_reward(cp, cr, cm, beta) - sequence_implicit_reward(rp, rr, rm, beta)
    np.testing.assert_allclose(per - sw, -m, rtol=1e-4, atol=1e-4)
    # the gradient raises the chosen log-probs and lowers the rejected ones (only where the mask is on)
    gc, gr = jax.grad(lambda a, b: dpo_loss(a, cr, cm, b, rr, rm, beta), argnums=(0, 1))(jnp.asarray(cp),
                                                                                         jnp.asarray(rp))
    assert np.all(np.asarray(gc)[cm] <= 0) and np.all(np.asarray(gr)[rm] >= 0)
    assert np.all(np.asarray(gc)[~cm] == 0)


def test_bad_inputs():
    cp, cr, cm, rp, rr, rm = _pair(4)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(cp, cr, cm, rp, rr, rm, 0.0)
    with pytest.raises(ValueError, match="beta"):
        implicit_token_rewards(cp, cr, cm, -1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(cp, cr, cm, rp, rr, rm, float("nan"))
    with pytest.raises(ValueError, match="same"):
        dpo_loss(cp, cr[:, :-1], cm, rp, rr, rm, 0.1)
    with pytest.raises(ValueError, match="same"):
        implicit_token_rewards(cp, cr, cm[:, :-1], 0.1)
    with pytest.raises(ValueError, match="pairs"):
        dpo_loss(cp, cr, cm, rp[:-1], rr[:-1], rm[:-1], 0.1)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        implicit_token_rewards(cp[0], cr[0], cm[0], 0.1)
    with pytest.raises(ValueError, match="mask"):
        implicit_token_rewards(cp, cr, cm.astype(np.float32), 0.1)
    with pytest.raises(ValueError, match="beta"):
        make_dpo_loss(beta=0.0)
    with pytest.raises(ValueError, match="method"):
        make_dpo_loss(method="fast")


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_make_dpo_loss_matches_functional_form():
    cfg = tokjax.ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=8)
    pol = tokjax.Model.init(cfg, jax.random.key(0)).params
    ref = tokjax.Model.init(cfg, jax.random.key(1)).params
    r = np.random.default_rng(0)
    toks = jnp.asarray(r.integers(0, 11, size=(4, 7)), jnp.int32)  # 2 chosen rows, then 2 rejected rows
    batch = {"tokens": toks, "prompt_lengths": jnp.asarray([2, 3, 2, 3], jnp.int32)}
    loss_fn = make_dpo_loss(beta=0.1, ref=(ref, cfg), method="naive")
    loss, metrics = loss_fn(pol, cfg, batch)

    def logp(p):
        lp = jax.nn.log_softmax(tokjax.forward(p, cfg, toks[:, :-1]).logits, -1)
        return jnp.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]

    m = np.arange(1, 7)[None, :] >= np.array([2, 3, 2, 3])[:, None]
    pl, rl = logp(pol), logp(ref)
    want = dpo_loss(pl[:2], rl[:2], m[:2], pl[2:], rl[2:], m[2:], 0.1)
    np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-6)
    assert int(metrics["pair_count"]) == 2
    loss2, _ = loss_fn(pol, cfg, {**batch, "ref_logp": rl, "hparams": {"beta": 0.5}})
    np.testing.assert_allclose(loss2, dpo_loss(pl[:2], rl[:2], m[:2], pl[2:], rl[2:], m[2:], 0.5), rtol=1e-4)
    with pytest.raises(ValueError, match="2B rows"):
        loss_fn(pol, cfg, {"tokens": toks[:3]})
    with pytest.raises(ValueError, match="reference"):
        make_dpo_loss(beta=0.1)(pol, cfg, batch)
