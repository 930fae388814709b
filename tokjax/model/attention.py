"""Attention masks, rotary positions and grouped-query attention.

A mask spec says which keys each query of the *current block* may see. Keys are slots:
without a cache the block's own T tokens (slot = index in the block); with a cache, the
cache's S slots, where the block was written at slots ``offset[b] + t``. Slots below the
row's offset (the committed past) are visible to every query of the block under every
mask spec except an explicit array; slots at or beyond ``offset + T`` are never visible
(they hold stale or unwritten data).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Union

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.model.causal_kernel import causal_attend_kernel, causal_kernel_applies


@struct.dataclass
class Causal:
    """Causal mask spec: each token sees itself and earlier tokens."""


@struct.dataclass
class Bidirectional:
    """Bidirectional mask spec: every token sees every (valid) token of the block."""


@struct.dataclass
class Prefix:
    """Prefix-LM mask spec: bidirectional over the first ``lengths[b]`` tokens, causal after.

    ``lengths``: int [B] or scalar, runtime array (changing it does not recompile).
    """

    lengths: jax.Array


@struct.dataclass
class Rank:
    """Rank mask spec: token i sees j when rank[j] < rank[i], or rank[j] == rank[i] and
    (``bidirectional`` or j <= i). Block-causal / next-block prediction when bidirectional.

    ``ranks``: int [B, T] or [T].
    """

    ranks: jax.Array
    bidirectional: bool = struct.field(pytree_node=False, default=True)


@struct.dataclass
class Tree:
    """Token-tree mask spec: node i sees its ancestors and itself.

    ``parents``: int [B, T] or [T]; parents[i] < i is the index of i's parent inside the block,
    -1 for a root (whose parent is the last committed token). Decoding one root-to-leaf path
    under this mask equals causal decoding of that path.
    """

    parents: jax.Array


@struct.dataclass
class Explicit:
    """Explicit mask spec: a boolean array [B, T, S] (S = key slots), True = visible."""

    visible: jax.Array


MaskSpec = Union[Causal, Bidirectional, Prefix, Rank, Tree, Explicit]


def tree_ancestors(parents: jax.Array) -> jax.Array:
    """Returns bool [..., T, T]: anc[i, j] is True when j is i or an ancestor of i under ``parents``."""
    parents = jnp.asarray(parents, jnp.int32)
    T = parents.shape[-1]
    eye = jnp.eye(T, dtype=bool)
    anc = jnp.broadcast_to(eye, parents.shape + (T,))
    cur = parents
    # A path has at most T-1 edges, so T-1 hops reach every ancestor; static trip count.
    for _ in range(max(T - 1, 0)):
        hit = (cur[..., :, None] == jnp.arange(T)) & (cur[..., :, None] >= 0)
        anc = anc | hit
        cur = jnp.where(cur >= 0, jnp.take_along_axis(parents, jnp.maximum(cur, 0), axis=-1), -1)
    return anc


def tree_depths(parents: jax.Array) -> jax.Array:
    """Returns int [..., T]: depth of each node (roots have depth 0); position = base + depth."""
    return tree_ancestors(parents).sum(-1).astype(jnp.int32) - 1


def validate_tree(parents) -> None:
    """Returns None; raises ValueError unless every parent index is -1 or points to an earlier node."""
    import numpy as np

    p = np.asarray(parents)
    idx = np.arange(p.shape[-1])
    if p.dtype.kind not in "iu":
        raise ValueError(f"tree parents must be integers, got dtype {p.dtype}")
    if np.any(p < -1) or np.any(p >= idx):
        bad = np.argwhere((p < -1) | (p >= idx))[0]
        raise ValueError(
            f"tree parents must satisfy -1 <= parents[i] < i (a topologically ordered tree); "
            f"entry {tuple(int(i) for i in bad)} = {int(p[tuple(bad)])}"
        )


def _block_visible(spec: MaskSpec, B: int, T: int) -> jax.Array:
    """Returns bool [B, T, T]: which tokens of the block see which tokens of the block."""
    i = jnp.arange(T)[:, None]
    j = jnp.arange(T)[None, :]
    causal = j <= i
    if isinstance(spec, Causal):
        m = causal
    elif isinstance(spec, Bidirectional):
        m = jnp.ones((T, T), bool)
    elif isinstance(spec, Prefix):
        n = jnp.broadcast_to(jnp.asarray(spec.lengths, jnp.int32), (B,))[:, None, None]
        m = causal[None] | ((i[None] < n) & (j[None] < n))
    elif isinstance(spec, Rank):
        r = jnp.broadcast_to(jnp.asarray(spec.ranks, jnp.int32), (B, T))
        rq, rk = r[:, :, None], r[:, None, :]
        same = (rq == rk) & (True if spec.bidirectional else causal[None])
        m = (rk < rq) | same
    elif isinstance(spec, Tree):
        parents = jnp.broadcast_to(jnp.asarray(spec.parents, jnp.int32), (B, T))
        m = tree_ancestors(parents)
    else:
        raise ValueError(f"unknown mask spec {type(spec).__name__}; expected one of {MaskSpec}")
    return jnp.broadcast_to(m, (B, T, T))


def build_mask(
    spec: MaskSpec,
    B: int,
    T: int,
    *,
    offset: jax.Array | None = None,
    capacity: int | None = None,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Returns bool [B, T, S]: the visibility of each key slot for each query of the block.

    Without a cache (``offset`` None) S = T. With a cache, S = ``capacity`` and the block
    occupies slots ``offset[b] .. offset[b] + T - 1`` of row b.
    """
    if isinstance(spec, Explicit):
        vis = jnp.asarray(spec.visible, bool)
        S = T if offset is None else capacity
        if vis.ndim == 2:
            vis = vis[None]
        if vis.shape[-2:] != (T, S):
            raise ValueError(f"explicit mask must have shape [B, {T}, {S}] (queries, key slots), got {vis.shape}")
        vis = jnp.broadcast_to(vis, (B, T, S))
        if offset is not None:
            written = jnp.arange(S)[None, None, :] < (offset[:, None, None] + T)
            vis = vis & written
        return vis
    block = _block_visible(spec, B, T)
    if segment_ids is not None:
        seg = jnp.broadcast_to(segment_ids, (B, T))
        block = block & (seg[:, :, None] == seg[:, None, :])
    if offset is None:
        return block
    S = capacity
    slots = jnp.arange(S)
    rel = slots[None, :] - offset[:, None]  # [B, S]: index of the slot inside the block
    past = rel < 0
    in_block = (rel >= 0) & (rel < T)
    rel_c = jnp.clip(rel, 0, T - 1)
    from_block = jnp.take_along_axis(block, jnp.broadcast_to(rel_c[:, None, :], (B, T, S)), axis=2)
    return past[:, None, :] | (in_block[:, None, :] & from_block)


# ----------------------------------------------------------------------------------- RoPE
def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Returns x [B, T, H, hd] rotated by rotary position embeddings (half-split convention of Llama/HF).

    ``positions`` [B, T]: one sequence index per token. ``positions`` [B, T, P] (P = 2 or 3 axes, e.g.
    row, column, frame): axial RoPE, the head dimension cut into P equal chunks and chunk ``a`` rotated
    by axis ``a``'s coordinate with the same frequency ladder, so a query-key score depends only on the
    per-axis offsets (shift invariance on each axis).
    """
    if positions.ndim == 3:
        P = positions.shape[-1]
        chunk = x.shape[-1] // P
        return jnp.concatenate(
            [rope(x[..., a * chunk:(a + 1) * chunk], positions[..., a], theta) for a in range(P)], axis=-1)
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    ang = positions.astype(jnp.float32)[..., None] * inv  # [B, T, hd/2]
    cos = jnp.cos(ang)[:, :, None, :]
    sin = jnp.sin(ang)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : hd // 2], xf[..., hd // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ------------------------------------------------------------------------------ attention
def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array, *, head_major: bool = False,
           return_probs: bool = False):
    """Returns the attention output [B, T, H, hd] of q [B,T,H,hd] over k, v [B,S,KV,hd] under visible [B,T,S].

    ``head_major``: k, v are laid out [B, KV, S, hd] (the KV cache's layout), read without a
    transposed copy. Grouped-query: each of the KV heads serves H/KV query heads. Softmax in
    float32. A query with no visible key returns zeros instead of NaN. ``return_probs`` (static):
    return ``(out, probs)`` with the float32 attention probabilities ``probs`` [B, H, T, S]
    (the ``attn_probs`` tap); the output is the same array either way.
    """
    B, T, H, hd = q.shape
    if not head_major:
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    KV, S = k.shape[1], k.shape[2]
    G = H // KV
    # Batch dims first, one free dim per operand: XLA CPU then emits one batched matmul per
    # einsum instead of a transposed-operand dot (measured 2.5x faster decode attention).
    M = G * T
    qm = q.reshape(B, T, KV, G, hd).transpose(0, 2, 3, 1, 4).reshape(B, KV, M, hd)
    scores = jnp.einsum("bkmd,bksd->bkms", qm, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / jnp.sqrt(jnp.float32(hd)))
    vis = jnp.broadcast_to(visible[:, None, None], (B, KV, G, T, S)).reshape(B, KV, M, S)
    scores = jnp.where(vis, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(vis, probs, 0.0)  # rows with nothing visible become all-zero, not uniform
    out = jnp.einsum("bkms,bksd->bkmd", probs.astype(v.dtype), v)
    out = out.reshape(B, KV, G, T, hd).transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)
    if return_probs:  # query head h = kv head h // G, group member h % G (the reshape above)
        return out, probs.reshape(B, KV, G, T, S).reshape(B, H, T, S)
    return out


CAUSAL_BLOCK = 256  # query block of causal_attend; blocks skip the keys every query of theirs cannot see


FUSED_ATTENTION_PLATFORMS = ("gpu",)  # where jax.nn.dot_product_attention may run a fused kernel (cuDNN)


def causal_attend(q: jax.Array, k: jax.Array, v: jax.Array, *, segment_ids: jax.Array | None = None,
                  block: int = CAUSAL_BLOCK, fused: bool | None = None) -> jax.Array:
    """Returns :func:`attend` of q [B,T,H,hd] over k, v [B,T,KV,hd] under the causal mask, by query blocks.

    Query block [s, e) attends to keys [0, e) only (the keys after it are invisible to all of its
    queries), with its [e - s, e] mask built per block: about half the work of the [T, T] scores and
    O(T * block) memory instead of O(T^2). ``segment_ids`` [B, T] (packed documents) are applied per
    block too. Same values as ``attend(q, k, v, build_mask(Causal(), B, T))`` up to float summation order.
    ``fused`` (default: on platforms in ``FUSED_ATTENTION_PLATFORMS`` when there are no segments):
    ``jax.nn.dot_product_attention(..., is_causal=True)`` instead, which XLA/cuDNN fuse on GPU.
    On CPU, float32 operands without segments run the fused kernel of
    :mod:`tokjax.model.causal_kernel`, whose reverse mode is a kernel too (the query-block path elsewhere).
    """
    B, T = q.shape[:2]
    if fused is None:
        fused = segment_ids is None and jax.default_backend() in FUSED_ATTENTION_PLATFORMS
    if fused:
        if segment_ids is not None:
            raise ValueError("causal_attend(fused=True) does not take segment_ids (packed documents): use fused=False")
        return jax.nn.dot_product_attention(q, k, v, is_causal=True).astype(q.dtype)
    if segment_ids is None and causal_kernel_applies(q, k, v):
        return causal_attend_kernel(q, k, v, functools.partial(_causal_blocks, block=block))
    return _causal_blocks(q, k, v, segment_ids=segment_ids, block=block)


def _causal_blocks(q, k, v, *, segment_ids=None, block: int = CAUSAL_BLOCK):
    B, T = q.shape[:2]
    if T <= block:
        return attend(q, k, v, build_mask(Causal(), B, T, segment_ids=segment_ids))
    seg = None if segment_ids is None else jnp.broadcast_to(segment_ids, (B, T))
    outs = []
    for s in range(0, T, block):
        e = min(s + block, T)
        vis = jnp.arange(e)[None, :] <= jnp.arange(s, e)[:, None]
        vis = jnp.broadcast_to(vis, (B, e - s, e))
        if seg is not None:
            vis = vis & (seg[:, s:e, None] == seg[:, None, :e])
        outs.append(attend(q[:, s:e], k[:, :e], v[:, :e], vis))
    return jnp.concatenate(outs, axis=1)


def mask_spec_name(spec) -> str:
    """Returns a short name of a mask spec (for error messages)."""
    return type(spec).__name__ if dataclasses.is_dataclass(spec) else repr(spec)
