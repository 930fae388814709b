"""MAR: masked-set continuous autoregression with a per-token flow head (issue 25, item 1(c); Li et al. 2024,
"Autoregressive Image Generation without Vector Quantization", code LTH14/mar ``models/mar.py``; the base model
of P19 DiSA, :mod:`tokjax.vision.disa`).

Model. The shared forward reads ``[class token, u_0, ..., u_{L-1}]`` under a bidirectional mask, with
u_i = P x_i for a known token and u_i = m (a learned mask embedding) for a masked one (P: a learned projection
token_dim -> d_model; positions 0, 1, ..., L; the class token is the backbone's own embedding of id c, the null
class = ``num_classes``). The hidden state at slot 1 + i is the condition z_i of token i, and the flow head of
:mod:`tokjax.vision.flow` (MAR's ``SimpleMLPAdaLN`` as a rectified flow) samples x_i from it. MAR's
encoder/decoder pair and its 64 class "buffer" tokens are one backbone and one class token here.

Training (official ``forward``): per row a uniformly random order; one mask ratio per batch
r = 1 + 0.25 tn, tn ~ N(0, 1) truncated to [(r_min - 1) / 0.25, 0] (r in [r_min, 1], r_min = 0.7); the first
ceil(r L) tokens of each order are masked, and the flow loss (``flow_head_loss``, ``t_samples`` (t, eps)
draws per backbone pass as ``diffusion_batch_mul``) is averaged over the masked tokens only.

Decoding (official ``sample_tokens``), n AR iterations: before step s, M_s tokens are masked (M_0 = L); the
number left masked after it is (the cosine schedule of MaskGIT / MAR; ``fill="linear"``: 1 - (s + 1) / n, in
exact integers)::

    M_{s+1} = max(1, min(M_s - 1, floor(L cos(pi/2 (s + 1) / n))))      (s < n - 1;  M_n = 0)

so step s fills |fill_s| = M_s - M_{s+1} tokens, the next ones of the random order, each drawn by the flow head
with T(s) steps from its hidden state in one forward over the current canvas. Head evaluations per image are
sum_s T(s) |fill_s| (``head_evals``; with guidance each is evaluated on a conditional and a null-class row).
Classifier-free guidance follows the official linear schedule g_s = 1 + (g - 1)(L - mask_len_s) / L, with
mask_len_s = M_{s+1} except at the last step (there the official clamp gives 1). The steps
schedule T(s) is a runtime int32 [n] (e.g. :func:`tokjax.vision.disa.disa_steps`): new schedules never
recompile the decode loop. The fill sizes are a host table of (L, n); each step samples a fixed-size block of
max_s |fill_s| tokens (the unused ones are neither written nor counted).

Reduction (tested): ``attention="causal"`` with ``order="raster"``, ``fill="linear"`` and n = L fills one token
per step in raster order under a causal mask and reads z_i at slot i (the slot before the token, whose input is
P x_{i-1}); the hidden states are then exactly those of ``[class, P x_0, ..., P x_{L-2}]``, i.e. continuous
raster AR (:func:`tokjax.vision.flow.continuous_ar`) with the same params and key, and the causal loss is the
``"flow"`` loss.
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

from tokjax.decoding import Strategy, commit
from tokjax.logits import check_range, hparam
from tokjax.model import Inputs, Model, ModelConfig, forward
from tokjax.model.attention import Bidirectional, Causal
from tokjax.vision.image_lm import image_rows
from tokjax.model.forward import embed
from tokjax.vision.flow import (SAMPLERS, _check_int, _check_steps, _dense, _head_dims, _linear, flow_head_init,
                                flow_head_loss, flow_sample, generate_class_conditional)

__all__ = ["ATTENTION", "FILLS", "MAR", "MarDecodeState", "MarSamples", "make_mar_loss", "mar", "mar_fill_counts",
           "mar_hidden", "mar_init", "mar_loss", "mar_masked_counts", "sample_mar"]

_F32 = jnp.float32
ATTENTION = ("bidirectional", "causal")
FILLS = ("cosine", "linear")
ORDERS = ("random", "raster")


# ------------------------------------------------------------------------------------------- schedule
@functools.lru_cache(maxsize=None)
def _counts(length: int, iters: int, fill: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(|fill_s|, M_{s+1}, official mask_len_s) for s < iters, in the official float64 arithmetic."""
    L, n = length, iters
    masked, left, fills, lens = L, [], [], []
    for s in range(n):
        if fill == "cosine":  # the official float64 arithmetic
            target = int(np.floor(L * np.cos(math.pi / 2.0 * (s + 1) / n)))
        else:  # floor(L (1 - (s + 1) / n)) in exact integers
            target = (L * (n - s - 1)) // n
        mask_len = max(1, min(masked - 1, target))  # masks out at least one for the next step
        nxt = 0 if s == n - 1 else mask_len  # the last step fills every remaining token
        fills.append(masked - nxt)
        left.append(nxt)
        lens.append(mask_len)
        masked = nxt
    return tuple(fills), tuple(left), tuple(lens)


def _check_schedule(length: Any, iters: Any, fill: str) -> tuple[int, int]:
    L = _check_int("length", length, 1)
    n = _check_int("iters", iters, 1)
    if n > L:
        raise ValueError(f"iters={n} AR steps cannot each fill a token of length={L}: need 1 <= iters <= length")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    return L, n


def mar_fill_counts(length: int, iters: int, fill: str = "cosine") -> np.ndarray:
    """Returns int32 [iters]: |fill_s|, the tokens AR step s fills (module docstring; MAR's official arithmetic,
    float64 as the official numpy code). Sums to ``length``. Raises ValueError unless 1 <= iters <= length."""
    L, n = _check_schedule(length, iters, fill)
    return np.asarray(_counts(L, n, fill)[0], np.int32)


def mar_masked_counts(length: int, iters: int, fill: str = "cosine") -> np.ndarray:
    """Returns int32 [iters]: M_{s+1}, the tokens still masked after AR step s (0 after the last)."""
    L, n = _check_schedule(length, iters, fill)
    return np.asarray(_counts(L, n, fill)[1], np.int32)


# ------------------------------------------------------------------------------------------- model
def mar_init(key: jax.Array, cfg: ModelConfig, token_dim: int, *, width: int = 128, depth: int = 3) -> dict:
    """Returns ``params["mar"]``: {"head": flow head, "proj": token_dim -> d_model, "mask": the mask embedding
    [d_model] (normal, std 0.02 as MAR's ``mask_token``)}. "head" and "proj" have the layout of
    :func:`tokjax.vision.flow.continuous_init`, so the same dict can drive continuous raster AR."""
    token_dim = _check_int("token_dim", token_dim, 1)
    k1, k2, k3 = jax.random.split(key, 3)
    return {"head": flow_head_init(k1, cfg.d_model, token_dim, width, depth),
            "proj": _linear(k2, token_dim, cfg.d_model),
            "mask": 0.02 * jax.random.normal(k3, (cfg.d_model,), _F32)}


def _mp(params: Any, key: str) -> dict:
    if not isinstance(params, dict) or key not in params:
        raise ValueError(f"params has no {key!r} entry: add it, e.g. params[{key!r}] = "
                         "tokjax.vision.mar.mar_init(key, cfg, token_dim)")
    fl = params[key]
    if not isinstance(fl, dict) or not {"head", "proj", "mask"} <= set(fl):
        raise ValueError(f"params[{key!r}] must hold 'head', 'proj' and 'mask' (mar_init), got "
                         f"{sorted(fl) if isinstance(fl, dict) else type(fl).__name__}")
    return fl


def _check_cfg(cfg: ModelConfig, length: int) -> None:
    if cfg.pos_dims != 1:
        raise ValueError(f"MAR reads sequence positions (pos_dims=1), got pos_dims={cfg.pos_dims}")
    if length + 1 > cfg.max_len:
        raise ValueError(f"[class, {length} tokens] does not fit the model's max_len={cfg.max_len}")


def _mask_spec(attention: str):
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    return Bidirectional() if attention == "bidirectional" else Causal()


def _hidden(params, cfg, fl, x, known, cls, attention):
    """float32 [B, L, D]: the condition z_i of every token (slot 1 + i; causal: slot i)."""
    B, L = x.shape[:2]
    e_cls = embed(params, cfg, jnp.asarray(cls, jnp.int32).reshape(B, 1)).astype(_F32)
    u = jnp.where(jnp.asarray(known)[..., None], _dense(fl["proj"], x), fl["mask"].astype(_F32))
    e = jnp.concatenate([e_cls, u], axis=1)
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype), positions=jnp.arange(L + 1, dtype=jnp.int32)),
                  mask=_mask_spec(attention), compute_logits=False)
    h = out.hidden.astype(_F32)
    return h[:, 1:] if attention == "bidirectional" else h[:, :-1]


def mar_hidden(params: Any, cfg: ModelConfig, x: jax.Array, known: jax.Array, cls: jax.Array, *,
               attention: str = "bidirectional", key: str = "mar") -> jax.Array:
    """Returns float32 [B, L, D]: the condition z_i of every token for tokens ``x`` [B, L, c] of which ``known``
    [B, L] (bool) are visible (the others enter as the mask embedding), class ids ``cls`` [B] (module
    docstring; one full forward). Raises ValueError for shapes that do not fit the params or the model."""
    fl = _mp(params, key)
    c = _head_dims(fl["head"])[1]
    x = jnp.asarray(x, _F32)
    if x.ndim != 3 or x.shape[-1] != c:
        raise ValueError(f"tokens must be float [B, L, token_dim={c}], got shape {x.shape}")
    if jnp.shape(known) != x.shape[:2]:
        raise ValueError(f"known must be bool [B, L]={x.shape[:2]}, got shape {jnp.shape(known)}")
    _check_cfg(cfg, x.shape[1])
    return _hidden(params, cfg, fl, x, known, cls, attention)


def mar_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, t_samples: int = 4,
             mask_ratio_min: float = 0.7, attention: str = "bidirectional", key: str = "mar") -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse", "mask_ratio"}): MAR's masked flow loss (module docstring) on ``batch`` =
    {"x" float [B, L, c], "cls" int [B]} (e.g. :func:`tokjax.vision.flow.continuous_batch_fn`). ``attention=
    "causal"``: every token visible, z_i read at slot i, all tokens scored (the ``"flow"`` loss of continuous
    raster AR). Raises ValueError for a missing rng, a bad batch or mask_ratio_min outside (0, 1]."""
    if rng is None:
        raise ValueError("the mar loss draws orders, t and eps: it needs rng (tokjax.train passes one per step)")
    if not isinstance(batch, dict) or "x" not in batch or "cls" not in batch:
        raise ValueError("a mar batch needs 'x' float [B, L, token_dim] and 'cls' int [B] (build it with "
                         "tokjax.vision.flow.continuous_batch_fn)")
    check_range(mask_ratio_min, "mask_ratio_min", lo=0.0, hi=1.0, lo_open=True)
    _mask_spec(attention)
    fl = _mp(params, key)
    x = jnp.asarray(batch["x"], _F32)
    c = _head_dims(fl["head"])[1]
    if x.ndim != 3 or x.shape[-1] != c:
        raise ValueError(f"batch['x'] must be float [B, L, token_dim={c}], got shape {x.shape}")
    B, L = x.shape[:2]
    _check_cfg(cfg, L)
    if attention == "causal":
        z = _hidden(params, cfg, fl, x, jnp.ones((B, L), bool), batch["cls"], attention)
        loss = flow_head_loss(fl["head"], z, x, rng, t_samples=t_samples)
        return loss, {"flow_mse": loss, "mask_ratio": jnp.zeros((), _F32)}
    ko, kr, kf = jax.random.split(rng, 3)
    order = jnp.argsort(jax.random.uniform(ko, (B, L)), axis=1)  # a uniformly random order per row
    rank = jnp.argsort(order, axis=1)  # position of token i in its row's order
    lower = (jnp.asarray(mask_ratio_min, _F32) - 1.0) / 0.25
    ratio = 1.0 + 0.25 * jax.random.truncated_normal(kr, lower, 0.0, (), _F32)  # one ratio per batch (official)
    num = jnp.clip(jnp.ceil(L * ratio), 1, L).astype(jnp.int32)
    masked = rank < num
    z = _hidden(params, cfg, fl, x, ~masked, batch["cls"], attention)
    loss = flow_head_loss(fl["head"], z, x, kf, t_samples=t_samples, mask=masked)
    return loss, {"flow_mse": loss, "mask_ratio": num.astype(_F32) / L}


@functools.lru_cache(maxsize=None)
def make_mar_loss(t_samples: int = 4, mask_ratio_min: float = 0.7, attention: str = "bidirectional",
                  key: str = "mar") -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`mar_loss` (the factory
    of the registered loss ``"mar"``)."""
    t_samples = _check_int("t_samples", t_samples, 1)
    check_range(mask_ratio_min, "mask_ratio_min", lo=0.0, hi=1.0, lo_open=True)
    _mask_spec(attention)
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must name the params entry of the MAR params, got {key!r}")
    return functools.partial(mar_loss, t_samples=t_samples, mask_ratio_min=float(mask_ratio_min),
                             attention=attention, key=key)


# ------------------------------------------------------------------------------------------- Strategy
@struct.dataclass
class MarDecodeState:
    """``DecodeState.extra`` of :class:`MAR`: ``canvas`` float32 [R, L, c], ``known`` bool [R, L], ``order``
    int32 [R, L] (generation order; rows of one image share it), ``flow`` (params["mar"]), ``steps`` int32 [n]
    (T(s)), ``fills`` / ``starts`` int32 [n] (|fill_s| and its offset in the order), ``ramp`` float32 [n]
    ((L - mask_len_s) / L, the guidance ramp), ``guidance`` float32 [images], ``temperature`` float32 [],
    ``head_evals`` int32 [] (per image: sum_s T(s) |fill_s|)."""

    canvas: jax.Array
    known: jax.Array
    order: jax.Array
    flow: Any
    steps: jax.Array
    fills: jax.Array
    starts: jax.Array
    ramp: jax.Array
    guidance: jax.Array
    temperature: jax.Array
    head_evals: jax.Array


@dataclasses.dataclass(frozen=True)
class MAR(Strategy):
    """Masked-set continuous AR decoding (module docstring): ``iters`` AR steps, each one full forward over the
    canvas and |fill_s| flow-head samples.

    Static: ``length`` L, ``iters`` n (1 <= n <= L), ``sampler`` ("euler" | "euler_maruyama"), ``guided`` (rows
    = [conditional; null class]), ``order`` ("random": per image, drawn from the decode key; "raster"),
    ``fill`` ("cosine" | "linear"), ``attention`` ("bidirectional"; "causal" needs order "raster": the AR
    reduction). Runtime (state): ``flow`` (the ``params["mar"]`` to use; None = the model's own), ``steps``
    (scalar or [n]: T(s)), ``guidance`` (scalar or [images]; ramped linearly over steps as MAR),
    ``temperature``.
    """

    length: int
    iters: int
    sampler: str = "euler"
    guided: bool = False
    order: str = "random"
    fill: str = "cosine"
    attention: str = "bidirectional"
    flow: Any = hparam(None)
    steps: Any = hparam(10)
    guidance: Any = hparam(1.0)
    temperature: Any = hparam(1.0)

    def __post_init__(self):
        _check_schedule(self.length, self.iters, self.fill)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        _mask_spec(self.attention)
        if self.attention == "causal" and self.order != "raster":
            raise ValueError("attention='causal' reads each token's condition at the slot before it, which is only "
                             "defined for order='raster'")
        s = _check_steps(self.steps)
        if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != self.iters):
            raise ValueError(f"steps must be a scalar or one count per AR step [iters={self.iters}], got shape "
                             f"{s.shape}")
        check_range(self.temperature, "temperature", lo=0.0)
        check_range(self.guidance, "guidance", lo=0.0)

    @property
    def max_fill(self) -> int:
        return int(max(_counts(self.length, self.iters, self.fill)[0]))

    def validate(self, cfg: ModelConfig) -> None:
        _check_cfg(cfg, self.length)

    def init(self, params, cfg: ModelConfig, state) -> MarDecodeState:
        fl = _mp(params, "mar") if self.flow is None else self.flow
        if not isinstance(fl, dict) or not {"head", "proj", "mask"} <= set(fl):
            raise ValueError("flow must be MAR params {'head', 'proj', 'mask'} (tokjax.vision.mar.mar_init)")
        d_model, c = _head_dims(fl["head"])
        if d_model != cfg.d_model or fl["proj"]["w"].shape != (c, cfg.d_model) or fl["mask"].shape != (cfg.d_model,):
            raise ValueError(f"the MAR params do not fit the model: head condition width {d_model}, projection "
                             f"{tuple(fl['proj']['w'].shape)}, mask {tuple(fl['mask'].shape)}, expected "
                             f"d_model={cfg.d_model}")
        R = state.tokens.shape[0]
        n = image_rows(R, self.guided)
        L = self.length
        g = jnp.asarray(self.guidance, _F32)
        if g.ndim > 1 or (g.ndim == 1 and g.shape[0] != n):
            raise ValueError(f"guidance must be a scalar or [images={n}], got shape {g.shape}")
        if self.order == "raster":
            order = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (R, L))
        else:  # one order per image, shared by its null-class row (as the official code)
            u = jax.random.uniform(jax.random.fold_in(state.key, 0x6D6172), (n, L))
            order = jnp.argsort(u, axis=1).astype(jnp.int32)
            order = jnp.concatenate([order, order], axis=0) if self.guided else order
        fills, _, lens = _counts(L, self.iters, self.fill)
        return MarDecodeState(
            canvas=jnp.zeros((R, L, c), _F32), known=jnp.zeros((R, L), bool), order=order,
            flow=jax.tree.map(jnp.copy, fl),  # copied: the decode state is donated to the loop
            steps=jnp.broadcast_to(_check_steps(self.steps), (self.iters,)),
            fills=jnp.asarray(fills, jnp.int32), starts=jnp.asarray(np.cumsum((0,) + fills[:-1]), jnp.int32),
            ramp=jnp.asarray((L - np.asarray(lens)) / L, _F32), guidance=jnp.broadcast_to(g, (n,)).astype(_F32),
            temperature=jnp.asarray(self.temperature, _F32), head_evals=jnp.zeros((), jnp.int32))

    def step(self, params, cfg: ModelConfig, transform, state, eos_id=None):
        del transform
        ex = state.extra
        R, L = ex.known.shape
        n = R // 2 if self.guided else R
        F = self.max_fill
        s = jnp.minimum(state.step, self.iters - 1)
        cls = jnp.take_along_axis(state.tokens, (state.prompt_lengths - 1)[:, None], axis=1)[:, 0]
        z_all = _hidden(params, cfg, ex.flow, ex.canvas, ex.known, cls, self.attention)  # [R, L, D]
        j = jnp.arange(F)
        valid = j < ex.fills[s]
        slot = ex.starts[s] + j
        idx = jnp.take_along_axis(ex.order, jnp.broadcast_to(jnp.minimum(slot, L - 1), (R, F)), axis=1)  # [R, F]
        z = jnp.take_along_axis(z_all, idx[..., None], axis=1)  # [R, F, D]
        key, sub = jax.random.split(state.key)
        T = ex.steps[s]
        if self.guided:
            g = 1.0 + (ex.guidance - 1.0) * ex.ramp[s]  # [n]
            x, _ = flow_sample(ex.flow["head"], z[:n], sub, steps=T, sampler=self.sampler,
                               temperature=ex.temperature, z_uncond=z[n:], guidance=g[:, None, None])
            x = jnp.concatenate([x, x], axis=0)
        else:
            x, _ = flow_sample(ex.flow["head"], z, sub, steps=T, sampler=self.sampler, temperature=ex.temperature)
        write = jnp.where(valid[None, :], idx, L)  # unused block entries point past the canvas and are dropped
        rows = jnp.arange(R)[:, None]
        canvas = ex.canvas.at[rows, write].set(x, mode="drop")
        known = ex.known.at[rows, write].set(True, mode="drop")
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1)
        extra = ex.replace(canvas=canvas, known=known, head_evals=ex.head_evals + T * ex.fills[s])
        state = state.replace(key=key, stats=stats, extra=extra)
        return commit(state, jnp.zeros((R, 1), jnp.int32), jnp.ones((R,), jnp.int32), eos_id)

    def finalize(self, state) -> dict:
        return {"head_evals": int(state.extra.head_evals)}

    def persistent_state(self, extra: MarDecodeState) -> jax.Array:
        return extra.canvas


def mar(flow: Any = None, *, length: int, iters: int, steps: Any = 10, guidance: Any = 1.0, temperature: Any = 1.0,
        sampler: str = "euler", order: str = "random", fill: str = "cosine", attention: str = "bidirectional",
        guided: bool | None = None) -> MAR:
    """Returns the :class:`MAR` strategy (``steps``: a scalar or a per-AR-step schedule [iters], e.g.
    ``tokjax.vision.disa.disa_steps(iters)``; ``guided`` defaults to ``guidance`` != 1)."""
    if guided is None:
        guided = bool(np.any(np.asarray(guidance) != 1.0))
    return MAR(length=length, iters=iters, sampler=sampler, guided=guided, order=order, fill=fill,
               attention=attention, flow=flow, steps=steps, guidance=guidance, temperature=temperature)


class MarSamples(NamedTuple):
    """What :func:`sample_mar` returns: ``tokens`` float32 [N, L, c] (token order) and generate's ``stats``
    (forward_calls = iters, head_evals = sum_s T(s) |fill_s| per image)."""

    tokens: np.ndarray
    stats: dict


def sample_mar(model: Model, strategy: MAR, labels: Any, key: jax.Array, *, num_classes: int) -> MarSamples:
    """Returns :class:`MarSamples` for class ``labels`` [N] (ints in [0, num_classes)), decoded by ``strategy``
    through :func:`tokjax.generate` (guided strategies add one null-class row per image)."""
    if not isinstance(strategy, MAR):
        raise ValueError(f"strategy must be a MAR (tokjax.vision.mar.mar(...)), got {type(strategy).__name__}")
    return MarSamples(*generate_class_conditional(model, strategy, labels, key, num_classes=num_classes,
                                                  ar_steps=strategy.iters))


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("mar", make_mar_loss, {"t_samples": 4, "mask_ratio_min": 0.7, "attention": "bidirectional",
                                         "key": "mar"},
                  doc="MAR (issue 25, DiSA's base): masked-set continuous AR, flow loss on the masked tokens of "
                      "[class, P x or mask embedding] under a bidirectional mask (random order, one truncated-normal "
                      "mask ratio in [mask_ratio_min, 1] per batch); batch needs x float [B, L, c] and cls int [B] "
                      "(tokjax.vision.flow.continuous_batch_fn); params need params['mar'] "
                      "(tokjax.vision.mar.mar_init)",
                  overwrite=True)


_register()
