"""tokjax.vision.xar (P10 xAR): entity layouts, the entity Rank mask, Noisy Context Learning and cached decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.model.attention import Causal, Rank
from tokjax.vision import xar as X

C = 3


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=11, d_model=32, n_layers=2, n_heads=4, max_len=20)
    params = dict(Model.init(cfg, jax.random.key(0)).params)
    params["xar"] = X.xar_init(jax.random.key(1), cfg, C)
    return Model(params, cfg)


def test_layouts_partition_the_grid():
    cell = X.xar_layout((4, 4), "cell", 2)
    assert cell.count == 4 and cell.size == 4 and cell.perm[:4] == (0, 1, 4, 5) and cell.perm[4:8] == (2, 3, 6, 7)
    row = X.xar_layout((4, 4), "row")
    assert row.count == 4 and row.perm == tuple(range(16)) and row.entity[4:8] == (1, 1, 1, 1)
    tok = X.xar_layout((4, 4), "token")
    assert tok.count == 16 and tok.size == 1
    for lay in (cell, row, tok):
        assert sorted(lay.perm) == list(range(16)) and list(X.xar_ranks(lay)) == [0] + [e + 1 for e in lay.entity]


def test_token_entities_are_the_causal_mask(model):
    lay = X.xar_layout((4, 4), "token")
    e = jax.random.normal(jax.random.key(2), (2, 17, 32))
    f = jax.jit(lambda p, m: forward(p, model.cfg, Inputs(embeds=e), mask=m, compute_logits=False).hidden)
    np.testing.assert_allclose(np.asarray(f(model.params, Rank(jnp.asarray(X.xar_ranks(lay))))),
                               np.asarray(f(model.params, Causal())), atol=1e-5)


def test_clean_context_mask_matches_a_brute_force_oracle():
    lay = X.xar_layout((4, 4), "cell", 2)
    vis = X._clean_mask(lay)
    L, ent = 16, lay.entity
    for q in range(1 + 2 * L):
        for k in range(1 + 2 * L):
            if k == 0:
                want = True
            elif q == 0:
                want = False
            else:
                qc, kc = q <= L, k <= L  # clean copy?
                eq, ek = ent[(q - 1) % L], ent[(k - 1) % L]
                want = (ek <= eq) if (qc and kc) else (ek < eq) if (not qc and kc) else (ek == eq) if not (qc or kc) \
                    else False
            assert vis[q, k] == want, (q, k)


@pytest.mark.slow  # the cached-decode reference stays in the default suite
def test_velocity_of_an_entity_ignores_later_entities(model):
    lay = X.xar_layout((4, 4), "row")
    x = jax.random.normal(jax.random.key(3), (2, 16, C))
    t = jax.random.uniform(jax.random.key(4), (2, 16))
    v = jax.jit(lambda x: X.xar_velocity(model.params, model.cfg, x, t, jnp.array([1, 2]), lay))
    a, b = v(x), v(x.at[:, 8:].add(5.0))  # rows 2-3 changed
    np.testing.assert_allclose(np.asarray(a[:, :8]), np.asarray(b[:, :8]), atol=1e-5)
    assert not np.allclose(np.asarray(a[:, 8:]), np.asarray(b[:, 8:]))


def _reference(params, cfg, lay, labels, steps, guidance=1.0):
    """Full-forward xAR decode (no cache): every flow step re-runs the whole sequence, earlier entities clean
    (t = 0); ``steps`` an int or one per entity; guidance on the null class (10), ramped over entities."""
    perm, E, K = np.asarray(lay.perm), lay.size, lay.count
    steps = np.broadcast_to(steps, (K,))
    null = np.full_like(labels, 10)
    vc = jax.jit(lambda x, t: X.xar_velocity(params, cfg, x, t, labels, lay))
    vu = jax.jit(lambda x, t: X.xar_velocity(params, cfg, x, t, null, lay))
    raster = jnp.zeros((len(labels), lay.length, C))
    for s in range(K):
        idx, T = perm[s * E:(s + 1) * E], int(steps[s])
        g = 1.0 + (guidance - 1.0) * s / (K - 1)
        x = jnp.zeros((len(labels), E, C))  # temperature 0: x_1 = 0
        for i in range(T):
            t = (T - i) / T
            tt = jnp.ones((len(labels), lay.length)).at[:, perm[:s * E]].set(0.0).at[:, idx].set(t)
            xin = raster.at[:, idx].set(x)
            v = vc(xin, tt)
            if guidance != 1.0:
                v = v + (g - 1.0) * (v - vu(xin, tt))
            x = x - v[:, idx] / T
        raster = raster.at[:, idx].set(x)
    return np.asarray(raster)


def test_guided_decode_with_a_per_entity_schedule_equals_the_reference(model):
    """Classifier-free guidance ramped over entities, conditional and null rows at the same x_t, and a runtime
    per-entity step schedule T(s): forward calls = sum_s T(s)."""
    lay = X.xar_layout((4, 4), "cell", 2)
    labels, sched = np.array([1, 2]), np.array([1, 3, 2, 2])
    out = X.xar_sample(model.params, model.cfg, labels, jax.random.key(0), layout=lay, num_classes=10, steps=sched,
                       temperature=0.0, guidance=2.5)
    assert out.stats["forward_calls"] == sched.sum() and out.stats["head_evals"] == lay.size * sched.sum()
    np.testing.assert_allclose(out.tokens, _reference(model.params, model.cfg, lay, labels, sched, 2.5), atol=1e-4)


@pytest.mark.parametrize("entity", ["token", "cell"])
def test_cached_decode_equals_full_forward_reference(model, entity):
    """entity = token with clean (cached, t = 0) context is continuous raster AR whose flow head is the network;
    its cached decode must equal re-running the full forward at every flow step."""
    lay = X.xar_layout((4, 4), entity, 2)
    labels = np.array([1, 2])
    out = X.xar_sample(model.params, model.cfg, labels, jax.random.key(0), layout=lay, num_classes=10, steps=3,
                       temperature=0.0)
    assert out.stats["forward_calls"] == lay.count * 3 and out.stats["head_evals"] == 16 * 3
    np.testing.assert_allclose(out.tokens, _reference(model.params, model.cfg, lay, labels, 3), atol=1e-4)


@pytest.mark.slow  # default-suite time; the other tests of this file keep the method covered
def test_registered_loss_noisy_and_clean(model):
    from tokjax.losses.registry import make_loss

    b = {"x": jax.random.normal(jax.random.key(2), (3, 16, C)), "cls": jnp.array([0, 4, 10])}
    for ctx in ("noisy", "clean"):
        loss = make_loss("xar", grid=(4, 4), entity="cell", cell=2, context=ctx)
        (val, _), g = jax.jit(jax.value_and_grad(lambda p: loss(p, model.cfg, b, jax.random.key(1)),
                                                 has_aux=True))(model.params)
        assert np.isfinite(float(val)) and float(jnp.abs(g["xar"]["proj"]["w"]).sum()) > 0
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="entity"):
        X.xar_layout((4, 4), "pixelpair")
    with pytest.raises(ValueError, match="divide"):
        X.xar_layout((4, 4), "cell", 3)
    lay = X.xar_layout((4, 4), "cell", 2)
    with pytest.raises(ValueError, match="steps"):
        X.xar_sample(model.params, model.cfg, [1], jax.random.key(0), layout=lay, num_classes=10, steps=0)
    with pytest.raises(ValueError, match="token_dim"):
        X.xar_velocity(model.params, model.cfg, jnp.zeros((1, 16, C + 1)), jnp.zeros((1, 16)), jnp.zeros(1, int), lay)
    with pytest.raises(ValueError, match="context"):
        X.make_xar_loss((4, 4), "cell", 2, "half")
    with pytest.raises(ValueError, match="labels"):
        X.xar_sample(model.params, model.cfg, [10], jax.random.key(0), layout=lay, num_classes=10)
    with pytest.raises(ValueError, match="max_len"):
        X.xar_velocity(model.params, model.cfg, jnp.zeros((1, 64, C)), jnp.zeros((1, 64)), jnp.zeros(1, int),
                       X.xar_layout((8, 8), "row"))
