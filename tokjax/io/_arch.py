"""Hugging Face architectures as data: a config translation plus a declarative tensor name map.

Each :class:`Rule` says which tokjax parameter(s) one HF tensor holds and in which layout:

* ``same``   -- identical shape (embeddings, norm weights).
* ``vector`` -- the tokjax array flattened (biases: ours ``[H, hd]`` is HF's ``[H*hd]``).
* ``linear`` -- a ``torch.nn.Linear`` weight ``[out, in]``: ours reshaped to ``[in, out]`` and transposed.
* ``conv1d`` -- GPT-2's ``Conv1D`` weight ``[in, out]``: ours reshaped to ``[in, out]``, no transpose.

``split`` is how many leading tokjax axes form the ``in`` side (wq ``[D | H, hd]`` -> 1,
wo ``[H, hd | D]`` -> 2). A rule with several tokjax names is a *fused* HF tensor (GPT-2's
``c_attn`` holds q, k and v): the parts are concatenated along HF's ``out`` axis. A rule
whose HF name contains ``{i}`` is per layer and maps onto the stacked ``layers`` axis. A rule
applies only when the config has all its tokjax parameters (``lm_head`` only when untied,
``bq`` only with qkv biases), so the same table serves tied/untied and biased variants.

RoPE needs no permutation: HF's Llama/Qwen2 ``rotate_half`` pairs dimension j with j + hd/2,
which is the half-split rotation tokjax's :func:`tokjax.model.attention.rope` applies.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import numpy as np

from tokjax.model.config import ModelConfig
from tokjax.model.params import param_specs


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> tokjax parameter(s) correspondence (see module docstring)."""

    ours: tuple[str, ...]
    hf: str
    layout: str = "same"
    split: int = 1

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _rule(ours: str | tuple[str, ...], hf: str, layout: str = "same", split: int = 1) -> Rule:
    return Rule((ours,) if isinstance(ours, str) else tuple(ours), hf, layout, split)


def _spec_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Returns {"layers.wq": shape, ...}: every tokjax parameter's shape by dotted path."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                out[prefix + k] = tuple(v.shape)

    walk(param_specs(cfg), "")
    return out


def _layer_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Returns the shape of one layer's slice of a parameter (drops the stacked ``layers`` axis)."""
    return shape[1:] if path.startswith("layers.") else shape


def _to_hf_one(a: np.ndarray, layout: str, split: int) -> np.ndarray:
    if layout == "same":
        return a
    if layout == "vector":
        return a.reshape(-1)
    two_d = a.reshape(math.prod(a.shape[:split]), math.prod(a.shape[split:]))
    return two_d.T if layout == "linear" else two_d


def _hf_shape_one(shape: tuple[int, ...], layout: str, split: int) -> tuple[int, ...]:
    if layout == "same":
        return shape
    if layout == "vector":
        return (math.prod(shape),)
    i, o = math.prod(shape[:split]), math.prod(shape[split:])
    return (o, i) if layout == "linear" else (i, o)


def _out_axis(layout: str) -> int:
    return 0 if layout in ("linear", "vector", "same") else 1


def hf_shape(rule: Rule, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Returns the HF tensor shape that holds tokjax per-layer parts of ``shapes`` under ``rule``."""
    parts = [_hf_shape_one(s, rule.layout, rule.split) for s in shapes]
    if len(parts) == 1:
        return parts[0]
    ax = _out_axis(rule.layout)
    out = list(parts[0])
    out[ax] = sum(p[ax] for p in parts)
    return tuple(out)


def to_hf(rule: Rule, arrays: list[np.ndarray]) -> np.ndarray:
    """Returns the HF tensor built from tokjax per-layer arrays under ``rule``."""
    parts = [_to_hf_one(a, rule.layout, rule.split) for a in arrays]
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0])
    return np.ascontiguousarray(np.concatenate(parts, axis=_out_axis(rule.layout)))


def from_hf(rule: Rule, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Returns the tokjax per-layer arrays (of ``shapes``) held by the HF ``tensor`` under ``rule``."""
    ax = _out_axis(rule.layout)
    sizes = [_hf_shape_one(s, rule.layout, rule.split)[ax] for s in shapes]
    pieces = np.split(tensor, np.cumsum(sizes)[:-1], axis=ax) if len(shapes) > 1 else [tensor]
    out = []
    for piece, shape in zip(pieces, shapes):
        if rule.layout == "linear":
            piece = piece.T
        out.append(piece.reshape(shape))
    return out


# ------------------------------------------------------------------------------ configs
def _get(c: dict, *names: str, default: Any = None) -> Any:
    """Returns the first of ``names`` present in the HF config ``c`` (HF renamed keys over time)."""
    for n in names:
        if n in c and c[n] is not None:
            return c[n]
    return default


def _require(c: dict, src: str, *names: str) -> Any:
    v = _get(c, *names)
    if v is None:
        raise ValueError(f"{src}: missing required key {names[0]!r}")
    return v


def _unsupported(src: str, key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{src}: unsupported option {key}={value!r}: {why}")


def _rope_theta(c: dict, src: str) -> float:
    """Returns rope_theta after refusing every RoPE variant tokjax does not implement (scaling, partial)."""
    theta = c.get("rope_theta")
    params = c.get("rope_parameters")  # transformers >= 5 keeps theta and scaling here
    if isinstance(params, dict):
        if params and all(isinstance(v, dict) for v in params.values()):  # per layer type
            kinds = list(params.values())
            if any(k != kinds[0] for k in kinds):
                raise _unsupported(src, "rope_parameters", params, "different RoPE per layer type is not implemented")
            params = kinds[0]
        rtype = params.get("rope_type", params.get("type", "default"))
        if rtype not in (None, "default"):
            raise _unsupported(src, "rope_parameters.rope_type", rtype, "only plain RoPE ('default') is implemented")
        prf = params.get("partial_rotary_factor", 1.0)
        if prf not in (None, 1, 1.0):
            raise _unsupported(src, "rope_parameters.partial_rotary_factor", prf, "only full-width RoPE is implemented")
        theta = params.get("rope_theta", theta)
    scaling = c.get("rope_scaling")
    if scaling is not None:
        rtype = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
        if rtype not in ("default",):
            raise _unsupported(
                src, "rope_scaling", scaling, "RoPE scaling (linear, dynamic, yarn, llama3, ...) is not implemented; "
                "only rope_scaling: null loads"
            )
    prf = c.get("partial_rotary_factor")
    if prf not in (None, 1, 1.0):
        raise _unsupported(src, "partial_rotary_factor", prf, "only full-width RoPE is implemented")
    return float(10000.0 if theta is None else theta)


def _check_flag(c: dict, src: str, key: str, ok: Any, why: str) -> None:
    if key in c and c[key] is not None and c[key] != ok:
        raise _unsupported(src, key, c[key], why)


def _llama_family_config(c: dict, src: str, *, qkv_bias: bool) -> ModelConfig:
    act = _get(c, "hidden_act", default="silu")
    if act not in ("silu", "swish"):
        raise _unsupported(src, "hidden_act", act, "tokjax's SwiGLU uses silu")
    if not qkv_bias:
        _check_flag(c, src, "attention_bias", False, "biases on q/k/v/o projections are not implemented for llama")
    _check_flag(c, src, "mlp_bias", False, "MLP biases are not implemented for llama/qwen2")
    if c.get("use_sliding_window"):
        raise _unsupported(src, "use_sliding_window", True, "sliding-window attention is not implemented")
    layer_types = c.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        bad = sorted({t for t in layer_types if t != "full_attention"})
        raise _unsupported(src, "layer_types", bad, "only full_attention layers are implemented")
    d = int(_require(c, src, "hidden_size"))
    h = int(_require(c, src, "num_attention_heads"))
    head_dim = c.get("head_dim")
    if head_dim is not None and d % h == 0 and int(head_dim) == d // h:
        head_dim = None  # the default; keeps loaded configs equal to hand-written ones
    return ModelConfig(
        vocab_size=int(_require(c, src, "vocab_size")),
        d_model=d,
        n_layers=int(_require(c, src, "num_hidden_layers")),
        n_heads=h,
        n_kv_heads=int(_get(c, "num_key_value_heads", default=h)),
        d_ff=int(_require(c, src, "intermediate_size")),
        head_dim=None if head_dim is None else int(head_dim),
        norm="rms",
        norm_eps=float(_get(c, "rms_norm_eps", default=1e-6)),
        positions="rope",
        rope_theta=_rope_theta(c, src),
        activation="swiglu",
        tied_embeddings=bool(_get(c, "tie_word_embeddings", default=False)),
        qkv_bias=qkv_bias,
        bias=False,
        max_len=int(_get(c, "max_position_embeddings", default=2048)),
    )


def _gpt2_config(c: dict, src: str) -> ModelConfig:
    act = _get(c, "activation_function", default="gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise _unsupported(src, "activation_function", act, "tokjax's GPT-2 uses the tanh GELU (gelu_new)")
    _check_flag(c, src, "scale_attn_weights", True, "unscaled attention is not implemented")
    _check_flag(c, src, "scale_attn_by_inverse_layer_idx", False, "per-layer attention scaling is not implemented")
    _check_flag(c, src, "add_cross_attention", False, "cross-attention is not implemented")
    _check_flag(c, src, "tie_word_embeddings", True, "GPT-2 checkpoints tie the output head to the embedding")
    d = int(_require(c, src, "n_embd", "hidden_size"))
    return ModelConfig(
        vocab_size=int(_require(c, src, "vocab_size")),
        d_model=d,
        n_layers=int(_require(c, src, "n_layer", "num_hidden_layers")),
        n_heads=int(_require(c, src, "n_head", "num_attention_heads")),
        d_ff=int(_get(c, "n_inner", default=4 * d)),
        norm="layer",
        norm_eps=float(_get(c, "layer_norm_epsilon", default=1e-5)),
        positions="learned",
        activation="gelu",
        tied_embeddings=True,
        qkv_bias=True,
        bias=True,
        max_len=int(_get(c, "n_positions", "max_position_embeddings", default=1024)),
    )


def _llama_family_to_hf(cfg: ModelConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        # Legacy keys: read by transformers 4.x and converted to rope_parameters by 5.x.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": cfg.tied_embeddings,
        "use_cache": True,
    }


def _llama_to_hf(cfg: ModelConfig) -> dict:
    return {**_llama_family_to_hf(cfg), "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}


def _qwen2_to_hf(cfg: ModelConfig) -> dict:
    return {
        **_llama_family_to_hf(cfg), "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": cfg.n_layers,
    }


def _gpt2_to_hf(cfg: ModelConfig) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.ff_size,
        "n_positions": cfg.max_len,
        "n_ctx": cfg.max_len,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        # Inference checkpoints: dropout off so a reloaded model in train() mode still matches.
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }


def _mismatches(cfg: ModelConfig, want: dict[str, Any]) -> list[str]:
    return [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One HF architecture: config translation both ways plus the tensor name map."""

    model_type: str
    hf_class: str
    config_from_hf: Callable[[dict, str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict]
    rules: tuple[Rule, ...]
    # ModelConfig fields this architecture fixes (save refuses configs it cannot express).
    fixed: tuple[tuple[str, Any], ...]
    # Buffers (not parameters) that some checkpoints carry and loading ignores.
    ignore: tuple[str, ...] = ()
    # Prefix that save_pretrained writes but hub files sometimes lack (original GPT-2 files).
    optional_prefix: str = ""

    def mismatches(self, cfg: ModelConfig) -> list[str]:
        """Returns the ModelConfig settings this architecture cannot express (empty when it fits)."""
        bad = _mismatches(cfg, dict(self.fixed))
        if self.model_type == "gpt2":
            if cfg.kv_heads != cfg.n_heads:
                bad.append(f"n_kv_heads={cfg.n_kv_heads!r} (GPT-2 has no grouped-query attention)")
            if cfg.head_size * cfg.n_heads != cfg.d_model:
                bad.append(f"head_dim={cfg.head_dim!r} (GPT-2 needs head_dim * n_heads == d_model)")
        return bad

    def applicable(self, cfg: ModelConfig) -> list[Rule]:
        """Returns the rules whose tokjax parameters all exist for ``cfg``."""
        shapes = _spec_shapes(cfg)
        return [r for r in self.rules if all(o in shapes for o in r.ours)]

    def is_ignored(self, name: str, cfg: ModelConfig) -> bool:
        """Returns True for tensors loading skips: known buffers, and a tied model's redundant lm_head."""
        if cfg.tied_embeddings and name == "lm_head.weight":
            return True  # transformers ties it to the embedding on load, whatever the file holds
        return any(re.fullmatch(p, name) for p in self.ignore)

    def canonical(self, name: str) -> str:
        """Returns the tensor name as save_pretrained writes it (adds a missing optional prefix)."""
        p = self.optional_prefix
        if p and not name.startswith(p) and not name.startswith("lm_head."):
            return p + name
        return name


_L = "model.layers.{i}."
_LLAMA_RULES = (
    _rule("embed", "model.embed_tokens.weight"),
    _rule("layers.attn_norm.scale", _L + "input_layernorm.weight"),
    _rule("layers.wq", _L + "self_attn.q_proj.weight", "linear", 1),
    _rule("layers.wk", _L + "self_attn.k_proj.weight", "linear", 1),
    _rule("layers.wv", _L + "self_attn.v_proj.weight", "linear", 1),
    _rule("layers.bq", _L + "self_attn.q_proj.bias", "vector"),
    _rule("layers.bk", _L + "self_attn.k_proj.bias", "vector"),
    _rule("layers.bv", _L + "self_attn.v_proj.bias", "vector"),
    _rule("layers.wo", _L + "self_attn.o_proj.weight", "linear", 2),
    _rule("layers.mlp_norm.scale", _L + "post_attention_layernorm.weight"),
    _rule("layers.w_gate", _L + "mlp.gate_proj.weight", "linear", 1),
    _rule("layers.w_up", _L + "mlp.up_proj.weight", "linear", 1),
    _rule("layers.w_down", _L + "mlp.down_proj.weight", "linear", 1),
    _rule("final_norm.scale", "model.norm.weight"),
    _rule("lm_head", "lm_head.weight", "linear", 1),
)

_G = "transformer.h.{i}."
_GPT2_RULES = (
    _rule("embed", "transformer.wte.weight"),
    _rule("pos_embed", "transformer.wpe.weight"),
    _rule("layers.attn_norm.scale", _G + "ln_1.weight"),
    _rule("layers.attn_norm.bias", _G + "ln_1.bias"),
    _rule(("layers.wq", "layers.wk", "layers.wv"), _G + "attn.c_attn.weight", "conv1d", 1),
    _rule(("layers.bq", "layers.bk", "layers.bv"), _G + "attn.c_attn.bias", "vector"),
    _rule("layers.wo", _G + "attn.c_proj.weight", "conv1d", 2),
    _rule("layers.bo", _G + "attn.c_proj.bias", "vector"),
    _rule("layers.mlp_norm.scale", _G + "ln_2.weight"),
    _rule("layers.mlp_norm.bias", _G + "ln_2.bias"),
    _rule("layers.w_up", _G + "mlp.c_fc.weight", "conv1d", 1),
    _rule("layers.b_up", _G + "mlp.c_fc.bias", "vector"),
    _rule("layers.w_down", _G + "mlp.c_proj.weight", "conv1d", 1),
    _rule("layers.b_down", _G + "mlp.c_proj.bias", "vector"),
    _rule("final_norm.scale", "transformer.ln_f.weight"),
    _rule("final_norm.bias", "transformer.ln_f.bias"),
)

_LLAMA_FIXED = (("norm", "rms"), ("positions", "rope"), ("activation", "swiglu"), ("bias", False))

ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        model_type="gpt2",
        hf_class="GPT2LMHeadModel",
        config_from_hf=_gpt2_config,
        config_to_hf=_gpt2_to_hf,
        rules=_GPT2_RULES,
        fixed=(
            ("norm", "layer"), ("positions", "learned"), ("activation", "gelu"), ("bias", True),
            ("qkv_bias", True), ("tied_embeddings", True),
        ),
        # Older GPT-2 files store the causal-mask buffers next to the weights.
        ignore=(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",),
        optional_prefix="transformer.",
    ),
    "llama": Architecture(
        model_type="llama",
        hf_class="LlamaForCausalLM",
        config_from_hf=lambda c, src: _llama_family_config(c, src, qkv_bias=False),
        config_to_hf=_llama_to_hf,
        rules=_LLAMA_RULES,
        fixed=_LLAMA_FIXED + (("qkv_bias", False),),
        ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    ),
    "qwen2": Architecture(
        model_type="qwen2",
        hf_class="Qwen2ForCausalLM",
        config_from_hf=lambda c, src: _llama_family_config(c, src, qkv_bias=True),
        config_to_hf=_qwen2_to_hf,
        rules=_LLAMA_RULES,
        fixed=_LLAMA_FIXED + (("qkv_bias", True),),
        ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    ),
}


def architecture_for(cfg: ModelConfig) -> Architecture:
    """Returns the first HF architecture able to express ``cfg``; ValueError lists why each one cannot."""
    reasons = []
    for arch in ARCHITECTURES.values():
        bad = arch.mismatches(cfg)
        if not bad:
            return arch
        reasons.append(f"{arch.model_type}: {', '.join(bad)}")
    raise ValueError("no Hugging Face architecture matches this ModelConfig -- " + "; ".join(reasons))
