"""Dual-Head KD (P34): normalised binary KL on an auxiliary head, CE on the main head, GA projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.dual_head_kd import (
    aux_logits, binary_kl_norm, binary_kl_norm_per_token, dual_head_kd, init_aux_head, make_dual_head_kd_loss,
    project_conflicting,
)


def _logits(seed, B=2, T=4, V=7, scale=2.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def official_bkl_norm(s, t, T=2.0, eps=1e-8):
    """Returns the official BinaryKLNorm.forward on [N, C] (sigmoid, clamp, KLDivLoss, T^2 sum / N), in float64."""
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    q = np.clip(1 / (1 + np.exp(-(s - t) / T)), eps, 1 - eps)
    kl = 0.5 * (np.log(0.5) - np.log(q)) + 0.5 * (np.log(0.5) - np.log(1 - q))
    return T ** 2 * kl.sum() / s.shape[0]


def test_matches_official_formula():
    s, t = _logits(0), _logits(1)
    mask = jnp.asarray([[1, 1, 0, 1], [1, 0, 0, 1]], bool)
    for T in (1.0, 2.0, 4.0):
        got = float(binary_kl_norm(s, t, mask, temperature=T))
        m = np.asarray(mask)
        want = official_bkl_norm(np.asarray(s)[m], np.asarray(t)[m], T)  # token_mean = per-sample mean
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # the eps cap: beyond |d| = -log(eps) the official clamp makes the loss flat
    big = jnp.asarray([[[40.0]]])
    capped = binary_kl_norm_per_token(big, -big, temperature=1.0)[0, 0]
    assert float(capped) == pytest.approx(official_bkl_norm([[40.0]], [[-40.0]], T=1.0), rel=1e-4)
    assert float(binary_kl_norm_per_token(big, -big, temperature=1.0, eps=0.0)[0, 0]) == pytest.approx(
        0.5 * 80.0 - np.log(2), rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.floats(-5, 5), st.floats(0.5, 4.0))
def test_zero_iff_equal_and_shift_invariant(seed, c, T):
    s, t = _logits(seed), _logits(seed + 1)
    assert float(binary_kl_norm(t, t, temperature=T)) == pytest.approx(0.0, abs=1e-5)
    assert float(binary_kl_norm(s, t, temperature=T)) > 0
    np.testing.assert_allclose(float(binary_kl_norm(s + c, t + c, temperature=T)),
                               float(binary_kl_norm(s, t, temperature=T)), rtol=1e-4, atol=1e-5)
    g = jax.grad(lambda x: binary_kl_norm(x, t, temperature=T))(t)
    assert np.abs(np.asarray(g)).max() < 1e-6


def test_gradient_matches_closed_form_and_teacher_has_none():
    # d/dz_s of T^2 [ (softplus(d) + softplus(-d)) / 2 - log 2 ], d = (z_s - z_t) / T, is T (sigmoid(d) - 1/2)
    s, t = _logits(2), _logits(3)
    T = 2.0
    g = np.asarray(jax.grad(lambda x: binary_kl_norm(x, t, temperature=T, reduction="sum"))(s))
    d = (np.asarray(s, np.float64) - np.asarray(t, np.float64)) / T
    np.testing.assert_allclose(g, T * (1 / (1 + np.exp(-d)) - 0.5), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(jax.grad(lambda y: binary_kl_norm(s, y))(t)) == 0)


def test_dual_head_kd_combines_ce_and_bkl():
    main, aux, teach = _logits(4, V=5), _logits(5, V=9), _logits(6, V=9)
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 5, size=(2, 4)), jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 0], [0, 1, 1, 1]], bool)
    loss, parts = dual_head_kd(main, aux, teach, labels, mask, gamma=0.7, alpha=0.3)
    lp = np.asarray(jax.nn.log_softmax(main, -1))
    m = np.asarray(mask)
    ce = -np.take_along_axis(lp, np.asarray(labels)[..., None], -1)[..., 0][m].mean()
    np.testing.assert_allclose(float(parts["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(parts["bkl"]), official_bkl_norm(np.asarray(aux)[m], np.asarray(teach)[m]),
                               rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.7 * ce + 0.3 * float(parts["bkl"]), rtol=1e-5)
    # the KD term never reaches the main head, nor CE the auxiliary head
    gm, ga = jax.grad(lambda a, b: dual_head_kd(a, b, teach, labels, mask)[0], argnums=(0, 1))(main, aux)
    g_ce = jax.grad(lambda a: dual_head_kd(a, aux, teach, labels, mask, alpha=0.0)[0])(main)
    np.testing.assert_allclose(np.asarray(gm), np.asarray(g_ce), rtol=1e-6, atol=1e-8)
    assert np.abs(np.asarray(ga)).max() > 0
    # an empty mask: 0 and no gradient, no NaN
    v, g = jax.value_and_grad(lambda a: dual_head_kd(a, aux, teach, labels, jnp.zeros((2, 4), bool))[0])(main)
    assert float(v) == 0.0 and np.all(np.asarray(g) == 0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_projection_matches_pcgrad_and_never_opposes_ce(seed):
    r = np.random.default_rng(seed)
    a = {"w": r.normal(size=(3, 2)), "b": r.normal(size=(4,))}
    b = {"w": r.normal(size=(3, 2)), "b": r.normal(size=(4,))}
    fa, fb = (np.concatenate([x["w"].ravel(), x["b"]]) for x in (a, b))
    dot = fb @ fa
    want = fa + (fb - dot / (fa @ fa) * fa if dot < 0 else fb)
    ja = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), a)
    jb = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), b)
    out = project_conflicting(ja, jb)
    got = np.concatenate([np.asarray(out["w"]).ravel(), np.asarray(out["b"])])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got @ fa >= (fa @ fa) * (1 - 1e-4)  # first order: the step does not increase CE


def _numpy_model(seed=0, V=37):
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    specs = tokjax.model.param_specs(cfg)
    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec)), cfg


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_factory_modes():
    params, cfg = _numpy_model(0)
    t_params, _ = _numpy_model(1)
    params = init_aux_head(params, cfg, jax.random.key(0))
    assert params["aux_head"]["kernel"].shape == (16, 37)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 37, size=(3, 8)), jnp.int32)
    batch = {"tokens": tokens, "prompt_lengths": jnp.array([2, 0, 3])}
    fns = {g: make_dual_head_kd_loss((t_params, cfg), alpha=0.5, grad=g) for g in ("sum", "project", "stop")}
    vg = {g: jax.value_and_grad(lambda p, f=f: f(p, cfg, batch, None), has_aux=True) for g, f in fns.items()}

    @jax.jit
    def run(p):
        out = {g: f(p) for g, f in vg.items()}
        # the separate gradients the projection is built from
        ce_only = make_dual_head_kd_loss((t_params, cfg), alpha=0.0)
        kd_only = make_dual_head_kd_loss((t_params, cfg), gamma=0.0, alpha=0.5)
        g_ce = jax.grad(lambda q: ce_only(q, cfg, batch, None)[0])(p)
        g_kd = jax.grad(lambda q: kd_only(q, cfg, batch, None)[0])(p)
        return out, g_ce, g_kd

    out, g_ce, g_kd = run(params)
    (l_sum, m_sum), grad_sum = out["sum"]
    (l_proj, m_proj), grad_proj = out["project"]
    (l_stop, _), grad_stop = out["stop"]
    np.testing.assert_allclose(float(l_sum), float(m_sum["ce"] + 0.5 * m_sum["bkl"]), rtol=1e-6)
    np.testing.assert_allclose(float(l_proj), float(l_sum), rtol=1e-6)
    np.testing.assert_allclose(float(l_stop), float(l_sum), rtol=1e-6)
    leaves = lambda t: np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(t)])  # noqa: E731
    np.testing.assert_allclose(leaves(grad_sum), leaves(g_ce) + leaves(g_kd), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(leaves(grad_proj), leaves(project_conflicting(g_ce, g_kd)), rtol=1e-4, atol=1e-6)
    cos = leaves(g_ce) @ leaves(g_kd) / np.linalg.norm(leaves(g_ce)) / np.linalg.norm(leaves(g_kd))
    np.testing.assert_allclose(float(m_proj["grad_cos"]), cos, rtol=1e-3, atol=1e-5)
    # "stop": the trunk only sees CE, the auxiliary head still learns from the teacher
    trunk = lambda t: {k: v for k, v in t.items() if k != "aux_head"}  # noqa: E731
    np.testing.assert_allclose(leaves(trunk(grad_stop)), leaves(trunk(g_ce)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(leaves(grad_stop["aux_head"]), leaves(g_kd["aux_head"]), rtol=1e-4, atol=1e-6)
    assert float(m_sum["token_count"]) == 7 - 1 + 7 - 2 + 7 - 0  # shifted prompt mask
    h = tokjax.forward(params, cfg, tokens[:, :-1]).hidden
    assert aux_logits(params, h).shape == (3, 7, 37)


def test_bad_inputs():
    s, t = _logits(0), _logits(1)
    labels = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match="vocab size"):
        binary_kl_norm(s, t[..., :5])
    with pytest.raises(ValueError, match="batch, seq"):
        binary_kl_norm(s, t[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        binary_kl_norm(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        dual_head_kd(s, s, t, labels[:, :3])
    with pytest.raises(ValueError, match="labels"):
        dual_head_kd(s, s, t, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="mask shape"):
        dual_head_kd(s, s, t, labels, jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="eps"):
        binary_kl_norm(s, t, eps=0.7)
    params, cfg = _numpy_model(0)
    with pytest.raises(ValueError, match="init_aux_head"):
        make_dual_head_kd_loss((params, cfg))(params, cfg, {"tokens": jnp.zeros((1, 4), jnp.int32)}, None)
    with pytest.raises(ValueError, match="grad"):
        make_dual_head_kd_loss((params, cfg), grad="pcgrad")
