"""LoRA adapters on the shared forward's projections, switched on per token slot by a gate.

    lora = init_lora(cfg, key, rank=8, alpha=16)             # B = 0: the adapted model starts as the base
    out = lora_forward(params, cfg, lora, tokens, gate)       # gate [B, T] in {0, 1}

Low-rank adaptation (Hu et al. 2021) adds ``(alpha / r) * (x @ A) @ B`` to the output of each adapted
projection ``x @ W`` (``A`` [in, r], ``B`` [r, out]; "all-linear" = q, k, v, o, gate, up, down, the
default of P58 Think-at-Hard's official recipe, r = 32, alpha = 64 there). Here the delta is added only
at the token slots whose ``gate`` is 1: a gate-0 slot computes the base model bit for bit (the projections
take ``jnp.where(gate, y + delta, y)``), which is what P58 needs (iteration-0 slots run the plain model,
iteration-1 slots the adapted one, inside one forward pass; the official code toggles PEFT's adapter
per iteration instead). Attention mixes slots, so a gate-0 slot that attends to a gate-1 slot sees
its adapted keys and values -- the gate switches the adapter of the slot's own computation.

The adapter is a pytree ``{"layers": {name: {"a": [L, *in, r], "b": [L, r, *out]}}, "scale": float32}``
with stacked per-layer leaves; ``scale`` = alpha / r is a runtime leaf (train only ``"lora/layers"``,
or ``"<key>/layers"`` wherever the adapter sits in a params dict, through ``TrainConfig.trainable``).
Initialisation as PEFT's: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt 5), B = 0.
The forward takes the pairs through its ``lora=`` argument (:func:`tokjax.model.forward`), in both the
scanned (training) and the per-layer (cached decoding, fused q/k/v) paths. Dropout on the adapter input
(PEFT's lora_dropout) is not implemented.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.config import ModelConfig
from tokjax.model.forward import Inputs, Output, forward

__all__ = ["LORA_TARGETS", "check_gate", "init_lora", "lora_forward", "lora_pairs", "lora_shapes"]

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def lora_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Returns {projection: (input shape, output shape)} (per token) of every projection LoRA may adapt in ``cfg``."""
    if cfg.mixer == "mamba":
        raise ValueError("LoRA adapters apply to attention/MLP projections; mixer='mamba' models have none")
    D, H, KV, hd, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.ff_size
    out = {"wq": ((D,), (H, hd)), "wk": ((D,), (KV, hd)), "wv": ((D,), (KV, hd)), "wo": ((H, hd), (D,)),
           "w_up": ((D,), (F,)), "w_down": ((F,), (D,))}
    if cfg.activation == "swiglu":
        out["w_gate"] = ((D,), (F,))
    return out


def init_lora(cfg: ModelConfig, key: jax.Array, *, rank: int = 8, alpha: float = 16.0,
              targets: Sequence[str] | str = "all-linear") -> dict:
    """Returns a fresh LoRA adapter for ``cfg``: A kaiming-uniform, B = 0 (so the adapted model equals the base).

    ``rank`` >= 1; ``alpha`` > 0 (scale = alpha / rank, a runtime leaf); ``targets``: ``"all-linear"`` or a
    subset of :data:`LORA_TARGETS` (``w_gate`` exists only for SwiGLU models).
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    shapes = lora_shapes(cfg)
    names = tuple(shapes) if targets == "all-linear" else tuple(targets)
    bad = [n for n in names if n not in shapes]
    if bad or not names or isinstance(targets, str) and targets != "all-linear":
        raise ValueError(f"targets must be 'all-linear' or a non-empty subset of {tuple(shapes)} for this model, "
                         f"got {targets!r}")
    L, r = cfg.n_layers, int(rank)
    keys = jax.random.split(key, len(names))
    layers = {}
    for k, n in zip(keys, names):
        shp_in, shp_out = shapes[n]
        bound = 1.0 / np.sqrt(float(np.prod(shp_in)))
        layers[n] = {"a": jax.random.uniform(k, (L, *shp_in, r), jnp.float32, -bound, bound),
                     "b": jnp.zeros((L, r, *shp_out), jnp.float32)}
    return {"layers": layers, "scale": jnp.float32(float(alpha) / r)}


def _check_lora(cfg: ModelConfig, lora) -> None:
    if not isinstance(lora, dict) or set(lora) != {"layers", "scale"} or not isinstance(lora["layers"], dict):
        raise ValueError("lora must be an adapter dict {'layers': {projection: {'a', 'b'}}, 'scale'} from init_lora")
    shapes = lora_shapes(cfg)
    for n, ab in lora["layers"].items():
        if n not in shapes:
            raise ValueError(f"lora adapts unknown projection {n!r}; this model has {tuple(shapes)}")
        si, so = shapes[n]
        a, b = jnp.shape(ab["a"]), jnp.shape(ab["b"])
        r = a[-1] if a else None
        if a[:-1] != (cfg.n_layers, *si) or b != (cfg.n_layers, r, *so):
            raise ValueError(f"lora[{n!r}] must have a [{cfg.n_layers}, *{si}, r] and b [{cfg.n_layers}, r, *{so}], "
                             f"got a {a} and b {b}: an adapter built for another model?")


def lora_pairs(lora: dict) -> dict:
    """Returns the adapter's per-layer pairs with the scale folded into B (the form ``forward(lora=)`` reads)."""
    s = jnp.asarray(lora["scale"], jnp.float32)
    return {n: {"a": ab["a"], "b": ab["b"] * s} for n, ab in lora["layers"].items()}


def check_gate(gate, batch: int, length: int) -> jax.Array:
    """Returns ``gate`` as bool [batch, length] (a scalar or [length] broadcasts); raises ValueError for another
    shape or (when concrete) values outside {0, 1}."""
    g = jnp.asarray(gate)
    if g.ndim > 2 or (g.ndim >= 1 and g.shape[-1] != length) or (g.ndim == 2 and g.shape[0] not in (1, batch)):
        raise ValueError(f"gate must be [batch={batch}, seq={length}] (or a scalar / [seq]) of 0/1 values, "
                         f"got shape {g.shape}")
    if g.dtype != bool:
        if not isinstance(g, jax.core.Tracer):
            v = np.asarray(g)
            if not np.isin(v, (0, 1)).all():
                raise ValueError(f"gate values must be 0 or 1 (1 = LoRA on at that slot), got {np.unique(v)[:5]}")
        g = g != 0
    return jnp.broadcast_to(g, (batch, length))


def lora_forward(params, cfg: ModelConfig, lora: dict, inputs, gate, **kwargs) -> Output:
    """Returns ``forward(params, cfg, inputs, **kwargs)`` with the LoRA adapter on at the slots where ``gate`` is 1.

    ``gate`` [B, T] (or a scalar / [T]) in {0, 1}: gate 0 everywhere gives the base model's output bit for bit.
    Any forward keyword (cache, mask, taps, hooks, layers, ...) passes through.
    """
    _check_lora(cfg, lora)
    if not isinstance(inputs, Inputs):
        inputs = Inputs(tokens=jnp.asarray(inputs))
    x = next(a for a in (inputs.tokens, inputs.embeds, inputs.hidden) if a is not None)
    g = check_gate(gate, x.shape[0], x.shape[1])
    return forward(params, cfg, inputs, lora=(lora_pairs(lora), g), **kwargs)
