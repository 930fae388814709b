"""P35 position auctions: Dinkelbach MNL = brute force, exact cascade DP, VCG/Myerson truthfulness, bad inputs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.position_auctions import (
    brute_force_allocation, cascade_allocation, cascade_allocation_approx, cascade_click_probs, insertion_scores,
    max_weight_matching, mnl_allocation, mnl_click_probs, revenue_auction, separable_fit, threshold_payments,
    uniform_virtual_value, vcg_auction, welfare,
)
from tokjax.decoding import score_continuations
from tokjax.model import Model


def _instance(rng, *, cascade=False, signed=False):
    m, n = (int(x) for x in rng.integers(1, 5, 2))
    theta = rng.uniform(0, 1, (m, n)) if cascade else rng.exponential(1.0, (m, n))
    theta[rng.random((m, n)) < 0.1] = 0.0  # some pairs that cannot click
    w = rng.uniform(-1, 1, n) if signed else rng.uniform(0, 1, n)
    k = int(rng.integers(0, min(m, n) + 1)) if rng.random() < 0.5 else None
    return theta, w, k


def test_mnl_dinkelbach_equals_brute_force_on_500_instances():
    rng = np.random.default_rng(0)
    gaps = []
    for r in range(500):
        theta, w, k = _instance(rng, signed=r % 5 == 0)  # every 5th: virtual values, some negative
        a, v = mnl_allocation(theta, w, k)
        _, vb = brute_force_allocation(theta, w, k)
        gaps.append(abs(v - vb))
        assert v == pytest.approx(welfare(theta, w, a), abs=1e-12)
        assert a.sum(0).max(initial=0) <= 1 and a.sum(1).max(initial=0) <= 1
        assert a.sum() <= (min(theta.shape) if k is None else k)
    assert max(gaps) <= 1e-9


def test_mnl_substitution_leaves_a_positive_bid_out():
    theta = np.array([[1.0, 0.0], [0.0, 9.0]])
    bids = np.array([1.0, 0.1])
    a, v = mnl_allocation(theta, bids)
    np.testing.assert_array_equal(a, [[1, 0], [0, 0]])  # showing ad 1 too would steal clicks: (1 + .9) / 11 < .5
    assert v == pytest.approx(0.5)
    assert max_weight_matching(bids * theta).sum() == 2  # the plain assignment would show both


def test_click_probs_by_hand_and_batched_jit():
    theta = np.array([[0.5, 0.2], [0.4, 0.3]])
    alloc = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(mnl_click_probs(theta, alloc), [0.4 / 1.6, 0.2 / 1.6])
    # cascade, text order: position 0 (ad 1, p .2) then position 1 (ad 0, p .4)
    np.testing.assert_allclose(cascade_click_probs(theta, alloc), [0.8 * 0.4, 0.2])
    np.testing.assert_allclose(cascade_click_probs(theta, alloc, np.array([1, 0])), [0.4, 0.6 * 0.2])
    rng = np.random.default_rng(1)
    th = rng.uniform(0, 1, (5, 3, 4))
    al = np.stack([brute_force_allocation(t, rng.uniform(0, 1, 4))[0] for t in th])
    for fn in (mnl_click_probs, cascade_click_probs):
        got = jax.jit(fn)(jnp.asarray(th, jnp.float32), jnp.asarray(al, jnp.float32))
        want = np.stack([fn(t, a) for t, a in zip(th, al)])
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_max_weight_matching_with_cardinality_equals_enumeration():
    rng = np.random.default_rng(2)
    for _ in range(100):
        m, n = (int(x) for x in rng.integers(1, 5, 2))
        w = rng.normal(size=(m, n))
        k = int(rng.integers(0, min(m, n) + 1))
        best = 0.0
        for size in range(1, k + 1):
            for ads in itertools.combinations(range(n), size):
                for pos in itertools.permutations(range(m), size):
                    best = max(best, w[list(pos), list(ads)].sum())
        x = max_weight_matching(w, k)
        assert x.sum() <= k and (w * x).sum() == pytest.approx(best, abs=1e-12)


def test_cascade_dp_equals_brute_force_and_approx_bound():
    rng = np.random.default_rng(3)
    for r in range(150):
        theta, w, k = _instance(rng, cascade=True, signed=r % 4 == 0)
        order = rng.permutation(theta.shape[0])
        a, v = cascade_allocation(theta, w, k, order=order)
        _, vb = brute_force_allocation(theta, w, k, model="cascade", order=order)
        assert abs(v - vb) <= 1e-12
        assert v == pytest.approx(welfare(theta, w, a, model="cascade", order=order), abs=1e-12)
        _, va = cascade_allocation_approx(theta, w, k, order=order)
        kk = min(theta.shape) if k is None else k
        assert va <= v + 1e-12 and (kk == 0 or va >= v / kk - 1e-12)


def _grid_truthful(run, theta, values, grid):
    """Returns the largest utility gain of any single-bidder misreport on the grid (<= 0 means truthful)."""
    truth = run(theta, values)
    worst = -np.inf
    for j in range(len(values)):
        u0 = values[j] * truth.clicks[j] - truth.payments[j]
        for b in grid * max(values[j], 1e-3):
            bids = values.copy()
            bids[j] = b
            out = run(theta, bids)
            worst = max(worst, values[j] * out.clicks[j] - out.payments[j] - u0)
    return worst


@pytest.mark.parametrize("model", ["mnl", "cascade"])
def test_vcg_truthful_on_grid_and_individually_rational(model):
    rng = np.random.default_rng(4)
    grid = np.linspace(0.0, 2.5, 26)
    for _ in range(6):
        theta, v, k = _instance(rng, cascade=model == "cascade")
        run = lambda t, b: vcg_auction(t, b, k, model=model)  # noqa: E731
        assert _grid_truthful(run, theta, v, grid) <= 1e-12
        res = run(theta, v)
        assert np.all(res.payments >= 0) and np.all(res.utility(v) >= -1e-12)


def test_vcg_payments_by_hand_and_equal_threshold_payments():
    res = vcg_auction(np.array([[1.0, 3.0]]), np.array([1.0, 0.5]))
    np.testing.assert_array_equal(res.alloc, [[1, 0]])
    np.testing.assert_allclose(res.payments, [0.375, 0.0])  # = ad 1's welfare alone: 0.5 * 3 / 4
    np.testing.assert_allclose(res.prices, [0.75, 0.0])
    rng = np.random.default_rng(5)
    for _ in range(5):
        theta, b, k = _instance(rng)
        res = vcg_auction(theta, b, k)
        rule = lambda bb: mnl_click_probs(theta, mnl_allocation(theta, bb, k)[0])  # noqa: E731
        np.testing.assert_allclose(threshold_payments(rule, b), res.payments, atol=1e-7)


def test_revenue_auction_reserve_and_truthful():
    phi = uniform_virtual_value(1.0)  # reserve at value 0.5
    res = revenue_auction(np.array([[1.0, 1.0]]), np.array([0.4, 0.45]), phi)
    assert res.alloc.sum() == 0 and res.value == 0.0  # both virtual values negative
    rng = np.random.default_rng(6)
    for _ in range(2):
        theta, v, k = _instance(rng)
        theta = theta[:3, :3]
        v = v[:3]
        run = lambda t, b: revenue_auction(t, b, phi, model="mnl", tol=1e-7)  # noqa: E731
        assert _grid_truthful(run, theta, v, np.linspace(0.0, 2.0, 9)) <= 1e-6
        r = run(theta, v)
        assert np.all(r.utility(v) >= -1e-6) and r.value == pytest.approx(mnl_allocation(theta, phi(v))[1])


def test_separable_fit_is_exact_on_rank_one():
    a, b = np.array([0.5, 1.0, 2.0]), np.array([1.0, 0.1, 0.3, 0.7])
    np.testing.assert_allclose(separable_fit(np.outer(a, b)), np.outer(a, b), rtol=1e-12)


CFG = tokjax.ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, max_len=32)
MODEL = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)


def test_insertion_scores_equal_score_continuations():
    sents, creatives, prefix = [[3, 7, 1], [9, 2], [4]], [[5, 6], [11], [2, 2, 8]], [1]
    raw = insertion_scores(MODEL, sents, creatives, prefix=prefix, normalize="none")
    ctx = list(prefix)
    for i, s in enumerate(sents):
        ctx += s
        want = [np.exp(np.mean(p)) for p in score_continuations(MODEL, ctx, creatives).logprobs]
        np.testing.assert_allclose(raw[i], want, rtol=1e-6)
    row = insertion_scores(MODEL, sents, creatives, prefix=prefix)
    np.testing.assert_allclose(row.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(row, raw / raw.sum(1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        insertion_scores(MODEL, sents, creatives, normalize="col")


def test_bad_inputs():
    th, b = np.ones((2, 3)), np.ones(3)
    cases = [
        (lambda: mnl_allocation(-th, b), "theta must be >= 0"),
        (lambda: vcg_auction(th, -b), "bids must be >= 0"),
        (lambda: vcg_auction(th, np.ones(2)), "one entry per ad"),
        (lambda: vcg_auction(np.ones(3), b), "2-D"),
        (lambda: mnl_allocation(np.full((2, 3), np.nan), b), "NaN"),
        (lambda: vcg_auction(th, np.array([1.0, np.nan, 1.0])), "NaN"),
        (lambda: cascade_allocation(2 * th, b), r"\[0, 1\]"),
        (lambda: cascade_allocation(th / 2, b, order=[0, 0]), "permutation"),
        (lambda: mnl_allocation(th, b, max_ads=-1), "max_ads"),
        (lambda: vcg_auction(th, b, model="probit"), "model must be"),
        (lambda: uniform_virtual_value(0.0), "high"),
        (lambda: brute_force_allocation(np.ones((7, 7)), np.ones(7)), "at most 36"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()
