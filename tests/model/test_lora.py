"""tokjax.model.lora: per-slot LoRA gate on the shared forward (P58's iteration-1 adapter)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.model import KVCache, unstack_layers
from tokjax.model.lora import LORA_TARGETS, init_lora, lora_forward, lora_pairs
from tests.model._models import small_model


def _perturbed(cfg, seed=1, scale=0.1):
    lora = init_lora(cfg, jax.random.key(seed), rank=4, alpha=8.0)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 32))
    lora["layers"] = jax.tree.map(lambda a: a + scale * jax.random.normal(next(keys), a.shape), lora["layers"])
    return lora


@pytest.mark.slow
def test_gate_zero_is_base_bit_for_bit_and_init_is_identity():
    m = small_model()
    x = jax.random.randint(jax.random.key(3), (2, 9), 0, m.cfg.vocab_size)
    base = m(x).logits
    lora = _perturbed(m.cfg)
    assert np.array_equal(lora_forward(m.params, m.cfg, lora, x, jnp.zeros((2, 9), jnp.int32)).logits, base)
    fresh = init_lora(m.cfg, jax.random.key(0))  # B = 0: the adapted model equals the base
    np.testing.assert_allclose(lora_forward(m.params, m.cfg, fresh, x, 1).logits, base, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(lora_forward(m.params, m.cfg, lora, x, 1).logits - base).max()) > 1e-2


@pytest.mark.slow  # gate-zero and the cached per-slot path stay in the default suite
def test_matches_merged_weights_reference():
    """Gate 1 everywhere = the base model with W + scale * A @ B merged into every adapted projection."""
    m = small_model(n_layers=2)
    cfg = m.cfg
    lora = _perturbed(cfg)
    x = jax.random.randint(jax.random.key(4), (2, 7), 0, cfg.vocab_size)
    pairs = lora_pairs(lora)
    merged = dict(m.params)
    layers = dict(m.params["layers"])
    for n, ab in pairs.items():
        a, b = ab["a"], ab["b"]  # [L, *in, r], [L, r, *out]
        ins = a.ndim - 2
        delta = jnp.einsum(a.reshape(a.shape[0], -1, a.shape[-1]), [0, 1, 2], b.reshape(b.shape[0], b.shape[1], -1),
                           [0, 2, 3], [0, 1, 3])
        layers[n] = layers[n] + delta.reshape(layers[n].shape)
        assert ins >= 1
    merged["layers"] = layers
    np.testing.assert_allclose(lora_forward(m.params, cfg, lora, x, 1).logits, tokjax.Model(merged, cfg)(x).logits,
                               rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_per_slot_gate_and_cached_fused_path():
    """A mixed gate: the scanned training path = the cached, unstacked+fused decode path slot by slot."""
    m = small_model()
    cfg = m.cfg
    lora = _perturbed(cfg)
    x = jax.random.randint(jax.random.key(5), (1, 8), 0, cfg.vocab_size)
    gate = jnp.asarray([[0, 1, 0, 0, 1, 1, 0, 1]])
    full = lora_forward(m.params, cfg, lora, x, gate).logits
    params = unstack_layers(m.params, fuse=True)
    cache = KVCache.init(cfg, 1, 16)
    outs = []
    for t in range(8):
        o = lora_forward(params, cfg, lora, x[:, t:t + 1], gate[:, t:t + 1], cache=cache)
        cache = o.cache
        outs.append(o.logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=2e-4, atol=2e-4)


def test_bad_inputs():
    m = small_model()
    cfg = m.cfg
    x = jnp.zeros((2, 5), jnp.int32)
    lora = init_lora(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="gate must be"):
        lora_forward(m.params, cfg, lora, x, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="0 or 1"):
        lora_forward(m.params, cfg, lora, x, jnp.full((2, 5), 0.5))
    with pytest.raises(ValueError, match="rank"):
        init_lora(cfg, jax.random.key(0), rank=0)
    with pytest.raises(ValueError, match="targets"):
        init_lora(cfg, jax.random.key(0), targets=("wq", "w_nope"))
    other = init_lora(cfg.replace(d_model=64, n_heads=4), jax.random.key(0))
    with pytest.raises(ValueError, match="another model"):
        lora_forward(m.params, cfg, other, x, 0)
    assert set(init_lora(cfg, jax.random.key(0))["layers"]) == set(LORA_TARGETS)
