"""tokjax.vision.flextok (P32 FlexTok): register tokenizer, nested-dropout flow decoder, loss and stage-2 NTP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Model, ModelConfig
from tokjax.vision import flextok as F
from tokjax.vision.fsq import fsq

P, R, C = 16, 16, 4


@pytest.fixture(scope="module")
def tok():
    cfg = ModelConfig(vocab_size=4, d_model=32, n_layers=2, n_heads=4, max_len=P + R)
    params = F.flextok_init(cfg, jax.random.key(0))
    # perturb the zero-initialised read-out so the decoder's velocity is not identically 0
    params["flextok"]["out"]["w"] = 0.1 * jax.random.normal(jax.random.key(1), (32, C))
    return params, cfg


@pytest.fixture(scope="module")
def x():
    from tokjax.data import glyphs

    return jnp.asarray(F.image_tokens(glyphs(6, size=8, seed=0).images))


def test_image_tokens_round_trip():
    from tokjax.data import glyphs

    img = glyphs(3, size=8, seed=1).images.astype(np.float32)
    t = F.image_tokens(img)
    assert t.shape == (3, 16, 4) and t.min() >= -1 and t.max() <= 1
    np.testing.assert_allclose(F.token_images(t), img, atol=1e-6)


@pytest.mark.slow
def test_encode_gives_fsq_codes_and_keep_r_is_the_unmasked_decoder_input(tok, x):
    params, cfg = tok
    codes, ids = F.flextok_encode(params, cfg, x)
    assert codes.shape == (6, R, 3) and ids.shape == (6, R) and ids.dtype == jnp.int32
    assert int(ids.min()) >= 0 and int(ids.max()) < 125
    np.testing.assert_array_equal(np.asarray(fsq(F.LEVELS).ids_to_codes(ids)), np.asarray(codes))
    full = F.flextok_registers(params, codes, R)
    want = codes @ params["flextok"]["reg_in"]["w"] + params["flextok"]["reg_in"]["b"]
    np.testing.assert_array_equal(np.asarray(full), np.asarray(want))
    some = np.asarray(F.flextok_registers(params, codes, jnp.array([1, 2, 4, 8, 16, 3])))
    np.testing.assert_array_equal(some[2, :4], np.asarray(want)[2, :4])
    np.testing.assert_array_equal(some[2, 4:], np.broadcast_to(np.asarray(params["flextok"]["mask_token"]), (12, 32)))


def test_decode_reads_only_the_kept_registers_and_never_recompiles(tok, x):
    params, cfg = tok
    _, ids = F.flextok_encode(params, cfg, x)
    other = jnp.asarray(np.where(np.arange(R) < 4, np.asarray(ids), (np.asarray(ids) + 7) % 125))
    key = jax.random.key(5)
    a = F.flextok_decode(params, cfg, ids, 4, key, steps=3)
    b = F.flextok_decode(params, cfg, other, 4, key, steps=3)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # ids beyond keep are masked, whatever they are
    c = F.flextok_decode(params, cfg, other, 5, key, steps=3)
    assert not np.allclose(np.asarray(a), np.asarray(c))
    before = F._decode._cache_size()
    for k, s in [(1, 2), (16, 5), (8, 1)]:
        out = F.flextok_decode(params, cfg, ids, k, key, steps=s)
        assert out.shape == (6, P, C) and bool(jnp.all(jnp.isfinite(out)))
    assert F._decode._cache_size() == before


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_velocity_and_loss_are_finite_at_t_0_and_1_and_train_every_part(tok, x):
    params, cfg = tok
    codes, _ = F.flextok_encode(params, cfg, x)
    regs = F.flextok_registers(params, codes, 2)
    vel = jax.jit(lambda t: F.flextok_velocity(params, cfg, x, t, regs))
    for t in (jnp.zeros(6), jnp.ones(6), jnp.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.2])):
        v = vel(t)
        assert v.shape == x.shape and bool(jnp.all(jnp.isfinite(v)))
    from tokjax.losses.registry import make_loss

    loss = make_loss("flextok", levels=[5, 5, 5], keep="pow2")
    (val, m), g = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg, {"x": x}, jax.random.key(2)),
                                             has_aux=True))(params)
    assert np.isfinite(float(val)) and 1 <= float(m["keep_mean"]) <= 16
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    fl = g["flextok"]
    for name in ("patch_in", "fsq_in", "reg_in", "x_in"):  # straight-through FSQ: the encoder gets gradients
        assert float(jnp.abs(fl[name]["w"]).sum()) > 0, name
    total = lambda tree: sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(tree))  # noqa: E731
    assert total(fl["dec"]) > 0 and total({k: v for k, v in g.items() if k != "flextok"}) > 0  # both backbones
    # the fixed-length ablation keeps every register: the mask token gets no gradient; batch["keep"] overrides
    # the sampler (same rng: the same loss as keep="none")
    fixed = make_loss("flextok", keep="none")

    @jax.jit
    def both(p):
        (ln, mf), gf = jax.value_and_grad(lambda q: fixed(q, cfg, {"x": x}, jax.random.key(2)), has_aux=True)(p)
        lf, _ = F.flextok_loss(p, cfg, {"x": x, "keep": jnp.full((6,), R)}, jax.random.key(2), keep="pow2")
        return ln, mf["keep_mean"], jnp.abs(gf["flextok"]["mask_token"]).sum(), lf

    ln, keep_mean, g_mask, lf = both(params)
    assert float(keep_mean) == R and float(g_mask) == 0.0
    np.testing.assert_allclose(float(lf), float(ln), rtol=1e-6)


def test_stage2_generates_k_register_ids_and_decodes_them(tok):
    params, cfg = tok
    vocab = F.register_vocab()
    assert vocab.num_codes == 125 and vocab.size == 125 + 10 + 2
    lm_cfg = ModelConfig(vocab_size=vocab.size, d_model=32, n_layers=1, n_heads=4, max_len=R + 1)
    lm = Model.init(lm_cfg, jax.random.key(3))
    ids = np.random.default_rng(0).integers(0, 125, (8, R))
    b = F.register_batch_fn(ids, np.arange(8) % 10, batch_size=4, class_dropout=0.0)(0)
    assert b["tokens"].shape == (4, 1 + R) and int(b["tokens"][:, 0].min()) >= 125
    labels = np.array([0, 3, 9])
    k = 3
    out = F.flextok_generate(lm, params, cfg, labels, jax.random.key(k), k=k, steps=2)
    assert out.ids.shape == (3, k) and out.ids.min() >= 0 and out.ids.max() < 125  # code ids only, stop at k
    assert out.x.shape == (3, P, C) and np.isfinite(out.x).all()
    assert out.stats["forward_calls"] <= k + 1


def test_bad_inputs_raise(tok, x):
    params, cfg = tok
    _, ids = F.flextok_encode(params, cfg, x)
    for bad in (0, R + 1):
        with pytest.raises(ValueError, match=r"keep must lie in \[1, n=16\]"):
            F.flextok_decode(params, cfg, ids, bad, jax.random.key(0))
    with pytest.raises(ValueError, match="steps"):
        F.flextok_decode(params, cfg, ids, 2, jax.random.key(0), steps=0)
    with pytest.raises(ValueError, match=r"\[0, 125\)"):
        F.flextok_decode(params, cfg, ids.at[0, 0].set(125), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="levels"):
        F.flextok_encode(params, cfg, x, levels=(5, 5))
    with pytest.raises(ValueError, match=">= 2"):
        F.make_flextok_loss(levels=(5, 1, 5))
    with pytest.raises(ValueError, match="keep must be one of"):
        F.make_flextok_loss(keep="half")
    with pytest.raises(ValueError, match="drop_quant"):
        F.make_flextok_loss(drop_quant=1.5)
    with pytest.raises(ValueError, match="t_loc"):
        F.make_flextok_loss(t_loc=float("nan"))
    with pytest.raises(ValueError, match="patch_dim"):
        F.flextok_encode(params, cfg, jnp.zeros((1, 16, 3)))
    with pytest.raises(ValueError, match="k must lie"):
        lm = Model.init(ModelConfig(vocab_size=137, d_model=16, n_layers=1, n_heads=2, max_len=20), jax.random.key(0))
        F.flextok_generate(lm, params, cfg, [1], jax.random.key(0), k=17)


@pytest.mark.slow
def test_fsq_scale_is_a_fixed_multiplier_of_z_that_training_never_moves(x):
    """flextok_init(fsq_scale=s): z = s (W_q h + b) with s read through stop_gradient (zero gradient), so an
    optimiser step (tokjax.train's AdamW, weight decay on) leaves s bit-for-bit while W_q still trains."""
    from tokjax.train import TrainConfig, train

    cfg = ModelConfig(vocab_size=4, d_model=32, n_layers=2, n_heads=4, max_len=P + R)
    base = F.flextok_init(cfg, jax.random.key(0))
    scaled = F.flextok_init(cfg, jax.random.key(0), fsq_scale=0.1)
    assert "scale" not in base["flextok"]["fsq_in"]  # default: no multiplier (unchanged params)
    np.testing.assert_allclose(F._pre_quant(scaled, cfg, x), 0.1 * F._pre_quant(base, cfg, x), rtol=1e-5, atol=1e-7)
    codes, ids = F.flextok_encode(scaled, cfg, x)
    q = fsq(F.LEVELS)
    np.testing.assert_array_equal(ids, q.codes_to_ids(q.quantize(0.1 * F._pre_quant(base, cfg, x))))
    scaled["flextok"]["out"]["w"] = 0.1 * jax.random.normal(jax.random.key(1), (32, C))
    loss = F.make_flextok_loss(keep="none")
    g = jax.grad(lambda p: loss(p, cfg, {"x": x}, jax.random.key(2))[0])(scaled)
    assert float(g["flextok"]["fsq_in"]["scale"]) == 0.0 and float(jnp.abs(g["flextok"]["fsq_in"]["w"]).sum()) > 0
    model, _ = train(cfg, TrainConfig(lr=1e-2, warmup_steps=0, total_steps=2, weight_decay=0.1, batch_size=6,
                                      seq_len=1, eval_every=0, checkpoint_every=0, log_every=1),
                     lambda step: {"x": x}, loss_fn=loss, params=scaled, progress=False)
    trained = model.params["flextok"]["fsq_in"]
    assert float(trained["scale"]) == np.float32(0.1)
    assert not np.array_equal(np.asarray(trained["w"]), np.asarray(scaled["flextok"]["fsq_in"]["w"]))
    for bad in (0.0, -1.0, float("nan"), [0.1, 0.2], True):
        with pytest.raises(ValueError, match="fsq_scale"):
            F.flextok_init(cfg, jax.random.key(0), fsq_scale=bad)
