"""P47 LaSeR (tokjax.losses.laser): reduction to GRPO, r_s by hand, the aux gradient path, calibration, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tokjax
from tokjax.losses.grpo import group_advantages, make_grpo_loss
from tokjax.losses.laser import (
    LaSeR, append_token, mix_advantages, reference_constant, self_advantages, self_reward, self_reward_loss,
    self_verification_f1, weighted_vote, z_c_logp,
)
from tokjax.model.forward import Inputs, forward
from tokjax.train.rl import Rollouts, make_aux_loss, rollout_batch

V, EOS, ZC = 12, 11, 9
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)
P0 = tokjax.model.init_params(CFG, jax.random.key(0))
P1 = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), P0)


def _rollouts(seed=0, B=8, G=4, W=10):
    """Hand-made rollouts: prompt 2-3 tokens, completion ending in eos; the last row truncated (no eos, full)."""
    r = np.random.default_rng(seed)
    tokens = np.zeros((B, W), np.int32)
    pl, ln, trunc = np.zeros(B, int), np.zeros(B, int), np.zeros(B, bool)
    for b in range(B):
        pl[b] = 2 + b % 2
        n = int(r.integers(2, W - pl[b] - 1))
        tokens[b, :pl[b]] = r.integers(1, 9, pl[b])
        tokens[b, pl[b]:pl[b] + n - 1] = r.integers(1, 9, n - 1)
        tokens[b, pl[b] + n - 1] = EOS
        ln[b] = pl[b] + n
    tokens[-1, pl[-1]:] = r.integers(1, 9, W - pl[-1])
    ln[-1], trunc[-1] = W, True
    rewards = np.array([1, 0, 1, 1, 0, 0, 1, 0], np.float32)[:B]
    return Rollouts(tokens=tokens, prompt_lengths=pl, lengths=ln, truncated=trunc, completions=[None] * B,
                    answers=[None] * B, group_size=G, rewards=rewards, format_ok=np.ones(B, bool))


def _naive_logp_zc(params, r):
    """log softmax(full logits)[z_c] at the eos position (the appended z_c's predictor), by hand."""
    logits = forward(params, CFG, Inputs(tokens=jnp.asarray(r.tokens))).logits
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    return lp[jnp.arange(len(r.tokens)), jnp.asarray(r.lengths) - 1, ZC]


def _batches(laser, r):
    base = rollout_batch(r)
    base["old_logp"] = tokjax.losses.token_stats(P0, CFG, base).logp
    prep = laser.prepare(r, dict(base))
    return base, prep


@pytest.mark.slow
def test_lambda_and_mixing_zero_reduce_exactly_to_grpo():
    r = _rollouts()
    laser = LaSeR(ZC, EOS, c_ref=-3.0, lam=0.0, alpha=0.0)
    base, prep = _batches(laser, r)
    adv = laser.shape(r, tokjax.losses.token_stats(P0, CFG, prep))
    np.testing.assert_array_equal(adv, group_advantages(r.rewards, 4))
    base["advantages"] = prep["advantages"] = adv
    (l0, m0), g0 = jax.value_and_grad(make_grpo_loss(), has_aux=True)(P1, CFG, base)
    (l1, m1), g1 = jax.value_and_grad(make_aux_loss(laser.aux), has_aux=True)(P1, CFG, prep)
    assert float(l0) == float(l1) and float(m1["laser_loss"]) == 0.0
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_array_equal(a, b)
    # and with lam, alpha > 0 the loss and advantages do change
    on = LaSeR(ZC, EOS, c_ref=-3.0, filter_std=0.0)
    _, prep2 = _batches(on, r)
    prep2["advantages"] = on.shape(r, tokjax.losses.token_stats(P0, CFG, prep2))
    assert not np.allclose(prep2["advantages"], adv)
    assert float(make_aux_loss(on.aux)(P1, CFG, prep2)[0]) > float(l0)


def test_self_reward_matches_a_hand_computation():
    r = _rollouts(1)
    lp_hand = np.asarray(_naive_logp_zc(P1, r))
    lp, ok = z_c_logp(P1, CFG, rollout_batch(r), ZC, valid=~r.truncated)
    assert ok.tolist() == (~r.truncated).tolist()
    np.testing.assert_allclose(np.asarray(lp)[ok], lp_hand[np.asarray(ok)], atol=2e-5)
    beta, tau, c = 0.1, 0.7, -4.0
    want = beta * (tau * lp_hand - c)
    np.testing.assert_allclose(self_reward(lp_hand, c_ref=c, beta_v=beta, temperature=tau), want, rtol=1e-6)
    # the same number through the laser plug-ins' own forward
    laser = LaSeR(ZC, EOS, c_ref=c, beta_v=beta, temperature=tau)
    _, prep = _batches(laser, r)
    r_s, valid = laser.self_rewards(tokjax.losses.token_stats(P1, CFG, prep).logp, prep)
    np.testing.assert_allclose(np.asarray(r_s)[np.asarray(valid)], want[np.asarray(valid)], atol=2e-6)
    assert reference_constant(lp_hand, ~r.truncated, temperature=tau) == pytest.approx(
        tau * lp_hand[~r.truncated].mean(), rel=1e-6)
    # append_token writes at `lengths`, only with room and only for valid rows
    t, ok2 = append_token(r.tokens, r.lengths, ZC, ~r.truncated)
    for b in range(8):
        row = np.asarray(t[b])
        np.testing.assert_array_equal(row[:r.lengths[b]], r.tokens[b, :r.lengths[b]])
        assert bool(ok2[b]) == (r.lengths[b] < 10 and not r.truncated[b])
        if ok2[b]:
            assert row[r.lengths[b]] == ZC


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_aux_gradient_flows_only_through_the_z_c_log_prob():
    r = _rollouts(2)
    laser = LaSeR(ZC, EOS, c_ref=-3.0, balanced=True)
    _, prep = _batches(laser, r)
    prep["advantages"] = jnp.zeros(8)  # GRPO term: zero gradient, so only the aux remains
    g = jax.grad(lambda p: make_aux_loss(laser.aux)(p, CFG, prep)[0])(P1)
    valid = ~r.truncated

    def hand(p):
        rs = 0.1 * (_naive_logp_zc(p, r) - (-3.0))
        loss, _ = self_reward_loss(rs, r.rewards, valid, coef=0.1, balanced=True)
        return loss

    gh = jax.grad(hand)(P1)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(gh)):
        np.testing.assert_allclose(a, b, atol=2e-7, rtol=2e-4)
    # the verifier reward of a truncated row and every token after z_c do not matter
    r2 = _rollouts(2)
    r2.rewards = r2.rewards.copy()
    r2.rewards[-1] = 1.0 - r2.rewards[-1]
    _, prep2 = _batches(laser, r2)
    prep2["tokens"] = jnp.where(jnp.arange(10)[None] > jnp.asarray(r.lengths)[:, None], 3, prep2["tokens"])
    prep2["advantages"] = jnp.zeros(8)
    g2 = jax.grad(lambda p: make_aux_loss(laser.aux)(p, CFG, prep2)[0])(P1)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-5)
    # class balancing: n / (2 n_c), n / (2 n_w) over the finished rows
    _, w = self_reward_loss(jnp.zeros(8), r.rewards, valid, balanced=True)
    n_c, n_w = int(np.sum(r.rewards[valid] == 1)), int(np.sum(r.rewards[valid] == 0))
    want = np.where(r.rewards == 1, 7 / (2 * n_c), 7 / (2 * n_w)) * valid
    np.testing.assert_allclose(w, want, rtol=1e-6)


def test_self_advantages_filter_and_mixing():
    rs = jnp.array([0.9, 0.1, 0.5, 1.7, 0.3, 0.3, 0.3, 0.3])
    a, info = self_advantages(rs, jnp.array([1, 1, 1, 0, 1, 1, 1, 1], bool), 4, filter_std=0.1)
    s = np.array([0.9, 0.1, 0.5, 0.0])
    np.testing.assert_allclose(a[:4], (s - s.mean()) / s.std(ddof=1), rtol=1e-5)
    assert info.tolist() == [True] * 4 + [False] * 4 and np.all(np.asarray(a[4:]) == 0)
    av = jnp.arange(8.0)
    np.testing.assert_allclose(mix_advantages(av, a, info, 0.1), np.where(info, 0.9 * av + 0.1 * a, av), rtol=1e-6)


def test_r_s_calibrates_to_the_correctness_rate():
    """P47 (d): the MSE optimum is r_s = E[r_v | x, y]; two contexts correct 25% / 75% of the time."""
    prompts = np.array([[1, 2, 3, EOS, 0], [4, 5, 6, EOS, 0]] * 16, np.int32)
    rng = np.random.default_rng(0)
    rv = np.where(np.arange(32) % 2 == 0, rng.random(32) < 0.25, rng.random(32) < 0.75).astype(np.float32)
    lengths = np.full(32, 4)
    laser = LaSeR(ZC, EOS, c_ref=-10.0, beta_v=0.1, balanced=False)
    r = Rollouts(tokens=prompts, prompt_lengths=np.full(32, 1), lengths=lengths, truncated=np.zeros(32, bool),
                 completions=[None] * 32, answers=[None] * 32, group_size=2, rewards=rv)
    batch = laser.prepare(r, rollout_batch(r))
    opt = optax.adam(3e-2)

    def loss(p):
        return laser.aux(p, CFG, batch, tokjax.losses.token_stats(p, CFG, batch))[0]

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    p, s = P0, opt.init(P0)
    for _ in range(150):
        p, s = step(p, s)
    r_s, _ = laser.self_rewards(tokjax.losses.token_stats(p, CFG, batch).logp, batch)
    got = [float(np.mean(np.asarray(r_s)[k::2])) for k in (0, 1)]
    want = [float(rv[0::2].mean()), float(rv[1::2].mean())]
    np.testing.assert_allclose(got, want, atol=0.03)


def test_f1_and_weighted_vote():
    f = self_verification_f1(np.array([0.9, 0.8, 0.2, 0.6]), np.array([1, 0, 0, 1], bool))
    assert f["precision"] == pytest.approx(2 / 3) and f["recall"] == 1.0 and f["f1"] == pytest.approx(0.8)
    assert f["f1_constant"] == pytest.approx(2 * 0.5 / 1.5)
    assert weighted_vote(["3", "3", "4"]) == "3"
    assert weighted_vote(["3", "3", "4"], [0.1, 0.2, 0.9]) == "4"
    assert weighted_vote(["3", "4", "4"], [0.0, -1.0, 0.0]) == "4"  # all weights 0: plain vote
    assert weighted_vote([None, None]) is None


def test_bad_inputs():
    with pytest.raises(ValueError, match="eos"):
        LaSeR(EOS, EOS, c_ref=-3.0)
    with pytest.raises(ValueError, match="eos"):
        LaSeR(2, [11, 2], c_ref=-3.0)
    with pytest.raises(ValueError, match="beta_v"):
        LaSeR(ZC, EOS, c_ref=-3.0, beta_v=0.0)
    with pytest.raises(ValueError, match="lam"):
        LaSeR(ZC, EOS, c_ref=-3.0, lam=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        LaSeR(ZC, EOS, c_ref=-3.0, alpha=1.5)
    with pytest.raises(ValueError, match="vocabulary"):
        LaSeR(40, EOS, c_ref=-3.0, vocab_size=V)
    with pytest.raises(ValueError, match="c_ref"):
        LaSeR(ZC, EOS, c_ref=float("nan"))
    with pytest.raises(ValueError, match="eos_id"):
        LaSeR(ZC, None, c_ref=-3.0)
    with pytest.raises(ValueError, match="finite"):
        self_reward_loss(jnp.zeros(2), jnp.array([np.nan, 1.0]), jnp.ones(2, bool))
    with pytest.raises(ValueError, match="valid"):
        reference_constant(np.zeros(3), np.zeros(3, bool))
