"""SimCSE-style InfoNCE (the contrastive baseline for P71): numpy equivalence, properties, crops, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses import loss_names, loss_options, make_loss
from tokjax.losses.simcse import crop_len, info_nce, make_simcse_loss, random_crops, simcse
from tokjax.losses.text2token import text_embedding

CFG = tokjax.ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)


def _np_info_nce(z1, z2, tau, symmetric=False):
    """Plain numpy InfoNCE: -mean_i log softmax_j(cos(z1_i, z2_j) / tau)[i] (and the transposed direction)."""
    a = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    b = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    s = (a @ b.T) / tau

    def ce(m):
        m = m - m.max(1, keepdims=True)
        return -np.mean(np.diag(m) - np.log(np.exp(m).sum(1)))

    return 0.5 * (ce(s) + ce(s.T)) if symmetric else ce(s)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_info_nce_matches_numpy(symmetric, tau):
    r = np.random.default_rng(0)
    z1, z2 = r.normal(size=(6, 5)), r.normal(size=(6, 5))
    loss, m = info_nce(jnp.asarray(z1), jnp.asarray(z2), tau, symmetric=symmetric)
    np.testing.assert_allclose(float(loss), _np_info_nce(z1, z2, tau, symmetric), rtol=1e-5)
    cos = (z1 / np.linalg.norm(z1, axis=1, keepdims=True)) @ (z2 / np.linalg.norm(z2, axis=1, keepdims=True)).T
    np.testing.assert_allclose(float(m["pos_cos"]), np.mean(np.diag(cos)), rtol=1e-5)
    np.testing.assert_allclose(float(m["neg_cos"]), (cos.sum() - np.trace(cos)) / 30, rtol=1e-5, atol=1e-6)
    assert float(m["top1"]) == np.mean(np.argmax(cos, 1) == np.arange(6))


def test_info_nce_gradient_matches_finite_differences():
    r = np.random.default_rng(1)
    z1, z2 = r.normal(size=(4, 3)), r.normal(size=(4, 3))
    g = np.asarray(jax.grad(lambda a: info_nce(a, jnp.asarray(z2), 0.5)[0])(jnp.asarray(z1, jnp.float32)))
    eps, num = 1e-5, np.zeros_like(z1)
    for i in np.ndindex(z1.shape):
        d = np.zeros_like(z1)
        d[i] = eps
        num[i] = (_np_info_nce(z1 + d, z2, 0.5) - _np_info_nce(z1 - d, z2, 0.5)) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=2e-3, atol=2e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(2, 7), scale=st.floats(0.1, 10.0))
def test_info_nce_is_invariant_to_joint_permutation_and_scale_and_bounded(seed, b, scale):
    r = np.random.default_rng(seed)
    z1, z2 = r.normal(size=(b, 4)), r.normal(size=(b, 4))
    perm = r.permutation(b)
    base = float(info_nce(jnp.asarray(z1), jnp.asarray(z2), 0.1)[0])
    # pairs are a set: reordering them together, or rescaling embeddings (cosine), leaves the loss unchanged
    np.testing.assert_allclose(float(info_nce(jnp.asarray(z1[perm]), jnp.asarray(z2[perm]), 0.1)[0]), base,
                               rtol=1e-4)
    np.testing.assert_allclose(float(info_nce(jnp.asarray(scale * z1), jnp.asarray(z2), 0.1)[0]), base, rtol=1e-4)
    # cosine in [-1, 1] bounds each row's loss by log(1 + (B-1) exp(2 / tau)) and it is never negative
    assert 0.0 <= base <= np.log(1 + (b - 1) * np.exp(2 / 0.1)) + 1e-4


def test_aligned_views_give_near_zero_loss_and_swapped_views_a_large_one():
    z = np.eye(4, 8) * 3.0
    assert float(info_nce(jnp.asarray(z), jnp.asarray(z), 0.05)[0]) < 1e-6
    assert float(info_nce(jnp.asarray(z), jnp.asarray(z[::-1]), 0.05)[0]) > 10.0


def test_random_crops_are_contiguous_windows_inside_the_valid_tokens():
    toks = jnp.asarray(np.arange(3 * 12).reshape(3, 12) % 37)
    lengths = jnp.asarray([12, 8, 3])
    crops, cl = random_crops(toks, jax.random.key(0), 5, lengths=lengths)
    crops, cl = np.asarray(crops), np.asarray(cl)
    assert crops.shape == (3, 5) and list(cl) == [5, 5, 3]
    t = np.asarray(toks)
    for b, n in enumerate([12, 8, 3]):
        start = int(np.nonzero(t[b] == crops[b, 0])[0][0])
        k = cl[b]
        np.testing.assert_array_equal(crops[b, :k], t[b, start:start + k])
        assert start + k <= n
    # every start position is reachable and no other: uniform over [0, 12 - 5]
    starts = {int(np.asarray(random_crops(toks, jax.random.key(s), 5)[0])[0, 0]) for s in range(200)}
    assert starts == set(range(8))
    assert crop_len(64, 0.5) == 32 and crop_len(3, 0.1) == 1


@pytest.mark.slow
def test_simcse_loss_equals_info_nce_on_the_embeddings_of_its_crops_and_trains():
    params = tokjax.Model.init(CFG, jax.random.key(0)).params
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 37, (4, 16)))
    key = jax.random.key(3)
    loss, m = simcse(params, CFG, toks, key, crop=0.5, temperature=0.1)
    k1, k2 = jax.random.split(key)
    v1, v2 = random_crops(toks, k1, 8)[0], random_crops(toks, k2, 8)[0]
    ref = _np_info_nce(np.asarray(text_embedding(params, CFG, v1)), np.asarray(text_embedding(params, CFG, v2)), 0.1)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4)
    fn = make_loss("simcse", crop=0.5, temperature=0.1)
    assert fn == make_loss("simcse", crop=0.5, temperature=0.1) and "simcse" in loss_names()
    assert loss_options("simcse") == {"crop": 0.5, "temperature": 0.05, "pooling": "mean", "symmetric": False}
    np.testing.assert_allclose(float(fn(params, CFG, {"tokens": toks}, key)[0]), float(loss), rtol=1e-6)
    g = jax.grad(lambda p: fn(p, CFG, {"tokens": toks}, key)[0])(params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g))


@pytest.mark.slow
def test_simcse_trains_through_tokjax_train():
    toks = np.random.default_rng(0).integers(0, 37, (32, 16)).astype(np.int32)
    batch = {"tokens": toks[:8]}
    from tokjax.train import TrainConfig, train

    tc = TrainConfig(lr=3e-3, warmup_steps=0, total_steps=20, batch_size=8, seq_len=15, seed=0, eval_every=0,
                     checkpoint_every=0, log_every=5)
    init = tokjax.Model.init(CFG, jax.random.key(0)).params
    model, _ = train(CFG, tc, lambda step: batch, loss_fn=make_loss("simcse", crop=0.75, temperature=0.1),
                     params=init, progress=False)
    fn = make_simcse_loss(crop=0.75, temperature=0.1)
    before = float(np.mean([fn(init, CFG, batch, jax.random.key(s))[0] for s in range(4)]))
    after = float(np.mean([fn(model.params, CFG, batch, jax.random.key(s))[0] for s in range(4)]))
    assert after < before


def test_bad_inputs_raise_clear_errors():
    z = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="same shape"):
        info_nce(z, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(jnp.ones((1, 4)), jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z, z, 0.0)
    with pytest.raises(ValueError, match="crop"):
        make_simcse_loss(crop=0.0)
    with pytest.raises(ValueError, match="crop"):
        make_simcse_loss(crop=1.5)
    with pytest.raises(ValueError, match="pooling"):
        make_simcse_loss(pooling="max")
    with pytest.raises(ValueError, match="loss 'simcse': temperature"):
        make_loss("simcse", temperature=-1.0)
    fn = make_simcse_loss()
    with pytest.raises(ValueError, match="'tokens'"):
        fn({}, CFG, {"inputs": jnp.zeros((2, 4), jnp.int32)}, jax.random.key(0))
    with pytest.raises(ValueError, match="rng=None"):
        fn({}, CFG, {"tokens": jnp.zeros((2, 4), jnp.int32)}, None)
    with pytest.raises(ValueError, match="window"):
        random_crops(jnp.zeros((2, 4), jnp.int32), jax.random.key(0), 5)
    with pytest.raises(ValueError, match="lengths"):
        random_crops(jnp.zeros((2, 4), jnp.int32), jax.random.key(0), 2, lengths=jnp.asarray([0, 4]))
