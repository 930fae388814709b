"""Vocabulary keys (P73; "Correlation and Navigation in the Vocabulary Key Representation Space of Language
Models", ICLR 2025): do middle-ranked next tokens owe their rank to a key close to the top-1 key?

Next-token prediction is a query against fixed keys: ``p(v | x) = softmax_v(k_v . h(x))`` with the query
``h(x)`` (final-normed last hidden state) and the key ``k_v = W_U[v]`` (row v of the unembedding; the
input embedding when the head is tied). The paper's finding: the top-ranked tokens are usually right,
but the middle ranks are dominated by tokens whose *keys* resemble the top-1 key (top-1 "P" pulls the
other capital letters up), a spurious correlation of the key space rather than knowledge.

:func:`key_rank_correlation` measures it per context. With the tokens ranked by logit, ``r = 1`` the
top-1, and a window of ranks ``lo..hi`` (default 2..100, the notes' "middle ranks"),

    rho(x) = Spearman( -rank_v , cos(k_v, k_top1) )   over v with lo <= rank_v <= hi

so ``rho > 0`` means higher-ranked tokens have keys closer to the top-1 key (rho = Pearson
correlation of the two rank vectors; ties in the cosines are broken by order, which is measure-zero for
float keys). :func:`rank_key_spearman` is the same statistic from logits already in hand.
``keys=`` replaces the model's key matrix (e.g. rows permuted at random: the shuffled-key control,
whose expected rho is 0). :func:`key_neighbours` lists each token's nearest keys by cosine.

No official code exists (notes: NOTES-decoding.md, P73); the window 2..100 follows issue 19's spec.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.config import ModelConfig
from tokjax.model.forward import Inputs, forward, head_matrix, unembed

__all__ = ["KeyRankCorrelation", "key_neighbours", "key_rank_correlation", "rank_key_spearman", "unembedding_keys"]

_EPS = 1e-12


class KeyRankCorrelation(NamedTuple):
    """Per-context result of :func:`key_rank_correlation` / :func:`rank_key_spearman`.

    ``rho`` [B] float32: Spearman(-rank, cosine to the top-1 key) over the window; ``top1`` [B] int32: the
    top-1 token; ``ids`` [B, n] int32: the window's tokens in rank order (rank ``lo`` first); ``cos`` [B, n]
    float32: their keys' cosine to the top-1 key.
    """

    rho: jax.Array
    top1: jax.Array
    ids: jax.Array
    cos: jax.Array


def unembedding_keys(params, cfg: ModelConfig) -> jax.Array:
    """Returns the key matrix [V, D] (row v = W_U[v]): the tied embedding as stored, else ``lm_head.T``."""
    head, layout = head_matrix(params, cfg)
    return head if layout == "vd" else head.T


def _check_window(window, vocab_size: int) -> tuple[int, int]:
    if (not isinstance(window, tuple) or len(window) != 2
            or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in window)):
        raise ValueError(f"window must be a tuple of two int ranks (lo, hi), e.g. (2, 100); got {window!r}")
    lo, hi = int(window[0]), int(window[1])
    if lo < 2 or hi - lo < 2 or hi > vocab_size:
        raise ValueError(f"window (lo, hi) needs 2 <= lo, hi - lo >= 2 (three ranks at least) and hi <= vocab size "
                         f"{vocab_size}; got {window!r} (rank 1 is the top-1 token every cosine is measured to)")
    return lo, hi


def _check_keys(keys, vocab_size: int) -> jax.Array:
    k = jnp.asarray(keys)
    if k.ndim != 2 or k.shape[0] != vocab_size or not jnp.issubdtype(k.dtype, jnp.floating):
        raise ValueError(f"keys must be a float [vocab_size={vocab_size}, D] matrix (one key per token), "
                         f"got {k.dtype} {k.shape}")
    return k


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _ranks(x: jax.Array) -> jax.Array:
    """Returns float32 ranks 0..n-1 of x along the last axis (ties broken by position)."""
    return jnp.argsort(jnp.argsort(x, axis=-1, stable=True), axis=-1, stable=True).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("window",))
def _spearman(logits: jax.Array, keys: jax.Array, window: tuple[int, int]) -> KeyRankCorrelation:
    lo, hi = window
    _, top = jax.lax.top_k(logits.astype(jnp.float32), hi)  # [B, hi], most likely first
    top = top.astype(jnp.int32)
    ids = top[:, lo - 1:]  # ranks lo..hi
    q = _unit(jnp.take(keys, top[:, 0], axis=0))  # [B, D]
    cos = jnp.einsum("bnd,bd->bn", _unit(jnp.take(keys, ids, axis=0)), q)
    n = hi - lo + 1
    x = jnp.arange(n - 1, -1, -1, dtype=jnp.float32)  # -rank, shifted: the best-ranked token gets n-1
    y = _ranks(cos)
    xc, yc = x - x.mean(), y - y.mean(-1, keepdims=True)
    rho = (yc @ xc) / jnp.sqrt(jnp.maximum((xc @ xc) * (yc * yc).sum(-1), _EPS))
    return KeyRankCorrelation(rho=rho, top1=top[:, 0], ids=ids, cos=cos)


def rank_key_spearman(logits, keys, *, window: tuple[int, int] = (2, 100)) -> KeyRankCorrelation:
    """Returns the KeyRankCorrelation of next-token ``logits`` [B, V] against the key matrix ``keys`` [V, D].

    rho[b] = Spearman(-rank, cos(keys[v], keys[top1])) over the tokens ranked ``window = (lo, hi)``
    (1-based, inclusive; lo >= 2, at least three ranks). Jitted; ``window`` is static.
    """
    z = jnp.asarray(logits)
    if z.ndim != 2 or not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"logits must be float [B, V], got {z.dtype} {z.shape}")
    k = _check_keys(keys, z.shape[1])
    return _spearman(z, k, _check_window(window, z.shape[1]))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logits(params, tokens: jax.Array, last: jax.Array, cfg: ModelConfig) -> jax.Array:
    out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False)
    h = jnp.take_along_axis(out.hidden, last[:, None, None], axis=1)  # [B, 1, D], already final-normed
    return unembed(params, cfg, h)[:, 0]


def key_rank_correlation(params, cfg: ModelConfig, tokens, *, lengths=None, window: tuple[int, int] = (2, 100),
                         keys=None, batch_size: int = 64) -> KeyRankCorrelation:
    """Returns the KeyRankCorrelation of each context's next-token distribution (P73's probe).

    ``tokens`` [B, T] int ids (right-padded when ``lengths`` [B] is given; the query is the last real
    position ``lengths - 1``, default ``T - 1``). Logits come from the shared forward (final-normed hidden
    state through the head); keys are the model's unembedding rows (:func:`unembedding_keys`) unless
    ``keys`` [V, D] is given (a control). Runs ``batch_size`` contexts per jitted call (the last chunk is
    padded, so one compilation serves all chunks).
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__} (arguments are params, cfg, tokens)")
    t = np.asarray(tokens)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1 or t.dtype.kind not in "iu":
        raise ValueError(f"tokens must be int ids [B, T] with B, T >= 1, got {t.dtype} {t.shape}")
    V = cfg.vocab_size
    if t.min() < 0 or t.max() >= V:
        raise ValueError(f"token ids must lie in [0, vocab_size={V}), got [{t.min()}, {t.max()}]")
    B, T = t.shape
    if T > cfg.max_len:
        raise ValueError(f"contexts of {T} tokens exceed the model's max_len {cfg.max_len}")
    if lengths is None:
        n = np.full((B,), T, np.int64)
    else:
        n = np.asarray(lengths)
        if n.shape != (B,) or n.dtype.kind not in "iu" or n.min() < 1 or n.max() > T:
            raise ValueError(f"lengths must be {B} ints in [1, T={T}] (one per row), got {n.dtype} {n.shape} "
                             f"{n.tolist() if n.size <= 8 else ''}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    window = _check_window(window, V)
    k = unembedding_keys(params, cfg) if keys is None else _check_keys(keys, V)
    bs = min(int(batch_size), B)
    chunks = []
    for s in range(0, B, bs):
        tt, nn = t[s:s + bs], n[s:s + bs]
        m = tt.shape[0]
        if m < bs:  # pad the last chunk to the compiled batch
            tt = np.concatenate([tt, np.repeat(tt[:1], bs - m, 0)])
            nn = np.concatenate([nn, np.repeat(nn[:1], bs - m)])
        z = _last_logits(params, jnp.asarray(tt, jnp.int32), jnp.asarray(nn - 1, jnp.int32), cfg)
        chunks.append(jax.tree.map(lambda a, m=m: a[:m], _spearman(z, k, window)))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *chunks)


@functools.partial(jax.jit, static_argnames=("k",))
def _neighbours(keys: jax.Array, ids: jax.Array, k: int):
    u = _unit(keys)
    cos = _unit(jnp.take(keys, ids, axis=0)) @ u.T  # [N, V]
    cos = cos.at[jnp.arange(ids.shape[0]), ids].set(-jnp.inf)  # not its own neighbour
    vals, nbr = jax.lax.top_k(cos, k)
    return nbr.astype(jnp.int32), vals


def key_neighbours(params, cfg: ModelConfig, ids, k: int = 10, *, keys=None) -> tuple[jax.Array, jax.Array]:
    """Returns (neighbour ids int32 [N, k], their cosines float32 [N, k]): for each token id of ``ids`` [N],
    the ``k`` other tokens whose keys (unembedding rows, or ``keys`` [V, D]) are closest by cosine, closest first."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__} (arguments are params, cfg, ids)")
    V = cfg.vocab_size
    i = np.asarray(ids)
    if i.ndim != 1 or i.size < 1 or i.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 1-D int array of token ids [N >= 1], got {i.dtype} {i.shape}")
    if i.min() < 0 or i.max() >= V:
        raise ValueError(f"ids must lie in [0, vocab_size={V}), got [{i.min()}, {i.max()}]")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < V:
        raise ValueError(f"k must be an int in [1, vocab_size - 1 = {V - 1}], got {k!r}")
    mat = unembedding_keys(params, cfg) if keys is None else _check_keys(keys, V)
    return _neighbours(mat, jnp.asarray(i, jnp.int32), int(k))
