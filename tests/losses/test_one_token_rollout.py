"""P25 one-token rollout: unbiasedness (OTR mean = p(y) grad log p(y)), chunked Gumbel-max, masks, errors, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.losses._stats import TokenStats
from tokjax.losses.one_token_rollout import (
    gumbel_max_sample, make_one_token_rollout_loss, one_token_rollout_loss, otr_expected_loss, otr_rewards,
    sampled_logp,
)
from tokjax.losses.registry import loss_names, make_loss

V, D = 7, 5


def _setup(seed=0, n=6):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    h = jax.random.normal(k1, (n, D))
    w = jax.random.normal(k2, (D, V)) * 0.8
    y = jax.random.randint(k3, (n,), 0, V)
    return h, w, y


def _mc_loss(w, h, y, samples, r_neg, mask=None):
    """The sample-based OTR loss of rows h [N, D] (as a [1, N] batch) under head w."""
    z = h @ w
    lse = jax.nn.logsumexp(z, -1)
    logp = jnp.take_along_axis(z, y[:, None], -1)[:, 0] - lse
    lp_s = sampled_logp(h, w, samples, lse)
    stats = TokenStats.create(logp[None], None if mask is None else mask[None])
    return one_token_rollout_loss(stats, lp_s[None], (samples == y[:, None])[None], r_neg=r_neg)[0]


def test_expected_loss_gradient_is_p_grad_logp():
    """K -> infinity: grad = -(1 - r_neg) mean_t p(y) grad log p(y) at tau = 1 (the notes' closed form)."""
    z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, V)) * 2
    y = jax.random.randint(jax.random.PRNGKey(2), (2, 3), 0, V)

    def dft(zz):  # probability-weighted SFT, p(y) stop-gradient'ed
        lp = jnp.take_along_axis(jax.nn.log_softmax(zz, -1), y[..., None], -1)[..., 0]
        return -jnp.mean(jax.lax.stop_gradient(jnp.exp(lp)) * lp)

    ref = jax.grad(dft)(z)
    for r_neg in (0.0, -0.5):
        g = jax.grad(lambda zz: otr_expected_loss(zz, y, r_neg=r_neg))(z)
        np.testing.assert_allclose(g, (1 - r_neg) * ref, rtol=1e-5, atol=1e-7)


def test_sample_estimator_is_exactly_unbiased():
    """Sum over every possible draw (K = 1) weighted by pi^tau(a) equals the analytic expected gradient."""
    h, w, y = _setup()

    @jax.jit
    def expected_over_draws(tau, r_neg):  # every row draws a (K = 1), weighted by its own pi^tau(a | row)
        q = jax.nn.softmax(h @ w / tau, -1)  # [N, V]

        def draw(hi, yi, a):
            return jax.grad(lambda ww: _mc_loss(ww, hi[None], yi[None], jnp.full((1, 1), a), r_neg))(w)

        per = jax.vmap(lambda a: jax.vmap(draw, (0, 0, None))(h, y, a))(jnp.arange(V))  # [V(a), N, D, V]
        return jnp.einsum("an,an...->...", q.T, per)

    for tau, r_neg in ((1.0, 0.0), (0.7, -0.3)):
        g = expected_over_draws(jnp.float32(tau), jnp.float32(r_neg))
        want = jax.grad(lambda ww: otr_expected_loss((h @ ww)[None], y[None], tau=tau, r_neg=r_neg))(w) * h.shape[0]
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # the exact unbiasedness test stays in the default suite
def test_large_k_mean_approaches_p_grad_logp():
    h, w, y = _setup(3)
    samples = gumbel_max_sample(h, w, jax.random.PRNGKey(4), 4096, chunk_size=3)
    g = jax.grad(lambda ww: _mc_loss(ww, h, y, samples, 0.0))(w)
    want = jax.grad(lambda ww: otr_expected_loss((h @ ww)[None], y[None]))(w)
    rel = float(jnp.linalg.norm(g - want) / jnp.linalg.norm(want))
    assert rel < 0.08, rel
    # r_neg = 0 and K draws: exactly (hits / K) grad log p(y) per row, through the same logp as SFT
    hits = jnp.mean((samples == y[:, None]).astype(jnp.float32), -1)

    def weighted(ww):
        lp = jnp.take_along_axis(jax.nn.log_softmax(h @ ww, -1), y[:, None], -1)[:, 0]
        return -jnp.mean(hits * lp)

    np.testing.assert_allclose(g, jax.grad(weighted)(w), rtol=1e-5, atol=1e-7)


def test_samples_follow_tempered_softmax_and_chunking_is_exact():
    h, w, _ = _setup(5, n=3)
    key = jax.random.PRNGKey(9)
    tau = 0.6
    full = gumbel_max_sample(h, w, key, 20000, tau=tau, chunk_size=V)
    freq = jax.vmap(lambda s: jnp.bincount(s, length=V))(full) / 20000
    np.testing.assert_allclose(freq, jax.nn.softmax(h @ w / tau, -1), atol=0.015)
    small = gumbel_max_sample(h, w, key, 64, tau=tau, chunk_size=V)
    for c in (1, 2, 3, 4, 100):
        np.testing.assert_array_equal(gumbel_max_sample(h, w, key, 64, tau=tau, chunk_size=c), small)
    # a tied [V, D] head gives the same draws; a runtime tau under jit too
    np.testing.assert_array_equal(gumbel_max_sample(h, w.T, key, 64, tau=tau, layout="vd", chunk_size=2), small)
    jitted = jax.jit(lambda t: gumbel_max_sample(h, w, key, 64, tau=t, chunk_size=3))
    np.testing.assert_array_equal(jitted(jnp.float32(tau)), small)
    assert full.dtype == jnp.int32 and full.shape == (3, 20000)


@pytest.mark.slow
def test_masks_and_rewards():
    h, w, y = _setup(7)
    samples = gumbel_max_sample(h, w, jax.random.PRNGKey(1), 8)
    mask = jnp.array([True, False, True, True, False, True])
    full = jax.grad(lambda ww: _mc_loss(ww, h, y, samples, -0.2, mask))(w)
    keep = np.asarray(mask)
    sub = jax.grad(lambda ww: _mc_loss(ww, h[keep], y[keep], samples[keep], -0.2))(w)
    np.testing.assert_allclose(full, sub, rtol=1e-5, atol=1e-7)
    # NaN/-inf log-probs at masked positions never reach the loss or the gradient; empty mask -> 0
    lp = jnp.array([[-0.5, jnp.nan, -1.0]])
    stats = TokenStats.create(lp, jnp.array([[True, False, True]]))
    s_lp = jnp.full((1, 3, 2), -jnp.inf).at[0, 0].set(-2.0).at[0, 2].set(-3.0)
    hits = jnp.array([[[True, False], [False, False], [False, False]]])
    loss, m = one_token_rollout_loss(stats, s_lp, hits, r_neg=-0.5)
    want = -((1 * -0.5 + -0.5 * -2.0) / 2 + (-0.5 * (-3.0 - 3.0)) / 2) / 2
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(m["hit_rate"]) == pytest.approx(0.25) and float(m["token_count"]) == 2
    empty, _ = one_token_rollout_loss(TokenStats.create(lp, jnp.zeros((1, 3), bool)), s_lp, hits)
    assert float(empty) == 0.0
    r = otr_rewards(jnp.array([[1, 2, 1]]), jnp.array([1]), r_neg=-0.25)
    np.testing.assert_array_equal(r, [[1.0, -0.25, 1.0]])


def test_bad_inputs():
    h, w, y = _setup()
    key = jax.random.PRNGKey(0)
    for kwargs, msg in [({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"),
                        ({"chunk_size": 0}, "chunk_size"), ({"layout": "xy"}, "layout")]:
        args = {"k": 2, **kwargs}
        with pytest.raises(ValueError, match=msg):
            gumbel_max_sample(h, w, key, args.pop("k"), **args)
    with pytest.raises(ValueError, match="hidden"):
        gumbel_max_sample(h[:, :2], w, key, 2)
    for kwargs, msg in [({"k": 0}, "k"), ({"tau": 0.0}, "tau"), ({"r_neg": 0.5}, "r_neg"),
                        ({"reduction": "mean"}, "reduction"), ({"method": "fast"}, "method"),
                        ({"chunk_size": -1}, "chunk_size")]:
        with pytest.raises(ValueError, match=msg):
            make_one_token_rollout_loss(**kwargs)
        with pytest.raises(ValueError, match=msg):
            make_loss("otr", **kwargs)
    with pytest.raises(ValueError, match="r_neg"):
        otr_expected_loss(jnp.zeros((1, 2, V)), jnp.zeros((1, 2), jnp.int32), r_neg=float("nan"))
    stats = TokenStats.create(jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\[B, T, K\]"):
        one_token_rollout_loss(stats, jnp.zeros((1, 3)), jnp.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="rng"):
        make_one_token_rollout_loss()(None, None, {"tokens": jnp.zeros((1, 4), jnp.int32)}, None)


def test_trains_through_tokjax_train_with_registered_loss():
    import tokjax
    from tokjax.train import TrainConfig, train

    assert "otr" in loss_names()
    cfg = tokjax.ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    rng = np.random.default_rng(0)
    windows = np.stack([(np.arange(9) * s + o) % 11 for s, o in rng.integers(1, 11, (64, 2))]).astype(np.int32)
    tc = TrainConfig(lr=1e-2, total_steps=30, warmup_steps=0, batch_size=8, seq_len=8, eval_every=0,
                     checkpoint_every=0, log_every=1,
                     loss={"name": "otr", "k": 8, "tau": 1.0, "r_neg": -0.1, "chunk_size": 4})
    model, hist = train(cfg, tc, windows, progress=False)
    ps = [h["p_target"] for h in hist["train"]]
    assert all(np.isfinite(h["loss"]) for h in hist["train"])
    assert np.mean(ps[-5:]) > np.mean(ps[:5])  # the target's probability rises under the OTR gradient
    # equal losses for equal options: compiled train steps are shared
    assert make_loss("otr", k=8) is make_loss("otr", k=8)
