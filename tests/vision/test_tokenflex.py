"""P61 TokenFLEX: adaptive pooling vs a numpy oracle, the prefix mask, greedy == teacher-forced exact match,
dynamic-token training through tokjax.train, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.model import ModelConfig
from tokjax.vision.tokenflex import (
    BOS_ID, CAPTION_VOCAB, EOS_ID, adaptive_avg_pool, adaptive_pool_matrix, caption_accuracy, caption_predictions,
    caption_text, caption_tokens, greedy_captions, tokenflex_batch, tokenflex_batch_fn, tokenflex_hidden,
    tokenflex_init, tokenflex_loss, visual_tokens,
)

CFG = ModelConfig(vocab_size=len(CAPTION_VOCAB), d_model=32, n_layers=1, n_heads=2, max_len=72)


def _ref_pool(x: np.ndarray, n: int) -> np.ndarray:
    """Brute-force torch.nn.AdaptiveAvgPool2d semantics on [B, H, W, D] (loops over the output cells)."""
    B, H, W, D = x.shape
    out = np.zeros((B, n, n, D))
    for i in range(n):
        r0, r1 = (i * H) // n, -(-((i + 1) * H) // n)
        for j in range(n):
            c0, c1 = (j * W) // n, -(-((j + 1) * W) // n)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@settings(max_examples=15, deadline=None, derandomize=True)
@given(h=st.integers(1, 9), w=st.integers(1, 9), d=st.integers(1, 3), data=st.data())
def test_pool_matches_numpy_oracle(h, w, d, data):
    n = data.draw(st.integers(1, min(h, w)))
    x = np.random.default_rng(h * 100 + w * 10 + d).normal(size=(2, h, w, d))
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, n)), _ref_pool(x, n), rtol=1e-5, atol=1e-5)


def test_pool_identity_and_known_bins():
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(adaptive_pool_matrix(8, 8), np.eye(8, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, 8)), x, atol=1e-6)
    # n = 3 on 8 cells: torch's overlapping bins [0, 3), [2, 6), [5, 8)
    a = adaptive_pool_matrix(3, 8)
    assert [tuple(np.flatnonzero(r)) for r in a] == [(0, 1, 2), (2, 3, 4, 5), (5, 6, 7)]
    np.testing.assert_allclose(a.sum(1), 1.0)
    np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, 1))[:, 0, 0], x.mean((1, 2)), atol=1e-5)


def _data(B=8, seed=0):
    from tokjax.data import glyphs

    g = glyphs(B, size=16, seed=seed)
    return g.images.astype(np.float32), caption_tokens(g.labels, g.left, g.top, g.large), g


def test_conv_stem_reads_windows():
    """Context 0 is patchify + a linear map; context r reads the (p + 2r)^2 zero-padded window around a patch."""
    from tokjax.vision.tokenflex import _encode
    from tokjax.vision.tokenizers import patchify

    images, _, _ = _data(3)
    for r in (0, 1):
        p = tokenflex_init(CFG, jax.random.key(r), context=r)["tokenflex"]
        k = 2 + 2 * r
        pad = np.pad(images, ((0, 0), (r, r), (r, r)))
        win = np.stack([np.stack([pad[:, 2 * i:2 * i + k, 2 * j:2 * j + k].reshape(3, -1) for j in range(8)], 1)
                        for i in range(8)], 1)  # [B, 8, 8, k^2]
        if r == 0:
            np.testing.assert_allclose(win, np.asarray(patchify(images, 2)))
        f = win @ np.asarray(p["patch_w"]) + np.asarray(p["patch_b"]) + np.asarray(p["pos"])
        mu, var = f.mean(-1, keepdims=True), f.var(-1, keepdims=True)
        ref = f + np.asarray(jax.nn.gelu(((f - mu) / np.sqrt(var + 1e-5)) @ np.asarray(p["mlp_w1"]))) @ np.asarray(
            p["mlp_w2"])
        np.testing.assert_allclose(np.asarray(_encode(p, jnp.asarray(images), 2, r)), ref, rtol=1e-4, atol=1e-4)


def test_captions_from_glyph_labels():
    images, toks, g = _data(6)
    assert toks.shape == (6, 6) and (toks[:, 0] == BOS_ID).all() and (toks[:, -1] == EOS_ID).all()
    for text, d, l, t, big in zip(caption_text(toks), g.labels, g.left, g.top, g.large):
        assert text.split() == [CAPTION_VOCAB[d], "left" if l else "right", "top" if t else "bottom",
                                "large" if big else "small"]


def test_prefix_bidirectional_captions_causal():
    params = tokenflex_init(CFG, jax.random.key(0))
    images, toks, _ = _data(2)
    pool = adaptive_pool_matrix(8, 8)  # identity: visual token k is patch k
    h0 = np.asarray(tokenflex_hidden(params, CFG, images, toks, pool))
    # change only the last patch (bottom-right 2x2 pixels): visual token 63 changes, and so does token 0
    img = images.copy()
    img[:, 14:, 14:] = 1.0 - img[:, 14:, 14:]
    h1 = np.asarray(tokenflex_hidden(params, CFG, img, toks, pool))
    assert np.abs(h1[:, 0] - h0[:, 0]).max() > 1e-4  # the first visual token sees the last one: bidirectional
    # change caption word 2 (input slot 64 + 2): earlier slots (visual and caption) unchanged, later ones change
    t2 = toks.copy()
    t2[:, 2] = (t2[:, 2] + 1) % 10
    h2 = np.asarray(tokenflex_hidden(params, CFG, images, t2, pool))
    np.testing.assert_allclose(h2[:, :66], h0[:, :66], atol=1e-5)
    assert np.abs(h2[:, 66:] - h0[:, 66:]).max() > 1e-4


def test_visual_token_count_and_greedy_equals_teacher_forced():
    params = tokenflex_init(CFG, jax.random.key(1))
    images, toks, _ = _data(16, seed=3)
    for n in (1, 3, 6):
        assert visual_tokens(params, images, adaptive_pool_matrix(n, 8)).shape == (16, n * n, CFG.d_model)
    # with a random model, force the truth to be the model's own greedy caption for half the rows
    g = np.asarray(greedy_captions(params, CFG, images, 3))
    truth = toks.copy()
    truth[:8, 1:] = g[:8]
    tf = np.asarray(caption_predictions(params, CFG, images, truth, 3))
    exact_tf = (tf == truth[:, 1:]).all(1)
    exact_greedy = (g == truth[:, 1:]).all(1)
    np.testing.assert_array_equal(exact_tf, exact_greedy)
    assert exact_tf[:8].all()
    acc = caption_accuracy(params, CFG, images, truth, 3, chunk=5)
    assert acc["exact"] == pytest.approx(exact_tf.mean()) and len(acc["per_slot"]) == 5


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_flexible_training_through_train():
    from tokjax.losses.registry import make_loss
    from tokjax.train import TrainConfig, train

    images, toks, _ = _data(32, seed=5)
    fn = tokenflex_batch_fn(images, toks, buckets=(1, 2), probs=(0.5, 0.5), batch_size=8, seed=0)
    assert {fn(s)["pool"].shape[0] for s in range(20)} == {1, 2}
    assert all(np.array_equal(fn(s)["tokens"], fn(s)["tokens"]) for s in range(3))  # pure in step
    params = tokenflex_init(CFG, jax.random.key(2))
    loss = make_loss("tokenflex")
    l0 = float(loss(params, CFG, tokenflex_batch(images, toks, 2), None)[0])
    tc = TrainConfig(lr=3e-3, warmup_steps=1, total_steps=8, batch_size=8, seq_len=5, seed=0, eval_every=0,
                     checkpoint_every=0, log_every=1, weight_decay=0.0)
    model, hist = train(CFG, tc, fn, loss_fn=loss, params=params, progress=False)
    assert len(hist["train"]) == 8 and all(np.isfinite(h["loss"]) for h in hist["train"])
    l1 = float(tokenflex_loss(model.params, CFG, tokenflex_batch(images, toks, 2))[0])
    assert l1 < l0
    assert not np.allclose(model.params["tokenflex"]["proj_w3"], params["tokenflex"]["proj_w3"])


def test_bad_inputs():
    params = tokenflex_init(CFG, jax.random.key(0))
    images, toks, _ = _data(4)
    with pytest.raises(ValueError, match="n=9"):
        adaptive_pool_matrix(9, 8)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        adaptive_avg_pool(np.zeros((1, 8, 8, 2)), 0)
    with pytest.raises(ValueError, match=r"\[\.\.\., G_h, G_w, D\]"):
        adaptive_avg_pool(np.zeros((8, 8)), 2)
    with pytest.raises(ValueError, match="pixels must lie in"):
        tokenflex_batch(images * 2.0 + 0.5, toks, 2)
    with pytest.raises(ValueError, match="divisible by patch=3"):
        tokenflex_batch(images, toks, 2, patch=3)
    with pytest.raises(ValueError, match="caption ids"):
        tokenflex_batch(images, toks + 30, 2)
    with pytest.raises(ValueError, match="buckets must be distinct"):
        tokenflex_batch_fn(images, toks, buckets=(2, 2), batch_size=2)
    with pytest.raises(ValueError, match="probs must be 3"):
        tokenflex_batch_fn(images, toks, probs=(0.5, 0.5), batch_size=2)
    with pytest.raises(ValueError, match="images must be \\[B, H, H\\]"):
        visual_tokens(params, np.zeros((2, 12, 12), np.float32), adaptive_pool_matrix(2, 8))
    with pytest.raises(ValueError, match="pool must be"):
        visual_tokens(params, images, np.ones((2, 6), np.float32))
    with pytest.raises(ValueError, match="needs 'images', 'tokens' and 'pool'"):
        tokenflex_loss(params, CFG, {"tokens": jnp.asarray(toks)})
    with pytest.raises(ValueError, match="params\\['tokenflex'\\]"):
        visual_tokens({}, images, adaptive_pool_matrix(2, 8))
    with pytest.raises(ValueError, match="max_len"):
        tokenflex_init(ModelConfig(vocab_size=18, d_model=32, n_layers=1, n_heads=2, max_len=32), jax.random.key(0))
    with pytest.raises(ValueError, match="digits must lie in 0-9"):
        caption_tokens(np.array([10]), [True], [True], [True])
