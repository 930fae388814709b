"""LogitTransform properties (hypothesis), chain semantics and bad hyperparameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokjax import logits as L

# XLA flushes subnormals to zero, so they are not part of the domain under test.
finite = st.floats(-20, 20, allow_nan=False, allow_subnormal=False, width=32)


def logit_rows(min_v=2, max_v=30):
    return st.integers(1, 4).flatmap(
        lambda b: st.integers(min_v, max_v).flatmap(lambda v: hnp.arrays(np.float32, (b, v), elements=finite))
    )


def ctx_for(tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    return L.LogitContext(tokens=tokens, lengths=jnp.full((tokens.shape[0],), tokens.shape[1]), step=jnp.int32(0))


@given(logit_rows(), st.integers(1, 40))
def test_top_k_leaves_at_most_k_finite_and_keeps_the_largest(x, k):
    out, _ = L.top_k(k)(jnp.asarray(x))
    out = np.asarray(out)
    kept = np.isfinite(out)
    assert (kept.sum(-1) == np.minimum(k, x.shape[1])).all()
    for b in range(x.shape[0]):
        if kept[b].sum() < x.shape[1]:
            assert x[b][kept[b]].min() >= x[b][~kept[b]].max()
        np.testing.assert_array_equal(out[b][kept[b]], x[b][kept[b]])


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=15)
@given(logit_rows(), st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p_and_never_empties(x, p):
    out, _ = L.top_p(p)(jnp.asarray(x))
    out = np.asarray(out)
    for b in range(x.shape[0]):
        probs = np.exp(x[b] - x[b].max())
        probs /= probs.sum()
        kept = np.isfinite(out[b])
        assert kept.any()
        mass = probs[kept].sum()
        assert mass >= p - 1e-5
        # removing the least likely kept token drops below p (smallest such set)
        if kept.sum() > 1:
            assert mass - probs[kept].min() < p + 1e-5
        if (~kept).any():
            assert probs[kept].min() >= probs[~kept].max() - 1e-7


@given(logit_rows())
def test_temperature_one_is_identity(x):
    out, _ = L.temperature(1.0)(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(out), x)


@given(logit_rows(), st.floats(0.05, 5.0))
def test_temperature_scales_logits(x, t):
    out, _ = L.temperature(t)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(out), x / np.float32(t), rtol=1e-5, atol=1e-5)


@given(logit_rows(), st.floats(0.0, 1.0))
def test_min_p_keeps_tokens_above_threshold(x, p):
    out, _ = L.min_p(p)(jnp.asarray(x))
    kept = np.isfinite(np.asarray(out))
    probs = np.exp(x - x.max(-1, keepdims=True))
    rel = probs / probs.max(-1, keepdims=True)
    assert kept.any(-1).all()
    assert (rel[kept] >= p * (1 - 1e-5) - 1e-7).all()
    assert (rel[~kept] < p * (1 + 1e-5) + 1e-7).all()


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=15)
@given(logit_rows(min_v=5), st.integers(1, 4), st.floats(0.1, 1.0))
def test_chain_order_semantics(x, k, p):
    """chain(a, b) applies a then b: equal to applying them by hand, and order matters in general."""
    xj = jnp.asarray(x)
    ab, _ = L.chain(L.top_k(k), L.top_p(p))(xj)
    manual, _ = L.top_p(p)(L.top_k(k)(xj)[0])
    np.testing.assert_array_equal(np.asarray(ab), np.asarray(manual))
    named = L.named_chain(("k", L.top_k(k)), ("p", L.top_p(p)))
    nab, state = named(xj)
    np.testing.assert_array_equal(np.asarray(nab), np.asarray(ab))
    assert set(state) == {"k", "p"}


def test_chain_order_matters_example():
    x = jnp.array([[3.0, 2.9, 0.0, -1.0]])
    # temperature first flattens, so top-p keeps more tokens than top-p first
    a, _ = L.chain(L.temperature(10.0), L.top_p(0.6))(x)
    b, _ = L.chain(L.top_p(0.6), L.temperature(10.0))(x)
    assert np.isfinite(np.asarray(a)).sum() > np.isfinite(np.asarray(b)).sum()


def test_greedy_keeps_only_argmax():
    x = jnp.array([[0.1, 2.0, 2.0, -1.0]])
    out, _ = L.greedy()(x)
    assert np.isfinite(np.asarray(out)).sum() == 1 and np.isfinite(np.asarray(out))[0, 1]


def test_penalties_use_the_context_tokens():
    x = jnp.array([[2.0, -2.0, 1.0, 0.0]])
    ctx = ctx_for([[0, 1, 1]])
    out, _ = L.repetition_penalty(2.0).apply(x, L.repetition_penalty(2.0).init(1), ctx)
    np.testing.assert_allclose(np.asarray(out), [[1.0, -4.0, 1.0, 0.0]])
    t = L.presence_penalty(0.5, 0.25)
    out, _ = t.apply(x, t.init(1), ctx)
    np.testing.assert_allclose(np.asarray(out), [[2.0 - 0.75, -2.0 - 1.0, 1.0, 0.0]])
    with pytest.raises(ValueError, match="LogitContext"):
        L.repetition_penalty(1.2)(x)


def test_ban_tokens_and_all_masked_rows_never_nan():
    x = jnp.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    out, _ = L.ban_tokens([2])(x)
    assert np.isneginf(np.asarray(out)[:, 2]).all()
    allmasked = jnp.full((2, 5), -jnp.inf)
    for t in (L.top_k(2), L.top_p(0.5), L.min_p(0.1), L.temperature(0.5)):
        y, _ = t(allmasked)
        assert not np.isnan(np.asarray(y)).any(), t
    tok, stats = L.sample(jax.random.key(0), allmasked)
    assert np.asarray(stats.all_masked).all() and not np.isnan(np.asarray(tok, float)).any()


def test_per_row_hyperparameters():
    x = jnp.zeros((2, 5)).at[:, 0].set(1.0)
    out, _ = L.top_k(jnp.array([1, 3]))(x)
    assert np.isfinite(np.asarray(out)).sum(-1).tolist() == [1, 3]
    with pytest.raises(ValueError, match="shape"):
        L.temperature(jnp.array([1.0, 2.0, 3.0]))(x)


def test_transforms_with_different_hyperparameters_are_equal_static_args():
    assert L.temperature(0.5) == L.temperature(2.0) and hash(L.temperature(0.5)) == hash(L.temperature(2.0))
    assert L.chain(L.top_p(0.1), L.temperature(1.0)) == L.chain(L.top_p(0.9), L.temperature(3.0))
    assert L.top_p(0.5) != L.top_k(5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.temperature(0.0), "temperature"),
        (lambda: L.temperature(-1.0), "temperature"),
        (lambda: L.temperature(float("nan")), "temperature"),
        (lambda: L.top_p(0.0), "top_p"),
        (lambda: L.top_p(1.5), "top_p"),
        (lambda: L.top_k(0), "top_k"),
        (lambda: L.min_p(-0.1), "min_p"),
        (lambda: L.repetition_penalty(0.0), "repetition_penalty"),
        (lambda: L.ban_tokens([-1]), "banned"),
        (lambda: L.chain(L.top_k(2), "temperature"), "LogitTransform"),
        (lambda: L.named_chain(("a", L.top_k(2)), ("a", L.top_p(0.5))), "unique"),
    ],
)
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
