"""THE shared forward function of tokjax, built from public pure stages.

    out = forward(params, cfg, inputs, *, cache=None, layers=None, taps=None, hooks=None,
                  mask=Causal(), compute_logits=True, embedding=None, head=None, logit_bias=None)

Stages a method may call directly: :func:`embed` (token ids -> vectors), :func:`blocks`
(a range of transformer layers, with cache, taps and hooks), :func:`final_norm`,
:func:`lm_head` (the [D, V] output matrix, so a loss can avoid materialising logits) and
:func:`unembed` (normed hidden -> logits).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.model.activation import swiglu
from tokjax.model import attention as attn_lib
from tokjax.model.cache import KVCache, write_tokens
from tokjax.model.config import ModelConfig
from tokjax.model.mamba import MambaState, mamba_mixer
from tokjax.model.ops import check_int_values
from tokjax.model.params import Params, init_params, param_axes
from tokjax.model.quant import Int8Weight, int8_embed, int8_matmul
from tokjax.model.row_weights import RowWeight, row_matmul

# Hook (and tap) sites, in the order a layer computes them. ``attn_heads`` is the per-head attention
# output [B, T, H, hd] before the output projection W_O (so ``attn_out`` = sum_h attn_heads[..., h, :] W_O[h]
# (+ bias)); the others are [B, T, D].
HOOK_SITES = ("resid_pre", "attn_heads", "attn_out", "mlp_out", "resid_post")
# Tap-only sites: each layer's attention keys (after RoPE) and values [B, T, KV, hd], as a cache holds them,
# and the attention probabilities ``attn_probs`` [B, H, T, S] (float32; S = T without a cache, the cache
# capacity with one). attn_probs is computed only when tapped: an untapped forward runs the blocked /
# fused causal attention unchanged.
TAP_SITES = HOOK_SITES + ("keys", "values", "attn_probs")
# A mixer="mamba" layer (tokjax.model.mamba; a Mamba-1 block: norm -> mixer -> add, no MLP) has the sites
# resid_pre, attn_out (the mixer's output), mlp_out (zeros: there is no MLP; a hook there still adds its
# output to the stream) and resid_post; the attention-only sites below do not exist in it.
ATTENTION_ONLY_SITES = ("attn_heads", "keys", "values", "attn_probs")
_HOOK_RE = re.compile(r"^layer\.(\*|\d+)\.(" + "|".join(HOOK_SITES) + r")$")


@struct.dataclass
class Inputs:
    """What enters the forward function.

    Exactly one of ``tokens`` [B, T] int, ``embeds`` [B, T, D] (soft / mixed embeddings; learned
    position embeddings are still added) or ``hidden`` [B, T, D] (a residual stream entering at
    the first layer of ``layers``). ``positions`` [B, T] (or [T]) may be non-contiguous; default:
    the cache offset (0 without a cache) plus 0..T-1. Models with ``cfg.pos_dims`` > 1 take
    ``positions`` [B, T, pos_dims] (or [T, pos_dims]), one coordinate per axis, and have no default. ``segment_ids`` [B, T] keep packed
    documents from attending to each other (no-cache forwards).
    """

    tokens: jax.Array | None = None
    embeds: jax.Array | None = None
    hidden: jax.Array | None = None
    positions: jax.Array | None = None
    segment_ids: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Taps:
    """A static request for per-layer activations (nothing is kept by default).

    ``layers``: None (no taps), "all", or a tuple of absolute layer indices. ``sites``: any of
    :data:`TAP_SITES`. Output ``taps[site]`` is [n_layers_tapped, B, T, D] for resid_pre, attn_out,
    mlp_out, resid_post; ``attn_heads`` gives [n, B, T, n_heads, head_size] (per-head attention output
    before W_O); the tap-only sites ``keys`` and ``values`` give [n, B, T, kv_heads, head_size]
    (keys after RoPE, as the KV cache stores them) and ``attn_probs`` [n, B, n_heads, T, S] float32
    (S = T without a cache, the cache capacity with one; computed only when tapped, through the
    unblocked attention, so a tapped forward's values may differ from an untapped one's by float
    summation order).
    """

    layers: Any = None
    sites: tuple[str, ...] = ("resid_post",)

    def __post_init__(self):
        if isinstance(self.sites, str):
            raise ValueError(f"Taps.sites must be a tuple of site names, got the string {self.sites!r}; "
                             f"write sites=({self.sites!r},)")
        bad = [s for s in self.sites if s not in TAP_SITES]
        if bad:
            raise ValueError(f"unknown tap sites {bad}; expected any of {TAP_SITES}")
        if self.layers is not None and self.layers != "all":
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def active(self) -> bool:
        return self.layers is not None and (self.layers == "all" or len(self.layers) > 0)


@struct.dataclass
class Output:
    """The result of the forward function.

    ``logits`` [B, T, V] float32 or None; ``hidden`` [B, T, D]: the final-normed stream when the
    last layer ran, else the raw residual after the last layer run (feed it back as
    ``Inputs(hidden=...)`` to continue); ``taps`` {site: [n, B, T, D]}; ``cache`` the updated cache.
    """

    logits: jax.Array | None
    hidden: jax.Array
    taps: dict
    cache: KVCache | None


# --------------------------------------------------------------------------------- stages
def norm(x: jax.Array, p: Mapping[str, jax.Array], cfg: ModelConfig) -> jax.Array:
    """Returns x normalised by RMSNorm or LayerNorm (statistics in float32, result in x's dtype)."""
    xf = x.astype(jnp.float32)
    if cfg.norm == "rms":
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + cfg.norm_eps)
        y = y * p["scale"].astype(jnp.float32)
    else:
        mu = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mu), axis=-1, keepdims=True)
        y = (xf - mu) * jax.lax.rsqrt(var + cfg.norm_eps)
        y = y * p["scale"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return y.astype(x.dtype)


def embed(params: Params, cfg: ModelConfig, tokens: jax.Array, *, table: jax.Array | None = None) -> jax.Array:
    """Returns the token embeddings [B, T, D] (compute dtype) of ``tokens``; ``table`` overrides params['embed']."""
    table = params["embed"] if table is None else table
    if isinstance(table, Int8Weight):
        return int8_embed(table, tokens).astype(cfg.dtype)
    return jnp.take(embedding_matrix(table), tokens, axis=0).astype(cfg.dtype)


def embedding_matrix(table: Any) -> jax.Array:
    """The float embedding table [V, D] of a stored ``params['embed']`` (plain, int8 or row layout)."""
    if isinstance(table, Int8Weight):
        return table.dequantize().reshape(table.out_shape + table.in_shape)
    return table.rows if isinstance(table, RowWeight) else table


def position_embed(params: Params, cfg: ModelConfig, positions: jax.Array) -> jax.Array:
    """Returns learned position embeddings [B, T, D] (zeros for rope models); positions [B, T] or, for
    ``cfg.pos_dims`` > 1, [B, T, pos_dims] (the sum of one table per axis)."""
    if cfg.positions != "learned":
        return jnp.zeros(positions.shape[:2] + (cfg.d_model,), cfg.dtype)
    if positions.ndim == 3:
        return sum(jnp.take(params["pos_embed" if a == 0 else f"pos_embed_{a}"], positions[..., a], axis=0,
                            mode="clip").astype(cfg.dtype) for a in range(positions.shape[-1]))
    # mode="clip": a traced out-of-range position must not become a NaN embedding (concrete ones are rejected)
    return jnp.take(params["pos_embed"], positions, axis=0, mode="clip").astype(cfg.dtype)


def final_norm(params: Params, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Returns the final-normed hidden state."""
    return norm(x, params["final_norm"], cfg)


def lm_head(params: Params, cfg: ModelConfig) -> jax.Array:
    """Returns the output matrix [D, V] (the transposed embedding when tied)."""
    w, layout = head_matrix(params, cfg)
    return w.T if layout == "vd" else w


def head_matrix(params: Params, cfg: ModelConfig) -> tuple[jax.Array, str]:
    """Returns (the output matrix as stored, its layout): (embed [V, D], "vd") when tied, else
    (lm_head [D, V], "dv"). Streaming heads read the tied embedding in place, where ``lm_head``'s
    transpose would be a [D, V] copy (and a second gradient buffer) per training step."""
    if cfg.tied_embeddings:
        return embedding_matrix(params["embed"]), "vd"
    h = params["lm_head"]
    if isinstance(h, RowWeight):
        return h.rows, "vd"
    return (h.dequantize() if isinstance(h, Int8Weight) else h), "dv"


def unembed(
    params: Params, cfg: ModelConfig, hidden: jax.Array, *, head: jax.Array | None = None, bias: jax.Array | None = None
) -> jax.Array:
    """Returns float32 logits [B, T, V] = hidden @ head (+ bias); ``hidden`` must already be final-normed."""
    # A tied embedding is contracted as stored ([V, D]): ``embed.T`` made XLA write a transposed
    # [D, V] copy inside every decode step (113 MB per token on SmolLM2).
    if head is None:
        stored = params["embed"] if cfg.tied_embeddings else params["lm_head"]
        if isinstance(stored, Int8Weight):  # decode-time int8 head (tokjax.model.quant)
            logits = int8_matmul(hidden.astype(jnp.float32), stored)
            return logits if bias is None else logits + bias.astype(jnp.float32)
        if isinstance(stored, RowWeight):  # decode-time row layout (tokjax.model.row_weights)
            logits = row_matmul(hidden.astype(stored.dtype), stored).astype(jnp.float32)
            return logits if bias is None else logits + bias.astype(jnp.float32)
    head, layout = head_matrix(params, cfg) if head is None else (head, "dv")
    spec = "btd,vd->btv" if layout == "vd" else "btd,dv->btv"
    logits = jnp.einsum(spec, hidden, head.astype(cfg.dtype), preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    return logits


def _project(spec: str, x: jax.Array, w: Any, dt) -> jax.Array:
    """x times a projection weight: an einsum for float weights, the int8 path for :class:`Int8Weight`, the
    small-M path for :class:`RowWeight`."""
    if isinstance(w, Int8Weight):
        return int8_matmul(x, w).astype(dt)
    if isinstance(w, RowWeight):
        return row_matmul(x.astype(dt), w).astype(dt)
    return _flat_matmul(spec, x, w.astype(dt))


@functools.lru_cache(maxsize=None)
def _split_spec(spec: str) -> tuple[int, int] | None:
    """For an einsum ``lead+contracted, contracted+out -> lead+out`` (every projection's shape), returns
    (number of contracted axes, number of out axes); else None."""
    ins, out = spec.split("->")
    lhs, rhs = ins.split(",")
    n_c = len(set(lhs) & set(rhs))
    lead, con, outs = lhs[:len(lhs) - n_c], lhs[len(lhs) - n_c:], rhs[n_c:]
    return (n_c, len(outs)) if n_c and rhs[:n_c] == con and out == lead + outs else None


def _flat_matmul(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, x, w)`` as one 2-D product [rows, in] @ [in, out].

    Same values; the reason is the backward pass: differentiating the einsum over [B, T, ...] contracts the weight
    gradient over two axes, which XLA CPU lowers through a transposed copy of the [rows, F] activation gradient
    (fused with the elementwise work before it, reading with a stride of F). In the ``small`` preset's training
    step those copies took 10% of the step; over flattened rows the weight gradient is a plain [in, rows] @
    [rows, out] product with no copy (one SwiGLU MLP's forward + backward at 8 x 511 rows: 186 -> 165 ms)."""
    split = _split_spec(spec)
    if split is None:
        return jnp.einsum(spec, x, w)
    n_c, n_o = split
    lead, con, outs = x.shape[:x.ndim - n_c], w.shape[:n_c], w.shape[n_c:]
    rows = x.reshape(-1, math.prod(con)) @ w.reshape(math.prod(con), math.prod(outs))
    return rows.reshape(lead + outs)


# Above this many rows a fused gate/up product is split back into two: at 4096 tokens of the Llama-like
# shape the [rows, 2F] product and its split took 6.4 s of prefill against 5.0 s unfused (decode keeps one read).
_FUSED_MLP_MAX_ROWS = 64


def _halves(w: Any) -> tuple[Any, Any]:
    """The gate and up halves of a fused ``w_gate_up`` [D, 2F] (or its :class:`RowWeight` [2F, D])."""
    if isinstance(w, RowWeight):
        f = w.rows.shape[0] // 2
        return (RowWeight(w.rows[:f], w.in_shape, (f,)), RowWeight(w.rows[f:], w.in_shape, (f,)))
    f = w.shape[-1] // 2
    return w[..., :f], w[..., f:]


def _parse_hooks(hooks: Mapping[str, Callable] | None) -> dict[str, list[tuple[int | None, Callable]]]:
    out: dict[str, list] = {s: [] for s in HOOK_SITES}
    for name, fn in (hooks or {}).items():
        m = _HOOK_RE.match(name)
        tail = name.rsplit(".", 1)[-1] if isinstance(name, str) else None
        if not m and tail in TAP_SITES:
            raise ValueError(f"unknown hook site {name!r}: {tail!r} is a tap-only site (read it with Taps(sites=({tail!r},))); "
                             f"hook sites are 'layer.<i>.<site>' or 'layer.*.<site>' with site in {HOOK_SITES}")
        if not m:
            raise ValueError(
                f"unknown hook site {name!r}; expected 'layer.<i>.<site>' or 'layer.*.<site>' with site in {HOOK_SITES}"
            )
        if not callable(fn):
            raise ValueError(f"hook {name!r} must be a function (x, layer) -> x, got {type(fn).__name__}")
        layer = None if m.group(1) == "*" else int(m.group(1))
        out[m.group(2)].append((layer, fn))
    return out


def _apply_hooks(site_hooks, x, layer):
    static = isinstance(layer, int)  # Python loop over layers: decide which hooks apply at trace time
    for target, fn in site_hooks:
        if static:
            if target is None or target == layer:
                x = fn(x, jnp.int32(layer)).astype(x.dtype)
        elif target is None:
            x = fn(x, layer)
        else:
            x = jnp.where(layer == target, fn(x, layer).astype(x.dtype), x)
    return x


def _mamba_layer(p, cfg, x, segment_ids, layer, kv, hooks):
    """Returns (x, kv, site activations) for one Mamba-1 block; kv = (MambaState, stop [B] | None) or None
    (then the returned kv is the new MambaState, or None)."""
    sites = {}
    x = _apply_hooks(hooks["resid_pre"], x, layer)
    sites["resid_pre"] = x
    h = norm(x, p["norm"], cfg)
    state, stop = (None, None) if kv is None else kv
    a, kv = mamba_mixer(p, cfg, h, state=state, stop=stop, segment_ids=segment_ids)
    a = _apply_hooks(hooks["attn_out"], a, layer)
    sites["attn_out"] = a
    x = x + a
    m = jnp.zeros_like(x)  # no MLP in a Mamba-1 block
    if hooks["mlp_out"]:
        m = _apply_hooks(hooks["mlp_out"], m, layer)
        x = x + m
    sites["mlp_out"] = m
    x = _apply_hooks(hooks["resid_post"], x, layer)
    sites["resid_post"] = x
    return x, kv, sites


def _lora_add(y, x, lora, name):
    """Returns y + gate * (x @ A) @ B for the LoRA pair ``lora[0][name]`` (y unchanged where the gate is 0, or when
    there is no such pair); ``lora`` = (this layer's {name: {"a", "b"}}, gate [B, T] bool) or None."""
    if lora is None or name not in lora[0]:
        return y
    ab, gate = lora[0][name], lora[1]
    a, b = ab["a"].astype(y.dtype), ab["b"].astype(y.dtype)
    d = jnp.tensordot(jnp.tensordot(x.astype(y.dtype), a, axes=a.ndim - 1), b, axes=1)
    return jnp.where(gate.reshape(gate.shape + (1,) * (y.ndim - 2)), y + d, y)


def _layer(p, cfg, x, positions, mask_spec, segment_ids, layer, kv, hooks, want_probs=False, lora=None):
    """Returns (x, kv, site activations) for one transformer layer; kv = (k_all, v_all, offset) or None.

    ``lora``: None, or (this layer's LoRA pairs {"wq"|"wk"|"wv"|"wo"|"w_gate"|"w_up"|"w_down": {"a", "b"}}, gate
    [B, T] bool): each named projection's output gains (input @ a) @ b where the gate is True (tokjax.model.lora).

    ``want_probs`` (static): also return the attention probabilities (site ``attn_probs``), computed by
    the unblocked :func:`attend`; otherwise the attention path is the untapped one. A ``mixer="mamba"``
    config runs :func:`_mamba_layer` instead (kv = (MambaState, stop) there)."""
    if cfg.mixer == "mamba":
        return _mamba_layer(p, cfg, x, segment_ids, layer, kv, hooks)
    dt = cfg.dtype
    B, T, _ = x.shape
    sites = {}
    x = _apply_hooks(hooks["resid_pre"], x, layer)
    sites["resid_pre"] = x
    h = norm(x, p["attn_norm"], cfg)
    if "wqkv" in p:  # fused by unstack_layers(fuse=True): one matmul instead of three
        qkv = _project("btd,dhk->bthk", h, p["wqkv"], dt)
        H, KVh = cfg.n_heads, cfg.kv_heads
        q, k, v = qkv[:, :, :H], qkv[:, :, H:H + KVh], qkv[:, :, H + KVh:]
    else:
        q = _project("btd,dhk->bthk", h, p["wq"], dt)
        k = _project("btd,dhk->bthk", h, p["wk"], dt)
        v = _project("btd,dhk->bthk", h, p["wv"], dt)
    if lora is not None:
        q, k, v = _lora_add(q, h, lora, "wq"), _lora_add(k, h, lora, "wk"), _lora_add(v, h, lora, "wv")
    if cfg.qkv_bias:
        q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
    if cfg.positions == "rope":
        q = attn_lib.rope(q, positions, cfg.rope_theta)
        k = attn_lib.rope(k, positions, cfg.rope_theta)
    sites["keys"], sites["values"] = k, v
    if kv is None and isinstance(mask_spec, attn_lib.Causal) and not want_probs:
        a = attn_lib.causal_attend(q, k, v, segment_ids=segment_ids)
    elif kv is None:
        visible = attn_lib.build_mask(mask_spec, B, T, segment_ids=segment_ids)
        a = attn_lib.attend(q, k, v, visible, return_probs=want_probs)
    else:  # this layer's head-major cache buffers [B, KV, S, hd] and per-row write offsets
        k_buf, v_buf, offset = kv
        k_buf, v_buf = write_tokens(k_buf, v_buf, k, v, offset)
        visible = attn_lib.build_mask(mask_spec, B, T, offset=offset, capacity=k_buf.shape[2])
        a = attn_lib.attend(q, k_buf.astype(dt), v_buf.astype(dt), visible, head_major=True, return_probs=want_probs)
        kv = (k_buf, v_buf)
    if want_probs:
        a, sites["attn_probs"] = a
    a = _apply_hooks(hooks["attn_heads"], a, layer)
    sites["attn_heads"] = a
    a = _lora_add(_project("bthk,hkd->btd", a, p["wo"], dt), a, lora, "wo")
    if cfg.bias:
        a = a + p["bo"].astype(dt)
    a = _apply_hooks(hooks["attn_out"], a, layer)
    sites["attn_out"] = a
    x = x + a
    h = norm(x, p["mlp_norm"], cfg)
    if "w_gate_up" in p and (B * T <= _FUSED_MLP_MAX_ROWS or isinstance(p["w_gate_up"], Int8Weight)):
        gu = _project("btd,df->btf", h, p["w_gate_up"], dt)
        gate, up = jnp.split(gu, 2, axis=-1)
    elif "w_gate_up" in p:  # many rows (prefill): two products, no [rows, 2F] intermediate to split
        w_gate, w_up = _halves(p["w_gate_up"])
        gate, up = _project("btd,df->btf", h, w_gate, dt), _project("btd,df->btf", h, w_up, dt)
    else:
        up = _project("btd,df->btf", h, p["w_up"], dt)
        gate = _project("btd,df->btf", h, p["w_gate"], dt) if cfg.activation == "swiglu" else None
    if lora is not None:
        up = _lora_add(up, h, lora, "w_up")
        gate = None if gate is None else _lora_add(gate, h, lora, "w_gate")
    if cfg.bias:
        up = up + p["b_up"].astype(dt)
    if cfg.activation == "swiglu":
        act = swiglu(gate, up)
    else:
        act = jax.nn.gelu(up, approximate=True)  # GPT-2's "gelu_new" (tanh approximation)
    m = _lora_add(_project("btf,fd->btd", act, p["w_down"], dt), act, lora, "w_down")
    if cfg.bias:
        m = m + p["b_down"].astype(dt)
    m = _apply_hooks(hooks["mlp_out"], m, layer)
    sites["mlp_out"] = m
    x = x + m
    x = _apply_hooks(hooks["resid_post"], x, layer)
    sites["resid_post"] = x
    return x, kv, sites


def blocks(
    params: Params,
    cfg: ModelConfig,
    x: jax.Array,
    positions: jax.Array,
    *,
    mask: attn_lib.MaskSpec | None = None,
    cache: KVCache | None = None,
    start: int = 0,
    end: int | None = None,
    taps: Taps | None = None,
    hooks: Mapping[str, Callable] | None = None,
    segment_ids: jax.Array | None = None,
    lora: tuple | None = None,
    scan_unroll: int | bool | None = None,
    remat: str | None = None,
) -> tuple[jax.Array, KVCache | None, dict]:
    """Returns (x, cache, taps) after running layers ``start .. end-1`` on the residual stream x [B, T, D].

    Without a cache, stacked layer weights run under ``lax.scan`` (one compiled layer, the
    training path). With a cache, or with weights unstacked by :func:`unstack_layers`, layers
    run as a Python loop so each layer's cache buffers and weights are read and updated in
    place (the decode path). Both compute the same values.
    Hooks are functions ``fn(x, layer) -> x`` at sites ``layer.{i}.{site}`` (``*`` for every layer),
    site in :data:`HOOK_SITES` (``attn_heads`` hooks see and return [B, T, H, hd]).
    ``cfg.mixer == "mamba"``: Mamba-1 blocks (causal by construction: only the Causal mask; the cache carries
    each layer's recurrent state; sites as :data:`ATTENTION_ONLY_SITES` says).
    ``lora``: None, or (per-layer LoRA pairs laid out as ``params["layers"]`` is -- stacked [L, ...] leaves or a
    tuple of per-layer dicts --, gate [B, T] bool); see :mod:`tokjax.model.lora`, whose ``lora_forward`` builds it.
    ``scan_unroll`` / ``remat`` (static; the scan path only, i.e. stacked weights without a cache; None = the
    :func:`layer_loop` default, which is 1 / "none"): how many layers one scan iteration runs (``True`` = all,
    a straight-line program; ``"auto"``, the train step's default = all when the scan covers at most
    :data:`AUTO_UNROLL_MAX_LAYERS` layers, else 1), and the ``jax.checkpoint`` policy of a layer (:data:`REMAT_POLICIES`). Neither
    changes the values computed, only what the backward pass stores or recomputes. A :func:`layer_loop`
    ``frozen_prefix`` k splits the scan at layer k (the weights of [0, k) under ``stop_gradient``).
    """
    end = cfg.n_layers if end is None else end
    scan_unroll, remat_policy = _layer_loop_options(scan_unroll, remat)
    if lora is not None and cfg.mixer == "mamba":
        raise ValueError("LoRA adapters (lora=) apply to attention/MLP projections; mixer='mamba' layers have none")
    mask = attn_lib.Causal() if mask is None else mask
    taps = Taps() if taps is None else taps
    parsed_hooks = _parse_hooks(hooks)
    want = taps.sites if taps.active else ()
    if cfg.mixer == "mamba":
        _check_mamba_call(mask, want, parsed_hooks, cache)
    elif cache is not None and cache.recurrent:
        raise ValueError("this cache holds a Mamba recurrent state but the model has mixer='attention'; "
                         "build it with KVCache.init(cfg, ...) of this model")
    want_probs = "attn_probs" in want
    layers = params["layers"]

    if cache is None and not isinstance(layers, (tuple, list)):
        def body(h, xs):
            p, i, lp = xs
            lo = None if lp is None else (lp, lora[1])
            h, _, sites = _layer(p, cfg, h, positions, mask, segment_ids, i, None, parsed_hooks, want_probs, lo)
            return h, {s: sites[s] for s in want}

        if remat_policy is not None:
            body = jax.checkpoint(body, policy=remat_policy)
        # A frozen prefix (layer_loop(frozen_prefix=k)) runs as its own scan over stop_gradient weights, so the
        # backward never differentiates w.r.t. them; k = 0 (the default) keeps the one scan of [start, end).
        cut = min(max(_frozen_prefix(layers), start), end)
        segments = [(a, b, a < cut) for a, b in ((start, cut), (cut, end)) if b > a] or [(start, end, False)]
        parts = []
        for a, b, frozen in segments:
            seg_params = jax.tree.map(lambda w: w[a:b], layers)
            if frozen:
                seg_params = jax.lax.stop_gradient(seg_params)
            lora_layers = None if lora is None else _lora_layers(lora[0], a, b)
            unroll = (b - a <= AUTO_UNROLL_MAX_LAYERS) if scan_unroll == "auto" else scan_unroll
            x, ys = jax.lax.scan(body, x, (seg_params, jnp.arange(a, b, dtype=jnp.int32), lora_layers),
                                 unroll=unroll or 1)
            parts.append(ys)
        if len(parts) > 1:
            ys = {s: jnp.concatenate([p[s] for p in parts]) for s in want}
        new_cache = None
    else:
        # A Python loop over layers: with a cache, each layer's buffers are updated in place
        # (see KVCache); with unstacked weights, each layer's weights are read in place.
        per_site = {s: [] for s in want}
        k_bufs = None if cache is None else list(cache.k)
        v_bufs = None if cache is None else list(cache.v)
        mamba = cfg.mixer == "mamba"
        if mamba and cache is not None:
            conv_bufs, ssm_bufs = list(cache.conv), list(cache.ssm)
        for i in range(start, end):
            p = layer_weights(params, i)
            if cache is None:
                kv = None
            elif mamba:
                kv = (MambaState(conv_bufs[i], ssm_bufs[i]), None)
            else:
                kv = (k_bufs[i], v_bufs[i], cache.lengths[i])
            lo = None if lora is None else (layer_weights({"layers": lora[0]}, i), lora[1])
            x, kv, sites = _layer(p, cfg, x, positions, mask, segment_ids, i, kv, parsed_hooks, want_probs, lo)
            if cache is not None and mamba:
                conv_bufs[i], ssm_bufs[i] = kv
            elif cache is not None:
                k_bufs[i], v_bufs[i] = kv
            for s in want:
                per_site[s].append(sites[s])
        ys = {s: jnp.stack(v) for s, v in per_site.items()}
        new_cache = None if cache is None else cache.replace(
            k=tuple(k_bufs), v=tuple(v_bufs), lengths=cache.lengths.at[start:end].add(x.shape[1])
        )
        if mamba and cache is not None:
            new_cache = new_cache.replace(conv=tuple(conv_bufs), ssm=tuple(ssm_bufs))

    tapped = {}
    if want:
        rel = list(range(end - start)) if taps.layers == "all" else [i - start for i in taps.layers if start <= i < end]
        for s in want:
            tapped[s] = ys[s][jnp.asarray(rel, jnp.int32)] if rel else ys[s][:0]
    return x, new_cache, tapped


# ``remat`` names -> jax.checkpoint policies for one layer of the scan (None: no checkpoint, the backward keeps
# every residual of the forward; "full": keep nothing but the layer's input and recompute the layer).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_LAYER_LOOP = contextvars.ContextVar("tokjax_layer_loop", default=(1, "none"))
# (k, the stacked layer leaves it applies to) of layer_loop(frozen_prefix=k, frozen_layers=...), or None
_FROZEN_PREFIX = contextvars.ContextVar("tokjax_frozen_prefix", default=None)


# scan_unroll="auto": a scan over at most this many layers is unrolled into a straight-line program. On 2 CPU cores
# the unrolled train step was 1.22x / 1.13x / 1.06x faster at 4 / 6 / 12 layers (the scan's stacked residual
# buffers are zero-filled every step) and compiled no slower; deeper stacks keep one compiled layer.
AUTO_UNROLL_MAX_LAYERS = 12


def _check_layer_loop(scan_unroll, remat) -> None:
    if scan_unroll is not None and scan_unroll != "auto" and not (
            isinstance(scan_unroll, bool) or (isinstance(scan_unroll, (int, np.integer)) and scan_unroll >= 1)):
        raise ValueError(f"scan_unroll must be an int >= 1 (layers per scan iteration), True (all) or 'auto' "
                         f"(all when at most {AUTO_UNROLL_MAX_LAYERS} layers), got {scan_unroll!r}")
    if scan_unroll is False:
        raise ValueError("scan_unroll=False is not a choice: use 1 (one layer per scan iteration)")
    if remat is not None and remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {list(REMAT_POLICIES)}, got {remat!r}")


def _layer_loop_options(scan_unroll, remat):
    """Returns (scan unroll, jax.checkpoint policy or None) of a blocks() call, defaults from :func:`layer_loop`."""
    _check_layer_loop(scan_unroll, remat)
    d_unroll, d_remat = _LAYER_LOOP.get()
    scan_unroll = d_unroll if scan_unroll is None else scan_unroll
    remat = d_remat if remat is None else remat
    return (scan_unroll if scan_unroll in (True, "auto") else int(scan_unroll)), REMAT_POLICIES[remat]


def _frozen_prefix(layers) -> int:
    """Returns the frozen prefix k that :func:`layer_loop` set for these stacked layer weights (0: none)."""
    spec = _FROZEN_PREFIX.get()
    if spec is None:
        return 0
    k, only = spec
    if only is not None:
        leaves = jax.tree.leaves(layers)
        if len(leaves) != len(only) or any(a is not b for a, b in zip(leaves, only)):
            return 0  # another model's (or transformed) weights: not the ones declared frozen
    return k


@contextlib.contextmanager
def layer_loop(*, scan_unroll: int | bool | None = None, remat: str | None = None,
               frozen_prefix: int | None = None, frozen_layers=None):
    """Sets, while tracing inside the ``with`` block, the defaults of :func:`blocks`'s ``scan_unroll`` and
    ``remat`` (None keeps the enclosing default; the outermost default is 1 / "none").

    ``frozen_prefix`` = k (None keeps the enclosing value; 0 = none): the weights of stacked layers [0, k) take
    no gradient. The scan path of :func:`blocks` then runs those layers as a scan of their own over
    ``stop_gradient`` weights and the rest as a second scan, so a backward pass computes no weight gradients
    there and, when the residual entering layer 0 carries no gradient either (frozen embeddings), never enters
    the prefix at all. Forward values and taps are the same (up to XLA compiling the gradient-free prefix
    with another rounding: ~1 ulp at some shapes), every layer still runs its hooks and a hook's own gradient
    still flows. ``frozen_layers``: the stacked ``params["layers"]`` pytree it applies to -- only a
    blocks call whose layer leaves are these very arrays (``is``) is split, so another model traced in the
    block (a teacher, a draft, weights the loss rebuilt) keeps its gradients; None applies it to every call.
    The train step sets both from its trainable set (``tokjax.train.make_train_step``).

    The train step (``tokjax.train.make_train_step``) traces its loss under this, so a loss that calls
    ``forward`` needs no new argument. It acts at trace time: a function jitted outside the block and only
    called inside keeps the options of its first trace (the values are the same either way).
    """
    _check_layer_loop(scan_unroll, remat)
    if frozen_prefix is not None and not (isinstance(frozen_prefix, (int, np.integer))
                                          and not isinstance(frozen_prefix, bool) and frozen_prefix >= 0):
        raise ValueError(f"frozen_prefix must be an int >= 0 (leading stacked layers without gradient), "
                         f"got {frozen_prefix!r}")
    if frozen_layers is not None and frozen_prefix is None:
        raise ValueError("frozen_layers names the weights a frozen_prefix applies to: pass frozen_prefix too")
    d_unroll, d_remat = _LAYER_LOOP.get()
    token = _LAYER_LOOP.set((d_unroll if scan_unroll is None else scan_unroll, d_remat if remat is None else remat))
    f_token = None
    if frozen_prefix is not None:
        only = None if frozen_layers is None else tuple(jax.tree.leaves(frozen_layers))
        f_token = _FROZEN_PREFIX.set((int(frozen_prefix), only) if frozen_prefix else None)
    try:
        yield
    finally:
        if f_token is not None:
            _FROZEN_PREFIX.reset(f_token)
        _LAYER_LOOP.reset(token)


def _lora_layers(layers, start, end):
    """Returns LoRA layer pairs [start:end] stacked on a leading axis (from stacked leaves or a per-layer tuple)."""
    if isinstance(layers, (tuple, list)):
        return jax.tree.map(lambda *a: jnp.stack(a), *layers[start:end])
    return jax.tree.map(lambda a: a[start:end], layers)


def _check_mamba_call(mask, want, parsed_hooks, cache) -> None:
    """Raises ValueError for what a mixer="mamba" forward cannot do (non-causal masks, attention-only sites,
    a cache without recurrent state)."""
    if not isinstance(mask, attn_lib.Causal):
        raise ValueError(f"mixer='mamba' layers are causal by construction: mask must be Causal() (or None), got "
                         f"{type(mask).__name__}")
    bad = [s for s in want if s in ATTENTION_ONLY_SITES]
    if bad:
        raise ValueError(f"tap sites {bad} do not exist in mixer='mamba' layers (no attention); mamba layers have "
                         f"{tuple(s for s in HOOK_SITES if s not in ATTENTION_ONLY_SITES)}")
    if parsed_hooks["attn_heads"]:
        raise ValueError("hook site 'attn_heads' does not exist in mixer='mamba' layers (no attention heads); hook "
                         "'attn_out' (the mixer's output) instead")
    if cache is not None and not cache.recurrent:
        raise ValueError("a mixer='mamba' model needs a cache with recurrent state: build it with "
                         "KVCache.init(cfg, batch, capacity) of this model (or tokjax.model.prefill)")


def layer_weights(params: Params, i: int) -> Params:
    """Returns layer i's weights (a dict of arrays) from stacked or unstacked ``params``."""
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        return layers[i]
    return jax.tree.map(lambda a: a[i], layers)


def unstack_layers(params: Params, *, fuse: bool = False) -> Params:
    """Returns params with ``layers`` as a tuple of per-layer dicts (separate buffers) instead of stacked arrays.

    forward/blocks accept either form and compute the same values. The unstacked form is for
    memory-bound decoding: each layer's weights are read in place, whereas slicing stacked
    weights inside a jitted step copies them on CPU. Unstack once, outside the jitted step
    (``generate`` does), and pass the result as a jit argument.

    ``fuse``: also concatenate each layer's q/k/v projections into one ``wqkv`` [D, H+2KV, hd]
    and SwiGLU's gate/up into one ``w_gate_up`` [D, 2F], so a decode step runs one matmul
    where it ran three (two): fewer, larger weight reads (measured ~10% faster batch-1 decoding
    on CPU). The fused dicts are a decode-time layout: forward reads them, but sharding rules,
    checkpoints and ``save_hf`` expect the unfused names.
    """
    layers = params["layers"]
    if isinstance(layers, (tuple, list)):
        return {**params, "layers": tuple(_fuse_layer(p) for p in layers)} if fuse else params
    n = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": _unstack_jit(layers, n, fuse)}


def _fuse_layer(p: Params) -> Params:
    p = dict(p)
    if "wq" in p:
        p["wqkv"] = jnp.concatenate([p.pop("wq"), p.pop("wk"), p.pop("wv")], axis=-2)
    if "w_gate" in p:
        p["w_gate_up"] = jnp.concatenate([p.pop("w_gate"), p.pop("w_up")], axis=-1)
    return p


def stack_layers(params: Params) -> Params:
    """Returns params with ``layers`` stacked on a leading axis (the inverse of :func:`unstack_layers`)."""
    layers = params["layers"]
    if not isinstance(layers, (tuple, list)):
        return params
    return {**params, "layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unstack_jit(layers, n, fuse):
    out = tuple(jax.tree.map(lambda a: a[i], layers) for i in range(n))
    return tuple(_fuse_layer(p) for p in out) if fuse else out


# ------------------------------------------------------------------------------- forward
def _is_concrete(x) -> bool:
    return x is not None and not isinstance(x, jax.core.Tracer)


def _validate(cfg, inputs, cache, start, end, T, vocab_size=None):
    provided = [n for n in ("tokens", "embeds", "hidden") if getattr(inputs, n) is not None]
    if len(provided) != 1:
        raise ValueError(f"Inputs needs exactly one of tokens, embeds, hidden; got {provided or 'none'}")
    if not (0 <= start < end <= cfg.n_layers):
        raise ValueError(f"layers must satisfy 0 <= start < end <= n_layers={cfg.n_layers}, got ({start}, {end})")
    if inputs.tokens is not None:
        tok = inputs.tokens
        if tok.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tok.shape}")
        if not jnp.issubdtype(tok.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers, got dtype {tok.dtype}")
        check_int_values(tok, "token ids", 0, cfg.vocab_size if vocab_size is None else vocab_size)
    for name in ("embeds", "hidden"):
        arr = getattr(inputs, name)
        if arr is not None and (arr.ndim != 3 or arr.shape[-1] != cfg.d_model):
            raise ValueError(f"{name} must be [batch, seq, d_model={cfg.d_model}], got shape {arr.shape}")
    if cache is not None:
        if cache.num_layers != cfg.n_layers:
            raise ValueError(f"cache has {cache.num_layers} layers, model has {cfg.n_layers}")
        if _is_concrete(cache.lengths):
            need = int(np.asarray(cache.lengths)[start:end].max()) + T
            if need > cache.capacity:
                raise ValueError(
                    f"cache capacity {cache.capacity} is too small: writing {T} tokens needs {need} slots"
                )
    if inputs.positions is not None:
        want = f"[batch, seq, pos_dims={cfg.pos_dims}] (or [seq, pos_dims])" if cfg.pos_dims > 1 else "[batch, seq] (or [seq])"
        nd = jnp.ndim(inputs.positions)
        ok = (nd in (2, 3) and jnp.shape(inputs.positions)[-1] == cfg.pos_dims) if cfg.pos_dims > 1 else nd in (1, 2)
        if not ok:
            raise ValueError(f"positions must be {want}, got shape {tuple(jnp.shape(inputs.positions))}")
    elif cfg.pos_dims > 1:
        raise ValueError(f"a model with pos_dims={cfg.pos_dims} needs Inputs.positions [batch, seq, {cfg.pos_dims}] "
                         "(one coordinate per axis for every token); there is no default")
    if inputs.positions is not None and _is_concrete(inputs.positions) and jnp.size(inputs.positions):
        pos = np.asarray(inputs.positions)
        pmax, pmin = int(pos.max()), int(pos.min())
        if pmin < 0 or (cfg.positions == "learned" and pmax >= cfg.max_len):
            raise ValueError(f"positions must lie in [0, max_len={cfg.max_len}), got [{pmin}, {pmax}]")


def forward(
    params: Params,
    cfg: ModelConfig,
    inputs: Inputs | jax.Array,
    *,
    cache: KVCache | None = None,
    layers: tuple[int, int] | None = None,
    taps: Taps | None = None,
    hooks: Mapping[str, Callable] | None = None,
    mask: attn_lib.MaskSpec | None = None,
    compute_logits: bool = True,
    embedding: jax.Array | None = None,
    head: jax.Array | None = None,
    logit_bias: jax.Array | None = None,
    lora: tuple | None = None,
    scan_unroll: int | bool | None = None,
    remat: str | None = None,
) -> Output:
    """Returns the model's Output (logits, hidden, taps, cache) for ``inputs``.

    ``inputs`` may be an Inputs or a bare [B, T] token array. ``layers=(start, end)`` runs a
    layer range (early exit, drafts, verification from layer k). ``mask`` is a spec from
    :mod:`tokjax.model.attention` (default Causal). ``embedding`` [V', D], ``head`` [D, V'] and
    ``logit_bias`` [V'] override the vocabulary tables for this call (tokenizer transfer).
    With ``compute_logits`` and a partial layer range, logits are the early-exit logits
    through the final norm and the shared head. ``lora`` = (per-layer LoRA pairs, gate [B, T] bool): low-rank
    deltas on the projections where the gate is True, the base model bit for bit where it is False (build it with
    :func:`tokjax.model.lora.lora_forward`). ``scan_unroll`` / ``remat``: the training layer loop's options
    (see :func:`blocks`; same values, different backward cost).
    """
    if not isinstance(inputs, Inputs):
        inputs = Inputs(tokens=jnp.asarray(inputs))
    start, end = (0, cfg.n_layers) if layers is None else (int(layers[0]), int(layers[1]))
    x_in = inputs.tokens if inputs.tokens is not None else (inputs.embeds if inputs.embeds is not None else inputs.hidden)
    if x_in is None:
        raise ValueError("Inputs needs exactly one of tokens, embeds, hidden; got none")
    if inputs.tokens is not None and inputs.tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {inputs.tokens.shape}")
    B, T = x_in.shape[:2]
    _validate(cfg, inputs, cache, start, end, T, None if embedding is None else embedding.shape[0])

    if inputs.positions is not None:
        shape = (B, T) if cfg.pos_dims == 1 else (B, T, cfg.pos_dims)
        positions = jnp.broadcast_to(jnp.asarray(inputs.positions, jnp.int32), shape)
    else:
        base = cache.lengths[start] if cache is not None else jnp.zeros((B,), jnp.int32)
        positions = base[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]

    if inputs.hidden is not None:
        x = inputs.hidden.astype(cfg.dtype)
    else:
        x = embed(params, cfg, inputs.tokens, table=embedding) if inputs.tokens is not None else inputs.embeds.astype(cfg.dtype)
        x = x + position_embed(params, cfg, positions)

    x, cache, tapped = blocks(
        params, cfg, x, positions, mask=mask, cache=cache, start=start, end=end,
        taps=taps, hooks=hooks, segment_ids=inputs.segment_ids, lora=lora, scan_unroll=scan_unroll, remat=remat,
    )
    normed = final_norm(params, cfg, x)
    logits = unembed(params, cfg, normed, head=head, bias=logit_bias) if compute_logits else None
    hidden = normed if end == cfg.n_layers else x
    return Output(logits=logits, hidden=hidden, taps=tapped, cache=cache)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity"))
def prefill(params: Params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, capacity: int) -> KVCache:
    """Returns a KVCache of ``capacity`` slots holding ``tokens`` [B, P] (right-padded; row b has ``lengths[b]``).

    The decode convention (``tokjax.decoding``): the cache holds the first ``lengths[b] - 1``
    tokens of each row and the last one is pending (the next step feeds it), so the cache
    lengths are set to ``lengths - 1``. Padding past a row's length is written but never read.
    The one prefill of every decoder and draft model (``KVCache.fork`` copies it for k chains).
    A ``mixer="mamba"`` model's cache holds each layer's recurrent state after the first ``lengths[b] - 1``
    tokens of row b (its padding is run but not absorbed).
    """
    B, T = tokens.shape
    if T > capacity:
        raise ValueError(f"cache capacity {capacity} is too small: writing {T} tokens needs {T} slots")
    if cfg.mixer == "mamba":
        return _mamba_prefill(params, cfg, tokens, lengths, capacity)
    # An empty cache needs no reads: the cache-free forward (block attention over T keys, not the
    # capacity's S slots, and no per-row scatter) with each layer's keys and values tapped, laid into
    # fresh buffers. Same values as forward(..., cache=KVCache.init(...)); ~1.6x faster on CPU.
    out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False,
                  taps=Taps(layers="all", sites=("keys", "values")))
    empty = KVCache.init(cfg, B, capacity)

    def lay(new, buf):  # [B, T, KV, hd] -> head-major [B, KV, S, hd]
        return jax.lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), (0, 0, 0, 0))

    cache = empty.replace(k=tuple(lay(out.taps["keys"][i], b) for i, b in enumerate(empty.k)),
                          v=tuple(lay(out.taps["values"][i], b) for i, b in enumerate(empty.v)))
    return cache.set_lengths(lengths - 1)


def _mamba_prefill(params: Params, cfg: ModelConfig, tokens: jax.Array, lengths: jax.Array, capacity: int) -> KVCache:
    """Returns the prefilled cache of a mixer="mamba" model: each layer's recurrent state after the first
    ``lengths[b] - 1`` tokens of row b (the right padding and the pending token are run but not absorbed)."""
    B, T = tokens.shape
    cache = KVCache.init(cfg, B, capacity)
    stop = jnp.asarray(lengths, jnp.int32) - 1
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x = embed(params, cfg, tokens) + position_embed(params, cfg, positions)
    no_hooks = _parse_hooks(None)
    conv, ssm = [], []
    for i in range(cfg.n_layers):
        kv = (MambaState(cache.conv[i], cache.ssm[i]), stop)
        x, state, _ = _layer(layer_weights(params, i), cfg, x, positions, attn_lib.Causal(), None, i, kv, no_hooks)
        conv.append(state.conv)
        ssm.append(state.ssm)
    return cache.replace(conv=tuple(conv), ssm=tuple(ssm)).set_lengths(stop)


# ----------------------------------------------------------------------------------- Model
# Argument order, everywhere in tokjax: params, then cfg, then key (then the data), with any of them
# left out when a function does not take it: Model(params, cfg), Model.init(cfg, key),
# init_params(cfg, key), forward(params, cfg, inputs), prefill(params, cfg, tokens, ...).
_ORDER = "tokjax's argument order is params, then cfg, then key"


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and (jnp.issubdtype(x.dtype, jax.dtypes.prng_key) or x.shape == (2,))


@struct.dataclass
class Model:
    """A model's ``params`` (a pytree leaf) together with its static ``cfg``: ``Model(params, cfg)``.

    Build one with ``Model(params, cfg)`` or ``Model.init(cfg, key)`` (the order of every tokjax
    signature: params, then cfg, then key); calling it runs :func:`forward`. Swapped arguments
    raise ValueError rather than failing later inside a traced forward.
    """

    params: Params
    cfg: ModelConfig = struct.field(pytree_node=False)

    def __post_init__(self):
        # Runs on every construction, including jax's unflattening (cfg is static there, params may be
        # placeholders), so only the types that cannot be valid are rejected.
        if isinstance(self.params, ModelConfig):
            raise ValueError(f"Model(params, cfg) got a ModelConfig as params: the arguments are swapped ({_ORDER})")
        if not isinstance(self.cfg, ModelConfig):
            raise ValueError(f"Model(params, cfg) needs a ModelConfig as cfg, got {type(self.cfg).__name__} "
                             f"({_ORDER})")

    @classmethod
    def init(cls, cfg: ModelConfig, key: jax.Array) -> "Model":
        """Returns a freshly initialised model for ``cfg`` from the PRNG ``key`` (cfg first, then key)."""
        if not isinstance(cfg, ModelConfig):
            swapped = isinstance(key, ModelConfig) and _is_key(cfg)
            raise ValueError(f"Model.init(cfg, key) needs a ModelConfig first, got {type(cfg).__name__}"
                             + (": the arguments are swapped" if swapped else "") + f" ({_ORDER})")
        return cls(params=init_params(cfg, key), cfg=cfg)

    @property
    def axes(self):
        """Logical axis names of every parameter (same tree as params)."""
        return param_axes(self.cfg)

    def num_params(self) -> int:
        """Returns the total number of parameter entries."""
        return int(sum(x.size for x in jax.tree.leaves(self.params)))

    def __call__(self, inputs, **kw) -> Output:
        return forward(self.params, self.cfg, inputs, **kw)
