"""P48 TGDPO: token weights 1 +/- alpha*beta*r_hat inside the DPO margin."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tokjax
from tokjax.losses.dpo import dpo_loss, make_dpo_loss
from tokjax.losses.tgdpo import make_tgdpo_loss, tgdpo_weights


def _arrays(seed, B=3, T=6):
    r = np.random.default_rng(seed)
    f = lambda: -np.abs(r.normal(size=(2 * B, T))).astype(np.float32)  # noqa: E731
    m = r.uniform(size=(2 * B, T)) < 0.8
    m[:, 0] = True
    return f(), f(), f(), m


def official_form(pl, rl, rm, m, alpha, beta):
    """The official trainer's sigmoid loss, written out per pair (float64)."""
    B = pl.shape[0] // 2
    out = []
    for b in range(B):
        c, j = b, B + b
        zc = sum(beta * (1 + alpha * beta * (rm[c, t] - rl[c, t])) * (pl[c, t] - rl[c, t]) for t in range(pl.shape[1])
                 if m[c, t])
        zr = sum(beta * (1 - alpha * beta * (rm[j, t] - rl[j, t])) * (pl[j, t] - rl[j, t]) for t in range(pl.shape[1])
                 if m[j, t])
        out.append(np.log1p(np.exp(-(zc - zr))))
    return float(np.mean(out))


def test_weights_reproduce_the_official_loss_and_alpha_zero_is_dpo():
    pl, rl, rm, m = _arrays(0)
    B = 3
    for alpha, beta in ((0.5, 0.1), (3.0, 0.7)):  # the second gives some negative weights, as the official code allows
        w = np.asarray(tgdpo_weights(rm, rl, m, alpha=alpha, beta=beta))
        if np.all(w >= 0):
            got = dpo_loss(pl[:B], rl[:B], m[:B], pl[B:], rl[B:], m[B:], beta, chosen_weights=w[:B],
                           rejected_weights=w[B:])
            np.testing.assert_allclose(float(got), official_form(pl, rl, rm, m, alpha, beta), rtol=1e-5)
        else:  # user-supplied negative weights are refused; the TGDPO loss itself computes its own (below)
            with pytest.raises(ValueError, match=">= 0"):
                dpo_loss(pl[:B], rl[:B], m[:B], pl[B:], rl[B:], m[B:], beta, chosen_weights=w[:B],
                         rejected_weights=w[B:])
        np.testing.assert_allclose(np.asarray(w)[:B][m[:B]], (1 + alpha * beta * (rm - rl))[:B][m[:B]], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(w)[B:][m[B:]], (1 - alpha * beta * (rm - rl))[B:][m[B:]], rtol=1e-5)
    w0 = tgdpo_weights(rm, rl, m, alpha=0.0, beta=0.1)
    assert np.all(np.asarray(w0) == 1.0)
    plain = dpo_loss(pl[:B], rl[:B], m[:B], pl[B:], rl[B:], m[B:], 0.1)
    assert float(dpo_loss(pl[:B], rl[:B], m[:B], pl[B:], rl[B:], m[B:], 0.1, chosen_weights=w0[:B],
                          rejected_weights=w0[B:])) == float(plain)


@pytest.mark.slow
def test_loss_fn_alpha_zero_equals_dpo_and_reports_spread():
    cfg = tokjax.ModelConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)
    pol, ref, rm = (tokjax.Model.init(cfg, jax.random.key(i)).params for i in range(3))
    toks = np.random.default_rng(0).integers(0, 13, (4, 8)).astype(np.int32)
    batch = {"tokens": toks, "prompt_lengths": np.full((4,), 3, np.int32)}
    dpo = make_dpo_loss(ref=(ref, cfg), method="naive")(pol, cfg, batch)[0]
    tg0 = make_tgdpo_loss(alpha=0.0, ref=(ref, cfg), reward_model=(rm, cfg), method="naive")(pol, cfg, batch)
    assert float(tg0[0]) == float(dpo) and float(tg0[1]["weight_spread"]) == 0.0


@pytest.mark.slow
def test_loss_fn_weights_spread_and_errors():  # ~6 s
    cfg = tokjax.ModelConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)
    pol, ref, rm = (tokjax.Model.init(cfg, jax.random.key(i)).params for i in range(3))
    toks = np.random.default_rng(0).integers(0, 13, (4, 8)).astype(np.int32)
    batch = {"tokens": toks, "prompt_lengths": np.full((4,), 3, np.int32)}
    dpo = make_dpo_loss(ref=(ref, cfg), method="naive")(pol, cfg, batch)[0]
    tg = make_tgdpo_loss(alpha=5.0, ref=(ref, cfg), reward_model=(rm, cfg), method="naive")(pol, cfg, batch)
    assert float(tg[1]["weight_spread"]) > 0 and float(tg[0]) != float(dpo)
    with pytest.raises(ValueError, match="rm_logp"):
        make_tgdpo_loss(ref=(ref, cfg), method="naive")(pol, cfg, batch)
    other = tokjax.ModelConfig(vocab_size=11, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)
    with pytest.raises(ValueError, match="vocabulary"):
        make_tgdpo_loss(ref=(ref, cfg), reward_model=(tokjax.Model.init(other, jax.random.key(0)).params, other))


def test_bad_inputs():
    pl, rl, rm, m = _arrays(1)
    with pytest.raises(ValueError, match="alpha"):
        tgdpo_weights(rm, rl, m, alpha=-0.1, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        tgdpo_weights(rm, rl, m, alpha=0.5, beta=0.0)
    with pytest.raises(ValueError, match="2B rows"):
        tgdpo_weights(rm[:5], rl[:5], m[:5], alpha=0.5, beta=0.1)
    with pytest.raises(ValueError, match="shape"):
        tgdpo_weights(rm, rl[:, :-1], m, alpha=0.5, beta=0.1)
    with pytest.raises(ValueError, match="alpha"):
        make_tgdpo_loss(alpha=-1.0)
