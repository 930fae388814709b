"""TokenUnify: a per-batch mixture of random-token, next-token and next-all prediction over one forward (P9).

Paper: *TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction*
(Chen et al., ICCV 2025, arXiv 2405.16847; P9). Official code ``ydchen0806/TokenUnify``: read in
``src/segmamba_ar.py`` (``SegMamba.forward``), ``dataloader/data_provider_pretraining_autoregress.py``
(``preserve_patches_and_fill_rest``), ``src/main_pretrain_autoregress.py`` / ``src/main_pretrain.py``
(flags and defaults) and ``src/run_mamba_mae.sh`` / ``src/run_mamba_mae_AR.sh`` (the launch scripts).
Written from scratch on the shared forward; nothing is copied.

A row is a token sequence ``x_1..x_T`` (an image batch of :mod:`tokjax.vision.image_lm`: ``[class,
codes in order]``) with ``maskable`` positions M (``batch["mask"]``: the image tokens; the class token is
never hidden and always visible). Three objectives share the model and its tied head:

* random-token (MAE/MIM, o = 0): each maskable token is hidden with probability ``mask_ratio``
  (``H = M & (u < mask_ratio)``), replaced by ``[MASK]``, and predicted at its own position under
  *bidirectional* attention::

      L_rand = sum_{i in H} -log p(x_i | x~) / |H|,      x~_i = [MASK] if i in H else x_i

* next-token (NTP, o = 1): the plain causal loss of ``tokjax.losses.next_token_loss`` on the batch
  (position t predicts x_{t+1}); it is that function, called as is.
* next-all (o = 2): per row a prefix of k ~ U{1 .. n-1} maskable tokens is kept (n = |M| of the row),
  every later maskable token F = {i in M : rank_M(i) >= k} is replaced by fill (``"noise"``: a uniformly
  drawn code id; ``"mask"``: ``[MASK]``) and all of them are predicted at once, bidirectional attention::

      L_all = sum_{i in F} -log p(x_i | x_{<=k}, fill) / |F|

The mixture (P9) draws ONE objective per batch, ``o ~ Categorical(weights)`` (``mode="sample"``,
``jax.lax.switch``: only the drawn branch runs), or adds them (``mode="sum"``: ``sum_o w_o L_o``, every
branch runs)::

      L_TokenUnify = L_o,  o ~ Cat(w_rand, w_ntp, w_all)        or        sum_o w_o L_o

``weights`` (3 non-negative numbers) and ``mask_ratio`` are runtime values (batch keys ``"tu_weights"``
and ``"tu_mask_ratio"`` override the options per step without recompiling). ``weights = (0, 1, 0)`` is
exactly next-token prediction: the same loss value and gradient as ``next_token_loss`` (tested).

What was checked in the official code (and what differs here):

* next-all target construction [verified]: ``preserve_patches_and_fill_rest`` draws
  ``np.random.randint(1, total_patches)``, i.e. k ~ U{1 .. L-1}, keeps patches ``[:k]`` in raster order
  and fills the rest with N(0, 1) noise (``--fill_nose 1``, the default of
  ``main_pretrain_autoregress.py``) or zeros. Here: the same k; noise = uniform code ids (the discrete
  analogue of Gaussian pixel noise), ``fill="mask"`` for [MASK] (the zero fill's analogue).
  Deviation: the official next-all loss is ``MSE(sigmoid(out), x_gt)`` over the WHOLE volume, kept
  prefix included (reconstructing a visible patch is a copy); the default here scores the suffix only
  (the issue's "whole suffix"), ``targets="all"`` scores every maskable token as the official code does.
* next-token [verified]: in joint mode the official "Preciever" head regresses patch k+1 from the same
  prefix-only input, one position per sample. Teacher-forced causal NTP scores every k at once, i.e. the
  expectation over k of that single-position objective; it is used here (the issue's NTP branch).
* random-token masking ratio [verified]: ``main_pretrain.py --mask_ratio`` defaults to 0.4 and
  ``run_mamba_mae.sh`` passes 0.4; the official provider hides exactly ``int(L * 0.4)`` patches. Deviation:
  here every maskable token is hidden independently with probability ``mask_ratio`` (the fixed-rate mode
  of :func:`tokjax.losses.mlm_u.mlm_u_visibility`, reused), the same expected ratio.
* mixture weights [verified: there are none to copy]: the official code has no per-batch sampler. Its
  random-token (MAE) pre-training is a separate run (``main_pretrain.py``) whose weights initialise the
  autoregressive run (``run_mamba_mae_AR.sh --pretrain_path``), which then minimises
  ``MSE(next-all) + MSE(next-token)`` with weight 1 : 1 (``--auto_mode 1``, the default; ``--auto_mode 0``
  alternates every 100 epochs, but ``forward`` is never passed the epoch, so it always trains NTP).
  The per-batch sampler with equal default weights is the issue's design (a deviation from the staged
  official schedule); ``mode="sum"`` with ``weights=(0, 1, 1)`` is the official stage 2.
* Other deviations: categorical heads and cross-entropy on discrete codes instead of MSE on sigmoid
  voxels; a transformer with the shared forward instead of the SegMamba U-Net.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._next_token import next_token_loss
from tokjax.losses._stats import TokenStats, check_token_ids, reduce_loss
from tokjax.losses.cut_cross_entropy import head_stats
from tokjax.losses.mlm_u import mlm_u_visibility
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Bidirectional
from tokjax.model.forward import head_matrix

__all__ = ["FILLS", "MODES", "OBJECTIVES", "TARGETS", "make_tokenunify_loss", "next_all_inputs", "objective_loss",
           "random_token_inputs", "sample_objective", "tokenunify", "tokenunify_loss"]

OBJECTIVES = ("random", "ntp", "next_all")
MODES = ("sample", "sum")
FILLS = ("noise", "mask")
TARGETS = ("suffix", "all")
_F32 = jnp.float32


# ------------------------------------------------------------------------------------------ checks
def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_weights(weights) -> jax.Array:
    w = jnp.asarray(weights, _F32)
    if w.shape != (3,):
        raise ValueError(f"weights must be 3 non-negative numbers (random-token, next-token, next-all), got shape "
                         f"{tuple(w.shape)}")
    if _concrete(w):
        a = np.asarray(w)
        if not np.all(np.isfinite(a)) or np.any(a < 0) or a.sum() <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0 (random-token, next-token, next-all), "
                             f"got {a.tolist()}")
    return w


def _check_ratio(ratio) -> jax.Array:
    r = jnp.asarray(ratio, _F32)
    if r.ndim:
        raise ValueError(f"mask_ratio must be a scalar in (0, 1], got shape {tuple(r.shape)}")
    if _concrete(r) and not (0.0 < float(r) <= 1.0):
        raise ValueError(f"mask_ratio must lie in (0, 1] (the share of maskable tokens hidden), got {float(r)}")
    return r


def _check_choice(value, name: str, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _maskable(batch: dict, tokens: jax.Array) -> jax.Array:
    """Returns bool [B, T]: the positions that may be hidden / predicted (``batch["mask"]`` per token)."""
    B, T = tokens.shape
    m = batch.get("mask")
    if m is None:
        return jnp.ones((B, T), bool).at[:, 0].set(False)
    m = jnp.asarray(m)
    if m.shape != (B, T):
        raise ValueError(f"batch['mask'] must be per token [B, T]={B, T} (True = a token that may be hidden and "
                         f"predicted), got {tuple(m.shape)}")
    return m.astype(bool)


def _check_rows(maskable: jax.Array, least: int, what: str) -> None:
    if _concrete(maskable):
        n = np.asarray(maskable).sum(axis=1)
        bad = np.flatnonzero(n < least)
        if bad.size:
            raise ValueError(f"{what} needs at least {least} maskable tokens per row (batch['mask'] True); rows "
                             f"{bad.tolist()} have {n[bad].tolist()}")


# ----------------------------------------------------------------------------- objective inputs
def random_token_inputs(key: jax.Array, tokens: jax.Array, maskable: jax.Array, mask_ratio: Any,
                        mask_id: int) -> tuple[jax.Array, jax.Array]:
    """Returns (inputs int32 [B, T], hidden bool [B, T]) of the random-token objective (P9, MAE branch).

    Each ``maskable`` token is hidden independently with probability ``mask_ratio`` (runtime scalar in
    (0, 1]): ``mlm_u_visibility(key, maskable, rate=1 - mask_ratio)``, so ``hidden = maskable & ~visible``;
    hidden tokens read ``mask_id``. Positions outside ``maskable`` are never hidden.
    """
    tokens = check_token_ids(tokens, "tokens")
    maskable = jnp.asarray(maskable).astype(bool)
    ratio = _check_ratio(mask_ratio)
    visible = mlm_u_visibility(key, maskable, rate=1.0 - ratio)
    hidden = maskable & ~visible
    return jnp.where(hidden, jnp.int32(mask_id), tokens).astype(jnp.int32), hidden


def next_all_inputs(key: jax.Array, tokens: jax.Array, maskable: jax.Array, *, fill: str = "noise",
                    mask_id: int, num_codes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (inputs int32 [B, T], future bool [B, T], k int32 [B]) of the next-all objective (P9).

    Per row, n = the number of ``maskable`` tokens and k ~ U{1 .. n-1} (the official
    ``randint(1, total_patches)``); the first k maskable tokens (in sequence order) stay, every later one
    is ``future`` and reads the fill: a uniform id in [0, ``num_codes``) for ``fill="noise"``, ``mask_id``
    for ``fill="mask"``. Non-maskable positions (the class token) stay. ValueError for a row with n < 2
    (checked when concrete).
    """
    _check_choice(fill, "fill", FILLS)
    tokens = check_token_ids(tokens, "tokens")
    maskable = jnp.asarray(maskable).astype(bool)
    _check_rows(maskable, 2, "next-all")
    return _next_all(key, tokens, maskable, fill, mask_id, num_codes)


def _next_all(key, tokens, maskable, fill, mask_id, num_codes):
    B, T = tokens.shape
    k_pre, k_noise = jax.random.split(key)
    n = jnp.sum(maskable, axis=1).astype(jnp.int32)
    k = jax.random.randint(k_pre, (B,), 1, jnp.maximum(n, 2))
    rank = jnp.cumsum(maskable, axis=1) - 1  # rank of each maskable token among the row's maskable tokens
    future = maskable & (rank >= k[:, None])
    if fill == "noise":
        filler = jax.random.randint(k_noise, (B, T), 0, num_codes, dtype=jnp.int32)
    else:
        filler = jnp.full((B, T), mask_id, jnp.int32)
    return jnp.where(future, filler, tokens).astype(jnp.int32), future, k


def sample_objective(key: jax.Array, weights: Any) -> jax.Array:
    """Returns int32 []: the objective of one batch, ``o ~ Categorical(weights / sum(weights))`` over
    ``OBJECTIVES`` (0 random-token, 1 next-token, 2 next-all); a zero weight is never drawn."""
    w = _check_weights(weights)
    return jax.random.categorical(key, jnp.log(w)).astype(jnp.int32)


# ------------------------------------------------------------------------------------------ losses
def _positions(batch: dict, cfg: ModelConfig, B: int, T: int):
    pos = batch.get("positions")
    if pos is None:
        return None
    pos = jnp.asarray(pos)
    if pos.ndim < 2 or pos.shape[:2] != (B, T):
        raise ValueError(f"batch['positions'] must be per token [B, T]={B, T} (plus a pos_dims axis), got "
                         f"{tuple(pos.shape)}")
    return pos


def _bidirectional_ce(params, cfg: ModelConfig, inputs, targets, scored, positions, method_block: int):
    """Returns (token-mean CE of ``targets`` at ``scored`` positions, accuracy): the model reads ``inputs``
    [B, T] under bidirectional attention and position i predicts ``targets[:, i]`` (no shift)."""
    B, T = inputs.shape
    hidden = forward(params, cfg, Inputs(tokens=inputs, positions=positions), mask=Bidirectional(),
                     compute_logits=False).hidden
    w, layout = head_matrix(params, cfg)
    core = head_stats(hidden.reshape(B * T, -1), w.astype(cfg.dtype), targets.reshape(-1), block_size=method_block,
                      head_layout=layout)
    logp = (core["zy"] - core["lse"]).reshape(B, T)
    stats = TokenStats.create(logp, scored)
    return reduce_loss(stats, "token_mean")


def objective_loss(params, cfg: ModelConfig, batch: dict, key: jax.Array, objective: int, *, mask_ratio: Any = 0.4,
                   fill: str = "noise", targets: str = "suffix", mask_id: int | None = None,
                   num_codes: int | None = None, block_size: int = 8192) -> jax.Array:
    """Returns the scalar loss of ONE TokenUnify objective (0 random-token, 1 next-token, 2 next-all; a Python
    int) on ``batch`` (module docstring; ``tokens`` [B, T], optional ``mask`` / ``positions`` per token).

    ``mask_id`` default ``cfg.vocab_size - 1`` (the [MASK] of :class:`~tokjax.vision.image_lm.ImageVocab`);
    ``num_codes`` (noise ids are drawn from [0, num_codes)) default ``mask_id`` (every id but [MASK]).
    """
    if objective not in (0, 1, 2):
        raise ValueError(f"objective must be 0 (random-token), 1 (next-token) or 2 (next-all), got {objective!r}")
    tokens, maskable, positions, mask_id, num_codes = _prepare(cfg, batch, mask_id, num_codes)
    if objective == 2:
        _check_rows(maskable, 2, "next-all")
    return _branch(objective, params, cfg, batch, tokens, maskable, positions, key, _check_ratio(mask_ratio),
                   fill, targets, mask_id, num_codes, block_size)


def _prepare(cfg, batch, mask_id, num_codes):
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise ValueError("a TokenUnify batch is a dict with 'tokens' int [B, T] (optional 'mask' bool [B, T]: the "
                         "tokens that may be hidden/predicted, and 'positions' [B, T(, pos_dims)]); build it with "
                         "tokjax.vision.image_lm.image_batch")
    for bad in ("inputs", "targets", "segment_ids", "prompt_lengths", "lengths"):
        if bad in batch:
            raise ValueError(f"batch[{bad!r}] is not supported by TokenUnify: every row is one whole sequence "
                             "given as batch['tokens'] (the bidirectional objectives see all of it)")
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    if _concrete(tokens) and int(np.asarray(tokens).max()) >= cfg.vocab_size:
        raise ValueError(f"token ids must be < vocab_size={cfg.vocab_size}, got max {int(np.asarray(tokens).max())}")
    B, T = tokens.shape
    maskable = _maskable(batch, tokens)
    positions = _positions(batch, cfg, B, T)
    V = cfg.vocab_size
    mask_id = V - 1 if mask_id is None else mask_id
    if isinstance(mask_id, bool) or not isinstance(mask_id, (int, np.integer)) or not 0 <= mask_id < V:
        raise ValueError(f"mask_id must be an int id in [0, vocab_size={V}), got {mask_id!r}")
    num_codes = int(mask_id) if num_codes is None else num_codes
    if isinstance(num_codes, bool) or not isinstance(num_codes, (int, np.integer)) or not 1 <= num_codes <= V:
        raise ValueError(f"num_codes must be an int in [1, vocab_size={V}] (noise ids are drawn from [0, num_codes)),"
                         f" got {num_codes!r}")
    return tokens, maskable, positions, int(mask_id), int(num_codes)


def _branch(objective, params, cfg, batch, tokens, maskable, positions, key, ratio, fill, targets, mask_id, num_codes,
            block_size):
    if objective == 1:
        ntp = {k: v for k, v in batch.items() if k not in ("tu_weights", "tu_mask_ratio")}
        return next_token_loss(params, cfg, ntp)[0]
    if objective == 0:
        inputs, scored = random_token_inputs(key, tokens, maskable, ratio, mask_id)
    else:
        inputs, future, _ = _next_all(key, tokens, maskable, fill, mask_id, num_codes)
        scored = future if targets == "suffix" else maskable
    return _bidirectional_ce(params, cfg, inputs, tokens, scored, positions, block_size)


def tokenunify_loss(params, cfg: ModelConfig, batch: dict, rng: jax.Array | None = None, *,
                    weights: Any = (1.0, 1.0, 1.0), mask_ratio: Any = 0.4, mode: str = "sample", fill: str = "noise",
                    targets: str = "suffix", mask_id: int | None = None, num_codes: int | None = None,
                    block_size: int = 8192) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the TokenUnify mixture loss of one batch (P9; module docstring).

    ``batch``: ``tokens`` int [B, T] (e.g. :func:`~tokjax.vision.image_lm.image_batch`: class token then
    codes), ``mask`` bool [B, T] per token (True = may be hidden / predicted; default all but position 0),
    ``positions`` (for ``pos_dims > 1`` models); ``tu_weights`` [3] / ``tu_mask_ratio`` [] override
    ``weights`` / ``mask_ratio`` (runtime values: no recompilation). ``rng`` draws the objective and the
    masks (``tokjax.train`` passes one per step). ``mode="sample"``: one objective per batch drawn with
    probabilities ``weights / sum(weights)``; ``"sum"``: ``sum_o weights[o] * L_o``. ``fill``: next-all
    fill (``"noise"`` uniform ids in [0, num_codes), ``"mask"``); ``targets``: next-all scores the
    ``"suffix"`` or ``"all"`` maskable tokens (the official whole-volume MSE). Metrics: ``loss``,
    ``objective`` (the drawn index; -1 in sum mode) and, in sum mode, ``loss_random`` / ``loss_ntp`` /
    ``loss_next_all``.
    """
    _check_choice(mode, "mode", MODES)
    _check_choice(fill, "fill", FILLS)
    _check_choice(targets, "targets", TARGETS)
    if rng is None:
        raise ValueError("the tokenunify loss draws its objective and masks at random: pass rng (tokjax.train passes "
                         "one per step)")
    tokens, maskable, positions, mask_id, num_codes = _prepare(cfg, batch, mask_id, num_codes)
    w = _check_weights(batch.get("tu_weights", weights))
    ratio = _check_ratio(batch.get("tu_mask_ratio", mask_ratio))
    if not _concrete(w) or float(w[2]) > 0:
        _check_rows(maskable, 2, "next-all")
    k_obj, k_rand, k_all = jax.random.split(rng, 3)
    keys = (k_rand, None, k_all)

    def run(o):
        return _branch(o, params, cfg, batch, tokens, maskable, positions, keys[o], ratio, fill, targets, mask_id,
                       num_codes, block_size).astype(_F32)

    sg = jax.lax.stop_gradient
    if mode == "sum":
        losses = [run(o) for o in range(3)]
        loss = sum(w[o] * losses[o] for o in range(3))
        return loss, {"loss": loss, "objective": jnp.asarray(-1, jnp.int32), "loss_random": sg(losses[0]),
                      "loss_ntp": sg(losses[1]), "loss_next_all": sg(losses[2])}
    o = sample_objective(k_obj, w)
    if _concrete(w) and np.count_nonzero(np.asarray(w)) == 1:  # one objective: call it, compile no others
        loss = run(int(np.flatnonzero(np.asarray(w))[0]))
    else:
        loss = jax.lax.switch(o, [lambda: run(0), lambda: run(1), lambda: run(2)])
    return loss, {"loss": loss, "objective": o}


def make_tokenunify_loss(*, weights: Any = (1.0, 1.0, 1.0), mask_ratio: float = 0.4, mode: str = "sample",
                         fill: str = "noise", targets: str = "suffix", mask_id: int | None = None,
                         num_codes: int | None = None, block_size: int = 8192) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`tokenunify_loss` with these
    options, for ``tokjax.train`` (options are checked here)."""
    _check_weights(weights)
    _check_ratio(mask_ratio)
    _check_choice(mode, "mode", MODES)
    _check_choice(fill, "fill", FILLS)
    _check_choice(targets, "targets", TARGETS)
    for name, v, lo in (("mask_id", mask_id, 0), ("num_codes", num_codes, 1), ("block_size", block_size, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo):
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    weights = tuple(float(x) for x in np.asarray(weights, np.float64).reshape(-1))

    def loss_fn(params, cfg, batch, rng=None):
        return tokenunify_loss(params, cfg, batch, rng, weights=weights, mask_ratio=float(mask_ratio), mode=mode,
                               fill=fill, targets=targets, mask_id=mask_id, num_codes=num_codes,
                               block_size=int(block_size))

    return loss_fn


def tokenunify(**options):
    """Returns the registered ``"tokenunify"`` loss (a hashable ``RegisteredLoss`` for ``tokjax.train``) with
    ``options`` (those of :func:`make_tokenunify_loss`)."""
    from tokjax.losses.registry import make_loss

    return make_loss("tokenunify", **options)


# --------------------------------------------------------------------------------------- registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("tokenunify", make_tokenunify_loss,
                  {"weights": [1.0, 1.0, 1.0], "mask_ratio": 0.4, "mode": "sample", "fill": "noise",
                   "targets": "suffix", "mask_id": None, "num_codes": None, "block_size": 8192},
                  doc="P9 TokenUnify: per batch one of random-token ([MASK], bidirectional), next-token and next-all "
                      "(prefix k ~ U{1..n-1}, noise fill, suffix predicted) drawn with probabilities weights "
                      "(mode 'sum': weighted sum); batch = an image batch (tokens, mask, positions)",
                  overwrite=True)


_register()
