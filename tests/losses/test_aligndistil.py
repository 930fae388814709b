"""AlignDistil (P15): token-adaptive extrapolation of a DPO / reverse-DPO pair, reverse KL to the student."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.aligndistil import (
    adaptive_weight, aligndistil_loss, aligndistil_per_token, extrapolated_logits, make_aligndistil_loss,
)


def _logits(seed, B=3, T=4, V=6, scale=1.5):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def official(student, dpo, rev, mask, beta=0.1, beta2=10.0, T=1.0, len_norm=True):
    """Returns the official off-policy ``reward_boost_type="aligndistil"`` loss, in float64 NumPy."""
    s_lp, d_lp, r_lp = _log_softmax(student), _log_softmax(dpo), _log_softmax(rev)
    tvd = np.abs(np.exp(d_lp) - np.exp(r_lp)).sum(-1)
    w = tvd * beta2 + 1e-3
    final = w[..., None] * (np.asarray(dpo, np.float64) - np.asarray(rev, np.float64)) + np.asarray(dpo, np.float64)
    f_lp = _log_softmax(final / T)
    per_tok = (np.exp(s_lp) * (s_lp - f_lp)).sum(-1) * (beta / w)
    m = np.asarray(mask, np.float64)
    seq = (per_tok * m).sum(-1)
    if len_norm:
        seq = seq / m.sum(-1)
    return seq.mean()


def test_matches_official_trainer():
    s, d, r = _logits(0), _logits(1), _logits(2)
    mask = jnp.asarray([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], bool)
    for beta, beta2, T in ((0.1, 10.0, 1.0), (0.5, 2.0, 0.7)):
        got = aligndistil_loss(s, d, r, mask, beta=beta, beta2=beta2, temperature=T)
        np.testing.assert_allclose(float(got), official(s, d, r, mask, beta, beta2, T), rtol=1e-5)
    # reduction="sum" / normalizer=B is the trainer without --reward_len_norm
    got = aligndistil_loss(s, d, r, mask, reduction="sum", normalizer=3.0)
    np.testing.assert_allclose(float(got), official(s, d, r, mask, len_norm=False), rtol=1e-5)


def test_weight_and_extrapolation():
    d, r = _logits(3), _logits(4)
    w = np.asarray(adaptive_weight(d, r, 10.0))
    assert np.all(w >= 1e-3) and np.all(w <= 20.0 + 1e-3)
    np.testing.assert_allclose(np.asarray(adaptive_weight(d, d, 10.0)), 1e-3, rtol=1e-5)  # equal models: eps
    np.testing.assert_allclose(np.asarray(extrapolated_logits(d, r, 0.0)), np.asarray(d))
    z = np.asarray(extrapolated_logits(d, r, jnp.asarray(w)))
    np.testing.assert_allclose(z, np.asarray(d) + w[..., None] * (np.asarray(d) - np.asarray(r)), rtol=1e-5, atol=1e-5)
    # the teachers and the weight carry no gradient
    gd, gr = jax.grad(lambda a, b: aligndistil_loss(_logits(5), a, b), argnums=(0, 1))(d, r)
    assert np.all(np.asarray(gd) == 0) and np.all(np.asarray(gr) == 0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 3.0), st.booleans())
def test_per_token_minimiser_is_the_extrapolated_teacher(seed, T, adaptive):
    d, r = _logits(seed), _logits(seed + 1)
    _, w = aligndistil_per_token(d, d, r, beta2=4.0, adaptive=adaptive)
    target = extrapolated_logits(d, r, w) / T
    f = lambda x: aligndistil_loss(x, d, r, beta2=4.0, temperature=T, adaptive=adaptive, reduction="sum")  # noqa: E731
    val, g = jax.value_and_grad(f)(target)
    assert abs(float(val)) < 1e-4 and np.abs(np.asarray(g)).max() < 1e-4
    assert float(f(d)) >= float(val)


def test_gradient_matches_reverse_kl_formula():
    # d/dz KL(softmax(z) || q) = p * (log p - log q - KL)
    s, d, r = _logits(6), _logits(7), _logits(8)
    per_tok, w = aligndistil_per_token(s, d, r)
    g = np.asarray(jax.grad(lambda x: jnp.sum(aligndistil_per_token(x, d, r)[0]))(s))
    lq = _log_softmax(extrapolated_logits(d, r, w))
    lp = _log_softmax(s)
    kl = (np.exp(lp) * (lp - lq)).sum(-1, keepdims=True)
    want = (0.1 / np.asarray(w, np.float64))[..., None] * np.exp(lp) * (lp - lq - kl)
    np.testing.assert_allclose(g, want, rtol=2e-3, atol=1e-6)
    # forward KL variant is a different, also non-negative loss
    fwd, _ = aligndistil_per_token(s, d, r, divergence="forward")
    assert np.all(np.asarray(fwd) >= 0) and not np.allclose(np.asarray(fwd), np.asarray(per_tok))


def test_mask_and_empty():
    s, d, r = _logits(9), _logits(10), _logits(11)
    mask = jnp.asarray([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    base = float(aligndistil_loss(s, d, r, mask))
    s2 = jnp.where(mask[..., None], s, 50.0)
    np.testing.assert_allclose(float(aligndistil_loss(s2, d, r, mask)), base, rtol=1e-6)
    v, g = jax.value_and_grad(lambda x: aligndistil_loss(x, d, r, jnp.zeros((3, 4), bool)))(s)
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)
    # runtime hyperparameters: one compilation for several values
    traces = []

    @jax.jit
    def f(beta, beta2, tau):
        traces.append(1)
        return aligndistil_loss(s, d, r, mask, beta=beta, beta2=beta2, temperature=tau)

    a, b = f(0.1, 10.0, 1.0), f(0.2, 3.0, 2.0)
    assert len(traces) == 1 and float(a) != float(b)
    np.testing.assert_allclose(float(a), base, rtol=1e-5)


def test_bad_inputs():
    s, d, r = _logits(0), _logits(1), _logits(2)
    with pytest.raises(ValueError, match="vocab size"):
        aligndistil_loss(s, d[..., :5], r)
    with pytest.raises(ValueError, match="batch, seq"):
        aligndistil_loss(s, d, r[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        aligndistil_loss(s, d, r, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        aligndistil_loss(s, d, r, beta=-0.1)
    with pytest.raises(ValueError, match="beta2"):
        aligndistil_loss(s, d, r, beta2=0.0, adaptive=False)
    with pytest.raises(ValueError, match="mask shape"):
        aligndistil_loss(s, d, r, jnp.ones((3, 5), bool))
    with pytest.raises(ValueError, match="divergence"):
        aligndistil_loss(s, d, r, divergence="js")
    with pytest.raises(ValueError, match="reduction"):
        aligndistil_loss(s, d, r, reduction="mean")


def _numpy_model(seed=0, V=29):
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    specs = tokjax.model.param_specs(cfg)
    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec)), cfg


def test_factory_train_signature():
    params, cfg = _numpy_model(0)
    dpo, _ = _numpy_model(1)
    rev, _ = _numpy_model(2)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 29, size=(2, 9)), jnp.int32)
    batch = {"tokens": tokens, "prompt_lengths": jnp.array([3, 4])}
    loss_fn = make_aligndistil_loss((dpo, cfg), (rev, cfg))
    (loss, m), g = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, cfg, b, None), has_aux=True))(params, batch)
    zs = tokjax.forward(params, cfg, tokens[:, :-1]).logits
    zd = tokjax.forward(dpo, cfg, tokens[:, :-1]).logits
    zr = tokjax.forward(rev, cfg, tokens[:, :-1]).logits
    mask = tokjax.losses.shifted_completion_mask(tokens, jnp.array([3, 4]))
    np.testing.assert_allclose(float(loss), official(zs, zd, zr, mask), rtol=1e-4)
    assert float(m["token_count"]) == 6 + 5 and float(m["mean_weight"]) > 1e-3
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    with pytest.raises(ValueError, match="reverse_model"):
        make_aligndistil_loss((dpo, cfg), rev)
