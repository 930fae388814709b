"""Token-Shuffle: s x s windows of image tokens merged into one transformer position (P64; Ma et al. 2025,
"Token-Shuffle: Towards High-Resolution Image Generation with Autoregressive Models", arXiv 2504.17789;
no official code -- ``ma-xu/token-shuffle`` holds the project page only).

The codes of an H x W grid are read in window-raster order (:func:`tokjax.vision.orders.window_raster`:
s x s windows in raster order, raster inside a window), so window w is the run of s^2 consecutive codes
``x[w s^2 : (w + 1) s^2]``. With P = H W / s^2 windows the transformer runs on P positions:

    slot      0              1 ..  P - 1
    input     class token    shuffle(window 0) .. shuffle(window P - 2)
    predicts  window 0       window 1 .. window P - 1          (s^2 codes per slot)

token-shuffle (input side) of the s^2 embeddings e_1 .. e_{s^2} (each d-dim) of one window::

    z     = concat_j (e_j W_down)                    W_down [d, d / s^2] shared: channel compression
    fused = mean_j e_j  +  MLP_in(z)                 MLP_in: d -> m -> d (GELU)

token-unshuffle (output side) of the final-normed hidden state h (d-dim) of a slot::

    u_1 .. u_{s^2} = split(MLP_out(h), s^2)          MLP_out: d -> m -> d, chunks of d / s^2
    c_j   = h  +  u_j W_up                           W_up [d / s^2, d] shared: channel expansion
    logits_j = c_j @ lm_head                         the model's own (shared) LM head

and training is the mean cross-entropy of all s^2 codes of every window. One slot emits a whole window:
the s^2 codes are sampled independently given the slot's hidden state (the paper's "unified next-token
prediction" over merged tokens), so decoding takes P passes.

Residual design. The paper's MLPs are branches on top of a parameter-free path (mean of the window's
embeddings in, the same hidden state broadcast to all s^2 outputs); both branches' output matrices start
at zero, so at init a window is mean-pooled in and its codes share one distribution. At s = 1 there is
nothing to merge: the branches do not exist (:func:`token_shuffle_init` adds no parameters), the input is
the code embedding itself and the logits are the model's own -- the model is exactly raster next-token
prediction on ``[class, codes]`` (tested against ``forward`` to 1e-6).

Verified against the paper's abstract and secondary descriptions: merging s x s local tokens along the
channel dimension after a linear dimension reduction, MLP blocks around shuffle/unshuffle ("residual MLP
blocks"), the transformer seeing N / s^2 tokens, s = 2 as the main setting. Unverified (the paper's full
method section and code were not available here): the exact number and width of the MLP blocks (one
block of width ``mlp_ratio * d`` each side here), whether W_down / W_up are shared across the s^2 window
positions (shared here; the concatenation order carries the position), the mean / broadcast base path
(this implementation's choice, for the s = 1 reduction), and the paper's CFG scheduler (guidance here is
the constant-scale CFG of :mod:`tokjax.vision.image_lm`).

Decoding (:class:`TokenShuffleDecode`, a :class:`~tokjax.vision.image_lm.CanvasStrategy`) takes P = N / s^2
passes. It is KV-cached by default (``token_shuffle_decoder(..., cached=True)``): the transformer is causal
over the P slots and pass p reads slot p only, so pass p appends one slot -- the class token at p = 0, the
token-shuffled window p - 1 (sampled by pass p - 1) after -- and unshuffles its hidden state: raster NTP over
merged windows. ``cached=False`` runs the forward over all P slots each pass (same tokens and logits, tested).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits import hparam
from tokjax.model import Inputs, ModelConfig, forward, init_params
from tokjax.model.forward import embed, unembed
from tokjax.vision.image_lm import (CanvasStrategy, ImageVocab, append_block, feed_positions, image_batch_fn,
                                   sequence_positions)
from tokjax.vision.orders import Order, _check_int, window_raster

__all__ = ["TokenShuffleDecode", "make_token_shuffle_loss", "token_shuffle", "token_shuffle_batch_fn",
           "token_shuffle_decoder", "token_shuffle_init", "token_shuffle_logits", "token_shuffle_positions",
           "token_unshuffle"]

_F32 = jnp.float32


def _grid(shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"Token-Shuffle is built for image grids (H, W); got a grid of shape {shape}")
    return _check_int("H", shape[0], 1), _check_int("W", shape[1], 1)


def _check_s(s: Any, shape=None, d_model: int | None = None) -> int:
    s = _check_int("s", s, 1)
    if shape is not None:
        H, W = _grid(shape)
        if H % s or W % s:
            raise ValueError(f"window size s={s} must divide the grid, got H={H}, W={W}")
    if d_model is not None and s > 1 and d_model % (s * s):
        raise ValueError(f"d_model={d_model} must be divisible by s^2={s * s} (each of the s^2 merged embeddings is "
                         f"projected to d_model / s^2 channels)")
    return s


def _mlp_init(key, d_in: int, hidden: int, d_out: int, scale: float, zero_out: bool) -> dict:
    k1, k2 = jax.random.split(key)
    w2 = jnp.zeros((hidden, d_out), _F32) if zero_out else jax.random.normal(k2, (hidden, d_out), _F32) * scale
    return {"w1": jax.random.normal(k1, (d_in, hidden), _F32) * scale, "b1": jnp.zeros((hidden,), _F32),
            "w2": w2, "b2": jnp.zeros((d_out,), _F32)}


def _mlp(p: dict, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def token_shuffle_init(cfg: ModelConfig, key: jax.Array, s: int, *, mlp_ratio: int = 2) -> dict:
    """Returns the params of a Token-Shuffle model with window ``s``: the model's own (``init_params(cfg,
    key)``) plus, for s > 1, ``params["token_shuffle"]`` = {``down`` [d, d/s^2], ``mlp_in``, ``mlp_out``
    (d -> mlp_ratio d -> d, output matrices zero), ``up`` [d/s^2, d]}. At s = 1 the params are the plain
    model's (nothing to merge; module docstring). Raises ValueError for s < 1, d_model not divisible by s^2
    or mlp_ratio < 1."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    s = _check_s(s, d_model=cfg.d_model)
    mlp_ratio = _check_int("mlp_ratio", mlp_ratio, 1)
    k0, k1, k2, k3, k4 = jax.random.split(key, 5)
    params = dict(init_params(cfg, k0))
    if s == 1:
        return params
    d, c, sc = cfg.d_model, cfg.d_model // (s * s), cfg.init_scale
    params["token_shuffle"] = {
        "down": jax.random.normal(k1, (d, c), _F32) * sc,
        "mlp_in": _mlp_init(k2, d, mlp_ratio * d, d, sc, zero_out=True),
        "mlp_out": _mlp_init(k3, d, mlp_ratio * d, d, sc, zero_out=True),
        "up": jax.random.normal(k4, (c, d), _F32) * sc,
    }
    return params


def _ts_params(params, s: int) -> dict | None:
    if s == 1:
        return None
    if not isinstance(params, dict) or "token_shuffle" not in params:
        raise ValueError(f"a Token-Shuffle model with s={s} needs params['token_shuffle'] (build the params with "
                         "token_shuffle_init(cfg, key, s))")
    p = params["token_shuffle"]
    c = int(p["down"].shape[1])
    if c * s * s != int(p["down"].shape[0]):
        raise ValueError(f"params['token_shuffle'] was built for another window size (d_model / s^2 = {c}), not s={s}")
    return p


def token_shuffle(params, embeds: jax.Array, s: int) -> jax.Array:
    """Returns [..., P, d]: the merged token of each window of ``embeds`` [..., P, s^2, d] (the s^2
    embeddings of a window in window-raster order): ``mean_j e_j + MLP_in(concat_j e_j W_down)``; at s = 1
    the embedding itself."""
    s = _check_s(s)
    if embeds.shape[-2] != s * s:
        raise ValueError(f"embeds must be [..., P, s^2={s * s}, d], got shape {tuple(embeds.shape)}")
    p = _ts_params(params, s)
    if p is None:
        return embeds[..., 0, :]
    x = embeds.astype(_F32)
    z = jnp.einsum("...jd,dc->...jc", x, p["down"].astype(_F32))
    z = z.reshape(z.shape[:-2] + (-1,))  # concatenation along channels, window position j major
    return (jnp.mean(x, axis=-2) + _mlp(p["mlp_in"], z)).astype(embeds.dtype)


def token_unshuffle(params, hidden: jax.Array, s: int) -> jax.Array:
    """Returns [..., P, s^2, d]: the s^2 output states of each slot of ``hidden`` [..., P, d] (final-normed):
    ``h + split(MLP_out(h))_j W_up``; at s = 1 the hidden state itself (one output)."""
    s = _check_s(s)
    p = _ts_params(params, s)
    if p is None:
        return hidden[..., None, :]
    h = hidden.astype(_F32)
    u = _mlp(p["mlp_out"], h)
    u = u.reshape(u.shape[:-1] + (s * s, -1))
    return (h[..., None, :] + u @ p["up"].astype(_F32)).astype(hidden.dtype)


@functools.lru_cache(maxsize=None)
def token_shuffle_positions(shape, s: int) -> np.ndarray:
    """Returns int32 [P, 2]: the coordinate of every slot: (0, 0) for the class slot, then window w's
    coordinate on the (H/s) x (W/s) window grid + 1 for the slot holding window w (w = 0 .. P - 2). At s = 1:
    ``sequence_positions(raster)`` without its last entry, i.e. the NTP input positions."""
    H, W = _grid(shape)
    s = _check_s(s, (H, W))
    win = window_raster(H // s, W // s, 1)  # the window grid in raster order
    out = sequence_positions(win)[:-1]
    out.setflags(write=False)
    return out


def _split(tokens: jax.Array, shape, s: int) -> tuple[jax.Array, jax.Array]:
    H, W = _grid(shape)
    N = H * W
    if tokens.ndim != 2 or tokens.shape[1] != 1 + N:
        raise ValueError(f"tokens must be [B, 1 + H*W = {1 + N}] ([class, codes in window_raster(H, W, s) order]), "
                         f"got shape {tuple(tokens.shape)}")
    return tokens[:, 0], tokens[:, 1:].reshape(tokens.shape[0], N // (s * s), s * s)


def token_shuffle_logits(params, cfg: ModelConfig, tokens: jax.Array, shape, s: int) -> jax.Array:
    """Returns float32 [B, N, V]: the logits of every code of ``tokens`` [B, 1 + N] = ``[class, codes in
    window_raster(H, W, s) order]`` (row i predicts code i, from the class and the windows before code i's
    window). The transformer runs on P = N / s^2 slots (module docstring)."""
    H, W = _grid(shape)
    s = _check_s(s, (H, W), cfg.d_model)
    tokens = jnp.asarray(tokens, jnp.int32)
    cls, win = _split(tokens, (H, W), s)
    B, P = win.shape[:2]
    if s == 1:
        x = embed(params, cfg, tokens[:, :P])
    else:
        fused = token_shuffle(params, embed(params, cfg, win[:, :P - 1]), s)
        x = jnp.concatenate([embed(params, cfg, cls[:, None]), fused], axis=1)
    pos = None if cfg.pos_dims == 1 else jnp.asarray(token_shuffle_positions((H, W), s))[None]
    out = forward(params, cfg, Inputs(embeds=x, positions=pos), compute_logits=(s == 1))
    if s == 1:
        return out.logits.astype(_F32)
    c = token_unshuffle(params, out.hidden, s)  # [B, P, s^2, d]
    return unembed(params, cfg, c.reshape(B, P * s * s, -1)).astype(_F32)


def token_shuffle_batch_fn(codes: Any, labels: Any, vocab: ImageVocab, s: int, *, batch_size: int,
                           class_dropout: float = 0.1, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step)`` -> an :func:`~tokjax.vision.image_lm.image_batch` of ``codes`` [N, H, W]
    in ``window_raster(H, W, s)`` order (tokens, mask; positions are the loss's own), for
    :func:`make_token_shuffle_loss`. Raises ValueError for a window not dividing the grid (and as
    ``image_batch_fn``)."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ValueError(f"codes must be [N, H, W], got shape {codes.shape}")
    s = _check_s(s, codes.shape[1:])
    order = window_raster(codes.shape[1], codes.shape[2], s)
    return image_batch_fn(codes, labels, vocab, order, batch_size=batch_size, class_dropout=class_dropout,
                          seed=seed, coords=False)


@functools.lru_cache(maxsize=None)
def make_token_shuffle_loss(shape, s: int) -> Callable:
    """Returns the train loss ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` of window ``s`` on grid
    ``shape`` (one object per (shape, s), so runs share compiled steps): the mean cross-entropy of all codes
    of a :func:`token_shuffle_batch_fn` batch (weighted by its ``mask``)."""
    shape = _grid(shape)
    s = _check_s(s, shape)

    def loss_fn(params, cfg, batch, rng=None):
        if "tokens" not in batch:
            raise ValueError(f"the Token-Shuffle loss needs an image batch (tokens [B, 1 + H*W] in window_raster "
                             f"order); got keys {sorted(batch)}")
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        z = token_shuffle_logits(params, cfg, tokens, shape, s)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), tokens[:, 1:, None], axis=-1)[..., 0]
        mask = batch.get("mask")
        m = jnp.ones(nll.shape, _F32) if mask is None else jnp.asarray(mask, _F32)[:, 1:]
        loss = jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)
        return loss, {"nll": loss}

    loss_fn.__qualname__ = f"token_shuffle_loss{shape}_s{s}"
    return loss_fn


@functools.lru_cache(maxsize=None)
def _schedule(n: int, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    targets = np.arange(n, dtype=np.int32).reshape(n // a, a)  # pass p: the s^2 codes of window p
    out = (targets, (targets + 1).astype(np.int32), np.ones(targets.shape, bool))
    for x in out:
        x.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class TokenShuffleDecode(CanvasStrategy):
    """Decodes a Token-Shuffle model one s x s window per pass (N / s^2 passes) with classifier-free guidance;
    the s^2 codes of a window are sampled independently from their logits. ``order`` must be
    ``window_raster(H, W, s)`` (the committed sequence is in that order). Use :func:`token_shuffle_decoder`."""

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    s: int = 1
    guided: bool = True
    pos_dims: int = 1
    guidance: Any = hparam(1.0)
    grid: tuple = None  # static: set from order.shape
    cached: bool = True

    def __post_init__(self):
        self._check_common()
        if not isinstance(self.cached, bool):
            raise ValueError(f"cached must be True or False, got {self.cached!r}")
        object.__setattr__(self, "s", _check_s(self.s, self.order.shape))
        if self.order.name != "window_raster" or not np.array_equal(
                self.order.perm, window_raster(*self.order.shape, self.s).perm):
            raise ValueError(f"TokenShuffleDecode needs order=window_raster(H, W, s={self.s}), got {self.order!r}")
        object.__setattr__(self, "grid", _grid(self.order.shape))

    def validate(self, cfg: ModelConfig) -> None:
        # the canvas holds 1 + N ids, but the transformer runs on P = N / s^2 slots: max_len bounds P
        self.vocab.code_mask(cfg.vocab_size)
        if cfg.pos_dims != 1:
            raise ValueError(
                f"generate prefills the prompt without positions, which a pos_dims={cfg.pos_dims} model rejects; "
                "decode it with tokjax.vision.image_lm.sample_images")
        _check_s(self.s, self.grid, cfg.d_model)
        pos = token_shuffle_positions(self.grid, self.s)
        if pos.shape[0] > cfg.max_len or (cfg.positions == "learned" and int(pos.max()) >= cfg.max_len):
            raise ValueError(f"the model runs {pos.shape[0]} slots with coordinates up to {int(pos.max())}, beyond "
                             f"max_len={cfg.max_len}")

    def canvas_init(self, cls_tokens):
        R = cls_tokens.shape[0]
        rest = jnp.full((R, self.order.size), self.vocab.mask_id, jnp.int32)  # unfilled: never read (causal)
        return jnp.concatenate([cls_tokens[:, None].astype(jnp.int32), rest], axis=1)

    def canvas_positions(self) -> np.ndarray:
        return sequence_positions(self.order)  # per code slot (the loss computes the window coordinates itself)

    def schedule(self):
        return _schedule(self.order.size, self.s * self.s)

    def pass_logits(self, params, cfg, canvas, positions):
        return token_shuffle_logits(params, cfg, canvas, self.grid, self.s)

    def cached_logits(self, params, cfg, cache, extra, p):
        # slot p of the causal transformer: the class token (p = 0) or window p - 1, token-shuffled
        s, a = self.s, self.s * self.s
        canvas = extra.canvas
        cls = embed(params, cfg, canvas[:, :1])  # [R, 1, d]
        if s == 1:
            x = embed(params, cfg, jax.lax.dynamic_slice_in_dim(canvas, p, 1, axis=1))
        else:
            win = jax.lax.dynamic_slice_in_dim(canvas, 1 + jnp.maximum(p - 1, 0) * a, a, axis=1)  # [R, s^2]
            x = jnp.where(p == 0, cls, token_shuffle(params, embed(params, cfg, win[:, None]), s))
        table = jnp.asarray(token_shuffle_positions(self.grid, s))
        out = append_block(params, cfg, cache, Inputs(embeds=x, positions=feed_positions(cfg, table, p[None])),
                           jnp.zeros((1,), jnp.int32), compute_logits=(s == 1))
        if s == 1:
            return out.logits.astype(_F32), out.cache, extra  # [R, 1, V]
        c = token_unshuffle(params, out.hidden[:, 0], s)  # [R, s^2, d]
        return unembed(params, cfg, c).astype(_F32), out.cache, extra


def token_shuffle_decoder(vocab: ImageVocab, h: int, w: int, s: int, *, guided: bool = True,
                          guidance: Any = 1.0, cached: bool = True) -> TokenShuffleDecode:
    """Returns the :class:`TokenShuffleDecode` strategy for an h x w grid and window s (for
    :func:`~tokjax.vision.image_lm.sample_images`); ``cached`` (default): one slot appended to the KV cache per
    pass (module docstring). Raises ValueError when s does not divide h and w."""
    s = _check_s(s, (h, w))
    return TokenShuffleDecode(vocab=vocab, order=window_raster(h, w, s), s=s, guided=guided, guidance=guidance,
                              cached=cached)
