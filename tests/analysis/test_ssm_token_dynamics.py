"""P68 token dynamics: the 1-D system decays as 1/sqrt(t) for mu < 0 and blows up for mu > 0 (against a brute-force
numpy oracle of P_ij), the regime of constrained / free Mamba layers, and token norms by depth through the taps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.ssm_token_dynamics import regime, simulate_1d, token_norms
from tokjax.model import ModelConfig, Taps, forward, layer_weights, ssm_projections

X0 = np.array([0.5, -0.8, 0.3, 1.0, -0.4, 0.7], np.float32)


def _oracle_rhs(x, mu, a, s, b):
    """dx_i/dt = sum_{j<=i} P_ij x_j with P_ij written out entry by entry (float64)."""
    delta = np.log1p(np.exp(s * x + b))
    n = len(x)
    out = np.zeros(n)
    for i in range(n):
        for j in range(i + 1):
            P = mu * x[i] * x[j] * delta[j] * np.exp(-a * sum(delta[k] for k in range(j + 1, i + 1)))
            out[i] += P * x[j]
    return out


def test_euler_steps_match_the_entrywise_definition():
    mu, a, s, b, dt = -0.7, 1.3, 0.8, 0.2, 0.05
    sim = simulate_1d(X0, mu, a=a, delta_scale=s, delta_bias=b, dt=dt, steps=6, record=6)
    x = X0.astype(np.float64)
    for k in range(6):
        x = x + dt * _oracle_rhs(x, mu, a, s, b)
        np.testing.assert_allclose(sim.x[k + 1], x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sim.times, dt * np.arange(7), rtol=1e-6)


def test_negative_mu_decays_as_one_over_sqrt_t_and_positive_mu_blows_up():
    # one compiled program for both signs: mu is a runtime array over the batch
    sim = simulate_1d(np.stack([X0, X0]), np.array([-1.0, 1.0]), dt=1e-3, steps=40_000, record=400)
    t = np.asarray(sim.times)
    peak = np.abs(np.asarray(sim.x)).max(-1)  # [R + 1, 2]
    assert np.all(np.isfinite(np.asarray(sim.x)))
    k10, k20, k40 = (int(np.searchsorted(t, v)) for v in (10.0, 20.0, 40.0))
    slope = np.log(peak[k40, 0] / peak[k10, 0]) / np.log(t[k40] / t[k10])
    assert -0.6 < slope < -0.4, slope  # 1/sqrt(t): slope -1/2 on log-log axes
    assert np.all(np.diff(peak[k10:, 0]) <= 0) and peak[k40, 0] < 0.2
    # t * x^2 settles to a constant (x ~ c / sqrt(t)); 1/t decay would halve it, exp decay would collapse it
    assert 0.85 < (t[k40] * peak[k40, 0] ** 2) / (t[k20] * peak[k20, 0] ** 2) < 1.15
    assert np.isinf(sim.blowup_time[0])
    assert 0 < float(sim.blowup_time[1]) < 1.0  # finite-time blow-up, recorded without NaN
    # an early positive-mu trajectory grows in every token's magnitude
    early = np.abs(np.asarray(sim.x[:3, 1]))
    assert np.all(early[-1] >= early[0])


def test_simulate_1d_rejects_bad_input():
    with pytest.raises(ValueError, match="a must be > 0"):
        simulate_1d(X0, -1.0, a=0.0, steps=2, record=1)
    with pytest.raises(ValueError, match="record"):
        simulate_1d(X0, -1.0, steps=2, record=3)
    with pytest.raises(ValueError, match="n_tokens"):
        simulate_1d(1.0, -1.0, steps=2, record=1)
    with pytest.raises(ValueError, match="mu must be"):
        simulate_1d(np.stack([X0, X0]), np.ones(3), steps=2, record=1)
    with pytest.raises(ValueError, match="dt must be"):
        simulate_1d(X0, -1.0, dt=0.0, steps=2, record=1)


def _mamba(sign, seed=0, scale=0.3):
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=3, n_heads=1, max_len=16, mixer="mamba", ssm_state=4,
                      ssm_sign=sign, init_scale=scale)
    return tokjax.Model.init(cfg, jax.random.key(seed))


def test_regime_of_constrained_and_free_layers():
    for sign in ("pos", "neg"):
        m = _mamba(sign)
        r = regime(m.params, m.cfg)
        assert r.labels == (sign,) * 3 and r.eigenvalues.shape == (3, 4)
        assert np.all((r.min_real > 0) if sign == "pos" else (r.max_real < 0))
        assert np.allclose(r.eigenvalues.imag, 0, atol=1e-9)  # +-D^(1/2) U U^T D^(1/2): a symmetric spectrum
    m = _mamba(None, seed=1, scale=1.0)
    r = regime(m.params, m.cfg)
    assert "mixed" in r.labels  # free Gaussian projections: both signs appear
    # the N eigenvalues are the nonzero spectrum of the E x E matrix S_C^T S_B
    _, s_b, s_c = (np.asarray(a, np.float64) for a in ssm_projections(layer_weights(m.params, 0), m.cfg))
    big = np.linalg.eigvals(s_c.T @ s_b)
    big = big[np.argsort(-np.abs(big))][:4]
    np.testing.assert_allclose(np.sort_complex(big), np.sort_complex(r.eigenvalues[0]), rtol=1e-6, atol=1e-9)
    attn = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="mamba"):
        regime(tokjax.Model.init(attn, jax.random.key(0)).params, attn)


def test_token_norms_by_depth_through_the_taps():
    m = _mamba("pos")
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 32, (2, 7)), jnp.int32)
    n = token_norms(m.params, m.cfg, toks)
    assert n.shape == (m.cfg.n_layers + 1, 2, 7) and n.dtype == jnp.float32
    np.testing.assert_allclose(n[0], np.linalg.norm(np.asarray(m.params["embed"])[np.asarray(toks)], axis=-1),
                               rtol=1e-5)
    ref = forward(m.params, m.cfg, toks, taps=Taps(layers="all")).taps["resid_post"]
    np.testing.assert_allclose(n[1:], np.linalg.norm(np.asarray(ref), axis=-1), rtol=1e-5)
    attn = ModelConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, max_len=16)
    assert token_norms(tokjax.Model.init(attn, jax.random.key(0)).params, attn, toks).shape == (3, 2, 7)
    with pytest.raises(ValueError, match="token ids"):
        token_norms(m.params, m.cfg, toks + 32)
    with pytest.raises(ValueError, match="batch, seq"):
        token_norms(m.params, m.cfg, toks[0])
    with pytest.raises(ValueError, match="seq length 0"):
        token_norms(m.params, m.cfg, toks[:, :0])
