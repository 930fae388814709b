"""Class-conditional image-token language models: vocabulary, training batches, and decoding with CFG.

One shared vocabulary layout for every image decoder of tokjax (issue 24, item 1(d))::

    ImageVocab(num_codes, num_classes)
      [0, num_codes)                               image codes (pixel levels or VQ codes)
      [num_codes, num_codes + num_classes)         class tokens  (class c -> num_codes + c)
      null_id = num_codes + num_classes            the null class (classifier-free guidance)
      mask_id = null_id + 1                        [MASK] (masked-set decoders)
      size    = num_codes + num_classes + 2

A training sequence is ``[class token, image tokens in an Order]`` (:mod:`tokjax.vision.orders`)::

    image_batch(codes [N, h, w], labels [N], vocab, order, class_dropout=p, key=k) ->
      tokens    int32 [N, 1 + h*w]     class (the null class with probability p), then the codes in order
      positions int32 [N, 1 + h*w, D]  (0, ..., 0) for the class token, grid coordinates + 1 for the image
                                       tokens (D = 2 for an image order, 3 for video)
      mask      bool  [N, 1 + h*w]     per token: False at the class token, True at the image tokens (the
                                       loss counts image targets only)

The class token sits at coordinate (0, 0) and the image at (row + 1, col + 1), so it never shares a
coordinate with an image token and, under (axial) RoPE, which only sees offsets, each image token's
offset to the class token is its absolute grid position. A ``pos_dims = 1`` model reads sequence
indices instead (the default of ``forward``): build its batches with ``coords=False``; a ``pos_dims = D`` model needs
them (see "Limitations" for training it through :func:`tokjax.losses.token_stats`).

Decoding. :func:`sample_images` runs an :class:`ImageStrategy` through :func:`tokjax.generate` (one
forward per decode step, so ``stats["forward_calls"]`` counts passes). :class:`NextTokenCFG` samples
one token per step in the order's sequence with classifier-free guidance (Ho & Salimans 2022,
arXiv 2207.12598, applied to next-token logits as autoregressive image models do)::

    l_g = l_u + g (l_c - l_u)  =  l_c + (g - 1)(l_c - l_u)

where l_c are the logits with the image's class token and l_u with the null class. The second form
is the one computed, so g = 1 returns l_c bit for bit (the conditional distribution exactly) and g = 0
gives l_u. The conditional and the null-class rows are one doubled batch of decode rows (rows
[0, N) conditional, [N, 2N) null), run by the single forward of each step; both rows of an image
commit the same sampled token, so their caches hold the same image. ``g`` is a runtime value (a
scalar or one per image, in the strategy state: a new value does not recompile). Sampling is
restricted to code ids (class, null and [MASK] logits are set to -inf after guidance), then the
logit transform of ``generate`` (``temperature``, a runtime value, and any other transform) applies.
With ``guided=False`` the strategy runs the conditional rows only (half the compute, no guidance).

Limitations of the current shared pieces (reported, not worked around silently):

* ``tokjax.model.prefill`` (called by ``generate``) runs ``forward`` without positions, which a
  ``pos_dims > 1`` model rejects. :func:`sample_images` therefore hands ``generate`` the same params
  under ``cfg.replace(pos_dims=1)`` and the strategy restores the model's ``pos_dims`` (a static
  field) in every step, passing the order's coordinates explicitly. This is exact because the prompt
  is one token: after the prefill the cache holds ``prompt length - 1 = 0`` entries, so the prefilled
  keys and values are never read; the class token itself is fed by the first step, with position
  (0, 0). Calling ``generate`` directly with a ``pos_dims > 1`` model and this strategy is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.data import batch_indices
from tokjax.decoding import DecodeState, GenerateOutput, Strategy, commit, generate
from tokjax.decoding._state import ends_greedy
from tokjax.logits import LogitTransform, as_rows, chain, check_range, hparam, sample, temperature as temperature_tf
from tokjax.model import Inputs, KVCache, Model, ModelConfig, Output, forward
from tokjax.model.attention import Rank
from tokjax.vision.orders import Order, _check_int, _check_order, to_grid, to_sequence

__all__ = [
    "CanvasDecodeState", "CanvasStrategy", "ImageDecodeState", "ImageSamples", "ImageStrategy", "ImageVocab",
    "NextTokenCFG", "append_block", "feed_positions", "fixed_batch_fn", "image_batch", "image_batch_fn",
    "keep_block", "next_token_cfg", "sample_images", "sequence_positions",
]

_F32 = jnp.float32


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _int_array(x: Any, name: str):
    arr = x if isinstance(x, jax.Array) else np.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr


def _check_range_ids(arr, lo: int, hi: int, what: str) -> None:
    if _concrete(arr) and np.size(arr):
        a = np.asarray(arr)
        if int(a.min()) < lo or int(a.max()) >= hi:
            raise ValueError(f"{what} must lie in [{lo}, {hi}), got values in [{int(a.min())}, {int(a.max())}]")


# ------------------------------------------------------------------------------------ vocabulary
@dataclasses.dataclass(frozen=True)
class ImageVocab:
    """Token ids of a class-conditional image LM: [codes | classes | null class | MASK] (module docstring).

    ``num_codes`` >= 2 image codes, ``num_classes`` >= 1 classes. Frozen and hashable (a static
    argument of jitted code).
    """

    num_codes: int
    num_classes: int

    def __post_init__(self):
        object.__setattr__(self, "num_codes", _check_int("num_codes", self.num_codes, 2))
        object.__setattr__(self, "num_classes", _check_int("num_classes", self.num_classes, 1))

    @property
    def class_start(self) -> int:
        """The id of class 0 (= num_codes)."""
        return self.num_codes

    @property
    def null_id(self) -> int:
        """The null class (the unconditional row of classifier-free guidance, and class dropout)."""
        return self.num_codes + self.num_classes

    @property
    def mask_id(self) -> int:
        """[MASK], for masked-set decoders."""
        return self.null_id + 1

    @property
    def size(self) -> int:
        """The number of ids (the model's vocab_size)."""
        return self.mask_id + 1

    @property
    def code_ids(self) -> range:
        return range(0, self.num_codes)

    @property
    def class_ids(self) -> range:
        return range(self.class_start, self.null_id)

    def class_tokens(self, labels: Any) -> jax.Array:
        """Returns int32 class token ids ``num_codes + labels`` of class labels in [0, num_classes).

        Raises ValueError for non-integer labels or labels out of range (checked on concrete arrays;
        under jit they are clipped into range).
        """
        labels = _int_array(labels, "class labels")
        _check_range_ids(labels, 0, self.num_classes, "class labels")
        return (jnp.clip(jnp.asarray(labels), 0, self.num_classes - 1) + self.class_start).astype(jnp.int32)

    def code_mask(self, vocab_size: int | None = None) -> np.ndarray:
        """Returns bool [vocab_size] (default ``size``): True at the code ids. Raises ValueError when
        ``vocab_size`` < ``size``."""
        V = self.size if vocab_size is None else _check_int("vocab_size", vocab_size, 1)
        if V < self.size:
            raise ValueError(f"vocab_size={V} is smaller than the image vocabulary ({self.size} ids: {self.num_codes} "
                             f"codes, {self.num_classes} classes, null, MASK)")
        return np.arange(V) < self.num_codes


def sequence_positions(order: Order) -> np.ndarray:
    """Returns int32 [1 + N, D]: the coordinate of every slot of ``[class token, image tokens in order]``:
    zeros for the class token, ``order.coords + 1`` for the image tokens."""
    order = _check_order(order)
    return np.concatenate([np.zeros((1, order.ndim), np.int32), order.coords + 1], axis=0).astype(np.int32)


# ---------------------------------------------------------------------------------- training data
def _check_codes(codes, vocab: ImageVocab, order: Order):
    codes = _int_array(codes, "image codes")
    if codes.ndim != order.ndim + 1 or tuple(codes.shape[1:]) != order.shape:
        raise ValueError(f"image codes must be [N, {', '.join(map(str, order.shape))}] (the order's grid), got shape "
                         f"{tuple(codes.shape)}")
    _check_range_ids(codes, 0, vocab.num_codes, "image codes")
    return codes


def class_tokens_with_dropout(vocab: ImageVocab, labels: jax.Array, class_dropout: Any, key) -> jax.Array:
    """Returns int32 [N]: each image's class token, replaced by the null class with probability
    ``class_dropout`` (runtime scalar; > 0 needs ``key``): the unconditional rows CFG trains on."""
    cls = vocab.class_tokens(labels)
    check_range(class_dropout, "class_dropout", lo=0.0, hi=1.0)
    if key is None:
        if not _concrete(class_dropout) or float(np.max(np.asarray(class_dropout))) > 0:
            raise ValueError("class_dropout > 0 needs key= (a jax.random key) to draw which rows lose their class")
        return cls
    drop = jax.random.bernoulli(key, jnp.asarray(class_dropout, _F32), (labels.shape[0],))
    return jnp.where(drop, vocab.null_id, cls)


def image_batch(codes: Any, labels: Any, vocab: ImageVocab, order: Order, *, class_dropout: Any = 0.1,
                key: jax.Array | None = None, coords: bool = True) -> dict:
    """Returns a dict batch for ``tokjax.train.train`` (tokens, positions, mask; module docstring).

    ``codes`` int [N, *order.shape] in [0, num_codes); ``labels`` int [N] in [0, num_classes);
    ``class_dropout`` in [0, 1] (a runtime value: each row's class is replaced by the null class with
    that probability, independently, drawn from ``key``). Jit-compatible with ``vocab`` and ``order``
    static. Raises ValueError for a grid that is not the order's, ids out of range, ``class_dropout``
    outside [0, 1], a missing ``key`` when ``class_dropout`` > 0, or labels not of shape [N].
    ``coords=False`` leaves ``positions`` out (a ``pos_dims = 1`` model reads sequence indices).
    """
    if not isinstance(vocab, ImageVocab):
        raise ValueError(f"vocab must be an ImageVocab, got {type(vocab).__name__}")
    order = _check_order(order)
    codes = _check_codes(codes, vocab, order)
    N = codes.shape[0]
    labels = _int_array(labels, "class labels")
    if labels.shape != (N,):
        raise ValueError(f"labels must be [N={N}] (one class per image), got shape {tuple(labels.shape)}")
    cls = class_tokens_with_dropout(vocab, labels, class_dropout, key)
    seq = jnp.clip(to_sequence(jnp.asarray(codes), order), 0, vocab.num_codes - 1).astype(jnp.int32)
    tokens = jnp.concatenate([cls[:, None], seq], axis=1)
    pos = jnp.broadcast_to(jnp.asarray(sequence_positions(order)), (N, 1 + order.size, order.ndim))
    mask = jnp.broadcast_to(jnp.arange(1 + order.size) > 0, (N, 1 + order.size))
    return {"tokens": tokens, "positions": pos, "mask": mask} if coords else {"tokens": tokens, "mask": mask}


def fixed_batch_fn(codes: Any, labels: Any, vocab: ImageVocab, order: Order, build: Callable, *, batch_size: int,
                   class_dropout: float = 0.1, seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> build(codes[rows], labels[rows], key)`` over a fixed set of images: a pure
    function of ``step`` (rows from ``tokjax.data.batch_indices``, dropout key ``fold_in(key(seed), step)``), so a
    resumed ``tokjax.train.train`` run is bitwise the uninterrupted one. Inputs are checked once here; ``build``
    makes one batch (e.g. :func:`image_batch` or :func:`tokjax.vision.nbp.nbp_batch` with ``class_dropout``)."""
    order = _check_order(order)
    codes = np.asarray(_check_codes(codes, vocab, order))
    labels = np.asarray(_int_array(labels, "class labels"))
    if labels.shape != (codes.shape[0],):
        raise ValueError(f"labels must be [N={codes.shape[0]}] (one class per image), got shape {labels.shape}")
    vocab.class_tokens(labels)
    check_range(class_dropout, "class_dropout", lo=0.0, hi=1.0)
    batch_size = _check_int("batch_size", batch_size, 1)
    base = jax.random.key(_check_int("seed", seed, 0))

    def batch_fn(step: int) -> dict:
        idx = batch_indices(codes.shape[0], batch_size, step, seed=seed)
        return build(codes[idx], labels[idx], jax.random.fold_in(base, step))

    return batch_fn


def image_batch_fn(codes: Any, labels: Any, vocab: ImageVocab, order: Order, *, batch_size: int,
                   class_dropout: float = 0.1, seed: int = 0, coords: bool = True) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> image_batch(...)`` over a fixed set of images (:func:`fixed_batch_fn`: a pure
    function of ``step``, inputs checked once)."""
    def build(codes, labels, key):
        return image_batch(codes, labels, vocab, order, class_dropout=class_dropout, key=key, coords=coords)

    return fixed_batch_fn(codes, labels, vocab, order, build, batch_size=batch_size, class_dropout=class_dropout,
                          seed=seed)


# ------------------------------------------------------------------------------------- decoding
@struct.dataclass
class ImageDecodeState:
    """``DecodeState.extra`` of :class:`NextTokenCFG`: ``positions`` int32 [1 + N, D] (coordinate of each
    sequence slot, class token first) and ``guidance`` float32 [images] (runtime)."""

    positions: jax.Array
    guidance: jax.Array


class ImageSamples(NamedTuple):
    """What :func:`sample_images` returns: ``codes`` int32 [N, *grid]; ``stats`` (generate's statistics,
    ``forward_calls`` = passes); ``logprobs`` float32 [N, L]: in sequence order, the log-probability of
    each code under the (guided, code-restricted, transformed) distribution it was drawn from."""

    codes: np.ndarray
    stats: dict
    logprobs: np.ndarray


class ImageStrategy(Strategy):
    """Base class of image decoders run by :func:`sample_images` (subclasses are frozen dataclasses with
    ``vocab``, ``order``, ``guided``, ``pos_dims`` and ``guidance`` fields).

    The defaults here are those of decoders whose output is the token sequence ``[class, codes in
    order]``: one prompt row per image (plus one null-class row per image when ``guided``), ``order.size``
    new tokens, and the canvas read back from the first N output rows. A decoder that keeps its canvas in
    strategy state overrides :meth:`new_tokens` / :meth:`images`.
    """

    def _check_common(self) -> None:
        """The field checks every image decoder shares (its ``__post_init__`` calls this first)."""
        if not isinstance(self.vocab, ImageVocab):
            raise ValueError(f"vocab must be an ImageVocab, got {type(self.vocab).__name__}")
        _check_order(self.order)
        if not isinstance(self.guided, bool):
            raise ValueError(f"guided must be True or False, got {self.guided!r}")
        if self.pos_dims not in (1, 2, 3):
            raise ValueError(f"pos_dims must be 1, 2 or 3, got {self.pos_dims!r}")
        check_range(self.guidance, "guidance", lo=0.0)
        if not self.guided and _concrete(self.guidance) and np.any(np.asarray(self.guidance) != 1.0):
            raise ValueError("guidance != 1 needs guided=True (the null-class rows); guided=False samples the "
                             "conditional distribution only")

    def _check_model(self, cfg: ModelConfig, why: str) -> None:
        self.vocab.code_mask(cfg.vocab_size)
        if cfg.pos_dims != 1:  # sample_images sets the positions itself; plain generate cannot
            raise ValueError(
                f"generate prefills the prompt without positions, which a pos_dims={cfg.pos_dims} model rejects; "
                f"decode it with tokjax.vision.image_lm.sample_images{why}")

    def prompts(self, labels: np.ndarray) -> np.ndarray:
        """Returns int32 [R, 1] prompt rows: the class tokens, then (guided) as many null-class rows."""
        cls = np.asarray(self.vocab.class_tokens(labels))
        if self.guided:
            cls = np.concatenate([cls, np.full_like(cls, self.vocab.null_id)])
        return cls[:, None].astype(np.int32)

    def new_tokens(self) -> int:
        return self.order.size

    def images(self, out: GenerateOutput, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (codes [n, *grid], logprobs [n, L]) from the first n rows of ``out``."""
        L = self.order.size
        if np.any(out.lengths[:n] != 1 + L):
            raise RuntimeError(f"decode rows ended early (lengths {out.lengths[:n].tolist()}, expected {1 + L}); "
                               f"stats: masked_rows={out.stats.get('masked_rows')}")
        seq = out.tokens[:n, 1:1 + L]
        lp = None if out.logprobs is None else out.logprobs[:n, 1:1 + L]
        return np.asarray(to_grid(seq, self.order)).astype(np.int32), lp



def image_rows(rows: int, guided: bool) -> int:
    """Returns the images in a decode batch of ``rows`` rows: all of them, or half with classifier-free guidance
    (rows = [conditional; null class]). Raises ValueError for an odd row count under guidance."""
    if guided and rows % 2:
        raise ValueError(f"guided decoding needs an even number of rows (conditional then null-class), got {rows}")
    return rows // 2 if guided else rows

@dataclasses.dataclass(frozen=True)
class NextTokenCFG(ImageStrategy):
    """Next-token sampling in an :class:`Order` with classifier-free guidance (module docstring).

    Static: ``vocab``, ``guided`` (run the null-class rows), ``pos_dims`` (the model's, set by
    :func:`sample_images`). Runtime (excluded from the jit key): ``order`` (its coordinates reach the
    loop through the strategy state, so another order of the same grid size does not recompile) and
    ``guidance`` g >= 0 (scalar or one per image). One forward per step over all decode rows.
    """

    vocab: ImageVocab
    order: Order = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    guided: bool = True
    pos_dims: int = 1
    guidance: Any = hparam(1.0)

    def __post_init__(self):
        self._check_common()
        if self.pos_dims > 1 and self.pos_dims != self.order.ndim:
            raise ValueError(f"a pos_dims={self.pos_dims} model reads {self.pos_dims} coordinates per token, but the "
                             f"order's grid {self.order.shape} has {self.order.ndim}")

    def validate(self, cfg: ModelConfig) -> None:
        self._check_model(cfg, " (exact: the one-token prompt's prefill is never read)")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> ImageDecodeState:
        R = state.tokens.shape[0]
        n = image_rows(R, self.guided)
        return ImageDecodeState(positions=jnp.asarray(sequence_positions(self.order)),
                                guidance=as_rows(self.guidance, n, "guidance"))

    def persistent_state(self, extra: ImageDecodeState) -> None:
        return None  # nothing carries over to a later call

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        extra = state.extra
        R = state.tokens.shape[0]
        slot = state.lengths - 1
        pending = jnp.take_along_axis(state.tokens, slot[:, None], axis=1)
        if self.pos_dims > 1:
            cfg = cfg.replace(pos_dims=self.pos_dims)  # see the module docstring (prefill without positions)
            pos = jnp.take(extra.positions, slot, axis=0, mode="clip")[:, None, :]
            inputs = Inputs(tokens=pending, positions=pos)
        else:
            inputs = Inputs(tokens=pending)  # sequence index = the cache offset (forward's default)
        out = forward(params, cfg, inputs, cache=state.cache)
        z = out.logits[:, 0].astype(_F32)
        n = R // 2 if self.guided else R
        if self.guided:
            cond, uncond = z[:n], z[n:]
            g = extra.guidance[:, None]
            z = cond + (g - 1.0) * (cond - uncond)  # = uncond + g (cond - uncond); exactly cond at g = 1
            z = jnp.concatenate([z, z], axis=0)
        codes = jnp.arange(z.shape[-1]) < self.vocab.num_codes
        z = jnp.where(codes[None, :], z, -jnp.inf)
        logits, logit_state = transform.apply(z, state.logit_state, state.context())
        key, sub = jax.random.split(state.key)
        tok, sstats = sample(sub, logits[:n], greedy=ends_greedy(transform))
        masked = sstats.all_masked
        if self.guided:
            tok, masked = jnp.concatenate([tok, tok]), jnp.concatenate([masked, masked])
        counts = jnp.where(masked, 0, 1).astype(jnp.int32)
        stats = state.stats.replace(
            forward_calls=state.stats.forward_calls + 1,
            masked_rows=state.stats.masked_rows | (masked & ~state.done),
        )
        state = state.replace(cache=out.cache, logit_state=logit_state, key=key, stats=stats)
        state = commit(state, tok[:, None], counts, eos_id, logits=logits[:, None])
        return state.replace(done=state.done | masked)


def next_token_cfg(vocab: ImageVocab, order: Order, *, guided: bool = True, guidance: Any = 1.0) -> NextTokenCFG:
    """Returns the :class:`NextTokenCFG` strategy (one token per pass in ``order``, CFG when ``guided``)."""
    return NextTokenCFG(vocab=vocab, order=order, guided=guided, guidance=guidance)


def _check_guidance(guidance: Any, n: int) -> np.ndarray:
    g = np.asarray(guidance, np.float64)
    if g.ndim > 1 or (g.ndim == 1 and g.shape[0] != n):
        raise ValueError(f"guidance must be a scalar or one value per image ({n}), got shape {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError(f"guidance must be finite and >= 0 (1 = no guidance, 0 = unconditional), got {guidance!r}")
    return g.astype(np.float32)


def sample_images(model: Model, strategy: ImageStrategy, labels: Any, key: jax.Array, *, guidance: Any = 1.0,
                  temperature: Any = 1.0, logits: LogitTransform | None = None, bucket: bool = True) -> ImageSamples:
    """Returns :class:`ImageSamples` (codes [N, *grid], generate's stats, per-code log-probs) for class
    ``labels`` [N], decoded by ``strategy`` through :func:`tokjax.generate`.

    ``guidance`` g >= 0 (scalar or [N]; 1 = the conditional distribution, 0 = unconditional) and
    ``temperature`` > 0 (scalar or [N]; ``tokjax.logits.temperature`` after guidance) are runtime values;
    ``logits`` is an optional further LogitTransform (e.g. ``top_k``) applied after the temperature.
    Passes = ``stats["forward_calls"]``. Raises ValueError for labels out of range, guidance < 0 (or != 1
    without ``guided``), a model whose vocabulary or max_len cannot hold the image sequence, or a
    ``pos_dims`` that does not match the order's grid.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    if not isinstance(strategy, ImageStrategy):
        raise ValueError(f"strategy must be an ImageStrategy (e.g. next_token_cfg(vocab, order)), got "
                         f"{type(strategy).__name__}")
    cfg = model.cfg
    labels = np.asarray(_int_array(labels, "class labels"))
    if labels.ndim != 1 or labels.shape[0] < 1:
        raise ValueError(f"labels must be [N] with N >= 1 (one class per image), got shape {labels.shape}")
    n = labels.shape[0]
    strategy.vocab.class_tokens(labels)
    g = _check_guidance(guidance, n)
    if not strategy.guided and np.any(g != 1.0):
        raise ValueError("guidance != 1 needs a guided strategy (guided=True runs the null-class rows)")
    order = strategy.order
    P = cfg.pos_dims
    if P > 1:
        if P != order.ndim:
            raise ValueError(f"a pos_dims={P} model reads {P} coordinates per token, but the order's grid "
                             f"{order.shape} has {order.ndim}")
        if cfg.positions == "learned" and max(order.shape) + 1 > cfg.max_len:
            raise ValueError(f"the grid {order.shape} needs coordinates up to {max(order.shape)} (+1 for the class "
                             f"token) in each learned position table of max_len={cfg.max_len}")
    strategy = dataclasses.replace(strategy, pos_dims=P, guidance=g)
    prompts = strategy.prompts(labels)
    rows = prompts.shape[0]
    t = np.asarray(temperature, np.float32)
    if t.ndim == 1 and t.shape[0] == n and rows != n:
        t = np.tile(t, rows // n)
    transform = temperature_tf(t)
    if logits is not None:
        transform = chain(transform, logits)
    run_model = model if P == 1 else Model(model.params, cfg.replace(pos_dims=1))  # see the module docstring
    out = generate(run_model, prompts, key=key, max_new_tokens=strategy.new_tokens(), strategy=strategy,
                   logits=transform, logprobs=0, bucket=bucket)
    codes, lp = strategy.images(out, n)
    return ImageSamples(codes=codes, stats=out.stats, logprobs=lp)


# ------------------------------------------------------------------ multi-token-per-pass decoders
@struct.dataclass
class CanvasDecodeState:
    """``DecodeState.extra`` of a :class:`CanvasStrategy`: ``canvas`` int32 [R, T] (the model input of
    every pass, filled as tokens are sampled), ``positions`` int32 [T, D], ``guidance`` float32 [images] and
    ``aux`` (a subclass's own state of the cached path, e.g. NAR's head-B KV cache; None otherwise)."""

    canvas: jax.Array
    positions: jax.Array
    guidance: jax.Array
    aux: Any = None


def keep_block(before: KVCache, after: KVCache, keep: Any) -> KVCache:
    """Returns ``after`` (a cache a block was just appended to) holding only the block's first ``keep`` slots
    (an int or per-row [R]) beyond ``before``'s entries: the rest (placeholders, queries, pad slots) are rolled
    back, invisible to every later block and overwritten by the next write."""
    keep = jnp.asarray(keep, jnp.int32)
    return after.replace(lengths=(before.lengths + (keep[None, :] if keep.ndim else keep)).astype(jnp.int32))


def append_block(params, cfg: ModelConfig, cache: KVCache, inputs: Inputs, ranks: Any, keep: Any = None,
                 **forward_kw) -> Output:
    """Appends a block of T slots to ``cache`` in one forward and returns its Output (cache trimmed to ``keep``).

    Every slot of the block sees every cached entry and, inside the block, the slots whose rank is <= its own
    (``Rank(ranks [T] or [R, T], bidirectional=True)``: one rank for a block that attends to itself
    bidirectionally, e.g. an NBP block; rank 0 for real slots and 1 for pad slots, so real slots never see the
    pads). ``keep`` (None: all T) leading slots stay in the cache (:func:`keep_block`): slots that later blocks
    must not see -- pads, and placeholder queries that the cache-free forward never shows to later slots --
    go after them. ``inputs`` should carry explicit positions (:func:`feed_positions`): the cache offset is not
    a canvas slot once slots were rolled back. ``forward_kw`` go to ``forward`` (taps, compute_logits, ...).
    This is exact: the cache-free forward of the canvas under a rank mask gives the same values at the block's
    slots when the cache holds exactly the slots of lower rank (up to float summation order).
    """
    out = forward(params, cfg, inputs, cache=cache, mask=Rank(ranks=jnp.asarray(ranks, jnp.int32),
                                                                bidirectional=True), **forward_kw)
    if keep is None:
        return out
    return out.replace(cache=keep_block(cache, out.cache, keep))


def feed_positions(cfg: ModelConfig, table: jax.Array, slots: jax.Array) -> jax.Array:
    """Returns the positions of canvas ``slots`` [F] for ``forward``: the slot index itself for a ``pos_dims = 1``
    model (what the cache-free forward of the whole canvas reads), ``table[slots]`` [F, D] otherwise."""
    slots = jnp.asarray(slots, jnp.int32)
    return slots if cfg.pos_dims == 1 else jnp.take(jnp.asarray(table, jnp.int32), slots, axis=0)


class CanvasStrategy(ImageStrategy):
    """Base class of image decoders that sample several tokens per pass (NBP's blocks, NAR's anti-diagonals).

    The canvas -- the model's whole input sequence -- lives in the strategy state. Pass p runs one
    cache-free forward of the canvas under the subclass's mask (a ``Rank`` spec: the slots not filled
    yet have higher ranks than every query of pass p, so they are invisible and their placeholder
    values never matter), takes the logits of the pass's target slots, applies guidance (as
    :class:`NextTokenCFG`), restricts to code ids, applies the logit transform slot by slot, samples
    every target independently, writes the samples into the canvas and commits them in pass order.
    Pad slots (passes with fewer targets than ``max_accept``) are neither written nor committed. The
    committed sequence is ``[class, codes in self.order]``, so :meth:`ImageStrategy.images` reads it
    back. ``stats["forward_calls"]`` = passes. Subclasses define :meth:`canvas_init`,
    :meth:`canvas_positions`, :meth:`schedule` and :meth:`pass_logits`.

    Cached decoding (a subclass's ``cached`` field, default True): instead of re-running the canvas, pass p
    appends only the slots its queries need that no earlier pass appended -- the block filled by pass p - 1
    (plus the class token and any placeholders on the first pass) -- to ``tokjax.generate``'s KV cache with the
    method's intra-block mask (:func:`append_block`), and reads the target logits at those slots. The cache then
    holds exactly the slots of lower rank than the block, so the logits equal the cache-free ones (tested to
    1e-5, same tokens under the same key). Subclasses define :meth:`cached_logits` (and :meth:`canvas_aux`,
    :meth:`cache_slots` where needed). ``cached=False`` keeps the cache-free path (a reference for the tests).
    """

    cached: bool = True  # subclasses declare it as a dataclass field (static: part of the jit key)

    def canvas_init(self, cls_tokens: jax.Array) -> jax.Array:
        """Returns int32 [R, T]: the canvas before the first pass, from the rows' class tokens [R]."""
        raise NotImplementedError(f"{type(self).__name__} must define canvas_init (CanvasStrategy subclasses do)")

    def canvas_positions(self) -> np.ndarray:
        """Returns int32 [T, D]: the coordinate of every canvas slot."""
        raise NotImplementedError(f"{type(self).__name__} must define canvas_positions (CanvasStrategy subclasses do)")

    def schedule(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (targets, writes, valid), each [passes, A]: pass p samples the logits row
        ``targets[p, a]`` of :meth:`pass_logits` into canvas slot ``writes[p, a]`` (-1: not written back),
        for the slots with ``valid[p, a]``; the valid targets, pass after pass, are the codes in ``order``."""
        raise NotImplementedError(f"{type(self).__name__} must define schedule (CanvasStrategy subclasses do)")

    def pass_logits(self, params, cfg: ModelConfig, canvas: jax.Array, positions: jax.Array) -> jax.Array:
        """Returns float32 [R, Q, V]: the logits every target row of the schedule indexes."""
        raise NotImplementedError(f"{type(self).__name__} must define pass_logits (CanvasStrategy subclasses do)")

    def cached_logits(self, params, cfg: ModelConfig, cache: KVCache, extra: CanvasDecodeState,
                      p: jax.Array) -> tuple[jax.Array, KVCache, CanvasDecodeState]:
        """Returns (z float32 [R, A, V], cache, extra): the logits of pass ``p``'s schedule targets (column a =
        target a of ``schedule()[0][p]``), computed by appending the pass's new slots to ``cache``
        (:func:`append_block`), and the updated cache and state (``extra.aux``)."""
        raise NotImplementedError(f"{type(self).__name__} has no cached path (define cached_logits, or cached=False)")

    def canvas_aux(self, params, cfg: ModelConfig, rows: int, capacity: int) -> Any:
        """Returns the initial ``CanvasDecodeState.aux`` of the cached path (default None)."""
        return None

    def cache_slots(self) -> int:
        """Returns the most cache slots the cached passes write up to (beyond the final length = ``slack``)."""
        return 1 + self.new_tokens()

    @property
    def slack(self) -> int:  # cached passes may write pad / placeholder slots past the final sequence length
        return max(0, self.cache_slots() - 1 - self.new_tokens()) if self.cached else 0

    def pass_target_logits(self, params, cfg: ModelConfig, cache: KVCache, extra: CanvasDecodeState,
                           p: jax.Array) -> tuple[jax.Array, KVCache, CanvasDecodeState]:
        """Returns (z float32 [R, A, V], cache, extra) for pass ``p``: the logits of its schedule targets, by
        :meth:`cached_logits` (``cached``) or by one cache-free :meth:`pass_logits` of the canvas (cache
        returned unchanged). ``cfg`` is the model's (its own ``pos_dims``)."""
        if self.cached:
            z, cache, extra = self.cached_logits(params, cfg, cache, extra, p)
            return z.astype(_F32), cache, extra
        tgt = jnp.asarray(self.schedule()[0])[p]
        z = jnp.take(self.pass_logits(params, cfg, extra.canvas, extra.positions).astype(_F32), tgt, axis=1)
        return z, cache, extra

    @property
    def max_accept(self) -> int:  # most tokens one pass commits (the width of the schedule)
        return int(self.schedule()[0].shape[1])

    def validate(self, cfg: ModelConfig) -> None:
        self._check_model(cfg, "")
        T = self.canvas_positions().shape[0]
        if cfg.positions == "learned" and int(self.canvas_positions().max()) >= cfg.max_len:
            raise ValueError(f"the canvas coordinates reach {int(self.canvas_positions().max())}, beyond the learned "
                             f"position tables of max_len={cfg.max_len}")
        if T > cfg.max_len:
            raise ValueError(f"the canvas has {T} slots, more than the model's max_len={cfg.max_len}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> CanvasDecodeState:
        R = state.tokens.shape[0]
        n = image_rows(R, self.guided)
        aux = self.canvas_aux(params, self._model_cfg(cfg), R, state.cache.capacity) if self.cached else None
        return CanvasDecodeState(canvas=self.canvas_init(state.tokens[:, 0]).astype(jnp.int32),
                                 positions=jnp.asarray(self.canvas_positions(), jnp.int32),
                                 guidance=as_rows(self.guidance, n, "guidance"), aux=aux)

    def _model_cfg(self, cfg: ModelConfig) -> ModelConfig:
        # generate ran the prefill as pos_dims=1 (sample_images); the passes read the model's own pos_dims
        return cfg.replace(pos_dims=self.pos_dims) if self.pos_dims > 1 else cfg

    def persistent_state(self, extra) -> None:
        return None

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        extra = state.extra
        R = state.tokens.shape[0]
        n = R // 2 if self.guided else R
        targets, writes, valid = (jnp.asarray(a) for a in self.schedule())
        p = jnp.minimum(state.step, targets.shape[0] - 1)
        wr, ok = writes[p], valid[p]  # [A]
        z, cache, extra = self.pass_target_logits(params, self._model_cfg(cfg), state.cache, extra, p)
        if self.guided:
            cond, uncond = z[:n], z[n:]
            z = cond + (extra.guidance[:, None, None] - 1.0) * (cond - uncond)  # exactly cond at g = 1
            z = jnp.concatenate([z, z], axis=0)
        codes = jnp.arange(z.shape[-1]) < self.vocab.num_codes
        z = jnp.where(codes, z, -jnp.inf)
        logit_state, cols = state.logit_state, []
        for a in range(z.shape[1]):  # the transform sees [rows, V], one target slot at a time
            la, logit_state = transform.apply(z[:, a], logit_state, state.context())
            cols.append(la)
        logits = jnp.stack(cols, axis=1)  # [R, A, V]
        key, sub = jax.random.split(state.key)
        tok, sstats = sample(sub, logits[:n], greedy=ends_greedy(transform))  # [n, A]
        masked = (sstats.all_masked & ok[None, :]).any(-1)
        if self.guided:
            tok, masked = jnp.concatenate([tok, tok]), jnp.concatenate([masked, masked])
        slot = jnp.where(ok & (wr >= 0), wr, extra.canvas.shape[1])  # pad and unwritten slots dropped
        canvas = extra.canvas.at[:, slot].set(tok, mode="drop")
        count = jnp.sum(ok).astype(jnp.int32)
        counts = jnp.where(masked, 0, count).astype(jnp.int32)
        stats = state.stats.replace(
            forward_calls=state.stats.forward_calls + 1,
            masked_rows=state.stats.masked_rows | (masked & ~state.done),
        )
        # valid slots come first in every pass (schedule contract), so commit's first `count` tokens are them
        state = state.replace(cache=cache, logit_state=logit_state, key=key, stats=stats,
                              extra=extra.replace(canvas=canvas))
        state = commit(state, tok, counts, eos_id, logits=logits)
        if self.cached:  # commit sets the cache length to the committed length - 1; the canvas cache keeps its own
            state = state.replace(cache=cache)
        return state.replace(done=state.done | masked)
