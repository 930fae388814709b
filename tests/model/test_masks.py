"""Every mask spec against a brute-force numpy oracle; tree decoding equals causal decoding of a path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax import Inputs, KVCache, forward
from tokjax.model import Bidirectional, Causal, Explicit, Prefix, Rank, Tree, build_mask, tree_depths, validate_tree
from tests.model._models import small_model


def oracle_block(kind, B, T, arg=None, bidir=True):
    m = np.zeros((B, T, T), bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if kind == "causal":
                    m[b, i, j] = j <= i
                elif kind == "bidir":
                    m[b, i, j] = True
                elif kind == "prefix":
                    n = arg[b]
                    m[b, i, j] = j <= i or (i < n and j < n)
                elif kind == "rank":
                    r = arg[b]
                    m[b, i, j] = r[j] < r[i] or (r[j] == r[i] and (bidir or j <= i))
                elif kind == "tree":
                    p = arg[b]
                    k = i
                    while k >= 0:
                        if k == j:
                            m[b, i, j] = True
                        k = p[k]
    return m


def oracle_cached(block, offset, S):
    B, T, _ = block.shape
    out = np.zeros((B, T, S), bool)
    for b in range(B):
        out[b, :, : offset[b]] = True
        for j in range(T):
            if offset[b] + j < S:
                out[b, :, offset[b] + j] = block[b, :, j]
    return out


def random_tree(rng, T):
    return np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, T)], np.int32)


@pytest.mark.slow
@settings(max_examples=6)  # each example compiles every mask kind; the slow suite runs more
@given(st.integers(1, 3), st.integers(1, 7), st.integers(0, 10_000), st.booleans())
def test_masks_match_numpy_oracle(B, T, seed, bidir):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, T + 1, size=B)
    ranks = np.sort(rng.integers(0, 3, size=(B, T)), axis=1)
    parents = np.stack([random_tree(rng, T) for _ in range(B)])
    cases = [
        (Causal(), oracle_block("causal", B, T)),
        (Bidirectional(), oracle_block("bidir", B, T)),
        (Prefix(jnp.asarray(prefix)), oracle_block("prefix", B, T, prefix)),
        (Rank(jnp.asarray(ranks), bidirectional=bidir), oracle_block("rank", B, T, ranks, bidir)),
        (Tree(jnp.asarray(parents)), oracle_block("tree", B, T, parents)),
    ]
    offset = rng.integers(0, 5, size=B)
    S = int(offset.max()) + T + 2
    for spec, want in cases:
        np.testing.assert_array_equal(np.asarray(build_mask(spec, B, T)), want, err_msg=type(spec).__name__)
        got = build_mask(spec, B, T, offset=jnp.asarray(offset), capacity=S)
        np.testing.assert_array_equal(np.asarray(got), oracle_cached(want, offset, S), err_msg=type(spec).__name__)
    explicit = rng.random((B, T, S)) < 0.5
    got = build_mask(Explicit(jnp.asarray(explicit)), B, T, offset=jnp.asarray(offset), capacity=S)
    written = np.arange(S)[None, None, :] < (offset[:, None, None] + T)
    np.testing.assert_array_equal(np.asarray(got), explicit & written)


def test_segment_ids_block_cross_document_attention():
    seg = jnp.array([[0, 0, 1, 1, 1]])
    m = np.asarray(build_mask(Causal(), 1, 5, segment_ids=seg))
    assert not m[0, 2, 1] and m[0, 3, 2] and m[0, 1, 0]


def test_tree_depths_and_validation():
    parents = jnp.array([-1, 0, 0, 1, 3, -1])
    assert tree_depths(parents).tolist() == [0, 1, 1, 2, 3, 0]
    validate_tree(np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match="parents"):
        validate_tree(np.array([-1, 2, 0]))
    with pytest.raises(ValueError, match="parents"):
        validate_tree(np.array([0, 0]))


def test_explicit_mask_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="explicit mask"):
        build_mask(Explicit(jnp.ones((1, 3, 4), bool)), 1, 3)


@pytest.mark.slow
def test_tree_mask_decoding_of_a_path_equals_causal_decoding():
    """Feed a 7-node tree after a cached prefix; each node's logits equal causal decoding of its root path."""
    m = small_model()
    cfg = m.cfg
    rng = np.random.default_rng(0)
    prefix = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(1, 5)))
    parents = np.array([-1, 0, 0, 1, 1, 2, 4], np.int32)
    nodes = rng.integers(0, cfg.vocab_size, size=7)
    cache = forward(m.params, cfg, prefix, cache=KVCache.init(cfg, 1, 20)).cache
    depth = np.asarray(tree_depths(jnp.asarray(parents)))
    out = forward(
        m.params, cfg, Inputs(tokens=jnp.asarray(nodes)[None], positions=jnp.asarray(5 + depth)[None]),
        cache=cache, mask=Tree(jnp.asarray(parents)),
    )
    for i in range(7):
        path, k = [], i
        while k >= 0:
            path.append(int(nodes[k]))
            k = parents[k]
        seq = jnp.concatenate([prefix, jnp.asarray(path[::-1])[None]], axis=1)
        ref = forward(m.params, cfg, seq).logits[0, -1]
        np.testing.assert_allclose(out.logits[0, i], ref, atol=1e-4)


def test_prefix_mask_changes_only_prefix_positions():
    m = small_model()
    toks = jax.random.randint(jax.random.key(0), (1, 6), 0, m.cfg.vocab_size)
    a = forward(m.params, m.cfg, toks).logits
    b = forward(m.params, m.cfg, toks, mask=Prefix(jnp.array([3]))).logits
    assert not np.allclose(a[:, :2], b[:, :2], atol=1e-5)  # prefix tokens now see the future prefix
    c = forward(m.params, m.cfg, toks, mask=Bidirectional()).logits
    assert not np.allclose(a[:, 0], c[:, 0], atol=1e-5)


@pytest.mark.slow
@settings(max_examples=12)  # each example compiles; 12 cover T < block, T = block, ragged last blocks
@given(T=st.integers(1, 40), block=st.integers(1, 16), packed=st.booleans())
def test_causal_attend_by_blocks_equals_the_full_mask(T, block, packed):
    from tokjax.model.attention import attend, causal_attend

    kq, kk, kv, ks = jax.random.split(jax.random.key(T * 17 + block), 4)
    q = jax.random.normal(kq, (2, T, 4, 8))
    k = jax.random.normal(kk, (2, T, 2, 8))
    v = jax.random.normal(kv, (2, T, 2, 8))
    seg = jnp.sort(jax.random.randint(ks, (2, T), 0, 3), axis=1) if packed else None
    want = attend(q, k, v, build_mask(Causal(), 2, T, segment_ids=seg))
    got = causal_attend(q, k, v, segment_ids=seg, block=block)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # the value equality of blocked attention stays in the default suite
def test_causal_attend_gradients_match_the_full_mask():
    from tokjax.model.attention import attend, causal_attend

    q, k, v = (jax.random.normal(jax.random.key(i), (1, 11, 2, 4)) for i in range(3))
    full = jax.grad(lambda q, k, v: (attend(q, k, v, build_mask(Causal(), 1, 11)) ** 2).sum(), (0, 1, 2))(q, k, v)
    blocked = jax.grad(lambda q, k, v: (causal_attend(q, k, v, block=4) ** 2).sum(), (0, 1, 2))(q, k, v)
    for a, b in zip(full, blocked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_causal_attend_fused_path_equals_the_blocked_one():
    """The GPU path (jax.nn.dot_product_attention, is_causal) checked here through its XLA implementation."""
    from tokjax.model.attention import causal_attend

    q = jax.random.normal(jax.random.key(0), (2, 13, 6, 8))
    k, v = (jax.random.normal(jax.random.key(i), (2, 13, 2, 8)) for i in (1, 2))
    np.testing.assert_allclose(np.asarray(causal_attend(q, k, v, fused=True)),
                               np.asarray(causal_attend(q, k, v, block=4, fused=False)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="segment_ids"):
        causal_attend(q, k, v, segment_ids=jnp.zeros((2, 13), jnp.int32), fused=True)
