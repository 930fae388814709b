"""STAND (P22): n-gram memory update/lookup vs a dict reference, Gumbel-top-k tree drafts, greedy equality,
lossless sampling (chi-square), hot start and bad input."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from tokjax import generate
from tokjax import logits as L
from tokjax.decoding.stand import (
    NgramTables,
    draft_stand_tree,
    ngram_hash,
    ngram_lookup,
    ngram_memory,
    ngram_update,
)
from tokjax.decoding.token_recycling import TEMPLATES, template_arrays
from tests.model._models import small_model

MODEL = small_model(seed=7, max_len=64)
V = MODEL.cfg.vocab_size


def ref_hash(key, capacity):
    h = 2166136261
    for t in key:
        h = ((h ^ int(t)) * 16777619) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 15
    return h & (capacity - 1)


class RefMemory:
    """Naive dict model of the tables: per order, slot -> (key, {token: prob}, count)."""

    def __init__(self, orders, capacity, k):
        self.orders, self.C, self.K = tuple(sorted(orders, reverse=True)), capacity, k
        self.slots = [dict() for _ in self.orders]

    def update(self, ctx, ctx_ok, obs_tok, obs_w, mask):
        n_max = max(self.orders)
        for o, n in enumerate(self.orders):
            obs = []
            for m in range(len(ctx)):
                if mask[m] and all(ctx_ok[m][n_max - n:]):
                    key = tuple(int(t) for t in ctx[m][n_max - n:])
                    obs.append((m, key, ref_hash(key, self.C)))
            last = {}
            for m, key, slot in obs:  # the slot goes to the key of its last observation
                last[slot] = key
            for slot, key in last.items():
                old = self.slots[o].get(slot)
                c, dist = (old[2], old[1]) if old and old[0] == key else (0, {})
                acc = {t: c * w for t, w in dist.items()}
                members = [m for m, k2, s in obs if s == slot and k2 == key]
                for m in members:
                    for t, w in zip(obs_tok[m], obs_w[m]):
                        acc[int(t)] = acc.get(int(t), 0.0) + float(w)
                c2 = c + len(members)
                best = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[: self.K]
                self.slots[o][slot] = (key, {t: w / c2 for t, w in best}, c2)

    def lookup(self, ctx, ok):
        n_max = max(self.orders)
        for o, n in enumerate(self.orders):
            if not all(ok[n_max - n:]):
                continue
            key = tuple(int(t) for t in ctx[n_max - n:])
            hit = self.slots[o].get(ref_hash(key, self.C))
            if hit and hit[0] == key:
                return hit[1]
        return None


def _positive(tok, w):
    return {int(t): float(x) for t, x in zip(tok, w) if x > 1e-6}


def assert_tables_match(tables, ref):
    counts = np.asarray(tables.counts)
    keys = np.asarray(tables.keys)
    for o, n in enumerate(ref.orders):
        assert set(np.nonzero(counts[o])[0].tolist()) == set(ref.slots[o])
        for slot, (key, dist, c) in ref.slots[o].items():
            assert counts[o, slot] == c and tuple(keys[o, slot, :n]) == key
            got = _positive(np.asarray(tables.tokens[o, slot]), np.asarray(tables.weights[o, slot]))
            want = {t: w for t, w in dist.items() if w > 1e-6}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[t] for t in want], [want[t] for t in want], rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=4), st.sampled_from([2, 64, 1024]))
def test_hash_matches_reference_and_stays_in_range(key, capacity):
    got = int(ngram_hash(jnp.asarray(key, jnp.int32), capacity))
    assert got == ref_hash(key, capacity) and 0 <= got < capacity


ORDERS, CAP, K, VOCAB, M, J = (3, 2), 8, 3, 11, 10, 2
_update_jit = jax.jit(ngram_update, static_argnums=(1, 7))
_lookup_jit = jax.jit(ngram_lookup, static_argnums=(1,))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), alphabet=st.integers(2, 5), calls=st.integers(1, 3))
def test_update_and_lookup_equal_dict_reference(seed, alphabet, calls):
    # Tiny alphabet and 8 slots: repeated keys, several observations per key per call, collisions.
    rng = np.random.default_rng(seed)
    tables = NgramTables.init(ORDERS, CAP, K)
    ref = RefMemory(ORDERS, CAP, K)
    for _ in range(calls):
        ctx = rng.integers(0, alphabet, size=(M, 3)).astype(np.int32)
        ok = rng.uniform(size=(M, 3)) < 0.9
        tok = np.stack([rng.choice(VOCAB, size=J, replace=False) for _ in range(M)]).astype(np.int32)
        w = rng.dirichlet(np.ones(J + 1), size=M)[:, :J].astype(np.float32)  # top-J of a distribution: sum < 1
        mask = rng.uniform(size=M) < 0.85
        tables = _update_jit(tables, ORDERS, jnp.asarray(ctx), jnp.asarray(ok), jnp.asarray(tok), jnp.asarray(w),
                             jnp.asarray(mask), VOCAB)
        ref.update(ctx, ok, tok, w, mask)
        assert_tables_match(tables, ref)
    q_ctx = rng.integers(0, alphabet, size=(M, 3)).astype(np.int32)
    q_ok = rng.uniform(size=(M, 3)) < 0.9
    t, w, found = _lookup_jit(tables, ORDERS, jnp.asarray(q_ctx), jnp.asarray(q_ok))
    for m in range(M):
        want = ref.lookup(q_ctx[m], q_ok[m])
        assert bool(found[m]) == (want is not None)
        if want is not None:
            got = _positive(np.asarray(t[m]), np.asarray(w[m]))
            assert got.keys() == {k for k, x in want.items() if x > 1e-6}


def _memory_with(contexts, dists, orders=(2, 1), capacity=64, k=4, vocab=9):
    tables = NgramTables.init(orders, capacity, k)
    ctx = np.asarray(contexts, np.int32)
    tok = np.asarray([list(d) for d in dists], np.int32)
    w = np.asarray([list(d.values()) for d in dists], np.float32)
    return ngram_update(tables, orders, jnp.asarray(ctx), jnp.ones(ctx.shape, bool), jnp.asarray(tok),
                        jnp.asarray(w), jnp.ones(len(ctx), bool), vocab)


def test_draft_tree_nodes_probs_and_gumbel_top_k_marginal():
    vocab, B = 9, 4000
    q = {3: 0.5, 5: 0.3, 7: 0.15, 1: 0.05}
    tables = _memory_with([[0, 2]], [q])  # the 2-gram (0, 2) -> q
    seq = jnp.tile(jnp.asarray([[0, 2, 0]], jnp.int32), (B, 1))
    lengths = jnp.full((B,), 2, jnp.int32)  # pending token 2, context (0, 2)
    tmpl = ((0,), (1,), (2,), (0, 0))
    nodes, valid, probs, _, _ = draft_stand_tree(tables, (2, 1), tmpl, seq, lengths, jax.random.key(0), vocab)
    nodes, valid, probs = np.asarray(nodes), np.asarray(valid), np.asarray(probs)
    assert valid[:, :3].all() and not valid[:, 3].any()  # (0, 0) has no stored context -> invalid
    assert ((nodes >= 0) & (nodes < vocab)).all()
    assert (nodes[:, 0] != nodes[:, 1]).all() and (nodes[:, 1] != nodes[:, 2]).all()  # without replacement
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert (probs[np.arange(B)[:, None], np.arange(4)[None], nodes] > 0).all()
    np.testing.assert_allclose(probs[:, 0, [3, 5, 7, 1]], np.tile([0.5, 0.3, 0.15, 0.05], (B, 1)), atol=1e-6)
    assert (probs[np.arange(B), 1, nodes[:, 0]] == 0).all()  # sibling 1's q excludes sibling 0's token
    # Rank-0 child ~ q; rank-1 child ~ Plackett-Luce second draw.
    freq0 = np.array([(nodes[:, 0] == t).mean() for t in q])
    np.testing.assert_allclose(freq0, list(q.values()), atol=4 * np.sqrt(0.25 / B))
    second = {t: sum(q[a] * q[t] / (1 - q[a]) for a in q if a != t) for t in q}
    freq1 = np.array([(nodes[:, 1] == t).mean() for t in q])
    np.testing.assert_allclose(freq1, list(second.values()), atol=4 * np.sqrt(0.25 / B))


def test_draft_with_empty_memory_is_all_invalid_but_in_vocab():
    tables = NgramTables.init((2,), 16, 10)
    seq = jnp.asarray([[1, 2, 3, 0], [4, 0, 0, 0]], jnp.int32)
    nodes, valid, probs, _, _ = draft_stand_tree(tables, (2,), TEMPLATES["2.2.2"], seq, jnp.asarray([3, 1]),
                                                 jax.random.key(1), 9)
    assert not np.asarray(valid).any() and ((np.asarray(nodes) >= 0) & (np.asarray(nodes) < 9)).all()
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)


def _ragged_prompts(seed, B, width=8):
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, width + 1, size=B)
    base = rng.integers(0, V, size=3)
    rows = [np.tile(base, width)[:width] if b % 2 else rng.integers(0, V, size=width) for b in range(B)]
    return np.stack(rows).astype(np.int32), lens


def _spec(verifier="tree", **kw):
    from tokjax.decoding import verify
    from tokjax.decoding.speculative import speculative

    return speculative(ngram_memory(**{"template": "small", **kw}), getattr(verify, verifier)())


@pytest.mark.parametrize("verifier,prime", [pytest.param("tree", True, marks=pytest.mark.slow), ("greedy", False)])
def test_greedy_speculative_equals_plain_greedy_batched_ragged(verifier, prime):
    strategy = _spec(verifier, prime_prompt=prime, orders=(3, 2, 1))
    calls_plain = calls_spec = 0
    for seed in range(4):
        prompts, lens = _ragged_prompts(seed, 5)
        plain = generate(MODEL, prompts, prompt_lengths=lens, max_new_tokens=24, logits=L.greedy())
        spec = generate(MODEL, prompts, prompt_lengths=lens, key=jax.random.key(seed), max_new_tokens=24,
                        logits=L.greedy(), strategy=strategy)
        np.testing.assert_array_equal(spec.tokens, plain.tokens)
        np.testing.assert_array_equal(spec.lengths, plain.lengths)
        calls_plain += plain.stats["forward_calls"]
        calls_spec += spec.stats["forward_calls"]
    assert calls_spec < calls_plain  # drafts were accepted somewhere


@pytest.mark.slow
def test_sampling_with_tree_verifier_is_lossless_chi_square():
    model = small_model(seed=2, vocab_size=6, init_scale=0.15)
    B, n = 3000, 2
    prompt = np.tile(np.asarray([[1, 2, 3, 1, 2, 3, 1, 2]], np.int32), (B, 1))
    t = L.temperature(1.0)
    plain = generate(model, prompt, key=jax.random.key(1), max_new_tokens=n, logits=t)
    spec = generate(model, prompt, key=jax.random.key(2), max_new_tokens=n, logits=t,
                    strategy=_spec("tree", prime_prompt=True, orders=(2, 1), top_k=4))
    assert spec.stats["tokens_per_call"] > 1.1  # stochastic drafts were accepted
    def joint(out):
        c = out.tokens[:, 8:8 + n]
        return np.bincount(c[:, 0] * 6 + c[:, 1], minlength=36)
    table = np.stack([joint(plain), joint(spec)])
    table = table[:, table.sum(0) > 0]
    _, p, _, _ = sps.chi2_contingency(table)
    assert p > 1e-3, (p, table)


def _full_buffer_priming(tokens, lens, orders, capacity, k, vocab):
    """The priming as first written: every buffer position, masked past each row's prompt."""
    B, S = tokens.shape
    n_max = max(orders)
    pos = np.arange(S - 1)
    idx = pos[:, None] - n_max + 1 + np.arange(n_max)[None, :]
    ctx = tokens[:, np.clip(idx, 0, S - 1)]
    ok = np.broadcast_to(idx >= 0, ctx.shape)
    mask = (pos[None, :] + 1) < lens[:, None]
    return ngram_update(NgramTables.init(orders, capacity, k), orders, jnp.asarray(ctx.reshape(-1, n_max)),
                        jnp.asarray(ok.reshape(-1, n_max)), jnp.asarray(tokens[:, 1:].reshape(-1, 1)),
                        jnp.ones((B * (S - 1), 1)), jnp.asarray(mask.reshape(-1)), vocab)


@pytest.mark.parametrize("lens", [pytest.param([5, 2, 11], marks=pytest.mark.slow), pytest.param([1, 1, 1], marks=pytest.mark.slow), [40, 3, 17]])
def test_prime_prompt_reads_only_the_prompts_yet_equals_full_buffer_priming(lens):
    # init stops at the longest prompt (rounded to a power of two); the tables must not change,
    # eagerly or under an outer jit (where the lengths are unknown and the whole buffer is read).
    rng = np.random.default_rng(sum(lens))
    lens = np.asarray(lens, np.int32)
    tokens = rng.integers(0, 9, (3, 48)).astype(np.int32)  # a small alphabet: many repeated keys and collisions
    tokens[np.arange(48)[None] >= lens[:, None]] = 4
    src = ngram_memory("small", orders=(3, 2, 1), top_k=4, capacity=32, prime_prompt=True)
    state = SimpleNamespace(tokens=jnp.asarray(tokens), prompt_lengths=jnp.asarray(lens))
    want = _full_buffer_priming(tokens, lens, src.orders, 32, 4, V)
    eager = src.init(None, MODEL.cfg, state).tables
    traced = jax.jit(lambda t, n: src.init(None, MODEL.cfg, SimpleNamespace(tokens=t, prompt_lengths=n)).tables)(
        state.tokens, state.prompt_lengths)
    assert (int(want.counts.sum()) > 0) == bool(np.any(lens >= 2))
    for got in (eager, traced):
        for f in ("keys", "tokens", "weights", "counts"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f)), err_msg=f)


def test_hot_start_round_trip():
    prompts, lens = _ragged_prompts(3, 2)
    prompt = [prompts[1, : lens[1]].tolist()]
    strategy = _spec("greedy", orders=(3, 2, 1))
    cold = generate(MODEL, prompt, strategy=strategy, key=jax.random.key(0), max_new_tokens=30, logits=L.greedy())
    tables = cold.strategy_state
    assert isinstance(tables, NgramTables) and int(tables.counts.sum()) > 0
    warm = generate(MODEL, prompt, strategy=strategy, key=jax.random.key(0), max_new_tokens=30, logits=L.greedy(),
                    strategy_state=tables)
    np.testing.assert_array_equal(warm.tokens, cold.tokens)
    assert warm.stats["forward_calls"] < cold.stats["forward_calls"]


def test_bad_input_raises():
    with pytest.raises(ValueError, match="power of two"):
        ngram_memory(capacity=1000)
    with pytest.raises(ValueError, match="orders"):
        ngram_memory(orders=(2, 2))
    with pytest.raises(ValueError, match="orders"):
        ngram_memory(orders=())
    with pytest.raises(ValueError, match="top_k"):
        ngram_memory(top_k=0)
    with pytest.raises(ValueError, match="sibling rank 7"):
        ngram_memory(top_k=4)  # the 80-node tree needs 8 ranks
    with pytest.raises(ValueError, match="unknown tree template"):
        ngram_memory(template="big")
    with pytest.raises(ValueError, match="parent"):
        ngram_memory(template=[(1, 0)])
    with pytest.raises(ValueError, match="shaped like"):
        generate(MODEL, [[1, 2]], strategy=_spec("greedy"), max_new_tokens=2, logits=L.greedy(),
                 strategy_state=NgramTables.init((4, 3, 2), 64, 10))
    assert template_arrays(TEMPLATES["small"])[0][0] == -1
