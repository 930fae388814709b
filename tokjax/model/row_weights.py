"""Float32 decode-time weights stored output-major, and the small-M CPU matmul that reads them.

A decode step multiplies B activation rows (B = batch, usually <= 16) by every weight once, so its
time is the time to stream the weights. XLA CPU's matmul streams a [K, N] weight at 12-15 GB/s for
2-32 rows against 22-25 GB/s for one row, so batch 8 cost ~2x batch 1 (README). A projection W
[*in_shape, *out_shape] (flattened to [K, N]) is stored here as its transpose ``rows`` [N, K], so
each output's weights are contiguous, and

    y[m, n] = sum_k x[m, k] rows[n, k]

runs, for 2 to :data:`KERNEL_MAX_ROWS` rows on CPU, as an XLA FFI custom call
(``_kernels/f32_matmul.cc``, compiled with g++ on first use) that reads each weight row once for
up to 6 activation rows in registers with AVX-512, 3 with AVX2 + FMA (``benchmarks/small_matmul.py``, SmolLM2's
matrices: 1.55-1.62x XLA's dot at 8 rows and 1.24-1.42x at 16 on an AVX-512 EPYC; 2.1-3.2x at 2-8 rows
and 1.4-2.5x at 16 on an AVX2 one); elsewhere (one row, where XLA's matvec streams as fast; GPU/TPU;
larger inputs such as prefill; no compiler; a CPU with neither instruction set, where the kernel's
plain loops are slower than XLA; ``TOKJAX_F32_KERNEL=0``) as XLA's dot
with the transposed operand, the same product. The custom
path is chosen per platform at lowering (``lax.platform_dependent``), so the same params run
unchanged on any backend.

:func:`row_layout` is a decode-time layout (``generate`` builds it once per model on CPU, like
``unstack_layers(fuse=True)``): ``forward``, ``generate`` and ``token_stats`` read it; training,
sharding rules, checkpoints and ``save_hf`` expect the plain arrays. The kernel has no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model._ffi import kernel_available

__all__ = ["KERNEL_MAX_ROWS", "RowWeight", "f32_kernel_available", "row_layout", "row_matmul", "to_rows"]

# Above this many activation rows (prefill) XLA's blocked matmul, which reuses each weight tile for
# many rows, beats re-streaming the weights for every 6 rows.
KERNEL_MAX_ROWS = 16
_TARGET = "tokjax_f32_matmul"
# The projections forward() reads from a layer dict, with how many leading axes are inputs.
LAYER_WEIGHTS = {"wq": 1, "wk": 1, "wv": 1, "wqkv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_gate_up": 1,
                 "w_down": 1}


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class RowWeight:
    """A float weight of shape ``in_shape + out_shape`` stored as ``rows`` [N, K] (N = prod(out_shape),
    K = prod(in_shape)): each output's weights contiguous."""

    rows: Any
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def tree_flatten(self):
        return (self.rows,), (self.in_shape, self.out_shape)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.in_shape + self.out_shape

    @property
    def dtype(self):
        return self.rows.dtype

    def dense(self) -> jax.Array:
        """The weight in its stored-params layout [*in_shape, *out_shape]."""
        return self.rows.T.reshape(self.shape)


def to_rows(w: Any, n_in: int = 1) -> RowWeight:
    """The :class:`RowWeight` of a float weight whose first ``n_in`` axes are inputs (a transposed copy)."""
    w = jnp.asarray(w)
    if not 1 <= n_in < w.ndim:
        raise ValueError(f"to_rows: n_in={n_in} must leave at least one output axis of shape {w.shape}")
    in_shape, out_shape = tuple(w.shape[:n_in]), tuple(w.shape[n_in:])
    return RowWeight(w.reshape(int(np.prod(in_shape)), int(np.prod(out_shape))).T, in_shape, out_shape)


def row_matmul(x: jax.Array, w: RowWeight) -> jax.Array:
    """Contracts the trailing ``w.in_shape`` axes of ``x`` with ``w``: [..., *in_shape] -> [..., *out_shape]."""
    k_axes = len(w.in_shape)
    if tuple(x.shape[x.ndim - k_axes:]) != w.in_shape:
        raise ValueError(f"row_matmul: input trailing shape {tuple(x.shape[x.ndim - k_axes:])} does not match the "
                         f"weight's input shape {w.in_shape}")
    lead = x.shape[:x.ndim - k_axes]
    m = int(np.prod(lead)) if lead else 1
    x2 = x.reshape(m, int(np.prod(w.in_shape)))
    rows = w.rows.astype(x.dtype)
    if 2 <= m <= KERNEL_MAX_ROWS and x2.dtype == jnp.float32 and f32_kernel_available():
        y = jax.lax.platform_dependent(x2, rows, cpu=_kernel_matmul, default=_xla_matmul)
    else:
        y = _xla_matmul(x2, rows)
    return y.reshape(lead + w.out_shape)


def _xla_matmul(x2, rows):
    return jnp.einsum("mk,nk->mn", x2, rows)


def _kernel_matmul(x2, rows):
    out = jax.ShapeDtypeStruct((x2.shape[0], rows.shape[0]), jnp.float32)
    # vmapped calls (e.g. a vmapped verifier) loop over the batch: the kernel takes 2-D operands.
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="sequential")(x2, rows)


@functools.cache
def f32_kernel_available() -> bool:
    """Whether the CPU float32 small-M kernel is built, tuned for this CPU (AVX-512 or AVX2 + FMA) and registered
    (compiling it on first call). ``TOKJAX_F32_KERNEL``: "0" never, "force" also where untuned (tests)."""
    return kernel_available("TOKJAX_F32_KERNEL", "f32_matmul.cc", {_TARGET: "TokjaxF32Matmul"},
                            "decoding uses XLA's dot")


def row_layout(params: dict, cfg: Any) -> dict:
    """Returns unstacked params (see ``unstack_layers``) with every float32 projection and the output head
    as :class:`RowWeight`; a tied embedding [V, D] is already output-major and is wrapped, not copied.
    Params with other dtypes (and int8 weights) are returned unchanged."""
    layers = params["layers"]
    if not isinstance(layers, (tuple, list)):
        raise ValueError("row_layout: expected unstacked params (tokjax.model.unstack_layers)")
    if cfg.mixer == "mamba" or cfg.pdtype != jnp.float32 or cfg.dtype != jnp.float32:
        return params
    out = {**params, "layers": _rows_jit(tuple(layers))}
    if cfg.tied_embeddings:
        e = params["embed"]
        if isinstance(e, jax.Array) and e.dtype == jnp.float32:
            out["embed"] = RowWeight(e, (e.shape[1],), (e.shape[0],))
    elif isinstance(params["lm_head"], jax.Array) and params["lm_head"].dtype == jnp.float32:
        out["lm_head"] = _head_rows(params["lm_head"])
    return out


@jax.jit
def _rows_jit(layers):
    return tuple({k: to_rows(v, LAYER_WEIGHTS[k]) if k in LAYER_WEIGHTS and isinstance(v, jax.Array)
                  and v.dtype == jnp.float32 else v for k, v in p.items()} for p in layers)


@jax.jit
def _head_rows(w):
    return to_rows(w, 1)
