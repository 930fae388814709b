"""FlexTok: images resampled into 1-D register tokens of flexible length (P32; Bachmann et al. 2025, "FlexTok:
Resampling Images into 1D Token Sequences of Flexible Length", ICML 2025, arXiv 2502.13967; official tokenizer
code apple/ml-flextok).

Stage 1, the tokenizer, on 8 x 8 glyphs (the CPU setting of the paper notes; FlexTok's VAE latents are replaced by
2 x 2 pixel patches x in [-1, 1]^4, 16 patches)::

    h   = Encoder([W_p x_1 .. W_p x_16][r_1 .. r_16])[registers]     shared forward under Prefix(16)
    q   = FSQ_[5,5,5](W_q h)                                          125 codes per register (tokjax.vision.fsq)
    c_j = W_c q_j  for j < k,   c_j = [MASK]  for j >= k              nested dropout, k ~ pow2 {1, 2, 4, 8, 16}
    x_t = (1 - t) x + t eps,    t ~ logit-normal(0, 1) per image,   eps ~ N(0, I)
    v   = W_o Decoder([W_x x_t][c_1 .. c_16] + time_embed(t))[patches]  shared forward, bidirectional
    L   = mean || v - (eps - x) ||^2                                  rectified flow (tokjax.vision.flow convention)

The registers r_j are learned; under the Prefix mask register j sees every patch and registers <= j, so the
first k registers summarise the image coarse-to-fine once nested dropout trains every prefix length. The decoder
is a second copy of the shared forward (``params["flextok"]["dec"]``, same ``cfg``) whose per-token time
embedding enters at every layer's ``resid_pre`` through :func:`tokjax.vision.flow.cond_hooks` (the official code
uses AdaLN-zero). The mask token replaces the dropped registers in the decoder's input (after the projection
W_c of the codes), where the official ``MaskedNestedDropout`` acts. ``keep="none"`` is the fixed-length ablation
(k = 16 always). ``drop_quant`` (default 0) is the official FSQ's ``drop_quant_p``: per image, skip the rounding
with that probability; ``t_loc`` shifts the logit-normal t toward noise. Dropped from the paper: the VAE, REPA
(DINOv2 alignment) and the AdaLN-zero blocks.

Decoding ids [B, 16] with k kept: Euler (or Euler-Maruyama) on dx/dt = v from x_1 = temperature * eps to t = 0
(:func:`tokjax.vision.flow.flow_sample` with the whole decoder as the velocity; ``steps`` is a runtime value).

Stage 2: next-token prediction over the register ids with a tiny class-conditional tokjax LM (vocabulary
:func:`register_vocab` = ``ImageVocab(125, classes)``: sequence [class token, id_1 .. id_16], batches from
:func:`register_batch_fn`), and generation by ``tokjax.generate`` with ``max_new_tokens = k`` (stop at k, sampling
restricted to code ids), then the flow decoder on the k generated registers (:func:`flextok_generate`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding import generate
from tokjax.logits import allowed_tokens, chain, check_range, temperature as temperature_tf
from tokjax.model import Inputs, Model, ModelConfig, forward, init_params
from tokjax.model.attention import Bidirectional
from tokjax.vision.flow import SAMPLERS, _check_int, _dense, _linear, cond_hooks, flow_sample, time_embed, \
    time_embed_init
from tokjax.vision.fsq import KEEP_MODES, fsq, nested_dropout, register_encode, sample_keep

__all__ = [
    "FlexTokSamples", "LEVELS", "LOSS_KEEP_MODES", "NUM_PATCHES", "NUM_REGISTERS", "flextok_decode", "flextok_encode",
    "flextok_generate", "flextok_init", "flextok_loss", "flextok_reconstruct", "flextok_registers",
    "flextok_velocity", "image_tokens", "make_flextok_loss", "register_batch_fn", "register_vocab", "token_images",
    "tokenizer_batch_fn",
]

_F32 = jnp.float32
LEVELS = (5, 5, 5)
NUM_PATCHES, NUM_REGISTERS, PATCH = 16, 16, 2
LOSS_KEEP_MODES = KEEP_MODES + ("none",)


# -------------------------------------------------------------------------------------------- data
def image_tokens(images: Any, patch: int = PATCH) -> np.ndarray:
    """Returns float32 [N, (H/p)(W/p), p*p]: images [N, H, W] in [0, 1] cut into raster-ordered p x p patches,
    rescaled to [-1, 1]. Raises ValueError for images not [N, H, W] or a patch not dividing them."""
    from tokjax.vision.tokenizers import patchify

    x = np.asarray(images, np.float32)
    if x.ndim != 3:
        raise ValueError(f"images must be [N, H, W] grey levels in [0, 1], got shape {x.shape}")
    p = np.asarray(patchify(x, patch))
    return (2.0 * p.reshape(p.shape[0], -1, p.shape[-1]) - 1.0).astype(np.float32)


def token_images(x: Any, patch: int = PATCH, size: int | None = None) -> np.ndarray:
    """Returns float32 [N, H, W] in [0, 1]: the inverse of :func:`image_tokens` (clipped to [0, 1]) for patch
    tokens ``x`` [N, G*G, p*p] of a square G x G grid (``size`` = G p, default from the token count)."""
    from tokjax.vision.tokenizers import unpatchify

    x = np.asarray(x, np.float32)
    p = _check_int("patch", patch, 1)
    if x.ndim != 3 or x.shape[-1] != p * p:
        raise ValueError(f"patch tokens must be [N, G*G, {p * p}], got shape {x.shape}")
    G = int(round(np.sqrt(x.shape[1])))
    if G * G != x.shape[1] or (size is not None and size != G * p):
        raise ValueError(f"{x.shape[1]} patch tokens are not a square grid of {p} x {p} patches of size {size}")
    img = np.asarray(unpatchify(x.reshape(x.shape[0], G, G, p * p), p))
    return np.clip((img + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def tokenizer_batch_fn(tokens: Any, *, batch_size: int, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> {"x": float32 [batch_size, P, c]}`` over fixed patch tokens [N, P, c] (rows from
    ``tokjax.data.batch_indices``: a pure function of ``step``)."""
    from tokjax.data import batch_indices

    x = np.asarray(tokens, np.float32)
    if x.ndim != 3:
        raise ValueError(f"tokens must be float [N, P, c] (image_tokens), got shape {x.shape}")
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    return lambda step: {"x": x[batch_indices(x.shape[0], batch_size, step, seed=seed)]}


# ------------------------------------------------------------------------------------------ params
def flextok_init(cfg: ModelConfig, key: jax.Array, *, levels: Any = LEVELS, num_registers: int = NUM_REGISTERS,
                 patch_dim: int = PATCH * PATCH, num_patches: int = NUM_PATCHES, fsq_scale: Any = None) -> dict:
    """Returns the params of a FlexTok tokenizer: the encoder's own (``init_params(cfg, key)``) plus
    ``params["flextok"]`` = {"patch_in" [c, D], "registers" [R, D], "fsq_in" [D, d], "reg_in" [d, D],
    "mask_token" [D], "x_in" [c, D], "time" (time embedding), "out" [D, c] (zero-initialised), "dec" (the
    decoder's shared-forward params, same cfg)} with c = ``patch_dim``, d = len(levels), R = ``num_registers``.
    Raises ValueError for bad levels or sizes, pos_dims != 1, or a max_len below num_patches + num_registers.

    ``fsq_scale`` (default None: no multiplier, z = W_q h + b): a fixed, untrained multiplier s > 0 stored as
    ``fsq_in["scale"]`` (read through stop_gradient, so it gets a zero gradient and Adam never moves it); the
    encoder then quantizes z = s (W_q h + b). Since Adam's step does not depend on a gradient's scale, s both
    shrinks the initial z and slows z's drift, from W_q and from the whole encoder, by s (a muP-style readout
    multiplier on the projection into FSQ). Without it, on the 8 x 8 glyphs the register outputs barely depend on the
    image at initialisation, the decoder's gradient on the codes is shared by all images, and Adam drives every
    z into tanh saturation within ~50 steps: one code per register for good (``experiments/p32_flextok.py``)."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    q = fsq(levels)
    R = _check_int("num_registers", num_registers, 1)
    c = _check_int("patch_dim", patch_dim, 1)
    P = _check_int("num_patches", num_patches, 1)
    if cfg.pos_dims != 1:
        raise ValueError(f"FlexTok reads one sequence [patches][registers]: it needs pos_dims=1, got {cfg.pos_dims}")
    if cfg.max_len < P + R:
        raise ValueError(f"cfg.max_len={cfg.max_len} cannot hold {P} patches + {R} registers")
    if fsq_scale is not None and (isinstance(fsq_scale, bool) or np.ndim(fsq_scale)
                                  or not np.isfinite(float(fsq_scale)) or float(fsq_scale) <= 0):
        raise ValueError(f"fsq_scale must be None or a finite float > 0 (the multiplier of z before FSQ), got "
                         f"{fsq_scale!r}")
    D = cfg.d_model
    ks = jax.random.split(key, 9)
    fl = {
        "patch_in": _linear(ks[1], c, D),
        "registers": 0.02 * jax.random.normal(ks[2], (R, D), _F32),
        "fsq_in": _linear(ks[3], D, q.dim) if fsq_scale is None else {**_linear(ks[3], D, q.dim),
                                                                        "scale": jnp.asarray(fsq_scale, _F32)},
        "reg_in": _linear(ks[4], q.dim, D),
        "mask_token": 0.02 * jax.random.normal(ks[5], (D,), _F32),
        "x_in": _linear(ks[6], c, D),
        "time": time_embed_init(ks[7], D),
        "out": _linear(None, D, c, zero=True),
        "dec": init_params(cfg, ks[8]),
    }
    return {**init_params(cfg, ks[0]), "flextok": fl}


def _fp(params: Any) -> dict:
    if not isinstance(params, dict) or "flextok" not in params:
        raise ValueError("params has no 'flextok' entry: build them with tokjax.vision.flextok.flextok_init(cfg, key)")
    return params["flextok"]


def _dims(params) -> tuple[int, int, int]:
    """Returns (patch_dim c, registers R, code dim d)."""
    fl = _fp(params)
    return int(fl["patch_in"]["w"].shape[0]), int(fl["registers"].shape[0]), int(fl["fsq_in"]["w"].shape[1])


def _check_patches(params, x) -> jax.Array:
    c = _dims(params)[0]
    x = jnp.asarray(x, _F32)
    if x.ndim != 3 or x.shape[-1] != c:
        raise ValueError(f"patch tokens must be float [B, P, patch_dim={c}] (image_tokens), got shape {x.shape}")
    return x


def _check_levels(params, levels):
    q = fsq(levels)
    d = _dims(params)[2]
    if q.dim != d:
        raise ValueError(f"levels {list(q.levels)} give {q.dim} code channels but the tokenizer's fsq_in has {d}")
    return q


# ----------------------------------------------------------------------------------------- stage 1
def flextok_encode(params: Any, cfg: ModelConfig, x: Any, *, levels: Any = LEVELS) -> tuple[jax.Array, jax.Array]:
    """Returns (codes float32 [B, R, d] (FSQ, straight-through gradient), ids int32 [B, R] in [0, prod(levels))) of
    patch tokens ``x`` [B, P, c]: the register encoder under Prefix(P), then FSQ (module docstring)."""
    q = _check_levels(params, levels)
    return q(_pre_quant(params, cfg, x))


def _pre_quant(params, cfg, x) -> jax.Array:
    """Returns float32 [B, R, d]: s (W_q h + b), the encoder's register outputs before FSQ (s = the fixed
    ``fsq_in["scale"]`` of ``flextok_init(fsq_scale=...)``, else 1)."""
    fl = _fp(params)
    x = _check_patches(params, x)
    z = _dense(fl["fsq_in"], register_encode(params, cfg, _dense(fl["patch_in"], x), fl["registers"]))
    if "scale" in fl["fsq_in"]:
        z = jax.lax.stop_gradient(jnp.asarray(fl["fsq_in"]["scale"], _F32)) * z
    return z


def flextok_registers(params: Any, codes: Any, keep: Any) -> jax.Array:
    """Returns float32 [B, R, D]: the decoder's register inputs W_c q_j, with registers j >= ``keep`` (int, scalar
    or [B], in [1, R]) replaced by the mask token (:func:`tokjax.vision.fsq.nested_dropout`)."""
    fl = _fp(params)
    d = _dims(params)[2]
    codes = jnp.asarray(codes, _F32)
    if codes.ndim != 3 or codes.shape[-1] != d:
        raise ValueError(f"codes must be float [B, R, {d}] (FSQ codes), got shape {codes.shape}")
    return nested_dropout(_dense(fl["reg_in"], codes), keep, fl["mask_token"])


def flextok_velocity(params: Any, cfg: ModelConfig, x_t: Any, t: Any, registers: Any) -> jax.Array:
    """Returns float32 [B, P, c]: the decoder's velocity for noisy patches ``x_t`` [B, P, c] at times ``t`` (scalar
    or [B]) given register inputs [B, R, D] (:func:`flextok_registers`): one bidirectional forward over
    [W_x x_t][registers] with the time embedding added at every ``resid_pre``. Finite at t = 0 and t = 1."""
    fl = _fp(params)
    x_t = _check_patches(params, x_t)
    regs = jnp.asarray(registers, _F32)
    B, P, _ = x_t.shape
    if regs.ndim != 3 or regs.shape[0] != B or regs.shape[-1] != cfg.d_model:
        raise ValueError(f"registers must be [B={B}, R, d_model={cfg.d_model}] (flextok_registers), got shape "
                         f"{regs.shape}")
    T = P + regs.shape[1]
    if T > cfg.max_len:
        raise ValueError(f"{P} patches + {regs.shape[1]} registers do not fit max_len={cfg.max_len}")
    t = jnp.broadcast_to(jnp.asarray(t, _F32), (B,))
    e = jnp.concatenate([_dense(fl["x_in"], x_t), regs], axis=1)
    cond = jnp.broadcast_to(time_embed(fl["time"], t)[:, None, :], (B, T, cfg.d_model))
    out = forward(fl["dec"], cfg, Inputs(embeds=e.astype(cfg.dtype)), mask=Bidirectional(),
                  hooks=cond_hooks(cond.astype(cfg.dtype)), compute_logits=False)
    return _dense(fl["out"], out.hidden[:, :P].astype(_F32))


def flextok_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, levels: Any = LEVELS,
                 keep: str = "pow2", drop_quant: Any = 0.0, t_loc: Any = 0.0) -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse", "keep_mean"}): FlexTok's rectified-flow reconstruction loss (module docstring)
    on ``batch`` = {"x" float [B, P, c] patch tokens, optional "keep" int [B] (fixed keep counts, as the official
    ``train_keep_k``)}; otherwise k per image from ``keep`` ("uniform" | "pow2" | "uniform_pow2" | "none" = all R
    registers, the fixed-length ablation). ``drop_quant`` in [0, 1]: the probability that an image's registers
    skip the rounding (bound(z) / (L // 2) passed as is; the official FSQ's ``drop_quant_p``, which keeps the
    decoder reading the encoder while the codes are still constant across images). ``t_loc``: the location of
    the logit-normal t (t = sigmoid(t_loc + N(0, 1)); > 0 shifts training toward noise, where the registers are the
    decoder's only information, as SD3's shifted schedules)."""
    check_range(drop_quant, "drop_quant", lo=0.0, hi=1.0)
    check_range(t_loc, "t_loc")
    if keep not in LOSS_KEEP_MODES:
        raise ValueError(f"keep must be one of {LOSS_KEEP_MODES}, got {keep!r}")
    if rng is None:
        raise ValueError("the flextok loss draws keep counts, t and eps: it needs rng (tokjax.train passes one)")
    if not isinstance(batch, dict) or "x" not in batch:
        raise ValueError("a flextok batch needs 'x' float [B, P, patch_dim] (tokenizer_batch_fn)")
    x = _check_patches(params, batch["x"])
    B = x.shape[0]
    R = _dims(params)[1]
    kk, kt, ke, kd = jax.random.split(rng, 4)
    q = _check_levels(params, levels)
    z = _pre_quant(params, cfg, x)
    skip = jax.random.bernoulli(kd, jnp.asarray(drop_quant, _F32), (B, 1, 1))
    codes = jnp.where(skip, q.bound(z) / jnp.asarray([L // 2 for L in q.levels], _F32), q.quantize(z))
    if batch.get("keep") is not None:
        k = jnp.broadcast_to(jnp.asarray(batch["keep"]), (B,))
    elif keep == "none":
        k = jnp.full((B,), R, jnp.int32)
    else:
        k = sample_keep(kk, R, (B,), mode=keep)
    regs = flextok_registers(params, codes, k)
    t = jax.nn.sigmoid(jnp.asarray(t_loc, _F32) + jax.random.normal(kt, (B,), _F32))
    eps = jax.random.normal(ke, x.shape, _F32)
    x_t = (1.0 - t[:, None, None]) * x + t[:, None, None] * eps
    v = flextok_velocity(params, cfg, x_t, t, regs)
    loss = jnp.mean(jnp.square(v - (eps - x)))
    return loss, {"flow_mse": loss, "keep_mean": jnp.mean(k.astype(_F32))}


def make_flextok_loss(levels: Any = LEVELS, keep: str = "pow2", drop_quant: float = 0.0,
                      t_loc: float = 0.0) -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`flextok_loss` (the factory
    of the registered loss ``"flextok"``; equal options return the same function). Raises ValueError for bad
    levels or an unknown keep mode."""
    q = fsq(levels)
    if keep not in LOSS_KEEP_MODES:
        raise ValueError(f"keep must be one of {LOSS_KEEP_MODES}, got {keep!r}")
    check_range(drop_quant, "drop_quant", lo=0.0, hi=1.0)
    check_range(t_loc, "t_loc")
    return _flextok_loss_fn(q.levels, keep, float(drop_quant), float(t_loc))


@functools.lru_cache(maxsize=None)
def _flextok_loss_fn(levels: tuple, keep: str, drop_quant: float, t_loc: float) -> Callable:
    return functools.partial(flextok_loss, levels=levels, keep=keep, drop_quant=drop_quant, t_loc=t_loc)


@functools.partial(jax.jit, static_argnames=("cfg", "levels", "num_patches", "sampler"))
def _decode(params, cfg, ids, keep, key, steps, temperature, *, levels, num_patches, sampler):
    c = _dims(params)[0]
    regs = flextok_registers(params, fsq(levels).ids_to_codes(ids), keep)
    vel = lambda z, x, t: flextok_velocity(params, cfg, x, t, regs)  # noqa: E731  (z unused: the decoder reads regs)
    x, _ = flow_sample(vel, jnp.zeros((ids.shape[0], num_patches, 1), _F32), key, steps=steps, sampler=sampler,
                       temperature=temperature, token_dim=c)
    return x


_encode = jax.jit(flextok_encode, static_argnames=("cfg", "levels"))


def flextok_decode(params: Any, cfg: ModelConfig, ids: Any, keep: Any, key: jax.Array, *, levels: Any = LEVELS,
                   num_patches: int = NUM_PATCHES, steps: Any = 10, temperature: Any = 1.0,
                   sampler: str = "euler") -> jax.Array:
    """Returns float32 [B, P, c] patch tokens decoded from register ``ids`` [B, R] keeping the first ``keep``
    (int, scalar or [B], in [1, R]; the rest are masked, whatever ids they hold) by integrating the decoder's flow
    for ``steps`` >= 1 steps (runtime: a new count or keep does not recompile) from x_1 = ``temperature`` * eps
    (runtime, >= 0). Raises ValueError for ids not [B, R] in range, keep outside [1, R], steps < 1, temperature
    < 0 or an unknown sampler."""
    _, R, _ = _dims(params)
    q = _check_levels(params, levels)
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != R or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be int [B, R={R}] (register ids), got {ids.dtype} {ids.shape}")
    q.ids_to_codes(ids)  # range check
    k = jnp.broadcast_to(jnp.asarray(keep), (ids.shape[0],))
    nested_dropout(jnp.zeros((ids.shape[0], R, 1)), k, jnp.zeros((1,)))  # keep check
    if isinstance(steps, bool) or np.ndim(steps) or not np.issubdtype(np.asarray(steps).dtype, np.integer) \
            or int(steps) < 1:
        raise ValueError(f"steps must be an int >= 1 (flow steps), got {steps!r}")
    check_range(temperature, "temperature", lo=0.0)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return _decode(params, cfg, ids.astype(jnp.int32), k.astype(jnp.int32), key, jnp.int32(steps),
                   jnp.asarray(temperature, _F32), levels=q.levels, num_patches=_check_int("num_patches", num_patches,
                                                                                            1), sampler=sampler)


def flextok_reconstruct(params: Any, cfg: ModelConfig, x: Any, keep: Any, key: jax.Array, *, levels: Any = LEVELS,
                        steps: Any = 10, temperature: Any = 1.0, sampler: str = "euler") -> jax.Array:
    """Returns float32 [B, P, c]: patch tokens ``x`` [B, P, c] encoded to register ids and decoded from the first
    ``keep`` of them (:func:`flextok_decode`)."""
    x = _check_patches(params, x)
    _, ids = _encode(params, cfg, x, levels=fsq(levels).levels)
    return flextok_decode(params, cfg, ids, keep, key, levels=levels, num_patches=x.shape[1], steps=steps,
                          temperature=temperature, sampler=sampler)


# ----------------------------------------------------------------------------------------- stage 2
def register_vocab(levels: Any = LEVELS, num_classes: int = 10):
    """Returns the ``ImageVocab`` of the stage-2 LM: prod(levels) register ids, then ``num_classes`` class tokens,
    the null class and [MASK]."""
    from tokjax.vision.image_lm import ImageVocab

    return ImageVocab(num_codes=fsq(levels).codebook_size, num_classes=num_classes)


def register_batch_fn(ids: Any, labels: Any, *, levels: Any = LEVELS, num_classes: int = 10, batch_size: int,
                      class_dropout: float = 0.1, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step)`` of next-token batches {"tokens" [B, 1 + R], "mask"} = [class token (the null class
    with probability ``class_dropout``), id_1 .. id_R] for a pos_dims = 1 LM over :func:`register_vocab` (ids
    [N, R], labels [N]; the loss counts the register targets only)."""
    from tokjax.vision.image_lm import image_batch_fn
    from tokjax.vision.orders import raster

    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be int [N, R] (register ids of each image), got shape {ids.shape}")
    return image_batch_fn(ids.reshape(ids.shape[0], 1, ids.shape[1]), labels, register_vocab(levels, num_classes),
                          raster(1, ids.shape[1]), batch_size=batch_size, class_dropout=class_dropout, seed=seed,
                          coords=False)


class FlexTokSamples(NamedTuple):
    """What :func:`flextok_generate` returns: ``x`` float32 [N, P, c] patch tokens (``token_images`` makes
    pixels), ``ids`` int32 [N, k] the generated register ids, ``stats`` (generate's, plus ``flow_steps``)."""

    x: np.ndarray
    ids: np.ndarray
    stats: dict


def flextok_generate(lm: Model, params: Any, cfg: ModelConfig, labels: Any, key: jax.Array, *, k: int,
                     levels: Any = LEVELS, num_classes: int = 10, num_patches: int = NUM_PATCHES, steps: int = 10,
                     temperature: Any = 1.0, lm_temperature: Any = 1.0) -> FlexTokSamples:
    """Returns :class:`FlexTokSamples` for class ``labels`` [N]: the stage-2 LM ``lm`` samples k register ids after
    each class token through ``tokjax.generate`` (``max_new_tokens=k``: stop at k; code ids only, temperature
    ``lm_temperature``), then the tokenizer (``params``, ``cfg``) decodes them with keep = k. Raises ValueError for
    k outside [1, R], bad labels, or an LM whose vocabulary cannot hold :func:`register_vocab`."""
    if not isinstance(lm, Model):
        raise ValueError(f"lm must be a tokjax Model (the stage-2 register LM), got {type(lm).__name__}")
    _, R, _ = _dims(params)
    k = _check_int("k", k, 1)
    if k > R:
        raise ValueError(f"k must lie in [1, R={R}] (registers to generate), got {k}")
    vocab = register_vocab(levels, num_classes)
    y = np.asarray(labels)
    if y.ndim != 1 or y.size < 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be ints [N >= 1], got {y.dtype} {y.shape}")
    prompts = np.asarray(vocab.class_tokens(y), np.int32)[:, None]
    k_lm, k_dec = jax.random.split(key)
    logits = chain(allowed_tokens(jnp.asarray(vocab.code_mask(lm.cfg.vocab_size))), temperature_tf(lm_temperature))
    out = generate(lm, prompts, key=k_lm, max_new_tokens=k, logits=logits)
    ids = np.asarray(out.tokens)[:, 1:1 + k].astype(np.int32)
    full = np.zeros((y.size, R), np.int32)
    full[:, :k] = ids
    x = flextok_decode(params, cfg, full, k, k_dec, levels=levels, num_patches=num_patches, steps=steps,
                       temperature=temperature)
    return FlexTokSamples(x=np.asarray(x), ids=ids, stats={**dict(out.stats), "flow_steps": int(steps)})


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("flextok", make_flextok_loss, {"levels": LEVELS, "keep": "pow2", "drop_quant": 0.0,
                                                       "t_loc": 0.0},
                  doc="P32 FlexTok: rectified-flow reconstruction loss of a register tokenizer (encoder under "
                      "Prefix(P) over [patches][registers], FSQ, nested dropout with keep 'uniform' | 'pow2' | "
                      "'uniform_pow2' | 'none', drop_quant = official drop_quant_p, t ~ logit-normal(t_loc, 1), "
                      "bidirectional flow decoder with time via resid_pre hooks); batch needs "
                      "x float [B, P, c] (tokjax.vision.flextok.tokenizer_batch_fn); params from "
                      "tokjax.vision.flextok.flextok_init",
                  overwrite=True)


_register()
