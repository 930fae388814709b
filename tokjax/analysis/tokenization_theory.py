"""Tokenization theory on Markov sources: per-character cross-entropy vs the entropy rate (paper P38).

Paper: "Toward a Theory of Tokenization in LLMs" (Rajaraman, Jiao, Ramchandran, 2024, P38;
NeurIPS version "An Analysis of Tokenization: Transformers under Markov data"). On data from a
k-th order Markov source with entropy rate ``H``, a model that only learns the unigram
(stationary) distribution of *characters* is stuck at ``H(pi) > H``, while even a unigram model
over the *tokens* of a good dictionary approaches the optimum:

    L_unigram(tokens) = - sum_t log2 q(t) / (number of characters)   ->  H   as |V| grows

where ``q`` is the token frequency distribution estimated on training text. Everything is
normalised per character (= per byte here, the sources are ASCII letters), never per token,
so tokenizers with different vocabularies are comparable.

* :func:`switching_source` -- binary k-th order "switching" source ``x_t = x_{t-k} xor Bern(delta)``
  with entropy rate ``h(delta)`` and uniform stationary distribution (unigram = 1 bit/char).
* :func:`unigram_bits_per_char` -- the unigram-over-tokens cross-entropy of a tokenizer (jitted
  core: :func:`unigram_token_bits`).
* :func:`unigram_curve` -- that quantity for BPE tokenizers of growing vocabulary.
* :func:`model_bits_per_byte` -- a transformer's next-token loss per byte of predicted text,
  the comparable number for character-level vs token-level models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.data import MarkovSource
from tokjax.losses import token_stats

__all__ = [
    "binary_entropy",
    "chunk_text",
    "model_bits_per_byte",
    "switching_source",
    "token_byte_lengths",
    "unigram_bits_per_char",
    "unigram_curve",
    "unigram_token_bits",
]


def binary_entropy(delta: float) -> float:
    """Returns ``h(delta) = -delta log2 delta - (1 - delta) log2 (1 - delta)`` in bits."""
    d = float(delta)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"delta must lie in [0, 1], got {delta!r}")
    return 0.0 if d in (0.0, 1.0) else -(d * math.log2(d) + (1 - d) * math.log2(1 - d))


def switching_source(delta: float, order: int = 1) -> MarkovSource:
    """Returns the binary order-``order`` source over ``'a','b'`` that flips ``x_{t-order}`` with probability ``delta``.

    ``P(x_t != x_{t-k} | past) = delta``: entropy rate ``h(delta)``, uniform stationary
    distribution, so a character-unigram model pays exactly 1 bit per character. ``order=1``
    is the switching chain of the paper's examples; larger orders are the k-th order sources
    a character-level transformer finds hard. Raises ValueError for ``delta`` outside (0, 1)
    or ``order < 1``.
    """
    d = float(delta)
    if not 0.0 < d < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= 16:
        raise ValueError(f"order must be an int in [1, 16], got {order!r}")
    k = int(order)
    states = np.arange(2**k)
    oldest = states >> (k - 1)  # the context's oldest letter, x_{t-k}
    t = np.empty((2**k, 2))
    t[states, oldest] = 1.0 - d
    t[states, 1 - oldest] = d
    return MarkovSource(t, k)


def chunk_text(text: str, size: int) -> list[str]:
    """Returns ``text`` cut into consecutive pieces of ``size`` characters (the last may be shorter)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"chunk size must be a positive int, got {size!r}")
    return [text[i : i + size] for i in range(0, len(text), size)]


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """Returns int32 [V]: the UTF-8 length of each token's bytes (0 for special tokens)."""
    try:
        table = tokenizer.id_to_bytes
    except AttributeError:
        raise ValueError(f"tokenizer must have byte tables (id_to_bytes), got {type(tokenizer).__name__}") from None
    return np.asarray([len(b) for b in table], np.int32)


@jax.jit
def unigram_token_bits(train_counts: jax.Array, test_ids: jax.Array, test_valid: jax.Array,
                       support: jax.Array, alpha: jax.Array) -> jax.Array:
    """Returns the total ``-sum log2 q(t)`` over valid test tokens under the add-alpha unigram ``q``.

    ``q(t) = (c(t) + alpha) / (N + alpha |S|)`` on the support ``S`` (bool [V]) and 0 outside it;
    ``train_counts`` [V], ``test_ids`` [..] int with ``test_valid`` (bool, same shape) marking real
    tokens. A valid test token outside the support gives ``inf`` (the model cannot emit it).
    """
    counts = jnp.where(support, train_counts.astype(jnp.float32) + alpha, 0.0)
    logq = jnp.log2(counts) - jnp.log2(jnp.sum(counts))
    return -jnp.sum(jnp.where(test_valid, logq[test_ids], 0.0))


def _encode_chunks(tokenizer: Any, pieces: Sequence[str]) -> np.ndarray:
    encode_batch = getattr(tokenizer, "encode_batch", None)
    rows = encode_batch(list(pieces)) if encode_batch is not None else [tokenizer.encode(p) for p in pieces]
    return np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else np.zeros((0,), np.int64)


def unigram_bits_per_char(
    tokenizer: Any,
    train_text: str,
    test_text: str,
    *,
    alpha: float = 0.5,
    chunk: int = 256,
) -> float:
    """Returns the cross-entropy in bits per character of ``test_text`` under a unigram model over tokens (P38).

    Token frequencies come from ``train_text`` (add-``alpha`` smoothing over the tokens whose
    bytes only use characters of the training text, so the 256 unused byte tokens of a byte-level
    BPE take no mass). Both texts are encoded in ``chunk``-character pieces (byte-level BPE
    pre-tokenizes a letter run as one word; chunking keeps encoding time linear). The result is
    total bits over the UTF-8 byte count of ``test_text`` (= characters for ASCII sources).
    """
    if not isinstance(train_text, str) or not isinstance(test_text, str) or not train_text or not test_text:
        raise ValueError("unigram_bits_per_char needs non-empty str train_text and test_text")
    if not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    lengths = token_byte_lengths(tokenizer)
    V = lengths.size
    train_ids = _encode_chunks(tokenizer, chunk_text(train_text, chunk))
    test_ids = _encode_chunks(tokenizer, chunk_text(test_text, chunk))
    chars = set(train_text.encode("utf-8"))
    support = np.asarray([bool(b) and set(b) <= chars for b in tokenizer.id_to_bytes])
    counts = np.bincount(train_ids, minlength=V)
    bits = unigram_token_bits(jnp.asarray(counts), jnp.asarray(test_ids, jnp.int32), jnp.ones(test_ids.shape, bool),
                              jnp.asarray(support), jnp.float32(alpha))
    return float(bits) / len(test_text.encode("utf-8"))


def unigram_curve(
    train_text: str,
    test_text: str,
    vocab_sizes: Sequence[int],
    *,
    alpha: float = 0.5,
    chunk: int = 256,
) -> dict[int, float]:
    """Returns ``{effective vocabulary size: unigram bits per char}`` for byte-level BPEs of growing size.

    The effective size counts the tokens over the text's own characters (alphabet + merges), so
    the smallest entry, the alphabet itself, is the character-unigram baseline. Each BPE is
    trained on ``train_text`` with ``vocab_size = 259 + merges`` (3 special tokens, 256 bytes).
    """
    from tokjax.tokenizers import BPETokenizer, ByteTokenizer

    out: dict[int, float] = {}
    alphabet = len(set(train_text))
    out[alphabet] = unigram_bits_per_char(ByteTokenizer(), train_text, test_text, alpha=alpha, chunk=chunk)
    for v in vocab_sizes:
        merges = int(v) - alphabet
        if merges < 1:
            continue
        tok = BPETokenizer.train(chunk_text(train_text, chunk), vocab_size=259 + merges, min_frequency=2)
        eff = alphabet + (tok.vocab_size - 259)
        out[eff] = unigram_bits_per_char(tok, train_text, test_text, alpha=alpha, chunk=chunk)
    return out


def model_bits_per_byte(
    params: Any, cfg: Any, windows: jax.Array, byte_lengths: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Returns ``(nll_bits_sum, bytes_sum)`` of next-token prediction on ``windows`` [B, T+1], per byte of text.

    Bits per byte = ``nll_bits_sum / bytes_sum``: each predicted token ``y`` contributes its
    ``-log2 p(y)`` and ``byte_lengths[y]`` bytes, so a character model and a BPE model evaluated
    on the same text are directly comparable. Jittable (``cfg`` static).
    """
    windows = jnp.asarray(windows)
    logp = token_stats(params, cfg, {"tokens": windows}).logp
    return -jnp.sum(logp) / jnp.log(2.0), jnp.sum(jnp.asarray(byte_lengths)[windows[:, 1:]]).astype(jnp.float32)
