"""Last-position read-outs of many ragged token lists: the final-normed hidden state and next-token logits there.

Scoring and representation methods (P3 PromptReps, P20 FIRST) need, for each of many prompts of different
lengths, the state at its last token only. :func:`last_token_states` batches them with right padding, sorted
by length so similar lengths share a padded width (rounded up to ``bucket`` tokens, so few shapes compile),
runs the shared forward without the [B, T, V] logits and unembeds the last position alone.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.forward import Inputs, forward, unembed

__all__ = ["last_token_logits", "last_token_states"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_states(params, cfg, tokens, lengths):
    out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False)
    rows = jnp.arange(tokens.shape[0])
    h = out.hidden[rows, lengths - 1]  # final-normed (HF's hidden_states[-1])
    logits = unembed(params, cfg, h[:, None, :])[:, 0]
    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    mean = jnp.sum(jnp.where(mask[..., None], out.hidden, 0.0), 1) / lengths[:, None]
    return h.astype(jnp.float32), logits.astype(jnp.float32), mean.astype(jnp.float32)


def last_token_states(model, token_lists: Sequence[Sequence[int]], *, batch_size: int = 8, bucket: int = 32
                      ) -> Iterator[tuple[np.ndarray, tuple[jax.Array, jax.Array, jax.Array]]]:
    """Yields (row indices, (last hidden [b, D], last logits [b, V], mean hidden [b, D])) per batch.

    Arrays have ``batch_size`` rows (a short last batch is padded with length-1 rows: one compile per width);
    only the first ``len(indices)`` rows are real.
    """
    if not token_lists or any(len(t) == 0 for t in token_lists):
        raise ValueError("need at least one token list, and every token list must be non-empty")
    if batch_size < 1 or bucket < 1:
        raise ValueError(f"batch_size and bucket must be >= 1, got {batch_size} and {bucket}")
    V = model.cfg.vocab_size
    for j, t in enumerate(token_lists):
        a = np.asarray(t)
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise ValueError(f"token list {j} must be a flat list of integer token ids, got {a.dtype} of shape {a.shape}")
        if a.min() < 0 or a.max() >= V:
            raise ValueError(f"token list {j} has ids outside the model's vocabulary [0, {V}): "
                             f"{a[(a < 0) | (a >= V)][:5].tolist()}")
    order = np.argsort([len(t) for t in token_lists], kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = -(-max(len(token_lists[i]) for i in idx) // bucket) * bucket
        if width > model.cfg.max_len:
            width = max(len(token_lists[i]) for i in idx)
            if width > model.cfg.max_len:
                raise ValueError(f"a prompt of {width} tokens exceeds the model's max_len {model.cfg.max_len}")
        toks = np.zeros((batch_size, width), np.int32)
        lens = np.ones((batch_size,), np.int32)
        for r, i in enumerate(idx):
            toks[r, :len(token_lists[i])] = token_lists[i]
            lens[r] = len(token_lists[i])
        yield idx, _last_states(model.params, model.cfg, jnp.asarray(toks), jnp.asarray(lens))


def last_token_logits(model, token_lists: Sequence[Sequence[int]], *, batch_size: int = 8, bucket: int = 32,
                      columns: np.ndarray | None = None) -> np.ndarray:
    """Returns float32 [N, V] (or [N, len(columns)]) next-token logits at each list's last token."""
    cols = None if columns is None else np.asarray(columns)
    if cols is not None and (cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or cols.min() < 0
                             or cols.max() >= model.cfg.vocab_size):
        raise ValueError(f"columns must be a non-empty 1-D list of token ids in [0, {model.cfg.vocab_size}), "
                         f"got {columns!r}")
    out = None
    for idx, (_, z, _) in last_token_states(model, token_lists, batch_size=batch_size, bucket=bucket):
        z = np.asarray(z)[: len(idx)]
        z = z if cols is None else z[:, cols]
        if out is None:
            out = np.zeros((len(token_lists), z.shape[1]), np.float32)
        out[idx] = z
    return out
