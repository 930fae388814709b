"""P26 ZeTT's hypernetwork: token decompositions -> embeddings, through tokjax's shared ``forward``.

A new token t is written as old ids T_old(t) = (s_1 .. s_n); the hypernetwork reads them as

    x_i     = P_in(E_old[s_i])                           (Dense + ProjectorBlock)
    h       = forward(encoder, Inputs(embeds=x, segment_ids=valid), mask=Bidirectional())
    e_in(t) = P_out(h_1)   [ e_out(t) = P_out'(h_1) for untied models ]     (pool position 0)

The encoder is an ordinary tokjax model (:attr:`HypernetConfig.encoder`: pre-LayerNorm, learned
positions, GELU, biases -- a RoBERTa-sized block in the layout every other method uses) run
bidirectionally; padded slots get their own segment id so real slots never attend to them. Its
token embedding table is dropped: the encoder only ever reads ``Inputs(embeds=...)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.model import Bidirectional, Inputs, ModelConfig, forward, init_params
from tokjax.tokenizers._vocab_transfer import mean_of_parts

__all__ = ["Hypernet", "HypernetConfig", "hypernet_embeddings", "init_hypernet"]


@dataclasses.dataclass(frozen=True)
class HypernetConfig:
    """The hypernetwork's sizes (frozen, hashable); ``d_model`` is the LM's embedding width, the output.

    ``hidden``/``n_layers``/``n_heads``/``d_ff`` size the encoder, ``maxlen`` is the longest
    decomposition read. ``separate_out`` adds a second output head for untied LMs,
    ``predict_bias`` a per-token logit bias; ``residual`` predicts a correction added to the
    mean of the parts' embeddings (FVT) with a zero-initialised last layer (tokjax's deviation,
    see :mod:`tokjax.tokenizers.zett`).
    """

    d_model: int
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    maxlen: int = 6
    separate_out: bool = False
    predict_bias: bool = False
    residual: bool = True

    def __post_init__(self):
        for name in ("d_model", "hidden", "n_layers", "n_heads", "d_ff", "maxlen"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HypernetConfig.{name} must be a positive int, got {v!r}")
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by n_heads={self.n_heads}")

    @property
    def encoder(self) -> ModelConfig:
        """The encoder as a tokjax ModelConfig (run by the shared ``forward``; ``vocab_size`` is unused)."""
        return ModelConfig(
            vocab_size=1, d_model=self.hidden, n_layers=self.n_layers, n_heads=self.n_heads, d_ff=self.d_ff,
            norm="layer", positions="learned", activation="gelu", bias=True, qkv_bias=True,
            max_len=self.maxlen, init_scale=1.0 / math.sqrt(self.hidden),
        )


@struct.dataclass
class Hypernet:
    """A ZeTT hypernetwork: its parameter pytree with its static :class:`HypernetConfig`.

    ``params``: ``in_dense``/``in_block`` (input projection), ``encoder`` (tokjax model params
    without ``embed``), ``out_block``/``out_dense`` (input-embedding head) and optionally
    ``out_block2``/``out_dense2`` (output embeddings) and ``bias_dense`` (logit bias).
    """

    params: dict
    cfg: HypernetConfig = struct.field(pytree_node=False)


def _dense(key, n_in, n_out, scale=None):
    scale = 1.0 / math.sqrt(n_in) if scale is None else scale
    return {"w": scale * jax.random.normal(key, (n_in, n_out), jnp.float32), "b": jnp.zeros((n_out,), jnp.float32)}


def _ln(n):
    return {"scale": jnp.ones((n,), jnp.float32), "bias": jnp.zeros((n,), jnp.float32)}


def _projector(key, dim, inner):
    k1, k2 = jax.random.split(key)
    return {"dense1": _dense(k1, dim, inner), "dense2": _dense(k2, inner, dim), "ln": _ln(dim)}


def init_hypernet(cfg: HypernetConfig, key: jax.Array) -> Hypernet:
    """Returns a freshly initialised hypernetwork for ``cfg``."""
    if not isinstance(cfg, HypernetConfig):
        raise ValueError(f"init_hypernet needs a HypernetConfig, got {type(cfg).__name__}")
    ks = iter(jax.random.split(key, 8))
    H, F = cfg.hidden, cfg.d_ff
    encoder = init_params(cfg.encoder, next(ks))
    del encoder["embed"]  # the encoder reads Inputs(embeds=...) only
    params = {
        "in_dense": _dense(next(ks), cfg.d_model, H),
        "in_block": _projector(next(ks), H, F),
        "encoder": encoder,
        "out_block": _projector(next(ks), H, F),
        "out_dense": _dense(next(ks), H, cfg.d_model, scale=0.0 if cfg.residual else None),
    }
    if cfg.separate_out:
        params["out_block2"] = _projector(next(ks), H, F)
        params["out_dense2"] = _dense(next(ks), H, cfg.d_model)
    if cfg.predict_bias:
        params["bias_dense"] = _dense(next(ks), H, 1)
    return Hypernet(params=params, cfg=cfg)


def _apply_dense(p, x):
    return x @ p["w"] + p["b"]


def _layer_norm(p, x, eps=1e-5):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _apply_projector(p, x):
    h = jax.nn.gelu(_apply_dense(p["dense2"], jax.nn.gelu(_apply_dense(p["dense1"], x))))
    return _layer_norm(p["ln"], h + x)


def hypernet_embeddings(
    hypernet: Hypernet, source_embeddings: jax.Array, ids: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Returns (e_in [N, D], e_out [N, D] or None, bias [N] or None) predicted from decompositions ``ids`` [N, L].

    ``ids`` are old token ids (-1 = padding past ``lengths``); ``source_embeddings`` [V_old, D] is
    the frozen old embedding table. Rows of length 0 read a single position (their output is
    meaningless; :func:`tokjax.tokenizers.zett.transfer` replaces them). Pure and jit-compatible.
    """
    p, cfg = hypernet.params, hypernet.cfg
    if ids.ndim != 2 or ids.shape[1] != cfg.maxlen:
        raise ValueError(f"ids must be [N, maxlen={cfg.maxlen}], got {ids.shape}")
    if source_embeddings.ndim != 2 or source_embeddings.shape[1] != cfg.d_model:
        raise ValueError(f"source_embeddings must be [V_old, d_model={cfg.d_model}], got {source_embeddings.shape}")
    valid = jnp.arange(cfg.maxlen)[None, :] < jnp.maximum(lengths, 1)[:, None]
    src = jnp.take(source_embeddings.astype(jnp.float32), jnp.clip(ids, 0, source_embeddings.shape[0] - 1), axis=0)
    x = _apply_projector(p["in_block"], _apply_dense(p["in_dense"], src))
    # padding is its own segment: real slots never attend to it (positions come from the encoder's table)
    inputs = Inputs(embeds=x, segment_ids=valid.astype(jnp.int32))
    pooled = forward(p["encoder"], cfg.encoder, inputs, mask=Bidirectional(), compute_logits=False).hidden[:, 0]
    e_in = _apply_dense(p["out_dense"], _apply_projector(p["out_block"], pooled))
    if cfg.residual:  # tokjax deviation: predict a correction to the mean of the parts (FVT)
        e_in = e_in + mean_of_parts(source_embeddings, ids, lengths).astype(jnp.float32)
    e_out = _apply_dense(p["out_dense2"], _apply_projector(p["out_block2"], pooled)) if cfg.separate_out else None
    bias = _apply_dense(p["bias_dense"], pooled)[:, 0] if cfg.predict_bias else None
    return e_in, e_out, bias
