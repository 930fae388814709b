"""KVCache: fixed-capacity key/value cache with per-layer, per-row valid lengths.

Layout: ``k, v``: tuples of one buffer per layer, each head-major ``[B, KV, S, hd]``;
``lengths: int32 [L, B]``. Layer l of row b holds valid entries in slots
``0 .. lengths[l, b] - 1``; the forward function writes a block of T new tokens of that layer
at slots ``lengths[l, b] .. + T - 1`` and advances that layer's length.

Why this layout: batch-1 decoding is bound by memory bandwidth. Head-major buffers are read by
attention without a transposed copy, and separate per-layer buffers are updated in place inside
the jitted decode loop (a stacked ``[L, ...]`` buffer under ``lax.scan`` is sliced and copied
on every step on CPU). :meth:`stacked` returns the ``[L, B, S, KV, hd]`` view for inspection.

Per-layer lengths let layer-range forwards (early-exit drafts, SkipDecode) fill some layers
ahead of others; everything else sees equal lengths in every layer. Rollback is a write of
integers, so speculative decoding never copies the cache to undo a rejected draft.

Mamba models (``cfg.mixer == "mamba"``, :mod:`tokjax.model.mamba`) keep a recurrent state instead of
keys and values: ``conv`` [B, K-1, E] and ``ssm`` [B, E, N] (float32) per layer, the state after the
layer's ``lengths`` tokens. Their ``k, v`` are empty [B, 0, S, 0] placeholders that only carry the
capacity S (positions, capacity checks); for attention models ``conv`` and ``ssm`` are empty tuples
(no leaves). A recurrent state has no history, so :meth:`rollback` and :meth:`gather` refuse it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.model.config import ModelConfig


@struct.dataclass
class KVCache:
    """The key/value cache pytree: per-layer head-major buffers and per-layer, per-row lengths (see the
    module docstring)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    lengths: jax.Array
    conv: tuple[jax.Array, ...] = ()  # mamba models only: per-layer conv windows [B, K-1, E]
    ssm: tuple[jax.Array, ...] = ()  # mamba models only: per-layer SSM states [B, E, N] float32

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, capacity: int | None = None, dtype=None) -> "KVCache":
        """Returns an empty cache for ``batch`` rows of up to ``capacity`` (default cfg.max_len) tokens."""
        capacity = cfg.max_len if capacity is None else capacity
        if batch < 1 or capacity < 1:
            raise ValueError(f"KVCache needs batch >= 1 and capacity >= 1, got batch={batch}, capacity={capacity}")
        dtype = cfg.dtype if dtype is None else dtype
        if cfg.mixer == "mamba":
            L, E = cfg.n_layers, cfg.ssm_inner
            return cls(
                k=tuple(jnp.zeros((batch, 0, capacity, 0), dtype) for _ in range(L)),
                v=tuple(jnp.zeros((batch, 0, capacity, 0), dtype) for _ in range(L)),
                lengths=jnp.zeros((L, batch), jnp.int32),
                conv=tuple(jnp.zeros((batch, cfg.ssm_conv - 1, E), dtype) for _ in range(L)),
                ssm=tuple(jnp.zeros((batch, E, cfg.ssm_state), jnp.float32) for _ in range(L)),
            )
        shape = (batch, cfg.kv_heads, capacity, cfg.head_size)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
            lengths=jnp.zeros((cfg.n_layers, batch), jnp.int32),
        )

    # Sizes ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.k)

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def recurrent(self) -> bool:
        """Whether this cache holds a recurrent (Mamba) state rather than keys and values."""
        return len(self.conv) > 0

    def _no_history(self, what: str) -> None:
        if self.recurrent:
            raise ValueError(
                f"KVCache.{what}: this cache holds a Mamba (mixer='mamba') recurrent state, which keeps no "
                "per-token history and cannot be rolled back or rearranged by slot; strategies that roll the "
                "cache back (speculative decoding, token recycling, SkipDecode, ...) do not support mamba models "
                "(plain sampling, greedy and beam search do)"
            )

    @property
    def length(self) -> jax.Array:
        """Per-row length [B] of the last layer: tokens that have been through the whole model."""
        return self.lengths[-1]

    def stacked(self) -> tuple[jax.Array, jax.Array]:
        """Returns (k, v) as [L, B, S, KV, hd] copies (for inspection and tests; decoding never needs it)."""
        to = lambda bufs: jnp.stack([jnp.swapaxes(b, 1, 2) for b in bufs])  # noqa: E731
        return to(self.k), to(self.v)

    # Operations ----------------------------------------------------------------------
    def write_layer(self, layer: int, k_new: jax.Array, v_new: jax.Array) -> "KVCache":
        """Returns the cache with k_new, v_new [B, T, KV, hd] of one layer written after its length (advanced by T)."""
        self._no_history("write_layer")
        offset = self.lengths[layer]
        k_buf, v_buf = write_tokens(self.k[layer], self.v[layer], k_new, v_new, offset)
        k = self.k[:layer] + (k_buf,) + self.k[layer + 1:]
        v = self.v[:layer] + (v_buf,) + self.v[layer + 1:]
        return self.replace(k=k, v=v, lengths=self.lengths.at[layer].add(k_new.shape[1]))

    def append(self, k_new: jax.Array, v_new: jax.Array, layer_slice: tuple[int, int] | None = None) -> "KVCache":
        """Returns the cache with k_new, v_new [L', B, T, KV, hd] written after each layer's length."""
        start, end = (0, self.num_layers) if layer_slice is None else layer_slice
        if k_new.shape[0] != end - start:
            raise ValueError(f"append got {k_new.shape[0]} layers of keys for layer range ({start}, {end})")
        cache = self
        for j, layer in enumerate(range(start, end)):
            cache = cache.write_layer(layer, k_new[j], v_new[j])
        return cache

    def rollback(self, lengths: jax.Array) -> "KVCache":
        """Returns the cache truncated to per-row ``lengths`` [B] (no layer grows; stale slots are ignored).

        Raises ValueError for a recurrent (Mamba) cache, whose state cannot be rolled back."""
        self._no_history("rollback")
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
        Raises ValueError for a recurrent (Mamba) cache.
        """
        self._no_history("gather")
        base = jnp.asarray(base, jnp.int32)
        src = jnp.asarray(src, jnp.int32)
        count = jnp.asarray(count, jnp.int32)
        A = src.shape[1]
        dst = base[:, None] + jnp.arange(A)[None, :]  # [B, A]
        keep = jnp.arange(A)[None, :] < count[:, None]
        from_slot = jnp.clip(jnp.where(keep, base[:, None] + src, dst), 0, self.capacity - 1)
        # Only the A slots starting at base change: read them from their sources, write them back.
        rows = jnp.arange(self.batch)[:, None]

        def move(buf):  # [B, KV, S, hd]
            moved = buf[rows, :, from_slot]  # [B, A, KV, hd]
            return buf.at[rows, :, dst].set(moved, mode="drop")

        new_len = jnp.broadcast_to((base + count)[None, :], self.lengths.shape)
        return self.replace(
            k=tuple(move(b) for b in self.k), v=tuple(move(b) for b in self.v), lengths=new_len.astype(jnp.int32)
        )

    def fork(self, repeats: int) -> "KVCache":
        """Returns the cache with every row repeated ``repeats`` times (row b -> rows b*r .. b*r + r - 1)."""
        if repeats < 1:
            raise ValueError(f"fork needs repeats >= 1, got {repeats}")
        rep = lambda bufs: tuple(jnp.repeat(b, repeats, axis=0) for b in bufs)  # noqa: E731
        return self.replace(k=rep(self.k), v=rep(self.v), lengths=jnp.repeat(self.lengths, repeats, axis=1),
                            conv=rep(self.conv), ssm=rep(self.ssm))

    def select_rows(self, rows: jax.Array) -> "KVCache":
        """Returns the cache restricted (or re-ordered) to the given row indices [B']."""
        rows = jnp.asarray(rows, jnp.int32)
        pick = lambda bufs: tuple(b[rows] for b in bufs)  # noqa: E731
        return self.replace(k=pick(self.k), v=pick(self.v), lengths=self.lengths[:, rows], conv=pick(self.conv),
                            ssm=pick(self.ssm))


def write_tokens(k_buf, v_buf, k_new, v_new, offset):
    """Returns (k_buf, v_buf) [B, KV, S, hd] with k_new, v_new [B, T, KV, hd] written at per-row slot offset[b].

    Slots past the capacity are dropped (callers validate capacity where shapes are concrete).
    """
    B, T = k_new.shape[:2]
    rows = jnp.arange(B)[:, None]
    slots = offset[:, None] + jnp.arange(T)[None, :]
    k_new, v_new = k_new.astype(k_buf.dtype), v_new.astype(v_buf.dtype)
    if B * T == 1:
        # XLA rewrites a one-index scatter into a dynamic-update-slice, which its CPU fusion then
        # duplicates into the attention read of the buffer, copying the whole buffer 4 times per
        # layer (a 2048-slot batch-1 step: 106 ms instead of ~25). The same update written twice
        # stays a scatter, updated in place.
        rows, slots = jnp.concatenate([rows, rows], 1), jnp.concatenate([slots, slots], 1)
        k_new, v_new = jnp.concatenate([k_new, k_new], 1), jnp.concatenate([v_new, v_new], 1)
    k_buf = k_buf.at[rows, :, slots].set(k_new, mode="drop")
    v_buf = v_buf.at[rows, :, slots].set(v_new, mode="drop")
    return k_buf, v_buf
