"""Shared plumbing of the distillation losses (P12 InfiGFusion, P34 DHKD, P15 AlignDistil).

Full next-token distributions are compared here, so the losses take materialised logits
[B, T, V] (a teacher's and a student's) rather than TokenStats; they reduce with the same
:func:`~tokjax.losses.reduce_loss` conventions (mask, ``token_mean`` / ``seq_mean`` / ``sum``,
global ``normalizer``, 0 for an empty mask). :func:`kd_loss` is the plain Hinton KD baseline
``T^2 KL(p_teacher^T || p_student^T)`` and :func:`make_kd_loss` its train-signature factory.

Hyperparameters the losses take as arguments may be traced arrays (a new value does not
recompile); the factories read overrides from ``batch["hparams"][name]`` for the same reason.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range, target_logprobs
from tokjax.losses._next_token import _per_target
from tokjax.losses._stats import (
    TokenStats, check_reduction, check_token_ids, reduce_loss, shifted_completion_mask, token_count,
)
from tokjax.model.forward import Inputs, forward

__all__ = [
    "DistillBatch", "batch_mask", "check_distill_factory", "check_logits", "check_temperature", "hparam_value",
    "kd_loss", "kl_from_logits", "make_kd_loss", "model_logits", "read_distill_batch", "reduce_per_token", "token_ce",
]

_F32 = jnp.float32


def check_temperature(temperature, name: str = "temperature") -> None:
    """Returns None; raises ValueError when a concrete temperature is not a finite number > 0."""
    check_range(temperature, name, lo=0.0, lo_open=True)


def check_logits(*named: tuple[str, Any], mask=None, same_vocab: bool = True) -> tuple[list[jax.Array], jax.Array]:
    """Returns ([float32 logits ...], bool mask [B, T]) after checking ``(name, logits [B, T, V])`` pairs.

    All logits must share [B, T]; with ``same_vocab`` also V. ``mask`` (default all True) must be
    [B, T]. Raises ValueError naming the offending argument and the expected shape.
    """
    out = []
    for name, x in named:
        x = jnp.asarray(x)
        if x.ndim != 3 or x.shape[-1] < 1:
            raise ValueError(f"{name} must be logits [batch, seq, vocab], got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
        out.append(x.astype(_F32))
    first_name, first = named[0][0], out[0]
    for (name, _), x in zip(named[1:], out[1:]):
        if x.shape[:2] != first.shape[:2]:
            raise ValueError(f"{name} shape {tuple(x.shape)} must have the [batch, seq] of {first_name} "
                             f"{tuple(first.shape[:2])}")
        if same_vocab and x.shape[-1] != first.shape[-1]:
            raise ValueError(f"{name} vocab size {x.shape[-1]} must equal {first_name}'s {first.shape[-1]} "
                             f"(the distributions are compared entry by entry)")
    B, T = first.shape[:2]
    m = jnp.ones((B, T), bool) if mask is None else jnp.asarray(mask)
    if m.shape != (B, T):
        raise ValueError(f"mask shape {tuple(m.shape)} must be [batch, seq] = {(B, T)}")
    return out, m.astype(bool)


def kl_from_logits(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """Returns float32 [...] KL(softmax(p_logits) || softmax(q_logits)) over the last axis (>= 0)."""
    lp = jax.nn.log_softmax(p_logits.astype(_F32), axis=-1)
    lq = jax.nn.log_softmax(q_logits.astype(_F32), axis=-1)
    return jnp.maximum(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1), 0.0)


def token_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Returns float32 [B, T] -log softmax(logits)[labels] (labels clipped into the vocabulary)."""
    return -target_logprobs(logits, jnp.clip(jnp.asarray(labels, jnp.int32), 0, logits.shape[-1] - 1))


def reduce_per_token(per_token: jax.Array, mask: jax.Array, reduction: str = "token_mean",
                     normalizer=None) -> jax.Array:
    """Returns the scalar :func:`reduce_loss` of a per-token loss [B, T] under ``mask`` (0 when empty)."""
    check_reduction(reduction)
    per_token = jnp.where(mask, per_token, 0.0)  # masked entries never reach the sum nor its gradient
    stats = TokenStats.create(jnp.zeros(per_token.shape, _F32), mask)
    return reduce_loss(stats, reduction, per_token=per_token, normalizer=normalizer)


def kd_loss(
    student_logits, teacher_logits, mask=None, *, temperature=1.0, reduction: str = "token_mean", normalizer=None,
) -> jax.Array:
    """Returns the Hinton KD loss ``T^2 KL(softmax(z_t / T) || softmax(z_s / T))`` reduced over the mask.

    ``student_logits`` / ``teacher_logits`` [B, T, V] (the teacher carries no gradient), ``mask``
    [B, T] bool. ``temperature`` > 0 may be a traced scalar.
    """
    check_temperature(temperature)
    (s, t), m = check_logits(("student_logits", student_logits), ("teacher_logits", teacher_logits), mask=mask)
    tau = jnp.asarray(temperature, _F32)
    per_tok = tau ** 2 * kl_from_logits(jax.lax.stop_gradient(t) / tau, s / tau)
    return reduce_per_token(per_tok, m, reduction, normalizer)


# ------------------------------------------------------------------------- train-signature glue
def batch_mask(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Returns (tokens int32 [B, T+1], bool target mask [B, T]) of a next-token batch.

    The mask is :func:`shifted_completion_mask` of ``prompt_lengths`` / ``lengths`` and'ed with
    ``batch["mask"]`` ([B, T+1] per token or [B, T] per target) and document boundaries of
    ``segment_ids``, as in :func:`tokjax.losses.token_stats`.
    """
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise ValueError("batch must be a dict with 'tokens' int [B, T+1]")
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    B, S = tokens.shape
    mask = shifted_completion_mask(tokens, batch.get("prompt_lengths"), batch.get("lengths"))
    if batch.get("mask") is not None:
        mask &= _per_target(batch["mask"], B, S - 1, "mask", bool)
    seg = batch.get("segment_ids")
    if seg is not None:
        seg = jnp.asarray(seg)
        if seg.shape != (B, S):
            raise ValueError(f"batch['segment_ids'] must be [B, T+1]={B, S}, got {tuple(seg.shape)}")
        mask &= seg[:, 1:] == seg[:, :-1]
    return tokens.astype(jnp.int32), mask


def model_logits(params, cfg, tokens: jax.Array, segment_ids=None, *, stop_gradient: bool = False):
    """Returns (float32 logits [B, T, V], final-normed hidden [B, T, D]) of ``tokens[:, :-1]``."""
    if stop_gradient:
        params = jax.lax.stop_gradient(params)
    seg = None if segment_ids is None else jnp.asarray(segment_ids)[:, :-1]
    out = forward(params, cfg, Inputs(tokens=tokens[:, :-1], segment_ids=seg))
    logits, hidden = out.logits.astype(_F32), out.hidden
    if stop_gradient:
        logits, hidden = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(hidden)
    return logits, hidden


def hparam_value(batch, name: str, default) -> jax.Array:
    """Returns float32 ``batch["hparams"][name]`` when present, else ``default`` (a runtime override)."""
    hp = batch.get("hparams") if isinstance(batch, dict) else None
    value = hp[name] if isinstance(hp, dict) and name in hp else default
    return jnp.asarray(value, _F32)


def check_model_pair(model, name: str) -> tuple[Any, Any]:
    """Returns (params, cfg) of a ``(params, cfg)`` pair or a tokjax.Model; raises ValueError otherwise."""
    if hasattr(model, "params") and hasattr(model, "cfg"):
        return model.params, model.cfg
    if isinstance(model, tuple) and len(model) == 2:
        return model
    raise ValueError(f"{name} must be a (params, cfg) pair or a tokjax.Model, got {type(model).__name__}")


class DistillBatch(NamedTuple):
    """A next-token batch as the distillation factories read it, with the fixed models' logits.

    ``tokens`` int32 [B, T+1], ``mask`` bool [B, T] (see :func:`batch_mask`), ``segment_ids`` [B, T+1]
    or None, ``normalizer`` the batch's global denominator or None, ``fixed`` the float32 logits
    [B, T, V] of each fixed model (teacher, DPO / reverse model) in the order given, without gradient.
    """

    tokens: jax.Array
    mask: jax.Array
    segment_ids: Any
    normalizer: Any
    fixed: tuple

    def student_logits(self, params, cfg) -> tuple[jax.Array, jax.Array]:
        """Returns (float32 logits [B, T, V], final-normed hidden [B, T, D]) of the trained model."""
        return model_logits(params, cfg, self.tokens, self.segment_ids)

    def ce(self, logits: jax.Array, reduction: str) -> jax.Array:
        """Returns the reduced next-token cross-entropy of ``logits`` [B, T, V] against the batch's targets."""
        return reduce_per_token(token_ce(logits, self.tokens[:, 1:]), self.mask, reduction, self.normalizer)


def read_distill_batch(batch: dict, fixed_models=()) -> DistillBatch:
    """Returns the :class:`DistillBatch` of ``batch`` with the logits of each ``(params, cfg)`` in ``fixed_models``."""
    tokens, mask = batch_mask(batch)
    seg = batch.get("segment_ids")
    fixed = tuple(model_logits(p, c, tokens, seg, stop_gradient=True)[0] for p, c in fixed_models)
    return DistillBatch(tokens, mask, seg, batch.get("normalizer"), fixed)


def check_distill_factory(*, reduction: str, temperature, **models) -> list[tuple[Any, Any]]:
    """Returns the ``(params, cfg)`` of each keyword model (a pair or a tokjax.Model), in order, after checking
    what every distillation factory takes: the models, ``temperature`` > 0 and ``reduction``."""
    pairs = [check_model_pair(m, name) for name, m in models.items()]
    check_temperature(temperature)
    check_reduction(reduction)
    return pairs


def make_kd_loss(teacher, *, ce_weight: float = 1.0, kd_weight: float = 1.0, temperature: float = 1.0,
                 reduction: str = "token_mean") -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: ``ce_weight * CE + kd_weight * KD``.

    ``teacher`` is a fixed ``(params, cfg)`` or tokjax.Model reading the same tokens. Runtime
    overrides: ``batch["hparams"]`` keys ``ce_weight``, ``kd_weight``, ``temperature``.
    Metrics: ``loss``, ``ce``, ``kd``, ``token_count``, ``teacher_agreement`` (student argmax
    equals teacher argmax).
    """
    fixed = check_distill_factory(reduction=reduction, temperature=temperature, teacher=teacher)

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        b = read_distill_batch(batch, fixed)
        (t_logits,) = b.fixed
        s_logits, _ = b.student_logits(params, cfg)
        ce = b.ce(s_logits, reduction)
        kd = kd_loss(s_logits, t_logits, b.mask, temperature=hparam_value(batch, "temperature", temperature),
                     reduction=reduction, normalizer=b.normalizer)
        loss = hparam_value(batch, "ce_weight", ce_weight) * ce + hparam_value(batch, "kd_weight", kd_weight) * kd
        return loss, {"loss": loss, "ce": jax.lax.stop_gradient(ce), "kd": jax.lax.stop_gradient(kd),
                      "token_count": token_count(b.mask), "teacher_agreement": agreement(s_logits, t_logits, b.mask)}

    return loss_fn


def agreement(student_logits, teacher_logits, mask) -> jax.Array:
    """Returns the fraction of masked-in positions where the student's argmax equals the teacher's (0 if none)."""
    hit = (jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1)) & mask
    return jax.lax.stop_gradient(jnp.sum(hit) / jnp.maximum(token_count(mask), 1.0))
