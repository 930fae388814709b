"""P43 magic words: greedy/GCG reachable sets are verified subsets of the exhaustive set (V=64, k<=2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.magic_words import k_epsilon, reachable, reachable_set
from tokjax.model.forward import forward

CFG = tokjax.ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_len=16, init_scale=1.0)
X0 = [5, 17, 40]


@pytest.fixture(scope="module")
def model():
    return tokjax.Model.init(CFG, jax.random.key(0))


def _argmax(m, u):
    return int(jnp.argmax(forward(m.params, CFG, jnp.asarray([list(u) + X0])).logits[0, -1]))


def test_greedy_is_a_subset_of_exhaustive(model):
    ex1, ex2 = reachable_set(model, X0, 1), reachable_set(model, X0, 2)
    assert ex1.sum() >= 3 and ex2.sum() > ex1.sum() and not (ex1 & ~ex2).any()  # R_1 within R_2, grows with k
    gr1 = reachable_set(model, X0, 1, method="greedy")
    np.testing.assert_array_equal(gr1, ex1)  # k=1 greedy over all V candidates is exhaustive
    gr2 = reachable_set(model, X0, 2, method="greedy")
    assert not (gr2 & ~ex2).any() and gr2.sum() > gr1.sum()


@pytest.mark.slow
def test_gcg_is_a_subset_of_exhaustive_with_recall(model):
    ex2 = reachable_set(model, X0, 2)
    unreach = np.nonzero(~ex2)[0][:3]
    targets = np.concatenate([np.nonzero(ex2)[0], unreach])
    gcg = reachable_set(model, X0, 2, method="gcg", targets=targets, top_c=16, steps=8, batch=32, restarts=3)
    assert not (gcg & ~ex2).any()
    assert gcg[ex2].mean() >= 0.8
    for y in np.nonzero(gcg)[0][:5]:  # witnesses are real
        r = reachable(model, X0, int(y), 2, method="gcg", top_c=16, steps=8, batch=32, restarts=3)
        assert r["reachable"] and _argmax(model, r["prompt"]) == y and r["length"] == len(r["prompt"])


def test_exhaustive_witness_and_k_epsilon(model):
    ex2 = reachable_set(model, X0, 2)
    y = int(np.nonzero(ex2)[0][-1])
    r = reachable(model, X0, y, 2, method="exhaustive")
    assert r["reachable"] and _argmax(model, r["prompt"]) == y
    no = int(np.nonzero(~ex2)[0][0])
    assert reachable(model, X0, no, 2, method="exhaustive") == {"reachable": False, "prompt": None, "length": None}
    eps = k_epsilon([0, 1, 2, None], [0, 1, 2, 3])
    np.testing.assert_allclose(eps, [0.75, 0.5, 0.25, 0.25])


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="k must be"):
        reachable(model, X0, 1, -1)
    with pytest.raises(ValueError, match="unknown method"):
        reachable(model, X0, 1, 1, method="beam")
    with pytest.raises(ValueError, match="y must be"):
        reachable(model, X0, 64, 1)
    with pytest.raises(ValueError, match="x0"):
        reachable(model, [], 1, 1)
    with pytest.raises(ValueError, match="too large"):
        reachable_set(model, X0, 4)
    with pytest.raises(ValueError, match="empty"):
        k_epsilon([], [1])
