"""MingTok and Ming-UniVision: one continuous tokenizer whose semantic features are the LM's input for image
understanding and image generation alike (P74; "Ming-UniVision: Joint Image Understanding and Generation with a
Unified Continuous Tokenizer", arXiv 2510.06590; official code inclusionAI/Ming-UniVision).

MingTok, three sequential stages (``mingtok/modeling_mingtok.py``; here on 16 x 16 glyphs cut into 16 patches of
4 x 4 pixels, x in [-1, 1]^16 per patch; every stage is a copy of the shared forward on one ``cfg``)::

    h   = Enc([W_p x_1 .. W_p x_P])                          bidirectional (low-level encoder)
    z_i = groupmean(h_i) + W_l GELU(h_i)                     continuous latents, c = 4 dims per patch
    u_i = (z_i - mu) / sigma                                 the LM's latent space (official mean/scaling_factor)
    s   = SemDec([W_s z_i + repeat(z_i)]_i)                  CAUSAL (token i sees latents <= i): semantic features
    x^  = W_o PixDec([W_q s_i]_i)                            bidirectional pixel decoder on the semantic features
    L_tok = mean ||x^ - x||^2 + lambda * mean_i (1 - cos(W_a s_i, f_i))

``f_i`` is the semantic teacher's feature of token i. The official aligns the causal decoder's patch features with
a frozen pretrained vision encoder (``target_backbone``, dropped from the released checkpoint); here the teacher is
an image classifier, and f_i is its penultimate feature of the *prefix image* (patches > i blanked,
:func:`prefix_images`), the causal analogue of a patch feature: token i is asked for what the pixels it can see
say about the image.

Ming-UniVision (``mingunivision/modeling_bailingmm.py``, ``modeling_bailing_moe.py::generate_image``): the LM's
image input is ``E(s_i)`` (E = ``linear_proj``, here one linear layer ``params["flow"]["proj"]``) for both tasks::

    understanding:  [<und>, E(s_1) .. E(s_P)]  -> cross-entropy of the class word at the last position
    generation:     [class, E(s_1) .. E(s_{P-1})] -> hidden h_i -> per-token rectified-flow head on u_i
    L_lm = L_flow(u | h) + w_und * CE(label | <und>, E(s))          (modality-routed head, one backbone)

Generation feeds every sampled latent through the causal semantic decoder **with its own KV cache** (the
official ``feat_dec_past_key_values``) and its feature E(s_i) becomes the next LM input: :class:`SemanticAR`, a
:class:`tokjax.vision.flow.ContinuousAR` whose ``prev_embeds`` plug point runs :func:`semantic_step` and keeps
the decoder's cache in the strategy state (:class:`SemanticDecodeState`). Pixels come from the pixel decoder on
the semantic features (:func:`mingtok_decode`). The separate-representation baseline of the experiment is the
same LM reading ``P u_i`` (raw latents): ``feats = u`` in :func:`ming_lm_loss` and plain ``ContinuousAR``, which
it reduces to exactly (tested).

Verified in the official code: the three-stage order (encoder -> latents -> causal semantic decoder -> pixel
decoder reading the semantic features through ``sem_to_pix``), the encoder's out layer (group-mean shortcut +
projection of GELU(LN(h))), the semantic decoder's in-projection + channel-repeat shortcut, causal attention with
an incremental cache, the latent normalisation (mean, scaling_factor), the LM reading ``linear_proj(features)``
for understanding and for each generated token, the flow head predicting the 32-d latent. Deviations: the pixel
loss is MSE (official ``L1-plain``); no cls token in encoder or semantic decoder; ``linear_proj`` is one linear
layer (official ``mlp_depth`` layers with GELU); the teacher, its prefix-image targets and the cosine alignment
loss are ours (the official training loss is not released); the tokenizer is frozen while the LM trains (no
joint fine-tuning); the flow head is tokjax's MAR-style head, not the official SwiGLU head with time shifting.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.logits import check_range, hparam
from tokjax.model import Inputs, KVCache, Model, ModelConfig, forward, init_params, unstack_layers
from tokjax.model.attention import Bidirectional
from tokjax.model.forward import embed
from tokjax.vision.flow import (
    ContinuousAR, ContinuousDecodeState, _check_int, _dense, _flow_params, _head_dims, _linear, continuous_ar,
    continuous_batch, flow_head_init, flow_head_loss, generate_class_conditional,
)

__all__ = [
    "MingSamples", "SemanticAR", "SemanticDecodeState", "make_ming_lm_loss", "make_mingtok_loss", "ming_generate",
    "ming_lm_batch_fn", "ming_lm_init", "ming_lm_loss", "ming_understand", "ming_univision", "mingtok_decode",
    "mingtok_encode", "mingtok_init", "mingtok_latents", "mingtok_loss", "mingtok_set_norm", "pixel_decode",
    "prefix_images", "semantic_cache", "semantic_decode", "semantic_step", "und_token",
]

_F32 = jnp.float32


# ------------------------------------------------------------------------------------------ params
def mingtok_init(cfg: ModelConfig, key: jax.Array, *, patch_dim: int = 16, token_dim: int = 4,
                 teacher_dim: int = 256) -> dict:
    """Returns MingTok params: the encoder's shared-forward params at the top level (``init_params(cfg, key)``)
    plus ``params["mingtok"]`` = {"patch_in" [p, D], "lat_out" [D, c], "sem" (causal semantic decoder, same cfg),
    "sem_in" [c, D], "align" [D, teacher_dim], "pix" (pixel decoder, same cfg), "pix_in" [D, D], "pix_out" [D, p]
    (zero-initialised), "norm" {"mean", "scale"} (latent normalisation, identity until :func:`mingtok_set_norm`)}.
    Raises ValueError for non-positive sizes, pos_dims != 1, or a d_model not divisible by token_dim (the
    official group-mean / channel-repeat shortcuts need it)."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    p = _check_int("patch_dim", patch_dim, 1)
    c = _check_int("token_dim", token_dim, 1)
    t = _check_int("teacher_dim", teacher_dim, 1)
    if cfg.pos_dims != 1:
        raise ValueError(f"MingTok reads one raster sequence of patches: it needs pos_dims=1, got {cfg.pos_dims}")
    D = cfg.d_model
    if D % c:
        raise ValueError(f"d_model={D} must be a multiple of token_dim={c} (the group-mean and channel-repeat "
                         "shortcuts between latents and features)")
    ks = jax.random.split(key, 8)
    mt = {
        "patch_in": _linear(ks[1], p, D), "lat_out": _linear(ks[2], D, c), "sem": init_params(cfg, ks[3]),
        "sem_in": _linear(ks[4], c, D), "align": _linear(ks[5], D, t), "pix": init_params(cfg, ks[6]),
        "pix_in": _linear(ks[7], D, D), "pix_out": _linear(None, D, p, zero=True),
        "norm": {"mean": jnp.zeros((), _F32), "scale": jnp.ones((), _F32)},
    }
    return {**init_params(cfg, ks[0]), "mingtok": mt}


def _mp(params: Any) -> dict:
    if not isinstance(params, dict) or "mingtok" not in params:
        raise ValueError("params has no 'mingtok' entry: build them with "
                         "tokjax.vision.ming_univision.mingtok_init(cfg, key)")
    return params["mingtok"]


def _dims(params) -> tuple[int, int]:
    """Returns (patch_dim p, token_dim c)."""
    mt = _mp(params)
    return int(mt["patch_in"]["w"].shape[0]), int(mt["sem_in"]["w"].shape[0])


def _check_seq(x, last: int, what: str, cfg: ModelConfig | None = None) -> jax.Array:
    x = jnp.asarray(x, _F32)
    if x.ndim != 3 or x.shape[-1] != last:
        raise ValueError(f"{what} must be float [B, P, {last}], got shape {x.shape}")
    if cfg is not None and x.shape[1] > cfg.max_len:
        raise ValueError(f"{x.shape[1]} tokens do not fit the tokenizer's max_len={cfg.max_len}")
    return x


def _norm(mt) -> tuple[jax.Array, jax.Array]:
    n = jax.lax.stop_gradient(mt["norm"])  # set from data, never trained
    return n["mean"], n["scale"]


# ------------------------------------------------------------------------------------------ stages
def mingtok_latents(params: Any, cfg: ModelConfig, x: Any) -> jax.Array:
    """Returns float32 [B, P, c]: the raw latents z of patches ``x`` [B, P, p] (bidirectional encoder, then the
    official out layer: group-mean of the features + W_l GELU(features); module docstring)."""
    mt = _mp(params)
    p, c = _dims(params)
    x = _check_seq(x, p, "patches", cfg)
    h = forward(params, cfg, Inputs(embeds=_dense(mt["patch_in"], x).astype(cfg.dtype)), mask=Bidirectional(),
                compute_logits=False).hidden.astype(_F32)
    B, P, D = h.shape
    return h.reshape(B, P, c, D // c).mean(-1) + _dense(mt["lat_out"], jax.nn.gelu(h))


def mingtok_encode(params: Any, cfg: ModelConfig, x: Any) -> jax.Array:
    """Returns float32 [B, P, c]: the normalised latents u = (z - mean) / scale of patches ``x`` [B, P, p] (the
    tokens the LM reads and generates)."""
    mean, scale = _norm(_mp(params))
    return (mingtok_latents(params, cfg, x) - mean) / scale


def mingtok_set_norm(params: Any, cfg: ModelConfig, x: Any) -> dict:
    """Returns ``params`` with the latent normalisation set to the mean and standard deviation (scalars, over every
    token and channel) of the raw latents of patches ``x`` [N, P, p] (the official ``mean`` and
    ``scaling_factor``); semantic and pixel decoding of encoded tokens are unchanged by it."""
    z = jax.jit(mingtok_latents, static_argnames="cfg")(params, cfg, x)
    norm = {"mean": jnp.mean(z).astype(_F32), "scale": jnp.maximum(jnp.std(z), 1e-6).astype(_F32)}
    return {**params, "mingtok": {**_mp(params), "norm": norm}}


def _sem_embeds(mt: dict, u: jax.Array) -> jax.Array:
    """Returns [B, T, D]: the semantic decoder's input W_s z + repeat(z) of normalised latents u (z de-normalised
    first, as the official ``forward_feature_decoder``)."""
    mean, scale = _norm(mt)
    z = u * scale + mean
    D = mt["sem_in"]["w"].shape[1]
    return _dense(mt["sem_in"], z) + jnp.repeat(z, D // z.shape[-1], axis=-1)


def semantic_decode(params: Any, cfg: ModelConfig, u: Any) -> jax.Array:
    """Returns float32 [B, T, D]: the causal semantic decoder's features of normalised latents ``u`` [B, T, c]
    (final-normed hidden states; feature i depends on u_1 .. u_i only)."""
    mt = _mp(params)
    u = _check_seq(u, int(mt["sem_in"]["w"].shape[0]), "latents u", cfg)
    e = _sem_embeds(mt, u).astype(cfg.dtype)
    return forward(mt["sem"], cfg, Inputs(embeds=e), compute_logits=False).hidden.astype(_F32)


def semantic_cache(cfg: ModelConfig, batch: int, capacity: int | None = None) -> KVCache:
    """Returns an empty KV cache of the semantic decoder for ``batch`` rows of up to ``capacity`` latents."""
    return KVCache.init(cfg, batch, capacity)


def semantic_step(params: Any, cfg: ModelConfig, u: Any, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Returns (features float32 [B, T, D], cache): the semantic decoder run incrementally on the next latents
    ``u`` [B, T, c] (usually T = 1) after those already in ``cache`` (:func:`semantic_cache`); step-by-step calls
    give :func:`semantic_decode` of the whole sequence (tested)."""
    mt = _mp(params)
    u = _check_seq(u, int(mt["sem_in"]["w"].shape[0]), "latents u")
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache must be a KVCache (semantic_cache(cfg, batch)), got {type(cache).__name__}")
    out = forward(mt["sem"], cfg, Inputs(embeds=_sem_embeds(mt, u).astype(cfg.dtype)), cache=cache,
                  compute_logits=False)
    return out.hidden.astype(_F32), out.cache


def pixel_decode(params: Any, cfg: ModelConfig, feats: Any) -> jax.Array:
    """Returns float32 [B, P, p]: patches decoded from semantic features ``feats`` [B, P, D] by the bidirectional
    pixel decoder (the official ``sem_to_pix`` then pixel ViT)."""
    mt = _mp(params)
    f = _check_seq(feats, cfg.d_model, "semantic features", cfg)
    h = forward(mt["pix"], cfg, Inputs(embeds=_dense(mt["pix_in"], f).astype(cfg.dtype)), mask=Bidirectional(),
                compute_logits=False).hidden.astype(_F32)
    return _dense(mt["pix_out"], h)


def mingtok_decode(params: Any, cfg: ModelConfig, u: Any) -> jax.Array:
    """Returns float32 [B, P, p]: patches of normalised latents ``u`` [B, P, c] (semantic, then pixel decoder)."""
    return pixel_decode(params, cfg, semantic_decode(params, cfg, u))


def prefix_images(images: Any, patch: int) -> np.ndarray:
    """Returns float32 [N, P, H, W]: for each image [H, W] and raster patch i, the image with every patch after
    i set to 0 (the background), so copy i shows what the causal token i can see (the teacher's input for the
    alignment targets). Raises ValueError for images not [N, H, W] or a patch not dividing them."""
    x = np.asarray(images, np.float32)
    p = _check_int("patch", patch, 1)
    if x.ndim != 3 or x.shape[1] % p or x.shape[2] % p:
        raise ValueError(f"images must be [N, H, W] with H, W multiples of patch={p}, got shape {x.shape}")
    gh, gw = x.shape[1] // p, x.shape[2] // p
    order = np.arange(gh * gw).reshape(gh, gw).repeat(p, 0).repeat(p, 1)  # raster patch index of each pixel
    keep = order[None, :, :] <= np.arange(gh * gw)[:, None, None]  # [P, H, W]
    return np.where(keep[None], x[:, None], 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ tokenizer loss
def mingtok_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, align_weight: Any = 1.0,
                 latent_noise: Any = 0.0) -> tuple[jax.Array, dict]:
    """Returns (loss, {"pix_mse", "align_cos"}): MingTok's loss (module docstring) on ``batch`` = {"x" float
    [B, P, p] patches, "teacher" float [B, P, t] per-token teacher features, optional "align_weight" (overrides
    the argument; runtime)}. ``latent_noise`` >= 0: std of Gaussian noise added to the normalised latents before
    the decoders (0 = none; a regulariser of the latent space for generation, not in the released code)."""
    check_range(latent_noise, "latent_noise", lo=0.0)
    if not isinstance(batch, dict) or "x" not in batch or "teacher" not in batch:
        raise ValueError("a mingtok batch needs 'x' float [B, P, patch_dim] and 'teacher' float [B, P, teacher_dim]")
    mt = _mp(params)
    x = _check_seq(batch["x"], _dims(params)[0], "patches", cfg)
    t_dim = int(mt["align"]["w"].shape[1])
    f = _check_seq(batch["teacher"], t_dim, "teacher features")
    if f.shape[:2] != x.shape[:2]:
        raise ValueError(f"teacher must hold one feature per patch, [B, P] = {x.shape[:2]}, got {f.shape[:2]}")
    w = jnp.asarray(batch.get("align_weight", align_weight), _F32)
    check_range(w, "align_weight", lo=0.0)
    u = mingtok_encode(params, cfg, x)
    if rng is not None:
        u = u + jnp.asarray(latent_noise, _F32) * jax.random.normal(rng, u.shape, _F32)
    elif not isinstance(latent_noise, (int, float)) or latent_noise:
        raise ValueError("latent_noise > 0 draws noise: the mingtok loss then needs rng")
    s = semantic_decode(params, cfg, u)
    mse = jnp.mean(jnp.square(pixel_decode(params, cfg, s) - x))
    a = _dense(mt["align"], s)
    cos = jnp.sum(a * f, -1) * jax.lax.rsqrt(jnp.sum(a * a, -1) * jnp.sum(f * f, -1) + 1e-12)
    cos = jnp.mean(cos)
    return mse + w * (1.0 - cos), {"pix_mse": mse, "align_cos": cos}


def make_mingtok_loss(align_weight: float = 1.0, latent_noise: float = 0.0) -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`mingtok_loss` (the factory
    of the registered loss ``"mingtok"``; equal options return the same function)."""
    check_range(align_weight, "align_weight", lo=0.0)
    check_range(latent_noise, "latent_noise", lo=0.0)
    return _mingtok_loss_fn(float(align_weight), float(latent_noise))


@functools.lru_cache(maxsize=None)
def _mingtok_loss_fn(align_weight: float, latent_noise: float) -> Callable:
    return functools.partial(mingtok_loss, align_weight=align_weight, latent_noise=latent_noise)


# ------------------------------------------------------------------------------------------ the LM
def und_token(num_classes: int) -> int:
    """Returns the id of the understanding prompt token: class words are ids 0 .. C-1, the null class C, then
    this token C + 1 (an LM needs vocab_size >= C + 2)."""
    return _check_int("num_classes", num_classes, 1) + 1


def ming_lm_init(key: jax.Array, cfg: ModelConfig, token_dim: int, input_dim: int, *, width: int = 128,
                 depth: int = 3) -> dict:
    """Returns ``params["flow"]`` of a Ming-UniVision LM: {"head": flow head on token_dim latents, "proj":
    input_dim -> d_model} (input_dim = the semantic decoder's width; = token_dim gives exactly
    ``tokjax.vision.flow.continuous_init``, the raw-latent baseline)."""
    k1, k2 = jax.random.split(key)
    return {"head": flow_head_init(k1, cfg.d_model, token_dim, width, depth),
            "proj": _linear(k2, _check_int("input_dim", input_dim, 1), cfg.d_model)}


def _lm_parts(params, cfg, num_classes: int, key: str) -> tuple[dict, int, int]:
    fl = _flow_params(params, key)
    d_model, c = _head_dims(fl["head"])
    if d_model != cfg.d_model or fl["proj"]["w"].shape[1] != cfg.d_model:
        raise ValueError(f"params[{key!r}] do not fit the LM: head condition width {d_model}, projection "
                         f"{tuple(fl['proj']['w'].shape)}, expected d_model={cfg.d_model}")
    if cfg.vocab_size < und_token(num_classes) + 1:
        raise ValueError(f"the LM's vocab_size={cfg.vocab_size} cannot hold {num_classes} class words, the null "
                         "class and the understanding token")
    return fl, c, int(fl["proj"]["w"].shape[0])


def _und_logits(params, cfg, fl, feats, num_classes) -> jax.Array:
    B = feats.shape[0]
    first = embed(params, cfg, jnp.full((B, 1), und_token(num_classes), jnp.int32)).astype(_F32)
    e = jnp.concatenate([first, _dense(fl["proj"], feats)], axis=1)
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype)))
    return out.logits[:, -1].astype(_F32)


def ming_understand(params: Any, cfg: ModelConfig, feats: Any, *, num_classes: int, key: str = "flow") -> jax.Array:
    """Returns float32 [B, num_classes]: the LM's logits of the class words after ``[<und>, E(feats_1) ..
    E(feats_P)]`` for image inputs ``feats`` [B, P, F] (semantic features, or latents for the baseline): the
    first answer token of the understanding task (argmax = greedy answer)."""
    fl, _, F = _lm_parts(params, cfg, num_classes, key)
    f = _check_seq(feats, F, "LM image inputs feats")
    if f.shape[1] + 1 > cfg.max_len:
        raise ValueError(f"1 + {f.shape[1]} tokens do not fit the LM's max_len={cfg.max_len}")
    return _und_logits(params, cfg, fl, f, num_classes)[:, :num_classes]


def ming_lm_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, num_classes: int = 10,
                 t_samples: int = 4, und_weight: Any = 1.0, key: str = "flow") -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse", "und_ce", "und_acc"}): the modality-routed loss of Ming-UniVision (module
    docstring) on ``batch`` = {"x" float [B, L, c] normalised latents (flow targets), "feats" float [B, L, F] the
    LM's image inputs (semantic features; ``feats = x`` is the raw-latent baseline), "cls" int [B] generation
    conditions (null class = num_classes), "label" int [B] the class words to predict, optional "und_weight"
    (runtime, overrides the argument)}. With und_weight 0 and feats = x it is ``tokjax.vision.flow.flow_loss``."""
    if rng is None:
        raise ValueError("the Ming-UniVision loss draws flow times and noise: it needs rng")
    if not isinstance(batch, dict) or any(k not in batch for k in ("x", "feats", "cls", "label")):
        raise ValueError("a Ming-UniVision batch needs 'x' [B, L, c], 'feats' [B, L, F], 'cls' [B] and 'label' [B] "
                         "(ming_lm_batch_fn)")
    fl, c, F = _lm_parts(params, cfg, num_classes, key)
    x = _check_seq(batch["x"], c, "latents x")
    f = _check_seq(batch["feats"], F, "LM image inputs feats")
    if f.shape[:2] != x.shape[:2]:
        raise ValueError(f"feats must hold one input per latent, [B, L] = {x.shape[:2]}, got {f.shape[:2]}")
    if x.shape[1] + 1 > cfg.max_len:
        raise ValueError(f"1 + {x.shape[1]} tokens do not fit the LM's max_len={cfg.max_len}")
    B = x.shape[0]
    cls = jnp.asarray(batch["cls"], jnp.int32).reshape(B, 1)
    label = jnp.asarray(batch["label"], jnp.int32).reshape(B)
    w = jnp.asarray(batch.get("und_weight", und_weight), _F32)
    e = jnp.concatenate([embed(params, cfg, cls).astype(_F32), _dense(fl["proj"], f[:, :-1])], axis=1)
    z = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype)), compute_logits=False).hidden.astype(_F32)
    fm = flow_head_loss(fl["head"], z, x, rng, t_samples=t_samples)
    logits = _und_logits(params, cfg, fl, f, num_classes)
    ce = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, label[:, None], -1)[:, 0])
    acc = jnp.mean((jnp.argmax(logits[:, :num_classes], -1) == label).astype(_F32))
    return fm + w * ce, {"flow_mse": fm, "und_ce": ce, "und_acc": acc}


def make_ming_lm_loss(num_classes: int = 10, t_samples: int = 4, und_weight: float = 1.0,
                      key: str = "flow") -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`ming_lm_loss` (the factory
    of the registered loss ``"ming_univision"``; equal options return the same function)."""
    check_range(und_weight, "und_weight", lo=0.0)
    return _ming_lm_loss_fn(_check_int("num_classes", num_classes, 1), _check_int("t_samples", t_samples, 1),
                            float(und_weight), key)


@functools.lru_cache(maxsize=None)
def _ming_lm_loss_fn(num_classes, t_samples, und_weight, key) -> Callable:
    return functools.partial(ming_lm_loss, num_classes=num_classes, t_samples=t_samples, und_weight=und_weight,
                             key=key)


def ming_lm_batch_fn(latents: Any, feats: Any, labels: Any, *, num_classes: int, batch_size: int,
                     class_dropout: float = 0.1, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> {"x", "feats", "cls", "label"}`` over fixed normalised latents [N, L, c], LM
    inputs [N, L, F] and labels [N] (rows from ``tokjax.data.batch_indices``, class dropout as
    ``tokjax.vision.flow.continuous_batch``): a pure function of ``step``."""
    from tokjax.data import batch_indices

    x = np.asarray(latents, np.float32)
    f = np.asarray(feats, np.float32)
    y = np.asarray(labels)
    continuous_batch(x[:1], y[:1], num_classes=num_classes, class_dropout=0.0)
    if f.ndim != 3 or f.shape[:2] != x.shape[:2]:
        raise ValueError(f"feats must be [N, L, F] with [N, L] = {x.shape[:2]}, got shape {f.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be [N={x.shape[0]}], got shape {y.shape}")
    batch_size = _check_int("batch_size", batch_size, 1)
    base = jax.random.key(_check_int("seed", seed, 0))

    def batch_fn(step: int) -> dict:
        idx = batch_indices(x.shape[0], batch_size, step, seed=seed)
        b = continuous_batch(x[idx], y[idx], num_classes=num_classes, class_dropout=class_dropout,
                             key=jax.random.fold_in(base, step))
        return {**b, "feats": f[idx], "label": y[idx].astype(np.int32)}

    return batch_fn


# ------------------------------------------------------------------------------------------ generation
@struct.dataclass
class SemanticDecodeState(ContinuousDecodeState):
    """``DecodeState.extra`` of :class:`SemanticAR`: the fields of ``ContinuousDecodeState`` plus ``tok``
    ({"mingtok": the semantic decoder's params (per-layer buffers), its in-projection and the latent
    normalisation}) and ``sem_cache`` (the semantic decoder's own KV cache, one slot per generated latent)."""

    tok: Any
    sem_cache: Any


@dataclasses.dataclass(frozen=True)
class SemanticAR(ContinuousAR):
    """Ming-UniVision generation (module docstring): continuous raster AR in which AR step s >= 1 feeds the LM
    E(SemDec(u_1 .. u_{s-1})_{s-1}), the causal semantic decoder run one latent per step on its own cache.

    Static: ``sem_cfg`` (the tokenizer's ModelConfig) and the fields of :class:`ContinuousAR`. Runtime:
    ``tokenizer`` (MingTok params, :func:`mingtok_init`) and ContinuousAR's ``flow``, ``steps``, ``guidance``,
    ``temperature``.
    """

    sem_cfg: ModelConfig | None = None
    tokenizer: Any = hparam(None)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.sem_cfg, ModelConfig):
            raise ValueError(f"sem_cfg must be the tokenizer's ModelConfig, got {type(self.sem_cfg).__name__}")
        _mp(self.tokenizer)

    def validate(self, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if self.length > self.sem_cfg.max_len:
            raise ValueError(f"length={self.length} latents do not fit the semantic decoder's max_len="
                             f"{self.sem_cfg.max_len}")

    def input_dim(self, token_dim: int) -> int:
        return self.sem_cfg.d_model

    def init(self, params, cfg: ModelConfig, state) -> SemanticDecodeState:
        base = super().init(params, cfg, state)
        mt = _mp(self.tokenizer)
        c = base.canvas.shape[-1]
        if tuple(mt["sem_in"]["w"].shape) != (c, self.sem_cfg.d_model):
            raise ValueError(f"the tokenizer's latents do not fit the flow head: sem_in {tuple(mt['sem_in']['w'].shape)}"
                             f", expected [token_dim={c}, sem d_model={self.sem_cfg.d_model}]")
        # copies: the decode state is donated to the loop
        tok = {"mingtok": jax.tree.map(jnp.copy, {"sem": unstack_layers(mt["sem"], fuse=True),
                                                  "sem_in": mt["sem_in"], "norm": mt["norm"]})}
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ContinuousDecodeState)}
        return SemanticDecodeState(**fields, tok=tok,
                                   sem_cache=semantic_cache(self.sem_cfg, base.canvas.shape[0], self.length))

    def prev_embeds(self, params, cfg, extra: SemanticDecodeState, prev, s):
        feats, cache = semantic_step(extra.tok, self.sem_cfg, prev, extra.sem_cache)
        # step 0 feeds the class token: its (placeholder) latent must not stay in the decoder's cache
        cache = cache.replace(lengths=jnp.where(s == 0, extra.sem_cache.lengths, cache.lengths))
        return _dense(extra.flow["proj"], feats), extra.replace(sem_cache=cache)


def ming_univision(tokenizer: Any, sem_cfg: ModelConfig, flow: Any = None, *, length: int, steps: Any = 10,
                   guidance: Any = 1.0, temperature: Any = 1.0, sampler: str = "euler",
                   guided: bool | None = None) -> SemanticAR:
    """Returns the :class:`SemanticAR` strategy of Ming-UniVision generation (``tokenizer``: MingTok params;
    ``sem_cfg``: its ModelConfig; ``flow``: the LM's params["flow"], None = the model's own; ``steps`` a scalar or
    a per-step schedule [length]; ``guided`` defaults to ``guidance`` != 1)."""
    if guided is None:
        guided = bool(np.any(np.asarray(guidance) != 1.0))
    return SemanticAR(length=length, sampler=sampler, guided=guided, flow=flow, steps=steps, guidance=guidance,
                      temperature=temperature, sem_cfg=sem_cfg, tokenizer=tokenizer)


class MingSamples(NamedTuple):
    """What :func:`ming_generate` returns: ``latents`` float32 [N, L, c] (normalised), ``patches`` float32
    [N, L, p] (pixel decoder), and generate's ``stats``."""

    latents: np.ndarray
    patches: np.ndarray
    stats: dict


def ming_generate(lm: Model, tokenizer: Any, sem_cfg: ModelConfig, labels: Any, key: jax.Array, *, length: int,
                  num_classes: int, semantic: bool = True, steps: Any = 10, temperature: Any = 1.0,
                  guidance: Any = 1.0) -> MingSamples:
    """Returns :class:`MingSamples` for class ``labels`` [N]: latents generated by ``lm`` through
    ``tokjax.generate`` with :func:`ming_univision` (``semantic=True``: the LM reads semantic features) or plain
    ``continuous_ar`` (``semantic=False``: the raw-latent baseline), then decoded by the tokenizer."""
    if semantic:
        strat = ming_univision(tokenizer, sem_cfg, length=length, steps=steps, temperature=temperature,
                               guidance=guidance)
    else:
        _mp(tokenizer)
        strat = continuous_ar(length=length, steps=steps, temperature=temperature, guidance=guidance)
    u, stats = generate_class_conditional(lm, strat, labels, key, num_classes=num_classes, ar_steps=length)
    patches = _decode_jit(tokenizer, sem_cfg, jnp.asarray(u))
    return MingSamples(latents=np.asarray(u), patches=np.asarray(patches), stats=stats)


_decode_jit = jax.jit(mingtok_decode, static_argnames="cfg")


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("mingtok", make_mingtok_loss, {"align_weight": 1.0, "latent_noise": 0.0},
                  doc="P74 MingTok: pixel MSE of encoder -> causal semantic decoder -> pixel decoder, plus "
                      "align_weight * (1 - cos) alignment of the semantic features with per-token teacher features; "
                      "batch needs x float [B, P, p] and teacher float [B, P, t]; params from "
                      "tokjax.vision.ming_univision.mingtok_init",
                  overwrite=True)
    register_loss("ming_univision", make_ming_lm_loss, {"num_classes": 10, "t_samples": 4, "und_weight": 1.0,
                                                        "key": "flow"},
                  doc="P74 Ming-UniVision: flow loss on latents given [class, E(feats)] plus und_weight * CE of the "
                      "class word after [<und>, E(feats)]; batch from tokjax.vision.ming_univision.ming_lm_batch_fn; "
                      "params['flow'] from ming_lm_init",
                  overwrite=True)


_register()
