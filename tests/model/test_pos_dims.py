"""ModelConfig.pos_dims: 2-D / 3-D token coordinates (axial RoPE or one learned table per axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.model import ModelConfig, init_params
from tokjax.model.attention import rope
from tokjax.model.forward import Inputs, position_embed


def _np_rope_1d(x, pos, theta):
    """x [T, hd], pos [T] -> half-split rotation, written out pair by pair."""
    T, hd = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for t in range(T):
        for i in range(hd // 2):
            ang = pos[t] * theta ** (-(2 * i) / hd)
            a, b = x[t, i], x[t, i + hd // 2]
            out[t, i] = a * np.cos(ang) - b * np.sin(ang)
            out[t, i + hd // 2] = b * np.cos(ang) + a * np.sin(ang)
    return out


def _np_axial_rope(x, pos, theta):
    """x [T, hd], pos [T, P]: chunk a of the head dim rotated by axis a."""
    P = pos.shape[1]
    c = x.shape[1] // P
    return np.concatenate([_np_rope_1d(x[:, a * c:(a + 1) * c], pos[:, a], theta) for a in range(P)], axis=1)


@pytest.mark.parametrize("P", [2, 3])
def test_axial_rope_matches_numpy_oracle(P):
    rng = np.random.default_rng(P)
    hd, T = 12, 5
    x = rng.normal(size=(1, T, 2, hd)).astype(np.float32)
    pos = rng.integers(0, 9, size=(1, T, P))
    got = np.asarray(rope(jnp.asarray(x), jnp.asarray(pos), 10000.0))
    for h in range(2):
        np.testing.assert_allclose(got[0, :, h], _np_axial_rope(x[0, :, h], pos[0], 10000.0), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(shift=st.lists(st.integers(-20, 20), min_size=2, max_size=2),
       pq=st.lists(st.integers(0, 15), min_size=2, max_size=2),
       pk=st.lists(st.integers(0, 15), min_size=2, max_size=2))
def test_axial_rope_scores_depend_only_on_offsets(shift, pq, pk):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    s = np.asarray(shift)

    def score(a, b):
        ra = rope(q, jnp.asarray(np.asarray(a)[None, None]), 10000.0)
        rb = rope(k, jnp.asarray(np.asarray(b)[None, None]), 10000.0)
        return float(jnp.sum(ra * rb))

    base = score(np.asarray(pq) + 25, np.asarray(pk) + 25)  # keep shifted coordinates non-negative
    assert score(np.asarray(pq) + 25 + s, np.asarray(pk) + 25 + s) == pytest.approx(base, abs=1e-4)


def test_pos_dims_one_is_unchanged():
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2)
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert set(params) == set(init_params(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, pos_dims=1),
                                          jax.random.PRNGKey(0)))
    toks = jnp.asarray([[1, 2, 3, 4]])
    a = tokjax.forward(params, cfg, toks).logits
    b = tokjax.forward(params, cfg, Inputs(tokens=toks, positions=jnp.arange(4)[None])).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _grid_positions(h, w):
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r.ravel(), c.ravel()], -1)[None]  # [1, h*w, 2]


def test_rope_2d_model_is_invariant_to_a_grid_shift():
    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=2, pos_dims=2, init_scale=0.3)
    params = init_params(cfg, jax.random.PRNGKey(1))
    toks = jax.random.randint(jax.random.PRNGKey(2), (1, 12), 0, 16)
    pos = _grid_positions(3, 4)
    f = jax.jit(lambda p: tokjax.forward(params, cfg, Inputs(tokens=toks, positions=p)).logits)
    a, b = f(jnp.asarray(pos)), f(jnp.asarray(pos + np.array([5, 2])))
    spread = float(np.asarray(a).std())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * spread)
    # ... but not to swapping the two axes (the model sees which axis is which)
    c = f(jnp.asarray(pos[..., ::-1].copy()))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2 * spread


def test_learned_tables_per_axis_are_summed():
    cfg = ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, positions="learned", pos_dims=3, max_len=10)
    params = init_params(cfg, jax.random.PRNGKey(0))
    assert {"pos_embed", "pos_embed_1", "pos_embed_2"} <= set(params)
    pos = np.array([[[1, 2, 3], [0, 9, 4]]])
    got = np.asarray(position_embed(params, cfg, jnp.asarray(pos)))
    want = sum(np.asarray(params[n])[pos[..., a]] for a, n in enumerate(["pos_embed", "pos_embed_1", "pos_embed_2"]))
    np.testing.assert_allclose(got, want, atol=1e-6)
    out = tokjax.forward(params, cfg, Inputs(tokens=jnp.asarray([[1, 2]]), positions=jnp.asarray(pos))).logits
    assert np.isfinite(np.asarray(out)).all()


def test_bad_pos_dims_inputs():
    with pytest.raises(ValueError, match="pos_dims must be 1, 2 or 3"):
        ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1, pos_dims=4)
    with pytest.raises(ValueError, match="multiple of 2 \\* pos_dims"):
        ModelConfig(vocab_size=8, d_model=12, n_layers=1, n_heads=3, pos_dims=3)  # head_dim 4 is not a multiple of 6
    cfg = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1, pos_dims=2, positions="learned", max_len=4)
    params = init_params(cfg, jax.random.PRNGKey(0))
    toks = jnp.asarray([[1, 2]])
    with pytest.raises(ValueError, match="needs Inputs.positions"):
        tokjax.forward(params, cfg, toks)
    with pytest.raises(ValueError, match="pos_dims=2"):
        tokjax.forward(params, cfg, Inputs(tokens=toks, positions=jnp.zeros((1, 2, 3), jnp.int32)))
    with pytest.raises(ValueError, match="max_len"):
        tokjax.forward(params, cfg, Inputs(tokens=toks, positions=jnp.asarray([[[0, 0], [0, 4]]])))
    one = ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1)
    with pytest.raises(ValueError, match="positions must be \\[batch, seq\\]"):
        tokjax.forward(init_params(one, jax.random.PRNGKey(0)), one,
                       Inputs(tokens=toks, positions=jnp.zeros((1, 2, 2), jnp.int32)))
