"""KVCache operations: rollback, gather (tree compaction) and fork equal never having decoded the rest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax import Inputs, KVCache, forward
from tokjax.model import Tree, tree_depths
from tests.model._models import small_model


def _decode(m, cache, toks):
    out = forward(m.params, m.cfg, toks, cache=cache)
    return out.logits, out.cache


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_rollback_then_redecode_equals_never_decoding():
    m = small_model()
    cfg = m.cfg
    rng = np.random.default_rng(1)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 6)))
    junk = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 4)))
    nxt = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 3)))
    _, c0 = _decode(m, KVCache.init(cfg, 2, 20), prompt)
    _, c1 = _decode(m, c0, junk)
    # ragged rollback: row 0 keeps one junk token, row 1 none
    c1 = c1.rollback(jnp.array([7, 6]))
    assert np.asarray(c1.lengths).tolist() == [[7, 6]] * cfg.n_layers
    got, _ = _decode(m, c1, nxt)
    ref0 = forward(m.params, cfg, jnp.concatenate([prompt[:1], junk[:1, :1], nxt[:1]], 1)).logits[0, -3:]
    ref1 = forward(m.params, cfg, jnp.concatenate([prompt[1:], nxt[1:]], 1)).logits[0, -3:]
    np.testing.assert_allclose(got[0], ref0, atol=1e-4)
    np.testing.assert_allclose(got[1], ref1, atol=1e-4)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_gather_compacts_an_accepted_tree_path():
    m = small_model()
    cfg = m.cfg
    rng = np.random.default_rng(2)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 5)))
    parents = jnp.array([-1, 0, 0, 1, 2, 4])
    nodes = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 6)))
    _, c0 = _decode(m, KVCache.init(cfg, 2, 20), prompt)
    pos = 5 + tree_depths(parents)
    out = forward(m.params, cfg, Inputs(tokens=nodes, positions=jnp.broadcast_to(pos, (2, 6))), cache=c0, mask=Tree(parents))
    # row 0 accepts path 0 -> 2 -> 4 -> 5, row 1 accepts path 0 -> 1
    src = jnp.array([[0, 2, 4, 5], [0, 1, 0, 0]])
    count = jnp.array([4, 2])
    c = out.cache.gather(jnp.array([5, 5]), src, count)
    assert np.asarray(c.lengths).tolist() == [[9, 7]] * cfg.n_layers
    nxt = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 1)))
    got, _ = _decode(m, c, nxt)
    path0 = nodes[0, jnp.array([0, 2, 4, 5])]
    path1 = nodes[1, jnp.array([0, 1])]
    ref0 = forward(m.params, cfg, jnp.concatenate([prompt[0], path0, nxt[0]])[None]).logits[0, -1]
    ref1 = forward(m.params, cfg, jnp.concatenate([prompt[1], path1, nxt[1]])[None]).logits[0, -1]
    np.testing.assert_allclose(got[0, 0], ref0, atol=1e-4)
    np.testing.assert_allclose(got[1, 0], ref1, atol=1e-4)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_fork_repeats_rows_and_branches_decode_independently():
    m = small_model()
    cfg = m.cfg
    rng = np.random.default_rng(3)
    prompt = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 4)))
    _, c = _decode(m, KVCache.init(cfg, 2, 10), prompt)
    f = c.fork(3)
    assert f.batch == 6 and np.asarray(f.lengths).tolist() == [[4, 4, 4, 4, 4, 4]] * cfg.n_layers
    branches = jnp.asarray(rng.integers(0, cfg.vocab_size, (6, 2)))
    got, _ = _decode(m, f, branches)
    for r in range(6):
        ref = forward(m.params, cfg, jnp.concatenate([prompt[r // 3], branches[r]])[None]).logits[0, -2:]
        np.testing.assert_allclose(got[r], ref, atol=1e-4)
    with pytest.raises(ValueError, match="repeats"):
        c.fork(0)


def test_append_matches_forward_writes_and_select_rows():
    cfg = small_model().cfg
    c = KVCache.init(cfg, 2, 8)
    k = jnp.ones((cfg.n_layers, 2, 3, cfg.kv_heads, cfg.head_size))
    c2 = c.append(k, 2 * k)
    assert np.asarray(c2.length).tolist() == [3, 3]
    k_all, v_all = c2.stacked()
    assert k_all.shape == (cfg.n_layers, 2, 8, cfg.kv_heads, cfg.head_size)
    assert float(k_all[:, :, :3].min()) == 1.0 and float(k_all[:, :, 3:].max()) == 0.0
    assert float(v_all[:, :, :3].min()) == 2.0
    c3 = c2.select_rows(jnp.array([1]))
    assert c3.batch == 1
    with pytest.raises(ValueError, match="batch"):
        KVCache.init(cfg, 0, 8)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_per_layer_lengths_mask_unwritten_slots():
    """A layer whose cache lags (layer-range forward) never reads the other layers' newer slots."""
    m = small_model()
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(5), (1, 6), 0, cfg.vocab_size)
    c = forward(m.params, cfg, toks[:, :4], cache=KVCache.init(cfg, 1, 10)).cache
    lo = forward(m.params, cfg, toks[:, 4:5], cache=c, layers=(0, 1), compute_logits=False).cache
    assert np.asarray(lo.lengths)[:, 0].tolist() == [5, 4, 4]
    # poison the unwritten slot 4 of layers 1.. : results must not change
    poison = lambda bufs: bufs[:1] + tuple(b.at[:, :, 4].set(1e4) for b in bufs[1:])  # noqa: E731
    poisoned = lo.replace(k=poison(lo.k), v=poison(lo.v))
    a = forward(m.params, cfg, Inputs(tokens=toks[:, 4:5]), cache=c)
    h = forward(m.params, cfg, toks[:, 4:5], cache=c, layers=(0, 1), compute_logits=False).hidden
    b = forward(m.params, cfg, Inputs(hidden=h), cache=poisoned, layers=(1, 3))
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA CPU's compiled decode step")
@pytest.mark.parametrize("batch,block", [(1, 1), (1, 3), (2, 1)])
def test_decode_step_updates_cache_buffers_in_place(batch, block):
    """A jitted decode step with a donated cache compiles to no copy of any cache buffer.

    Regression: a batch-1 one-token write was rewritten by XLA into a dynamic-update-slice that
    got duplicated into the attention read, copying every buffer several times per layer."""
    from tokjax.model import unstack_layers

    m = small_model()
    cfg = m.cfg
    S = 40
    params = unstack_layers(m.params, fuse=True)

    def step(params, cache, toks):
        out = forward(params, cfg, toks, cache=cache)
        return out.logits, out.cache

    cache = KVCache.init(cfg, batch, S)
    toks = jnp.zeros((batch, block), jnp.int32)
    hlo = jax.jit(step, donate_argnums=1).lower(params, cache, toks).compile().as_text()
    buf = f"f32[{batch},{cfg.kv_heads},{S},{cfg.head_size}]"
    copies = [line for line in hlo.splitlines() if " copy(" in line and line.split("=", 1)[-1].strip().startswith(buf)]
    assert not copies, f"{len(copies)} cache-buffer copies in the compiled step, e.g. {copies[0][:160]}"


def test_prefill_equals_writing_the_prompt_through_the_cache_path():
    """prefill (cache-free forward + tapped keys/values) holds what a cached forward writes."""
    from tokjax.model import prefill

    m = small_model(seed=3)
    toks = jax.random.randint(jax.random.key(1), (2, 9), 0, m.cfg.vocab_size)
    lens = jnp.array([9, 5])
    got = prefill(m.params, m.cfg, toks, lens, 20)
    ref = forward(m.params, m.cfg, Inputs(tokens=toks), cache=KVCache.init(m.cfg, 2, 20), compute_logits=False).cache
    assert got.capacity == 20 and np.array_equal(got.lengths, np.broadcast_to(lens - 1, got.lengths.shape))
    for a, b in zip(got.k + got.v, ref.k + ref.v):  # two XLA programs: float32 rounding may differ (FMA contraction)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        assert not np.asarray(a)[:, :, 9:].any()  # slots past the prompt stay empty
    with pytest.raises(ValueError, match="capacity 8 is too small"):
        prefill(m.params, m.cfg, toks, lens, 8)
