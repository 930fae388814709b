"""Tests for P1 CAAD / RAD: the grounding store and the retrieval logit transform (tokjax.logits.caad)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS
from tokjax.logits._base import LogitContext
from tokjax.logits.caad import (
    CAAD, CAADStore, HashedNgramEmbedder, caad, caad_retrieve, caad_shape, caad_store, caad_store_ids,
    hashed_ngram_embedder,
)
from tokjax.model.ops import repeat_rows, take_rows

V, DK = 40, 6
_TABLE = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (V, DK)), np.float32)


def last_token_embedder(tokens, lengths):
    """A pluggable embedder for the reference tests: a fixed random vector per last token of the context."""
    last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], axis=1)[:, 0]
    return jnp.asarray(_TABLE)[last]


class ToyChatTok:
    """Characters as ids 3..V-1; chat template = 1 + content + 2, then 1 to open the answer."""

    chat_template = "toy"

    def encode(self, text):
        return [3 + ord(c) % (V - 3) for c in text]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids = []
        for m in messages:
            ids += [1] + self.encode(m["content"]) + [2]
        return ids + ([1] if add_generation_prompt else [])


@pytest.fixture(scope="module")
def model():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=48)
    params = jax.tree.map(lambda x: x * 3.0, tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params)
    return tokjax.Model(params=params, cfg=cfg)


PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13], [20, 21, 22, 23]]
ANSWERS = [[30, 31, 32], [33], [34, 35]]


@pytest.fixture(scope="module")
def store(model):
    return caad_store_ids(model, PROMPTS, ANSWERS, window=4)


# ------------------------------------------------------------------------------------------ the store
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_store_holds_teacher_forced_logits_and_prefix_keys(model, store):
    assert len(store) == 6 and store.values.shape == (6, V) and store.vocab_size == V
    np.testing.assert_array_equal(np.asarray(store.next_tokens), [30, 31, 32, 33, 34, 35])
    seqs = np.zeros((3, 8), np.int32)
    for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS)):
        seqs[i, :len(p + a)] = p + a
    full = np.asarray(model(jnp.asarray(seqs)).logits)  # the plain full forward, right-padded rows
    rows = [(i, len(p) + s) for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS)) for s in range(len(a))]
    want_v = np.stack([full[i, n - 1] for i, n in rows])
    np.testing.assert_allclose(np.asarray(store.values), want_v, rtol=1e-5, atol=1e-5)
    emb = HashedNgramEmbedder(window=4)
    want_k = emb(jnp.asarray(seqs[[i for i, _ in rows]]), jnp.asarray([n for _, n in rows]))  # padding after: ignored
    np.testing.assert_allclose(np.asarray(store.keys), np.asarray(want_k), atol=1e-6)


def test_text_store_goes_through_the_chat_template(model):
    tok = ToyChatTok()
    ex = [("why?", "no"), ("how", "yes")]
    got = caad_store(model, tok, ex, window=3)
    ids = [tok.apply_chat_template([{"role": "user", "content": q}]) for q, _ in ex]
    want = caad_store_ids(model, ids, [tok.encode(a) for _, a in ex], window=3)
    np.testing.assert_array_equal(np.asarray(got.keys), np.asarray(want.keys))
    np.testing.assert_array_equal(np.asarray(got.values), np.asarray(want.values))
    plain = caad_store(model, tok, ex, window=3, chat=False)
    assert plain.values.shape == got.values.shape and not np.allclose(np.asarray(plain.keys), np.asarray(got.keys))


# --------------------------------------------------------------------------------------- the embedder
_EMBEDDERS = {w: jax.jit(hashed_ngram_embedder(window=w, dim=64)) for w in (1, 4)}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(0, 12), window=st.sampled_from([1, 4]))
def test_embedder_reads_only_the_last_window_tokens(seed, length, window):
    rng = np.random.default_rng(seed)
    emb = _EMBEDDERS[window]
    a = rng.integers(0, 1000, (1, 14))
    b = a.copy()
    b[0, :max(length - window, 0)] = rng.integers(0, 1000, max(length - window, 0))  # before the window
    b[0, length:] = rng.integers(0, 1000, 14 - length)  # after the valid length
    ea, eb = emb(jnp.asarray(a), jnp.asarray([length])), emb(jnp.asarray(b), jnp.asarray([length]))
    np.testing.assert_array_equal(np.asarray(ea), np.asarray(eb))
    norm = float(jnp.linalg.norm(ea))
    assert (norm == 0.0) if length == 0 else abs(norm - 1.0) < 1e-5
    # the counts: <= window unigrams and window-1 bigrams, all non-negative
    raw = np.asarray(ea)[0] * (np.sqrt((np.asarray(ea)[0] > 0).sum()) if length else 0)
    assert np.all(np.asarray(ea) >= 0) and np.isfinite(raw).all()


def test_embedder_counts_unigrams_and_bigrams():
    emb = HashedNgramEmbedder(window=3, dim=4096)
    abc, cba, aab = (emb(jnp.asarray([t]), jnp.asarray([3])) for t in ([1, 2, 3], [3, 2, 1], [1, 1, 2]))
    # same unigrams, different bigrams: cos = 3 / (sqrt(5) sqrt(5)) with no hash collision
    assert abs(float(jnp.sum(abc * cba)) - 3 / 5) < 1e-6
    # [1, 1, 2]: unigram 1 twice -> counts (2, 1, 1, 1) -> norm sqrt(7)
    assert abs(float(jnp.max(aab)) - 2 / np.sqrt(7)) < 1e-6


# ---------------------------------------------------------------------------------- exact properties
PROMPTS_GEN = [[5, 6, 7, 8, 9], [11, 12, 13], [3, 4]]


def test_tau_above_one_is_plain_greedy(model, store):
    prompts = PROMPTS_GEN
    ref = tokjax.generate(model, prompts, max_new_tokens=8, logits=L.greedy())
    got = tokjax.generate(model, prompts, max_new_tokens=8,
                          logits=L.chain(caad(store, alpha=3.0, tau=1.01), L.greedy()))
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    # every shaping keeps the argmax when nothing is retrieved (r = 0; alpha < 1 for the mixtures)
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(5), (3, V))
    ctx = LogitContext(tokens=jnp.asarray(got.tokens), lengths=jnp.asarray([7, 5, 4]), step=jnp.asarray(0))
    for shaping in ("linear", "delta", "prob_interp"):
        t = caad(store, alpha=0.9, tau=1.01, shaping=shaping)
        out, state = jax.jit(t.apply)(z, t.init(3), ctx)
        assert np.all(np.asarray(state["hits"]) == 0)
        np.testing.assert_array_equal(np.argmax(np.asarray(out), -1), np.argmax(np.asarray(z), -1))
    # and with a low threshold the store does change the greedy path
    moved = tokjax.generate(model, prompts, max_new_tokens=8, logits=L.chain(caad(store, alpha=50.0, tau=0.0),
                                                                             L.greedy()))
    assert not np.array_equal(moved.tokens, ref.tokens)


@pytest.mark.parametrize("agg", ["weighted", "mean"])
def test_identical_key_with_one_hit_adds_alpha_times_its_logits_exactly(model, store, agg):
    # the query context (prompt 0 + first answer token) is stored; no other key reaches tau = 0.9
    tokens = jnp.asarray([PROMPTS[0] + ANSWERS[0][:1] + [0, 0]])
    ctx = LogitContext(tokens=tokens, lengths=jnp.asarray([len(PROMPTS[0]) + 1]), step=jnp.asarray(0))
    z = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (1, V))
    t = caad(store, alpha=0.37, tau=0.9, agg=agg)
    out, state = jax.jit(t.apply)(z, t.init(1), ctx)
    assert int(state["hits"][0]) == 1
    q = store.embedder(ctx.tokens, ctx.lengths)
    r, _ = caad_retrieve(q, store.keys, store.values, 0.9, agg=agg)
    l = np.asarray(store.values[1], np.float32)
    np.testing.assert_array_equal(np.asarray(r)[0], l)  # r is the stored logit vector, bit for bit
    # z + alpha * l in float32, rounded once (XLA CPU contracts it into an FMA) or twice (no contraction)
    zn, a = np.asarray(z, np.float32)[0], np.float32(0.37)
    fused = (zn.astype(np.float64) + np.float64(a) * l.astype(np.float64)).astype(np.float32)
    got = np.asarray(out)[0]
    assert np.array_equal(got, fused) or np.array_equal(got, zn + a * l)


def _numpy_caad(z, q, keys, values, alpha, tau, agg, shaping, top_k):
    """P1 retrieval and shaping written out in float64 numpy, row by row (the official _get_rcd_logits order)."""
    z, q, keys, values = (np.asarray(x, np.float64) for x in (z, q, keys, values))
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    keys = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    out = np.empty_like(z)
    for b in range(z.shape[0]):
        s = keys @ q[b]
        order = np.argsort(-s, kind="stable")[:top_k]
        kept = [i for i in order if s[i] > tau[b]]
        if not kept:
            r = np.zeros(z.shape[1])
        elif agg == "mean":
            r = values[kept].mean(0)
        else:
            w = s[kept] / s[kept].sum()
            r = (values[kept] * w[:, None]).sum(0)
        a, zb = alpha[b], z[b]
        allowed = np.isfinite(zb)
        if shaping == "linear":
            o = zb + a * r
        elif shaping == "delta":
            o = (1 - a) * np.where(allowed, zb, 0) + a * r
        else:
            def sm(x):
                e = np.where(allowed, np.exp(x - x[allowed].max()), 0.0)
                return e / e.sum()
            with np.errstate(divide="ignore"):
                o = np.log((1 - a) * sm(np.where(allowed, zb, 0)) + a * sm(r))
        out[b] = np.where(allowed, o, -np.inf)
    return out


@pytest.mark.parametrize("agg", ["weighted", "mean"])
@pytest.mark.parametrize("shaping", ["linear", "delta", "prob_interp"])
@pytest.mark.parametrize("top_k", [3, 2048])
def test_agg_and_shaping_match_a_numpy_reference(agg, shaping, top_k):
    rng = np.random.default_rng(0)
    N, B = 9, 5
    # keys near some query tokens' vectors, so rows get 0, 1 or several hits at these thresholds
    keys = np.concatenate([_TABLE[[4, 4, 7]] + 0.3 * rng.normal(size=(3, DK)), rng.normal(size=(N - 3, DK))])
    values = rng.normal(size=(N, V)).astype(np.float32) * 2
    store = CAADStore(keys=keys, values=values, embedder=last_token_embedder)
    tokens = jnp.asarray([[1, 4], [2, 7], [3, 9], [5, 4], [6, 1]])
    lengths = jnp.asarray([2, 2, 2, 2, 2])
    z = 2.0 * rng.normal(size=(B, V)).astype(np.float32)
    z[3, :10] = -np.inf  # masked tokens
    alpha = np.array([0.5, 0.3, 1.0, 0.0, 0.8], np.float32)
    tau = np.array([0.5, 0.2, 0.7, 0.5, 0.0], np.float32)
    t = caad(store, alpha=alpha, tau=tau, agg=agg, shaping=shaping, top_k=top_k)
    ctx = LogitContext(tokens=tokens, lengths=lengths, step=jnp.asarray(0))
    out, state = jax.jit(t.apply)(jnp.asarray(z), t.init(B), ctx)
    q = last_token_embedder(tokens, lengths)
    want = _numpy_caad(z, q, keys, values, alpha, tau, agg, shaping, min(top_k, N))
    got = np.asarray(out)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=2e-5, atol=2e-5)
    hits = np.asarray(state["hits"])
    assert hits.max() >= 2 and hits.min() == 0 or top_k == 3  # the cases the test means to cover


def test_all_masked_rows_and_edge_alphas_never_nan():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(3, V)).astype(np.float32))
    z = z.at[0].set(-jnp.inf).at[1, :5].set(-jnp.inf)
    r = jnp.asarray(rng.normal(size=(3, V)).astype(np.float32))
    for shaping in ("linear", "delta", "prob_interp"):
        for a in (0.0, 0.5, 1.0):
            out = np.asarray(caad_shape(z, r, a, shaping))
            assert not np.isnan(out).any(), (shaping, a)
            assert np.isneginf(out[0]).all() and np.isneginf(out[1, :5]).all() and np.isfinite(out[1, 5:]).all()
    # alpha = 0 is the identity for linear / delta, and log_softmax(z) for prob_interp
    np.testing.assert_array_equal(np.asarray(caad_shape(z, r, 0.0, "delta"))[2], np.asarray(z)[2])
    np.testing.assert_allclose(np.asarray(caad_shape(z, r, 0.0, "prob_interp"))[2],
                               np.asarray(jax.nn.log_softmax(z[2])), rtol=1e-6, atol=1e-6)
    # a zero query (empty context) retrieves nothing: r = 0, hits = 0
    rr, hits = caad_retrieve(jnp.zeros((2, DK)), jnp.asarray(_TABLE[:4]), r[:1].repeat(4, 0)[:, :V], 0.0)
    assert np.all(np.asarray(rr) == 0) and np.all(np.asarray(hits) == 0)


# ------------------------------------------------------------------------------ runtime hyperparameters
def test_alpha_and_tau_are_runtime_values(model, store):
    prompts = PROMPTS_GEN  # the loop compiled by the previous test is reused
    a = L.chain(caad(store, alpha=0.5, tau=0.7), L.greedy())
    b = L.chain(caad(store, alpha=30.0, tau=0.05), L.greedy())
    other = caad_store_ids(model, [[1, 2, 3], [4, 5], [6, 7]], [[9, 10, 11], [12], [13, 14]], window=4)  # same shapes
    c = L.chain(caad(other, alpha=np.array([0.1, 9.0, 1.0]), tau=np.array([0.0, 0.3, 0.5])), L.greedy())
    assert a == b == c and hash(a) == hash(b) == hash(c)
    assert caad(store) != caad(store, agg="mean") and caad(store) != caad(store, shaping="delta")
    outs = [tokjax.generate(model, prompts, max_new_tokens=8, logits=a)]
    before = TRACE_COUNTS["decode_loop"]
    outs += [tokjax.generate(model, prompts, max_new_tokens=8, logits=t) for t in (b, c)]
    assert TRACE_COUNTS["decode_loop"] == before
    assert not np.array_equal(outs[0].tokens, outs[1].tokens)


def test_state_survives_row_operations():
    store = CAADStore(keys=_TABLE[:3], values=np.ones((3, V), np.float32), embedder=last_token_embedder)
    t = caad(store, tau=0.0)
    for batch in (1,):  # batch 1: the store's leading axis of size 1 looks like a row axis
        s = t.init(batch)
        ctx = LogitContext(tokens=jnp.full((batch, 2), 3), lengths=jnp.full((batch,), 2), step=jnp.asarray(0))
        z = jnp.zeros((batch, V))
        out = np.asarray(t.apply(z, s, ctx)[0])
        ctx3 = LogitContext(tokens=jnp.full((3 * batch, 2), 3), lengths=jnp.full((3 * batch,), 2), step=jnp.asarray(0))
        rep = t.apply(jnp.zeros((3 * batch, V)), repeat_rows(s, batch, 3), ctx3)[0]
        np.testing.assert_allclose(np.asarray(rep), np.repeat(out, 3, axis=0), rtol=1e-6)
        back = take_rows(repeat_rows(s, batch, 3), jnp.arange(batch) * 3, batch * 3)
        np.testing.assert_allclose(np.asarray(t.apply(z, back, ctx)[0]), out, rtol=1e-6)


# ---------------------------------------------------------------------------------------- bad input
def test_bad_input_raises(model, store):
    with pytest.raises(ValueError, match=r"alpha must lie in \[0"):
        caad(store, alpha=-0.1)
    with pytest.raises(ValueError, match=r"alpha \(shaping='prob_interp'\) must lie in \[0.0, 1.0\]"):
        caad(store, alpha=1.5, shaping="prob_interp")
    with pytest.raises(ValueError, match="tau must lie in"):
        caad(store, tau=-0.5)
    with pytest.raises(ValueError, match="agg must be one of"):
        caad(store, agg="max")
    with pytest.raises(ValueError, match="shaping must be one of"):
        caad(store, shaping="contrastive")
    with pytest.raises(ValueError, match="top_k must be"):
        caad(store, top_k=0)
    with pytest.raises(ValueError, match="needs a CAADStore"):
        caad(None)
    with pytest.raises(ValueError, match="CAADStore is empty"):
        CAADStore(keys=np.zeros((0, 4)), values=np.zeros((0, V)))
    with pytest.raises(ValueError, match="one row per entry"):
        CAADStore(keys=np.ones((2, 4)), values=np.zeros((3, V)))
    with pytest.raises(ValueError, match="finite"):
        CAADStore(keys=np.ones((1, 4)), values=np.full((1, V), np.nan))
    with pytest.raises(ValueError, match="no examples"):
        caad_store(model, ToyChatTok(), [])
    with pytest.raises(ValueError, match="store would be empty"):
        caad_store_ids(model, [[1, 2]], [[]])
    with pytest.raises(ValueError, match="window must be a positive int"):
        caad_store(model, ToyChatTok(), [("q", "a")], window=0)
    with pytest.raises(ValueError, match="window must be a positive int"):
        hashed_ngram_embedder(window=0)
    with pytest.raises(ValueError, match=r"outside \[0, vocab_size=40\)"):
        caad_store_ids(model, [[1, 2]], [[V + 3]])
    with pytest.raises(ValueError, match="question and answer must be non-empty"):
        caad_store(model, ToyChatTok(), [("q", "")])
    with pytest.raises(ValueError, match="hashable"):
        CAADStore(keys=np.ones((1, 4)), values=np.zeros((1, V)), embedder=type("E", (), {"__call__": lambda *a: 0,
                                                                                          "__hash__": None})())
    # a store built for another vocabulary
    big = CAADStore(keys=np.ones((2, 2048)), values=np.zeros((2, V + 8)))
    with pytest.raises(ValueError, match=r"vocab=40"):
        tokjax.generate(model, [[1, 2]], max_new_tokens=2, logits=L.chain(caad(big), L.greedy()))
    # an embedder whose size differs from the keys'
    odd = CAADStore(keys=np.ones((2, 3)), values=np.zeros((2, V)))
    with pytest.raises(ValueError, match="embedder returned shape"):
        tokjax.generate(model, [[1, 2]], max_new_tokens=2, logits=L.chain(caad(odd), L.greedy()))
    assert isinstance(caad(store), CAAD)
