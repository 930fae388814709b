"""Token Recycling (P45): template, BFS draft and recycling update vs naive references; greedy equality; hot start; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax import generate
from tokjax import logits as L
from tokjax.decoding.token_recycling import (
    TEMPLATES,
    RecyclingTable,
    draft_tree,
    recycling,
    template_arrays,
    update_table,
)
from tests.model._models import small_model

MODEL = small_model(seed=5, max_len=64)
V = MODEL.cfg.vocab_size


def test_default_template_is_the_official_2_2_2_tree():
    paths = TEMPLATES["2.2.2"]
    parents, child, depth = template_arrays(paths)
    assert len(paths) == 80
    assert np.bincount(depth).tolist() == [0, 8, 21, 25, 15, 8, 3]
    assert paths[:8] == tuple((i,) for i in range(8))
    assert paths[-3:] == ((0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0))
    for i, p in enumerate(paths):  # parent index points at the parent path, listed earlier
        assert (parents[i] == -1) == (len(p) == 1)
        if parents[i] >= 0:
            assert parents[i] < i and paths[parents[i]] == p[:-1]
        assert child[i] == p[-1]


def naive_draft(table, last, paths):
    out = []
    for row_last in last:
        toks = {(): int(row_last)}
        for p in paths:
            toks[p] = int(table[toks[p[:-1]], p[-1]])
        out.append([toks[p] for p in paths])
    return np.array(out)


@pytest.mark.parametrize("name", ["2.2.2", "small"])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_draft_tree_equals_naive_bfs(name, seed):
    rng = np.random.default_rng(seed)
    vocab, B = 23, 3
    table = rng.integers(0, vocab, size=(vocab, 8)).astype(np.int32)
    last = rng.integers(0, vocab, size=B).astype(np.int32)
    parents, child, depth = template_arrays(TEMPLATES[name])
    got = draft_tree(jnp.asarray(table), jnp.asarray(last), parents, child, depth)
    np.testing.assert_array_equal(np.asarray(got), naive_draft(table, last, TEMPLATES[name]))
    assert (np.asarray(got) >= 0).all() and (np.asarray(got) < vocab).all()


def naive_update(table, nodes, logits, mask):
    before = table
    table = table.copy()
    k = table.shape[1]
    for b in range(nodes.shape[0]):  # sequential whole-row writes: the last one wins
        for m in range(nodes.shape[1]):
            if not mask[b, m]:
                continue
            order = sorted(range(logits.shape[-1]), key=lambda v: (-logits[b, m, v], v))[:k]
            row = before[nodes[b, m]].copy()  # masked (-inf) candidates keep the pre-update entry
            for j, v in enumerate(order):
                if np.isfinite(logits[b, m, v]):
                    row[j] = v
            table[nodes[b, m]] = row
    return table


_update_jit = jax.jit(update_table)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), few_ids=st.integers(2, 19), p_mask=st.sampled_from([0.0, 0.3, 0.9]))
def test_update_table_equals_sequential_reference(seed, few_ids, p_mask):
    rng = np.random.default_rng(seed)
    vocab, k, B, M = 19, 4, 3, 7
    table = rng.integers(0, vocab, size=(vocab, k)).astype(np.int32)
    nodes = rng.integers(0, few_ids, size=(B, M)).astype(np.int32)  # few ids: many duplicate writes
    logits = rng.normal(size=(B, M, vocab)).astype(np.float32)
    logits[rng.uniform(size=logits.shape) < p_mask] = -np.inf  # masked candidates keep the old entry
    mask = rng.uniform(size=(B, M)) < 0.8
    got = _update_jit(jnp.asarray(table), jnp.asarray(nodes), jnp.asarray(logits), jnp.asarray(mask))
    want = naive_update(table, nodes, logits, mask)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (np.asarray(got) >= 0).all() and (np.asarray(got) < vocab).all()


def _strategy(template="small"):
    from tokjax.decoding import verify
    from tokjax.decoding.speculative import speculative

    return speculative(recycling(template=template), verify.greedy())


def _ragged_prompts(seed, B, width=8):
    """Returns (padded [B, width] ids, lengths): fixed shapes, so every seed reuses one compilation."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, width + 1, size=B)
    base = rng.integers(0, V, size=3)
    # Repetitive rows (a few tiled ids) make drafts get accepted, so the path/gather code runs.
    rows = [np.tile(base, width)[:width] if b % 2 else rng.integers(0, V, size=width) for b in range(B)]
    return np.stack(rows).astype(np.int32), lens


@pytest.mark.parametrize("template,verifier", [pytest.param("2.2.2", "greedy", marks=pytest.mark.slow), ("small", "tree")])
def test_greedy_speculative_equals_plain_greedy_batched_ragged(template, verifier):
    from tokjax.decoding import verify
    from tokjax.decoding.speculative import speculative

    strategy = speculative(recycling(template=template), getattr(verify, verifier)())
    for seed in range(4):
        prompts, lens = _ragged_prompts(seed, 5)
        plain = generate(MODEL, prompts, prompt_lengths=lens, max_new_tokens=24, logits=L.greedy())
        spec = generate(MODEL, prompts, prompt_lengths=lens, key=jax.random.key(seed), max_new_tokens=24,
                        logits=L.greedy(), strategy=strategy)
        np.testing.assert_array_equal(spec.tokens, plain.tokens)
        np.testing.assert_array_equal(spec.lengths, plain.lengths)
        assert spec.stats["forward_calls"] <= plain.stats["forward_calls"]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_hot_start_round_trip_makes_the_second_request_faster():
    prompts, lens = _ragged_prompts(4, 2)
    prompt = [prompts[1, : lens[1]].tolist()]
    strategy = _strategy("2.2.2")
    kw = dict(strategy=strategy, key=jax.random.key(0), max_new_tokens=30, logits=L.greedy())
    cold = generate(MODEL, prompt, **kw)
    table = cold.strategy_state
    assert isinstance(table, RecyclingTable) and table.successors.shape == (V, 8)
    assert int(jnp.abs(table.successors).sum()) > 0
    warm = generate(MODEL, prompt, strategy_state=table, **kw)
    table2 = warm.strategy_state
    np.testing.assert_array_equal(warm.tokens, cold.tokens)
    assert warm.stats["forward_calls"] < cold.stats["forward_calls"]
    # Passing the table in does not alias it: the caller's copy is unchanged by the second run.
    again = generate(MODEL, prompt, strategy_state=table, **kw)
    assert again.stats["forward_calls"] == warm.stats["forward_calls"]
    assert not np.array_equal(np.asarray(table2.successors), np.asarray(table.successors))
    # The table is shared by all rows, so a request of another batch size starts from it too.
    both = generate(MODEL, [prompt[0], prompt[0]], strategy_state=table, **kw)
    np.testing.assert_array_equal(both.tokens[1], warm.tokens[0])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="k must be"):
        recycling(k=0)
    with pytest.raises(ValueError, match="unknown tree template"):
        recycling(template="nope")
    with pytest.raises(ValueError, match="before .*parent"):
        recycling(template=[(0, 0), (0,)])
    with pytest.raises(ValueError, match="only k=2"):
        recycling(k=2, template=[(0,), (5,)])
    with pytest.raises(ValueError, match="repeats"):
        template_arrays([(0,), (0,)])
    with pytest.raises(ValueError, match="vocab_size"):
        RecyclingTable.init(0)
    with pytest.raises(ValueError, match="shaped like"):
        generate(MODEL, [[1, 2]], strategy=_strategy(), max_new_tokens=2, key=jax.random.key(0),
                 strategy_state=RecyclingTable.init(V + 1))
    with pytest.raises(ValueError, match="RecyclingTable"):
        generate(MODEL, [[1, 2]], strategy=_strategy(), max_new_tokens=2, key=jax.random.key(0),
                 strategy_state={"successors": RecyclingTable.init(V).successors})
    with pytest.raises(TypeError, match="unexpected"):
        generate(MODEL, [[1, 2]], strategy=_strategy(), max_new_tokens=2, temperature=3)
