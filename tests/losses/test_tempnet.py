"""Tests for the P2 TempNet DRO loss (tokjax.losses.tempnet) and its training through tokjax.train."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.logits.tempnet import constant_tempnet, tempnet_apply, tempnet_init
from tokjax.losses import make_next_token_loss
from tokjax.losses.registry import loss_names, loss_options, make_loss
from tokjax.losses.tempnet import (
    TEMPNET_KEY, dro_optimal_tau, dro_tau_derivative, init_tempnet, make_tempnet_loss, tempnet_dro_loss,
    tempnet_dro_per_token,
)
from tokjax.train import TrainConfig, train

V = 16


def _naive(z, y, tau, rho):
    """tau * log sum_k exp((z_k - z_y) / tau) - tau * log V + rho * tau, in float64 numpy (P2's equation)."""
    z = np.asarray(z, np.float64)
    a = (z - np.take_along_axis(z, y[..., None], -1)) / tau[..., None]
    m = a.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[..., 0]
    return tau * lse - tau * math.log(z.shape[-1]) + rho * tau


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), zscale=st.sampled_from([0.1, 1.0, 10.0, 50.0]), rho=st.floats(0.0, 5.0),
       tlo=st.floats(0.05, 3.0))
def test_per_token_loss_equals_the_naive_formula(seed, zscale, rho, tlo):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = zscale * jax.random.normal(k1, (3, 5, V))
    y = jax.random.randint(k2, (3, 5), 0, V)
    tau = tlo * jnp.exp(jax.random.uniform(k3, (3, 5)))
    got = np.asarray(tempnet_dro_per_token(z, y, tau, rho))
    want = _naive(np.asarray(z), np.asarray(y), np.asarray(tau, np.float64), rho)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, zscale))


def test_loss_is_the_kl_dro_dual_and_tau_star_attains_kl_rho():
    # max_{p: KL(p||u) <= rho} E_p[z_k - z_y] is attained by p = softmax(z / tau*), and equals L(tau*).
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (6, V))
    y = jnp.arange(6)
    for rho in (0.1, 0.5, 1.0):
        ts = dro_optimal_tau(z, rho, 1e-3, 1e3)
        p = np.asarray(jax.nn.softmax(z / ts[:, None], -1), np.float64)
        kl = np.sum(p * np.log(p * V), -1)
        np.testing.assert_allclose(kl, rho, atol=2e-4)
        zz = np.asarray(z, np.float64)
        primal = np.sum(p * (zz - zz[np.arange(6), np.asarray(y)][:, None]), -1)
        np.testing.assert_allclose(np.asarray(tempnet_dro_per_token(z, y, ts, rho)), primal, rtol=1e-4, atol=1e-4)


def test_tau_derivative_is_the_autodiff_gradient_for_every_target():
    z = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (V,))
    for tau in (0.3, 1.0, 2.5):
        d = float(dro_tau_derivative(z, tau, 0.7))
        for y in (0, 5, V - 1):
            g = jax.grad(lambda t: tempnet_dro_per_token(z, jnp.asarray(y), t, 0.7))(jnp.asarray(tau))
            assert abs(float(g) - d) < 1e-4


def test_free_scalar_tau_descends_to_the_grid_and_bisection_minimiser():
    # For fixed logits, minimising L over a free scalar tau (what the loss gradient drives towards)
    # lands where a brute-force grid and dro_optimal_tau (bisection on dL/dtau) put the minimum.
    z = jnp.stack([4.0 * jax.random.normal(jax.random.PRNGKey(2), (V,)),
                   0.5 * jax.random.normal(jax.random.PRNGKey(3), (V,)), jnp.zeros(V).at[3].set(9.0)])
    y = jnp.array([1, 2, 3])
    rho, lo, hi = 1.0, 0.05, 20.0
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 4001))
    G = len(grid)
    losses = np.asarray(tempnet_dro_per_token(jnp.broadcast_to(z, (G, 3, V)), jnp.broadcast_to(y, (G, 3)),
                                              jnp.asarray(grid, jnp.float32)[:, None], rho))
    t_grid = grid[np.argmin(losses, 0)]
    t_bis = np.asarray(dro_optimal_tau(z, rho, lo, hi))

    @jax.jit
    def descend(s):
        f = lambda s: jnp.sum(tempnet_dro_per_token(z, y, jnp.exp(s), rho))  # noqa: E731
        # plain gradient descent on log tau (L is convex in tau; a small step avoids oscillating)
        return jax.lax.fori_loop(0, 4000, lambda _, s: jnp.clip(s - 0.05 * jax.grad(f)(s), np.log(lo), np.log(hi)), s)

    t_gd = np.exp(np.asarray(descend(jnp.zeros(3))))
    np.testing.assert_allclose(t_bis, t_grid, rtol=5e-3)
    np.testing.assert_allclose(t_gd, t_bis, rtol=5e-3)
    assert t_bis[0] > t_bis[1]  # sharper logits get the larger temperature (entropy log V - rho is the target)


def test_flat_rows_go_to_tau_min_and_one_hot_rows_to_tau_max():
    z = jnp.stack([jnp.zeros(V), jnp.zeros(V).at[0].set(100.0)])
    np.testing.assert_allclose(np.asarray(dro_optimal_tau(z, 1.0, 0.1, 2.0)), [0.1, 2.0], rtol=1e-5)


def _fixed_logits_batch(n=12, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = jax.random.normal(k1, (n, V)) * jnp.exp(jax.random.uniform(k2, (n, 1), minval=-1.0, maxval=2.0))
    return {"logits": z[None], "labels": jax.random.randint(k3, (1, n), 0, V)}


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_trained_tempnet_reaches_the_per_token_minimiser():
    # A TempNet trained (tokjax.train, plain pytree) on the DRO loss of fixed logits predicts tau close to
    # each row's minimiser: the loss gradient drives tau to tau*.
    batch = _fixed_logits_batch()
    rho, lo, hi = 1.0, 0.05, 5.0

    def loss_fn(params, cfg, b, rng):
        tau = tempnet_apply(params, b["logits"])
        loss = tempnet_dro_loss(b["logits"], b["labels"], tau, rho=rho)
        return loss, {"loss": loss}

    params = tempnet_init(jax.random.PRNGKey(0), V, 64, lo, hi)
    tc = TrainConfig(lr=1e-2, warmup_steps=10, total_steps=600, weight_decay=0.0, batch_size=1, seq_len=12,
                     log_every=100, eval_every=0, checkpoint_every=0, min_lr_ratio=0.1)
    trained, hist = train(None, tc, lambda s: batch, loss_fn=loss_fn, params=params, progress=False)
    tau = np.asarray(tempnet_apply(trained, batch["logits"]))[0]
    star = np.asarray(dro_optimal_tau(batch["logits"][0], rho, lo, hi))
    before = np.asarray(tempnet_apply(params, batch["logits"]))[0]
    assert np.max(np.abs(np.log(tau / star))) < 0.1, (tau, star)
    assert np.max(np.abs(np.log(before / star))) > 0.3  # it was not there at initialisation


@pytest.fixture(scope="module")
def lm():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=16)
    params = jax.jit(lambda k: tokjax.Model.init(cfg, k).params)(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 9), 0, V)
    return cfg, params, {"tokens": tokens}


def test_tau_one_gives_the_cross_entropy_gradient(lm):
    cfg, params, batch = lm
    p = {**params, TEMPNET_KEY: constant_tempnet(V, 1.0)}  # tau = 0.5 + 1.0 * sigmoid(0) = 1 exactly
    dro = make_tempnet_loss(rho=2.0, dropout=0.0)
    ce = make_next_token_loss(method="naive")
    g_dro, g_ce = jax.jit(lambda p, q: (jax.grad(lambda p: dro(p, cfg, batch)[0])(p),
                                       jax.grad(lambda q: ce(q, cfg, batch)[0])(q)))(p, params)
    for a, b in zip(jax.tree.leaves({k: g_dro[k] for k in params}), jax.tree.leaves(g_ce)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    loss, m = jax.jit(lambda p: dro(p, cfg, batch))(p)
    # L = CE + (rho - log V) at tau = 1
    np.testing.assert_allclose(float(loss), float(m["nll"]) + 2.0 - math.log(V), rtol=1e-5)
    np.testing.assert_allclose(float(m["tau_mean"]), 1.0, rtol=1e-6)


def test_the_tempnet_sees_detached_logits_and_frozen_base_stops_the_lm_gradient(lm):
    cfg, params, batch = lm
    p = init_tempnet(params, cfg, jax.random.PRNGKey(2), hidden=8)
    tokens = batch["tokens"]

    def fixed_tau(q, tau):  # the DRO loss with tau a constant: the LM's gradient in joint training
        z = tokjax.forward(q, cfg, tokens[:, :-1]).logits
        return tempnet_dro_loss(z, tokens[:, 1:], tau, rho=1.0)

    @jax.jit
    def grads(p):
        g_joint = jax.grad(lambda q: make_tempnet_loss(dropout=0.0)(q, cfg, batch)[0])(p)
        g_frozen = jax.grad(lambda q: make_tempnet_loss(dropout=0.0, base="frozen")(q, cfg, batch)[0])(p)
        tau = tempnet_apply(p[TEMPNET_KEY], tokjax.forward(params, cfg, tokens[:, :-1]).logits)
        return g_joint, g_frozen, jax.grad(fixed_tau)(params, tau)

    g_joint, g_frozen, g_ref = grads(p)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves({k: g_frozen[k] for k in params}))
    assert any(float(jnp.abs(x).max()) > 0.0 for x in jax.tree.leaves({k: g_joint[k] for k in params}))
    for a, b in zip(jax.tree.leaves(g_joint[TEMPNET_KEY]), jax.tree.leaves(g_frozen[TEMPNET_KEY])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert float(g_joint[TEMPNET_KEY]["tau_min"]) == 0.0 and float(g_joint[TEMPNET_KEY]["tau_max"]) == 0.0
    for a, b in zip(jax.tree.leaves({k: g_joint[k] for k in params}), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_registered_loss_trains_only_the_tempnet_with_a_frozen_base(lm):
    cfg, params, _ = lm
    assert {"tempnet", "tempnet_dro"} <= set(loss_names()) and loss_options("tempnet")["rho"] == 1.0
    assert make_loss("tempnet", rho=2.0) is make_loss("tempnet", rho=2.0)
    windows = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (32, 9), 0, V))
    start = init_tempnet(params, cfg, jax.random.PRNGKey(4), hidden=8)
    tc = TrainConfig(lr=1e-2, warmup_steps=1, total_steps=6, batch_size=4, seq_len=8, log_every=1, eval_every=0,
                     checkpoint_every=0, loss={"name": "tempnet", "rho": 2.0, "base": "frozen"},
                     trainable=("tempnet",))
    model, hist = train(cfg, tc, windows, params=start, progress=False)
    out = model.params
    for k in params:
        for a, b in zip(jax.tree.leaves(out[k]), jax.tree.leaves(params[k])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(out[TEMPNET_KEY]["w1"]), np.asarray(start[TEMPNET_KEY]["w1"]))
    assert float(out[TEMPNET_KEY]["tau_min"]) == float(start[TEMPNET_KEY]["tau_min"])
    rows = hist["train"]
    assert all(np.isfinite(r["loss"]) for r in rows) and "tau_mean" in rows[0]


@pytest.mark.slow
def test_joint_training_updates_both(lm):
    cfg, params, _ = lm
    windows = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (32, 9), 0, V))
    start = init_tempnet(params, cfg, jax.random.PRNGKey(4), hidden=8)
    tc = TrainConfig(lr=1e-2, warmup_steps=1, total_steps=3, batch_size=4, seq_len=8, log_every=1, eval_every=0,
                     checkpoint_every=0, loss={"name": "tempnet_dro"})
    model, _ = train(cfg, tc, windows, params=start, progress=False)
    assert not np.allclose(np.asarray(model.params["embed"]), np.asarray(params["embed"]))
    assert not np.allclose(np.asarray(model.params[TEMPNET_KEY]["w2"]), np.asarray(start[TEMPNET_KEY]["w2"]))


def test_empty_mask_gives_zero_and_no_nan(lm):
    cfg, params, batch = lm
    p = init_tempnet(params, cfg, jax.random.PRNGKey(2), hidden=8)
    b = {**batch, "mask": jnp.zeros((4, 8), bool)}
    loss, m = jax.jit(lambda p: make_tempnet_loss()(p, cfg, b, jax.random.PRNGKey(0)))(p)
    assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in m.values())


def test_bad_input_raises(lm):
    cfg, params, batch = lm
    z, y = jnp.zeros((2, V)), jnp.array([0, 1])
    with pytest.raises(ValueError, match="rho must lie in"):
        tempnet_dro_per_token(z, y, 1.0, rho=-0.1)
    with pytest.raises(ValueError, match="rho must lie in"):
        make_tempnet_loss(rho=-1.0)
    with pytest.raises(ValueError, match="rho must lie in"):
        make_loss("tempnet", rho=-1.0)
    with pytest.raises(ValueError, match="tau must lie in"):
        tempnet_dro_per_token(z, y, 0.0)
    with pytest.raises(ValueError, match="labels"):
        tempnet_dro_per_token(z, jnp.array([0, V]), 1.0)
    with pytest.raises(ValueError, match="base must be one of"):
        make_tempnet_loss(base="both")
    with pytest.raises(ValueError, match="tau_min must be smaller than tau_max"):
        dro_optimal_tau(z, 1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="tau_min must be smaller than tau_max"):
        init_tempnet(params, cfg, jax.random.PRNGKey(0), tau_min=1.5, tau_max=1.2)
    with pytest.raises(ValueError, match="has no 'tempnet' entry"):
        make_tempnet_loss()(params, cfg, batch)
    wrong = {**params, TEMPNET_KEY: tempnet_init(jax.random.PRNGKey(0), V + 1, 8)}
    with pytest.raises(ValueError, match="the TempNet reads 17 logits but the model's vocab_size is 16"):
        make_tempnet_loss()(wrong, cfg, batch)
