"""Text2Token (P71): learn a text embedding by predicting a target token distribution through the LM head.

Paper: *Text2Token: Unsupervised Text Representation Learning with Token Target Prediction* (An,
Zhang, Nie, Wu, Zhang, Long; arXiv 2510.10224; no official code found). The text x is encoded
by the LM, its hidden states pooled into one embedding e, and the embedding read through the LM
head W; the loss pulls that vocabulary distribution towards a target token distribution q built
without labels:

    e = pool(LM(x))            (mean over the text's tokens, or the last token)
    L = KL(q || softmax(W e)) = sum_v q_v log q_v - sum_v q_v log softmax(W e)_v          (P71)

Targets come in two kinds, trained in two stages: **data-driven** q (the text's own meaningful
tokens: counts, optionally idf-weighted, with stop tokens removed, :func:`data_driven_targets`) and
**model-derived** q (tokens the backbone itself associates with the text, beyond its surface
tokens: the top-k of a model's vocabulary distribution, :func:`model_derived_targets`).

[unverified — check the paper] The objective and the two target kinds are from the abstract and
the notes (NOTES-losses P71); the exact weighting (idf, stop lists, k, the stage-2 mixture) could not
be checked against the paper body, so they are options here, not claims.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_int_option, check_range
from tokjax.losses._stats import check_token_ids
from tokjax.model.forward import Inputs, forward, lm_head
from tokjax.model.ops import check_int_values, masked_mean

__all__ = ["POOLINGS", "data_driven_targets", "make_text2token_loss", "model_derived_targets", "text2token",
           "text2token_from_logits", "text_embedding", "token_idf"]

POOLINGS = ("mean", "last")
_F32 = jnp.float32


def _valid_mask(tokens, lengths):
    B, L = tokens.shape
    if lengths is None:
        return jnp.ones((B, L), bool)
    lengths = jnp.asarray(lengths)
    if lengths.shape != (B,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be int [B={B}], got shape {tuple(lengths.shape)} dtype {lengths.dtype}")
    check_int_values(lengths, "lengths", 1, L, hi_closed=True)
    return jnp.arange(L)[None, :] < lengths[:, None]


def token_idf(docs: np.ndarray, vocab_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """Returns float32 [V] smoothed inverse document frequencies ``log((N + 1) / (df_v + 1)) + 1`` of a corpus
    ``docs`` [N, L] (host-side; ``lengths`` [N] marks padding)."""
    docs = np.asarray(docs)
    if docs.ndim != 2:
        raise ValueError(f"docs must be int [N, L], got shape {docs.shape}")
    if docs.size and (docs.min() < 0 or docs.max() >= vocab_size):
        raise ValueError(f"docs token ids must lie in [0, {vocab_size})")
    N, L = docs.shape
    valid = np.ones_like(docs, bool) if lengths is None else np.arange(L)[None, :] < np.asarray(lengths)[:, None]
    present = np.zeros((N, vocab_size), bool)
    present[np.nonzero(valid)[0], docs[valid]] = True
    df = present.sum(0)
    return (np.log((N + 1) / (df + 1)) + 1.0).astype(np.float32)


def data_driven_targets(
    tokens: jax.Array, vocab_size: int, *, lengths: jax.Array | None = None, stop_ids: Sequence[int] = (),
    idf: jax.Array | None = None, min_count: int = 1,
) -> jax.Array:
    """Returns float32 [B, V] data-driven targets (P71): q_b(v) proportional to count_b(v) * idf(v) over the text's
    tokens, with ``stop_ids`` and tokens seen fewer than ``min_count`` times removed (a row left empty falls back to
    its plain token counts). ``tokens`` [B, L] with optional ``lengths`` [B]; ``idf`` [V] defaults to 1."""
    tokens = check_token_ids(tokens)
    check_int_option(vocab_size, "vocab_size", lo=2)
    check_int_option(min_count, "min_count", lo=1)
    check_int_values(tokens, "tokens", 0, vocab_size)
    stop = np.asarray(list(stop_ids), np.int64)
    if stop.size and (stop.min() < 0 or stop.max() >= vocab_size):
        raise ValueError(f"stop_ids must lie in [0, {vocab_size})")
    valid = _valid_mask(tokens, lengths)
    B = tokens.shape[0]
    counts = jnp.zeros((B, vocab_size), _F32).at[jnp.arange(B)[:, None], tokens].add(valid.astype(_F32))
    keep = counts >= min_count
    if stop.size:
        keep &= ~jnp.zeros((vocab_size,), bool).at[stop].set(True)[None, :]
    w = jnp.ones((vocab_size,), _F32) if idf is None else jnp.asarray(idf, _F32)
    if w.shape != (vocab_size,):
        raise ValueError(f"idf must be [V={vocab_size}], got shape {tuple(w.shape)}")
    raw = jnp.where(keep, counts * w[None, :], 0.0)
    total = jnp.sum(raw, axis=-1, keepdims=True)
    fallback = counts / jnp.sum(counts, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(total > 0, raw / jnp.where(total > 0, total, 1.0), fallback))


def model_derived_targets(logits: jax.Array, top_k: int, *, temperature=1.0) -> jax.Array:
    """Returns float32 [..., V] model-derived targets (P71): the top-``top_k`` entries of softmax(logits /
    temperature), renormalised, without gradient (``logits`` e.g. the stage-1 model's W e for each text)."""
    logits = jnp.asarray(logits, _F32)
    if logits.ndim < 1:
        raise ValueError("logits must be [..., V]")
    V = logits.shape[-1]
    check_int_option(top_k, "top_k", lo=1, hi=V)
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    z = jax.lax.stop_gradient(logits) / jnp.asarray(temperature, _F32)
    kth = jax.lax.top_k(z, top_k)[0][..., -1:]
    z = jnp.where(z >= kth, z, -jnp.inf)
    return jax.lax.stop_gradient(jax.nn.softmax(z, axis=-1))


def text2token_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Returns float32 [...] KL(q || softmax(logits)) per row for ``logits`` and ``targets`` q [..., V] (0 log 0 = 0)."""
    logits = jnp.asarray(logits, _F32)
    q = jnp.asarray(targets, _F32)
    if logits.shape != q.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(q.shape)} must have the same shape")
    logp = jax.nn.log_softmax(logits, axis=-1)
    ent = jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), axis=-1)
    return ent - jnp.sum(jnp.where(q > 0, q * logp, 0.0), axis=-1)


def text_embedding(params, cfg, tokens: jax.Array, *, lengths: jax.Array | None = None, pooling: str = "mean",
                   mask=None) -> jax.Array:
    """Returns float32 [B, D] P71's text embedding e: the final-normed hidden states of ``tokens`` [B, L] pooled by
    ``pooling`` ("mean" over the first ``lengths`` tokens, or "last" = the hidden state at ``lengths - 1``).
    ``mask`` is an attention-mask spec for the forward (default causal; ``Bidirectional()`` also works)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    tokens = check_token_ids(tokens)
    valid = _valid_mask(tokens, lengths)
    h = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False, mask=mask).hidden.astype(_F32)
    if pooling == "mean":
        return masked_mean(h, valid)
    last = jnp.sum(valid, axis=1) - 1
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


def text2token(params, cfg, tokens: jax.Array, targets: jax.Array, *, lengths: jax.Array | None = None,
               pooling: str = "mean", mask=None) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the batch mean of KL(q || softmax(W e)) (P71) with e = :func:`text_embedding` of
    ``tokens`` [B, L] and q = ``targets`` [B, V] (e.g. :func:`data_driven_targets`). Metrics: ``loss``,
    ``target_ce`` (-sum q log p), ``top1_in_target`` (the argmax token has q > 0)."""
    e = text_embedding(params, cfg, tokens, lengths=lengths, pooling=pooling, mask=mask)
    w = lm_head(params, cfg).astype(_F32)
    logits = e @ w
    q = jnp.asarray(targets, _F32)
    if q.shape != logits.shape:
        raise ValueError(f"targets must be [B, V]={tuple(logits.shape)}, got {tuple(q.shape)}")
    kl = text2token_from_logits(logits, q)
    loss = jnp.mean(kl)
    sg = jax.lax.stop_gradient
    ce = -jnp.sum(jnp.where(q > 0, q * jax.nn.log_softmax(logits, -1), 0.0), axis=-1)
    top = jnp.argmax(logits, axis=-1)
    metrics = {"loss": loss, "target_ce": sg(jnp.mean(ce)),
               "top1_in_target": jnp.mean(jnp.take_along_axis(q, top[:, None], axis=-1)[:, 0] > 0)}
    return loss, metrics


def make_text2token_loss(*, pooling: str = "mean", stop_ids: Sequence[int] = (), min_count: int = 1,
                         method: str = "data") -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`text2token` on ``batch["tokens"]``
    (the whole row is the text; optional ``lengths``): targets from ``batch["t2t_targets"]`` [B, V] when present,
    else data-driven (``method="data"``) with ``stop_ids`` / ``min_count`` / optional ``batch["idf"]`` [V]."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if method != "data":
        raise ValueError(f"method must be 'data' (model-derived targets go in batch['t2t_targets']), got {method!r}")
    stop_ids = tuple(int(s) for s in stop_ids)

    def loss_fn(params, cfg, batch, rng=None):
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("batch must be a dict with 'tokens' int [B, L]")
        tokens = check_token_ids(batch["tokens"])
        q = batch.get("t2t_targets")
        if q is None:
            q = data_driven_targets(tokens, cfg.vocab_size, lengths=batch.get("lengths"), stop_ids=stop_ids,
                                    idf=batch.get("idf"), min_count=min_count)
        return text2token(params, cfg, tokens, q, lengths=batch.get("lengths"), pooling=pooling)

    return loss_fn
