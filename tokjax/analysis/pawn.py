"""PAWN (P21): a detector of AI-generated text that weights per-token next-token metrics by a learned gate.

Miralles-González, Huertas-Tato, Martín, Camacho, "Not all tokens are created equal: Perplexity Attention
Weighted Networks for AI generated text detection" (arXiv 2501.03940). Official code was not located; this
follows the paper's description (abstract and method summary, see ``papers/NOTES-tokenizers-metrics-analysis.md``
section P21). Zero-shot detectors average a per-token metric (mean log-prob = -log perplexity, mean log-rank)
over the text; PAWN replaces the mean by learned per-token weights read from the frozen LM's last hidden state
and the token's position:

    m_t  = metrics of the next-token distribution at position t          (frozen LM, one forward)
    f_t  = MLP_metric(norm(m_t))                              [F]
    g_t  = MLP_gate([norm(h_t), t / position_scale])          [G]   (G gate heads, each over F/G features)
    a_t  = softmax_t(g_t) over the tokens with mask_t = 1     (masked softmax along the sequence)
    z    = sum_t a_t * f_t                                    [F]   (head k weights feature slice k)
    logit = MLP_head(z)                                             (sigmoid -> P(AI-generated))

With a constant gate (every g_t equal) a_t = 1/n and ``z`` is the mean of f_t over the text, i.e. the
aggregation of the zero-shot baselines (:func:`tokjax.model.masked_mean`); the gate's output layer starts at
zero, so training starts from it.
Only the three small MLPs are trained; the LM's metrics and hidden states are computed once
(:func:`pawn_features`) and cached on disk (:func:`pawn_features_batched`), as the paper does.

Per-token metrics (``METRICS``, position t scores token t+1): ``logp`` = log p(x_{t+1} | x_<=t), ``entropy`` of
the next-token distribution, ``max_logp`` = max_v log p(v | x_<=t) (the top token's log-prob) and ``log_rank`` =
log(1 + rank of x_{t+1}) (0 = the model's top token). [Unverified against the paper's text: secondary sources
list next-token log-prob, max log-prob and entropy as PAWN's metrics; log-rank (the GLTR / log-rank zero-shot
detector's statistic) is added here; a caller may select columns.] Also unverified and chosen here: the
position encoding (one scalar t / position_scale), the feature normalisation (per-column mean / std of the
training set, frozen), the MLP sizes and GELU, the zero-initialised gate output layer, and binary
cross-entropy as the training loss.

All metrics come from ONE forward of the frozen LM through :func:`tokjax.losses.token_stats` (``entropy``,
``hidden`` and ``rank``; cut cross-entropy, no [B, T, V] logits) plus one streamed arg-max pass over the
vocabulary (:func:`tokjax.losses.cut_cross_entropy.head_stats`) for ``max_logp``.

Training uses :func:`tokjax.train.train` with ``model_cfg=None``: :func:`pawn_loss` is the train loss,
:func:`pawn_batch_fn` the batches, ``TrainConfig(trainable=TRAINABLE)`` keeps the normalisation frozen, and
``trainable=UNIFORM_TRAINABLE`` on :func:`uniform_gate` params trains the mean-aggregation baseline with the same
metric MLP and head. With few training texts the gate can memorise them by collapsing onto ~2 tokens per text
(seen on 32 SmolLM2 texts within 50 steps, ``experiments/p21_pawn.py``): keep a validation split and stop early.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._next_token import token_stats
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE, head_stats
from tokjax.model.forward import head_matrix

__all__ = [
    "METRICS", "TRAINABLE", "UNIFORM_TRAINABLE", "PawnFeatures", "apply_pawn", "init_pawn",
    "pawn_batch_fn", "pawn_features", "pawn_features_batched", "pawn_loss",
    "pawn_norm_stats", "pawn_weights", "uniform_gate",
]

_F32 = jnp.float32
METRICS = ("logp", "entropy", "max_logp", "log_rank")
#: the parameter groups PAWN trains (the "norm" statistics stay frozen)
TRAINABLE = ("metric", "gate", "head")
#: the mean-aggregation baseline: the gate stays at its constant (zero) output
UNIFORM_TRAINABLE = ("metric", "head")
CACHE_FORMAT = 1
_GROUPS = ("metric", "gate", "head", "norm")


class PawnFeatures(NamedTuple):
    """Per-token inputs of the PAWN head: ``metrics`` float32 [B, T, M] (columns ``METRICS``), ``hidden``
    [B, T, D] (the LM's final-normed last hidden state at the position that predicts the token) and ``mask``
    bool [B, T] (the targets that count)."""

    metrics: np.ndarray | jax.Array
    hidden: np.ndarray | jax.Array
    mask: np.ndarray | jax.Array


# ------------------------------------------------------------------------------------------ features
def _check_tokens(tokens, mask, vocab_size: int):
    """Returns (tokens int32 [B, T+1], mask bool [B, T+1] or [B, T] or None) after checking them."""
    tok = np.asarray(tokens)
    if tok.ndim != 2 or tok.shape[1] < 2 or tok.shape[0] < 1:
        raise ValueError(f"tokens must be int [batch, seq+1] with batch >= 1 and seq+1 >= 2, got shape {tok.shape}")
    if tok.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integer ids, got dtype {tok.dtype}")
    if tok.size and (tok.min() < 0 or tok.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), got min {tok.min()} max {tok.max()}")
    B, n = tok.shape
    if mask is None:
        return tok.astype(np.int32), None
    m = np.asarray(mask)
    if m.shape not in ((B, n), (B, n - 1)):
        raise ValueError(f"mask must be [B, T+1]={B, n} (per token) or [B, T]={B, n - 1} (per target), "
                         f"got {m.shape}")
    if m.dtype.kind not in "biu":
        raise ValueError(f"mask must be bool or 0/1, got dtype {m.dtype}")
    return tok.astype(np.int32), m.astype(bool)


@functools.partial(jax.jit, static_argnames=("cfg", "block_size"))
def _features(params, cfg, tokens, mask, block_size):
    batch = {"tokens": tokens} if mask is None else {"tokens": tokens, "mask": mask}
    st = token_stats(params, cfg, batch, entropy=True, hidden=True, rank=True, block_size=block_size)
    B, T = st.logp.shape
    h = st.hidden.reshape(B * T, -1)
    w, layout = head_matrix(params, cfg)
    w = w.astype(cfg.dtype)
    arg = head_stats(h, w, jnp.zeros((B * T,), jnp.int32), block_size=block_size, want=("argmax",),
                     head_layout=layout)["argmax"]
    w_top = jnp.take(w, arg, axis=0) if layout == "vd" else jnp.take(w, arg, axis=1).T  # [N, D]
    z_top = jnp.sum(h.astype(_F32) * w_top.astype(_F32), axis=-1).reshape(B, T)
    # log p(top) = z_top - lse; never below the target's own log-prob (rounding between the two passes)
    max_logp = jnp.minimum(jnp.maximum(z_top - st.lse, st.logp), 0.0)
    log_rank = jnp.log1p(st.rank.astype(_F32))
    metrics = jnp.stack([st.logp, st.entropy, max_logp, log_rank], axis=-1).astype(_F32)
    metrics = jnp.where(st.mask[..., None], metrics, 0.0)
    return PawnFeatures(metrics, st.hidden, st.mask)


def pawn_features(params, cfg, tokens, *, mask=None, block_size: int = DEFAULT_BLOCK_SIZE) -> PawnFeatures:
    """Returns the :class:`PawnFeatures` [B, T] of ``tokens`` [B, T+1] under a frozen LM (one forward).

    Position t holds the metrics of the LM's next-token distribution after reading ``tokens[:, :t+1]``,
    scored on ``tokens[:, t+1]`` (``METRICS``: log-prob, entropy, max log-prob, log(1 + rank)), and the
    final-normed hidden state h_t that produced it. ``mask`` (optional) is bool [B, T+1] per token (a target
    counts iff its token's entry is True: padding) or [B, T] per target, as in
    :func:`tokjax.losses.token_stats`; metrics of masked-out targets are 0. Jitted (``cfg`` static).
    """
    tok, m = _check_tokens(tokens, mask, cfg.vocab_size)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    return _features(params, cfg, jnp.asarray(tok), None if m is None else jnp.asarray(m), block_size)


def _fingerprint(params) -> str:
    """Returns a short hash of the params' shapes and the first values of every leaf (a cheap model identity)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = jnp.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.asarray(a.reshape(-1)[:64], np.float32).tobytes())
    return h.hexdigest()[:16]


def pawn_features_batched(params, cfg, tokens, *, mask=None, batch_size: int = 8, cache_path=None,
                          hidden_dtype=np.float16, block_size: int = DEFAULT_BLOCK_SIZE) -> PawnFeatures:
    """Returns :func:`pawn_features` of many rows as numpy arrays, ``batch_size`` rows per forward, cached on disk.

    ``tokens`` [N, T+1] (``mask`` as in :func:`pawn_features`); the last chunk is padded so every forward
    has one shape (one compilation). ``hidden`` is stored as ``hidden_dtype`` (float16 by default: the gate
    reads it; the metrics stay float32). ``cache_path`` (optional, a ``.npz`` file): when it exists and was
    written for the same tokens, mask, model config, parameter fingerprint and settings it is loaded instead of
    running the LM; otherwise the features are computed and written there (to a temporary file, then renamed).
    """
    tok, m = _check_tokens(tokens, mask, cfg.vocab_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    hidden_dtype = np.dtype(hidden_dtype)
    if hidden_dtype.kind != "f":
        raise ValueError(f"hidden_dtype must be a floating dtype, got {hidden_dtype}")
    key = None
    if cache_path is not None:
        cache_path = Path(cache_path)
        h = hashlib.sha256()
        settings = {"format": CACHE_FORMAT, "metrics": METRICS, "cfg": repr(cfg), "params": _fingerprint(params),
                    "hidden_dtype": hidden_dtype.str}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for a in (tok, m):
            if a is not None:
                h.update(f"|{a.dtype.str}|{a.shape}|".encode())
                h.update(np.ascontiguousarray(a).tobytes())
        key = h.hexdigest()
        if cache_path.is_file():
            try:
                with np.load(cache_path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        return PawnFeatures(z["metrics"], z["hidden"], z["mask"])
            except (OSError, ValueError, KeyError):
                pass  # unreadable or stale: recompute and replace
    n = tok.shape[0]
    bs = int(min(batch_size, n))
    pad = -n % bs
    if pad:
        tok = np.concatenate([tok, np.repeat(tok[-1:], pad, axis=0)])
        m = None if m is None else np.concatenate([m, np.repeat(m[-1:], pad, axis=0)])
    parts = []
    for i in range(0, tok.shape[0], bs):
        f = _features(params, cfg, jnp.asarray(tok[i:i + bs]), None if m is None else jnp.asarray(m[i:i + bs]),
                      block_size)
        parts.append((np.asarray(f.metrics), np.asarray(f.hidden).astype(hidden_dtype), np.asarray(f.mask)))
    out = PawnFeatures(*(np.concatenate([p[j] for p in parts])[:n] for j in range(3)))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, key=np.asarray(key), metrics=out.metrics, hidden=out.hidden, mask=out.mask)
        os.replace(tmp, cache_path)
    return out


# ------------------------------------------------------------------------------------------- the head
def _dense(key, d_in: int, d_out: int, zero: bool = False) -> tuple[jax.Array, jax.Array]:
    w = jnp.zeros((d_in, d_out), _F32) if zero else jax.random.normal(key, (d_in, d_out), _F32) / np.sqrt(d_in)
    return w, jnp.zeros((d_out,), _F32)


def _mlp_init(key, d_in: int, d_hidden: int, d_out: int, zero_out: bool = False) -> dict:
    k1, k2 = jax.random.split(key)
    w1, b1 = _dense(k1, d_in, d_hidden)
    w2, b2 = _dense(k2, d_hidden, d_out, zero=zero_out)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def _mlp(p: dict, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def init_pawn(key: jax.Array, n_metrics: int, d_hidden: int, *, features: int = 32, metric_hidden: int = 32,
              gate_hidden: int = 64, gate_heads: int = 1, head_hidden: int = 32, norm: dict | None = None) -> dict:
    """Returns PAWN head params ``{"metric", "gate", "head", "norm"}`` (plain arrays; see the module doc).

    ``metric``: MLP n_metrics -> metric_hidden -> features; ``gate``: MLP (d_hidden + 1) -> gate_hidden ->
    gate_heads with a zero output layer (a constant gate: training starts from mean aggregation); ``head``:
    MLP features -> head_hidden -> 1. ``gate_heads`` must divide ``features`` (head k weights feature slice k).
    ``norm`` (from :func:`pawn_norm_stats`, default identity): the frozen per-column mean / std of the metrics
    and the hidden states.
    """
    n_metrics, d_hidden = _pos_int("n_metrics", n_metrics), _pos_int("d_hidden", d_hidden)
    features, metric_hidden = _pos_int("features", features), _pos_int("metric_hidden", metric_hidden)
    gate_hidden, gate_heads = _pos_int("gate_hidden", gate_hidden), _pos_int("gate_heads", gate_heads)
    head_hidden = _pos_int("head_hidden", head_hidden)
    if features % gate_heads:
        raise ValueError(f"gate_heads={gate_heads} must divide features={features} (each head weights a slice)")
    km, kg, kh = jax.random.split(key, 3)
    ident = {"metric_mean": jnp.zeros((n_metrics,), _F32), "metric_std": jnp.ones((n_metrics,), _F32),
             "hidden_mean": jnp.zeros((d_hidden,), _F32), "hidden_std": jnp.ones((d_hidden,), _F32)}
    if norm is not None:
        if not isinstance(norm, dict) or set(norm) != set(ident):
            raise ValueError(f"norm must be a dict with keys {sorted(ident)} (from pawn_norm_stats), got "
                             f"{sorted(norm) if isinstance(norm, dict) else type(norm).__name__}")
        for k, v in norm.items():
            if jnp.shape(v) != ident[k].shape:
                raise ValueError(f"norm[{k!r}] must have shape {ident[k].shape}, got {jnp.shape(v)}")
        if not all(bool(jnp.all(jnp.asarray(norm[k]) > 0)) for k in ("metric_std", "hidden_std")):
            raise ValueError("norm standard deviations must be > 0")
        ident = {k: jnp.asarray(v, _F32) for k, v in norm.items()}
    return {"metric": _mlp_init(km, n_metrics, metric_hidden, features),
            "gate": _mlp_init(kg, d_hidden + 1, gate_hidden, gate_heads, zero_out=True),
            "head": _mlp_init(kh, features, head_hidden, 1), "norm": ident}


def uniform_gate(params: dict) -> dict:
    """Returns ``params`` with the gate's output layer set to zero: a constant gate, i.e. mean aggregation.

    Train it with ``TrainConfig(trainable=UNIFORM_TRAINABLE)`` so the gate stays constant: the baseline
    head then differs from PAWN only by its aggregation."""
    _dims(params)
    gate = dict(params["gate"])
    gate["w2"], gate["b2"] = jnp.zeros_like(gate["w2"]), jnp.zeros_like(gate["b2"])
    return {**params, "gate": gate}


def _dims(params) -> tuple[int, int, int, int]:
    """Returns (n_metrics, d_hidden, features, gate_heads) after checking the params' structure."""
    keys = {"metric": ("w1", "b1", "w2", "b2"), "gate": ("w1", "b1", "w2", "b2"), "head": ("w1", "b1", "w2", "b2"),
            "norm": ("metric_mean", "metric_std", "hidden_mean", "hidden_std")}
    if not isinstance(params, dict) or any(not isinstance(params.get(g), dict) or set(params[g]) != set(keys[g])
                                           for g in _GROUPS):
        raise ValueError(f"PAWN params must be a dict {{group: {{...}}}} with groups {keys} (from init_pawn)")
    n_metrics, f = jnp.shape(params["metric"]["w1"])[0], jnp.shape(params["metric"]["w2"])[1]
    d_in, g = jnp.shape(params["gate"]["w1"])[0], jnp.shape(params["gate"]["w2"])[1]
    if jnp.shape(params["head"]["w1"])[0] != f or jnp.shape(params["head"]["w2"])[1] != 1 or f % g:
        raise ValueError(f"PAWN params are inconsistent: metric MLP outputs {f} features, the head reads "
                         f"{jnp.shape(params['head']['w1'])[0]}, the gate has {g} heads")
    return int(n_metrics), int(d_in) - 1, int(f), int(g)


def _check_inputs(params, metrics, hidden, mask):
    """Returns (metrics f32, hidden, mask bool) after checking shapes against params (values when concrete)."""
    M, D, _, _ = _dims(params)
    metrics, hidden, mask = jnp.asarray(metrics), jnp.asarray(hidden), jnp.asarray(mask)
    if metrics.ndim != 3 or metrics.shape[-1] != M:
        raise ValueError(f"metrics must be [B, T, n_metrics={M}], got shape {metrics.shape}")
    B, T = metrics.shape[:2]
    if hidden.shape != (B, T, D):
        raise ValueError(f"hidden must be [B, T, d_hidden]={B, T, D} (like metrics {metrics.shape}), "
                         f"got {hidden.shape}")
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B, T]={B, T} (like metrics), got {mask.shape}")
    if not (jnp.issubdtype(metrics.dtype, jnp.floating) and jnp.issubdtype(hidden.dtype, jnp.floating)):
        raise ValueError(f"metrics and hidden must be floating point, got {metrics.dtype} and {hidden.dtype}")
    if mask.dtype != jnp.bool_ and not jnp.issubdtype(mask.dtype, jnp.integer):
        raise ValueError(f"mask must be bool or 0/1 integers, got {mask.dtype}")
    if B < 1 or T < 1:
        raise ValueError(f"need at least one text and one token, got metrics shape {metrics.shape}")
    mask = mask.astype(bool)
    if not isinstance(mask, jax.core.Tracer):
        empty = np.flatnonzero(~np.asarray(mask).any(axis=1))
        if empty.size:
            raise ValueError(f"mask is all False in row(s) {empty[:8].tolist()}: every text needs >= 1 token to "
                             "aggregate")
    if not isinstance(metrics, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(jnp.where(mask[..., None],
                                                                                               metrics, 0.0)))):
        raise ValueError("metrics must be finite at every masked-in token")
    return metrics.astype(_F32), hidden, mask


def _gate_logits(params, hidden, position_scale):
    B, T, _ = hidden.shape
    nz = params["norm"]
    h = (hidden.astype(_F32) - nz["hidden_mean"]) / nz["hidden_std"]
    pos = jnp.broadcast_to(jnp.arange(T, dtype=_F32)[None, :, None] / jnp.asarray(position_scale, _F32), (B, T, 1))
    return _mlp(params["gate"], jnp.concatenate([h, pos], axis=-1))  # [B, T, G]


def _softmax_terms(g, mask):
    """Returns (e [B, T, G], sum [B, 1, G]) of the masked softmax exp(g - max) over tokens."""
    gm = jnp.where(mask[..., None], g, -jnp.inf)
    mx = jax.lax.stop_gradient(jnp.max(gm, axis=1, keepdims=True))
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)  # a row with no token (only reachable under jit)
    e = jnp.where(mask[..., None], jnp.exp(g - mx), 0.0)
    return e, jnp.sum(e, axis=1, keepdims=True)


def _apply(params, metrics, hidden, mask, position_scale):
    nz = params["norm"]
    f = _mlp(params["metric"], (metrics - nz["metric_mean"]) / nz["metric_std"])  # [B, T, F]
    f = jnp.where(mask[..., None], f, 0.0)
    e, s = _softmax_terms(_gate_logits(params, hidden, position_scale), mask)
    B, T, F = f.shape
    G = e.shape[-1]
    fg = f.reshape(B, T, G, F // G)
    # normalise after summing: with a constant gate e_t == 1 exactly and z is sum_t f_t / n, the plain mean
    z = jnp.sum(e[..., None] * fg, axis=1) / jnp.maximum(s, 1e-30)[:, 0, :, None]  # [B, G, F/G]
    return _mlp(params["head"], z.reshape(B, F))[:, 0], e / jnp.maximum(s, 1e-30)


def apply_pawn(params, metrics, hidden, mask, *, position_scale=128.0, return_weights: bool = False):
    """Returns float32 [B] PAWN logits (> 0: AI-generated), and the token weights [B, T, G] if ``return_weights``.

    ``metrics`` [B, T, n_metrics] and ``hidden`` [B, T, D] (:class:`PawnFeatures`), ``mask`` [B, T] (the
    tokens to aggregate; every row needs one). P21: logit = MLP_head(sum_t softmax_t(MLP_gate([h_t, t /
    position_scale])) * MLP_metric(m_t)), the softmax over masked-in tokens only (module doc).
    ``position_scale`` may be an array (no recompilation). Raises ValueError on mismatched shapes, non-float
    features, non-finite metrics or a row whose mask is all False (checked when the inputs are concrete).
    """
    metrics, hidden, mask = _check_inputs(params, metrics, hidden, mask)
    logits, w = _apply(params, metrics, hidden, mask, position_scale)
    return (logits, w) if return_weights else logits


def pawn_weights(params, hidden, mask, *, position_scale=128.0) -> jax.Array:
    """Returns float32 [B, T, G]: the gate's token weights a_t (each head sums to 1 over the masked-in tokens)."""
    _, D, _, _ = _dims(params)
    hidden, mask = jnp.asarray(hidden), jnp.asarray(mask)
    if hidden.ndim != 3 or hidden.shape[-1] != D or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be [B, T, d_hidden={D}] and mask [B, T], got {hidden.shape} and {mask.shape}")
    _check_inputs(params, jnp.zeros(mask.shape + (jnp.shape(params["metric"]["w1"])[0],), _F32), hidden, mask)
    e, s = _softmax_terms(_gate_logits(params, hidden, position_scale), mask.astype(bool))
    return e / jnp.maximum(s, 1e-30)


def pawn_norm_stats(features: PawnFeatures) -> dict:
    """Returns the ``norm`` dict of :func:`init_pawn`: per-column mean and std (floored at 1e-6) of the metrics
    and the hidden states over the masked-in tokens of ``features`` (the training set)."""
    m = np.asarray(features.mask, bool)
    if m.ndim != 2 or not m.any():
        raise ValueError("features.mask must be [B, T] with at least one True entry")
    out = {}
    for name, arr in (("metric", features.metrics), ("hidden", features.hidden)):
        x = np.asarray(arr, np.float64)[m]
        out[f"{name}_mean"] = jnp.asarray(x.mean(0), _F32)
        out[f"{name}_std"] = jnp.asarray(np.maximum(x.std(0), 1e-6), _F32)
    return out


# ------------------------------------------------------------------------------------------ training
def pawn_loss(params, cfg, batch, rng=None):
    """Returns (loss, metrics): mean binary cross-entropy of ``batch["labels"]`` (1 = AI-generated) given the
    PAWN logits of ``batch["metrics"]``, ``batch["hidden"]``, ``batch["mask"]``.

    The :func:`tokjax.train.train` loss signature for ``train(None, ...)`` (``cfg`` must be None; ``rng``
    unused). Optional ``batch["position_scale"]`` (a runtime scalar, default 128). Metrics: ``loss``,
    ``accuracy``.
    """
    del rng
    if cfg is not None:
        raise ValueError("pawn_loss trains a plain pytree: call tokjax.train.train(None, ...) (cfg=None)")
    metrics, hidden, mask = _check_inputs(params, batch["metrics"], batch["hidden"], batch["mask"])
    y = jnp.asarray(batch["labels"])
    if y.shape != (metrics.shape[0],):
        raise ValueError(f"batch['labels'] must be [B]={metrics.shape[0]} (0 = human, 1 = AI), got {y.shape}")
    y = y.astype(_F32)
    logits, _ = _apply(params, metrics, hidden, mask, batch.get("position_scale", 128.0))
    loss = jnp.mean(jnp.maximum(logits, 0.0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    acc = jnp.mean(((logits > 0).astype(_F32) == y).astype(_F32))
    return loss, {"loss": loss, "accuracy": acc}


def pawn_batch_fn(features: PawnFeatures, labels, *, batch_size: int, seed: int = 0, position_scale: float = 128.0):
    """Returns ``batch_fn(step)`` for :func:`tokjax.train.train`: rows ``tokjax.data.batch_indices(N, batch_size,
    step, seed=seed)`` of the features (a fresh permutation per epoch, a pure function of the step) with their
    labels. Inputs are checked once here."""
    from tokjax.data import batch_indices

    metrics, hidden, mask = (np.asarray(a) for a in features)
    y = np.asarray(labels)
    n = metrics.shape[0] if metrics.ndim == 3 else -1
    if (metrics.ndim != 3 or hidden.ndim != 3 or hidden.shape[:2] != metrics.shape[:2]
            or mask.shape != metrics.shape[:2]):
        raise ValueError(f"features must be metrics [N, T, M], hidden [N, T, D], mask [N, T]; got {metrics.shape}, "
                         f"{hidden.shape}, {mask.shape}")
    if y.shape != (n,) or y.dtype.kind not in "biu" or (y.size and not np.isin(y, (0, 1)).all()):
        raise ValueError(f"labels must be 0/1 of shape [{n}], got {y.dtype} {y.shape}")
    if not np.asarray(mask, bool).any(axis=1).all():
        raise ValueError("every text needs at least one masked-in token (a mask row is all False)")
    bs = _pos_int("batch_size", batch_size)
    if bs > n:
        raise ValueError(f"batch_size={bs} exceeds the number of texts ({n})")
    mask = mask.astype(bool)
    y = y.astype(np.int32)
    scale = np.asarray(position_scale, np.float32)

    def batch_fn(step: int) -> dict:
        idx = batch_indices(n, bs, step, seed=seed)
        return {"metrics": metrics[idx], "hidden": hidden[idx], "mask": mask[idx], "labels": y[idx],
                "position_scale": scale}

    return batch_fn
