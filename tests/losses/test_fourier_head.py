"""Fourier head (P41): autocorrelation, non-negative density, pmf over bins, regulariser, loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.losses.fourier_head import (
    autocorrelate, bin_centers, fourier_head, fourier_head_init, fourier_head_loss, fourier_pdf, fourier_regularizer,
)


# Jitted once per shape: eager dispatch would compile every primitive for every new shape.
_head = jax.jit(fourier_head, static_argnums=2)
_pdf = jax.jit(fourier_pdf)


def _params(seed, D=6, F=4, scale=1.0):
    r = np.random.default_rng(seed)
    return {"w": jnp.asarray(r.normal(size=(D, 2 * (F + 1))) * scale, jnp.float32),
            "b": jnp.asarray(r.normal(size=(2 * (F + 1),)) * scale, jnp.float32)}


def _naive_coeffs(a):
    """Returns c_k = sum_j a_{j+k} conj(a_j) by a Python loop over complex numbers."""
    n = a.shape[-1]
    return np.stack([np.array([sum(row[j + k] * np.conj(row[j]) for j in range(n - k)) for k in range(n)])
                     for row in a])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7))
def test_autocorrelate_matches_naive_complex_loop(seed, n):
    r = np.random.default_rng(seed)
    re, im = r.normal(size=(3, n)), r.normal(size=(3, n))
    cr, ci = autocorrelate(jnp.asarray(re, jnp.float32), jnp.asarray(im, jnp.float32))
    ref = _naive_coeffs(re + 1j * im)
    np.testing.assert_allclose(cr, ref.real, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ci, ref.imag, rtol=1e-4, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.01, 1.0, 30.0]), bins=st.sampled_from([1, 7, 32]))
def test_pmf_is_a_distribution_and_pdf_is_a_nonnegative_density(seed, scale, bins):
    p = _params(seed, scale=scale)
    h = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(2, 3, 6)), jnp.float32)
    out = _head(p, h, bins)
    assert out.pmf.shape == (2, 3, bins) and out.logits.shape == (2, 3, bins)
    np.testing.assert_allclose(np.asarray(out.pmf).sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(out.pmf) >= 0)
    np.testing.assert_allclose(out.logits, np.log(np.asarray(out.pmf) + 1e-5), rtol=1e-5, atol=1e-6)
    x = np.linspace(-1, 1, 4001)
    pdf = np.asarray(_pdf(out.coeffs, jnp.asarray(x, jnp.float32)))
    assert pdf.min() > -1e-4 * max(1.0, np.abs(pdf).max())
    np.testing.assert_allclose(np.trapezoid(pdf, x, axis=-1), 1.0, rtol=2e-3)


def test_pdf_equals_squared_modulus_form():
    p = _params(3)
    h = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    out = fourier_head(p, h, 8)
    a = np.asarray(h, np.float64) @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)
    z = a[:, :5] + 1j * a[:, 5:]
    x = np.linspace(-1, 1, 33)
    g = np.abs(sum(z[:, j, None] * np.exp(1j * np.pi * j * x[None]) for j in range(5))) ** 2
    ref = g / (2 * (np.abs(z) ** 2).sum(-1, keepdims=True))
    np.testing.assert_allclose(fourier_pdf(out.coeffs, jnp.asarray(x, jnp.float32)), ref, rtol=1e-4, atol=1e-5)
    centers = np.asarray(bin_centers(8))
    np.testing.assert_allclose(centers, -1 + (2 * np.arange(8) + 1) / 8, atol=1e-7)
    pm = np.abs(sum(z[:, j, None] * np.exp(1j * np.pi * j * centers[None]) for j in range(5))) ** 2
    np.testing.assert_allclose(out.pmf, pm / pm.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_regularizer_formula_and_loss_with_runtime_gamma():
    p = _params(5, scale=0.3)
    h = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6)), jnp.float32)
    labels = jnp.asarray([0, 3, 7, 9, 1])
    out = fourier_head(p, h, 10)
    c = np.asarray(out.coeffs)
    k = np.arange(5)
    ref = 2 * np.mean(np.sum(2 * np.pi**2 * k**2 * (c[..., 0] ** 2 + c[..., 1] ** 2), -1))
    np.testing.assert_allclose(fourier_regularizer(out.coeffs), ref, rtol=1e-5)
    traces = []

    @jax.jit
    def run(p, gamma):
        traces.append(1)
        return jax.value_and_grad(lambda p: fourier_head_loss(p, h, labels, 10, gamma=gamma), has_aux=True)(p)

    (l0, m0), g0 = run(p, jnp.float32(0.0))
    (l1, m1), _ = run(p, jnp.float32(1e-3))
    assert len(traces) == 1
    ce = -np.mean(np.asarray(out.logits)[np.arange(5), np.asarray(labels)])
    np.testing.assert_allclose(l0, ce, rtol=1e-5)
    np.testing.assert_allclose(l1, ce + 1e-3 * ref, rtol=1e-5)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g0))
    # a mask drops entries from the mean
    lm, _ = fourier_head_loss(p, h, labels, 10, mask=jnp.asarray([1, 1, 0, 0, 0]))
    np.testing.assert_allclose(lm, -np.mean(np.asarray(out.logits)[[0, 1], [0, 3]]), rtol=1e-5)


def test_init_is_scaled_down_and_gives_near_uniform_pmf():
    p = fourier_head_init(jax.random.key(0), 16, 8)
    assert p["w"].shape == (16, 18) and p["b"].shape == (18,)
    assert float(jnp.abs(p["w"]).max()) <= 0.25 / 100 + 1e-7
    out = fourier_head(p, jnp.zeros((1, 16)), 5)
    assert np.all(np.isfinite(np.asarray(out.pmf)))


@pytest.mark.parametrize("call, msg", [
    (lambda p: fourier_head(p, jnp.zeros((2, 5)), 4), "hidden"),
    (lambda p: fourier_head(p, jnp.zeros((2, 6)), 0), "num_bins"),
    (lambda p: fourier_head({"w": jnp.zeros((6, 3)), "b": jnp.zeros(3)}, jnp.zeros((2, 6)), 4), "params w"),
    (lambda p: fourier_head_loss(p, jnp.zeros((2, 6)), jnp.asarray([0, 4]), 4), "labels must lie"),
    (lambda p: fourier_head_loss(p, jnp.zeros((2, 6)), jnp.asarray([0.0, 1.0]), 4), "integer"),
    (lambda p: fourier_head_loss(p, jnp.zeros((2, 6)), jnp.asarray([0, 1]), 4, gamma=-1.0), "gamma"),
    (lambda p: fourier_head_init(jax.random.key(0), 6, 0), "num_frequencies"),
    (lambda p: fourier_pdf(jnp.zeros((3, 4)), jnp.zeros(5)), "coeffs"),
])
def test_bad_inputs(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(_params(0))
