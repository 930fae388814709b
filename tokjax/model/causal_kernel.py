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

It runs where the cache-free causal forward runs (prefill, ``token_stats`` scoring, training) on CPUs with
AVX-512 or AVX2 for float32 inputs with head size a multiple of 16 and no packed-document segments; elsewhere
(GPU/TPU by ``lax.platform_dependent``, other dtypes, no compiler, ``TOKJAX_ATTENTION_KERNEL=0``, CPUs with
neither) the query-block path runs. The register blocking depends on the build: with AVX-512 6 query rows x 4
vectors of 16 floats (24 of its 32 registers), with AVX2 3 rows x 4 vectors of 8 (12 of 16). The AVX-512
blocking built for an AVX2 EPYC spilled and ran 3-8x slower than the query blocks (forward, 2 cores: 244
against 44 ms for one SmolLM2 layer at 1024 tokens), which is why the width is chosen per build and why a
build for any other instruction set counts as untuned (:func:`causal_kernel_available` False;
``TOKJAX_ATTENTION_KERNEL=force`` runs it anyway, as its tests do).

Reverse mode has a kernel of its own (``TokjaxCausalAttentionGrad``): per tile of query rows it recomputes the
weights and forms dq, and adds the tile's share of dk and dv,

    ds[t, s] = p[t, s] (do[t] . v[s] - sum_s' p[t, s'] do[t] . v[s']),   dq[t] = sum_s ds[t, s] k[s] / sqrt(D),
    dk[s] = sum_t ds[t, s] q[t] / sqrt(D),   dv[s] = sum_t p[t, s] do[t],

so a layer's backward pass keeps q, k, v instead of the query blocks' [T, T] weights. In the ``small`` preset's
training step (8 x 511 tokens, 8/4 heads x 32) one layer's attention forward + backward went from 123.9 ms (the
differentiated query blocks) to 30.6 ms (``benchmarks/attention_grad.py``: torch's SDPA took 78.9 ms). :func:`causal_attend_kernel` is a ``custom_vjp``: ``jax.jvp`` through it raises JAX's
forward-mode TypeError (``TOKJAX_ATTENTION_KERNEL=0`` gives the query-block path, which has forward mode);
``vmap`` of its gradient, gradients of its gradient and Hessian-vector products work (they differentiate the
query-block path). Tests: ``tests/model/test_causal_kernel.py``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.model._ffi import kernel_available

__all__ = ["causal_attend_kernel", "causal_attend_vjp", "causal_kernel_applies", "causal_kernel_available"]

_TARGET = "tokjax_causal_attention"
_GRAD_TARGET = "tokjax_causal_attention_grad"
_KEY_PAD = 64  # the kernel reads keys in blocks of 64


@functools.cache
def causal_kernel_available() -> bool:
    """Whether the CPU causal-attention kernel is built, tuned for this CPU (AVX-512 or AVX2) and registered
    (compiling it on first call)."""
    targets = {_TARGET: "TokjaxCausalAttention", _GRAD_TARGET: "TokjaxCausalAttentionGrad"}
    return kernel_available("TOKJAX_ATTENTION_KERNEL", "causal_attention.cc", targets,
                            "causal attention uses the XLA query-block path")


def causal_kernel_applies(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether :func:`causal_attend_kernel` takes these operands (float32, head size a multiple of 16,
    query heads a multiple of key heads) and the kernel is available."""
    hd = q.shape[-1]
    return (q.dtype == k.dtype == v.dtype == jnp.float32 and hd % 16 == 0 and hd > 0
            and q.shape[2] % k.shape[2] == 0 and causal_kernel_available())


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def causal_attend_kernel(q: jax.Array, k: jax.Array, v: jax.Array, fallback: Callable) -> jax.Array:
    """Causal attention of q [B,T,H,hd] over k, v [B,T,KV,hd]: the CPU kernel on CPU, ``fallback(q, k, v)``
    (the same function computed another way) on other platforms.

    Reverse mode saves q, k, v only and runs :func:`causal_attend_vjp` (the backward kernel on CPU), never
    storing the [T, T] weights. Forward mode (``jax.jvp``) of this function raises JAX's TypeError for custom_vjp
    functions: set ``TOKJAX_ATTENTION_KERNEL=0`` for the query-block path, which supports it. Derivatives of the
    backward pass (reverse over reverse, forward over reverse) work: they differentiate ``fallback``."""
    return _forward(q, k, v, fallback)


def _fwd(q, k, v, fallback):
    return _forward(q, k, v, fallback), (q, k, v)


def _bwd(fallback, res, d_out):
    return causal_attend_vjp(*res, d_out, fallback)


causal_attend_kernel.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _forward(q, k, v, fallback):
    return jax.lax.platform_dependent(q, k, v, cpu=_kernel, default=fallback)


@_forward.defjvp
def _forward_jvp(fallback, primals, tangents):
    # Only reached by a derivative of the backward pass (the saved forward is differentiated there).
    return jax.jvp(fallback, primals, tangents)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def causal_attend_vjp(q: jax.Array, k: jax.Array, v: jax.Array, d_out: jax.Array, fallback: Callable):
    """Returns (dq, dk, dv): the vector-Jacobian product of causal attention with the cotangent ``d_out``
    [B, T, H, hd], by the CPU kernel on CPU and by differentiating ``fallback`` elsewhere (and under a further
    derivative, so second derivatives still work)."""
    return jax.lax.platform_dependent(q, k, v, d_out, cpu=_kernel_vjp,
                                      default=functools.partial(_fallback_vjp, fallback))


@causal_attend_vjp.defjvp
def _vjp_jvp(fallback, primals, tangents):
    return jax.jvp(functools.partial(_fallback_vjp, fallback), primals, tangents)


def _fallback_vjp(fallback, q, k, v, d_out):
    return jax.vjp(fallback, q, k, v)[1](d_out)


def _keys_transposed(k, T):
    """k [B, T, KV, hd] -> [B, KV, hd, Tp], zero-padded to Tp (a multiple of the kernel's key block)."""
    tp = -(-max(T, 1) // _KEY_PAD) * _KEY_PAD
    return jnp.pad(jnp.transpose(k, (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, tp - T)))


def _kernel(q, k, v):
    if not causal_kernel_available():
        raise RuntimeError("the tokjax CPU causal-attention kernel is unavailable: check causal_kernel_applies first")
    out = jax.ShapeDtypeStruct(q.shape, jnp.float32)
    # vmapped calls loop over the mapped axis: the kernel takes one [B, T, ...] batch.
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(q, _keys_transposed(k, q.shape[1]), v)


def _grad_chunks(B: int, KV: int, T: int) -> int:
    """Query-row chunks of the backward kernel: with fewer than 8 (batch row, key head) pairs the rows are split
    too, so the thread pool gets ~8 work items; each chunk adds a partial dk, dv that the caller sums."""
    return max(1, min(-(-8 // max(B * KV, 1)), T // 64, 8))


def _kernel_vjp(q, k, v, d_out):
    if not causal_kernel_available():
        raise RuntimeError("the tokjax CPU causal-attention kernel is unavailable: check causal_kernel_applies first")
    B, T, KV = k.shape[:3]
    C = _grad_chunks(B, KV, T)
    shapes = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((C,) + k.shape, jnp.float32),
              jax.ShapeDtypeStruct((C,) + v.shape, jnp.float32))
    dq, dk, dv = jax.ffi.ffi_call(_GRAD_TARGET, shapes, vmap_method="sequential")(
        q, _keys_transposed(k, T), k, _keys_transposed(v, T), d_out.astype(jnp.float32))
    return dq, dk.sum(0), dv.sum(0)
