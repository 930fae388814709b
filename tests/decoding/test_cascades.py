"""Tests for P42 cascade deferral scores (tokjax.decoding.cascades); the MLP's fitting is in tests/train/recipes."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.decoding.cascades import (
    DEFAULT_GRID, chow_avg, chow_quantile, chow_sum, deferral_batch, deferral_curve, deferral_mlp_loss,
    init_deferral_mlp, masked_quantile, masked_quantiles, pooled_hidden, posthoc_features, posthoc_score, token_scores,
)


def _random_scores(seed, B=5, T=9):
    r = np.random.default_rng(seed)
    logp = -r.exponential(size=(B, T)).astype(np.float32)
    mask = r.uniform(size=(B, T)) < 0.6
    mask[np.arange(B), r.integers(0, T, size=B)] = True
    return logp, mask


@pytest.fixture(scope="module")
def tiny():
    cfg = tokjax.ModelConfig(vocab_size=17, d_model=32, n_layers=2, n_heads=2, max_len=16)
    return tokjax.Model.init(cfg, jax.random.key(0))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_masked_quantile_matches_numpy(alpha):
    logp, mask = _random_scores(1)
    got = np.asarray(masked_quantile(logp, mask, alpha))
    want = [np.quantile(logp[b][mask[b]], alpha) for b in range(len(logp))]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_masked_quantiles_grid_and_per_row_alpha_match_numpy():
    logp, mask = _random_scores(2)
    grid = np.asarray(DEFAULT_GRID)
    got = np.asarray(masked_quantiles(logp, mask, grid))
    want = np.stack([np.quantile(logp[b][mask[b]], grid) for b in range(len(logp))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    alpha = np.linspace(0, 1, len(logp)).astype(np.float32)
    per_row = np.asarray(jax.jit(chow_quantile)(logp, mask, alpha))
    np.testing.assert_allclose(per_row, [np.quantile(logp[b][mask[b]], alpha[b]) for b in range(len(logp))],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(chow_quantile(logp, mask, 0.0)), [logp[b][mask[b]].min() for b in range(5)])


def test_token_scores_and_chow_sum_match_naive_loop(tiny):
    cfg, params = tiny.cfg, tiny.params
    r = np.random.default_rng(3)
    tokens = r.integers(1, cfg.vocab_size, size=(4, 12)).astype(np.int32)
    prompt_lengths = np.array([1, 3, 5, 7])
    lengths = np.array([12, 9, 6, 7])
    ts = token_scores(params, cfg, tokens, prompt_lengths, lengths)
    sums = np.asarray(chow_sum(ts.logp, ts.mask))
    avgs = np.asarray(chow_avg(ts.logp, ts.mask))
    # causal model: the full-row forward gives each prefix's next-token distribution
    lp_all = np.asarray(jax.nn.log_softmax(tokjax.forward(params, cfg, tokens).logits, -1))
    for b in range(4):
        naive = [lp_all[b, t - 1, tokens[b, t]] for t in range(prompt_lengths[b], lengths[b])]
        assert int(ts.mask[b].sum()) == len(naive)
        np.testing.assert_allclose(sums[b], np.sum(naive), rtol=1e-4, atol=1e-5)
        if naive:
            np.testing.assert_allclose(avgs[b], np.mean(naive), rtol=1e-4, atol=1e-5)
            mins = np.asarray(chow_quantile(ts.logp[:3], ts.mask[:3], 0.0))
            np.testing.assert_allclose(mins[b], np.min(naive), rtol=1e-4, atol=1e-5)
    assert sums[3] == 0.0 and avgs[3] == 0.0  # empty continuation
    assert ts.pooled.shape == (4, cfg.d_model)
    assert pooled_hidden(params, cfg, tokens, lengths, layer=1).shape == (4, cfg.d_model)


def test_posthoc_features_layout():
    logp, mask = _random_scores(4)
    pooled = np.ones((5, 3), np.float32)
    f = np.asarray(posthoc_features(logp, mask, DEFAULT_GRID, pooled=pooled))
    Q = len(DEFAULT_GRID)
    assert f.shape == (5, Q + 1 + 3)
    np.testing.assert_allclose(f[:, 0], [logp[b][mask[b]].min() for b in range(5)])
    np.testing.assert_allclose(f[:, Q - 1], [logp[b][mask[b]].max() for b in range(5)])
    np.testing.assert_array_equal(f[:, Q], mask.sum(1))
    assert (np.diff(f[:, :Q], axis=1) >= -1e-6).all()  # quantiles are monotone in alpha


def test_deferral_curve_endpoints_and_oracle():
    r = np.random.default_rng(5)
    qs, ql = r.uniform(size=50), r.uniform(size=50)
    s = r.normal(size=50)
    c = deferral_curve(s, qs, ql)
    np.testing.assert_allclose(c.quality[0], qs.mean(), rtol=1e-5)
    np.testing.assert_allclose(c.quality[-1], ql.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(c.rates)[[0, -1]], [0.0, 1.0])
    oracle = deferral_curve(-(ql - qs), qs, ql)
    assert float(oracle.auc) >= float(c.auc) - 1e-6
    # all scores tied = random deferral: a straight line between the endpoints
    flat = deferral_curve(np.zeros(50), qs, ql)
    np.testing.assert_allclose(flat.quality, np.linspace(qs.mean(), ql.mean(), 51), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat.auc, (qs.mean() + ql.mean()) / 2, rtol=1e-5)


def test_deferral_curve_matches_naive_loop():
    r = np.random.default_rng(6)
    s = r.permutation(20).astype(np.float32)  # no ties
    qs, ql = (r.uniform(size=20) < 0.5).astype(np.float32), (r.uniform(size=20) < 0.7).astype(np.float32)
    order = np.argsort(s)
    want = []
    for k in range(21):
        deferred = set(order[:k].tolist())
        want.append(np.mean([ql[i] if i in deferred else qs[i] for i in range(20)]))
    c = jax.jit(deferral_curve)(s, qs, ql)
    np.testing.assert_allclose(c.quality, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.auc, np.trapezoid(want, np.linspace(0, 1, 21)), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 2, 7, 30]), st.integers(0, 2 ** 31 - 1))
def test_deferral_curve_properties(n, seed):
    r = np.random.default_rng(seed)
    qs, ql = r.uniform(size=n), r.uniform(size=n)
    s = np.round(r.normal(size=n), 1)  # ties happen
    c = deferral_curve(s, qs, ql)
    lo, hi = min(qs.mean(), ql.mean()), max(qs.mean(), ql.mean())
    assert float(c.auc) >= min(c.quality) - 1e-5 and float(c.auc) <= max(c.quality) + 1e-5
    assert np.all(np.asarray(c.quality) >= np.minimum(qs, ql).mean() - 1e-5)
    assert np.all(np.asarray(c.quality) <= np.maximum(qs, ql).mean() + 1e-5)
    assert lo - 1e-5 <= float(c.quality[0]) <= hi + 1e-5
    # invariant to a monotone transform of the scores
    c2 = deferral_curve(3 * s + 1, qs, ql)
    np.testing.assert_allclose(c.quality, c2.quality, rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([1, 5]), st.sampled_from([1, 9]), st.floats(0, 1), st.integers(0, 2 ** 31 - 1))
def test_quantile_properties(B, T, alpha, seed):
    logp, mask = _random_scores(seed, B, T)
    q = np.asarray(masked_quantile(logp, mask, alpha))
    mins = np.array([logp[b][mask[b]].min() for b in range(B)])
    maxs = np.array([logp[b][mask[b]].max() for b in range(B)])
    assert np.all(q >= mins - 1e-6) and np.all(q <= maxs + 1e-6)
    np.testing.assert_allclose(q, [np.quantile(logp[b][mask[b]], alpha) for b in range(B)], rtol=1e-5, atol=1e-5)
    # padding content must not matter
    noisy = np.where(mask, logp, 1e3).astype(np.float32)
    np.testing.assert_allclose(np.asarray(masked_quantile(noisy, mask, alpha)), q, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(chow_sum(noisy, mask)), np.asarray(chow_sum(logp, mask)), rtol=1e-6)


def test_token_scores_match_those_recorded_before_the_shared_primitives(tiny):
    # recorded with the pre-issue-12 code (full logits + log-softmax, a private mean-pool)
    rec = np.load(Path(__file__).parent / "fixtures" / "methods_before_issue12.npz")
    ts = token_scores(tiny.params, tiny.cfg, rec["casc_tokens"], rec["casc_prompt_lengths"], rec["casc_lengths"])
    np.testing.assert_array_equal(np.asarray(ts.mask), rec["casc_mask"])
    np.testing.assert_allclose(np.asarray(ts.logp), rec["casc_logp"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ts.pooled), rec["casc_pooled"], rtol=1e-5, atol=1e-6)
    for layer, name in ((1, "casc_pooled_l1"), (None, "casc_pooled_all")):
        got = pooled_hidden(tiny.params, tiny.cfg, rec["casc_tokens"], rec["casc_lengths"], layer=layer)
        np.testing.assert_allclose(np.asarray(got), rec[name], rtol=1e-5, atol=1e-6)


def test_deferral_mlp_loss_is_binary_cross_entropy_of_the_standardised_rule():
    r = np.random.default_rng(7)
    x = r.normal(size=(20, 3)).astype(np.float32) * 5 + 2
    y = (r.uniform(size=20) < 0.5).astype(np.float32)
    batch = deferral_batch(x, y)
    np.testing.assert_allclose(batch["mean"], x.mean(0), rtol=1e-5)
    mlp = init_deferral_mlp(jax.random.key(0), 3)
    params = {"w1": mlp.w1, "b1": mlp.b1, "w2": mlp.w2, "b2": mlp.b2}
    loss, m = jax.jit(deferral_mlp_loss)(params, None, batch)
    g = np.asarray(-posthoc_score(mlp._replace(mean=batch["mean"], std=batch["std"]), x))  # logits of P(large wins)
    bce = np.mean(np.logaddexp(0, g) - y * g)
    np.testing.assert_allclose(float(loss), bce, rtol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), np.mean((g > 0) == (y > 0.5)))


def test_bad_inputs(tiny):
    logp, mask = _random_scores(8)
    with pytest.raises(ValueError, match="alpha"):
        masked_quantile(logp, mask, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        chow_quantile(logp, mask, 1.5)
    empty = mask.copy()
    empty[0] = False
    with pytest.raises(ValueError, match="no valid token"):
        chow_quantile(logp, empty, 0.0)
    with pytest.raises(ValueError, match="boolean"):
        chow_sum(logp, mask.astype(np.float32))
    with pytest.raises(ValueError, match="same|both"):
        chow_avg(logp, mask[:, :-1])
    with pytest.raises(ValueError, match="finite"):
        chow_sum(np.where(mask, np.nan, logp), mask)
    with pytest.raises(ValueError, match="1-D"):
        deferral_curve(np.zeros(3), np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        deferral_curve(np.array([0.0, np.inf]), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="grid"):
        posthoc_features(logp, mask, grid=[])
    tokens = np.ones((2, 6), np.int32)
    with pytest.raises(ValueError, match="prompt_lengths <= lengths"):
        token_scores(tiny.params, tiny.cfg, tokens, np.array([3, 4]), np.array([2, 6]))
    with pytest.raises(ValueError, match="shape"):
        token_scores(tiny.params, tiny.cfg, tokens, np.array([1]), np.array([2, 6]))
    with pytest.raises(ValueError, match="targets"):
        deferral_batch(np.zeros((3, 2)), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        deferral_batch(np.full((3, 2), np.nan), np.zeros(3))
    with pytest.raises(ValueError, match=r"features \[N, F\]"):
        deferral_batch(np.zeros((3,)), np.zeros(3))
