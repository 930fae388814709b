"""P27 function tokens: frequency sets, the token-feature bipartite graph and the 2x2 loss table vs numpy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.analysis.function_tokens import feature_coverage, function_token_set, loss_table, token_counts
from tokjax.analysis.sae import SparseCodes


# ------------------------------------------------------------------------------ function_token_set
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=30).filter(lambda c: sum(c) > 0),
       coverage=st.floats(0.01, 1.0))
def test_function_token_set_is_minimal_and_reaches_coverage(counts, coverage):
    c = np.asarray(counts)
    s = function_token_set(c, coverage)
    need = coverage * c.sum()
    assert len(set(s.tolist())) == len(s) >= 1
    assert c[s].sum() >= need  # reaches the share
    assert np.sort(c)[::-1][: len(s) - 1].sum() < need  # no set of one fewer token can (the top m-1 are the best)
    assert np.all(np.diff(c[s]) <= 0)  # in frequency order
    rest = np.setdiff1d(np.arange(len(c)), s)
    assert rest.size == 0 or c[rest].max() <= c[s].min()  # the most frequent tokens


def test_function_token_set_examples_and_ties():
    np.testing.assert_array_equal(function_token_set([5, 1, 3, 1], 0.5), [0])
    np.testing.assert_array_equal(function_token_set([5, 1, 3, 1], 0.6), [0, 2])
    np.testing.assert_array_equal(function_token_set([2, 2, 2, 2], 0.5), [0, 1])  # ties: lower id first
    np.testing.assert_array_equal(function_token_set([0, 3, 1], 1.0), [1, 2])
    np.testing.assert_array_equal(token_counts(np.array([[1, 1, 3], [0, 1, 3]]), 5), [1, 3, 0, 2, 0])
    np.testing.assert_array_equal(token_counts(np.array([1, 1, 3]), 4, mask=[True, False, True]), [0, 1, 0, 1])


# ------------------------------------------------------------------------------ feature_coverage
def _brute_coverage(tok, codes, token_set, V, threshold=0.0):
    """Loop oracle: edges as a set of (token, feature) pairs."""
    edges = set()
    for t, row in zip(tok.reshape(-1), codes.reshape(-1, codes.shape[-1])):
        for f, v in enumerate(row):
            if v > threshold:
                edges.add((int(t), f))
    active = {f for _, f in edges}
    covered = {f for t, f in edges if t in set(int(i) for i in token_set)}
    degree = np.zeros(V, int)
    for t, _ in edges:
        degree[t] += 1
    return (len(covered) / len(active) if active else 0.0), len(active), len(covered), degree, active, covered


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), density=st.floats(0.0, 0.6), threshold=st.sampled_from([0.0, 0.5]))
def test_feature_coverage_matches_brute_force(seed, density, threshold):
    r = np.random.default_rng(seed)
    V, F, N = 9, 7, 30
    tok = r.integers(0, V, N)
    codes = np.where(r.random((N, F)) < density, r.random((N, F)), 0.0).astype(np.float32)
    tset = r.choice(V, size=3, replace=False)
    cov, n_act, n_cov, degree, active, covered = _brute_coverage(tok, codes, tset, V, threshold)
    out = feature_coverage(tok, codes, tset, vocab_size=V, threshold=threshold)
    np.testing.assert_allclose(out.coverage, cov, rtol=1e-6)
    assert int(out.n_active) == n_act and int(out.n_covered) == n_cov
    np.testing.assert_array_equal(out.degree, degree)
    assert set(np.flatnonzero(out.active)) == active and set(np.flatnonzero(out.covered)) == covered
    # the same graph from sparse top-k codes (k = F keeps every entry) and from a bool token mask
    order = np.argsort(-codes, axis=1, kind="stable")
    sparse = SparseCodes(order.astype(np.int32), np.take_along_axis(codes, order, 1))
    mask = np.zeros(V, bool)
    mask[tset] = True
    out2 = feature_coverage(tok, sparse, mask, n_features=F, threshold=threshold)
    np.testing.assert_array_equal(out2.degree, out.degree)
    np.testing.assert_array_equal(out2.covered, out.covered)
    np.testing.assert_allclose(out2.coverage, out.coverage)


def test_feature_coverage_planted_graph_and_batched_shapes():
    # token 0 ("the") fires features 0-3, token 1 fires 4, token 2 fires 3 and 5; feature 6 never fires
    tok = np.array([[0, 1], [2, 0]])
    codes = np.zeros((2, 2, 7), np.float32)
    codes[0, 0, [0, 1]] = 1.0
    codes[1, 1, [2, 3]] = 2.0
    codes[0, 1, 4] = 0.5
    codes[1, 0, [3, 5]] = 1.0
    out = feature_coverage(tok, codes, [0])
    assert (int(out.n_active), int(out.n_covered)) == (6, 4)
    np.testing.assert_allclose(out.coverage, 4 / 6)
    np.testing.assert_array_equal(out.degree, [4, 1, 2])
    jitted = jax.jit(lambda t, c: feature_coverage(t, c, jnp.array([0]), vocab_size=3).coverage)(tok, codes)
    np.testing.assert_allclose(jitted, 4 / 6)
    assert float(feature_coverage(tok, np.zeros_like(codes), [0]).coverage) == 0.0  # nothing active: 0, not NaN


# ------------------------------------------------------------------------------------ loss_table
def _np_loss_table(tok, losses, is_f, mask):
    """Groupby oracle: a dict of lists per (prev type, next type), 0 = function, 1 = content."""
    groups = {(a, b): [] for a in (0, 1) for b in (0, 1)}
    for b in range(tok.shape[0]):
        for t in range(tok.shape[1] - 1):
            if mask[b, t]:
                groups[(int(not is_f[tok[b, t]]), int(not is_f[tok[b, t + 1]]))].append(losses[b, t])
    mean = np.array([[np.mean(groups[(a, c)]) if groups[(a, c)] else 0.0 for c in (0, 1)] for a in (0, 1)])
    count = np.array([[len(groups[(a, c)]) for c in (0, 1)] for a in (0, 1)])
    total = np.array([[np.sum(groups[(a, c)]) for c in (0, 1)] for a in (0, 1)])
    return mean, count, total


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000))
def test_loss_table_matches_groupby(seed):
    r = np.random.default_rng(seed)
    V, B, T = 12, 3, 8
    tok = r.integers(0, V, (B, T + 1))
    losses = r.exponential(2.0, (B, T)).astype(np.float32)
    is_f = r.random(V) < 0.3
    mask = r.random((B, T)) < 0.8
    mean, count, total = _np_loss_table(tok, losses, is_f, mask)
    out = loss_table(tok, losses, is_f, mask=mask)
    np.testing.assert_allclose(out.mean, mean, rtol=1e-5)
    np.testing.assert_array_equal(out.count, count)
    np.testing.assert_allclose(out.total, total, rtol=1e-5)
    if total.sum() > 0:
        np.testing.assert_allclose(out.share, total / total.sum(), rtol=1e-5)
    ids = loss_table(tok, losses, np.flatnonzero(is_f), mask=mask) if is_f.any() else out  # ids == mask
    np.testing.assert_allclose(ids.total, out.total, rtol=1e-6)


def test_loss_table_under_jit_and_weights():
    tok = np.array([[0, 5, 0, 6]])
    losses = np.array([[1.0, 2.0, 3.0]], np.float32)
    is_f = np.zeros(7, bool)
    is_f[0] = True
    out = jax.jit(lambda t, l: loss_table(t, l, jnp.asarray(is_f)))(tok, losses)
    np.testing.assert_allclose(out.mean, [[0.0, 2.0], [2.0, 0.0]])  # f->c: (1 + 3) / 2; c->f: 2
    np.testing.assert_array_equal(out.count, [[0, 2], [1, 0]])
    half = loss_table(tok, losses, is_f, mask=np.array([[1.0, 0.0, 0.5]]))
    np.testing.assert_allclose(half.total, [[0.0, 2.5], [0.0, 0.0]])


# ------------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="coverage"):
        function_token_set([1, 2], 0.0)
    with pytest.raises(ValueError, match="coverage"):
        function_token_set([1, 2], 1.5)
    with pytest.raises(ValueError, match="sum to 0"):
        function_token_set([0, 0], 0.4)
    with pytest.raises(ValueError, match="non-negative"):
        function_token_set([1, -1], 0.4)
    with pytest.raises(ValueError, match="1-D"):
        function_token_set(np.ones((2, 2)), 0.4)
    with pytest.raises(ValueError, match="vocab_size=3"):
        token_counts([0, 3], 3)
    tok = np.array([0, 1, 2])
    codes = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="dense codes"):
        feature_coverage(tok, codes[:2], [0])
    with pytest.raises(ValueError, match="non-finite"):
        feature_coverage(tok, np.full((3, 4), np.nan, np.float32), [0])
    with pytest.raises(ValueError, match="vocab_size=2"):
        feature_coverage(tok, codes, [0], vocab_size=2)
    with pytest.raises(ValueError, match="token_set ids"):
        feature_coverage(tok, codes, [7], vocab_size=3)
    with pytest.raises(ValueError, match="n_features=2"):
        feature_coverage(tok, (np.zeros((3, 1), np.int32) + 3, np.ones((3, 1), np.float32)), [0], n_features=2)
    with pytest.raises(ValueError, match="sparse codes"):
        feature_coverage(tok, (np.zeros((2, 1), np.int32), np.ones((2, 1), np.float32)), [0])
    with pytest.raises(ValueError, match="empty"):
        feature_coverage(np.zeros((0,), np.int32), np.zeros((0, 4), np.float32), [0], vocab_size=3)
    with pytest.raises(ValueError, match="losses must be float"):
        loss_table(np.zeros((2, 4), np.int32), np.zeros((2, 4), np.float32), np.ones(3, bool))
    with pytest.raises(ValueError, match="token_ids must be int"):
        loss_table(np.zeros((2,), np.int32), np.zeros((1,), np.float32), np.ones(3, bool))
    with pytest.raises(ValueError, match="non-finite"):
        loss_table(np.zeros((1, 3), np.int32), np.array([[1.0, np.nan]], np.float32), np.ones(3, bool))
    with pytest.raises(ValueError, match="V=3"):
        loss_table(np.array([[0, 4, 1]]), np.ones((1, 2), np.float32), np.ones(3, bool))
    with pytest.raises(ValueError, match="mask must be"):
        loss_table(np.zeros((1, 3), np.int32), np.ones((1, 2), np.float32), np.ones(3, bool), mask=np.ones((1, 3)))
    with pytest.raises(ValueError, match=">= 0"):
        loss_table(np.zeros((1, 3), np.int32), np.ones((1, 2), np.float32), np.ones(3, bool), mask=-np.ones((1, 2)))
