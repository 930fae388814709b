"""tokjax.vision.flow: the continuous-token flow head, its samplers, time conditioning and continuous raster AR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.vision import flow as F

C, D = 4, 32
X_STAR = jnp.array([0.3, -1.2, 2.0, 0.5])


def _point_mass(z, x_t, t):
    return (x_t - X_STAR) / t  # the exact velocity of a point mass at X_STAR


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=11, d_model=D, n_layers=2, n_heads=4, max_len=16)
    params = dict(Model.init(cfg, jax.random.key(0)).params)
    params["flow"] = F.continuous_init(jax.random.key(1), cfg, C, width=16, depth=2)
    # perturb the zero-initialised AdaLN / output layers so the head is not identically 0
    params["flow"] = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(a.size), a.shape),
                                  params["flow"])
    return Model(params, cfg)


@pytest.mark.parametrize("sampler", F.SAMPLERS)
def test_point_mass_lands_exactly_at_any_step_count_without_recompiling(sampler):
    traces = []

    @jax.jit
    def run(steps, key):
        traces.append(1)
        return F.flow_sample(_point_mass, jnp.zeros((5, 1)), key, steps=steps, sampler=sampler, token_dim=C)

    for i, steps in enumerate([1, 2, 3, 8, 25]):
        x, evals = run(jnp.int32(steps), jax.random.key(i))
        np.testing.assert_allclose(np.asarray(x), np.broadcast_to(np.asarray(X_STAR), (5, C)), atol=1e-5)
        assert int(evals) == steps
    assert len(traces) == 1  # one compile for every step count


@pytest.mark.slow  # default-suite time; the other tests of this file keep the method covered
def test_guidance_one_is_the_conditional_sampler_and_evals_double():
    head = F.flow_head_init(jax.random.key(0), D, C, 16, 2)
    head = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape), head)
    z = jax.random.normal(jax.random.key(1), (3, D))
    run = jax.jit(lambda g: F.flow_sample(head, z, jax.random.key(2), steps=4, z_uncond=-z, guidance=g))
    a, ea = jax.jit(lambda: F.flow_sample(head, z, jax.random.key(2), steps=4))()
    (b, eb), (c, _) = run(1.0), run(3.0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert int(ea) == 4 and int(eb) == 8 and not np.allclose(np.asarray(a), np.asarray(c))


def test_bad_inputs_raise():
    head = F.flow_head_init(jax.random.key(0), D, C)
    z = jnp.zeros((2, D))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        F.flow_sample(head, z, jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match="sampler"):
        F.flow_sample(head, z, jax.random.key(0), steps=2, sampler="heun")
    with pytest.raises(ValueError, match="temperature"):
        F.flow_sample(head, z, jax.random.key(0), steps=2, temperature=-1.0)
    with pytest.raises(ValueError, match="token_dim"):
        F.flow_head_loss(head, z, jnp.zeros((2, C + 1)), jax.random.key(0))
    with pytest.raises(ValueError, match="token_dim"):
        F.flow_sample(head, z, jax.random.key(0), steps=2, token_dim=C + 1)
    with pytest.raises(ValueError, match="d_model"):
        F.flow_sample(head, jnp.zeros((2, D + 1)), jax.random.key(0), steps=2)
    with pytest.raises(ValueError, match="t_samples"):
        F.flow_head_loss(head, z, jnp.zeros((2, C)), jax.random.key(0), t_samples=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        F.continuous_ar(length=4, steps=[2, 0, 1, 1])
    with pytest.raises(ValueError, match="cond must be"):
        F.cond_hooks(jnp.zeros((2, D)))


def test_finite_at_t_zero_and_one_with_finite_gradients():
    head = F.flow_head_init(jax.random.key(0), D, C)
    z, x = jax.random.normal(jax.random.key(1), (2, 3, D)), jax.random.normal(jax.random.key(2), (2, 3, C))
    apply = jax.jit(F.flow_head_apply)
    for t in (0.0, 1.0):
        v = apply(head, z, x, t)
        assert v.shape == (2, 3, C) and bool(jnp.all(jnp.isfinite(v)))
        assert bool(jnp.all(jnp.isfinite(F.time_embed(head["t_emb"], jnp.full((3,), t)))))
    g = jax.jit(jax.grad(lambda h: F.flow_head_loss(h, z, x, jax.random.key(3), t_samples=2)))(head)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    assert float(jnp.abs(g["out"]["w"]).sum()) > 0  # the zero-initialised output layer still learns


def test_cond_hooks_at_layer_zero_equal_adding_to_the_input():
    cfg = ModelConfig(vocab_size=8, d_model=D, n_layers=1, n_heads=4, max_len=8)
    params = Model.init(cfg, jax.random.key(0)).params
    e = jax.random.normal(jax.random.key(1), (2, 5, D))
    cond = F.time_embed(F.time_embed_init(jax.random.key(2), D), jax.random.uniform(jax.random.key(3), (2, 5)))
    a = jax.jit(lambda p: forward(p, cfg, Inputs(embeds=e), hooks=F.cond_hooks(cond)).hidden)(params)
    b = jax.jit(lambda p: forward(p, cfg, Inputs(embeds=e + cond)).hidden)(params)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_registered_flow_loss_trains_backbone_projection_and_head(model):
    from tokjax.losses.registry import make_loss

    loss = make_loss("flow", t_samples=2)
    batch = F.continuous_batch(np.random.default_rng(0).normal(size=(4, 6, C)), np.arange(4), num_classes=10,
                               class_dropout=0.5, key=jax.random.key(0))
    (val, metrics), g = jax.jit(jax.value_and_grad(lambda p: loss(p, model.cfg, batch, jax.random.key(1)),
                                                   has_aux=True))(model.params)
    assert np.isfinite(float(val)) and float(metrics["flow_mse"]) == float(val)
    for part in (g["flow"]["head"]["out"]["w"], g["flow"]["proj"]["w"], g["embed"]):
        assert float(jnp.abs(part).sum()) > 0


@pytest.mark.parametrize("guided", [False, True])
def test_cached_decode_equals_full_forward(model, guided):
    """Deterministic sampler (temperature 0): each token is a function of its hidden state, so re-running the
    full forward on the decoded canvas and sampling every position at once must give the canvas back."""
    L, labels, steps = 6, np.array([1, 7, 3]), 3
    s = F.continuous_ar(length=L, steps=steps, temperature=0.0, guidance=2.0 if guided else 1.0)
    out = F.sample_continuous(model, s, labels, jax.random.key(0), num_classes=10)
    assert out.tokens.shape == (3, L, C) and out.stats["forward_calls"] == L and out.stats["head_evals"] == L * steps

    @jax.jit
    def full(params, x):
        zc = F.continuous_hidden(params, model.cfg, x, labels)
        zu = F.continuous_hidden(params, model.cfg, x, np.full(3, 10)) if guided else None
        return F.flow_sample(params["flow"]["head"], zc, jax.random.key(9), steps=steps, temperature=0.0,
                             z_uncond=zu, guidance=2.0)[0]

    np.testing.assert_allclose(out.tokens, np.asarray(full(model.params, jnp.asarray(out.tokens))), atol=2e-4)


@pytest.mark.slow  # the sampler no-recompile test stays in the default suite
def test_new_steps_and_guidance_do_not_recompile_decode(model):
    from tokjax.decoding import driver

    F.sample_continuous(model, F.continuous_ar(length=4, steps=2), np.array([0, 1]), jax.random.key(0),
                        num_classes=10)
    before = driver._loop_jit._cache_size()
    out = F.sample_continuous(model, F.continuous_ar(length=4, steps=[5, 1, 3, 2], temperature=0.5),
                              np.array([0, 1]), jax.random.key(1), num_classes=10)
    assert driver._loop_jit._cache_size() == before and out.stats["head_evals"] == 11


# ------------------------------------------------------------------ flow_path_stats (P19 DiSA's motivation panel)
def test_path_stats_point_mass_is_straight_with_zero_variance_at_any_step_count():
    """Euler on a point mass moves every step toward x* along the same line: straightness 1 at every step count,
    and every draw lands on x*, so the variance across draws is 0 (one compile for every step count)."""
    traces = []

    @jax.jit
    def run(steps, key):
        traces.append(1)
        return F.flow_path_stats(_point_mass, jnp.zeros((3, 1)), key, samples=4, steps=steps, token_dim=C)

    for i, steps in enumerate([1, 2, 7, 30]):
        st = run(jnp.int32(steps), jax.random.key(i))
        assert st.variance.shape == st.straightness.shape == (3,) and st.samples.shape == (4, 3, C)
        np.testing.assert_allclose(np.asarray(st.straightness), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(st.variance), 0.0, atol=1e-10)
    assert len(traces) == 1


def test_path_stats_curved_field_is_not_straight_and_draws_are_flow_sample():
    """A rotating field bends every multi-step path (straightness < 1, = 1 for one step); a velocity sampled from
    x_1 = 0 (temperature 0) is deterministic (variance exactly 0); draw k is flow_sample with key split(key, K)[k]."""
    def rotate(z, x, t):
        return jnp.stack([-x[..., 1], x[..., 0]], -1) + z[..., :2]

    z = jnp.ones((2, 2))
    bend = jax.jit(lambda steps: F.flow_path_stats(rotate, z, jax.random.key(0), samples=3, steps=steps, token_dim=2))
    bent, one = bend(jnp.int32(8)), bend(jnp.int32(1))
    s = np.asarray(bent.straightness)
    assert np.all(s < 0.999) and np.all(s > 0.0) and np.all(np.asarray(bent.variance) > 0)
    np.testing.assert_allclose(np.asarray(one.straightness), 1.0, atol=1e-6)

    w = jnp.asarray(np.random.default_rng(0).normal(size=(C, C)), jnp.float32)

    def field(z, x, t):  # a nonlinear stand-in for a trained head (the head itself: flow_sample's tests)
        return jnp.tanh(x @ w + z) * (1.0 + t)

    zh = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, C)), jnp.float32)

    @jax.jit
    def both(temperature):
        st = F.flow_path_stats(field, zh, jax.random.key(3), samples=4, steps=5, temperature=temperature, token_dim=C)
        keys = jax.random.split(jax.random.key(3), 4)
        return st, jnp.stack([F.flow_sample(field, zh, k, steps=5, temperature=temperature, token_dim=C)[0]
                              for k in keys])

    det, _ = both(0.0)
    assert np.all(np.asarray(det.variance) == 0.0)
    st, draws = both(1.0)
    draws = np.asarray(draws)
    np.testing.assert_allclose(np.asarray(st.samples), draws, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st.variance), draws.var(0, ddof=1).mean(-1), rtol=1e-5, atol=1e-9)
    assert np.all(np.asarray(st.straightness) <= 1.0 + 1e-6) and np.all(np.asarray(st.variance) > 0)


def test_path_stats_bad_inputs_raise():
    head = F.flow_head_init(jax.random.key(0), D, C)  # test_bad_inputs_raise's head (its init compiles are cached)
    z = jnp.zeros((2, D))
    for k in (1, 0, True, 2.0):
        with pytest.raises(ValueError, match="samples must be an int >= 2"):
            F.flow_path_stats(head, z, jax.random.key(0), samples=k, steps=2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        F.flow_path_stats(head, z, jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match="steps must be a scalar"):
        F.flow_path_stats(head, z, jax.random.key(0), steps=jnp.array([2, 3]))
    with pytest.raises(ValueError, match="sampler"):
        F.flow_path_stats(head, z, jax.random.key(0), steps=2, sampler="heun")
    with pytest.raises(ValueError, match="d_model"):
        F.flow_path_stats(head, jnp.zeros((2, D + 1)), jax.random.key(0), steps=2)
