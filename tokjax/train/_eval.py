"""Evaluation: token-weighted validation loss, bits per token and bits per byte.

Bits per token depend on the tokenizer (a bigger vocabulary packs more text into a token),
so models with different tokenizers are compared per byte of text:

    bits_per_byte = (loss_nats / ln 2) / bytes_per_token

where ``bytes_per_token`` is the UTF-8 bytes of the evaluated text over its token count (the
datasets of :mod:`tokjax.data` record it as ``TokenDataset.bytes_per_token``).

The per-token log-probs come from :func:`tokjax.losses.token_stats` (the one way tokjax scores a
batch), summed exactly: ``loss = sum(w m (-log p)) / sum(w m)`` over every evaluated token.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses import head_stats, token_stats
from tokjax.model import ModelConfig, head_matrix

__all__ = ["evaluate", "eval_sums", "bits_per_token", "bits_per_byte", "unigram_loss"]

_LN2 = math.log(2.0)


def bits_per_token(loss_nats: float) -> float:
    """Returns ``loss_nats / ln 2``: the per-token loss in bits."""
    return float(loss_nats) / _LN2


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Returns the per-token loss ``loss_nats`` converted to bits per UTF-8 byte of text.

    Raises ValueError unless ``bytes_per_token`` is a finite number > 0.
    """
    try:
        bpt = float(bytes_per_token)
    except (TypeError, ValueError):
        raise ValueError(f"bytes_per_token must be a number > 0, got {bytes_per_token!r}") from None
    if not (math.isfinite(bpt) and bpt > 0):
        raise ValueError(f"bytes_per_token must be a finite number > 0, got {bytes_per_token!r}")
    return bits_per_token(loss_nats) / bpt


def eval_sums(params: Any, cfg: ModelConfig, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (nll_sum, token_weight, correct) of a batch, float32 scalars (jit-traceable).

    ``nll_sum = sum_t w_t m_t (-log p(y_t))`` from :func:`tokjax.losses.token_stats` (mask
    ``m`` and weights ``w`` after every batch convention: ``mask``, ``weights``,
    ``prompt_lengths``/``lengths``, ``segment_ids``), ``token_weight = sum_t w_t m_t`` and
    ``correct`` the weighted count of targets that are the model's argmax (a second
    vocabulary-streaming pass over the same hidden states; no [B, T, V] logits).
    """
    stats = token_stats(params, cfg, batch, hidden=True)
    w = jnp.where(stats.mask, stats.weights, 0.0)
    targets = jnp.asarray(batch["tokens"])[:, 1:] if "tokens" in batch else jnp.asarray(batch["targets"])
    h = stats.hidden
    head, layout = head_matrix(params, cfg)
    top = head_stats(h.reshape(-1, h.shape[-1]), head.astype(cfg.dtype), targets.reshape(-1),
                     want=("argmax",), head_layout=layout)["argmax"].reshape(targets.shape)
    hit = (top == targets).astype(jnp.float32)
    return jnp.sum(w * -stats.logp), jnp.sum(w), jnp.sum(w * hit)


_sums = jax.jit(eval_sums, static_argnums=(1,))


def _as_batch(b: Any) -> dict[str, Any]:
    if isinstance(b, Mapping):
        return dict(b)
    return {"tokens": np.asarray(b)}


def evaluate(
    params: Any,
    cfg: ModelConfig,
    batches: Iterable[Mapping[str, Any] | np.ndarray],
    *,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """Returns {"loss", "bits_per_token", "bits_per_byte", "accuracy", "tokens"} over every batch.

    ``batches`` yields batches like training (``{"tokens": [B, T+1], "mask"?, "weights"?, ...}``
    or ``{"inputs", "targets"}``; any key :func:`tokjax.losses.token_stats` reads) or bare
    [B, T+1] token arrays. The loss is the token-weighted mean next-token cross-entropy in nats
    over *all* batches (sum of per-token losses over the sum of token weights, not a mean of
    batch means; see :func:`eval_sums`). ``bits_per_byte`` is NaN when ``bytes_per_token`` is not given.
    Raises ValueError when there is no batch or no token to evaluate.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"evaluate needs a ModelConfig, got {type(cfg).__name__}")
    if bytes_per_token is not None:
        bits_per_byte(0.0, bytes_per_token)  # validate early, before the model runs
    # Accumulate on the host in float64: a float32 running sum over many batches loses digits.
    total = count = correct = 0.0
    n = 0
    for b in batches:
        s, c, k = jax.device_get(_sums(params, cfg, _as_batch(b)))
        total += float(s)
        count += float(c)
        correct += float(k)
        n += 1
    if n == 0:
        raise ValueError("evaluate got no batches")
    if count <= 0:
        raise ValueError("evaluate: every token is masked out (token count 0)")
    loss = total / count
    return {
        "loss": loss,
        "bits_per_token": bits_per_token(loss),
        "bits_per_byte": bits_per_byte(loss, bytes_per_token) if bytes_per_token is not None else float("nan"),
        "accuracy": correct / count,
        "tokens": count,
    }


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Returns the cross-entropy (nats/token) of ``eval_tokens`` under the add-one unigram model of ``train_tokens``.

    This is the loss of a model that ignores context: a trained language model must beat it
    clearly, which makes it the natural "did it learn anything" baseline.
    """
    train_tokens = np.asarray(train_tokens).reshape(-1)
    eval_tokens = np.asarray(eval_tokens).reshape(-1)
    if eval_tokens.size == 0:
        raise ValueError("unigram_loss needs at least one evaluation token")
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_tokens].mean())
