"""P51 T-REG: DPO + alpha * token reward regulariser from contrastive prompting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses.dpo import make_dpo_loss
from tokjax.losses.t_reg import (
    contrastive_prompt_rewards, make_t_reg_loss, normalised_token_rewards, t_reg_regularizer,
)


def test_normalised_rewards_range_and_regulariser_matches_naive():
    r = np.random.default_rng(0)
    B, T = 2, 5
    pl, rl = (-np.abs(r.normal(size=(2 * B, T))).astype(np.float32) for _ in range(2))
    lb, lw = (-np.abs(r.normal(size=(2 * B, T)) * 3).astype(np.float32) for _ in range(2))
    m = r.uniform(size=(2 * B, T)) < 0.8
    m[:, 0] = True
    rh = np.asarray(normalised_token_rewards(lb, lw, m))
    assert np.all(np.abs(rh) < 0.5) and np.all(rh[~m] == 0)
    np.testing.assert_allclose(rh[m], (1 / (1 + np.exp(-(lb - lw))) - 0.5)[m], rtol=1e-5, atol=1e-7)
    beta = 0.2
    per, w = t_reg_regularizer(pl, rl, m, rh, beta)
    for b in range(B):
        R = [beta * np.sum((pl[i] - rl[i])[m[i]]) for i in (b, B + b)]
        wb = 1 / (1 + np.exp(-(R[1] - R[0])))
        reg = sum(-np.sum((rh[i] * beta * (pl[i] - rl[i]))[m[i]]) for i in (b, B + b))
        np.testing.assert_allclose(float(w[b]), wb, rtol=1e-5)
        np.testing.assert_allclose(float(per[b]), wb * reg, rtol=1e-5, atol=1e-7)
    # the regulariser raises tokens with positive reward and lowers negative ones; w and r_hat get no gradient
    g = jax.grad(lambda p: jnp.sum(t_reg_regularizer(p, rl, m, rh, beta)[0]))(jnp.asarray(pl))
    assert np.all(np.sign(np.asarray(g))[m & (np.abs(rh) > 1e-6)] == -np.sign(rh[m & (np.abs(rh) > 1e-6)]))


CFG = tokjax.ModelConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=12)


def test_alpha_zero_is_dpo_and_misaligned_prompts_raise():
    pol, ref = (tokjax.Model.init(CFG, jax.random.key(i)).params for i in range(2))
    r = np.random.default_rng(1)
    resp = r.integers(3, 13, (4, 5))
    toks = np.concatenate([np.zeros((4, 1)), np.ones((4, 2)), resp], 1).astype(np.int32)  # prompt "0 1 1"
    better = np.concatenate([np.zeros((4, 1)), np.full((4, 2), 2), resp], 1).astype(np.int32)  # prompt "0 2 2"
    worse = np.concatenate([np.zeros((4, 2)), np.ones((4, 1)), resp], 1).astype(np.int32)  # left-padded "0 0 1"
    batch = {"tokens": toks, "prompt_lengths": np.full((4,), 3, np.int32)}
    dpo = make_dpo_loss(ref=(ref, CFG), method="naive")(pol, CFG, batch)[0]
    tr = np.asarray(contrastive_prompt_rewards((ref, CFG), toks, better, worse, np.arange(7)[None] >= 2 * np.ones((4, 1)),
                                               method="naive"))
    l0 = make_t_reg_loss(alpha=0.0, ref=(ref, CFG), method="naive")(pol, CFG, {**batch, "token_rewards": tr})
    assert float(l0[0]) == float(dpo)
    with pytest.raises(ValueError, match="misaligned"):
        contrastive_prompt_rewards((ref, CFG), toks, np.roll(better, 1, axis=1), worse, np.ones((4, 7), bool))


@pytest.mark.slow
def test_in_loss_rewards_match_precomputed():  # ~6 s
    pol, ref = (tokjax.Model.init(CFG, jax.random.key(i)).params for i in range(2))
    r = np.random.default_rng(1)
    resp = r.integers(3, 13, (4, 5))
    toks = np.concatenate([np.zeros((4, 1)), np.ones((4, 2)), resp], 1).astype(np.int32)
    better = np.concatenate([np.zeros((4, 1)), np.full((4, 2), 2), resp], 1).astype(np.int32)
    worse = np.concatenate([np.zeros((4, 2)), np.ones((4, 1)), resp], 1).astype(np.int32)
    batch = {"tokens": toks, "prompt_lengths": np.full((4,), 3, np.int32)}
    dpo = make_dpo_loss(ref=(ref, CFG), method="naive")(pol, CFG, batch)[0]
    tr = np.asarray(contrastive_prompt_rewards((ref, CFG), toks, better, worse, np.arange(7)[None] >= 2 * np.ones((4, 1)),
                                               method="naive"))
    full = {**batch, "better_tokens": better, "worse_tokens": worse}
    a, ma = make_t_reg_loss(alpha=0.5, ref=(ref, CFG), method="naive")(pol, CFG, full)
    b, _ = make_t_reg_loss(alpha=0.5, ref=(ref, CFG), method="naive")(pol, CFG, {**batch, "token_rewards": tr})
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    assert float(a) != float(dpo) and float(ma["target_agreement"]) == 1.0
    with pytest.raises(ValueError, match="token_rewards"):
        make_t_reg_loss(ref=(ref, CFG), method="naive")(pol, CFG, batch)


def test_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        make_t_reg_loss(alpha=-0.5)
    with pytest.raises(ValueError, match="beta"):
        make_t_reg_loss(beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        normalised_token_rewards(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="2B rows"):
        t_reg_regularizer(*(np.zeros((3, 2), np.float32),) * 2, np.ones((3, 2), bool), np.zeros((3, 2)), 0.1)
