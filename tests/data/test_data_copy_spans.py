"""Tests for the copy_spans generator."""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from tokjax.data import copy_spans


def test_basic_shapes_and_copies():
    cs = copy_spans(n=8, length=64, vocab=50, span_len=5, repeats=3, seed=0)
    assert cs.tokens.shape == (8, 64) and cs.tokens.dtype == np.int32
    assert cs.src.shape == cs.dst.shape == (8, 3)
    assert cs.tokens.min() >= 0 and cs.tokens.max() < 50
    for i in range(8):
        for s, d in zip(cs.src[i], cs.dst[i]):
            assert d >= s + 5
            np.testing.assert_array_equal(cs.tokens[i, d:d + 5], cs.tokens[i, s:s + 5])
    assert cs.copy_mask.sum() == 8 * 3 * 5


@given(n=st.integers(0, 4), span=st.integers(1, 6), repeats=st.integers(0, 4),
       extra=st.integers(0, 20), seed=st.integers(0, 2**32))
@settings(max_examples=80, deadline=None)
def test_spans_disjoint_and_in_bounds(n, span, repeats, extra, seed):
    length = 2 * repeats * span + extra
    if length == 0:
        length = 1
    cs = copy_spans(n, length, vocab=7, span_len=span, repeats=repeats, seed=seed)
    for i in range(n):
        cover = np.zeros(length, int)
        for s, d in zip(cs.src[i], cs.dst[i]):
            assert 0 <= s and d + span <= length and s + span <= d
            cover[s:s + span] += 1
            cover[d:d + span] += 1
            assert (cs.tokens[i, s:s + span] == cs.tokens[i, d:d + span]).all()
        assert cover.max(initial=0) <= 1
        assert list(cs.src[i]) == sorted(cs.src[i])


def test_deterministic():
    a = copy_spans(3, 40, 100, 4, 2, seed=9)
    b = copy_spans(3, 40, 100, 4, 2, seed=9)
    c = copy_spans(3, 40, 100, 4, 2, seed=10)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.dst, b.dst)
    assert not np.array_equal(a.tokens, c.tokens)


def test_positions_vary():
    cs = copy_spans(200, 50, 10, 3, 1, seed=0)
    assert len(set(cs.src[:, 0].tolist())) > 10 and len(set(cs.dst[:, 0].tolist())) > 10


@pytest.mark.parametrize("kw", [dict(length=10, span_len=3, repeats=2), dict(vocab=0),
                                dict(span_len=0), dict(repeats=-1), dict(n=-1)])
def test_bad_args(kw):
    args = dict(n=2, length=20, vocab=5, span_len=2, repeats=1)
    args.update(kw)
    with pytest.raises(ValueError):
        copy_spans(**args)
