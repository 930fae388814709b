"""AMU-Tuning (P30): class-mean init, standardised aux logits, uncertainty gates, multi-branch loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.logits.amu_tuning import (
    UNCERTAINTY_KINDS, amu_fuse, amu_init, amu_logits, amu_loss, logit_standardize, uncertainty_factor,
)


def _np_gate(z, kind, power):
    """Returns the official clip/amu.py ``uncertainty`` in NumPy (torch.std is unbiased)."""
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    C = p.shape[-1]
    if kind == "none":
        return np.ones(p.shape[:-1] + (1,))
    if kind == "entropy":
        return np.exp(power * (-(p * np.log2(p)).sum(-1, keepdims=True) / np.log2(C)))
    if kind == "max":
        return 1.0 / p.max(-1, keepdims=True) ** power
    if kind == "energy":
        m = p.max(-1, keepdims=True)
        return 1.0 / (2 * (np.log(np.exp((p - m) / 2).sum(-1, keepdims=True)) + m)) ** power
    mu, sd = p.mean(-1, keepdims=True), p.std(-1, ddof=1, keepdims=True)
    return 1.0 / (((((p - mu) / sd) ** 4).mean(-1, keepdims=True) / 250) ** power)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.5, 3.0, 20.0]))
def test_uncertainty_gates_match_official_formulas(seed, scale):
    z = np.random.default_rng(seed).normal(size=(4, 10)) * scale
    for kind in UNCERTAINTY_KINDS:
        got = np.asarray(uncertainty_factor(jnp.asarray(z, jnp.float32), kind, 0.4))
        np.testing.assert_allclose(got, _np_gate(z, kind, 0.4), rtol=2e-3, err_msg=kind)
    # a confident (peaked) row gets a smaller kurtosis gate than a flat one
    peaked = np.array([[10.0] + [0.0] * 9, [0.1] * 5 + [0.0] * 5])
    k = np.asarray(uncertainty_factor(jnp.asarray(peaked), "moment", 0.4))[:, 0]
    assert k[0] < k[1]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=20, deadline=None)
@given(C=st.integers(3, 200), height=st.floats(0.5, 30.0), sign=st.sampled_from([-1.0, 1.0]))
def test_kurtosis_gate_is_constant_on_one_spike_rows(C, height, sign):
    # Why the first P30 experiment was void (issue 15): when softmax(z_0) is one spike over a flat rest,
    # the kurtosis (unbiased std, as torch.std) is (C^2 - 3C + 3)(C - 1) / C^2 whatever the spike's height,
    # so the gate is one constant; it only varies when the probability mass spreads over several classes.
    z = np.zeros((1, C))
    z[0, 0] = sign * height
    kurt = (C * C - 3 * C + 3) * (C - 1) / C**2
    got = float(np.asarray(uncertainty_factor(jnp.asarray(z, jnp.float32), "moment", 0.4))[0, 0])
    np.testing.assert_allclose(got, (kurt / 250.0) ** -0.4, rtol=2e-3)
    if C >= 10:  # two equal spikes: lower kurtosis, so a larger gate than any single spike
        z[0, 1] = z[0, 0]
        two = float(np.asarray(uncertainty_factor(jnp.asarray(z, jnp.float32), "moment", 0.4))[0, 0])
        assert two > got


def test_init_is_class_mean_of_normalised_features_and_logits_are_standardised():
    r = np.random.default_rng(0)
    f = r.normal(size=(12, 5))
    y = np.repeat(np.arange(3), 4)
    w = np.asarray(amu_init(jnp.asarray(f, jnp.float32), jnp.asarray(y), 3))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(w, np.stack([fn[y == c].mean(0) for c in range(3)], 1), rtol=1e-5, atol=1e-6)
    z = np.asarray(amu_logits(jnp.asarray(w), jnp.asarray(f, jnp.float32)))
    np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(-1, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(logit_standardize(jnp.ones((2, 4))), 0.0)  # constant rows: 0, not NaN


def test_multi_branch_loss_limits_and_gradients():
    r = np.random.default_rng(1)
    z0 = jnp.asarray(r.normal(size=(6, 4)) * 3, jnp.float32)
    f = jnp.asarray(r.normal(size=(6, 5)), jnp.float32)
    y = jnp.asarray(r.integers(0, 4, size=6))
    w = jnp.asarray(r.normal(size=(5, 4)), jnp.float32)

    def ce(z):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z, -1), y[:, None], -1))

    # kind none, lam 1: CE on the summed logits z0 + alpha z_aux (its gradient too)
    run = jax.jit(jax.value_and_grad(lambda w, a, l: amu_loss(w, z0, f, y, alpha=a, lam=l, kind="none")[0]))
    ref = jax.value_and_grad(lambda w: ce(z0 + 0.7 * amu_logits(w, f)))(w)
    got = run(w, 0.7, 1.0)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-6)
    # lam 0: only the auxiliary branch; alpha and lam are runtime (same compiled program)
    got0 = run(w, 0.7, 0.0)
    np.testing.assert_allclose(got0[0], ce(amu_logits(w, f)), rtol=1e-5)
    assert run._cache_size() == 1
    # the gate multiplies the bias
    k = uncertainty_factor(z0, "moment", 0.4)
    np.testing.assert_allclose(amu_fuse(z0, amu_logits(w, f), 0.5), z0 + 0.5 * k * amu_logits(w, f), rtol=1e-5)
    loss, m = amu_loss(w, z0, f, y)
    assert set(m) >= {"loss_fused", "loss_aux", "acc_fused", "acc_aux", "kappa_mean"}
    np.testing.assert_allclose(loss, 0.35 * m["loss_fused"] + 0.65 * m["loss_aux"], rtol=1e-5)
    # the gate carries no gradient into the zero-shot logits
    g_z0 = jax.grad(lambda z: jnp.sum(uncertainty_factor(z, "moment", 0.4)))(z0)
    assert np.all(np.asarray(g_z0) == 0)


@pytest.mark.parametrize("call, msg", [
    (lambda: uncertainty_factor(jnp.zeros((2, 3)), "kurt"), "uncertainty kind"),
    (lambda: uncertainty_factor(jnp.zeros((2, 3)), "moment", -1.0), "power"),
    (lambda: uncertainty_factor(jnp.zeros((2, 1))), "C >= 2"),
    (lambda: amu_fuse(jnp.zeros((2, 3)), jnp.zeros((2, 4))), "same shape"),
    (lambda: amu_init(jnp.zeros((4, 2)), jnp.asarray([0, 1, 2, 5]), 3), "labels must lie"),
    (lambda: amu_loss(jnp.zeros((2, 3)), jnp.zeros((4, 3)), jnp.ones((4, 2)), jnp.asarray([0, 1, 2, 3])),
     "labels must lie"),
    (lambda: amu_loss(jnp.zeros((2, 3)), jnp.zeros((4, 3)), jnp.ones((4, 2)), jnp.zeros(4, jnp.int32), lam=1.5),
     "lam"),
    (lambda: amu_logits(jnp.zeros((3, 3)), jnp.ones((4, 2))), "agree on D"),
])
def test_bad_inputs(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
