"""Cut cross-entropy (P29) against the naive reference and optax: values, gradients, stats, bad input.

Tolerances: float32 inputs compare at rtol=atol=2e-5 (different summation orders only); bfloat16
inputs at rtol=atol=3e-2 relative to the gradient's scale, because the backward matmuls of both
implementations round their float32 cotangents to bfloat16 at different points.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.losses import cross_entropy, cut_cross_entropy, head_stats

F32_TOL = dict(rtol=2e-5, atol=2e-5)


def _problem(seed, N, D, V, *, dtype=jnp.float32, n_ignored=0, scale=1.0):
    """Returns (h, w, y, weights, bias) drawn with NumPy (no per-shape eager JAX compiles)."""
    r = np.random.default_rng(seed * 7919 + N * 131 + D * 17 + V)
    h = jnp.asarray(r.normal(size=(N, D)) * scale, jnp.float32).astype(dtype)
    w = jnp.asarray(r.normal(size=(D, V)) / np.sqrt(D), jnp.float32).astype(dtype)
    y = r.integers(0, V, size=N)
    if n_ignored:
        y[r.permutation(N)[:n_ignored]] = -100
    weights = jnp.asarray(r.uniform(0.1, 2.0, size=N), jnp.float32)
    bias = jnp.asarray(r.normal(size=V) * 0.5, jnp.float32)
    return h, w, jnp.asarray(y, jnp.int32), weights, bias


def _scalar_loss(fn, h, w, b, y, weights, cot, kw):
    kk = dict(kw)
    if b is not None:
        kk["bias"] = b
    if weights is not None:
        kk["weights"] = weights
    loss = fn(h, w, y, **kk)
    return (jnp.sum(loss * cot) if loss.ndim else loss), loss


@functools.partial(jax.jit, static_argnames=("block", "kw"))
def _compare(h, w, y, weights, bias, cot, *, block, kw):
    """Returns ((naive loss, naive grads), (cut loss, cut grads)) in ONE compiled program (fast tests)."""
    kw = dict(kw)
    argnums = (0, 1, 2) if bias is not None else (0, 1)
    out = []
    for fn in (cross_entropy, functools.partial(cut_cross_entropy, block_size=block)):
        (_, loss), grads = jax.value_and_grad(
            lambda h, w, b: _scalar_loss(fn, h, w, b, y, weights, cot, kw), argnums=argnums, has_aux=True
        )(h, w, bias)
        out.append((loss, grads))
    return out


def _check_equal(h, w, y, *, block, weights=None, bias=None, cot=None, tol=F32_TOL, **kw):
    cot = jnp.ones(y.shape) if cot is None else cot
    (ln, gn), (lc, gc) = _compare(h, w, y, weights, bias, cot, block=block, kw=tuple(sorted(kw.items())))
    assert_close(lc, ln, **tol)
    for a, b in zip(gc, gn):
        assert_close(a, b, **tol)


def assert_close(a, b, **tol):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)


# ----------------------------------------------------------------------------- equivalence
@settings(max_examples=14)
@given(
    N=st.integers(1, 9), D=st.integers(1, 6), V=st.integers(1, 40), block=st.integers(1, 17),
    reduction=st.sampled_from(["mean", "sum", "none"]), use_weights=st.booleans(), ignored=st.integers(0, 3),
    softcap=st.sampled_from([None, 2.5]), smoothing=st.sampled_from([0.0, 0.15]),
    zl=st.sampled_from([0.0, 1e-2]), use_bias=st.booleans(), seed=st.integers(0, 3),
)
@pytest.mark.slow
def test_cut_equals_naive_value_and_gradient(N, D, V, block, reduction, use_weights, ignored, softcap, smoothing,
                                             zl, use_bias, seed):
    h, w, y, weights, bias = _problem(seed, N, D, V, n_ignored=min(ignored, N), scale=2.0)
    cot = jnp.asarray(np.random.default_rng(seed).normal(size=N), jnp.float32)
    _check_equal(h, w, y, block=block, weights=weights if use_weights else None, bias=bias if use_bias else None,
                 cot=cot, reduction=reduction, softcap=softcap, label_smoothing=smoothing, z_loss=zl)


@pytest.mark.parametrize("V,block,reduction", [(1000, 128, "mean"), (1000, 4096, "sum"), (777, 100, "none")])
def test_cut_equals_naive_larger_vocab(V, block, reduction):
    h, w, y, weights, _ = _problem(0, 24, 16, V, n_ignored=5, scale=3.0)
    _check_equal(h, w, y, block=block, weights=weights, cot=jnp.linspace(-1.0, 1.0, 24), reduction=reduction,
                 softcap=30.0, label_smoothing=0.1, z_loss=1e-3)


def test_per_token_weights_use_the_full_cotangent():
    # The fused-kernel bug class (Liger #968/#678): the per-token cotangent read as a scalar.
    # Weighting token i by c_i must scale exactly its own gradient rows.
    h, w, y, _, _ = _problem(1, 6, 5, 50)
    cot = jnp.array([0.0, 1.0, -2.0, 0.5, 0.0, 3.0])

    @jax.jit
    def grads(h):
        g_none = jax.grad(lambda h: jnp.sum(cut_cross_entropy(h, w, y, reduction="none", block_size=7) * cot))(h)
        g_w = jax.grad(lambda h: cut_cross_entropy(h, w, y, weights=cot, reduction="sum", block_size=7))(h)
        g_ref = jax.grad(lambda h: jnp.sum(cross_entropy(h, w, y, reduction="none") * cot))(h)
        return g_none, g_w, g_ref

    g_none, g_w, g_ref = grads(h)
    assert_close(g_none, g_ref, **F32_TOL)
    assert_close(g_w, g_ref, **F32_TOL)
    assert np.all(np.asarray(g_none)[[0, 4]] == 0)


def test_matches_optax_and_smooth_labels():
    h, w, y, _, _ = _problem(2, 10, 8, 33)
    eps = 0.2

    @jax.jit
    def run(h, w):
        return (cut_cross_entropy(h, w, y, reduction="none", block_size=8),
                cut_cross_entropy(h, w, y, reduction="none", label_smoothing=eps, block_size=8),
                cross_entropy(h, w, y, reduction="none", label_smoothing=eps))

    plain, ls_cut, ls_naive = run(h, w)
    ref, ref_ls = jax.jit(lambda h, w: (
        optax.softmax_cross_entropy_with_integer_labels(h @ w, y),
        optax.softmax_cross_entropy(h @ w, optax.smooth_labels(jax.nn.one_hot(y, 33), eps))))(h, w)
    assert_close(plain, ref, **F32_TOL)
    assert_close(ls_cut, ref_ls, **F32_TOL)
    assert_close(ls_naive, ref_ls, **F32_TOL)


def test_leading_dims_and_jit():
    h, w, y, weights, _ = _problem(3, 12, 8, 45, n_ignored=2)
    h3, y3, w3 = h.reshape(3, 4, 8), y.reshape(3, 4), weights.reshape(3, 4)

    @jax.jit
    def run(h3, h, w):
        return (cut_cross_entropy(h3, w, y3, weights=w3, reduction="none", block_size=16),
                cross_entropy(h3, w, y3, weights=w3, reduction="none"),
                cross_entropy(h, w, y, weights=weights, reduction="none"))

    out, ref3, ref = run(h3, h, w)
    assert out.shape == (3, 4)
    assert_close(out, ref3, **F32_TOL)
    assert_close(out.reshape(-1), ref, **F32_TOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_value_and_gradient(dtype):
    h, w, y, weights, _ = _problem(4, 32, 16, 300, dtype=dtype, n_ignored=3, scale=2.0)
    kw = tuple(sorted(dict(softcap=20.0, z_loss=1e-3).items()))
    (ln, (dhn, dwn)), (lc, (dhc, dwc)) = _compare(h, w, y, weights, None, jnp.ones(32), block=64, kw=kw)
    assert lc.dtype == jnp.float32
    assert dhc.dtype == dtype and dwc.dtype == dtype
    if dtype == jnp.float32:
        for a, b in ((lc, ln), (dhc, dhn), (dwc, dwn)):
            assert_close(a, b, **F32_TOL)
    else:
        # bf16 has 8 mantissa bits: compare to the scale of the gradient, 3e-2 relative.
        assert_close(lc, ln, rtol=1e-2, atol=1e-2)
        for a, b in ((dhc, dhn), (dwc, dwn)):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert np.max(np.abs(a - b)) <= 3e-2 * np.max(np.abs(b)) + 1e-6


def test_bf16_against_float32_truth():
    # Both bf16 implementations should be about equally close to the float32 computation.
    h, w, y, _, _ = _problem(5, 32, 16, 300, scale=2.0)

    @jax.jit
    def run(h, w):
        hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
        return cross_entropy(h, w, y), cross_entropy(hb, wb, y), cut_cross_entropy(hb, wb, y, block_size=50)

    truth, naive_bf16, cut_bf16 = run(h, w)
    assert abs(float(naive_bf16) - float(truth)) < 2e-2
    assert abs(float(cut_bf16) - float(truth)) < 2e-2


# ----------------------------------------------------------------------------------- stats
def test_return_stats_equal_naive():
    h, w, y, _, bias = _problem(6, 11, 6, 29, n_ignored=2, scale=3.0)
    names = ("logp", "lse", "entropy", "argmax")

    @jax.jit
    def run(h, w):
        outs = [cross_entropy(h, w, y, bias=bias, softcap=5.0, return_stats=names)[1]]
        for block in (1, 7, 64):
            outs.append(cut_cross_entropy(h, w, y, bias=bias, softcap=5.0, return_stats=names, block_size=block)[1])
        return outs

    sn, *cuts = run(h, w)
    z = 5.0 * jnp.tanh((h @ w + bias) / 5.0)
    for sc in cuts:
        assert set(sc) == set(names)
        for n in ("logp", "lse", "entropy"):
            assert_close(sc[n], sn[n], **F32_TOL)
        np.testing.assert_array_equal(np.asarray(sc["argmax"]), np.asarray(sn["argmax"]))
        np.testing.assert_array_equal(np.asarray(sc["argmax"]), np.asarray(jnp.argmax(z, -1)))
        assert np.all(np.asarray(sc["logp"])[np.asarray(y) == -100] == 0)


def test_stats_are_differentiable_like_naive():
    # logp feeds DPO-style losses and entropy feeds entropy bonuses: their gradients must match too.
    h, w, y, _, _ = _problem(7, 9, 5, 31, scale=2.0)

    def obj(fn, h, w):
        _, s = fn(h, w, y, return_stats=("logp", "entropy", "lse"))
        return jnp.sum(jnp.sin(s["logp"])) + 0.3 * jnp.sum(s["entropy"] ** 2) - 0.1 * jnp.sum(s["lse"])

    @jax.jit
    def run(h, w):
        gn = jax.grad(functools.partial(obj, cross_entropy), argnums=(0, 1))(h, w)
        gc = jax.grad(functools.partial(obj, functools.partial(cut_cross_entropy, block_size=6)), argnums=(0, 1))(h, w)
        return gn, gc

    gn, gc = run(h, w)
    for a, b in zip(gc, gn):
        assert_close(a, b, **F32_TOL)


# ------------------------------------------------------------------------------ edge cases
def test_all_ignored_gives_zero_loss_and_zero_grads():
    h, w, _, weights, _ = _problem(8, 5, 4, 10)
    y = jnp.full((5,), -100)

    @jax.jit
    def run(h, w):
        out = []
        for fn in (cross_entropy, functools.partial(cut_cross_entropy, block_size=4)):
            for reduction in ("mean", "sum", "none"):
                out.append(jax.value_and_grad(
                    lambda h, w: jnp.sum(fn(h, w, y, reduction=reduction, weights=weights)), argnums=(0, 1))(h, w))
        return out

    for loss, grads in run(h, w):
        assert float(loss) == 0.0
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g) == 0)


def test_zero_total_weight_mean_is_zero_not_nan():
    h, w, y, _, _ = _problem(9, 4, 3, 8)
    loss, g = jax.jit(jax.value_and_grad(
        lambda h: cut_cross_entropy(h, w, y, weights=jnp.zeros(4), block_size=3)))(h)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0)


def test_custom_ignore_index_and_mean_denominator():
    h, w, y, _, _ = _problem(10, 6, 4, 12)
    y = y.at[:2].set(7).at[2:].set(jnp.array([1, 2, 3, 4]))
    per, mean = jax.jit(lambda h: (cross_entropy(h, w, y, reduction="none", ignore_index=7),
                                   cut_cross_entropy(h, w, y, ignore_index=7, block_size=5)))(h)
    assert np.all(np.asarray(per)[:2] == 0)
    assert_close(mean, jnp.sum(per) / 4, **F32_TOL)


def test_large_logits_are_stable():
    h, w, y, _, _ = _problem(11, 8, 4, 64, scale=200.0)
    (loss, g), ref = jax.jit(lambda h: (jax.value_and_grad(lambda h: cut_cross_entropy(h, w, y, block_size=16))(h),
                                        cross_entropy(h, w, y)))(h)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
    assert_close(loss, ref, rtol=1e-5, atol=1e-3)


def test_gradient_filter_is_opt_in_and_close_for_peaked_distributions():
    # A peaked (trained-like) distribution: most softmax entries are far below eps.
    N, D, V = 16, 8, 256
    r = np.random.default_rng(12)
    w = jnp.asarray(r.normal(size=(D, V)), jnp.float32)
    y = jnp.asarray(r.integers(0, V, size=N), jnp.int32)
    h = 3.0 * w[:, y].T

    @jax.jit
    def run(h, w):
        g = lambda f: jax.grad(f, argnums=(0, 1))(h, w)  # noqa: E731
        return (g(lambda h, w: cross_entropy(h, w, y)),
                g(lambda h, w: cut_cross_entropy(h, w, y, block_size=32)),
                g(lambda h, w: cut_cross_entropy(h, w, y, block_size=32, filter_eps=1e-6)),
                g(lambda h, w: cut_cross_entropy(h, w, y, block_size=32, filter_eps="auto")),
                cut_cross_entropy(h, w, y, filter_eps=1.0), cross_entropy(h, w, y))

    ref, exact, filt, auto, loss_f, loss_ref = run(h, w)
    for a, b in zip(exact, ref):
        assert_close(a, b, **F32_TOL)
    for a, b in zip(filt, ref):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-4 * max(1.0, np.max(np.abs(b)))
    assert_close(auto[0], ref[0], rtol=1e-4, atol=1e-6)
    assert_close(loss_f, loss_ref, **F32_TOL)  # the loss value itself is never filtered


def test_head_stats_kernel():
    h, w, y, _, _ = _problem(13, 7, 5, 23)
    out = jax.jit(lambda h, w: head_stats(h, w, y, block_size=6, want=("zsum", "entropy", "argmax")))(h, w)
    z = h @ w
    assert_close(out["lse"], jax.nn.logsumexp(z, -1), **F32_TOL)
    assert_close(out["zy"], jnp.take_along_axis(z, y[:, None], -1)[:, 0], **F32_TOL)
    assert_close(out["zsum"], z.sum(-1), **F32_TOL)


def test_compiled_temp_memory_is_blockwise():
    # The point of P29: no [N, V] buffer. Temp bytes must stay far below one N x V float32 array.
    N, D, V, bs = 512, 32, 8192, 256
    args = (jax.ShapeDtypeStruct((N, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((N,), jnp.int32))

    def temp(fn):
        g = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        return g.lower(*args).compile().memory_analysis().temp_size_in_bytes

    naive = temp(lambda h, w, y: cross_entropy(h, w, y))
    cut = temp(lambda h, w, y: cut_cross_entropy(h, w, y, block_size=bs))
    assert naive >= N * V * 4
    assert cut < naive / 10


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [cross_entropy, cut_cross_entropy])
def test_bad_input_raises(fn):
    h, w, y, weights, _ = _problem(14, 4, 3, 8)
    with pytest.raises(ValueError, match="labels must lie"):
        fn(h, w, y.at[0].set(8))
    with pytest.raises(ValueError, match="labels must lie"):
        fn(h, w, y.at[1].set(-1))
    with pytest.raises(ValueError, match="weights shape"):
        fn(h, w, y, weights=weights[:3])
    with pytest.raises(ValueError, match="labels shape"):
        fn(h, w, y[:3])
    with pytest.raises(ValueError, match="last dim"):
        fn(h, w.T, y)
    with pytest.raises(ValueError, match="integers"):
        fn(h, w, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="reduction"):
        fn(h, w, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        fn(h, w, y, label_smoothing=1.0)
    with pytest.raises(ValueError, match="softcap"):
        fn(h, w, y, softcap=0.0)
    with pytest.raises(ValueError, match="z_loss"):
        fn(h, w, y, z_loss=-1.0)
    with pytest.raises(ValueError, match="return_stats"):
        fn(h, w, y, return_stats=("logits",))
    with pytest.raises(ValueError, match="bias"):
        fn(h, w, y, bias=jnp.zeros(7))


@pytest.mark.parametrize("block", [0, -3, 2.5, True])
def test_bad_block_size_raises(block):
    h, w, y, _, _ = _problem(15, 4, 3, 8)
    with pytest.raises(ValueError, match="block_size"):
        cut_cross_entropy(h, w, y, block_size=block)


def test_bad_filter_eps_raises():
    h, w, y, _, _ = _problem(15, 4, 3, 8)
    with pytest.raises(ValueError, match="filter_eps"):
        cut_cross_entropy(h, w, y, filter_eps=-1.0)


def test_traced_labels_are_not_checked_but_stay_finite():
    h, w, y, _, _ = _problem(16, 4, 3, 8)
    out = jax.jit(lambda y: cut_cross_entropy(h, w, y, reduction="none", block_size=3))(y.at[0].set(99))
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("tail", [0, 5])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_vd_head_layout_equals_dv(tail, softcap):
    """A tied embedding read in place ([V, D]) gives the same stats and gradients as its transpose."""
    N, D, V = 12, 8, 32 + tail
    k = jax.random.split(jax.random.key(3), 3)
    h = jax.random.normal(k[0], (N, D))
    e = jax.random.normal(k[1], (V, D))
    y = jax.random.randint(k[2], (N,), 0, V)

    def f(h, w, layout):
        s = head_stats(h, w, y, block_size=8, softcap=softcap, want=("entropy",), head_layout=layout)
        return jnp.sum(s["lse"] - s["zy"]) + 0.3 * jnp.sum(s["entropy"])

    v_dv, (gh_dv, gw_dv) = jax.value_and_grad(f, argnums=(0, 1))(h, e.T, "dv")
    v_vd, (gh_vd, gw_vd) = jax.value_and_grad(f, argnums=(0, 1))(h, e, "vd")
    np.testing.assert_allclose(v_vd, v_dv, rtol=1e-6)
    np.testing.assert_allclose(gh_vd, gh_dv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw_vd, gw_dv.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="head_layout"):
        head_stats(h, e, y, head_layout="transposed")


@pytest.mark.slow  # a memory check; the value tests stay in the default suite
def test_tied_model_loss_does_not_copy_the_embedding():
    """token_stats on a tied model: same loss as the naive head, and the compiled step keeps no
    transposed [D, V] copy of the embedding (its temp memory is below one embedding's size)."""
    from tokjax.losses import make_next_token_loss
    from tokjax.model import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=8192, d_model=64, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32, tied_embeddings=True)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, cfg.vocab_size)
    cut = make_next_token_loss(method="cut", block_size=1024)
    naive = make_next_token_loss(method="naive")
    lc, gc = jax.value_and_grad(lambda p: cut(p, cfg, {"tokens": tokens}, None)[0])(params)
    ln, gn = jax.value_and_grad(lambda p: naive(p, cfg, {"tokens": tokens}, None)[0])(params)
    np.testing.assert_allclose(lc, ln, rtol=1e-5)
    np.testing.assert_allclose(gc["embed"], gn["embed"], rtol=1e-4, atol=1e-6)
    compiled = jax.jit(jax.grad(lambda p: cut(p, cfg, {"tokens": tokens}, None)[0])).lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    embed_bytes = cfg.vocab_size * cfg.d_model * 4
    assert temp < embed_bytes, (temp, embed_bytes)
