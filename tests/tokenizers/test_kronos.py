"""Kronos (P52): BSQ codes and ids, straight-through gradient, the dual head (s2_bits = 0 = flat head, causality,
decoded = teacher-forced log-probs), tokenizer training through tokjax.train, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.data import klines
from tokjax.model import Model, ModelConfig
from tokjax.model.forward import forward, lm_head
from tokjax.tokenizers import kronos as K


def _model(bits, d=32):
    cfg = ModelConfig.tiny(vocab_size=1 << bits, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
    return Model.init(cfg, jax.random.key(0))


def test_ids_codes_round_trip_and_layout():
    s1b, s2b = 3, 2
    ids = jnp.arange(1 << (s1b + s2b))
    codes = K.ids_to_codes(ids, s1b, s2b)
    np.testing.assert_allclose(np.abs(np.asarray(codes)), 1 / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(codes), axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(K.bits_to_ids(codes, s1b, s2b)), np.asarray(ids))
    s1, s2 = K.split_ids(ids, s2b)
    # s1 is the high part of the composite id and little-endian over the first s1 bits (numpy oracle)
    b = (np.asarray(codes) > 0).astype(int)
    np.testing.assert_array_equal(np.asarray(s1), b[:, :3] @ (1 << np.arange(3)))
    np.testing.assert_array_equal(np.asarray(s2), b[:, 3:] @ (1 << np.arange(2)))
    np.testing.assert_array_equal(np.asarray(ids), (np.asarray(s1) << 2) | np.asarray(s2))


def test_encoder_codes_on_sphere_and_decoder_passes():
    tc = K.BSQConfig(n_features=4, s1_bits=4, s2_bits=4, hidden=16)
    p = K.init_tokenizer(tc, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (50, 4))
    u, q, ids = K.tokenizer_encode(p, tc, x)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(q)), 1 / np.sqrt(8), rtol=1e-6)
    np.testing.assert_array_equal(np.sign(np.asarray(q)), np.where(np.asarray(u) > 0, 1, -1))
    np.testing.assert_allclose(np.asarray(K.ids_to_codes(ids, 4, 4)), np.asarray(q), rtol=1e-6)
    # decoding ids = decoding codes; the coarse pass ignores the s2 bits
    np.testing.assert_allclose(np.asarray(K.tokenizer_decode(p, tc, ids)), np.asarray(K.tokenizer_decode(p, tc, q)),
                               rtol=1e-5, atol=1e-6)
    flipped = q.at[:, 4:].multiply(-1)
    np.testing.assert_allclose(np.asarray(K.tokenizer_decode(p, tc, flipped, coarse=True)),
                               np.asarray(K.tokenizer_decode(p, tc, q, coarse=True)), rtol=1e-6)
    assert not np.allclose(np.asarray(K.tokenizer_decode(p, tc, flipped)), np.asarray(K.tokenizer_decode(p, tc, q)))


def test_straight_through_gradient():
    u = jax.random.normal(jax.random.key(0), (3, 6))
    w = jax.random.normal(jax.random.key(1), (3, 6))
    g = jax.grad(lambda u: jnp.sum(w * K.bsq_quantize(u)))(u)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w) / np.sqrt(6), rtol=1e-6)
    assert np.asarray(K.bsq_quantize(jnp.zeros((1, 4))) < 0).all()  # sign(0) = -1, as the official quantizer


def test_entropy_terms_extremes():
    # one code for every sample: the codebook entropy is low; balanced random codes: near log(2^g) per group
    k, g = 4, 4
    same = jnp.ones((64, k)) / 2.0
    rand = jax.random.normal(jax.random.key(0), (4096, k))
    rand = rand / jnp.linalg.norm(rand, axis=-1, keepdims=True)
    _, h_same = K.bsq_entropy_terms(same, g)
    _, h_rand = K.bsq_entropy_terms(rand, g)
    assert float(h_rand) > float(h_same)
    assert float(h_rand) <= np.log(2**g) + 1e-5


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_s2_bits_zero_is_flat_head():
    m = _model(4)
    for mode in ("dual", "independent"):
        hc = K.KronosHead(s1_bits=4, s2_bits=0, mode=mode, n_heads=2)
        p = K.init_kronos_head(m.params, m.cfg, hc, jax.random.key(1))
        p["kronos"]["s1"] = {"w": lm_head(m.params, m.cfg), "b": jnp.zeros(16)}
        toks = jax.random.randint(jax.random.key(2), (2, 9), 0, 16)
        flat = jax.nn.log_softmax(forward(m.params, m.cfg, toks[:, :-1]).logits, -1)
        joint = K.kronos_joint_logprobs(p, m.cfg, hc, toks[:, :-1])
        np.testing.assert_allclose(np.asarray(joint), np.asarray(flat), atol=1e-5)
        _, met = K.kronos_loss(p, m.cfg, hc, toks)
        ce = -np.take_along_axis(np.asarray(flat), np.asarray(toks[:, 1:])[..., None], -1).mean()
        np.testing.assert_allclose(float(met["nll"]), ce, rtol=1e-5)
        assert float(met["ce_s2"]) == 0.0


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_dual_head_causal_and_conditioned():
    m = _model(6)
    hc = K.KronosHead(s1_bits=3, s2_bits=3, mode="dual", n_heads=2)
    p = K.init_kronos_head(m.params, m.cfg, hc, jax.random.key(1))
    toks = jax.random.randint(jax.random.key(2), (2, 8), 0, 64)
    a = K.kronos_joint_logprobs(p, m.cfg, hc, toks)
    b = K.kronos_joint_logprobs(p, m.cfg, hc, toks.at[:, 5:].set(7))
    np.testing.assert_allclose(np.asarray(a[:, :5]), np.asarray(b[:, :5]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(jnp.exp(a).sum(-1)), 1.0, rtol=1e-5)
    lp = np.asarray(a).reshape(2, 8, 8, 8)
    cond = lp - np.log(np.exp(lp).sum(-1, keepdims=True))  # log p(s2 | s1)
    assert np.abs(cond[:, :, 0] - cond[:, :, 1]).max() > 1e-3  # the dual head's s2 depends on s1
    hi = K.KronosHead(s1_bits=3, s2_bits=3, mode="independent", n_heads=2)
    lpi = np.asarray(K.kronos_joint_logprobs(K.init_kronos_head(m.params, m.cfg, hi, jax.random.key(1)), m.cfg, hi,
                                             toks)).reshape(2, 8, 8, 8)
    condi = lpi - np.log(np.exp(lpi).sum(-1, keepdims=True))
    np.testing.assert_allclose(condi[:, :, 0], condi[:, :, 5], atol=1e-5)  # independent: it does not


@pytest.mark.parametrize("mode", ["dual", pytest.param("independent", marks=pytest.mark.slow)])
def test_decoded_logprobs_equal_teacher_forced(mode):
    m = _model(8)
    hc = K.KronosHead(s1_bits=4, s2_bits=4, mode=mode, n_heads=2)
    p = K.init_kronos_head(m.params, m.cfg, hc, jax.random.key(1))
    prompt = jax.random.randint(jax.random.key(2), (2, 3), 0, 256)
    out = tokjax.generate(Model(p, m.cfg), prompt, key=jax.random.key(3), max_new_tokens=6,
                          strategy=K.KronosDecode(head=hc), logprobs=0, bucket=False)
    seq = jnp.asarray(out.tokens)[:, :9]
    tf = jnp.take_along_axis(K.kronos_joint_logprobs(p, m.cfg, hc, seq[:, :-1]), seq[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.logprobs)[:, 3:9], np.asarray(tf[:, 2:8]), atol=2e-4)
    assert int(out.stats["forward_calls"]) == 6  # one backbone call per bar: s1 and s2 come from one h_t


@pytest.mark.slow
def test_tokenizer_trains_through_tokjax_train():
    from tokjax.train import TrainConfig, train

    tc = K.BSQConfig(n_features=4, s1_bits=2, s2_bits=2, hidden=16)
    feats, _, _ = K.kline_features(klines(8, 64, seed=0).ohlcv)
    x = jnp.asarray(feats.reshape(-1, 4))
    p0 = K.init_tokenizer(tc, jax.random.key(0))
    loss0 = float(K.tokenizer_loss(p0, tc, x)[0])
    p, hist = train(None, TrainConfig(total_steps=60, warmup_steps=5, lr=1e-2, log_every=60, eval_every=0,
                                      checkpoint_every=0), lambda step: {"x": x}, params=p0,
                    loss_fn=K.make_tokenizer_loss(tc), progress=False)
    assert float(K.tokenizer_loss(p, tc, x)[0]) < loss0


def test_registered_loss_matches_direct():
    from tokjax.losses.registry import make_loss

    m = _model(4)
    hc = K.KronosHead(s1_bits=2, s2_bits=2, n_heads=2)
    p = K.init_kronos_head(m.params, m.cfg, hc, jax.random.key(1))
    toks = jax.random.randint(jax.random.key(2), (2, 6), 0, 16)
    fn = make_loss("kronos", s1_bits=2, s2_bits=2, n_heads=2)
    direct = float(K.kronos_loss(p, m.cfg, hc, toks)[0])
    np.testing.assert_allclose(float(fn(p, m.cfg, {"tokens": toks}, None)[0]), direct)


def test_kline_features_lookback_has_no_future():
    ohlcv = klines(3, 20, seed=1).ohlcv
    f, mean, std = K.kline_features(ohlcv, lookback=8)
    later = ohlcv.copy()
    later[:, 8:, 4] *= 3.0  # change the volumes after the lookback window
    g, _, _ = K.kline_features(later, lookback=8)
    np.testing.assert_array_equal(f[:, :8], g[:, :8])
    assert not np.allclose(f[:, 8:], g[:, 8:])
    np.testing.assert_allclose(f[:, :8].mean(1), 0.0, atol=1e-5)  # z-scored over the lookback
    r = np.log(ohlcv[..., 3] / ohlcv[..., 0])
    inside = np.abs(f[..., 0]) < 4.99  # not clipped: the scaling inverts exactly
    undone = f[..., 0] * std[:, None, 0] + mean[:, None, 0]
    np.testing.assert_allclose(undone[inside], r[inside], rtol=1e-4, atol=1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="s1_bits"):
        K.KronosHead(s1_bits=0)
    with pytest.raises(ValueError, match="s2_bits"):
        K.BSQConfig(s2_bits=-1)
    with pytest.raises(ValueError, match="s1_bits"):
        K.bits_to_ids(jnp.ones((3, 2)), 0, 2)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        K.bits_to_ids(jnp.ones((3, 3)), 2, 2)
    ohlcv = klines(2, 8, seed=0).ohlcv.copy()
    bad = ohlcv.copy()
    bad[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        K.kline_features(bad)
    bad = ohlcv.copy()
    bad[1, 2, 0] = -1.0
    with pytest.raises(ValueError, match="> 0"):
        K.kline_features(bad)
    with pytest.raises(ValueError, match="shape"):
        K.kline_features(ohlcv[..., :4])
    with pytest.raises(ValueError, match="lookback"):
        K.kline_features(ohlcv, lookback=1)
    tc = K.BSQConfig(n_features=4, s1_bits=2, s2_bits=2, hidden=8)
    with pytest.raises(ValueError, match="n_features"):
        K.tokenizer_encode(K.init_tokenizer(tc, jax.random.key(0)), tc, jnp.zeros((3, 5)))
    m = _model(4)
    with pytest.raises(ValueError, match="vocab_size"):
        K.init_kronos_head(m.params, m.cfg, K.KronosHead(s1_bits=3, s2_bits=3, n_heads=2), jax.random.key(0))
    hc = K.KronosHead(s1_bits=2, s2_bits=2, n_heads=2)
    p = K.init_kronos_head(m.params, m.cfg, hc, jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        K.kronos_joint_logprobs(p, m.cfg, hc, jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="kronos"):
        K.kronos_loss(m.params, m.cfg, hc, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="mode"):
        K.KronosHead(mode="joint")
