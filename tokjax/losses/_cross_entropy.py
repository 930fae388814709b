"""Shared cross-entropy plumbing: argument checks, the per-token loss formula, and the naive reference.

Both :func:`cross_entropy` (materialises logits) and
:func:`tokjax.losses.cut_cross_entropy.cut_cross_entropy` (streams over vocabulary blocks) reduce
the head to the same per-token quantities, and share one formula for the loss built from them:

    lse_i  = log sum_j exp(z_ij)              z_ij = s * tanh((h_i . W_j + b_j) / s)  (s = softcap)
    zy_i   = z_{i, y_i}
    ce_i   = (1 - eps) * (lse_i - zy_i) + eps * (lse_i - mean_j z_ij)      (label smoothing eps)
    loss_i = w_i * (ce_i + lambda * lse_i^2)                              (z-loss lambda)

``mean`` divides sum_i loss_i by sum_i w_i over non-ignored tokens (the number of them without
weights; torch's ``weight=`` convention); all tokens ignored gives 0, never NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The reductions of cross_entropy / cut_cross_entropy (torchs names); the TokenStats reductions of
# reduce_loss / next_token_loss are tokjax.losses.REDUCTIONS (token_mean, seq_mean, ...).
CE_REDUCTIONS = ("mean", "sum", "none")
STATS = ("logp", "lse", "entropy", "argmax")


def _concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def _is_static_zero(x) -> bool:
    """Returns True when ``x`` is a Python/NumPy scalar equal to 0 (so its term can be skipped)."""
    if isinstance(x, jax.core.Tracer):
        return False
    try:
        return bool(np.all(np.asarray(x) == 0))
    except Exception:  # pragma: no cover - exotic inputs
        return False


def _check_scalar(value, name: str, lo: float, hi: float | None, lo_open: bool, hi_open: bool) -> None:
    if not _concrete(value):
        return
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    ok = np.isfinite(v) and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        ub = "inf)" if hi is None else (f"{hi})" if hi_open else f"{hi}]")
        raise ValueError(f"{name} must lie in {lb}{lo}, {ub}, got {value!r}")


def validate(
    hidden, lm_head, labels, *, weights=None, bias=None, ignore_index=-100, reduction="mean", softcap=None,
    label_smoothing=0.0, z_loss=0.0, return_stats=(), block_size=None, filter_eps=None,
) -> tuple[str, ...]:
    """Returns the normalised ``return_stats`` tuple; raises ValueError on any malformed argument.

    Label values are range-checked only when ``labels`` is concrete (not under ``jit``): every
    label must lie in [0, V) or equal ``ignore_index``.
    """
    hidden, lm_head, labels = jnp.asarray(hidden), jnp.asarray(lm_head), jnp.asarray(labels)
    if hidden.ndim < 1:
        raise ValueError("hidden must be [..., D], got a scalar")
    if lm_head.ndim != 2:
        raise ValueError(f"lm_head must be [D, V], got shape {tuple(lm_head.shape)}")
    D, V = lm_head.shape
    if hidden.shape[-1] != D:
        raise ValueError(f"hidden's last dim {hidden.shape[-1]} must equal lm_head's first dim D={D}")
    if V < 1:
        raise ValueError("lm_head must have at least one vocabulary column")
    if not (jnp.issubdtype(hidden.dtype, jnp.floating) and jnp.issubdtype(lm_head.dtype, jnp.floating)):
        raise ValueError(f"hidden and lm_head must be floating point, got {hidden.dtype} and {lm_head.dtype}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden's leading dims {tuple(hidden.shape[:-1])}")
    if weights is not None and tuple(jnp.shape(weights)) != tuple(labels.shape):
        raise ValueError(f"weights shape {tuple(jnp.shape(weights))} must equal labels shape {tuple(labels.shape)}")
    if bias is not None and tuple(jnp.shape(bias)) != (V,):
        raise ValueError(f"bias must have shape [V={V}], got {tuple(jnp.shape(bias))}")
    if reduction not in CE_REDUCTIONS:
        raise ValueError(f"reduction must be one of {CE_REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if softcap is not None:
        if isinstance(softcap, jax.core.Tracer):
            raise ValueError("softcap must be a Python float (it is static), not a traced array")
        _check_scalar(softcap, "softcap", 0.0, None, True, False)
    _check_scalar(label_smoothing, "label_smoothing", 0.0, 1.0, False, True)
    _check_scalar(z_loss, "z_loss", 0.0, None, False, False)
    if isinstance(return_stats, str):
        return_stats = (return_stats,)
    return_stats = tuple(return_stats)
    bad = [s for s in return_stats if s not in STATS]
    if bad:
        raise ValueError(f"return_stats entries must be in {STATS}, got {bad}")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1
    ):
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if filter_eps is not None and filter_eps != "auto":
        _check_scalar(filter_eps, "filter_eps", 0.0, None, False, False)
    if _concrete(labels) and labels.size:
        lab = np.asarray(labels)
        bad_mask = (lab != ignore_index) & ((lab < 0) | (lab >= V))
        if bad_mask.any():
            raise ValueError(
                f"labels must lie in [0, {V}) or equal ignore_index={ignore_index}; "
                f"found {int(bad_mask.sum())} out-of-range labels, e.g. {int(lab[bad_mask].flat[0])}"
            )
    return return_stats


def assemble(
    core: dict[str, jax.Array], labels: jax.Array, *, V: int, weights=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, z_loss=0.0, return_stats=(),
) -> Any:
    """Returns the reduced loss (and the requested stats dict) from per-token head quantities.

    ``core`` holds flat [N] arrays: ``lse``, ``zy`` (the target logit), optionally ``zsum`` (sum of
    logits over the vocabulary, for label smoothing), ``entropy`` and ``argmax``.
    """
    shape = labels.shape
    flat = labels.reshape(-1)
    valid = flat != ignore_index
    lse, zy = core["lse"], core["zy"]
    nll = lse - zy
    if not _is_static_zero(label_smoothing):
        eps = jnp.asarray(label_smoothing, jnp.float32)
        nll = (1.0 - eps) * nll + eps * (lse - core["zsum"] / V)
    if not _is_static_zero(z_loss):
        nll = nll + jnp.asarray(z_loss, jnp.float32) * jnp.square(lse)
    w = jnp.ones_like(nll) if weights is None else jnp.asarray(weights, jnp.float32).reshape(-1)
    per_tok = jnp.where(valid, nll * w, 0.0)
    if reduction == "none":
        loss = per_tok.reshape(shape)
    elif reduction == "sum":
        loss = jnp.sum(per_tok)
    else:
        den = jnp.sum(jnp.where(valid, w, 0.0))
        ok = den != 0
        loss = jnp.where(ok, jnp.sum(per_tok) / jnp.where(ok, den, 1.0), 0.0)
    if not return_stats:
        return loss
    stats = {}
    for name in return_stats:
        if name == "logp":
            stats["logp"] = jnp.where(valid, zy - lse, 0.0).reshape(shape)
        else:
            stats[name] = core[name].reshape(shape)
    return loss, stats


def _flatten(hidden, labels):
    hidden = jnp.asarray(hidden)
    return hidden.reshape(-1, hidden.shape[-1]), jnp.asarray(labels).reshape(-1)


def _softcap(z, softcap):
    return z if softcap is None else softcap * jnp.tanh(z / softcap)


def naive_core(h, w, labels, *, bias=None, softcap=None, want_zsum=False, want_entropy=False, want_argmax=False):
    """Returns the per-token head quantities from materialised float32 logits [N, V] (the reference)."""
    z = jnp.einsum("nd,dv->nv", h, w, preferred_element_type=jnp.float32)
    if bias is not None:
        z = z + bias.astype(jnp.float32)
    z = _softcap(z, softcap)
    lse = jax.nn.logsumexp(z, axis=-1)
    V = z.shape[-1]
    safe = jnp.clip(labels, 0, V - 1)
    zy = jnp.where((labels >= 0) & (labels < V), jnp.take_along_axis(z, safe[:, None], axis=-1)[:, 0], 0.0)
    out = {"lse": lse, "zy": zy}
    if want_zsum:
        out["zsum"] = jnp.sum(z, axis=-1)
    if want_entropy:
        p = jax.nn.softmax(z, axis=-1)
        out["entropy"] = lse - jnp.sum(p * z, axis=-1)
    if want_argmax:
        out["argmax"] = jnp.argmax(z, axis=-1).astype(jnp.int32)
    return out


def cross_entropy(
    hidden: jax.Array,
    lm_head: jax.Array,
    labels: jax.Array,
    *,
    weights: jax.Array | None = None,
    bias: jax.Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    return_stats: tuple[str, ...] = (),
) -> Any:
    """Returns the cross-entropy of ``hidden @ lm_head`` against ``labels`` (the naive reference: it
    materialises the float32 logits [N, V]); with ``return_stats``, ``(loss, {name: [...] array})``.

    P29 (Cut Your Losses in Large-Vocabulary Language Models), the loss:
    ``l_i = LSE_j(s(h_i . W_j + b_j)) - s(h_i . W_{y_i} + b_{y_i})`` with ``s(x) = c tanh(x / c)``
    the optional softcap, label smoothing ``(1-e) l_i + e (lse_i - mean_j z_ij)`` and z-loss
    ``lambda lse_i^2``. ``hidden`` [..., D], ``lm_head`` [D, V], ``labels`` [...] int (``ignore_index``
    entries contribute nothing), ``weights`` [...] per-token multipliers. ``reduction``: ``"mean"``
    (sum of w_i l_i over sum of w_i, non-ignored tokens; 0 when all are ignored), ``"sum"`` or
    ``"none"`` (per-token w_i l_i, 0 at ignored). ``return_stats`` is any of ``"logp"`` (log p(y),
    0 at ignored), ``"lse"``, ``"entropy"``, ``"argmax"`` (all [...]; differentiable except argmax).
    """
    return_stats = validate(
        hidden, lm_head, labels, weights=weights, bias=bias, ignore_index=ignore_index, reduction=reduction,
        softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss, return_stats=return_stats,
    )
    labels = jnp.asarray(labels)
    h, flat = _flatten(hidden, labels)
    core = naive_core(
        h, jnp.asarray(lm_head), flat, bias=bias, softcap=softcap,
        want_zsum=not _is_static_zero(label_smoothing), want_entropy="entropy" in return_stats,
        want_argmax="argmax" in return_stats,
    )
    return assemble(
        core, labels, V=lm_head.shape[1], weights=weights, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, return_stats=return_stats,
    )
