"""EAD (P62), CNTP (P6) and Token Recycling / STAND hot start through ``generate(strategy=...)`` emit the tokens
recorded before they moved onto the one decode driver (fixtures/make_decode_fixtures.py, commit 1ef782b)."""

from pathlib import Path

import jax
import numpy as np
import pytest

import tokjax
from tokjax import logits as L
from tokjax.decoding import cautious, cautious_generate, entropy_adaptive, entropy_adaptive_generate, speculative, verify
from tokjax.decoding.stand import NgramTables, ngram_memory
from tokjax.decoding.token_recycling import RecyclingTable, recycling
from tests.decoding.fixtures import make_decode_fixtures as F

FIX = np.load(Path(__file__).with_name("fixtures") / "decode_fixtures.npz")


@pytest.fixture(scope="module")
def pair():
    return F.ead_pair()


def _ead_cases():
    tau = float(FIX["ead_tau"])
    return {
        "greedy_w3": dict(tau=tau, window=3, logits=L.greedy(), eos_id=7),
        "rows_w2": dict(tau=np.array((tau,) + F.TAU_PER_ROW_EXTRA, np.float32), window=2, logits=L.greedy()),
        "sampled_w3": dict(tau=tau, window=3, logits=L.temperature(0.8), key=jax.random.key(3)),
    }


@pytest.mark.parametrize("name", ["greedy_w3", "rows_w2", "sampled_w3"])
def test_ead_matches_recorded(pair, name):
    small, large = pair
    kw = _ead_cases()[name]
    out = entropy_adaptive_generate(small, large, F.PROMPTS, max_new_tokens=F.NEW, **kw)
    for f in ("tokens", "lengths", "used_large", "large_fraction"):
        np.testing.assert_array_equal(getattr(out, f), FIX[f"ead_{name}_{f}"], err_msg=f)
    np.testing.assert_allclose(out.entropy, FIX[f"ead_{name}_entropy"], rtol=1e-6, atol=1e-6)
    # The same through the driver directly: the strategy's finalize fills the stats.
    tau, window = kw.pop("tau"), kw.pop("window")
    gen = tokjax.generate(small, F.PROMPTS, max_new_tokens=F.NEW, strategy=entropy_adaptive(large, tau=tau, window=window), **kw)
    np.testing.assert_array_equal(gen.tokens, FIX[f"ead_{name}_tokens"])
    np.testing.assert_array_equal(gen.stats["used_large"], FIX[f"ead_{name}_used_large"])


@pytest.mark.slow
def test_cntp_matches_recorded():
    model = F.cntp_model()
    strat = cautious(stop_ids=[2, 3], h_lo=0.0, h_hi=1.0, max_trials=4, max_trial_len=6)
    r = tokjax.generate(model, F.CNTP_PROMPTS, key=jax.random.key(7), max_new_tokens=16, logits=L.temperature(1.0),
                        strategy=strat)
    np.testing.assert_array_equal(r.tokens, FIX["cntp_strategy_tokens"])
    np.testing.assert_array_equal(r.lengths, FIX["cntp_strategy_lengths"])
    r = cautious_generate(model, F.CNTP_PROMPTS, key=jax.random.key(4), max_new_tokens=16, stop_ids=[2],
                          h_lo=np.array([0.0, 0.5, 0.0], np.float32), h_hi=1.0, max_trials=4, max_trial_len=6,
                          logits=L.temperature(1.0), eos_id=6)
    np.testing.assert_array_equal(r.tokens, FIX["cntp_generate_tokens"])
    np.testing.assert_array_equal(r.lengths, FIX["cntp_generate_lengths"])
    for f in ("trial_tokens", "cautious_steps", "trials", "forward_tokens", "forward_calls"):
        np.testing.assert_array_equal(np.asarray(r.stats[f]), FIX[f"cntp_generate_{f}"], err_msg=f)


@pytest.mark.slow
def test_token_recycling_hot_start_matches_recorded():
    model = F.hot_model()
    strat = speculative(recycling(template="small"), verify.greedy())
    kw = dict(strategy=strat, max_new_tokens=24, logits=L.greedy())
    cold = tokjax.generate(model, F.HOT_PROMPT, **kw)
    assert isinstance(cold.strategy_state, RecyclingTable)
    warm = tokjax.generate(model, F.HOT_PROMPT, strategy_state=cold.strategy_state, **kw)
    np.testing.assert_array_equal(cold.tokens, FIX["tr_cold_tokens"])
    np.testing.assert_array_equal(warm.tokens, FIX["tr_warm_tokens"])
    assert (cold.stats["forward_calls"], warm.stats["forward_calls"]) == (FIX["tr_cold_calls"], FIX["tr_warm_calls"])
    np.testing.assert_array_equal(np.asarray(cold.strategy_state.successors), FIX["tr_table"])
    np.testing.assert_array_equal(np.asarray(warm.strategy_state.successors), FIX["tr_table2"])


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_stand_hot_start_matches_recorded():
    model = F.hot_model()
    strat = speculative(ngram_memory("small", orders=(3, 2, 1), top_k=4, capacity=256), verify.tree())
    kw = dict(strategy=strat, max_new_tokens=24, logits=L.temperature(0.9), bucket=False)  # recorded at exact shapes
    cold = tokjax.generate(model, F.HOT_PROMPT, key=jax.random.key(1), **kw)
    assert isinstance(cold.strategy_state, NgramTables)
    warm = tokjax.generate(model, F.HOT_PROMPT, key=jax.random.key(2), strategy_state=cold.strategy_state, **kw)
    np.testing.assert_array_equal(cold.tokens, FIX["stand_cold_tokens"])
    np.testing.assert_array_equal(warm.tokens, FIX["stand_warm_tokens"])
    assert (cold.stats["forward_calls"], warm.stats["forward_calls"]) == (FIX["stand_cold_calls"], FIX["stand_warm_calls"])
    np.testing.assert_array_equal(np.asarray(warm.strategy_state.counts), FIX["stand_counts2"])
    # float32 probabilities averaged over steps: a change of summation order in the forward (e.g. the
    # blocked prefill) moves them by a few ulps while tokens, calls and counts stay exact
    np.testing.assert_allclose(np.asarray(warm.strategy_state.weights), FIX["stand_weights2"], rtol=1e-5, atol=1e-6)
