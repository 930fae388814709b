"""The shared forward function: cache equivalence, layer ranges, inputs, taps, hooks, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import Inputs, KVCache, Taps, forward
from tests.model._models import small_model

VARIANTS = {
    "llama": dict(),
    "gpt2": dict(norm="layer", positions="learned", activation="gelu", bias=True, qkv_bias=True),
    "untied-mha": dict(tied_embeddings=False, n_kv_heads=None),
}


def _ragged(key, B, T, V):
    toks = jax.random.randint(key, (B, T), 0, V)
    lens = np.array([T, T - 3, T - 5][:B], np.int32)
    return toks, lens


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v == "untied-mha" else v for v in sorted(VARIANTS)])
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_cached_incremental_equals_full_forward(variant, dtype):
    """Prefill a ragged padded batch, then decode token by token: logits match a full forward of each row.

    float32: within 1e-4 absolute. bfloat16: the cached path and the full forward round at
    different places (their differences reach 0.16 on logits ~6, as large as either one's
    distance to float32), so both are compared with the float32 forward instead: the cached
    path may be at most 1.5x (+0.05) as far from it as the bf16 full forward is.
    """
    m = small_model(**VARIANTS[variant], compute_dtype=dtype)
    m32 = small_model(**VARIANTS[variant], compute_dtype="float32")
    cfg = m.cfg
    B, T, extra = 3, 12, 5
    toks, lens = _ragged(jax.random.key(1), B, T + extra, cfg.vocab_size)
    prompt = np.array(toks[:, :T])
    cache = KVCache.init(cfg, B, 32)
    out = forward(m.params, cfg, prompt, cache=cache)
    prompt_lens = lens - extra
    cache = out.cache.set_lengths(prompt_lens)
    stepped = [[] for _ in range(B)]
    for b in range(B):
        stepped[b].append(np.asarray(out.logits[b, : prompt_lens[b]]))
    for i in range(extra):
        nxt = np.asarray(toks)[np.arange(B), prompt_lens + i][:, None]
        o = forward(m.params, cfg, nxt, cache=cache)
        cache = o.cache
        for b in range(B):
            stepped[b].append(np.asarray(o.logits[b]))
    for b in range(B):
        row = np.asarray(toks)[b : b + 1, : lens[b]]
        full = np.asarray(forward(m.params, cfg, row).logits[0], np.float32)
        got = np.concatenate(stepped[b], 0).astype(np.float32)
        if dtype == "float32":
            np.testing.assert_allclose(got, full, atol=1e-4, rtol=0)
        else:
            ref = np.asarray(forward(m32.params, m32.cfg, row).logits[0])
            assert np.abs(got - ref).max() <= 1.5 * np.abs(full - ref).max() + 0.05, (b, variant)


@pytest.mark.parametrize("k", [1, 2])
def test_layer_ranges_compose_to_the_full_forward(k):
    m = small_model()
    toks = jax.random.randint(jax.random.key(2), (2, 9), 0, m.cfg.vocab_size)
    full = forward(m.params, m.cfg, toks)
    low = forward(m.params, m.cfg, toks, layers=(0, k), compute_logits=False)
    high = forward(m.params, m.cfg, Inputs(hidden=low.hidden), layers=(k, m.cfg.n_layers))
    np.testing.assert_allclose(high.logits, full.logits, atol=1e-5)
    np.testing.assert_allclose(high.hidden, full.hidden, atol=1e-5)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_layer_ranges_with_cache_compose():
    m = small_model()
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(3), (2, 8), 0, cfg.vocab_size)
    full = forward(m.params, cfg, toks).logits
    cache = KVCache.init(cfg, 2, 16)
    a = forward(m.params, cfg, toks[:, :5], cache=cache)
    lo = forward(m.params, cfg, toks[:, 5:], cache=a.cache, layers=(0, 1), compute_logits=False)
    assert np.asarray(lo.cache.lengths).tolist() == [[8, 8], [5, 5], [5, 5]]
    hi = forward(m.params, cfg, Inputs(hidden=lo.hidden), cache=lo.cache, layers=(1, 3))
    np.testing.assert_allclose(hi.logits, full[:, 5:], atol=1e-4)


def test_embeds_input_equals_tokens():
    for variant in ("llama", "gpt2"):
        m = small_model(**VARIANTS[variant])
        toks = jax.random.randint(jax.random.key(4), (2, 7), 0, m.cfg.vocab_size)
        a = forward(m.params, m.cfg, toks).logits
        b = forward(m.params, m.cfg, Inputs(embeds=tokjax.embed(m.params, m.cfg, toks))).logits
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_explicit_positions_shift_rope_consistently():
    """RoPE attention depends only on relative positions: shifting every position leaves logits unchanged."""
    m = small_model()
    toks = jax.random.randint(jax.random.key(5), (1, 6), 0, m.cfg.vocab_size)
    a = forward(m.params, m.cfg, toks).logits
    b = forward(m.params, m.cfg, Inputs(tokens=toks, positions=jnp.arange(6) + 17)).logits
    np.testing.assert_allclose(a, b, atol=1e-4)
    c = forward(m.params, m.cfg, Inputs(tokens=toks, positions=jnp.array([0, 1, 2, 9, 10, 11]))).logits
    assert not np.allclose(a[:, 3:], c[:, 3:], atol=1e-4)  # non-contiguous positions do change things


def test_compute_logits_false_and_head_matches_unembed():
    m = small_model(tied_embeddings=False)
    toks = jax.random.randint(jax.random.key(6), (2, 5), 0, m.cfg.vocab_size)
    out = forward(m.params, m.cfg, toks, compute_logits=False)
    assert out.logits is None
    logits = out.hidden @ tokjax.lm_head(m.params, m.cfg)
    np.testing.assert_allclose(logits, forward(m.params, m.cfg, toks).logits, atol=1e-5)


def test_vocabulary_override_tables():
    m = small_model()
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(7), (1, 5), 0, 10)
    new_embed = m.params["embed"][:10] * 2.0
    new_head = jnp.ones((cfg.d_model, 10))
    bias = jnp.arange(10.0)
    out = forward(m.params, cfg, toks, embedding=new_embed, head=new_head, logit_bias=bias)
    assert out.logits.shape == (1, 5, 10)
    x = tokjax.embed(m.params, cfg, toks, table=new_embed)
    h, _, _ = tokjax.blocks(m.params, cfg, x, jnp.arange(5)[None])
    ref = tokjax.final_norm(m.params, cfg, h) @ new_head + bias
    np.testing.assert_allclose(out.logits, ref, atol=1e-5)


def test_taps_return_requested_layers_only():
    m = small_model()
    toks = jax.random.randint(jax.random.key(8), (2, 5), 0, m.cfg.vocab_size)
    none = forward(m.params, m.cfg, toks)
    assert none.taps == {}
    out = forward(m.params, m.cfg, toks, taps=Taps(layers=(0, 2), sites=("resid_post", "mlp_out")))
    assert out.taps["resid_post"].shape == (2, 2, 5, m.cfg.d_model)
    low = forward(m.params, m.cfg, toks, layers=(0, 1), compute_logits=False)
    np.testing.assert_allclose(out.taps["resid_post"][0], low.hidden, atol=1e-5)
    allt = forward(m.params, m.cfg, toks, taps=Taps(layers="all", sites=("resid_pre",)))
    assert allt.taps["resid_pre"].shape[0] == m.cfg.n_layers
    kv = forward(m.params, m.cfg, toks, taps=Taps(layers=(1,), sites=("keys", "values")))
    assert kv.taps["keys"].shape == (1, 2, 5, m.cfg.kv_heads, m.cfg.head_size)
    with pytest.raises(ValueError, match="unknown tap sites"):
        Taps(layers="all", sites=("queries",))
    with pytest.raises(ValueError, match="unknown hook site"):  # keys/values are taps, not hook sites
        forward(m.params, m.cfg, toks, hooks={"layer.0.keys": lambda x, layer: x})


def test_hooks_patch_the_named_site_only():
    m = small_model()
    toks = jax.random.randint(jax.random.key(9), (2, 5), 0, m.cfg.vocab_size)
    base = forward(m.params, m.cfg, toks, taps=Taps(layers="all"))
    zero = lambda x, layer: jnp.zeros_like(x)  # noqa: E731
    out = forward(m.params, m.cfg, toks, hooks={"layer.1.resid_post": zero}, taps=Taps(layers="all"))
    np.testing.assert_allclose(out.taps["resid_post"][0], base.taps["resid_post"][0], atol=1e-6)
    assert float(jnp.abs(out.taps["resid_post"][1]).max()) == 0.0
    assert not np.allclose(out.logits, base.logits)
    # An identity hook on every layer changes nothing; the layer index is passed.
    seen = []
    ident = lambda x, layer: x + 0.0 * layer  # noqa: E731
    same = forward(m.params, m.cfg, toks, hooks={"layer.*.attn_out": ident})
    np.testing.assert_allclose(same.logits, base.logits, atol=1e-6)
    del seen


def test_hooks_can_patch_in_activations_from_another_run():
    """Activation patching: copy layer-1 resid_post of run A into run B gives A's logits (same tokens after)."""
    m = small_model()
    a = jax.random.randint(jax.random.key(10), (1, 6), 0, m.cfg.vocab_size)
    b = a.at[0, 0].set((a[0, 0] + 1) % m.cfg.vocab_size)
    ta = forward(m.params, m.cfg, a, taps=Taps(layers=(1,))).taps["resid_post"][0]
    patched = forward(m.params, m.cfg, b, hooks={"layer.1.resid_post": lambda x, layer: ta})
    np.testing.assert_allclose(patched.logits, forward(m.params, m.cfg, a).logits, atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: forward(m.params, m.cfg, jnp.array([[1, 2, 99]])), r"\[0, 61\)"),
        (lambda m: forward(m.params, m.cfg, jnp.array([[-1, 2]])), r"\[0, 61\)"),
        (lambda m: forward(m.params, m.cfg, jnp.array([1, 2])), r"\[batch, seq\]"),
        (lambda m: forward(m.params, m.cfg, jnp.array([[1.0, 2.0]])), "integers"),
        (lambda m: forward(m.params, m.cfg, Inputs()), "exactly one"),
        (lambda m: forward(m.params, m.cfg, Inputs(tokens=jnp.zeros((1, 2), int), embeds=jnp.zeros((1, 2, 32)))), "exactly one"),
        (lambda m: forward(m.params, m.cfg, Inputs(embeds=jnp.zeros((1, 2, 31)))), "d_model=32"),
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 2), int), layers=(2, 1)), "layers"),
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 2), int), layers=(0, 4)), "layers"),
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 5), int), cache=KVCache.init(m.cfg, 1, 4)), "capacity"),
        (lambda m: forward(m.params, m.cfg, jnp.zeros((1, 2), int), hooks={"layer.0.foo": lambda x, i: x}), "hook site"),
        (lambda m: Taps(layers="all", sites=("q",)), "tap sites"),
    ],
)
def test_bad_input_raises_clear_value_error(make, match):
    m = small_model()
    with pytest.raises(ValueError, match=match):
        make(m)


def test_forward_jits_and_model_is_a_pytree():
    m = small_model()
    toks = jnp.zeros((1, 4), jnp.int32)
    f = jax.jit(lambda model, t: model(t).logits)
    np.testing.assert_allclose(f(m, toks), m(toks).logits, atol=1e-6)
    leaves = jax.tree.leaves(m)
    assert len(leaves) == len(jax.tree.leaves(m.params))


def test_concrete_inputs_captured_inside_jit_and_vocab_overrides():
    """Validation reads captured constants on the host (no tracing error); an embedding override sets the id range."""
    m = small_model()
    toks = jnp.ones((1, 4), jnp.int32)
    cache = KVCache.init(m.cfg, 1, 8)
    out = jax.jit(lambda p: forward(p, m.cfg, toks, cache=cache).logits)(m.params)
    assert out.shape == (1, 4, m.cfg.vocab_size)
    table = jnp.zeros((m.cfg.vocab_size + 5, m.cfg.d_model))
    big = jnp.full((1, 3), m.cfg.vocab_size + 2)
    assert forward(m.params, m.cfg, big, embedding=table, head=table.T).logits.shape == (1, 3, m.cfg.vocab_size + 5)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, %d\)" % (m.cfg.vocab_size + 5)):
        forward(m.params, m.cfg, big + 10, embedding=table, head=table.T)


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v != "llama" else v for v in sorted(VARIANTS)])
@pytest.mark.parametrize("fuse", [pytest.param(False, marks=pytest.mark.slow), True])  # fuse=True unstacks too
def test_unstacked_and_fused_decode_weights_compute_the_same_forward(variant, fuse):
    """unstack_layers (with fused q/k/v and gate/up when fuse=True) changes the layout, not the values.

    Checked without a cache, with a cache (prefill + one decode token), and stacked again
    (the fused dicts also run under the lax.scan training path)."""
    m = small_model(**VARIANTS[variant])
    toks = jax.random.randint(jax.random.key(1), (2, 7), 0, m.cfg.vocab_size)
    ref = forward(m.params, m.cfg, toks).logits
    up = tokjax.model.unstack_layers(m.params, fuse=fuse)
    assert isinstance(up["layers"], tuple)
    assert ("wqkv" in up["layers"][0]) == fuse and ("wq" in up["layers"][0]) != fuse
    np.testing.assert_allclose(forward(up, m.cfg, toks).logits, ref, atol=1e-5)
    restacked = tokjax.model.stack_layers(up)
    np.testing.assert_allclose(forward(restacked, m.cfg, toks).logits, ref, atol=1e-5)
    cache = KVCache.init(m.cfg, 2, 16)
    out = forward(up, m.cfg, toks[:, :6], cache=cache)
    last = forward(up, m.cfg, toks[:, 6:], cache=out.cache).logits
    np.testing.assert_allclose(jnp.concatenate([out.logits, last], 1), ref, atol=1e-4)
    # unstacking an already unstacked tree fuses it, and fusing twice is a no-op
    again = tokjax.model.unstack_layers(tokjax.model.unstack_layers(m.params), fuse=fuse)
    assert jax.tree.structure(again) == jax.tree.structure(up)
    assert jax.tree.structure(tokjax.model.unstack_layers(up, fuse=True)) == jax.tree.structure(
        tokjax.model.unstack_layers(m.params, fuse=True))
