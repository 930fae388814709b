"""Dual-Head Knowledge Distillation (P34): KD through an auxiliary head with a normalised binary KL.

Paper: *Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head*
(Yang et al.; official code penghui-yang/DHKD, read for this module). Training a single
linear classifier with both CE and a KD loss makes the two gradients conflict; DHKD keeps CE on
the main head and moves the KD loss to an auxiliary head on the same features (linear by
default), using the "normalised binary KL" of ``distiller_zoo/BinaryKLNorm.py``:

    BKL_norm(z_s, z_t) = T^2 * (1/N) * sum_i sum_c KL( Bern(1/2) || Bern(sigmoid((z_s,ic - z_t,ic) / T)) )
    L = gamma * CE(W_main h, y) + alpha * BKL_norm(W_aux h, z_T)                       (P34)

with T = 2 (``--BinaryKL_T``), gamma = 1 and alpha a tuned weight (``helper/loops.py``); the
official code clamps the sigmoid into [1e-8, 1 - 1e-8] (``eps`` here caps each log term at
-log eps instead, which is the same where float32 can represent it). Per class,
``KL(Bern(1/2) || Bern(sigmoid(d))) = (softplus(d) + softplus(-d)) / 2 - log 2``: zero iff
``z_s = z_t`` and unchanged by adding the same constant to both. Inference uses the main head.

Optional "GA" (``helper/optimizer.py``, PCGrad-style): with the per-loss parameter gradients
``g_ce`` and ``g_kd``, when ``<g_kd, g_ce> < 0`` the KD gradient is projected onto the normal
plane of ``g_ce`` before summing, so to first order the step never increases CE.
:func:`make_dual_head_kd_loss` implements it inside the train signature (a surrogate whose value
is the loss and whose gradient is the projected sum); ``grad="stop"`` instead keeps the KD loss
out of the trunk (only the auxiliary head learns from the teacher), an ablation.

Token-level use: position t of an LM is one "sample"; the per-token sum over the vocabulary is
reduced with the tokjax reductions (``token_mean`` = the official per-sample mean).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tokjax.losses._distill import (
    agreement, check_distill_factory, check_logits, check_temperature, hparam_value, read_distill_batch,
    reduce_per_token, token_ce,
)
from tokjax.losses._stats import token_count

__all__ = [
    "AUX_KEY", "GRAD_MODES", "aux_logits", "binary_kl_norm", "binary_kl_norm_per_token", "dual_head_kd",
    "init_aux_head", "make_dual_head_kd_loss", "project_conflicting",
]

AUX_KEY = "aux_head"
GRAD_MODES = ("sum", "project", "stop")
_F32 = jnp.float32
_LOG2 = math.log(2.0)


def binary_kl_norm_per_token(student_logits, teacher_logits, *, temperature=2.0, eps: float = 1e-8) -> jax.Array:
    """Returns float32 [...] ``T^2 sum_c KL(Bern(1/2) || Bern(sigmoid((z_s - z_t) / T)))`` over the last axis (P34).

    The teacher carries no gradient. ``eps`` > 0 caps each ``-log`` term at ``-log eps`` (the
    official clamp); ``eps=0`` leaves it exact.
    """
    check_temperature(temperature)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"eps must lie in [0, 0.5), got {eps!r}")
    tau = jnp.asarray(temperature, _F32)
    d = (jnp.asarray(student_logits, _F32) - jax.lax.stop_gradient(jnp.asarray(teacher_logits, _F32))) / tau
    neg_log_p, neg_log_q = jax.nn.softplus(-d), jax.nn.softplus(d)  # -log sigmoid(d), -log(1 - sigmoid(d))
    if eps > 0:
        cap = -math.log(eps)
        neg_log_p, neg_log_q = jnp.minimum(neg_log_p, cap), jnp.minimum(neg_log_q, cap)
    per_class = 0.5 * (neg_log_p + neg_log_q) - _LOG2
    return tau ** 2 * jnp.sum(per_class, axis=-1)


def binary_kl_norm(student_logits, teacher_logits, mask=None, *, temperature=2.0, eps: float = 1e-8,
                   reduction: str = "token_mean", normalizer=None) -> jax.Array:
    """Returns the reduced BKL_norm (P34) of logits [B, T, V] under ``mask`` [B, T] (0 for an empty mask)."""
    (s, t), m = check_logits(("student_logits", student_logits), ("teacher_logits", teacher_logits), mask=mask)
    return reduce_per_token(binary_kl_norm_per_token(s, t, temperature=temperature, eps=eps), m, reduction, normalizer)


def dual_head_kd(
    main_logits, aux_logits, teacher_logits, labels, mask=None, *, gamma=1.0, alpha=1.0, temperature=2.0,
    eps: float = 1e-8, reduction: str = "token_mean", normalizer=None,
) -> tuple[jax.Array, dict]:
    """Returns (``gamma * CE(main_logits, labels) + alpha * BKL_norm(aux_logits, teacher_logits)``, parts) (P34).

    ``main_logits`` [B, T, V_main], ``aux_logits`` and ``teacher_logits`` [B, T, V] (same V),
    ``labels`` int [B, T], ``mask`` [B, T]. ``gamma``, ``alpha``, ``temperature`` may be traced.
    ``parts``: ``{"ce": ..., "bkl": ...}`` (the unweighted terms). For a classifier, pass
    [N, 1, C] logits and [N, 1] labels.
    """
    (mn,), m = check_logits(("main_logits", main_logits), mask=mask)
    (ax, te), _ = check_logits(("aux_logits", aux_logits), ("teacher_logits", teacher_logits), mask=m)
    if ax.shape[:2] != mn.shape[:2]:
        raise ValueError(f"aux_logits shape {tuple(ax.shape)} must have the [batch, seq] of main_logits "
                         f"{tuple(mn.shape[:2])}")
    labels = jnp.asarray(labels)
    if labels.shape != mn.shape[:2] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be int [batch, seq] = {tuple(mn.shape[:2])}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    ce = reduce_per_token(token_ce(mn, labels), m, reduction, normalizer)
    bkl = binary_kl_norm(ax, te, m, temperature=temperature, eps=eps, reduction=reduction, normalizer=normalizer)
    loss = jnp.asarray(gamma, _F32) * ce + jnp.asarray(alpha, _F32) * bkl
    return loss, {"ce": ce, "bkl": bkl}


def _tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x.astype(_F32), y.astype(_F32)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def project_conflicting(g_main, g_aux):
    """Returns ``g_main + g_aux'`` where ``g_aux' = g_aux - (<g_aux, g_main> / |g_main|^2) g_main`` when that
    inner product is negative and ``g_aux`` otherwise (P34's GA, PCGrad onto the CE gradient); pytrees."""
    dot = _tree_vdot(g_aux, g_main)
    nrm = _tree_vdot(g_main, g_main)
    coef = jnp.where((dot < 0) & (nrm > 0), dot / jnp.where(nrm > 0, nrm, 1.0), 0.0)
    return jax.tree.map(lambda a, b: (a + b - coef * a).astype(a.dtype), g_main, g_aux)


def init_aux_head(params: dict, cfg, key: jax.Array, *, vocab_size: int | None = None, copy_main: bool = False) -> dict:
    """Returns ``params`` plus ``params["aux_head"] = {"kernel": [D, V], "bias": [V]}``, the P34 linear auxiliary head.

    ``vocab_size`` (default ``cfg.vocab_size``) must be the teacher's. The kernel is drawn like the
    model's other matrices (normal, std ``cfg.init_scale``), or copied from the main head with
    ``copy_main``. The forward ignores the extra entry, so the model still runs on these params.
    """
    from tokjax.model.forward import lm_head

    if not isinstance(params, dict):
        raise ValueError(f"params must be the model's parameter dict, got {type(params).__name__}")
    V = cfg.vocab_size if vocab_size is None else int(vocab_size)
    if copy_main:
        if V != cfg.vocab_size:
            raise ValueError(f"copy_main needs vocab_size == cfg.vocab_size={cfg.vocab_size}, got {V}")
        kernel = jnp.asarray(lm_head(params, cfg), _F32)
    else:
        kernel = cfg.init_scale * jax.random.normal(key, (cfg.d_model, V), _F32)
    return {**params, AUX_KEY: {"kernel": kernel, "bias": jnp.zeros((V,), _F32)}}


def aux_logits(params: dict, hidden: jax.Array) -> jax.Array:
    """Returns float32 [B, T, V] logits of the auxiliary head on final-normed ``hidden`` [B, T, D]."""
    if not isinstance(params, dict) or AUX_KEY not in params:
        raise ValueError(f"params has no {AUX_KEY!r} entry: add one with init_aux_head(params, cfg, key)")
    head = params[AUX_KEY]
    return jnp.einsum("btd,dv->btv", hidden.astype(_F32), head["kernel"].astype(_F32)) + head["bias"].astype(_F32)


def make_dual_head_kd_loss(
    teacher, *, gamma: float = 1.0, alpha: float = 1.0, temperature: float = 2.0, grad: str = "sum",
    eps: float = 1e-8, reduction: str = "token_mean",
) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: DHKD (P34) for a next-token student.

    ``params`` must carry the auxiliary head (:func:`init_aux_head`); ``teacher`` is a fixed
    ``(params, cfg)`` or tokjax.Model reading the same tokens (its vocabulary = the aux head's).
    Loss: ``gamma * CE(main head) + alpha * BKL_norm(aux head, teacher)``. ``grad``: ``"sum"``
    (plain), ``"project"`` (the GA gradient; the returned loss has the same value and its gradient
    is the projected sum) or ``"stop"`` (the KD term does not reach the trunk). Runtime overrides in
    ``batch["hparams"]``: ``gamma``, ``alpha``, ``temperature``. Metrics: ``loss``, ``ce``,
    ``bkl``, ``token_count``, ``teacher_agreement`` (main head), ``aux_agreement``, and with
    ``"project"`` ``grad_cos`` (cosine of the two gradients; < 0 means they conflicted).
    """
    fixed = check_distill_factory(reduction=reduction, temperature=temperature, teacher=teacher)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        if not isinstance(params, dict) or AUX_KEY not in params:
            raise ValueError(f"params has no {AUX_KEY!r} entry: add one with init_aux_head(params, cfg, key)")
        b = read_distill_batch(batch, fixed)
        (t_logits,) = b.fixed
        mask = b.mask
        g_w, a_w = hparam_value(batch, "gamma", gamma), hparam_value(batch, "alpha", alpha)
        tau = hparam_value(batch, "temperature", temperature)

        def parts(p):
            main, hidden = b.student_logits(p, cfg)
            aux = aux_logits(p, jax.lax.stop_gradient(hidden) if grad == "stop" else hidden)
            ce = b.ce(main, reduction)
            bkl = binary_kl_norm(aux, t_logits, mask, temperature=tau, eps=eps, reduction=reduction,
                                 normalizer=b.normalizer)
            return (g_w * ce, a_w * bkl), (ce, bkl, main, aux)

        metrics: dict[str, Any] = {}
        if grad == "project":
            (wce, wbkl), vjp, (ce, bkl, main, aux) = jax.vjp(parts, params, has_aux=True)
            one, zero = jnp.ones((), _F32), jnp.zeros((), _F32)
            (g_ce,), (g_kd,) = vjp((one, zero)), vjp((zero, one))
            g = jax.lax.stop_gradient(project_conflicting(g_ce, g_kd))
            value = jax.lax.stop_gradient(wce + wbkl)
            loss = value + _tree_vdot(params, g) - jax.lax.stop_gradient(_tree_vdot(params, g))
            cos = _tree_vdot(g_ce, g_kd) / jnp.maximum(jnp.sqrt(_tree_vdot(g_ce, g_ce) * _tree_vdot(g_kd, g_kd)), 1e-30)
            metrics["grad_cos"] = jax.lax.stop_gradient(cos)
        else:
            (wce, wbkl), (ce, bkl, main, aux) = parts(params)
            loss = wce + wbkl
        sg = jax.lax.stop_gradient
        metrics.update({"loss": loss, "ce": sg(ce), "bkl": sg(bkl), "token_count": token_count(mask),
                        "teacher_agreement": agreement(main, t_logits, mask),
                        "aux_agreement": agreement(aux, t_logits, mask)})
        return loss, metrics

    return loss_fn
