"""P18 ReAGent (planted model: only positions 3 and 7 matter), the attribution baselines and Soft-NS / Soft-NC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.attribution import (
    ATTRIBUTIONS, attribute, hellinger_sq, leave_one_out, soft_metrics,
)
from tokjax.analysis.reagent import reagent

V, T = 32, 10
_C = jax.random.normal(jax.random.key(1), (V * V, V))


def planted(tokens):
    """Next-token logits [C, V] that depend only on the pair of tokens at positions 3 and 7 (jointly)."""
    return 4.0 * _C[tokens[:, 3] * V + tokens[:, 7]]


PROMPT = jnp.asarray([5, 1, 9, 2, 14, 3, 8, 11, 0, 6])


def test_planted_reagent_ranks_positions_3_and_7_top_2():
    out = reagent(planted, PROMPT, top_n=2, top_k=1, chains=5, overlap=3, max_steps=300, key=jax.random.key(0))
    top2 = set(np.argsort(-np.asarray(out["importance"]))[:2].tolist())
    assert top2 == {3, 7}
    assert bool(jnp.all(out["stopped"])) and int(out["steps"]) < 300
    assert np.flatnonzero(np.asarray(out["rationale"])).tolist() == [3, 7]
    assert out["importance"].shape == (T,) and float(jnp.sum(out["importance"])) == pytest.approx(1.0, abs=1e-5)
    assert int(out["target"]) == int(jnp.argmax(planted(PROMPT[None])[0]))


def test_unigram_sampler_and_runtime_hyperparameters():
    counts = jnp.arange(V, dtype=jnp.float32) + 1.0
    a = reagent(planted, PROMPT, sampler="unigram", unigram=counts, top_n=2, top_k=1, max_steps=300,
                key=jax.random.key(3))
    assert set(np.argsort(-np.asarray(a["importance"]))[:2].tolist()) == {3, 7}
    # max_steps is a runtime array: a 1-step run stops early without recompiling
    b = reagent(planted, PROMPT, top_n=2, top_k=1, max_steps=1, key=jax.random.key(3))
    assert int(b["steps"]) == 1


def _tiny():
    cfg = tokjax.ModelConfig(vocab_size=29, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=16,
                             init_scale=0.3)
    return tokjax.Model.init(cfg, jax.random.key(0))


@pytest.mark.slow  # ~15 s; the planted ReAGent test stays fast
def test_soft_metrics_extremes_and_hellinger():
    m = _tiny()
    toks = jnp.asarray([3, 7, 1, 20, 5, 9])
    full = soft_metrics(m, toks, jnp.ones(6), samples=2)
    assert float(full["soft_ns"]) == pytest.approx(1.0, abs=1e-5) and float(full["soft_nc"]) == pytest.approx(1.0, abs=1e-5)
    none = soft_metrics(m, toks, jnp.zeros(6))
    assert float(none["soft_ns"]) == pytest.approx(0.0, abs=1e-6) and float(none["soft_nc"]) == pytest.approx(0.0, abs=1e-6)
    p, q = jnp.asarray([0.5, 0.5]), jnp.asarray([1.0, 0.0])
    assert float(hellinger_sq(p, q)) == pytest.approx(((np.sqrt(0.5) - 1) ** 2 + 0.5) / np.sqrt(2))


@pytest.mark.slow
def test_every_baseline_is_a_distribution():
    m = _tiny()
    toks = jnp.asarray([3, 7, 1, 20, 5, 9])
    for method in ATTRIBUTIONS:
        imp = attribute(m, toks, method)
        assert imp.shape == (6,) and bool(jnp.all(jnp.isfinite(imp)))
        assert float(jnp.sum(imp)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_leave_one_out_matches_naive():
    m = _tiny()
    toks = jnp.asarray([3, 7, 1, 20, 5, 9])
    # leave-one-out against a per-position loop over forwards with one embedding zeroed
    e = m.params["embed"][toks]
    probs = lambda x: jax.nn.softmax(m(tokjax.model.Inputs(embeds=x[None])).logits[0, -1])  # noqa: E731
    y = int(jnp.argmax(probs(e)))
    raw = [float(probs(e)[y] - probs(e.at[i].set(0.0))[y]) for i in range(6)]
    np.testing.assert_allclose(leave_one_out(m, toks), jax.nn.softmax(jnp.asarray(raw)), atol=1e-5)


@pytest.mark.parametrize(
    "kw, match",
    [(dict(sampler="roberta"), "sampler"), (dict(sampler="unigram"), "unigram="), (dict(ratio=1.5), "ratio"),
     (dict(top_k=0), "top_k"), (dict(overlap=9), "overlap"), (dict(chains=0), "chains"),
     (dict(allowed=jnp.zeros(V, bool)), "allowed")],
)
def test_bad_input_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        reagent(planted, PROMPT, **kw)
    with pytest.raises(ValueError, match="token ids"):
        reagent(planted, jnp.asarray([1, 99]))
