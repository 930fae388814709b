"""NBP: next-block prediction, semi-autoregressive generation one block per pass (P13; Ren et al. 2025,
arXiv 2502.07737, code RenShuhuai-Andy/NBP).

The codes of a raster grid (an image (H, W) or a video (T, H, W)) are cut into blocks of k consecutive
raster tokens (k = W: one row; 2W: two rows; H*W: one frame of a video). The sequence the model reads is

    slot   0        1 .. k          k+1 .. N
    token  class    BOV x k         codes 0 .. N-k-1          (N = number of codes)
    target  --      codes 0..k-1    codes k .. N-1            (shift k: token j of block b -> token j of block b+1)

with the k BOV placeholders ([MASK] ids of :class:`~tokjax.vision.image_lm.ImageVocab`) standing for
"block -1" (official: ``[cond][BOV x k][video]``, ``token_number_per_step`` = k). The image is factorised
over blocks, tokens of a block conditionally independent given the earlier blocks:

    p(x | y) = prod_b prod_{j<k} p(x_{bk+j} | y, x_{< bk}),

trained by plain cross-entropy on the shifted targets. Mask: a bidirectional ``Rank`` spec with rank 0
for the class token, 1 for the BOV block and b + 2 for code block b, so slot s sees slot t iff
rank(t) <= rank(s): block_k <= block_q, everything sees the class token (the official ``get_attn_mask``
makes the BOV region causal; with k identical placeholders that differ only by position this
implementation keeps it bidirectional like every other block -- a deviation, noted). Decoding fills
one block per pass: N / k passes.

Positions. Slot s >= 1 has the virtual raster index v = s - 1 - k (BOV: -k .. -1, codes 0 ..); its
coordinates are those of v on the grid extended by ``lead`` = ceil(k / S) leading slices (S = the size of
one slice, W for an image), plus 1 (the class token sits at 0), so every query sits one block before its
target along the raster (BOV j is "token j of block -1").

Reductions: at k = 1 the ranks are 0, 1, ..., N, so the mask is the causal mask and the targets are the
next tokens: NBP with k = 1 is next-token prediction on ``[class, BOV, codes]`` (tested: equal logits
and losses under ``Causal``), decoded in N passes.

Decoding is KV-cached by default (``nbp_decoder(..., cached=True)``): pass 0 appends ``[class, BOV x k]`` to
the cache, pass p > 0 appends block p - 1 (the block pass p - 1 sampled, bidirectional inside) plus one pad
slot (rolled back; it keeps every pass at k + 1 slots, one compiled shape without a branch) and reads block
p's logits there; the BOV block stays cached (every later block attends to it under ``nbp_ranks``).
Same tokens and logits as the cache-free path (``cached=False``: one forward of the whole canvas per pass).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits import hparam
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Rank
from tokjax.vision.image_lm import (CanvasStrategy, ImageVocab, _check_codes, _int_array, append_block,
                                   class_tokens_with_dropout, feed_positions, fixed_batch_fn)
from tokjax.vision.orders import Order, _check_int, _check_order, raster, to_sequence

__all__ = ["NBPDecode", "nbp_batch", "nbp_batch_fn", "nbp_decoder", "nbp_logits", "nbp_loss", "nbp_positions",
           "nbp_ranks"]

_F32 = jnp.float32


def _check_block(order: Order, block: Any) -> int:
    order = _check_order(order)
    if order.name != "raster":
        raise ValueError(f"NBP blocks are runs of consecutive raster tokens: order must be raster(...), got {order!r}")
    k = _check_int("block", block, 1)
    if order.size % k:
        raise ValueError(f"block={k} must divide the number of tokens of the grid {order.shape} ({order.size}); "
                         f"e.g. a row ({order.shape[-1]}) or a frame ({math.prod(order.shape[-2:])})")
    return k


def nbp_ranks(order: Order, block: int) -> np.ndarray:
    """Returns int32 [1 + N]: slot ranks of the NBP sequence (0 class, 1 BOV, b + 2 for code block b)."""
    k = _check_block(order, block)
    s = np.arange(1 + order.size)
    return np.where(s == 0, 0, 1 + (s - 1) // k).astype(np.int32)


def nbp_positions(order: Order, block: int) -> np.ndarray:
    """Returns int32 [1 + N, D]: slot coordinates (module docstring: zeros for the class token, the virtual
    raster index's coordinates + 1 otherwise)."""
    k = _check_block(order, block)
    slice_size = math.prod(order.shape[1:])
    lead = -(-k // slice_size)
    v = np.arange(order.size) - k + lead * slice_size  # slots 1..N
    ext = (order.shape[0] + lead,) + tuple(order.shape[1:])
    coords = np.stack(np.unravel_index(v, ext), axis=-1) + 1
    return np.concatenate([np.zeros((1, order.ndim), np.int64), coords]).astype(np.int32)


def nbp_batch(codes: Any, labels: Any, vocab: ImageVocab, order: Order, block: int, *, class_dropout: Any = 0.1,
              key: jax.Array | None = None) -> dict:
    """Returns a dict batch for ``tokjax.train.train`` with :func:`nbp_loss`: ``inputs`` / ``targets`` int32
    [B, 1 + N] (module docstring table; target 0 at slot 0), ``positions`` [B, 1 + N, D], ``ranks`` [B, 1 + N]
    and ``mask`` [B, 1 + N] (False at the class slot).

    ``codes`` [B, *order.shape] in [0, num_codes), ``labels`` [B]; ``class_dropout`` (runtime, in [0, 1])
    replaces a row's class by the null class, drawn from ``key``. Raises ValueError for a non-raster order,
    a block that does not divide the grid, a grid that is not the order's, ids out of range, or a missing key.
    """
    if not isinstance(vocab, ImageVocab):
        raise ValueError(f"vocab must be an ImageVocab, got {type(vocab).__name__}")
    k = _check_block(order, block)
    codes = _check_codes(codes, vocab, order)
    B, N = codes.shape[0], order.size
    labels = _int_array(labels, "class labels")
    if labels.shape != (B,):
        raise ValueError(f"labels must be [N={B}] (one class per image), got shape {tuple(labels.shape)}")
    cls = class_tokens_with_dropout(vocab, labels, class_dropout, key)
    seq = jnp.clip(to_sequence(jnp.asarray(codes), order), 0, vocab.num_codes - 1).astype(jnp.int32)
    bov = jnp.full((B, k), vocab.mask_id, jnp.int32)
    inputs = jnp.concatenate([cls[:, None], bov, seq[:, :N - k]], axis=1)
    targets = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), seq], axis=1)
    shape = (B, 1 + N)
    return {"inputs": inputs, "targets": targets,
            "positions": jnp.broadcast_to(jnp.asarray(nbp_positions(order, k)), shape + (order.ndim,)),
            "ranks": jnp.broadcast_to(jnp.asarray(nbp_ranks(order, k)), shape),
            "mask": jnp.broadcast_to(jnp.arange(1 + N) > 0, shape)}


def nbp_batch_fn(codes: Any, labels: Any, vocab: ImageVocab, order: Order, block: int, *, batch_size: int,
                 class_dropout: float = 0.1, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> nbp_batch(...)`` over fixed images, a pure function of ``step`` (as
    :func:`~tokjax.vision.image_lm.image_batch_fn`, through :func:`~tokjax.vision.image_lm.fixed_batch_fn`)."""
    _check_block(order, block)

    def build(codes, labels, key):
        return nbp_batch(codes, labels, vocab, order, block, class_dropout=class_dropout, key=key)

    return fixed_batch_fn(codes, labels, vocab, order, build, batch_size=batch_size, class_dropout=class_dropout,
                          seed=seed)


def nbp_logits(params, cfg: ModelConfig, batch: dict) -> jax.Array:
    """Returns float32 [B, 1 + N, V]: the model's logits on ``batch['inputs']`` under the NBP rank mask
    (``batch['ranks']``, a runtime array) at ``batch['positions']`` (left out for a pos_dims = 1 model)."""
    for name in ("inputs", "ranks"):
        if name not in batch:
            raise ValueError(f"an NBP batch needs {name!r} (build it with nbp_batch); got keys {sorted(batch)}")
    pos = batch.get("positions") if cfg.pos_dims > 1 else None
    out = forward(params, cfg, Inputs(tokens=jnp.asarray(batch["inputs"]), positions=pos),
                  mask=Rank(ranks=jnp.asarray(batch["ranks"], jnp.int32), bidirectional=True))
    return out.logits.astype(_F32)


def nbp_loss(params, cfg: ModelConfig, batch: dict, rng=None) -> tuple[jax.Array, dict]:
    """The NBP train loss ``(params, cfg, batch, rng) -> (loss, metrics)``: mean cross-entropy of the
    shift-k targets over the masked-in slots of an :func:`nbp_batch`."""
    z = nbp_logits(params, cfg, batch)
    logp = jax.nn.log_softmax(z, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(batch["targets"], jnp.int32)[..., None], axis=-1)[..., 0]
    m = jnp.asarray(batch["mask"], _F32)
    loss = jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)
    return loss, {"nll": loss}


@functools.lru_cache(maxsize=None)
def _schedule(n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    P = n // k
    q = 1 + np.arange(P)[:, None] * k + np.arange(k)[None, :]  # query slots of pass p: block p-1 (BOV at p = 0)
    writes = np.where(q + k <= n, q + k, -1)  # the sampled block becomes the next pass's queries
    out = (q.astype(np.int32), writes.astype(np.int32), np.ones((P, k), bool))
    for a in out:
        a.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class NBPDecode(CanvasStrategy):
    """Decodes an NBP model one block of ``block`` tokens per pass (N / block passes) with classifier-free
    guidance; ``order`` = the raster order of the grid (the committed sequence is the codes in raster
    order). Use :func:`nbp_decoder`."""

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    block: int = 1
    guided: bool = True
    pos_dims: int = 1
    guidance: Any = hparam(1.0)
    grid: tuple = None  # static: set from order.shape
    cached: bool = True

    def __post_init__(self):
        self._check_common()
        if not isinstance(self.cached, bool):
            raise ValueError(f"cached must be True or False, got {self.cached!r}")
        object.__setattr__(self, "block", _check_block(self.order, self.block))
        object.__setattr__(self, "grid", tuple(self.order.shape))

    def canvas_init(self, cls_tokens):
        R = cls_tokens.shape[0]
        rest = jnp.full((R, self.order.size), self.vocab.mask_id, jnp.int32)  # BOV, then unfilled slots
        return jnp.concatenate([cls_tokens[:, None].astype(jnp.int32), rest], axis=1)

    def canvas_positions(self) -> np.ndarray:
        return nbp_positions(raster(*self.grid[-2:], frames=self.grid[0] if len(self.grid) == 3 else None),
                             self.block)

    def schedule(self):
        return _schedule(self.order.size, self.block)

    def pass_logits(self, params, cfg, canvas, positions):
        R = canvas.shape[0]
        ranks = jnp.asarray(nbp_ranks(self.order, self.block))
        batch = {"inputs": canvas, "ranks": jnp.broadcast_to(ranks, canvas.shape),
                 "positions": jnp.broadcast_to(positions, (R,) + positions.shape)}
        return nbp_logits(params, cfg, batch)

    def cache_slots(self) -> int:  # the last pass writes one pad slot past the final length
        return 2 + self.order.size

    def cached_logits(self, params, cfg, cache, extra, p):
        # Pass p's queries are block p - 1 (the BOV block at p = 0): the block pass p - 1 filled. Every pass
        # appends k + 1 slots (one static shape, no branch): pass 0 [class, BOV x k] (ranks 0, 1: the class token
        # does not see the BOV block), pass p > 0 block p - 1 (one rank: bidirectional inside, every earlier slot
        # cached) and a pad slot of higher rank, rolled back. The BOV block stays cached: later blocks see it
        # (nbp_ranks).
        k = self.block
        first = p == 0
        i = jnp.arange(k + 1)
        slots = jnp.where(first, i, jnp.minimum(1 + p * k + i, extra.canvas.shape[1] - 1))
        ranks = jnp.where(first, jnp.minimum(i, 1), (i == k).astype(jnp.int32))
        tok = jnp.take(extra.canvas, slots, axis=1)
        pos = feed_positions(cfg, extra.positions, slots)
        out = append_block(params, cfg, cache, Inputs(tokens=tok, positions=pos), ranks, jnp.where(first, k + 1, k))
        rows = jnp.where(first, 1, 0) + jnp.arange(k)
        return jnp.take(out.logits, rows, axis=1).astype(_F32), out.cache, extra


def nbp_decoder(vocab: ImageVocab, order: Order, block: int, *, guided: bool = True,
                guidance: Any = 1.0, cached: bool = True) -> NBPDecode:
    """Returns the :class:`NBPDecode` strategy (``block`` tokens per pass over the raster ``order``); ``cached``
    (default) appends each finished block to the KV cache instead of re-running the canvas (same tokens and
    logits; :class:`~tokjax.vision.image_lm.CanvasStrategy`)."""
    return NBPDecode(vocab=vocab, order=order, block=block, guided=guided, guidance=guidance, cached=cached)
