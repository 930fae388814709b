"""Token-Supervised Value Models (P50): a value head on h_t trained on empirical P(correct | prefix).

Paper: *Token-Supervised Value Models for Enhancing Mathematical Problem-Solving Capabilities of
Large Language Models* (Lee, Yang, Heo, Han, Kim, Yang, Yoo; arXiv 2407.12863, ICLR 2025; no
official code found). A verifier V_phi reads the LM's final hidden state h_t at every token of a
sampled reasoning path y and predicts the *value* of the prefix y_{<=t}: the probability that a
path continuing it reaches the correct final answer. Labels come from N sampled paths per problem:

    v_t(y) = #{n : y^n_{<=t} = y_{<=t}, y^n correct} / #{n : y^n_{<=t} = y_{<=t}}           (P50, labels)

i.e. the empirical P(correct | prefix) at the prefix-trie node of y_{<=t} (the node's count of
correct paths over its count of paths). The head is a linear map of h_t with a sigmoid, and

    L = sum_t m_t * BCE(sigmoid(V_phi(h_t)), v_t) / sum_t m_t                                 (P50, loss)

with soft labels (BCE(p, v) = -v log p - (1 - v) log(1 - p)); ``kind="mse"`` gives
(sigmoid(V_phi(h_t)) - v_t)^2 instead. The outcome-supervised baseline (ORM, Cobbe et al.) is
the same head and loss with every token labelled by its path's outcome (:func:`outcome_labels`);
the two labelings coincide when a problem's paths are all correct or all wrong. Best-of-N
scores each complete path by the value at its last token (:func:`rerank_best_of_n`).

**Unverified** (the paper was not read in full here; NOTES-losses P50): whether the loss is BCE
or MSE (both offered; BCE is the default, as issue 21 specifies), the paper's N (issue 21 fixes
N = 16), whether the head is linear (here: linear, the ORM/OVM convention) and the exact
best-of-N aggregation (here: last-token value, as for an ORM; ``"min"`` and ``"mean"`` are
offered as alternatives).

Positions: labels live on the token array itself, position t scoring the prefix that *ends* with
token t (h_t has read y_{<=t}); ``mask`` marks the positions that get a label (a path's
completion tokens, eos included). Two paths share the prefix at t when their tokens agree at every
position <= t and both are valid (``mask``) at t; the prompt may be included in the rows (the N
paths of a problem share it) or left out.

:func:`trie_value_labels` is jittable and computes the trie counts as an N x N prefix-equality
scan (O(N^2 T) per problem, fine for N <= a few hundred); :func:`trie_value_labels_host` walks
the trie level by level on the host (numpy, O(N T log N)) for large N, where the N^2 table no
longer fits; both equal a brute-force count (tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._distill import reduce_per_token
from tokjax.losses._stats import check_reduction, token_count
from tokjax.losses.registry import register_loss

__all__ = [
    "AGGREGATIONS", "LOSS_KINDS", "VALUE_KEY", "make_tvm_loss", "outcome_labels", "rerank_best_of_n",
    "token_values", "trie_value_labels", "trie_value_labels_host", "tvm_loss", "tvm_per_token", "value_head",
    "value_head_init",
]

VALUE_KEY = "value_head"
LOSS_KINDS = ("bce", "mse")
AGGREGATIONS = ("last", "min", "mean")
_F32 = jnp.float32


# ------------------------------------------------------------------------------------------ labels
def _check_paths(paths, correct, mask, *, host: bool):
    """Returns (paths [P, N, T] int, correct [P, N] float, mask [P, N, T] bool) or raises ValueError."""
    xp = np if host else jnp
    if correct is None:
        raise ValueError("correct is required: one 0/1 outcome per path, [P, N] (or [N] for one problem)")
    paths = xp.asarray(paths)
    if paths.ndim == 2:  # one problem
        paths = paths[None]
        correct = xp.asarray(correct)[None]
        mask = None if mask is None else xp.asarray(mask)[None]
    if paths.ndim != 3:
        raise ValueError(f"paths must be int [N, T] (one problem) or [P, N, T] (P problems x N sampled paths), "
                         f"got shape {tuple(paths.shape)}")
    if not np.issubdtype(paths.dtype, np.integer):
        raise ValueError(f"paths must hold integer token ids, got dtype {paths.dtype}")
    if paths.shape[1] < 1 or paths.shape[2] < 1:
        raise ValueError(f"paths needs at least one path and one position, got shape {tuple(paths.shape)}")
    correct = xp.asarray(correct)
    if correct.shape != paths.shape[:2]:
        raise ValueError(f"correct must be [P, N] = {tuple(paths.shape[:2])} (one outcome per path), got "
                         f"shape {tuple(correct.shape)}")
    if host or not isinstance(correct, jax.core.Tracer):
        c = np.asarray(correct, np.float64)
        if not np.all((c == 0) | (c == 1)):
            raise ValueError("correct must hold 0/1 (or bool) outcomes, one per path; got values outside {0, 1}")
    mask = xp.ones(paths.shape, bool) if mask is None else xp.asarray(mask)
    if mask.shape != paths.shape:
        raise ValueError(f"mask must have the shape of paths {tuple(paths.shape)}, got {tuple(mask.shape)}")
    return paths, correct.astype(xp.float32), mask.astype(bool)


def trie_value_labels(paths, correct, mask=None) -> jax.Array:
    """Returns float32 [P, N, T] (or [N, T] for 2-D input) labels v_t = empirical P(correct | prefix) (P50).

    ``paths`` int [P, N, T]: N sampled paths of each of P problems (or [N, T] for one); ``correct``
    [P, N] 0/1 outcomes; ``mask`` bool like ``paths`` (positions that get a label; default all).
    v[p, a, t] = sum_b s_{abt} correct[p, b] / sum_b s_{abt}, with s_{abt} = 1 when path b agrees
    with path a at every position <= t and is valid at t (the trie node of a's prefix). Masked-out
    positions get 0. Jittable (an N x N cumulative prefix-equality table per problem).
    """
    squeeze = jnp.ndim(paths) == 2
    paths, correct, mask = _check_paths(paths, correct, mask, host=False)
    same = paths[:, :, None, :] == paths[:, None, :, :]                       # [P, N, N, T]
    prefix = jnp.cumprod(same.astype(jnp.int32), axis=-1).astype(bool)         # equal on [0, t]
    share = prefix & mask[:, None, :, :] & mask[:, :, None, :]
    share = share.astype(_F32)
    num = jnp.einsum("pabt,pb->pat", share, correct)
    den = jnp.sum(share, axis=2)
    v = jnp.where(mask, num / jnp.where(den > 0, den, 1.0), 0.0)
    return v[0] if squeeze else v


def trie_value_labels_host(paths, correct, mask=None) -> np.ndarray:
    """Returns float32 numpy labels equal to :func:`trie_value_labels`, built by walking the prefix trie on the host.

    Level t of the trie: node ids of (node at t - 1, token t) pairs via ``np.unique``; a node's
    counts at t include only the paths valid (``mask``) at t. O(P N T log N) time and
    O(P N) memory per level, for N in the thousands (the N^2 table of the jitted version is not
    built). Not jittable (``np.unique`` has a data-dependent output size).
    """
    squeeze = np.ndim(paths) == 2
    paths, correct, mask = _check_paths(paths, correct, mask, host=True)
    P, N, T = paths.shape
    out = np.zeros((P, N, T), np.float32)
    node = np.repeat(np.arange(P, dtype=np.int64)[:, None], N, 1).reshape(-1)  # root node per problem
    c = correct.reshape(-1).astype(np.float64)
    for t in range(T):
        key = np.stack([node, paths[:, :, t].reshape(-1).astype(np.int64)], 1)
        node = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)  # trie node of [0, t]
        valid = mask[:, :, t].reshape(-1).astype(np.float64)
        n = np.bincount(node, weights=valid)
        k = np.bincount(node, weights=valid * c)
        v = np.where(valid > 0, k[node] / np.where(n[node] > 0, n[node], 1.0), 0.0)
        out[:, :, t] = v.reshape(P, N)
    return out[0] if squeeze else out


def outcome_labels(correct, mask) -> jax.Array:
    """Returns float32 labels like ``mask`` with every valid token of path n labelled ``correct[n]`` (the ORM baseline).

    ``correct`` [...] 0/1 per path, ``mask`` [..., T] bool. Equal to :func:`trie_value_labels` when all
    paths of a problem share one outcome.
    """
    correct = jnp.asarray(correct, _F32)
    mask = jnp.asarray(mask)
    if mask.shape[:-1] != correct.shape:
        raise ValueError(f"mask must be correct's shape {tuple(correct.shape)} plus a token axis, got "
                         f"{tuple(mask.shape)}")
    return jnp.where(mask.astype(bool), correct[..., None], 0.0)


# -------------------------------------------------------------------------------------------- head
def value_head_init(key: jax.Array, d_model: int, *, bias: float = 0.0) -> dict:
    """Returns the P50 scalar value head ``{"w": [D], "b": []}``: w ~ N(0, 1/D), b = ``bias`` (a logit).

    ``bias`` may start the head at the base rate (logit of the mean label), so early steps do not spend
    themselves on the intercept.
    """
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
        raise ValueError(f"d_model must be an int >= 1 (the hidden size the head reads), got {d_model!r}")
    if not np.isfinite(bias):
        raise ValueError(f"bias must be a finite logit, got {bias!r}")
    w = jax.random.normal(key, (d_model,), _F32) / np.sqrt(d_model)
    return {"w": w, "b": jnp.asarray(bias, _F32)}


def value_head(head: dict, hidden: jax.Array) -> jax.Array:
    """Returns float32 [...] value logits V_phi(h_t) = w . h_t + b of final-normed ``hidden`` [..., D] (P50).

    The value is ``jax.nn.sigmoid`` of the logit (an estimate of P(correct | prefix))."""
    if not isinstance(head, dict) or set(head) != {"w", "b"}:
        raise ValueError(f"head must be the dict of value_head_init (keys 'w', 'b'), got "
                         f"{sorted(head) if isinstance(head, dict) else type(head).__name__}")
    w = jnp.asarray(head["w"], _F32)
    if jnp.ndim(hidden) < 1 or jnp.shape(hidden)[-1] != w.shape[0]:
        raise ValueError(f"hidden must be [..., D={w.shape[0]}] (the head's width), got {tuple(jnp.shape(hidden))}")
    return jnp.asarray(hidden, _F32) @ w + jnp.asarray(head["b"], _F32)


def token_values(params: dict, cfg, tokens, *, key: str = VALUE_KEY) -> jax.Array:
    """Returns float32 [B, T] values sigmoid(V_phi(h_t)) of token rows [B, T] under the model in ``params``
    (one shared forward, no logits; ``params[key]`` the head)."""
    from tokjax.model.forward import Inputs, forward

    if not isinstance(params, dict) or key not in params:
        raise ValueError(f"params has no {key!r} entry: add the head, e.g. params[{key!r}] = "
                         "value_head_init(rng, cfg.d_model)")
    hidden = forward(params, cfg, Inputs(tokens=jnp.asarray(tokens, jnp.int32)), compute_logits=False).hidden
    return jax.nn.sigmoid(value_head(params[key], hidden))


# -------------------------------------------------------------------------------------------- loss
def tvm_per_token(logits, labels, *, kind: str = "bce") -> jax.Array:
    """Returns float32 [...] per-token losses of value logits against soft labels in [0, 1] (P50).

    ``"bce"``: softplus(z) - v z = BCE(sigmoid(z), v) (stable for any z); ``"mse"``: (sigmoid(z) - v)^2.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    z = jnp.asarray(logits, _F32)
    v = jnp.asarray(labels, _F32)
    if z.shape != v.shape:
        raise ValueError(f"labels shape {tuple(v.shape)} must equal the value logits' shape {tuple(z.shape)}")
    if kind == "bce":
        return jax.nn.softplus(z) - v * z
    return (jax.nn.sigmoid(z) - v) ** 2


def tvm_loss(logits, labels, mask=None, *, kind: str = "bce", reduction: str = "token_mean",
             normalizer=None) -> jax.Array:
    """Returns the reduced P50 loss sum_t m_t l(V_phi(h_t), v_t) / sum_t m_t (0 for an empty mask).

    ``logits`` [B, T] value logits (:func:`value_head`), ``labels`` [B, T] in [0, 1] (TVM:
    :func:`trie_value_labels`; ORM: :func:`outcome_labels`), ``mask`` [B, T] bool. ``reduction`` and
    ``normalizer`` as :func:`tokjax.losses.reduce_loss` (a global normaliser makes micro-batches add up).
    """
    check_reduction(reduction)
    per = tvm_per_token(logits, labels, kind=kind)
    m = jnp.ones(per.shape, bool) if mask is None else jnp.asarray(mask)
    if m.shape != per.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} must equal the labels' shape {tuple(per.shape)}")
    lab = jnp.asarray(labels)
    if not isinstance(lab, jax.core.Tracer):
        lv = np.asarray(lab, np.float64)[np.asarray(m, bool)]
        if lv.size and (not np.all(np.isfinite(lv)) or lv.min() < 0 or lv.max() > 1):
            raise ValueError("labels must lie in [0, 1] (probabilities of a correct answer) at masked-in tokens")
    return reduce_per_token(per, m.astype(bool), reduction, normalizer)


def make_tvm_loss(*, kind: str = "bce", key: str = VALUE_KEY, reduction: str = "token_mean"):
    """Returns loss_fn(params, cfg, batch, rng) -> (loss, metrics) of :func:`tvm_loss` (registered as ``"tvm"``).

    ``batch``: ``tokens`` int [B, T] (the rows the model reads; with ``cfg`` None, ``features``
    [B, T, D] instead), ``labels`` float [B, T], ``mask`` bool [B, T]. ``params[key]`` is the head;
    the rest of ``params`` is the model (``TrainConfig.trainable`` picks what trains). Metrics:
    ``loss``, ``mae`` (mean |sigmoid(z) - v| over masked-in tokens), ``tokens``.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    check_reduction(reduction)
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must name the params entry holding the value head, got {key!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """P50: BCE (or MSE) of the value head on h_t against batch['labels'] over batch['mask']."""
        del rng
        if not isinstance(params, dict) or key not in params:
            raise ValueError(f"params has no {key!r} entry: add the head, e.g. params[{key!r}] = "
                             "tokjax.losses.token_value_model.value_head_init(rng, cfg.d_model)")
        need = {"labels", "mask"} | ({"features"} if cfg is None else {"tokens"})
        if not isinstance(batch, dict) or not need <= set(batch):
            raise ValueError(f"the tvm loss needs batch keys {sorted(need)} (tokens int [B, T] or, with cfg None, "
                             f"features [B, T, D]; labels float [B, T] in [0, 1]; mask bool [B, T]), got "
                             f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        if cfg is None:
            hidden = batch["features"]
        else:
            from tokjax.model.forward import Inputs, forward

            hidden = forward(params, cfg, Inputs(tokens=batch["tokens"]), compute_logits=False).hidden
        z = value_head(params[key], hidden)
        m = jnp.asarray(batch["mask"]).astype(bool)
        loss = tvm_loss(z, batch["labels"], m, kind=kind, reduction=reduction)
        n = token_count(m)
        mae = jnp.sum(jnp.where(m, jnp.abs(jax.nn.sigmoid(z) - batch["labels"]), 0.0)) / jnp.maximum(n, 1.0)
        return loss, {"loss": loss, "mae": mae, "tokens": n}

    return loss_fn


def _tvm_factory(kind, key, reduction):
    return make_tvm_loss(kind=kind, key=key, reduction=reduction)


register_loss("tvm", _tvm_factory, {"kind": "bce", "key": VALUE_KEY, "reduction": "token_mean"},
              doc="P50 token-supervised value model: BCE (kind 'bce') or MSE of sigmoid(value_head(h_t)) against "
                  "batch['labels'] (trie labels = TVM, outcome labels = ORM) over batch['mask']; params[key] from "
                  "tokjax.losses.token_value_model.value_head_init", overwrite=True)


# ---------------------------------------------------------------------------------------- reranking
def rerank_best_of_n(values, mask, group_size: int, *, aggregate: str = "last") -> tuple[jax.Array, jax.Array]:
    """Returns (scores [B], chosen [B // group_size]): each path's score and the index (within its group) of the
    best-scoring path of each group of ``group_size`` consecutive rows (best-of-N with a verifier, P50).

    ``values`` [B, T] per-token values (probabilities or logits; the order is what counts), ``mask``
    [B, T] bool (the completion's tokens, eos included). ``aggregate``: ``"last"`` = the value at the
    last valid token (the verifier's judgement of the whole path; the default, as for an ORM), ``"min"``
    / ``"mean"`` over valid tokens. A row with no valid token scores -inf; ties pick the first row.
    """
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    v = jnp.asarray(values, _F32)
    m = jnp.asarray(mask).astype(bool)
    if v.ndim != 2 or m.shape != v.shape:
        raise ValueError(f"values and mask must both be [B, T], got {tuple(v.shape)} and {tuple(m.shape)}")
    B, T = v.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or B % group_size:
        raise ValueError(f"group_size must be an int >= 1 dividing the {B} rows (N paths per problem), "
                         f"got {group_size!r}")
    any_valid = jnp.any(m, axis=-1)
    if aggregate == "last":
        last = T - 1 - jnp.argmax(jnp.flip(m, -1), axis=-1)
        s = jnp.take_along_axis(v, last[:, None], axis=-1)[:, 0]
    elif aggregate == "min":
        s = jnp.min(jnp.where(m, v, jnp.inf), axis=-1)
    else:
        s = jnp.sum(jnp.where(m, v, 0.0), axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1)
    s = jnp.where(any_valid, s, -jnp.inf)
    return s, jnp.argmax(s.reshape(-1, group_size), axis=-1)
