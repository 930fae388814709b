"""NAR: Neighboring Autoregressive modeling (P31; He et al. 2025, arXiv 2503.10696, code ThisisBillhe/NAR).

Tokens stay in raster storage order, ``[class, codes (h, w) row-major]``, and are *generated* one
anti-diagonal per pass: the image is factorised over the anti-diagonals c = h + w,

    p(x | y) = prod_{c=0}^{H+W-2} prod_{h+w=c} p(x_{h,w} | y, x_{h'+w' < c}),

the tokens of one anti-diagonal conditionally independent given the earlier ones, so an H x W grid
takes H + W - 1 passes (15 instead of 64 for 8 x 8).

Mask (the official ``setup_diagonal_mask``, read in ``NAR-images/autoregressive/models/gpt.py``): token
(h_q, w_q) sees key (h_k, w_k) iff h_k + w_k <= h_q + w_q, and every token sees the class token. As a
``Rank`` spec (bidirectional within a rank): rank 0 for the class token, h + w + 1 for image token (h, w).

Dimension-oriented heads (official ``Transformer.forward``): head R is the model's own output (final
norm + LM head after its ``n_layers`` layers) and predicts the right neighbour (h, w+1); head B runs the
residual stream after layer ``n_layers`` through ``extra_layers`` more transformer layers (the official
``medusa_attention_num`` = 1), its own norm and its own output matrix, and predicts the neighbour below
(h+1, w). The logits of target (h, w) are

    (0, 0):        (R(class) + B(class)) / 2
    h = 0, w > 0:  R(h, w-1)
    h > 0, w = 0:  B(h-1, w)
    otherwise:     (R(h, w-1) + B(h-1, w)) / 2

and training is ONE cross-entropy on these combined logits (official: ``F.cross_entropy(logits, targets)``
after the combination; there is no separate per-head loss). Decoding samples every target of
anti-diagonal c from the same combined logits, computed on the canvas holding anti-diagonals < c.

Reductions: on a single row (H = 1) the ranks are 1, 2, ..., W, so the mask is the causal mask and the
combined logits of targets w >= 1 are exactly the model's next-token logits (head R at w - 1); only the
first token averages in head B at the class token. NAR on one row is therefore NTP except for the first
token's logits (tested). Video (3 heads, t + h + w) is not built here.

Decoding is KV-cached by default (``nar_decoder(..., cached=True)``; :class:`tokjax.vision.image_lm.CanvasStrategy`):
the targets of anti-diagonal c read both heads at anti-diagonal c - 1 only, so pass c appends anti-diagonal
c - 1 (the class token at c = 0) to the model's cache and to head B's own cache (its extra layers), padded
to min(H, W) slots; the pad slots sit after the real ones with a higher rank and are rolled back (never seen by
a later pass). Storage stays raster (positions are the raster slots / coordinates), the cache order is the
generation order -- attention does not depend on key order, so the logits equal the cache-free ones (one
full forward of the 1 + H*W canvas per pass, ``cached=False``; tested to 1e-5). Like the official sampler,
each anti-diagonal is padded to min(H, W); unlike it, storage is not permuted.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits import hparam
from tokjax.model import Inputs, KVCache, ModelConfig, forward, init_params
from tokjax.model.attention import Rank
from tokjax.model.forward import Taps, blocks, norm, unembed
from tokjax.vision.image_lm import (CanvasStrategy, ImageVocab, append_block, feed_positions, keep_block,
                                   sequence_positions)
from tokjax.vision.orders import Order, _check_int, diagonal, raster

__all__ = ["NARDecode", "make_nar_loss", "nar_combine", "nar_decoder", "nar_heads", "nar_init", "nar_logits",
           "nar_mask", "nar_ranks", "nar_sources", "nar_token_logp"]

_F32 = jnp.float32


def _grid(shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"NAR is built for image grids (H, W); got a grid of shape {shape} (video NAR, with a "
                         "third head over t + h + w, is not implemented)")
    return _check_int("H", shape[0], 1), _check_int("W", shape[1], 1)


def nar_ranks(shape) -> np.ndarray:
    """Returns int32 [1 + H*W]: the generation rank of each slot of ``[class, codes raster]``: 0 for the
    class token, h + w + 1 for image token (h, w)."""
    H, W = _grid(shape)
    h, w = np.divmod(np.arange(H * W), W)
    return np.concatenate([[0], h + w + 1]).astype(np.int32)


def nar_mask(shape) -> Rank:
    """Returns the proximity mask as a bidirectional ``Rank`` spec: key visible iff its rank <= the query's,
    i.e. h_k + w_k <= h_q + w_q (the class token, rank 0, is visible to all)."""
    return Rank(ranks=jnp.asarray(nar_ranks(shape)), bidirectional=True)


@functools.lru_cache(maxsize=None)
def nar_sources(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (r_src, b_src, r_w, b_w), each [H*W] over raster targets: the canvas slot whose head-R
    (head-B) output predicts the target, and the weight of that head in the combined logits (0, 0.5, 1).
    Slots index ``[class, codes raster]`` (slot 0 = class)."""
    H, W = _grid(shape)
    h, w = np.divmod(np.arange(H * W), W)
    slot = lambda hh, ww: 1 + hh * W + ww  # noqa: E731
    r_src = np.where(w > 0, slot(h, w - 1), 0)
    b_src = np.where(h > 0, slot(h - 1, w), 0)
    first = (h == 0) & (w == 0)
    r_w = np.where(first, 0.5, np.where(w == 0, 0.0, np.where(h == 0, 1.0, 0.5)))
    b_w = np.where(first, 0.5, np.where(h == 0, 0.0, np.where(w == 0, 1.0, 0.5)))
    out = (r_src.astype(np.int32), b_src.astype(np.int32), r_w.astype(np.float32), b_w.astype(np.float32))
    for a in out:
        a.setflags(write=False)
    return out


def nar_init(cfg: ModelConfig, key: jax.Array, *, extra_layers: int = 1) -> dict:
    """Returns NAR params: the model's own (``init_params(cfg, key)``, head R) plus ``"nar_b"`` = head B:
    ``layers`` (``extra_layers`` >= 1 stacked transformer layers of ``cfg``'s shape), ``norm`` and
    ``head`` [d_model, vocab] (its own output matrix). Train them together (``tokjax.train.train(...,
    params=)`` keeps the extra top-level entry)."""
    extra_layers = _check_int("extra_layers", extra_layers, 1)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    k0, k1, k2 = jax.random.split(key, 3)
    params = dict(init_params(cfg, k0))
    extra = init_params(cfg.replace(n_layers=extra_layers, tied_embeddings=False), k1)
    head = (jax.random.normal(k2, (cfg.d_model, cfg.vocab_size), _F32) * cfg.init_scale).astype(
        extra["lm_head"].dtype)
    params["nar_b"] = {"layers": extra["layers"], "norm": extra["final_norm"], "head": head}
    return params


def _check_nar_params(params) -> int:
    if not isinstance(params, dict) or "nar_b" not in params:
        raise ValueError("NAR params need the head-B entry params['nar_b'] (build them with nar_init)")
    return int(jax.tree.leaves(params["nar_b"]["layers"])[0].shape[0])


def nar_heads(params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None, shape) -> tuple:
    """Returns (logits_R, logits_B), float32 [B, 1 + H*W, V]: both heads' outputs at every slot of the raster
    canvas ``tokens`` [B, 1 + H*W] under the proximity mask. ``positions`` [B, T, D] (None for pos_dims = 1)."""
    extra = _check_nar_params(params)
    mask = nar_mask(shape)
    T = tokens.shape[1]
    if T != nar_ranks(shape).shape[0]:
        raise ValueError(f"a NAR canvas for the grid {tuple(shape)} has {nar_ranks(shape).shape[0]} slots "
                         f"(class + codes), got {T}")
    last = cfg.n_layers - 1
    out = forward(params, cfg, Inputs(tokens=tokens, positions=positions), mask=mask,
                  taps=Taps(layers=(last,), sites=("resid_post",)))
    x = out.taps["resid_post"][0]  # the raw residual after layer n_layers (head B continues from here)
    B = tokens.shape[0]
    if positions is None:
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    else:
        pshape = (B, T) if cfg.pos_dims == 1 else (B, T, cfg.pos_dims)
        pos = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), pshape)
    nb = params["nar_b"]
    xb, _, _ = blocks({"layers": nb["layers"]}, cfg.replace(n_layers=extra), x, pos, mask=mask)
    logits_b = unembed(params, cfg, norm(xb, nb["norm"], cfg), head=nb["head"])
    return out.logits.astype(_F32), logits_b.astype(_F32)


def nar_combine(logits_r: jax.Array, logits_b: jax.Array, shape) -> jax.Array:
    """Returns float32 [B, H*W, V]: the combined logits of every raster target (module docstring table)."""
    r_src, b_src, r_w, b_w = (jnp.asarray(a) for a in nar_sources(tuple(shape)))
    lr = jnp.take(logits_r, r_src, axis=1)
    lb = jnp.take(logits_b, b_src, axis=1)
    return r_w[None, :, None] * lr + b_w[None, :, None] * lb


def nar_logits(params, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array | None, shape) -> jax.Array:
    """Returns float32 [B, H*W, V]: :func:`nar_combine` of :func:`nar_heads` (the logits NAR trains and samples)."""
    r, b = nar_heads(params, cfg, tokens, positions, shape)
    return nar_combine(r, b, shape)


def _targets(batch) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    if "tokens" not in batch:
        raise ValueError(f"the NAR loss needs an image_batch (tokens [B, 1 + H*W], raster order); got keys "
                         f"{sorted(batch)}")
    tokens = jnp.asarray(batch["tokens"])
    mask = batch.get("mask")
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    return tokens, mask[:, 1:], batch.get("positions")


def nar_token_logp(params, cfg: ModelConfig, batch: dict, shape, *, logit_bias: jax.Array | None = None) -> jax.Array:
    """Returns float32 [B, H*W]: teacher-forced log p(code) of every raster code of ``batch`` (an
    :func:`~tokjax.vision.image_lm.image_batch` in raster order) under the combined logits (plus
    ``logit_bias`` [V], e.g. -inf off the code ids to match what the decoder samples from)."""
    tokens, _, positions = _targets(batch)
    z = nar_logits(params, cfg, tokens, positions, shape)
    if logit_bias is not None:
        z = z + logit_bias
    logp = jax.nn.log_softmax(z, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@functools.lru_cache(maxsize=None)
def make_nar_loss(shape) -> Any:
    """Returns the NAR train loss ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` for a grid ``shape``
    (one object per shape, so runs share compiled steps): the mean cross-entropy of the combined logits
    over the image tokens of an ``image_batch`` in raster order (weighted by its ``mask``)."""
    shape = _grid(shape)

    def loss_fn(params, cfg, batch, rng):
        tokens, mask, positions = _targets(batch)
        z = nar_logits(params, cfg, tokens, positions, shape)
        logp = jax.nn.log_softmax(z, axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        m = mask.astype(_F32)
        loss = jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)
        return loss, {"nll": loss}

    loss_fn.__qualname__ = f"nar_loss{shape}"
    return loss_fn


@functools.lru_cache(maxsize=None)
def _schedule(shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    H, W = _grid(shape)
    d = diagonal(H, W)
    P, A = H + W - 1, min(H, W)
    targets = np.zeros((P, A), np.int32)
    valid = np.zeros((P, A), bool)
    for p in range(P):
        idx = d.perm[d.groups == p]  # raster indices of anti-diagonal p, row-major
        targets[p, :len(idx)] = idx
        valid[p, :len(idx)] = True
    writes = np.where(valid, targets + 1, -1).astype(np.int32)
    for a in (targets, writes, valid):
        a.setflags(write=False)
    return targets, writes, valid


@functools.lru_cache(maxsize=None)
def _cache_plan(shape) -> tuple[np.ndarray, ...]:
    """Returns the cached passes' tables, each [P, A] unless noted: ``feed`` (canvas slots appended by pass c:
    anti-diagonal c - 1 row-major, then pads repeating its first slot; pass 0: the class slot and pads),
    ``ranks`` (0 real, 1 pad), ``keep`` [P] (real slots), ``r_row`` / ``b_row`` (the fed row whose head-R /
    head-B logits target a of pass c reads) and ``r_w`` / ``b_w`` (their weights, :func:`nar_sources`)."""
    H, W = _grid(shape)
    targets, _, valid = _schedule(shape)
    r_src, b_src, rw, bw = nar_sources(shape)
    P, A = targets.shape
    feed = np.zeros((P, A), np.int32)
    ranks = np.zeros((P, A), np.int32)
    ranks[0, 1:] = 1  # pass 0: the class slot, then pads
    keep = np.ones((P,), np.int32)
    r_row, b_row = np.zeros((P, A), np.int32), np.zeros((P, A), np.int32)
    for c in range(1, P):
        prev = 1 + targets[c - 1][valid[c - 1]]  # canvas slots of anti-diagonal c - 1
        n = len(prev)
        feed[c, :n], feed[c, n:], ranks[c, n:], keep[c] = prev, prev[0], 1, n
        where = {int(sl): i for i, sl in enumerate(prev)}
        for a in np.flatnonzero(valid[c]):
            t = targets[c, a]
            r_row[c, a] = where.get(int(r_src[t]), 0)
            b_row[c, a] = where.get(int(b_src[t]), 0)
    out = (feed, ranks, keep, r_row, b_row, rw[targets], bw[targets])
    for x in out:
        x.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class NARDecode(CanvasStrategy):
    """Decodes a NAR model one anti-diagonal per pass (H + W - 1 passes) with classifier-free guidance.

    ``order`` must be ``diagonal(H, W)``: the committed sequence (and ``ImageSamples.logprobs``) is in that
    order. The canvas is ``[class, codes raster]`` (``nar_sources`` slots); unfilled slots hold [MASK] and
    are invisible to every query of the pass (their ranks are higher). Use :func:`nar_decoder`.
    """

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    guided: bool = True
    pos_dims: int = 1
    guidance: Any = hparam(1.0)
    grid: tuple = None  # static: set from order.shape (the jit key; the Order itself compares by identity)
    cached: bool = True

    def __post_init__(self):
        self._check_common()
        if not isinstance(self.cached, bool):
            raise ValueError(f"cached must be True or False, got {self.cached!r}")
        if self.order.name != "diagonal":
            raise ValueError(f"NARDecode needs order=diagonal(H, W) (the order its passes commit), got {self.order!r}")
        object.__setattr__(self, "grid", _grid(self.order.shape))

    def canvas_init(self, cls_tokens):
        R = cls_tokens.shape[0]
        rest = jnp.full((R, self.order.size), self.vocab.mask_id, jnp.int32)
        return jnp.concatenate([cls_tokens[:, None].astype(jnp.int32), rest], axis=1)

    def canvas_positions(self) -> np.ndarray:
        return sequence_positions(raster(*self.order.shape))

    def schedule(self):
        return _schedule(self.order.shape)

    def pass_logits(self, params, cfg, canvas, positions):
        pos = None if cfg.pos_dims == 1 else positions[None]
        return nar_logits(params, cfg, canvas, pos, self.order.shape)

    def cache_slots(self) -> int:
        feed, _, keep = _cache_plan(self.grid)[:3]
        written = np.concatenate([[0], np.cumsum(keep)[:-1]])  # cache entries before each pass
        return int(np.max(written + feed.shape[1]))

    def canvas_aux(self, params, cfg, rows, capacity):
        extra = _check_nar_params(params)  # head B's own cache: its extra layers see the same slots
        return KVCache.init(cfg.replace(n_layers=extra), rows, capacity)

    def cached_logits(self, params, cfg, cache, extra, p):
        feed, ranks, keep, r_row, b_row, r_w, b_w = (jnp.asarray(a) for a in _cache_plan(self.grid))
        n_b = _check_nar_params(params)
        nb = params["nar_b"]
        last = cfg.n_layers - 1

        # pass p appends anti-diagonal p - 1 (the class token at p = 0), padded to min(H, W) slots; the pads have
        # the higher rank (the real slots never see them) and are rolled back from both caches
        slots, rk, kp = feed[p], ranks[p], keep[p]
        tok = jnp.take(extra.canvas, slots, axis=1)
        pos = feed_positions(cfg, extra.positions, slots)
        out = append_block(params, cfg, cache, Inputs(tokens=tok, positions=pos), rk, kp,
                           taps=Taps(layers=(last,), sites=("resid_post",)))
        R, F = tok.shape
        pos = jnp.broadcast_to(pos, (R, F) + pos.shape[1:])
        xb, cache_b, _ = blocks({"layers": nb["layers"]}, cfg.replace(n_layers=n_b), out.taps["resid_post"][0], pos,
                                mask=Rank(ranks=rk, bidirectional=True), cache=extra.aux)
        lb = unembed(params, cfg, norm(xb, nb["norm"], cfg), head=nb["head"]).astype(_F32)
        lr = out.logits.astype(_F32)
        z = (r_w[p][None, :, None] * jnp.take(lr, r_row[p], axis=1)
             + b_w[p][None, :, None] * jnp.take(lb, b_row[p], axis=1))
        return z, out.cache, extra.replace(aux=keep_block(extra.aux, cache_b, kp))


def nar_decoder(vocab: ImageVocab, h: int, w: int, *, guided: bool = True, guidance: Any = 1.0,
                cached: bool = True) -> NARDecode:
    """Returns the :class:`NARDecode` strategy for an h x w grid (for :func:`~tokjax.vision.image_lm.sample_images`);
    ``cached`` (default): each pass appends the last anti-diagonal to the KV caches (module docstring)."""
    return NARDecode(vocab=vocab, order=diagonal(h, w), guided=guided, guidance=guidance, cached=cached)
