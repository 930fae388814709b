"""Row and pooling primitives shared by decoders, losses and tokenizer transforms (one copy each).

Batch-row helpers act on every leaf of a pytree whose leading axis is the batch (a KV cache's
per-layer buffers, logit-transform state, per-row counters) and leave other leaves alone, so a
strategy can fork, select or merge its whole state with one call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_int_values", "masked_mean", "repeat_rows", "take_rows", "where_rows"]


def _is_row_leaf(x: Any, batch: int) -> bool:
    return getattr(x, "ndim", 0) >= 1 and x.shape[0] == batch


def repeat_rows(tree: Any, batch: int, repeats: int) -> Any:
    """Returns ``tree`` with every leaf whose leading axis is ``batch`` repeated ``repeats`` times row-wise
    (row b becomes rows b*repeats .. b*repeats+repeats-1); other leaves are returned unchanged."""
    if repeats == 1:
        return tree
    return jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0) if _is_row_leaf(x, batch) else x, tree)


def take_rows(tree: Any, rows: jax.Array, batch: int) -> Any:
    """Returns ``tree`` with every leaf whose leading axis is ``batch`` indexed by ``rows`` (int [B'])."""
    return jax.tree.map(lambda x: x[rows] if _is_row_leaf(x, batch) else x, tree)


def where_rows(mask: jax.Array, new: Any, old: Any) -> Any:
    """Returns, leaf by leaf, ``new`` in the rows where ``mask`` [B] is True and ``old`` elsewhere; leaves
    without a leading batch axis are taken from ``new``."""
    batch = mask.shape[0]

    def pick(a, b):
        if _is_row_leaf(a, batch):
            return jnp.where(mask.reshape((batch,) + (1,) * (a.ndim - 1)), a, b)
        return a

    return jax.tree.map(pick, new, old)


def check_int_values(x, name: str, lo: int, hi: int, *, hi_closed: bool = False) -> None:
    """Returns None; raises ValueError when the concrete integer array ``x`` (token ids, labels, lengths)
    has a value outside [lo, hi) (or [lo, hi] with ``hi_closed``), naming ``name`` and the range found.

    A traced ``x`` is not checked: its values are unknown until it runs (an out-of-range id then
    gathers a clamped row, so callers check at the boundary where arrays are still concrete).
    """
    if isinstance(x, jax.core.Tracer):
        return
    host = np.asarray(x)  # before reducing: numpy reductions on a jax array inside an outer jit would trace
    if not host.size:
        return
    vmin, vmax = int(host.min()), int(host.max())
    if vmin < lo or (vmax > hi if hi_closed else vmax >= hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}{']' if hi_closed else ')'}, got values in [{vmin}, {vmax}]")


def masked_mean(x: jax.Array, mask: jax.Array, axis: int = 1) -> jax.Array:
    """Returns the mean of ``x`` over ``axis`` counting only positions where ``mask`` is True.

    ``x`` [B, T, ...] and ``mask`` [B, T] (bool or 0/1): the masked mean-pool of hidden states
    or embeddings. A row with no valid position pools to 0 (never NaN).
    """
    m = jnp.asarray(mask).astype(x.dtype)
    m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1)


def path_tokens(path) -> tuple[str, ...]:
    """Returns a pytree key path (``jax.tree_util`` keys) as plain strings: dict keys, attribute
    names and sequence indices (orbax's metadata spells attributes as dict keys, so both agree)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
        else:
            out.append(str(k))
    return tuple(out)
