"""PRIOR (P78): token weights (1 - P_ref)^alpha, stop-gradient, normalised per sequence; as a loss transform."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import (
    TokenStats, next_token_loss, prior, prior_weights, reference_logp, shifted_completion_mask, token_stats,
)

TOL = dict(rtol=2e-5, atol=2e-5)


def _numpy_model(seed=0):
    """Returns a small tokjax.Model whose params are drawn with NumPy (no per-shape JAX RNG compiles)."""
    cfg = tokjax.ModelConfig(vocab_size=53, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=32)
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.2 * spec.scale, jnp.float32)

    specs = tokjax.model.param_specs(cfg)
    return tokjax.Model(params=jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec)),
                        cfg=cfg)


def assert_close(a, b, **tol):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **(tol or TOL))


def _ref(seed=0, B=4, T=7):
    r = np.random.default_rng(seed)
    p = r.uniform(0.01, 0.99, size=(B, T))
    mask = r.uniform(size=(B, T)) < 0.8
    mask[:, 0] = True
    return jnp.asarray(np.log(p), jnp.float32), jnp.asarray(mask), p, mask


def test_weights_formula_and_sum_to_sequence_length():
    ref_logp, mask, p, m = _ref()
    for alpha in (0.5, 1.0, 2.0):
        w = np.asarray(prior_weights(ref_logp, mask, alpha))
        np.testing.assert_allclose(w.sum(-1), m.sum(-1), rtol=1e-5)
        assert np.all(w[~m] == 0)
        raw = np.where(m, (1 - p) ** alpha, 0.0)
        np.testing.assert_allclose(w, raw * m.sum(-1, keepdims=True) / raw.sum(-1, keepdims=True), rtol=1e-5)
        assert_close(prior_weights(ref_logp, mask, alpha, normalize="none"), raw, rtol=1e-5, atol=1e-7)
    # Unnormalised weights are (1 - P_ref)^alpha: lower reference probability -> larger weight.
    w = np.asarray(prior_weights(ref_logp, None, 1.0, normalize="none"))
    order = np.argsort(p, axis=None)
    assert np.all(np.diff(w.reshape(-1)[order]) <= 1e-7)


def test_alpha_zero_is_plain_ntp_and_certain_rows_fall_back_to_uniform():
    ref_logp, mask, _, m = _ref(1)
    assert_close(prior_weights(ref_logp, mask, 0.0), m.astype(np.float32))
    certain = jnp.zeros((2, 5)).at[1, 2].set(-1.0)  # row 0: P_ref = 1 everywhere
    w = np.asarray(prior_weights(certain, None, 1.0))
    np.testing.assert_array_equal(w[0], np.ones(5))
    np.testing.assert_allclose(w[1].sum(), 5.0, rtol=1e-6)
    assert np.count_nonzero(w[1]) == 1


def test_weights_are_stop_gradient():
    ref_logp, mask, _, _ = _ref(2)
    g_ref = jax.grad(lambda r: jnp.sum(prior_weights(r, mask, 1.0) * jnp.arange(7.0)))(ref_logp)
    g_alpha = jax.grad(lambda a: jnp.sum(prior_weights(ref_logp, mask, a) * jnp.arange(7.0)))(1.5)
    assert np.all(np.asarray(g_ref) == 0) and float(g_alpha) == 0.0


def test_transform_reweights_stats():
    ref_logp, mask, _, m = _ref(3)
    logp = jnp.asarray(-np.random.default_rng(0).uniform(0.1, 2.0, size=(4, 7)), jnp.float32)
    stats = TokenStats.create(logp, mask, jnp.full((4, 7), 2.0), ref_logp=ref_logp)
    out, state = prior(alpha=1.0)(stats)
    assert_close(out.weights, 2.0 * prior_weights(ref_logp, mask, 1.0))
    assert float(state["alpha"]) == 1.0
    with pytest.raises(ValueError, match="ref_logp"):
        prior()(TokenStats.create(logp, mask))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="alpha"):
        prior(alpha=-1.0)
    with pytest.raises(ValueError, match="normalize"):
        prior(normalize="batch")
    with pytest.raises(ValueError, match="mask shape"):
        prior_weights(jnp.zeros((2, 3)), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="alpha"):
        prior_weights(jnp.zeros((2, 3)), None, float("nan"))


def test_prior_next_token_loss_value_gradient_and_no_recompile():
    model = _numpy_model()
    ref_model = _numpy_model(seed=1)
    cfg = model.cfg
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 53, size=(3, 9)), jnp.int32)
    lengths = jnp.array([9, 6, 4])
    batch = {"tokens": tokens, "lengths": lengths}
    traces = []

    @jax.jit
    def run(params, ref_params, state):
        traces.append(1)
        out = {"cut": jax.value_and_grad(lambda p: next_token_loss(
            p, cfg, batch, None, transforms=[prior()], transform_state=state, block_size=8,
            ref=(ref_params, cfg)), has_aux=True)(params)}
        st = token_stats(params, cfg, batch, ref=(ref_params, cfg), block_size=8)
        return out, st

    state = prior().init()
    out, st = run(model.params, ref_model.params, state)
    (lc, mc), gc = out["cut"]
    mask = shifted_completion_mask(tokens, lengths=lengths)
    ref_lp = reference_logp(ref_model.params, cfg, tokens, block_size=8)
    assert_close(st.ref_logp, ref_lp)
    w = prior_weights(ref_lp, mask, 1.0)
    expect = jnp.sum(jnp.where(mask, -w * st.logp, 0.0)) / jnp.sum(mask)
    assert_close(lc, expect)
    assert_close(mc["weight_mean"], 1.0, rtol=1e-5)  # weights sum to the number of tokens
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(gc))
    # alpha is runtime state: a new value reuses the compiled program and changes the loss
    out2, _ = run(model.params, ref_model.params, {"alpha": jnp.float32(0.0)})
    assert len(traces) == 1
    assert_close(out2["cut"][0][0], out2["cut"][0][1]["nll"])  # alpha = 0 is plain NTP
    # the reference model gets no gradient through the weights
    g_ref = jax.jit(jax.grad(lambda rp: next_token_loss(
        model.params, cfg, batch, None, transforms=[prior()], block_size=8, ref=(rp, cfg))[0]))(ref_model.params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g_ref))


def test_prior_needs_reference():
    model = _numpy_model()
    tokens = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="reference"):
        next_token_loss(model.params, model.cfg, {"tokens": tokens}, None, transforms=[prior()])
    with pytest.raises(ValueError, match="ref_logp"):
        next_token_loss(model.params, model.cfg, {"tokens": tokens, "ref_logp": jnp.zeros((2, 5))}, None,
                        transforms=[prior()])
