"""Tests for maze generation and BFS shortest paths."""

import collections

import numpy as np
import pytest

from tokjax.data import MOVES, mazes


def _neighbours(grid, size, cell):
    r, c = cell
    for dr, dc in MOVES.values():
        nr, nc = r + dr, c + dc
        if 0 <= nr < size and 0 <= nc < size and not grid[2 * r + 1 + dr, 2 * c + 1 + dc]:
            yield (nr, nc)


def _distances(grid, size, start):
    dist = {start: 0}
    q = collections.deque([start])
    while q:
        cell = q.popleft()
        for nb in _neighbours(grid, size, cell):
            if nb not in dist:
                dist[nb] = dist[cell] + 1
                q.append(nb)
    return dist


@pytest.mark.parametrize("size", [2, 3, 7, 12])
def test_mazes_are_perfect_and_paths_shortest(size):
    for m in mazes(15, size, seed=size):
        g = m.grid
        assert g.shape == (2 * size + 1, 2 * size + 1) and g.dtype == bool
        assert g[0].all() and g[-1].all() and g[:, 0].all() and g[:, -1].all()
        assert not g[1::2, 1::2].any()  # every cell open
        assert g[::2, ::2].all()  # every corner post is wall
        passages = (~g).sum() - size * size
        assert passages == size * size - 1  # spanning tree edge count
        dist = _distances(g, size, m.start)
        assert len(dist) == size * size  # connected
        assert m.start != m.goal
        path = [tuple(p) for p in m.path.tolist()]
        assert path[0] == m.start and path[-1] == m.goal
        assert len(path) == len(m.moves) + 1 == dist[m.goal] + 1
        for a, b, mv in zip(path[:-1], path[1:], m.moves):
            assert b in set(_neighbours(g, size, a))
            assert (b[0] - a[0], b[1] - a[1]) == MOVES[mv]
        assert m.solves(m.completion) and m.solves(list(m.moves))


def test_text_serialisation():
    m = mazes(1, 4, seed=0)[0]
    lines = m.prompt.rstrip("\n").split("\n")
    assert len(lines) == 9 and all(len(l) == 9 for l in lines)
    assert set(m.prompt) <= set("#.SG\n")
    assert m.prompt.count("S") == 1 and m.prompt.count("G") == 1
    assert lines[2 * m.start[0] + 1][2 * m.start[1] + 1] == "S"
    assert lines[2 * m.goal[0] + 1][2 * m.goal[1] + 1] == "G"
    assert set(m.completion.split()) <= set("UDLR")
    assert m.text == m.prompt + m.completion
    drawn = m.render(with_path=True)
    assert drawn.count("*") == 2 * len(m.moves) - 1


def test_solves_rejects_wrong_moves():
    m = mazes(1, 6, seed=3)[0]
    assert not m.solves("")
    assert not m.solves(list(m.moves[:-1]))
    back = {"U": "D", "D": "U", "L": "R", "R": "L"}[m.moves[-1]]
    assert m.solves(list(m.moves) + [back, m.moves[-1]])  # valid detour, not shortest
    assert not m.solves("X")
    # walking into the outer wall fails
    assert not m.solves(["U"] * 7)


def test_deterministic_and_varied():
    a, b, c = mazes(5, 6, seed=1), mazes(5, 6, seed=1), mazes(5, 6, seed=2)
    assert all(np.array_equal(x.grid, y.grid) and x.moves == y.moves for x, y in zip(a, b))
    assert not all(np.array_equal(x.grid, y.grid) for x, y in zip(a, c))
    assert len({x.render() for x in a}) == 5


@pytest.mark.parametrize("size", [1, 0, -3])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be >= 2"):
        mazes(1, size)


def test_bad_n():
    with pytest.raises(ValueError):
        mazes(-1, 3)
    assert mazes(0, 3) == []


# ------------------------------------------------------------------ AOTP form (P8, MLM-U)
from tokjax.data._mazes import AOTP_SPECIALS, Maze  # noqa: E402


def _parse_cell(tok):
    assert tok[0] == "(" and tok[-1] == ")"
    r, c = tok[1:-1].split(",")
    return int(r), int(c)


@pytest.mark.parametrize("size", [2, 4, 7])
def test_aotp_round_trips_the_maze(size):
    for i, m in enumerate(mazes(6, size, seed=10 + size)):
        a = m.aotp(seed=i)
        t = list(a.tokens)
        n_edges = size * size - 1
        # layout: <ADJLIST_START> (a) (b) ; ... <ADJLIST_END> <ORIGIN_START> o <ORIGIN_END> <TARGET_START> t ...
        assert t[0] == "<ADJLIST_START>" and t[1 + 3 * n_edges] == "<ADJLIST_END>"
        assert a.prompt_len == 3 * n_edges + 9 and t[a.prompt_len - 1] == "<PATH_START>"
        assert t[-1] == "<PATH_END>" and len(t) == a.prompt_len + len(m.path) + 1
        edges = {frozenset((_parse_cell(t[1 + 3 * k]), _parse_cell(t[2 + 3 * k]))) for k in range(n_edges)}
        assert all(t[3 + 3 * k] == ";" for k in range(n_edges))
        # the edge set is exactly the maze's open passages (a spanning tree: n_edges distinct edges)
        want = set()
        for r in range(size):
            for c in range(size):
                for nb in _neighbours(m.grid, size, (r, c)):
                    want.add(frozenset(((r, c), nb)))
        assert edges == want and len(edges) == n_edges
        assert _parse_cell(t[a.prompt_len - 6]) == m.start and _parse_cell(t[a.prompt_len - 3]) == m.goal
        path = [_parse_cell(x) for x in t[a.prompt_len:-1]]
        assert path == [tuple(p) for p in m.path.tolist()]
        # ids follow the vocabulary; prompt/path split
        vocab = Maze.aotp_vocab(size)
        assert [vocab[j] for j in a.ids.tolist()] == t and len(vocab) == len(AOTP_SPECIALS) + size * size
        assert a.prompt_ids.tolist() + a.path_ids.tolist() == a.ids.tolist()
        assert a.path_ids[-1] == AOTP_SPECIALS.index("<PATH_END>") and 0 not in a.ids  # <PAD> never appears
        assert m.text == m.prompt + m.completion  # the grid-text form is kept


def test_aotp_shuffle_is_seeded_and_flips_edges():
    m = mazes(1, 5, seed=4)[0]
    a, b, c = m.aotp(seed=1), m.aotp(seed=1), m.aotp(seed=2)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    assert a.tokens[a.prompt_len - 1:] == c.tokens[c.prompt_len - 1:]  # the path does not depend on the shuffle
    plain = m.aotp(shuffle=False)
    firsts = [_parse_cell(plain.tokens[1 + 3 * k]) for k in range(24)]
    assert firsts == sorted(firsts)  # raster order, smaller cell first
    flipped = sum(_parse_cell(a.tokens[1 + 3 * k]) > _parse_cell(a.tokens[2 + 3 * k]) for k in range(24))
    assert 0 < flipped < 24


def test_aotp_shared_vocabulary_and_bad_grid():
    m = mazes(1, 4, seed=0)[0]
    big = m.aotp(seed=0, grid_n=7)
    assert [Maze.aotp_vocab(7)[j] for j in big.ids.tolist()] == list(big.tokens) == list(m.aotp(seed=0).tokens)
    assert int(big.ids.max()) < len(Maze.aotp_vocab(7))
    with pytest.raises(ValueError, match="does not fit an AOTP vocabulary of grid_n=3"):
        m.aotp(grid_n=3)
    with pytest.raises(ValueError, match="grid_n must be >= 2"):
        Maze.aotp_vocab(1)
    with pytest.raises(ValueError, match="grid_n must be an int"):
        Maze.aotp_vocab(2.5)
