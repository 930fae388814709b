"""Token-Shuffle (P64, tokjax.vision.token_shuffle): s = 1 is raster next-token prediction exactly; the
shuffle / unshuffle ops and the window ordering equal numpy oracles; a window's logits never read its own
or later windows; the decoder's log-probs equal the teacher-forced ones in N / s^2 passes; bad windows
raise ValueError."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.data import batch_indices
from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.vision.image_lm import ImageVocab, image_batch, sample_images
from tokjax.vision.orders import raster, window_raster
from tokjax.vision.token_shuffle import (
    TokenShuffleDecode, make_token_shuffle_loss, token_shuffle, token_shuffle_batch_fn, token_shuffle_decoder,
    token_shuffle_init, token_shuffle_logits, token_shuffle_positions, token_unshuffle,
)

VOCAB = ImageVocab(4, 3)
CFG = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, max_len=80, pos_dims=2)


def _perturbed(params, key):
    """Non-zero branch output matrices (they start at zero), so the tests see the full op."""
    ts = dict(params["token_shuffle"])
    k1, k2 = jax.random.split(key)
    ts["mlp_in"] = {**ts["mlp_in"], "w2": jax.random.normal(k1, ts["mlp_in"]["w2"].shape) * 0.2}
    ts["mlp_out"] = {**ts["mlp_out"], "w2": jax.random.normal(k2, ts["mlp_out"]["w2"].shape) * 0.2}
    return {**params, "token_shuffle": ts}


@pytest.fixture(scope="module")
def models():
    out = {1: token_shuffle_init(CFG, jax.random.key(0), 1)}
    for s in (2, 4):
        out[s] = _perturbed(token_shuffle_init(CFG, jax.random.key(s), s), jax.random.key(10 + s))
    return out


def _gelu(x):  # jax.nn.gelu's default (tanh approximation)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_s1_is_next_token_prediction(models):
    params = models[1]
    assert set(params) == set(token_shuffle_init(CFG, jax.random.key(0), 1)) and "token_shuffle" not in params
    codes = np.random.default_rng(0).integers(0, 4, (3, 4, 4))
    labels = np.array([0, 1, 2])
    b = image_batch(codes, labels, VOCAB, raster(4, 4), class_dropout=0.0)  # plain NTP batch
    ntp = np.asarray(forward(params, CFG, Inputs(tokens=b["tokens"], positions=b["positions"])).logits)
    z = np.asarray(token_shuffle_logits(params, CFG, b["tokens"], (4, 4), 1))
    np.testing.assert_allclose(z, ntp[:, :-1], atol=1e-6, rtol=0)
    loss, _ = make_token_shuffle_loss((4, 4), 1)(params, CFG, b)
    lp = jax.nn.log_softmax(ntp[:, :-1], -1)
    ce = -np.take_along_axis(np.asarray(lp), np.asarray(b["tokens"])[:, 1:, None], -1).mean()
    np.testing.assert_allclose(float(loss), ce, rtol=1e-6)
    np.testing.assert_array_equal(token_shuffle_positions((4, 4), 1), b["positions"][0, :-1])


@pytest.mark.parametrize("s", [2, 4])
def test_shuffle_unshuffle_equal_numpy_oracle(models, s):
    p = {k: np.asarray(v) if not isinstance(v, dict) else {kk: np.asarray(vv) for kk, vv in v.items()}
         for k, v in models[s]["token_shuffle"].items()}
    d, a = CFG.d_model, s * s
    e = np.random.default_rng(1).normal(size=(2, 3, a, d)).astype(np.float32)
    fused = np.asarray(token_shuffle(models[s], jnp.asarray(e), s))
    assert fused.shape == (2, 3, d)
    mlp = lambda q, x: _gelu(x @ q["w1"] + q["b1"]) @ q["w2"] + q["b2"]  # noqa: E731
    z = np.concatenate([e[:, :, j] @ p["down"] for j in range(a)], axis=-1)  # channel concat, j major
    np.testing.assert_allclose(fused, e.mean(2) + mlp(p["mlp_in"], z), atol=2e-5)
    h = np.random.default_rng(2).normal(size=(2, 3, d)).astype(np.float32)
    c = np.asarray(token_unshuffle(models[s], jnp.asarray(h), s))
    assert c.shape == (2, 3, a, d)
    u = mlp(p["mlp_out"], h)
    for j in range(a):
        np.testing.assert_allclose(c[:, :, j], h + u[..., j * d // a:(j + 1) * d // a] @ p["up"], atol=2e-5)


@pytest.mark.parametrize("s", [1, 2, 4])
def test_window_ordering_and_positions_equal_oracle(s):
    H = W = 8
    codes = np.random.default_rng(3).integers(0, 4, (2, H, W))
    b = token_shuffle_batch_fn(codes, np.array([0, 1]), VOCAB, s, batch_size=2, class_dropout=0.0)(0)
    tok = np.asarray(b["tokens"])
    got = tok[:, 1:].reshape(2, -1, s * s)
    # oracle: window (R, C) = codes[R s:(R+1) s, C s:(C+1) s] raster inside; windows raster
    oracle = codes.reshape(2, H // s, s, W // s, s).transpose(0, 1, 3, 2, 4).reshape(2, -1, s * s)
    np.testing.assert_array_equal(got, oracle[batch_indices(2, 2, 0, seed=0)])  # rows the batch fn drew
    pos = token_shuffle_positions((H, W), s)
    P = H * W // (s * s)
    win = np.stack(np.divmod(np.arange(P - 1), W // s), -1) + 1
    np.testing.assert_array_equal(pos, np.concatenate([[[0, 0]], win]))


@pytest.mark.parametrize("s", [2, 4])
def test_windows_never_read_their_own_or_later_windows(models, s):
    params, H = models[s], 8
    order = window_raster(H, H, s)
    codes = np.random.default_rng(4).integers(0, 4, (2, H, H))
    b = image_batch(codes, np.array([0, 1]), VOCAB, order, class_dropout=0.0, coords=False)
    fn = jax.jit(token_shuffle_logits, static_argnums=(1, 3, 4))
    z = np.asarray(fn(params, CFG, b["tokens"], (H, H), s))
    a, P = s * s, H * H // (s * s)
    for w in (0, P // 2, P - 2):
        tok = np.array(b["tokens"])
        tok[:, 1 + w * a:] = (tok[:, 1 + w * a:] + 1) % 4  # windows >= w changed
        z2 = np.asarray(fn(params, CFG, jnp.asarray(tok), (H, H), s))
        cut = (w + 1) * a  # logits of windows 0..w read windows < w only
        np.testing.assert_allclose(z2[:, :cut], z[:, :cut], atol=1e-5)
        assert not np.allclose(z2[:, cut:], z[:, cut:])


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@pytest.mark.parametrize("s,guided", [(2, False), (4, True), (1, False)])
def test_decoded_likelihood_equals_teacher_forced(models, s, guided):
    params = models[s]
    labels = np.array([0, 1, 2])
    out = sample_images(Model(params, CFG), token_shuffle_decoder(VOCAB, 8, 8, s, guided=guided), labels,
                        jax.random.key(5))
    assert out.stats["forward_calls"] == 64 // (s * s) and out.codes.shape == (3, 8, 8)
    b = image_batch(out.codes, labels, VOCAB, window_raster(8, 8, s), class_dropout=0.0, coords=False)
    bias = jnp.where(jnp.asarray(VOCAB.code_mask(CFG.vocab_size)), 0.0, -jnp.inf)
    lp = jax.nn.log_softmax(token_shuffle_logits(params, CFG, b["tokens"], (8, 8), s) + bias, -1)
    tf = np.take_along_axis(np.asarray(lp), np.asarray(b["tokens"])[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, tf, atol=1e-4)


def test_bad_windows_raise(models):
    codes = np.zeros((2, 8, 8), np.int64)
    with pytest.raises(ValueError, match="must divide"):
        token_shuffle_batch_fn(codes, np.array([0, 1]), VOCAB, 3, batch_size=2)
    with pytest.raises(ValueError, match="s must be an int >= 1"):
        token_shuffle_init(CFG, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="divisible by s"):
        token_shuffle_init(CFG.replace(d_model=40, n_heads=2), jax.random.key(0), 4)
    with pytest.raises(ValueError, match="must divide"):
        token_shuffle_decoder(VOCAB, 8, 6, 4)
    with pytest.raises(ValueError, match="window_raster"):
        TokenShuffleDecode(vocab=VOCAB, order=raster(8, 8), s=2)
    with pytest.raises(ValueError, match="token_shuffle"):
        token_shuffle_logits(models[1], CFG, jnp.zeros((1, 65), jnp.int32), (8, 8), 2)  # s=1 params, s=2 model
    with pytest.raises(ValueError, match="another window size"):
        token_shuffle_logits(models[2], CFG, jnp.zeros((1, 65), jnp.int32), (8, 8), 4)
    with pytest.raises(ValueError, match="1 \\+ H\\*W"):
        token_shuffle_logits(models[2], CFG, jnp.zeros((1, 64), jnp.int32), (8, 8), 2)
    with pytest.raises(ValueError, match="s must be an int"):
        token_shuffle_positions((8, 8), 1.5)
    assert not np.isnan(np.asarray(token_shuffle_logits(models[2], CFG, jnp.zeros((1, 65), jnp.int32),
                                                        (8, 8), 2))).any()
