"""Tests for the P2 TempNet network and its logit transform (tokjax.logits.tempnet)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.logits.tempnet import (
    TempNetTemperature, constant_tempnet, tempnet, tempnet_apply, tempnet_features, tempnet_init,
)
from tokjax.model.ops import repeat_rows, take_rows

V, H = 24, 8


def _numpy_tempnet(p, z, center=True):
    """The official TempNet.forward (zhqiu/TempNet tempnet.py), written out in float64 numpy."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    z = np.asarray(z, np.float64)
    if center:
        z = z - z.max(-1, keepdims=True)
    x = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)  # F.normalize
    h = 1.0 / (1.0 + np.exp(-(x @ p["w1"] + p["b1"])))  # Linear, Sigmoid (Dropout off in eval)
    h = h @ p["w2"] + p["b2"]  # Linear
    e = np.exp(h / np.exp(p["log_scale"]) - (h / np.exp(p["log_scale"])).max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)  # Softmax(x / scaler.exp())
    u = ((a - 1.0 / h.shape[-1]) * h) @ p["w_out"] + p["b_out"]  # last((weights - 1/hid) * x)
    return (p["tau_max"] - p["tau_min"]) / (1.0 + np.exp(-u)) + p["tau_min"]


def _scaled(params, s):
    return {k: (v * s if k in ("w1", "b1", "w2", "b2", "w_out") else v) for k, v in params.items()}


@pytest.mark.parametrize("center", [True, False])
def test_matches_the_official_forward_in_numpy(center):
    p = _scaled(tempnet_init(jax.random.PRNGKey(0), V, H, 0.01, 1.2), 4.0)
    p["log_scale"] = jnp.asarray(-0.3)
    z = 5.0 * jax.random.normal(jax.random.PRNGKey(1), (3, 5, V))
    tau = tempnet_apply(p, z, center=center)
    assert tau.shape == (3, 5) and tau.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(tau), _numpy_tempnet(p, z, center), rtol=2e-5, atol=1e-6)


def test_init_matches_the_official_initialisation():
    p = tempnet_init(jax.random.PRNGKey(3), V, H)
    assert float(p["log_scale"]) == 0.0 and float(p["b_out"]) == 0.0
    np.testing.assert_array_equal(np.asarray(p["w_out"]), np.ones(H))
    assert np.abs(np.asarray(p["w1"])).max() <= 1 / np.sqrt(V) and np.abs(np.asarray(p["w2"])).max() <= 1 / np.sqrt(H)
    assert (float(p["tau_min"]), float(p["tau_max"])) == (np.float32(0.01), np.float32(1.2))
    # u >= 0 at initialisation (a softmax-weighted mean of h is at least its plain mean): tau in the upper half
    tau = tempnet_apply(p, jax.random.normal(jax.random.PRNGKey(4), (64, V)) * 3)
    assert float(tau.min()) >= (0.01 + 1.2) / 2 - 1e-6


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([0.0, 1.0, 30.0, 1e4]),
       lo=st.floats(1e-3, 2.0), width=st.floats(1e-3, 5.0), zscale=st.sampled_from([0.0, 1.0, 1e3]),
       masked=st.integers(0, V))
def test_tau_lies_in_its_bounds_and_is_finite(seed, scale, lo, width, zscale, masked):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    p = _scaled(tempnet_init(k1, V, H, lo, lo + width), scale)
    z = zscale * jax.random.normal(k2, (4, V))
    z = z.at[1, :masked].set(-jnp.inf)  # masked tokens (a whole row when masked == V)
    tau = np.asarray(tempnet_apply(p, z))
    lo32, hi32 = np.float32(lo), np.float32(lo + width)
    assert np.all(np.isfinite(tau)) and np.all(tau >= lo32) and np.all(tau <= hi32)


def test_runtime_bounds_override_without_recompiling():
    p = tempnet_init(jax.random.PRNGKey(0), V, H)
    z = jax.random.normal(jax.random.PRNGKey(1), (6, V))
    traces = []

    @jax.jit
    def f(params, lo, hi):
        traces.append(1)
        return tempnet_apply(params, z, tau_min=lo, tau_max=hi)

    a = f(p, 0.1, 0.2)
    b = f(p, 2.0, 3.0)
    assert len(traces) == 1
    assert np.all((np.asarray(a) >= 0.1 - 1e-6) & (np.asarray(a) <= 0.2 + 1e-6))
    assert np.all((np.asarray(b) >= 2.0 - 1e-6) & (np.asarray(b) <= 3.0 + 1e-6))
    # the same bounds stored in the params give the same tau
    q = {**p, "tau_min": jnp.asarray(2.0), "tau_max": jnp.asarray(3.0)}
    np.testing.assert_allclose(np.asarray(tempnet_apply(q, z)), np.asarray(b), rtol=1e-6)


def test_features_are_the_normalised_centred_logits_and_shift_invariant():
    z = jnp.array([[1.0, 2.0, 4.0, -jnp.inf], [3.0, 3.0, 3.0, 3.0]])
    x = np.asarray(tempnet_features(z))
    want0 = np.array([-3.0, -2.0, 0.0, -3.0])  # -inf read as the row's smallest finite logit
    np.testing.assert_allclose(x[0], want0 / np.linalg.norm(want0), rtol=1e-6)
    np.testing.assert_array_equal(x[1], np.zeros(4))  # a flat row: x = 0, not NaN
    p = tempnet_init(jax.random.PRNGKey(0), V, H)
    z = jax.random.normal(jax.random.PRNGKey(2), (3, V))
    np.testing.assert_allclose(np.asarray(tempnet_apply(p, z)), np.asarray(tempnet_apply(p, z + 7.0)), rtol=1e-5)
    assert not np.allclose(np.asarray(tempnet_apply(p, z, center=False)),
                           np.asarray(tempnet_apply(p, z + 7.0, center=False)), rtol=1e-5)


def test_dropout_only_with_a_key():
    p = tempnet_init(jax.random.PRNGKey(0), V, H)
    z = jax.random.normal(jax.random.PRNGKey(1), (8, V)) * 3
    base = np.asarray(tempnet_apply(p, z))
    np.testing.assert_array_equal(np.asarray(tempnet_apply(p, z, dropout=0.5)), base)
    d = np.asarray(tempnet_apply(p, z, dropout=0.5, key=jax.random.PRNGKey(5)))
    assert not np.allclose(d, base)


def test_transform_divides_by_tau_and_keeps_masks():
    p = _scaled(tempnet_init(jax.random.PRNGKey(0), V, H), 5.0)
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (4, V))
    z = z.at[2, :3].set(-jnp.inf)
    t = tempnet(p)
    out, state = t(z)
    tau = tempnet_apply(p, z)
    np.testing.assert_allclose(np.asarray(out), np.asarray(z / tau[:, None]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state["tau"]), np.asarray(tau), rtol=1e-6)
    assert np.all(np.isneginf(np.asarray(out[2, :3])))


def test_state_survives_row_operations_when_batch_equals_hidden():
    # Speculative and cautious strategies repeat / select the rows of the logit state; the TempNet's
    # weights must not be taken for rows even when their leading dimension equals the batch.
    p = tempnet_init(jax.random.PRNGKey(0), V, H)
    t = tempnet(p)
    for batch in (H, 1):
        s = t.init(batch)
        z = jax.random.normal(jax.random.PRNGKey(1), (batch, V))
        out = np.asarray(t.apply(z, s, None)[0])
        rep = t.apply(jnp.repeat(z, 3, axis=0), repeat_rows(s, batch, 3), None)[0]
        np.testing.assert_allclose(np.asarray(rep), np.repeat(out, 3, axis=0), rtol=1e-6)
        back = take_rows(repeat_rows(s, batch, 3), jnp.arange(batch) * 3, batch * 3)
        np.testing.assert_allclose(np.asarray(t.apply(z, back, None)[0]), out, rtol=1e-6)


def test_transforms_with_other_params_are_equal_static_arguments():
    a, b = tempnet(tempnet_init(jax.random.PRNGKey(0), V, H)), tempnet(tempnet_init(jax.random.PRNGKey(1), V, H))
    assert a == b and hash(a) == hash(b)
    assert a != tempnet(tempnet_init(jax.random.PRNGKey(0), V, H), center=False)


@pytest.fixture(scope="module")
def model():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)
    params = jax.tree.map(lambda x: x * 3.0, tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params)
    return tokjax.Model(params=params, cfg=cfg)


def test_constant_tau_net_in_generate_equals_temperature(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    net = constant_tempnet(V, 0.7)
    tau = float(tempnet_apply(net, jnp.zeros((V,))))
    assert abs(tau - 0.7) < 1e-5
    key = jax.random.PRNGKey(11)
    got = tokjax.generate(model, prompts, key=key, max_new_tokens=10, logits=tempnet(net))
    ref = tokjax.generate(model, prompts, key=key, max_new_tokens=10, logits=L.temperature(tau))
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_array_equal(got.lengths, ref.lengths)


def test_bad_input_raises(model):
    with pytest.raises(ValueError, match="tau_min must be smaller than tau_max"):
        tempnet_init(jax.random.PRNGKey(0), V, H, tau_min=1.0, tau_max=1.0)
    with pytest.raises(ValueError, match="tau_min must lie in"):
        tempnet_init(jax.random.PRNGKey(0), V, H, tau_min=0.0, tau_max=1.0)
    with pytest.raises(ValueError, match="vocab must be"):
        tempnet_init(jax.random.PRNGKey(0), 1, H)
    with pytest.raises(ValueError, match="hidden must be"):
        tempnet_init(jax.random.PRNGKey(0), V, 0)
    p = tempnet_init(jax.random.PRNGKey(0), V, H)
    with pytest.raises(ValueError, match="tau_min must be smaller than tau_max"):
        tempnet_apply(p, jnp.zeros((2, V)), tau_min=2.0, tau_max=1.0)
    with pytest.raises(ValueError, match=r"logits must be \[\.\.\., vocab=24\]"):
        tempnet_apply(p, jnp.zeros((2, V + 1)))
    with pytest.raises(ValueError, match="TempNet params must be the dict"):
        tempnet_apply({"w1": p["w1"]}, jnp.zeros((2, V)))
    with pytest.raises(ValueError, match="dropout must lie in"):
        tempnet_apply(p, jnp.zeros((2, V)), dropout=1.0)
    with pytest.raises(ValueError, match="needs TempNet params"):
        TempNetTemperature()
    with pytest.raises(ValueError, match="tau must lie in"):
        constant_tempnet(V, 2.0)
    other = tempnet_init(jax.random.PRNGKey(0), V + 8, H)  # a TempNet for another vocabulary
    with pytest.raises(ValueError, match=r"vocab=32"):
        tokjax.generate(model, [[1, 2]], key=jax.random.PRNGKey(0), max_new_tokens=2, logits=tempnet(other))
