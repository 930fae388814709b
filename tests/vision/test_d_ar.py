"""tokjax.vision.d_ar (P33 D-AR): group-aligned flow decoder, streaming previews, loss and stage-2 NTP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import Model, ModelConfig
from tokjax.vision import d_ar as D
from tokjax.vision.flextok import image_tokens, register_vocab

P, N, G, C = 16, 16, 8, 4


@pytest.fixture(scope="module")
def tok():
    cfg = ModelConfig(vocab_size=4, d_model=16, n_layers=1, n_heads=2, max_len=P + N)
    params = D.d_ar_init(cfg, jax.random.key(0))
    # perturb the zero-initialised read-out so the decoder's velocity is not identically 0
    params["flextok"]["out"]["w"] = 0.3 * jax.random.normal(jax.random.key(1), (16, C))
    return params, cfg


@pytest.fixture(scope="module")
def ids(tok):
    from tokjax.data import glyphs

    params, cfg = tok
    x = jnp.asarray(image_tokens(glyphs(4, size=8, seed=0).images))
    return jax.jit(D.d_ar_encode, static_argnames="cfg")(params, cfg, x)[1]


def _point_mass(x_star):
    return lambda x, t, g: (x - x_star) / t  # the exact velocity of a point mass: x_t = (1 - t) x* + t eps


_sample = jax.jit(lambda x1, x_star, key, steps, shift: D.grouped_flow_sample(
    _point_mass(x_star), x1, key, steps=steps, num_groups=G, time_shift=shift))


@settings(max_examples=12, deadline=None)
@given(steps=st.integers(1, 24), shift=st.floats(0.5, 4.0), seed=st.integers(0, 100))
def test_euler_on_a_point_mass_lands_on_x_star_at_any_step_count(steps, shift, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x_star = jax.random.normal(k1, (3, 5, 2))
    x1 = 2.0 * jax.random.normal(k2, (3, 5, 2))
    x, prev = _sample(x1, x_star, jax.random.key(0), jnp.int32(steps), jnp.float32(shift))
    np.testing.assert_allclose(np.asarray(x), np.asarray(x_star), atol=2e-5)
    # every step's x0 estimate of a point mass is x* itself, so every preview is x*, the last one exactly x
    np.testing.assert_allclose(np.asarray(prev), np.broadcast_to(np.asarray(x_star), prev.shape), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(prev[-1]), np.asarray(x))
    assert _sample._cache_size() == 1  # new steps / shift values never recompile


def test_group_steps_partition_the_steps_and_match_group_of_step():
    for S in range(1, 20):
        for g_count in (1, 2, 3, 8):
            groups = [int(D.group_of_step(i, S, g_count)) for i in range(S)]
            assert groups[0] == 0 and groups == sorted(groups) and max(groups) < g_count
            if S >= g_count:
                assert groups[-1] == g_count - 1
            spans = [tuple(int(v) for v in D.group_steps(g, S, g_count)) for g in range(g_count)]
            assert spans[0][0] == 0 and spans[-1][1] == S
            for g, (a, b) in enumerate(spans):
                assert list(range(a, b)) == [i for i in range(S) if groups[i] == g]
    assert [int(D.group_of_step(i, G, G)) for i in range(G)] == list(range(G))  # steps = groups: step g reads g
    t = jnp.linspace(0, 1, 11)
    np.testing.assert_array_equal(np.asarray(D.shift_time(t, 1.0)), np.asarray(t))
    assert float(D.shift_time(0.0, 2.0)) == 0.0 and float(D.shift_time(1.0, 2.0)) == 1.0
    assert float(D.shift_time(0.5, 2.0)) > 0.5  # shift > 1 moves time toward noise


def test_step_g_reads_only_groups_le_g(tok, ids):
    params, cfg = tok
    g = 2
    later = np.asarray(ids).copy()
    later[:, (g + 1) * 2:] = (later[:, (g + 1) * 2:] + 37) % 125  # change every id of groups > g
    later = jnp.asarray(later)
    from tokjax.vision.fsq import fsq

    q = fsq((5, 5, 5))
    c0 = D.d_ar_conditions(params, cfg, q.ids_to_codes(ids))
    c1 = D.d_ar_conditions(params, cfg, q.ids_to_codes(later))
    np.testing.assert_allclose(np.asarray(c0[:, :6]), np.asarray(c1[:, :6]), atol=1e-6)  # causal conditions
    assert not np.allclose(np.asarray(c0[:, 6:]), np.asarray(c1[:, 6:]))
    for visible in ("group", "prefix"):
        a = D.d_ar_visible(params, c0, g, visible=visible)
        b = D.d_ar_visible(params, c1, g, visible=visible)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(D.d_ar_visible(params, c0, jnp.array([0, 1, 7, 3]))[2]),
                                  np.asarray(c0[2, 14:16]))
    assert not np.allclose(np.asarray(D.d_ar_visible(params, c0, g, visible="full")),
                           np.asarray(D.d_ar_visible(params, c1, g, visible="full")))
    # the decode's previews up to group g do not depend on later ids (what makes streaming possible)
    key = jax.random.key(4)
    p0 = D.d_ar_decode(params, cfg, ids, key).previews
    p1 = D.d_ar_decode(params, cfg, later, key).previews
    np.testing.assert_allclose(np.asarray(p0[:g + 1]), np.asarray(p1[:g + 1]), atol=1e-5)
    assert not np.allclose(np.asarray(p0[g + 1:]), np.asarray(p1[g + 1:]), atol=1e-4)


def test_d_ar_last_preview_is_the_final_sample_stream_equals_batch_and_steps_do_not_recompile(tok, ids):
    params, cfg = tok
    key = jax.random.key(5)
    out = D.d_ar_decode(params, cfg, ids, key)
    assert out.x.shape == (4, P, C) and out.previews.shape == (G, 4, P, C)
    np.testing.assert_array_equal(np.asarray(out.previews[-1]), np.asarray(out.x))
    assert not np.allclose(np.asarray(out.previews[0]), np.asarray(out.x))  # coarse preview != final
    items = list(D.d_ar_stream(params, cfg, [ids[:, 2 * g:2 * g + 2] for g in range(G)], key))
    assert [it.group for it in items] == list(range(G))
    np.testing.assert_allclose(np.stack([np.asarray(it.preview) for it in items]), np.asarray(out.previews),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(items[-1].x), np.asarray(out.x))
    before = D._run._cache_size()
    for s, shift, temp in [(3, 1.0, 0.5), (16, 3.0, 1.0), (1, 2.0, 0.0)]:
        o = D.d_ar_decode(params, cfg, ids, key, steps=s, time_shift=shift, temperature=temp)
        assert bool(jnp.all(jnp.isfinite(o.x)))
        np.testing.assert_array_equal(np.asarray(o.previews[-1]), np.asarray(o.x))
    assert D._run._cache_size() == before


@pytest.mark.slow  # value_and_grad of three stacked forwards: default-suite time
def test_loss_trains_every_part_and_group_alignment_reaches_the_gradients(tok):
    from tokjax.data import glyphs
    from tokjax.losses.registry import make_loss

    params, cfg = tok
    x = jnp.asarray(image_tokens(glyphs(4, size=8, seed=1).images))
    loss = make_loss("d_ar", visible="group")

    @jax.jit
    def grads(p, group):
        return jax.value_and_grad(lambda q: D.d_ar_loss(q, cfg, {"x": x, "group": group}, jax.random.key(2))[0])(p)

    val, g = jax.value_and_grad(lambda p: loss(p, cfg, {"x": x}, jax.random.key(2))[0])(params)
    assert np.isfinite(float(val))
    total = lambda tree: sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(tree))  # noqa: E731
    assert total(g["d_ar"]["cond"]) > 0 and total(g["flextok"]["dec"]) > 0 and total(g["flextok"]["fsq_in"]) > 0
    # every image at group 0: the decoder reads c_0, c_1 only, which see queries 0, 1 only
    _, g0 = grads(params, jnp.zeros((4,), jnp.int32))
    pos = np.abs(np.asarray(g0["d_ar"]["pos"])).sum(axis=1)
    assert pos[:2].min() > 0 and pos[2:].max() == 0.0
    _, g7 = grads(params, jnp.full((4,), 7, jnp.int32))
    assert np.abs(np.asarray(g7["d_ar"]["pos"])).sum(axis=1).min() > 0


@pytest.mark.slow
def test_stage2_generate_streams_the_same_samples_through_the_callback(tok):
    params, cfg = tok
    vocab = register_vocab()
    lm = Model.init(ModelConfig(vocab_size=vocab.size, d_model=16, n_layers=1, n_heads=2, max_len=N + 1),
                    jax.random.key(3))
    labels = np.array([0, 3, 9])
    out = D.d_ar(lm, params, cfg, labels, jax.random.key(6))
    assert out.ids.shape == (3, N) and out.ids.min() >= 0 and out.ids.max() < 125
    assert out.x.shape == (3, P, C) and out.previews.shape == (G, 3, P, C)
    np.testing.assert_array_equal(out.previews[-1], out.x)
    seen = []
    streamed = D.d_ar_generate(lm, params, cfg, labels, jax.random.key(6), callback=lambda g, p: seen.append((g, p)))
    assert [g for g, _ in seen] == list(range(G))
    np.testing.assert_array_equal(streamed.ids, out.ids)
    np.testing.assert_allclose(np.stack([p for _, p in seen]), out.previews, atol=1e-6)
    np.testing.assert_allclose(streamed.x, out.x, atol=1e-6)


def test_bad_inputs_raise(tok, ids):
    params, cfg = tok
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="steps"):
        D.d_ar_decode(params, cfg, ids, key, steps=0)
    with pytest.raises(ValueError, match="time_shift"):
        D.d_ar_decode(params, cfg, ids, key, time_shift=0.0)
    with pytest.raises(ValueError, match=r"\[0, 125\)"):
        D.d_ar_decode(params, cfg, ids.at[0, 0].set(125), key)
    with pytest.raises(ValueError, match="ids must be int"):
        D.d_ar_decode(params, cfg, ids[:, :8], key)
    with pytest.raises(ValueError, match="must divide"):
        D.d_ar_decode(params, cfg, ids, key, num_groups=3)
    with pytest.raises(ValueError, match="visible must be one of"):
        D.make_d_ar_loss(visible="causal")
    with pytest.raises(ValueError, match="no streaming previews"):
        next(D.d_ar_stream(params, cfg, [ids[:, :2]], key, visible="full"))
    with pytest.raises(ValueError, match="group 0 must be"):
        next(D.d_ar_stream(params, cfg, [ids[:, :3]], key))
    with pytest.raises(ValueError, match="sampler"):
        D.grouped_flow_sample(lambda x, t, g: x, jnp.zeros((2, 3)), key, steps=2, num_groups=2, sampler="heun")
    with pytest.raises(ValueError, match="previews must be"):
        D.grouped_flow_sample(lambda x, t, g: x, jnp.zeros((2, 3)), key, steps=2, num_groups=2,
                              previews=jnp.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match="'d_ar' entry"):
        D.d_ar_conditions({"flextok": {}}, cfg, jnp.zeros((1, N, 3)))
    with pytest.raises(ValueError, match="rng"):
        D.d_ar_loss(params, cfg, {"x": jnp.zeros((1, P, C))}, None)
    with pytest.raises(ValueError, match="vocab_size"):
        lm = Model.init(ModelConfig(vocab_size=100, d_model=16, n_layers=1, n_heads=2, max_len=20), key)
        D.d_ar_generate(lm, params, cfg, [1], key)


@pytest.mark.slow
def test_fsq_scale_reaches_the_query_encoder(tok):
    """d_ar_init(fsq_scale=s) passes FlexTok's fixed pre-FSQ multiplier through: the queries' z is s times the
    unscaled z of the same key, and the d_ar loss gives s a zero gradient."""
    from tokjax.data import glyphs
    from tokjax.vision.flextok import _pre_quant

    _, cfg = tok
    x = jnp.asarray(image_tokens(glyphs(4, size=8, seed=0).images))
    base, scaled = D.d_ar_init(cfg, jax.random.key(0)), D.d_ar_init(cfg, jax.random.key(0), fsq_scale=0.25)
    np.testing.assert_allclose(_pre_quant(scaled, cfg, x), 0.25 * _pre_quant(base, cfg, x), rtol=1e-5, atol=1e-7)
    scaled["flextok"]["out"]["w"] = 0.3 * jax.random.normal(jax.random.key(1), (16, C))
    g = jax.grad(lambda p: D.make_d_ar_loss()(p, cfg, {"x": x}, jax.random.key(2))[0])(scaled)
    assert float(g["flextok"]["fsq_in"]["scale"]) == 0.0 and float(jnp.abs(g["flextok"]["fsq_in"]["w"]).sum()) > 0
    with pytest.raises(ValueError, match="fsq_scale"):
        D.d_ar_init(cfg, jax.random.key(0), fsq_scale=0.0)
