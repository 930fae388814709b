"""P57 RLFR: the flow network against a numpy transliteration of the official MLP, the rectified-flow loss and
score conventions, the official normalise / threshold / top-k filter (vs a brute-force reference), the token
advantages, c_flow = 0 reducing exactly to GRPO inside rl_train, the AUROC > 0.9 planted toy and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.grpo import group_advantages
from tokjax.losses.registry import make_loss
from tokjax.losses.rlfr import (
    RLFR, context_pairs, filter_scores, flow_batches, flow_matching_loss, flow_score, flow_velocity, init_flow,
    latent_scores, normalize_scores, rlfr_advantages,
)
from tokjax.metrics.classification import auroc
from tokjax.model import Model
from tokjax.train import TrainConfig, init_state, make_optimizer, make_train_step, train
from tokjax.train.rl import RLConfig, rl_train


def _online(flow, lr=1e-2):
    opt = make_optimizer(TrainConfig(lr=lr, warmup_steps=0, total_steps=100, weight_decay=0.0, min_lr_ratio=1.0))
    return make_train_step(None, opt, make_loss("rlfr_flow", timesteps=[0.8]), donate=False), init_state(None, opt, 0,
                                                                                                        params=flow)


def _random_flow(key, D, W, depth, Dc=None):
    """init_flow with every leaf redrawn (the official init zeroes the output, which would hide bugs)."""
    p = init_flow(key, D, width=W, depth=depth, cond_dim=Dc, freq_dim=16)
    leaves, tree = jax.tree.flatten(p)
    ks = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, l.shape) + (l == 1) for k, l in zip(ks, leaves)])


def _np_reference(p, x, t, c, l, eps=1e-6):
    """numpy transliteration of the official SimpleMLPAdaLNTimePos.forward (flow_simple.py)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    lin = lambda q, a: a @ q["w"] + q["b"]  # noqa: E731
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731

    def emb(q, s):
        half = q["fc1"]["w"].shape[0] // 2
        freqs = np.exp(-math.log(10000) * np.arange(half) / half)[None]
        args = s[:, None] * freqs
        return lin(q["fc2"], silu(lin(q["fc1"], np.concatenate([np.cos(args), np.sin(args)], -1))))

    def rms(a, w):
        return w * a / np.sqrt((a ** 2).mean(-1, keepdims=True) + eps)

    h = lin(p["input_proj"], x)
    y = emb(p["layer_embed"], l) + lin(p["cond_embed"], c) + emb(p["time_embed"], t)
    for b in p["blocks"]:
        sh, sc, g = np.split(lin(b["ada"], silu(y)), 3, -1)
        h = h + g * lin(b["fc2"], silu(lin(b["fc1"], rms(h, b["norm"]) * (1 + sc) + sh)))
    sh, sc = np.split(lin(p["final"]["ada"], silu(y)), 2, -1)
    return lin(p["final"]["out"], rms(h, p["final"]["norm"]) * (1 + sc) + sh)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_flow_velocity_equals_the_official_mlp_transliteration():
    rng = np.random.default_rng(0)
    p = _random_flow(jax.random.key(0), 6, 10, 2, Dc=5)
    x, c = rng.normal(size=(7, 6)), rng.normal(size=(7, 5))
    t, l = rng.uniform(size=7), rng.uniform(size=7)
    got = flow_velocity(p, x, t, c, l)
    np.testing.assert_allclose(np.asarray(got), _np_reference(p, x, t, c, l), rtol=2e-4, atol=2e-5)
    assert np.all(np.asarray(flow_velocity(init_flow(jax.random.key(1), 6, cond_dim=5), x, t, c, l)) == 0)  # zero init


@pytest.mark.slow
def test_loss_and_score_follow_the_official_interpolation_and_debias_weight():
    rng = np.random.default_rng(1)
    p = _random_flow(jax.random.key(2), 4, 8, 1)
    h, c = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    key = jax.random.key(3)
    s = np.asarray(flow_score(p, h, c, 0.5, key, timesteps=[0.8]))
    eps = np.asarray(jax.random.normal(jax.random.split(key, 1)[0], h.shape, jnp.float32))
    xt, u = 0.8 * h + 0.2 * eps, h - eps  # x_t = t h + (1 - t) eps, u = h - eps
    mse = ((_np_reference(p, xt, np.full(5, 0.8), c, np.full(5, 0.5)) - u) ** 2).mean(-1)
    np.testing.assert_allclose(s, 4.0 * mse, rtol=1e-3)  # t / (1 - t) = 4 at t = 0.8
    # masked mean over rows; an empty mask gives 0, not NaN
    m = np.array([1, 0, 1, 0, 0], bool)
    full, _ = flow_matching_loss(p, h, c, 0.5, key, timesteps=[0.8])
    part, met = flow_matching_loss(p, h[m], c[m], 0.5, key, timesteps=[0.8])
    masked, _ = flow_matching_loss(p, h, c, 0.5, key, timesteps=[0.8], mask=m)
    assert float(met["flow_tokens"]) == 2 and np.isfinite(float(masked)) and float(full) > 0
    empty, _ = flow_matching_loss(p, h, c, 0.5, key, mask=np.zeros(5, bool))
    assert float(empty) == 0.0
    # the registered loss is the same function
    fn = make_loss("rlfr_flow", timesteps=[0.8])
    got, _ = fn(p, None, {"target": h, "cond": c, "layer": np.full(5, 0.5, np.float32)}, key)
    np.testing.assert_allclose(float(got), float(full), rtol=1e-6)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_context_pairs_and_latent_scores_align_positions():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    tg, cd, idx = context_pairs(h, mode="token_post", shift=1)
    np.testing.assert_array_equal(np.asarray(tg), np.asarray(h[:, 1:]))
    np.testing.assert_array_equal(np.asarray(cd), np.asarray(h[:, :-1]))
    assert idx.tolist() == [1, 2, 3]
    tg, cd, idx = context_pairs(h, mode="token_pre", shift=2)
    np.testing.assert_array_equal(np.asarray(cd), np.asarray(h[:, 2:]))
    assert idx.tolist() == [0, 1]
    p = _random_flow(jax.random.key(4), 3, 6, 1)
    s = latent_scores(p, jnp.stack([h, -h]) / 10, jnp.array([0.0, 0.5]), jax.random.key(5))
    assert s.shape == (2, 4) and np.all(np.asarray(s[:, 0]) == 0) and np.all(np.asarray(s[:, 1:]) > 0)


def _official_post(score, mask, thr, k, bil):
    """numpy transliteration of the official normalize_flow_score (minmax over valid tokens) + postprocess_flow_score."""
    s = np.where(mask, score, 0.0).astype(np.float64)
    out = np.zeros_like(s)
    for i in range(len(s)):
        v = s[i][mask[i]]
        if v.size and v.max() > v.min():
            out[i][mask[i]] = (v - v.min()) / (v.max() - v.min())
        if bil:
            out[i][mask[i]] = (out[i][mask[i]] - 0.5) * 2
    s = out
    if thr > 0:
        s = np.where((s > thr) | (bil & (s < -thr)), s, 0.0)
    if k > 0 and s.shape[1] >= k:
        for i in range(len(s)):
            if np.count_nonzero(s[i]) >= k:
                order = np.argsort(-s[i], kind="stable")
                keep = set(order[:k // 2].tolist() + np.argsort(s[i], kind="stable")[:k // 2].tolist()) if bil \
                    else set(order[:k].tolist())
                s[i] = [s[i][j] if j in keep else 0.0 for j in range(len(s[i]))]
    return s


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(2, 7), st.sampled_from([-1.0, 0.0, 0.3, 0.6]), st.integers(0, 6), st.booleans(),
       st.integers(0, 2 ** 31 - 1))
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_normalise_threshold_topk_equal_the_official_postprocess(B, T, thr, k, bil, seed):
    rng = np.random.default_rng(seed)
    s = rng.permutation(B * T).reshape(B, T).astype(np.float32) / (B * T) + rng.uniform(size=(B, 1))  # no ties
    mask = rng.uniform(size=(B, T)) < 0.8
    z = normalize_scores(s, mask, norm="minmax-bil" if bil else "minmax")
    got = filter_scores(z, mask, threshold=thr, topk=k, bilateral=bil)
    np.testing.assert_allclose(np.asarray(got), _official_post(s, mask, thr, k, bil), atol=1e-6)


def test_advantages_add_the_backward_sum_of_flow_rewards_and_c0_is_grpo():
    rng = np.random.default_rng(2)
    r = rng.integers(0, 2, 8).astype(np.float32)
    s = rng.uniform(size=(8, 6)).astype(np.float32)
    m = rng.uniform(size=(8, 6)) < 0.7
    a0 = rlfr_advantages(r, 4, s, m, 0.0)
    g = np.asarray(group_advantages(r, 4))
    assert np.array_equal(np.asarray(a0), np.repeat(g[:, None], 6, 1))
    a = np.asarray(rlfr_advantages(r, 4, s, m, jnp.float32(0.1)))
    ref = g[:, None] + np.cumsum((-0.1 * s * m)[:, ::-1], 1)[:, ::-1]
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    jax.jit(rlfr_advantages, static_argnums=1)(r, 4, s, m, jnp.float32(0.3))  # c_flow a runtime value


V = 12
CFG = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, max_len=32)


class Count5:
    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V, 3).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == 5) for c in completions]), np.ones(len(completions), bool)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_c_flow_zero_in_rl_train_reduces_exactly_to_grpo():
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    kw = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, max_prompt_len=4, lr=1e-2)
    base, h0 = rl_train(model, Count5(), RLConfig(**kw))
    flow = _random_flow(jax.random.key(1), CFG.d_model, 8, 1)
    rlfr = RLFR(model, flow, layers=(0, 1), c_flow=0.0, threshold=0.0, topk=3, online=_online(flow))
    got, h1 = rl_train(model, Count5(), RLConfig(**kw), shape=rlfr.shape, callback=rlfr.callback)
    for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert [h["reward"] for h in h0] == [h["reward"] for h in h1]
    assert rlfr.policy is not model.params and len(rlfr.log) == 2


@pytest.mark.slow
def test_positive_c_flow_changes_the_update_and_rewards_at_most_topk_tokens():
    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    kw = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, max_prompt_len=4, lr=1e-2)
    base, _ = rl_train(model, Count5(), RLConfig(**kw))
    flow = _random_flow(jax.random.key(1), CFG.d_model, 8, 1)
    on = RLFR(model, flow, layers=(1,), c_flow=1.0, threshold=0.0, topk=3)
    moved, _ = rl_train(model, Count5(), RLConfig(**kw), shape=on.shape, callback=on.callback)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(moved.params)))
    assert diff > 1e-5 and 0 < on.log[0]["flow_reward_tokens"] <= 3


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_flow_score_separates_in_distribution_latents_auroc_above_0_9():
    """Notes' check (P57 d): fit on latents of one distribution (a planted 2-D manifold in 8-D, context = the
    previous latent); shifted / off-manifold latents score higher, AUROC > 0.9."""
    rng = np.random.default_rng(0)
    D = 8
    A = rng.normal(size=(2, D)).astype(np.float32)

    def sample(n, off=False):
        z = rng.normal(size=(n, 2)).astype(np.float32)
        h = z @ A + 0.05 * rng.normal(size=(n, D)).astype(np.float32)
        c = np.roll(h, 1, 0)
        if off:
            h = rng.normal(size=(n, D)).astype(np.float32) * h.std()
        return h, c

    h, c = sample(1500)
    tc = TrainConfig(lr=3e-3, warmup_steps=10, total_steps=150, weight_decay=0.01, log_every=50,
                     loss={"name": "rlfr_flow"})
    batches = flow_batches({"target": h, "cond": c, "layer": np.zeros(len(h), np.float32)}, batch_size=256)
    flow, hist = train(None, tc, batches, params=init_flow(jax.random.key(0), D, width=32, depth=2), progress=False)
    assert hist["train"][-1]["loss"] < hist["train"][0]["loss"]
    hi, ci = sample(200)
    ho, co = sample(200, off=True)
    s = flow_score(flow, np.concatenate([hi, ho]), np.concatenate([ci, co]), 0.0, jax.random.key(1))
    assert auroc(np.asarray(s), np.r_[np.zeros(200, int), np.ones(200, int)]) > 0.9


def test_bad_input_raises():
    p = init_flow(jax.random.key(0), 4, width=8, depth=1)
    h = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="timesteps"):
        flow_score(p, h, h, 0.0, jax.random.key(0), timesteps=[1.0])
    with pytest.raises(ValueError, match="finite"):
        flow_score(p, np.full((3, 4), np.nan, np.float32), h, 0.0, jax.random.key(0))
    with pytest.raises(ValueError, match="cond"):
        flow_velocity(p, h, 0.5, np.zeros((2, 4)), 0.0)
    with pytest.raises(ValueError, match="features"):
        flow_velocity(p, np.zeros((3, 5)), 0.5, h, 0.0)
    with pytest.raises(ValueError, match="c_flow"):
        rlfr_advantages(np.zeros(4), 2, np.zeros((4, 3)), None, -0.1)
    with pytest.raises(ValueError, match="group_size"):
        rlfr_advantages(np.zeros(4), 3, np.zeros((4, 3)), None, 0.1)
    with pytest.raises(ValueError, match="rewards must be finite"):
        rlfr_advantages(np.array([0, np.nan, 1, 0.0]), 2, np.zeros((4, 3)), None, 0.1)
    with pytest.raises(ValueError, match="norm"):
        normalize_scores(np.zeros((2, 3)), norm="zscore")
    with pytest.raises(ValueError, match="mask shape"):
        filter_scores(np.zeros((2, 3)), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="topk"):
        filter_scores(np.zeros((2, 3)), topk=2.5)
    with pytest.raises(ValueError, match="mode"):
        context_pairs(np.zeros((1, 3, 2)), mode="next")
    with pytest.raises(ValueError, match="no pairs"):
        context_pairs(np.zeros((1, 1, 2)), shift=1)
    with pytest.raises(ValueError, match="depth"):
        init_flow(jax.random.key(0), 4, depth=0)
    with pytest.raises(ValueError, match="repeats"):
        make_loss("rlfr_flow", repeats=0)
    with pytest.raises(ValueError, match="layers"):
        RLFR(Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG), p, layers=(5,))
    with pytest.raises(ValueError, match="pairs is empty"):
        flow_batches({"target": np.zeros((0, 4)), "cond": np.zeros((0, 4)), "layer": np.zeros(0)})
    with pytest.raises(ValueError, match="online"):
        RLFR(Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG), p, layers=(0,), online=1e-3)


@pytest.mark.slow
def test_online_flow_update_trains_on_correct_rollouts_only():
    from types import SimpleNamespace

    model = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)
    flow = _random_flow(jax.random.key(1), CFG.d_model, 8, 1)
    tokens = np.random.default_rng(0).integers(1, V, (4, 8))
    mask = np.zeros((4, 7), bool)
    mask[:, 3:] = True
    wrong = SimpleNamespace(tokens=tokens, rewards=np.zeros(4, np.float32), group_size=2)
    rlfr = RLFR(model, flow, layers=(1,), online=_online(flow))
    rlfr.shape(wrong, SimpleNamespace(mask=mask))
    assert rlfr.flow is flow and "flow_loss" not in rlfr.log[-1]  # no correct rollout: no update
    right = SimpleNamespace(tokens=tokens, rewards=np.array([1, 0, 0, 1], np.float32), group_size=2)
    adv = rlfr.shape(right, SimpleNamespace(mask=mask))
    assert adv.shape == (4, 7) and "flow_loss" in rlfr.log[-1]
    assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(jax.tree.leaves(flow), jax.tree.leaves(rlfr.flow)))
