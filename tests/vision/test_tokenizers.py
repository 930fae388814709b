"""Tests of tokjax.vision.tokenizers: pixel quantizer, patches, VQ training with dead-code restart,
codebook usage, and bad-input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.vision import tokenizers as vt
from tokjax.vision.tokenizers import VQ, PixelQuantizer, codebook_usage, patchify, train_vq, unpatchify

K = 16  # codebook size of the VQ cases


# ----------------------------------------------------------------------------- pixel quantizer


@given(levels=st.integers(2, 32), seed=st.integers(0, 10_000))
def test_pixel_quantizer_round_trip_within_half_a_bin(levels, seed):
    q = PixelQuantizer(levels)
    x = np.random.default_rng(seed).uniform(size=(3, 8, 8)).astype(np.float32)
    x[0, 0, :2] = (0.0, 1.0)  # both ends of the range
    codes = q.encode(x)
    assert codes.dtype == jnp.int32 and codes.shape == x.shape
    assert int(codes.min()) >= 0 and int(codes.max()) < levels
    assert float(jnp.max(jnp.abs(q.decode(codes) - x))) <= 0.5 / levels + 1e-6
    np.testing.assert_array_equal(q.encode(q.decode(codes)), codes)  # bin centres map back to their bins


def test_pixel_quantizer_bins():
    q = PixelQuantizer(4)
    np.testing.assert_array_equal(q.encode(np.array([[[0.0, 0.24, 0.26, 0.5, 0.99, 1.0]]])), [[[0, 0, 1, 2, 3, 3]]])
    np.testing.assert_allclose(q.decode(jnp.arange(4)), [0.125, 0.375, 0.625, 0.875])
    x = jnp.linspace(0, 1, 64).reshape(1, 8, 8)
    np.testing.assert_array_equal(jax.jit(q.encode)(x), q.encode(x))  # jit-compatible


@pytest.mark.parametrize("levels", [1, 0, 2.5, True])
def test_pixel_quantizer_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        PixelQuantizer(levels)


@pytest.mark.parametrize("x,match", [(-0.1, r"\[0, 1\]"), (1.01, r"\[0, 1\]"), (np.nan, "NaN"), (np.inf, "NaN")])
def test_pixel_quantizer_bad_pixels(x, match):
    with pytest.raises(ValueError, match=match):
        PixelQuantizer(8).encode(np.full((1, 2, 2), x))


def test_pixel_quantizer_bad_codes():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        PixelQuantizer(8).decode(np.array([[[0, 8]]]))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        PixelQuantizer(8).decode(np.array([[[-1, 0]]]))
    with pytest.raises(ValueError, match="integers"):
        PixelQuantizer(8).decode(np.array([[[0.5]]]))


# ----------------------------------------------------------------------------- patches


def test_patchify_matches_a_numpy_loop():
    x = np.random.default_rng(0).normal(size=(2, 6, 4, 3)).astype(np.float32)
    got = np.asarray(patchify(x, 2))
    assert got.shape == (2, 3, 2, 12)
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(got[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, -1))
    np.testing.assert_array_equal(patchify(x[..., 0], 2)[0, 1, 1], x[0, 2:4, 2:4, 0].ravel())  # no channel axis


@settings(max_examples=12)
@given(n=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4), p=st.integers(1, 3),
       c=st.sampled_from([None, 1, 3]))
def test_patchify_unpatchify_round_trip(n, gh, gw, p, c):
    shape = (n, gh * p, gw * p) + (() if c is None else (c,))
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    patches = patchify(x, p)
    assert patches.shape == (n, gh, gw, p * p * (c or 1))
    np.testing.assert_array_equal(unpatchify(patches, p, gh * p, gw * p, channels=c), x)
    if c != 1:  # without ``channels`` a single channel comes back without its axis
        np.testing.assert_array_equal(unpatchify(patches, p), x)


def test_patch_errors():
    x = np.zeros((2, 8, 6))
    with pytest.raises(ValueError, match="divide"):
        patchify(x, 4)  # 4 does not divide 6
    with pytest.raises(ValueError, match="patch"):
        patchify(x, 0)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        patchify(np.zeros((8, 8)), 2)
    patches = patchify(x, 2)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(patches, 2, 8, 8)  # 8x8 is a 4x4 grid, patches are 4x3
    with pytest.raises(ValueError, match="divide"):
        unpatchify(patches, 2, 7, 6)
    with pytest.raises(ValueError, match="channels"):
        unpatchify(patches, 2, channels=3)
    with pytest.raises(ValueError, match="multiple"):
        unpatchify(patches[..., :3], 2)


# ----------------------------------------------------------------------------- codebook usage


@pytest.mark.parametrize("k", [2, 7, 64])
def test_usage_uniform_gives_perplexity_k(k):
    codes = np.random.default_rng(k).permutation(np.repeat(np.arange(k), 5)).reshape(5, k)
    used, ppl = codebook_usage(codes, k)
    assert float(used) == 1.0
    assert float(ppl) == pytest.approx(k, rel=1e-5)
    used, ppl = codebook_usage(np.full((3, 4), k - 1), k)  # one code
    assert float(used) == pytest.approx(1 / k) and float(ppl) == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=20)
@given(k=st.sampled_from([2, 5, 17]), seed=st.integers(0, 10_000))
def test_usage_matches_numpy(k, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, rng.integers(1, k + 1), size=(4, 5))
    f = np.bincount(codes.ravel(), minlength=k) / codes.size
    nz = f[f > 0]
    used, ppl = jax.jit(codebook_usage, static_argnums=1)(codes, k)
    assert float(used) == pytest.approx(np.mean(f > 0))
    assert float(ppl) == pytest.approx(np.exp(-np.sum(nz * np.log(nz))), rel=1e-5)


def test_usage_errors():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_usage(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_usage(np.array([-1, 0]), 4)
    with pytest.raises(ValueError, match="integers"):
        codebook_usage(np.array([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match="at least one"):
        codebook_usage(np.zeros((0,), np.int32), 4)
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_usage(np.array([0]), 0)


# ----------------------------------------------------------------------------- VQ


def _distinct_patch_images(weights, seed=0, n=200):
    """Returns (8x8 images made of 2x2 patches drawn from K fixed distinct patches with ``weights``, the patches)."""
    rng = np.random.default_rng(seed)
    pats = rng.uniform(size=(K, 4)).astype(np.float32)
    idx = rng.choice(K, size=(n, 4, 4), p=np.asarray(weights) / np.sum(weights))
    return np.asarray(unpatchify(jnp.asarray(pats[idx]), 2)), pats


@pytest.fixture(scope="module")
def uniform_case():
    images, pats = _distinct_patch_images(np.ones(K))
    fits = {r: train_vq(images, 2, K, steps=300, restart_dead=r, seed=0) for r in (True, False)}
    return images, pats, fits


def _usage_and_error(vq, images):
    codes = vq.encode(images)
    used, ppl = codebook_usage(codes, vq.codebook_size)
    return float(used), float(ppl), float(jnp.max(jnp.abs(vq.decode(codes) - images)))


def test_vq_recovers_exactly_k_distinct_patches(uniform_case):
    images, pats, fits = uniform_case
    vq = fits[True]
    assert vq.codebook.shape == (K, 4) and vq.patch == 2 and vq.channels is None
    used, ppl, err = _usage_and_error(vq, images)
    assert err < 1e-4
    assert used == 1.0
    assert ppl > 0.97 * K  # the patches are drawn uniformly: perplexity ~ K
    dist = np.abs(np.asarray(vq.codebook)[:, None] - pats[None]).max(-1)
    assert np.all(dist.min(0) < 1e-5) and np.all(dist.min(1) < 1e-5)  # codebook = the patch set


def test_dead_code_restart_raises_usage(uniform_case):
    # Codewords start on K random data patches; among K equally frequent distinct patches that almost surely
    # repeats some (all distinct has probability K!/K^K ~ 1e-6), and a repeated codeword never wins a patch.
    images, _, fits = uniform_case
    used_on, _, err_on = _usage_and_error(fits[True], images)
    used_off, _, err_off = _usage_and_error(fits[False], images)
    assert used_off < 1.0 and used_on > used_off
    assert err_off > 0.05 > err_on


def test_restart_on_skewed_data():
    # One patch holds ~85% of the data, so nearly all initial codewords repeat it and stay dead without restarts.
    images, pats = _distinct_patch_images([100] + [1] * (K - 1), seed=1)
    on = train_vq(images, 2, K, steps=300, restart_dead=True, seed=0)
    cache = vt._fit._cache_size()
    off = train_vq(images, 2, K, steps=300, restart_dead=False, decay=0.9, dead_after=7, seed=0)
    assert vt._fit._cache_size() == cache  # restart flag, decay and dead_after are runtime values: no recompile
    used_on, _, err_on = _usage_and_error(on, images)
    used_off, _, _ = _usage_and_error(off, images)
    assert used_off <= 0.5 < used_on
    assert err_on < 1e-4  # float32 means of ~2700 equal patches


def test_vq_encode_matches_brute_force_and_jit():
    rng = np.random.default_rng(0)
    vq = VQ(codebook=jnp.asarray(rng.uniform(size=(10, 12)), jnp.float32), patch=2, channels=3)
    images = rng.uniform(size=(3, 4, 6, 3)).astype(np.float32)
    codes = vq.encode(images)
    assert codes.shape == (3, 2, 3) and codes.dtype == jnp.int32
    patches = np.asarray(patchify(images, 2))
    want = np.argmin(((patches[..., None, :] - np.asarray(vq.codebook)) ** 2).sum(-1), -1)
    np.testing.assert_array_equal(codes, want)
    out = vq.decode(codes)
    assert out.shape == images.shape
    np.testing.assert_array_equal(patchify(out, 2), np.asarray(vq.codebook)[want])
    np.testing.assert_array_equal(jax.jit(lambda v, x: v.decode(v.encode(x)))(vq, images), out)


def test_train_vq_with_a_channel_axis(uniform_case):
    images, _, fits = uniform_case
    vq = train_vq(images[..., None], 2, K, steps=300, seed=0)  # same patches [P, 4]: the compiled fit is reused
    assert vq.channels == 1 and vq.codebook.shape == (K, 4)
    np.testing.assert_array_equal(vq.codebook, fits[True].codebook)
    out = vq.decode(vq.encode(images[..., None]))
    assert out.shape == images[..., None].shape
    np.testing.assert_array_equal(out[..., 0], fits[True].decode(fits[True].encode(images)))
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        vq.encode(images)


@pytest.mark.parametrize("kwargs,match", [
    (dict(codebook_size=1), "codebook_size"),
    (dict(patch=3), "divide"),
    (dict(patch=0), "patch"),
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(decay=1.0), "decay"),
    (dict(decay=-0.1), "decay"),
    (dict(dead_after=0), "dead_after"),
    (dict(refine=-1), "refine"),
])
def test_train_vq_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_vq(np.zeros((2, 8, 8), np.float32), **kwargs)


def test_vq_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        train_vq(np.full((2, 8, 8), np.nan))
    vq = VQ(codebook=jnp.zeros((4, 4)), patch=2)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        vq.encode(np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="divide"):
        vq.encode(np.zeros((2, 7, 8)))
    with pytest.raises(ValueError, match="NaN"):
        vq.encode(np.full((1, 2, 2), np.inf))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        vq.decode(np.full((1, 2, 2), 4))
    with pytest.raises(ValueError, match=r"\[N, H/p, W/p\]"):
        vq.decode(np.zeros((2, 2), np.int32))
