"""Continuous tokens: a per-token rectified-flow head on the shared forward's hidden states (MAR's
diffusion head as a flow), its samplers, per-token time conditioning, and continuous raster AR as a
``tokjax.generate`` Strategy (issue 25, item 1; used by P10 xAR, P19 DiSA, P74 MingTok).

Rectified flow (the convention of xAR, SiT and DiSA's flow heads)::

    x_t = (1 - t) x + t eps,   eps ~ N(0, I),   t in [0, 1]   (t = 0: data, t = 1: noise)
    v(x_t, t) = eps - x                                      (the velocity target, d x_t / d t)
    L = E_{t ~ logit-normal(0, 1), eps} || v_theta(x_t, t | z) - (eps - x) ||^2

``z`` is the condition: the LM's hidden state at the token's query slot. As in MAR's ``DiffLoss``
(``diffusion_batch_mul``), every backbone pass trains the head at ``t_samples`` independent (t, eps)
draws per token. Sampling integrates dx/dt = v from t = 1 (x_1 = temperature * eps) to t = 0 on the
uniform grid t_k = k / steps: Euler ``x <- x - h v``, or Euler-Maruyama with the reverse SDE of
diffusion g(t)^2 = t (same marginals as the ODE; score = -eps_hat / t with eps_hat = x_t + (1 - t) v)::

    x <- x - h (v + eps_hat / 2) + temperature * sqrt(t h) xi,   xi ~ N(0, I)

and a noise-free Euler last step (so a perfect velocity lands on the data exactly, as SiT's last step).
For a point mass x*, v = (x_t - x*) / t, and one Euler step from t to t' gives x* + (t'/t)(x_t - x*):
every step count lands on x* exactly (tested). ``steps`` is a traced integer (``lax.fori_loop`` over a
runtime bound), so a new step count never recompiles. Classifier-free guidance on velocities:
v = v_u + g (v_c - v_u), computed as v_c + (g - 1)(v_c - v_u) (g = 1 is v_c exactly).
:func:`flow_path_stats` runs the same sampler K times per condition and returns the variance of the K samples
and the straightness (chord / arc length) of their paths (P19 DiSA's motivation measurements).

Head (MAR ``SimpleMLPAdaLN``, written anew): x_in = W_x x_t; c = TimeMLP(sin-cos(1000 t)) + W_z z;
``depth`` residual blocks h <- h + gate * MLP(LN(h) (1 + scale) + shift) with (shift, scale, gate) =
Linear(SiLU(c)); final LN(h)(1 + scale) + shift -> Linear to token_dim. AdaLN modulations and the output
layer start at zero (as MAR), so the initial head predicts v = 0.

Continuous AR (:func:`continuous_ar`, MAR's AR variant in raster order). The sequence the backbone reads is
``[class token, P x_0, ..., P x_{L-2}]`` (P: a learned linear projection token_dim -> d_model, fed as
``Inputs(embeds=...)``; the class token uses the backbone's own embedding table, class c -> id c, the null
class -> id ``num_classes``); hidden state i is the condition z_i of token x_i (teacher forced, causal).
``params["flow"]`` holds {"head": flow_head_init(...), "proj": {"w", "b"}} (:func:`continuous_init`); the
registered loss ``"flow"`` trains backbone, projection and head together on batches of
:func:`continuous_batch`.

Per-token time conditioning (:func:`cond_hooks`): a [B, T, D] conditioning (e.g. :func:`time_embed` of each
token's t) is added at every layer's ``resid_pre`` hook -- a per-layer additive stand-in for AdaLN, the
only conditioning path the shared forward offers without changing it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding import DecodeState, Strategy, commit, generate
from tokjax.logits import check_range, hparam
from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.model.forward import embed
from tokjax.vision.image_lm import image_rows

__all__ = [
    "ContinuousAR", "ContinuousDecodeState", "ContinuousSamples", "FlowPathStats", "SAMPLERS", "cond_hooks",
    "continuous_ar", "continuous_batch", "continuous_batch_fn", "continuous_hidden", "continuous_init",
    "flow_head_apply", "flow_head_init", "flow_head_loss", "flow_loss", "flow_path_stats", "flow_sample", "flow_update", "flow_velocity", "make_flow_loss",
    "sample_continuous", "time_embed", "time_embed_init",
]

_F32 = jnp.float32
SAMPLERS = ("euler", "euler_maruyama")
_FREQ = 64  # sinusoidal frequencies of the time embeddings


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------ layers
def _linear(key, n_in: int, n_out: int, *, zero: bool = False) -> dict:
    """Xavier-uniform (or zero) weight [n_in, n_out], zero bias."""
    if zero:
        w = jnp.zeros((n_in, n_out), _F32)
    else:
        lim = math.sqrt(6.0 / (n_in + n_out))
        w = jax.random.uniform(key, (n_in, n_out), _F32, -lim, lim)
    return {"w": w, "b": jnp.zeros((n_out,), _F32)}


def _dense(p: dict, x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def _layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps)


def _sinusoid(t: jax.Array, dim: int = _FREQ) -> jax.Array:
    """Returns [..., dim]: cos / sin features of 1000 t (DiT's timestep embedding, max period 10^4)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=_F32) / half)
    arg = (1000.0 * jnp.asarray(t, _F32))[..., None] * freqs
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], -1)


def time_embed_init(key: jax.Array, d_model: int, *, width: int | None = None) -> dict:
    """Returns the params of a time embedding t -> [d_model]: sin-cos(1000 t) -> Linear -> SiLU -> Linear."""
    d_model = _check_int("d_model", d_model, 1)
    width = d_model if width is None else _check_int("width", width, 1)
    k1, k2 = jax.random.split(key)
    return {"l1": _linear(k1, _FREQ, width), "l2": _linear(k2, width, d_model)}


def time_embed(p: dict, t: Any) -> jax.Array:
    """Returns float32 [..., d_model]: the time embedding of ``t`` [...] (finite for every real t, 0 and 1
    included)."""
    return _dense(p["l2"], jax.nn.silu(_dense(p["l1"], _sinusoid(t))))


# -------------------------------------------------------------------------------------------- head
def flow_head_init(key: jax.Array, d_model: int, token_dim: int, width: int = 128, depth: int = 3) -> dict:
    """Returns the params of a flow head (MAR's residual MLP with AdaLN on t and z; module docstring).

    ``d_model``: width of the condition z (the LM's hidden size); ``token_dim``: size c of a continuous token;
    ``width``: the MLP width; ``depth`` >= 1 residual blocks. Raises ValueError for non-positive sizes.
    """
    d_model, token_dim = _check_int("d_model", d_model, 1), _check_int("token_dim", token_dim, 1)
    width, depth = _check_int("width", width, 1), _check_int("depth", depth, 1)
    ks = jax.random.split(key, 4 + depth)
    blocks = [{"ada": _linear(None, width, 3 * width, zero=True), "fc1": _linear(ks[4 + i], width, width),
               "fc2": _linear(jax.random.fold_in(ks[4 + i], 1), width, width)} for i in range(depth)]
    return {
        "x_in": _linear(ks[0], token_dim, width),
        "z_in": _linear(ks[1], d_model, width),
        "t_emb": time_embed_init(ks[2], width),
        "blocks": jax.tree.map(lambda *a: jnp.stack(a), *blocks),  # stacked on a leading [depth] axis
        "final_ada": _linear(None, width, 2 * width, zero=True),
        "out": _linear(None, width, token_dim, zero=True),
    }


def _head_dims(head: dict) -> tuple[int, int]:
    """Returns (d_model, token_dim) of a flow head."""
    if not isinstance(head, dict) or "x_in" not in head or "z_in" not in head:
        raise ValueError("head must be the params of flow_head_init (a dict with 'x_in', 'z_in', 'blocks', ...), got "
                         f"{type(head).__name__}" + (f" with keys {sorted(head)}" if isinstance(head, dict) else ""))
    return int(head["z_in"]["w"].shape[0]), int(head["x_in"]["w"].shape[0])


def flow_head_apply(head: dict, z: jax.Array, x_t: jax.Array, t: Any) -> jax.Array:
    """Returns float32 [..., token_dim]: the head's velocity v(x_t, t | z) for conditions ``z`` [..., d_model],
    noisy tokens ``x_t`` [..., token_dim] and times ``t`` (broadcast to the leading dims). Raises ValueError for
    a ``z`` or ``x_t`` whose last dim is not the head's."""
    d_model, c = _head_dims(head)
    z, x_t = jnp.asarray(z, _F32), jnp.asarray(x_t, _F32)
    if z.shape[-1] != d_model:
        raise ValueError(f"z must be [..., d_model={d_model}] (the head's condition width), got shape {z.shape}")
    if x_t.shape[-1] != c:
        raise ValueError(f"x_t must be [..., token_dim={c}] (the head's token size), got shape {x_t.shape}")
    lead = jnp.broadcast_shapes(z.shape[:-1], x_t.shape[:-1])
    t = jnp.broadcast_to(jnp.asarray(t, _F32), lead)
    cond = jax.nn.silu(time_embed(head["t_emb"], t) + _dense(head["z_in"], z))
    h = jnp.broadcast_to(_dense(head["x_in"], x_t), lead + (head["x_in"]["w"].shape[1],))

    def block(h, p):
        shift, scale, gate = jnp.split(_dense(p["ada"], cond), 3, axis=-1)
        m = _layer_norm(h) * (1.0 + scale) + shift
        m = _dense(p["fc2"], jax.nn.silu(_dense(p["fc1"], m)))
        return h + gate * m, None

    h, _ = jax.lax.scan(block, h, head["blocks"])
    shift, scale = jnp.split(_dense(head["final_ada"], cond), 2, axis=-1)
    return _dense(head["out"], _layer_norm(h) * (1.0 + scale) + shift)


def flow_head_loss(head: dict, z: jax.Array, x: jax.Array, key: jax.Array, *, t_samples: int = 4,
                   mask: jax.Array | None = None, loc: Any = 0.0, scale: Any = 1.0) -> jax.Array:
    """Returns the scalar rectified-flow loss (module docstring) of tokens ``x`` [..., token_dim] given their
    conditions ``z`` [..., d_model]: mean over tokens (``mask`` [...], True = counted) and ``t_samples`` draws
    of t ~ logit-normal(loc, scale) and eps ~ N(0, I) per token, of mean_c (v_theta - (eps - x))^2.

    Raises ValueError for a token_dim or d_model that is not the head's, leading dims of z and x that differ,
    or t_samples < 1.
    """
    d_model, c = _head_dims(head)
    t_samples = _check_int("t_samples", t_samples, 1)
    z, x = jnp.asarray(z, _F32), jnp.asarray(x, _F32)
    if x.shape[-1] != c:
        raise ValueError(f"x must be [..., token_dim={c}] (the head's token size), got shape {x.shape}")
    if z.shape[-1] != d_model:
        raise ValueError(f"z must be [..., d_model={d_model}] (the head's condition width), got shape {z.shape}")
    if z.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"z and x must share their leading dims (one condition per token), got {z.shape} and "
                         f"{x.shape}")
    lead = x.shape[:-1]
    kt, ke = jax.random.split(key)
    t = jax.nn.sigmoid(loc + scale * jax.random.normal(kt, (t_samples,) + lead, _F32))
    eps = jax.random.normal(ke, (t_samples,) + x.shape, _F32)
    x_t = (1.0 - t[..., None]) * x + t[..., None] * eps
    v = flow_head_apply(head, jnp.broadcast_to(z, (t_samples,) + z.shape), x_t, t)
    per = jnp.mean(jnp.square(v - (eps - x)), axis=(0, -1))  # [...]
    if mask is None:
        return jnp.mean(per)
    m = jnp.broadcast_to(jnp.asarray(mask), lead).astype(_F32)
    return jnp.sum(per * m) / jnp.maximum(jnp.sum(m), 1.0)


# -------------------------------------------------------------------------------------------- sampler
def flow_velocity(head: dict | Callable) -> Callable:
    """Returns ``velocity(z, x_t, t) -> v``: :func:`flow_head_apply` for head params, or ``head`` itself when it
    is already such a callable."""
    if callable(head):
        return head
    _head_dims(head)
    return functools.partial(flow_head_apply, head)


def _check_steps(steps: Any) -> jax.Array:
    s = jnp.asarray(steps)
    if not jnp.issubdtype(s.dtype, jnp.integer):
        raise ValueError(f"steps must be integers (flow steps per token), got dtype {s.dtype}")
    if _concrete(s) and s.size and int(np.min(np.asarray(s))) < 1:
        raise ValueError(f"steps must be >= 1 (flow steps per token), got {np.asarray(s).tolist()}")
    return jnp.maximum(s.astype(jnp.int32), 1)


def flow_update(x: jax.Array, v: jax.Array, t: Any, h: Any, last: Any, key: jax.Array, temperature: Any,
                sampler: str = "euler") -> jax.Array:
    """Returns x at time t - h from x at time t given its velocity v: an Euler step ``x - h v``, or for
    "euler_maruyama" ``x - h (v + eps_hat / 2) + temperature sqrt(t h) xi`` with eps_hat = x + (1 - t) v
    (module docstring), except that the ``last`` step is always the noise-free Euler step."""
    euler = x - h * v
    if sampler == "euler":
        return euler
    if sampler != "euler_maruyama":
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    eps_hat = x + (1.0 - t) * v
    xi = jax.random.normal(key, x.shape, _F32)
    em = x - h * (v + 0.5 * eps_hat) + temperature * jnp.sqrt(t * h) * xi
    return jnp.where(last, euler, em)


def _sampler_setup(head, z, sampler, temperature, z_uncond, guidance, token_dim):
    """The checks of :func:`flow_sample` / :func:`flow_path_stats`; returns (velocity ``v_of(x, t)`` with guidance
    applied, token_dim c, the leading dims of z, temperature float32 [])."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if callable(head):
        if token_dim is None:
            raise ValueError("a velocity callable needs token_dim= (the size of one continuous token)")
        c = _check_int("token_dim", token_dim, 1)
    else:
        d_model, c = _head_dims(head)
        if token_dim is not None and int(token_dim) != c:
            raise ValueError(f"token_dim={token_dim} does not match the head's token_dim={c}")
        if jnp.shape(z)[-1] != d_model:
            raise ValueError(f"z must be [..., d_model={d_model}] (the head's condition width), got shape "
                             f"{jnp.shape(z)}")
    if z_uncond is not None and jnp.shape(z_uncond) != jnp.shape(z):
        raise ValueError(f"z_uncond must have z's shape {jnp.shape(z)}, got {jnp.shape(z_uncond)}")
    check_range(temperature, "temperature", lo=0.0)
    vel = flow_velocity(head)
    z = jnp.asarray(z, _F32)
    g = None if z_uncond is None else jnp.asarray(guidance, _F32)

    def v_of(x, t):
        if z_uncond is None:
            return vel(z, x, t)
        vc, vu = vel(z, x, t), vel(jnp.asarray(z_uncond, _F32), x, t)
        return vc + (g - 1.0) * (vc - vu)  # = vu + g (vc - vu); exactly vc at g = 1

    return v_of, c, z.shape[:-1], jnp.asarray(temperature, _F32)


def _scalar_steps(steps: Any) -> jax.Array:
    steps = _check_steps(steps)
    if steps.ndim:
        raise ValueError(f"steps must be a scalar here, got shape {steps.shape}")
    return steps


def _integrate(v_of, key, lead, c, steps, temp, sampler, *, track: bool = False):
    """Draws x_1 = temp * eps from ``key`` and integrates t = 1 -> 0 in ``steps`` steps; returns (x_0, x_1, path
    length sum_k ||x_{k+1} - x_k|| [lead], zeros unless ``track``)."""
    k0, kloop = jax.random.split(key)
    x1 = temp * jax.random.normal(k0, lead + (c,), _F32)
    n = steps.astype(_F32)

    def body(i, carry):
        x, length = carry
        t = (steps - i).astype(_F32) / n
        x_new = flow_update(x, v_of(x, t), t, 1.0 / n, i == steps - 1, jax.random.fold_in(kloop, i), temp, sampler)
        if track:
            length = length + jnp.sqrt(jnp.sum(jnp.square(x_new - x), axis=-1))
        return x_new, length

    x0, length = jax.lax.fori_loop(0, steps, body, (x1, jnp.zeros(lead, _F32)))
    return x0, x1, length


def flow_sample(head: dict | Callable, z: jax.Array, key: jax.Array, *, steps: Any, sampler: str = "euler",
                temperature: Any = 1.0, z_uncond: jax.Array | None = None, guidance: Any = 1.0,
                token_dim: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (samples float32 [..., token_dim], head_evals int32 scalar = velocity evaluations per token,
    ``steps``, doubled with ``z_uncond``): tokens drawn by integrating the flow from t = 1 to 0 (module
    docstring) for conditions ``z`` [..., d_model].

    ``head``: flow head params, or a callable ``velocity(z, x_t, t) -> v`` (then ``token_dim`` is required).
    ``steps`` >= 1: a runtime integer (a new value does not recompile). ``sampler``: "euler" or
    "euler_maruyama" (static). ``temperature`` >= 0: scales the initial noise and the SDE noise (runtime;
    0 = the deterministic ODE from x_1 = 0). ``z_uncond`` (same shape as z) with ``guidance`` g (runtime,
    broadcast to [..., 1]): classifier-free guidance v_u + g (v_c - v_u).

    Raises ValueError for steps < 1, an unknown sampler, temperature < 0, or sizes that are not the head's.
    """
    v_of, c, lead, temp = _sampler_setup(head, z, sampler, temperature, z_uncond, guidance, token_dim)
    steps = _scalar_steps(steps)
    x0, _, _ = _integrate(v_of, key, lead, c, steps, temp, sampler)
    return x0, steps * (1 if z_uncond is None else 2)


class FlowPathStats(NamedTuple):
    """What :func:`flow_path_stats` returns, per condition [...]: ``variance`` (of the final samples across the
    K draws, mean over the token's dims), ``straightness`` (mean over the K draws of ||x_0 - x_1|| / path length,
    in [0, 1]; 1 = a straight path) and ``samples`` float32 [K, ..., token_dim] (the K final samples)."""

    variance: jax.Array
    straightness: jax.Array
    samples: jax.Array


def flow_path_stats(head: dict | Callable, z: jax.Array, key: jax.Array, *, samples: int = 8, steps: Any = 50,
                    sampler: str = "euler", temperature: Any = 1.0, z_uncond: jax.Array | None = None,
                    guidance: Any = 1.0, token_dim: int | None = None) -> FlowPathStats:
    """Returns :class:`FlowPathStats`: how spread and how straight the head's sampling of each condition is
    (P19 DiSA's motivation: later tokens have lower sample variance and straighter denoising paths).

    For each condition z [..., d_model], ``samples`` = K >= 2 independent draws, draw k exactly
    ``flow_sample(head, z, jax.random.split(key, K)[k], ...)`` (same arguments), each recording its path
    x_1 -> x_{1 - 1/T} -> ... -> x_0 on the uniform grid of T = ``steps``::

        variance     = mean_c Var_k[x_0^(k)_c]                                  (unbiased, ddof = 1)
        straightness = mean_k ||x_0^(k) - x_1^(k)|| / sum_j ||x^(k)_{j+1} - x^(k)_j||   (1 if the path has length 0)

    Straightness is chord / arc length of the sampler's discrete path (<= 1 by the triangle inequality; 1 iff
    every step moves the same direction: e.g. any step count on a point mass, whose Euler path is the straight
    line from x_1 to x*). With "euler_maruyama" the injected noise makes the path rough, so use "euler" for the
    ODE path. ``steps`` and ``temperature`` are runtime (no recompile); ``samples`` is a shape (static).

    Raises ValueError for samples < 2, steps < 1, and everything :func:`flow_sample` rejects.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or int(samples) < 2:
        raise ValueError(f"samples must be an int >= 2 (a variance across draws needs two), got {samples!r}")
    K = int(samples)
    v_of, c, lead, temp = _sampler_setup(head, z, sampler, temperature, z_uncond, guidance, token_dim)
    steps = _scalar_steps(steps)
    x0, x1, length = jax.vmap(lambda k: _integrate(v_of, k, lead, c, steps, temp, sampler, track=True))(
        jax.random.split(key, K))
    variance = jnp.mean(jnp.var(x0, axis=0, ddof=1), axis=-1)
    chord = jnp.sqrt(jnp.sum(jnp.square(x0 - x1), axis=-1))
    straight = jnp.where(length > 0, chord / jnp.where(length > 0, length, 1.0), 1.0)
    return FlowPathStats(variance, jnp.mean(straight, axis=0), x0)


# ------------------------------------------------------------------------- per-token time conditioning
def cond_hooks(cond: jax.Array, *, layers: Any = "*") -> dict:
    """Returns forward ``hooks`` adding ``cond`` [B, T, D] (per-token conditioning, e.g. :func:`time_embed` of
    each token's t) to the residual stream at ``layer.<l>.resid_pre`` for every layer (``layers="*"``) or the
    given layer indices. Raises ValueError unless cond is [B, T, D]."""
    if jnp.ndim(cond) != 3:
        raise ValueError(f"cond must be [batch, seq, d_model] (one conditioning vector per token), got shape "
                         f"{jnp.shape(cond)}")
    add = lambda x, layer: x + cond.astype(x.dtype)  # noqa: E731
    if layers == "*":
        return {"layer.*.resid_pre": add}
    return {f"layer.{int(i)}.resid_pre": add for i in layers}


# --------------------------------------------------------------------------------- continuous AR model
def continuous_init(key: jax.Array, cfg: ModelConfig, token_dim: int, *, width: int = 128, depth: int = 3) -> dict:
    """Returns ``params["flow"]`` of a continuous AR model on the backbone ``cfg``: {"head": flow head,
    "proj": input projection token_dim -> d_model}."""
    k1, k2 = jax.random.split(key)
    return {"head": flow_head_init(k1, cfg.d_model, token_dim, width, depth),
            "proj": _linear(k2, _check_int("token_dim", token_dim, 1), cfg.d_model)}


def _flow_params(params: Any, key: str = "flow") -> dict:
    if not isinstance(params, dict) or key not in params:
        raise ValueError(f"params has no {key!r} entry: add the continuous-token params, e.g. params[{key!r}] = "
                         "tokjax.vision.flow.continuous_init(key, cfg, token_dim)")
    return params[key]


def continuous_hidden(params: Any, cfg: ModelConfig, x: jax.Array, cls: jax.Array, *, key: str = "flow") -> jax.Array:
    """Returns float32 [B, L, D]: the conditions z of continuous raster AR (teacher forced): the final hidden
    states of ``[class token, P x_0, ..., P x_{L-2}]`` for tokens ``x`` [B, L, c] and class ids ``cls`` [B]."""
    fl = _flow_params(params, key)
    c = int(fl["proj"]["w"].shape[0])
    x = jnp.asarray(x, _F32)
    if x.ndim != 3 or x.shape[-1] != c:
        raise ValueError(f"tokens must be float [B, L, token_dim={c}], got shape {x.shape}")
    if x.shape[1] > cfg.max_len:
        raise ValueError(f"{x.shape[1]} tokens do not fit the model's max_len={cfg.max_len}")
    cls = jnp.asarray(cls, jnp.int32).reshape(x.shape[0], 1)
    e = jnp.concatenate([embed(params, cfg, cls).astype(_F32), _dense(fl["proj"], x[:, :-1])], axis=1)
    return forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype)), compute_logits=False).hidden.astype(_F32)


def flow_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, t_samples: int = 4,
              key: str = "flow") -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse"}): the flow loss of continuous raster AR on ``batch`` = {"x" float
    [B, L, c], "cls" int [B] (class ids; the null class = num_classes), optional "x_mask" [B, L]}."""
    if rng is None:
        raise ValueError("the flow loss draws t and eps: it needs rng (tokjax.train passes one per step)")
    if not isinstance(batch, dict) or "x" not in batch or "cls" not in batch:
        raise ValueError("a flow batch needs 'x' float [B, L, token_dim] and 'cls' int [B] (build it with "
                         "tokjax.vision.flow.continuous_batch)")
    z = continuous_hidden(params, cfg, batch["x"], batch["cls"], key=key)
    loss = flow_head_loss(params[key]["head"], z, batch["x"], rng, t_samples=t_samples, mask=batch.get("x_mask"))
    return loss, {"flow_mse": loss}


@functools.lru_cache(maxsize=None)
def make_flow_loss(t_samples: int = 4, key: str = "flow") -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`flow_loss` (the factory
    of the registered loss ``"flow"``)."""
    t_samples = _check_int("t_samples", t_samples, 1)
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must name the params entry of the continuous-token params, got {key!r}")
    return functools.partial(flow_loss, t_samples=t_samples, key=key)


def continuous_batch(tokens: Any, labels: Any, *, num_classes: int, class_dropout: Any = 0.1,
                     key: jax.Array | None = None) -> dict:
    """Returns {"x" float32 [N, L, c], "cls" int32 [N]}: the batch of the ``"flow"`` loss, each label
    replaced by the null class (id ``num_classes``) with probability ``class_dropout`` (needs ``key`` when > 0).
    Raises ValueError for tokens not [N, L, c], labels not [N] ints in [0, num_classes), or a bad dropout."""
    x = jnp.asarray(tokens, _F32)
    y = jnp.asarray(labels)
    C = _check_int("num_classes", num_classes, 1)
    if x.ndim != 3:
        raise ValueError(f"tokens must be float [N, L, token_dim], got shape {x.shape}")
    if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels must be int [N={x.shape[0]}], got {y.dtype} {y.shape}")
    if _concrete(y) and y.size and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"labels must lie in [0, {C}), got [{int(y.min())}, {int(y.max())}]")
    check_range(class_dropout, "class_dropout", lo=0.0, hi=1.0)
    cls = y.astype(jnp.int32)
    if key is None:
        if not _concrete(class_dropout) or float(np.max(np.asarray(class_dropout))) > 0:
            raise ValueError("class_dropout > 0 needs key= (a jax.random key) to draw which rows lose their class")
    else:
        cls = jnp.where(jax.random.bernoulli(key, jnp.asarray(class_dropout, _F32), cls.shape), C, cls)
    return {"x": x, "cls": cls}


def continuous_batch_fn(tokens: Any, labels: Any, *, num_classes: int, batch_size: int, class_dropout: float = 0.1,
                        seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> continuous_batch(...)`` over a fixed set, a pure function of ``step`` (rows
    from ``tokjax.data.batch_indices``, dropout key ``fold_in(key(seed), step)``)."""
    from tokjax.data import batch_indices

    x = np.asarray(tokens, np.float32)
    y = np.asarray(labels)
    continuous_batch(x[:1], y[:1], num_classes=num_classes, class_dropout=0.0)
    batch_size = _check_int("batch_size", batch_size, 1)
    base = jax.random.key(_check_int("seed", seed, 0))

    def batch_fn(step: int) -> dict:
        idx = batch_indices(x.shape[0], batch_size, step, seed=seed)
        return continuous_batch(x[idx], y[idx], num_classes=num_classes, class_dropout=class_dropout,
                                key=jax.random.fold_in(base, step))

    return batch_fn


# ------------------------------------------------------------------------------------------- Strategy
@struct.dataclass
class ContinuousDecodeState:
    """``DecodeState.extra`` of :class:`ContinuousAR`: ``canvas`` float32 [R, L, c] (the sampled tokens, slot =
    generation order), ``flow`` (params["flow"]: head + projection), ``steps`` int32 [L] (flow steps T(s) of AR
    step s), ``guidance`` float32 [images, L] (per image and AR step), ``temperature`` float32 [],
    ``head_evals`` int32 [] (per image: sum_s T(s) |fill_s|; guidance evaluates each on two rows)."""

    canvas: jax.Array
    flow: Any
    steps: jax.Array
    guidance: jax.Array
    temperature: jax.Array
    head_evals: jax.Array


@dataclasses.dataclass(frozen=True)
class ContinuousAR(Strategy):
    """Continuous raster AR (module docstring): AR step s feeds the pending input (the class token at s = 0,
    P x_{s-1} after) through one cached forward, and samples x_s with the flow head from hidden state s.

    Static: ``length`` L, ``sampler``, ``guided`` (decode rows = [conditional; null class], CFG on velocities).
    Runtime (state): ``flow`` (the ``params["flow"]`` to use; None = the model's own), ``steps`` (scalar or
    [L]: the per-step schedule T(s)), ``guidance`` (scalar, [L] or [images, L]), ``temperature``.
    """

    length: int
    sampler: str = "euler"
    guided: bool = False
    flow: Any = hparam(None)
    steps: Any = hparam(10)
    guidance: Any = hparam(1.0)
    temperature: Any = hparam(1.0)

    def __post_init__(self):
        _check_int("length", self.length, 1)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        s = _check_steps(self.steps)
        if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != self.length):
            raise ValueError(f"steps must be a scalar or one count per AR step [{self.length}], got shape {s.shape}")
        check_range(self.temperature, "temperature", lo=0.0)
        check_range(self.guidance, "guidance", lo=0.0)

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.pos_dims != 1:
            raise ValueError(f"continuous_ar reads sequence positions (pos_dims=1), got pos_dims={cfg.pos_dims}")
        if self.length > cfg.max_len:
            raise ValueError(f"length={self.length} tokens do not fit max_len={cfg.max_len}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> ContinuousDecodeState:
        fl = _flow_params(params) if self.flow is None else self.flow
        d_model, c = _head_dims(fl["head"])
        n_in = self.input_dim(c)
        if d_model != cfg.d_model or fl["proj"]["w"].shape != (n_in, cfg.d_model):
            raise ValueError(f"the flow params do not fit the model: head condition width {d_model}, projection "
                             f"{tuple(fl['proj']['w'].shape)}, expected d_model={cfg.d_model} and [input "
                             f"width={n_in} (token_dim={c}), {cfg.d_model}]")
        R = state.tokens.shape[0]
        n = image_rows(R, self.guided)
        g = jnp.asarray(self.guidance, _F32)
        if g.ndim == 1:
            if g.shape[0] != n:
                raise ValueError(f"guidance must be a scalar, [images={n}] or [images, length], got shape {g.shape}")
            g = g[:, None]
        if g.ndim > 2 or (g.ndim == 2 and g.shape not in ((n, self.length), (n, 1))):
            raise ValueError(f"guidance must be a scalar, [images={n}] or [images, length={self.length}], got shape "
                             f"{g.shape}")
        g = jnp.broadcast_to(g, (n, self.length))
        return ContinuousDecodeState(
            # the flow params are copied: the decode state is donated to the loop
            canvas=jnp.zeros((R, self.length, c), _F32), flow=jax.tree.map(jnp.copy, fl),
            steps=jnp.broadcast_to(_check_steps(self.steps), (self.length,)),
            guidance=g.astype(_F32), temperature=jnp.asarray(self.temperature, _F32),
            head_evals=jnp.zeros((), jnp.int32))

    def step(self, params, cfg: ModelConfig, transform, state: DecodeState, eos_id=None) -> DecodeState:
        del transform
        ex = state.extra
        R = state.tokens.shape[0]
        n = R // 2 if self.guided else R
        s = jnp.minimum(state.step, self.length - 1)
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)  # [R, 1] class at s = 0
        prev = jax.lax.dynamic_index_in_dim(ex.canvas, jnp.maximum(s - 1, 0), axis=1, keepdims=True)  # [R, 1, c]
        e_prev, ex = self.prev_embeds(params, cfg, ex, prev, s)
        e = jnp.where(s == 0, embed(params, cfg, pending).astype(_F32), e_prev)
        out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype)), cache=state.cache, compute_logits=False)
        z = out.hidden[:, 0].astype(_F32)
        key, sub = jax.random.split(state.key)
        T = ex.steps[s]
        if self.guided:
            g = jax.lax.dynamic_index_in_dim(ex.guidance, s, axis=1, keepdims=True)  # [n, 1]
            x, _ = flow_sample(ex.flow["head"], z[:n], sub, steps=T, sampler=self.sampler,
                               temperature=ex.temperature, z_uncond=z[n:], guidance=g)
            x = jnp.concatenate([x, x], axis=0)
        else:
            x, _ = flow_sample(ex.flow["head"], z, sub, steps=T, sampler=self.sampler, temperature=ex.temperature)
        canvas = jax.lax.dynamic_update_index_in_dim(ex.canvas, x[:, None, :], s, axis=1)
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1)
        extra = ex.replace(canvas=canvas, head_evals=ex.head_evals + T)
        state = state.replace(cache=out.cache, key=key, stats=stats, extra=extra)
        return commit(state, jnp.zeros((R, 1), jnp.int32), jnp.ones((R,), jnp.int32), eos_id)

    def input_dim(self, token_dim: int) -> int:
        """Returns the input width of ``flow["proj"]`` (plug point: token_dim here, P x; P74 MingTok projects a
        semantic decoder's features)."""
        return token_dim

    def prev_embeds(self, params, cfg: ModelConfig, extra: ContinuousDecodeState, prev: jax.Array,
                    s: jax.Array) -> tuple[jax.Array, ContinuousDecodeState]:
        """Returns (float32 [R, 1, D], extra): the backbone input of AR step s from the previous token ``prev``
        [R, 1, c] (plug point: P x_{s-1} here; P74 MingTok feeds a causal semantic decoder whose cache lives in
        ``extra``). Called at every step; at s = 0 its output is replaced by the class token's embedding."""
        del params, cfg, s
        return _dense(extra.flow["proj"], prev), extra

    def finalize(self, state: DecodeState) -> dict:
        return {"head_evals": int(state.extra.head_evals)}

    def persistent_state(self, extra: ContinuousDecodeState) -> jax.Array:
        return extra.canvas


def continuous_ar(flow: Any = None, *, length: int, steps: Any = 10, guidance: Any = 1.0, temperature: Any = 1.0,
                  sampler: str = "euler", guided: bool | None = None) -> ContinuousAR:
    """Returns the :class:`ContinuousAR` strategy (raster fill, one token per AR step; ``steps`` a scalar or a
    per-step schedule [length]; ``guided`` defaults to ``guidance`` != 1)."""
    if guided is None:
        guided = bool(np.any(np.asarray(guidance) != 1.0))
    return ContinuousAR(length=length, sampler=sampler, guided=guided, flow=flow, steps=steps, guidance=guidance,
                        temperature=temperature)


class ContinuousSamples(NamedTuple):
    """What :func:`sample_continuous` returns: ``tokens`` float32 [N, L, c] and generate's ``stats`` (forward_calls
    = AR steps, head_evals = sum_s T(s) |fill_s| per image)."""

    tokens: np.ndarray
    stats: dict


def sample_continuous(model: Model, strategy: ContinuousAR, labels: Any, key: jax.Array, *,
                      num_classes: int) -> ContinuousSamples:
    """Returns :class:`ContinuousSamples` for class ``labels`` [N] (ints in [0, num_classes)), decoded by
    ``strategy`` through :func:`tokjax.generate` (guided strategies add one null-class row per image)."""
    if not isinstance(strategy, ContinuousAR):
        raise ValueError(f"strategy must be a ContinuousAR (continuous_ar(...)), got {type(strategy).__name__}")
    return ContinuousSamples(*generate_class_conditional(model, strategy, labels, key, num_classes=num_classes,
                                                         ar_steps=strategy.length))


def generate_class_conditional(model: Model, strategy: Any, labels: Any, key: jax.Array, *, num_classes: int,
                               ar_steps: int) -> tuple[np.ndarray, dict]:
    """Returns (tokens [N, ...], generate's stats): ``strategy`` (a continuous-token Strategy whose
    ``persistent_state`` is the sampled canvas) run by :func:`tokjax.generate` for ``ar_steps`` AR steps from a
    one-token prompt per image, the class id (``strategy.guided`` adds one null-class row, id ``num_classes``,
    per image). Raises ValueError for labels outside [0, num_classes) or a vocabulary without the null class."""
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    y = np.asarray(labels)
    C = _check_int("num_classes", num_classes, 1)
    if y.ndim != 1 or y.size < 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= C:
        raise ValueError(f"labels must be ints [N >= 1] in [0, {C}), got {y.dtype} {y.shape}")
    if model.cfg.vocab_size <= C:
        raise ValueError(f"the model's vocab_size={model.cfg.vocab_size} cannot hold {C} classes and the null class")
    rows = np.concatenate([y, np.full_like(y, C)]) if strategy.guided else y
    out = generate(model, rows[:, None].astype(np.int32), prompt_lengths=np.ones(rows.size, np.int32), key=key,
                   max_new_tokens=ar_steps, strategy=strategy)
    return np.asarray(out.strategy_state)[:y.size], out.stats


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("flow", make_flow_loss, {"t_samples": 4, "key": "flow"},
                  doc="Continuous-token AR (MAR-style flow head, issue 25): rectified-flow loss (target eps - x, "
                      "logit-normal t, t_samples draws per backbone pass) of a flow head on the hidden states of "
                      "[class, P x_0 .. P x_{L-2}]; batch needs x float [B, L, c] and cls int [B] "
                      "(tokjax.vision.flow.continuous_batch_fn); params need params['flow'] "
                      "(tokjax.vision.flow.continuous_init)",
                  overwrite=True)


_register()
