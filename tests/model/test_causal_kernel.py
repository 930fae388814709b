"""Fused CPU causal attention (tokjax.model.causal_kernel): kernel = full-mask attend = float64 softmax
attention, no reads of future keys, derivatives of the query-block path, dispatch and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import attention as A
from tokjax.model import causal_kernel as ck


def _qkv(seed, B, T, H, KV, D, scale=1.0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, T, h, D)) * scale, jnp.float32) for h in (H, KV, KV))


def _float64_reference(q, k, v):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, D = q.shape
    G = H // k.shape[2]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", p, v)


@pytest.mark.parametrize("B,T,H,KV,D", [(1, 1, 2, 1, 16), (2, 5, 4, 2, 64), (1, 65, 4, 4, 32),
                                        (2, 131, 6, 2, 48), (1, 300, 9, 3, 64), (1, 70, 2, 1, 128)])
def test_kernel_equals_float64_attention_and_the_full_mask_path(B, T, H, KV, D):
    assert ck.causal_kernel_available(), "g++ and the jaxlib FFI headers are on this machine"
    q, k, v = _qkv(T, B, T, H, KV, D, scale=2.0)
    got = np.asarray(jax.jit(A.causal_attend)(q, k, v))
    ref = _float64_reference(q, k, v)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=3e-5)
    full = np.asarray(A.attend(q, k, v, A.build_mask(A.Causal(), B, T)))
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=3e-5)


@given(T=st.integers(1, 140), seed=st.integers(0, 100), t=st.integers(0, 139))
@settings(max_examples=15, deadline=None)
def test_rows_never_read_later_keys_or_values(T, seed, t):
    t = t % T
    q, k, v = _qkv(seed, 1, T, 4, 2, 32)
    a = np.asarray(A.causal_attend(q, k, v))
    k2 = k.at[:, t + 1:].set(1e30)  # huge later keys (inf/NaN scores) and values must not reach rows <= t
    v2 = v.at[:, t + 1:].set(-1e30)
    b = np.asarray(A.causal_attend(q, k2, v2))
    np.testing.assert_array_equal(b[:, : t + 1], a[:, : t + 1])


def test_large_scores_stay_finite_and_exact():
    q, k, v = _qkv(3, 1, 96, 2, 2, 64, scale=30.0)  # scores in the thousands: the max subtraction matters
    got = np.asarray(jax.jit(A.causal_attend)(q, k, v))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _float64_reference(q, k, v), rtol=1e-4, atol=1e-3 * 30)


def test_derivatives_are_the_query_block_paths():
    q, k, v = _qkv(4, 1, 80, 4, 2, 64)

    def loss(attn):
        return lambda q, k, v: jnp.sum(jnp.sin(attn(q, k, v)))

    blocks = lambda q, k, v: A._causal_blocks(q, k, v)
    for a, b in zip(jax.grad(loss(A.causal_attend), (0, 1, 2))(q, k, v), jax.grad(loss(blocks), (0, 1, 2))(q, k, v)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    t = jnp.ones_like(q)
    ja = jax.jvp(lambda q: A.causal_attend(q, k, v), (q,), (t,))[1]
    jb = jax.jvp(lambda q: blocks(q, k, v), (q,), (t,))[1]
    np.testing.assert_array_equal(np.asarray(ja), np.asarray(jb))


def test_dispatch_kernel_on_cpu_float32_only_and_vmap():
    q, k, v = _qkv(5, 1, 40, 4, 2, 32)
    assert "tokjax_causal_attention" in jax.jit(A.causal_attend).lower(q, k, v).as_text()
    seg = jnp.zeros((1, 40), jnp.int32)
    assert "tokjax_causal_attention" not in jax.jit(
        lambda q, k, v: A.causal_attend(q, k, v, segment_ids=seg)).lower(q, k, v).as_text()
    assert not ck.causal_kernel_applies(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
    q8, k8, v8 = _qkv(5, 1, 40, 4, 2, 8)
    assert not ck.causal_kernel_applies(q8, k8, v8)  # head size not a multiple of 16
    batched = jax.vmap(A.causal_attend)(jnp.stack([q, 2 * q]), jnp.stack([k, k]), jnp.stack([v, v]))
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(A.causal_attend(2 * q, k, v)), rtol=1e-6, atol=1e-6)


def test_env_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("TOKJAX_ATTENTION_KERNEL", "0")
    ck.causal_kernel_available.cache_clear()
    try:
        assert not ck.causal_kernel_available()
    finally:
        monkeypatch.delenv("TOKJAX_ATTENTION_KERNEL")
        ck.causal_kernel_available.cache_clear()
    assert ck.causal_kernel_available()


def test_kernel_rejects_mismatched_operands():
    q, k, v = _qkv(6, 1, 10, 4, 2, 32)
    kt = jnp.zeros((1, 2, 32, 60), jnp.float32)  # padded key length not a multiple of 64
    call = jax.ffi.ffi_call("tokjax_causal_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    with pytest.raises(Exception, match="Tp % 64 == 0"):
        jax.block_until_ready(call(q, kt, v))
