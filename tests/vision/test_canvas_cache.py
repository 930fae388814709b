"""KV-cached canvas decoding (issue 24): NBP (P13), NAR (P31) and Token-Shuffle (P64) append each finished block
to the cache instead of re-running the canvas. Exact: the same per-pass logits (1e-5) as the cache-free path on a
teacher-forced canvas, the same tokens and log-probs under the same key through ``sample_images`` (with and
without guidance), the same ``forward_calls``; NBP k=1 cached is still causal next-token prediction; pad /
placeholder slots rolled back by ``append_block(keep=)`` are invisible to later blocks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Inputs, KVCache, Model, ModelConfig, forward
from tokjax.model.attention import Causal
from tokjax.vision.image_lm import CanvasDecodeState, ImageVocab, append_block, sample_images
from tokjax.vision.nar import nar_decoder, nar_init
from tokjax.vision.nbp import nbp_decoder
from tokjax.vision.orders import raster
from tokjax.vision.token_shuffle import token_shuffle_decoder, token_shuffle_init

VOCAB = ImageVocab(num_codes=8, num_classes=3)
CFG = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, max_len=40, pos_dims=2)
TOL = 1e-5


@jax.jit
def _perturbed(tree, key):  # Token-Shuffle's branch outputs start at zero: make them matter
    leaves, tree = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def models():
    key = jax.random.key(0)
    nar = nar_init(CFG, key)
    ts = token_shuffle_init(CFG, jax.random.fold_in(key, 2), 2)
    ts["token_shuffle"] = _perturbed(ts["token_shuffle"], jax.random.fold_in(key, 3))
    return {"ntp": {k: v for k, v in nar.items() if k != "nar_b"}, "nar": nar, "ts2": ts}  # NBP: NAR's own model


def _arm(name, models, cached=True, guided=True, h=4, w=4):
    if name.startswith("nbp"):
        return models["ntp"], nbp_decoder(VOCAB, raster(h, w), int(name[3:]), guided=guided, cached=cached)
    if name == "nar":
        return models["nar"], nar_decoder(VOCAB, h, w, guided=guided, cached=cached)
    return models["ts2"], token_shuffle_decoder(VOCAB, h, w, 2, guided=guided, cached=cached)


def pass_logits(params, strategy, canvas):
    """Returns [passes, R, A, V]: every pass's target logits on the teacher-forced ``canvas`` [R, T] (the strategy's
    own path, cached or not, one pass after the other as generate runs them)."""
    strategy = dataclasses.replace(strategy, pos_dims=CFG.pos_dims)
    R = canvas.shape[0]
    cache = KVCache.init(CFG, R, 1 + strategy.new_tokens() + strategy.slack)
    extra = CanvasDecodeState(canvas=canvas, positions=jnp.asarray(strategy.canvas_positions()),
                              guidance=jnp.ones((R,)),
                              aux=strategy.canvas_aux(params, CFG, R, cache.capacity) if strategy.cached else None)
    step = jax.jit(lambda cache, extra, p: strategy.pass_target_logits(params, CFG, cache, extra, p))
    out = []
    for p in range(strategy.schedule()[0].shape[0]):
        z, cache, extra = step(cache, extra, jnp.int32(p))
        out.append(np.asarray(z))
    return np.stack(out)


def _canvas(strategy, seed=0):
    """A full canvas of random codes (later blocks filled too: the passes must not read them)."""
    rng = np.random.default_rng(seed)
    canvas = np.array(strategy.canvas_init(jnp.asarray(VOCAB.class_tokens(np.array([0, 2])))))
    canvas[:, 1:] = rng.integers(0, VOCAB.num_codes, (2, canvas.shape[1] - 1))
    if strategy.__class__.__name__ == "NBPDecode":  # the BOV block stays [MASK]
        canvas[:, 1:1 + strategy.block] = VOCAB.mask_id
    return jnp.asarray(canvas)


# nbp1 (also: still raster NTP) is slow-only for suite time; tests/vision/test_nbp.py decodes k=1 cached by default
@pytest.mark.parametrize("name", [pytest.param("nbp1", marks=pytest.mark.slow), "nbp4", "nar", "ts2"])
def test_cached_pass_logits_equal_the_cache_free_ones(models, name):
    params, cached = _arm(name, models, h=4, w=4)
    uncached = dataclasses.replace(cached, cached=False)
    canvas = _canvas(cached)
    zc, zu = pass_logits(params, cached, canvas), pass_logits(params, uncached, canvas)
    valid = cached.schedule()[2]  # [passes, A]; pad targets (NAR) are never sampled into the image
    assert np.isfinite(zc).all()
    sel = np.broadcast_to(valid[:, None, :], zc.shape[:3])
    np.testing.assert_allclose(zc[sel], zu[sel], atol=TOL, rtol=0)
    if name == "nbp1":  # k = 1 cached is still causal next-token prediction on [class, BOV, codes]
        ref = jax.jit(lambda: forward(params, CFG, Inputs(tokens=canvas, positions=jnp.asarray(
            cached.canvas_positions())[None]), mask=Causal()).logits)()
        np.testing.assert_allclose(zc[:, :, 0], np.swapaxes(np.asarray(ref[:, 1:]), 0, 1), atol=TOL, rtol=0)


@pytest.mark.slow  # default suite: tests/vision/test_nbp.py / test_nar.py decode cached (likelihood = teacher-forced)
@pytest.mark.parametrize("name", ["nbp4", "nar", "ts2"])
def test_cached_sampling_equals_cache_free_with_guidance(models, name):
    labels = np.array([0, 2, 1])
    runs = []
    for cached in (True, False):
        params, strategy = _arm(name, models, cached=cached)
        runs.append(sample_images(Model(params, CFG), strategy, labels, jax.random.key(4), guidance=1.5))
    (a, b) = runs
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=TOL, rtol=0)
    assert a.stats["forward_calls"] == b.stats["forward_calls"] == {"nbp4": 4, "nar": 7, "ts2": 4}[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nbp1", "nbp4", "nar", "ts2"])
@pytest.mark.parametrize("guided", [False, True])
def test_cached_sampling_equals_cache_free_every_arm(models, name, guided):
    # non-square grid for NAR (3 x 5: anti-diagonals of 1..3 slots, pads rolled back), exact shapes (bucket=False:
    # the cache is exactly 1 + N + slack slots), a hotter temperature so the logits decide more of the draws
    labels = np.array([1, 0])
    h, w = (3, 5) if name == "nar" else (4, 4)
    runs = []
    for cached in (True, False):
        params, strategy = _arm(name, models, cached=cached, guided=guided, h=h, w=w)
        runs.append(sample_images(Model(params, CFG), strategy, labels, jax.random.key(9), bucket=False,
                                  guidance=2.0 if guided else 1.0, temperature=0.5))
    a, b = runs
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=TOL, rtol=0)
    assert a.stats["forward_calls"] == b.stats["forward_calls"]


def test_rolled_back_slots_are_invisible_to_later_blocks(models):
    # a placeholder appended after a block and rolled back (keep) leaves the next block's logits as if it was
    # never there; kept, it changes them (so a placeholder wrongly left in the cache is caught)
    params = models["ntp"]
    tok = jnp.asarray([[VOCAB.class_start, 3, 5], [VOCAB.class_start + 1, 6, 0]], jnp.int32)
    pos = jnp.asarray([[0, 0], [1, 1], [1, 2]], jnp.int32)
    ph = jnp.full((2, 1), VOCAB.mask_id, jnp.int32)

    @jax.jit
    def second_block(keep):
        # block 1 = [class, code, placeholder] (causal: the placeholder last), then block 2 = [code]
        first_tok = jnp.concatenate([tok[:, :2], ph], 1)
        first_pos = jnp.concatenate([pos[:2], jnp.asarray([[2, 2]])])
        out = append_block(params, CFG, KVCache.init(CFG, 2, 8), Inputs(tokens=first_tok, positions=first_pos),
                           jnp.arange(3), keep)
        out = append_block(params, CFG, out.cache, Inputs(tokens=tok[:, 2:], positions=pos[2:]), jnp.zeros((1,)))
        full = forward(params, CFG, Inputs(tokens=tok, positions=pos[None]), mask=Causal()).logits
        return out.logits[:, 0], full[:, 2]

    rolled_back, clean = second_block(2)
    np.testing.assert_allclose(rolled_back, clean, atol=TOL, rtol=0)
    kept, _ = second_block(3)
    assert np.abs(np.asarray(kept) - np.asarray(clean)).max() > 1e-3


def test_cached_flag_must_be_a_bool():
    with pytest.raises(ValueError, match="cached must be True or False"):
        nbp_decoder(VOCAB, raster(4, 4), 4, cached=1)
    with pytest.raises(ValueError, match="cached must be True or False"):
        nar_decoder(VOCAB, 4, 4, cached="yes")
    with pytest.raises(ValueError, match="cached must be True or False"):
        token_shuffle_decoder(VOCAB, 4, 4, 2, cached=None)
