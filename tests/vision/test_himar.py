"""P5 Hi-MAR (tokjax.vision.himar) and the discrete masked-set pieces it builds on (tokjax.vision.masked_set):
the official cosine fill arithmetic, training masks, MaskGIT's Gumbel top-k and the slot coordinates against
numpy oracles; phase 2 reading phase-1 hidden states (not pivot codes) with pivot dropout and a stop-gradient;
decoded log-probs equal to the teacher-forced replay; guidance 1 = the conditional decode; bad inputs raise."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tokjax.decoding import generate
from tokjax.logits import temperature
from tokjax.model import Model, ModelConfig, init_params
from tokjax.vision import himar as H
from tokjax.vision import masked_set as M
from tokjax.vision.image_lm import ImageVocab, image_batch
from tokjax.vision.orders import raster

VOCAB = ImageVocab(4, 3)
GRID, PGRID = (4, 4), (2, 2)


def _official_fills(L, n):
    """Transliteration of the official sample_tokens mask arithmetic (MAR / Hi-MAR / MaskGIT): codes per step."""
    unknown, out = L, []
    for step in range(n):
        mask_len = np.floor(L * np.cos(math.pi / 2.0 * (step + 1) / n))
        mask_len = max(1, min(unknown - 1, mask_len))
        nxt = 0 if step == n - 1 else int(mask_len)
        out.append((unknown - nxt, mask_len))
        unknown = nxt
    return out


@pytest.mark.parametrize("L,n", [(16, 16), (16, 4), (64, 4), (64, 8), (64, 11), (5, 1)])
def test_fill_schedule_is_the_official_arithmetic(L, n):
    fills, starts, ramp = M.fill_schedule(L, n)
    ref = _official_fills(L, n)
    assert fills.tolist() == [f for f, _ in ref] and fills.sum() == L
    assert starts.tolist() == np.concatenate([[0], np.cumsum(fills)[:-1]]).tolist()
    np.testing.assert_allclose(ramp, [(L - m) / L for _, m in ref], rtol=1e-6)  # the official linear CFG ramp


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([1, 7, 16]), st.floats(0.01, 1.0), st.integers(0, 2**16))
def test_random_masks_are_a_prefix_of_a_random_order(L, ratio, seed):
    key = jax.random.key(seed)
    m = np.asarray(M.random_masks(key, 3, L, ratio))
    rank = np.asarray(M.random_ranks(key, 3, L))
    num = min(max(int(np.ceil(L * np.float32(ratio))), 1), L)
    np.testing.assert_array_equal(m, rank < num)  # the first num of the order
    assert (m.sum(1) == num).all() and sorted(rank[0].tolist()) == list(range(L))


def test_mask_ratios_have_the_official_ranges():
    k = jax.random.key(0)
    tn = np.asarray(M.mask_ratio(k, "truncnorm", 0.7, (4000,)))
    assert tn.min() >= 0.7 - 1e-6 and tn.max() <= 1.0 + 1e-6 and tn.mean() > 0.85  # left half of N(1, 0.25)
    cs = np.asarray(M.mask_ratio(k, "cosine", shape=(4000,)))
    assert cs.min() > 0 and cs.max() <= 1 and abs(cs.mean() - 2 / math.pi) < 0.02  # E cos(pi/2 U) = 2/pi


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([2, 9]), st.floats(0.0, 5.0), st.integers(0, 2**16), st.data())
def test_confidence_choice_is_maskgit_gumbel_topk(L, noise, seed, data):
    rng = np.random.default_rng(seed)
    logp = np.log(rng.dirichlet(np.ones(L), size=2)).astype(np.float32)
    unknown = rng.random((2, L)) < 0.7
    unknown[:, 0] = True
    count = data.draw(st.integers(0, int(unknown.sum(1).min())))
    key = jax.random.key(seed)
    got = np.asarray(M.choose_by_confidence(key, jnp.asarray(logp), jnp.asarray(unknown), count, noise))
    g = np.asarray(jax.random.gumbel(key, logp.shape, jnp.float32))
    for b in range(2):  # brute force: the `count` unknown positions of largest log p + noise * g
        conf = np.where(unknown[b], logp[b] + np.float32(noise) * g[b], -np.inf)
        keep = sorted(range(L), key=lambda i: (-conf[i], i))[:count]
        np.testing.assert_array_equal(got[b], np.isin(np.arange(L), keep))
    rank = np.argsort(np.argsort(rng.random((2, L))), axis=1)
    by_order = np.asarray(M.choose_by_order(jnp.asarray(rank), 2, 3))
    np.testing.assert_array_equal(by_order, (rank >= 2) & (rank < 5))


def test_positions_match_the_block_centres():
    p1, p2 = H.himar_positions((8, 8), (4, 4))
    assert p1.shape == (17, 2) and p2.shape == (81, 2)
    assert p1[0].tolist() == [0, 0] and (p2[:17] == p1).all()
    for k in range(16):
        i, j = divmod(k, 4)
        assert p1[1 + k].tolist() == [2 * i + 2, 2 * j + 2]  # centre of the 2x2 block (rounded up), + 1
    for k in range(64):
        assert p2[17 + k].tolist() == [k // 8 + 1, k % 8 + 1]
    pooled = H.pool_images(np.arange(16.0).reshape(1, 4, 4), 2)
    np.testing.assert_allclose(pooled[0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.fixture(scope="module")
def small():
    cfg = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, max_len=32)
    params = {**init_params(cfg, jax.random.key(0)), "himar": H.himar_init(cfg, jax.random.key(1), PGRID)}
    return cfg, params


def _data(seed=0, B=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, (B,) + GRID), rng.integers(0, 4, (B,) + PGRID), np.arange(B) % 3


def test_phase2_reads_phase1_hidden_states_not_pivot_codes(small):
    cfg, params = small
    codes, piv, labels = _data()
    cls = VOCAB.class_tokens(labels)
    dense = jnp.asarray(codes.reshape(3, -1))
    other = (piv + 1) % 4
    fn = jax.jit(H.himar_logits, static_argnums=(1, 5, 6))
    off = jnp.zeros((3, 4), bool)
    _, _, a = fn(params, cfg, cls, piv.reshape(3, -1), dense, GRID, PGRID, use_feat=off)
    _, _, b = fn(params, cfg, cls, other.reshape(3, -1), dense, GRID, PGRID, use_feat=off)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # placeholders only: the pivots are invisible
    _, z1, c = fn(params, cfg, cls, piv.reshape(3, -1), dense, GRID, PGRID)
    _, z2, d = fn(params, cfg, cls, other.reshape(3, -1), dense, GRID, PGRID)
    assert not np.allclose(np.asarray(c), np.asarray(d))  # through z = phase-1 hidden states
    # phase 2 is a function of z alone: the same z gives the same logits whatever the pivot codes
    hp = params["himar"]
    slots = H._slots(hp, z1, jnp.ones((3, 4), bool))
    ref = H._phase2(params, cfg, hp, cls, slots, dense, H.himar_positions(GRID, PGRID)[1])
    np.testing.assert_allclose(np.asarray(ref), np.asarray(c), atol=1e-5)


@pytest.mark.slow
def test_loss_pivot_dropout_and_stop_gradient(small):
    cfg, params = small
    codes, piv, labels = _data(1, 8)
    loss = jax.jit(H.make_himar_loss(GRID, PGRID, VOCAB), static_argnums=1)

    def run(pv, pdrop, key):
        b = H.himar_batch(codes, pv, labels, VOCAB, GRID, PGRID, class_dropout=0.0, pivot_dropout=pdrop)
        return loss(params, cfg, b, key)

    # a draw that leaves a pivot visible in phase 1 (with every pivot masked, z cannot depend on the pivots)
    key = next(k for k in (jax.random.key(i) for i in range(50)) if float(run(piv, 0.0, k)[1]["pivot_ratio"]) < 1)

    _, m0 = run(piv, 1.0, key)
    _, m1 = run((piv + 1) % 4, 1.0, key)
    assert float(m0["dense_nll"]) == float(m1["dense_nll"])  # every row dropped: phase 2 ignores the pivots
    _, m2 = run((piv + 1) % 4, 0.0, key)
    _, m3 = run(piv, 0.0, key)
    assert float(m2["dense_nll"]) != float(m3["dense_nll"])
    l, m = run(piv, 0.3, key)
    np.testing.assert_allclose(float(l), 2.0 * float(m["pivot_nll"]) + 0.75 * float(m["dense_nll"]), rtol=1e-6)
    assert float(m["pivot_ratio"]) >= 0.7 - 1e-6  # truncnorm min 0.7 over the pivots
    # CE_2 alone: no gradient reaches the phase-1 task embedding (z is detached, official small_z.detach())
    only2 = H.make_himar_loss(GRID, PGRID, VOCAB, weights=(0.0, 1.0))
    b = H.himar_batch(codes, piv, labels, VOCAB, GRID, PGRID, class_dropout=0.0, pivot_dropout=0.0)
    g = jax.jit(jax.grad(lambda p: only2(p, cfg, b, key)[0]))(params)
    assert float(jnp.abs(g["himar"]["task"][0]).max()) == 0.0
    assert float(jnp.abs(g["himar"]["task"][1]).max()) > 0 and float(jnp.abs(g["himar"]["proj"]["w"]).max()) > 0


def _decode(cfg, params, strategy, labels, key):
    prompts = strategy.prompts(np.asarray(labels))
    return generate(Model(params, cfg), prompts, key=key, max_new_tokens=strategy.new_tokens(), strategy=strategy,
                    logits=temperature(1.0), logprobs=0)


@pytest.fixture(scope="module")
def decoded(small):
    cfg, params = small
    labels = np.array([0, 1, 2, 1])
    s = H.himar(VOCAB, GRID, PGRID, iters=3, pivot_iters=2)
    return labels, s, _decode(cfg, params, s, labels, jax.random.key(7))


def test_decode_fills_by_the_schedule_and_counts_passes(decoded):
    labels, s, out = decoded
    st_ = out.strategy_state
    assert out.stats["forward_calls"] == 2 + 3
    for name, L, n in (("pivot_filled", 4, 2), ("filled_at", 16, 3)):
        f = np.asarray(st_[name])
        counts = np.stack([(f == k).sum(1) for k in range(n)], axis=1)
        assert (counts == M.fill_schedule(L, n)[0][None]).all()  # every row fills |fill_s| at step s
    assert np.asarray(st_["codes"]).max() < VOCAB.num_codes and np.asarray(st_["pivots"]).max() < VOCAB.num_codes


def test_decoded_likelihood_equals_teacher_forced(small, decoded):
    cfg, params = small
    labels, s, out = decoded
    st_ = out.strategy_state
    lp_p, lp_d = H.himar_replay(params, cfg, VOCAB, VOCAB.class_tokens(labels), st_["pivots"], st_["codes"],
                                st_["pivot_filled"], st_["filled_at"], GRID, PGRID)
    np.testing.assert_allclose(np.asarray(st_["pivot_logp"]), np.asarray(lp_p), atol=1e-4)
    np.testing.assert_allclose(np.asarray(st_["logp"]), np.asarray(lp_d), atol=1e-4)
    # the committed log-probs (generate(logprobs=)) are the same numbers, in commit order
    assert np.isclose(np.sort(out.logprobs[0, 1:1 + 20]), np.sort(np.concatenate(
        [np.asarray(st_["pivot_logp"])[0], np.asarray(st_["logp"])[0]])), atol=1e-5).all()


@pytest.mark.slow
def test_maskgit_confidence_decode_equals_teacher_forced(small):
    cfg, params = small
    labels = np.array([2, 0, 1])
    s = M.maskgit(VOCAB, 4, 4, iters=4)
    out = _decode(cfg, params, s, labels, jax.random.key(2))
    st_ = out.strategy_state
    f = np.asarray(st_["filled_at"])
    assert out.stats["forward_calls"] == 4 and (f >= 0).all()
    lp = M.masked_set_replay(params, cfg, VOCAB, VOCAB.class_tokens(labels), st_["codes"], f, raster(4, 4))
    np.testing.assert_allclose(np.asarray(st_["logp"]), np.asarray(lp), atol=1e-4)


def test_guidance_one_is_the_conditional_decode(small, decoded):
    cfg, params = small
    labels, _, plain = decoded
    s = H.himar(VOCAB, GRID, PGRID, iters=3, pivot_iters=2, guided=True, guidance=1.0, pivot_guidance=1.0)
    out = _decode(cfg, params, s, labels, jax.random.key(7))
    n = len(labels)
    for name in ("pivots", "codes"):
        np.testing.assert_array_equal(np.asarray(out.strategy_state[name])[:n], np.asarray(plain.strategy_state[name]))
    np.testing.assert_allclose(np.asarray(out.strategy_state["logp"])[:n], np.asarray(plain.strategy_state["logp"]),
                               atol=1e-5)
    assert out.stats["forward_calls"] == 5


def test_bad_inputs_raise(small):
    cfg, params = small
    with pytest.raises(ValueError, match="divide"):
        H.himar(VOCAB, (4, 4), (3, 3), iters=2)
    with pytest.raises(ValueError, match="iters"):
        H.himar(VOCAB, GRID, PGRID, iters=17)
    with pytest.raises(ValueError, match="choice"):
        M.maskgit(VOCAB, 4, 4, iters=2, choice="greedy")
    with pytest.raises(ValueError, match="guided"):
        H.himar(VOCAB, GRID, PGRID, iters=2, pivot_guidance=2.0)
    with pytest.raises(ValueError, match="ratio"):
        M.mask_ratio(jax.random.key(0), "uniform")
    with pytest.raises(ValueError, match="ratio_min"):
        H.make_himar_loss(GRID, PGRID, VOCAB, pivot_ratio_min=0.0)
    with pytest.raises(ValueError, match="himar"):
        H.himar_logits({k: v for k, v in params.items() if k != "himar"}, cfg, jnp.zeros((1,), jnp.int32),
                       jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 16), jnp.int32), GRID, PGRID)
    codes, piv, labels = _data()
    with pytest.raises(ValueError, match="image codes"):
        H.himar_batch(codes, piv + 4, labels, VOCAB, GRID, PGRID, class_dropout=0.0)
    with pytest.raises(ValueError, match="pivot_dropout"):
        H.himar_batch(codes, piv, labels, VOCAB, GRID, PGRID, class_dropout=0.0, pivot_dropout=1.5)
    with pytest.raises(ValueError, match="rng"):
        H.make_himar_loss(GRID, PGRID, VOCAB)(params, cfg, H.himar_batch(codes, piv, labels, VOCAB, GRID, PGRID,
                                                                            class_dropout=0.0), None)
    b = image_batch(codes, labels, VOCAB, raster(4, 4), class_dropout=0.0)
    with pytest.raises(ValueError, match="filled_at"):
        M.masked_set_replay(params, cfg, VOCAB, b["tokens"][:, 0], b["tokens"][:, 1:], -np.ones((3, 16), int),
                            raster(4, 4))
    with pytest.raises(ValueError, match="max_len"):
        H.himar(VOCAB, (8, 8), (4, 4), iters=4).validate(cfg)
