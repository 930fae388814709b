"""A tiny class-conditional glyph model (4x4 binary codes) trained through tokjax.train on
tokjax.vision.image_lm batches: it beats the uniform and the marginal-entropy baselines on held-out
images, and the log-probs sample_images records for its samples equal token_stats on the finished
sequences (decoded = teacher-forced)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.data import glyphs
from tokjax.losses import token_stats
from tokjax.model import ModelConfig
from tokjax.train import TrainConfig, train
from tokjax.vision.image_lm import ImageVocab, image_batch, image_batch_fn, next_token_cfg, sample_images
from tokjax.vision.orders import raster
from tokjax.vision.tokenizers import PixelQuantizer


def _glyph_codes(n, seed):
    g = glyphs(n, size=8, seed=seed)
    small = g.images.reshape(n, 4, 2, 4, 2).mean(axis=(2, 4))  # 8x8 -> 4x4
    return np.asarray(PixelQuantizer(2).encode(small)), g.labels


@pytest.fixture(scope="module")
def glyph_model():
    vocab = ImageVocab(2, 10)
    codes, labels = _glyph_codes(2000, seed=0)
    cfg = ModelConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=2, max_len=32, pos_dims=2)
    tcfg = TrainConfig(lr=3e-3, warmup_steps=20, total_steps=200, batch_size=64, seq_len=16, log_every=50,
                       eval_every=0, checkpoint_every=0)
    batch_fn = image_batch_fn(codes, labels, vocab, raster(4, 4), batch_size=64, class_dropout=0.1, seed=0)
    model, history = train(cfg, tcfg, batch_fn, progress=False)
    return model, vocab, history


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_tiny_glyph_model_beats_the_uniform_and_marginal_baselines(glyph_model):
    model, vocab, history = glyph_model
    codes, labels = _glyph_codes(500, seed=1)  # held out
    b = image_batch(codes, labels, vocab, raster(4, 4), class_dropout=0.0)
    stats = jax.jit(token_stats, static_argnums=1)(model.params, model.cfg, b)
    nll = float(-(stats.logp * stats.mask).sum() / stats.mask.sum())
    p1 = codes.mean()
    marginal = float(-(p1 * np.log(p1) + (1 - p1) * np.log(1 - p1)))
    assert nll < marginal < np.log(2.0), (nll, marginal)
    assert history["train"][-1]["loss"] < history["train"][0]["loss"]


@pytest.mark.slow
def test_decoded_likelihood_equals_teacher_forced(glyph_model):
    model, vocab, _ = glyph_model
    o = raster(4, 4)
    labels = np.arange(10)
    s = sample_images(model, next_token_cfg(vocab, o), labels, jax.random.key(4), guidance=1.0)
    assert s.stats["forward_calls"] == 16 and s.codes.shape == (10, 4, 4)
    b = image_batch(s.codes, labels, vocab, o, class_dropout=0.0)
    bias = jnp.where(jnp.asarray(vocab.code_mask(model.cfg.vocab_size)), 0.0, -jnp.inf)
    # teacher-forced, restricted to the codes
    tf = jax.jit(lambda p, x, lb: token_stats(p, model.cfg, x, logit_bias=lb))(model.params, b, bias)
    np.testing.assert_allclose(s.logprobs, np.asarray(tf.logp), atol=1e-4)


def test_batch_fn_is_a_pure_function_of_the_step():
    vocab = ImageVocab(2, 10)
    codes, labels = _glyph_codes(100, seed=2)
    fn = image_batch_fn(codes, labels, vocab, raster(4, 4), batch_size=16, class_dropout=0.5, seed=3)
    a, b = fn(7), fn(7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(fn(7)["tokens"], fn(8)["tokens"])
    with pytest.raises(ValueError, match="class labels must lie in"):
        image_batch_fn(codes, labels + 1, vocab, raster(4, 4), batch_size=16)


def test_one_dimensional_models_take_batches_without_coordinates():
    vocab = ImageVocab(2, 10)
    codes, labels = _glyph_codes(8, seed=2)
    b = image_batch(codes, labels, vocab, raster(4, 4), class_dropout=0.0, coords=False)
    assert set(b) == {"tokens", "mask"}
    cfg = ModelConfig(vocab_size=vocab.size, d_model=16, n_layers=1, n_heads=2, max_len=32)
    from tokjax.model import init_params
    stats = token_stats(init_params(cfg, jax.random.key(0)), cfg, b)
    assert stats.logp.shape == (8, 16) and np.isfinite(np.asarray(stats.logp)).all()
    with pytest.raises(ValueError, match="positions"):  # 2-D coordinates given to a 1-D model: refused
        token_stats(init_params(cfg, jax.random.key(0)), cfg, image_batch(codes, labels, vocab, raster(4, 4),
                                                                          class_dropout=0.0))
