"""tokjax.vision.fsq: finite scalar quantization, nested dropout keep samplers and the register encoder's mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import Model, ModelConfig
from tokjax.model.attention import Prefix, build_mask
from tokjax.vision import fsq as Q

LEVEL_SETS = [(5, 5, 5), (8, 5, 3), (2, 7), (8, 8, 8, 5, 5, 5)]


def _official(levels, z):
    """numpy transcription of the official FSQ formulas (bound, round, /half_width, codes_to_indices)."""
    L = np.asarray(levels, np.float64)
    half_l = (L - 1) * (1 + 1e-3) / 2
    offset = np.where(L % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    zq = np.round(np.tanh(z + shift) * half_l - offset) / (L // 2)
    basis = np.cumprod([1] + list(levels[:-1]))
    ids = ((zq * (L // 2) + L // 2) * basis).sum(-1)
    return zq, np.round(ids).astype(np.int64)


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_codes_and_ids_are_a_bijection(levels):
    q = Q.fsq(levels)
    ids = jnp.arange(q.codebook_size)
    codes = q.ids_to_codes(ids)
    assert q.codebook_size == int(np.prod(levels)) and codes.shape == (q.codebook_size, len(levels))
    np.testing.assert_array_equal(np.asarray(q.codes_to_ids(codes)), np.arange(q.codebook_size))
    assert len(np.unique(np.asarray(codes), axis=0)) == q.codebook_size  # injective on the grid
    np.testing.assert_array_equal(np.asarray(q.snap(codes)), np.asarray(codes))  # ids decode to grid codes
    assert float(jnp.min(codes)) == -1.0 and float(jnp.max(codes)) <= 1.0


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(LEVEL_SETS), st.integers(0, 2**31 - 1), st.floats(0.1, 6.0))
def test_quantize_matches_the_official_formula_and_is_idempotent(levels, seed, scale):
    q = Q.fsq(levels)
    z = scale * np.random.default_rng(seed).normal(size=(64, len(levels)))
    codes, ids = q(jnp.asarray(z, jnp.float32))
    want_codes, want_ids = _official(levels, z.astype(np.float32).astype(np.float64))
    # rounding ties under float32 vs float64 may differ at isolated points; compare where the float64 value is
    # not within 1e-4 of a half-integer
    b = np.asarray(q.bound(jnp.asarray(z, jnp.float32)))
    safe = np.all(np.abs(np.abs(b - np.floor(b)) - 0.5) > 1e-4, axis=-1)
    np.testing.assert_allclose(np.asarray(codes)[safe], want_codes[safe], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ids)[safe], want_ids[safe])
    np.testing.assert_array_equal(np.asarray(q.snap(codes)), np.asarray(codes))  # quantize outputs: fixed points
    np.testing.assert_array_equal(np.asarray(q.snap(q.snap(z))), np.asarray(q.snap(z)))  # snap is idempotent
    np.testing.assert_array_equal(np.asarray(q.ids_to_codes(ids)), np.asarray(codes))
    if all(L in (3, 5) for L in levels):  # FlexTok's CPU levels: quantize itself is idempotent
        np.testing.assert_array_equal(np.asarray(q.quantize(codes)), np.asarray(codes))


def test_quantize_is_idempotent_on_every_code_of_levels_5_5_5():
    q = Q.fsq((5, 5, 5))
    codes = q.ids_to_codes(jnp.arange(125))
    np.testing.assert_array_equal(np.asarray(q.quantize(codes)), np.asarray(codes))


def test_straight_through_gradient_is_the_identity():
    y = jnp.linspace(-3.3, 3.3, 17)
    w = jnp.arange(17.0) - 4.0
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.sum(w * Q.round_ste(v)))(y)), np.asarray(w))
    q = Q.fsq((5, 8, 3))
    z = jax.random.normal(jax.random.key(0), (6, 3))
    hw = jnp.asarray([2.0, 4.0, 1.0])
    g_q = jax.grad(lambda v: jnp.sum(jnp.sin(v) * q.quantize(v)))(z)
    g_b = jax.grad(lambda v: jnp.sum(jnp.sin(v) * jax.lax.stop_gradient(q.quantize(v)) + jax.lax.stop_gradient(
        jnp.sin(v)) * (q.bound(v) / hw)))(z)
    np.testing.assert_allclose(np.asarray(g_q), np.asarray(g_b), rtol=1e-5, atol=1e-6)


def test_nested_dropout_keeps_a_prefix_and_keep_n_is_the_identity():
    x = jax.random.normal(jax.random.key(1), (3, 8, 5))
    m = jnp.arange(5.0) + 100
    np.testing.assert_array_equal(np.asarray(Q.nested_dropout(x, 8, m)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(Q.nested_dropout(x, jnp.array([8, 8, 8]), m)), np.asarray(x))
    keep = np.array([1, 4, 8])
    out = np.asarray(jax.jit(Q.nested_dropout)(x, jnp.asarray(keep), m))
    for b in range(3):
        for i in range(8):
            np.testing.assert_array_equal(out[b, i], np.asarray(x[b, i]) if i < keep[b] else np.asarray(m))


def test_keep_samplers_follow_the_official_distributions():
    key = jax.random.key(3)
    n, N = 16, 40000
    for mode, support, probs in [("uniform", range(1, 17), [1 / 16] * 16),
                                 ("pow2", (1, 2, 4, 8, 16), [0.2] * 5),
                                 ("uniform_pow2", (1, 2, 4, 8, 16), [1 / 16, 1 / 16, 2 / 16, 4 / 16, 8 / 16])]:
        k = np.asarray(jax.jit(lambda kk: Q.sample_keep(kk, n, (N,), mode=mode))(key))
        assert set(np.unique(k)) == set(support), mode
        freq = np.array([(k == s).mean() for s in support])
        np.testing.assert_allclose(freq, probs, atol=4.5 * np.sqrt(0.25 / N), err_msg=mode)
    # uniform_pow2 with n not a power of two: rounded-up counts beyond n keep everything (official: no masking)
    k = np.asarray(Q.sample_keep(key, 12, (4000,), mode="uniform_pow2"))
    assert set(np.unique(k)) == {1, 2, 4, 8, 12}


def _oracle(P, R):
    """FlexTok's encoder visibility, written out: patches see all patches; register j sees all patches and
    registers <= j; patches see no register."""
    T = P + R
    vis = np.zeros((T, T), bool)
    for q in range(T):
        for k in range(T):
            if k < P:
                vis[q, k] = True
            else:
                vis[q, k] = q >= P and k <= q
    return vis


def test_register_encoder_mask_is_the_prefix_oracle():
    for P, R in [(16, 16), (4, 3), (1, 5)]:
        np.testing.assert_array_equal(np.asarray(build_mask(Prefix(jnp.int32(P)), 2, P + R))[1], _oracle(P, R))
    # and the encoder's outputs depend on its inputs exactly as the oracle says (Jacobian zero pattern)
    cfg = ModelConfig(vocab_size=4, d_model=8, n_layers=1, n_heads=2, max_len=12)
    params = Model.init(cfg, jax.random.key(0)).params
    P, R = 4, 3
    pt = jax.random.normal(jax.random.key(1), (1, P, 8))
    rg = jax.random.normal(jax.random.key(2), (R, 8))
    J_r, J_p = jax.jit(lambda p, r: (jax.jacrev(lambda r_: Q.register_encode(params, cfg, p, r_))(r),
                                     jax.jacrev(lambda p_: Q.register_encode(params, cfg, p_, r))(p)))(pt, rg)
    dep_r = np.asarray(jnp.abs(J_r[0]).sum((1, 3)) > 0)  # J_r [1, R, D, R, D] -> [R out, R in]
    np.testing.assert_array_equal(dep_r, _oracle(P, R)[P:, P:])
    assert bool(jnp.all(jnp.abs(J_p[0]).sum((1, 2, 4)) > 0))  # J_p [1, R, D, 1, P, D]: every register reads every patch


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=">= 2"):
        Q.fsq([5, 1, 5])
    with pytest.raises(ValueError, match="at least one"):
        Q.fsq([])
    with pytest.raises(ValueError, match="ints"):
        Q.fsq([5, 2.5])
    x = jnp.zeros((2, 4, 3))
    for bad in (0, 5, [1, 5], -1):
        with pytest.raises(ValueError, match=r"keep must lie in \[1, n=4\]"):
            Q.nested_dropout(x, jnp.asarray(bad), jnp.zeros(3))
    with pytest.raises(ValueError, match="mask_token"):
        Q.nested_dropout(x, 2, jnp.zeros(4))
    with pytest.raises(ValueError, match="integer"):
        Q.nested_dropout(x, 2.0, jnp.zeros(3))
    with pytest.raises(ValueError, match="power of two"):
        Q.sample_keep(jax.random.key(0), 12, (3,), mode="pow2")
    with pytest.raises(ValueError, match="mode"):
        Q.sample_keep(jax.random.key(0), 16, (3,), mode="geometric")
    q = Q.fsq((5, 5))
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        q.ids_to_codes(jnp.array([3, 25]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        q.quantize(jnp.zeros((4, 3)))
    cfg = ModelConfig(vocab_size=4, d_model=16, n_layers=1, n_heads=2, max_len=6)
    params = Model.init(cfg, jax.random.key(0)).params
    with pytest.raises(ValueError, match="max_len"):
        Q.register_encode(params, cfg, jnp.zeros((1, 4, 16)), jnp.zeros((3, 16)))
