"""Tests for tokjax.data.star_graphs: structure, uniqueness, serialisation, grading, no positional leak."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokjax.data._star_graphs import (
    FORMATS, STAR_GRAPH_PRESETS, StarGraph, StarGraphs, check_path, exact_path_match, is_valid_path, star_graphs,
)

# chi-square critical values at p = 0.001, by degrees of freedom
_CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 7: 24.32, 11: 31.26}


def _chi2(counts, probs) -> float:
    counts = np.asarray(counts, float)
    exp = counts.sum() * np.asarray(probs, float)
    return float(((counts - exp) ** 2 / exp).sum())


# ----------------------------------------------------------------------------- oracles


def _graph_of(ex: StarGraph):
    out, inc = collections.defaultdict(list), collections.defaultdict(list)
    for u, v in ex.edges:
        out[u].append(v)
        inc[v].append(u)
    nodes = {x for e in ex.edges for x in e}
    return nodes, out, inc


def _all_paths(out, src, dst):
    """Every directed simple path src -> dst (brute-force DFS)."""
    found, stack = [], [[src]]
    while stack:
        p = stack.pop()
        if p[-1] == dst:
            found.append(tuple(p))
            continue
        for v in out[p[-1]]:
            if v not in p:
                stack.append(p + [v])
    return found


def _check_structure(ex: StarGraph, degree, lo, hi, mpl, num_nodes):
    nodes, out, inc = _graph_of(ex)
    assert len(set(ex.edges)) == len(ex.edges)
    assert all(0 <= x < num_nodes for x in nodes)
    # a tree: |V| = |E| + 1 and connected (undirected)
    assert len(nodes) == len(ex.edges) + 1
    seen, todo = {ex.centre}, [ex.centre]
    while todo:
        x = todo.pop()
        for y in out[x] + inc[x]:
            if y not in seen:
                seen.add(y)
                todo.append(y)
    assert seen == nodes
    # the centre branches `degree` ways; every other node is on a chain
    assert len(out[ex.centre]) == degree
    assert all(len(out[x]) <= 1 and len(inc[x]) <= 1 for x in nodes if x != ex.centre)
    leaves = [x for x in nodes if not out[x]]
    assert len(leaves) == degree and ex.goal in leaves  # the goal ends an arm
    for first in out[ex.centre]:  # each branch after the centre
        arm, x = [first], first
        while out[x]:
            x = out[x][0]
            arm.append(x)
        assert (mpl or lo - 1) <= len(arm) <= hi - 1
        if mpl is None and lo == hi:
            assert len(arm) == lo - 1
    if mpl is None:
        assert ex.source == ex.centre and not inc[ex.centre]
        assert len(ex.edges) >= degree * (lo - 1)
    else:
        assert ex.source == ex.centre or not inc[ex.source]
    assert degree * (lo - 1) <= len(ex.edges) <= degree * (hi - 1)
    # the gold path: valid, unique, through the centre, long enough after it
    assert lo <= len(ex.path) <= hi
    assert ex.path[0] == ex.source and ex.path[-1] == ex.goal and ex.centre in ex.path
    assert len(ex.path) - 1 - ex.path.index(ex.centre) >= (mpl or lo - 1)
    assert _all_paths(out, ex.source, ex.goal) == [ex.path]


def _expected_text(ex: StarGraph):
    e = ex.edges
    if ex.format == "nodes":
        prompt = "[bos] " + " | ".join(f"{u} {v}" for u, v in e) + f" / {ex.source} {ex.goal} ="
        target = " ".join(map(str, ex.path)) + " [eos]"
    else:
        prompt = "[bos] " + " ".join(f"{u} {v}" for u, v in e) + f" {ex.source} {ex.goal} ="
        target = " ".join(f"{a} {b}" for a, b in zip(ex.path[:-1], ex.path[1:])) + " [eos]"
    return prompt, target


def _wrong_arm(ex: StarGraph) -> list[int]:
    """The path that follows another branch from the centre to its leaf."""
    _, out, _ = _graph_of(ex)
    k = ex.path.index(ex.centre)
    nxt = next(v for v in out[ex.centre] if v != ex.path[k + 1])
    p = list(ex.path[: k + 1]) + [nxt]
    while out[p[-1]]:
        p.append(out[p[-1]][0])
    return p


def _tokens(ex: StarGraph, nodes: list[int]) -> list[int]:
    body = nodes if ex.format == "nodes" else [x for a, b in zip(nodes[:-1], nodes[1:]) for x in (a, b)]
    return body + [ex.vocab.eos]


# ----------------------------------------------------------------------------- tests


def test_presets_are_the_official_settings():
    assert STAR_GRAPH_PRESETS["easy"] == {"degree": 3, "path_length": (5, 5), "min_plan_length": None, "num_nodes": 20}
    assert STAR_GRAPH_PRESETS["medium"] == {"degree": 3, "path_length": (3, 6), "min_plan_length": 2, "num_nodes": 20}
    assert STAR_GRAPH_PRESETS["hard"] == {"degree": 5, "path_length": (6, 12), "min_plan_length": 5, "num_nodes": 56}
    assert STAR_GRAPH_PRESETS["mlmu"] == {"degree": 2, "path_length": (5, 5), "min_plan_length": None, "num_nodes": 50}


@pytest.mark.parametrize("difficulty", sorted(STAR_GRAPH_PRESETS))
def test_presets_structure_and_shapes(difficulty):
    g = star_graphs(200, difficulty=difficulty, seed=3)
    pre = STAR_GRAPH_PRESETS[difficulty]
    lo, hi = pre["path_length"]
    assert isinstance(g, StarGraphs) and len(g) == 200
    E = pre["degree"] * (hi - 1)
    assert g.edges.shape == (200, E, 2) and g.path.shape == (200, hi)
    assert g.prompt.shape == (200, 3 * E + 4) and g.target.shape == (200, hi + 1)
    assert g.vocab.size == pre["num_nodes"] + 6
    for i in range(len(g)):
        _check_structure(g[i], pre["degree"], lo, hi, pre["min_plan_length"], pre["num_nodes"])
    if lo == hi:  # fixed sizes: every row is full
        assert (g.prompt_lengths == g.prompt.shape[1]).all() and (g.target_lengths == g.target.shape[1]).all()
        assert (g.num_edges == E).all()


def test_easy_is_a_star_with_equal_arms():
    g = star_graphs(300, difficulty="easy", seed=1)
    for i in range(len(g)):
        ex = g[i]
        nodes, out, inc = _graph_of(ex)
        assert len(ex.edges) == 3 * 4 and len(nodes) == 13  # every node distinct
        assert ex.source == ex.centre and len(out[ex.centre]) == 3 and not inc[ex.centre]
        for first in out[ex.centre]:
            arm = [first]
            while out[arm[-1]]:
                arm.append(out[arm[-1]][0])
            assert len(arm) == 4  # path_length 5 nodes counting the centre
        assert ex.path[-1] == ex.goal and not out[ex.goal] and len(ex.path) == 5


def test_medium_follows_the_official_length_and_join_rule():
    """L ~ U{3..6} per path; the centre's index on the gold path J ~ U{0..L-3} (min_plan_length 2)."""
    g = star_graphs(8000, difficulty="medium", seed=7)
    L = g.path_lengths
    J = np.array([list(g.path[i, : L[i]]).index(g.centre[i]) for i in range(len(g))])
    keys = [(ln, j) for ln in range(3, 7) for j in range(ln - 2)]
    probs = [0.25 / (ln - 2) for ln, _ in keys]
    counts = collections.Counter(zip(L.tolist(), J.tolist()))
    assert set(counts) <= set(keys)
    # df = 13 cells - 1 = 12; critical 32.91 at p = 0.001
    assert _chi2([counts[k] for k in keys], probs) < 32.91
    # not the simple star: the source is upstream of the centre in a good share of graphs
    assert 0.3 < float(np.mean(g.source != g.centre)) < 0.7


def test_deterministic_and_formats_share_graphs():
    a = star_graphs(50, difficulty="medium", seed=5)
    b = star_graphs(50, difficulty="medium", seed=5)
    c = star_graphs(50, difficulty="medium", seed=6)
    d = star_graphs(50, difficulty="medium", seed=5, format="pairs")
    for f in ("edges", "source", "goal", "centre", "path", "prompt", "target", "prompt_lengths"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.edges, c.edges)
    for f in ("edges", "source", "goal", "centre", "path"):
        np.testing.assert_array_equal(getattr(a, f), getattr(d, f))
    # a prefix of a batch is not required, but n=0 works
    assert len(star_graphs(0, difficulty="hard")) == 0


def test_labels_are_random_per_graph():
    g = star_graphs(2000, difficulty="easy", seed=0)
    # every label appears as the source, with roughly uniform frequency (no memorisable ids)
    counts = np.bincount(g.source, minlength=20)
    assert _chi2(counts, np.full(20, 1 / 20)) < 45.31  # df 19, p = 0.001


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_serialisation_layout_and_round_trip(fmt, difficulty):
    g = star_graphs(20, difficulty=difficulty, format=fmt, seed=2)
    v = g.vocab
    for i in range(len(g)):
        ex = g[i]
        prompt_text, target_text = _expected_text(ex)
        assert v.to_text(ex.prompt) == prompt_text
        assert v.to_text(ex.target) == target_text
        np.testing.assert_array_equal(v.encode(prompt_text), ex.prompt)
        np.testing.assert_array_equal(v.encode(v.decode(g.prompt[i])), g.prompt[i])  # pads kept by decode
        np.testing.assert_array_equal(v.encode(v.to_text(g.target[i], skip_pad=False)), g.target[i])
        assert (g.prompt[i, ex.prompt.size:] == v.pad).all() and (g.target[i, ex.target.size:] == v.pad).all()
    batch = g.lm_batch()
    for i in range(len(g)):
        pl, ln = int(batch["prompt_lengths"][i]), int(batch["lengths"][i])
        np.testing.assert_array_equal(batch["tokens"][i, :pl], g[i].prompt)
        np.testing.assert_array_equal(batch["tokens"][i, pl:ln], g[i].target)
        assert (batch["tokens"][i, ln:] == v.pad).all()


def test_vocab_ids_and_errors():
    v = star_graphs(1, difficulty="easy").vocab
    assert (v.pad, v.bos, v.sep, v.query, v.path_start, v.eos, v.size) == (20, 21, 22, 23, 24, 25, 26)
    with pytest.raises(ValueError, match="unknown star-graph token"):
        v.encode("[bos] 20")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.to_text([3, 26])


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_path_gold_true_wrong_arm_false(fmt):
    g = star_graphs(40, difficulty="medium", format=fmt, seed=11)
    v = g.vocab
    T = 2 * g.target.shape[1]  # room for a longer wrong arm
    preds = np.full((len(g), T), v.pad, np.int32)
    for i in range(len(g)):
        ex = g[i]
        gold = _tokens(ex, list(ex.path))
        wrong = _tokens(ex, _wrong_arm(ex))
        assert check_path(ex, gold) and is_valid_path(ex, gold)
        assert check_path(ex, gold[:-1])  # no [eos]: read to the end
        assert check_path(ex, gold + [v.bos, 3])  # ignored after [eos]
        assert not check_path(ex, wrong) and not is_valid_path(ex, wrong)
        assert not check_path(ex, gold[:-2] + [v.eos])  # stops short
        assert not check_path(ex, gold[:-1] + gold[-2:])  # overshoots
        row = gold if i % 2 == 0 else (wrong if i % 4 == 1 else gold[:-1] + gold[-2:])  # gold / wrong / overshoot
        preds[i, : len(row)] = row
    got = check_path(g, preds)
    np.testing.assert_array_equal(got, np.arange(len(g)) % 2 == 0)
    np.testing.assert_array_equal(is_valid_path(g, preds), got)
    np.testing.assert_array_equal(check_path(g, g.target), np.ones(len(g), bool))
    assert not check_path(g, g.target[:, :2]).any()  # every gold path is longer than one token
    # jit-compatible core
    import jax

    jit_match = jax.jit(exact_path_match, static_argnums=(3, 4))
    np.testing.assert_array_equal(np.asarray(jit_match(g.target, g.target_lengths, preds, v.eos, v.pad)), got)


@pytest.mark.parametrize("fmt", FORMATS)
def test_check_path_agrees_with_validity_on_random_walks(fmt):
    """Any walk from the source along the edges to a leaf is valid iff it hits the goal iff it is the gold."""
    g = star_graphs(150, difficulty="hard", format=fmt, seed=4)
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(len(g)):
        ex = g[i]
        _, out, _ = _graph_of(ex)
        walk = [ex.source]
        while out[walk[-1]]:
            walk.append(int(rng.choice(out[walk[-1]])))
        toks = _tokens(ex, walk)
        ok = check_path(ex, toks)
        assert ok == is_valid_path(ex, toks) == (walk[-1] == ex.goal) == (tuple(walk) == ex.path)
        hits += ok
    assert 0 < hits < len(g)
    # invalid token sequences: non-edges, wrong start, bad pairs
    ex = g[0]
    assert not is_valid_path(ex, _tokens(ex, [ex.source, ex.goal]))
    assert not is_valid_path(ex, _tokens(ex, list(ex.path[1:])))


@given(
    degree=st.integers(2, 5),
    lo=st.integers(2, 6),
    extra_len=st.integers(0, 4),
    plan=st.one_of(st.none(), st.integers(1, 5)),
    extra_nodes=st.integers(0, 10),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_structure_over_parameters(degree, lo, extra_len, plan, extra_nodes, fmt, seed):
    hi = lo + extra_len
    mpl = None if plan is None else min(plan, lo - 1)
    num_nodes = degree * (hi - 1) + 1 + extra_nodes
    g = star_graphs(6, difficulty=None, degree=degree, path_length=(lo, hi), num_nodes=num_nodes,
                    min_plan_length=mpl, format=fmt, seed=seed)
    assert g.vocab.size == num_nodes + 6
    for i in range(len(g)):
        ex = g[i]
        _check_structure(ex, degree, lo, hi, mpl, num_nodes)
        assert check_path(ex, ex.target) and is_valid_path(ex, ex.target)
        assert not check_path(ex, _tokens(ex, _wrong_arm(ex)))
        p, t = _expected_text(ex)
        assert g.vocab.to_text(ex.prompt) == p and g.vocab.to_text(ex.target) == t
    assert check_path(g, g.target).all()


def test_goal_arm_position_is_uniform():
    """From the prompt alone the answer is not in the layout: the gold arm's slot is uniform."""
    g = star_graphs(12000, difficulty="easy", seed=9)
    E = g.edges.shape[1]
    first = (g.edges[:, :, 0] == g.source[:, None]) & (g.edges[:, :, 1] == g.path[:, 1][:, None])
    last = (g.edges[:, :, 0] == g.path[:, 3][:, None]) & (g.edges[:, :, 1] == g.goal[:, None])
    assert (first.sum(1) == 1).all() and (last.sum(1) == 1).all()
    for hit in (first, last):
        counts = np.bincount(hit.argmax(1), minlength=E)
        assert _chi2(counts, np.full(E, 1 / E)) < _CHI2_999[E - 1]
    # the test has power: an unshuffled list (gold arm written first) fails it
    assert _chi2(np.bincount(np.zeros(500, int), minlength=E), np.full(E, 1 / E)) > _CHI2_999[E - 1]
    # the goal's label does not single it out among the arm ends (rank by label uniform)
    leaves = np.stack([g.edges[i][~np.isin(g.edges[i][:, 1], g.edges[i][:, 0]), 1] for i in range(2000)])
    rank = (leaves < g.goal[:2000, None]).sum(1)
    assert _chi2(np.bincount(rank, minlength=3), np.full(3, 1 / 3)) < _CHI2_999[2]


def test_gold_branch_order_at_centre_is_uniform_medium():
    """Among the centre's outgoing edges, in prompt order, the gold branch's rank is uniform (medium)."""
    g = star_graphs(6000, difficulty="medium", seed=10)
    ranks = []
    for i in range(len(g)):
        k = list(g.path[i]).index(g.centre[i])
        outs = [int(v) for u, v in g.edges[i, : g.num_edges[i]] if u == g.centre[i]]
        ranks.append(outs.index(int(g.path[i, k + 1])))
    assert _chi2(np.bincount(ranks, minlength=3), np.full(3, 1 / 3)) < _CHI2_999[2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"difficulty": "extreme"}, "unknown difficulty"),
        ({"difficulty": None, "degree": 3, "path_length": 5}, "num_nodes is required"),
        ({"degree": 1}, "degree must be >= 2"),
        ({"path_length": 1}, "path_length .* must be >= 2"),
        ({"path_length": (5, 4)}, "min <= max"),
        ({"path_length": (3, 4, 5)}, "int or a \\(min, max\\) pair"),
        ({"num_nodes": 12}, "num_nodes=12 is too small"),
        ({"difficulty": "hard", "num_nodes": 55}, "56 distinct node labels"),
        ({"difficulty": "medium", "min_plan_length": 3}, "min_plan_length must be in .* = \\[1, 2\\]"),
        ({"difficulty": "medium", "min_plan_length": 0}, "min_plan_length must be in"),
        ({"format": "text"}, "format must be one of"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"degree": 2.5}, "degree must be"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        star_graphs(4, **kwargs)


def test_bad_predictions_raise():
    g = star_graphs(3, difficulty="easy")
    with pytest.raises(ValueError, match="must be \\[n=3"):
        check_path(g, g.target[:2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        check_path(g, g.target + 100)
    with pytest.raises(ValueError, match="integer token ids"):
        check_path(g, g.target.astype(float))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        check_path(g[0], [1, 2, -1])
    with pytest.raises(ValueError, match="StarGraph or StarGraphs"):
        is_valid_path("graph", [1, 2])
    with pytest.raises(ValueError, match="n must be >= 0"):
        star_graphs(-1)
