"""Tests of tokjax.vision.image_lm: vocabulary layout, training batches (hand-built example, class
dropout), decoding with CFG (g = 1 is the conditional distribution, the guidance formula and
decoded = teacher-forced log-probs against full-forward oracles, no recompile for a new guidance,
temperature or order), and bad-input errors. The trained glyph model is in test_image_lm_train.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.decoding import TRACE_COUNTS, Sampling
from tokjax.logits import allowed_tokens, masked_log_softmax
from tokjax.model import Inputs, Model, ModelConfig
from tokjax.vision.image_lm import (
    ImageVocab, NextTokenCFG, image_batch, next_token_cfg, sample_images, sequence_positions,
)
from tokjax.vision.orders import cell, diagonal, raster, to_sequence

VOCAB = ImageVocab(num_codes=4, num_classes=3)


def _model(pos_dims=1, positions="rope", vocab=VOCAB, seed=0, max_len=40):
    cfg = ModelConfig(vocab_size=vocab.size, d_model=32, n_layers=2, n_heads=2, pos_dims=pos_dims,
                      positions=positions, max_len=max_len, init_scale=0.5)
    return Model.init(cfg, jax.random.key(seed))


_FORWARDS = {}


def _codes_logp_oracle(model, tokens, positions, vocab):
    """Returns (teacher-forced next-token logits [N, L, V] of ``tokens`` from one full forward, code-id mask [V])."""
    cfg = model.cfg
    if cfg not in _FORWARDS:  # jitted once per config: eager forwards cost ~1 s of dispatch each
        _FORWARDS[cfg] = jax.jit(lambda p, t, q: tokjax.forward(p, cfg, Inputs(tokens=t, positions=q)).logits)
    pos = None if cfg.pos_dims == 1 else jnp.asarray(positions[:, :-1])
    z = _FORWARDS[cfg](model.params, jnp.asarray(tokens[:, :-1]), pos)
    return z, jnp.asarray(vocab.code_mask(cfg.vocab_size))


# ----------------------------------------------------------------------------------- vocabulary


def test_vocab_layout():
    v = ImageVocab(8, 10)
    assert (v.class_start, v.null_id, v.mask_id, v.size) == (8, 18, 19, 20)
    assert list(v.code_ids) == list(range(8)) and list(v.class_ids) == list(range(8, 18))
    np.testing.assert_array_equal(v.class_tokens([0, 9, 3]), [8, 17, 11])
    np.testing.assert_array_equal(v.code_mask(), np.arange(20) < 8)
    assert v.code_mask(24).shape == (24,)
    assert hash(v) == hash(ImageVocab(8, 10))


@pytest.mark.parametrize("labels", [[0, 10], [-1], [3.0]])
def test_vocab_rejects_bad_class_ids(labels):
    with pytest.raises(ValueError, match="class labels"):
        ImageVocab(8, 10).class_tokens(np.asarray(labels))


def test_vocab_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_codes must be an int >= 2"):
        ImageVocab(1, 3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        ImageVocab(4, 0)
    with pytest.raises(ValueError, match="smaller than the image vocabulary"):
        ImageVocab(4, 3).code_mask(8)


# -------------------------------------------------------------------------------------- batches


def test_image_batch_hand_built_example():
    # 2x3 grid in diagonal order: (0,0) | (0,1) (1,0) | (0,2) (1,1) | (1,2)
    codes = np.array([[[0, 1, 2], [3, 0, 1]], [[3, 3, 3], [2, 2, 2]]])
    b = image_batch(codes, np.array([1, 2]), VOCAB, diagonal(2, 3), class_dropout=0.0)
    np.testing.assert_array_equal(b["tokens"], [[5, 0, 1, 3, 2, 0, 1], [6, 3, 3, 2, 3, 2, 2]])
    want_pos = [[0, 0], [1, 1], [1, 2], [2, 1], [1, 3], [2, 2], [2, 3]]
    np.testing.assert_array_equal(b["positions"], [want_pos, want_pos])
    np.testing.assert_array_equal(b["mask"], [[False] + [True] * 6] * 2)
    assert b["tokens"].dtype == jnp.int32 and b["positions"].dtype == jnp.int32
    np.testing.assert_array_equal(sequence_positions(diagonal(2, 3)), want_pos)
    # jit-compatible with vocab and order static, class_dropout a runtime value
    f = jax.jit(lambda c, l, p, k: image_batch(c, l, VOCAB, raster(2, 3), class_dropout=p, key=k))
    jb = f(jnp.asarray(codes), jnp.asarray([1, 2]), 0.0, jax.random.key(0))
    np.testing.assert_array_equal(jb["tokens"][:, 1:], codes.reshape(2, 6))
    np.testing.assert_array_equal(jb["tokens"][:, 0], [5, 6])


def test_image_batch_video_positions():
    o = raster(2, 2, frames=2)
    b = image_batch(np.zeros((1, 2, 2, 2), int), [0], VOCAB, o, class_dropout=0.0)
    assert b["positions"].shape == (1, 9, 3)
    np.testing.assert_array_equal(b["positions"][0, 0], [0, 0, 0])
    np.testing.assert_array_equal(b["positions"][0, -1], [2, 2, 2])


def test_class_dropout_rate():
    n, p = 20000, 0.1
    codes = np.zeros((n, 2, 2), int)
    labels = np.arange(n) % 3
    b = image_batch(codes, labels, VOCAB, raster(2, 2), class_dropout=p, key=jax.random.key(3))
    cls = np.asarray(b["tokens"][:, 0])
    dropped = cls == VOCAB.null_id
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(cls[~dropped], VOCAB.class_start + labels[~dropped])
    assert not (np.asarray(image_batch(codes, labels, VOCAB, raster(2, 2), class_dropout=0.0,
                                       key=jax.random.key(0))["tokens"][:, 0]) == VOCAB.null_id).any()
    assert (np.asarray(image_batch(codes, labels, VOCAB, raster(2, 2), class_dropout=1.0,
                                   key=jax.random.key(0))["tokens"][:, 0]) == VOCAB.null_id).all()


def test_image_batch_errors():
    codes = np.zeros((2, 2, 3), int)
    with pytest.raises(ValueError, match="the order's grid"):
        image_batch(codes, [0, 1], VOCAB, raster(3, 2), class_dropout=0.0)
    with pytest.raises(ValueError, match="image codes must lie in \\[0, 4\\)"):
        image_batch(codes + 4, [0, 1], VOCAB, raster(2, 3), class_dropout=0.0)
    with pytest.raises(ValueError, match="class labels must lie in \\[0, 3\\)"):
        image_batch(codes, [0, 3], VOCAB, raster(2, 3), class_dropout=0.0)
    with pytest.raises(ValueError, match="labels must be \\[N=2\\]"):
        image_batch(codes, [0], VOCAB, raster(2, 3), class_dropout=0.0)
    with pytest.raises(ValueError, match="class_dropout must lie in"):
        image_batch(codes, [0, 1], VOCAB, raster(2, 3), class_dropout=1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs key="):
        image_batch(codes, [0, 1], VOCAB, raster(2, 3), class_dropout=0.1)
    with pytest.raises(ValueError, match="must be integers"):
        image_batch(codes.astype(float), [0, 1], VOCAB, raster(2, 3), class_dropout=0.0)


# -------------------------------------------------------------------------- decoding: guidance
# Every decode below uses a 3x3 grid and 2 images (4 rows guided, 2 conditional-only), so the few model
# configurations share their compiled loops (the test time is compile time).
LABELS = np.array([0, 2])


def _oracle_logprobs(model, seq, labels, order, g, t=1.0):
    """log p of each code of ``seq`` [N, L] under softmax_codes((l_u + g (l_c - l_u)) / t), from full forwards."""
    N, L = seq.shape
    pos = np.broadcast_to(sequence_positions(order), (N, L + 1, order.ndim))
    cond_tok = np.concatenate([np.asarray(VOCAB.class_tokens(labels))[:, None], seq], 1)
    null_tok = cond_tok.copy()
    null_tok[:, 0] = VOCAB.null_id
    zc, codes = _codes_logp_oracle(model, cond_tok, pos, VOCAB)
    zu, _ = _codes_logp_oracle(model, null_tok, pos, VOCAB)
    zg = jnp.where(codes, (zu + g * (zc - zu)) / t, -jnp.inf)
    return np.asarray(jnp.take_along_axis(masked_log_softmax(zg), jnp.asarray(seq)[..., None], -1)[..., 0])


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_guidance_one_is_the_conditional_distribution():
    model = _model(2)
    o = diagonal(3, 3)
    key = jax.random.key(7)
    guided = sample_images(model, next_token_cfg(VOCAB, o), LABELS, key, guidance=1.0)
    cond = sample_images(model, next_token_cfg(VOCAB, o, guided=False), LABELS, key)
    np.testing.assert_array_equal(guided.codes, cond.codes)
    np.testing.assert_allclose(guided.logprobs, cond.logprobs, atol=1e-5)
    assert guided.stats["forward_calls"] == cond.stats["forward_calls"] == 9  # one pass per token
    assert guided.codes.shape == (2, 3, 3) and guided.codes.max() < VOCAB.num_codes
    # the recorded log-probs are the teacher-forced conditional ones (decoded = teacher-forced)
    np.testing.assert_allclose(cond.logprobs, _oracle_logprobs(model, to_sequence(cond.codes, o), LABELS, o, 1.0),
                               atol=2e-4)


def test_guidance_one_equals_plain_sampling_of_the_codes():
    """pos_dims=1: guided decoding at g = 1 is tokjax's plain Sampling strategy restricted to the code ids
    (allowed_tokens), token for token with the same key."""
    model = _model(1)
    o = diagonal(3, 3)
    key = jax.random.key(7)
    guided = sample_images(model, next_token_cfg(VOCAB, o), LABELS, key, guidance=1.0)
    out = tokjax.generate(model, np.asarray(VOCAB.class_tokens(LABELS))[:, None], key=key, max_new_tokens=9,
                          strategy=Sampling(), logits=allowed_tokens(VOCAB.code_mask()), logprobs=0)
    np.testing.assert_array_equal(to_sequence(guided.codes, o), out.tokens[:, 1:])
    np.testing.assert_allclose(guided.logprobs, out.logprobs[:, 1:], atol=1e-5)
    assert guided.stats["forward_calls"] == out.stats["forward_calls"] == 9


@pytest.mark.parametrize("pos_dims", [1, 2])
def test_decoded_logprobs_follow_the_guidance_formula(pos_dims):
    model = _model(pos_dims, seed=1)
    o = cell(3, 3)
    for g in (0.0, 2.5):
        s = sample_images(model, next_token_cfg(VOCAB, o), LABELS, jax.random.key(2), guidance=g)
        np.testing.assert_allclose(s.logprobs, _oracle_logprobs(model, to_sequence(s.codes, o), LABELS, o, g),
                                   atol=2e-4)


def test_temperature_guidance_and_order_are_runtime_values():
    model = _model(2)
    strat = next_token_cfg(VOCAB, raster(3, 3))
    sample_images(model, strat, LABELS, jax.random.key(0), guidance=1.0)
    before = TRACE_COUNTS["decode_loop"]
    a = sample_images(model, strat, LABELS, jax.random.key(5), guidance=2.0, temperature=0.5)
    o2 = cell(3, 3)
    b = sample_images(model, next_token_cfg(VOCAB, o2), LABELS, jax.random.key(6), guidance=[0.0, 3.0],
                      temperature=[1.0, 2.0])
    assert TRACE_COUNTS["decode_loop"] == before  # new guidance, temperature and order of the same grid size
    np.testing.assert_allclose(a.logprobs, _oracle_logprobs(model, to_sequence(a.codes, raster(3, 3)), LABELS,
                                                            raster(3, 3), 2.0, 0.5), atol=2e-4)
    want = _oracle_logprobs(model, to_sequence(b.codes, o2), LABELS, o2, np.array([0.0, 3.0])[:, None, None],
                            np.array([1.0, 2.0])[:, None, None])
    np.testing.assert_allclose(b.logprobs, want, atol=2e-4)


def test_positions_reach_the_forward():
    """The same weights read as pos_dims=1 (sequence index) and pos_dims=2 (grid coordinates) decode to
    different distributions (each equal to its own oracle in the tests above)."""
    m2 = _model(2, seed=3)
    m1 = Model(m2.params, m2.cfg.replace(pos_dims=1))
    o = raster(3, 3)
    a = sample_images(m2, next_token_cfg(VOCAB, o), LABELS, jax.random.key(1))
    b = sample_images(m1, next_token_cfg(VOCAB, o), LABELS, jax.random.key(1))
    assert np.abs(a.logprobs - b.logprobs).max() > 1e-3


# --------------------------------------------------------------------------------------- errors


def test_sampling_errors():
    model = _model(1)
    strat = next_token_cfg(VOCAB, raster(2, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="guidance must be finite and >= 0"):
        sample_images(model, strat, [0], key, guidance=-0.5)
    with pytest.raises(ValueError, match="guidance must lie in"):
        next_token_cfg(VOCAB, raster(2, 2), guidance=-1.0)
    with pytest.raises(ValueError, match="one value per image"):
        sample_images(model, strat, [0, 1], key, guidance=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="class labels must lie in"):
        sample_images(model, strat, [0, 3], key)
    with pytest.raises(ValueError, match="needs a guided strategy"):
        sample_images(model, next_token_cfg(VOCAB, raster(2, 2), guided=False), [0], key, guidance=2.0)
    with pytest.raises(ValueError, match="temperature must lie in"):
        sample_images(model, strat, [0], key, temperature=0.0)
    with pytest.raises(ValueError, match="smaller than the image vocabulary"):
        sample_images(_model(1, vocab=ImageVocab(2, 2)), strat, [0], key)
    with pytest.raises(ValueError, match="max_len"):
        sample_images(_model(1, max_len=4), strat, [0], key)  # 1 + 4 tokens do not fit
    with pytest.raises(ValueError, match="must be an ImageStrategy"):
        sample_images(model, Sampling(), [0], key)


def test_pos_dims_and_grid_mismatch_errors():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="order's grid \\(2, 2, 2\\) has 3"):
        sample_images(_model(2), next_token_cfg(VOCAB, raster(2, 2, frames=2)), [0], key)
    with pytest.raises(ValueError, match="learned position table"):
        sample_images(_model(2, "learned", max_len=5), next_token_cfg(VOCAB, raster(1, 5)), [0], key)
    with pytest.raises(ValueError, match="sample_images"):  # generate's prefill has no positions
        tokjax.generate(_model(2), [[VOCAB.class_start]], key=key, max_new_tokens=4,
                        strategy=next_token_cfg(VOCAB, raster(2, 2), guided=False))
    with pytest.raises(ValueError, match="pos_dims=2 model reads 2 coordinates"):
        NextTokenCFG(VOCAB, raster(2, 2, frames=2), pos_dims=2)
