"""memory_cache: cross-attention from the shared forward (issue 23 item 1; P8 MLM-U, P66 FTP).

A decoder forward over queries with a memory cache is checked against a hand-written
cross-attention reference (values and gradients, Causal and Explicit masks), against a plain
forward over prefix + queries (the identity that holds when the memory is each layer's residual
input of the prefix), under jit, per batch row, through decode steps and fork, and on bad input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import Explicit, Inputs, Taps, forward
from tokjax.model import param_shapes
from tokjax.model.memory import _fill, memory_cache, memory_mask

BASE = dict(vocab_size=37, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64, init_scale=0.2)
VARIANTS = {
    "llama-gqa-qkvbias": dict(qkv_bias=True),
    "gpt2": dict(norm="layer", positions="learned", activation="gelu", bias=True, qkv_bias=True, n_kv_heads=None),
}


def _cfg(**kw):
    return tokjax.ModelConfig(**{**BASE, **kw})


def _params(cfg, seed=0):
    """Random params drawn on the host (no compile): weights normal(0, init_scale); norm scales 1 + noise and
    biases nonzero, so the reference checks that they enter the memory's K/V."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        base = 1.0 if name.endswith("['scale']") else 0.0
        std = 0.1 if (base or name.endswith("['bias']") or "['b" in name) else cfg.init_scale
        return jnp.asarray(base + std * rng.normal(size=s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(cfg))


# ------------------------------------------------------------------------------- reference
def _ref_norm(x, p, cfg):
    if cfg.norm == "rms":
        return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * p["scale"]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]


def _ref_rope(x, pos, theta):
    """x [B, N, H, hd] rotated pair (i, i + hd/2) by angle pos * theta^(-2i/hd)."""
    hd = x.shape[-1]
    ang = pos[..., None].astype(jnp.float32) * theta ** (-jnp.arange(0, hd, 2) / hd)  # [B, N, hd/2]
    c, s = jnp.cos(ang)[:, :, None], jnp.sin(ang)[:, :, None]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return jnp.concatenate([a * c - b * s, b * c + a * s], -1)


def reference_logits(params, cfg, queries, qpos, memory, mpos, visible):
    """Cross-attention decoder written out: per layer, q from the queries; k, v from
    [memory through this layer's attn_norm and wk/wv ; the queries' own]; visible [B, T, S + T]."""
    L, H, KV = cfg.n_layers, cfg.n_heads, cfg.kv_heads
    hd = cfg.head_size
    x = queries
    if cfg.positions == "learned":
        x = x + params["pos_embed"][qpos]
    for l in range(L):
        lp = jax.tree.map(lambda a: a[l], params["layers"])
        M = memory[l] if memory.ndim == 4 else memory
        hq, hm = _ref_norm(x, lp["attn_norm"], cfg), _ref_norm(M, lp["attn_norm"], cfg)

        def proj(h, name):
            y = jnp.einsum("bnd,dhk->bnhk", h, lp["w" + name])
            return y + lp["b" + name] if cfg.qkv_bias else y

        q, kq, km = proj(hq, "q"), proj(hq, "k"), proj(hm, "k")
        if cfg.positions == "rope":
            th = cfg.rope_theta
            q, kq, km = _ref_rope(q, qpos, th), _ref_rope(kq, qpos, th), _ref_rope(km, mpos, th)
        k = jnp.repeat(jnp.concatenate([km, kq], 1), H // KV, axis=2)  # query head h reads kv head h // G
        v = jnp.repeat(jnp.concatenate([proj(hm, "v"), proj(hq, "v")], 1), H // KV, axis=2)
        s = jnp.einsum("bthk,bshk->bhts", q, k) / np.sqrt(hd)
        vis = visible[:, None]
        w = jnp.exp(jnp.where(vis, s - jnp.max(jnp.where(vis, s, -1e30), -1, keepdims=True), -jnp.inf))
        w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)  # a query that sees nothing reads zeros
        a = jnp.einsum("bhts,bshk,hkd->btd", w, v, lp["wo"])
        x = x + (a + lp["bo"] if cfg.bias else a)
        h = _ref_norm(x, lp["mlp_norm"], cfg)
        up = h @ lp["w_up"] + (lp["b_up"] if cfg.bias else 0)
        act = jax.nn.silu(h @ lp["w_gate"]) * up if cfg.activation == "swiglu" else jax.nn.gelu(up, approximate=True)
        x = x + act @ lp["w_down"] + (lp["b_down"] if cfg.bias else 0)
    return _ref_norm(x, params["final_norm"], cfg) @ params["embed"].T


def _ours(params, cfg, queries, qpos, memory, mpos, capacity, mask):
    cache = memory_cache(params, cfg, memory, mpos, capacity)
    return forward(params, cfg, Inputs(embeds=queries, positions=qpos), cache=cache, mask=mask).logits


# Everything runs jitted, on one set of shapes where it can, so compiled programs are shared between
# tests (eager forwards compile op by op, which dominated this file's runtime).
B, S, T, CAP = 2, 5, 4, 12
_ours_jit = jax.jit(_ours, static_argnames=("cfg", "capacity"))
_fwd = jax.jit(forward, static_argnames=("cfg", "taps", "compute_logits"))


_ref_jit = jax.jit(reference_logits, static_argnames=("cfg",))


def _weights(seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, BASE["vocab_size"])), jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "ref"))
def _value_and_grads(params, memory, queries, qpos, mpos, mask, w, *, cfg, ref):
    """Returns (logits, d sum(w * logits) / d (params, memory)) of ours (mask: a spec) or the reference
    (mask: bool [B, T, S + T])."""
    def f(p, m):
        logits = (reference_logits(p, cfg, queries, qpos, m, mpos, mask) if ref
                  else _ours(p, cfg, queries, qpos, m, mpos, CAP, mask))
        return jnp.sum(w * logits), logits

    (_, logits), grads = jax.value_and_grad(f, (0, 1), has_aux=True)(params, memory)
    return logits, grads


def _setup(cfg, per_layer=False, seed=0):
    rng = np.random.default_rng(seed)
    D = cfg.d_model
    mshape = (cfg.n_layers, B, S, D) if per_layer else (B, S, D)
    memory = jnp.asarray(rng.normal(size=mshape), jnp.float32)
    queries = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    # non-contiguous positions: the queries interleave with the memory (as MLM-U's do)
    perm = np.stack([rng.permutation(S + T) for _ in range(B)])
    return memory, queries, jnp.asarray(perm[:, :S], jnp.int32), jnp.asarray(perm[:, S:], jnp.int32)


def _masks(seed):
    """{name: (mask spec for ours, the same visibility [B, T, S + T] for the reference)}."""
    rng = np.random.default_rng(seed)
    mem_vis = rng.random((B, S)) < 0.6
    mem_vis[:, 0] = True
    causal = np.concatenate([np.ones((B, T, S), bool), np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))], 2)
    mlmu = np.concatenate([np.broadcast_to(mem_vis[:, None], (B, T, S)),
                           np.broadcast_to(np.eye(T, dtype=bool), (B, T, T))], 2)
    per_q = rng.random((B, T, S + T)) < 0.5  # an arbitrary Explicit mask; query 1 of row 0 sees nothing
    per_q[0, 1] = False
    pad = np.zeros((B, T, CAP - S - T), bool)
    return {
        "causal": (tokjax.Causal(), causal),
        "mlmu-self": (memory_mask(jnp.asarray(mem_vis), T, CAP, queries="self"), mlmu),
        "explicit": (Explicit(jnp.asarray(np.concatenate([per_q, pad], 2))), per_q),
    }


def _assert_trees_close(got, want, what, tol=1e-5):
    """Every leaf within tol * (the largest |entry| of want, at least 1): float32 rounding, not a bug."""
    scale = max([1.0] + [float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(want)])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol * scale,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)} (scale {scale:.3g})")


# ------------------------------------------------------------------------------ (a) oracle
@pytest.mark.slow
def test_decoder_over_memory_cache_equals_cross_attention_reference():
    """Values and gradients (decoder params and memory) within 1e-5 of the reference for the MLM-U form
    (visible memory + self) and an arbitrary Explicit mask (a query that sees nothing included), values
    for Causal; RoPE, GQA, q/k/v biases, one memory shared by the layers."""
    cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    params = _params(cfg, 0)
    memory, queries, mpos, qpos = _setup(cfg)
    w = _weights(3)
    for name, (spec, vis) in _masks(seed=1).items():
        ref, g_ref = _value_and_grads(params, memory, queries, qpos, mpos, jnp.asarray(vis), w, cfg=cfg, ref=True)
        if name == "causal":  # values only (the Explicit cases exercise the same backward pass)
            _assert_trees_close(_ours_jit(params, cfg, queries, qpos, memory, mpos, CAP, spec), ref, name)
            continue
        got, g = _value_and_grads(params, memory, queries, qpos, mpos, spec, w, cfg=cfg, ref=False)
        _assert_trees_close(got, ref, f"{name} logits")
        _assert_trees_close(g, g_ref, f"{name} grad")
        assert np.abs(np.asarray(g[1])).sum() > 0


def test_gpt2_decoder_with_per_layer_memory_equals_reference():
    """Values only: LayerNorm with bias, GELU, learned positions (queries get theirs; the memory's K/V do
    not), biases everywhere, multi-head attention, one memory per layer [L, B, S, D]."""
    cfg = _cfg(**VARIANTS["gpt2"])
    params = _params(cfg, 0)
    memory, queries, mpos, qpos = _setup(cfg, per_layer=True, seed=2)
    for name, (spec, vis) in _masks(seed=2).items():
        got = _ours_jit(params, cfg, queries, qpos, memory, mpos, CAP, spec)
        _assert_trees_close(got, _ref_jit(params, cfg, queries, qpos, memory, mpos, jnp.asarray(vis)), name)


def test_mlmu_decoder_leaks_no_hidden_memory_token():
    """queries='none' (PAST's decoder): changing a hidden memory slot changes no logit at all."""
    cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    params = _params(cfg, 0)
    memory, queries, mpos, qpos = _setup(cfg, seed=4)
    vis = jnp.asarray([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], bool)
    spec = memory_mask(vis, T, CAP, queries="none")
    w = _weights(4)

    def logits(m):
        return np.asarray(_value_and_grads(params, m, queries, qpos, mpos, spec, w, cfg=cfg, ref=False)[0])

    base = logits(memory)
    np.testing.assert_array_equal(logits(jnp.where(vis[:, :, None], memory, memory + 5.0)), base)
    # ... and changing a visible one does change every logit (the test can fail)
    assert np.abs(logits(jnp.where(vis[:, :, None], memory + 1.0, memory)) - base).min() > 0


def test_memory_mask_layout_matches_numpy():
    rng = np.random.default_rng(0)
    B, S, T, cap = 2, 4, 3, 10
    vis = rng.random((B, T, S)) < 0.5
    for mode, qq in (("none", np.zeros((T, T), bool)), ("self", np.eye(T, dtype=bool)),
                     ("causal", np.tril(np.ones((T, T), bool)))):
        want = np.zeros((B, T, cap), bool)
        want[:, :, :S] = vis
        want[:, :, S:S + T] = qq
        got = memory_mask(jnp.asarray(vis), T, cap, queries=mode).visible
        np.testing.assert_array_equal(np.asarray(got), want)
    got = memory_mask(jnp.asarray(vis[:, 0]), T, cap).visible  # [B, S]: the same slots for every query
    np.testing.assert_array_equal(np.asarray(got[:, :, :S]), np.broadcast_to(vis[:, :1], (B, T, S)))


# -------------------------------------------------------------------------- (b) equivalence
def test_per_layer_prefix_residuals_as_memory_equal_plain_forward():
    """Identity: memory[l] = resid_pre of layer l of forward(prefix) (memory [L, B, S, D]) => a Causal
    forward of the rest over memory_cache(memory, positions 0..S-1) gives forward(prefix + rest)'s
    logits on the rest (RoPE, GQA, q/k/v biases)."""
    cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    params = _params(cfg, 0)
    toks = jnp.asarray(np.random.default_rng(5).integers(0, cfg.vocab_size, (B, S + T)))
    full = _fwd(params, cfg, toks, taps=Taps(layers="all", sites=("resid_pre",)))
    memory = full.taps["resid_pre"][:, :, :S]  # [L, B, S, D]
    cache = memory_cache(params, cfg, memory, jnp.arange(S), CAP)
    got = _fwd(params, cfg, toks[:, S:], cache=cache)  # default positions continue at S
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(full.logits[:, S:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions,pos_dims", [("rope", 2), ("learned", 1)])
def test_one_layer_embedded_prefix_as_shared_memory_equals_plain_forward(positions, pos_dims):
    """Identity for one shared memory [B, S, D]: with n_layers=1, memory = embed(prefix) + its position
    embedding is exactly layer 0's residual input, so the logits of forward(prefix + rest) on the rest
    (axial RoPE with pos_dims=2; a learned-position GPT-2 layer, where positions do not enter K/V)."""
    extra = VARIANTS["gpt2"] if positions == "learned" else {}
    cfg = _cfg(**extra, n_layers=1, pos_dims=pos_dims)
    params = _params(cfg, 0)
    rng = np.random.default_rng(6)
    toks = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, S + T)))
    pos = jnp.asarray(rng.integers(0, 9, (B, S + T) + ((pos_dims,) if pos_dims > 1 else ())), jnp.int32)
    full = _fwd(params, cfg, Inputs(tokens=toks, positions=pos)).logits
    memory = tokjax.embed(params, cfg, toks[:, :S]) + tokjax.model.position_embed(params, cfg, pos[:, :S])
    cache = memory_cache(params, cfg, memory, pos[:, :S], CAP)
    got = _fwd(params, cfg, Inputs(tokens=toks[:, S:], positions=pos[:, S:]), cache=cache).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(full[:, S:]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- (c) jit, rows, grads, decode
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_jit_equals_eager_and_rows_are_independent():
    cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    params = _params(cfg, 0)
    memory, queries, mpos, qpos = _setup(cfg, seed=7)
    causal = tokjax.Causal()
    eager = _ours(params, cfg, queries, qpos, memory, mpos, CAP, causal)
    jitted = _ours_jit(params, cfg, queries, qpos, memory, mpos, CAP, causal)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)
    for b in range(B):  # each row alone gives its row of the batch
        alone = _ours_jit(params, cfg, queries[b:b + 1], qpos[b:b + 1], memory[b:b + 1], mpos[b:b + 1], CAP, causal)
        np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(jitted[b]), atol=1e-5)
    poked = _ours_jit(params, cfg, queries, qpos, memory.at[1].add(3.0), mpos, CAP, causal)
    np.testing.assert_array_equal(np.asarray(poked[0]), np.asarray(jitted[0]))  # row 1's memory is not row 0's
    assert np.abs(np.asarray(poked[1] - jitted[1])).max() > 1e-3


def test_encoder_trained_end_to_end_through_memory_cache():
    """Gradients of a decoder loss reach every encoder param through memory_cache (the encoder's final-normed
    output is the memory), equal to those through the reference cross-attention: by the chain rule the
    encoder's VJP of the memory gradient, which the oracle test checks."""
    enc_cfg = _cfg(n_layers=1)
    dec_cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    enc, dec = _params(enc_cfg, 1), _params(dec_cfg, 2)
    toks = jnp.asarray(np.random.default_rng(8).integers(0, enc_cfg.vocab_size, (B, S)))
    _, queries, mpos, qpos = _setup(dec_cfg, seed=8)
    spec, vis = _masks(seed=9)["mlmu-self"]
    w = _weights(8)

    @jax.jit
    def encode(e):
        return forward(e, enc_cfg, toks, compute_logits=False).hidden

    memory, enc_vjp = jax.vjp(encode, enc)
    _, (g_dec, g_mem) = _value_and_grads(dec, memory, queries, qpos, mpos, spec, w, cfg=dec_cfg, ref=False)
    _, (g_dec_ref, g_mem_ref) = _value_and_grads(dec, memory, queries, qpos, mpos, jnp.asarray(vis), w, cfg=dec_cfg,
                                                 ref=True)
    g_enc, = enc_vjp(g_mem)
    g_enc_ref, = enc_vjp(g_mem_ref)
    _assert_trees_close(g_enc, g_enc_ref, "encoder grad")
    _assert_trees_close(g_dec, g_dec_ref, "decoder grad")
    for path, a in jax.tree_util.tree_leaves_with_path(g_enc):
        assert np.abs(np.asarray(a)).max() > 0, f"no gradient reaches encoder param {jax.tree_util.keystr(path)}"


def test_decode_steps_write_after_the_memory_and_fork():
    cfg = _cfg(**VARIANTS["llama-gqa-qkvbias"])
    params = _params(cfg, 0)
    memory, _, mpos, _ = _setup(cfg, seed=10)
    toks = jnp.asarray(np.random.default_rng(10).integers(0, cfg.vocab_size, (B, T)))
    cache = memory_cache(params, cfg, memory, mpos, CAP)
    assert np.asarray(cache.lengths).tolist() == [[S] * B] * cfg.n_layers
    fused = memory_cache(tokjax.model.unstack_layers(params, fuse=True), cfg, memory, mpos, CAP)  # generate's layout
    for a, b in zip(fused.k + fused.v, cache.k + cache.v):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    block = _fwd(params, cfg, toks, cache=cache)  # one call over T queries (positions S..S+T-1)
    c = cache
    for t in range(T):  # the same queries one decode step at a time
        out = _fwd(params, cfg, toks[:, t:t + 1], cache=c)
        np.testing.assert_allclose(np.asarray(out.logits[:, 0]), np.asarray(block.logits[:, t]), atol=1e-5)
        c = out.cache
    assert np.asarray(c.lengths).tolist() == [[S + T] * B] * cfg.n_layers
    for a, b in zip(c.k + c.v, cache.k + cache.v):  # the memory slots are never overwritten
        np.testing.assert_array_equal(np.asarray(a[:, :, :S]), np.asarray(b[:, :, :S]))
    # fork(2): rows b*2 and b*2+1 both decode as row b did
    forked = _fwd(params, cfg, jnp.repeat(toks, 2, 0), cache=cache.fork(2)).logits
    np.testing.assert_allclose(np.asarray(forked[0::2]), np.asarray(block.logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(forked[1::2]), np.asarray(block.logits), atol=1e-5)


def test_compiled_fill_is_projections_only():
    """The fill runs each layer through blocks() for its K/V taps; the unused attention and MLP must be
    removed by the compiler (flops within 1.5x of the K/V projections alone)."""
    cfg = _cfg(n_layers=2)
    params = _params(cfg, 0)
    n = 128
    c = _fill.lower(params, jnp.zeros((B, n, cfg.d_model)), jnp.zeros((B, n), jnp.int32), cfg=cfg, capacity=n,
                    dtype=jnp.dtype("float32")).compile()
    cost = c.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    proj = 2 * B * n * cfg.d_model * 2 * cfg.kv_heads * cfg.head_size * cfg.n_layers
    assert proj <= cost["flops"] < 1.5 * proj, (cost["flops"], proj)


# ----------------------------------------------------------------------------- (d) bad input
def test_bad_inputs_raise_clear_errors():
    cfg = _cfg()
    params = _params(cfg, 0)
    mem = jnp.zeros((2, 5, cfg.d_model))
    pos = jnp.zeros((2, 5), jnp.int32)
    cases = [
        (dict(memory=jnp.zeros((2, 5, 7))), "d_model=32"),
        (dict(memory=jnp.zeros((5, cfg.d_model))), "batch, seq, d_model"),
        (dict(memory=jnp.zeros((3, 2, 5, cfg.d_model))), "n_layers=2"),
        (dict(memory=jnp.zeros((2, 5, cfg.d_model), jnp.int32)), "float"),
        (dict(memory=jnp.zeros((2, 0, cfg.d_model)), positions=jnp.zeros((2, 0), jnp.int32)), "at least one"),
        (dict(capacity=4), "capacity 4 is too small"),
        (dict(capacity=5.0), "Python int"),
        (dict(positions=jnp.zeros((2, 6), jnp.int32)), "positions must be"),
        (dict(positions=jnp.zeros((2, 5, 2), jnp.int32)), "positions must be"),
        (dict(positions=jnp.zeros((2, 5))), "integers"),
        (dict(positions=-jnp.ones((2, 5), jnp.int32)), "memory positions must lie"),
        (dict(dtype=jnp.int32), "float dtype"),
        (dict(cfg="cfg"), "ModelConfig"),
        (dict(params={"embed": params["embed"]}), "'layers'"),
    ]
    for kw, msg in cases:
        args = dict(params=params, cfg=cfg, memory=mem, positions=pos, capacity=8) | kw
        dtype = args.pop("dtype", None)
        with pytest.raises(ValueError, match=msg):
            memory_cache(args["params"], args["cfg"], args["memory"], args["positions"], args["capacity"], dtype=dtype)
    # a per-layer memory whose params hold another number of layers
    with pytest.raises(ValueError, match="params hold 2 layers"):
        memory_cache(params, cfg.replace(n_layers=3), jnp.zeros((2, 5, cfg.d_model)), pos, 8)
    # pos_dims > 1 needs [B, S, P] positions
    cfg2 = _cfg(pos_dims=2, head_dim=8)
    with pytest.raises(ValueError, match="pos_dims=2"):
        memory_cache(_params(cfg2, 0), cfg2, mem, pos, 8)
    # learned positions past max_len
    cfg3 = _cfg(positions="learned")
    with pytest.raises(ValueError, match="memory positions must lie in \\[0, 64\\)"):
        memory_cache(_params(cfg3, 0), cfg3, mem, jnp.full((2, 5), 64, jnp.int32), 8)
    # the decoder's queries must fit after the memory; the Explicit mask must span the cache capacity
    cache = memory_cache(params, cfg, mem, pos, 8)
    with pytest.raises(ValueError, match="capacity 8 is too small"):
        forward(params, cfg, jnp.zeros((2, 4), jnp.int32), cache=cache)
    with pytest.raises(ValueError, match="explicit mask must have shape"):
        forward(params, cfg, jnp.zeros((2, 3), jnp.int32), cache=cache, mask=Explicit(jnp.ones((2, 3, 5), bool)))
    for kw, msg in [(dict(memory_visible=jnp.ones((2, 5))), "bool"), (dict(num_queries=0), ">= 1"),
                    (dict(queries="all"), "queries must be one of"), (dict(capacity=7), "capacity 7 is too small"),
                    (dict(memory_visible=jnp.ones((2, 4, 5), bool)), "num_queries=3")]:
        args = dict(memory_visible=jnp.ones((2, 5), bool), num_queries=3, capacity=8) | kw
        q = args.pop("queries", "self")
        with pytest.raises(ValueError, match=msg):
            memory_mask(args["memory_visible"], args["num_queries"], args["capacity"], queries=q)
