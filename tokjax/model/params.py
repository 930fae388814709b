"""Parameter layout: one spec table gives every parameter's shape, logical axes and initialiser.

Layers are stacked on a leading ``layers`` axis so ``lax.scan`` runs them and a layer range
is a slice. Logical axis names (``vocab, embed, heads, kv_heads, head_dim, mlp, layers,
seq``) are what the sharding rules table in :mod:`tokjax.parallel` maps onto mesh axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tokjax.model.config import ModelConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """The shape, logical axis names and initialiser of one parameter."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    # "normal" (std init_scale * scale), "zeros", "ones"; Mamba's: "uniform" (U(-scale, scale)), "a_log"
    # (log 1..N along the last axis, S4D-real), "dt_bias" (softplus^-1 of a log-uniform step in [1e-3, 0.1])
    init: str
    scale: float = 1.0


def _norm_specs(cfg: ModelConfig, stacked: bool) -> dict[str, ParamSpec]:
    lead = (cfg.n_layers,) if stacked else ()
    lead_ax = ("layers",) if stacked else ()
    specs = {"scale": ParamSpec(lead + (cfg.d_model,), lead_ax + ("embed",), "ones")}
    if cfg.norm == "layer":
        specs["bias"] = ParamSpec(lead + (cfg.d_model,), lead_ax + ("embed",), "zeros")
    return specs


def _mamba_layer_specs(cfg: ModelConfig) -> dict[str, Any]:
    """Returns the stacked specs of Mamba-1 layers (tokjax.model.mamba): norm, in_proj (x and z), causal conv,
    x_proj (dt | B | C), dt_proj + dt_bias, A_log, D and out_proj; E = ssm_expand * d_model, R = ssm_dt_rank."""
    L, D, E, N, R, Kc = (cfg.n_layers, cfg.d_model, cfg.ssm_inner, cfg.ssm_state, cfg.ssm_dt_rank, cfg.ssm_conv)
    conv_bound = 1.0 / math.sqrt(Kc)  # torch's Conv1d default (fan-in = kernel width for a depthwise conv)
    return {
        "norm": _norm_specs(cfg, True),
        "in_proj": ParamSpec((L, D, 2, E), ("layers", "embed", None, "mlp"), "normal"),
        "conv_w": ParamSpec((L, Kc, E), ("layers", None, "mlp"), "uniform", conv_bound),
        "conv_b": ParamSpec((L, E), ("layers", "mlp"), "uniform", conv_bound),
        "x_proj": ParamSpec((L, E, R + 2 * N), ("layers", "mlp", None), "normal"),
        "dt_proj": ParamSpec((L, R, E), ("layers", None, "mlp"), "uniform", R ** -0.5),
        "dt_bias": ParamSpec((L, E), ("layers", "mlp"), "dt_bias"),
        "A_log": ParamSpec((L, E, N), ("layers", "mlp", None), "a_log"),
        "D": ParamSpec((L, E), ("layers", "mlp"), "ones"),
        # one residual write per layer: the GPT-2 rule gives 1/sqrt(L) (Mamba-1's n_residuals_per_layer=1)
        "out_proj": ParamSpec((L, E, D), ("layers", "mlp", "embed"), "normal", 1.0 / math.sqrt(L)),
    }


def param_specs(cfg: ModelConfig) -> Params:
    """Returns the nested dict of ParamSpec describing every parameter of ``cfg``."""
    L, D, H, K, hd, F = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.ff_size
    if cfg.mixer == "mamba":
        return _top_specs(cfg, _mamba_layer_specs(cfg))
    # Residual-writing projections get the GPT-2 1/sqrt(2L) scale so depth does not blow up the stream.
    out_scale = 1.0 / math.sqrt(2 * L)
    layers: dict[str, Any] = {
        "attn_norm": _norm_specs(cfg, True),
        "wq": ParamSpec((L, D, H, hd), ("layers", "embed", "heads", "head_dim"), "normal"),
        "wk": ParamSpec((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "wv": ParamSpec((L, D, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
        "wo": ParamSpec((L, H, hd, D), ("layers", "heads", "head_dim", "embed"), "normal", out_scale),
        "mlp_norm": _norm_specs(cfg, True),
        "w_up": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal"),
        "w_down": ParamSpec((L, F, D), ("layers", "mlp", "embed"), "normal", out_scale),
    }
    if cfg.activation == "swiglu":
        layers["w_gate"] = ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal")
    if cfg.qkv_bias:
        layers["bq"] = ParamSpec((L, H, hd), ("layers", "heads", "head_dim"), "zeros")
        layers["bk"] = ParamSpec((L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros")
        layers["bv"] = ParamSpec((L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros")
    if cfg.bias:
        layers["bo"] = ParamSpec((L, D), ("layers", "embed"), "zeros")
        layers["b_up"] = ParamSpec((L, F), ("layers", "mlp"), "zeros")
        layers["b_down"] = ParamSpec((L, D), ("layers", "embed"), "zeros")
    return _top_specs(cfg, layers)


def _top_specs(cfg: ModelConfig, layers: dict[str, Any]) -> Params:
    V, D = cfg.vocab_size, cfg.d_model
    specs: Params = {
        "embed": ParamSpec((V, D), ("vocab", "embed"), "normal"),
        "layers": layers,
        "final_norm": _norm_specs(cfg, False),
    }
    if cfg.positions == "learned":
        specs["pos_embed"] = ParamSpec((cfg.max_len, D), ("seq", "embed"), "normal")
        for axis in range(1, cfg.pos_dims):  # one more table per extra position axis (pos_dims=1: unchanged)
            specs[f"pos_embed_{axis}"] = ParamSpec((cfg.max_len, D), ("seq", "embed"), "normal")
    if not cfg.tied_embeddings:
        specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"), "normal")
    return specs


def _is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def param_axes(cfg: ModelConfig) -> Params:
    """Returns a pytree like the params whose leaves are logical-axis-name tuples."""
    return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def param_shapes(cfg: ModelConfig) -> Params:
    """Returns a pytree like the params of ``jax.ShapeDtypeStruct`` (no allocation)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cfg.pdtype), param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array) -> Params:
    """Returns freshly initialised parameters for ``cfg`` (normal(0, init_scale) weights, unit norms)."""
    specs = param_specs(cfg)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
    keys = jax.random.split(key, len(leaves))

    def make(spec: ParamSpec, k) -> jax.Array:
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, cfg.pdtype)
        if spec.init == "ones":
            return jnp.ones(spec.shape, cfg.pdtype)
        if spec.init == "uniform":
            return jax.random.uniform(k, spec.shape, jnp.float32, -spec.scale, spec.scale).astype(cfg.pdtype)
        if spec.init == "a_log":  # S4D-real: A = -(1, 2, ..., N) in every channel
            n = jnp.arange(1, spec.shape[-1] + 1, dtype=jnp.float32)
            return jnp.broadcast_to(jnp.log(n), spec.shape).astype(cfg.pdtype)
        if spec.init == "dt_bias":  # softplus(dt_bias) log-uniform in [1e-3, 1e-1], floored at 1e-4 (Mamba-1)
            lo, hi = math.log(1e-3), math.log(1e-1)
            dt = jnp.maximum(jnp.exp(jax.random.uniform(k, spec.shape, jnp.float32, lo, hi)), 1e-4)
            return (dt + jnp.log(-jnp.expm1(-dt))).astype(cfg.pdtype)
        std = cfg.init_scale * spec.scale
        return (std * jax.random.normal(k, spec.shape, jnp.float32)).astype(cfg.pdtype)

    return jax.tree.unflatten(treedef, [make(s, k) for s, k in zip(leaves, keys)])


def check_params(params: Params, cfg: ModelConfig) -> None:
    """Returns None; raises ValueError naming the first parameter whose structure or shape disagrees with cfg."""
    expected = param_shapes(cfg)
    exp_flat = dict(_flatten_with_names(expected))
    got_flat = dict(_flatten_with_names(params))
    missing = sorted(set(exp_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(exp_flat))
    if missing or extra:
        raise ValueError(f"params do not match config: missing {missing}, unexpected {extra}")
    for name, spec in exp_flat.items():
        shape = tuple(getattr(got_flat[name], "shape", ()))
        if shape != spec.shape:
            raise ValueError(f"parameter {name!r} has shape {shape}, config expects {spec.shape}")


def _flatten_with_names(tree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(str(getattr(p, "key", p)) for p in path), leaf) for path, leaf in flat]


def map_with_axes(fn: Callable[[jax.Array, tuple[str, ...]], Any], params: Params, cfg: ModelConfig) -> Any:
    """Returns ``fn(param, axes)`` mapped over every parameter."""
    return jax.tree.map(fn, params, param_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
