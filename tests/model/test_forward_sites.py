"""The per-head ``attn_heads`` site (tap and hook) and the ``attn_probs`` tap of the shared forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import attention as attn_lib
from tokjax.model.cache import KVCache
from tokjax.model.forward import HOOK_SITES, TAP_SITES, Taps, forward, layer_weights

from tests.model._models import small_model


def _toks(m, B=2, T=7, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, m.cfg.vocab_size)


def test_site_lists_are_consistent():
    assert set(HOOK_SITES) <= set(TAP_SITES)
    assert "attn_heads" in HOOK_SITES and "attn_probs" in TAP_SITES and "attn_probs" not in HOOK_SITES


@pytest.mark.slow
def test_attn_heads_times_wo_is_attn_out():
    m = small_model()
    toks = _toks(m)
    out = forward(m.params, m.cfg, toks, taps=Taps(layers="all", sites=("attn_heads", "attn_out")))
    heads, ao = out.taps["attn_heads"], out.taps["attn_out"]
    assert heads.shape == (m.cfg.n_layers, 2, 7, m.cfg.n_heads, m.cfg.head_size)
    for i in range(m.cfg.n_layers):
        wo = layer_weights(m.params, i)["wo"]
        np.testing.assert_allclose(jnp.einsum("bthk,hkd->btd", heads[i], wo), ao[i], atol=1e-5)


def test_attn_probs_are_causal_distributions_and_reproduce_attn_heads():
    m = small_model()
    toks = _toks(m)
    out = forward(m.params, m.cfg, toks, taps=Taps(layers=(0, 2), sites=("attn_probs", "attn_heads", "values")))
    p = np.asarray(out.taps["attn_probs"])
    assert p.shape == (2, 2, m.cfg.n_heads, 7, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.all(p[..., np.triu_indices(7, 1)[0], np.triu_indices(7, 1)[1]] == 0.0)  # nothing after the query
    # probs @ values (grouped-query: head h reads kv head h // G) is the per-head output
    G = m.cfg.n_heads // m.cfg.kv_heads
    v = np.repeat(np.asarray(out.taps["values"]), G, axis=3)  # [n, B, T, H, hd]
    np.testing.assert_allclose(np.einsum("nbhts,nbshd->nbthd", p, v), out.taps["attn_heads"], atol=1e-5)


def test_untapped_forward_is_bit_identical_and_tapped_matches():
    m = small_model()
    toks = _toks(m, T=9)
    base = forward(m.params, m.cfg, toks)
    # an identity attn_heads hook leaves the untapped forward bit-identical
    same = forward(m.params, m.cfg, toks, hooks={"layer.*.attn_heads": lambda x, layer: x})
    np.testing.assert_array_equal(base.logits, same.logits)
    tapped = forward(m.params, m.cfg, toks, taps=Taps(layers="all", sites=("attn_probs",)))
    np.testing.assert_allclose(tapped.logits, base.logits, atol=1e-5)
    # blocked causal attention (T > block) and the unblocked path with probs agree
    q = jax.random.normal(jax.random.key(0), (1, 11, 4, 8))
    k = jax.random.normal(jax.random.key(1), (1, 11, 2, 8))
    blocked = attn_lib.causal_attend(q, k, k, block=4, fused=False)
    full, probs = attn_lib.attend(q, k, k, attn_lib.build_mask(attn_lib.Causal(), 1, 11), return_probs=True)
    np.testing.assert_allclose(blocked, full, atol=1e-5)
    assert probs.shape == (1, 4, 11, 11)


@pytest.mark.slow  # the causal-distribution test keeps attn_probs in the default suite
def test_attn_probs_with_cache_and_scan_vs_loop_paths():
    m = small_model()
    toks = _toks(m, B=1, T=5)
    nocache = forward(m.params, m.cfg, toks, taps=Taps(layers=(1,), sites=("attn_probs",))).taps["attn_probs"]
    cached = forward(m.params, m.cfg, toks, cache=KVCache.init(m.cfg, 1, 8),
                     taps=Taps(layers=(1,), sites=("attn_probs",))).taps["attn_probs"]
    assert cached.shape == (1, 1, m.cfg.n_heads, 5, 8)  # S = the cache capacity
    np.testing.assert_allclose(cached[..., :5], nocache, atol=1e-5)
    assert float(jnp.abs(cached[..., 5:]).max()) == 0.0


def test_attn_heads_hook_ablates_one_head():
    m = small_model()
    toks = _toks(m)

    def kill(x, layer):
        return x.at[:, :, 2].set(0.0)

    base = forward(m.params, m.cfg, toks, taps=Taps(layers="all", sites=("attn_heads",)))
    out = forward(m.params, m.cfg, toks, hooks={"layer.1.attn_heads": kill}, taps=Taps(layers="all", sites=("attn_heads",)))
    h0, h1 = base.taps["attn_heads"], out.taps["attn_heads"]
    np.testing.assert_array_equal(h1[0], h0[0])  # layer 0 untouched
    assert float(jnp.abs(h1[1][:, :, 2]).max()) == 0.0
    np.testing.assert_array_equal(h1[1][:, :, :2], h0[1][:, :, :2])
    assert float(jnp.abs(out.logits - base.logits).max()) > 1e-4  # the ablation reaches the output


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 2), int), hooks={"layer.0.attn_probs": lambda x, i: x}),
         "tap-only site"),
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 2), int), hooks={"layer.0.attn_head": lambda x, i: x}),
         "unknown hook site"),
        (lambda m: Taps(layers="all", sites="attn_probs"), "tuple of site names"),
        (lambda m: Taps(layers="all", sites=("attn_prob",)), "unknown tap sites"),
    ],
)
def test_bad_sites_raise_clear_errors(make, match):
    m = small_model()
    with pytest.raises(ValueError, match=match):
        make(m)
