"""Cut cross-entropy (P29): the LM cross-entropy from hidden states and the head, never forming [N, V] logits.

Paper: *Cut Your Losses in Large-Vocabulary Language Models* (Wijmans et al., ICLR 2025; official
code apple/ml-cross-entropy). For token i with hidden state h_i, head columns W_j and label y_i

    l_i = LSE_j( s(h_i . W_j + b_j) ) - s(h_i . W_{y_i} + b_{y_i}),     s(x) = c * tanh(x / c)   (P29, loss)
    dl_i / dz_ij = softmax(z_i)_j - 1[j = y_i]                                                  (P29, gradient)

This is an XLA version of the algorithm (no Triton/Pallas): a ``jax.custom_vjp`` whose forward
streams over vocabulary blocks of ``block_size`` columns with float32 online log-sum-exp
accumulators, keeping only per-token vectors, and whose backward recomputes each block's logits
and accumulates dh and dW block by block. Peak extra memory is O(N * block_size) instead of
O(N * V). The per-token cotangent is used in full, so per-token weights, ``reduction="none"`` and
any function of the returned ``logp`` / ``lse`` / ``entropy`` get exact gradients (the bug class of
Liger #968 / #678, where a fused kernel read the cotangent as a scalar).

Differences from the official kernel: no vocabulary sorting, and the optional gradient filter
(``filter_eps``, off by default = the ``cce_exact`` behaviour) zeroes softmax entries below eps
and skips a block's two backward matmuls when every entry of the block (all tokens) is filtered,
where the official Triton kernel skips [BLOCK_B, BLOCK_V] tiles. ``filter_eps="auto"`` is
``finfo(dtype).eps / 32`` as in ``cut_cross_entropy/utils.py::_handle_eps``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._cross_entropy import _flatten, _is_static_zero, assemble, validate

__all__ = ["DEFAULT_BLOCK_SIZE", "cut_cross_entropy", "head_stats"]

#: Vocabulary columns per block. At N=8192, D=512, V=131072 on a 2-core CPU, 1024, 2048 and 4096
#: took the same CPU time within noise (benchmarks/cross_entropy.py --sweep); temp memory is
#: N * block_size * 4 bytes, so smaller blocks save memory. Any value >= 1 is exact.
DEFAULT_BLOCK_SIZE = 2048

_F32 = jnp.float32


def _block_geometry(V: int, block_size: int) -> tuple[int, int, int]:
    """Returns (block size, number of full blocks, tail width): the block never exceeds V."""
    bs = min(int(block_size), V)
    return bs, V // bs, V % bs


def _logits(h, w_blk, b_blk, softcap, vd):
    """Returns float32 (softcapped) logits of one vocabulary block ([D, bs] block, or [bs, D] when ``vd``)."""
    z = jnp.einsum("nd,vd->nv" if vd else "nd,dv->nv", h, w_blk, preferred_element_type=_F32)
    if b_blk is not None:
        z = z + b_blk.astype(_F32)[None, :]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    return z


def _blocks(w, bias, bs, nfull, tail, vd):
    """Returns (read(i) -> (w_blk, b_blk) for full block i, (w_tail, b_tail) or None)."""
    axis = 0 if vd else 1

    def read(i):
        w_blk = jax.lax.dynamic_slice_in_dim(w, i * bs, bs, axis=axis)
        b_blk = None if bias is None else jax.lax.dynamic_slice_in_dim(bias, i * bs, bs)
        return w_blk, b_blk

    if not tail:
        return read, None
    lo = nfull * bs
    return read, (w[lo:] if vd else w[:, lo:], None if bias is None else bias[lo:])


def _target_logit(h, w, bias, labels, softcap, vd):
    """Returns (zy [N] float32 (softcapped) target logits, in_range [N] bool, W[:, y] as [N, D]).

    An indexed dot (P29's ``indexed_neg_dot``): only the N label columns of W are read.
    """
    V = w.shape[0 if vd else 1]
    in_range = (labels >= 0) & (labels < V)
    safe = jnp.where(in_range, labels, 0)
    wy = jnp.take(w, safe, axis=0) if vd else jnp.take(w, safe, axis=1).T  # [N, D]
    zy = jnp.einsum("nd,nd->n", h, wy, preferred_element_type=_F32)
    if bias is not None:
        zy = zy + jnp.take(bias, safe).astype(_F32)
    if softcap is not None:
        zy = softcap * jnp.tanh(zy / softcap)
    return jnp.where(in_range, zy, 0.0), in_range, wy


def _forward(h, w, bias, labels, bs, softcap, want, vd):
    want_zsum, want_entropy, want_argmax = want
    N = h.shape[0]
    V = w.shape[0 if vd else 1]
    bs, nfull, tail = _block_geometry(V, bs)
    read, tail_blk = _blocks(w, bias, bs, nfull, tail, vd)
    carry = {"m": jnp.full((N,), -jnp.inf, _F32), "s": jnp.zeros((N,), _F32)}
    if want_zsum:
        carry["zsum"] = jnp.zeros((N,), _F32)
    if want_entropy:
        carry["t"] = jnp.zeros((N,), _F32)
    if want_argmax:
        carry["best"] = jnp.full((N,), -jnp.inf, _F32)
        carry["arg"] = jnp.zeros((N,), jnp.int32)

    def step(c, z, start):
        bmax = jnp.max(z, axis=1)
        m_new = jnp.maximum(c["m"], bmax)
        e = jnp.exp(z - m_new[:, None])
        scale = jnp.exp(c["m"] - m_new)
        out = dict(c)
        out["m"] = m_new
        out["s"] = c["s"] * scale + jnp.sum(e, axis=1)
        if want_zsum:
            out["zsum"] = c["zsum"] + jnp.sum(z, axis=1)
        if want_entropy:
            out["t"] = c["t"] * scale + jnp.sum(e * z, axis=1)
        if want_argmax:
            barg = jnp.argmax(z, axis=1).astype(jnp.int32)
            better = bmax > c["best"]
            out["best"] = jnp.where(better, bmax, c["best"])
            out["arg"] = jnp.where(better, start + barg, c["arg"])
        return out

    def body(i, c):
        w_blk, b_blk = read(i)
        return step(c, _logits(h, w_blk, b_blk, softcap, vd), i * bs)

    c = jax.lax.fori_loop(0, nfull, body, carry)
    if tail_blk is not None:
        c = step(c, _logits(h, *tail_blk, softcap, vd), nfull * bs)
    lse = c["m"] + jnp.log(c["s"])
    zy, _, _ = _target_logit(h, w, bias, labels, softcap, vd)
    out = {"lse": lse, "zy": zy}
    ez = None
    if want_zsum:
        out["zsum"] = c["zsum"]
    if want_entropy:
        ez = c["t"] / c["s"]
        out["entropy"] = lse - ez
    if want_argmax:
        out["argmax"] = c["arg"]
    return out, ez


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _cce_core(h, w, bias, labels, bs, softcap, filter_eps, want, vd):
    out, _ = _forward(h, w, bias, labels, bs, softcap, want, vd)
    return out


def _cce_fwd(h, w, bias, labels, bs, softcap, filter_eps, want, vd):
    out, ez = _forward(h, w, bias, labels, bs, softcap, want, vd)
    return out, (h, w, bias, labels, out["lse"], ez)


def _cce_bwd(bs, softcap, filter_eps, want, vd, res, g):
    h, w, bias, labels, lse, ez = res
    want_zsum, want_entropy, _ = want
    N, D = h.shape
    V = w.shape[0 if vd else 1]
    vaxis = 0 if vd else 1
    bs, nfull, tail = _block_geometry(V, bs)
    read, tail_blk = _blocks(w, bias, bs, nfull, tail, vd)
    cdt = jnp.result_type(h.dtype, w.dtype)
    g_lse = g["lse"].astype(_F32)[:, None]
    g_zsum = g["zsum"].astype(_F32)[:, None] if want_zsum else None
    g_ent = g["entropy"].astype(_F32)[:, None] if want_entropy else None
    lse_c = lse[:, None]
    ez_c = None if ez is None else ez[:, None]

    def grad_block(z):
        """Returns dL/dz (pre-softcap) for one block, without the target term, and the filter flag."""
        p = jnp.exp(z - lse_c)
        active = None
        if filter_eps is not None:
            keep = p >= filter_eps
            p = jnp.where(keep, p, 0.0)
            active = jnp.any(keep) | jnp.asarray(want_zsum)
        dz = g_lse * p
        if want_zsum:
            dz = dz + g_zsum
        if want_entropy:
            dz = dz - g_ent * p * (z - ez_c)
        if softcap is not None:
            dz = dz * (1.0 - jnp.square(z / softcap))
        return dz, active

    def contrib(dz, w_blk):
        dzc = dz.astype(cdt)
        dh = jnp.einsum("nv,vd->nd" if vd else "nv,dv->nd", dzc, w_blk, preferred_element_type=_F32)
        dw = jnp.einsum("nd,nv->vd" if vd else "nd,nv->dv", h, dzc, preferred_element_type=_F32)
        db = None if bias is None else jnp.sum(dz, axis=0)
        return dh, dw, db

    carry = {"dh": jnp.zeros((N, D), _F32), "dw": jnp.zeros(w.shape, _F32)}
    if bias is not None:
        carry["db"] = jnp.zeros((V,), _F32)

    def write(c, dh, dw, db, start):
        out = dict(c)
        out["dh"] = c["dh"] + dh
        out["dw"] = jax.lax.dynamic_update_slice_in_dim(c["dw"], dw, start, axis=vaxis)
        if bias is not None:
            out["db"] = jax.lax.dynamic_update_slice_in_dim(c["db"], db, start, axis=0)
        return out

    def body(i, c):
        w_blk, b_blk = read(i)
        dz, active = grad_block(_logits(h, w_blk, b_blk, softcap, vd))
        if active is None:
            return write(c, *contrib(dz, w_blk), i * bs)
        # Filtered block: its dW columns stay zero, dh gets nothing.
        return jax.lax.cond(active, lambda c: write(c, *contrib(dz, w_blk), i * bs), lambda c: c, c)

    c = jax.lax.fori_loop(0, nfull, body, carry)
    if tail_blk is not None:
        w_t, b_t = tail_blk
        dz, _ = grad_block(_logits(h, w_t, b_t, softcap, vd))
        c = write(c, *contrib(dz, w_t), nfull * bs)

    # The target term dL/dz_{i, y_i} += g_zy_i, applied with the N label columns only.
    zy, in_range, wy = _target_logit(h, w, bias, labels, softcap, vd)
    gy = jnp.where(in_range, g["zy"].astype(_F32), 0.0)
    if softcap is not None:
        gy = gy * (1.0 - jnp.square(zy / softcap))
    dh = c["dh"] + gy[:, None] * wy.astype(_F32)
    safe = jnp.where(in_range, labels, 0)
    row = gy[:, None] * h.astype(_F32)
    dw = c["dw"].at[safe].add(row) if vd else c["dw"].at[:, safe].add(row.T)
    db = None if bias is None else c["db"].at[safe].add(gy).astype(bias.dtype)
    dlabels = np.zeros(labels.shape, dtype=jax.dtypes.float0)
    return dh.astype(h.dtype), dw.astype(w.dtype), db, dlabels


_cce_core.defvjp(_cce_fwd, _cce_bwd)


def _resolve_eps(filter_eps, dtype) -> float | None:
    if filter_eps is None:
        return None
    if filter_eps == "auto":
        return float(jnp.finfo(dtype).eps) / 32.0
    return float(filter_eps)


def head_stats(
    hidden: jax.Array,
    lm_head: jax.Array,
    labels: jax.Array,
    *,
    bias: jax.Array | None = None,
    softcap: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    filter_eps: float | str | None = None,
    want: tuple[str, ...] = (),
    head_layout: str = "dv",
) -> dict[str, jax.Array]:
    """Returns flat [N] per-token head quantities ``lse``, ``zy`` (target logit) and any of ``zsum``,
    ``entropy``, ``argmax`` from one vocabulary-streaming pass (the two terms of the P29 loss); differentiable.

    ``hidden`` is [N, D] and ``labels`` [N] (any label outside [0, V) gets ``zy = 0``). ``lm_head``
    is [D, V], or [V, D] with ``head_layout="vd"``: a tied embedding is passed as it is stored,
    because ``embed.T`` would materialise a transposed [D, V] copy (plus its gradient) per step.
    This is the unchecked kernel under :func:`cut_cross_entropy`; most users want that function.
    """
    if head_layout not in ("dv", "vd"):
        raise ValueError(f"head_layout must be 'dv' ([D, V]) or 'vd' ([V, D]), got {head_layout!r}")
    vd = head_layout == "vd"
    V = lm_head.shape[0 if vd else 1]
    bs, _, _ = _block_geometry(V, block_size)
    flags = ("zsum" in want, "entropy" in want, "argmax" in want)
    eps = _resolve_eps(filter_eps, jnp.result_type(hidden.dtype, lm_head.dtype))
    cap = None if softcap is None else float(softcap)
    return _cce_core(hidden, lm_head, bias, labels.astype(jnp.int32), bs, cap, eps, flags, vd)


def cut_cross_entropy(
    hidden: jax.Array,
    lm_head: jax.Array,
    labels: jax.Array,
    *,
    weights: jax.Array | None = None,
    bias: jax.Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    return_stats: tuple[str, ...] = (),
    block_size: int = DEFAULT_BLOCK_SIZE,
    filter_eps: float | str | None = None,
) -> Any:
    """Returns the cross-entropy of ``hidden @ lm_head`` against ``labels`` without materialising the
    [N, V] logits; with ``return_stats``, ``(loss, {name: [...] array})`` from the same pass.

    P29: ``l_i = LSE_j(s(h_i . W_j + b_j)) - s(h_i . W_{y_i} + b_{y_i})``, ``s(x) = c tanh(x/c)``;
    its gradient ``softmax - onehot`` is recomputed block by block in the backward.
    Same arguments and results as :func:`tokjax.losses.cross_entropy` (see there: ``weights``,
    ``ignore_index``, ``reduction``, ``label_smoothing``, ``z_loss``, ``return_stats``), plus
    ``block_size`` (vocabulary columns per streamed block; the last block may be partial) and
    ``filter_eps`` (None = exact, the default; a float or ``"auto"`` = ``finfo(dtype).eps / 32``
    drops softmax entries below it from the backward and skips fully filtered blocks; only safe
    for peaked, trained distributions). Accumulation is float32 whatever the input dtype;
    gradients come back in the inputs' dtypes.
    """
    return_stats = validate(
        hidden, lm_head, labels, weights=weights, bias=bias, ignore_index=ignore_index, reduction=reduction,
        softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss, return_stats=return_stats,
        block_size=block_size, filter_eps=filter_eps,
    )
    labels = jnp.asarray(labels)
    lm_head = jnp.asarray(lm_head)
    h, flat = _flatten(hidden, labels)
    want = tuple(n for n, on in (("zsum", not _is_static_zero(label_smoothing)),
                                 ("entropy", "entropy" in return_stats),
                                 ("argmax", "argmax" in return_stats)) if on)
    core = head_stats(
        h, lm_head, flat, bias=None if bias is None else jnp.asarray(bias), softcap=softcap,
        block_size=block_size, filter_eps=filter_eps, want=want,
    )
    return assemble(
        core, labels, V=lm_head.shape[1], weights=weights, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, z_loss=z_loss, return_stats=return_stats,
    )
