"""AMU-Tuning (P30): a logit bias from an auxiliary feature branch, fused with frozen zero-shot logits.

Paper: *AMU-Tuning: Effective Logit Bias for CLIP-based Few-shot Learning* (Tang, Lin, Wang, Zhu,
Hu; CVPR 2024; official code TJU-sjyj/AMU-Tuning, ``clip/amu.py`` and ``train.py``, read for this
module). The three parts of the name:

* **A**uxiliary features f_aux (MoCo v3 in the paper) feed a bias-free linear classifier W_aux
  initialised with the class means of the L2-normalised few-shot features; its logits are
  standardised per row: ``z_aux = norm(f_aux W_aux)``, ``norm(z) = (z - mean z) / std z``.
* **U**ncertainty-based fusion with the frozen zero-shot logits z_0 (CLIP: 100 cos(f, t_c)):

      z = z_0 + alpha * kappa(z_0) * z_aux                                           (P30, fusion)

  where kappa reads the zero-shot softmax p = softmax(z_0): ``"moment"`` (the paper's kurtosis
  gate) 1 / (kurt(p) / 250)^power with kurt the 4th standardised moment of p over classes,
  ``"entropy"`` exp(power * H(p) / log C), ``"max"`` 1 / max(p)^power, ``"energy"``
  1 / (2 logsumexp(p / 2))^power, or ``"none"`` (kappa = 1, the repository's default flag).
* **M**ulti-branch training: only W_aux is trained, on

      L = lambda * CE(z, y) + (1 - lambda) * CE(z_aux, y)                             (P30, loss)

  with alpha = 0.5, lambda = 0.35, power = 0.4 in the repository's run script / defaults.

The kurtosis gate depends on the number of classes C and on how the softmax mass spreads, not on
the top probability alone: a row whose softmax is one spike over a flat rest has kurtosis
(C^2 - 3C + 3)(C - 1) / C^2 (about C - 3) whatever the spike's height, so kappa is
(~C / 250)^-power there (0.58 at C = 1000, ImageNet, the paper's main benchmark; 1.47 at
C = 100; 4.29 at C = 10), and rises as the mass spreads (5.9 at a Gaussian-like kurtosis of 3). With few
classes and a near one-hot zero-shot softmax the gate is therefore a constant.

kappa carries no gradient here: in the paper the zero-shot branch is frozen, so this only matters
when a caller trains z_0 too. ``alpha``, ``lam`` and ``power`` are runtime arrays (a new value does
not recompile); ``kind`` is static. The std uses Bessel's correction (torch.std's default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_int_option, check_range, target_logprobs
from tokjax.model.ops import check_int_values

__all__ = ["UNCERTAINTY_KINDS", "amu_fuse", "amu_init", "amu_logits", "amu_loss", "logit_standardize",
           "uncertainty_factor"]

UNCERTAINTY_KINDS = ("moment", "entropy", "max", "energy", "none")
_F32 = jnp.float32
_TINY = 1e-12


def _check_kind(kind: str) -> None:
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty kind must be one of {UNCERTAINTY_KINDS}, got {kind!r}")


def _check_logits(z, name: str) -> jax.Array:
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"{name} must be [..., C] with C >= 2 classes, got shape {tuple(z.shape)}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {z.dtype}")
    return z.astype(_F32)


def _std(x, axis=-1):
    n = x.shape[axis]
    mu = jnp.mean(x, axis=axis, keepdims=True)
    return jnp.sqrt(jnp.sum((x - mu) ** 2, axis=axis, keepdims=True) / (n - 1))


def logit_standardize(z: jax.Array) -> jax.Array:
    """Returns ``(z - mean z) / std z`` over the last axis (unbiased std; rows with std 0 become 0)."""
    z = _check_logits(z, "logits")
    mu = jnp.mean(z, axis=-1, keepdims=True)
    sd = _std(z)
    return jnp.where(sd > 0, (z - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)


def uncertainty_factor(base_logits: jax.Array, kind: str = "moment", power=0.4) -> jax.Array:
    """Returns float32 [..., 1] the P30 fusion gate kappa(z_0) >= 0 from the zero-shot softmax (no gradient).

    ``kind`` is one of ``UNCERTAINTY_KINDS`` (see the module doc); ``power`` a runtime scalar >= 0.
    Confident zero-shot rows (peaked softmax: high kurtosis, high max) get a small kappa, so the
    auxiliary bias matters most where the zero-shot classifier is unsure.
    """
    _check_kind(kind)
    check_range(power, "power", lo=0.0)
    z = _check_logits(base_logits, "base_logits")
    power = jnp.asarray(power, _F32)
    p = jax.nn.softmax(jax.lax.stop_gradient(z), axis=-1)
    C = p.shape[-1]
    if kind == "none":
        k = jnp.ones(p.shape[:-1] + (1,), _F32)
    elif kind == "moment":
        mu = jnp.mean(p, axis=-1, keepdims=True)
        sd = jnp.maximum(_std(p), _TINY)
        kurt = jnp.mean(((p - mu) / sd) ** 4, axis=-1, keepdims=True)
        k = 1.0 / jnp.power(jnp.maximum(kurt / 250.0, _TINY), power)
    elif kind == "entropy":
        h = -jnp.sum(p * jnp.log(jnp.maximum(p, _TINY)), axis=-1, keepdims=True) / jnp.log(float(C))
        k = jnp.exp(power * h)
    elif kind == "max":
        k = 1.0 / jnp.power(jnp.max(p, axis=-1, keepdims=True), power)
    else:  # energy, as the repository computes it on the probabilities with tau = 2
        m = jnp.max(p, axis=-1, keepdims=True)
        energy = 2.0 * (jax.nn.logsumexp((p - m) / 2.0, axis=-1, keepdims=True) + m)
        k = 1.0 / jnp.power(jnp.maximum(energy, _TINY), power)
    return jax.lax.stop_gradient(k)


def amu_init(aux_features: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Returns the initial auxiliary classifier W_aux [D, C]: per-class sums of the L2-normalised ``aux_features``
    [N, D] divided by N / C (the class means for balanced few-shot sets, as the official ``Linear_Adapter``)."""
    f = jnp.asarray(aux_features, _F32)
    labels = jnp.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"aux_features must be [N, D], got shape {tuple(f.shape)}")
    if labels.shape != (f.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be int [N={f.shape[0]}], got shape {tuple(labels.shape)} dtype {labels.dtype}")
    check_int_option(num_classes, "num_classes", lo=2)
    check_int_values(labels, "labels", 0, num_classes)
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), _TINY)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=_F32)
    return f.T @ onehot / (f.shape[0] / num_classes)


def amu_logits(w_aux: jax.Array, aux_features: jax.Array) -> jax.Array:
    """Returns z_aux [..., C] = standardize(normalize(aux_features) @ w_aux), the P30 logit bias before fusion."""
    f = jnp.asarray(aux_features, _F32)
    w = jnp.asarray(w_aux, _F32)
    if w.ndim != 2 or f.ndim < 1 or f.shape[-1] != w.shape[0]:
        raise ValueError(f"aux_features [..., D] and w_aux [D, C] must agree on D, got {tuple(f.shape)} and "
                         f"{tuple(w.shape)}")
    f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), _TINY)
    return logit_standardize(f @ w)


def amu_fuse(base_logits: jax.Array, aux_logits: jax.Array, alpha=0.5, *, kind: str = "moment",
             power=0.4) -> jax.Array:
    """Returns the fused logits ``z_0 + alpha * kappa(z_0) * z_aux`` (P30); ``alpha`` a runtime scalar or [...] array."""
    z0 = _check_logits(base_logits, "base_logits")
    za = _check_logits(aux_logits, "aux_logits")
    if z0.shape != za.shape:
        raise ValueError(f"base_logits {tuple(z0.shape)} and aux_logits {tuple(za.shape)} must have the same shape")
    check_range(alpha, "alpha")
    a = jnp.asarray(alpha, _F32)
    if a.ndim:
        a = a[..., None]
    return z0 + a * uncertainty_factor(z0, kind, power) * za


def _ce(z, labels):
    return -target_logprobs(z, labels)


def amu_loss(
    w_aux: jax.Array, base_logits: jax.Array, aux_features: jax.Array, labels: jax.Array, *, alpha=0.5, lam=0.35,
    kind: str = "moment", power=0.4,
) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of P30's multi-branch training ``lam * CE(z, y) + (1 - lam) * CE(z_aux, y)``, mean over
    the batch, differentiable in ``w_aux`` (and ``aux_features``); ``base_logits`` [N, C] are the frozen zero-shot
    logits. Metrics: ``loss``, ``loss_fused``, ``loss_aux``, ``acc_fused``, ``acc_aux``, ``kappa_mean``."""
    check_range(lam, "lam", lo=0.0, hi=1.0)
    z0 = _check_logits(base_logits, "base_logits")
    labels = jnp.asarray(labels)
    if labels.shape != z0.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be int {tuple(z0.shape[:-1])}, got shape {tuple(labels.shape)} dtype "
                         f"{labels.dtype}")
    check_int_values(labels, "labels", 0, z0.shape[-1])
    za = amu_logits(w_aux, aux_features)
    if za.shape != z0.shape:
        raise ValueError(f"aux logits {tuple(za.shape)} must match base_logits {tuple(z0.shape)}")
    z = amu_fuse(z0, za, alpha, kind=kind, power=power)
    labels = labels.astype(jnp.int32)
    lf, la = jnp.mean(_ce(z, labels)), jnp.mean(_ce(za, labels))
    lam = jnp.asarray(lam, _F32)
    loss = lam * lf + (1.0 - lam) * la
    sg = jax.lax.stop_gradient
    metrics = {
        "loss": loss, "loss_fused": sg(lf), "loss_aux": sg(la),
        "acc_fused": jnp.mean(jnp.argmax(z, -1) == labels), "acc_aux": jnp.mean(jnp.argmax(za, -1) == labels),
        "kappa_mean": jnp.mean(uncertainty_factor(z0, kind, power)),
    }
    return loss, metrics
