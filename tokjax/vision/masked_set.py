"""Discrete masked-set decoding: MaskGIT's ``parallel_decode`` as a ``tokjax.generate`` Strategy, its training
loss, and the mask-ratio samplers and fill choices that MAR / MaskGIT / Hi-MAR (P5, :mod:`tokjax.vision.himar`)
share (issue 24).

Model. The shared forward reads ``[class, x_0, ..., x_{L-1}]`` (the codes of an image grid in raster order; a
masked code is the [MASK] id of :class:`~tokjax.vision.image_lm.ImageVocab`) under a bidirectional mask, and
its own LM head gives the logits of every code (categorical: MaskGIT's head).

Training (:func:`make_masked_set_loss`): per row a uniformly random order; one mask ratio r per batch; the first
``clip(ceil(r L), 1, L)`` codes of each order are masked and the cross-entropy is averaged over them. Ratios
(:func:`mask_ratio`): ``"cosine"`` r = cos(pi/2 u), u ~ U(0, 1) (MaskGIT's cosine gamma; Hi-MAR's
``MaskRatioGenerator``, used by every released Hi-MAR command through ``--cos``) or ``"truncnorm"``
r = 1 + 0.25 t, t ~ N(0, 1) truncated to [(r_min - 1)/0.25, 0] (MAR's, r in [r_min, 1]; Hi-MAR phase 1 with
r_min = 0.7, Hi-MAR phase 2 without ``--cos`` with r_min = 0.38).

Decoding (:class:`MaskGIT`), n steps. The number of codes still masked after step s is MAR's / MaskGIT's cosine
schedule (:func:`tokjax.vision.mar.mar_masked_counts`, the official float64 arithmetic)::

    M_{s+1} = max(1, min(M_s - 1, floor(L cos(pi/2 (s + 1) / n))))     (M_0 = L, M_n = 0)

Step s runs one forward over the canvas, samples a code at every position from the (guided, code-restricted,
transformed) logits and keeps |fill_s| = M_s - M_{s+1} of the unknown ones:

* ``choice="confidence"`` (MaskGIT ``parallel_decode`` / ``mask_by_random_topk``, read in
  google-research/maskgit ``libml/parallel_decode.py``): the |fill_s| unknown positions of largest
  ``log p(sampled code) + tau (1 - (s + 1)/n) g``, g ~ Gumbel(0, 1), tau = ``choice_temperature`` (annealed to
  0 at the last step; Gumbel top-k);
* ``choice="random"`` (MAR / Hi-MAR ``sample_tokens``): the next |fill_s| positions of a random order drawn per
  image (``mask_by_order``).

Classifier-free guidance follows MAR / Hi-MAR's linear schedule: l = l_c + (g_s - 1)(l_c - l_u),
g_s = 1 + (g - 1)(L - mask_len_s)/L (mask_len_s the official clamped count), so g = 1 is l_c bit for bit.
The codes and their log-probabilities stay in the strategy state in raster order (``filled_at`` records the
step each code was filled at); every step also commits its filled codes through ``commit`` (so
``forward_calls`` = n and ``generate(logprobs=)`` works; the logit transform is vmapped over positions, its
state not advanced). :func:`masked_set_replay` recomputes the log-probability
of every code teacher-forced from (codes, filled_at): equal to the decoded one at temperature 1, guidance 1.
Decoding is cache-free (one full forward of 1 + L slots per step).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding import DecodeState, commit
from tokjax.decoding._state import ends_greedy
from tokjax.logits import LogitTransform, as_rows, check_range, hparam, sample
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Bidirectional
from tokjax.vision.image_lm import ImageStrategy, ImageVocab, image_rows, sequence_positions
from tokjax.vision.mar import _counts, _check_schedule
from tokjax.vision.orders import Order, _check_int, _check_order, raster, to_grid

__all__ = ["CHOICES", "MaskGIT", "MaskedSetImage", "MaskedSetState", "RATIOS", "choose_by_confidence",
           "choose_by_order", "commit_chosen", "fill_schedule", "make_masked_set_loss", "mask_ratio",
           "masked_set_logits", "masked_set_replay", "maskgit", "parallel_step", "random_masks", "random_ranks"]

_F32 = jnp.float32
RATIOS = ("cosine", "truncnorm")
CHOICES = ("confidence", "random")


# ------------------------------------------------------------------------------------------ masks
def _check_ratio(kind: str, ratio_min: Any) -> None:
    if kind not in RATIOS:
        raise ValueError(f"mask ratio kind must be one of {RATIOS}, got {kind!r}")
    if kind == "truncnorm":
        check_range(ratio_min, "ratio_min", lo=0.0, hi=1.0, lo_open=True)


def mask_ratio(key: jax.Array, kind: str = "cosine", ratio_min: Any = 0.7, shape: tuple = ()) -> jax.Array:
    """Returns float32 ``shape``: training mask ratios in (0, 1] (module docstring): ``"cosine"`` cos(pi/2 u),
    u ~ U(0, 1); ``"truncnorm"`` 1 + 0.25 t, t ~ N(0, 1) truncated to [(ratio_min - 1)/0.25, 0]. Raises
    ValueError for an unknown kind or ratio_min outside (0, 1]."""
    _check_ratio(kind, ratio_min)
    if kind == "cosine":
        return jnp.cos(0.5 * math.pi * jax.random.uniform(key, shape, _F32))
    lower = (jnp.asarray(ratio_min, _F32) - 1.0) / 0.25
    return 1.0 + 0.25 * jax.random.truncated_normal(key, lower, 0.0, shape, _F32)


def random_ranks(key: jax.Array, rows: int, length: int) -> jax.Array:
    """Returns int32 [rows, length]: the rank of every position in a uniformly random order per row."""
    order = jnp.argsort(jax.random.uniform(key, (rows, length)), axis=1)
    return jnp.argsort(order, axis=1).astype(jnp.int32)


def random_masks(key: jax.Array, rows: int, length: int, ratio: Any) -> jax.Array:
    """Returns bool [rows, length]: per row the first clip(ceil(ratio L), 1, L) positions of a uniformly random
    order (``ratio`` a scalar, one per batch as MAR / Hi-MAR, or [rows])."""
    num = jnp.clip(jnp.ceil(length * jnp.asarray(ratio, _F32)), 1, length).astype(jnp.int32)
    return random_ranks(key, rows, length) < jnp.reshape(num, (-1, 1))


def choose_by_confidence(key: jax.Array, logp: jax.Array, unknown: jax.Array, count: Any,
                         noise: Any) -> jax.Array:
    """Returns bool [R, L]: the ``count`` unknown positions of largest ``logp + noise * Gumbel`` (MaskGIT's
    ``mask_by_random_topk``, as the set that is *kept*; ties go to the lower index). ``count`` scalar or [R]."""
    conf = logp.astype(_F32) + jnp.asarray(noise, _F32) * jax.random.gumbel(key, logp.shape, _F32)
    conf = jnp.where(unknown, conf, -jnp.inf)
    rank = jnp.argsort(jnp.argsort(-conf, axis=1, stable=True), axis=1)
    return unknown & (rank < jnp.reshape(jnp.asarray(count, jnp.int32), (-1, 1)))


def choose_by_order(rank: jax.Array, start: Any, count: Any) -> jax.Array:
    """Returns bool [R, L]: the positions whose order ``rank`` lies in [start, start + count) (MAR's
    ``mask_by_order``: the next ``count`` positions of the order)."""
    start = jnp.asarray(start, jnp.int32)
    return (rank >= start) & (rank < start + jnp.asarray(count, jnp.int32))


@functools.lru_cache(maxsize=None)
def fill_schedule(length: int, iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (fills int32 [n], starts int32 [n], ramp float32 [n]): |fill_s| of the cosine schedule (MAR's
    official arithmetic), its offset sum_{t<s} |fill_t|, and the guidance ramp (L - mask_len_s) / L. Raises
    ValueError unless 1 <= iters <= length."""
    L, n = _check_schedule(length, iters, "cosine")
    fills, _, lens = _counts(L, n, "cosine")
    out = (np.asarray(fills, np.int32), np.asarray(np.cumsum((0,) + fills[:-1]), np.int32),
           np.asarray((L - np.asarray(lens)) / L, np.float32))
    for a in out:
        a.setflags(write=False)
    return out


# ------------------------------------------------------------------------------------------ model
def _check_grid(order: Order) -> Order:
    order = _check_order(order)
    if order.name != "raster" or order.ndim != 2:
        raise ValueError(f"masked-set canvases are image grids in raster storage: order must be raster(h, w), got "
                         f"{order!r}")
    return order


def _pos(cfg: ModelConfig, positions: np.ndarray, rows: int):
    if cfg.pos_dims == 1:
        return None  # sequence indices (forward's default)
    if positions.shape[1] != cfg.pos_dims:
        raise ValueError(f"a pos_dims={cfg.pos_dims} model reads {cfg.pos_dims} coordinates per slot, the canvas has "
                         f"{positions.shape[1]}")
    return jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (rows,) + positions.shape)


def masked_set_logits(params, cfg: ModelConfig, cls: jax.Array, canvas: jax.Array, order: Order) -> jax.Array:
    """Returns float32 [B, L, V]: the logits of every code of ``canvas`` int [B, L] (raster codes, [MASK] where
    unknown) with class tokens ``cls`` [B], one bidirectional forward of ``[class, canvas]`` (positions: the
    grid's coordinates + 1 for a pos_dims = 2 model, sequence indices for pos_dims = 1)."""
    order = _check_grid(order)
    canvas = jnp.asarray(canvas, jnp.int32)
    if canvas.ndim != 2 or canvas.shape[1] != order.size:
        raise ValueError(f"canvas must be int [B, {order.size}] (the grid {order.shape} in raster order), got shape "
                         f"{canvas.shape}")
    tokens = jnp.concatenate([jnp.asarray(cls, jnp.int32).reshape(-1, 1), canvas], axis=1)
    pos = _pos(cfg, sequence_positions(order), tokens.shape[0])
    out = forward(params, cfg, Inputs(tokens=tokens, positions=pos), mask=Bidirectional())
    return out.logits[:, 1:].astype(_F32)


def _nll(logits, targets, masked):
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    m = masked.astype(_F32)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


@functools.lru_cache(maxsize=None)
def make_masked_set_loss(order: Order, vocab: ImageVocab, *, ratio: str = "cosine",
                         ratio_min: float = 0.7) -> Callable:
    """Returns the masked-set (MaskGIT / discrete MAR) train loss ``(params, cfg, batch, rng) -> (loss,
    metrics)`` on an :func:`~tokjax.vision.image_lm.image_batch` in raster ``order`` (module docstring): the mean
    cross-entropy of the masked codes. One object per settings, so runs share compiled steps."""
    order = _check_grid(order)
    if not isinstance(vocab, ImageVocab):
        raise ValueError(f"vocab must be an ImageVocab, got {type(vocab).__name__}")
    _check_ratio(ratio, ratio_min)
    L = order.size

    def loss_fn(params, cfg, batch, rng):
        if rng is None:
            raise ValueError("the masked-set loss draws orders and ratios: it needs rng (tokjax.train passes one)")
        if "tokens" not in batch or jnp.shape(batch["tokens"])[1:] != (1 + L,):
            raise ValueError(f"the masked-set loss needs an image_batch over the grid {order.shape} (tokens [B, "
                             f"{1 + L}]); got keys {sorted(batch)}")
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        kr, ko = jax.random.split(rng)
        r = mask_ratio(kr, ratio, ratio_min)
        masked = random_masks(ko, tokens.shape[0], L, r)
        codes = tokens[:, 1:]
        z = masked_set_logits(params, cfg, tokens[:, 0], jnp.where(masked, vocab.mask_id, codes), order)
        loss = _nll(z, codes, masked)
        return loss, {"nll": loss, "mask_ratio": jnp.mean(masked.astype(_F32))}

    loss_fn.__qualname__ = f"masked_set_loss{order.shape}"
    return loss_fn


# ------------------------------------------------------------------------------------------ decoding
def _guided(z: jax.Array, n: int, guided: bool, g: jax.Array) -> jax.Array:
    """[R, A, V] -> the guided logits for every row (the conditional rows' values copied to the null rows)."""
    if not guided:
        return z
    cond, uncond = z[:n], z[n:]
    z = cond + (g[:, None, None] - 1.0) * (cond - uncond)  # exactly cond at g = 1
    return jnp.concatenate([z, z], axis=0)


def _per_slot(transform: LogitTransform, z: jax.Array, state: DecodeState):
    """The logit transform applied to every slot of ``z`` [R, A, V] (vmapped over A: it sees [rows, V] with the
    rows' state, as in one-token decoding). The transform's state is not advanced by a masked-set step (stateful
    transforms, e.g. repetition penalties, have no canvas meaning)."""
    ctx = state.context()
    f = lambda za: transform.apply(za, state.logit_state, ctx)[0]  # noqa: E731
    return jax.vmap(f, in_axes=1, out_axes=1)(z), state.logit_state


def parallel_step(key: jax.Array, z: jax.Array, state: DecodeState, transform: LogitTransform, *, vocab: ImageVocab,
                  guided: bool, g: jax.Array, unknown: jax.Array, count: Any, choice: str, noise: Any,
                  rank: jax.Array, start: Any):
    """One masked-set step on raw logits ``z`` [R, A, V] (MaskGIT's loop body): guidance, code restriction, the
    logit transform, one draw per position, then the fill choice among the ``unknown`` [R, A] positions.
    Returns (tok [R, A], logits [R, A, V] (transformed), chosen [R, A], logp [R, A], logit_state, masked [R])."""
    R = z.shape[0]
    n = R // 2 if guided else R
    z = _guided(z, n, guided, g)
    z = jnp.where(jnp.arange(z.shape[-1]) < vocab.num_codes, z, -jnp.inf)
    logits, logit_state = _per_slot(transform, z, state)
    ks, kc = jax.random.split(key)
    tok, sstats = sample(ks, logits[:n], greedy=ends_greedy(transform))  # [n, A]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:n], axis=-1), tok[..., None], axis=-1)[..., 0]
    if choice == "confidence":
        chosen = choose_by_confidence(kc, logp, unknown[:n], count, noise)
    else:
        chosen = choose_by_order(rank[:n], start, count) & unknown[:n]
    masked = (sstats.all_masked & chosen).any(-1)
    if guided:
        tok, logp, chosen, masked = (jnp.concatenate([a, a], axis=0) for a in (tok, logp, chosen, masked))
    return tok, logits, chosen, logp, logit_state, masked


def commit_chosen(state: DecodeState, tok, logits, chosen, count, masked, width: int, eos_id,
                  **fields) -> DecodeState:
    """Commits the ``chosen`` [R, A] codes of ``tok`` in position order (``count`` of them, ``width`` = the
    strategy's max_accept) with their logits; one forward call counted; rows with a banned draw stop."""
    idx = jnp.argsort(~chosen, axis=1, stable=True)[:, :width]  # the chosen positions first, in position order
    new = jnp.take_along_axis(tok, idx, axis=1)
    lg = jnp.take_along_axis(logits, idx[..., None], axis=1)
    counts = jnp.where(masked, 0, jnp.asarray(count, jnp.int32)).astype(jnp.int32)
    stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1,
                                masked_rows=state.stats.masked_rows | (masked & ~state.done))
    state = state.replace(stats=stats, **fields)
    state = commit(state, new, counts, eos_id, logits=lg)
    return state.replace(done=state.done | masked)


@struct.dataclass
class MaskedSetState:
    """``DecodeState.extra`` of :class:`MaskGIT`: ``codes`` int32 [R, L] (raster; [MASK] where unknown),
    ``logp`` float32 [R, L] (log-probability each code was drawn with), ``filled_at`` int32 [R, L] (the step
    that filled it; -1 unknown), ``rank`` int32 [R, L] (the random order, ``choice="random"``), ``positions``
    int32 [1 + L, D], ``guidance`` float32 [images], ``noise`` float32 [] (choice temperature)."""

    codes: jax.Array
    logp: jax.Array
    filled_at: jax.Array
    rank: jax.Array
    positions: jax.Array
    guidance: jax.Array
    noise: jax.Array


class MaskedSetImage(ImageStrategy):
    """Base of masked-set image decoders: the codes live in the strategy state (``persistent_state`` returns
    {"codes", "logp", "filled_at"}), read back by :meth:`images` in raster order."""

    def _check_masked_set(self) -> None:
        self._check_common()
        _check_grid(self.order)
        if self.choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {self.choice!r}")
        check_range(self.choice_temperature, "choice_temperature", lo=0.0)

    def persistent_state(self, extra) -> dict:
        return {"codes": extra.codes, "logp": extra.logp, "filled_at": extra.filled_at}

    def images(self, out, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (codes [n, *grid], logprobs [n, L] in raster order) from the strategy state."""
        st = out.strategy_state
        codes = np.asarray(st["codes"])[:n]
        if np.any(codes >= self.vocab.num_codes):
            raise RuntimeError(f"masked-set decode left codes unfilled (stats: masked_rows="
                               f"{out.stats.get('masked_rows')})")
        return np.asarray(to_grid(codes, self.order)).astype(np.int32), np.asarray(st["logp"])[:n]


@dataclasses.dataclass(frozen=True)
class MaskGIT(MaskedSetImage):
    """Discrete masked-set decoding of an image grid in ``iters`` steps (module docstring).

    Static: ``vocab``, ``order`` (raster(h, w)), ``iters`` n (1 <= n <= h w), ``choice`` ("confidence" | "random"),
    ``guided``, ``pos_dims`` (set by ``sample_images``). Runtime: ``guidance`` (scalar or [images]; ramped as
    MAR), ``choice_temperature`` tau (Gumbel noise of the confidence choice, annealed by 1 - (s + 1)/n).
    """

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    iters: int = 8
    choice: str = "confidence"
    guided: bool = False
    pos_dims: int = 1
    guidance: Any = hparam(1.0)
    choice_temperature: Any = hparam(4.5)
    grid: tuple = None  # static: set from order.shape

    def __post_init__(self):
        self._check_masked_set()
        object.__setattr__(self, "grid", tuple(self.order.shape))
        _check_int("iters", self.iters, 1)
        fill_schedule(self.order.size, self.iters)

    @property
    def max_accept(self) -> int:
        return int(fill_schedule(self.order.size, self.iters)[0].max())

    def validate(self, cfg: ModelConfig) -> None:
        self._check_model(cfg, "")
        if 1 + self.order.size > cfg.max_len:
            raise ValueError(f"[class, {self.order.size} codes] does not fit the model's max_len={cfg.max_len}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> MaskedSetState:
        R, L = state.tokens.shape[0], self.order.size
        n = image_rows(R, self.guided)
        rank = random_ranks(jax.random.fold_in(state.key, 0x6D67), n, L)
        return MaskedSetState(
            codes=jnp.full((R, L), self.vocab.mask_id, jnp.int32), logp=jnp.zeros((R, L), _F32),
            filled_at=jnp.full((R, L), -1, jnp.int32), rank=jnp.concatenate([rank, rank]) if self.guided else rank,
            positions=jnp.asarray(sequence_positions(self.order), jnp.int32),
            guidance=as_rows(self.guidance, n, "guidance"),
            noise=jnp.asarray(self.choice_temperature, _F32))

    def step(self, params, cfg: ModelConfig, transform, state, eos_id=None):
        ex = state.extra
        fills, starts, ramp = (jnp.asarray(a) for a in fill_schedule(self.order.size, self.iters))
        s = jnp.minimum(state.step, self.iters - 1)
        if self.pos_dims > 1:
            cfg = cfg.replace(pos_dims=self.pos_dims)  # sample_images ran the prefill as pos_dims=1
        z = masked_set_logits(params, cfg, state.tokens[:, 0], ex.codes, self.order)
        key, sub = jax.random.split(state.key)
        g = 1.0 + (ex.guidance - 1.0) * ramp[s]
        noise = ex.noise * (1.0 - (s + 1).astype(_F32) / self.iters)
        unknown = ex.filled_at < 0
        tok, logits, chosen, logp, logit_state, masked = parallel_step(
            sub, z, state, transform, vocab=self.vocab, guided=self.guided, g=g, unknown=unknown, count=fills[s],
            choice=self.choice, noise=noise, rank=ex.rank, start=starts[s])
        extra = ex.replace(codes=jnp.where(chosen, tok, ex.codes), logp=jnp.where(chosen, logp, ex.logp),
                           filled_at=jnp.where(chosen, s, ex.filled_at))
        return commit_chosen(state, tok, logits, chosen, fills[s], masked, self.max_accept, eos_id,
                             key=key, logit_state=logit_state, extra=extra)


def maskgit(vocab: ImageVocab, h: int, w: int, *, iters: int, choice: str = "confidence", guided: bool = False,
            guidance: Any = 1.0, choice_temperature: Any = 4.5) -> MaskGIT:
    """Returns the :class:`MaskGIT` strategy for an h x w grid (for :func:`~tokjax.vision.image_lm.sample_images`)."""
    return MaskGIT(vocab=vocab, order=raster(h, w), iters=iters, choice=choice, guided=guided, guidance=guidance,
                   choice_temperature=choice_temperature)


def masked_set_replay(params, cfg: ModelConfig, vocab: ImageVocab, cls: Any, codes: Any, filled_at: Any,
                      order: Order) -> jax.Array:
    """Returns float32 [B, L]: teacher-forced log p(code) of every raster code of ``codes`` [B, L] at the step
    ``filled_at`` [B, L] says it was filled (the canvas holds exactly the codes filled before that step), under
    the code-restricted logits: the log-probabilities a :class:`MaskGIT` decode at guidance 1, temperature 1
    recorded. Raises ValueError for a step outside [0, L)."""
    order = _check_grid(order)
    codes = jnp.asarray(codes, jnp.int32)
    filled_at = np.asarray(filled_at)
    if filled_at.shape != codes.shape or filled_at.min() < 0 or filled_at.max() >= order.size:
        raise ValueError(f"filled_at must be int [B, L]={codes.shape} with every step in [0, {order.size}), got "
                         f"shape {filled_at.shape}")
    out = jnp.zeros(codes.shape, _F32)
    bias = jnp.where(jnp.asarray(vocab.code_mask(cfg.vocab_size)), 0.0, -jnp.inf)
    for s in range(int(filled_at.max()) + 1):
        canvas = jnp.where(filled_at < s, codes, vocab.mask_id)
        logp = jax.nn.log_softmax(masked_set_logits(params, cfg, cls, canvas, order) + bias, axis=-1)
        lp = jnp.take_along_axis(logp, codes[..., None], axis=-1)[..., 0]
        out = jnp.where(filled_at == s, lp, out)
    return out
