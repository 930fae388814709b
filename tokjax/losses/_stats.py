"""TokenStats -> loss transforms -> reduction: the shape every per-token loss in tokjax takes.

A next-token loss is computed in three steps (DESIGN.md section 3):

1. **Stats.** One pass of the model gives a :class:`TokenStats` of per-target arrays [B, T]:
   ``logp`` (log p of the target), ``mask`` (which targets count), ``weights`` (per-token
   multipliers, 1 by default) and optionally ``entropy``, ``lse``, ``ref_logp`` (a reference
   model's log p of the same targets), ``values``, ``hidden``.
2. **Transforms.** A :class:`LossTransform` maps ``(stats, state, batch) -> (stats, state)``; most
   papers are a weight or mask transform (PRIOR, entropy 80/20, ...). Transforms are frozen
   dataclasses shaped like optax's: hyperparameters that may change between calls live in the
   state as float32 arrays (so a new value does not recompile), and :func:`chain` composes them.
3. **Reduction.** :func:`sum_and_count` returns the (numerator, denominator) pair and
   :func:`reduce_loss` normalises it, by the local count or by an explicit global ``normalizer``
   so gradient accumulation and data parallelism average over the right number of tokens
   (the TRL/ms-swift/fla normalisation bugs in NOTES-losses section 1.3).

Masks are built once, by :func:`shifted_completion_mask`, and the numerator and denominator of a
reduction always use the same mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax._transform import (
    IdentityBehaviour, NamedComposition, SequentialComposition, checked_members, checked_named_members,
)
from tokjax.logits._base import check_range, hparam
from tokjax.model.ops import check_int_values

__all__ = [
    "masked_token_arrays",
    "Chain", "Identity", "LossTransform", "NamedChain", "REDUCTIONS", "check_reduction", "check_token_ids",
    "TokenStats", "TokenWeights", "chain",
    "named_chain", "per_token_nll", "reduce_loss", "sequence_count", "shifted_completion_mask", "sum_and_count",
    "target_rank", "token_count", "token_weights",
]

_F32 = jnp.float32


# --------------------------------------------------------------------------------- TokenStats
@struct.dataclass
class TokenStats:
    """Per-target statistics [B, T] of one batch, position t scoring token t+1.

    ``logp`` float32 log p_theta(y_t); ``mask`` bool (targets that count); ``weights`` float32
    multipliers (1 = plain NLL). Optional: ``entropy`` and ``lse`` of the model's next-token
    distribution, ``ref_logp`` (a reference model's log p of the same targets, no gradient),
    ``values`` (per-token scalars, e.g. advantages or a value head), ``hidden`` [B, T, D] and ``rank``
    int32 [B, T] (the number of vocabulary entries whose logit is strictly larger than the target's:
    0 = the model's top prediction; see :func:`target_rank`; off unless requested).
    """

    logp: jax.Array
    mask: jax.Array
    weights: jax.Array
    entropy: jax.Array | None = None
    lse: jax.Array | None = None
    ref_logp: jax.Array | None = None
    values: jax.Array | None = None
    hidden: jax.Array | None = None
    rank: jax.Array | None = None

    @classmethod
    def create(cls, logp, mask=None, weights=None, **optional) -> "TokenStats":
        """Returns TokenStats with ``mask`` (default all True) and ``weights`` (default 1) filled in."""
        logp = jnp.asarray(logp, _F32)
        mask = jnp.ones(logp.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
        weights = jnp.ones(logp.shape, _F32) if weights is None else jnp.asarray(weights, _F32)
        for name, arr in (("mask", mask), ("weights", weights)):
            if arr.shape != logp.shape:
                raise ValueError(f"TokenStats.{name} shape {arr.shape} must equal logp shape {logp.shape}")
        for name, arr in optional.items():
            if arr is not None and name != "hidden" and jnp.shape(arr) != logp.shape:
                raise ValueError(f"TokenStats.{name} shape {jnp.shape(arr)} must equal logp shape {logp.shape}")
        return cls(logp=logp, mask=mask, weights=weights, **optional)


def target_rank(hidden: jax.Array, head: jax.Array, labels: jax.Array, *, layout: str = "dv",
                bias: jax.Array | None = None, block_size: int = 8192) -> jax.Array:
    """Returns int32 [N]: how many vocabulary entries score strictly higher than ``labels`` [N] (0 = argmax).

    ``hidden`` [N, D] (final-normed), ``head`` [D, V] (``layout="dv"``) or [V, D] (``"vd"``, a tied
    embedding), optional ``bias`` [V]. The vocabulary is scanned in blocks of ``block_size`` so no [N, V]
    logits are materialised. The target's own column is never counted, so rounding differences between its
    gathered and its blocked logit cannot give it rank >= 1 against itself. A logit soft-cap is monotone and
    does not change ranks. Ties count in the target's favour (strictly-greater only).
    """
    if layout not in ("dv", "vd"):
        raise ValueError(f"layout must be 'dv' ([D, V]) or 'vd' ([V, D]), got {layout!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    w = head if layout == "dv" else head.T  # a transposed view; XLA fuses it into the blocked matmul
    D, V = w.shape
    if hidden.ndim != 2 or hidden.shape[1] != D or labels.shape != (hidden.shape[0],):
        raise ValueError(f"target_rank needs hidden [N, D={D}] and labels [N], got {hidden.shape} and {labels.shape}")
    h = hidden.astype(_F32)
    zy = jnp.einsum("nd,dn->n", h, jnp.take(w, labels, axis=1).astype(_F32))
    if bias is not None:
        zy = zy + jnp.asarray(bias, _F32)[labels]
    nb = -(-V // block_size)
    pad = nb * block_size - V
    wp = jnp.pad(w, ((0, 0), (0, pad)))
    bp = None if bias is None else jnp.pad(jnp.asarray(bias, _F32), (0, pad))

    def count(i):
        cols = i * block_size + jnp.arange(block_size)
        z = h @ jax.lax.dynamic_slice_in_dim(wp, i * block_size, block_size, axis=1).astype(_F32)
        if bp is not None:
            z = z + jax.lax.dynamic_slice_in_dim(bp, i * block_size, block_size)
        hit = (z > zy[:, None]) & (cols[None, :] < V) & (cols[None, :] != labels[:, None])
        return jnp.sum(hit, axis=-1, dtype=jnp.int32)

    return jnp.sum(jax.lax.map(count, jnp.arange(nb)), axis=0).astype(jnp.int32)


# ------------------------------------------------------------------------------ transforms
class LossTransform:
    """Base class of the loss-transform family. Subclasses define ``init() -> state`` and
    ``apply(stats, state, batch) -> (stats, state)``; ``requires`` names the optional TokenStats
    fields they read (e.g. ``("ref_logp",)``) so a loss knows what to compute.
    """

    requires: tuple[str, ...] = ()

    def init(self) -> Any:
        return ()

    def apply(self, stats: TokenStats, state: Any, batch: Any) -> tuple[TokenStats, Any]:
        raise TypeError(f"{type(self).__name__} must define apply(stats, state, batch)")

    def __call__(self, stats: TokenStats, state: Any = None, batch: Any = None) -> tuple[TokenStats, Any]:
        state = self.init() if state is None else state
        return self.apply(stats, state, batch)


class Identity(IdentityBehaviour, LossTransform):
    """The loss transform that changes nothing."""


class _UnionOfRequires:
    """Mixin: a composition requires every TokenStats field any of its members requires (in order)."""

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for t in self.members() for r in t.requires))


@dataclasses.dataclass(frozen=True)
class Chain(_UnionOfRequires, SequentialComposition, LossTransform):
    """A loss transform applying ``transforms`` left to right; its state is the tuple of their states and
    its ``requires`` the union of theirs."""

    transforms: tuple


@dataclasses.dataclass(frozen=True)
class NamedChain(_UnionOfRequires, NamedComposition, LossTransform):
    """A loss transform applying ``(name, transform)`` pairs in order; its state is a dict keyed by name
    (addressable hyperparameters) and its ``requires`` the union of theirs."""

    named: tuple  # ((name, transform), ...)


def chain(*transforms: LossTransform) -> Chain:
    """Returns the composition applying ``transforms`` left to right."""
    return Chain(checked_members(transforms, LossTransform))


def named_chain(*named: tuple[str, LossTransform]) -> NamedChain:
    """Returns the composition of ``(name, transform)`` pairs with a name-keyed state."""
    return NamedChain(checked_named_members(named, LossTransform))


@dataclasses.dataclass(frozen=True)
class TokenWeights(LossTransform):
    """A loss transform multiplying the weights by ``batch[key]`` [B, T] (and by ``scale``, a runtime scalar)."""

    key: str = "token_weights"
    scale: object = hparam(1.0)

    def __post_init__(self):
        check_range(self.scale, "scale")

    def init(self):
        return {"scale": jnp.asarray(self.scale, _F32)}

    def apply(self, stats, state, batch):
        if batch is None or self.key not in batch:
            raise ValueError(f"TokenWeights needs batch[{self.key!r}] of shape {stats.logp.shape}")
        w = jnp.asarray(batch[self.key], _F32)
        if w.shape != stats.logp.shape:
            raise ValueError(f"batch[{self.key!r}] shape {w.shape} must equal {stats.logp.shape}")
        return stats.replace(weights=stats.weights * w * state["scale"]), state


def token_weights(key: str = "token_weights", scale: float = 1.0) -> TokenWeights:
    """Returns the transform multiplying the token weights by ``batch[key]`` (times ``scale``)."""
    return TokenWeights(key=key, scale=scale)


# ------------------------------------------------------------------------------------ masks
def _concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def check_token_ids(tokens, name: str = "tokens", *, next_token: bool = False) -> jax.Array:
    """Returns ``tokens`` as an array; raises ValueError unless it is integer [B, L] with L >= 1, or, with
    ``next_token``, [B, T+1] with T+1 >= 2 (inputs ``[:, :-1]`` and targets ``[:, 1:]`` come from one row)."""
    tokens = jnp.asarray(tokens)
    shape = "[B, T+1] with T+1 >= 2" if next_token else "[B, L] with L >= 1"
    if tokens.ndim != 2 or tokens.shape[1] < (2 if next_token else 1):
        raise ValueError(f"{name} must be int {shape}, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids {shape}, got dtype {tokens.dtype}")
    return tokens


def shifted_completion_mask(
    tokens: jax.Array, prompt_lengths: jax.Array | None = None, lengths: jax.Array | None = None
) -> jax.Array:
    """Returns bool [B, T] for ``tokens`` [B, T+1]: True where target t (= ``tokens[:, t+1]``) counts.

    A target counts when it is a completion token and not padding:
    ``prompt_lengths[b] <= t + 1 < lengths[b]``. ``prompt_lengths`` (default 0: every target)
    is the number of leading prompt tokens; ``lengths`` (default T+1) the number of real tokens
    in the row. This is the one mask every tokjax loss uses for both its numerator and its
    denominator (the off-by-one class of TRL #6879 / #6803).
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, seq+1] with seq+1 >= 2, got shape {tuple(tokens.shape)}")
    B, S = tokens.shape
    pos = jnp.arange(1, S, dtype=jnp.int32)[None, :]
    mask = jnp.ones((B, S - 1), bool)
    for name, arr in (("prompt_lengths", prompt_lengths), ("lengths", lengths)):
        if arr is None:
            continue
        a = jnp.asarray(arr)
        if a.shape not in ((B,), ()):
            raise ValueError(f"{name} must have shape [batch={B}], got {tuple(a.shape)}")
        if not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
        check_int_values(arr, name, 0, S, hi_closed=True)
    if prompt_lengths is not None:
        mask &= pos >= jnp.broadcast_to(jnp.asarray(prompt_lengths), (B,))[:, None]
    if lengths is not None:
        mask &= pos < jnp.broadcast_to(jnp.asarray(lengths), (B,))[:, None]
    return mask


# ------------------------------------------------------------------------------- reductions
# How reduce_loss turns per-token losses into a scalar (see there). Not to be confused with
# CE_REDUCTIONS, the torch-style "mean"/"sum"/"none" of cross_entropy.
REDUCTIONS = ("token_mean", "weighted_mean", "sum", "seq_mean", "const")


def masked_token_arrays(mask, what: str = "", **arrays) -> tuple[list[jax.Array], jax.Array]:
    """Checks float per-token arrays [B, T] (keyword order kept) and their mask; returns them as float32 with
    masked entries zeroed, and the bool mask.

    Zeroing first means padding that holds -inf / NaN never reaches the arithmetic or the gradients.
    ``what`` prefixes the error messages (e.g. ``"chosen "``).
    """
    names = list(arrays)
    xs = [jnp.asarray(arrays[n]) for n in names]
    m = jnp.asarray(mask)
    if xs[0].ndim != 2:
        raise ValueError(f"{what}{names[0]} must be [batch, seq] per-target values, got shape {tuple(xs[0].shape)}")
    if any(x.shape != xs[0].shape for x in xs) or m.shape != xs[0].shape:
        shapes = ", ".join(f"{n} {tuple(x.shape)}" for n, x in zip(names, xs))
        raise ValueError(f"{what}{', '.join(names)} and mask must have the same [batch, seq] shape, got {shapes} and "
                         f"mask {tuple(m.shape)}")
    for n, x in zip(names, xs):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{what}{n} must be floating point, got dtype {x.dtype}")
    if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer)):
        raise ValueError(f"{what}mask must be bool (or 0/1 integers), got dtype {m.dtype}")
    m = m.astype(bool)
    return [jnp.where(m, x.astype(jnp.float32), 0.0) for x in xs], m


def check_reduction(how) -> str:
    """Returns ``how``; raises ValueError unless it is one of :data:`REDUCTIONS` (checked when a loss is built,
    not first inside a traced step)."""
    if how not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {how!r}")
    return how


def per_token_nll(stats: TokenStats) -> jax.Array:
    """Returns float32 [B, T] ``-weights * logp`` at masked-in targets and exactly 0 elsewhere."""
    return jnp.where(stats.mask, -stats.weights * stats.logp, 0.0)


def token_count(mask: jax.Array) -> jax.Array:
    """Returns the float32 number of True entries of ``mask`` (the token-mean denominator)."""
    return jnp.sum(jnp.asarray(mask).astype(_F32))


def sequence_count(mask: jax.Array) -> jax.Array:
    """Returns the float32 number of rows of ``mask`` [B, T] with at least one True entry."""
    return jnp.sum(jnp.any(jnp.asarray(mask), axis=-1).astype(_F32))


def sum_and_count(stats: TokenStats, per_token: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (sum over masked-in targets of the per-token loss, number of masked-in targets).

    ``per_token`` defaults to :func:`per_token_nll`. Summing these pairs over micro-batches or
    devices and dividing once gives the exact global token mean.
    """
    per_token = per_token_nll(stats) if per_token is None else jnp.where(stats.mask, per_token, 0.0)
    return jnp.sum(per_token), token_count(stats.mask)


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def reduce_loss(
    stats: TokenStats, how: str = "token_mean", *, per_token: jax.Array | None = None, normalizer=None
) -> jax.Array:
    """Returns the scalar loss from per-token losses (default ``-weights * logp``) under ``mask``.

    ``how``: ``"token_mean"`` sum / number of masked-in tokens (TRL's dapo/bnpo);
    ``"weighted_mean"`` sum / sum of the masked-in weights (the weights then only redistribute
    the loss, as in ``cross_entropy(reduction="mean")`` and tokjax.train's default loss); ``"sum"``; ``"seq_mean"`` mean over each row's tokens, then over rows with any token (TRL's
    grpo); ``"const"`` sum / (B * T) (Dr. GRPO). ``normalizer``, when given, replaces the local
    denominator: the global token count for token_mean / const, the global row count for seq_mean,
    the global weight total for weighted_mean, any constant for sum. With a global normaliser, micro-batch losses *add up* to the full-batch
    loss, which is what gradient accumulation and data parallelism need. An empty mask gives 0.
    """
    check_reduction(how)
    if normalizer is not None and _concrete(normalizer):
        n = np.asarray(normalizer, np.float64)
        if n.ndim or not np.isfinite(n) or n < 0:
            raise ValueError(f"normalizer must be a finite scalar >= 0, got {normalizer!r}")
    per_token = per_token_nll(stats) if per_token is None else jnp.where(stats.mask, per_token, 0.0)
    if how == "seq_mean":
        row_n = jnp.sum(stats.mask.astype(_F32), axis=-1)
        row_mean = _safe_div(jnp.sum(per_token, axis=-1), row_n)
        den = sequence_count(stats.mask) if normalizer is None else normalizer
        return _safe_div(jnp.sum(row_mean), jnp.asarray(den, _F32))
    total = jnp.sum(per_token)
    if how == "sum":
        return total if normalizer is None else _safe_div(total, jnp.asarray(normalizer, _F32))
    if normalizer is not None:
        den = normalizer
    elif how == "token_mean":
        den = token_count(stats.mask)
    elif how == "weighted_mean":
        den = jnp.sum(jnp.where(stats.mask, stats.weights, 0.0))
    else:  # const
        den = float(np.prod(stats.mask.shape))
    return _safe_div(total, jnp.asarray(den, _F32))
