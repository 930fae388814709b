"""Token Recycling: a model-free draft source built from an adjacency matrix of successor candidates.

Paper: "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling" (Luo et al., ACL 2025), P45. Official code: github.com/Luowaterbi/TokenRecycling
(``evaluation/inference_recycling.py``, ``model/recycling/tree_template_.py``), read to check the
details below.

The draft state is one matrix ``A`` [V, k] (k = 8): ``A[t]`` lists k candidate successors of token
t. Each step (paper Sec. 3, "BFS" retrieval + "update"):

* draft: a static tree template (default "2.2.2": 80 nodes, depth 6, level sizes 8, 21, 25, 15,
  8, 3) whose node is a path of child indices ``(i_1, .., i_d)``; breadth first,
  ``token(node) = A[token(parent(node)), i_d]`` with the root = the pending (last committed) token;
* verify: one target call over the tree (any verifier of ``tokjax.decoding.verify``; the paper
  uses greedy longest-match);
* recycle: for EVERY tree node u (root included), ``A[token(u)] <- top_k(logits(u))`` -- the
  candidate tokens a plain decoder would throw away become the next drafts.

``A`` starts at zeros (as in the official code) and is shared by all rows of a batch; it can be
passed from one generate call to the next (hot start: ``out.strategy_state`` is the table, and
``generate(..., strategy_state=table)`` starts from it).

Duplicate writes (one token at several nodes / rows in a step) are resolved deterministically:
the last node in (row, BFS node) order wins, which is what a sequential write would leave. The
official code's batched ``index_put`` leaves the winner unspecified. When the logits are masked
(``-inf``, e.g. top-k/greedy transforms), masked candidates keep the entry from before the step;
the update reads the untransformed logits (``raw_logits``) the speculative step passes to ``observe``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import check_like
from tokjax.decoding.speculative import Draft, DraftSource

__all__ = [
    "TEMPLATES",
    "Recycling",
    "RecyclingTable",
    "recycling",
    "template_arrays",
    "draft_tree",
    "update_table",
]

# Static draft trees, as paths of child indices in BFS order (parents before children, siblings in
# index order). "2.2.2" is the official default (model/recycling/tree_template_.py).
_T222 = (
    [[i] for i in range(8)]
    + [[0, i] for i in range(8)] + [[1, i] for i in range(4)] + [[2, i] for i in range(3)]
    + [[3, 0], [3, 1], [4, 0], [5, 0], [6, 0], [7, 0]]
    + [[0, 0, i] for i in range(8)] + [[0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 2, 0], [0, 2, 1]]
    + [[0, i, 0] for i in range(3, 8)] + [[1, 0, 0], [1, 0, 1], [1, 1, 0]] + [[i, 0, 0] for i in range(2, 6)]
    + [[0, 0, 0, i] for i in range(5)] + [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 2, 0], [0, 0, 3, 0], [0, 0, 4, 0]]
    + [[0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]]
    + [[0, 0, 0, 0, i] for i in range(3)] + [[0, 0, 0, 1, 0], [0, 0, 0, 2, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    + [[1, 0, 0, 0, 0]]
    + [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
)
TEMPLATES: dict[str, tuple[tuple[int, ...], ...]] = {
    "2.2.2": tuple(tuple(p) for p in _T222),
    # Small trees for cheap hardware (CPU): a chain and a narrow tree.
    "chain6": tuple((0,) * d for d in range(1, 7)),
    "small": ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
              (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0)),
}


def template_arrays(template: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (parents, child_index, depth), int32 [N] each, for a tree template given as paths.

    ``parents[i]`` is the index of node i's parent (-1 = child of the pending token); depth of a
    root child is 1. Raises ValueError unless every path's parent path appears earlier, no
    path repeats and paths are listed by non-decreasing depth (BFS order).
    """
    paths = [tuple(int(c) for c in p) for p in template]
    if not paths:
        raise ValueError("tree template is empty; give at least one path such as (0,)")
    index: dict[tuple[int, ...], int] = {}
    parents, child, depth = [], [], []
    for i, p in enumerate(paths):
        if len(p) < 1 or min(p) < 0:
            raise ValueError(f"tree template path {i} = {p} must be a non-empty tuple of child indices >= 0")
        if p in index:
            raise ValueError(f"tree template repeats path {p}")
        if depth and len(p) < depth[-1]:
            raise ValueError(f"tree template must list paths by non-decreasing depth (BFS order); path {i} = {p}")
        par = p[:-1]
        if par and par not in index:
            raise ValueError(f"tree template path {p} appears before (or without) its parent path {par}")
        index[p] = i
        parents.append(index[par] if par else -1)
        child.append(p[-1])
        depth.append(len(p))
    return np.asarray(parents, np.int32), np.asarray(child, np.int32), np.asarray(depth, np.int32)


@struct.dataclass
class RecyclingTable:
    """The Token Recycling adjacency matrix ``successors`` [V, k] int32: k candidate successors per token, shared by all rows."""

    successors: jax.Array

    @classmethod
    def init(cls, vocab_size: int, k: int = 8) -> "RecyclingTable":
        """Returns an all-zero (cold) table, as the official code starts."""
        if int(vocab_size) < 1 or int(k) < 1:
            raise ValueError(f"RecyclingTable needs vocab_size >= 1 and k >= 1, got {vocab_size}, {k}")
        return cls(successors=jnp.zeros((int(vocab_size), int(k)), jnp.int32))


def draft_tree(successors: jax.Array, last: jax.Array, parents: np.ndarray, child: np.ndarray, depth: np.ndarray) -> jax.Array:
    """Returns the draft tokens [B, N]: BFS over the template, token(node) = successors[token(parent), child].

    ``last`` [B] are the pending tokens (the tree's root). Level by level (static depth loop),
    so each level is one gather from the table.
    """
    B = last.shape[0]
    N = parents.shape[0]
    tokens = jnp.zeros((B, N), jnp.int32)
    for d in range(1, int(depth.max()) + 1):
        lvl = np.nonzero(depth == d)[0]
        par = parents[lvl]
        par_tok = last[:, None] if d == 1 else tokens[:, np.maximum(par, 0)]
        par_tok = jnp.broadcast_to(par_tok, (B, lvl.size))
        tokens = tokens.at[:, lvl].set(successors[par_tok, child[lvl][None, :]])
    return tokens


def update_table(successors: jax.Array, node_tokens: jax.Array, logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Returns successors [V, k] with ``successors[node_tokens[b, m]] = top_k(logits[b, m])`` for mask[b, m].

    P45's recycling update over all tree nodes. Several writes to one token: the last in
    row-major (b, m) order wins (its whole row). Candidates whose logit is -inf (masked by a
    transform) keep the entry the table had before this update.
    """
    V, k = successors.shape
    B, M = node_tokens.shape
    vals, ids = jax.lax.top_k(logits.astype(jnp.float32), k)  # [B, M, k]
    tok = node_tokens.reshape(-1)
    ok = mask.reshape(-1)
    order = jnp.arange(B * M, dtype=jnp.int32)
    winner = jnp.full((V,), -1, jnp.int32).at[tok].max(jnp.where(ok, order, -1))
    write = ok & (winner[tok] == order)
    new = jnp.where(jnp.isfinite(vals.reshape(B * M, k)), ids.reshape(B * M, k).astype(jnp.int32), successors[tok])
    rows = jnp.where(write, tok, V)  # out of range -> dropped
    return successors.at[rows].set(new, mode="drop")


@struct.dataclass
class RecyclingState:
    """Token Recycling's draft state: the table plus what propose saw (the tree roots and live rows, for observe)."""

    table: RecyclingTable
    pending: jax.Array  # [B] root token of the last proposed tree
    live: jax.Array  # [B] rows live at propose time


@dataclasses.dataclass(frozen=True)
class Recycling(DraftSource):
    """Token Recycling (P45) as a draft source for ``speculative(draft, verifier)``: BFS over a static tree in the table.

    ``template``: static tree (paths of child indices, BFS order); ``k``: successors kept per
    token. Deterministic draft (``probs=None``): under sampling verifiers each node is a point mass.
    Hot start: its ``persistent_state`` is the :class:`RecyclingTable` (any batch size may resume it).
    """

    template: tuple[tuple[int, ...], ...] = TEMPLATES["2.2.2"]
    k: int = 8

    @property
    def num_nodes(self) -> int:
        return len(self.template)

    @property
    def max_depth(self) -> int:
        return max(len(p) for p in self.template)

    def validate(self, cfg) -> None:
        if not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"recycling k must be an int >= 1, got {self.k!r}")
        _, child, _ = template_arrays(self.template)
        if int(child.max()) >= self.k:
            raise ValueError(f"tree template uses child index {int(child.max())} but only k={self.k} successors are stored")
        if self.k > cfg.vocab_size:
            raise ValueError(f"recycling k={self.k} exceeds the vocabulary size {cfg.vocab_size}")

    def init(self, params, cfg, state) -> RecyclingState:
        B = state.tokens.shape[0]
        return RecyclingState(
            table=RecyclingTable.init(cfg.vocab_size, self.k),
            pending=jnp.zeros((B,), jnp.int32),
            live=jnp.zeros((B,), bool),
        )

    def state_axes(self, dstate: RecyclingState):
        # The table is shared by every row (replicated); the per-row roots follow the batch.
        return RecyclingState(table=None, pending=("batch",), live=("batch",))

    def persistent_state(self, dstate: RecyclingState) -> RecyclingTable:
        return dstate.table

    def resume(self, dstate: RecyclingState, saved) -> RecyclingState:
        if not isinstance(saved, RecyclingTable):
            raise ValueError(f"strategy_state must be the RecyclingTable of an earlier output, got {type(saved).__name__}")
        return dstate.replace(table=check_like(saved, dstate.table, "strategy_state"))

    def propose(self, params, cfg, state, dstate: RecyclingState, key, transform):
        parents, child, depth = template_arrays(self.template)
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)[:, 0]
        tokens = draft_tree(dstate.table.successors, pending, parents, child, depth)
        B, N = tokens.shape
        draft = Draft(
            tokens=tokens,
            parents=jnp.broadcast_to(jnp.asarray(parents), (B, N)),
            probs=None,
            valid=jnp.ones((B, N), bool),
            layer_evals=jnp.zeros((), jnp.int32),
        )
        return draft, dstate.replace(pending=pending, live=~state.done)

    def observe(self, params, cfg, state, dstate: RecyclingState, draft, target_logits, accepted, raw_logits):
        # Untransformed logits: a greedy transform leaves only the argmax finite, which would
        # leave k - 1 successors stale.
        logits = raw_logits
        nodes = jnp.concatenate([dstate.pending[:, None], draft.tokens], axis=1)
        valid = jnp.concatenate([jnp.ones_like(draft.valid[:, :1]), draft.valid], axis=1) & dstate.live[:, None]
        succ = update_table(dstate.table.successors, nodes, logits, valid)
        return dstate.replace(table=RecyclingTable(successors=succ))


def recycling(k: int = 8, template: str | Sequence[Sequence[int]] = "2.2.2") -> Recycling:
    """Returns the Token Recycling (P45) draft source: k successors per token, a static tree template.

    ``template``: a name from :data:`TEMPLATES` ("2.2.2" = the paper's 80-node tree) or paths of
    child indices in BFS order.
    """
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ValueError(f"unknown tree template {template!r}; valid names: {sorted(TEMPLATES)} or a list of paths")
        paths = TEMPLATES[template]
    else:
        paths = tuple(tuple(int(c) for c in p) for p in template)
    template_arrays(paths)  # raises on a malformed template
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"recycling k must be an int >= 1, got {k!r}")
    src = Recycling(template=paths, k=int(k))
    _, child, _ = template_arrays(paths)
    if int(child.max()) >= src.k:
        raise ValueError(f"tree template uses child index {int(child.max())} but only k={src.k} successors are stored")
    return src
