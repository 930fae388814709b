"""SETRec: order-agnostic set identifiers for LLM-based generative recommendation (paper P55).

Paper: "Order-agnostic Identifier for Large Language Model-based Generative Recommendation"
(Lin et al., SIGIR 2025, P55; code ``Linxyhaha/SETRec``). Each item is a *set* of
``n_query = 1 + n_sem`` continuous tokens: one collaborative (CF) token, a linear projection of
the item's CF embedding, and ``n_sem`` semantic tokens from an autoencoder over the item's
features. The history's token sets enter the shared forward as ``Inputs(embeds=...)`` under a
sparse mask (official ``Q_qwen.py``): a history token sees every token of earlier items and
itself, but no other token of its own item, and all tokens of an item share one position id,
so the order of tokens inside an item carries no information. ``n_query`` learned query slots
(each seeing the whole history and only itself) are decoded in ONE forward pass; slot ``q``'s
final hidden state ``h_q`` is scored against slot ``q`` of every catalogue item:

    score(b, i) = sum_q beta_q <h_q(b), z_q(i)>                        (inference)
    L = sum_q CE(softmax_i <h_q, z_q(i)>, target) / n_query + alpha * ||x - AE(x)||^2   (training, Eq. 8)

:func:`setrec_layout` builds the mask and positions (the causal ablation too),
:func:`item_tokens` the token sets, :func:`setrec_query_states` the one forward pass,
:func:`setrec_scores` the catalogue scores and :func:`setrec_loss` the training loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.logits import target_logprobs
from tokjax.model import Explicit, Inputs, ModelConfig, forward

__all__ = [
    "SetRecParams",
    "init_setrec",
    "item_tokens",
    "setrec_layout",
    "setrec_loss",
    "setrec_query_states",
    "setrec_scores",
]


@struct.dataclass
class SetRecParams:
    """SETRec's parameters besides the backbone (a pytree): the CF projection, the semantic autoencoder, the query slots.

    ``cf_proj`` [d_cf, D], ``cf_bias`` [D]: CF embedding -> CF token. ``enc1`` [F, H], ``enc2``
    [H, n_sem * D]: semantic encoder; ``dec1`` [n_sem * D, H], ``dec2`` [H, F]: its decoder (the
    reconstruction term). ``query`` [n_query, D]: the learned query slots.
    """

    cf_proj: jax.Array
    cf_bias: jax.Array
    enc1: jax.Array
    enc2: jax.Array
    dec1: jax.Array
    dec2: jax.Array
    query: jax.Array

    @property
    def n_query(self) -> int:
        return int(self.query.shape[0])


def init_setrec(key: jax.Array, *, d_cf: int, d_feat: int, d_model: int, n_sem: int, hidden: int = 64) -> SetRecParams:
    """Returns freshly initialised :class:`SetRecParams` (scaled-normal weights, zero bias)."""
    for name, v in (("d_cf", d_cf), ("d_feat", d_feat), ("d_model", d_model), ("hidden", hidden)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not isinstance(n_sem, int) or n_sem < 0:
        raise ValueError(f"n_sem must be a non-negative int, got {n_sem!r}")
    ks = jax.random.split(key, 6)

    def w(k, a, b):
        return jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a)

    return SetRecParams(
        cf_proj=w(ks[0], d_cf, d_model), cf_bias=jnp.zeros((d_model,), jnp.float32),
        enc1=w(ks[1], d_feat, hidden), enc2=w(ks[2], hidden, max(n_sem, 1) * d_model),
        dec1=w(ks[3], max(n_sem, 1) * d_model, hidden), dec2=w(ks[4], hidden, d_feat),
        query=0.02 * jax.random.normal(ks[5], (1 + n_sem, d_model), jnp.float32),
    )


def item_tokens(sp: SetRecParams, cf_embed: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(tokens [N, n_query, D], reconstruction [N, F])``: each item's token set (CF token first).

    ``cf_embed`` [N, d_cf] (frozen collaborative embeddings), ``features`` [N, F] (semantic features).
    """
    cf = cf_embed @ sp.cf_proj + sp.cf_bias
    n_sem = sp.n_query - 1
    D = cf.shape[-1]
    h = jax.nn.gelu(features @ sp.enc1)
    z = h @ sp.enc2
    recon = jax.nn.gelu(z @ sp.dec1) @ sp.dec2
    sem = z[:, : n_sem * D].reshape(-1, n_sem, D)
    return jnp.concatenate([cf[:, None, :], sem], axis=1), recon


def setrec_layout(n_items: int, n_query: int, *, causal: bool = False, item_valid: Any = None) -> tuple[jax.Array, jax.Array]:
    """Returns ``(visible bool [B|1, T, T], positions int32 [T])`` for ``n_items`` history sets + ``n_query`` query slots.

    Token ``j`` of history item ``k`` sits at index ``k * n_query + j`` and the query slots at
    ``n_items * n_query + q``. SETRec (``causal=False``): a history token sees all tokens of
    earlier items and itself; a query slot sees the whole history and itself; the tokens of
    item k share position k and the query slots share position ``n_items``. ``causal=True``
    is the ablation: a plain causal mask over the flattened sequence with positions 0..T-1,
    which makes the scores depend on the order inside an item. ``item_valid`` bool [B, n_items]
    hides padded history items from every query.
    """
    if not isinstance(n_items, int) or n_items < 0 or not isinstance(n_query, int) or n_query < 1:
        raise ValueError(f"need n_items >= 0 and n_query >= 1 ints, got {n_items!r}, {n_query!r}")
    L = n_items * n_query
    T = L + n_query
    idx = np.arange(T)
    if causal:
        vis = idx[None, :] <= idx[:, None]
        pos = idx.astype(np.int32)
    else:
        unit = np.where(idx < L, idx // n_query, n_items + 1 + idx)  # each query slot its own unit
        earlier = unit[None, :] < unit[:, None]
        same_item = (idx[:, None] < L) & (idx[None, :] < L) & (unit[:, None] == unit[None, :])
        query_sees_history = (idx[:, None] >= L) & (idx[None, :] < L)
        vis = (earlier & (idx[None, :] < L)) | query_sees_history | np.eye(T, dtype=bool)
        vis &= ~(same_item & ~np.eye(T, dtype=bool))
        pos = np.where(idx < L, idx // n_query, n_items).astype(np.int32)
    vis = jnp.asarray(vis)[None]
    if item_valid is not None:
        valid = jnp.asarray(item_valid, bool)
        if valid.ndim != 2 or valid.shape[1] != n_items:
            raise ValueError(f"item_valid must be bool [batch, n_items={n_items}], got shape {valid.shape}")
        key_ok = jnp.concatenate([jnp.repeat(valid, n_query, axis=1), jnp.ones((valid.shape[0], n_query), bool)], 1)
        vis = (vis & key_ok[:, None, :]) | jnp.eye(T, dtype=bool)[None]
    return vis, jnp.asarray(pos)


def setrec_query_states(
    params: Any, cfg: ModelConfig, sp: SetRecParams, history: jax.Array, *,
    item_valid: jax.Array | None = None, causal: bool = False,
) -> jax.Array:
    """Returns the query slots' final hidden states [B, n_query, D] from ONE forward pass.

    ``history`` [B, n_items, n_query, D]: the token sets of the history items (from
    :func:`item_tokens`), oldest first. Runs ``forward(params, cfg, Inputs(embeds=..., positions=...),
    mask=Explicit(...))`` with the layout of :func:`setrec_layout`.
    """
    history = jnp.asarray(history)
    if history.ndim != 4 or history.shape[2] != sp.n_query or history.shape[3] != cfg.d_model:
        raise ValueError(
            f"history must be [batch, n_items, n_query={sp.n_query}, d_model={cfg.d_model}], got shape {history.shape}"
        )
    B, n_items, Q, D = history.shape
    if n_items + 1 > cfg.max_len and not causal:
        raise ValueError(f"{n_items} history items need {n_items + 1} positions, more than max_len={cfg.max_len}")
    if (n_items + 1) * Q > cfg.max_len and causal:
        raise ValueError(f"{(n_items + 1) * Q} tokens exceed max_len={cfg.max_len}")
    vis, pos = setrec_layout(n_items, Q, causal=causal, item_valid=item_valid)
    queries = jnp.broadcast_to(sp.query.astype(history.dtype), (B, Q, D))
    embeds = jnp.concatenate([history.reshape(B, n_items * Q, D), queries], axis=1)
    out = forward(params, cfg, Inputs(embeds=embeds, positions=pos), mask=Explicit(jnp.broadcast_to(vis, (B,) + vis.shape[1:])),
                  compute_logits=False)
    return out.hidden[:, -Q:, :]


def setrec_scores(query_states: jax.Array, catalog: jax.Array, beta: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns ``(score [B, N], slot_scores [n_query, B, N])``: ``score = sum_q beta_q <h_q, z_q(item)>``.

    ``catalog`` [N, n_query, D]: every item's token set. ``beta`` [n_query] (runtime array;
    default all ones) weighs the slots, the paper's "semantic strength".
    """
    if catalog.ndim != 3 or catalog.shape[1:] != query_states.shape[1:]:
        raise ValueError(
            f"catalog must be [n_items, n_query, D] = [N, {query_states.shape[1]}, {query_states.shape[2]}], "
            f"got shape {catalog.shape}"
        )
    slot = jnp.einsum("bqd,nqd->qbn", query_states.astype(jnp.float32), catalog.astype(jnp.float32))
    beta = jnp.ones((slot.shape[0],), jnp.float32) if beta is None else jnp.asarray(beta, jnp.float32)
    return jnp.einsum("q,qbn->bn", beta, slot), slot


def setrec_loss(
    params: Any, cfg: ModelConfig, sp: SetRecParams, cf_embed: jax.Array, features: jax.Array,
    history_ids: jax.Array, target_ids: jax.Array, alpha: float | jax.Array = 0.1, *, causal: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns ``(loss, metrics)``: mean over slots of the catalogue cross-entropy + ``alpha`` * AE reconstruction MSE.

    ``history_ids`` int [B, n_items] (index into the catalogue, -1 = padding), ``target_ids`` int [B].
    """
    tokens, recon = item_tokens(sp, cf_embed, features)
    valid = history_ids >= 0
    hist = tokens[jnp.maximum(history_ids, 0)]
    h = setrec_query_states(params, cfg, sp, hist, item_valid=valid, causal=causal)
    _, slot = setrec_scores(h, tokens)
    targets = jnp.broadcast_to(jnp.asarray(target_ids)[None, :], slot.shape[:2])  # every slot scores the same item
    ce = -jnp.mean(target_logprobs(slot, targets))
    mse = jnp.mean(jnp.square(recon - features))
    loss = ce + alpha * mse
    return loss, {"loss": loss, "ce": ce, "recon_mse": mse}
