"""SwiGLU's hand-written backward (tokjax.model.activation) and the flattened projections of the forward: the
same values and gradients as autodiff of the plain expressions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model.activation import swiglu
from tokjax.model.forward import _flat_matmul, _split_spec


@given(seed=st.integers(0, 1000), scale=st.sampled_from([0.1, 1.0, 8.0]))
@settings(max_examples=20, deadline=None)
def test_swiglu_value_and_gradients_equal_autodiff(seed, scale):
    rng = np.random.default_rng(seed)
    g, u, d = (jnp.asarray(rng.standard_normal((3, 5, 7)) * scale, jnp.float32) for _ in range(3))
    plain = lambda g, u: jax.nn.silu(g) * u
    np.testing.assert_array_equal(np.asarray(swiglu(g, u)), np.asarray(plain(g, u)))
    got = jax.vjp(swiglu, g, u)[1](d)
    want = jax.vjp(plain, g, u)[1](d)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5 * scale * scale)


def test_swiglu_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        swiglu(jnp.ones((2, 3)), jnp.ones((2, 4)))


def test_swiglu_gradient_is_finite_for_extreme_gates():
    g = jnp.asarray([-1e4, -100.0, 0.0, 100.0, 1e4], jnp.float32)
    dg, du = jax.grad(lambda g, u: jnp.sum(swiglu(g, u)), (0, 1))(g, jnp.ones_like(g))
    assert np.isfinite(np.asarray(dg)).all() and np.isfinite(np.asarray(du)).all()
    np.testing.assert_allclose(np.asarray(dg), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("spec,xs,ws", [("btd,df->btf", (2, 3, 4), (4, 5)), ("btd,dhk->bthk", (2, 3, 4), (4, 2, 3)),
                                         ("bthk,hkd->btd", (2, 3, 2, 3), (2, 3, 4)), ("td,df->tf", (3, 4), (4, 5))])
def test_flat_matmul_equals_einsum_with_gradients(spec, xs, ws):
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.standard_normal(xs), jnp.float32), jnp.asarray(rng.standard_normal(ws), jnp.float32)
    assert _split_spec(spec) is not None
    np.testing.assert_allclose(np.asarray(_flat_matmul(spec, x, w)), np.asarray(jnp.einsum(spec, x, w)), rtol=1e-6,
                               atol=1e-6)
    f = lambda fn: jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), (0, 1))(x, w)
    for a, b in zip(f(lambda x, w: _flat_matmul(spec, x, w)), f(lambda x, w: jnp.einsum(spec, x, w))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_flat_matmul_falls_back_for_other_contractions():
    assert _split_spec("btd,vd->btv") is None  # contracted axis last on both sides: left to einsum
    x, w = jnp.ones((2, 3, 4)), jnp.ones((5, 4))
    np.testing.assert_array_equal(np.asarray(_flat_matmul("btd,vd->btv", x, w)), np.full((2, 3, 5), 4.0))
