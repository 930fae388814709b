"""NAR (P31, tokjax.vision.nar): the proximity mask equals the numpy oracle h_k + w_k <= h_q + w_q (the
official setup_diagonal_mask rule), the combined logits of a target use only earlier anti-diagonals and
follow the official head table, one row reduces to next-token prediction (except the first token, which
averages head B in), the decoder's log-probs equal the teacher-forced ones, and bad inputs raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.model.attention import Causal, build_mask
from tokjax.vision.image_lm import ImageVocab, image_batch, sample_images
from tokjax.vision.nar import (
    NARDecode, make_nar_loss, nar_combine, nar_decoder, nar_heads, nar_init, nar_logits, nar_mask, nar_ranks,
    nar_sources, nar_token_logp,
)
from tokjax.vision.orders import diagonal, raster, to_sequence

VOCAB = ImageVocab(4, 3)


def _oracle(H, W):
    """[1 + HW, 1 + HW] visibility by brute force: the class token sees itself; everyone sees the class;
    image (h_q, w_q) sees (h_k, w_k) iff h_k + w_k <= h_q + w_q."""
    n = 1 + H * W
    vis = np.zeros((n, n), bool)
    vis[:, 0] = True
    for q in range(H * W):
        for k in range(H * W):
            hq, wq = divmod(q, W)
            hk, wk = divmod(k, W)
            vis[1 + q, 1 + k] = hk + wk <= hq + wq
    return vis


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5))
def test_mask_equals_numpy_oracle(H, W):
    m = np.asarray(build_mask(nar_mask((H, W)), 1, 1 + H * W))[0]
    np.testing.assert_array_equal(m, _oracle(H, W))


def test_sources_follow_the_official_head_table():
    H, W = 3, 4
    r_src, b_src, r_w, b_w = nar_sources((H, W))
    for t in range(H * W):
        h, w = divmod(t, W)
        if h == 0 and w == 0:
            assert (r_src[t], b_src[t], r_w[t], b_w[t]) == (0, 0, 0.5, 0.5)  # both heads at the class token
        elif h == 0:
            assert (r_src[t], r_w[t], b_w[t]) == (1 + w - 1, 1.0, 0.0)  # R from the left neighbour
        elif w == 0:
            assert (b_src[t], r_w[t], b_w[t]) == (1 + (h - 1) * W, 0.0, 1.0)  # B from the token above
        else:
            assert (r_src[t], b_src[t], r_w[t], b_w[t]) == (1 + h * W + w - 1, 1 + (h - 1) * W + w, 0.5, 0.5)


@pytest.fixture(scope="module")
def small():
    cfg = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, max_len=32, pos_dims=2)
    return cfg, nar_init(cfg, jax.random.key(0))


def test_targets_only_see_earlier_antidiagonals(small):
    cfg, params = small
    H, W = 3, 4
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (2, H, W))
    b = image_batch(codes, np.array([0, 2]), VOCAB, raster(H, W), class_dropout=0.0)
    fn = jax.jit(nar_logits, static_argnums=(1, 4))
    z = np.asarray(fn(params, cfg, b["tokens"], b["positions"], (H, W)))
    for c in range(H + W - 1):
        other = codes.copy()
        h, w = np.divmod(np.arange(H * W), W)
        late = (h + w >= c).reshape(H, W)
        other[:, late] = (other[:, late] + 1) % 4  # change every token on anti-diagonal >= c
        b2 = image_batch(other, np.array([0, 2]), VOCAB, raster(H, W), class_dropout=0.0)
        z2 = np.asarray(fn(params, cfg, b2["tokens"], b2["positions"], (H, W)))
        on = (h + w == c)
        np.testing.assert_allclose(z2[:, on], z[:, on], atol=1e-5)  # targets of diagonal c unchanged
        if c < H + W - 2:
            assert not np.allclose(z2[:, h + w > c], z[:, h + w > c])  # later targets do read them


def test_one_row_is_next_token_prediction_except_the_first_token(small):
    cfg, params = small
    W = 6
    m = np.asarray(build_mask(nar_mask((1, W)), 1, 1 + W))
    np.testing.assert_array_equal(m, np.asarray(build_mask(Causal(), 1, 1 + W)))
    codes = np.random.default_rng(1).integers(0, 4, (3, 1, W))
    b = image_batch(codes, np.array([0, 1, 2]), VOCAB, raster(1, W), class_dropout=0.0)
    r, bh = nar_heads(params, cfg, b["tokens"], b["positions"], (1, W))
    z = np.asarray(nar_combine(r, bh, (1, W)))
    ntp = np.asarray(forward(params, cfg, Inputs(tokens=b["tokens"], positions=b["positions"])).logits)
    np.testing.assert_allclose(z[:, 1:], ntp[:, 1:W], atol=1e-5)  # target w >= 1: the NTP logits at w - 1
    np.testing.assert_allclose(z[:, 0], 0.5 * (ntp[:, 0] + np.asarray(bh)[:, 0]), atol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_decoded_likelihood_equals_teacher_forced(small, guided):
    cfg, params = small
    H, W = 3, 4
    labels = np.array([0, 1, 2, 1])
    s = sample_images(Model(params, cfg), nar_decoder(VOCAB, H, W, guided=guided), labels, jax.random.key(3))
    assert s.stats["forward_calls"] == H + W - 1 and s.codes.shape == (4, H, W)
    assert s.codes.min() >= 0 and s.codes.max() < VOCAB.num_codes
    b = image_batch(s.codes, labels, VOCAB, raster(H, W), class_dropout=0.0)
    bias = jnp.where(jnp.asarray(VOCAB.code_mask(cfg.vocab_size)), 0.0, -jnp.inf)
    tf = np.asarray(nar_token_logp(params, cfg, b, (H, W), logit_bias=bias)).reshape(4, H, W)
    np.testing.assert_allclose(s.logprobs, np.asarray(to_sequence(tf, diagonal(H, W))), atol=1e-4)


def test_loss_is_the_cross_entropy_of_the_combined_logits(small):
    cfg, params = small
    codes = np.random.default_rng(2).integers(0, 4, (3, 2, 3))
    b = image_batch(codes, np.array([0, 1, 2]), VOCAB, raster(2, 3), class_dropout=0.0)
    loss, _ = make_nar_loss((2, 3))(params, cfg, b, None)
    lp = nar_token_logp(params, cfg, b, (2, 3))
    np.testing.assert_allclose(float(loss), -float(np.mean(lp)), rtol=1e-5)
    assert make_nar_loss((2, 3)) is make_nar_loss((2, 3))  # one loss object per grid: runs share compiled steps


def test_bad_inputs_raise(small):
    cfg, params = small
    with pytest.raises(ValueError, match="video NAR"):
        nar_ranks((2, 3, 4))
    with pytest.raises(ValueError, match="extra_layers"):
        nar_init(cfg, jax.random.key(0), extra_layers=0)
    with pytest.raises(ValueError, match="diagonal"):
        NARDecode(vocab=VOCAB, order=raster(3, 4))
    with pytest.raises(ValueError, match="nar_b"):
        nar_heads({k: v for k, v in params.items() if k != "nar_b"}, cfg, jnp.zeros((1, 13), jnp.int32), None, (3, 4))
    with pytest.raises(ValueError, match="slots"):
        nar_heads(params, cfg, jnp.zeros((1, 12), jnp.int32), jnp.zeros((1, 12, 2), jnp.int32), (3, 4))
    with pytest.raises(ValueError, match="guidance"):
        sample_images(Model(params, cfg), nar_decoder(VOCAB, 3, 4), np.array([0]), jax.random.key(0), guidance=-1.0)
    assert nar_ranks((2, 2)).tolist() == [0, 1, 2, 2, 3]
