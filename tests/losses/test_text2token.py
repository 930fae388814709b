"""Text2Token (P71): data-driven / model-derived token targets and the KL through the LM head of a pooled embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.text2token import (
    data_driven_targets, make_text2token_loss, model_derived_targets, text_embedding, text2token,
    text2token_from_logits, token_idf,
)

CFG = tokjax.ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)


def _params(seed=0):
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    return jax.tree.map(make, tokjax.model.param_specs(CFG), is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec))


_targets = jax.jit(data_driven_targets, static_argnums=1, static_argnames=("stop_ids", "min_count"))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), min_count=st.sampled_from([1, 2]))
def test_data_driven_targets_match_a_counting_loop(seed, min_count):
    r = np.random.default_rng(seed)
    toks = r.integers(0, 12, size=(3, 9))
    lengths = np.array([9, 5, 1])
    idf = r.uniform(0.5, 2.0, size=12).astype(np.float32)
    stop = (0, 1)
    q = np.asarray(_targets(jnp.asarray(toks), 12, lengths=jnp.asarray(lengths), stop_ids=stop, idf=jnp.asarray(idf),
                            min_count=min_count))
    for b in range(3):
        counts = np.bincount(toks[b, :lengths[b]], minlength=12).astype(float)
        raw = np.where((counts >= min_count) & ~np.isin(np.arange(12), stop), counts * idf, 0.0)
        ref = raw / raw.sum() if raw.sum() > 0 else counts / counts.sum()
        np.testing.assert_allclose(q[b], ref, rtol=1e-5, atol=1e-7)


def test_idf_and_model_derived_targets():
    docs = np.array([[0, 1, 2], [0, 3, 3], [0, 4, 5]])
    idf = token_idf(docs, 6)
    assert idf[0] < idf[3] and idf[3] == idf[1]  # a token in every document gets the lowest weight
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 20)), jnp.float32)
    q = np.asarray(model_derived_targets(z, 3))
    assert np.all((q > 0).sum(-1) == 3)
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    top = np.argsort(-np.asarray(z), -1)[:, :3]
    assert np.all(np.take_along_axis(q, top, -1) > 0)


def test_kl_value_gradient_and_minimum():
    r = np.random.default_rng(1)
    z = jnp.asarray(r.normal(size=(3, 8)), jnp.float32)
    q = np.zeros((3, 8), np.float32)
    q[:, :3] = r.dirichlet(np.ones(3), size=3)
    kl = np.asarray(text2token_from_logits(z, jnp.asarray(q)))
    p = np.asarray(jax.nn.softmax(z))
    ref = np.array([sum(q[b, v] * np.log(q[b, v] / p[b, v]) for v in range(8) if q[b, v] > 0) for b in range(3)])
    np.testing.assert_allclose(kl, ref, rtol=1e-5)
    g = jax.grad(lambda z: jnp.sum(text2token_from_logits(z, jnp.asarray(q))))(z)
    np.testing.assert_allclose(g, p - q, atol=1e-6)  # the soft-target cross-entropy gradient
    np.testing.assert_allclose(text2token_from_logits(z, jax.nn.softmax(z)), 0.0, atol=1e-6)


def test_text2token_through_the_model_and_train_signature():
    params = _params()
    toks = jnp.asarray(np.random.default_rng(2).integers(2, 37, size=(3, 10)))
    lengths = jnp.asarray([10, 6, 3])
    q = data_driven_targets(toks, 37, lengths=lengths, stop_ids=(2,))
    fn = make_text2token_loss(stop_ids=(2,))

    @jax.jit  # one compiled program for every quantity compared below
    def run(p, t, q, n):
        loss, _ = text2token(p, CFG, t, q, lengths=n)
        h = tokjax.forward(p, CFG, t, compute_logits=False).hidden
        last = text_embedding(p, CFG, t, lengths=n, pooling="last")
        l2, _ = fn(p, CFG, {"tokens": t, "lengths": n}, None)
        g = jax.grad(lambda p: fn(p, CFG, {"tokens": t, "t2t_targets": q}, None)[0])(p)
        return loss, h, last, l2, g

    loss, h, last, l2, g = run(params, toks, q, lengths)
    e = np.stack([np.asarray(h[b, :int(lengths[b])]).mean(0) for b in range(3)])
    logits = e @ np.asarray(params["embed"]).T  # tied embeddings: the head is the embedding table
    np.testing.assert_allclose(loss, np.mean(text2token_from_logits(jnp.asarray(logits), q)), rtol=1e-4)
    np.testing.assert_allclose(last, np.stack([np.asarray(h[b, int(lengths[b]) - 1]) for b in range(3)]), atol=1e-5)
    np.testing.assert_allclose(l2, loss, rtol=1e-5)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))


@pytest.mark.parametrize("call, msg", [
    (lambda: data_driven_targets(jnp.asarray([[0, 40]]), 37), "tokens must lie"),
    (lambda: data_driven_targets(jnp.asarray([[0, 1]]), 37, stop_ids=(99,)), "stop_ids"),
    (lambda: data_driven_targets(jnp.asarray([[0, 1]]), 37, lengths=jnp.asarray([3])), "lengths"),
    (lambda: data_driven_targets(jnp.asarray([[0, 1]]), 37, min_count=0), "min_count"),
    (lambda: model_derived_targets(jnp.zeros((2, 5)), 6), "top_k"),
    (lambda: text2token_from_logits(jnp.zeros((2, 5)), jnp.zeros((2, 4))), "same shape"),
    (lambda: text_embedding(_params(), CFG, jnp.zeros((2, 3), jnp.int32), pooling="max"), "pooling"),
    (lambda: make_text2token_loss(method="model"), "method"),
])
def test_bad_inputs(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
