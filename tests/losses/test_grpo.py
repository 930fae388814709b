"""GRPO / DAPO core (tokjax.losses.grpo) against a hand-written TRL GRPOTrainer reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses import TokenStats, token_stats
from tokjax.losses.grpo import group_advantages, grpo_loss, k3_kl, make_grpo_loss, zero_advantage_groups
from tokjax.losses.registry import make_loss


def trl_reference(logp, old, adv, mask, *, eps_low, eps_high, beta, ref, loss_type):
    """TRL GRPOTrainer._compute_loss (token-level importance sampling), written out in numpy (float64)."""
    logp, old, ref = (np.asarray(x, np.float64) for x in (logp, old, ref))
    mask = np.asarray(mask, np.float64)
    adv = np.asarray(adv, np.float64)[:, None]
    coef_1 = np.exp(logp - old)
    coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -np.minimum(coef_1 * adv, coef_2 * adv)
    if beta:
        per_token = per_token + beta * (np.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":  # seq_mean
        rows = mask.sum(-1) > 0
        return ((per_token * mask).sum(-1)[rows] / mask.sum(-1)[rows]).mean() if rows.any() else 0.0
    if loss_type == "bnpo":  # token_mean
        return (per_token * mask).sum() / max(mask.sum(), 1.0)
    return (per_token * mask).sum() / mask.size  # dr_grpo: const


def random_rollouts(seed, b, t):
    r = np.random.default_rng(seed)
    logp = -r.uniform(0.05, 4.0, (b, t)).astype(np.float32)
    old = (logp + r.normal(0, 0.3, (b, t))).astype(np.float32)
    ref = (logp + r.normal(0, 0.5, (b, t))).astype(np.float32)
    mask = r.uniform(size=(b, t)) < 0.7
    adv = r.normal(0, 1, b).astype(np.float32)
    return logp, old, ref, mask, adv


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 5), t=st.integers(1, 8),
       red=st.sampled_from([("token_mean", "bnpo"), ("seq_mean", "grpo"), ("const", "dr_grpo")]),
       beta=st.sampled_from([0.0, 0.04]))
def test_grpo_loss_equals_trl_reference(seed, b, t, red, beta):
    logp, old, ref, mask, adv = random_rollouts(seed, b, t)
    stats = TokenStats.create(logp, mask, ref_logp=ref)
    got, _ = grpo_loss(stats, old, adv, eps_low=0.2, eps_high=0.28, beta=beta, reduction=red[0])
    want = trl_reference(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, beta=beta, ref=ref, loss_type=red[1])
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["token_mean", "seq_mean", "const"])
def test_micro_batches_with_a_global_normalizer_add_up_to_the_full_batch(reduction):
    logp, old, ref, mask, adv = random_rollouts(3, 6, 5)
    mask[2] = False  # a row with no token
    full, _ = grpo_loss(TokenStats.create(logp, mask), old, adv, reduction=reduction)
    norm = {"token_mean": mask.sum(), "seq_mean": mask.any(-1).sum(), "const": mask.size}[reduction]
    parts = sum(float(grpo_loss(TokenStats.create(logp[s], mask[s]), old[s], adv[s], reduction=reduction,
                                normalizer=float(norm))[0]) for s in (slice(0, 2), slice(2, 6)))
    np.testing.assert_allclose(parts, float(full), rtol=1e-6)


def test_pads_with_minus_inf_and_an_empty_mask_are_finite_and_excluded():
    logp, old, _, mask, adv = random_rollouts(1, 3, 6)
    logp_pad = np.where(mask, logp, -np.inf).astype(np.float32)
    old_pad = np.where(mask, old, -np.inf).astype(np.float32)
    f = lambda lp, m: grpo_loss(TokenStats.create(lp, m), old_pad, adv)[0]  # noqa: E731
    loss, grad = jax.value_and_grad(f)(jnp.asarray(logp_pad), jnp.asarray(mask))
    clean = grpo_loss(TokenStats.create(logp, mask), old, adv)[0]
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(loss), float(clean), rtol=1e-6)
    assert np.all(np.asarray(grad)[~mask] == 0)
    empty = np.zeros_like(mask)
    loss0, grad0 = jax.value_and_grad(f)(jnp.asarray(logp_pad), jnp.asarray(empty))
    assert float(loss0) == 0.0 and np.all(np.asarray(grad0) == 0)


def test_equal_rewards_give_zero_advantage_and_zero_gradient():
    rewards = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, 4)
    assert np.all(np.asarray(adv) == 0) and float(zero_advantage_groups(rewards, 4)) == 1.0
    logp, old, _, mask, _ = random_rollouts(2, 8, 4)
    g = jax.grad(lambda lp: grpo_loss(TokenStats.create(lp, mask), old, adv)[0])(jnp.asarray(logp))
    assert np.all(np.asarray(g) == 0)


def test_group_advantages_references():
    r = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 5.0], np.float32)
    g = r.reshape(2, 4)
    centred = g - g.mean(1, keepdims=True)
    np.testing.assert_allclose(group_advantages(r, 4), (centred / (g.std(1, ddof=1, keepdims=True) + 1e-4)).ravel(),
                               rtol=1e-5)
    np.testing.assert_allclose(group_advantages(r, 4, scale="batch"), (centred / (r.std(ddof=1) + 1e-4)).ravel(),
                               rtol=1e-5)
    np.testing.assert_allclose(group_advantages(r, 4, scale="none"), centred.ravel(), rtol=1e-6)
    others = (g.sum(1, keepdims=True) - g) / 3  # RLOO: mean of the other rollouts
    np.testing.assert_allclose(group_advantages(r, 4, scale="none", rloo=True), (g - others).ravel(), rtol=1e-5)
    assert group_advantages(r, 4, scale=False).shape == (8,)


def test_token_rewards_are_group_normalised_then_summed_to_go():
    rewards = np.zeros((4, 3), np.float32)
    rm = np.zeros((4, 3), bool)
    rewards[:, 1], rm[:, 1] = [1.0, 0.0, 2.0, 4.0], True  # one step reward per rollout, at t = 1
    rewards[:, 2], rm[:, 2] = [0.0, 1.0, 1.0, 0.0], True
    got = np.asarray(group_advantages(rewards, 2, reward_mask=rm))
    for grp in (slice(0, 2), slice(2, 4)):
        vals = rewards[grp][rm[grp]]
        norm = np.where(rm[grp], (rewards[grp] - vals.mean()) / (vals.std(ddof=1) + 1e-4), 0.0)
        np.testing.assert_allclose(got[grp], np.cumsum(norm[:, ::-1], -1)[:, ::-1], rtol=1e-5, atol=1e-6)


def test_kept_denominator_and_weights_as_a_token_mask():
    logp, old, _, mask, adv = random_rollouts(5, 4, 6)
    keep = mask & (np.arange(6)[None] % 2 == 0)
    stats = TokenStats.create(logp, mask, weights=keep.astype(np.float32))
    valid, m = grpo_loss(stats, old, adv)
    kept, _ = grpo_loss(stats, old, adv, denominator="kept")
    only_kept, _ = grpo_loss(TokenStats.create(logp, keep), old, adv)
    np.testing.assert_allclose(float(kept), float(only_kept), rtol=1e-6)
    np.testing.assert_allclose(float(valid), float(only_kept) * keep.sum() / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(m["kept_fraction"]), keep.sum() / mask.sum(), rtol=1e-6)


def test_k3_kl_is_nonnegative_and_zero_at_the_reference():
    lp = jnp.linspace(-5, 0, 11)
    assert np.all(np.asarray(k3_kl(lp, lp[::-1])) >= 0) and np.all(np.asarray(k3_kl(lp, lp)) == 0)


@pytest.mark.slow
def test_registered_grpo_loss_trains_through_token_stats():
    cfg = tokjax.ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_len=16)
    params = tokjax.model.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 7), 0, 32)
    batch = {"tokens": tokens, "prompt_lengths": jnp.full((4,), 3)}
    old = token_stats(params, cfg, batch).logp
    batch |= {"old_logp": old, "advantages": group_advantages(jnp.asarray([1.0, 0.0, 0.0, 1.0]), 2)}
    loss_fn = make_loss("grpo", eps_high=0.2)
    loss, metrics = loss_fn(params, cfg, batch, None)
    # on-policy (old = current): ratio 1, so the loss is -mean(A) over counted tokens and nothing is clipped
    direct, _ = grpo_loss(token_stats(params, cfg, batch), old, batch["advantages"], eps_high=0.2)
    np.testing.assert_allclose(float(loss), float(direct), rtol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0
    g = jax.grad(lambda p: loss_fn(p, cfg, batch, None)[0])(params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(g))
    assert make_grpo_loss(entropy=True)(params, cfg, batch, None)[1]["entropy"] > 0


@pytest.mark.parametrize("call, match", [
    (lambda: group_advantages(jnp.ones(6), 4), "multiple of group_size"),
    (lambda: group_advantages(jnp.ones(6), 1), "group_size must be an int >= 2"),
    (lambda: group_advantages(jnp.asarray([1.0, jnp.nan]), 2), "finite"),
    (lambda: group_advantages(jnp.ones(4), 2, scale="std"), "scale must be one of"),
    (lambda: group_advantages(jnp.ones((4, 3)), 2), "reward_mask"),
    (lambda: grpo_loss(TokenStats.create(jnp.zeros((2, 3))), jnp.zeros((2, 3)), jnp.zeros(2), eps_low=1.5), "eps_low"),
    (lambda: grpo_loss(TokenStats.create(jnp.zeros((2, 3))), jnp.zeros((2, 3)), jnp.zeros(2), beta=-0.1), "beta"),
    (lambda: grpo_loss(TokenStats.create(jnp.zeros((2, 3))), jnp.zeros((2, 3)), jnp.zeros(2), beta=0.1), "reference"),
    (lambda: grpo_loss(TokenStats.create(jnp.zeros((2, 3))), jnp.zeros((2, 3)), jnp.zeros(3)), "advantages must"),
    (lambda: grpo_loss(TokenStats.create(jnp.zeros((2, 3))), jnp.zeros((2, 3)), jnp.zeros(2), reduction="sum"), "reduction"),
    (lambda: make_grpo_loss(denominator="all"), "denominator"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
