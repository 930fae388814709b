"""Uni-3DAR: octree tokens with 2-level subtree compression and masked next-token prediction (P53; Lu et al.
2025, "Unified 3D Generation and Understanding via Autoregression on Compressed Spatial Tokens", arXiv
2503.16278, code dptech-corp/Uni-3DAR).

Tokenization (official ``uni3dar/data/grid_utils.py::expand_tree_topdown``). An occupancy grid of side
g = 2^D in d = 2 (quadtree) or 3 (octree) dimensions is split recursively: the root cell (level D, side
2^D) into C = 2^d children of side 2^(D-1), and so on down to level 1, whose children are the grid's
cells. Only non-empty cells are split. Each non-empty node of levels D .. 1 is ONE token: the occupancy of
its C children as a C-bit number (2-level subtree compression: a node and its children's empty/non-empty
states in one token; 2^C - 1 possible values since a non-empty node has a non-empty child)::

    occ(node) = sum_j [child j non-empty] 2^j,    code = occ - 1 in [0, 2^C - 1)     (official: [TREE_occ],
                                                                                      a 255-way head on occ - 1)

Child j sits at offset ((j >> a) & 1) along grid axis a (axis 0 is the least significant bit; official
``subcell_orders`` with coordinate 0 = x). Order: level by level, coarse to fine, Morton (z-order) order
inside a level (children are listed parent by parent, child index inside), so the sequence is a BFS of the
tree. The sequence determines its own length and every node's place: the number of nodes at level l - 1 is
the number of set bits at level l, so decoding needs no end token and every token sequence of the right
length decodes to a valid point set (no duplicates, no out-of-grid point). :func:`octree_encode` /
:func:`octree_decode` are exact inverses on non-empty grids (tested: round trip).

Sequence lengths per structure of N non-empty internal nodes: raster pixels g^d; the plain (uncompressed)
octree of binary tokens, one per child of each non-empty node: C N; the compressed octree: N; its masked-NTP
training sequence: 2N (:func:`sequence_lengths`).

Masked next-token prediction (official ``base_grid_dataset.py::construct_tree_for_decoder`` and
``models/uni3dar.py::get_feat_from_dataloader``). After compression the position of the next token is
data-dependent, so each token is preceded by a [MASK] query carrying the *target's* position and level;
the model predicts the token's content at the query, the real token follows (at the same position and
level) so later queries can attend to it, the attention is plain causal over the whole sequence, and the
loss is on the queries only::

    slot     0        1           2          3           4        ...   2k+1        2k+2
    input    class    MASK@n0     t0@n0      MASK@n1     t1@n1          MASK@nk     tk@nk
    target   --       t0          --         t1          --             tk          --

    L = - sum_k log p(t_k | class, t_<k, pos(n_k), level(n_k))        (P53 masked NTP)

Plain NTP on the same tokens reads ``[class, t0@n0, t1@n1, ...]`` and predicts t_{k+1} at slot k+1 from
the prefix, without being told where node k+1 is. Both factorise the same joint p(t_0 .. t_{N-1} | class)
(positions are a deterministic function of earlier tokens), so their NLLs per structure are comparable.

Embeddings: token embedding + a learned level embedding (``params['uni3dar']['level']``, level 0 = class
token, level l = nodes of side 2^l; official ``cur_level``) entering through ``Inputs(embeds=)``; positions
are the node's cell centre in half-cell units of the grid, ``2^l (2p + 1)`` per axis for cell index p at
level l (odd multiples, always >= 1), and 0 for the class token, read by axial RoPE (``pos_dims = d``;
official: 3-D RoPE on the physical centre). The head is restricted to the 2^C - 1 code ids (official: a
separate 255-way tree head).

Decoding (:class:`OctreeDecode`, a Strategy of :func:`tokjax.generate`, KV-cached): the strategy keeps the
BFS queue of nodes still to be tokenised (cell index and level) in its state; a step feeds the pending
token at its node's position (and, masked, a [MASK] query at the next node's position), samples the next
node's code from the code-restricted logits, appends the node's non-empty children to the queue, and ends
the row when the queue is exhausted. Masked decoding keeps the queries in the cache, exactly as in
training (official sampler), so the cache holds 2 (length - 1) entries (``slack`` = the complete tree's
node count). The log-probabilities ``generate`` records equal the teacher-forced ones of
:func:`uni3dar_token_logp` on the decoded sequence (tested).

Verified against the official code: child-occupancy tokens of non-empty nodes, BFS level order with Morton
order inside a level, the [MASK]/real pair per node with the same position and level, plain causal
attention, loss only at the [MASK] queries, level embedding, RoPE over cell centres, code-only head.
Deviations (documented): the official ``merge_level`` is the tree depth D (grid side 2^merge_level), not a
compression setting -- the 2-level compression is built into every tree token; there is no leaf level of
"3D patch" tokens (atom type, in-cell xyz; the data here are bare occupancy grids), no count / remaining-atom
embeddings, no tree-deletion augmentation, no trailing [MASK]/[CLS] pair, no classifier-free guidance, and
a class token instead of the official conditioning. The "plain octree" baseline length (one binary token per
child) is this module's reading of the paper's "up to 8x"; the official code only builds the compressed form.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.data import batch_indices
from tokjax.decoding import DecodeState, Strategy, generate
from tokjax.decoding._state import sample_and_commit
from tokjax.logits import LogitTransform, chain, check_range, temperature as temperature_tf
from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.model.forward import embed
from tokjax.vision.image_lm import ImageVocab, class_tokens_with_dropout
from tokjax.vision.orders import _check_int

__all__ = ["OctreeDecode", "OctreeSamples", "OctreeSpec", "OctreeTokens", "make_uni3dar_loss", "octree_decode",
           "octree_decoder", "octree_encode", "octree_tokens_batch_fn", "sample_octrees", "sequence_lengths",
           "uni3dar", "uni3dar_batch", "uni3dar_init", "uni3dar_logits", "uni3dar_token_logp"]

_F32 = jnp.float32
_MAX_NODES = 1 << 20


# ------------------------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class OctreeSpec:
    """The tree and vocabulary of a Uni-3DAR model: ``dims`` (2 quadtree, 3 octree), ``depth`` D (grid side
    2^D; official ``merge_level``), ``num_classes`` class tokens. Frozen and hashable (a static jit argument).

    Token ids are an :class:`~tokjax.vision.image_lm.ImageVocab` with ``2^C - 1`` codes (code = child
    occupancy - 1, C = 2^dims), then the classes, the null class and [MASK] (the query token)."""

    dims: int
    depth: int
    num_classes: int = 1

    def __post_init__(self):
        dims = _check_int("dims", self.dims, 1)
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (quadtree) or 3 (octree), got {dims}")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "depth", _check_int("depth", self.depth, 1))
        object.__setattr__(self, "num_classes", _check_int("num_classes", self.num_classes, 1))
        if self.max_nodes > _MAX_NODES:
            raise ValueError(f"depth={self.depth} in {dims}-D gives up to {self.max_nodes} tree tokens (> {_MAX_NODES}); "
                             "use a smaller depth")

    @property
    def children(self) -> int:
        """C = 2^dims children per node."""
        return 1 << self.dims

    @property
    def grid(self) -> int:
        """The grid side 2^depth."""
        return 1 << self.depth

    @property
    def num_codes(self) -> int:
        """2^C - 1 token codes (non-empty child occupancies)."""
        return (1 << self.children) - 1

    @property
    def vocab(self) -> ImageVocab:
        return ImageVocab(num_codes=self.num_codes, num_classes=self.num_classes)

    @property
    def max_nodes(self) -> int:
        """Tokens of the complete tree (every cell occupied): 1 + C + ... + C^(D-1)."""
        C = self.children
        return (C ** self.depth - 1) // (C - 1)

    def offsets(self) -> np.ndarray:
        """Returns int32 [C, dims]: child j's offset ((j >> a) & 1) along each axis a."""
        j = np.arange(self.children)
        return np.stack([(j >> a) & 1 for a in range(self.dims)], -1).astype(np.int32)


def uni3dar(dims: int, depth: int, num_classes: int = 1) -> OctreeSpec:
    """Returns the :class:`OctreeSpec` of a Uni-3DAR model (P53): ``dims`` 2 or 3, grid side 2^``depth``."""
    return OctreeSpec(dims=dims, depth=depth, num_classes=num_classes)


def _check_spec(spec) -> OctreeSpec:
    if not isinstance(spec, OctreeSpec):
        raise ValueError(f"spec must be an OctreeSpec (tokjax.vision.uni3dar.uni3dar(dims, depth, classes)), got "
                         f"{type(spec).__name__}")
    return spec


# ----------------------------------------------------------------------------------- tokenization
class OctreeTokens(NamedTuple):
    """Compressed octree tokens of n structures, padded to a width W (a pytree of arrays).

    ``codes`` int32 [n, W] (child occupancy - 1; -1 padding), ``num_nodes`` int32 [n], ``levels`` int32
    [n, M] (node level l in 1..D; 0 padding), ``coords`` int32 [n, M, dims] (cell index at the node's
    level; 0 padding)."""

    codes: Any
    num_nodes: Any
    levels: Any
    coords: Any


def _check_occupancy(occupancy, spec: OctreeSpec) -> np.ndarray:
    occ = np.asarray(occupancy)
    want = (spec.grid,) * spec.dims
    if occ.ndim != spec.dims + 1 or occ.shape[1:] != want:
        raise ValueError(f"occupancy must be [n, {', '.join(map(str, want))}] (grid side 2^depth={spec.grid} in "
                         f"{spec.dims}-D), got shape {occ.shape}")
    if occ.dtype != bool:
        if occ.dtype.kind not in "iuf" or not np.isin(occ, (0, 1)).all():
            raise ValueError("occupancy must be boolean (or 0/1 values)")
        occ = occ.astype(bool)
    empty = ~occ.reshape(occ.shape[0], -1).any(1)
    if empty.any():
        raise ValueError(f"an empty grid has no octree tokens (structures {np.flatnonzero(empty)[:5].tolist()} are "
                         "empty); every structure needs at least one occupied cell")
    return occ


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """Returns each element's index among the equal values of a sorted ``group`` array."""
    return np.arange(group.size) - np.searchsorted(group, group, side="left")


def octree_encode(occupancy, spec: OctreeSpec, *, width: int | None = None) -> OctreeTokens:
    """Returns :class:`OctreeTokens`: the compressed octree tokens (module docstring) of occupancy grids
    ``occupancy`` bool [n, g, g(, g)] with g = 2^depth, padded to ``width`` tokens (default: the longest
    structure's count). Host-side (numpy), vectorised over structures.

    Raises ValueError for a grid of the wrong shape, non-0/1 values, an empty grid, or a ``width`` below
    the longest structure's token count."""
    spec = _check_spec(spec)
    occ = _check_occupancy(occupancy, spec)
    n, d, C, D, M = occ.shape[0], spec.dims, spec.children, spec.depth, spec.max_nodes
    pyramid = [occ]  # pyramid[l]: occupancy of level-l cells (side 2^l)
    for _ in range(D):
        a = pyramid[-1]
        s = a.shape[1] // 2
        pyramid.append(a.reshape((n,) + sum(((s, 2) for _ in range(d)), ())).any(axis=tuple(range(2, 2 + 2 * d, 2))))
    off = spec.offsets()
    codes = np.full((n, M), -1, np.int32)
    levels = np.zeros((n, M), np.int32)
    coords = np.zeros((n, M, d), np.int32)
    count = np.zeros(n, np.int64)
    sid = np.arange(n)  # the nodes of the current level: structure id and cell index, in BFS order
    cell = np.zeros((n, d), np.int64)
    for level in range(D, 0, -1):
        child = 2 * cell[:, None, :] + off[None]  # [m, C, d]
        bits = pyramid[level - 1][(np.repeat(sid, C),) + tuple(child.reshape(-1, d).T)].reshape(-1, C)
        slot = count[sid] + _rank_in_group(sid)
        codes[sid, slot] = (bits.astype(np.int64) << np.arange(C)).sum(1) - 1
        levels[sid, slot] = level
        coords[sid, slot] = cell
        count += np.bincount(sid, minlength=n)
        node, j = np.nonzero(bits)  # row-major: parent by parent, child index inside (Morton order)
        sid, cell = sid[node], child[node, j]
    longest = int(count.max()) if n else 1
    W = longest if width is None else _check_int("width", width, 1)
    if W < longest:
        raise ValueError(f"width={W} is below the longest structure's {longest} tokens")
    if W > M:
        pad = ((0, 0), (0, W - M))
        codes, levels = np.pad(codes, pad, constant_values=-1), np.pad(levels, pad)
        coords = np.pad(coords, pad + ((0, 0),))
    return OctreeTokens(codes=codes[:, :W], num_nodes=count.astype(np.int32), levels=levels[:, :W],
                        coords=coords[:, :W])


def octree_decode(codes, num_nodes, spec: OctreeSpec) -> np.ndarray:
    """Returns bool [n, g, g(, g)]: the occupancy grids of compressed octree token sequences ``codes`` int
    [n, L] (entries past ``num_nodes[i]`` ignored). Host-side, vectorised; the inverse of
    :func:`octree_encode`.

    Raises ValueError for codes outside [0, 2^C - 1) or a length that is not the one the tree implies
    (the tokens of levels D..l+1 fix how many nodes level l has)."""
    spec = _check_spec(spec)
    codes = np.asarray(codes)
    num = np.asarray(num_nodes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers [n, L], got {codes.dtype} {codes.shape}")
    n, L = codes.shape
    if num.shape != (n,) or num.dtype.kind not in "iu" or (n and (num.min() < 1 or num.max() > L)):
        raise ValueError(f"num_nodes must be integers in [1, {L}] of shape [{n}], got {num.dtype} {num.shape}")
    live = np.arange(L)[None] < num[:, None]
    if (live & ((codes < 0) | (codes >= spec.num_codes))).any():
        raise ValueError(f"codes must lie in [0, {spec.num_codes}) (child occupancy - 1)")
    d, C = spec.dims, spec.children
    off = spec.offsets()
    out = np.zeros((n,) + (spec.grid,) * d, bool)
    count = np.zeros(n, np.int64)
    sid, cell = np.arange(n), np.zeros((n, d), np.int64)
    for level in range(spec.depth, 0, -1):
        slot = count[sid] + _rank_in_group(sid)
        short = slot >= num[sid]
        if short.any():
            raise ValueError(f"structures {np.unique(sid[short])[:5].tolist()} end before their tree does "
                             f"(num_nodes too small for the codes' level-{level} nodes)")
        occ = codes[sid, slot].astype(np.int64) + 1
        count += np.bincount(sid, minlength=n)
        bits = (occ[:, None] >> np.arange(C)) & 1
        node, j = np.nonzero(bits)
        child = 2 * cell[node] + off[j]
        if level == 1:
            out[(sid[node],) + tuple(child.T)] = True
        sid, cell = sid[node], child
    extra = count != num
    if extra.any():
        raise ValueError(f"structures {np.flatnonzero(extra)[:5].tolist()} have num_nodes {num[extra][:5].tolist()} "
                         f"but their trees end after {count[extra][:5].tolist()} tokens")
    return out


def sequence_lengths(occupancy, spec: OctreeSpec) -> dict:
    """Returns int64 [n] sequence lengths per structure: ``raster`` (g^d pixels), ``octree_plain`` (one
    binary token per child of every non-empty node: C N), ``octree`` (compressed: N) and ``masked``
    (the masked-NTP training sequence: 2N), all without the class token."""
    spec = _check_spec(spec)
    n_nodes = octree_encode(occupancy, spec).num_nodes.astype(np.int64)
    return {"raster": np.full(n_nodes.shape, spec.grid ** spec.dims, np.int64),
            "octree_plain": spec.children * n_nodes, "octree": n_nodes, "masked": 2 * n_nodes}


# ------------------------------------------------------------------------------------------ batches
def _centres(coords, levels):
    """Returns int32 [..., d]: cell centres in half-cell units, 2^l (2p + 1) (0 where level = 0)."""
    side = jnp.left_shift(1, levels)[..., None]
    return jnp.where(levels[..., None] > 0, side * (2 * coords + 1), 0).astype(jnp.int32)


def _check_tokens(tokens, spec: OctreeSpec) -> OctreeTokens:
    if not isinstance(tokens, OctreeTokens):
        raise ValueError(f"tokens must be OctreeTokens (from octree_encode), got {type(tokens).__name__}")
    n = np.shape(tokens.num_nodes)
    if len(n) != 1 or len(np.shape(tokens.codes)) != 2:
        raise ValueError(f"num_nodes must be [n] and codes [n, W], got shapes {n} and {np.shape(tokens.codes)}")
    M = np.shape(tokens.codes)[1]
    shapes = {"codes": (M,), "levels": (M,), "coords": (M, spec.dims)}
    for name, tail in shapes.items():
        if tuple(np.shape(getattr(tokens, name))) != n + tail:
            raise ValueError(f"OctreeTokens.{name} must be [n, {', '.join(map(str, tail))}] for this spec "
                             f"(dims={spec.dims}), got shape {tuple(np.shape(getattr(tokens, name)))}")
    if not isinstance(tokens.codes, jax.core.Tracer):
        c, k = np.asarray(tokens.codes), np.asarray(tokens.num_nodes)
        live = np.arange(M)[None] < k[:, None]
        if (k < 1).any() or (k > M).any() or (live & ((c < 0) | (c >= spec.num_codes))).any():
            raise ValueError(f"OctreeTokens out of range: num_nodes in [1, {M}], live codes in [0, {spec.num_codes})")
    return tokens


def uni3dar_batch(tokens: OctreeTokens, labels: Any, spec: OctreeSpec, *, masked: bool, class_dropout: Any = 0.0,
                  key: jax.Array | None = None) -> dict:
    """Returns a dict batch for ``tokjax.train.train`` with :func:`make_uni3dar_loss` (module docstring table):
    ``inputs`` / ``targets`` int32 [B, T], ``positions`` int32 [B, T, dims], ``levels`` int32 [B, T] and
    ``mask`` bool [B, T] (the slots whose target is a tree token: the [MASK] queries when ``masked``, else
    every slot before the last token). T = 1 + 2W masked, 1 + W plain (W = the tokens' width).

    ``labels`` int [B] in [0, num_classes); ``class_dropout`` (runtime, in [0, 1]) replaces a row's class by
    the null class, drawn from ``key``. Jit-compatible (``spec``, ``masked`` static). Raises ValueError for
    tokens of another spec, ids out of range, bad labels, or a missing key."""
    spec = _check_spec(spec)
    tokens = _check_tokens(tokens, spec)
    B, M = np.shape(tokens.codes)
    labels_arr = labels if isinstance(labels, jax.Array) else np.asarray(labels)
    if tuple(labels_arr.shape) != (B,):
        raise ValueError(f"labels must be [B={B}] (one class per structure), got shape {tuple(labels_arr.shape)}")
    if not jnp.issubdtype(labels_arr.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels_arr.dtype}")
    vocab = spec.vocab
    cls = class_tokens_with_dropout(vocab, labels_arr, class_dropout, key)
    codes = jnp.asarray(tokens.codes, jnp.int32)
    live = jnp.arange(M)[None, :] < jnp.asarray(tokens.num_nodes)[:, None]
    codes = jnp.where(live, jnp.clip(codes, 0, vocab.num_codes - 1), 0)
    lev = jnp.where(live, jnp.asarray(tokens.levels, jnp.int32), 0)
    pos = _centres(jnp.asarray(tokens.coords, jnp.int32), lev)  # [B, M, d]
    zero_pos = jnp.zeros((B, 1, spec.dims), jnp.int32)
    zero = jnp.zeros((B, 1), jnp.int32)
    if masked:
        pair = lambda a, b: jnp.stack([a, b], axis=2).reshape((B, 2 * M) + a.shape[2:])  # noqa: E731
        inputs = jnp.concatenate([cls[:, None], pair(jnp.full((B, M), vocab.mask_id, jnp.int32), codes)], 1)
        targets = jnp.concatenate([zero, pair(codes, jnp.zeros_like(codes))], 1)
        mask = jnp.concatenate([jnp.zeros((B, 1), bool), pair(live, jnp.zeros_like(live))], 1)
        positions = jnp.concatenate([zero_pos, pair(pos, pos)], 1)
        levels = jnp.concatenate([zero, pair(lev, lev)], 1)
    else:
        inputs = jnp.concatenate([cls[:, None], codes], 1)
        targets = jnp.concatenate([codes, zero], 1)
        mask = jnp.concatenate([live, jnp.zeros((B, 1), bool)], 1)
        positions = jnp.concatenate([zero_pos, pos], 1)
        levels = jnp.concatenate([zero, lev], 1)
    return {"inputs": inputs, "targets": targets, "positions": positions, "levels": levels, "mask": mask}


def octree_tokens_batch_fn(tokens: OctreeTokens, labels: Any, spec: OctreeSpec, *, masked: bool, batch_size: int,
                           class_dropout: float = 0.0, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> uni3dar_batch(...)`` over fixed structures: a pure function of ``step``
    (rows from ``tokjax.data.batch_indices``, dropout key ``fold_in(key(seed), step)``), so a resumed
    ``tokjax.train.train`` run is bitwise the uninterrupted one. Inputs are checked once here."""
    spec = _check_spec(spec)
    tokens = OctreeTokens(*(np.asarray(a) for a in _check_tokens(tokens, spec)))
    labels = np.asarray(labels)
    n = tokens.codes.shape[0]
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape [{n}], got {labels.dtype} {labels.shape}")
    spec.vocab.class_tokens(labels)
    check_range(class_dropout, "class_dropout", lo=0.0, hi=1.0)
    batch_size = _check_int("batch_size", batch_size, 1)
    base = jax.random.key(_check_int("seed", seed, 0))

    def batch_fn(step: int) -> dict:
        idx = batch_indices(n, batch_size, step, seed=seed)
        return uni3dar_batch(OctreeTokens(*(a[idx] for a in tokens)), labels[idx], spec, masked=masked,
                             class_dropout=class_dropout, key=jax.random.fold_in(base, step))

    return batch_fn


# ------------------------------------------------------------------------------------ model + loss
def uni3dar_init(cfg: ModelConfig, key: jax.Array, spec: OctreeSpec, params=None) -> dict:
    """Returns params for a Uni-3DAR model: ``params`` (default ``init_params(cfg, key)``) plus
    ``params['uni3dar'] = {'level': float [depth + 1, d_model]}`` (the level embedding; row 0 is the class
    token's). Raises ValueError for a model that cannot read the spec's tokens or positions."""
    from tokjax.model import init_params

    spec = _check_spec(spec)
    _check_model(cfg, spec)
    k0, k1 = jax.random.split(key)
    out = dict(init_params(cfg, k0) if params is None else params)
    table = jax.random.normal(k1, (spec.depth + 1, cfg.d_model), _F32) * cfg.init_scale
    out["uni3dar"] = {"level": table.astype(out["embed"].dtype)}
    return out


def _check_model(cfg: ModelConfig, spec: OctreeSpec) -> None:
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    if cfg.vocab_size < spec.vocab.size:
        raise ValueError(f"vocab_size={cfg.vocab_size} cannot hold the Uni-3DAR vocabulary ({spec.vocab.size} ids: "
                         f"{spec.num_codes} codes, {spec.num_classes} classes, null, MASK)")
    if cfg.pos_dims != spec.dims:
        raise ValueError(f"a Uni-3DAR model reads {spec.dims}-D cell centres: cfg.pos_dims must be {spec.dims}, "
                         f"got {cfg.pos_dims}")
    if cfg.positions == "learned" and 2 * spec.grid > cfg.max_len:
        raise ValueError(f"cell centres reach {2 * spec.grid - 1}: learned position tables need max_len >= "
                         f"{2 * spec.grid}, got {cfg.max_len}")


def _level_table(params, spec: OctreeSpec) -> jax.Array:
    if not isinstance(params, dict) or "uni3dar" not in params:
        raise ValueError("Uni-3DAR params need params['uni3dar']['level'] (build them with uni3dar_init)")
    table = params["uni3dar"]["level"]
    if table.shape[0] != spec.depth + 1:
        raise ValueError(f"the level table has {table.shape[0]} rows, the spec needs depth + 1 = {spec.depth + 1}")
    return table


def _embeds(params, cfg, spec, tokens, levels):
    x = embed(params, cfg, tokens)
    return x + jnp.take(_level_table(params, spec), levels, axis=0).astype(x.dtype)


def _code_bias(spec: OctreeSpec, V: int) -> jax.Array:
    return jnp.where(jnp.arange(V) < spec.num_codes, 0.0, -jnp.inf).astype(_F32)


def uni3dar_logits(params, cfg: ModelConfig, batch: dict, spec: OctreeSpec) -> jax.Array:
    """Returns float32 [B, T, V]: code-restricted logits (-inf off the code ids) of a :func:`uni3dar_batch`
    under the causal mask, token + level embeddings, cell-centre positions."""
    spec = _check_spec(spec)
    for name in ("inputs", "positions", "levels"):
        if name not in batch:
            raise ValueError(f"a Uni-3DAR batch needs {name!r} (build it with uni3dar_batch); got keys {sorted(batch)}")
    _check_model(cfg, spec)
    tokens = jnp.asarray(batch["inputs"], jnp.int32)
    x = _embeds(params, cfg, spec, tokens, jnp.asarray(batch["levels"], jnp.int32))
    out = forward(params, cfg, Inputs(embeds=x, positions=jnp.asarray(batch["positions"], jnp.int32)))
    return out.logits.astype(_F32) + _code_bias(spec, cfg.vocab_size)


def uni3dar_token_logp(params, cfg: ModelConfig, batch: dict, spec: OctreeSpec) -> jax.Array:
    """Returns float32 [B, T]: teacher-forced log p(target) at every slot (0 where ``batch['mask']`` is
    False). The NLL of a structure is minus the row sum."""
    logp = jax.nn.log_softmax(uni3dar_logits(params, cfg, batch, spec), axis=-1)
    lp = jnp.take_along_axis(logp, jnp.asarray(batch["targets"], jnp.int32)[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.asarray(batch["mask"], bool), lp, 0.0)


@functools.lru_cache(maxsize=None)
def make_uni3dar_loss(spec: OctreeSpec) -> Callable:
    """Returns the Uni-3DAR train loss ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` for ``spec``
    (one object per spec, so runs share compiled steps): the mean code-restricted cross-entropy over the
    masked-in slots of a :func:`uni3dar_batch` (the queries when masked, every next token when plain);
    ``metrics['nll_per_structure']`` is the summed NLL per row."""
    spec = _check_spec(spec)

    def loss_fn(params, cfg, batch, rng=None):
        lp = uni3dar_token_logp(params, cfg, batch, spec)
        m = jnp.asarray(batch["mask"], _F32)
        loss = -jnp.sum(lp) / jnp.maximum(jnp.sum(m), 1.0)
        return loss, {"nll": loss, "nll_per_structure": -jnp.mean(jnp.sum(lp, axis=1))}

    loss_fn.__qualname__ = f"uni3dar_loss[{spec.dims}d, depth {spec.depth}]"
    return loss_fn


# ------------------------------------------------------------------------------------------ decoding
@dataclasses.dataclass(frozen=True)
class OctreeDecode(Strategy):
    """Decodes a Uni-3DAR model one tree token per step in BFS order, KV-cached (module docstring).

    ``masked``: feed a [MASK] query at the next node (masked NTP) or not (plain NTP). ``pos_dims`` is the
    model's (set by :func:`sample_octrees`, which runs ``generate`` under ``pos_dims = 1`` because the
    prefill has no positions; exact, as in :func:`tokjax.vision.image_lm.sample_images`: the one-token
    prompt's prefilled entries are never read). State: the BFS queue (cell index, level) and its length."""

    spec: OctreeSpec
    masked: bool = True
    pos_dims: int = 1

    def __post_init__(self):
        _check_spec(self.spec)
        if not isinstance(self.masked, bool):
            raise ValueError(f"masked must be True or False, got {self.masked!r}")

    @property
    def slack(self) -> int:  # the [MASK] queries also live in the cache
        return self.spec.max_nodes if self.masked else 0

    def validate(self, cfg: ModelConfig) -> None:
        _check_model(cfg.replace(pos_dims=self.pos_dims), self.spec)
        if self.pos_dims != self.spec.dims or cfg.pos_dims != 1:
            raise ValueError("OctreeDecode runs through sample_octrees (it sets pos_dims and runs generate's prefill "
                             "under pos_dims = 1); call sample_octrees instead of generate")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> dict:
        R, M, d = state.tokens.shape[0], self.spec.max_nodes, self.spec.dims
        return {"coords": jnp.zeros((R, M, d), jnp.int32),
                "levels": jnp.zeros((R, M), jnp.int32).at[:, 0].set(self.spec.depth),
                "tail": jnp.ones((R,), jnp.int32)}

    def persistent_state(self, extra) -> None:
        return None

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        spec, q = self.spec, state.extra
        cfg = cfg.replace(pos_dims=self.pos_dims)
        R, M = q["levels"].shape
        rows = jnp.arange(R)
        old_len = state.lengths
        k = jnp.clip(old_len - 1, 0, M - 1)  # the node whose token this step samples
        prev = jnp.clip(k - 1, 0, M - 1)
        first = old_len == 1  # the pending token is the class token
        lev_k, lev_p = q["levels"][rows, k], jnp.where(first, 0, q["levels"][rows, prev])
        pos_k = _centres(q["coords"][rows, k], lev_k)
        pos_p = _centres(q["coords"][rows, prev], lev_p)
        pending = jnp.take_along_axis(state.tokens, (old_len - 1)[:, None], axis=1)
        if self.masked:
            toks = jnp.concatenate([pending, jnp.full((R, 1), spec.vocab.mask_id, jnp.int32)], 1)
            levels, positions = jnp.stack([lev_p, lev_k], 1), jnp.stack([pos_p, pos_k], 1)
        else:
            toks, levels, positions = pending, lev_p[:, None], pos_p[:, None]
        x = _embeds(params, cfg, spec, toks, levels)
        out = forward(params, cfg, Inputs(embeds=x, positions=positions), cache=state.cache)
        z = out.logits[:, -1].astype(_F32) + _code_bias(spec, cfg.vocab_size)
        state = sample_and_commit(state, z, transform, eos_id, cache=out.cache)
        # the committed token's children join the queue (Morton order: child index order)
        grew = state.lengths > old_len
        tok = jnp.take_along_axis(state.tokens, jnp.clip(old_len, 0, state.tokens.shape[1] - 1)[:, None], 1)[:, 0]
        bits = ((tok[:, None] + 1) >> jnp.arange(spec.children)) & 1  # [R, C]
        bits = bits * (grew & (lev_k > 1))[:, None]
        slot = jnp.where(bits > 0, q["tail"][:, None] + jnp.cumsum(bits, 1) - 1, M)
        child = 2 * q["coords"][rows, k][:, None, :] + jnp.asarray(spec.offsets())[None]
        r2 = jnp.broadcast_to(rows[:, None], slot.shape)
        coords = q["coords"].at[r2, slot].set(child, mode="drop")
        qlev = q["levels"].at[r2, slot].set(jnp.broadcast_to((lev_k - 1)[:, None], slot.shape), mode="drop")
        tail = q["tail"] + jnp.sum(bits, 1).astype(jnp.int32)
        done = state.done | (state.lengths - 1 >= tail)  # no node left to tokenise
        cache = state.cache.set_lengths(2 * (state.lengths - 1)) if self.masked else state.cache
        return state.replace(done=done, cache=cache, extra={"coords": coords, "levels": qlev, "tail": tail})


def octree_decoder(spec: OctreeSpec, *, masked: bool = True) -> OctreeDecode:
    """Returns the :class:`OctreeDecode` strategy (masked NTP queries when ``masked``) for :func:`sample_octrees`."""
    return OctreeDecode(spec=spec, masked=masked)


class OctreeSamples(NamedTuple):
    """What :func:`sample_octrees` returns: ``occupancy`` bool [n, g, g(, g)]; ``tokens`` the decoded
    :class:`OctreeTokens` (re-encoded from the occupancy: the same codes); ``logprobs`` float32 [n, M]
    (log-probability of each code under the distribution it was drawn from, 0 past ``num_nodes``);
    ``stats`` (generate's statistics; ``forward_calls`` = decode steps). Width M = ``spec.max_nodes``."""

    occupancy: np.ndarray
    tokens: OctreeTokens
    logprobs: np.ndarray
    stats: dict


def sample_octrees(model: Model, strategy: OctreeDecode, labels: Any, key: jax.Array, *, temperature: Any = 1.0,
                   logits: LogitTransform | None = None) -> OctreeSamples:
    """Returns :class:`OctreeSamples`: one structure per class label in ``labels`` [n], decoded by ``strategy``
    through :func:`tokjax.generate` (``temperature`` > 0, scalar or [n], a runtime value; ``logits`` an
    optional further LogitTransform). Raises ValueError for labels out of range or a model that cannot read
    the spec (vocabulary, pos_dims, max_len < 1 + max_nodes)."""
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    if not isinstance(strategy, OctreeDecode):
        raise ValueError(f"strategy must be an OctreeDecode (octree_decoder(spec)), got {type(strategy).__name__}")
    spec, cfg = strategy.spec, model.cfg
    _check_model(cfg, spec)
    _level_table(model.params, spec)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] < 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers [n] with n >= 1, got {labels.dtype} {labels.shape}")
    prompts = np.asarray(spec.vocab.class_tokens(labels))[:, None]
    M = spec.max_nodes
    if 1 + M > cfg.max_len:
        raise ValueError(f"a tree of up to {M} tokens needs max_len >= {1 + M}, got {cfg.max_len}")
    strategy = dataclasses.replace(strategy, pos_dims=cfg.pos_dims)
    transform = temperature_tf(np.asarray(temperature, np.float32))
    if logits is not None:
        transform = chain(transform, logits)
    run_model = Model(model.params, cfg.replace(pos_dims=1))
    out = generate(run_model, prompts, key=key, max_new_tokens=M, strategy=strategy, logits=transform, logprobs=0)
    lengths = np.asarray(out.lengths)
    num = (lengths - 1).astype(np.int32)
    width = np.arange(M)[None] < num[:, None]
    codes = np.where(width, np.asarray(out.tokens)[:, 1:1 + M], -1).astype(np.int32)
    lp = np.where(width, np.asarray(out.logprobs)[:, 1:1 + M], 0.0).astype(np.float32)
    occ = octree_decode(codes, num, spec)
    return OctreeSamples(occupancy=occ, tokens=octree_encode(occ, spec, width=M), logprobs=lp, stats=out.stats)


# -------------------------------------------------------------------------------------------- registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("uni3dar", lambda dims, depth, num_classes: make_uni3dar_loss(uni3dar(dims, depth, num_classes)),
                  {"dims": 3, "depth": 3, "num_classes": 1},
                  doc="P53 Uni-3DAR: code-restricted cross-entropy of octree tokens (masked-NTP queries or plain "
                      "next tokens, as the uni3dar_batch's mask says); params need params['uni3dar'] "
                      "(tokjax.vision.uni3dar.uni3dar_init)",
                  overwrite=True)


_register()
