"""Tests for Markov sources and their exact entropy rate."""

import math

import numpy as np
import pytest

from tokjax.data import MarkovSource, empirical_conditional_entropy, markov_source


def h2(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("order,a", [(0, 5), (1, 3), (2, 4), (3, 2)])
def test_uniform_source_entropy_is_log2_alphabet(order, a):
    src = MarkovSource(np.full((a**order, a), 1.0 / a), order)
    assert src.entropy_rate() == pytest.approx(math.log2(a), abs=1e-12)
    np.testing.assert_allclose(src.stationary(), 1.0 / a**order, atol=1e-12)


def test_binary_symmetric_flip_chain():
    p = 0.1
    src = MarkovSource(np.array([[1 - p, p], [p, 1 - p]]), order=1)
    assert src.entropy_rate() == pytest.approx(h2(p), abs=1e-12)


def test_asymmetric_two_state_chain_closed_form():
    # P(a->b)=alpha, P(b->a)=beta: pi = (beta, alpha)/(alpha+beta).
    alpha, beta = 0.3, 0.05
    src = MarkovSource(np.array([[1 - alpha, alpha], [beta, 1 - beta]]), order=1)
    pi = np.array([beta, alpha]) / (alpha + beta)
    np.testing.assert_allclose(src.stationary(), pi, atol=1e-12)
    assert src.entropy_rate() == pytest.approx(pi[0] * h2(alpha) + pi[1] * h2(beta), abs=1e-12)


def test_periodic_chain_stationary():
    # Deterministic cycle a->b->c->a: periodic, entropy 0, stationary uniform.
    src = MarkovSource(np.roll(np.eye(3), 1, axis=1), order=1)
    np.testing.assert_allclose(src.stationary(), 1 / 3, atol=1e-12)
    assert src.entropy_rate() == 0.0
    assert src.sample(7, 0) in {"abcabca", "bcabcab", "cabcabc"}


def test_order0_entropy():
    p = np.array([[0.5, 0.25, 0.25]])
    assert MarkovSource(p, 0).entropy_rate() == pytest.approx(1.5)


def test_stationary_is_fixed_point():
    src = markov_source(2, 3, seed=4, concentration=0.5)
    pi = src.stationary()
    assert pi.shape == (9,) and pi.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(src._step(pi), pi, atol=1e-12)


@pytest.mark.parametrize("order,a,conc", [(1, 4, 1.0), (2, 3, 0.3)])
def test_entropy_rate_matches_long_sample(order, a, conc):
    src = markov_source(order, a, seed=11, concentration=conc)
    text = src.sample(300_000, np.random.default_rng(0))
    assert len(text) == 300_000 and set(text) <= set(src.alphabet)
    h = src.entropy_rate()
    assert 0 < h < math.log2(a)
    assert empirical_conditional_entropy(text, order, a) == pytest.approx(h, abs=0.02)
    assert src.nll_bits(text) == pytest.approx(h, abs=0.02)


def test_concentration_controls_entropy():
    lo = markov_source(1, 8, seed=0, concentration=0.05).entropy_rate()
    hi = markov_source(1, 8, seed=0, concentration=100.0).entropy_rate()
    assert lo < 1.5 < 2.9 < hi <= 3.0


def test_seeded_and_sample_reproducible():
    a, b = markov_source(2, 5, seed=3), markov_source(2, 5, seed=3)
    np.testing.assert_array_equal(a.transitions, b.transitions)
    assert a.sample(500, 1) == a.sample(500, np.random.default_rng(1))
    assert a.sample(500, 1) != a.sample(500, 2)
    assert a.sample(1, 0) in set(a.alphabet) and a.sample(0, 0) == ""
    assert a.transitions.shape == (25, 5)


def test_bad_args():
    with pytest.raises(ValueError):
        markov_source(-1, 3)
    with pytest.raises(ValueError):
        markov_source(1, 27)
    with pytest.raises(ValueError):
        markov_source(1, 0)
    with pytest.raises(ValueError):
        markov_source(1, 3, concentration=0)
    with pytest.raises(ValueError):
        MarkovSource(np.full((3, 3), 0.5), 1)
    with pytest.raises(ValueError):
        MarkovSource(np.full((4, 3), 1 / 3), 1)
    src = markov_source(1, 3)
    with pytest.raises(ValueError):
        src.nll_bits("xyz")
