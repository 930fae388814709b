"""Tests for P63 high-entropy minority tokens: entropy, top-rho mask, DAPO loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.losses.high_entropy_tokens import (
    dapo_loss, dapo_token_objective, group_advantages, token_entropy, top_entropy_mask,
)


def _np_dapo(logp, old, adv, mask, keep, eps_low=0.2, eps_high=0.28):
    total, n = 0.0, 0
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            n += 1
            if not keep[i, t]:
                continue
            r = math.exp(float(logp[i, t]) - float(old[i, t]))
            a = float(adv[i])
            total += min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
    return -total / n if n else 0.0


def _batch(seed, b=4, t=7, v=11):
    r = np.random.default_rng(seed)
    logits = r.normal(size=(b, t, v)).astype(np.float32) * 2
    mask = r.uniform(size=(b, t)) < 0.7
    logp = np.log(r.uniform(0.05, 0.95, size=(b, t))).astype(np.float32)
    old = (logp + r.normal(scale=0.3, size=(b, t))).astype(np.float32)
    adv = r.normal(size=b).astype(np.float32)
    return logits, mask, logp, old, adv


def test_token_entropy_matches_numpy_and_masks():
    logits, mask, *_ = _batch(0)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.where(mask, -(p * np.log(p)).sum(-1), 0.0)
    got = token_entropy(jnp.asarray(logits), jnp.asarray(mask))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


def test_token_entropy_stable_extremes():
    logits = jnp.array([[1e30, 0.0, 0.0], [0.0, 0.0, -jnp.inf], [5.0, 5.0, 5.0]], jnp.bfloat16)
    h = np.asarray(token_entropy(logits))
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h, [0.0, math.log(2), math.log(3)], atol=1e-2)


@pytest.mark.parametrize("rho,n,expect", [(0.2, 10, 2), (0.25, 10, 3), (0.21, 10, 3), (1.0, 10, 10),
                                          (0.01, 10, 1), (0.5, 7, 4), (0.2, 35, 7)])
def test_mask_keeps_ceil_rho_n_and_never_pads(rho, n, expect):
    r = np.random.default_rng(n)
    h = r.permutation(40).astype(np.float32).reshape(4, 10)
    mask = np.zeros(40, bool)
    mask[r.choice(40, n, replace=False)] = True
    mask = mask.reshape(4, 10)
    keep = np.asarray(top_entropy_mask(jnp.asarray(h), jnp.asarray(mask), rho))
    assert keep.sum() == expect
    assert not np.any(keep & ~mask)
    # the kept ones are the largest valid entropies
    assert h[keep].min() >= h[mask & ~keep].max(initial=-1)


def test_mask_ties_kept_and_empty():
    h = jnp.array([[1.0, 2.0, 2.0, 2.0, 0.5]])
    keep = top_entropy_mask(h, None, 0.2)  # k = 1, but three tokens tie at the threshold
    np.testing.assert_array_equal(np.asarray(keep), [[False, True, True, True, False]])
    none = top_entropy_mask(h, jnp.zeros(h.shape, bool), 0.5)
    assert not np.any(np.asarray(none))


def test_mask_rho_runtime_array_no_recompile():
    traces = []

    @jax.jit
    def f(h, m, rho):
        traces.append(1)
        return top_entropy_mask(h, m, rho).sum()

    h = jnp.arange(20.0).reshape(2, 10)
    m = jnp.ones((2, 10), bool)
    assert int(f(h, m, jnp.float32(0.2))) == 4
    assert int(f(h, m, jnp.float32(0.5))) == 10
    assert len(traces) == 1


def test_loss_matches_numpy_reference_with_entropy_mask():
    logits, mask, logp, old, adv = _batch(1)
    h = token_entropy(jnp.asarray(logits), jnp.asarray(mask))
    keep = top_entropy_mask(h, jnp.asarray(mask), 0.2)
    got = dapo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), token_mask=keep)
    ref = _np_dapo(logp, old, adv, mask, np.asarray(keep))
    assert abs(float(got) - ref) < 1e-5
    assert 0 < np.asarray(keep).sum() < mask.sum()


def test_rho_one_is_full_token_dapo_exactly():
    logits, mask, logp, old, adv = _batch(2)
    m = jnp.asarray(mask)
    h = token_entropy(jnp.asarray(logits), m)
    args = (jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), m)
    full = dapo_loss(*args)
    p63 = dapo_loss(*args, token_mask=top_entropy_mask(h, m, 1.0))
    assert float(full) == float(p63)
    g_full = jax.grad(lambda lp: dapo_loss(lp, *args[1:]))(args[0])
    g_p63 = jax.grad(lambda lp: dapo_loss(lp, *args[1:], token_mask=top_entropy_mask(h, m, 1.0)))(args[0])
    np.testing.assert_array_equal(np.asarray(g_full), np.asarray(g_p63))
    assert abs(float(full) - _np_dapo(logp, old, adv, mask, mask)) < 1e-5


def test_clip_higher_asymmetric():
    lp = jnp.log(jnp.array([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old = 0
    old = jnp.zeros((1, 2))
    pos = dapo_token_objective(lp, old, jnp.array([1.0]))
    np.testing.assert_allclose(np.asarray(pos), [[1.28, 0.5]], rtol=1e-6)
    neg = dapo_token_objective(lp, old, jnp.array([-1.0]))
    np.testing.assert_allclose(np.asarray(neg), [[-1.5, -0.8]], rtol=1e-6)


def test_all_masked_zero_loss_and_grad_even_with_inf_pads():
    _, mask, logp, old, adv = _batch(3)
    logp = jnp.asarray(logp).at[0, 0].set(-jnp.inf)
    none = jnp.zeros(mask.shape, bool)
    loss, g = jax.value_and_grad(lambda lp: dapo_loss(lp, jnp.asarray(old), jnp.asarray(adv), none))(logp)
    assert float(loss) == 0.0
    assert np.all(np.asarray(g) == 0.0)
    m = jnp.asarray(mask).at[0, 0].set(False)
    loss2, g2 = jax.value_and_grad(
        lambda lp: dapo_loss(lp, jnp.asarray(old), jnp.asarray(adv), m, token_mask=jnp.zeros(mask.shape, bool)))(logp)
    assert float(loss2) == 0.0 and np.all(np.asarray(g2) == 0.0)


def test_gradient_only_on_kept_tokens_and_explicit_normalizer():
    logits, mask, logp, old, adv = _batch(4)
    m = jnp.asarray(mask)
    keep = top_entropy_mask(token_entropy(jnp.asarray(logits), m), m, 0.3)
    g = jax.grad(lambda lp: dapo_loss(lp, jnp.asarray(old), jnp.asarray(adv), m, token_mask=keep))(jnp.asarray(logp))
    assert np.all(np.asarray(g)[~np.asarray(keep)] == 0.0)
    a = dapo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), m)
    b = dapo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), m, normalizer=2.0 * mask.sum())
    np.testing.assert_allclose(float(b), float(a) / 2, rtol=1e-6)


def test_group_advantages_reference():
    r = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], np.float32)
    got = np.asarray(group_advantages(jnp.asarray(r), 4))
    g = r.reshape(2, 4)
    ref = ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert np.all(got[4:] == 0)
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(r), 4, scale=False))[:4], [0.5, -0.5, -0.5, 0.5])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(0.01, 1.0), b=st.integers(1, 4), t=st.integers(1, 9))
def test_property_mask_count_subset_monotone(seed, rho, b, t):
    r = np.random.default_rng(seed)
    h = r.uniform(0, 3, size=(b, t)).astype(np.float32)
    mask = r.uniform(size=(b, t)) < 0.6
    keep = np.asarray(top_entropy_mask(jnp.asarray(h), jnp.asarray(mask), rho))
    n = int(mask.sum())
    assert not np.any(keep & ~mask)
    if n == 0:
        assert keep.sum() == 0
    else:
        k = max(1, math.ceil(rho * n - 1e-6 * max(rho * n, 1.0)))
        assert keep.sum() == k  # continuous entropies: no ties
        bigger = np.asarray(top_entropy_mask(jnp.asarray(h), jnp.asarray(mask), min(1.0, rho + 0.25)))
        assert np.all(bigger[keep])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), rho=st.floats(0.05, 1.0))
def test_property_loss_matches_reference(seed, rho):
    logits, mask, logp, old, adv = _batch(seed, b=3, t=5, v=6)
    m = jnp.asarray(mask)
    keep = top_entropy_mask(token_entropy(jnp.asarray(logits), m), m, rho)
    got = float(dapo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), m, token_mask=keep))
    assert abs(got - _np_dapo(logp, old, adv, mask, np.asarray(keep))) < 1e-5


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.01, float("nan")])
def test_bad_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        top_entropy_mask(jnp.ones((2, 3)), None, rho)


def test_bad_shapes_and_options():
    with pytest.raises(ValueError, match="rho must be a scalar"):
        top_entropy_mask(jnp.ones((2, 3)), None, jnp.array([0.2, 0.3]))
    with pytest.raises(ValueError, match="mask shape"):
        top_entropy_mask(jnp.ones((2, 3)), jnp.ones((3, 2), bool), 0.2)
    with pytest.raises(ValueError, match="mask shape"):
        token_entropy(jnp.ones((2, 3, 4)), jnp.ones((2, 4), bool))
    lp = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="old_logp shape"):
        dapo_loss(lp, jnp.zeros((2, 4)), jnp.zeros(2))
    with pytest.raises(ValueError, match="advantages"):
        dapo_loss(lp, lp, jnp.zeros(3))
    with pytest.raises(ValueError, match="token_mask shape"):
        dapo_loss(lp, lp, jnp.zeros(2), token_mask=jnp.ones((2, 2), bool))
    with pytest.raises(ValueError, match="eps_low"):
        dapo_loss(lp, lp, jnp.zeros(2), eps_low=1.5)
    with pytest.raises(ValueError, match="eps_high"):
        dapo_loss(lp, lp, jnp.zeros(2), eps_high=-0.1)
    with pytest.raises(ValueError, match="logp must have shape"):
        dapo_loss(jnp.zeros(3), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(jnp.zeros(4), 1)
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(jnp.zeros(5), 2)
