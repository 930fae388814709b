"""Tests for P72 Soft Thinking (tokjax.decoding.soft_thinking)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS
from tokjax.decoding.soft_thinking import concept_token, default_filters, mix_embeddings, soft_thinking
from tokjax.model import Inputs, embed, forward

V = 32
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
NEW = 10


@pytest.fixture(scope="module")
def model():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=40)
    params = jax.jit(lambda k: jax.tree.map(lambda x: x * 2.0, tokjax.Model.init(cfg, k).params))(jax.random.PRNGKey(0))
    return tokjax.Model(params=params, cfg=cfg)


def test_max_topk_one_is_greedy_decoding(model):
    ref = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy())
    first = ref.tokens[0, ref.prompt_lengths[0] + 3]  # a token greedy emits mid-way: thinking ends there
    out = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy(),
                          strategy=soft_thinking(int(first), max_topk=1))
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    assert out.stats["think_tokens"][0] <= 4 and not out.stats["still_thinking"][0]


def _reference(model, prompt, end, K, T, new, cold_h=0.0, cold_n=256):
    """Soft Thinking without a cache: the whole embedding sequence through the forward at every step
    (causal attention, so the padding after position n - 1 does not change its logits)."""
    params, cfg = model.params, model.cfg
    W = len(prompt) + new
    buf = np.zeros((W, cfg.d_model), np.float32)
    buf[:len(prompt)] = np.asarray(embed(params, cfg, jnp.asarray([prompt]))[0])
    n = len(prompt)
    logits_at = jax.jit(lambda e, i: forward(params, cfg, Inputs(embeds=e[None])).logits[0, i][None])
    filters = default_filters()
    ctx = L.LogitContext(tokens=jnp.zeros((1, 64), jnp.int32), lengths=jnp.zeros((1,), jnp.int32),
                         step=jnp.zeros((), jnp.int32))
    think = jax.jit(lambda z, fs: concept_token(z, T, K, filters, fs, ctx))
    fstate = filters.init(1)
    row = lambda ids: np.asarray(embed(params, cfg, jnp.asarray([ids]))[0, 0])  # noqa: E731
    toks, thinking, low = [], True, 0
    for _ in range(new):
        z = logits_at(jnp.asarray(buf), n - 1)
        if not thinking:
            t = int(jnp.argmax(z[0]))
            buf[n] = row([t])
        else:
            w, ids, h, _, fstate = think(z, fstate)
            low = low + 1 if float(h[0]) < cold_h else 0
            t = int(ids[0, 0])
            if cold_h > 0 and low >= cold_n:
                t, low = end, 0
            if t == end:
                thinking = False
                buf[n] = row([t])
            else:
                buf[n] = np.asarray(mix_embeddings(params, cfg, w, ids)[0, 0])
        toks.append(t)
        n += 1
    return toks


@pytest.mark.slow
def test_cached_decode_equals_full_forward_reference(model):
    end = 17
    out = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy(),
                          strategy=soft_thinking(end, max_topk=4, temperature=0.8))
    for b, prompt in enumerate(PROMPTS):
        P = len(prompt)
        got = out.tokens[b, P:out.lengths[b]].tolist()
        assert got == _reference(model, prompt, end, 4, 0.8, NEW)


def test_cold_stop_forces_end_token_after_n_low_entropy_steps(model):
    end = 5
    # every entropy is below 100 nats: the third thinking step is replaced by the end token
    out = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy(),
                          strategy=soft_thinking(end, max_topk=3, cold_stop_entropy=100.0, cold_stop_steps=3))
    checked = 0
    for b, prompt in enumerate(PROMPTS):
        gen = out.tokens[b, len(prompt):out.lengths[b]]
        if end in gen[:2]:  # ended on its own first
            continue
        checked += 1
        assert gen[2] == end and out.stats["cold_stopped"][b] and out.stats["think_tokens"][b] == 3
        assert _reference(model, prompt, end, 3, 0.6, NEW, cold_h=100.0, cold_n=3) == gen.tolist()
    assert checked >= 2
    # Cold Stop off (entropy threshold 0): never forced
    off = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy(),
                          strategy=soft_thinking(end, max_topk=3, cold_stop_entropy=0.0, cold_stop_steps=1))
    assert not off.stats["cold_stopped"].any()


def test_runtime_hyperparameters_do_not_recompile(model):
    tokjax.generate(model, PROMPTS, max_new_tokens=NEW, strategy=soft_thinking(9, max_topk=3, temperature=0.5),
                    key=jax.random.key(0))
    before = dict(TRACE_COUNTS)
    out = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, key=jax.random.key(0),
                          strategy=soft_thinking(9, max_topk=3, temperature=0.9, cold_stop_entropy=0.5,
                                                 cold_stop_steps=2))
    assert dict(TRACE_COUNTS) == before
    assert out.stats["cold_stopped"].dtype == bool


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(1, 8), T=st.floats(0.05, 3.0))
def test_concept_token_is_a_distribution_over_distinct_ids(seed, K, T):
    z = jax.random.normal(jax.random.key(seed), (3, 16)) * 4
    w, ids, h, _, _ = concept_token(z, T, K, default_filters(top_k=6, top_p=0.9, min_p=0.01),
                                    default_filters(top_k=6, top_p=0.9, min_p=0.01).init(3), None)
    w, ids = np.asarray(w), np.asarray(ids)
    assert (w >= 0).all() and np.allclose(w.sum(-1), 1.0, atol=1e-6)
    assert (np.diff(w, axis=-1) <= 1e-7).all()  # most likely first
    assert (ids[:, 0] == np.asarray(jnp.argmax(z, -1))).all()
    assert np.all(np.asarray(h) >= 0)
    assert all(len(set(row.tolist())) == K for row in ids)
    assert ((w > 0).sum(-1) <= 6).all()  # top-k 6 filter: at most 6 ids carry weight


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), K=st.integers(1, 5))
def test_mixture_lies_in_the_convex_hull_of_its_embeddings(model, seed, K):
    key = jax.random.key(seed)
    raw = jax.random.uniform(key, (2, K))
    w = raw / raw.sum(-1, keepdims=True)
    ids = jax.random.randint(jax.random.fold_in(key, 1), (2, K), 0, V)
    e = np.asarray(mix_embeddings(model.params, model.cfg, w, ids))[:, 0]
    table = np.asarray(model.params["embed"])[np.asarray(ids)]  # [2, K, D]
    assert (e >= table.min(1) - 1e-5).all() and (e <= table.max(1) + 1e-5).all()
    np.testing.assert_allclose(e, np.einsum("bk,bkd->bd", np.asarray(w), table), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(end_ids=V), "outside the model's vocabulary"),
    (dict(end_ids=(), ), "at least one end-of-thinking"),
    (dict(end_ids=3, max_topk=V + 1), "max_topk must be in"),
])
def test_bad_strategy_for_the_model(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tokjax.generate(model, PROMPTS, max_new_tokens=2, strategy=soft_thinking(**kwargs))


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_topk=0), "max_topk must be an int"),
    (dict(temperature=0.0), "temperature"),
    (dict(cold_stop_entropy=-1.0), "cold_stop_entropy"),
    (dict(cold_stop_steps=0), "cold_stop_steps"),
    (dict(end_ids=-1), "non-negative"),
])
def test_bad_hyperparameters(kwargs, match):
    args = {"end_ids": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        soft_thinking(**args)
