"""Successor heads (P54; Gould, Ong, Ogden, Conmy, ICLR 2024): per-head successor scores from weights, and ablation.

A successor head maps an ordinal token to its successor ("Monday" -> "Tuesday", "3" -> "4"). The
paper scores every attention head h by its *effective OV circuit*

    M_h[t] = W_U . W_OV^h . MLP0(W_E[t])

restricted to the tokens of an ordinal task (numbers, number words, days, months, letters): the
**successor score** of h on a task is the fraction of tokens t (all but the last) whose highest logit
among the task's tokens is succ(t). Chance is 1 / |task|.

Effective embedding for pre-norm models (the paper's models are GPT-2/Pythia/Llama-2, all pre-norm):
``MLP0(W_E[t])`` is read here as layer 0's residual stream after its MLP with layer-0 attention
ignored, ``e_t = W_E[t] + MLP0(norm_mlp0(W_E[t]))`` (``effective="mlp0"``; the residual is kept as the
stream the later heads read holds it; whether the paper keeps the ``W_E`` term or attention-0 is
[unverified — check the paper]; ``effective="mlp0_only"`` drops it, ``"embed"`` uses W_E alone).
Head h of layer l then reads its own pre-attention norm of that stream, ``norm_attn_l(e_t)``, and
its output goes through the final norm's scale (and centring, for LayerNorm) to W_U: per token, the
final RMSNorm's division by a positive scalar does not change which logit is largest.

Ablation: :func:`ablated_accuracy` runs the model on prompts with chosen heads zeroed through the
forward's per-head ``attn_heads`` hook (:func:`tokjax.analysis.patching.head_ablation_hooks`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.patching import _unpack, head_ablation_hooks
from tokjax.model.forward import Inputs, blocks, forward, head_matrix, layer_weights, norm

__all__ = ["EFFECTIVE", "ablated_accuracy", "effective_embeddings", "head_ov_logits", "successor_scores"]

EFFECTIVE = ("mlp0", "mlp0_only", "embed")
_F32 = jnp.float32


def _check_ids(ids, vocab: int, name: str) -> jax.Array:
    a = np.asarray(ids)
    if a.ndim != 1 or a.size < 2 or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D list of at least 2 int token ids in order, got shape {a.shape} "
                         f"dtype {a.dtype}")
    if a.min() < 0 or a.max() >= vocab:
        raise ValueError(f"{name}: token ids must lie in [0, vocab_size={vocab}), got [{a.min()}, {a.max()}]")
    if len(set(a.tolist())) != a.size:
        raise ValueError(f"{name}: token ids must be distinct (one per ordinal item), got {a.tolist()}")
    return jnp.asarray(a, jnp.int32)


def effective_embeddings(params, cfg, tokens, *, effective: str = "mlp0") -> jax.Array:
    """Returns float32 [N, D]: the effective embedding of each token id in ``tokens`` [N] (see module doc).

    ``"mlp0"``: W_E[t] + MLP0(norm(W_E[t])) (layer 0 run on the single token with its attention output
    zeroed through the ``attn_out`` hook); ``"mlp0_only"``: MLP0(norm(W_E[t])); ``"embed"``: W_E[t].
    """
    if effective not in EFFECTIVE:
        raise ValueError(f"effective must be one of {EFFECTIVE}, got {effective!r}")
    tokens = jnp.asarray(tokens, jnp.int32).reshape(-1)
    x0 = params["embed"][tokens].astype(cfg.dtype)[:, None]  # [N, 1, D]: each token alone (no position embedding)
    if effective == "embed":
        return x0[:, 0].astype(_F32)
    e, _, _ = blocks(params, cfg, x0, jnp.zeros((tokens.shape[0], 1), jnp.int32), start=0, end=1,
                     hooks={"layer.0.attn_out": lambda a, _l: jnp.zeros_like(a)})
    e, x0 = e[:, 0].astype(_F32), x0[:, 0].astype(_F32)
    return e - x0 if effective == "mlp0_only" else e


def _ov_weights(p, cfg):
    """Returns (W_V [D, KV, hd], b_V [KV, hd] | None, W_O [H, hd, D]) of one layer (fused q/k/v unfused)."""
    if "wqkv" in p:
        wv = p["wqkv"][:, cfg.n_heads + cfg.kv_heads:]
    else:
        wv = p["wv"]
    return wv, (p["bv"] if cfg.qkv_bias else None), p["wo"]


def head_ov_logits(params, cfg, tokens, targets=None, *, effective: str = "mlp0") -> jax.Array:
    """Returns float32 [L, H, N, M]: W_U[:, targets] . W_OV^h . norm_l(e_t) for every head and token.

    ``tokens`` [N] are read through their effective embeddings; ``targets`` [M] (default ``tokens``)
    are the output tokens whose logits are returned. The layer's attention norm is applied to e_t
    (what head h reads), then W_V (+ b_V) and W_O of head h; the head's output is passed through the
    final norm without its bias before the unembedding (see module doc).
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    targets = tokens if targets is None else jnp.asarray(targets, jnp.int32)
    e = effective_embeddings(params, cfg, tokens, effective=effective)
    head, layout = head_matrix(params, cfg)
    u = (head[targets].T if layout == "vd" else head[:, targets]).astype(_F32)  # [D, M]
    G = cfg.n_heads // cfg.kv_heads
    fn = params["final_norm"]
    fnp = {"scale": fn["scale"]} if cfg.norm == "rms" else {"scale": fn["scale"], "bias": jnp.zeros_like(fn["bias"])}
    out = []
    for i in range(cfg.n_layers):
        p = layer_weights(params, i)
        x = norm(e, p["attn_norm"], cfg)  # [N, D] float32 (norm keeps its input's dtype)
        wv, bv, wo = _ov_weights(p, cfg)
        v = jnp.einsum("nd,dkh->nkh", x, wv.astype(_F32))
        if bv is not None:
            v = v + bv.astype(_F32)
        v = jnp.repeat(v, G, axis=1)  # [N, H, hd]: query head h reads kv head h // G
        o = jnp.einsum("nHh,Hhd->Hnd", v, wo.astype(_F32))  # [H, N, D]
        o = norm(o, fnp, cfg)
        out.append(jnp.einsum("Hnd,dm->Hnm", o, u))
    return jnp.stack(out)


def successor_scores(params, cfg, sets: Mapping[str, Sequence[int]] | Sequence[Sequence[int]], *,
                     effective: str = "mlp0", cyclic: bool = False) -> dict:
    """Returns {"scores": {name: float32 [L, H]}, "mean": [L, H], "chance": {name: 1/|set|}} (P54).

    ``sets``: ordinal tasks, each a list of distinct token ids in order (``{"days": [id_Mon, id_Tue, ...]}``
    or a list of lists, named "0", "1", ...). score_h(set) = mean over t in set[:-1] (all of set with
    ``cyclic``, the last wrapping to the first) of [argmax_{s in set} M_h[t, s] == succ(t)], where
    M_h = :func:`head_ov_logits`. ``mean`` averages the scores over the sets (the paper's per-head
    aggregate over tasks).
    """
    model_params, cfg = params, cfg
    if isinstance(sets, Mapping):
        named = dict(sets)
    elif isinstance(sets, (list, tuple)):
        named = {str(i): s for i, s in enumerate(sets)}
    else:
        raise ValueError(f"sets must be a dict {{name: [token ids]}} or a list of lists, got {type(sets).__name__}")
    if not named:
        raise ValueError("sets must hold at least one ordinal task of >= 2 tokens")
    vocab = cfg.vocab_size
    scores, chance = {}, {}
    for name, ids in named.items():
        ids = _check_ids(ids, vocab, f"sets[{name!r}]")
        n = ids.shape[0]
        logits = head_ov_logits(model_params, cfg, ids, effective=effective)  # [L, H, n, n]
        top = jnp.argmax(logits, axis=-1)  # [L, H, n]
        succ = (jnp.arange(n) + 1) % n
        hit = (top == succ).astype(_F32)
        scores[name] = hit.mean(-1) if cyclic else hit[..., : n - 1].mean(-1)
        chance[name] = 1.0 / n
    mean = jnp.mean(jnp.stack(list(scores.values())), axis=0)
    return {"scores": scores, "mean": mean, "chance": chance}


def ablated_accuracy(model, prompts, targets, heads: Sequence[tuple[int, int]] = (), *,
                     means: jax.Array | None = None) -> dict:
    """Returns {"accuracy", "logp"}: next-item accuracy (argmax == target) and mean log p(target) at each
    prompt's last position, with ``heads`` [(layer, head), ...] zero- (or ``means``-) ablated through the
    ``attn_heads`` hook. ``prompts`` int [B, T] (left-padded to one length by the caller), ``targets`` int [B].
    """
    params, cfg = _unpack(model)
    prompts = jnp.asarray(prompts)
    targets = jnp.asarray(targets)
    if prompts.ndim != 2 or targets.shape != (prompts.shape[0],):
        raise ValueError(f"prompts must be [B, T] and targets [B]; got {prompts.shape} and {targets.shape}")
    hooks = head_ablation_hooks(cfg, heads, means=means) if len(heads) else None
    logits = forward(params, cfg, Inputs(tokens=prompts), hooks=hooks).logits[:, -1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return {"accuracy": jnp.mean((jnp.argmax(logits, -1) == targets).astype(_F32)),
            "logp": jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=-1))}
