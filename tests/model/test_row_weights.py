"""Float32 row layout and small-M kernel (tokjax.model.row_weights): kernel = XLA path = float64 product,
forward and generate on the row layout = on plain params, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tokjax.decoding.driver import decode_layout
from tokjax.model import row_weights as rw
from tokjax.model.forward import unstack_layers
from tests.model._models import small_model
from tests.model._kernels import force_kernel

_kernel_forced = force_kernel("TOKJAX_F32_KERNEL", rw.f32_kernel_available)  # the kernel's path on every CPU


def _arr(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@given(k=st.sampled_from([0, 1, 17, 64]), n=st.sampled_from([1, 5, 9]), m=st.sampled_from([0, 1, 5, 8, 16, 17]),
       seed=st.integers(0, 50))
@settings(max_examples=12, deadline=None)
def test_kernel_and_xla_paths_equal_the_float64_product(k, n, m, seed):
    w = _arr(seed, (k, n))
    x = _arr(seed + 1, (m, k))
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    got = np.asarray(rw.row_matmul(x, rw.to_rows(w)))
    xla = np.asarray(rw._xla_matmul(x, rw.to_rows(w).rows))
    tol = 1e-5 * (1 + np.abs(ref).max(initial=0))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(got, xla, rtol=1e-5, atol=tol)


def test_kernel_is_built_and_runs_under_jit_and_vmap_with_multi_axis_shapes():
    assert rw.f32_kernel_available(), "g++ and the jaxlib FFI headers are on this machine"
    w = _arr(0, (3, 37, 2, 7))  # in_shape (3, 37): K = 111, out_shape (2, 7): N = 14
    r = rw.to_rows(w, 2)
    assert r.rows.shape == (14, 111) and r.shape == w.shape
    np.testing.assert_array_equal(np.asarray(r.dense()), np.asarray(w))
    x = _arr(1, (4, 2, 3, 37))
    ref = np.einsum("abij,ijkl->abkl", np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(jax.jit(rw.row_matmul)(x, r)), ref, rtol=1e-5, atol=1e-4)
    batched = jax.vmap(rw.row_matmul, in_axes=(0, None))(x, r)  # vmapped: one kernel call per row
    np.testing.assert_allclose(np.asarray(batched), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_forward_on_the_row_layout_equals_forward_on_plain_params(tied):
    model = small_model(tied_embeddings=tied)
    plain = unstack_layers(model.params, fuse=True)
    rows = rw.row_layout(plain, model.cfg)
    assert isinstance(rows["layers"][0]["wqkv"], rw.RowWeight)
    assert isinstance(rows["embed" if tied else "lm_head"], rw.RowWeight)
    assert rw.row_layout(rows, model.cfg)["layers"][0]["wqkv"].rows.shape == rows["layers"][0]["wqkv"].rows.shape
    # 6 rows take the kernel, 33 the XLA dot, 80 (> _FUSED_MLP_MAX_ROWS) the fused gate/up split in two
    for B, T in ((2, 3), (3, 11), (2, 40)):
        tokens = jax.random.randint(jax.random.key(B), (B, T), 0, model.cfg.vocab_size)
        ref = tokjax.forward(model.params, model.cfg, tokjax.Inputs(tokens=tokens)).logits  # stacked, unfused
        a = tokjax.forward(plain, model.cfg, tokjax.Inputs(tokens=tokens)).logits
        b = tokjax.forward(rows, model.cfg, tokjax.Inputs(tokens=tokens)).logits
        np.testing.assert_allclose(np.asarray(a), np.asarray(ref), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_generate_uses_the_row_layout_on_cpu_and_matches_teacher_forced_greedy():
    model = small_model(seed=3)
    layout = decode_layout(model.params, fuse=True, cfg=model.cfg)
    assert isinstance(layout["layers"][0]["w_down"], rw.RowWeight)
    prompts = np.asarray(jax.random.randint(jax.random.key(1), (4, 5), 0, model.cfg.vocab_size))
    out = tokjax.generate(model, prompts, max_new_tokens=6, logits=tokjax.logits.greedy())
    tokens = np.asarray(out.tokens)
    logits = tokjax.forward(model.params, model.cfg, tokjax.Inputs(tokens=jnp.asarray(tokens[:, :-1]))).logits
    np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[:, 4:], -1)), tokens[:, 5:])


def test_other_dtypes_are_left_unchanged_and_bad_inputs_raise():
    model = small_model(param_dtype="bfloat16", compute_dtype="bfloat16")
    plain = unstack_layers(model.params, fuse=True)
    assert rw.row_layout(plain, model.cfg) is plain
    with pytest.raises(ValueError, match="unstacked params"):
        rw.row_layout(model.params, model.cfg)
    with pytest.raises(ValueError, match="n_in=2 must leave at least one output axis"):
        rw.to_rows(_arr(0, (3, 4)), 2)
    with pytest.raises(ValueError, match=r"input trailing shape \(5,\) does not match the weight's input shape \(4,\)"):
        rw.row_matmul(_arr(0, (2, 5)), rw.to_rows(_arr(1, (4, 3))))
