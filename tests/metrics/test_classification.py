"""auroc and macro_f1 (tokjax.metrics.classification) against brute-force definitions."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.metrics.classification import auroc, macro_f1


def test_auroc_and_macro_f1_match_oracles():
    r = np.random.default_rng(0)
    for _ in range(20):
        n = int(r.integers(2, 30))
        y = r.integers(0, 2, n)
        y[:2] = (0, 1)
        s = r.integers(0, 5, n).astype(float)  # many ties
        pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for (a, ya), (b, yb) in
                 itertools.product(zip(s, y), repeat=2) if ya == 1 and yb == 0]
        assert auroc(s, y) == pytest.approx(np.mean(pairs))
        p = r.integers(0, 2, n)
        f1 = []
        for c in (0, 1):
            tp, fp, fn = np.sum((p == c) & (y == c)), np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
        assert macro_f1(p, y) == pytest.approx(np.mean(f1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=2, max_size=40))
def test_auroc_is_symmetric_under_label_flip(pairs):
    s = np.array([p[0] for p in pairs], float)
    y = np.array([p[1] for p in pairs])
    if y.min() == y.max():
        return
    assert auroc(s, y) + auroc(s, 1 - y) == pytest.approx(1.0)
    assert auroc(-s, y) == pytest.approx(1.0 - auroc(s, y))


def test_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0.0, 1.0])
    with pytest.raises(ValueError, match="\\[N\\]"):
        auroc([[0.1, 0.2]], [[0, 1]])
    with pytest.raises(ValueError, match="0/1"):
        macro_f1([0, 2], [0, 1])
