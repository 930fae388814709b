"""Mamba-1 selective state-space mixer: the ``mixer="mamba"`` layer type of the shared forward (P68).

Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"), one layer on the
normed residual stream h [B, T, D], with inner width E = ssm_expand * D, state size N = ssm_state, conv width
K = ssm_conv and step rank R = ceil(D / 16):

    x, z   = h W_in                                   (in_proj, [D, 2, E])
    x      = SiLU(causal_depthwise_conv_K(x) + b_conv)
    delta  = softplus(x W_dt W_dtproj + b_dt)          [B, T, E]   (input-dependent step, low rank R)
    B_t    = S_B x_t,  C_t = S_C x_t                   [B, T, N]   (x_proj = [W_dt | S_B^T | S_C^T])
    A      = -exp(A_log)                               [E, N]
    h_t    = exp(delta_t A) * h_{t-1} + delta_t x_t B_t   (per channel e: h_t[e] in R^N)
    y_t    = C_t . h_t + D * x_t
    out    = (y * SiLU(z)) W_out                        (out_proj, [E, D])

Training and prefill evaluate the linear recurrence h_t = a_t h_{t-1} + b_t with
``jax.lax.associative_scan`` over time (the pair operator (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2));
decoding keeps the recurrent state (the last K-1 conv inputs and h) in the KVCache
(:class:`tokjax.model.KVCache` fields ``conv`` and ``ssm``), so a decode step costs O(1) in the
sequence length. The state has no history: it cannot be rolled back, so strategies that write tokens
they may not commit (speculative decoding, token recycling, cautious trials) refuse a mamba model.

``ssm_sign`` (P68, Vo et al., ICLR 2025, "Demystifying the Token Dynamics of Deep Selective State Space
Models"): the official constrained x_proj (``Fsoft-AIC/Mamba-token-dynamic``, ``PosDefiniteMambav2`` /
``NegDefiniteMambav2``). Of x_proj's [E, R + 2N] weight, the dt columns stay free; P = the next N columns
(transposed, [N, E]) gives U = triu(P, 1) with a unit diagonal (unit upper-triangular, [N, E]); d = row 0 of
the last N columns gives D = softplus(d) + 0.7 > 0; then

    S_C = U,   S_B = +D U ("pos") or -D U ("neg"),   so   S_C^T S_B = +-U^T D U

is positive ("pos") or negative ("neg") semidefinite of rank N, with its N nonzero eigenvalues (those of
S_B S_C^T = +-D U U^T) all > 0 or all < 0. P68: a negative S_C^T S_B puts the continuous-time token dynamics
in the convergent regime (all tokens -> 0 as 1/sqrt(t)), which the paper finds hurts; "pos" excludes it.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from tokjax.model.config import ModelConfig

__all__ = ["MambaState", "mamba_mixer", "mamba_state", "selective_scan", "ssm_projections"]

_F32 = jnp.float32
SIGN_FLOOR = 0.7  # the official threshold: D = softplus(d) + 0.7


class MambaState(NamedTuple):
    """One layer's recurrent state: ``conv`` [B, K-1, E] (the last K-1 conv inputs, oldest first) and ``ssm``
    [B, E, N] float32 (h after the last absorbed token)."""

    conv: jax.Array
    ssm: jax.Array


def mamba_state(cfg: ModelConfig, batch: int, dtype=None) -> MambaState:
    """Returns an empty (all-zero) recurrent state for one layer: the state before the first token."""
    dtype = cfg.dtype if dtype is None else dtype
    return MambaState(conv=jnp.zeros((batch, cfg.ssm_conv - 1, cfg.ssm_inner), dtype),
                      ssm=jnp.zeros((batch, cfg.ssm_inner, cfg.ssm_state), _F32))


def ssm_projections(p: Mapping[str, jax.Array], cfg: ModelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (W_dt [E, R], S_B [N, E], S_C [N, E]) of one layer's x_proj, float32 (constrained per cfg.ssm_sign).

    B_t = S_B x_t and C_t = S_C x_t. With ``ssm_sign`` set, S_C = U and S_B = +-D U (module docstring), so
    S_C^T S_B = +-U^T D U; otherwise S_B, S_C are x_proj's free columns.
    """
    R, N = cfg.ssm_dt_rank, cfg.ssm_state
    w = p["x_proj"].astype(_F32)  # [E, R + 2N]
    w_dt = w[:, :R]
    if cfg.ssm_sign is None:
        return w_dt, w[:, R:R + N].T, w[:, R + N:].T
    P = w[:, R:R + N].T  # [N, E]
    U = jnp.triu(P, 1) + jnp.eye(N, P.shape[1], dtype=_F32)  # unit upper-triangular
    diag = jax.nn.softplus(w[0, R + N:]) + SIGN_FLOOR  # [N], > 0.7
    sign = 1.0 if cfg.ssm_sign == "pos" else -1.0
    return w_dt, sign * diag[:, None] * U, U


def _combine(left, right):
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


def selective_scan(a: jax.Array, b: jax.Array, h0: jax.Array | None = None, *, method: str = "associative") -> jax.Array:
    """Returns every state h_t [B, T, ...] of h_t = a_t * h_{t-1} + b_t (t = 0..T-1, h_{-1} = h0 or 0).

    ``a``, ``b`` [B, T, ...] (time on axis 1). ``method``: "associative" (``jax.lax.associative_scan``, the
    training path: O(log T) depth) or "sequential" (``jax.lax.scan``, the step-by-step recurrence; the
    reference the associative form is tested against).
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"selective_scan needs a and b of one shape [B, T, ...], got {a.shape} and {b.shape}")
    if method == "associative":
        acc, hs = jax.lax.associative_scan(_combine, (a, b), axis=1)
        return hs if h0 is None else hs + acc * h0[:, None]
    if method == "sequential":
        init = jnp.zeros_like(b[:, 0]) if h0 is None else h0.astype(b.dtype)

        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        _, hs = jax.lax.scan(step, init, (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0)))
        return jnp.moveaxis(hs, 0, 1)
    raise ValueError(f"selective_scan method must be 'associative' or 'sequential', got {method!r}")


def mamba_mixer(
    p: Mapping[str, jax.Array],
    cfg: ModelConfig,
    h: jax.Array,
    *,
    state: MambaState | None = None,
    stop: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    method: str = "fused",
) -> tuple[jax.Array, MambaState | None]:
    """Returns (out [B, T, D], new state): one Mamba-1 mixer over the normed stream ``h`` [B, T, D].

    ``p``: one layer's weights (``in_proj, conv_w, conv_b, x_proj, dt_proj, dt_bias, A_log, D, out_proj``).
    ``state``: the recurrent state before the block (None: start from zeros and return no state). The new
    state is the one after all T tokens, or, with ``stop`` int [B], after the first ``stop[b]`` tokens of
    row b (a right-padded prefill: row b's padding is computed but not absorbed). ``segment_ids`` [B, T]
    (no-state calls): packed documents, the state and the conv window restart where the id changes.
    The SSM runs in float32 whatever the compute dtype. ``method``: "fused" (one ``lax.scan`` over time whose step
    forms that token's a_t, b_t [B, E, N] from delta, x, B_t and reads out y_t = C_t . h_t, so the [B, T, E, N]
    decay and input arrays are never built: at 16 x 128 tokens, E = 256, N = 16 one layer's SSM gradient took
    85 ms against 239 ms for the associative scan on 2 CPU cores), or a :func:`selective_scan` method over the
    materialised arrays ("associative", "sequential"); all compute the same values up to float rounding.
    """
    dt = cfg.dtype
    B, T, _ = h.shape
    K = cfg.ssm_conv
    xz = jnp.einsum("btd,dce->btce", h, p["in_proj"].astype(dt))
    x, z = xz[:, :, 0], xz[:, :, 1]
    prev = jnp.zeros((B, K - 1, x.shape[-1]), dt) if state is None else state.conv.astype(dt)
    window = jnp.concatenate([prev, x], axis=1)  # window index i holds time i - (K - 1)
    w = p["conv_w"].astype(dt)  # [K, E]: w[k] multiplies x_{t - (K - 1) + k}
    seg = None if segment_ids is None or state is not None else jnp.asarray(segment_ids)
    if seg is not None:
        seg_win = jnp.concatenate([jnp.repeat(seg[:, :1], K - 1, axis=1), seg], axis=1)
    conv = p["conv_b"].astype(dt)
    for k in range(K):
        term = window[:, k:k + T] * w[k]
        if seg is not None and k < K - 1:
            term = jnp.where((seg_win[:, k:k + T] == seg)[..., None], term, 0)
        conv = conv + term
    xc = jax.nn.silu(conv)

    xf = xc.astype(_F32)
    w_dt, s_b, s_c = ssm_projections(p, cfg)
    delta = jax.nn.softplus((xf @ w_dt) @ p["dt_proj"].astype(_F32) + p["dt_bias"].astype(_F32))  # [B, T, E]
    b_t = xf @ s_b.T  # [B, T, N]
    c_t = xf @ s_c.T
    A = -jnp.exp(p["A_log"].astype(_F32))  # [E, N]
    starts = None
    if seg is not None:  # a new document starts from h = 0
        starts = jnp.concatenate([jnp.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    h0 = None if state is None else state.ssm.astype(_F32)
    stop = None if stop is None or state is None else jnp.asarray(stop, jnp.int32)
    if method == "fused":
        y_ssm, last = _fused_scan(delta, xf, b_t, c_t, A, starts, h0, stop)
    else:
        a = jnp.exp(delta[..., None] * A)  # [B, T, E, N]
        b = (delta * xf)[..., None] * b_t[:, :, None, :]
        if starts is not None:
            a = jnp.where(starts[:, :, None, None], 0.0, a)
        hs = selective_scan(a, b, h0, method=method)  # [B, T, E, N]
        y_ssm = jnp.einsum("btn,bten->bte", c_t, hs)
        last = hs[:, -1] if stop is None else jnp.take_along_axis(
            hs, jnp.maximum(stop - 1, 0)[:, None, None, None], axis=1)[:, 0]
    y = y_ssm + p["D"].astype(_F32) * xf
    y = y.astype(dt) * jax.nn.silu(z)
    out = jnp.einsum("bte,ed->btd", y, p["out_proj"].astype(dt))
    if state is None:
        return out, None
    if stop is None:
        return out, MambaState(conv=window[:, T:].astype(state.conv.dtype), ssm=last)
    conv_new = jax.vmap(lambda win, s: jax.lax.dynamic_slice_in_dim(win, s, K - 1, axis=0))(window, stop)
    ssm_new = jnp.where((stop > 0)[:, None, None], last, h0)
    return out, MambaState(conv=conv_new.astype(state.conv.dtype), ssm=ssm_new)


def _fused_scan(delta, xf, b_t, c_t, A, starts, h0, stop):
    """Returns (y [B, T, E] with y_t = C_t . h_t, the state after the last token, or after ``stop[b]`` tokens)
    of h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t, one token per ``lax.scan`` step."""
    B, T, E = delta.shape
    h = jnp.zeros((B, E, A.shape[-1]), _F32) if h0 is None else h0
    keep = jnp.ones((B, T), _F32) if starts is None else 1.0 - starts.astype(_F32)
    live = jnp.ones((B, T), bool) if stop is None else jnp.arange(T)[None, :] < stop[:, None]

    def step(carry, xs):
        h, last = carry
        d, x, bb, cc, k, on = xs
        h = (k[:, None, None] * jnp.exp(d[..., None] * A)) * h + (d * x)[..., None] * bb[:, None, :]
        last = jnp.where(on[:, None, None], h, last)
        return (h, last), jnp.einsum("bn,ben->be", cc, h)

    seq = tuple(jnp.moveaxis(v, 1, 0) for v in (delta, xf, b_t, c_t, keep, live))
    (_, last), ys = jax.lax.scan(step, (h, h), seq)
    return jnp.moveaxis(ys, 0, 1), last

