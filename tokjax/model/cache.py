"""KVCache: fixed-capacity key/value cache with per-layer, per-row valid lengths.

Layout ``k, v: [L, B, S, KV, hd]``; ``lengths: int32 [L, B]``. Layer l of row b holds valid
entries in slots ``0 .. lengths[l, b] - 1``; the forward function writes a block of T new
tokens of that layer at slots ``lengths[l, b] .. + T - 1`` and advances that layer's length.
Per-layer lengths let layer-range forwards (early-exit drafts, SkipDecode) fill some layers
ahead of others; everything else sees equal lengths in every layer. Rollback is a write
of integers, so speculative decoding never copies the cache to undo a rejected draft.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.model.config import ModelConfig


@struct.dataclass
class KVCache:
    """Returns nothing; the key/value cache pytree (see module docstring)."""

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, capacity: int | None = None, dtype=None) -> "KVCache":
        """Returns an empty cache for ``batch`` rows of up to ``capacity`` (default cfg.max_len) tokens."""
        capacity = cfg.max_len if capacity is None else capacity
        if batch < 1 or capacity < 1:
            raise ValueError(f"KVCache needs batch >= 1 and capacity >= 1, got batch={batch}, capacity={capacity}")
        dtype = cfg.dtype if dtype is None else dtype
        shape = (cfg.n_layers, batch, capacity, cfg.kv_heads, cfg.head_size)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((cfg.n_layers, batch), jnp.int32),
        )

    # Sizes ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def length(self) -> jax.Array:
        """Per-row length [B] of the last layer: tokens that have been through the whole model."""
        return self.lengths[-1]

    # Operations ----------------------------------------------------------------------
    def append(self, k_new: jax.Array, v_new: jax.Array, layer_slice: tuple[int, int] | None = None) -> "KVCache":
        """Returns the cache with k_new, v_new [L', B, T, KV, hd] written after each layer's length."""
        start, end = (0, self.num_layers) if layer_slice is None else layer_slice
        k = self.k[start:end]
        v = self.v[start:end]
        lens = self.lengths[start:end]
        k = jax.vmap(write_rows)(k, k_new, lens)
        v = jax.vmap(write_rows)(v, v_new, lens)
        T = k_new.shape[2]
        return self.replace(
            k=self.k.at[start:end].set(k),
            v=self.v.at[start:end].set(v),
            lengths=self.lengths.at[start:end].add(T),
        )

    def rollback(self, lengths: jax.Array) -> "KVCache":
        """Returns the cache truncated to per-row ``lengths`` [B] (no layer grows; stale slots are ignored)."""
        lengths = jnp.asarray(lengths, jnp.int32)
        return self.replace(lengths=jnp.minimum(self.lengths, lengths[None, :]))

    def set_lengths(self, lengths: jax.Array) -> "KVCache":
        """Returns the cache with every layer's length set to per-row ``lengths`` [B] (e.g. after a padded prefill)."""
        lengths = jnp.asarray(lengths, jnp.int32)
        return self.replace(lengths=jnp.broadcast_to(lengths[None, :], self.lengths.shape).astype(jnp.int32))

    def gather(self, base: jax.Array, src: jax.Array, count: jax.Array) -> "KVCache":
        """Returns the cache with an accepted tree path compacted into contiguous slots.

        For row b, the slots ``base[b] + src[b, a]`` (a < count[b]) are copied to
        ``base[b] + a`` and every layer's length becomes ``base[b] + count[b]``. ``src`` [B, A]
        indexes nodes of the block written at ``base``; entries at a >= count[b] are ignored.
        """
        base = jnp.asarray(base, jnp.int32)
        src = jnp.asarray(src, jnp.int32)
        count = jnp.asarray(count, jnp.int32)
        A = src.shape[1]
        S = self.capacity
        dst = base[:, None] + jnp.arange(A)[None, :]  # [B, A]
        keep = jnp.arange(A)[None, :] < count[:, None]
        from_slot = jnp.where(keep, base[:, None] + src, dst)
        # Slots outside [base, base + A) are copied onto themselves.
        idx = jnp.broadcast_to(jnp.arange(S)[None, :], (self.batch, S))
        in_range = (idx >= base[:, None]) & (idx < base[:, None] + A)
        rel = jnp.clip(idx - base[:, None], 0, A - 1)
        gathered_from = jnp.take_along_axis(from_slot, rel, axis=1)
        idx = jnp.where(in_range, gathered_from, idx)
        idx = jnp.clip(idx, 0, S - 1)

        def take(x):  # x [L, B, S, KV, hd]
            return jnp.take_along_axis(x, idx[None, :, :, None, None], axis=2)

        new_len = jnp.broadcast_to((base + count)[None, :], self.lengths.shape)
        return self.replace(k=take(self.k), v=take(self.v), lengths=new_len.astype(jnp.int32))

    def fork(self, repeats: int) -> "KVCache":
        """Returns the cache with every row repeated ``repeats`` times (row b -> rows b*r .. b*r + r - 1)."""
        if repeats < 1:
            raise ValueError(f"fork needs repeats >= 1, got {repeats}")
        rep = lambda x, axis: jnp.repeat(x, repeats, axis=axis)  # noqa: E731
        return self.replace(k=rep(self.k, 1), v=rep(self.v, 1), lengths=rep(self.lengths, 1))

    def select_rows(self, rows: jax.Array) -> "KVCache":
        """Returns the cache restricted (or re-ordered) to the given row indices [B']."""
        rows = jnp.asarray(rows, jnp.int32)
        return self.replace(k=self.k[:, rows], v=self.v[:, rows], lengths=self.lengths[:, rows])


def write_rows(buf: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Returns buf [B, S, ...] with new [B, T, ...] written at per-row slot ``start[b]``."""

    def one(b, n, s):
        return jax.lax.dynamic_update_slice_in_dim(b, n.astype(b.dtype), s, axis=0)

    return jax.vmap(one)(buf, new, start)
