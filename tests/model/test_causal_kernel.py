"""Fused CPU causal attention (tokjax.model.causal_kernel): kernel = full-mask attend = float64 softmax
attention, no reads of future keys; backward kernel = float64 gradients, under vmap, partial inputs and second
order, without [T, T] residuals; forward mode's error; dispatch and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import attention as A
from tokjax.model import causal_kernel as ck
from tests.model._kernels import force_kernel

_kernel_forced = force_kernel("TOKJAX_ATTENTION_KERNEL", ck.causal_kernel_available)  # the kernel's path on every CPU


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


def _float64_vjp(q, k, v, d_out):
    """(dq, dk, dv) of causal softmax attention for the cotangent d_out, in float64 numpy."""
    q, k, v, do = (np.asarray(a, np.float64) for a in (q, k, v, d_out))
    B, T, H, D = q.shape
    KV = k.shape[2]
    G = H // KV
    kk, vv = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    s = np.einsum("bthd,bshd->bhts", q, kk) / np.sqrt(D)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = np.einsum("bthd,bshd->bhts", do, vv)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True))
    dq = np.einsum("bhts,bshd->bthd", ds, kk) / np.sqrt(D)
    dk = np.einsum("bhts,bthd->bshd", ds, q).reshape(B, T, KV, G, D).sum(3) / np.sqrt(D)
    dv = np.einsum("bhts,bthd->bshd", p, do).reshape(B, T, KV, G, D).sum(3)
    return dq, dk, dv


def _assert_grads_close(got, want, rtol=1e-5):
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert np.isfinite(g).all()
        assert np.max(np.abs(g - w)) <= rtol * (np.max(np.abs(w)) + 1e-30) * 10, np.max(np.abs(g - w))


# B * KV < 8 splits the query rows into chunks whose partial dk, dv are summed; B * KV >= 8 does not.
@pytest.mark.parametrize("B,T,H,KV,D", [(1, 1, 2, 1, 16), (1, 7, 3, 1, 16), (2, 70, 4, 2, 32), (1, 300, 9, 3, 64),
                                        (3, 129, 2, 2, 48), (8, 65, 2, 1, 16), (1, 200, 4, 4, 128)])
def test_backward_kernel_equals_float64_gradients(B, T, H, KV, D):
    q, k, v = _qkv(T + 1, B, T, H, KV, D, scale=1.5)
    d_out = _qkv(T + 2, B, T, H, KV, D)[0]
    _, vjp = jax.vjp(A.causal_attend, q, k, v)
    _assert_grads_close(jax.jit(vjp)(d_out), _float64_vjp(q, k, v, d_out))
    assert "tokjax_causal_attention_grad" in jax.jit(vjp).lower(d_out).as_text()


@given(T=st.integers(1, 150), G=st.sampled_from([1, 2, 3]), B=st.integers(1, 3), seed=st.integers(0, 50))
@settings(max_examples=12, deadline=None)
def test_backward_kernel_matches_reference_over_shapes(T, G, B, seed):
    q, k, v = _qkv(seed, B, T, 2 * G, 2, 32)
    d_out = _qkv(seed + 1, B, T, 2 * G, 2, 32)[0]
    _assert_grads_close(ck._kernel_vjp(q, k, v, d_out), _float64_vjp(q, k, v, d_out))


def test_reverse_mode_works_under_vmap_partial_inputs_and_second_order():
    q, k, v = _qkv(4, 1, 80, 4, 2, 64)
    blocks = lambda q, k, v: A._causal_blocks(q, k, v)

    def loss(attn):
        return lambda q, k, v: jnp.sum(jnp.sin(attn(q, k, v)))

    for a, b in zip(jax.grad(loss(A.causal_attend), (0, 1, 2))(q, k, v), jax.grad(loss(blocks), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # only q differentiated; per-example gradients; reverse over reverse; forward over reverse (HVP)
    gq = jax.grad(loss(A.causal_attend))(q, k, v)
    np.testing.assert_allclose(np.asarray(gq), np.asarray(jax.grad(loss(blocks))(q, k, v)), rtol=1e-4, atol=1e-5)
    per = jax.vmap(jax.grad(loss(A.causal_attend)), (0, None, None))(jnp.stack([q, 2 * q]), k, v)
    np.testing.assert_allclose(np.asarray(per[1]), np.asarray(jax.grad(loss(blocks))(2 * q, k, v)),
                               rtol=1e-4, atol=1e-5)
    gg = lambda attn: jax.grad(lambda q: jnp.sum(jax.grad(loss(attn))(q, k, v) ** 2))(q)
    np.testing.assert_allclose(np.asarray(gg(A.causal_attend)), np.asarray(gg(blocks)), rtol=1e-4, atol=1e-5)
    hvp = lambda attn: jax.jvp(lambda q: jax.grad(loss(attn))(q, k, v), (q,), (jnp.ones_like(q),))[1]
    np.testing.assert_allclose(np.asarray(hvp(A.causal_attend)), np.asarray(hvp(blocks)), rtol=1e-4, atol=1e-5)


def test_forward_mode_raises_a_clear_error():
    q, k, v = _qkv(4, 1, 20, 2, 1, 16)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda q: A.causal_attend(q, k, v), (q,), (jnp.ones_like(q),))


def test_backward_keeps_no_quadratic_residuals():
    # The query-block path's reverse mode stores the [T, T] weights; the kernel's stores q, k, v only.
    q, k, v = _qkv(7, 1, 1024, 2, 1, 32)
    loss = lambda attn: jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), (0, 1, 2)))
    temp = lambda attn: loss(attn).lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    kernel, blocks = temp(A.causal_attend), temp(lambda q, k, v: A._causal_blocks(q, k, v))
    assert kernel < 1024 * 1024 * 4 < blocks, (kernel, blocks)  # less than one [T, T] float32 array


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


def test_env_switch_turns_the_kernel_off_and_the_default_uses_it_only_where_tuned(monkeypatch):
    from tokjax.model._ffi import tuned_build

    try:
        monkeypatch.setenv("TOKJAX_ATTENTION_KERNEL", "0")
        ck.causal_kernel_available.cache_clear()
        assert not ck.causal_kernel_available()
        monkeypatch.delenv("TOKJAX_ATTENTION_KERNEL")
        ck.causal_kernel_available.cache_clear()
        assert ck.causal_kernel_available() == tuned_build("causal_attention.cc")
    finally:
        monkeypatch.setenv("TOKJAX_ATTENTION_KERNEL", "force")
        ck.causal_kernel_available.cache_clear()
    assert ck.causal_kernel_available()


def test_kernels_count_as_tuned_exactly_where_the_cpu_has_their_vector_isa():
    import platform
    from pathlib import Path

    from tokjax.model._ffi import tuned_build

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        pytest.skip("reads the x86 CPU flags from /proc/cpuinfo")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), [])
    avx512 = "avx512f" in flags
    assert tuned_build("causal_attention.cc") == (avx512 or "avx2" in flags)
    for source in ("f32_matmul.cc", "int8_matmul.cc"):  # these two also have an AVX2 + FMA path
        assert tuned_build(source) == (avx512 or ("avx2" in flags and "fma" in flags)), source


def test_kernel_rejects_mismatched_operands():
    q, k, v = _qkv(6, 1, 10, 4, 2, 32)
    kt = jnp.zeros((1, 2, 32, 60), jnp.float32)  # padded key length not a multiple of 64
    call = jax.ffi.ffi_call("tokjax_causal_attention", jax.ShapeDtypeStruct(q.shape, jnp.float32))
    with pytest.raises(Exception, match="Tp % 64 == 0"):
        jax.block_until_ready(call(q, kt, v))
    shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((1,) + k.shape, jnp.float32),
              jax.ShapeDtypeStruct((1,) + v.shape, jnp.float32))
    grad = jax.ffi.ffi_call("tokjax_causal_attention_grad", shapes)
    with pytest.raises(Exception, match="Tp % 64 == 0"):
        jax.block_until_ready(grad(q, kt, k, kt, q))
    with pytest.raises(Exception, match="dk, dv"):  # dk/dv not [C, B, T, KV, D]
        jax.block_until_ready(jax.ffi.ffi_call("tokjax_causal_attention_grad", (shapes[0], shapes[0], shapes[0]))(
            q, jnp.zeros((1, 2, 32, 64), jnp.float32), k, jnp.zeros((1, 2, 32, 64), jnp.float32), q))
