"""The next-token loss with the train loss signature ``(params, cfg, batch, rng) -> (loss, metrics)``.

It runs the shared forward with ``compute_logits=False`` (the final-normed hidden states),
streams the head with cut cross-entropy (P29) or materialises logits (``method="naive"``),
builds a :class:`TokenStats`, applies the loss transforms and reduces.

Batch keys (all optional except ``tokens``):

``tokens``          int32 [B, T+1]; position t of the model input predicts ``tokens[:, t+1]``.
``mask``            bool [B, T+1] (per token: a target counts iff its token's entry is True) or
                    [B, T] (per target).
``weights``         float [B, T+1] or [B, T], same convention; multiplies the per-token loss.
``prompt_lengths``, ``lengths``   int [B]: see :func:`shifted_completion_mask`.
``segment_ids``     int [B, T+1]: packed documents; targets across a document boundary are masked.
``ref_logp``        float [B, T]: a reference model's log p of each target (PRIOR, DPO, KL...).
``ref_tokens``      int [B, T+1]: what the ``ref`` model reads instead of ``tokens`` (same targets).
``normalizer``      scalar: the global denominator (see :func:`reduce_loss`).
``target_cols``     int [B, S]: score only these target positions of each row (distinct, in [0, T)): the
                    head runs on [B, S] hidden states; the other targets get logp 0 and mask False (the
                    runtime-array form of ``span``, for losses that call ``token_stats`` themselves).
``input_hidden``    float [B, T, D]: the residual stream entering the model's first layer at each input
                    position, read instead of the embedded inputs (a frozen trunk's cached output, the model
                    its tail: :mod:`tokjax.model.trunk`); the tokens still give the targets.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._cross_entropy import naive_core
from tokjax.losses._stats import (
    LossTransform, TokenStats, chain, check_reduction, check_token_ids, per_token_nll, reduce_loss,
    shifted_completion_mask, target_rank, token_count,
)
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE, head_stats
from tokjax.model.forward import Inputs, forward, head_matrix
from tokjax.model.ops import check_int_values

__all__ = ["METHODS", "make_next_token_loss", "next_token_loss", "reference_logp", "token_stats"]

METHODS = ("cut", "naive")
_F32 = jnp.float32


def _per_target(value, B: int, T: int, name: str, dtype) -> jax.Array:
    """Returns ``value`` as [B, T] per-target: a [B, T+1] per-token array is shifted by one."""
    arr = jnp.asarray(value)
    if arr.shape == (B, T + 1):
        arr = arr[:, 1:]
    elif arr.shape != (B, T):
        raise ValueError(f"batch[{name!r}] must be [B, T+1]={B, T + 1} (per token) or [B, T]={B, T} (per target), "
                         f"got {tuple(arr.shape)}")
    return arr.astype(dtype)


def _head(hidden, w, labels, *, method, block_size, softcap, want_entropy, bias=None, layout="dv"):
    """Returns (logp, lse, entropy|None), each [N], from hidden [N, D] and the head [D, V] ([V, D] if layout="vd")."""
    if method == "cut":
        core = head_stats(hidden, w, labels, bias=bias, softcap=softcap, block_size=block_size,
                          want=("entropy",) if want_entropy else (), head_layout=layout)
    else:
        core = naive_core(hidden, w.T if layout == "vd" else w, labels, bias=bias, softcap=softcap,
                          want_entropy=want_entropy)
    return core["zy"] - core["lse"], core["lse"], core.get("entropy")


def _check_target_cols(cols, B: int, T: int) -> jax.Array:
    cols = jnp.asarray(cols)
    if cols.ndim != 2 or cols.shape[0] != B or not jnp.issubdtype(cols.dtype, jnp.integer):
        raise ValueError(f"batch['target_cols'] must be int [B, S] with B={B} (each row's scored target positions), "
                         f"got {cols.dtype} {tuple(cols.shape)}")
    check_int_values(cols, f"batch['target_cols'] (T={T})", 0, T)
    if not isinstance(cols, jax.core.Tracer) and any(len(set(r.tolist())) != len(r) for r in np.asarray(cols)):
        raise ValueError("batch['target_cols'] must not repeat a column within a row")
    return cols.astype(jnp.int32)


def _scatter(values, cols, T: int):
    """Returns [B, T] zeros holding ``values`` [B, S] at columns ``cols`` [B, S]."""
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros((values.shape[0], T), values.dtype).at[rows, cols].set(values)


def _model_logp(params, cfg, inputs, targets, segment_ids, *, method, block_size, softcap, want_entropy, keep_hidden,
                embedding=None, head=None, logit_bias=None, positions=None, cols=None, input_hidden=None):
    """Returns (logp, lse, entropy, hidden) [B, T] of ``targets`` after reading ``inputs`` [B, T] (or, given,
    the residual stream ``input_hidden`` [B, T, D] in their place); with ``cols`` [B, S] the head runs on those
    target columns only (0 elsewhere)."""
    B, T = targets.shape
    if input_hidden is None:
        x = Inputs(tokens=inputs, segment_ids=segment_ids, positions=positions)
    else:
        x = Inputs(hidden=input_hidden, segment_ids=segment_ids, positions=positions)
    hidden = forward(params, cfg, x, compute_logits=False, embedding=embedding).hidden  # [B, T, D], final-normed
    D = hidden.shape[-1]
    scored, labels = hidden, targets
    if cols is not None:
        scored, labels = jnp.take_along_axis(hidden, cols[..., None], axis=1), jnp.take_along_axis(targets, cols, axis=1)
    w, layout = head_matrix(params, cfg) if head is None else (head, "dv")
    logp, lse, ent = _head(scored.reshape(-1, D), w.astype(cfg.dtype), labels.reshape(-1), method=method,
                           block_size=block_size, softcap=softcap, want_entropy=want_entropy, bias=logit_bias,
                           layout=layout)
    if cols is None:
        rs = lambda x: None if x is None else x.reshape(B, T)  # noqa: E731
    else:
        rs = lambda x: None if x is None else _scatter(x.reshape(labels.shape), cols, T)  # noqa: E731
    return rs(logp), rs(lse), rs(ent), (hidden if keep_hidden else None)


def reference_logp(
    params, cfg, tokens: jax.Array, *, segment_ids: jax.Array | None = None, method: str = "cut",
    block_size: int = DEFAULT_BLOCK_SIZE, softcap: float | None = None,
) -> jax.Array:
    """Returns float32 [B, T] log p_ref(tokens[:, t+1] | tokens[:, :t+1]) under a reference model,
    with the gradient stopped (the P78 reference probabilities P_r(t_i | t_<i) are its exp)."""
    _check_method(method)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, seq+1] with seq+1 >= 2, got shape {tuple(tokens.shape)}")
    seg = None if segment_ids is None else jnp.asarray(segment_ids)[:, :-1]
    logp, _, _, _ = _model_logp(jax.lax.stop_gradient(params), cfg, tokens[:, :-1], tokens[:, 1:], seg,
                                method=method, block_size=block_size, softcap=softcap, want_entropy=False,
                                keep_hidden=False)
    return jax.lax.stop_gradient(logp)


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _split(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (inputs [B, T], targets [B, T], base mask [B, T]) of a ``tokens`` or ``inputs``/``targets`` batch."""
    if "tokens" in batch:
        tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
        mask = shifted_completion_mask(tokens, batch.get("prompt_lengths"), batch.get("lengths"))
        return tokens[:, :-1], tokens[:, 1:], mask
    x, y = check_token_ids(batch["inputs"], "batch['inputs']"), check_token_ids(batch["targets"], "batch['targets']")
    if x.shape != y.shape:
        raise ValueError(f"batch['inputs'] and batch['targets'] must both be [B, T], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    B, T = y.shape
    mask = shifted_completion_mask(jnp.zeros((B, T + 1), jnp.int32), batch.get("prompt_lengths"), batch.get("lengths"))
    return x, y, mask


def token_stats(
    params, cfg, batch: dict, *, method: str = "cut", block_size: int = DEFAULT_BLOCK_SIZE,
    softcap: float | None = None, entropy: bool = False, hidden: bool = False, ref: tuple | None = None,
    embedding: jax.Array | None = None, head: jax.Array | None = None, logit_bias: jax.Array | None = None,
    rank: bool = False, span: int | None = None,
) -> TokenStats:
    """Returns the TokenStats [B, T] of ``batch`` under the model (see the module doc for batch keys).

    The one way tokjax computes next-token log-probs of a batch (no [B, T, V] logits with the
    default ``method="cut"``). The batch holds ``tokens`` [B, T+1] (inputs ``tokens[:, :-1]``,
    targets ``tokens[:, 1:]``) or, when the model reads something other than the targets' own
    prefix (scheduled sampling, corrupted inputs), ``inputs`` and ``targets`` [B, T] with position
    t of ``inputs`` predicting ``targets[:, t]``. ``segment_ids`` [B, T+1] (per token: attention
    stays within a document and cross-boundary targets are masked) or [B, T] (per input position:
    attention only). ``positions`` (optional) follows the same rule: [B, T+1] per token of a ``tokens``
    batch or [B, T] per input position (with a trailing pos_dims axis for 2-D/3-D coordinate models). ``entropy`` / ``hidden`` / ``rank`` add those fields (``rank``: how many
    vocabulary entries score above the target, 0 = the model's top token; blockwise, no [B, T, V]); ``ref=(ref_params, ref_cfg)`` fills
    ``ref_logp`` from a reference model reading ``batch["ref_tokens"]`` (default the batch's own
    tokens) when the batch has no ``ref_logp``. ``embedding`` [V', D], ``head`` [D, V'] and
    ``logit_bias`` [V'] override the vocabulary tables (tokenizer transfer), as in ``forward``.
    ``span`` (a static int, default None: every target): score only ``span`` targets per row, from the
    row's first completion target ``prompt_lengths - 1`` (0 without ``prompt_lengths``; moved left to
    fit the row): the trunk reads every input, but the head (and ``rank``) runs on those [B, span] hidden
    states only. The other targets get ``logp`` / ``lse`` / ``entropy`` / ``rank`` 0 and mask False,
    so a completion of at most ``span`` tokens (the RL rollouts' ``max_new_tokens``) keeps its values.
    """
    _check_method(method)
    if span is not None and (not isinstance(span, int) or isinstance(span, bool) or span < 1):
        raise ValueError(f"span must be None or a static int >= 1 (targets scored per row), got {span!r}")
    if not isinstance(batch, dict) or not ("tokens" in batch or {"inputs", "targets"} <= set(batch)):
        raise ValueError("batch must be a dict with 'tokens' int [B, T+1] or 'inputs' and 'targets' int [B, T]")
    x, y, mask = _split(batch)
    B, T = y.shape
    seg = batch.get("segment_ids")
    seg_in = None
    if seg is not None:
        seg = jnp.asarray(seg)
        if seg.shape == (B, T + 1):
            mask &= seg[:, 1:] == seg[:, :-1]
            seg_in = seg[:, :-1]
        elif seg.shape == (B, T) and "tokens" not in batch:
            seg_in = seg
        else:
            raise ValueError(f"batch['segment_ids'] must be [B, T+1]={B, T + 1}, got {tuple(seg.shape)}")
    if batch.get("mask") is not None:
        mask &= _per_target(batch["mask"], B, T, "mask", bool)
    positions = batch.get("positions")
    if positions is not None:  # per token like ``tokens`` ([B, T+1(, pos_dims)]) or per input position ([B, T(, ...)])
        positions = jnp.asarray(positions)
        n = T + 1 if "tokens" in batch else T
        if positions.ndim < 2 or positions.shape[:2] != (B, n):
            raise ValueError(f"batch['positions'] must be [B, {'T+1' if n == T + 1 else 'T'}]={B, n} (plus a "
                             f"pos_dims axis for pos_dims > 1), got {tuple(positions.shape)}")
        positions = positions[:, :T]
    weights = None if batch.get("weights") is None else _per_target(batch["weights"], B, T, "weights", _F32)
    ref_logp = batch.get("ref_logp")
    if ref_logp is not None:
        ref_logp = jnp.asarray(ref_logp, _F32)
        if ref_logp.shape != (B, T):
            raise ValueError(f"batch['ref_logp'] must be [B, T]={B, T} (one per target), got {tuple(ref_logp.shape)}")
        ref_logp = jax.lax.stop_gradient(ref_logp)
    cols = None
    if batch.get("target_cols") is not None:
        if span is not None:
            raise ValueError("pass either span= or batch['target_cols'] (both choose the scored targets), not both")
        cols = _check_target_cols(batch["target_cols"], B, T)
    elif span is not None and span < T:  # [B, span] target columns: each row's window from its first completion target
        first = jnp.zeros((B,), jnp.int32) if batch.get("prompt_lengths") is None else \
            jnp.broadcast_to(jnp.asarray(batch["prompt_lengths"], jnp.int32), (B,)) - 1
        cols = jnp.clip(first, 0, T - span)[:, None] + jnp.arange(span, dtype=jnp.int32)[None, :]
    if cols is not None:
        inside = jnp.zeros((B, T), bool).at[jnp.arange(B)[:, None], cols].set(True)
        mask &= inside
    input_hidden = batch.get("input_hidden")
    if input_hidden is not None:
        input_hidden = jnp.asarray(input_hidden)
        if input_hidden.shape != (B, T, cfg.d_model):
            raise ValueError(f"batch['input_hidden'] must be [B, T, d_model]={B, T, cfg.d_model} (the residual stream "
                             f"at each input position), got {tuple(input_hidden.shape)}")
        if embedding is not None:
            raise ValueError("batch['input_hidden'] replaces the input embedding: do not pass embedding= with it")
    logp, lse, ent, h = _model_logp(params, cfg, x, y, seg_in, method=method, block_size=block_size,
                                    softcap=softcap, want_entropy=entropy, keep_hidden=hidden or rank,
                                    embedding=embedding, head=head, logit_bias=logit_bias, positions=positions,
                                    cols=cols, input_hidden=input_hidden)
    ranks = None
    if rank:
        w, layout = head_matrix(params, cfg) if head is None else (head, "dv")
        hr, yr = (h, y) if cols is None else (jnp.take_along_axis(h, cols[..., None], axis=1),
                                              jnp.take_along_axis(y, cols, axis=1))
        ranks = target_rank(hr.reshape(-1, hr.shape[-1]), w.astype(cfg.dtype), yr.reshape(-1), layout=layout,
                            bias=logit_bias, block_size=block_size).reshape(yr.shape)
        ranks = ranks if cols is None else _scatter(ranks, cols, T)
        h = h if hidden else None
    if ref_logp is None and ref is not None:
        ref_params, ref_cfg = ref
        if "ref_tokens" in batch or "tokens" not in batch:
            ref_tokens = jnp.asarray(batch.get("ref_tokens", jnp.concatenate([x[:, :1], y], axis=1)))
        else:
            ref_tokens = jnp.asarray(batch["tokens"])
        if ref_tokens.shape != (B, T + 1):
            raise ValueError(f"batch['ref_tokens'] must be [B, T+1]={B, T + 1}, got {tuple(ref_tokens.shape)}")
        ref_seg = seg if (seg is not None and seg.shape == (B, T + 1)) else None
        ref_logp = reference_logp(ref_params, ref_cfg, ref_tokens, segment_ids=ref_seg, method=method,
                                  block_size=block_size, softcap=softcap)
    return TokenStats.create(logp, mask, weights, entropy=ent, lse=lse, ref_logp=ref_logp, hidden=h, rank=ranks)


def next_token_loss(
    params, cfg, batch: dict, rng: jax.Array | None = None, *,
    transforms: LossTransform | Sequence[LossTransform] = (),
    transform_state: Any = None,
    method: str = "cut",
    block_size: int = DEFAULT_BLOCK_SIZE,
    reduction: str = "token_mean",
    normalizer=None,
    softcap: float | None = None,
    z_loss: float = 0.0,
    ref: tuple | None = None,
    entropy: bool = False,
) -> tuple[jax.Array, dict]:
    """Returns (scalar loss, metrics) of next-token prediction on ``batch`` after the loss transforms.

    ``loss = reduce(sum_t m_t * w_t * (-log p(y_t) + z_loss * lse_t^2))`` with ``m``, ``w`` the
    mask and weights after ``transforms`` (a LossTransform, or a sequence that is chained; one
    element is used as is), whose state is ``transform_state`` (e.g. ``prior().init()`` with a new
    alpha: no recompilation) or else ``init()``; ``reduction`` / ``normalizer`` as in
    :func:`reduce_loss` (``batch["normalizer"]`` is used when the argument is None). The head is
    cut cross-entropy (P29, no [B, T, V] logits) with ``method="cut"`` and materialised logits with
    ``"naive"``. ``rng`` is accepted for the train signature and unused. Metrics: ``loss``,
    ``nll_sum`` (the weighted numerator), ``token_count`` (masked-in targets; so ``loss ==
    nll_sum / token_count`` for token_mean), ``nll`` (unweighted token-mean NLL), ``weight_mean``,
    ``lse_mean`` and ``entropy`` (when computed).
    """
    del rng
    if isinstance(transforms, LossTransform):
        tf = transforms
    elif len(transforms) == 1:
        tf = transforms[0]  # its own state, not a 1-tuple
    else:
        tf = chain(*transforms)
    needs = set(tf.requires)
    check_reduction(reduction)
    if "ref_logp" in needs and ref is None and (not isinstance(batch, dict) or batch.get("ref_logp") is None):
        raise ValueError("a loss transform needs reference log-probs: put batch['ref_logp'] [B, T] or pass "
                         "ref=(ref_params, ref_cfg)")
    stats = token_stats(params, cfg, batch, method=method, block_size=block_size, softcap=softcap,
                        entropy=entropy or "entropy" in needs, hidden="hidden" in needs, ref=ref)
    state = tf.init() if transform_state is None else transform_state
    stats, _ = tf.apply(stats, state, batch)
    per_tok = per_token_nll(stats)
    if not (isinstance(z_loss, (int, float)) and z_loss == 0):
        per_tok = per_tok + jnp.where(stats.mask, stats.weights * jnp.asarray(z_loss, _F32) * stats.lse ** 2, 0.0)
    if normalizer is None:
        normalizer = batch.get("normalizer")
    loss = reduce_loss(stats, reduction, per_token=per_tok, normalizer=normalizer)
    n = token_count(stats.mask)
    nll = jnp.where(stats.mask, -stats.logp, 0.0)
    safe_n = jnp.maximum(n, 1.0)
    metrics = {
        "loss": loss,
        "nll_sum": jax.lax.stop_gradient(jnp.sum(per_tok)),
        "token_count": n,
        "nll": jax.lax.stop_gradient(jnp.sum(nll) / safe_n),
        "weight_mean": jax.lax.stop_gradient(jnp.sum(jnp.where(stats.mask, stats.weights, 0.0)) / safe_n),
        "lse_mean": jax.lax.stop_gradient(jnp.sum(jnp.where(stats.mask, stats.lse, 0.0)) / safe_n),
    }
    if stats.entropy is not None:
        metrics["entropy"] = jax.lax.stop_gradient(jnp.sum(jnp.where(stats.mask, stats.entropy, 0.0)) / safe_n)
    return loss, metrics


def make_next_token_loss(**options) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`next_token_loss` with
    ``options`` (transforms, method, block_size, reduction, ref, ...) fixed, for ``tokjax.train``."""
    bad = set(options) - {"transforms", "transform_state", "method", "block_size", "reduction", "normalizer",
                          "softcap", "z_loss", "ref", "entropy"}
    if bad:
        raise ValueError(f"unknown next_token_loss options {sorted(bad)}")
    if "method" in options:
        _check_method(options["method"])
    return functools.partial(next_token_loss, **options)
