"""Causal self-attention through a fused CPU kernel: scores, softmax and value product per query tile.

XLA CPU runs :func:`tokjax.model.attention.causal_attend`'s query blocks at ~58 GFLOP/s because
each block's [rows, keys] scores go through memory between the score matmul, three softmax
passes and the value matmul (timed alone at 4096 tokens, a SmolLM2 prefill's attention took 10.9 s
and its projections 4.7 s of an 11.3 s prefill: the pieces overlap on two cores). ``_kernels/causal_attention.cc`` (an XLA FFI custom call, compiled with g++ on first
use) computes

    o[b, t, h] = sum_{s <= t} softmax_s(q[b, t, h] . k[b, s, h // G] / sqrt(D)) v[b, s, h // G]

for 6 query rows of one head at a time with their scores in an L1/L2-resident buffer: the same
exact softmax (row max, exp, sum), summed in another order. Prefill against transformers and
against this kernel switched off: ``benchmarks/prefill.py``.

It runs where the cache-free causal forward runs (prefill, ``token_stats`` scoring) on CPU for
float32 inputs with head size a multiple of 16 and no packed-document segments; elsewhere (GPU/TPU
by ``lax.platform_dependent``, other dtypes, no compiler, ``TOKJAX_ATTENTION_KERNEL=0``) the
query-block path runs. Under differentiation (forward or reverse mode) the query-block path runs
too and is what gets differentiated (:func:`causal_attend_kernel` is a ``custom_jvp``), so
training's numbers and memory are unchanged.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.model._ffi import kernel_available

__all__ = ["causal_attend_kernel", "causal_kernel_applies", "causal_kernel_available"]

_TARGET = "tokjax_causal_attention"
_KEY_PAD = 64  # the kernel reads keys in blocks of 64


@functools.cache
def causal_kernel_available() -> bool:
    """Whether the CPU causal-attention kernel is built and registered (compiling it on first call)."""
    return kernel_available("TOKJAX_ATTENTION_KERNEL", "causal_attention.cc", {_TARGET: "TokjaxCausalAttention"},
                            "causal attention uses the XLA query-block path")


def causal_kernel_applies(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether :func:`causal_attend_kernel` takes these operands (float32, head size a multiple of 16,
    query heads a multiple of key heads) and the kernel is available."""
    hd = q.shape[-1]
    return (q.dtype == k.dtype == v.dtype == jnp.float32 and hd % 16 == 0 and hd > 0
            and q.shape[2] % k.shape[2] == 0 and causal_kernel_available())


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def causal_attend_kernel(q: jax.Array, k: jax.Array, v: jax.Array, fallback: Callable) -> jax.Array:
    """Causal attention of q [B,T,H,hd] over k, v [B,T,KV,hd]: the CPU kernel on CPU, ``fallback(q, k, v)``
    (the same function computed another way) on other platforms and under differentiation."""
    return jax.lax.platform_dependent(q, k, v, cpu=_kernel, default=fallback)


@causal_attend_kernel.defjvp
def _jvp(fallback, primals, tangents):
    # Forward and reverse mode both differentiate the fallback (reverse mode transposes this JVP).
    return jax.jvp(fallback, primals, tangents)


def _kernel(q, k, v):
    if not causal_kernel_available():
        raise RuntimeError("the tokjax CPU causal-attention kernel is unavailable: check causal_kernel_applies first")
    T = q.shape[1]
    tp = -(-max(T, 1) // _KEY_PAD) * _KEY_PAD
    kt = jnp.pad(jnp.transpose(k, (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, tp - T)))
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    # vmapped calls loop over the mapped axis: the kernel takes one [B, T, ...] batch.
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(q, kt, v)
