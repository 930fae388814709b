"""P77 entity binding: prompt layout, counterfactual cue separation, interchange = patching.patch, mixing-model recovery."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tokjax.analysis.entity_binding import (
    agreement, binding_prompts, classify, counterfactuals, fit_mixing_model, interchange, js_divergence,
    mixing_logits,
)
from tokjax.analysis.patching import capture, patch
from tokjax.model.forward import forward

CFG = tokjax.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_len=64, init_scale=0.3)
ENT, ATT = list(range(10, 20)), list(range(30, 40))
PIECES = dict(prefix=[1], relation=[2], separator=[3], end=[4], query_prefix=[5, 2], query_suffix=[6, 7])


def _prompts(n, N, seed=0):
    return binding_prompts(n, N, ENT, ATT, key=jax.random.key(seed), **PIECES)


def test_binding_prompts_layout():
    b = _prompts(4, 8)
    t, E, A, q = (np.asarray(b[x]) for x in ("tokens", "entities", "attributes", "query"))
    assert t.shape == (8, 1 + 4 * 4 + 2 + 1 + 2)
    np.testing.assert_array_equal(q, np.arange(8) % 4)
    for r in range(8):
        assert len(set(E[r])) == 4 and set(E[r]) <= set(ENT) and len(set(A[r])) == 4 and set(A[r]) <= set(ATT)
        expect = [1]
        for g in range(4):
            expect += [E[r, g], 2, A[r, g], 3 if g < 3 else 4]
        expect += [5, 2, A[r, q[r]], 6, 7]
        np.testing.assert_array_equal(t[r], expect)
        assert b["answer"][r] == E[r, q[r]]
    a = binding_prompts(2, 2, ENT, ATT, key=jax.random.key(0), order="attribute_first", **PIECES)
    t, E, A = (np.asarray(a[x]) for x in ("tokens", "entities", "attributes"))
    np.testing.assert_array_equal(t[1], [1, A[1, 0], 2, E[1, 0], 3, A[1, 1], 2, E[1, 1], 4, 5, 2, A[1, 1], 6, 7])


@settings(max_examples=6, deadline=None)
@given(n=st.sampled_from([3, 5]), seed=st.integers(0, 10_000))
def test_counterfactual_cues_point_to_distinct_groups(n, seed):
    b = _prompts(n, 6, seed)
    c = counterfactuals(b, key=jax.random.key(seed + 1))
    E, A, cE, cA = (np.asarray(x) for x in (b["entities"], b["attributes"], c["entities"], c["attributes"]))
    p, k, i, q = (np.asarray(c[x]) for x in "pkiq")
    for r in range(6):
        assert len({p[r], k[r], i[r]}) == 3
        if n >= 4:
            assert q[r] not in {p[r], k[r], i[r]}
        assert sorted(cE[r]) == sorted(E[r]) and sorted(cA[r]) == sorted(A[r])
        assert cE[r, p[r]] == E[r, i[r]] and cA[r, p[r]] == A[r, k[r]]  # reflexive -> i, lexical -> k
        assert c["tokens"][r, c["query_pos"]] == A[r, k[r]] and c["answer"][r] == E[r, i[r]]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_interchange_matches_patching_patch_and_is_identity_on_itself():
    m = tokjax.Model.init(CFG, jax.random.key(0))
    b = _prompts(4, 5)
    c = counterfactuals(b, key=jax.random.key(3))
    got = interchange(m, b["tokens"], c["tokens"], b["entities"], layers=[0, 1])
    acts = capture(m, c["tokens"], "layer.*.resid_pre")["layer.*.resid_pre"]
    T = b["tokens"].shape[1]
    for j, l in enumerate([0, 1]):
        ref = patch(m, b["tokens"], {f"layer.{l}.resid_pre": (jnp.asarray([T - 1]), acts[l][:, T - 1:])}).logits[:, -1]
        np.testing.assert_allclose(got[j], jnp.take_along_axis(ref, b["entities"], 1), atol=1e-4)
    same = interchange(m, b["tokens"], b["tokens"], b["entities"], layers=[1])
    clean = forward(m.params, CFG, b["tokens"]).logits[:, -1]
    np.testing.assert_allclose(same[0], jnp.take_along_axis(clean, b["entities"], 1), atol=1e-4)
    assert not np.allclose(got[1], same[0], atol=1e-3)  # patching a different prompt does change the output


def test_classify_order():
    out = classify(jnp.asarray([0, 1, 2, 3, 4, 0]), [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 0], [2] * 6, [3] * 6)
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, 1])


@pytest.mark.slow
def test_fit_mixing_model_recovers_planted_oracle():
    n = 5
    grid = np.array(list(itertools.product(range(n), repeat=3)))
    p, k, i = (jnp.asarray(grid[:, j]) for j in range(3))
    oracle = {"w_pos": jnp.float32(2.5), "sigma": jnp.asarray([0.6, 1.5, -1.2]),
              "gate_k": jnp.asarray([1.0, 0.5, 0.8, 1.2, 2.0]), "gate_i": jnp.asarray([0.3, 1.1, 0.7, 0.4, 1.5])}
    Y = jax.nn.softmax(mixing_logits(oracle, p, k, i), -1)
    prm, loss = fit_mixing_model(p, k, i, Y, steps=2000)
    assert float(loss[-1]) < 1e-5 < float(loss[0])
    for name in ("w_pos", "gate_k", "gate_i"):
        np.testing.assert_allclose(prm[name], oracle[name], atol=0.05)
    x = np.arange(n) / n
    sig = lambda s: np.abs(s[0] + s[1] * x + s[2] * x * x)  # noqa: E731  (only sigma^2 is identified)
    np.testing.assert_allclose(sig(np.asarray(prm["sigma"])), sig(np.asarray(oracle["sigma"])), atol=0.05)
    # the positional-only model cannot explain the lexical/reflexive spikes
    pos, _ = fit_mixing_model(p, k, i, Y, terms=(1.0, 0.0, 0.0), steps=500)
    full_ag = agreement(jax.nn.softmax(mixing_logits(prm, p, k, i), -1), Y).mean()
    pos_ag = agreement(jax.nn.softmax(mixing_logits(pos, p, k, i, (1.0, 0.0, 0.0)), -1), Y).mean()
    assert full_ag > 0.999 and pos_ag < full_ag - 0.02


def test_agreement_is_one_minus_js_bits():
    P = jnp.asarray([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    Q = jnp.asarray([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.3, 0.2]])
    a = np.asarray(agreement(P, Q))
    assert a[0] == pytest.approx(1.0) and a[1] == pytest.approx(0.0, abs=1e-6)
    M = (np.asarray(P[2]) + np.asarray(Q[2])) / 2
    kl = lambda x: np.sum(x * np.log2(x / M))  # noqa: E731
    assert a[2] == pytest.approx(1 - 0.5 * (kl(np.asarray(P[2])) + kl(np.asarray(Q[2]))), abs=1e-5)
    assert np.all(np.isfinite(js_divergence(P, Q)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="fewer than n_groups"):
        binding_prompts(12, 2, ENT, ATT, key=jax.random.key(0))
    with pytest.raises(ValueError, match="repeated"):
        binding_prompts(2, 2, [10, 10, 11], ATT, key=jax.random.key(0))
    with pytest.raises(ValueError, match="query_groups"):
        binding_prompts(3, 2, ENT, ATT, key=jax.random.key(0), query_groups=[0, 3])
    with pytest.raises(ValueError, match="order"):
        binding_prompts(2, 2, ENT, ATT, key=jax.random.key(0), order="sideways")
    with pytest.raises(ValueError, match="n_groups >= 3"):
        counterfactuals(_prompts(2, 2), key=jax.random.key(0))
    m = tokjax.Model.init(CFG, jax.random.key(0))
    b = _prompts(3, 2)
    with pytest.raises(ValueError, match="layers"):
        interchange(m, b["tokens"], b["tokens"], b["entities"], layers=[5])
    with pytest.raises(ValueError, match="position"):
        interchange(m, b["tokens"], b["tokens"], b["entities"], position=99)
    with pytest.raises(ValueError, match="sum to 1"):
        fit_mixing_model([0], [0], [0], [[0.5, 0.2]])
    with pytest.raises(ValueError, match="index the n=2"):
        fit_mixing_model([0], [2], [0], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="same shape|one shape"):
        agreement(jnp.ones((2, 3)) / 3, jnp.ones((2, 2)) / 2)
