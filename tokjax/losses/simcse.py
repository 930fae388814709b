"""Unsupervised SimCSE-style contrastive loss: the contrastive BASELINE for P71 Text2Token (not a paper of ours).

P71 (Text2Token, arXiv 2510.10224) claims its token-target objective is competitive with unsupervised contrastive
training of LLM embedders (LLM2Vec's SimCSE stage). This module is that comparison arm, after Gao, Yao & Chen,
*SimCSE: Simple Contrastive Learning of Sentence Embeddings* (EMNLP 2021, unsupervised variant) and LLM2Vec's
unsupervised SimCSE step (BehnamGhader et al. 2024): two views of each text are encoded, mean-pooled, and every
text must pick its own other view among the batch's (in-batch negatives):

    z_i = pool(LM(view1(x_i))),   z'_i = pool(LM(view2(x_i)))
    L = -(1/B) sum_i log( exp(cos(z_i, z'_i) / tau) / sum_j exp(cos(z_i, z'_j) / tau) )      (InfoNCE, tau = 0.05)

SimCSE's views are two dropout masks of the same sentence; tokjax models have no dropout, so the views here are
two independent random contiguous crops of the text (``crop`` = fraction of the row kept), the other augmentation
the contrastive-LM literature uses (e.g. random spans in Contriever). ``symmetric=True`` adds the z' -> z direction.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._stats import check_token_ids
from tokjax.losses.registry import register_loss
from tokjax.losses.text2token import POOLINGS, text_embedding
from tokjax.model.ops import check_int_values

__all__ = ["crop_len", "info_nce", "make_simcse_loss", "random_crops", "simcse"]

_F32 = jnp.float32


def info_nce(z1: jax.Array, z2: jax.Array, temperature=0.05, *, symmetric: bool = False) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the InfoNCE loss above for embeddings ``z1``, ``z2`` [B, D] (row i of z2 is row
    i's positive, the other rows its negatives; cosine similarity / ``temperature``). ``symmetric`` averages both
    directions. Metrics: ``loss``, ``pos_cos`` and ``neg_cos`` (mean cosine of positive / negative pairs) and
    ``top1`` (share of rows whose most similar view is their own)."""
    z1 = jnp.asarray(z1, _F32)
    z2 = jnp.asarray(z2, _F32)
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [B, D] of the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    B = z1.shape[0]
    if B < 2:
        raise ValueError(f"InfoNCE with in-batch negatives needs a batch of at least 2 texts, got {B}")
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    # eps keeps a zero embedding (e.g. a fully padded row) finite instead of NaN; cosine is otherwise exact.
    n1 = z1 / jnp.maximum(jnp.linalg.norm(z1, axis=-1, keepdims=True), 1e-12)
    n2 = z2 / jnp.maximum(jnp.linalg.norm(z2, axis=-1, keepdims=True), 1e-12)
    cos = n1 @ n2.T
    logits = cos / jnp.asarray(temperature, _F32)
    diag = jnp.arange(B)
    loss = -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[diag, diag])
    if symmetric:
        loss = 0.5 * (loss - jnp.mean(jax.nn.log_softmax(logits, axis=0)[diag, diag]))
    sg = jax.lax.stop_gradient(cos)
    off = 1.0 - jnp.eye(B, dtype=_F32)
    metrics = {"loss": loss, "pos_cos": jnp.mean(jnp.diag(sg)), "neg_cos": jnp.sum(sg * off) / (B * (B - 1)),
               "top1": jnp.mean(jnp.argmax(sg, axis=-1) == diag)}
    return loss, metrics


def crop_len(length: int, crop: float) -> int:
    """Returns the crop window in tokens for rows of ``length`` tokens: ``max(1, round(crop * length))``."""
    check_range(crop, "crop", lo=0.0, hi=1.0, lo_open=True)
    return max(1, int(round(float(crop) * int(length))))


def random_crops(tokens: jax.Array, key: jax.Array, window: int, *, lengths: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """Returns (crops int [B, window], crop_lengths int [B]): one random contiguous window of each row of ``tokens``
    [B, L], its start uniform over the row's first ``lengths`` tokens (default all L); a row shorter than
    ``window`` is kept whole (its crop length is then its own length; the rest is padding, masked by the pool)."""
    tokens = check_token_ids(tokens)
    B, L = tokens.shape
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= L:
        raise ValueError(f"window must be an int in [1, L={L}], got {window!r}")
    if lengths is None:
        lengths = jnp.full((B,), L, jnp.int32)
    else:
        lengths = jnp.asarray(lengths)
        if lengths.shape != (B,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(f"lengths must be int [B={B}], got shape {tuple(lengths.shape)} dtype {lengths.dtype}")
        check_int_values(lengths, "lengths", 1, L, hi_closed=True)
    n_starts = jnp.maximum(lengths - window, 0) + 1
    start = jnp.floor(jax.random.uniform(key, (B,)) * n_starts).astype(jnp.int32)
    start = jnp.minimum(start, n_starts - 1)
    idx = jnp.minimum(start[:, None] + jnp.arange(window)[None, :], L - 1)
    return jnp.take_along_axis(tokens, idx, axis=1), jnp.minimum(lengths, window).astype(jnp.int32)


def simcse(params, cfg, tokens: jax.Array, key: jax.Array, *, crop: float = 0.5, temperature=0.05,
           lengths: jax.Array | None = None, pooling: str = "mean", symmetric: bool = False, mask=None
           ) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of :func:`info_nce` between two independent random crops (:func:`random_crops`, a
    ``crop`` fraction of the row each) of every row of ``tokens`` [B, L], embedded by P71's
    :func:`~tokjax.losses.text2token.text_embedding` (the same pooled embedding Text2Token trains)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    tokens = check_token_ids(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be int [B, L], got shape {tuple(tokens.shape)}")
    w = crop_len(tokens.shape[1], crop)
    k1, k2 = jax.random.split(key)
    v1, l1 = random_crops(tokens, k1, w, lengths=lengths)
    v2, l2 = random_crops(tokens, k2, w, lengths=lengths)
    # One forward over both views: half the dispatches, and both views see identical parameters.
    z = text_embedding(params, cfg, jnp.concatenate([v1, v2]), lengths=jnp.concatenate([l1, l2]), pooling=pooling,
                       mask=mask)
    B = tokens.shape[0]
    return info_nce(z[:B], z[B:], temperature, symmetric=symmetric)


def make_simcse_loss(*, crop: float = 0.5, temperature: float = 0.05, pooling: str = "mean",
                     symmetric: bool = False) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`simcse` on ``batch["tokens"]``
    [B, L] (optional ``batch["lengths"]``); the crops are drawn from the train step's ``rng``."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    check_range(crop, "crop", lo=0.0, hi=1.0, lo_open=True)
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    crop, temperature, symmetric = float(crop), float(temperature), bool(symmetric)

    def loss_fn(params, cfg, batch, rng=None):
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("batch must be a dict with 'tokens' int [B, L]")
        if rng is None:
            raise ValueError("simcse draws its two crops from the step's rng; got rng=None")
        return simcse(params, cfg, batch["tokens"], rng, crop=crop, temperature=temperature,
                      lengths=batch.get("lengths"), pooling=pooling, symmetric=symmetric)

    return loss_fn


def _simcse_factory(crop, temperature, pooling, symmetric):
    return make_simcse_loss(crop=crop, temperature=temperature, pooling=pooling, symmetric=symmetric)


register_loss("simcse", _simcse_factory, {"crop": 0.5, "temperature": 0.05, "pooling": "mean", "symmetric": False},
              doc="SimCSE-style InfoNCE over two random crops, in-batch negatives (the contrastive baseline for "
                  "P71 Text2Token)", overwrite=True)
