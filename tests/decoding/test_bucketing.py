"""Shape bucketing: new prompt lengths and token budgets within a bucket reuse the compiled decode loop, and the
output equals the unbucketed run's (bucket=False), for plain sampling and for strategies that read the buffers."""

import jax
import numpy as np
import pytest

from tokjax import generate
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS, bucket_size, drafts, verify
from tokjax.decoding.cautious import cautious
from tokjax.decoding.skipdecode import skipdecode
from tokjax.decoding.speculative import speculative
from tests.model._models import small_model

MODEL = small_model(seed=3)  # V=61, max_len 48
V = MODEL.cfg.vocab_size


def prompts_of_width(width, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, size=width).tolist(), rng.integers(0, V, size=max(width - 5, 1)).tolist()]


def assert_same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.prompt_lengths, b.prompt_lengths)
    assert a.stats["forward_calls"] == b.stats["forward_calls"]


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 16, 17, 32, 33, 100)] == [16, 16, 32, 32, 64, 128]
    assert bucket_size(40, cap=48) == 48 and bucket_size(47, cap=32) == 47  # never below n


@pytest.mark.slow
def test_ten_prompt_lengths_and_several_budgets_compile_the_loop_once():
    kw = dict(key=jax.random.key(0), logits=L.temperature(0.9))
    generate(MODEL, prompts_of_width(17, 0), max_new_tokens=16, **kw)  # compiles the (32, 16) bucket
    before = TRACE_COUNTS["decode_loop"]
    outs = {}
    for width in range(17, 27):  # 10 prompt widths, one bucket
        for budget in (3, 9, 16):
            outs[width, budget] = generate(MODEL, prompts_of_width(width, width), max_new_tokens=budget, **kw)
            assert (outs[width, budget].lengths - outs[width, budget].prompt_lengths == budget).all()
            assert outs[width, budget].tokens.shape == (2, width + budget)
    assert TRACE_COUNTS["decode_loop"] == before
    for width, budget in ((17, 16), (21, 3), (26, 9)):
        exact = generate(MODEL, prompts_of_width(width, width), max_new_tokens=budget, bucket=False, **kw)
        assert_same(outs[width, budget], exact)


STRATEGIES = {
    "prompt_lookup": lambda: speculative(drafts.prompt_lookup(max_ngram=2, num_draft=4), verify.rejection()),
    "recycling": lambda: speculative(drafts.recycling(), verify.tree()),
    "ngram_memory": lambda: speculative(drafts.ngram_memory("small", orders=(2, 1), top_k=3, capacity=64), verify.tree()),
    "skipdecode": lambda: skipdecode(min_layers=1, max_layers=3, horizon=6),
    "cautious": lambda: cautious(h_lo=0.0, h_hi=0.5, max_trials=3, max_trial_len=4, stop_ids=(0, 1, 2)),
}


SLOW = {"recycling", "ngram_memory", "cautious", "skipdecode"}  # the same buffer-reading paths as prompt lookup / skipdecode


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in sorted(STRATEGIES)])
def test_bucketed_equals_unbucketed_for_strategies(name):
    prompts = [[5, 9, 14, 5, 9, 14, 5, 9], [3, 1, 4, 1, 5], [7, 7, 7]]
    kw = dict(key=jax.random.key(3), max_new_tokens=11, logits=L.temperature(0.8), eos_id=[4, 40], logprobs=2)
    a = generate(MODEL, prompts, strategy=STRATEGIES[name](), **kw)
    b = generate(MODEL, prompts, strategy=STRATEGIES[name](), bucket=False, **kw)
    assert_same(a, b)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)


def test_bucket_must_be_a_bool():
    with pytest.raises(ValueError, match="bucket"):
        generate(MODEL, [[1, 2]], max_new_tokens=2, logits=L.greedy(), bucket="yes")
