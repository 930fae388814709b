"""Weight-only int8 (tokjax.model.quant): exact dequantisation, kernel = XLA path, forward and greedy decode
against float32, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tokjax.model import quant
from tests.model._models import small_model
from tests.model._kernels import force_kernel

_kernel_forced = force_kernel("TOKJAX_INT8_KERNEL", quant.int8_kernel_available)  # the kernel's path on every CPU


def _weight(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@given(k=st.sampled_from([1, 37, 64]), n=st.sampled_from([1, 6]), m=st.sampled_from([0, 1, 5]),
       block=st.sampled_from([None, 32]), seed=st.integers(0, 50))
@settings(max_examples=10, deadline=None)
def test_kernel_and_xla_paths_equal_the_float64_product_of_the_int8_values(k, n, m, block, seed):
    w = quant.quantize_weight(_weight(seed, (k, n)), block=block)
    assert w.scale.shape == (n, 2 if (block, k) == (32, 64) else 1)
    x = _weight(seed + 1, (m, k))
    nb = w.scale.shape[1]
    deq = (np.asarray(w.q, np.float64).reshape(n, nb, -1) * np.asarray(w.scale, np.float64)[..., None]).reshape(n, k)
    ref = np.asarray(x, np.float64) @ deq.T
    got = np.asarray(quant.int8_matmul(x, w))
    xla = np.asarray(quant._xla_matmul(x, w.q, w.scale))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max(initial=0)))
    np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5 * (1 + np.abs(ref).max(initial=0)))


def test_kernel_is_built_on_cpu_and_handles_sizes_not_multiples_of_the_vector_width():
    assert quant.int8_kernel_available(), "g++ and the jaxlib FFI headers are on this machine"
    w = quant.quantize_weight(_weight(0, (37, 3, 7)))  # K = 37 (16 + 16 + 5), N = 21 (4 * 5 + 1)
    x = _weight(1, (2, 5, 37))
    y = quant.int8_matmul(x, w)
    assert y.shape == (2, 5, 3, 7)
    np.testing.assert_allclose(y, jnp.einsum("btd,dhk->bthk", x, w.dequantize()), rtol=1e-5, atol=1e-5)


def test_quantization_round_trip_error_is_at_most_half_a_step_and_zero_rows_stay_zero():
    w = _weight(0, (64, 6)).at[:, 2].set(0.0)
    iw = quant.quantize_weight(w, block=32)
    err = np.abs(np.asarray(iw.dequantize() - w))  # [K, N]; block b of output n has step scale[n, b]
    step = np.repeat(np.asarray(iw.scale).T, 32, axis=0)
    assert np.all(err <= step / 2 + 1e-7)
    assert np.all(np.asarray(iw.dequantize()[:, 2]) == 0) and np.isfinite(np.asarray(iw.scale)).all()
    assert np.abs(np.asarray(iw.q)).max() <= 127


@pytest.mark.slow
def test_int8_model_forward_tracks_float32_and_greedy_decoding_agrees():
    model = small_model(0, init_scale=0.3)
    qmodel = quant.quantize_int8(model)
    assert isinstance(qmodel.params["embed"], quant.Int8Weight)  # tied: one int8 table for embed and head
    assert all(isinstance(p["wqkv"], quant.Int8Weight) for p in qmodel.params["layers"])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 12)), jnp.int32)
    ref = np.asarray(model(tokens).logits)
    got = np.asarray(qmodel(tokens).logits)
    assert np.mean(np.abs(got - ref)) < 0.06 * np.mean(np.abs(ref))  # 3.5% here: 14 int8 matmuls of a random net
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) > 0.9
    a = tokjax.generate(model, tokens[:, :4], max_new_tokens=8, logits=tokjax.logits.greedy()).tokens
    b = tokjax.generate(qmodel, tokens[:, :4], max_new_tokens=8, logits=tokjax.logits.greedy()).tokens
    assert np.mean(np.asarray(a) == np.asarray(b)) > 0.8


@pytest.mark.slow
def test_int8_forward_equals_float_forward_of_the_dequantised_weights():
    """The int8 path computes exactly what the float path does with the int8 values' floats."""
    model = small_model(1)
    qmodel = quant.quantize_int8(model)
    deq = jax.tree.map(lambda w: w.dequantize() if isinstance(w, quant.Int8Weight) else w, qmodel.params,
                       is_leaf=lambda w: isinstance(w, quant.Int8Weight))
    deq["embed"] = qmodel.params["embed"].dequantize().T  # stored [V, D]
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 61, (2, 9)), jnp.int32)
    np.testing.assert_allclose(qmodel(tokens).logits, model.replace(params=deq)(tokens).logits, rtol=2e-4, atol=2e-4)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="floating-point"):
        quant.quantize_weight(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="multiple of 16"):
        quant.quantize_weight(jnp.ones((64, 4)), block=24)
    with pytest.raises(ValueError, match="output axis"):
        quant.quantize_weight(jnp.ones((4, 4)), n_in=2)
    w = quant.quantize_weight(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="does not match"):
        quant.int8_matmul(jnp.ones((2, 5)), w)
    model = small_model(0)
    with pytest.raises(ValueError, match="ModelConfig"):
        quant.quantize_int8(model.params)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="single-device"):
        tokjax.generate(quant.quantize_int8(model), [[1, 2]], max_new_tokens=2, logits=tokjax.logits.greedy(),
                        mesh=mesh)
