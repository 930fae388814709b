"""tokjax.losses.neodiff (P67 NeoDiff): the tau schemes and their reductions, Poisson marginals, labels, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tokjax.model import Model, ModelConfig, init_params
from tokjax.losses import neodiff as N

V, P, L = 12, 2, 6


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=16)
    params = N.neodiff_init(dict(init_params(cfg, jax.random.key(0))), cfg, jax.random.key(1))
    return Model(params, cfg)


def _batch(B=4, seed=0):
    r = np.random.default_rng(seed)
    return {"src": r.integers(0, V, (B, P)).astype(np.int32), "tgt": r.integers(0, 8, (B, L)).astype(np.int32)}


def test_continuous_scheme_is_plain_continuous_diffusion(model):
    """tau = M t for every token: the loss equals a direct continuous-diffusion implementation at the same t, eps."""
    params, cfg = model.params, model.cfg
    b = _batch()
    t = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
    eps = np.asarray(jax.random.normal(jax.random.key(5), (4, L, cfg.d_model)))
    hp = {"noise_scale": 1.3, "shift": 1e-4}
    loss, met = N.neodiff_loss(params, cfg, {**b, "t": t, "noise": eps, "hparams": hp}, jax.random.key(2),
                               scheme="continuous", num_tau=2, predictor=False)
    # direct: Diffusion-LM's sqrt schedule on the unit-RMS embeddings, one time per sequence
    E = np.asarray(params["embed"], np.float64)
    E = E / np.sqrt((E ** 2).mean(-1, keepdims=True))
    abar = np.clip(1 - np.sqrt(t + 1e-4), 0, 1)[:, None, None]
    x0 = E[b["tgt"]]
    z = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * 1.3 * eps
    x0_hat, logits = N.neodiff_denoise(params, cfg, jnp.asarray(b["src"]), jnp.asarray(z, jnp.float32),
                                       jnp.broadcast_to(jnp.asarray(t)[:, None], (4, L)), num_tau=2)
    x0_hat, logits = np.asarray(x0_hat, np.float64), np.asarray(logits, np.float64)
    mse = ((x0_hat - x0) ** 2).mean()
    lse = np.log(np.exp(logits).sum(-1))
    ce = (lse - np.take_along_axis(logits, b["tgt"][..., None], -1)[..., 0]).mean()
    np.testing.assert_allclose(float(met["l_z"]), mse, rtol=1e-4)
    np.testing.assert_allclose(float(met["l_anchor"]), ce, rtol=1e-4)
    np.testing.assert_allclose(float(loss), mse + ce, rtol=1e-4)
    # and the same loss for any num_tau (tau / M = t)
    loss9, _ = N.neodiff_loss(params, cfg, {**b, "t": t, "noise": eps, "hparams": hp}, jax.random.key(2),
                              scheme="continuous", num_tau=9, predictor=False)
    np.testing.assert_allclose(float(loss9), float(loss), rtol=1e-5)


def test_tau_in_0_or_max_is_absorbing_masking(model):
    """tau in {0, M} with shift 0: clean tokens are their embedding, masked ones pure noise that carries nothing
    about x; the masked fraction is t ('absorbing') or 1 - exp(-lam t) (Poisson with num_tau = 2)."""
    params = model.params
    t = jnp.full((4000,), 0.35)
    for scheme, rate in (("absorbing", 0.35), ("poisson", 1 - np.exp(-0.35))):
        taus = np.asarray(N.sample_taus(jax.random.key(3), t, 4, scheme=scheme, num_tau=2))
        assert set(np.unique(taus)) <= {0.0, 1.0}
        assert abs(taus.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / taus.size)
    taus = N.sample_taus(jax.random.key(4), jnp.array([0.5, 0.5]), L, scheme="absorbing", num_tau=5)
    x_a, x_b = (N.embed_table(params)[jnp.asarray(_batch(2, s)["tgt"])] for s in (0, 1))
    eps = jax.random.normal(jax.random.key(6), x_a.shape)
    hp = {"shift": 0.0, "noise_scale": 0.7}
    z_a = N.noise_tokens(x_a, taus, eps, num_tau=5, hparams=hp)
    z_b = N.noise_tokens(x_b, taus, eps, num_tau=5, hparams=hp)
    masked = np.asarray(taus) == 4
    assert masked.any() and (~masked).any()
    np.testing.assert_array_equal(np.asarray(z_a)[masked], np.asarray(z_b)[masked])  # no information about x
    np.testing.assert_allclose(np.asarray(z_a)[masked], 0.7 * np.asarray(eps)[masked], atol=1e-6)
    np.testing.assert_allclose(np.asarray(z_a)[~masked], np.asarray(x_a)[~masked], atol=1e-6)
    # = a direct masked-diffusion input: [noise] at masked slots, the clean embedding elsewhere
    direct = np.where(masked[..., None], 0.7 * np.asarray(eps), np.asarray(x_a))
    np.testing.assert_allclose(np.asarray(z_a), direct, atol=1e-6)


def _capped_poisson(lam, M):
    p = stats.poisson.pmf(np.arange(M), lam)
    return np.append(p, stats.poisson.sf(M - 1, lam))


def _rescaled_poisson(lam, t, M, spread):
    k = np.arange(0, 2000)
    lev = np.clip(np.round((k - lam) / (np.sqrt(lam) + 1e-8) * spread * M * t + lam), 0, M).astype(int)
    return np.bincount(lev, weights=stats.poisson.pmf(k, lam), minlength=M + 1)


@pytest.mark.parametrize("scheme", ["poisson", "poisson_rescaled"])
def test_tau_marginals_match_poisson_chi_square(scheme):
    M, t, n = 9, 0.4, 40000
    hp = N.default_hparams(scheme)
    lam = hp["lam_scale"] * M * t
    want = _capped_poisson(lam, M) if scheme == "poisson" else _rescaled_poisson(lam, t, M, hp["spread"])
    taus = np.asarray(N.sample_taus(jax.random.key(7), jnp.full((n // 8,), t), 8, scheme=scheme, num_tau=M + 1))
    counts = np.bincount(taus.astype(int).ravel(), minlength=M + 1)
    keep = want * n >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(want[keep], want[~keep].sum()) * n
    obs, exp = obs[exp > 0], exp[exp > 0]
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    pmf = np.asarray(N.tau_pmf(jnp.array([t]), scheme=scheme, num_tau=M + 1))[0]
    np.testing.assert_allclose(pmf, want, atol=2e-5)


def test_quantiles_and_labels_match_the_official_create_labels():
    M, t = 20, np.array([0.15, 0.6], np.float32)
    q = np.array([[0.01, 0.3, 0.5, 0.77, 0.999], [0.05, 0.2, 0.5, 0.9, 1.0]], np.float32)
    got = np.asarray(N.tau_quantile(q, t, scheme="poisson", num_tau=M + 1))
    np.testing.assert_array_equal(got, np.minimum(stats.poisson.ppf(q, (M * t)[:, None]), M))
    hp = N.default_hparams("poisson_rescaled")
    lam = (hp["lam_scale"] * M * t)[:, None]
    want = np.clip(np.round((stats.poisson.ppf(q, lam) - lam) / np.sqrt(lam) * 2 * M * t[:, None] + lam), 0, M)
    np.testing.assert_array_equal(np.asarray(N.tau_quantile(q, t, scheme="poisson_rescaled", num_tau=M + 1)), want)
    # labels: ranked by loss, invalid slots excluded (official create_labels)
    r = np.random.default_rng(0)
    loss = r.normal(size=(2, 7)).astype(np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 0, 0], [1] * 7], bool)
    lab = np.asarray(N.tau_labels(loss, valid, t, scheme="poisson", num_tau=M + 1))
    for b in range(2):
        n = valid[b].sum()
        ref = np.minimum(stats.poisson.ppf((np.arange(7) + 0.5) / n, M * t[b]), M)
        order = np.argsort(np.where(valid[b], loss[b], np.inf))
        exp = np.full(7, -1.0)
        exp[order[:n]] = ref[:n]
        np.testing.assert_array_equal(lab[b], exp)
    assert np.all(np.diff(lab[1][np.argsort(loss[1])]) >= 0)  # harder tokens get more noise


@pytest.mark.parametrize("scheme", ["poisson_rescaled", pytest.param("absorbing", marks=pytest.mark.slow),
                                    pytest.param("poisson", marks=pytest.mark.slow),
                                    pytest.param("continuous", marks=pytest.mark.slow)])
def test_loss_is_finite_at_t_0_and_1_and_trains_the_predictor(model, scheme):
    fn = N.make_neodiff_loss(scheme, 10, 8, True)
    batch = {**_batch(), "t": np.array([0.0, 1.0, 0.0, 1.0], np.float32)}
    (loss, met), g = jax.jit(jax.value_and_grad(lambda p: fn(p, model.cfg, batch, jax.random.key(8)),
                                                has_aux=True))(model.params)
    assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    assert float(met["l_tau"]) >= 0
    assert float(jnp.abs(g[N.NEODIFF_KEY]["pred_out"]["w"]).sum()) > 0  # L_tau reaches the predictor


def test_bad_inputs_raise(model):
    params, cfg = model.params, model.cfg
    b = _batch()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="t must lie"):
        N.neodiff_loss(params, cfg, {**b, "t": np.array([0.1, 1.5, 0.2, 0.3])}, key)
    with pytest.raises(ValueError, match="num_tau"):
        N.sample_taus(key, jnp.array([0.5]), 3, num_tau=1)
    with pytest.raises(ValueError, match="scheme"):
        N.make_neodiff_loss("gaussian")
    with pytest.raises(ValueError, match="unknown NeoDiff hyperparameters"):
        N.neodiff_loss(params, cfg, {**b, "hparams": {"lam": 1.0}}, key)
    with pytest.raises(ValueError, match="lam_scale"):
        N.neodiff_loss(params, cfg, {**b, "hparams": {"lam_scale": 0.0}}, key)
    with pytest.raises(ValueError, match="tgt ids"):
        N.neodiff_loss(params, cfg, b, key, num_targets=4)
    with pytest.raises(ValueError, match="same batch size"):
        N.neodiff_loss(params, cfg, {**b, "src": b["src"][:2]}, key)
    with pytest.raises(ValueError, match="neodiff_init"):
        N.neodiff_loss(dict(init_params(cfg, key)), cfg, b, key)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        N.neodiff_decoder(length=L, src_len=P, steps=0)
    with pytest.raises(ValueError, match="must fit the model's max_len"):
        N.neodiff_sample(model, N.neodiff_decoder(length=L, src_len=P, steps=20), b["src"], key)
    with pytest.raises(ValueError, match="tau_source"):
        N.neodiff_decoder(length=L, src_len=P, tau_source="oracle")


@pytest.mark.slow
def test_decode_commits_the_rounding_and_steps_do_not_recompile(model):
    from tokjax.decoding import driver

    src = _batch(3)["src"]
    outs = {}
    for steps in (2, 5):
        before = driver.TRACE_COUNTS["decode_loop"]
        strat = N.neodiff_decoder(length=L, src_len=P, num_tau=10, steps=steps, num_targets=8)
        res = N.neodiff_sample(model, strat, src, jax.random.key(9))
        outs[steps] = (res, driver.TRACE_COUNTS["decode_loop"] - before)
        assert res.tokens.shape == (3, L) and res.tokens.min() >= 0 and res.tokens.max() < 8
        assert res.stats["forward_calls"] == steps
    assert outs[5][1] == 0  # a new step count reuses the compiled loop
    # mask-predict with sampled tokens and clamping (the masking baseline's decoder)
    strat = N.neodiff_decoder(length=L, src_len=P, scheme="absorbing", num_tau=2, steps=3, tau_source="confidence",
                              num_targets=8, sample=True, clamp=True, hparams={"shift": 0.0})
    res = N.neodiff_sample(model, strat, src, jax.random.key(9))
    assert res.stats["forward_calls"] == 3 and res.tokens.max() < 8
