"""Tests for P62 Entropy Adaptive Decoding (tokjax.decoding.entropy_adaptive)."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding.entropy_adaptive import entropy_adaptive_generate, entropy_bits, relative_cost, rolling_mean
from tokjax.decoding import TRACE_COUNTS
from tokjax.model import forward

V = 32
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
NEW = 12  # one max_new_tokens everywhere: fewer compilations


@pytest.fixture(scope="module")
def pair():
    cs = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=48)
    cl = tokjax.ModelConfig(vocab_size=V, d_model=48, n_layers=2, n_heads=4, max_len=48)
    # weights x3 so entropies spread out and switching actually happens; one jitted call per model
    def init(cfg, seed):
        params = jax.jit(lambda k: jax.tree.map(lambda x: x * 3.0, tokjax.Model.init(cfg, k).params))(jax.random.PRNGKey(seed))
        return tokjax.Model(params=params, cfg=cfg)

    small, large = init(cs, 0), init(cl, 1)
    return small, large


@pytest.mark.parametrize("tau,which", [(np.inf, 0), (-np.inf, 1)])
def test_extreme_thresholds_equal_single_model_greedy(pair, tau, which):
    ref = tokjax.generate(pair[which], PROMPTS, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    out = entropy_adaptive_generate(*pair, PROMPTS, tau=tau, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_allclose(out.large_fraction, float(which))


def test_infinite_tau_equals_small_model_sampling(pair):
    key = jax.random.key(3)
    ref = tokjax.generate(pair[0], PROMPTS, key=key, max_new_tokens=NEW, logits=L.temperature(0.8))
    out = entropy_adaptive_generate(*pair, PROMPTS, tau=np.inf, key=key, max_new_tokens=NEW, logits=L.temperature(0.8))
    np.testing.assert_array_equal(out.tokens, ref.tokens)


def _mid_tau(pair, window):
    probe = entropy_adaptive_generate(*pair, PROMPTS, tau=np.inf, max_new_tokens=NEW, logits=L.greedy())
    return float(np.median(probe.entropy))


@pytest.mark.parametrize("window", [1, 3])
def test_switching_follows_numpy_rolling_mean(pair, window):
    tau = _mid_tau(pair, window)
    out = entropy_adaptive_generate(*pair, PROMPTS, tau=tau, window=window, max_new_tokens=NEW, logits=L.greedy())
    for b in range(len(PROMPTS)):
        n = out.lengths[b] - out.prompt_lengths[b]
        h, used = out.entropy[b, :n], out.used_large[b, :n]
        for t in range(1, n):
            hbar = h[max(0, t - window):t].astype(np.float64).mean()
            if abs(hbar - tau) < 1e-5:
                continue  # float32 summation order could decide a tie either way
            assert used[t] == (hbar > tau), (b, t, hbar, tau)
        assert out.large_fraction[b] == pytest.approx(used.mean())
    assert 0 < out.large_fraction.mean() < 1


def test_tokens_equal_naive_uncached_reference(pair):
    small, large = pair
    window, new = 3, NEW
    width = max(map(len, PROMPTS)) + new
    # padded to one width so each model compiles once; causal attention ignores the padding
    run_s = jax.jit(lambda x: forward(small.params, small.cfg, x).logits[0])
    run_l = jax.jit(lambda x: forward(large.params, large.cfg, x).logits[0])
    tau = _mid_tau(pair, window)
    out = entropy_adaptive_generate(small, large, PROMPTS, tau=tau, window=window, max_new_tokens=new, logits=L.greedy())
    for b, prompt in enumerate(PROMPTS):
        seq, hist = list(prompt), []
        for t in range(new):
            x = np.zeros((1, width), np.int32)
            x[0, : len(seq)] = seq
            ls = np.asarray(run_s(x)[len(seq) - 1], np.float64)
            ll = np.asarray(run_l(x)[len(seq) - 1], np.float64)
            hs = float(entropy_bits(ls))
            use_l = (hs > tau) if t == 0 else (np.mean(hist[-window:]) > tau)
            logits = ll if use_l else ls
            hist.append(float(entropy_bits(logits)))
            seq.append(int(np.argmax(logits)))
        np.testing.assert_array_equal(out.tokens[b, : len(seq)], seq)
        np.testing.assert_allclose(out.entropy[b], hist, rtol=1e-4, atol=1e-4)


def test_changing_tau_does_not_recompile(pair):
    entropy_adaptive_generate(*pair, PROMPTS, tau=1.0, max_new_tokens=NEW, logits=L.greedy())
    before = TRACE_COUNTS["decode_loop"]
    for tau in (0.5, 2.0, np.array([0.1, 1.0, 2.0, np.inf])):
        entropy_adaptive_generate(*pair, PROMPTS, tau=tau, max_new_tokens=NEW, logits=L.greedy())
    assert TRACE_COUNTS["decode_loop"] == before


@settings(max_examples=25, deadline=None)
@given(window=st.integers(1, 6), count=st.integers(0, 20), seed=st.integers(0, 10_000))
def test_rolling_mean_ring_buffer_matches_numpy(window, count, seed):
    values = np.random.default_rng(seed).normal(size=count).astype(np.float32)
    ring = np.zeros((1, window), np.float32)
    for i, v in enumerate(values):
        ring[0, i % window] = v
    got = float(rolling_mean(ring, np.array([count]), window)[0])
    want = values[-window:].mean() if count else 0.0
    assert got == pytest.approx(want, abs=1e-5)


def test_entropy_bits_known_values():
    logits = np.array([[0.0] * 8, [0.0, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf]], np.float32)
    np.testing.assert_allclose(np.asarray(entropy_bits(logits)), [3.0, 0.0], atol=1e-6)


def test_relative_cost():
    np.testing.assert_allclose(relative_cost([0.0, 0.5, 1.0], 10, 100), [0.1, 0.55, 1.0])


def test_bad_inputs(pair):
    small, large = pair
    other = tokjax.Model.init(tokjax.ModelConfig(vocab_size=V + 1, d_model=32, n_layers=1, n_heads=2, max_len=48),
                              jax.random.PRNGKey(2))
    kw = dict(max_new_tokens=4, logits=L.greedy())
    with pytest.raises(ValueError, match="vocab"):
        entropy_adaptive_generate(small, other, PROMPTS, tau=1.0, **kw)
    for w in (0, -1, 2.5):
        with pytest.raises(ValueError, match="window"):
            entropy_adaptive_generate(small, large, PROMPTS, tau=1.0, window=w, **kw)
    with pytest.raises(ValueError, match="NaN"):
        entropy_adaptive_generate(small, large, PROMPTS, tau=np.nan, **kw)
    with pytest.raises(ValueError, match="tau"):
        entropy_adaptive_generate(small, large, PROMPTS, tau=np.ones(3), **kw)
    with pytest.raises(ValueError, match="max_len"):
        entropy_adaptive_generate(small, large, PROMPTS, tau=1.0, max_new_tokens=60, logits=L.greedy())
    with pytest.raises(ValueError, match="key"):
        entropy_adaptive_generate(small, large, PROMPTS, tau=1.0, max_new_tokens=4, logits=L.temperature(1.0))
    with pytest.raises(ValueError, match="Model"):
        entropy_adaptive_generate(small.params, large, PROMPTS, tau=1.0, **kw)
