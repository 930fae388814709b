"""Tests for the two-model routing step with lazy catch-up (tokjax.decoding.routing) under R2R (P46) and EAD (P62)."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding.entropy_adaptive import entropy_adaptive
from tokjax.decoding.r2r import r2r

from tests.decoding._routing_pair import NEW, PROMPTS, V, make_pair, make_router


@pytest.fixture(scope="module")
def pair():
    return make_pair()


@pytest.fixture(scope="module")
def router():
    return make_router()


def gen(small, strategy, prompts=PROMPTS, **kw):
    kw.setdefault("logits", L.greedy())
    return tokjax.generate(small, prompts, max_new_tokens=NEW, strategy=strategy, eos_id=7, **kw)


def assert_same_decode(a, b, record):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.stats[record], b.stats[record])


@pytest.mark.parametrize("catch_up", [2, 5, 40])
def test_lazy_r2r_equals_lockstep_token_for_token(pair, router, catch_up):
    small, large = pair
    lock = gen(small, r2r(large, router, theta=0.7, kind="random", seed=3))
    lazy = gen(small, r2r(large, router, theta=0.7, kind="random", seed=3, catch_up=catch_up))
    assert 0 < lock.stats["llm_tokens"] < lock.stats["generated_tokens"]  # mixed routing: the check can fail
    assert_same_decode(lazy, lock, "routed")
    assert lock.stats["large_calls"] == lock.stats["forward_calls"]
    assert lazy.stats["large_calls"] < lock.stats["large_calls"]  # the point of catching up lazily


def test_lazy_ead_equals_lockstep_and_records_the_same(pair):
    small, large = pair
    lock = gen(small, entropy_adaptive(large, tau=4.2, window=2))
    lazy = gen(small, entropy_adaptive(large, tau=4.2, window=2, catch_up=4))
    used = lock.stats["used_large"]
    assert used.any() and not used[:, :3].all()  # both models emit: the check can fail
    assert_same_decode(lazy, lock, "used_large")
    np.testing.assert_allclose(lazy.stats["entropy"], lock.stats["entropy"], rtol=1e-5, atol=1e-5)
    assert lazy.stats["large_calls"] < lock.stats["large_calls"]


def test_never_routing_runs_the_large_model_only_to_catch_up(pair, router):
    small, large = pair
    ref = tokjax.generate(small, PROMPTS, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    for catch_up, most in ((4, -(-NEW // 4)), (NEW + 1, 0)):
        out = gen(small, r2r(large, router, theta=1.5, kind="random", catch_up=catch_up))
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        assert out.stats["llm_tokens"] == 0
        assert out.stats["large_calls"] <= most  # one forced catch-up per catch_up steps at most


def test_always_routing_equals_large_model(pair, router):
    small, large = pair
    ref = tokjax.generate(large, PROMPTS, max_new_tokens=NEW, logits=L.greedy(), eos_id=7)
    out = gen(small, r2r(large, router, theta=0.0, kind="random", catch_up=6))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert out.stats["large_calls"] == out.stats["forward_calls"]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), theta=st.floats(0.2, 0.95), catch_up=st.sampled_from([3, 7]))
def test_lazy_matches_lockstep_for_any_routing_draw(pair, router, seed, theta, catch_up):
    small, large = pair
    lock = gen(small, r2r(large, router, theta=theta, kind="random", seed=seed))
    lazy = gen(small, r2r(large, router, theta=theta, kind="random", seed=seed, catch_up=catch_up))
    assert_same_decode(lazy, lock, "routed")


def test_sampled_lazy_decode_matches_lockstep(pair, router):
    small, large = pair
    kw = dict(logits=L.temperature(1.0), key=jax.random.key(11))
    lock = gen(small, r2r(large, router, theta=0.6, kind="random", seed=2), **kw)
    lazy = gen(small, r2r(large, router, theta=0.6, kind="random", seed=2, catch_up=3), **kw)
    assert_same_decode(lazy, lock, "routed")


def test_bad_catch_up(pair, router):
    small, large = pair
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="catch_up must be an int >= 1"):
            r2r(large, router, theta=0.5, catch_up=bad)
        with pytest.raises(ValueError, match="catch_up must be an int >= 1"):
            entropy_adaptive(large, tau=1.0, catch_up=bad)
    mcfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=48, mixer="mamba")
    mamba = tokjax.Model.init(mcfg, jax.random.key(0))
    with pytest.raises(ValueError, match="mamba"):
        r2r(mamba, router, theta=0.5, catch_up=2)
    r2r(mamba, router, theta=0.5)  # lockstep is fine for a recurrent large model


def test_chunk_widths():
    from tokjax.decoding.routing import chunk_widths
    assert chunk_widths(1) == (1,)
    assert chunk_widths(2) == (1, 2)
    assert chunk_widths(8) == (1, 2, 4, 8)
    assert chunk_widths(12) == (1, 2, 4, 8, 12)


def test_strategy_models_must_be_a_dict_of_models(pair):
    import dataclasses

    from tokjax.decoding.routing import LARGE

    small, large = pair
    good = entropy_adaptive(large, tau=1.0)

    class BadModels(type(good)):
        def models(self):
            return {LARGE: large.params}  # params, not a Model

    bad = BadModels(**{f.name: getattr(good, f.name) for f in dataclasses.fields(good)})
    with pytest.raises(ValueError, match="must return a dict of tokjax Models"):
        gen(small, bad)
