"""Perfect mazes (randomised depth-first search) with BFS shortest paths."""

from __future__ import annotations

import collections
import dataclasses
import operator

import numpy as np

__all__ = ["AOTP", "AOTP_SPECIALS", "Maze", "mazes", "MOVES"]

#: Move token -> (d_row, d_col) in cell coordinates.
MOVES: dict[str, tuple[int, int]] = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
_DIRS = list(MOVES.items())

WALL, OPEN, START, GOAL = "#", ".", "S", "G"

#: The non-cell tokens of the AOTP serialisation (P8, MLM-U), in id order: ids 0..9 of every AOTP
#: vocabulary; cell ``(i, j)`` of a ``grid_n`` vocabulary is id ``len(AOTP_SPECIALS) + i * grid_n + j``.
AOTP_SPECIALS: tuple[str, ...] = ("<PAD>", ";", "<ADJLIST_START>", "<ADJLIST_END>", "<ORIGIN_START>",
                                  "<ORIGIN_END>", "<TARGET_START>", "<TARGET_END>", "<PATH_START>", "<PATH_END>")


@dataclasses.dataclass(frozen=True)
class AOTP:
    """A maze as AOTP tokens (adjacency list, origin, target, path; :meth:`Maze.aotp`).

    Attributes:
      tokens: the string tokens, e.g. ``("<ADJLIST_START>", "(0,0)", "(0,1)", ";", ...)``.
      ids: int32 ``[len(tokens)]`` under the vocabulary of a ``grid_n`` x ``grid_n`` grid
        (:meth:`Maze.aotp_vocab`).
      prompt_len: tokens up to and including ``<PATH_START>`` (the prompt); the rest, the path
        cells and ``<PATH_END>``, is what a model predicts.
      grid_n: the vocabulary's grid side.
    """

    tokens: tuple[str, ...]
    ids: np.ndarray
    prompt_len: int
    grid_n: int

    @property
    def prompt_ids(self) -> np.ndarray:
        """Returns ``ids[:prompt_len]`` (ends with ``<PATH_START>``)."""
        return self.ids[: self.prompt_len]

    @property
    def path_ids(self) -> np.ndarray:
        """Returns ``ids[prompt_len:]``: the path cells, origin to target, then ``<PATH_END>``."""
        return self.ids[self.prompt_len:]


@dataclasses.dataclass(frozen=True, eq=False)
class Maze:
    """A perfect maze on a ``size x size`` cell grid with its shortest start-goal path.

    Attributes:
      size: cells per side.
      grid: bool ``[2*size+1, 2*size+1]``, True where there is a wall; cell
        ``(r, c)`` sits at ``grid[2*r+1, 2*c+1]`` and the wall between two
        adjacent cells at the midpoint of their grid positions.
      start, goal: ``(row, col)`` cells, distinct.
      path: int32 ``[len(moves)+1, 2]`` cells from ``start`` to ``goal`` (BFS,
        hence shortest; in a perfect maze also the only simple path).
      moves: the path as move tokens ``"U"``, ``"D"``, ``"L"``, ``"R"``.
    """

    size: int
    grid: np.ndarray
    start: tuple[int, int]
    goal: tuple[int, int]
    path: np.ndarray
    moves: tuple[str, ...]

    def render(self, with_path: bool = False) -> str:
        """Returns the grid as text: ``#`` wall, ``.`` open, ``S``/``G``, ``*`` path if asked."""
        rows = [[WALL if w else OPEN for w in row] for row in self.grid.tolist()]
        if with_path:
            for (r0, c0), (r1, c1) in zip(self.path[:-1].tolist(), self.path[1:].tolist()):
                rows[2 * r0 + 1][2 * c0 + 1] = "*"
                rows[r0 + r1 + 1][c0 + c1 + 1] = "*"
        rows[2 * self.start[0] + 1][2 * self.start[1] + 1] = START
        rows[2 * self.goal[0] + 1][2 * self.goal[1] + 1] = GOAL
        return "\n".join("".join(r) for r in rows)

    @property
    def prompt(self) -> str:
        """Returns the rendered grid followed by a newline (the question)."""
        return self.render() + "\n"

    @property
    def completion(self) -> str:
        """Returns the moves joined by spaces, e.g. ``"R R D"`` (the answer)."""
        return " ".join(self.moves)

    @property
    def text(self) -> str:
        """Returns ``prompt + completion``."""
        return self.prompt + self.completion

    def can_move(self, cell: tuple[int, int], move: str) -> bool:
        """Returns whether ``move`` from ``cell`` stays in the maze without crossing a wall."""
        dr, dc = MOVES[move]
        r, c = cell
        nr, nc = r + dr, c + dc
        if not (0 <= nr < self.size and 0 <= nc < self.size):
            return False
        return not bool(self.grid[2 * r + 1 + dr, 2 * c + 1 + dc])

    def solves(self, moves) -> bool:
        """Returns whether the moves (a string like ``"R D"`` or a sequence) lead from start to goal."""
        if isinstance(moves, str):
            moves = moves.split()
        cell = self.start
        for m in moves:
            if m not in MOVES or not self.can_move(cell, m):
                return False
            dr, dc = MOVES[m]
            cell = (cell[0] + dr, cell[1] + dc)
        return cell == self.goal

    @staticmethod
    def aotp_vocab(grid_n: int) -> tuple[str, ...]:
        """Returns the AOTP vocabulary of a ``grid_n`` x ``grid_n`` grid: :data:`AOTP_SPECIALS`, then the
        cells ``"(i,j)"`` in raster order (size ``10 + grid_n**2``; id 0 is ``<PAD>``)."""
        try:
            grid_n = operator.index(grid_n)
        except TypeError:
            raise ValueError(f"grid_n must be an int, got {grid_n!r}") from None
        if grid_n < 2:
            raise ValueError(f"grid_n must be >= 2, got {grid_n}")
        return AOTP_SPECIALS + tuple(f"({i},{j})" for i in range(grid_n) for j in range(grid_n))

    def aotp(self, seed: int = 0, *, grid_n: int | None = None, shuffle: bool = True) -> AOTP:
        """Returns the maze in the AOTP form of P8 (MLM-U): adjacency list, origin, target, path; one token per cell.

        The official MLM-U data (``facebookresearch/maze_navigation_MLMU``, ``recipe/datasets/maze.py``)
        is ``maze-dataset``'s ``AOTP_UT_rasterized`` tokenisation with the ``<-->`` connector dropped::

            <ADJLIST_START> (a) (b) ; (c) (d) ; ... <ADJLIST_END> <ORIGIN_START> (o) <ORIGIN_END>
            <TARGET_START> (t) <TARGET_END> <PATH_START> (o) ... (t) <PATH_END>

        one edge of the maze's spanning tree per ``(a) (b) ;`` (``size**2 - 1`` edges), cells written
        ``(row,col)``. As in ``maze-dataset``'s ``as_adj_list(shuffle_d0=True, shuffle_d1=True)``,
        the edges come in random order and each edge's two cells in random order, drawn from
        ``seed`` (``shuffle=False``: raster order, smaller cell first). The prompt is everything up
        to and including ``<PATH_START>`` (``prompt_len``); the path lists every cell from origin
        to target, then ``<PATH_END>``. ``grid_n`` (default ``size``) is the vocabulary's grid side
        (:meth:`aotp_vocab`), so mazes of several sizes can share one vocabulary. The grid-text
        form (:attr:`prompt`, :attr:`completion`) is unchanged.

        Raises:
          ValueError: ``grid_n < size`` (the maze's cells are not in the vocabulary).
        """
        g = self.size if grid_n is None else grid_n
        vocab = Maze.aotp_vocab(g)
        if g < self.size:
            raise ValueError(f"a {self.size}x{self.size} maze does not fit an AOTP vocabulary of grid_n={g} "
                             f"(cells up to ({g - 1},{g - 1})); pass grid_n >= {self.size}")
        edges = []
        for r in range(self.size):
            for c in range(self.size):
                if c + 1 < self.size and not self.grid[2 * r + 1, 2 * c + 2]:
                    edges.append(((r, c), (r, c + 1)))
                if r + 1 < self.size and not self.grid[2 * r + 2, 2 * c + 1]:
                    edges.append(((r, c), (r + 1, c)))
        if shuffle:
            rng = np.random.default_rng(seed)
            flips = rng.random(len(edges)) > 0.5
            edges = [(b, a) if f else (a, b) for (a, b), f in zip(edges, flips)]
            edges = [edges[i] for i in rng.permutation(len(edges))]
        cell = lambda rc: f"({int(rc[0])},{int(rc[1])})"  # noqa: E731
        toks = ["<ADJLIST_START>"]
        for a, b in edges:
            toks += [cell(a), cell(b), ";"]
        toks += ["<ADJLIST_END>", "<ORIGIN_START>", cell(self.start), "<ORIGIN_END>",
                 "<TARGET_START>", cell(self.goal), "<TARGET_END>", "<PATH_START>"]
        prompt_len = len(toks)
        toks += [cell(p) for p in self.path.tolist()] + ["<PATH_END>"]
        index = {t: i for i, t in enumerate(vocab)}
        ids = np.asarray([index[t] for t in toks], np.int32)
        ids.setflags(write=False)
        return AOTP(tokens=tuple(toks), ids=ids, prompt_len=prompt_len, grid_n=g)


def _carve(size: int, rng: np.random.Generator) -> np.ndarray:
    grid = np.ones((2 * size + 1, 2 * size + 1), dtype=bool)
    visited = np.zeros((size, size), dtype=bool)
    r0, c0 = (int(x) for x in rng.integers(0, size, size=2))
    visited[r0, c0] = True
    grid[2 * r0 + 1, 2 * c0 + 1] = False
    stack = [(r0, c0)]
    while stack:
        r, c = stack[-1]
        nbrs = [
            (r + dr, c + dc, dr, dc)
            for _, (dr, dc) in _DIRS
            if 0 <= r + dr < size and 0 <= c + dc < size and not visited[r + dr, c + dc]
        ]
        if not nbrs:
            stack.pop()
            continue
        nr, nc, dr, dc = nbrs[int(rng.integers(len(nbrs)))]
        visited[nr, nc] = True
        grid[2 * r + 1 + dr, 2 * c + 1 + dc] = False
        grid[2 * nr + 1, 2 * nc + 1] = False
        stack.append((nr, nc))
    return grid


def _bfs(grid: np.ndarray, size: int, start, goal) -> list[tuple[int, int]]:
    prev: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    q = collections.deque([start])
    while q:
        cell = q.popleft()
        if cell == goal:
            break
        r, c = cell
        for _, (dr, dc) in _DIRS:
            nr, nc = r + dr, c + dc
            if 0 <= nr < size and 0 <= nc < size and (nr, nc) not in prev:
                if not grid[2 * r + 1 + dr, 2 * c + 1 + dc]:
                    prev[(nr, nc)] = cell
                    q.append((nr, nc))
    if goal not in prev:  # cannot happen for a perfect maze
        raise RuntimeError("goal unreachable")
    path = [goal]
    while prev[path[-1]] is not None:
        path.append(prev[path[-1]])
    return path[::-1]


def mazes(n: int, size: int, seed: int = 0) -> list[Maze]:
    """Returns ``n`` seeded perfect :class:`Maze` objects on a ``size x size`` grid.

    Each maze is carved by a randomised depth-first search (recursive
    backtracker) from a random cell, so it is a spanning tree of the grid;
    start and goal are two distinct random cells and the path is found by BFS.

    Raises:
      ValueError: ``n < 0`` or ``size < 2``.
    """
    try:
        n, size = operator.index(n), operator.index(size)
    except TypeError:
        raise ValueError(f"n and size must be ints, got n={n!r}, size={size!r}") from None
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 2:
        raise ValueError(f"maze size must be >= 2, got {size}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        grid = _carve(size, rng)
        a, b = rng.choice(size * size, size=2, replace=False)
        start, goal = divmod(int(a), size), divmod(int(b), size)
        cells = _bfs(grid, size, start, goal)
        moves = []
        for (r0, c0), (r1, c1) in zip(cells[:-1], cells[1:]):
            moves.append(next(k for k, v in MOVES.items() if v == (r1 - r0, c1 - c0)))
        grid.setflags(write=False)
        path = np.asarray(cells, dtype=np.int32)
        path.setflags(write=False)
        out.append(Maze(size=size, grid=grid, start=start, goal=goal, path=path, moves=tuple(moves)))
    return out
