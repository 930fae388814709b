"""Token-weighted DPO (the shared core of P17 cDPO / P48 TGDPO) and the registered token-level losses in train."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses.dpo import dpo_loss, dpo_per_pair, make_dpo_loss


def _pair(seed, B=4, T=5, T2=6, p_mask=0.7):
    r = np.random.default_rng(seed)
    lp = lambda *s: -np.abs(r.normal(size=s) * 2.0).astype(np.float32)  # noqa: E731
    cm = r.uniform(size=(B, T)) < p_mask
    rm = r.uniform(size=(B, T2)) < p_mask
    cm[:, 0] = True
    rm[:, 0] = True
    return lp(B, T), lp(B, T), cm, lp(B, T2), lp(B, T2), rm


def trl_sigmoid(cp, cr, cm, rp, rr, rm, beta, cw=None, rw=None):
    """Hand-written TRL sigmoid DPO (float64 loops), with optional per-token weights."""
    cw = np.ones_like(cp) if cw is None else cw
    rw = np.ones_like(rp) if rw is None else rw
    out = []
    for b in range(cp.shape[0]):
        zc = sum(float(cw[b, t]) * beta * (float(cp[b, t]) - float(cr[b, t])) for t in range(cp.shape[1]) if cm[b, t])
        zr = sum(float(rw[b, t]) * beta * (float(rp[b, t]) - float(rr[b, t])) for t in range(rp.shape[1]) if rm[b, t])
        out.append(np.log1p(np.exp(-(zc - zr))))
    return float(np.mean(out))


def test_all_ones_weights_are_plain_dpo_bit_for_bit_and_match_trl():
    args = _pair(0)
    ones_c, ones_r = np.ones_like(args[0]), np.ones_like(args[3])
    for beta in (0.1, 0.7):
        p0, v0 = dpo_per_pair(*args, beta)
        p1, v1 = dpo_per_pair(*args, beta, chosen_weights=ones_c, rejected_weights=ones_r)
        assert np.array_equal(np.asarray(p0), np.asarray(p1)) and np.array_equal(v0, v1)
        np.testing.assert_allclose(float(dpo_loss(*args, beta, chosen_weights=ones_c, rejected_weights=ones_r)),
                                   trl_sigmoid(*args, beta), rtol=1e-6, atol=1e-6)


def test_weighted_margin_matches_reference_and_weights_get_no_gradient():
    args = _pair(1)
    r = np.random.default_rng(1)
    cw, rw = r.uniform(0, 2, args[0].shape).astype(np.float32), r.uniform(0, 2, args[3].shape).astype(np.float32)
    got = float(dpo_loss(*args, 0.3, chosen_weights=cw, rejected_weights=rw))
    np.testing.assert_allclose(got, trl_sigmoid(*args, 0.3, cw, rw), rtol=1e-5, atol=1e-6)
    assert abs(got - float(dpo_loss(*args, 0.3))) > 1e-4  # the weights matter
    gw = jax.grad(lambda a, b: dpo_loss(*args, 0.3, chosen_weights=a, rejected_weights=b), argnums=(0, 1))(
        jnp.asarray(cw), jnp.asarray(rw))
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in gw)
    # a zero weight removes that token's influence on the policy gradient
    rw0 = rw.copy()
    rw0[:, 0] = 0.0
    g = jax.grad(lambda q: dpo_loss(args[0], args[1], args[2], q, args[4], args[5], 0.3, chosen_weights=cw,
                                    rejected_weights=rw0))(jnp.asarray(args[3]))
    assert np.all(np.asarray(g)[:, 0] == 0) and np.any(np.asarray(g)[:, 1:] != 0)


def test_weight_bad_inputs():
    args = _pair(2)
    w = np.ones_like(args[0])
    with pytest.raises(ValueError, match="chosen_weights must be"):
        dpo_per_pair(*args, 0.1, chosen_weights=w[:, :-1])
    with pytest.raises(ValueError, match=">= 0"):
        dpo_per_pair(*args, 0.1, chosen_weights=-w)
    with pytest.raises(ValueError, match="finite"):
        dpo_per_pair(*args, 0.1, rejected_weights=np.full_like(args[3], np.nan))
    with pytest.raises(ValueError, match="floating"):
        dpo_per_pair(*args, 0.1, chosen_weights=w.astype(np.int32))


CFG = tokjax.ModelConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=12)


def _batch(seed, B=2, T1=8):
    r = np.random.default_rng(seed)
    toks = r.integers(0, CFG.vocab_size, size=(2 * B, T1)).astype(np.int32)
    return {"tokens": toks, "prompt_lengths": np.full((2 * B,), 3, np.int32)}


@pytest.mark.slow
def test_make_dpo_loss_batch_weights_ones_bit_for_bit_and_weighted():
    pol = tokjax.Model.init(CFG, jax.random.key(0)).params
    ref = tokjax.Model.init(CFG, jax.random.key(1)).params
    batch = _batch(0)
    loss = make_dpo_loss(beta=0.1, ref=(ref, CFG), method="naive")
    vg = jax.jit(jax.value_and_grad(lambda p, b: loss(p, CFG, b)[0]))
    l0, g0 = vg(pol, batch)
    l1, g1 = vg(pol, {**batch, "weights": np.ones((4, 7), np.float32)})
    assert float(l0) == float(l1)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
    w = np.random.default_rng(0).uniform(0, 2, (4, 7)).astype(np.float32)
    l2, _ = vg(pol, {**batch, "weights": w})
    assert abs(float(l2) - float(l0)) > 1e-6
    with pytest.raises(ValueError, match="weights"):
        loss(pol, CFG, {**batch, "weights": np.ones((4, 5), np.float32)})


@pytest.mark.slow
def test_registered_token_level_losses_train_with_dict_batches(tmp_path):
    # ~27 s: four losses compiled into tokjax.train; the fast per-method tests live in their own files
    from tokjax.losses import make_loss
    from tokjax.train import TrainConfig, train

    ref = tokjax.Model.init(CFG, jax.random.key(1))
    rm = tokjax.Model.init(CFG, jax.random.key(2))
    pos, neg = tokjax.Model.init(CFG, jax.random.key(3)), tokjax.Model.init(CFG, jax.random.key(4))
    r = np.random.default_rng(0)

    def pref_batch(step):
        b = _batch(step)
        b["token_rewards"] = r.uniform(-0.5, 0.5, (4, 7)).astype(np.float32)
        return b

    losses = {
        "cdpo": make_loss("cdpo", reference=ref, positive=pos, negative=neg, method="naive", chunk=5),
        "tgdpo": make_loss("tgdpo", reference=ref, reward_model=rm, method="naive"),
        "t_reg": make_loss("t_reg", reference=ref, method="naive"),
        "inverse_rl": make_loss("inverse_rl", lam=0.5, method="naive"),
    }
    for name, fn in losses.items():
        tc = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=2, batch_size=4, seq_len=7, log_every=1, eval_every=0,
                         checkpoint_every=0)
        model, hist = train(CFG, tc, pref_batch, loss_fn=fn, workdir=tmp_path / name, progress=False)
        last = hist["train"][-1]
        assert np.isfinite(last["loss"]), name
        moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                    zip(jax.tree.leaves(model.params), jax.tree.leaves(tokjax.Model.init(CFG, jax.random.key(0)).params)))
        assert moved > 0, name
    assert "weight_spread" in losses["tgdpo"](ref.params, CFG, pref_batch(0))[1]
