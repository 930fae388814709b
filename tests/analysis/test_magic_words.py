"""P43 magic words: greedy/GCG reachable sets are verified subsets of the exhaustive set (V=64, k<=2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.magic_words import controlled_logits, k_epsilon, reachable, reachable_set
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
    r = reachable(model, X0, no, 2, method="exhaustive")
    assert (r["reachable"], r["prompt"], r["length"]) == (False, None, None)
    assert r["evals"] == 1 + 64 + 64 ** 2 and r["grads"] == 0  # x0 alone, then every prompt of length 1 and 2
    eps = k_epsilon([0, 1, 2, None], [0, 1, 2, 3])
    np.testing.assert_allclose(eps, [0.75, 0.5, 0.25, 0.25])


def test_controlled_logits_match_forward_and_ragged_batches(model):
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, 64, (7, 2))
    full = np.asarray(forward(model.params, CFG, jnp.asarray([list(u) + X0 for u in prompts])).logits[:, -1])
    for bs in (3, 7, 100):  # 3: two full batches and a padded remainder of 1
        np.testing.assert_allclose(controlled_logits(model, X0, prompts, batch_size=bs), full, rtol=1e-5, atol=1e-5)
    empty = controlled_logits(model, X0, np.zeros((1, 0), int))
    np.testing.assert_allclose(empty[0], np.asarray(forward(model.params, CFG, jnp.asarray([X0])).logits[0, -1]),
                               rtol=1e-5, atol=1e-5)


def test_search_budget_counts_and_gcg_lengths(model):
    ex2 = reachable_set(model, X0, 2)
    ex1 = reachable_set(model, X0, 1)
    y = int(np.nonzero(ex2 & ~ex1)[0][0])  # needs exactly 2 tokens
    r = reachable(model, X0, y, 2, method="greedy", top_c=8, batch_size=5)  # 8 candidates: batches of 5 + 3 padded
    assert (r["grads"], r["evals"]) == (2, 1 + 8 + 8)  # y is not in R_1, so greedy runs both steps
    if r["reachable"]:
        assert _argmax(model, r["prompt"]) == y
    r1 = reachable(model, X0, y, 2, method="gcg", top_c=8, steps=2, batch=16, gcg_lengths=[1])
    assert not r1["reachable"]  # GCG at length 1 alone cannot reach a y outside R_1
    assert r1["grads"] == 2 + 2 and r1["evals"] == 1 + 8 + 8 + 2 * 8  # greedy, then 2 GCG steps of all 1*8 swaps


def test_extra_candidates_come_first(model):
    base = _argmax(model, [])
    t, y = next((t, _argmax(model, [t])) for t in range(64) if _argmax(model, [t]) != base)
    r = reachable(model, X0, y, 2, method="greedy", top_c=1, extra_candidates=[t, t])  # duplicates dropped
    assert r == {"reachable": True, "prompt": [t], "length": 1, "evals": 2, "grads": 0}  # no gradient needed
    r = reachable(model, X0, y, 2, method="greedy", top_c=3, extra_candidates=[t])
    assert r["prompt"] is not None and _argmax(model, r["prompt"]) == y and r["grads"] == 1


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
    with pytest.raises(ValueError, match="gcg_lengths"):
        reachable(model, X0, 1, 2, method="gcg", gcg_lengths=[3])
    with pytest.raises(ValueError, match="top_c"):
        reachable(model, X0, 1, 2, top_c=0)
    with pytest.raises(ValueError, match="extra_candidates"):
        reachable(model, X0, 1, 2, top_c=4, extra_candidates=[64])
    with pytest.raises(ValueError, match="prompts must be"):
        controlled_logits(model, X0, [1, 2])
    with pytest.raises(ValueError, match="prompt tokens"):
        controlled_logits(model, X0, [[64]])
