"""generate's outputs: per-token log-probabilities (and top-k) for every strategy, texts(), pad_id, n samples
per prompt (one prefill, forked cache), and the Strategy hooks rows_per_prompt / output."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import forward, generate
from tokjax import logits as L
from tokjax.decoding import Sampling, drafts, verify
from tokjax.decoding import driver as driver_mod
from tokjax.decoding.cautious import cautious
from tokjax.decoding.entropy_adaptive import entropy_adaptive
from tokjax.decoding.skipdecode import skipdecode
from tokjax.decoding.speculative import speculative
from tokjax.logits import LogitContext, masked_log_softmax
from tests.model._models import small_model

MODEL = small_model(seed=3)  # V=61, 3 layers, max_len 48
V = MODEL.cfg.vocab_size
PROMPTS = [[5, 9, 14, 5, 9, 14, 5], [3, 1, 4, 1, 5], [7, 7]]

_full = jax.jit(lambda params, toks: forward(params, MODEL.cfg, toks).logits)


def reference_logprobs(out, transform):
    """Returns [B, S, V] log softmax(transform(full-forward logits)) predicting each slot (slot t from position t-1),
    each slot's transform applied with the context of the tokens before it (as the decode step saw them)."""
    toks = jnp.asarray(out.tokens)
    raw = np.asarray(_full(MODEL.params, toks))  # [B, S, V]
    B, S = out.tokens.shape
    ref = np.zeros((B, S, V), np.float32)
    for t in range(1, S):
        ctx = LogitContext(tokens=toks, lengths=jnp.full((B,), t, jnp.int32), step=jnp.int32(0))
        lg, _ = transform.apply(jnp.asarray(raw[:, t - 1]), transform.init(B), ctx)
        ref[:, t] = np.asarray(masked_log_softmax(lg))
    return ref


def check_logprobs(out, transform, k):
    ref = reference_logprobs(out, transform)
    B, S = out.tokens.shape
    assert out.logprobs.shape == (B, S) and out.logprobs.dtype == np.float32
    assert out.top_logprobs.shape == (B, S, k) and out.top_ids.shape == (B, S, k)
    checked = 0
    for b in range(B):
        p, n = out.prompt_lengths[b], out.lengths[b]
        assert (out.logprobs[b, :p] == 0).all() and (out.logprobs[b, n:] == 0).all()
        assert (out.top_ids[b, :p] == -1).all() and np.isneginf(out.top_logprobs[b, n:]).all()
        for t in range(p, n):
            want = ref[b, t, out.tokens[b, t]]
            np.testing.assert_allclose(out.logprobs[b, t], want, atol=2e-4, err_msg=f"row {b} slot {t}")
            np.testing.assert_allclose(out.top_logprobs[b, t], np.sort(ref[b, t])[::-1][:k], atol=2e-4)
            # ids agree up to ties: each reported id has the reported log-probability
            np.testing.assert_allclose(ref[b, t, out.top_ids[b, t]], out.top_logprobs[b, t], atol=2e-4)
            assert out.logprobs[b, t] <= out.top_logprobs[b, t, 0] + 1e-5
            checked += 1
    assert checked > 0
    return checked


SAMPLING_T = L.chain(L.repetition_penalty(1.3), L.top_k(20), L.temperature(0.8))
STRATEGIES = {
    "sampling": (lambda: None, SAMPLING_T),
    "self_draft_rejection": (lambda: speculative(drafts.model(MODEL, num_draft=3), verify.rejection()), SAMPLING_T),
    "prompt_lookup_rejection": (lambda: speculative(drafts.prompt_lookup(max_ngram=2, num_draft=4), verify.rejection()),
                                L.temperature(0.7)),
    "prompt_lookup_greedy": (lambda: speculative(drafts.prompt_lookup(max_ngram=2, num_draft=4), verify.greedy()),
                             L.chain(L.repetition_penalty(1.2), L.greedy())),
    "recycling_tree": (lambda: speculative(drafts.recycling(), verify.tree()), L.temperature(0.9)),
    "cautious": (lambda: cautious(h_lo=0.0, h_hi=0.5, max_trials=3, max_trial_len=4, stop_ids=(0, 1, 2)),
                 L.temperature(0.9)),
    "skipdecode_all_layers": (lambda: skipdecode(min_layers=3, max_layers=3, horizon=8), L.temperature(0.9)),
    # the large model is the same model, so whichever the step uses, the reference is the full forward
    "entropy_adaptive": (lambda: entropy_adaptive(MODEL, tau=1.0), L.temperature(0.9)),
}


SLOW = {"prompt_lookup_rejection", "recycling_tree", "skipdecode_all_layers", "entropy_adaptive", "cautious", "prompt_lookup_greedy"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in sorted(STRATEGIES)])
def test_logprobs_equal_log_softmax_of_a_full_forward_under_the_transform(name):
    make, transform = STRATEGIES[name]
    strategy = make()
    out = generate(MODEL, PROMPTS, key=jax.random.key(4), max_new_tokens=10, logits=transform, strategy=strategy,
                   logprobs=3)
    check_logprobs(out, transform, 3)
    if name in ("self_draft_rejection", "prompt_lookup_greedy"):
        assert out.stats["tokens_per_call"] > 1.05, out.stats  # multi-token commits were checked too
    if name == "prompt_lookup_greedy":
        np.testing.assert_allclose(out.logprobs, 0.0)  # greedy() is a point mass
    if name == "cautious":
        assert sum(out.stats["cautious_steps"]) > 0  # trial tokens were checked too


def test_logprobs_do_not_change_the_tokens_and_sum_to_the_sequence_logprob():
    kw = dict(key=jax.random.key(1), max_new_tokens=8, logits=L.temperature(1.2))
    plain = generate(MODEL, PROMPTS, **kw)
    lp0 = generate(MODEL, PROMPTS, logprobs=0, **kw)
    np.testing.assert_array_equal(plain.tokens, lp0.tokens)
    assert plain.logprobs is None and lp0.top_logprobs is None and lp0.top_ids is None
    ref = reference_logprobs(lp0, L.temperature(1.2))
    for b in range(len(PROMPTS)):
        p, n = lp0.prompt_lengths[b], lp0.lengths[b]
        want = sum(ref[b, t, lp0.tokens[b, t]] for t in range(p, n))
        np.testing.assert_allclose(lp0.logprobs[b].sum(), want, atol=1e-3)


def test_logprobs_rejects_bad_values_and_strategies_without_logits():
    for bad in (-1, 1.5, True, V + 1):
        with pytest.raises(ValueError, match="logprobs"):
            generate(MODEL, PROMPTS, max_new_tokens=2, logits=L.greedy(), logprobs=bad)


def test_texts_pad_id_and_completions():
    out = generate(MODEL, PROMPTS, max_new_tokens=5, logits=L.greedy(), pad_id=60)
    for b, comp in enumerate(out.completions()):
        assert out.tokens[b, out.lengths[b]:].tolist() == [60] * (out.tokens.shape[1] - out.lengths[b])
        assert comp.tolist() == out.tokens[b, out.prompt_lengths[b]:out.lengths[b]].tolist()

    class Digits:
        def decode(self, ids):
            return ",".join(str(i) for i in ids)

    assert out.texts(Digits()) == [",".join(str(i) for i in c) for c in out.completions()]
    with pytest.raises(ValueError, match="decode"):
        out.texts(object())
    other = generate(MODEL, PROMPTS, max_new_tokens=5, logits=L.greedy())
    np.testing.assert_array_equal(np.where(out.tokens == 60, 0, out.tokens), other.tokens)


def test_texts_decode_with_a_real_tokenizer():
    model, tok = tokjax.pretrained("tiny-test")
    out = generate(model, [tok.encode("def f(x):")], max_new_tokens=6, logits=L.greedy())
    assert out.texts(tok) == [tok.decode(out.completions()[0].tolist())]


@pytest.fixture
def prefill_calls(monkeypatch):
    calls = []
    real = driver_mod.prefill

    def counting(params, cfg, tokens, lengths, capacity):
        calls.append(int(tokens.shape[0]))
        return real(params, cfg, tokens, lengths, capacity)

    monkeypatch.setattr(driver_mod, "prefill", counting)
    return calls


@pytest.mark.parametrize("name", ["sampling", "prompt_lookup_rejection"])
def test_n_samples_equal_the_prompts_repeated_n_times_with_one_prefill(name, prefill_calls):
    make, transform = STRATEGIES[name]
    key = jax.random.key(9)
    out = generate(MODEL, PROMPTS, key=key, max_new_tokens=9, logits=transform, strategy=make(), n=3, logprobs=2)
    assert prefill_calls == [len(PROMPTS)]  # one prefill of the B prompts, not of B * n rows
    repeated = [p for p in PROMPTS for _ in range(3)]  # prompt-major
    want = generate(MODEL, repeated, key=key, max_new_tokens=9, logits=transform, strategy=make(), logprobs=2)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_array_equal(out.lengths, want.lengths)
    np.testing.assert_array_equal(out.prompt_lengths, [len(p) for p in repeated])
    np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-5)
    assert len({tuple(c.tolist()) for c in out.completions()[:3]}) > 1  # the samples differ


def test_n_must_be_a_positive_int():
    for bad in (0, -2, 1.0, True):
        with pytest.raises(ValueError, match="n "):
            generate(MODEL, PROMPTS, max_new_tokens=2, logits=L.greedy(), n=bad)


@dataclasses.dataclass(frozen=True)
class TwoRowsFirstOut(Sampling):
    """A test strategy: two decode rows per prompt, and only the second row of each pair is returned."""

    rows_per_prompt: int = 2

    def output(self, state):
        return state.tokens[1::2], state.lengths[1::2]


def test_rows_per_prompt_and_output_hooks(prefill_calls):
    key = jax.random.key(2)
    t = L.temperature(1.5)
    out = generate(MODEL, PROMPTS, key=key, max_new_tokens=6, logits=t, strategy=TwoRowsFirstOut(), n=2)
    assert prefill_calls == [len(PROMPTS)]
    # decode rows: prompt b -> rows 4b .. 4b+3 (rows_per_prompt * n); output: rows 1 and 3 of each prompt's four
    rows = generate(MODEL, [p for p in PROMPTS for _ in range(4)], key=key, max_new_tokens=6, logits=t)
    np.testing.assert_array_equal(out.tokens, rows.tokens[1::2])
    np.testing.assert_array_equal(out.prompt_lengths, [len(p) for p in PROMPTS for _ in range(2)])
    with pytest.raises(ValueError, match="logprobs"):
        generate(MODEL, PROMPTS, key=key, max_new_tokens=2, logits=t, strategy=TwoRowsFirstOut(), logprobs=0)
    with pytest.raises(ValueError, match="output"):
        next(tokjax.stream(MODEL, PROMPTS, key=key, max_new_tokens=2, logits=t, strategy=TwoRowsFirstOut()))
