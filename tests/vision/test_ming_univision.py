"""P74 MingTok / Ming-UniVision (tokjax.vision.ming_univision): the causal semantic decoder's cache, the generation
strategy against the teacher-forced model, the reduction of the LM loss to the flow loss, and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax.vision.flow as F
from tokjax.model import Inputs, Model, ModelConfig, forward, init_params
from tokjax.model.forward import embed
from tokjax.vision import ming_univision as M

C, P, PD, TD = 4, 16, 16, 8  # token dim, patches, patch dim, teacher dim
TOK_CFG = ModelConfig(vocab_size=4, d_model=16, n_layers=2, n_heads=2, max_len=P)
LM_CFG = ModelConfig(vocab_size=12, d_model=16, n_layers=1, n_heads=2, max_len=P + 1)


@pytest.fixture(scope="module")
def tok():
    params = jax.jit(lambda k: M.mingtok_init(TOK_CFG, k, patch_dim=PD, token_dim=C, teacher_dim=TD))(jax.random.key(0))
    # non-trivial normalisation, so the de-normalisation inside the semantic decoder is exercised
    return {**params, "mingtok": {**params["mingtok"], "norm": {"mean": jnp.float32(0.3), "scale": jnp.float32(2.0)}}}


@pytest.fixture(scope="module")
def lm():
    @jax.jit
    def make(key):
        k1, k2, k3 = jax.random.split(key, 3)
        params = dict(init_params(LM_CFG, k1))
        fl = M.ming_lm_init(k2, LM_CFG, C, TOK_CFG.d_model, width=16, depth=1)
        # perturb every head weight: the zero-initialised AdaLN and output layers would sample the same token from
        # every hidden state
        leaves, tree = jax.tree.flatten(fl["head"])
        keys = jax.random.split(k3, len(leaves))
        fl["head"] = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
        return {**params, "flow": fl}

    return Model(params=make(jax.random.key(1)), cfg=LM_CFG)


def _u(n=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, P, C)), jnp.float32)


def test_incremental_semantic_decoder_equals_full_forward(tok):
    """The issue's required equivalence: the semantic decoder run step by step on its KV cache (one latent at a
    time, and in uneven chunks) gives its full causal forward."""
    u = _u()
    decode = jax.jit(M.semantic_decode, static_argnames="cfg")
    full = decode(tok, TOK_CFG, u)
    step = jax.jit(M.semantic_step, static_argnames="cfg")
    for chunks in ([1] * P, [5, 1, 10]):
        cache, outs, i = M.semantic_cache(TOK_CFG, 3), [], 0
        for n in chunks:
            f, cache = step(tok, TOK_CFG, u[:, i:i + n], cache)
            outs.append(f)
            i += n
        np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(full), atol=2e-5)
    # and it is causal: changing latent j leaves every feature before j unchanged, and changes feature j
    j = 7
    moved = decode(tok, TOK_CFG, u.at[:, j].add(1.0))
    np.testing.assert_allclose(np.asarray(moved[:, :j]), np.asarray(full[:, :j]), atol=1e-6)
    assert float(jnp.abs(moved[:, j] - full[:, j]).max()) > 1e-3


def test_generation_strategy_equals_teacher_forced_model(tok, lm):
    """With the deterministic sampler (temperature 0) every latent is a function of its hidden state: the LM
    re-run teacher-forced on [class, E(SemDec(u))] of the decoded canvas must give the canvas back, so the
    strategy's cached LM + cached semantic decoder equal the full forwards."""
    labels, steps = np.array([1, 7, 3]), 3
    out = M.ming_generate(lm, tok, TOK_CFG, labels, jax.random.key(0), length=P, num_classes=10, steps=steps,
                          temperature=0.0)
    assert out.latents.shape == (3, P, C) and out.patches.shape == (3, P, PD)
    assert out.stats["forward_calls"] == P and out.stats["head_evals"] == P * steps

    @jax.jit
    def full(params, u):
        s = M.semantic_decode(tok, TOK_CFG, u)
        e = jnp.concatenate([embed(params, LM_CFG, jnp.asarray(labels)[:, None]), F._dense(params["flow"]["proj"],
                                                                                          s[:, :-1])], 1)
        z = forward(params, LM_CFG, Inputs(embeds=e), compute_logits=False).hidden
        return F.flow_sample(params["flow"]["head"], z, jax.random.key(9), steps=steps, temperature=0.0)[0]

    np.testing.assert_allclose(out.latents, np.asarray(full(lm.params, jnp.asarray(out.latents))), atol=2e-4)
    assert float(np.std(out.latents[:, :, 0])) > 1e-3  # the check is not vacuous (tokens differ)
    np.testing.assert_allclose(out.patches, np.asarray(M._decode_jit(tok, TOK_CFG, out.latents)), atol=1e-5)


@pytest.mark.slow
def test_lm_loss_reduces_to_the_flow_loss_on_raw_latents():
    """The separate-representation baseline: feats = latents, no understanding term, and ming_lm_init(c, c) is
    continuous_init; the loss is then tokjax.vision.flow.flow_loss exactly."""
    params = dict(init_params(LM_CFG, jax.random.key(4)))
    params["flow"] = M.ming_lm_init(jax.random.key(5), LM_CFG, C, C, width=16, depth=1)
    ref = F.continuous_init(jax.random.key(5), LM_CFG, C, width=16, depth=1)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params["flow"], ref))
    u = np.asarray(_u(4))
    batch = M.ming_lm_batch_fn(u, u, np.arange(4), num_classes=10, batch_size=4, class_dropout=0.5)(3)
    ming = jax.jit(M.make_ming_lm_loss(t_samples=2, und_weight=0.5), static_argnums=1)
    got, m = ming(params, LM_CFG, {**batch, "und_weight": 0.0}, jax.random.key(6))
    want, _ = jax.jit(F.make_flow_loss(2), static_argnums=1)(params, LM_CFG, {"x": batch["x"], "cls": batch["cls"]},
                                                             jax.random.key(6))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    # the understanding term is the class-word cross-entropy of ming_understand's logits at the answer slot
    logits = jax.jit(M.ming_understand, static_argnames=("cfg", "num_classes"))(params, LM_CFG, batch["feats"],
                                                                                 num_classes=10)
    acc = float(np.mean(np.argmax(np.asarray(logits), -1) == batch["label"]))
    assert logits.shape == (4, 10) and float(m["und_acc"]) == pytest.approx(acc)
    full, m1 = ming(params, LM_CFG, {**batch, "und_weight": 0.5}, jax.random.key(6))
    np.testing.assert_allclose(float(full), float(want) + 0.5 * float(m1["und_ce"]), rtol=1e-5)


@pytest.mark.slow  # default-suite time; the semantic-decoder cache and strategy tests keep P74 in the default suite
def test_tokenizer_loss_trains_every_stage_and_norm_leaves_decoding_unchanged(tok):
    x = np.random.default_rng(1).uniform(-1, 1, (2, P, PD)).astype(np.float32)
    batch = {"x": x, "teacher": np.random.default_rng(2).normal(size=(2, P, TD)).astype(np.float32)}
    loss = M.make_mingtok_loss(align_weight=0.5, latent_noise=0.1)
    # a non-zero pixel output layer (zero at init), so the pixel decoder's own weights receive gradient too
    mt = {**tok["mingtok"], "pix_out": {**tok["mingtok"]["pix_out"], "w": jnp.full((TOK_CFG.d_model, PD), 0.1)}}
    (val, m), g = jax.jit(jax.value_and_grad(lambda p: loss(p, TOK_CFG, batch, jax.random.key(0)), has_aux=True))(
        {**tok, "mingtok": mt})
    assert np.isfinite(float(val)) and -1 <= float(m["align_cos"]) <= 1
    mg = g["mingtok"]
    for part in (mg["patch_in"]["w"], g["layers"]["wq"], mg["sem"]["layers"]["wq"], mg["sem_in"]["w"],
                 mg["pix"]["layers"]["wq"], mg["align"]["w"], mg["pix_out"]["w"], mg["lat_out"]["w"]):
        assert float(jnp.abs(part).sum()) > 0
    assert float(jnp.abs(mg["norm"]["scale"])) == 0.0  # set from data, never trained
    renormed = M.mingtok_set_norm(tok, TOK_CFG, x)
    enc = jax.jit(M.mingtok_encode, static_argnames="cfg")
    u0, u1 = enc(tok, TOK_CFG, x), enc(renormed, TOK_CFG, x)
    assert abs(float(jnp.mean(u1))) < 1e-4 and float(jnp.abs(u0 - u1).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(M._decode_jit(renormed, TOK_CFG, u1)),
                               np.asarray(M._decode_jit(tok, TOK_CFG, u0)), atol=1e-4)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.sampled_from([(4, 4, 2), (4, 8, 4), (6, 6, 3)]), st.integers(0, 10**6))
def test_prefix_images_match_a_brute_force_oracle(n, shape, seed):
    H, W, p = shape
    x = np.random.default_rng(seed).uniform(0.1, 1, (n, H, W)).astype(np.float32)
    got = M.prefix_images(x, p)
    gw = W // p
    assert got.shape == (n, (H // p) * gw, H, W)
    for i in range(got.shape[1]):
        want = np.zeros_like(x)
        for j in range(i + 1):
            r, c = divmod(j, gw)
            want[:, r * p:(r + 1) * p, c * p:(c + 1) * p] = x[:, r * p:(r + 1) * p, c * p:(c + 1) * p]
        np.testing.assert_array_equal(got[:, i], want)
    np.testing.assert_array_equal(got[:, -1], x)


def test_bad_inputs_raise(tok, lm):
    with pytest.raises(ValueError, match="multiple of token_dim"):
        M.mingtok_init(TOK_CFG, jax.random.key(0), token_dim=3)
    with pytest.raises(ValueError, match="pos_dims"):
        M.mingtok_init(ModelConfig(vocab_size=4, d_model=16, n_layers=1, n_heads=2, max_len=16, pos_dims=2),
                       jax.random.key(0))
    with pytest.raises(ValueError, match="patches must be"):
        M.mingtok_encode(tok, TOK_CFG, np.zeros((2, P, PD + 1)))
    with pytest.raises(ValueError, match="max_len"):
        M.mingtok_encode(tok, TOK_CFG, np.zeros((2, P + 1, PD)))
    with pytest.raises(ValueError, match="latents u"):
        M.semantic_decode(tok, TOK_CFG, np.zeros((2, P, C + 1)))
    with pytest.raises(ValueError, match="KVCache"):
        M.semantic_step(tok, TOK_CFG, np.zeros((2, 1, C)), None)
    with pytest.raises(ValueError, match="mingtok"):
        M.semantic_decode({"x": 1}, TOK_CFG, np.zeros((2, P, C)))
    with pytest.raises(ValueError, match="teacher"):
        M.mingtok_loss(tok, TOK_CFG, {"x": np.zeros((2, P, PD))}, jax.random.key(0))
    with pytest.raises(ValueError, match="one feature per patch"):
        M.mingtok_loss(tok, TOK_CFG, {"x": np.zeros((2, P, PD)), "teacher": np.zeros((2, 3, TD))}, jax.random.key(0))
    with pytest.raises(ValueError, match="align_weight"):
        M.make_mingtok_loss(align_weight=-1.0)
    with pytest.raises(ValueError, match="patch"):
        M.prefix_images(np.zeros((1, 6, 6)), 4)
    small = ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, max_len=P + 1)
    with pytest.raises(ValueError, match="vocab_size"):
        M.ming_understand({**init_params(small, jax.random.key(0)), "flow": lm.params["flow"]}, small,
                          np.zeros((1, P, TOK_CFG.d_model)), num_classes=10)
    with pytest.raises(ValueError, match="feats"):
        M.ming_understand(lm.params, LM_CFG, np.zeros((1, P, 5)), num_classes=10)
    u = np.zeros((2, P, C), np.float32)
    with pytest.raises(ValueError, match="one input per latent"):
        M.ming_lm_loss(lm.params, LM_CFG, {"x": u, "feats": np.zeros((2, 3, 16)), "cls": [0, 1], "label": [0, 1]},
                       jax.random.key(0))
    with pytest.raises(ValueError, match="needs 'x'"):
        M.ming_lm_loss(lm.params, LM_CFG, {"x": u}, jax.random.key(0))
    with pytest.raises(ValueError, match="sem_cfg"):
        M.ming_univision(tok, None, length=P)
    with pytest.raises(ValueError, match="mingtok"):
        M.ming_univision(None, TOK_CFG, length=P)
    with pytest.raises(ValueError, match="max_len"):
        M.ming_univision(tok, TOK_CFG, length=P + 1).validate(ModelConfig(vocab_size=12, d_model=16, n_layers=1,
                                                                          n_heads=2, max_len=2 * P))
    with pytest.raises(ValueError, match="input width=16"):  # a raw-latent LM cannot read semantic features
        raw = {**lm.params, "flow": M.ming_lm_init(jax.random.key(0), LM_CFG, C, C, width=16, depth=1)}
        M.ming_generate(Model(raw, LM_CFG), tok, TOK_CFG, np.array([0]), jax.random.key(0), length=P,
                        num_classes=10)
