"""RLFR (P57): flow rewards from the policy's latent space, added to the verifier reward of GRPO.

Paper: *RLFR: Extending Reinforcement Learning for LLMs with Flow Environment* (code Jinghaoleven/RLFR).
A small velocity network v_phi is fit by rectified flow to the policy's hidden states of good
responses; a token whose latent the flow cannot transport well (a large velocity deviation) is
off the good-latent manifold and gets a negative reward.

* **Flow network** (official ``flow_simple.py``, ``SimpleMLPAdaLNTimePos``): ``v_phi(x_t, t, c, layer)``,
  input projection -> ``depth`` residual blocks (RMSNorm, AdaLN shift/scale, Linear-SiLU-Linear,
  AdaLN gate) -> final RMSNorm + AdaLN + Linear. The AdaLN condition is y = E_time(t) + E_layer(l) +
  W_c c, E_* sinusoidal (256 frequencies, max period 1e4) then Linear-SiLU-Linear; ``l`` is the tapped
  layer's index / n_layers. Init: Xavier-uniform linears, zero biases, zero AdaLN and output layers.
* **Context** (``flow_context_mode``, ``flow_shift``; the LM config uses ``token_post``, shift 1): the
  target is h_{p} of a token, the condition the latent s positions before it (``token_post``), after
  it (``token_pre``) or itself (``identity``).
* **Rectified flow**: ``x_t = t h + (1 - t) eps``, ``u = h - eps``,
  ``L = E ||v_phi(x_t, t, c, l) - u||^2`` (mean over the feature dim and the masked tokens), t
  logit-normal (sigmoid of N(0, 1)) in the offline fit (LLaMA-Factory ``flow_simple.py``); the
  online update during RL uses the rewarding timesteps instead (openrlhf ``FlowReward``).
* **Score** (velocity deviation): ``s_p = mean_{t in T} (t / (1 - t)) * mean_d (v_phi(x_t) - u)_d^2``,
  T = {0.8}; averaged over the tapped layers.
* **Token reward**: per response, min-max normalise the scores over its valid tokens ("minmax": to
  [0, 1]; "minmax-bil": to [-1, 1]), keep those above ``threshold`` (|s| for bilateral), then in rows
  with at least ``topk`` survivors only the top-k (bilateral: top k/2 and bottom k/2); r_t = -c_flow s~_t.
* **Advantage** (openrlhf ``group_norm`` with gamma = 1): the group-normalised verifier reward sits on
  the last token and returns are summed backwards, so
  ``A_{i,t} = A_i^GRPO + sum_{s >= t} (-c_flow s~_{i,s})``; c_flow = 0 is exactly GRPO.

Verified against the official code (read, not run): the network, its init, the interpolation /
velocity convention (x_t = t h + (1-t) eps, u = h - eps, h at t = 1), the debias weight t / (1 - t) at
t = 0.8, the per-row min-max, threshold-then-top-k filter and its bilateral variant, the reward
-flow_coef * s added to the per-token reward with the verifier reward at the end, the return sum, the
batch_correct flow update (reward >= 1) and the LM run's settings (flow_coef 0.01, threshold 0.6, top-k
15, minmax, 4 blocks, layers at 25/50/75% depth, token_post shift 1, flow lr 1e-4). Deviations / unverified:
the official min-max takes the row's second-smallest unique value of score * mask as the minimum
(a quirk of padding; here the minimum over valid tokens); its group std uses eps 1e-9 (here GRPO's
``group_advantages``, eps 1e-4, so c_flow = 0 is bit-for-bit the core); top-k ties follow
``jax.lax.top_k`` (lowest index first); the paper's numbers are unverified.

Functions: :func:`init_flow`, :func:`flow_velocity`, :func:`flow_matching_loss` (registered loss
``"rlfr_flow"``), :func:`flow_score`, :func:`context_pairs`, :func:`latent_scores`, :func:`normalize_scores`,
:func:`filter_scores`, :func:`rlfr_advantages`, :func:`model_pairs`, :func:`flow_batches` (the flow is fit by
``tokjax.train.train`` with the registered loss; this layer does not import the trainer);
:class:`RLFR` (the ``shape`` plug-in of :func:`tokjax.train.rl.rl_train` and its ``callback``).
Runtime arrays: c_flow, threshold, timesteps (a new value does not recompile); top-k is a shape.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses.registry import register_loss

__all__ = ["CONTEXT_MODES", "NORMS", "RLFR", "context_pairs", "filter_scores", "flow_matching_loss",
           "flow_batches", "flow_score", "flow_velocity", "init_flow", "latent_scores", "make_rlfr_flow_loss",
           "model_pairs", "normalize_scores", "rlfr_advantages"]

CONTEXT_MODES = ("token_post", "token_pre", "identity")
NORMS = ("minmax", "minmax-bil", "none")
_F32 = jnp.float32
_MAX_PERIOD = 10000.0


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _finite(x, name):
    if _concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{name} must be finite (got NaN or inf)")


# ------------------------------------------------------------------------------------------- network
def _linear(key, n_in, n_out, zero=False):
    if zero:
        w = jnp.zeros((n_in, n_out), _F32)
    else:
        lim = math.sqrt(6.0 / (n_in + n_out))  # Xavier uniform, as the official initialize_weights
        w = jax.random.uniform(key, (n_in, n_out), _F32, -lim, lim)
    return {"w": w, "b": jnp.zeros((n_out,), _F32)}


def init_flow(key, dim: int, *, width: int | None = None, depth: int = 4, cond_dim: int | None = None,
              freq_dim: int = 256) -> dict:
    """Returns the parameters of v_phi for latents of size ``dim`` (P57; official SimpleMLPAdaLNTimePos).

    ``width`` (default ``dim``, as the official run) is the model width, ``depth`` the residual
    blocks (official LM config: 4), ``cond_dim`` the context latent's size (default ``dim``),
    ``freq_dim`` the sinusoidal embedding size (256). Output layers and AdaLN start at zero, so an
    untrained flow predicts v = 0.
    """
    for name, v in (("dim", dim), ("depth", depth), ("freq_dim", freq_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if freq_dim % 2:
        raise ValueError(f"freq_dim must be even (cos and sin halves), got {freq_dim}")
    width = dim if width is None else width
    cond_dim = dim if cond_dim is None else cond_dim
    for name, v in (("width", width), ("cond_dim", cond_dim)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    ks = iter(jax.random.split(key, 8 + 2 * depth))

    def embedder():
        return {"fc1": _linear(next(ks), freq_dim, width), "fc2": _linear(next(ks), width, width)}

    return {
        "input_proj": _linear(next(ks), dim, width),
        "cond_embed": _linear(next(ks), cond_dim, width),
        "time_embed": embedder(),
        "layer_embed": embedder(),
        "blocks": [{"norm": jnp.ones((width,), _F32), "fc1": _linear(next(ks), width, width),
                    "fc2": _linear(next(ks), width, width), "ada": _linear(None, width, 3 * width, zero=True)}
                   for _ in range(depth)],
        "final": {"norm": jnp.ones((width,), _F32), "ada": _linear(None, width, 2 * width, zero=True),
                  "out": _linear(None, width, dim, zero=True)},
    }


def _dense(p, x):
    return x @ p["w"] + p["b"]


def _rms(x, w, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _embed(p, s):
    """Sinusoidal embedding of scalars s [N] (cos half then sin half) -> Linear-SiLU-Linear."""
    half = p["fc1"]["w"].shape[0] // 2
    freqs = jnp.exp(-math.log(_MAX_PERIOD) * jnp.arange(half, dtype=_F32) / half)
    args = s[:, None].astype(_F32) * freqs[None]
    e = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    return _dense(p["fc2"], jax.nn.silu(_dense(p["fc1"], e)))


def flow_velocity(params, x, t, cond, layer, *, eps: float = 1e-6) -> jax.Array:
    """Returns v_phi(x, t, cond, layer) float32 [N, D] (P57's flow network).

    ``x`` [N, D] noisy latents, ``cond`` [N, Dc] context latents, ``t`` and ``layer`` scalars or [N]
    (time in [0, 1]; layer = tapped layer index / n_layers). ``eps`` is the RMSNorm epsilon.
    """
    x = jnp.asarray(x, _F32)
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {tuple(x.shape)}")
    n = x.shape[0]
    cond = jnp.asarray(cond, _F32)
    if cond.ndim != 2 or cond.shape[0] != n or cond.shape[1] != params["cond_embed"]["w"].shape[0]:
        raise ValueError(f"cond must be [N={n}, {params['cond_embed']['w'].shape[0]}], got {tuple(cond.shape)}")
    if x.shape[1] != params["input_proj"]["w"].shape[0]:
        raise ValueError(f"x has {x.shape[1]} features but the flow was built for {params['input_proj']['w'].shape[0]}")
    t = jnp.broadcast_to(jnp.asarray(t, _F32), (n,))
    layer = jnp.broadcast_to(jnp.asarray(layer, _F32), (n,))
    h = _dense(params["input_proj"], x)
    y = _embed(params["layer_embed"], layer) + _dense(params["cond_embed"], cond) + _embed(params["time_embed"], t)
    sy = jax.nn.silu(y)
    for blk in params["blocks"]:
        shift, scale, gate = jnp.split(_dense(blk["ada"], sy), 3, axis=-1)
        z = _rms(h, blk["norm"], eps) * (1 + scale) + shift
        h = h + gate * _dense(blk["fc2"], jax.nn.silu(_dense(blk["fc1"], z)))
    fin = params["final"]
    shift, scale = jnp.split(_dense(fin["ada"], sy), 2, axis=-1)
    return _dense(fin["out"], _rms(h, fin["norm"], eps) * (1 + scale) + shift)


def _check_timesteps(timesteps):
    ts = jnp.atleast_1d(jnp.asarray(timesteps, _F32))
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"timesteps must be a scalar or a non-empty 1-D list, got shape {tuple(ts.shape)}")
    if _concrete(ts):
        a = np.asarray(ts)
        if not (np.all(np.isfinite(a)) and np.all(a > 0) and np.all(a < 1)):
            raise ValueError(f"timesteps must lie in (0, 1) (t = 1 is the data, t/(1-t) diverges), got {a.tolist()}")
    return ts


def _pair_mse(params, target, cond, layer, t, noise):
    """Returns mean_d (v_phi(x_t) - u)^2 [N] at times t [N] with x_t = t h + (1 - t) eps, u = h - eps."""
    xt = t[:, None] * target + (1 - t[:, None]) * noise
    v = flow_velocity(params, xt, t, cond, layer)
    return jnp.mean((v - (target - noise)) ** 2, axis=-1)


def _check_pairs(target, cond, layer, mask=None):
    target = jnp.asarray(target, _F32)
    if target.ndim != 2:
        raise ValueError(f"target must be [N, D] latents, got shape {tuple(target.shape)}")
    cond = jnp.asarray(cond, _F32)
    if cond.ndim != 2 or cond.shape[0] != target.shape[0]:
        raise ValueError(f"cond must be [N={target.shape[0]}, Dc], got shape {tuple(cond.shape)}")
    layer = jnp.broadcast_to(jnp.asarray(layer, _F32), (target.shape[0],))
    _finite(target, "target")
    _finite(cond, "cond")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (target.shape[0],):
            raise ValueError(f"mask must be [N={target.shape[0]}], got shape {tuple(mask.shape)}")
        mask = mask.astype(_F32)
    return target, cond, layer, mask


def flow_matching_loss(params, target, cond, layer, key, *, mask=None, timesteps=None, repeats: int = 1):
    """Returns (loss, metrics): the rectified-flow loss E||v_phi(x_t, t, c, l) - (h - eps)||^2 (P57).

    ``target`` h [N, D], ``cond`` [N, Dc], ``layer`` scalar or [N], ``mask`` [N] (rows that count; a
    masked mean, 0 when none). ``timesteps`` None draws t logit-normal per row (official offline fit);
    a list uses those fixed t (official online update, [0.8]). ``repeats`` (official flow_batch_mul)
    draws that many (t, eps) per row.
    """
    target, cond, layer, mask = _check_pairs(target, cond, layer, mask)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    n = target.shape[0]
    rep = lambda a: jnp.tile(a, (repeats,) + (1,) * (a.ndim - 1))  # noqa: E731
    tg, cd, ly = rep(target), rep(cond), rep(layer)
    kt, kn = jax.random.split(key)
    if timesteps is None:
        t_rows = [jax.nn.sigmoid(jax.random.normal(kt, (n * repeats,), _F32))]
    else:
        t_rows = [jnp.full((n * repeats,), ti, _F32) for ti in _check_timesteps(timesteps)]
    keys = jax.random.split(kn, len(t_rows))
    mse = sum(_pair_mse(params, tg, cd, ly, t, jax.random.normal(k, tg.shape, _F32))
              for t, k in zip(t_rows, keys)) / len(t_rows)
    w = jnp.ones((n * repeats,), _F32) if mask is None else rep(mask)
    count = jnp.sum(w)
    loss = jnp.sum(mse * w) / jnp.maximum(count, 1.0)
    return loss, {"flow_loss": loss, "flow_tokens": count / repeats}


def flow_score(params, target, cond, layer, key, *, timesteps=(0.8,)) -> jax.Array:
    """Returns float32 [N]: s = mean_{t in timesteps} (t / (1 - t)) * mean_d (v_phi(x_t) - (h - eps))^2 (P57, t = 0.8).

    One noise draw per row and timestep (``key``). Larger = the latent is harder to transport: off the
    distribution the flow was fit on.
    """
    target, cond, layer, _ = _check_pairs(target, cond, layer)
    ts = _check_timesteps(timesteps)
    keys = jax.random.split(key, ts.shape[0])

    def one(t, k):
        tt = jnp.full((target.shape[0],), t, _F32)
        return (t / (1 - t)) * _pair_mse(params, target, cond, layer, tt, jax.random.normal(k, target.shape, _F32))

    return jnp.mean(jax.vmap(one)(ts, keys), axis=0)


# --------------------------------------------------------------------------------- latents -> scores
def _check_mode(mode, shift):
    if mode not in CONTEXT_MODES:
        raise ValueError(f"mode must be one of {CONTEXT_MODES}, got {mode!r}")
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 1:
        raise ValueError(f"shift must be an int >= 1, got {shift!r}")


def context_pairs(h, *, mode: str = "token_post", shift: int = 1):
    """Returns (target [B, P, D], cond [B, P, D], index int [P]): the (latent, context) pairs of one layer's
    latents ``h`` [B, W, D] and the sequence position each target sits at (official flow_context_mode).

    ``token_post``: target h_p, context h_{p-shift} (p >= shift); ``token_pre``: target h_p, context
    h_{p+shift}; ``identity``: context = target.
    """
    _check_mode(mode, shift)
    h = jnp.asarray(h, _F32)
    if h.ndim != 3:
        raise ValueError(f"latents must be [B, W, D], got shape {tuple(h.shape)}")
    W = h.shape[1]
    if mode != "identity" and W <= shift:
        raise ValueError(f"sequences of {W} positions have no pairs at shift {shift}")
    if mode == "token_post":
        return h[:, shift:], h[:, :-shift], jnp.arange(shift, W)
    if mode == "token_pre":
        return h[:, :-shift], h[:, shift:], jnp.arange(0, W - shift)
    return h, h, jnp.arange(W)


def latent_scores(params, taps, layer_pos, key, *, mode: str = "token_post", shift: int = 1,
                  timesteps=(0.8,)) -> jax.Array:
    """Returns float32 [B, W]: the flow score of every position's latent, averaged over tapped layers.

    ``taps`` [L, B, W, D] (e.g. ``forward(..., taps=Taps(layers, ("resid_post",))).taps["resid_post"]``),
    ``layer_pos`` [L] (layer index / n_layers, the flow's layer input). Positions without a context
    (the first ``shift`` for token_post) score 0, as the official zero padding.
    """
    taps = jnp.asarray(taps, _F32)
    if taps.ndim != 4:
        raise ValueError(f"taps must be [L, B, W, D], got shape {tuple(taps.shape)}")
    layer_pos = jnp.asarray(layer_pos, _F32)
    if layer_pos.shape != taps.shape[:1]:
        raise ValueError(f"layer_pos must be [L={taps.shape[0]}], got shape {tuple(layer_pos.shape)}")
    L, B, W, D = taps.shape
    out = jnp.zeros((B, W), _F32)
    for i, k in enumerate(jax.random.split(key, L)):
        tg, cd, idx = context_pairs(taps[i], mode=mode, shift=shift)
        P = tg.shape[1]
        s = flow_score(params, tg.reshape(B * P, D), cd.reshape(B * P, -1), layer_pos[i], k, timesteps=timesteps)
        out = out.at[:, idx].add(s.reshape(B, P))
    return out / L


def _check_bt(x, name, mask):
    x = jnp.asarray(x, _F32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [B, T], got shape {tuple(x.shape)}")
    _finite(x, name)
    m = jnp.ones(x.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if m.shape != x.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} must equal {name} shape {tuple(x.shape)}")
    return x, m


def normalize_scores(scores, mask=None, *, norm: str = "minmax") -> jax.Array:
    """Returns float32 [B, T]: each row's scores min-max normalised over its valid tokens (official
    flow_reward_norm): "minmax" -> [0, 1], "minmax-bil" -> [-1, 1] ((x - 0.5) * 2), "none" unchanged.
    Invalid tokens are 0; a row whose valid scores are all equal is 0 ("minmax") / -1 ("minmax-bil")."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    s, m = _check_bt(scores, "scores", mask)
    if norm == "none":
        return jnp.where(m, s, 0.0)
    lo = jnp.min(jnp.where(m, s, jnp.inf), axis=1, keepdims=True)
    hi = jnp.max(jnp.where(m, s, -jnp.inf), axis=1, keepdims=True)
    span = hi - lo
    z = jnp.where(m & (span > 0), (s - lo) / jnp.where(span > 0, span, 1.0), 0.0)
    if norm == "minmax-bil":
        z = jnp.where(m, (z - 0.5) * 2, 0.0)
    return z


def filter_scores(scores, mask=None, *, threshold=0.6, topk: int = 15, bilateral: bool = False) -> jax.Array:
    """Returns float32 [B, T]: the official postprocess_flow_score of normalised scores.

    1. ``threshold`` > 0 keeps scores > threshold (bilateral: |score| > threshold), else 0; a
       threshold <= 0 keeps all.
    2. ``topk`` > 0: in rows with at least ``topk`` non-zero scores keep only the ``topk`` largest
       (bilateral: the topk // 2 largest and the topk // 2 smallest); other rows stay as after 1.
    ``threshold`` may be a traced scalar; ``topk`` is a static int (<= 0: off).
    """
    s, m = _check_bt(scores, "scores", mask)
    if jnp.ndim(threshold) != 0:
        raise ValueError(f"threshold must be a scalar, got shape {tuple(jnp.shape(threshold))}")
    _finite(threshold, "threshold")
    if not isinstance(topk, int) or isinstance(topk, bool):
        raise ValueError(f"topk must be an int (<= 0 turns it off), got {topk!r}")
    s = jnp.where(m, s, 0.0)
    thr = jnp.asarray(threshold, _F32)
    keep = (s > thr) | (bilateral & (s < -thr))
    s = jnp.where((thr > 0) & ~keep, 0.0, s)
    T = s.shape[1]
    if topk > 0 and T >= topk:
        if bilateral:
            k = topk // 2
            _, ip = jax.lax.top_k(s, k)
            _, ineg = jax.lax.top_k(-s, k)
            idx = jnp.concatenate([ip, ineg], axis=1)
        else:
            _, idx = jax.lax.top_k(s, topk)
        sel = jnp.zeros(s.shape, bool).at[jnp.arange(s.shape[0])[:, None], idx].set(True)
        need = jnp.sum(s != 0, axis=1, keepdims=True) >= topk
        s = jnp.where(need & ~sel, 0.0, s)
    return s


def rlfr_advantages(rewards, group_size: int, flow_scores, mask=None, c_flow=0.01, *, scale="group") -> jax.Array:
    """Returns float32 [B, T] RLFR advantages A_{i,t} = A_i + sum_{s >= t} (-c_flow * flow_scores_{i,s}) (P57).

    ``A_i`` = :func:`tokjax.losses.grpo.group_advantages` (``rewards`` [B], ``scale``); ``flow_scores``
    [B, T] the filtered, normalised token scores (only ``mask`` tokens count). c_flow = 0 gives GRPO's
    advantages broadcast over tokens; ``c_flow`` >= 0 may be a traced scalar.
    """
    from tokjax.losses.grpo import group_advantages

    s, m = _check_bt(flow_scores, "flow_scores", mask)
    a = group_advantages(rewards, group_size, scale=scale)
    if a.shape[0] != s.shape[0]:
        raise ValueError(f"{a.shape[0]} rewards but flow_scores has {s.shape[0]} rows")
    if jnp.ndim(c_flow) != 0:
        raise ValueError(f"c_flow must be a scalar, got shape {tuple(jnp.shape(c_flow))}")
    check_range(c_flow, "c_flow", lo=0.0)
    r = jnp.where(m, -jnp.asarray(c_flow, _F32) * s, 0.0)
    ret = jnp.flip(jnp.cumsum(jnp.flip(r, -1), axis=-1), -1)
    return a[:, None] + ret


# ------------------------------------------------------------------------------- registered loss / fit
def make_rlfr_flow_loss(*, timesteps=None, repeats: int = 1):
    """Returns loss_fn(params, cfg, batch, rng) -> (loss, metrics) of :func:`flow_matching_loss` over a plain
    pytree of flow params (cfg None). ``batch``: ``target`` [N, D], ``cond`` [N, Dc], ``layer`` [N], optional
    ``mask`` [N]. Registered as ``"rlfr_flow"``."""
    if timesteps is not None:
        timesteps = tuple(float(t) for t in np.atleast_1d(timesteps))
        _check_timesteps(timesteps)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """P57 rectified flow on batch['target'] given batch['cond'] and batch['layer']."""
        del cfg
        if not isinstance(batch, dict) or not {"target", "cond", "layer"} <= set(batch):
            raise ValueError("the rlfr_flow loss needs batch['target'] [N, D], batch['cond'] [N, Dc], batch['layer'] [N] "
                             "(and optionally batch['mask'] [N])")
        key = jax.random.key(0) if rng is None else rng
        return flow_matching_loss(params, batch["target"], batch["cond"], batch["layer"], key,
                                  mask=batch.get("mask"), timesteps=timesteps, repeats=repeats)

    return loss_fn


def _rlfr_flow_factory(timesteps, repeats):
    return make_rlfr_flow_loss(timesteps=timesteps, repeats=int(repeats))


register_loss("rlfr_flow", _rlfr_flow_factory, {"timesteps": None, "repeats": 1},
              doc="P57 RLFR rectified flow on latents: E||v_phi(t h + (1-t) eps, t, cond, layer) - (h - eps)||^2 over "
                  "batch['target'] / ['cond'] / ['layer'] (flow params a plain pytree, cfg None); timesteps None = "
                  "logit-normal t", overwrite=True)


def model_pairs(model, tokens, mask, layers, *, mode: str = "token_post", shift: int = 1) -> dict:
    """Returns host arrays {"target", "cond", "layer"} [N, ...]: the (latent, context) pairs of the valid
    positions of ``tokens`` [B, W] (``mask`` [B, W] bool, e.g. completion tokens) at the resid_post of
    ``layers`` of ``model``, for :func:`flow_batches` / the ``rlfr_flow`` loss."""
    taps = _taps(model.params, model.cfg, jnp.asarray(tokens, jnp.int32), tuple(layers))
    mask = np.asarray(mask, bool)
    n = model.cfg.n_layers
    out = {"target": [], "cond": [], "layer": []}
    for i, li in enumerate(layers):
        tg, cd, idx = context_pairs(taps[i], mode=mode, shift=shift)
        sel = mask[:, np.asarray(idx)]
        out["target"].append(np.asarray(tg)[sel])
        out["cond"].append(np.asarray(cd)[sel])
        out["layer"].append(np.full(int(sel.sum()), li / n, np.float32))
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def flow_batches(pairs: dict, *, batch_size: int = 256, seed: int = 0):
    """Returns ``batch_fn(step) -> {"target", "cond", "layer"}``: ``batch_size`` pairs drawn with replacement from
    ``pairs`` (:func:`model_pairs`), a pure function of (seed, step), for ``tokjax.train.train`` with the
    ``rlfr_flow`` loss::

        flow, hist = tokjax.train.train(None, TrainConfig(loss={"name": "rlfr_flow"}, ...),
                                        flow_batches(pairs), params=init_flow(key, d))
    """
    if not isinstance(pairs, dict) or not {"target", "cond", "layer"} <= set(pairs):
        raise ValueError(f"pairs must be a dict with 'target', 'cond' and 'layer', got {pairs!r:.80}")
    n = len(pairs["target"])
    if n < 1:
        raise ValueError("pairs is empty: no latents to fit the flow on")
    if any(len(pairs[k]) != n for k in ("cond", "layer")):
        raise ValueError(f"pairs must all have {n} rows, got {[len(pairs[k]) for k in ('target', 'cond', 'layer')]}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    data = {k: jnp.asarray(pairs[k], _F32) for k in ("target", "cond", "layer")}
    _finite(data["target"], "pairs['target']")

    def batch_fn(step):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(seed), step), (batch_size,), 0, n)
        return {k: v[idx] for k, v in data.items()}

    return batch_fn


def _taps(params, cfg, tokens, layers):
    from tokjax.model.forward import Taps, forward

    out = forward(params, cfg, tokens, taps=Taps(layers=layers, sites=("resid_post",)), compute_logits=False)
    return jax.lax.stop_gradient(out.taps["resid_post"])


# ------------------------------------------------------------------------------------- rl_train plug-in
class RLFR:
    """The RLFR token-advantage shaper for :func:`tokjax.train.rl.rl_train` (P57)::

        rlfr = RLFR(model, flow_params, layers=(0, 1))
        rl_train(model, task, cfg, shape=rlfr.shape, callback=rlfr.callback)

    ``shape(rollouts, stats)`` taps the current policy's resid_post at ``layers`` on the rollout tokens,
    scores every completion token's latent with the flow (:func:`latent_scores`), normalises and filters
    the scores per row (:func:`normalize_scores`, :func:`filter_scores`) and returns
    :func:`rlfr_advantages` [B, T]. ``callback(step, model, row)`` keeps the policy in step with training
    (rl_train's shape sees stats, not params). ``online=(train_step, state)`` (a
    ``tokjax.train.make_train_step(None, optimizer, make_loss("rlfr_flow", timesteps=[0.8]))`` and its
    ``init_state(None, optimizer, params=flow_params)``) also updates the flow each step on the latents of the
    correct rollouts (reward >= 1, official batch_correct) at the rewarding timesteps (official online update).
    Defaults are the official LM run's (c_flow 0.01, threshold 0.6, top-k 15, minmax, token_post 1, t 0.8).
    """

    def __init__(self, model, flow_params, *, layers, c_flow=0.01, threshold=0.6, topk: int = 15,
                 norm: str = "minmax", mode: str = "token_post", shift: int = 1, timesteps=(0.8,),
                 online=None, scale: str = "group", seed: int = 0):
        layers = tuple(int(i) for i in layers)
        if not layers or any(not 0 <= i < model.cfg.n_layers for i in layers):
            raise ValueError(f"layers must be non-empty indices in [0, {model.cfg.n_layers}), got {layers}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        _check_mode(mode, shift)
        check_range(c_flow, "c_flow", lo=0.0)
        self.cfg, self.policy, self.flow = model.cfg, model.params, flow_params
        self.layers, self.layer_pos = layers, jnp.asarray([i / model.cfg.n_layers for i in layers], _F32)
        self.c_flow, self.threshold = jnp.asarray(c_flow, _F32), jnp.asarray(threshold, _F32)
        self.topk, self.norm, self.mode, self.shift, self.scale = topk, norm, mode, shift, scale
        self.timesteps = _check_timesteps(timesteps)
        self.key = jax.random.key(seed)
        self.calls, self.log = 0, []
        self._score = jax.jit(self._score_impl)
        self._step, self._state = None, None
        if online is not None:
            if not (isinstance(online, tuple) and len(online) == 2 and callable(online[0])):
                raise ValueError("online must be (train_step, TrainState): tokjax.train.make_train_step(None, optimizer, "
                                 "make_loss('rlfr_flow', timesteps=[0.8])) and init_state(None, optimizer, params=flow)")
            self._step, self._state = online

    def _score_impl(self, policy, flow, tokens, mask, key, threshold):
        taps = _taps(policy, self.cfg, tokens, self.layers)
        s = latent_scores(flow, taps, self.layer_pos, key, mode=self.mode, shift=self.shift,
                          timesteps=self.timesteps)[:, 1:]  # position p's latent scores target p - 1 (token p)
        raw = jnp.where(mask, s, 0.0)
        z = filter_scores(normalize_scores(raw, mask, norm=self.norm), mask, threshold=threshold, topk=self.topk,
                          bilateral=self.norm == "minmax-bil")
        return raw, z, taps

    def scores(self, tokens, mask):
        """Returns (raw scores [B, W-1], filtered normalised scores [B, W-1]) of rollout ``tokens`` [B, W] under the
        current policy; ``mask`` [B, W-1] the valid completion targets."""
        self.calls += 1
        raw, z, _ = self._score(self.policy, self.flow, jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool),
                                jax.random.fold_in(self.key, self.calls), self.threshold)
        return raw, z

    def shape(self, rollouts, stats) -> jax.Array:
        """rl_train's ``shape`` plug point: returns RLFR advantages [B, T] (c_flow = 0: GRPO's)."""
        mask = jnp.asarray(stats.mask)
        tokens = jnp.asarray(rollouts.tokens, jnp.int32)
        self.calls += 1
        raw, z, taps = self._score(self.policy, self.flow, tokens, mask, jax.random.fold_in(self.key, self.calls),
                                   self.threshold)
        adv = rlfr_advantages(rollouts.rewards, rollouts.group_size, z, mask, self.c_flow, scale=self.scale)
        row = {"flow_score": float(jnp.sum(raw) / jnp.maximum(jnp.sum(mask), 1)),
               "flow_reward_tokens": float(jnp.mean(jnp.sum(z != 0, axis=1)))}
        if self._step is not None:
            correct = np.asarray(rollouts.rewards) >= 1.0
            if correct.any():
                m = np.asarray(mask) & correct[:, None]
                pos = np.concatenate([np.zeros((m.shape[0], 1), bool), m], axis=1)  # target t = position t + 1
                batch = self._online_pairs(taps, pos)
                self._state, met = self._step(self._state, batch)
                self.flow = self._state.params
                row["flow_loss"] = float(met["loss"])
        self.log.append(row)
        return adv

    def _online_pairs(self, taps, pos):
        tg, cd, ly, mk = [], [], [], []
        for i in range(len(self.layers)):
            t, c, idx = context_pairs(taps[i], mode=self.mode, shift=self.shift)
            B, P, D = t.shape
            tg.append(t.reshape(B * P, D))
            cd.append(c.reshape(B * P, -1))
            ly.append(jnp.full((B * P,), self.layer_pos[i], _F32))
            mk.append(jnp.asarray(pos[:, np.asarray(idx)]).reshape(-1))
        return {"target": jnp.concatenate(tg), "cond": jnp.concatenate(cd), "layer": jnp.concatenate(ly),
                "mask": jnp.concatenate(mk)}

    def callback(self, step, model, row):
        """rl_train's ``callback``: the next rollouts come from ``model``, so the next scores use its latents."""
        self.policy = model.params
