"""P17 critical tokens / cDPO: chunked contrastive scores and cDPO weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses.critical_tokens import (
    cdpo_weights, contrastive_scores_from_hidden, contrastive_token_scores, make_cdpo_loss,
)
from tokjax.losses.dpo import dpo_loss

CFG = tokjax.ModelConfig(vocab_size=19, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)
POS = tokjax.Model.init(CFG, jax.random.key(1))
NEG = tokjax.Model.init(CFG, jax.random.key(2))


def _naive(tokens, beta_c):
    zp = np.asarray(tokjax.forward(POS.params, CFG, tokens[:, :-1]).logits, np.float64)
    zn = np.asarray(tokjax.forward(NEG.params, CFG, tokens[:, :-1]).logits, np.float64)
    c = (1 + beta_c) * zp - beta_c * zn
    p = np.exp(c - c.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.take_along_axis(p, np.asarray(tokens)[:, 1:, None], -1)[..., 0]


@pytest.mark.parametrize("beta_c,chunk", [(1.0, 5), (0.5, 64)])
def test_chunked_scores_equal_full_softmax_reference(beta_c, chunk):
    toks = np.random.default_rng(0).integers(0, 19, (3, 8)).astype(np.int32)  # N = 21 positions: chunk 5 pads
    s = np.asarray(contrastive_token_scores(POS, NEG, toks, beta_c=beta_c, chunk=chunk))
    np.testing.assert_allclose(s, _naive(toks, beta_c), rtol=2e-5, atol=1e-6)
    assert s.shape == (3, 7) and np.all((s >= 0) & (s <= 1))


@pytest.mark.slow
def test_cdpo_weights_range_no_gradient_and_loss_matches_weighted_dpo():
    toks = np.random.default_rng(1).integers(0, 19, (4, 8)).astype(np.int32)  # 2 chosen, 2 rejected rows
    s = contrastive_token_scores(POS, NEG, toks[2:])
    w = np.asarray(cdpo_weights(s))
    assert w.shape == (4, 7) and np.all(w[:2] == 1) and np.all((w[2:] >= 0) & (w[2:] <= 1))
    np.testing.assert_allclose(w[2:], 1 - np.asarray(s), rtol=1e-6)
    r = np.random.default_rng(2)
    h, wv = jnp.asarray(r.normal(size=(6, 4)), jnp.float32), jnp.asarray(r.normal(size=(4, 9)), jnp.float32)
    g = jax.grad(lambda a, b: jnp.sum(contrastive_scores_from_hidden(a, b, h, wv, jnp.arange(6) % 9)),
                 argnums=(0, 1))(h, wv)
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in g)  # scores are constants to the policy step
    pol, ref = tokjax.Model.init(CFG, jax.random.key(0)).params, tokjax.Model.init(CFG, jax.random.key(3)).params
    batch = {"tokens": toks, "prompt_lengths": np.full((4,), 3, np.int32)}
    in_loss = make_cdpo_loss(ref=(ref, CFG), positive=POS, negative=NEG, method="naive")(pol, CFG, batch)[0]
    precomputed = make_cdpo_loss(ref=(ref, CFG), method="naive")(pol, CFG, {**batch, "weights": w})[0]
    
    def lp(p):
        z = jax.nn.log_softmax(tokjax.forward(p, CFG, toks[:, :-1]).logits, -1)
        return jnp.take_along_axis(z, toks[:, 1:, None], -1)[..., 0]

    m = np.arange(7)[None, :] >= 2
    m = np.broadcast_to(m, (4, 7))
    want = dpo_loss(lp(pol)[:2], lp(ref)[:2], m[:2], lp(pol)[2:], lp(ref)[2:], m[2:], 0.1, rejected_weights=w[2:])
    np.testing.assert_allclose(float(in_loss), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(precomputed), float(want), rtol=1e-5)


def test_bad_inputs():
    other = tokjax.ModelConfig(vocab_size=23, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=10)
    neg2 = tokjax.Model.init(other, jax.random.key(0))
    toks = np.zeros((2, 5), np.int32)
    with pytest.raises(ValueError, match="vocabulary"):
        contrastive_token_scores(POS, neg2, toks)
    with pytest.raises(ValueError, match="vocabulary"):
        make_cdpo_loss(positive=POS, negative=neg2)
    with pytest.raises(ValueError, match="both"):
        make_cdpo_loss(positive=POS)
    with pytest.raises(ValueError, match="beta_c"):
        contrastive_token_scores(POS, NEG, toks, beta_c=-1.0)
    with pytest.raises(ValueError, match="chunk"):
        contrastive_scores_from_hidden(np.zeros((2, 4)), np.zeros((4, 5)), np.zeros((2, 4)), np.zeros((4, 5)),
                                       np.zeros(2, np.int32), chunk=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cdpo_weights(np.full((2, 3), 1.5))
