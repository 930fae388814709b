"""Insertion Language Models (P14): training examples, the joint (gap x token) loss and the stop head.

Paper: *Insertion Language Models: Sequence Generation with Arbitrary-Position Insertions* (P14,
ILM). Official code read for this module: ``dhruvdcoder/xlm-core`` @ 51c7813, package
``xlm-models/ilm``: ``datamodule_ilm.py`` (``ilm_drop_fn``, ``ILMSeq2SeqCollator``),
``loss_ilm.py`` (``ILMLossWithMaskedCE``), ``nn.py`` (``masked_ce_last_two_dims``),
``model_ilm.py`` (``RotaryTransformerILMModelWithStoppingClassification``) and
``src/xlm/modules/rotary_transformer.py`` (``RotaryTransformerFinalLayerForClassification``).
Our code is written from scratch on tokjax's one forward.

The model is a bidirectional transformer (tokjax's ``forward`` under ``Bidirectional`` with the
row's padding as a second segment). Its ordinary logits are read jointly: ``l[i, v]`` scores
inserting token ``v`` into the gap right after slot ``i``; one softmax runs over every allowed
pair (i, v) of the row (``q = softmax over (i, v)``).

Training example (official collator, ``ilm_drop_fn``): for a target ``y`` of length ``L`` (the
part the model writes; the prompt is never dropped), draw ``n ~ U{0..L}`` and drop a uniformly
random subset of ``n`` target tokens. The row is ``prompt + kept tokens`` (order kept), and the
target of the gap after slot ``i`` counts the dropped copies of each token between kept token
``i`` and the next one (the gap after the prompt's last token holds those before the first kept
one). Loss per row (``loss_ilm.py``)::

    ce      = -sum_{i, v} (c[i, v] / N) log q[i, v],   N = sum c = n   (0 when nothing was dropped)
    stop    = -w[z] log softmax(h(x_cls))[z],  z = 0 ("stop": N == 0) or 1 ("continue": N > 0)
    loss    = mean over rows of (ce + lambda * stop)

with class weights ``w = (c, 1 - c)`` (``stopping_class_weight`` c; None: unweighted) and
``lambda`` the ``length_loss_weight``. Defaults here are the issue's / OWT config's
``lambda = 0.001, c = 0.9``; xlm-core's star-graph configs (``model_type/ilm_stopping_seq2seq.yaml``)
set neither, i.e. ``lambda = 1`` and no class weights. As in ``create_mask``, the softmax runs over
every non-pad slot except the CLS slot (slot 0), prompt slots included (their target is 0, so the
model learns to put no mass there); decoding (``tokjax.decoding.insertion``) opens only the gap
after the prompt's last token and the generated tokens, as xlm-core's ``ILMPredictor.generate`` does.

Roles of the special tokens: the prompt's first token is the CLS token whose final hidden state
the stop head reads, and its last token plays the official ``[BOS]`` (the first insertion gap),
so a prompt has at least 2 tokens (for unconditional generation pass ``[cls, bos]``).
Stop head (``RotaryTransformerFinalLayerForClassification``): ``z = h + W2 tanh(W1 h + b1) + b2``,
``logits = z Wout`` (2 classes, no bias), on the final-normed hidden ``h`` of slot 0 (xlm-core
layer-norms the raw residual inside the head; tokjax's forward returns the final-normed state,
which this head reads for both its MLP and its residual).

Layout of a built batch (:func:`ilm_batch_from_drops`; fixed shapes, W = P + T): ``tokens`` [B, W]
are the prompt followed by the kept target tokens, contiguous, ``pad_id`` after ``lengths``;
``positions`` [B, W] = 0..W-1 (attention is permutation-equivariant up to the positions, so this
equals any other column order with the same positions); ``slots`` [B, T] the column each dropped
target token is inserted after (-1 for kept tokens and padding); ``targets`` [B, T] the target
tokens; ``n_drops`` [B].
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Bidirectional
from tokjax.model.ops import check_int_values

__all__ = [
    "STOP_KEY", "STOP", "CONTINUE", "ilm_batch", "ilm_batch_from_drops", "ilm_forward", "ilm_loss", "ilm_targets",
    "init_stop_head", "make_ilm_loss", "sample_drops", "stop_logits",
]

STOP_KEY = "ilm_stop"  # params[STOP_KEY]: the stop head beside the model's own parameters
STOP, CONTINUE = 0, 1  # stop-head classes, as xlm-core orders them (class 0 = "nothing left to insert")
_F32 = jnp.float32
_BATCH_KEYS = ("tokens", "positions", "lengths", "prompt_lengths", "slots", "targets", "n_drops")


# ------------------------------------------------------------------------------------ stop head
def init_stop_head(params: dict, cfg: ModelConfig, key: jax.Array) -> dict:
    """Returns ``params`` plus ``params["ilm_stop"]``, the stop head (2-class MLP on the CLS slot's hidden state).

    ``{"w1": [D, 2D], "b1": [2D], "w2": [2D, D], "b2": [D], "out": [D, 2]}``; matrices drawn
    normal with std ``cfg.init_scale``, biases zero. The forward ignores the extra entry, so the
    model still runs (and ``tokjax.train`` trains the head with it).
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be the model's parameter dict, got {type(params).__name__}")
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    D = cfg.d_model
    k1, k2, k3 = jax.random.split(key, 3)
    s = cfg.init_scale
    head = {
        "w1": s * jax.random.normal(k1, (D, 2 * D), _F32), "b1": jnp.zeros((2 * D,), _F32),
        "w2": s * jax.random.normal(k2, (2 * D, D), _F32), "b2": jnp.zeros((D,), _F32),
        "out": s * jax.random.normal(k3, (D, 2), _F32),
    }
    return {**params, STOP_KEY: head}


def stop_logits(params: dict, hidden_cls: jax.Array) -> jax.Array:
    """Returns float32 [B, 2] stop-head logits (class 0 = stop, 1 = continue) of ``hidden_cls`` [B, D]."""
    if not isinstance(params, dict) or STOP_KEY not in params:
        raise ValueError(f"params has no {STOP_KEY!r} entry (the ILM stop head): add one with "
                         "tokjax.losses.insertion.init_stop_head(params, cfg, key)")
    p = params[STOP_KEY]
    h = hidden_cls.astype(_F32)
    z = h + jnp.tanh(h @ p["w1"].astype(_F32) + p["b1"].astype(_F32)) @ p["w2"].astype(_F32) + p["b2"].astype(_F32)
    return z @ p["out"].astype(_F32)


def ilm_forward(params: dict, cfg: ModelConfig, tokens: jax.Array, positions: jax.Array,
                lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (logits float32 [B, S, V], stop logits float32 [B, 2]) of one bidirectional ILM forward.

    ``tokens`` [B, S] in any column order, ``positions`` [B, S] their sequence positions, row b's
    valid columns are ``< lengths[b]`` (the rest is a separate segment: no valid column sees it).
    ``logits[b, i, v]`` scores inserting ``v`` right after column i; the stop head reads column 0.
    """
    S = tokens.shape[1]
    valid = jnp.arange(S)[None, :] < lengths[:, None]
    out = forward(params, cfg, Inputs(tokens=tokens, positions=positions, segment_ids=valid.astype(jnp.int32)),
                  mask=Bidirectional())
    return out.logits.astype(_F32), stop_logits(params, out.hidden[:, 0])


# ---------------------------------------------------------------------------------- batch build
def _check_raw(prompt, prompt_lengths, target, target_lengths, vocab_size: int | None):
    prompt, target = jnp.asarray(prompt), jnp.asarray(target)
    prompt_lengths, target_lengths = jnp.asarray(prompt_lengths), jnp.asarray(target_lengths)
    for name, a in (("prompt", prompt), ("target", target)):
        if a.ndim != 2 or not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be int token ids [B, width], got {a.dtype} {tuple(a.shape)}")
    B, P = prompt.shape
    if target.shape[0] != B:
        raise ValueError(f"prompt and target must have the same rows, got {B} and {target.shape[0]}")
    for name, a in (("prompt_lengths", prompt_lengths), ("target_lengths", target_lengths)):
        if a.shape != (B,) or not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be int [B]={(B,)}, got {a.dtype} {tuple(a.shape)}")
    if P < 2:
        raise ValueError(f"prompt must be at least 2 tokens wide ([cls] ... [bos]: the stop head reads the first, "
                         f"the first insertion gap follows the last), got width {P}")
    check_int_values(prompt_lengths, "prompt_lengths (the first token is the CLS slot, the last opens the first gap)",
                     2, P, hi_closed=True)
    check_int_values(target_lengths, "target_lengths", 0, target.shape[1], hi_closed=True)
    if vocab_size is not None:
        check_int_values(prompt, "prompt token ids", 0, vocab_size)
        check_int_values(target, "target token ids", 0, vocab_size)
    return prompt.astype(jnp.int32), prompt_lengths.astype(jnp.int32), target.astype(jnp.int32), \
        target_lengths.astype(jnp.int32)


def sample_drops(key: jax.Array, target_lengths: jax.Array, width: int) -> jax.Array:
    """Returns bool [B, width]: the official ILM noise, ``n ~ U{0..L}`` dropped tokens, a uniform subset of size n.

    ``L = target_lengths[b]``; columns ``>= L`` are never dropped (``ilm_drop_fn`` with
    ``_n_drop_uniformly`` and ``_drop_uniformly``). Pure and jit-compatible.
    """
    target_lengths = jnp.asarray(target_lengths, jnp.int32)
    B = target_lengths.shape[0]
    k_n, k_sub = jax.random.split(key)
    n = jax.random.randint(k_n, (B,), 0, target_lengths + 1)  # U{0..L} per row
    valid = jnp.arange(width)[None, :] < target_lengths[:, None]
    u = jnp.where(valid, jax.random.uniform(k_sub, (B, width)), 2.0)
    rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)  # rank of each column among the row's uniforms
    return valid & (rank < n[:, None])


def ilm_batch_from_drops(prompt, prompt_lengths, target, target_lengths, drop, *, pad_id: int = 0,
                         vocab_size: int | None = None) -> dict[str, jax.Array]:
    """Returns the built ILM batch (module docstring) for the given drop mask ``drop`` bool [B, T].

    ``prompt`` int [B, P] right-padded with ``prompt_lengths`` [B] (>= 2); ``target`` int [B, T]
    right-padded with ``target_lengths`` [B]; ``drop[b, j]`` drops target token j (only
    ``j < target_lengths[b]`` may be set). Keys: ``tokens``, ``positions`` [B, P+T]; ``lengths``,
    ``prompt_lengths``, ``n_drops`` [B]; ``slots``, ``targets`` [B, T]. Pure and jit-compatible
    (the value checks run on concrete arrays).

    Raises:
      ValueError: wrong shapes or dtypes, a prompt length outside [2, P], a target length outside
        [0, T], ids outside [0, vocab_size) (when given), or a drop outside a row's target.
    """
    prompt, prompt_lengths, target, target_lengths = _check_raw(prompt, prompt_lengths, target, target_lengths,
                                                                vocab_size)
    B, P = prompt.shape
    T = target.shape[1]
    drop = jnp.asarray(drop)
    if drop.shape != (B, T) or drop.dtype != jnp.bool_:
        raise ValueError(f"drop must be bool [B, T]={(B, T)}, got {drop.dtype} {tuple(drop.shape)}")
    t_valid = jnp.arange(T)[None, :] < target_lengths[:, None]
    if not isinstance(drop, jax.core.Tracer) and not isinstance(target_lengths, jax.core.Tracer):
        if bool(np.any(np.asarray(drop) & ~np.asarray(t_valid))):
            raise ValueError("drop marks target columns at or past target_lengths (only real target tokens can be "
                             "dropped)")
    drop = drop & t_valid
    kept = t_valid & ~drop
    kept_before = jnp.cumsum(kept, axis=1) - kept  # kept tokens strictly before column j
    W = P + T
    rows = jnp.arange(B)[:, None]
    tokens = jnp.full((B, W), pad_id, jnp.int32)
    p_cols = jnp.where(jnp.arange(P)[None, :] < prompt_lengths[:, None], jnp.arange(P)[None, :], W)
    tokens = tokens.at[rows, p_cols].set(prompt, mode="drop")
    k_cols = jnp.where(kept, prompt_lengths[:, None] + kept_before, W)
    tokens = tokens.at[rows, k_cols].set(target, mode="drop")
    n_kept = kept.sum(1).astype(jnp.int32)
    # A dropped token goes into the gap after the last kept token before it (the prompt's last token if none).
    slots = jnp.where(drop, prompt_lengths[:, None] - 1 + kept_before, -1).astype(jnp.int32)
    return {
        "tokens": tokens,
        "positions": jnp.broadcast_to(jnp.arange(W, dtype=jnp.int32), (B, W)),
        "lengths": prompt_lengths + n_kept,
        "prompt_lengths": prompt_lengths,
        "slots": slots,
        "targets": target,
        "n_drops": drop.sum(1).astype(jnp.int32),
    }


def ilm_batch(key: jax.Array, prompt, prompt_lengths, target, target_lengths, *, pad_id: int = 0,
              vocab_size: int | None = None) -> dict[str, jax.Array]:
    """Returns a built ILM training batch: :func:`sample_drops` (official noise) then :func:`ilm_batch_from_drops`.

    A pure function of ``key`` and the arrays (the same key gives the same batch); jit-compatible.
    """
    T = jnp.shape(target)[-1] if jnp.ndim(target) == 2 else None
    if T is None:
        raise ValueError(f"target must be int token ids [B, T], got shape {jnp.shape(target)}")
    drop = sample_drops(key, jnp.asarray(target_lengths, jnp.int32), T)
    return ilm_batch_from_drops(prompt, prompt_lengths, target, target_lengths, drop, pad_id=pad_id,
                                vocab_size=vocab_size)


def ilm_targets(batch: dict, vocab_size: int) -> jax.Array:
    """Returns float32 [B, W, V] the official normalised targets ``c[i, v] / N`` of a built batch (0 when N = 0).

    The dense form of what :func:`ilm_loss` reads sparsely (``slots``, ``targets``); for tests and inspection.
    """
    slots, targets = batch["slots"], batch["targets"]
    B, T = slots.shape
    W = batch["tokens"].shape[1]
    dropped = slots >= 0
    counts = jnp.zeros((B, W, vocab_size), _F32)
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
    counts = counts.at[rows, jnp.where(dropped, slots, W), targets].add(dropped.astype(_F32), mode="drop")
    n = batch["n_drops"].astype(_F32)
    return counts / jnp.maximum(n, 1.0)[:, None, None]


# ------------------------------------------------------------------------------------------ loss
def _check_built(batch: Any, cfg: ModelConfig) -> None:
    if not isinstance(batch, dict) or any(k not in batch for k in _BATCH_KEYS):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"ilm_loss needs a built ILM batch with keys {list(_BATCH_KEYS)} (ilm_batch / "
                         f"ilm_batch_from_drops), got {got}")
    B, W = jnp.shape(batch["tokens"])
    if jnp.shape(batch["positions"]) != (B, W):
        raise ValueError(f"batch['positions'] must be [B, W]={(B, W)}, got {jnp.shape(batch['positions'])}")
    T = jnp.shape(batch["slots"])[1] if jnp.ndim(batch["slots"]) == 2 else -1
    if jnp.shape(batch["slots"]) != (B, T) or jnp.shape(batch["targets"]) != (B, T):
        raise ValueError(f"batch['slots'] and batch['targets'] must be [B, T] with B={B}, got "
                         f"{jnp.shape(batch['slots'])} and {jnp.shape(batch['targets'])}")
    if W > cfg.max_len:
        raise ValueError(f"the ILM rows are {W} columns wide, more than the model's max_len={cfg.max_len}")
    check_int_values(batch["tokens"], "batch['tokens']", 0, cfg.vocab_size)
    check_int_values(batch["targets"], "batch['targets']", 0, cfg.vocab_size)
    check_int_values(batch["lengths"], "batch['lengths']", 2, W, hi_closed=True)


def _stop_option(stop_weight, stop_class_weight) -> None:
    check_range(stop_weight, "stop_weight (lambda, the stop loss's weight)", 0.0, None)
    if stop_class_weight is not None:
        check_range(stop_class_weight, "stop_class_weight (the 'stop' class weight c; 'continue' gets 1 - c)",
                    0.0, 1.0)


def ilm_loss(params: dict, cfg: ModelConfig, batch: dict, *, stop_weight=0.001,
             stop_class_weight=0.9) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the P14 ILM loss of a built batch (module docstring), the official normalisation.

    ``loss = mean_b [ ce_b + stop_weight * w[z_b] * CE(stop head, z_b) ]`` with
    ``ce_b = -(1/N_b) sum_{dropped j} log q_b[slot_j, y_j]`` under the joint softmax over every
    (non-pad, non-CLS slot, token) pair. ``stop_weight`` (lambda) and ``stop_class_weight`` (c, or
    None for unweighted) may be runtime arrays. Metrics: ``ce``, ``stop_loss``, ``stop_accuracy``,
    ``n_drops`` (batch means).
    """
    _check_built(batch, cfg)
    _stop_option(stop_weight, stop_class_weight)
    tokens = jnp.asarray(batch["tokens"], jnp.int32)
    lengths = jnp.asarray(batch["lengths"], jnp.int32)
    B, W = tokens.shape
    logits, stop2 = ilm_forward(params, cfg, tokens, jnp.asarray(batch["positions"], jnp.int32), lengths)
    col = jnp.arange(W)[None, :]
    allowed = (col < lengths[:, None]) & (col != 0)  # pads and the CLS slot are out (create_mask)
    masked = jnp.where(allowed[:, :, None], logits, -jnp.inf)
    log_z = jax.nn.logsumexp(masked.reshape(B, -1), axis=-1)  # [B]: the joint normaliser
    slots = jnp.asarray(batch["slots"], jnp.int32)
    targets = jnp.asarray(batch["targets"], jnp.int32)
    dropped = slots >= 0
    picked = logits[jnp.arange(B)[:, None], jnp.maximum(slots, 0), targets]  # [B, T]
    n = batch["n_drops"].astype(_F32)
    ce = -jnp.sum(jnp.where(dropped, picked - log_z[:, None], 0.0), axis=1) / jnp.maximum(n, 1.0)

    label = (n > 0).astype(jnp.int32)  # 0 = stop (nothing dropped), 1 = continue
    logp2 = jax.nn.log_softmax(stop2, axis=-1)
    nll = -jnp.take_along_axis(logp2, label[:, None], axis=1)[:, 0]
    if stop_class_weight is None:
        w = jnp.ones_like(nll)
    else:
        c = jnp.asarray(stop_class_weight, _F32)
        w = jnp.where(label == 0, c, 1.0 - c)
    stop = w * nll
    per_row = ce + jnp.asarray(stop_weight, _F32) * stop
    metrics = {
        "ce": ce.mean(), "stop_loss": stop.mean(),
        "stop_accuracy": (jnp.argmax(stop2, axis=-1) == label).astype(_F32).mean(), "n_drops": n.mean(),
    }
    return per_row.mean(), metrics


def make_ilm_loss(*, stop_weight: float = 0.001, stop_class_weight: float | None = 0.9,
                  pad_id: int = 0) -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of the registered loss ``ilm``.

    ``batch``: the raw rows ``prompt`` [B, P], ``prompt_lengths`` [B], ``target`` [B, T],
    ``target_lengths`` [B] (the tokens the model writes; for ``tokjax.data.star_graphs`` pass each
    row's first ``target_lengths - 1`` tokens, i.e. without the ``[eos]``), and optionally ``drop``
    bool [B, T] (a fixed drop mask); without it the official noise is drawn from ``rng`` (the train
    loop's per-step key, so training is deterministic by step). A built batch (keys of
    :func:`ilm_batch_from_drops`) is used as it is. ``batch["ilm_stop_weight"]`` /
    ``batch["ilm_stop_class_weight"]`` override the options per step (runtime values).
    """
    _stop_option(stop_weight, stop_class_weight)
    if not isinstance(pad_id, (int, np.integer)) or isinstance(pad_id, bool):
        raise ValueError(f"pad_id must be an int token id, got {pad_id!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """P14 ILM: joint (gap x token) cross-entropy on randomly dropped target tokens + the weighted stop loss."""
        if not isinstance(batch, dict):
            raise ValueError(f"the ilm loss needs a dict batch, got {type(batch).__name__}")
        lam = batch.get("ilm_stop_weight", stop_weight)
        cw = batch.get("ilm_stop_class_weight", stop_class_weight)
        if all(k in batch for k in _BATCH_KEYS):
            built = batch
        else:
            need = ("prompt", "prompt_lengths", "target", "target_lengths")
            missing = [k for k in need if k not in batch]
            if missing:
                raise ValueError(f"the ilm loss needs batch keys {list(need)} (optionally 'drop'), or a built batch "
                                 f"(ilm_batch); missing {missing}")
            if "drop" in batch:
                built = ilm_batch_from_drops(batch["prompt"], batch["prompt_lengths"], batch["target"],
                                             batch["target_lengths"], batch["drop"], pad_id=pad_id,
                                             vocab_size=cfg.vocab_size)
            else:
                if rng is None:
                    raise ValueError("the ilm loss draws its drops from rng: pass a PRNG key (the train loop does) or "
                                     "batch['drop']")
                built = ilm_batch(rng, batch["prompt"], batch["prompt_lengths"], batch["target"],
                                  batch["target_lengths"], pad_id=pad_id, vocab_size=cfg.vocab_size)
        return ilm_loss(params, cfg, built, stop_weight=lam, stop_class_weight=cw)

    return loss_fn


def _ilm_factory(stop_weight, stop_class_weight, pad_id):
    return make_ilm_loss(stop_weight=float(stop_weight),
                         stop_class_weight=None if stop_class_weight is None else float(stop_class_weight),
                         pad_id=int(pad_id))


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("ilm", _ilm_factory, {"stop_weight": 0.001, "stop_class_weight": 0.9, "pad_id": 0},
                  doc="P14 insertion LM: joint (gap x token) CE on a random subset of dropped target tokens + "
                      "stop_weight * class-weighted stop-head CE; params need the stop head "
                      "(tokjax.losses.insertion.init_stop_head)", overwrite=True)


_register()
