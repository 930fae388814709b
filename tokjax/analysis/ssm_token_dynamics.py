"""Token dynamics of deep selective SSMs (P68; Vo, Pham, Tong, Nguyen, ICLR 2025, "Demystifying the Token Dynamics of
Deep Selective State Space Models"): the 1-D continuous-time system, the regime of a Mamba model's layers, and
token norms by depth.

In the continuous-time (depth -> time) limit of a Mamba stack, the 1-D token dynamics are

    dx_i/dt = sum_{j <= i} P_ij x_j,   P_ij = mu * x_i * x_j * Delta(x_j) * exp(-a * sum_{k=j+1..i} Delta(x_k)),

with Delta(x) = softplus(s * x + b) (the input-dependent step), A = -a < 0 and mu = S_C^T S_B (the output and input
projections). The paper proves exactly one of two scenarios: mu < 0 -> every token converges to 0, at rate
O(1/sqrt(t)) (for small x, dx/dt ~ -c x^3); mu > 0 -> every token diverges (slowly or in finite time, at different
rates per token). The convergent scenario hurts; the official code excludes it by constraining x_proj so that
S_C^T S_B = U^T D U is positive semidefinite (``ModelConfig(mixer="mamba", ssm_sign="pos")``, see
:mod:`tokjax.model.mamba`).

* :func:`simulate_1d` -- Euler integration of the system above (batched, jit-compatible, NaN-free: a trajectory
  that blows up is frozen and its blow-up time recorded).
* :func:`regime` -- per layer of a mamba model, the nonzero spectrum of S_C^T S_B (E x E of rank <= N; its nonzero
  eigenvalues are those of the N x N matrix S_B S_C^T) and whether it is all positive, all negative or mixed.
* :func:`token_norms` -- the residual stream's per-token L2 norm at every depth, read through the shared forward's
  taps (any tokjax model, attention or mamba).

Out of scope: the paper's token *reordering* by importance score (evaluated on vision Mamba for ImageNet), which
has no counterpart in a causal language model's fixed token order.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.config import ModelConfig
from tokjax.model.forward import Taps, forward, layer_weights
from tokjax.model.mamba import ssm_projections

__all__ = ["Regime", "Simulation", "regime", "simulate_1d", "token_norms"]

_F32 = jnp.float32


class Simulation(NamedTuple):
    """The result of :func:`simulate_1d`: ``times`` [R + 1], ``x`` [R + 1, ..., n] (recorded states; a blown-up
    trajectory stays at its last finite state), ``blowup_time`` [...] (first time max_i |x_i| exceeded
    ``blowup``; inf when it never did)."""

    times: jax.Array
    x: jax.Array
    blowup_time: jax.Array


def _rhs(x, mu, a, s, b):
    """Returns dx/dt [..., n] of the 1-D token system (module docstring)."""
    delta = jax.nn.softplus(s[..., None] * x + b[..., None])  # [..., n]
    S = jnp.cumsum(delta, axis=-1)
    i = jnp.arange(x.shape[-1])
    lower = i[:, None] >= i[None, :]  # j <= i
    expo = jnp.where(lower, -a[..., None, None] * (S[..., :, None] - S[..., None, :]), -jnp.inf)  # <= 0: no overflow
    w = jnp.exp(expo)  # [..., n(i), n(j)]
    inner = jnp.einsum("...ij,...j->...i", w, x * x * delta)
    return mu[..., None] * x * inner


@functools.partial(jax.jit, static_argnames=("steps", "record"))
def _simulate(x0, mu, a, s, b, dt, blowup, steps, record):
    every = steps // record

    def euler(carry, _):
        x, t, t_blow = carry
        nxt = x + dt * _rhs(x, mu, a, s, b)
        big = ~jnp.all(jnp.isfinite(nxt), axis=-1) | (jnp.max(jnp.abs(nxt), axis=-1) > blowup)
        live = jnp.isinf(t_blow)
        t_blow = jnp.where(live & big, t + dt, t_blow)
        x = jnp.where((live & ~big)[..., None], nxt, x)
        return (x, t + dt, t_blow), None

    def chunk(carry, _):
        carry, _ = jax.lax.scan(euler, carry, None, length=every)
        return carry, carry[0]

    init = (x0, jnp.zeros((), _F32), jnp.full(x0.shape[:-1], jnp.inf, _F32))
    (_, _, t_blow), xs = jax.lax.scan(chunk, init, None, length=record)
    times = jnp.arange(record + 1, dtype=_F32) * (every * dt)
    return Simulation(times=times, x=jnp.concatenate([x0[None], xs], axis=0), blowup_time=t_blow)


def simulate_1d(
    x0, mu, *, a=1.0, delta_scale=1.0, delta_bias=0.0, dt: float = 1e-3, steps: int = 40_000, record: int = 400,
    blowup: float = 1e6,
) -> Simulation:
    """Returns the Euler-integrated trajectories (a :class:`Simulation`) of dx_i/dt = sum_{j<=i} P_ij x_j (P68).

    ``x0`` [..., n] float: initial tokens (n >= 1; leading axes are a batch). ``mu`` (= S_C^T S_B), ``a`` (> 0,
    A = -a), ``delta_scale``/``delta_bias`` (Delta(x) = softplus(delta_scale * x + delta_bias)) and ``dt`` are
    runtime values, scalars or broadcastable to x0's batch shape (a sweep does not recompile); ``steps`` Euler
    steps of size ``dt`` are recorded every ``steps // record`` steps. P68: mu < 0 decays as 1/sqrt(t),
    mu > 0 blows up.
    """
    x0 = jnp.asarray(x0, _F32)
    if x0.ndim < 1 or x0.shape[-1] < 1:
        raise ValueError(f"x0 must be [..., n_tokens] with n_tokens >= 1, got shape {x0.shape}")
    if not isinstance(steps, (int, np.integer)) or not isinstance(record, (int, np.integer)) or not 1 <= record <= steps:
        raise ValueError(f"steps and record must be ints with 1 <= record <= steps, got steps={steps!r}, "
                         f"record={record!r}")
    batch = x0.shape[:-1]
    values = {}
    for name, v in (("mu", mu), ("a", a), ("delta_scale", delta_scale), ("delta_bias", delta_bias)):
        arr = jnp.asarray(v, _F32)
        try:
            values[name] = jnp.broadcast_to(arr, batch)
        except ValueError:
            raise ValueError(f"{name} must be a scalar or broadcastable to x0's batch shape {batch}, "
                             f"got shape {arr.shape}") from None
    for name in ("a",):
        if not isinstance(values[name], jax.core.Tracer) and not bool(jnp.all(values[name] > 0)):
            raise ValueError(f"a must be > 0 (A = -a is a decay), got {a!r}")
    if not isinstance(dt, jax.core.Tracer) and not float(dt) > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    if not float(blowup) > 0:
        raise ValueError(f"blowup must be > 0, got {blowup!r}")
    return _simulate(x0, values["mu"], values["a"], values["delta_scale"], values["delta_bias"],
                     jnp.asarray(dt, _F32), jnp.asarray(blowup, _F32), int(steps), int(record))


class Regime(NamedTuple):
    """The result of :func:`regime`, per layer: ``eigenvalues`` [L, N] complex (the nonzero spectrum of
    S_C^T S_B, i.e. the eigenvalues of S_B S_C^T, sorted by real part), ``min_real`` / ``max_real`` [L] and
    ``labels`` ("pos": all real parts > 0, divergent regime; "neg": all < 0, convergent; "mixed")."""

    eigenvalues: np.ndarray
    min_real: np.ndarray
    max_real: np.ndarray
    labels: tuple[str, ...]


def regime(params, cfg: ModelConfig) -> Regime:
    """Returns the :class:`Regime` of every layer of a ``mixer="mamba"`` model (host numpy, float64).

    mu = S_C^T S_B [E, E] has rank <= N, so its E - N remaining eigenvalues are zero; the sign of the nonzero ones
    decides the P68 scenario (mu > 0: tokens diverge, mu < 0: tokens converge to 0). With ``ssm_sign="pos"``
    every layer is "pos", with ``"neg"`` every layer is "neg" (by construction, S_C^T S_B = +-U^T D U).
    """
    if not isinstance(cfg, ModelConfig) or cfg.mixer != "mamba":
        raise ValueError(f"regime needs a mixer='mamba' model config, got "
                         f"{getattr(cfg, 'mixer', type(cfg).__name__)!r}")
    eigs = []
    for i in range(cfg.n_layers):
        _, s_b, s_c = ssm_projections(layer_weights(params, i), cfg)
        small = np.asarray(s_b, np.float64) @ np.asarray(s_c, np.float64).T  # [N, N]
        ev = np.linalg.eigvals(small)
        eigs.append(ev[np.argsort(ev.real, kind="stable")])
    eig = np.stack(eigs)
    lo, hi = eig.real.min(-1), eig.real.max(-1)
    labels = tuple("pos" if l > 0 else ("neg" if h < 0 else "mixed") for l, h in zip(lo, hi))
    return Regime(eigenvalues=eig, min_real=lo, max_real=hi, labels=labels)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _norms(params, cfg, tokens):
    out = forward(params, cfg, tokens, compute_logits=False, taps=Taps(layers="all", sites=("resid_pre", "resid_post")))
    stream = jnp.concatenate([out.taps["resid_pre"][:1], out.taps["resid_post"]], axis=0)  # [L + 1, B, T, D]
    return jnp.sqrt(jnp.sum(jnp.square(stream.astype(_F32)), axis=-1))


def token_norms(params, cfg: ModelConfig, tokens) -> jax.Array:
    """Returns float32 [L + 1, B, T]: each token's residual-stream L2 norm by depth (0: the embedded input, l: after
    layer l), read from the shared forward's ``resid_pre`` / ``resid_post`` taps (P68's token dynamics over depth)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an int array [batch, seq], got shape {tokens.shape} dtype {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise ValueError("tokens must hold at least one position, got seq length 0")
    from tokjax.model.ops import check_int_values

    check_int_values(tokens, "token ids", 0, cfg.vocab_size)
    return _norms(params, cfg, tokens)
