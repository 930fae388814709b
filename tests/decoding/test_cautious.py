"""Tests for CNTP (P6): N == 1 equals plain sampling, min-perplexity selection vs a naive loop, stops, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding.cautious import best_of_n, cautious, cautious_generate, num_trials, run_trials, sequence_nll
from tokjax.losses import token_stats
from tokjax.model import Inputs, KVCache, forward

from tokjax.decoding import driver as gen_mod

CFG = tokjax.ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_len=48)
R, T = 4, 6  # one static configuration for every generate-level test: one compile
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]


@pytest.fixture(scope="module")
def model():
    return tokjax.Model.init(CFG, jax.random.key(0))


def _cntp(model, key, **kw):
    kw = {"stop_ids": [2, 3], "h_lo": 0.0, "h_hi": 1.0, "max_trials": R, "max_trial_len": T,
          "logits": L.temperature(1.0), "max_new_tokens": 16, **kw}
    return cautious_generate(model, PROMPTS, key=key, **kw)


def test_h_hi_inf_equals_plain_sampling_and_runtime_hparams_do_not_recompile(model):
    key = jax.random.key(7)
    plain = tokjax.generate(model, PROMPTS, key=key, max_new_tokens=16, logits=L.temperature(1.0))
    off = _cntp(model, key, h_hi=float("inf"))
    np.testing.assert_array_equal(off.tokens, plain.tokens)
    np.testing.assert_array_equal(off.lengths, plain.lengths)
    assert off.stats["cautious_steps"] == [0, 0, 0] and off.stats["trial_tokens"] == [0, 0, 0]
    assert off.stats["forward_tokens"] == plain.stats["generated_tokens"]
    traced = gen_mod.TRACE_COUNTS["decode_loop"]
    on = _cntp(model, key)  # other h_lo/h_hi: runtime values, same program
    assert gen_mod.TRACE_COUNTS["decode_loop"] == traced
    # a random model is uncertain everywhere: CNTP forks, spends trial tokens, and changes the output
    assert min(on.stats["cautious_steps"]) > 0 and sum(on.stats["trial_tokens"]) > 0
    assert on.stats["forward_tokens"] > on.stats["generated_tokens"]
    assert not np.array_equal(on.tokens, plain.tokens)


def test_every_token_a_stop_commits_one_token_per_step(model):
    out = _cntp(model, jax.random.key(1), stop_ids=list(range(CFG.vocab_size)))
    hist = np.asarray(out.stats["accepted_histogram"])
    assert hist[0] > 0 and hist[1:].sum() == 0  # every trial is a single token
    assert out.stats["trial_tokens"] == [0, 0, 0]  # nothing fed beyond the step itself
    assert (out.lengths - out.prompt_lengths == 16).all()


def test_committed_chunks_end_at_stop_or_length(model):
    out = _cntp(model, jax.random.key(2), stop_ids=[5])
    hist = np.asarray(out.stats["accepted_histogram"])
    assert hist[1:].sum() > 0  # multi-token trials were committed
    for row in out.completions():
        assert len(row) == 16  # budget honoured exactly


def test_eos_ends_rows_inside_trials(model):
    out = _cntp(model, jax.random.key(4), eos_id=6, stop_ids=[2])
    for row in out.completions():
        eos_at = np.flatnonzero(row == 6)
        if eos_at.size:
            assert eos_at[0] == len(row) - 1  # nothing after eos
        else:
            assert len(row) == 16


NAIVE_LEN = 16  # naive sequences are right-padded to one shape (causal: padding cannot change earlier logits)


@jax.jit
def _full_logits(params, seq):
    return forward(params, CFG, seq).logits[0]


@jax.jit
def _full_keys(params, seq):
    return forward(params, CFG, Inputs(tokens=seq), cache=KVCache.init(CFG, 1, 32)).cache.stacked()[0]


def _pad(seq):
    return jnp.asarray(np.pad(seq, (0, NAIVE_LEN - len(seq)))[None, :], jnp.int32)


def _naive_trial_logp(params, prefix, trial, transform):
    logits = _full_logits(params, _pad(np.concatenate([prefix, trial])))
    lg, _ = transform(logits[len(prefix) - 1: len(prefix) + len(trial) - 1])
    lp = np.asarray(jax.nn.log_softmax(lg, axis=-1))
    return float(np.sum(lp[np.arange(len(trial)), trial]))


def test_winner_is_min_perplexity_trial_against_naive_loop(model):
    params, B, P, S = model.params, 3, 4, 32
    prompt = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    transform = L.temperature(0.9)
    stop = jnp.zeros((CFG.vocab_size,), bool).at[jnp.array([2, 7])].set(True)
    n = jnp.array([4, 3, 1], jnp.int32)
    limit = jnp.array([6, 3, 1], jnp.int32)

    @jax.jit
    def go(key):
        cache = KVCache.init(CFG, B, S)
        out = forward(params, CFG, Inputs(tokens=jnp.asarray(prompt)), cache=cache)
        lstate = transform.init(B)
        buf = jnp.zeros((B, S), jnp.int32).at[:, :P].set(prompt)
        lens = jnp.full((B,), P, jnp.int32)
        ctx = tokjax.logits.LogitContext(tokens=buf, lengths=lens, step=jnp.int32(0))
        logits, lstate = transform.apply(out.logits[:, -1], lstate, ctx)
        first = jax.random.categorical(jax.random.key(99), logits).astype(jnp.int32)
        return run_trials(params, CFG, transform, cache=out.cache, tokens=buf, lengths=lens, step_logits=logits,
                          logit_state=lstate, first_token=first, n=n, limit=limit, stop_mask=stop, key=key,
                          step=jnp.int32(0), max_trials=R, max_trial_len=T), first

    tr, first = go(jax.random.key(5))
    toks, lens, lsum = np.asarray(tr.tokens), np.asarray(tr.lengths), np.asarray(tr.logp_sum)
    stop_np = np.asarray(stop)
    k_got, _ = tr.cache.stacked()
    for b in range(B):
        assert toks[b, 0, 0] == int(first[b])  # trial 0 reuses the step's own sample
        scores = []
        for r in range(R):
            if r >= int(n[b]):
                assert lens[b, r] == 0
                continue
            t = toks[b, r, : lens[b, r]]
            assert 1 <= len(t) <= int(limit[b])
            assert not stop_np[t[:-1]].any()  # stops at the first stop token ...
            assert stop_np[t[-1]] or len(t) == int(limit[b])  # ... or at the length limit
            ref = _naive_trial_logp(params, prompt[b], t, transform)
            np.testing.assert_allclose(lsum[b, r], ref, rtol=1e-4, atol=1e-4)
            scores.append(-ref / len(t))
        win = int(np.argmin(scores))
        assert int(tr.winner[b]) == win
        # the committed cache is the winner's: prefix + all trial tokens but the (pending) last one
        w = toks[b, win, : lens[b, win]]
        fed = np.concatenate([prompt[b], w[:-1]])
        k_ref = _full_keys(params, _pad(fed))
        np.testing.assert_allclose(np.asarray(k_got)[:, b, : len(fed)], np.asarray(k_ref)[:, 0, : len(fed)],
                                   rtol=1e-4, atol=1e-5)
    assert int(tr.winner[2]) == 0 and lens[2, 0] == 1  # N == 1: just the step's token
    assert np.asarray(tr.fed)[2] == 0


@settings(max_examples=30, deadline=None)
@given(h=st.floats(0.0, 5.0), lo=st.floats(0.0, 2.0), width=st.floats(0.01, 3.0), nmax=st.integers(1, 12))
def test_num_trials_formula(h, lo, width, nmax):
    hi = lo + width
    got = int(num_trials(jnp.float32(h), jnp.float32(lo), jnp.float32(hi), nmax))
    frac = min(max((np.float32(h) - np.float32(lo)) / (np.float32(hi) - np.float32(lo)), 0.0), 1.0)
    assert 1 <= got <= nmax
    assert abs(got - int(np.floor(1 + (nmax - 1) * frac))) <= (0 if abs((nmax - 1) * frac % 1) > 1e-3 else 1)
    if h <= lo:
        assert got == 1
    if h >= hi:
        assert got == nmax
    assert int(num_trials(jnp.float32(h), jnp.float32(lo), jnp.float32(jnp.inf), nmax)) == 1


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"h_lo": 1.0, "h_hi": 1.0}, "h_hi must be > h_lo"),
        ({"h_lo": -0.1}, "h_lo must be finite"),
        ({"h_lo": float("nan")}, "h_lo must be finite"),
        ({"max_trials": 0}, "max_trials must be an int"),
        ({"max_trial_len": 2.5}, "max_trial_len must be an int"),
        ({"stop_ids": [1.5]}, "stop_ids must be integer"),
    ],
)
def test_bad_strategy_arguments(kw, msg):
    args = {"stop_ids": [2], **kw}
    with pytest.raises(ValueError, match=msg):
        cautious(**args)


def test_bad_generate_arguments(model):
    with pytest.raises(ValueError, match="stop_ids must lie in"):
        cautious_generate(model, PROMPTS, key=jax.random.key(0), max_new_tokens=4, stop_ids=[CFG.vocab_size])
    with pytest.raises(ValueError, match="h_hi must be a scalar or have shape"):
        cautious_generate(model, PROMPTS, key=jax.random.key(0), max_new_tokens=4, stop_ids=[2],
                          h_lo=0.0, h_hi=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="needs key="):
        cautious_generate(model, PROMPTS, max_new_tokens=4, stop_ids=[2])


def test_sequence_nll_matches_naive_loop():
    r = np.random.default_rng(0)
    lp = -r.exponential(size=(4, 9))
    p, n = np.array([2, 3, 1, 4]), np.array([7, 9, 5, 4])  # the last row generated nothing
    got = sequence_nll(lp, p, n)
    want = [-np.mean(lp[b, p[b]:n[b]]) if n[b] > p[b] else np.inf for b in range(4)]
    np.testing.assert_allclose(got, want)


def test_best_of_n_keeps_the_min_perplexity_sample_of_generate_n_and_its_logprobs_are_token_stats(model):
    key, n = jax.random.key(3), 3
    bon = best_of_n(model, PROMPTS, n=n, key=key, max_new_tokens=16, logits=L.temperature(1.0), eos_id=5)
    ref = tokjax.generate(model, PROMPTS, key=key, max_new_tokens=16, logits=L.temperature(1.0), eos_id=5, n=n,
                          logprobs=0)
    np.testing.assert_array_equal(bon.samples.tokens, ref.tokens)  # the samples are generate(n=...)'s own
    assert bon.n == n and bon.forward_tokens == int((ref.lengths - ref.prompt_lengths).sum())
    # The ranking log-probs are the model's teacher-forced ones (T = 1): token_stats on the same rows.
    toks = bon.samples.tokens
    st = token_stats(model.params, model.cfg, {"inputs": toks[:, :-1], "targets": toks[:, 1:],
                                               "prompt_lengths": bon.samples.prompt_lengths,
                                               "lengths": bon.samples.lengths})
    tf = np.where(np.asarray(st.mask), np.asarray(st.logp), 0.0)
    np.testing.assert_allclose(tf, bon.samples.logprobs[:, 1:], atol=2e-5)
    for b in range(len(PROMPTS)):
        rows = range(b * n, (b + 1) * n)
        nll = [-tf[i].sum() / (bon.samples.lengths[i] - bon.samples.prompt_lengths[i]) for i in rows]
        assert bon.winner[b] == b * n + int(np.argmin(nll))
        np.testing.assert_array_equal(bon.best_rows()[b], bon.samples.completions()[bon.winner[b]])
    assert len(set(map(tuple, (bon.samples.completions()[i].tolist() for i in range(n))))) > 1  # samples differ


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_best_of_n_rejects_bad_n(model, n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        best_of_n(model, PROMPTS, n=n, key=jax.random.key(0), max_new_tokens=4)


def test_sequence_nll_rejects_bad_shapes():
    with pytest.raises(ValueError, match="need logprobs"):
        sequence_nll(np.zeros((2, 5)), np.zeros(3, int), np.ones(2, int))
