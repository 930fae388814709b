"""ModelConfig: the frozen, hashable description of a decoder-only transformer (or an all-Mamba stack)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MIXERS = ("attention", "mamba")
SSM_SIGNS = (None, "pos", "neg")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A frozen, hashable description of one decoder-only transformer.

    Frozen and hashable so it can be a static argument of ``jax.jit``. Dtypes are stored
    as strings ("float32", "bfloat16") so the config stays hashable and serialisable.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None -> n_heads (multi-head attention); fewer -> GQA
    d_ff: int | None = None  # None -> 4 * d_model (gelu) or the llama 8/3 rule (swiglu)
    head_dim: int | None = None  # None -> d_model // n_heads
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-5
    positions: Literal["rope", "learned"] = "rope"
    rope_theta: float = 10000.0
    # Position axes: 1 = a sequence index (today's models); 2 or 3 = (row, col[, frame]) coordinates given per
    # token as Inputs.positions [B, T, pos_dims] (axial RoPE over head-dim chunks, or one learned table per axis).
    pos_dims: int = 1
    activation: Literal["swiglu", "gelu"] = "swiglu"
    tied_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 uses biases on q/k/v
    bias: bool = False  # biases on all other projections and norms (GPT-2)
    max_len: int = 512
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    init_scale: float = 0.02
    # Token mixer of every layer. "attention": the transformer layer (attention + MLP). "mamba": a Mamba-1 block
    # (norm -> selective SSM mixer -> residual add; no MLP, as in Mamba-1), see tokjax.model.mamba. The ssm_*
    # fields are read by mamba layers only: ssm_state N (state size per channel), ssm_conv (causal depthwise
    # conv width), ssm_expand (inner width = ssm_expand * d_model), ssm_sign (None: free x_proj; "pos"/"neg":
    # the P68 constrained x_proj with S_C^T S_B = +-U^T D U, positive / negative semidefinite).
    mixer: Literal["attention", "mamba"] = "attention"
    ssm_state: int = 16
    ssm_conv: int = 4
    ssm_expand: int = 2
    ssm_sign: Literal["pos", "neg"] | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        for name in ("n_kv_heads", "d_ff", "head_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"ModelConfig.{name} must be a positive int or None, got {value!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} must divide d_model={self.d_model} "
                "(or set head_dim explicitly)"
            )
        if self.kv_heads > self.n_heads or self.n_heads % self.kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads={self.kv_heads} must divide n_heads={self.n_heads}"
            )
        if self.pos_dims not in (1, 2, 3):
            raise ValueError(f"ModelConfig.pos_dims must be 1, 2 or 3 (position axes per token), got {self.pos_dims!r}")
        if self.head_size % (2 * self.pos_dims) and self.positions == "rope":
            raise ValueError(f"ModelConfig.head_dim={self.head_size} must be a multiple of 2 * pos_dims = "
                             f"{2 * self.pos_dims} for rope positions (one even chunk per position axis)")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"ModelConfig.norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"ModelConfig.positions must be 'rope' or 'learned', got {self.positions!r}")
        if self.activation not in ("swiglu", "gelu"):
            raise ValueError(f"ModelConfig.activation must be 'swiglu' or 'gelu', got {self.activation!r}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
        if not self.init_scale > 0:
            raise ValueError(f"ModelConfig.init_scale must be > 0, got {self.init_scale!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"ModelConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        for name in ("ssm_state", "ssm_conv", "ssm_expand"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.ssm_sign not in SSM_SIGNS:
            raise ValueError(f"ModelConfig.ssm_sign must be None, 'pos' or 'neg', got {self.ssm_sign!r}")
        if self.mixer == "mamba":
            if self.d_ff is not None:
                raise ValueError(f"ModelConfig.d_ff={self.d_ff} has no effect with mixer='mamba' (Mamba-1 blocks "
                                 "have no MLP); leave d_ff=None")
            if self.ssm_sign is not None and self.ssm_state > self.ssm_inner:
                raise ValueError(f"ModelConfig.ssm_sign={self.ssm_sign!r} needs ssm_state <= ssm_expand * d_model "
                                 f"(a unit upper-triangular [ssm_state, d_inner] U), got ssm_state={self.ssm_state} "
                                 f"and d_inner={self.ssm_inner}")
        elif self.ssm_sign is not None:
            raise ValueError(f"ModelConfig.ssm_sign={self.ssm_sign!r} constrains a Mamba x_proj; it needs "
                             f"mixer='mamba', got mixer={self.mixer!r}")

    # Derived sizes (properties so the dataclass fields stay what the user wrote).
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ff_size(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "gelu":
            return 4 * self.d_model
        # llama rule: 2/3 of 4*d rounded up to a multiple of 32
        return -(-(8 * self.d_model // 3) // 32) * 32

    @property
    def ssm_inner(self) -> int:
        """Mamba's inner width E = ssm_expand * d_model."""
        return self.ssm_expand * self.d_model

    @property
    def ssm_dt_rank(self) -> int:
        """Mamba's low rank R of the step-size projection: ceil(d_model / 16) (Mamba-1's "auto")."""
        return -(-self.d_model // 16)

    @property
    def dtype(self):
        return _DTYPES[self.compute_dtype]

    @property
    def pdtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> "ModelConfig":
        """Returns a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Returns the number of parameters of a model with this config."""
        import math

        import jax

        from tokjax.model.params import param_shapes

        return sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(self)))

    # Presets --------------------------------------------------------------------------
    @classmethod
    def tiny(cls, vocab_size: int = 512, **kw) -> "ModelConfig":
        """Returns a ~1M-parameter llama-style config that trains in minutes on a CPU."""
        base = dict(vocab_size=vocab_size, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, max_len=256)
        return cls(**{**base, **kw})

    @classmethod
    def small(cls, vocab_size: int = 2048, **kw) -> "ModelConfig":
        """Returns a ~10M-parameter llama-style config."""
        base = dict(vocab_size=vocab_size, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, max_len=512)
        return cls(**{**base, **kw})

    @classmethod
    def gpt2_small(cls, vocab_size: int = 50257, **kw) -> "ModelConfig":
        """Returns the GPT-2 small (124M) architecture: learned positions, LayerNorm, GELU, tied head."""
        base = dict(
            vocab_size=vocab_size, d_model=768, n_layers=12, n_heads=12, d_ff=3072,
            norm="layer", positions="learned", activation="gelu", tied_embeddings=True,
            bias=True, qkv_bias=True, max_len=1024,
        )
        return cls(**{**base, **kw})

    @classmethod
    def llama_like(cls, vocab_size: int = 32000, **kw) -> "ModelConfig":
        """Returns a Llama-style config (RMSNorm, RoPE, SwiGLU, GQA, untied head) of ~110M parameters."""
        base = dict(
            vocab_size=vocab_size, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048,
            norm="rms", positions="rope", activation="swiglu", tied_embeddings=False,
            rope_theta=500000.0, max_len=2048,
        )
        return cls(**{**base, **kw})
