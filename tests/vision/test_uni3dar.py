"""Tests of P53 Uni-3DAR (tokjax.vision.uni3dar): octree round trip against a brute-force BFS oracle, batch
layouts against numpy oracles, decoded likelihood = teacher-forced, the registered loss, bad inputs."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.losses.registry import make_loss
from tokjax.model import Model, ModelConfig
from tokjax.vision.uni3dar import (OctreeTokens, make_uni3dar_loss, octree_decode, octree_decoder, octree_encode,
                                   sample_octrees, sequence_lengths, uni3dar, uni3dar_batch, uni3dar_init,
                                   uni3dar_logits, uni3dar_token_logp)


def _oracle(occ: np.ndarray, depth: int) -> list[tuple[int, int, tuple]]:
    """Brute force: every non-empty cell of every level D..1 as (level, code, cell), sorted by level (coarse
    first) then Morton code (axis 0 least significant), code = child occupancy bits - 1."""
    d = occ.ndim
    nodes = []
    for level in range(depth, 0, -1):
        side = 1 << level
        for cell in itertools.product(range(occ.shape[0] // side), repeat=d):
            block = occ[tuple(slice(c * side, (c + 1) * side) for c in cell)]
            if not block.any():
                continue
            code = 0
            for j in range(1 << d):
                off = [(j >> a) & 1 for a in range(d)]
                half = side // 2
                sub = block[tuple(slice(o * half, (o + 1) * half) for o in off)]
                code |= int(sub.any()) << j
            morton = sum(((cell[a] >> b) & 1) << (b * d + a) for a in range(d) for b in range(depth))
            nodes.append((-level, morton, code - 1, cell))
    nodes.sort()
    return [(-lv, code, cell) for lv, _, code, cell in nodes]


@settings(max_examples=40, deadline=None)
@given(dims=st.sampled_from([2, 3]), depth=st.integers(1, 3), data=st.data())
def test_round_trip_and_bfs_morton_oracle(dims, depth, data):
    if dims == 3 and depth == 3:
        depth = 2
    spec = uni3dar(dims, depth)
    g = spec.grid
    n = data.draw(st.integers(1, 3))
    p = data.draw(st.floats(0.05, 0.6))
    seed = data.draw(st.integers(0, 2**16))
    occ = np.random.default_rng(seed).random((n,) + (g,) * dims) < p
    occ.reshape(n, -1)[:, 0] |= ~occ.reshape(n, -1).any(1)  # non-empty
    tok = octree_encode(occ, spec)
    assert np.array_equal(octree_decode(tok.codes, tok.num_nodes, spec), occ)
    for i in range(n):
        want = _oracle(occ[i], depth)
        k = int(tok.num_nodes[i])
        assert k == len(want)
        assert tok.codes[i, :k].tolist() == [c for _, c, _ in want]
        assert tok.levels[i, :k].tolist() == [lv for lv, _, _ in want]
        assert [tuple(c) for c in tok.coords[i, :k].tolist()] == [tuple(c) for _, _, c in want]
        assert (tok.codes[i, k:] == -1).all()


def test_sequence_lengths_exact():
    spec = uni3dar(3, 3)
    occ = np.zeros((2, 8, 8, 8), bool)
    occ[0, 5, 2, 7] = True  # one point: one token per level
    occ[1] = True  # full grid: the complete tree
    lens = sequence_lengths(occ, spec)
    assert lens["octree"].tolist() == [3, spec.max_nodes] and spec.max_nodes == 1 + 8 + 64
    assert lens["octree_plain"].tolist() == [24, 8 * 73]
    assert lens["raster"].tolist() == [512, 512] and lens["masked"].tolist() == [6, 146]


def _tokens():
    spec = uni3dar(2, 2, num_classes=3)
    occ = np.zeros((2, 4, 4), bool)
    occ[0, 0, 0] = occ[0, 3, 1] = True
    occ[1, 1:3, 1:3] = True
    return spec, octree_encode(occ, spec, width=6), np.array([2, 0])


def test_batch_layouts_match_numpy_oracle():
    spec, tok, labels = _tokens()
    vocab = spec.vocab
    n = tok.num_nodes
    centres = np.where(tok.levels[..., None] > 0, (1 << tok.levels)[..., None] * (2 * tok.coords + 1), 0)
    m = uni3dar_batch(tok, labels, spec, masked=True)
    p = uni3dar_batch(tok, labels, spec, masked=False)
    W = 6
    for b in range(2):
        k = int(n[b])
        # masked: [class, (MASK, t_i) ...], loss on the queries, both slots of a pair at node i's centre and level
        inp, tgt, msk = (np.asarray(m[key][b]) for key in ("inputs", "targets", "mask"))
        assert inp[0] == vocab.class_start + labels[b]
        assert (inp[1:2 * k:2] == vocab.mask_id).all() and (inp[2:2 * k + 1:2] == tok.codes[b, :k]).all()
        assert (tgt[1:2 * k:2] == tok.codes[b, :k]).all()
        assert np.flatnonzero(msk).tolist() == list(range(1, 2 * k, 2))
        pos, lev = np.asarray(m["positions"][b]), np.asarray(m["levels"][b])
        assert (pos[0] == 0).all() and lev[0] == 0
        assert (pos[1:2 * k:2] == centres[b, :k]).all() and (pos[2:2 * k + 1:2] == centres[b, :k]).all()
        assert (lev[1:2 * k:2] == tok.levels[b, :k]).all() and (lev[2:2 * k + 1:2] == tok.levels[b, :k]).all()
        assert m["inputs"].shape == (2, 1 + 2 * W)
        # plain: [class, t_0 ...], slot i predicts t_i
        inp, tgt, msk = (np.asarray(p[key][b]) for key in ("inputs", "targets", "mask"))
        assert (inp[1:k + 1] == tok.codes[b, :k]).all() and (tgt[:k] == tok.codes[b, :k]).all()
        assert np.flatnonzero(msk).tolist() == list(range(k))
        assert (np.asarray(p["positions"][b])[1:k + 1] == centres[b, :k]).all()
        assert p["inputs"].shape == (2, 1 + W)


@pytest.fixture(scope="module")
def small():
    spec = uni3dar(2, 2, num_classes=3)
    cfg = ModelConfig(vocab_size=spec.vocab.size, d_model=16, n_layers=1, n_heads=2, pos_dims=2, max_len=32)
    return spec, cfg, uni3dar_init(cfg, jax.random.key(0), spec)


def test_query_logits_do_not_see_their_own_token(small):
    spec, cfg, params = small
    _, tok, labels = _tokens()
    tok = OctreeTokens(*tok)
    z = np.asarray(uni3dar_logits(params, cfg, uni3dar_batch(tok, labels, spec, masked=True), spec))
    codes = tok.codes.copy()
    codes[:, 1] = (codes[:, 1] + 1) % spec.num_codes  # change token 1's value (both rows have >= 3 tokens)
    z2 = np.asarray(uni3dar_logits(params, cfg, uni3dar_batch(tok._replace(codes=codes), labels, spec, masked=True),
                                   spec))
    # query 1 (slot 3) predicts t_1 (slot 4) without seeing it; query 2 (slot 5) reads it
    np.testing.assert_array_equal(z2[:, :4], z[:, :4])
    assert not np.allclose(z2[:, 5, :spec.num_codes], z[:, 5, :spec.num_codes])


@pytest.mark.parametrize("masked", [True, False])
def test_decoded_likelihood_equals_teacher_forced(small, masked):
    spec, cfg, params = small
    labels = np.array([0, 1, 2, 0, 1])
    out = sample_octrees(Model(params, cfg), octree_decoder(spec, masked=masked), labels, jax.random.key(3))
    assert out.occupancy.shape == (5, 4, 4) and out.occupancy.reshape(5, -1).any(1).all()
    assert np.array_equal(octree_decode(out.tokens.codes, out.tokens.num_nodes, spec), out.occupancy)
    batch = uni3dar_batch(out.tokens, labels, spec, masked=masked)
    tf = np.asarray(uni3dar_token_logp(params, cfg, batch, spec)).sum(1)
    np.testing.assert_allclose(out.logprobs.sum(1), tf, rtol=1e-5, atol=1e-4)
    assert int(out.stats["forward_calls"]) == int(out.tokens.num_nodes.max())


def test_registered_loss_is_the_module_loss(small):
    spec, cfg, params = small
    _, tok, labels = _tokens()
    batch = uni3dar_batch(tok, labels, spec, masked=True)
    reg = make_loss("uni3dar", dims=2, depth=2, num_classes=3)
    a, ma = reg(params, cfg, batch, None)
    b, mb = make_uni3dar_loss(spec)(params, cfg, batch, None)
    assert float(a) == float(b)
    lp = np.asarray(uni3dar_token_logp(params, cfg, batch, spec))
    np.testing.assert_allclose(float(mb["nll_per_structure"]), -lp.sum(1).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(b), -lp.sum() / tok.num_nodes.sum(), rtol=1e-6)


def test_bad_inputs_raise(small):
    spec, cfg, params = small
    with pytest.raises(ValueError, match="dims must be 2"):
        uni3dar(4, 2)
    with pytest.raises(ValueError, match="empty grid"):
        octree_encode(np.zeros((1, 4, 4), bool), spec)
    with pytest.raises(ValueError, match="occupancy must be"):
        octree_encode(np.ones((1, 8, 8), bool), spec)
    with pytest.raises(ValueError, match="boolean"):
        octree_encode(np.full((1, 4, 4), 2), spec)
    tok = octree_encode(np.ones((1, 4, 4), bool), spec)
    with pytest.raises(ValueError, match="width"):
        octree_encode(np.ones((1, 4, 4), bool), spec, width=2)
    with pytest.raises(ValueError, match=r"codes must lie in"):
        octree_decode(np.array([[15, 0, 0, 0, 0]]), np.array([5]), spec)
    with pytest.raises(ValueError, match="end before"):
        octree_decode(tok.codes, np.array([3]), spec)
    with pytest.raises(ValueError, match="trees end after"):
        octree_decode(np.array([[0, 0, 0]]), np.array([3]), spec)  # root with one child, which has one: 2 tokens
    with pytest.raises(ValueError, match="labels must be"):
        uni3dar_batch(tok, np.array([0, 1]), spec, masked=True)
    with pytest.raises(ValueError, match="class labels"):
        uni3dar_batch(tok, np.array([3]), spec, masked=True)
    with pytest.raises(ValueError, match="pos_dims must be 2"):
        uni3dar_init(cfg.replace(pos_dims=1), jax.random.key(0), spec)
    with pytest.raises(ValueError, match="vocab_size"):
        uni3dar_init(cfg.replace(vocab_size=10), jax.random.key(0), spec)
    no_table = {k: v for k, v in params.items() if k != "uni3dar"}
    with pytest.raises(ValueError, match="uni3dar_init"):
        uni3dar_token_logp(no_table, cfg, uni3dar_batch(tok, np.array([0]), spec, masked=True), spec)
    with pytest.raises(ValueError, match="labels must be integers"):
        sample_octrees(Model(params, cfg), octree_decoder(spec), np.array([0.5]), jax.random.key(0))
