"""P69 THR: the chunked token hidden reward against a brute-force reference, the learning-dynamics check
(THR-predicted vs actual change of the correct responses' log-likelihood), the reduction to GRPO at p = 0,
the weights transform, the rl_train plug-ins and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses._stats import TokenStats
from tokjax.losses.grpo import group_advantages, grpo_loss
from tokjax.train.recipes.token_hidden_reward import TokenHiddenReward
from tokjax.losses.token_hidden_reward import (
    THRWeights, model_token_hidden_reward, thr_weights, token_hidden_reward,
)
from tokjax.model import Model
from tokjax.model.forward import forward
from tokjax.train.rl import RLConfig, rl_train, rollout_batch


def brute_thr(h, W, y, mask, adv, correct, G):
    """The P69 formula term by term (float64): A_i sum_{correct j in i's group, s} <h, h'> (1[y=y'] - pi'(y) -
    pi(y') + <pi, pi'>)."""
    h, W = np.asarray(h, np.float64), np.asarray(W, np.float64)
    B, T, _ = h.shape
    z = h @ W
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    adv = np.asarray(adv, np.float64)
    adv = np.repeat(adv[:, None], T, 1) if adv.ndim == 1 else adv
    out = np.zeros((B, T))
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            g = i // G
            tot = 0.0
            for j in range(g * G, (g + 1) * G):
                for s in range(T):
                    if not (correct[j] and mask[j, s]):
                        continue
                    a, b = y[i, t], y[j, s]
                    bracket = float(a == b) - pi[j, s, a] - pi[i, t, b] + pi[i, t] @ pi[j, s]
                    tot += (h[i, t] @ h[j, s]) * bracket
            out[i, t] = adv[i, t] * tot
    return out


def _toy(rng, B=4, T=3, D=5, V=7, G=2):
    h = rng.normal(0, 1, (B, T, D)).astype(np.float32)
    W = rng.normal(0, 1, (D, V)).astype(np.float32)
    y = rng.integers(0, V, (B, T))
    mask = rng.uniform(size=(B, T)) < 0.8
    correct = rng.uniform(size=B) < 0.5
    adv = rng.normal(0, 1, B).astype(np.float32)
    return h, W, y, mask, adv, correct, G


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(2, 2), (4, 2), (6, 3)]), st.integers(1, 3),
       st.sampled_from([3, 64]), st.booleans())
def test_both_methods_equal_the_brute_force_formula(seed, bg, T, block, tied):
    rng = np.random.default_rng(seed)
    B, G = bg
    h, W, y, mask, adv, correct, _ = _toy(rng, B=B, T=T, G=G)
    want = brute_thr(h, W, y, mask, adv, correct, G)
    head, layout = (W.T, "vd") if tied else (W, "dv")
    for method in ("factored", "pairwise"):
        got = np.asarray(token_hidden_reward(h, head, y, mask, adv, correct, G, layout=layout, method=method,
                                             block_size=block))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * (1 + np.abs(want).max()))


def test_given_lse_and_token_advantages_match_and_groups_without_a_correct_rollout_give_zero():
    rng = np.random.default_rng(3)
    h, W, y, mask, _, correct, G = _toy(rng, B=4, T=4, V=9)
    correct = np.array([False, False, True, False])  # group 0 has no correct rollout
    adv = rng.normal(0, 1, (4, 4)).astype(np.float32)
    z = h @ W
    lse = jax.nn.logsumexp(z, -1)
    a = np.asarray(token_hidden_reward(h, W, y, mask, adv, correct, G, lse=lse, block_size=4))
    b = np.asarray(token_hidden_reward(h, W, y, mask, adv, correct, G))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, brute_thr(h, W, y, mask, adv, correct, G), rtol=2e-4, atol=1e-5)
    assert np.all(a[:2] == 0) and np.all(a[~mask] == 0) and np.any(a[2:] != 0)


def test_thr_predicts_the_change_of_correct_log_likelihood_after_a_small_step():
    """NOTES P69 (d): on a linear-softmax toy (fixed features h, head W), one SGD step on token (i, t)'s GRPO term
    A_i log pi(y_it) with lr eta changes sum_{correct j, s} log pi(y_js) by ~ eta THR_{i,t}: corr > 0.9."""
    rng = np.random.default_rng(0)
    G, T, D, V = 8, 6, 8, 10
    h = rng.normal(0, 1, (G, T, D)).astype(np.float32)
    W = rng.normal(0, 0.5, (D, V)).astype(np.float32)
    y = rng.integers(0, V, (G, T))
    mask = np.ones((G, T), bool)
    rewards = np.array([1, 0, 0, 1, 0, 1, 0, 0], np.float32)
    correct = rewards > 0
    adv = np.asarray(group_advantages(rewards, G))
    thr = np.asarray(token_hidden_reward(h, W, y, mask, adv, correct, G, block_size=4))

    def correct_ll(w):
        lp = jax.nn.log_softmax(jnp.asarray(h) @ w, -1)
        return jnp.sum(jnp.take_along_axis(lp, jnp.asarray(y)[..., None], -1)[..., 0] * correct[:, None])

    def token_term(w, i, t):  # A_i log pi(y_it | h_it)
        return jnp.asarray(adv)[i] * jax.nn.log_softmax(jnp.asarray(h)[i, t] @ w)[jnp.asarray(y)[i, t]]

    eta = 1e-2
    step_delta = jax.jit(jax.vmap(lambda i, t: correct_ll(jnp.asarray(W) + eta * jax.grad(token_term)(
        jnp.asarray(W), i, t)) - correct_ll(jnp.asarray(W))))
    ii, tt = np.meshgrid(np.arange(G), np.arange(T), indexing="ij")
    actual = np.asarray(step_delta(jnp.asarray(ii.ravel()), jnp.asarray(tt.ravel()))).reshape(G, T)
    corr = np.corrcoef(actual.ravel(), eta * thr.ravel())[0, 1]
    # measured: corr 0.99995, max |error| 1.6% of max |eta THR| (first order; the residual is O(eta^2))
    assert corr > 0.9, corr
    np.testing.assert_allclose(actual, eta * thr, atol=0.05 * np.abs(eta * thr).max())
    assert (thr > 0).any() and (thr < 0).any()  # both exploitation and exploration tokens occur


def _stats(rng, B=4, T=5):
    logp = jnp.asarray(-rng.uniform(0.1, 3.0, (B, T)), jnp.float32)
    return TokenStats.create(logp, jnp.asarray(rng.uniform(size=(B, T)) < 0.8))


def test_weights_and_p_zero_is_grpo_exactly():
    rng = np.random.default_rng(1)
    stats = _stats(rng)
    old = stats.logp * 0.9
    adv = jnp.array([1.0, -1.0, 0.5, 2.0])
    thr = jnp.asarray(rng.normal(0, 1, (4, 5)), jnp.float32).at[0, 0].set(0.0)
    w = np.asarray(thr_weights(thr, 0.5))
    np.testing.assert_array_equal(w, np.where(np.asarray(thr) > 0, 1.5, np.where(np.asarray(thr) < 0, 0.5, 1.0)))
    batch = {"advantages": adv, "thr": thr, "thr_p": jnp.float32(0.0)}
    weighted, _ = THRWeights(p=0.7)(stats, None, batch)  # the batch's p (0) overrides the state's
    got = jax.grad(lambda lp: grpo_loss(weighted.replace(logp=lp), old, adv)[0])(stats.logp)
    want = jax.grad(lambda lp: grpo_loss(stats.replace(logp=lp), old, adv)[0])(stats.logp)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # p > 0 multiplies each token's gradient by 1 + p sign(THR); a traced p does not recompile
    f = jax.jit(lambda p: THRWeights()(stats, None, {"thr": thr, "thr_p": p})[0].weights)
    np.testing.assert_allclose(np.asarray(f(jnp.float32(-0.25))), 1 - 0.25 * np.sign(np.asarray(thr)))
    g = jax.grad(lambda lp: grpo_loss(THRWeights(p=0.5)(stats, None, {"thr": thr})[0].replace(logp=lp), old, adv)[0])
    np.testing.assert_allclose(np.asarray(g(stats.logp)), np.asarray(want) * w, rtol=1e-6, atol=1e-8)


V = 12
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)


class Count5:
    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V, 3).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == 5) for c in completions]), np.ones(len(completions), bool)


def _rl_runs(ps):
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    kw = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, max_prompt_len=4, lr=1e-2)
    base, h0 = rl_train(model, Count5(), RLConfig(**kw))
    for p in ps:
        thr = TokenHiddenReward(model, p=p)
        got, h1 = rl_train(model, Count5(), RLConfig(**kw), select=thr.select, transforms=(thr.transform(),),
                           callback=thr.callback)
        diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                   for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(got.params)))
        assert h0[0]["reward"] == h1[0]["reward"]  # the same first rollouts
        assert thr.params is got.params  # the callback tracked the policy
        yield p, diff, h1


@pytest.mark.slow
def test_rl_train_plugins_reduce_exactly_to_grpo_at_p_zero_and_change_the_update_at_p_half():
    """(The loss-level reduction is the fast test_weights_and_p_zero_is_grpo_exactly.)"""
    diffs = {p: d for p, d, _ in _rl_runs([0.0, 0.5])}
    assert diffs[0.0] <= 1e-6 and diffs[0.5] > 1e-6, diffs


@pytest.mark.slow
def test_select_matches_the_formula_on_the_model():
    """select's THR equals the brute-force formula on the model's final-normed hidden states and head."""
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    from tokjax.train.rl import rollout
    r = rollout(model, *Count5().prompts(0, 2), key=jax.random.key(1), group_size=4, max_new_tokens=5, width=9)
    r.rewards, r.format_ok = Count5().reward(r.completions, r.answers)
    r.rewards = np.asarray(r.rewards, np.float32)
    adv = group_advantages(r.rewards, 4)
    out = TokenHiddenReward(model, p=0.5, method="pairwise").select(r, adv, 0)
    batch = rollout_batch(r)
    stats = tokjax.losses.token_stats(model.params, CFG, batch)
    hid = forward(model.params, CFG, batch["tokens"][:, :-1], compute_logits=False).hidden
    W = model.params["embed"].T if CFG.tied_embeddings else model.params["lm_head"]
    lp = jnp.take_along_axis(jax.nn.log_softmax(hid.astype(jnp.float32) @ W, -1), batch["tokens"][:, 1:, None], -1)
    np.testing.assert_allclose(np.asarray(lp[..., 0])[np.asarray(stats.mask)],  # hid is what the head reads
                               np.asarray(stats.logp)[np.asarray(stats.mask)], rtol=1e-4, atol=1e-5)
    want = brute_thr(hid, W, np.asarray(batch["tokens"][:, 1:]), np.asarray(stats.mask), np.asarray(adv),
                     r.rewards > 0, 4)
    np.testing.assert_allclose(np.asarray(out["thr"]), want, rtol=1e-3, atol=1e-5 * (1 + np.abs(want).max()))
    assert out["keep"].all() and float(out["thr_p"]) == 0.5
    direct = model_token_hidden_reward(model.params, CFG, batch, adv, r.rewards > 0, 4)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(out["thr"]), rtol=1e-4, atol=1e-6)


def test_bad_input_raises():
    rng = np.random.default_rng(0)
    h, W, y, mask, adv, correct, G = _toy(rng)
    with pytest.raises(ValueError, match="multiple of group_size"):
        token_hidden_reward(h, W, y, mask, adv, correct, 3)
    with pytest.raises(ValueError, match="group_size"):
        token_hidden_reward(h, W, y, mask, adv, correct, 1)
    with pytest.raises(ValueError, match="hidden"):
        token_hidden_reward(h[0], W, y, mask, adv, correct, G)
    with pytest.raises(ValueError, match="head"):
        token_hidden_reward(h, W.T, y, mask, adv, correct, G)
    with pytest.raises(ValueError, match="targets"):
        token_hidden_reward(h, W, y.astype(np.float32), mask, adv, correct, G)
    with pytest.raises(ValueError, match="advantages"):
        token_hidden_reward(h, W, y, mask, adv[:3], correct, G)
    with pytest.raises(ValueError, match="finite"):
        token_hidden_reward(h, W, y, mask, np.full_like(adv, np.nan), correct, G)
    with pytest.raises(ValueError, match="correct"):
        token_hidden_reward(h, W, y, mask, adv, correct[:2], G)
    with pytest.raises(ValueError, match="method"):
        token_hidden_reward(h, W, y, mask, adv, correct, G, method="sketch")
    with pytest.raises(ValueError, match="layout"):
        token_hidden_reward(h, W, y, mask, adv, correct, G, layout="vv")
    with pytest.raises(ValueError, match="block_size"):
        token_hidden_reward(h, W, y, mask, adv, correct, G, block_size=0)
    with pytest.raises(ValueError, match="p"):
        thr_weights(jnp.ones(3), 1.5)
    with pytest.raises(ValueError, match="p"):
        THRWeights(p=-2.0)
    with pytest.raises(ValueError, match="thr"):
        THRWeights()(TokenStats.create(jnp.zeros((2, 3))), None, {"advantages": jnp.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        THRWeights()(TokenStats.create(jnp.zeros((2, 3))), None, {"thr": jnp.ones((2, 4))})
