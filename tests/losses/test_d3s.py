"""P56 D3S: exact max-variance subsets (vs brute force), the |A|*H token mask, the kept-token denominator,
the schedule, the reduction to GRPO when everything is kept, the gradient-norm check and bad input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses._stats import TokenStats
from tokjax.losses.d3s import (
    D3S, D3STokenMask, d3s_token_mask, linear_ratio, max_variance_subset, subset_size, token_scores,
)
from tokjax.losses.grpo import grpo_loss, group_advantages
from tokjax.model import Model
from tokjax.train.rl import RLConfig, rl_train


def brute_max_var(vals, m):
    return max(np.var(np.asarray(c, np.float64)) for c in itertools.combinations(vals, m))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 7).flatmap(lambda G: st.tuples(
    st.just(G), st.integers(2, G), st.integers(1, 3),
    st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.25, 1.0, 3.0]) | st.floats(-5, 5, width=32),
             min_size=3 * G, max_size=3 * G))))
@pytest.mark.slow
def test_max_variance_subset_equals_brute_force_over_all_subsets(args):
    G, m, n_groups, vals = args
    v = np.asarray(vals[:n_groups * G], np.float32)
    keep = np.asarray(max_variance_subset(v, G, m))
    for g in range(n_groups):
        sel = keep[g * G:(g + 1) * G]
        assert sel.sum() == m
        got = np.var(v[g * G:(g + 1) * G][sel].astype(np.float64))
        want = brute_max_var(v[g * G:(g + 1) * G], m)
        assert got >= want - 1e-5 * max(1.0, want), (v[g * G:(g + 1) * G], m, got, want)


def test_max_variance_subset_is_jittable_with_a_traced_size_and_balances_binary_rewards():
    rewards = np.array([1, 0, 0, 0, 0, 0, 1, 0], np.float32)  # 2 right of 8
    adv = group_advantages(rewards, 8)
    f = jax.jit(max_variance_subset, static_argnums=1)
    keep = np.asarray(f(adv, 8, jnp.int32(4)))
    assert keep.sum() == 4 and keep[[0, 6]].all()  # both right answers and two wrong ones
    assert np.asarray(f(adv, 8, jnp.int32(8))).all()
    assert int(subset_size(0.5, 8)) == 4 and int(subset_size(0.01, 8)) == 2 and int(subset_size(1.0, 8)) == 8


def test_token_mask_keeps_top_abs_advantage_times_entropy():
    adv = jnp.array([2.0, -0.5])
    H = jnp.array([[0.1, 1.0, 0.5], [3.0, 0.2, 0.0]])
    mask = jnp.array([[True, True, True], [True, True, False]])
    s = np.asarray(token_scores(adv, H))  # [[.2, 2, 1], [1.5, .1, 0]]
    np.testing.assert_allclose(s, [[0.2, 2.0, 1.0], [1.5, 0.1, 0.0]], rtol=1e-6)
    keep = np.asarray(d3s_token_mask(adv, H, mask, 0.4))  # ceil(0.4 * 5) = 2 of the 5 valid tokens
    np.testing.assert_array_equal(keep, [[False, True, False], [True, False, False]])
    assert np.array_equal(np.asarray(d3s_token_mask(adv, H, mask, 1.0)), np.asarray(mask))


def _stats(rng, B=4, T=5):
    logp = jnp.asarray(-rng.uniform(0.1, 3.0, (B, T)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(B, T)) < 0.8)
    return TokenStats.create(logp, mask, entropy=jnp.asarray(rng.uniform(0, 2, (B, T)), jnp.float32))


def test_kept_denominator_counts_only_kept_tokens_against_a_hand_written_reference():
    rng = np.random.default_rng(0)
    stats = _stats(rng)
    old = stats.logp + jnp.asarray(rng.normal(0, 0.1, stats.logp.shape), jnp.float32)
    adv = jnp.array([1.0, -1.0, 0.5, 2.0])
    batch = {"advantages": adv, "d3s_token_ratio": jnp.float32(0.5)}
    masked, _ = D3STokenMask()(stats, None, batch)
    loss, m = grpo_loss(masked, old, adv, denominator="kept")
    keep = np.asarray(masked.mask) & (np.asarray(masked.weights) != 0)
    r = np.exp(np.asarray(stats.logp) - np.asarray(old))
    a = np.asarray(adv)[:, None]
    obj = np.minimum(r * a, np.clip(r, 0.8, 1.28) * a)
    want = -(obj * keep).sum() / keep.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert keep.sum() == np.ceil(0.5 * np.asarray(stats.mask).sum())
    assert 0 < float(m["kept_fraction"]) < 1


def test_keep_all_loss_equals_grpo():
    rng = np.random.default_rng(1)
    stats = _stats(rng)
    old = stats.logp * 0.9
    adv = jnp.array([1.0, -1.0, 0.0, 2.0])  # a zero advantage scores 0 but is still kept at ratio 1
    masked, _ = D3STokenMask(ratio=1.0)(stats, None, {"advantages": adv})
    got = jax.grad(lambda lp: grpo_loss(masked.replace(logp=lp), old, adv, denominator="kept")[0])(stats.logp)
    want = jax.grad(lambda lp: grpo_loss(stats.replace(logp=lp), old, adv)[0])(stats.logp)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


V = 12
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)


class Count5:
    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V, 3).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == 5) for c in completions]), np.ones(len(completions), bool)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_keep_all_d3s_in_rl_train_reduces_exactly_to_grpo():
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    kw = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, max_prompt_len=4, lr=1e-2)
    base, h0 = rl_train(model, Count5(), RLConfig(**kw))
    d3s = D3S(steps=2, sample_start=1.0, sample_end=1.0, token_start=1.0, token_end=1.0)
    got, h1 = rl_train(model, Count5(), RLConfig(denominator="kept", **kw), select=d3s.select,
                       transforms=(d3s.transform(),))
    for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert [h["reward"] for h in h0] == [h["reward"] for h in h1] and h1[-1]["kept_fraction"] == 1.0


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_d3s_in_rl_train_keeps_the_scheduled_fractions():
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    d3s = D3S(steps=3, sample_start=0.5, sample_end=1.0, token_start=0.5, token_end=0.5)
    _, hist = rl_train(model, Count5(), RLConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=5,
                                                 max_prompt_len=4, lr=1e-2, denominator="kept"),
                       select=d3s.select, transforms=(d3s.transform(),))
    assert hist[0]["token_count"] == 2 * 2 * 5  # 2 of 4 rollouts per prompt, 5 tokens each (no eos)
    assert all(0.45 <= h["kept_fraction"] <= 0.6 for h in hist)
    sr, tr = d3s.ratios(2)
    assert float(sr) == pytest.approx(1.0 * 2 / 3 + 0.5 / 3) and float(tr) == 0.5


def test_schedule_goes_from_aggressive_to_relaxed():
    r = np.asarray([linear_ratio(s, 0.2, 0.8, 10) for s in (0, 5, 10, 20)])
    np.testing.assert_allclose(r, [0.2, 0.5, 0.8, 0.8], rtol=1e-6)
    assert float(jax.jit(linear_ratio)(jnp.float32(5), 0.2, 0.8, 10.0)) == pytest.approx(0.5)


def test_selected_subset_policy_gradient_norm_beats_a_random_subset():
    """NOTES P56 (d): on a toy softmax policy, the max-Var(A) subset's policy gradient is larger than a random
    subset's of the same size (averaged over random draws; the paper's claim is about an upper bound)."""
    rng = np.random.default_rng(0)
    V_, T, G, m = 6, 4, 8, 4

    def per_rollout_grads(theta, seqs):  # [G, V]: grad of log pi(sequence i)
        return np.asarray(jax.jacobian(lambda th: jax.nn.log_softmax(th)[seqs].sum(-1))(theta))

    def pg_norm(grads, adv, keep):  # || (1/m) sum_{i kept} A_i grad log pi_i ||
        return float(np.linalg.norm((np.asarray(keep) * np.asarray(adv)) @ grads / m))

    wins, sel_norms, rand_norms = 0, [], []
    for trial in range(60):
        theta = jnp.asarray(rng.normal(0, 1, V_), jnp.float32)
        grads = per_rollout_grads(theta, jnp.asarray(rng.integers(0, V_, (G, T))))
        rewards = (rng.uniform(size=G) < rng.uniform(0.1, 0.9)).astype(np.float32)
        if rewards.min() == rewards.max():
            rewards[0] = 1 - rewards[0]
        adv = group_advantages(rewards, G)
        sel = pg_norm(grads, adv, max_variance_subset(adv, G, m))
        rand = np.mean([pg_norm(grads, adv, np.isin(np.arange(G), rng.choice(G, m, replace=False)))
                        for _ in range(20)])
        sel_norms.append(sel)
        rand_norms.append(rand)
        wins += sel >= rand
    # measured: mean norm 1.17x the random subsets' (1.017 vs 0.870), larger on 43 of 60 toys (not on every one: the
    # paper's theorem bounds the norm from above, it does not order every draw)
    assert np.mean(sel_norms) > 1.05 * np.mean(rand_norms) and wins >= 36, (wins, np.mean(sel_norms), np.mean(rand_norms))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="multiple of group_size"):
        max_variance_subset(jnp.zeros(7), 4, 2)
    with pytest.raises(ValueError, match="size"):
        max_variance_subset(jnp.zeros(8), 4, 5)
    with pytest.raises(ValueError, match="group_size"):
        max_variance_subset(jnp.zeros(8), 1, 1)
    with pytest.raises(ValueError, match="finite"):
        max_variance_subset(jnp.array([0.0, jnp.nan, 1.0, 2.0]), 4, 2)
    with pytest.raises(ValueError, match="token ratio"):
        d3s_token_mask(jnp.ones(2), jnp.ones((2, 3)), None, 0.0)
    with pytest.raises(ValueError, match="advantages"):
        token_scores(jnp.ones(3), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="sample_start"):
        D3S(steps=10, sample_start=1.5)
    with pytest.raises(ValueError, match="scope"):
        D3S(steps=10, scope="prompt")
    with pytest.raises(ValueError, match="steps"):
        D3S(steps=0)
    with pytest.raises(ValueError, match="entropy"):
        D3STokenMask()(TokenStats.create(jnp.zeros((2, 3))), None, {"advantages": jnp.ones(2)})
    with pytest.raises(ValueError, match="ramp_steps"):
        linear_ratio(0, 0.5, 1.0, 0)


def test_token_mask_keeps_exactly_k_when_zero_advantage_rows_tie():
    adv = jnp.array([0.0, 0.0, 1.0])  # two zero-advantage rows: 6 tokens all scoring 0
    H = jnp.ones((3, 3))
    keep = np.asarray(d3s_token_mask(adv, H, None, 0.5))  # ceil(4.5) = 5 of 9
    assert keep.sum() == 5 and keep[2].all()
    f = jax.jit(d3s_token_mask)
    assert int(np.asarray(f(adv, H, jnp.ones((3, 3), bool), jnp.float32(0.2))).sum()) == 2
