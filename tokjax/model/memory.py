"""Cross-attention through the shared forward: a KV cache filled with a fixed memory.

    cache = memory_cache(params, cfg, memory, positions, capacity)      # memory [B, S, D]
    out = forward(params, cfg, Inputs(embeds=queries, positions=qpos), cache=cache, mask=...)

A decoder stack attends to an encoder's output through the ordinary cache path, so every
method that takes a cache (layer ranges, taps, hooks, ``generate`` strategies, ``KVCache.fork``)
works on it unchanged. Used by MLM-U (P8: an encoder over the visible tokens, a decoder of
position-only queries whose layers cross-attend to the encoder's output) and future token
prediction (P66: a small decoder reading an m-slot pseudo-sequence).

What the cache holds. Layer l's slots 0..S-1 hold the keys and values that layer l would compute
for ``memory`` if the memory were its residual-stream input:

    K_l = RoPE(norm_l(M_l) W_k^l + b_k^l, positions),   V_l = norm_l(M_l) W_v^l + b_v^l

with ``norm_l`` layer l's ``attn_norm`` and M_l = ``memory`` for every layer (memory [B, S, D]: one
memory read by all layers, as PAST's ``stack_enc_dec=True``) or ``memory[l]`` (memory
[L, B, S, D]: one per layer, as ``stack_enc_dec=False``). The projection is the layer's own (the
same code as :func:`tokjax.model.blocks`, fused layouts and q/k/v biases included), so a memory
equal to the residual stream a forward over a prefix would feed each layer reproduces that
forward exactly: ``memory_cache(params, cfg, taps["resid_pre"] of forward(prefix), ...)`` then a
forward over the continuation equals the forward over prefix + continuation.

Every layer's lengths are S, so queries written by the next forward occupy slots S..S+T-1 and
default to positions S.. . Mask specs then read as:

* ``Causal()``: every query sees the whole memory and the queries up to itself (the memory is the
  committed past of the cache);
* ``Explicit(bool [B, T, capacity])`` over cache slots: slot s < S is memory token s, slot S + j is
  query j; :func:`memory_mask` builds it from a memory visibility (MLM-U: each query sees only the
  visible memory tokens, with ``queries="none"`` as the official decoder or ``"self"``).

Learned-position models: ``positions`` are validated but do not enter K/V; the memory, a residual
stream, carries whatever position embedding its encoder added (queries get theirs in ``forward``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.attention import Explicit
from tokjax.model.cache import KVCache
from tokjax.model.config import ModelConfig
from tokjax.model.forward import Taps, blocks, layer_weights
from tokjax.model.ops import check_int_values
from tokjax.model.params import Params

__all__ = ["memory_cache", "memory_mask"]

_QUERY_MODES = ("none", "self", "causal")


def memory_cache(
    params: Params,
    cfg: ModelConfig,
    memory: jax.Array,
    positions: jax.Array,
    capacity: int,
    *,
    dtype=None,
) -> KVCache:
    """Returns a KVCache of ``capacity`` slots whose first S slots hold every layer's K/V of ``memory``.

    ``memory``: float [B, S, D] (one memory for every layer) or [L, B, S, D] (one per layer), D =
    ``cfg.d_model``, L = ``cfg.n_layers``: a residual stream such as an encoder's (final-normed)
    output. ``positions``: int [B, S] or [S] (with ``cfg.pos_dims`` = P > 1: [B, S, P] or [S, P]),
    the RoPE positions of the memory tokens. ``capacity`` >= S: room for the memory plus the
    queries a decoder will write after it. ``dtype``: the cache buffers' dtype (default
    ``cfg.compute_dtype``). Every layer's length is S. Layer l's K/V are the projections of its
    memory through layer l's ``attn_norm``, ``wk``/``wv`` (and biases), rotated at ``positions``
    (see the module docstring for the equation and the mask semantics). Pure and differentiable in
    ``params`` and ``memory``; callable under ``jit``, where value checks on traced positions are
    skipped.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"memory_cache(params, cfg, ...) needs a ModelConfig as cfg, got {type(cfg).__name__}")
    memory = jnp.asarray(memory)
    if memory.ndim not in (3, 4) or memory.shape[-1] != cfg.d_model:
        raise ValueError(f"memory must be [batch, seq, d_model={cfg.d_model}] (or [n_layers={cfg.n_layers}, batch, "
                         f"seq, d_model] for one memory per layer), got shape {memory.shape}")
    if memory.ndim == 4 and memory.shape[0] != cfg.n_layers:
        raise ValueError(f"a per-layer memory must have n_layers={cfg.n_layers} leading entries, "
                         f"got shape {memory.shape}")
    if not jnp.issubdtype(memory.dtype, jnp.floating):
        raise ValueError(f"memory must be a float array (a residual stream), got dtype {memory.dtype}")
    B, S = memory.shape[-3:-1]
    if B < 1 or S < 1:
        raise ValueError(f"memory needs at least one row and one token, got shape {memory.shape}")
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
        raise ValueError(f"capacity must be a Python int (a static cache size), got {type(capacity).__name__}")
    capacity = int(capacity)
    if capacity < S:
        raise ValueError(f"cache capacity {capacity} is too small: the memory needs {S} slots (capacity >= S)")
    positions = jnp.asarray(positions)
    P = cfg.pos_dims
    want = (B, S) if P == 1 else (B, S, P)
    if positions.shape not in (want, want[1:]):
        raise ValueError(f"positions must be {list(want)} (or {list(want[1:])}) for memory of shape {memory.shape} "
                         f"and pos_dims={P}, got shape {positions.shape}")
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"positions must be integers, got dtype {positions.dtype}")
    hi = cfg.max_len if cfg.positions == "learned" else np.iinfo(np.int32).max
    check_int_values(positions, "memory positions", 0, hi)
    _check_layers(params, cfg)
    dtype = cfg.dtype if dtype is None else dtype
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be a float dtype for the cache buffers, got {dtype!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a float dtype for the cache buffers, got {dtype}")
    positions = jnp.broadcast_to(positions.astype(jnp.int32), want)
    return _fill(params, memory, positions, cfg=cfg, capacity=capacity, dtype=dtype)


def _check_layers(params, cfg):
    layers = params.get("layers") if isinstance(params, dict) else None
    if layers is None:
        raise ValueError("params must be a tokjax params dict with a 'layers' entry (init_params(cfg, key))")
    n = len(layers) if isinstance(layers, (tuple, list)) else jax.tree.leaves(layers)[0].shape[0]
    if n != cfg.n_layers:
        raise ValueError(f"params hold {n} layers, cfg.n_layers={cfg.n_layers}")


@functools.partial(jax.jit, static_argnames=("cfg", "capacity", "dtype"))
def _fill(params, memory, positions, *, cfg, capacity, dtype):
    # Each layer's K/V come from blocks() run on that one layer with the keys/values tapped: the layer's
    # own projection code (fused wqkv, biases, axial RoPE). The layer's attention and MLP outputs are
    # unused and XLA removes them, so this compiles to the projections alone (tests check its flop count).
    L = cfg.n_layers
    layers = params["layers"]
    per_layer = layers if isinstance(layers, (tuple, list)) else tuple(layer_weights(params, i) for i in range(L))
    looped = {**params, "layers": tuple(per_layer)}
    B, S = memory.shape[-3:-1]
    empty = KVCache.init(cfg, B, capacity, dtype=dtype)
    ks, vs = [], []
    for i in range(L):
        x = (memory[i] if memory.ndim == 4 else memory).astype(cfg.dtype)
        _, _, taps = blocks(looped, cfg, x, positions, start=i, end=i + 1,
                            taps=Taps(layers=(i,), sites=("keys", "values")))
        for new, buf, out in ((taps["keys"][0], empty.k[i], ks), (taps["values"][0], empty.v[i], vs)):
            # [B, S, KV, hd] -> head-major [B, KV, S, hd] in slots 0..S-1
            out.append(jax.lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(dtype), (0, 0, 0, 0)))
    return empty.replace(k=tuple(ks), v=tuple(vs)).set_lengths(jnp.full((B,), S, jnp.int32))


def memory_mask(memory_visible: jax.Array, num_queries: int, capacity: int, *, queries: str = "self") -> Explicit:
    """Returns the Explicit mask [B, T, capacity] for T queries written right after an S-slot memory cache.

    ``memory_visible``: bool [B, S] (the same memory tokens for every query) or [B, T, S] (per
    query), True = visible. Slot s < S is memory token s; slot S + j is query j; later slots are
    never visible. ``queries``: what a query sees among the queries: ``"none"`` (only the memory:
    PAST's decoder, which has no query-query attention), ``"self"`` (itself too) or ``"causal"``
    (itself and the earlier queries). A query that sees nothing gets a zero attention output.
    """
    vis = jnp.asarray(memory_visible)
    if vis.dtype != jnp.bool_:
        raise ValueError(f"memory_visible must be a bool array, got dtype {vis.dtype}")
    T = int(num_queries)
    if T < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    if queries not in _QUERY_MODES:
        raise ValueError(f"queries must be one of {_QUERY_MODES}, got {queries!r}")
    if vis.ndim == 2:
        vis = jnp.broadcast_to(vis[:, None, :], (vis.shape[0], T, vis.shape[1]))
    if vis.ndim != 3 or vis.shape[1] != T:
        raise ValueError(f"memory_visible must be [batch, S] or [batch, num_queries={T}, S], got shape "
                         f"{jnp.shape(memory_visible)}")
    B, _, S = vis.shape
    if capacity < S + T:
        raise ValueError(f"cache capacity {capacity} is too small: {S} memory slots + {T} queries need {S + T}")
    i, j = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    qq = {"none": jnp.zeros((T, T), bool), "self": i == j, "causal": j <= i}[queries]
    rest = jnp.zeros((B, T, capacity - S - T), bool)
    return Explicit(jnp.concatenate([vis, jnp.broadcast_to(qq, (B, T, T)), rest], axis=2))
