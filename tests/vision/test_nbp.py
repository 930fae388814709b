"""NBP (P13, tokjax.vision.nbp): the block mask equals the numpy oracle block_k <= block_q, targets are
shifted by one block with k BOV placeholders in front, k = 1 is next-token prediction exactly (causal
mask, same logits), logits of a block never read later blocks, the decoder's log-probs equal the
teacher-forced ones in N / k passes, and bad blocks raise ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import Inputs, Model, ModelConfig, forward, init_params
from tokjax.model.attention import Causal, Rank, build_mask
from tokjax.vision.image_lm import ImageVocab, sample_images
from tokjax.vision.nbp import (
    NBPDecode, nbp_batch, nbp_batch_fn, nbp_decoder, nbp_logits, nbp_loss, nbp_positions, nbp_ranks,
)
from tokjax.vision.orders import diagonal, raster

VOCAB = ImageVocab(4, 3)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_mask_equals_numpy_oracle(H, W, data):
    N = H * W
    k = data.draw(st.sampled_from([d for d in range(1, N + 1) if N % d == 0]))
    r = nbp_ranks(raster(H, W), k)
    # block of each slot: class -1, BOV 0, code block b -> b + 1; key visible iff block_k <= block_q
    blk = np.array([-1] + [0] * k + [1 + m // k for m in range(N - k)])
    oracle = blk[None, :] <= blk[:, None]
    m = np.asarray(build_mask(Rank(ranks=jnp.asarray(r)), 1, 1 + N))[0]
    np.testing.assert_array_equal(m, oracle)


def test_batch_layout_shift_k_and_bov():
    o, k = raster(4, 4), 8
    codes = np.random.default_rng(0).integers(0, 4, (3, 4, 4))
    b = nbp_batch(codes, np.array([0, 1, 2]), VOCAB, o, k, class_dropout=0.0)
    seq = codes.reshape(3, 16)
    np.testing.assert_array_equal(b["inputs"][:, 0], VOCAB.class_start + np.array([0, 1, 2]))
    assert (np.asarray(b["inputs"][:, 1:1 + k]) == VOCAB.mask_id).all()  # k BOV placeholders
    np.testing.assert_array_equal(b["inputs"][:, 1 + k:], seq[:, :16 - k])
    np.testing.assert_array_equal(b["targets"][:, 1:], seq)
    # input slot s predicts the token one block (k) later along the raster: codes[s-1-k] -> codes[s-1]
    np.testing.assert_array_equal(np.asarray(b["inputs"])[:, 1 + k:], np.asarray(b["targets"])[:, 1:1 + 16 - k])
    assert not bool(b["mask"][0, 0]) and bool(b["mask"][:, 1:].all())
    pos = nbp_positions(o, k)  # every query sits one block (two rows here) before its target
    np.testing.assert_array_equal(pos[1 + k:] - pos[1:1 + 16 - k], np.tile([2, 0], (16 - k, 1)))
    assert pos.min() == 0 and (pos[1:] >= 1).all()


@pytest.fixture(scope="module")
def small():
    cfg = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, max_len=32, pos_dims=2)
    return cfg, init_params(cfg, jax.random.key(0))


def test_k1_is_next_token_prediction(small):
    cfg, params = small
    o = raster(3, 4)
    np.testing.assert_array_equal(np.asarray(build_mask(Rank(ranks=jnp.asarray(nbp_ranks(o, 1))), 1, 13)),
                                  np.asarray(build_mask(Causal(), 1, 13)))
    codes = np.random.default_rng(1).integers(0, 4, (2, 3, 4))
    b = nbp_batch(codes, np.array([0, 2]), VOCAB, o, 1, class_dropout=0.0)
    np.testing.assert_array_equal(np.asarray(b["targets"])[:, 1:-1], np.asarray(b["inputs"])[:, 2:])  # next token
    z = np.asarray(nbp_logits(params, cfg, b))
    causal = np.asarray(forward(params, cfg, Inputs(tokens=b["inputs"], positions=b["positions"])).logits)
    np.testing.assert_allclose(z, causal, atol=1e-5)
    loss, _ = nbp_loss(params, cfg, b)
    lp = jax.nn.log_softmax(causal, -1)
    ce = -np.take_along_axis(lp, np.asarray(b["targets"])[..., None], -1)[:, 1:, 0].mean()
    np.testing.assert_allclose(float(loss), ce, rtol=1e-5)


def test_blocks_never_read_later_blocks(small):
    cfg, params = small
    o, k = raster(4, 4), 4
    codes = np.random.default_rng(2).integers(0, 4, (2, 4, 4))
    b = nbp_batch(codes, np.array([0, 1]), VOCAB, o, k, class_dropout=0.0)
    z = np.asarray(nbp_logits(params, cfg, b))
    fn = jax.jit(nbp_logits, static_argnums=1)
    z = np.asarray(fn(params, cfg, b))
    for blk in range(1, 3):  # (the last block, rows 3, is never an input)
        other = codes.copy()
        other[:, blk:] = (other[:, blk:] + 1) % 4  # rows >= blk (= code blocks >= blk) changed
        z2 = np.asarray(fn(params, cfg, nbp_batch(other, np.array([0, 1]), VOCAB, o, k, class_dropout=0.0)))
        cut = 1 + k + blk * k  # slots of code blocks < blk (and class, BOV) end here
        np.testing.assert_allclose(z2[:, :cut], z[:, :cut], atol=1e-5)
        assert not np.allclose(z2[:, cut:], z[:, cut:])


@pytest.mark.parametrize("k,guided", [(4, False), (8, True), (1, False)])
def test_decoded_likelihood_equals_teacher_forced(small, k, guided):
    cfg, params = small
    o = raster(4, 4)
    labels = np.array([0, 1, 2])
    s = sample_images(Model(params, cfg), nbp_decoder(VOCAB, o, k, guided=guided), labels, jax.random.key(5))
    assert s.stats["forward_calls"] == 16 // k and s.codes.shape == (3, 4, 4)
    b = nbp_batch(s.codes, labels, VOCAB, o, k, class_dropout=0.0)
    bias = jnp.where(jnp.asarray(VOCAB.code_mask(cfg.vocab_size)), 0.0, -jnp.inf)
    lp = jax.nn.log_softmax(nbp_logits(params, cfg, b) + bias, -1)
    tf = np.take_along_axis(np.asarray(lp), np.asarray(b["targets"])[..., None], -1)[:, 1:, 0]
    np.testing.assert_allclose(s.logprobs, tf, atol=1e-4)


def test_bad_blocks_raise():
    o = raster(4, 4)
    codes = np.zeros((2, 4, 4), np.int64)
    with pytest.raises(ValueError, match="must divide"):
        nbp_batch(codes, np.array([0, 1]), VOCAB, o, 3, class_dropout=0.0)
    with pytest.raises(ValueError, match="block"):
        nbp_ranks(o, 0)
    with pytest.raises(ValueError, match="raster"):
        nbp_decoder(VOCAB, diagonal(4, 4), 4)
    with pytest.raises(ValueError, match="must divide"):
        NBPDecode(vocab=VOCAB, order=o, block=5)
    with pytest.raises(ValueError, match="class labels"):
        nbp_batch_fn(codes, np.array([0, 7]), VOCAB, o, 4, batch_size=2)
    fn = nbp_batch_fn(codes, np.array([0, 1]), VOCAB, raster(4, 4, frames=None), 16, batch_size=2, seed=1)
    assert fn(3)["inputs"].shape == (2, 17)
    video = raster(2, 2, frames=3)  # frame blocks of a video grid
    assert nbp_ranks(video, 4).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
