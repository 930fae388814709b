"""P58 Think-at-Hard: exact reductions, duo-causal mask, cached decode = full forward, soft inputs, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tokjax.decoding import generate
from tokjax.decoding.think_at_hard import (
    DeciderFeatures, apply_decider, decider_batch, decider_features, decider_loss, duo_causal_mask, init_decider,
    oracle_labels, soft_input, tah_logits, tah_loss, think_at_hard,
)
from tokjax.logits import Identity, greedy
from tokjax.model.lora import init_lora
from tests.model._models import small_model

K = 20


def _setup():
    m = small_model()
    lora = init_lora(m.cfg, jax.random.key(1), rank=4)
    keys = iter(jax.random.split(jax.random.key(2), 32))
    lora["layers"] = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys), a.shape), lora["layers"])
    dec = init_decider(jax.random.key(4), m.cfg.d_model, m.cfg.n_layers, K, dims=(16, 16))
    return m, lora, dec


PROMPTS = [[1, 2, 3, 4], [5, 6, 7]]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_theta_above_one_is_base_and_decode_equals_full_forward():
    m, lora, dec = _setup()
    base = generate(m, PROMPTS, logits=greedy(), max_new_tokens=10)
    out = generate(m, PROMPTS, logits=greedy(), max_new_tokens=10, strategy=think_at_hard(m.cfg, lora, dec, theta=1.5))
    assert np.array_equal(np.asarray(out.tokens), np.asarray(base.tokens))  # theta > 1 never iterates
    assert out.stats["iterated_tokens"] == 0
    # Mixed iterations (theta 0.5), sampled from the raw logits: the cached duo-causal decode's distributions
    # equal tah_logits (the full 2T-slot forward) run on the decoded sequence with the same iterated positions.
    s = think_at_hard(m.cfg, lora, dec, theta=0.5)
    out = generate(m, PROMPTS, logits=Identity(), max_new_tokens=10, strategy=s, key=jax.random.key(0), logprobs=3)
    it = out.stats["iterated"]
    assert 0 < out.stats["iterated_tokens"] < out.stats["decoded_tokens"]
    toks, lens, plen = np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.prompt_lengths)
    T = toks.shape[1] - 1
    z, _, _ = tah_logits(m.params, m.cfg, lora, jnp.asarray(toks[:, :T]), jnp.asarray(it[:, :T]), top_k=K)
    logp = np.asarray(jax.nn.log_softmax(z, -1))
    for b in range(len(PROMPTS)):
        for q in range(plen[b] - 1, lens[b] - 1):
            np.testing.assert_allclose(out.logprobs[b, q + 1], logp[b, q, toks[b, q + 1]], atol=2e-4)
            np.testing.assert_allclose(out.top_logprobs[b, q + 1], np.sort(logp[b, q])[::-1][:3], atol=2e-4)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_later_iteration_input_leaves_earlier_outputs_unchanged():
    m, lora, _ = _setup()
    x = jax.random.randint(jax.random.key(7), (1, 9), 0, m.cfg.vocab_size)
    it = jnp.asarray([[0, 1, 0, 1, 1, 0, 1, 1, 0]], bool)
    soft = jax.random.normal(jax.random.key(8), (1, 9, m.cfg.d_model))
    z, z0, dz = tah_logits(m.params, m.cfg, lora, x, it, soft=soft)
    q = 5
    soft2 = soft.at[:, q:].add(3.0)
    z2, _, dz2 = tah_logits(m.params, m.cfg, lora, x, it, soft=soft2)
    np.testing.assert_array_equal(z2[:, :q], z[:, :q])
    assert float(jnp.abs(z2[:, 6] - z[:, 6]).max()) > 1e-3  # iterated later positions do change
    # an un-iterated position's iteration-1 slot is invisible: perturbing it changes nothing at all
    soft3 = soft.at[:, 2].add(3.0)
    np.testing.assert_array_equal(tah_logits(m.params, m.cfg, lora, x, it, soft=soft3)[0], z)
    # nothing iterated: the final logits are the plain model's
    z_none, _, _ = tah_logits(m.params, m.cfg, lora, x, jnp.zeros_like(it), top_k=K)
    np.testing.assert_array_equal(z_none, m(x).logits)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 3, 6]), st.integers(0, 2**31 - 1))
def test_duo_causal_mask_matches_numpy(n, seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 4, (2, n))
    its = rng.integers(0, 3, (2, n))
    valid = rng.random((2, n)) < 0.7
    got = np.asarray(duo_causal_mask(pos, its, valid))
    want = np.zeros((2, n, n), bool)
    for b in range(2):
        for a in range(n):
            for c in range(n):
                want[b, a, c] = pos[b, c] <= pos[b, a] and its[b, c] <= its[b, a] and valid[b, c]
    assert np.array_equal(got, want)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 7, 61]))
def test_soft_input_in_convex_hull(seed, k):
    """e = sum_j w_j E[j] with w >= 0 summing to 1 over the top-k ids: inside E's convex hull (coordinate bounds,
    and exactly recovered by the top-k weights)."""
    m = small_model()
    z = jax.random.normal(jax.random.key(seed), (3, m.cfg.vocab_size)) * 4
    e = np.asarray(soft_input(m.params, m.cfg, z, k), np.float64)
    E = np.asarray(m.params["embed"], np.float64)
    vals, ids = jax.lax.top_k(z, k)
    w = np.asarray(jax.nn.softmax(vals, -1), np.float64)
    assert (w >= 0).all() and np.allclose(w.sum(-1), 1)
    np.testing.assert_allclose(e, np.einsum("bk,bkd->bd", w, E[np.asarray(ids)]), rtol=1e-5, atol=1e-6)
    assert (e <= E.max(0) + 1e-6).all() and (e >= E.min(0) - 1e-6).all()


@pytest.mark.slow  # the decode-parity and mask tests stay in the default suite
def test_losses_and_oracle_labels():
    m, lora, dec = _setup()
    toks = jax.random.randint(jax.random.key(9), (2, 8), 0, m.cfg.vocab_size)
    it = jnp.zeros((2, 7), bool)
    params = {**m.params, "lora": lora}
    loss, met = jax.jit(lambda p: tah_loss(p, m.cfg, {"tokens": toks, "iterate": it}, top_k=K))(params)
    z = m(toks[:, :-1]).logits
    ref = -jnp.take_along_axis(jax.nn.log_softmax(z), toks[:, 1:, None], -1).mean()
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    grad = jax.jit(jax.grad(lambda p, i: tah_loss(p, m.cfg, {"tokens": toks, "iterate": i}, top_k=K)[0]))
    g = grad(params, it)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(g["lora"]))  # no iteration: no LoRA gradient
    g = grad(params, ~it)
    assert float(jnp.abs(g["lora"]["layers"]["wq"]["b"]).max()) > 0
    lab = oracle_labels(z, toks[:, 1:])
    assert np.array_equal(lab, np.asarray(jnp.argmax(z, -1) != toks[:, 1:]))
    f = DeciderFeatures(jax.random.normal(jax.random.key(1), (6, m.cfg.n_layers * m.cfg.d_model)),
                        jax.random.normal(jax.random.key(2), (6, K)))
    y = jnp.asarray([1, 0, 0, 1, 0, 0], jnp.float32)
    loss, _ = decider_loss(dec, None, decider_batch(f, y, pos_weight=5.4))
    lg = apply_decider(dec, f)
    want = jnp.mean(jnp.where(y > 0, 5.4, 1.0) * (jnp.logaddexp(0, lg) - y * lg))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    feats = decider_features(jnp.ones((3, 2, 5, m.cfg.d_model)), jnp.zeros((2, 5, m.cfg.vocab_size)), top_k=K)
    assert feats.hidden.shape == (2, 5, 3 * m.cfg.d_model) and feats.top_logits.shape == (2, 5, K)


def test_bad_inputs():
    m, lora, dec = _setup()
    cfg = m.cfg
    with pytest.raises(ValueError, match="max_iter"):
        think_at_hard(cfg, lora, dec, max_iter=3)
    with pytest.raises(ValueError, match="mode"):
        think_at_hard(cfg, lora, dec, mode="sometimes")
    with pytest.raises(ValueError, match="theta"):
        think_at_hard(cfg, lora, dec, theta=float("nan"))
    with pytest.raises(ValueError, match="needs a decider"):
        think_at_hard(cfg, lora)
    with pytest.raises(ValueError, match="reference"):
        think_at_hard(cfg, lora, dec, mode="oracle")
    with pytest.raises(ValueError, match="top_k"):
        think_at_hard(cfg, lora, dec, top_k=K + 1)
    with pytest.raises(ValueError, match="decider reads"):
        think_at_hard(cfg, lora, init_decider(jax.random.key(0), cfg.d_model, 1, K), layers=(0, 1))
    with pytest.raises(ValueError, match="layers"):
        think_at_hard(cfg, lora, dec, layers=(0, 1, 7))
    with pytest.raises(ValueError, match="top_k"):
        soft_input(m.params, cfg, jnp.zeros((2, cfg.vocab_size)), cfg.vocab_size + 1)
    with pytest.raises(ValueError, match="vocab_size"):
        soft_input(m.params, cfg, jnp.zeros((2, cfg.vocab_size - 1)), 3)
    with pytest.raises(ValueError, match="iterate"):
        tah_logits(m.params, cfg, lora, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="positions and iterations"):
        duo_causal_mask(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="params\\['lora'\\]"):
        tah_loss(m.params, cfg, {"tokens": jnp.zeros((1, 4), jnp.int32), "iterate": jnp.zeros((1, 3), bool)})
    with pytest.raises(ValueError, match="pos_weight"):
        decider_batch(DeciderFeatures(jnp.zeros((2, 3)), jnp.zeros((2, K))), [0, 1], pos_weight=0)
    with pytest.raises(ValueError, match="another model"):
        think_at_hard(cfg, init_lora(cfg.replace(d_model=64), jax.random.key(0)), dec)
