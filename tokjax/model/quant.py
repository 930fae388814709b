"""Weight-only int8 for memory-bound decoding: symmetric int8 weights with per-block scales, f32 activations.

A decode step streams every weight once per token, so int8 weights (a quarter of f32's bytes) can
decode faster. Each projection matrix W (inputs ``in_shape``, outputs ``out_shape``, flattened to
[K, N]) is stored as

    q[n, k] = round(W[k, n] / s[n, b(k)]),   s[n, b] = max_{k in block b} |W[k, n]| / 127,   q in [-127, 127]

with blocks of ``block`` = 32 consecutive inputs, as GGUF's Q8_0 (``block=None``: one scale per output
channel). :class:`Int8Weight` keeps the output-major [N, K] layout; a tied embedding [V, D] is already
in it, so the same int8 table serves the embedding lookup and the output head. A projection computes

    y[m, n] = sum_k x[m, k] q[n, k] s[n, b(k)]        (f32 accumulation)

How the product runs is chosen per platform at lowering (``lax.platform_dependent``): on CPU, for up
to :data:`KERNEL_MAX_ROWS` activation rows, an XLA FFI custom call (``_kernels/int8_matmul.cc``,
compiled with g++ on first use into the tokjax cache) that widens each int8 weight row in registers,
because XLA's CPU backend materialises ``q.astype(f32)`` as a full f32 matrix (6x *slower* than f32
weights, ``benchmarks/int8_matvec.py``); elsewhere, and for prefill-sized inputs,
``(x @ q.astype(f32).T) * s``, which GPU/TPU compilers fuse into the dot. The kernel is register-blocked
for AVX-512 and for AVX2 + FMA; without a compiler, on a CPU with neither, or with
``TOKJAX_INT8_KERNEL=0``, CPU uses the XLA path too (correct, slow: int8 weights then decode slower than
float32).

The int8 form is a decode-time layout, like ``unstack_layers(fuse=True)``: ``forward``, ``generate``
and ``token_stats`` read it; training, sharding rules, checkpoints and ``save_hf`` expect floats.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model._ffi import kernel_available
from tokjax.model.row_weights import LAYER_WEIGHTS

__all__ = ["Int8Weight", "KERNEL_MAX_ROWS", "int8_embed", "int8_kernel_available", "int8_matmul", "quantize_int8",
           "quantize_weight"]

# Above this many activation rows (prefill) one dequantised f32 matrix and XLA's blocked matmul
# beat re-streaming the int8 weights for every 4 rows.
KERNEL_MAX_ROWS = 16
_TARGET = "tokjax_int8_matmul"


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Int8Weight:
    """A projection's int8 weights ``q`` [N, K] and scales ``scale`` [N, K // block] (f32; block = K: one per
    output channel); the float weight it stands for has shape ``in_shape + out_shape`` (K = prod(in_shape),
    N = prod(out_shape))."""

    q: Any
    scale: Any
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def tree_flatten(self):
        return (self.q, self.scale), (self.in_shape, self.out_shape)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.in_shape + self.out_shape

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The float weight [*in_shape, *out_shape] the int8 values stand for."""
        return _dequantize_rows(self.q, self.scale).T.reshape(self.shape).astype(dtype)


def _dequantize_rows(q, scale) -> jax.Array:
    """[N, K] f32 from int8 rows and their block scales [N, nb]."""
    n, k = q.shape
    nb = scale.shape[-1]
    return (q.astype(jnp.float32).reshape(n, nb, k // nb) * scale[..., None]).reshape(n, k)


def quantize_weight(w: Any, n_in: int = 1, block: int | None = 32) -> Int8Weight:
    """Quantizes a float weight whose first ``n_in`` axes are inputs (contracted) to :class:`Int8Weight`,
    one scale per ``block`` consecutive inputs of each output (None, or a block that does not divide K into
    multiples of 16: one scale per output)."""
    w = jnp.asarray(w)
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"quantize_weight: expected a floating-point weight, got dtype {w.dtype}")
    if not 1 <= n_in < w.ndim:
        raise ValueError(f"quantize_weight: n_in={n_in} must leave at least one output axis of shape {w.shape}")
    in_shape, out_shape = tuple(w.shape[:n_in]), tuple(w.shape[n_in:])
    wt = w.astype(jnp.float32).reshape(int(np.prod(in_shape)), int(np.prod(out_shape))).T  # [N, K]
    return _quantize_rows(wt, in_shape, out_shape, block)


def _quantize_rows(wt: jax.Array, in_shape, out_shape, block: int | None) -> Int8Weight:
    n, k = wt.shape
    if block is not None and (not isinstance(block, int) or block < 16 or block % 16):
        raise ValueError(f"quantize: block must be None or a multiple of 16 (e.g. 32, as GGUF Q8_0), got {block!r}")
    bs = block if block is not None and k % block == 0 and k > 0 else max(k, 1)
    blocks = wt.reshape(n, -1, bs) if k else wt.reshape(n, 1, 0)
    amax = jnp.max(jnp.abs(blocks), axis=2, initial=0.0)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)  # an all-zero block stays zero, with no 0/0
    q = jnp.clip(jnp.round(blocks / scale[..., None]), -127, 127).astype(jnp.int8).reshape(n, k)
    return Int8Weight(q, scale.astype(jnp.float32), tuple(in_shape), tuple(out_shape))


def _quantize_layer(p: dict, block) -> dict:
    return {k: quantize_weight(v, LAYER_WEIGHTS[k], block) if k in LAYER_WEIGHTS and not isinstance(v, Int8Weight)
            else v for k, v in p.items()}


def quantize_int8(model_or_params: Any, cfg: Any = None, *, block: int | None = 32):
    """Returns the model (or params) with every projection and the output head in int8 (``block``: inputs
    per scale, 32 as GGUF Q8_0; None: one scale per output channel).

    Layers are unstacked and q/k/v, gate/up fused first (the decode layout of ``generate``); the
    embedding [V, D] becomes an :class:`Int8Weight` when it is also the (tied) head, else ``lm_head``
    is quantized and the embedding kept. Norms, biases and position tables stay float.
    """
    from tokjax.model.forward import Model, unstack_layers  # forward imports this module

    if isinstance(model_or_params, Model):
        m = model_or_params
        return dataclasses.replace(m, params=quantize_int8(m.params, m.cfg, block=block))
    if cfg is None:
        raise ValueError("quantize_int8(params, cfg): params alone need their ModelConfig")
    if cfg.mixer == "mamba":
        raise ValueError("quantize_int8: mixer='mamba' layers are not supported (attention layers only)")
    params = unstack_layers(model_or_params, fuse=True)
    out = {**params, "layers": tuple(_quantize_layer(p, block) for p in params["layers"])}
    if cfg.tied_embeddings:
        e = params["embed"]
        if not isinstance(e, Int8Weight):
            out["embed"] = _quantize_rows(jnp.asarray(e, jnp.float32), (e.shape[1],), (e.shape[0],), block)
    elif not isinstance(params["lm_head"], Int8Weight):
        out["lm_head"] = quantize_weight(params["lm_head"], 1, block)
    return out


def int8_embed(table: Int8Weight, tokens: jax.Array) -> jax.Array:
    """Rows of an int8 embedding table [V, D] (stored as the head's [N=V, K=D]) as f32 [..., D]."""
    return _dequantize_rows(jnp.take(table.q, tokens.reshape(-1), axis=0),
                            jnp.take(table.scale, tokens.reshape(-1), axis=0)).reshape(tokens.shape + table.in_shape)


def int8_matmul(x: jax.Array, w: Int8Weight) -> jax.Array:
    """Contracts the trailing ``w.in_shape`` axes of ``x`` with ``w``: [..., *in_shape] -> [..., *out_shape]
    in x's dtype (f32 accumulation)."""
    k_axes = len(w.in_shape)
    if tuple(x.shape[x.ndim - k_axes:]) != w.in_shape:
        raise ValueError(f"int8_matmul: input trailing shape {tuple(x.shape[x.ndim - k_axes:])} does not match the "
                         f"weight's input shape {w.in_shape}")
    lead = x.shape[:x.ndim - k_axes]
    m = int(np.prod(lead)) if lead else 1
    x2 = x.reshape(m, int(np.prod(w.in_shape))).astype(jnp.float32)
    if m <= KERNEL_MAX_ROWS and int8_kernel_available():
        y = jax.lax.platform_dependent(x2, w.q, w.scale, cpu=_kernel_matmul, default=_xla_matmul)
    else:
        y = _xla_matmul(x2, w.q, w.scale)
    return y.reshape(lead + w.out_shape).astype(x.dtype)


def _xla_matmul(x2, q, scale):
    return jnp.einsum("mk,nk->mn", x2, _dequantize_rows(q, scale), preferred_element_type=jnp.float32)


def _kernel_matmul(x2, q, scale):
    out = jax.ShapeDtypeStruct((x2.shape[0], q.shape[0]), jnp.float32)
    return jax.ffi.ffi_call(_TARGET, out)(x2, q, scale)


@functools.cache
def int8_kernel_available() -> bool:
    """Whether the CPU int8 kernel is built, tuned for this CPU (AVX-512 or AVX2 + FMA) and registered (compiling
    it on first call). ``TOKJAX_INT8_KERNEL``: "0" never, "force" also where untuned (tests)."""
    return kernel_available("TOKJAX_INT8_KERNEL", "int8_matmul.cc", {_TARGET: "TokjaxInt8Matmul"},
                            "int8 weights use the slower XLA path")
