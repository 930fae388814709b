"""TokenUnify (P9): NTP reduction, mask construction against numpy oracles, branches against a naive reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.losses import next_token_loss
from tokjax.losses.registry import make_loss
from tokjax.model import Inputs, ModelConfig, forward, init_params
from tokjax.model.attention import Bidirectional
from tokjax.vision.image_lm import ImageVocab, image_batch
from tokjax.vision.orders import raster
from tokjax.vision.tokenunify import (make_tokenunify_loss, next_all_inputs, objective_loss, random_token_inputs,
                                     sample_objective, tokenunify, tokenunify_loss)

VOCAB = ImageVocab(num_codes=8, num_classes=3)
ORDER = raster(3, 3)
CFG = ModelConfig(vocab_size=VOCAB.size, d_model=16, n_layers=1, n_heads=2, max_len=16, pos_dims=2)


@pytest.fixture(scope="module")
def setup():
    params = init_params(CFG, jax.random.key(0))
    codes = np.random.default_rng(0).integers(0, 8, (5, 3, 3))
    batch = image_batch(codes, np.arange(5) % 3, VOCAB, ORDER, class_dropout=0.0)
    return params, batch


def _grad_fn(**options):
    """jit(value_and_grad) of the TokenUnify loss; runtime weights come in as batch['tu_weights']."""
    return jax.jit(jax.value_and_grad(lambda p, b, k: tokenunify_loss(p, CFG, b, k, num_codes=8, **options),
                                      has_aux=True))


def _loss_fn(**options):
    """jit of the TokenUnify loss and metrics (no gradient: cheaper to compile)."""
    return jax.jit(lambda p, b, k: tokenunify_loss(p, CFG, b, k, num_codes=8, **options))


@pytest.fixture(scope="module")
def fns():
    return {"sample": _loss_fn(), "sum": _loss_fn(mode="sum"),
            "ntp": jax.jit(jax.value_and_grad(lambda p, b: next_token_loss(p, CFG, b)[0]))}


def _leaves_equal(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_weights_010_is_exactly_next_token(setup, fns):
    params, batch = setup
    ref, ref_g = fns["ntp"](params, batch)
    # fixed one-hot weights: the next-token branch alone, the same loss and gradient bit for bit
    (val, m), g = _grad_fn(weights=(0.0, 1.0, 0.0))(params, batch, jax.random.key(3))
    assert float(val) == float(ref) and _leaves_equal(g, ref_g) and int(m["objective"]) == 1
    # runtime weights (traced): the per-batch switch draws the NTP branch; the weighted sum adds exact zeros
    w = {**batch, "tu_weights": jnp.array([0.0, 1.0, 0.0])}
    for seed in range(2):
        val, m = fns["sample"](params, w, jax.random.key(seed))
        assert int(m["objective"]) == 1
        np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    assert float(fns["sum"](params, w, jax.random.key(0))[0]) == float(ref)


@pytest.mark.slow
def test_runtime_weights_010_gradient_is_next_token(setup, fns):
    params, batch = setup
    ref, ref_g = fns["ntp"](params, batch)
    w = {**batch, "tu_weights": jnp.array([0.0, 1.0, 0.0])}
    (val, _), g = _grad_fn(mode="sum")(params, w, jax.random.key(3))
    assert float(val) == float(ref) and _leaves_equal(g, ref_g)
    (val, m), g = _grad_fn()(params, w, jax.random.key(3))
    assert int(m["objective"]) == 1
    np.testing.assert_allclose(float(val), float(ref), rtol=1e-6)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def _split_u(key, shape):
    """The uniforms mlm_u_visibility draws (rate given: its second key)."""
    _, k_u = jax.random.split(key)
    return np.asarray(jax.random.uniform(k_u, shape))


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), ratio=st.floats(0.05, 1.0), B=st.just(3), T=st.just(9))
def test_random_token_mask_matches_numpy_oracle(seed, ratio, B, T):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 8, (B, T)).astype(np.int32)
    maskable = rng.random((B, T)) < 0.7
    key = jax.random.key(seed)
    inputs, hidden = random_token_inputs(key, tokens, maskable, ratio, mask_id=99)
    u = _split_u(key, (B, T))
    want_hidden = maskable & ~(np.float32(1.0 - np.float32(ratio)) > u)  # hidden iff u >= 1 - ratio
    np.testing.assert_array_equal(np.asarray(hidden), want_hidden)
    np.testing.assert_array_equal(np.asarray(inputs), np.where(want_hidden, 99, tokens))


def test_random_token_ratio_statistics():
    maskable = np.ones((200, 50), bool)
    _, hidden = random_token_inputs(jax.random.key(0), np.zeros((200, 50), np.int32), maskable, 0.4, mask_id=1)
    assert abs(float(np.mean(hidden)) - 0.4) < 0.01
    _, all_hidden = random_token_inputs(jax.random.key(1), np.zeros((2, 5), np.int32), maskable[:2, :5], 1.0, mask_id=1)
    assert bool(np.all(all_hidden))


def _next_all_oracle(tokens, maskable, k, fill_ids):
    B, T = tokens.shape
    out, future = tokens.copy(), np.zeros((B, T), bool)
    for b in range(B):
        seen = 0
        for t in range(T):
            if maskable[b, t]:
                if seen >= k[b]:
                    future[b, t] = True
                    out[b, t] = fill_ids[b, t]
                seen += 1
    return out, future


@pytest.mark.parametrize("fill", ["noise", "mask"])
def test_next_all_matches_numpy_oracle(fill):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 8, (6, 10)).astype(np.int32)
    maskable = np.ones((6, 10), bool)
    maskable[:, 0] = False  # the class token
    maskable[2, 5:] = False  # a shorter row
    key = jax.random.key(7)
    inputs, future, k = next_all_inputs(key, tokens, maskable, fill=fill, mask_id=42, num_codes=8)
    k_pre, k_noise = jax.random.split(key)
    n = maskable.sum(1)
    want_k = np.asarray(jax.random.randint(k_pre, (6,), 1, n))
    np.testing.assert_array_equal(np.asarray(k), want_k)
    fill_ids = (np.asarray(jax.random.randint(k_noise, (6, 10), 0, 8, dtype=jnp.int32)) if fill == "noise"
                else np.full((6, 10), 42))
    want_in, want_future = _next_all_oracle(tokens, maskable, want_k, fill_ids)
    np.testing.assert_array_equal(np.asarray(future), want_future)
    np.testing.assert_array_equal(np.asarray(inputs), want_in)


def test_next_all_prefix_is_uniform_on_1_to_n_minus_1():
    maskable = np.ones((4000, 6), bool)
    maskable[:, 0] = False  # n = 5 maskable tokens: k in {1, 2, 3, 4}
    _, future, k = next_all_inputs(jax.random.key(0), np.zeros((4000, 6), np.int32), maskable, mask_id=9, num_codes=8)
    counts = np.bincount(np.asarray(k), minlength=6)
    assert counts[0] == 0 and counts[5] == 0
    assert np.all(np.abs(counts[1:5] - 1000) < 120), counts
    np.testing.assert_array_equal(np.asarray(future).sum(1), 5 - np.asarray(k))


def test_sampler_frequencies_and_zero_weights():
    keys = jax.random.split(jax.random.key(0), 3000)
    draws = np.asarray(jax.vmap(lambda k: sample_objective(k, jnp.array([1.0, 2.0, 0.0])))(keys))
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert freq[2] == 0 and abs(freq[1] - 2 / 3) < 0.03


_bidir_logits = jax.jit(lambda p, x, pos: forward(p, CFG, Inputs(tokens=x, positions=pos), mask=Bidirectional()).logits)
_objective = jax.jit(objective_loss, static_argnums=(1, 4), static_argnames=("targets", "num_codes"))


def _naive_ce(params, inputs, targets, scored, positions):
    logits = _bidir_logits(params, jnp.asarray(inputs), positions)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
    return float(np.sum(nll * scored) / max(scored.sum(), 1))


def test_bidirectional_branches_match_naive_reference(setup, fns):
    params, batch = setup
    tokens, maskable = np.asarray(batch["tokens"]), np.asarray(batch["mask"])
    rng = jax.random.key(11)
    _, k_rand, k_all = jax.random.split(rng, 3)
    _, parts = fns["sum"](params, {**batch, "tu_weights": jnp.ones(3)}, rng)
    inputs, hidden = random_token_inputs(k_rand, tokens, maskable, 0.4, VOCAB.mask_id)
    want = _naive_ce(params, inputs, tokens, np.asarray(hidden), batch["positions"])
    np.testing.assert_allclose(float(parts["loss_random"]), want, rtol=1e-5)
    inputs, future, _ = next_all_inputs(k_all, tokens, maskable, fill="noise", mask_id=VOCAB.mask_id,
                                        num_codes=VOCAB.num_codes)
    want = _naive_ce(params, inputs, tokens, np.asarray(future), batch["positions"])
    np.testing.assert_allclose(float(parts["loss_next_all"]), want, rtol=1e-5)
    # targets="all" (the official whole-volume loss): every maskable token is scored
    got = _objective(params, CFG, batch, k_all, 2, targets="all", num_codes=VOCAB.num_codes)
    np.testing.assert_allclose(float(got), _naive_ce(params, inputs, tokens, maskable, batch["positions"]), rtol=1e-5)


def test_mixture_draws_one_branch_and_sum_adds_them(setup, fns):
    params, batch = setup
    rng = jax.random.key(5)
    k_obj, k_rand, k_all = jax.random.split(rng, 3)
    w = {**batch, "tu_weights": jnp.array([1.0, 1.0, 1.0])}
    loss, m = fns["sample"](params, w, rng)
    o = int(m["objective"])
    assert o == int(sample_objective(k_obj, jnp.ones(3)))
    _, parts = fns["sum"](params, w, rng)
    np.testing.assert_allclose(float(loss), float(parts[("loss_random", "loss_ntp", "loss_next_all")[o]]), rtol=1e-5)
    loss, m = fns["sum"](params, {**batch, "tu_weights": jnp.array([0.5, 1.0, 2.0])}, rng)
    np.testing.assert_allclose(float(loss), 0.5 * float(m["loss_random"]) + float(m["loss_ntp"])
                               + 2.0 * float(m["loss_next_all"]), rtol=1e-6)
    np.testing.assert_allclose(float(m["loss_random"]), float(parts["loss_random"]), rtol=1e-6)


def test_registered_loss(setup, fns):
    params, batch = setup
    fn = tokenunify(weights=[0, 1, 0])
    assert fn is make_loss("tokenunify", weights=[0, 1, 0]) and fn.name == "tokenunify"
    got = jax.jit(lambda p, b, k: fn(p, CFG, b, k)[0])(params, batch, jax.random.key(0))
    assert float(got) == float(fns["ntp"](params, batch)[0])
    with pytest.raises(ValueError, match="mask_ratio"):
        make_loss("tokenunify", mask_ratio=0.0)
    with pytest.raises(ValueError, match="unknown option"):
        make_loss("tokenunify", ratio=0.5)


@pytest.mark.parametrize("kwargs, batch_update, match", [
    ({"weights": (1.0, 1.0)}, {}, "3 non-negative"),
    ({"weights": (1.0, -1.0, 1.0)}, {}, ">= 0"),
    ({"weights": (0.0, 0.0, 0.0)}, {}, "not all 0"),
    ({"mask_ratio": 1.5}, {}, "mask_ratio"),
    ({"mode": "mix"}, {}, "mode"),
    ({"fill": "zeros"}, {}, "fill"),
    ({"targets": "prefix"}, {}, "targets"),
    ({"mask_id": 99}, {}, "mask_id"),
    ({}, {"segment_ids": np.zeros((5, 10), np.int32)}, "not supported"),
    ({}, {"mask": np.zeros((5, 10), bool)}, "at least 2 maskable"),
    ({}, {"mask": np.ones((5, 4), bool)}, "per token"),
    ({}, {"tu_weights": np.array([1.0, 0.0])}, "3 non-negative"),
])
def test_bad_input(setup, kwargs, batch_update, match):
    params, batch = setup
    with pytest.raises(ValueError, match=match):
        tokenunify_loss(params, CFG, {**batch, **batch_update}, jax.random.key(0), **kwargs)


def test_bad_input_misc(setup):
    params, batch = setup
    with pytest.raises(ValueError, match="rng"):
        tokenunify_loss(params, CFG, batch, None)
    with pytest.raises(ValueError, match="'tokens'"):
        tokenunify_loss(params, CFG, {"mask": batch["mask"]}, jax.random.key(0))
    with pytest.raises(ValueError, match="vocab_size"):
        tokenunify_loss(params, CFG, {**batch, "tokens": batch["tokens"] + 100}, jax.random.key(0))
    with pytest.raises(ValueError, match="objective"):
        objective_loss(params, CFG, batch, jax.random.key(0), 3)
    with pytest.raises(ValueError, match="num_codes"):
        make_tokenunify_loss(num_codes=0)
