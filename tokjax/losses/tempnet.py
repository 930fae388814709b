"""TempNet's DRO loss (P2): a KL-constrained distributionally robust cross-entropy with a learned tau.

Paper: *To Cool or not to Cool? Temperature Network Meets Large Foundation Models via DRO* (Qiu et
al., ICML 2024). Official code ``github.com/zhqiu/TempNet``, read for this module:
``megatron/model/tempnet.py::tau_cross_entropy`` and ``GPT-2/megatron/training.py::forward_step``
(GPT-2), ``tempnet.py::tau_cross_entropy`` / ``LLaMA_TempNet.forward`` (frozen LLaMA),
``LLaMA-2/megatron/core/tensor_parallel/cross_entropy.py::vocab_parallel_cross_entropy_temp``.
Per token, with logits z [V], target y and tau = TempNet(z):

    L(z, y) = tau * CE(z / tau, y) + (rho - log V) * tau
            = tau * log sum_k exp((z_k - z_y) / tau) - tau * log V + rho * tau              (P2, DRO loss)

which is the dual of ``max_{p: KL(p || uniform) <= rho} E_p[z_k - z_y]``; the code takes the mean
over tokens (here any tokjax reduction under the batch's mask). V is the logits' last axis (the
official code uses the padded vocabulary the same way). Gradients, as in the code:

* the TempNet reads the logits **detached** (``outputs.detach()`` in the GPT-2 trainer,
  ``logits.detach()`` in LLaMA-2), so it learns only through the tau factors, and the LM only
  through ``z / tau``; per token the LM's logit gradient is ``softmax(z / tau) - onehot(y)``, the
  cross-entropy gradient at tau = 1;
* ``base="joint"`` trains both (GPT-2 / LLaMA-2 pre-training); ``base="frozen"`` stops the LM's
  gradient (the official ``fix_llama()``); pair it with ``TrainConfig(trainable=("tempnet",))`` so
  the optimiser (and its weight decay) leaves the base bit-for-bit unchanged.

What tau learns. ``dL/dtau = H(softmax(z / tau)) - log V + rho`` does not depend on y (the
``-z_y`` term is constant in tau) and increases with tau (L is convex in tau). So on fixed logits
the per-token minimiser tau* is the temperature at which ``softmax(z / tau)`` has entropy
``log V - rho`` (equivalently KL(softmax(z/tau*) || uniform) = rho), clipped to the TempNet's
range: confident rows are heated, flat rows cooled. :func:`dro_optimal_tau` solves it (bisection
on the monotone derivative; the official code has a commented-out 10-step Newton version). Scripts:
rho 8.0 with V = 50304 (GPT-2), 8.5 with V = 32000 (LLaMA-2), i.e. a target entropy of 2-3 nats;
the argument default ``tempnet_rho`` is 1.0 (the default here); TempNet dropout 0.5.

The train-signature loss (:func:`make_tempnet_loss`, registered as ``tempnet`` and
``tempnet_dro``) reads the TempNet from ``params["tempnet"]`` (:func:`init_tempnet` adds it to a
model's params; the forward ignores the extra entry). ``rho`` may be overridden at run time by
``batch["hparams"]["rho"]``.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range
from tokjax.logits.tempnet import TAU_MAX, TAU_MIN, check_tempnet_params, tempnet_apply, tempnet_init
from tokjax.losses._distill import batch_mask, hparam_value, model_logits, reduce_per_token, token_ce
from tokjax.losses._stats import check_reduction, token_count
from tokjax.model.ops import check_int_values

__all__ = [
    "BASES", "TEMPNET_KEY", "dro_optimal_tau", "dro_tau_derivative", "init_tempnet", "make_tempnet_loss",
    "tempnet_dro_loss", "tempnet_dro_per_token",
]

TEMPNET_KEY = "tempnet"
BASES = ("joint", "frozen")
_F32 = jnp.float32


def _check_rho(rho) -> None:
    check_range(rho, "rho", lo=0.0)


def _check_logits_labels(logits, labels) -> tuple[jax.Array, jax.Array]:
    z = jnp.asarray(logits)
    if z.ndim < 1 or z.shape[-1] < 2 or not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"logits must be floating point [..., V] with V >= 2, got {z.dtype} {tuple(z.shape)}")
    y = jnp.asarray(labels)
    if y.shape != z.shape[:-1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels must be int {tuple(z.shape[:-1])} (the logits' leading shape), got "
                         f"{y.dtype} {tuple(y.shape)}")
    check_int_values(y, "labels", 0, z.shape[-1])
    return z.astype(_F32), y.astype(jnp.int32)


def tempnet_dro_per_token(logits: jax.Array, labels: jax.Array, tau, rho=1.0) -> jax.Array:
    """Returns float32 [...] ``tau * CE(z / tau, y) + (rho - log V) * tau`` (P2), the per-token DRO loss.

    ``logits`` [..., V], ``labels`` int [...], ``tau`` > 0 broadcasting to [...] (a TempNet's output
    or a free temperature; gradients flow into it), ``rho`` >= 0 (may be traced).
    """
    _check_rho(rho)
    check_range(tau, "tau", lo=0.0, lo_open=True)
    z, y = _check_logits_labels(logits, labels)
    tau = jnp.asarray(tau, _F32)
    if jnp.broadcast_shapes(tau.shape, y.shape) != y.shape:
        raise ValueError(f"tau shape {tuple(tau.shape)} must broadcast to the labels' shape {tuple(y.shape)}")
    V = z.shape[-1]
    ce = token_ce(z / tau[..., None], y)
    return tau * ce + (jnp.asarray(rho, _F32) - math.log(V)) * tau


def tempnet_dro_loss(logits, labels, tau, mask=None, *, rho=1.0, reduction: str = "token_mean",
                     normalizer=None) -> jax.Array:
    """Returns the reduced P2 DRO loss of logits [B, T, V] with per-token ``tau`` [B, T] under ``mask`` [B, T]
    (:func:`tokjax.losses.reduce_loss` conventions; 0 for an empty mask)."""
    check_reduction(reduction)
    per_tok = tempnet_dro_per_token(logits, labels, tau, rho)
    m = jnp.ones(per_tok.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if m.shape != per_tok.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} must equal the labels' shape {tuple(per_tok.shape)}")
    return reduce_per_token(per_tok, m, reduction, normalizer)


def dro_tau_derivative(logits: jax.Array, tau, rho=1.0) -> jax.Array:
    """Returns float32 [...] ``dL/dtau = H(softmax(z / tau)) - log V + rho`` of the P2 loss (the same for every
    target y); increasing in tau, zero at the per-token minimiser."""
    _check_rho(rho)
    z = jnp.asarray(logits, _F32)
    tau = jnp.asarray(tau, _F32)
    logp = jax.nn.log_softmax(z / tau[..., None], axis=-1)
    h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return h - math.log(z.shape[-1]) + jnp.asarray(rho, _F32)


def dro_optimal_tau(logits: jax.Array, rho=1.0, tau_min=TAU_MIN, tau_max=TAU_MAX, *, iters: int = 60) -> jax.Array:
    """Returns float32 [...] the per-token minimiser over tau in [tau_min, tau_max] of the P2 loss on fixed logits
    [..., V]: the root of :func:`dro_tau_derivative` by bisection in log tau (``iters`` halvings), or the bound
    the derivative's sign points to when there is no root inside (a flat row: tau_min)."""
    _check_rho(rho)
    check_range(tau_min, "tau_min", lo=0.0, lo_open=True)
    if not isinstance(tau_max, jax.core.Tracer) and not isinstance(tau_min, jax.core.Tracer) \
            and float(tau_min) >= float(tau_max):
        raise ValueError(f"tau_min must be smaller than tau_max, got {tau_min!r} and {tau_max!r}")
    z = jnp.asarray(logits, _F32)
    lo = jnp.full(z.shape[:-1], jnp.log(jnp.asarray(tau_min, _F32)))
    hi = jnp.full(z.shape[:-1], jnp.log(jnp.asarray(tau_max, _F32)))

    def body(_, lh):
        lo, hi = lh
        mid = 0.5 * (lo + hi)
        up = dro_tau_derivative(z, jnp.exp(mid), rho) > 0  # derivative positive: the minimiser is below mid
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    lo, hi = jax.lax.fori_loop(0, int(iters), body, (lo, hi))
    return jnp.exp(0.5 * (lo + hi))


def init_tempnet(params: dict, cfg, key: jax.Array, *, hidden: int = 256, tau_min: float = TAU_MIN,
                 tau_max: float = TAU_MAX) -> dict:
    """Returns ``params`` plus ``params["tempnet"]`` = :func:`tokjax.logits.tempnet.tempnet_init` over the model's
    vocabulary; the forward ignores the extra entry, so the model still runs on these params."""
    if not isinstance(params, dict):
        raise ValueError(f"params must be the model's parameter dict, got {type(params).__name__}")
    return {**params, TEMPNET_KEY: tempnet_init(key, cfg.vocab_size, hidden, tau_min, tau_max)}


def make_tempnet_loss(*, rho: float = 1.0, base: str = "joint", center: bool = True, dropout: float = 0.5,
                      reduction: str = "token_mean") -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: the P2 DRO loss of a next-token batch.

    ``params`` = the model's params plus ``params["tempnet"]`` (:func:`init_tempnet`). tau = TempNet(stop_gradient(z))
    with the training-time ``dropout`` drawn from ``rng`` (none without an rng). ``base``: ``"joint"`` trains the LM
    through z / tau and the TempNet through tau; ``"frozen"`` stops the LM's gradient (use it with
    ``TrainConfig(trainable=("tempnet",))``). Batch: ``tokens`` int [B, T+1] with the usual ``mask`` /
    ``prompt_lengths`` / ``lengths`` / ``segment_ids`` / ``normalizer``; ``batch["hparams"]["rho"]`` overrides rho.
    Metrics: ``loss``, ``nll_tau`` (mean CE of z / tau), ``nll`` (mean CE of z), ``tau_mean``, ``tau_lo`` /
    ``tau_hi`` (smallest / largest tau on the mask), ``token_count``.
    """
    _check_rho(rho)
    check_reduction(reduction)
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if not isinstance(center, bool):
        raise ValueError(f"center must be a bool, got {center!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    dropout = float(dropout)

    def loss_fn(params, cfg, batch, rng=None):
        if not isinstance(params, dict) or TEMPNET_KEY not in params:
            raise ValueError(f"params has no {TEMPNET_KEY!r} entry: add one with "
                             "tokjax.losses.tempnet.init_tempnet(params, cfg, key)")
        V, _ = check_tempnet_params(params[TEMPNET_KEY])
        if cfg is not None and V != cfg.vocab_size:
            raise ValueError(f"the TempNet reads {V} logits but the model's vocab_size is {cfg.vocab_size}")
        tokens, mask = batch_mask(batch)
        lm = {k: v for k, v in params.items() if k != TEMPNET_KEY}
        z, _ = model_logits(lm, cfg, tokens, batch.get("segment_ids"), stop_gradient=base == "frozen")
        tau = tempnet_apply(params[TEMPNET_KEY], jax.lax.stop_gradient(z), center=center, dropout=dropout,
                            key=None if rng is None else jax.random.fold_in(rng, 0x7A0))
        rho_v = hparam_value(batch, "rho", rho)
        labels = tokens[:, 1:]
        loss = tempnet_dro_loss(z, labels, tau, mask, rho=rho_v, reduction=reduction,
                                normalizer=batch.get("normalizer"))
        sg = jax.lax.stop_gradient
        n = jnp.maximum(token_count(mask), 1.0)
        any_tok = jnp.any(mask)
        mean = lambda x: jnp.sum(jnp.where(mask, sg(x), 0.0)) / n  # noqa: E731
        metrics = {
            "loss": loss, "nll_tau": mean(token_ce(z / tau[..., None], labels)), "nll": mean(token_ce(z, labels)),
            "tau_mean": mean(tau), "tau_lo": jnp.where(any_tok, jnp.min(jnp.where(mask, sg(tau), jnp.inf)), 0.0),
            "tau_hi": jnp.where(any_tok, jnp.max(jnp.where(mask, sg(tau), -jnp.inf)), 0.0),
            "token_count": token_count(mask),
        }
        return loss, metrics

    return loss_fn


def _tempnet_factory(rho, base, center, dropout, reduction):
    return make_tempnet_loss(rho=float(rho), base=base, center=center, dropout=float(dropout), reduction=reduction)


def _register() -> None:
    from tokjax.losses.registry import register_loss

    defaults = {"rho": 1.0, "base": "joint", "center": True, "dropout": 0.5, "reduction": "token_mean"}
    doc = ("P2 TempNet DRO loss tau*CE(z/tau) + (rho - log V)*tau, tau = TempNet(z detached); params need "
           "params['tempnet'] (tokjax.losses.tempnet.init_tempnet); base 'joint' or 'frozen' (with "
           "trainable: [tempnet])")
    register_loss("tempnet", _tempnet_factory, defaults, doc=doc, overwrite=True)
    register_loss("tempnet_dro", _tempnet_factory, defaults, doc=doc + " (alias of 'tempnet')", overwrite=True)


_register()
