"""Hi-MAR: hierarchical masked autoregression on low-resolution token pivots (P5; Zheng et al., ICML 2025,
"Hierarchical Masked Autoregressive Models with Low-Resolution Token Pivots", arXiv 2505.20288, code
HiDream-ai/himar ``models/himar.py``), with categorical heads on discrete codes.

An image has dense codes x (an H x W grid, L = H W, raster order) and pivots p: the codes of the same image at
low resolution (an h x w grid, P = h w, e.g. the image average-pooled by H/h and encoded by the same tokenizer:
:func:`pool_images`). The model factorises

    p(x, p | y) = p(p | y) p(x | y, z(p)),

each factor a masked-set AR model over one shared backbone (the model's own forward, bidirectional):

* phase 1 (task 0) reads ``[class, p_0 .. p_{P-1}]`` ([MASK] where unknown) and predicts pivots;
* phase 2 (task 1) reads ``[class, s_0 .. s_{P-1}, x_0 .. x_{L-1}]`` ([MASK] where unknown) and predicts dense
  codes, where pivot slot i holds s_i = W z_i + b, z_i the phase-1 *hidden state* (final, normed) at pivot i --
  not the pivot code (official ``cond_z_proj(small_z)``), entering through ``Inputs(embeds=)``.

Each slot's input is the backbone's embedding (of its code, class or [MASK]) plus a learned task embedding
e_task (the official per-task AdaLN of every block, here one additive vector per phase). Positions: sequence
indices for a pos_dims = 1 model; for pos_dims = 2, the class at (0, 0), dense code (r, c) at (r + 1, c + 1)
and pivot (i, j) at the centre of its block, (f i + f//2 + 1, f j + f//2 + 1) with f = H / h.

Training (official ``forward``; :func:`make_himar_loss`), per batch:

    phase 1: r1 ~ truncnorm(min 0.7, mean 1, std 0.25); per row a random pivot order; the first
             ceil(r1 P) pivots masked; CE_1 = mean cross-entropy over the masked pivots;
    phase 2: s_i = W sg(z_i) + b at the pivots masked in phase 1, the learned placeholder c_i at the visible
             ones (official ``small_mask``); with probability p_drop per row every slot is c_i (pivot
             dropout; official p_drop = 1 - rate min(1, epoch / warm-up)); r2 ~ cosine (``--cos``, every released
             command) or truncnorm(min 0.38); the first ceil(r2 L) dense codes of a random order masked;
             CE_2 = mean cross-entropy over them;
    loss = 2.0 CE_1 + 0.75 CE_2     (the official weights).

Decoding (official ``sample_tokens``; :class:`HiMAR`): phase 1 runs ``pivot_iters`` masked-set steps over the
pivots (official 4 h), phase 2 ``iters`` steps over the dense codes, each with MAR's cosine schedule
(:func:`tokjax.vision.masked_set.fill_schedule`) and its own linear guidance ramp (``pivot_guidance`` = the
official ``re_cfg``, ``guidance`` = ``cfg``). z_i is the phase-1 hidden state of the step that filled pivot i
(official ``small_z[mask_to_pred] = z[mask_to_pred]``); under guidance the null-class rows of phase 2 read the
conditional rows' z (official). Fill choice: ``"random"`` (official: the next codes of a random order per
image) or ``"confidence"`` (MaskGIT's Gumbel top-k, :mod:`tokjax.vision.masked_set`). Passes:
pivot_iters forwards of 1 + P slots, then iters forwards of 1 + P + L slots (cache-free).

Verified against the official code (``models/himar.py``, ``main_himar.py``, README commands): the two ratio
generators (truncnorm((0.7 - 1)/0.25, 0) for pivots; ``MaskRatioGenerator`` cos(pi/2 U(0,1)) with ``--cos``,
else truncnorm min 0.38, for dense codes; one ratio per batch, ceil); the cosine fill counts (clamped, the last
step fills the rest); the linear CFG ramps; phase 2 reading the phase-1 decoder features z and never the pivot
codes; the visible-pivot placeholder and the pivot dropout rule; loss weights 2.0 / 0.75; the null rows of
phase 2 reading the conditional z. MaskGIT's Gumbel top-k with noise tau (1 - (s+1)/n) is checked against
google-research/maskgit ``parallel_decode.py``.

Deviations (documented): categorical heads (the backbone's own LM head on code ids) instead of the per-token
MLP diffusion head (phase 1) and the Diffusion-Transformer head ``GlobalDiffLoss`` (phase 2); one backbone
instead of the MAE encoder/decoder pair with 64 class-buffer tokens; phase 1 reads only ``[class, pivots]``
(the official decoder also carries mask tokens for every dense slot, which carry no information); the task
enters as an additive embedding, not per-block AdaLN; positions are shared RoPE / sequence coordinates, not
per-phase learned tables; class dropout is drawn once per example for both phases (official: independently per
phase); pivot dropout is a runtime probability (:func:`himar_batch_fn` ramps it from 1 to ``pivot_dropout``
over a warm-up in steps instead of epochs).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.data import batch_indices
from tokjax.decoding import DecodeState
from tokjax.logits import as_rows, check_range, hparam
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Bidirectional
from tokjax.model.forward import embed
from tokjax.vision.flow import _dense, _linear
from tokjax.vision.image_lm import ImageVocab, _check_codes, _int_array, class_tokens_with_dropout, image_rows
from tokjax.vision.masked_set import (MaskedSetImage, _check_ratio, _nll, commit_chosen, fill_schedule, mask_ratio,
                                     parallel_step, random_masks, random_ranks)
from tokjax.vision.orders import Order, _check_int, raster

__all__ = ["HiMAR", "HiMARState", "himar", "himar_batch", "himar_batch_fn", "himar_init", "himar_logits",
           "himar_positions", "himar_replay", "make_himar_loss", "pool_images", "pivot_dropout_at"]

_F32 = jnp.float32
LOSS_WEIGHTS = (2.0, 0.75)  # official: 2.0 * loss1, 0.75 * loss2


# ------------------------------------------------------------------------------------------ layout
def _grids(grid, pivot_grid) -> tuple[tuple[int, int], tuple[int, int], int]:
    grid, pivot_grid = tuple(grid), tuple(pivot_grid)
    if len(grid) != 2 or len(pivot_grid) != 2:
        raise ValueError(f"Hi-MAR needs 2-D grids (H, W) and pivot grids (h, w), got {grid} and {pivot_grid}")
    H, W = (_check_int("H", grid[0], 1), _check_int("W", grid[1], 1))
    h, w = (_check_int("h", pivot_grid[0], 1), _check_int("w", pivot_grid[1], 1))
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"the pivot grid {pivot_grid} must divide the grid {grid} by one integer factor "
                         f"(H/h = W/w)")
    return (H, W), (h, w), H // h


@functools.lru_cache(maxsize=None)
def himar_positions(grid, pivot_grid) -> tuple[np.ndarray, np.ndarray]:
    """Returns (phase 1 int32 [1 + P, 2], phase 2 int32 [1 + P + L, 2]): slot coordinates for a pos_dims = 2
    model (module docstring: class (0, 0); pivot (i, j) at the centre of its f x f block, + 1; dense (r, c) at
    (r + 1, c + 1))."""
    (H, W), (h, w), f = _grids(grid, pivot_grid)
    i, j = np.divmod(np.arange(h * w), w)
    piv = np.stack([f * i + f // 2 + 1, f * j + f // 2 + 1], axis=-1)
    r, c = np.divmod(np.arange(H * W), W)
    dense = np.stack([r + 1, c + 1], axis=-1)
    zero = np.zeros((1, 2), np.int64)
    out = (np.concatenate([zero, piv]).astype(np.int32), np.concatenate([zero, piv, dense]).astype(np.int32))
    for a in out:
        a.setflags(write=False)
    return out


def pool_images(images: Any, factor: int) -> np.ndarray:
    """Returns float32 [N, H/f, W/f]: ``images`` [N, H, W] average-pooled over f x f blocks (the low-resolution
    image whose codes are the pivots). Raises ValueError unless f divides H and W."""
    x = np.asarray(images, np.float32)
    f = _check_int("factor", factor, 1)
    if x.ndim != 3 or x.shape[1] % f or x.shape[2] % f:
        raise ValueError(f"images must be [N, H, W] with H and W divisible by factor={f}, got shape {x.shape}")
    N, H, W = x.shape
    return x.reshape(N, H // f, f, W // f, f).mean(axis=(2, 4))


# ------------------------------------------------------------------------------------------ model
def himar_init(cfg: ModelConfig, key: jax.Array, pivot_grid) -> dict:
    """Returns ``params["himar"]``: {"task": [2, d_model] task embeddings, "proj": d_model -> d_model (W, b:
    the official ``cond_z_proj``), "cond": [P, d_model] the learned pivot placeholders} (normal std 0.02 as the
    official ``cond_tokens``; xavier-uniform projection). Add it to the model's params:
    ``{**init_params(cfg, k), "himar": himar_init(cfg, k2, (h, w))}``."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    pivot_grid = tuple(pivot_grid)
    if len(pivot_grid) != 2:
        raise ValueError(f"pivot_grid must be (h, w), got {pivot_grid}")
    P = _check_int("h", pivot_grid[0], 1) * _check_int("w", pivot_grid[1], 1)
    k1, k2, k3 = jax.random.split(key, 3)
    D = cfg.d_model
    return {"task": 0.02 * jax.random.normal(k1, (2, D), _F32), "proj": _linear(k2, D, D),
            "cond": 0.02 * jax.random.normal(k3, (P, D), _F32)}


def _hp(params, P: int, D: int) -> dict:
    if not isinstance(params, dict) or "himar" not in params:
        raise ValueError("Hi-MAR params need params['himar'] (tokjax.vision.himar.himar_init(cfg, key, pivot_grid))")
    hp = params["himar"]
    if (not isinstance(hp, dict) or not {"task", "proj", "cond"} <= set(hp) or hp["cond"].shape != (P, D)
            or hp["task"].shape != (2, D)):
        raise ValueError(f"params['himar'] must be himar_init(cfg, key, pivot_grid) for {P} pivots and d_model={D}")
    return hp


def _positions(cfg: ModelConfig, pos: np.ndarray, rows: int):
    if cfg.pos_dims == 1:
        return None
    if cfg.pos_dims != 2:
        raise ValueError(f"Hi-MAR places slots on 2-D grids: the model needs pos_dims 1 or 2, got {cfg.pos_dims}")
    return jnp.broadcast_to(jnp.asarray(pos), (rows,) + pos.shape)


def _phase1(params, cfg, hp, cls, pivots, pos1):
    """(logits [B, P, V], hidden [B, P, D]) float32 of phase 1 on ``pivots`` ([MASK] where unknown)."""
    tokens = jnp.concatenate([cls.reshape(-1, 1), pivots], axis=1)
    e = embed(params, cfg, tokens).astype(_F32) + hp["task"][0]
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype), positions=_positions(cfg, pos1, e.shape[0])),
                  mask=Bidirectional())
    return out.logits[:, 1:].astype(_F32), out.hidden[:, 1:].astype(_F32)


def _slots(hp, feats, use_feat):
    """[B, P, D]: W z + b where ``use_feat``, the learned placeholder elsewhere."""
    return jnp.where(use_feat[..., None], _dense(hp["proj"], feats.astype(_F32)), hp["cond"][None])


def _phase2(params, cfg, hp, cls, slots, dense, pos2):
    """logits [B, L, V] float32 of phase 2 on ``dense`` ([MASK] where unknown) given pivot slot vectors."""
    e_cls = embed(params, cfg, cls.reshape(-1, 1)).astype(_F32)
    e_x = embed(params, cfg, dense).astype(_F32)
    e = jnp.concatenate([e_cls, slots.astype(_F32), e_x], axis=1) + hp["task"][1]
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype), positions=_positions(cfg, pos2, e.shape[0])),
                  mask=Bidirectional())
    return out.logits[:, 1 + slots.shape[1]:].astype(_F32)


def himar_logits(params, cfg: ModelConfig, cls: Any, pivots: Any, dense: Any, grid, pivot_grid, *,
                 use_feat: Any = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (pivot logits [B, P, V], pivot hidden z [B, P, D], dense logits [B, L, V]), float32: phase 1 on
    ``pivots`` int [B, P] and phase 2 on ``dense`` int [B, L] (raster codes, [MASK] where unknown) with class
    tokens ``cls`` [B]; pivot slot i holds W z_i + b where ``use_feat`` [B, P] (default: everywhere), the
    placeholder c_i elsewhere (z from this same phase-1 pass)."""
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    P, L = h * w, H * W
    hp = _hp(params, P, cfg.d_model)
    pivots, dense = jnp.asarray(pivots, jnp.int32), jnp.asarray(dense, jnp.int32)
    if pivots.ndim != 2 or pivots.shape[1] != P or dense.shape != (pivots.shape[0], L):
        raise ValueError(f"pivots must be int [B, {P}] and dense codes int [B, {L}], got {pivots.shape} and "
                         f"{dense.shape}")
    pos1, pos2 = himar_positions((H, W), (h, w))
    cls = jnp.asarray(cls, jnp.int32)
    lp, z = _phase1(params, cfg, hp, cls, pivots, pos1)
    use = jnp.ones(pivots.shape, bool) if use_feat is None else jnp.asarray(use_feat, bool)
    ld = _phase2(params, cfg, hp, cls, _slots(hp, z, use), dense, pos2)
    return lp, z, ld


# ------------------------------------------------------------------------------------------ training
def pivot_dropout_at(step: Any, pivot_dropout: float, warmup_steps: int) -> float:
    """Returns the pivot-dropout probability at ``step``: 1 - (1 - pivot_dropout) min(1, step / warmup_steps)
    (the official 1 - rate min(1, epoch / step_warmup), in steps; warmup_steps = 0: constant)."""
    check_range(pivot_dropout, "pivot_dropout", lo=0.0, hi=1.0)
    if warmup_steps <= 0:
        return float(pivot_dropout)
    return float(1.0 - (1.0 - pivot_dropout) * min(1.0, step / warmup_steps))


def himar_batch(codes: Any, pivots: Any, labels: Any, vocab: ImageVocab, grid, pivot_grid, *,
                class_dropout: Any = 0.1, pivot_dropout: Any = 0.5, key: jax.Array | None = None) -> dict:
    """Returns a dict batch for ``tokjax.train.train`` with :func:`make_himar_loss`: ``tokens`` int32 [B, 1 + L]
    (class -- the null class with probability ``class_dropout`` -- then the dense codes in raster order),
    ``pivots`` int32 [B, P] (raster) and ``pivot_dropout`` float32 [] (runtime). ``codes`` [B, H, W] and
    ``pivots`` [B, h, w] in [0, num_codes). Raises ValueError for grids that do not match, ids out of range or
    probabilities outside [0, 1]."""
    if not isinstance(vocab, ImageVocab):
        raise ValueError(f"vocab must be an ImageVocab, got {type(vocab).__name__}")
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    codes = _check_codes(codes, vocab, raster(H, W))
    piv = _check_codes(pivots, vocab, raster(h, w))
    B = codes.shape[0]
    labels = _int_array(labels, "class labels")
    if labels.shape != (B,) or piv.shape[0] != B:
        raise ValueError(f"labels [B] and pivots [B, h, w] must have B={B} rows, got {labels.shape} and {piv.shape}")
    check_range(pivot_dropout, "pivot_dropout", lo=0.0, hi=1.0)
    cls = class_tokens_with_dropout(vocab, labels, class_dropout, key)
    seq = jnp.asarray(codes, jnp.int32).reshape(B, H * W)
    return {"tokens": jnp.concatenate([cls[:, None], seq], axis=1),
            "pivots": jnp.asarray(piv, jnp.int32).reshape(B, h * w),
            "pivot_dropout": jnp.asarray(pivot_dropout, _F32)}


def himar_batch_fn(codes: Any, pivots: Any, labels: Any, vocab: ImageVocab, grid, pivot_grid, *, batch_size: int,
                   class_dropout: float = 0.1, pivot_dropout: float = 0.5, warmup_steps: int = 0,
                   seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> himar_batch(...)`` over fixed images (a pure function of ``step``), the pivot
    dropout ramped by :func:`pivot_dropout_at`."""
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    piv_all = np.asarray(_check_codes(pivots, vocab, raster(h, w)))
    codes = np.asarray(codes)
    if piv_all.shape[0] != codes.shape[0]:
        raise ValueError(f"pivots must have one grid per image ({codes.shape[0]}), got {piv_all.shape[0]}")
    check_range(class_dropout, "class_dropout", lo=0.0, hi=1.0)
    batch_size = _check_int("batch_size", batch_size, 1)
    base = jax.random.key(_check_int("seed", seed, 0))
    _check_codes(codes, vocab, raster(H, W))
    labels = np.asarray(_int_array(labels, "class labels"))
    vocab.class_tokens(labels)

    def batch_fn(step: int) -> dict:
        idx = batch_indices(codes.shape[0], batch_size, step, seed=seed)
        return himar_batch(codes[idx], piv_all[idx], labels[idx], vocab, (H, W), (h, w), class_dropout=class_dropout,
                           pivot_dropout=pivot_dropout_at(step, pivot_dropout, warmup_steps),
                           key=jax.random.fold_in(base, step))

    return batch_fn


@functools.lru_cache(maxsize=None)
def make_himar_loss(grid, pivot_grid, vocab: ImageVocab, *, pivot_ratio_min: float = 0.7,
                    dense_ratio: str = "cosine", dense_ratio_min: float = 0.38,
                    weights: tuple = LOSS_WEIGHTS) -> Callable:
    """Returns the Hi-MAR train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` on a :func:`himar_batch`
    (module docstring: w1 CE_1 + w2 CE_2; metrics ``pivot_nll``, ``dense_nll``, ``pivot_ratio``,
    ``dense_ratio``). One object per settings, so runs share compiled steps."""
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    if not isinstance(vocab, ImageVocab):
        raise ValueError(f"vocab must be an ImageVocab, got {type(vocab).__name__}")
    _check_ratio("truncnorm", pivot_ratio_min)
    _check_ratio(dense_ratio, dense_ratio_min)
    w1, w2 = (float(x) for x in weights)
    if w1 < 0 or w2 < 0:
        raise ValueError(f"loss weights must be >= 0, got {weights}")
    P, L = h * w, H * W
    pos1, pos2 = himar_positions((H, W), (h, w))

    def loss_fn(params, cfg, batch, rng):
        if rng is None:
            raise ValueError("the Hi-MAR loss draws orders, ratios and pivot dropout: it needs rng")
        if (not isinstance(batch, dict) or "tokens" not in batch or "pivots" not in batch
                or jnp.shape(batch["tokens"])[1:] != (1 + L,) or jnp.shape(batch["pivots"])[1:] != (P,)):
            raise ValueError(f"a Hi-MAR batch needs tokens [B, {1 + L}] and pivots [B, {P}] (himar_batch)")
        hp = _hp(params, P, cfg.d_model)
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        piv = jnp.asarray(batch["pivots"], jnp.int32)
        B = tokens.shape[0]
        cls, codes = tokens[:, 0], tokens[:, 1:]
        k1, k2, k3, k4, k5 = jax.random.split(rng, 5)
        r1 = mask_ratio(k1, "truncnorm", pivot_ratio_min)
        m1 = random_masks(k2, B, P, r1)
        lp, z = _phase1(params, cfg, hp, cls, jnp.where(m1, vocab.mask_id, piv), pos1)
        nll1 = _nll(lp, piv, m1)
        drop = jax.random.bernoulli(k3, jnp.asarray(batch.get("pivot_dropout", 0.5), _F32), (B,))
        use = m1 & ~drop[:, None]
        r2 = mask_ratio(k4, dense_ratio, dense_ratio_min)
        m2 = random_masks(k5, B, L, r2)
        ld = _phase2(params, cfg, hp, cls, _slots(hp, jax.lax.stop_gradient(z), use),
                     jnp.where(m2, vocab.mask_id, codes), pos2)
        nll2 = _nll(ld, codes, m2)
        loss = w1 * nll1 + w2 * nll2
        return loss, {"pivot_nll": nll1, "dense_nll": nll2, "pivot_ratio": jnp.mean(m1.astype(_F32)),
                      "dense_ratio": jnp.mean(m2.astype(_F32))}

    loss_fn.__qualname__ = f"himar_loss{(H, W)}{(h, w)}"
    return loss_fn


# ------------------------------------------------------------------------------------------ decoding
@struct.dataclass
class HiMARState:
    """``DecodeState.extra`` of :class:`HiMAR`: ``pivots`` / ``codes`` int32 [R, P] / [R, L] (raster; [MASK]
    where unknown), ``feats`` float32 [R, P, D] (phase-1 hidden state of the step that filled each pivot),
    ``pivot_logp`` / ``logp`` float32, ``pivot_filled`` / ``filled_at`` int32 (step that filled each code,
    counted within its phase; -1 unknown), ``pivot_rank`` / ``rank`` int32 (random orders), ``guidance`` /
    ``pivot_guidance`` float32 [images], ``noise`` float32 [] (choice temperature)."""

    pivots: jax.Array
    codes: jax.Array
    feats: jax.Array
    pivot_logp: jax.Array
    logp: jax.Array
    pivot_filled: jax.Array
    filled_at: jax.Array
    pivot_rank: jax.Array
    rank: jax.Array
    guidance: jax.Array
    pivot_guidance: jax.Array
    noise: jax.Array


@dataclasses.dataclass(frozen=True)
class HiMAR(MaskedSetImage):
    """Two-phase Hi-MAR decoding (module docstring): ``pivot_iters`` steps over the ``pivot_grid`` pivots, then
    ``iters`` steps over the dense grid ``order`` = raster(H, W). Static: ``vocab``, ``order``, ``pivot_grid``,
    ``pivot_iters``, ``iters``, ``choice``, ``guided``, ``pos_dims`` (set by ``sample_images``). Runtime:
    ``guidance`` (phase 2, the official ``cfg``), ``pivot_guidance`` (phase 1, ``re_cfg``), each a scalar or
    [images] ramped linearly; ``choice_temperature``. Use :func:`himar`."""

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    pivot_grid: tuple = (4, 4)
    pivot_iters: int = 4
    iters: int = 8
    choice: str = "random"
    guided: bool = False
    pos_dims: int = 1
    guidance: Any = hparam(1.0)
    pivot_guidance: Any = hparam(1.0)
    choice_temperature: Any = hparam(4.5)
    grid: tuple = None  # static: set from order.shape

    def __post_init__(self):
        self._check_masked_set()
        object.__setattr__(self, "grid", tuple(self.order.shape))
        _grids(self.grid, self.pivot_grid)
        object.__setattr__(self, "pivot_grid", tuple(int(x) for x in self.pivot_grid))
        fill_schedule(self.P, self.pivot_iters)
        fill_schedule(self.order.size, self.iters)
        check_range(self.pivot_guidance, "pivot_guidance", lo=0.0)
        if not self.guided and np.any(np.asarray(self.pivot_guidance) != 1.0):
            raise ValueError("pivot_guidance != 1 needs guided=True (the null-class rows)")

    @property
    def P(self) -> int:
        return self.pivot_grid[0] * self.pivot_grid[1]

    @property
    def max_accept(self) -> int:
        return int(max(fill_schedule(self.P, self.pivot_iters)[0].max(),
                       fill_schedule(self.order.size, self.iters)[0].max()))

    def new_tokens(self) -> int:
        return self.P + self.order.size

    def validate(self, cfg: ModelConfig) -> None:
        self._check_model(cfg, "")
        if 1 + self.P + self.order.size > cfg.max_len:
            raise ValueError(f"[class, {self.P} pivots, {self.order.size} codes] does not fit the model's "
                             f"max_len={cfg.max_len}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> HiMARState:
        _hp(params, self.P, cfg.d_model)
        R, L, P = state.tokens.shape[0], self.order.size, self.P
        n = image_rows(R, self.guided)
        k1, k2 = jax.random.split(jax.random.fold_in(state.key, 0x686D))
        pr, dr = random_ranks(k1, n, P), random_ranks(k2, n, L)
        two = (lambda a: jnp.concatenate([a, a])) if self.guided else (lambda a: a)
        return HiMARState(
            pivots=jnp.full((R, P), self.vocab.mask_id, jnp.int32), codes=jnp.full((R, L), self.vocab.mask_id, jnp.int32),
            feats=jnp.zeros((R, P, cfg.d_model), _F32), pivot_logp=jnp.zeros((R, P), _F32),
            logp=jnp.zeros((R, L), _F32), pivot_filled=jnp.full((R, P), -1, jnp.int32),
            filled_at=jnp.full((R, L), -1, jnp.int32), pivot_rank=two(pr), rank=two(dr),
            guidance=as_rows(self.guidance, n, "guidance"), pivot_guidance=as_rows(self.pivot_guidance, n, "pivot_guidance"),
            noise=jnp.asarray(self.choice_temperature, _F32))

    def step(self, params, cfg: ModelConfig, transform, state, eos_id=None):
        if self.pos_dims > 1:
            cfg = cfg.replace(pos_dims=self.pos_dims)  # sample_images ran the prefill as pos_dims=1
        hp = params["himar"]
        pos1, pos2 = himar_positions(self.grid, self.pivot_grid)
        cls = state.tokens[:, 0]
        R = state.tokens.shape[0]
        n = R // 2 if self.guided else R
        width = self.max_accept

        def phase(z, s, iters, L, unknown, rank, g, fills, starts, ramp, st):
            key, sub = jax.random.split(st.key)
            noise = st.extra.noise * (1.0 - (s + 1).astype(_F32) / iters)
            out = parallel_step(sub, z, st, transform, vocab=self.vocab, guided=self.guided,
                                g=1.0 + (g - 1.0) * ramp[s], unknown=unknown, count=fills[s], choice=self.choice,
                                noise=noise, rank=rank, start=starts[s])
            return key, out

        def one(st):
            ex = st.extra
            fills, starts, ramp = (jnp.asarray(a) for a in fill_schedule(self.P, self.pivot_iters))
            s = jnp.minimum(st.step, self.pivot_iters - 1)
            z, hid = _phase1(params, cfg, hp, cls, ex.pivots, pos1)
            key, (tok, logits, chosen, logp, lst, masked) = phase(
                z, s, self.pivot_iters, self.P, ex.pivot_filled < 0, ex.pivot_rank, ex.pivot_guidance, fills, starts,
                ramp, st)
            extra = ex.replace(pivots=jnp.where(chosen, tok, ex.pivots),
                               pivot_logp=jnp.where(chosen, logp, ex.pivot_logp),
                               pivot_filled=jnp.where(chosen, s, ex.pivot_filled),
                               feats=jnp.where(chosen[..., None], hid, ex.feats))
            tok, logits, chosen = _pad(tok, logits, chosen, width)
            return commit_chosen(st, tok, logits, chosen, fills[s], masked, width, eos_id, key=key,
                                 logit_state=lst, extra=extra)

        def two(st):
            ex = st.extra
            fills, starts, ramp = (jnp.asarray(a) for a in fill_schedule(self.order.size, self.iters))
            s = jnp.clip(st.step - self.pivot_iters, 0, self.iters - 1)
            feats = jnp.concatenate([ex.feats[:n], ex.feats[:n]]) if self.guided else ex.feats  # official
            slots = _slots(hp, feats, jnp.ones(ex.pivots.shape, bool))
            z = _phase2(params, cfg, hp, cls, slots, ex.codes, pos2)
            key, (tok, logits, chosen, logp, lst, masked) = phase(
                z, s, self.iters, self.order.size, ex.filled_at < 0, ex.rank, ex.guidance, fills, starts, ramp, st)
            extra = ex.replace(codes=jnp.where(chosen, tok, ex.codes), logp=jnp.where(chosen, logp, ex.logp),
                               filled_at=jnp.where(chosen, s, ex.filled_at))
            tok, logits, chosen = _pad(tok, logits, chosen, width)
            return commit_chosen(st, tok, logits, chosen, fills[s], masked, width, eos_id, key=key,
                                 logit_state=lst, extra=extra)

        return jax.lax.cond(state.step < self.pivot_iters, one, two, state)

    def persistent_state(self, extra) -> dict:
        return {"codes": extra.codes, "logp": extra.logp, "filled_at": extra.filled_at, "pivots": extra.pivots,
                "pivot_logp": extra.pivot_logp, "pivot_filled": extra.pivot_filled}


def _pad(tok, logits, chosen, width):
    """Pads the position axis to at least ``width`` (a phase with fewer positions than the widest fill)."""
    A = tok.shape[1]
    if A >= width:
        return tok, logits, chosen
    p = width - A
    return (jnp.pad(tok, ((0, 0), (0, p))), jnp.pad(logits, ((0, 0), (0, p), (0, 0)), constant_values=-jnp.inf),
            jnp.pad(chosen, ((0, 0), (0, p))))


def himar(vocab: ImageVocab, grid, pivot_grid, *, iters: int, pivot_iters: int | None = None, choice: str = "random",
          guided: bool = False, guidance: Any = 1.0, pivot_guidance: Any = 1.0,
          choice_temperature: Any = 4.5) -> HiMAR:
    """Returns the :class:`HiMAR` strategy for a dense ``grid`` (H, W) and a ``pivot_grid`` (h, w)
    (``pivot_iters`` default: the official 4 h, at most h w; for :func:`~tokjax.vision.image_lm.sample_images`)."""
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    return HiMAR(vocab=vocab, order=raster(H, W), pivot_grid=(h, w), iters=iters,
                 pivot_iters=min(4 * h, h * w) if pivot_iters is None else pivot_iters, choice=choice, guided=guided,
                 guidance=guidance, pivot_guidance=pivot_guidance, choice_temperature=choice_temperature)


def himar_replay(params, cfg: ModelConfig, vocab: ImageVocab, cls: Any, pivots: Any, codes: Any,
                 pivot_filled: Any, filled_at: Any, grid, pivot_grid) -> tuple[jax.Array, jax.Array]:
    """Returns (pivot log-probs [B, P], dense log-probs [B, L]), float32: teacher-forced log p of every pivot
    and code at the step that filled it (``pivot_filled`` / ``filled_at``, counted within each phase), phase 2
    reading the phase-1 hidden states of those steps, under the code-restricted logits -- what a :class:`HiMAR`
    decode at guidance 1, temperature 1 recorded (the decoded likelihood equals the teacher-forced one)."""
    (H, W), (h, w), _ = _grids(grid, pivot_grid)
    P, L = h * w, H * W
    hp = _hp(params, P, cfg.d_model)
    pivots, codes = jnp.asarray(pivots, jnp.int32), jnp.asarray(codes, jnp.int32)
    pf, fa = np.asarray(pivot_filled), np.asarray(filled_at)
    if (pivots.ndim != 2 or pivots.shape[1] != P or codes.shape != (pivots.shape[0], L) or pf.shape != pivots.shape
            or fa.shape != codes.shape or pf.min() < 0 or fa.min() < 0):
        raise ValueError(f"pivots [B, {P}] / codes [B, {L}] need pivot_filled / filled_at of the same shapes with "
                         f"every step >= 0")
    cls = jnp.asarray(cls, jnp.int32)
    pos1, pos2 = himar_positions((H, W), (h, w))
    bias = jnp.where(jnp.asarray(vocab.code_mask(cfg.vocab_size)), 0.0, -jnp.inf)
    lp_p = jnp.zeros(pivots.shape, _F32)
    feats = jnp.zeros(pivots.shape + (cfg.d_model,), _F32)
    for s in range(int(pf.max()) + 1):
        z, hid = _phase1(params, cfg, hp, cls, jnp.where(pf < s, pivots, vocab.mask_id), pos1)
        lp = jnp.take_along_axis(jax.nn.log_softmax(z + bias, axis=-1), pivots[..., None], axis=-1)[..., 0]
        lp_p = jnp.where(pf == s, lp, lp_p)
        feats = jnp.where((pf == s)[..., None], hid, feats)
    slots = _slots(hp, feats, jnp.ones(pivots.shape, bool))
    lp_d = jnp.zeros(codes.shape, _F32)
    for s in range(int(fa.max()) + 1):
        z = _phase2(params, cfg, hp, cls, slots, jnp.where(fa < s, codes, vocab.mask_id), pos2)
        lp = jnp.take_along_axis(jax.nn.log_softmax(z + bias, axis=-1), codes[..., None], axis=-1)[..., 0]
        lp_d = jnp.where(fa == s, lp, lp_d)
    return lp_p, lp_d

