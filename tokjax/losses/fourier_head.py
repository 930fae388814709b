"""Fourier head (P41): an output head over ordered bins whose pmf is a smooth, non-negative Fourier density.

Paper: *Fourier Head: Helping Large Language Models Learn Complex Probability Distributions*
(Gillman, Kauffman, Nakayama, Chen, Sun; ICLR 2025; official code nate-gillman/fourier-head,
``fourier_head.py``, read for this module). For a hidden vector h a linear layer gives 2(F+1)
reals, read as F+1 complex numbers a_0..a_F; then

    c_k    = sum_j a_{j+k} conj(a_j)                  k = 0..F   (autocorrelation: non-negative density)
    pdf(x) = 1/2 + Re sum_{k=1}^F (c_k / Re c_0) e^{i pi k x}     x in [-1, 1], integrates to 1
    pmf_i  = pdf(x_i) / sum_j pdf(x_j)                x_i the m bin centres of [-1, 1]
    logits = log(pmf + 1e-5)                          (the official "inverse softmax")
    reg    = 2 * mean_batch sum_k 2 pi^2 k^2 |c_k|^2  (the Fourier regulariser; loss = CE + gamma * reg)

pdf >= 0 because 2 Re(c_0) pdf(x) = |sum_j a_j e^{i pi j x}|^2. The official head divides the
linear layer's initial weight and bias by 100; :func:`fourier_head_init` does the same. Complex
numbers are kept as (real, imaginary) pairs so everything is plain float32 arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_int_option, check_range
from tokjax.model.ops import check_int_values

__all__ = [
    "FourierOutput", "autocorrelate", "bin_centers", "fourier_head", "fourier_head_init", "fourier_head_loss",
    "fourier_pdf", "fourier_regularizer",
]

_F32 = jnp.float32
#: The official head's constant inside log(pmf + const) ("const_inverse_softmax").
INVERSE_SOFTMAX_EPS = 1e-5


class FourierOutput(NamedTuple):
    """What :func:`fourier_head` computes.

    ``logits`` [..., m] = log(pmf + eps); ``pmf`` [..., m] (sums to 1); ``coeffs`` [..., F+1, 2]
    the autocorrelation c_k as (real, imaginary), unnormalised (the regulariser reads these).
    """

    logits: jax.Array
    pmf: jax.Array
    coeffs: jax.Array


def fourier_head_init(key: jax.Array, dim_in: int, num_frequencies: int, *, init_divisor: float = 100.0) -> dict:
    """Returns head params ``{"w": [dim_in, 2(F+1)], "b": [2(F+1)]}``: a torch-default linear init
    (uniform in +-1/sqrt(dim_in)) divided by ``init_divisor`` (100, as the official head)."""
    dim_in = check_int_option(dim_in, "dim_in", 1)
    F = check_int_option(num_frequencies, "num_frequencies", 1)
    check_range(init_divisor, "init_divisor", lo=0.0, lo_open=True)
    kw, kb = jax.random.split(key)
    bound = 1.0 / math.sqrt(dim_in)
    w = jax.random.uniform(kw, (dim_in, 2 * (F + 1)), _F32, -bound, bound) / init_divisor
    b = jax.random.uniform(kb, (2 * (F + 1),), _F32, -bound, bound) / init_divisor
    return {"w": w, "b": b}


def autocorrelate(re: jax.Array, im: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (Re c, Im c), each [..., n], of c_k = sum_j a_{j+k} conj(a_j) for a = re + i im [..., n]."""
    n = re.shape[-1]
    out_re, out_im = [], []
    for k in range(n):  # n = F+1 is small and static
        ur, ui = re[..., k:], im[..., k:]
        vr, vi = re[..., : n - k], im[..., : n - k]
        out_re.append(jnp.sum(ur * vr + ui * vi, axis=-1))
        out_im.append(jnp.sum(ui * vr - ur * vi, axis=-1))
    return jnp.stack(out_re, -1), jnp.stack(out_im, -1)


def bin_centers(num_bins: int) -> jax.Array:
    """Returns float32 [num_bins] centres of num_bins equal bins of [-1, 1]."""
    m = check_int_option(num_bins, "num_bins", 1)
    edges = np.linspace(-1.0, 1.0, m + 1)
    return jnp.asarray((edges[:-1] + edges[1:]) / 2, _F32)


def _normalised(coeffs: jax.Array) -> tuple[jax.Array, jax.Array]:
    c0 = coeffs[..., 0:1, 0]
    safe = jnp.where(c0 > 0, c0, 1.0)  # a = 0 (all-zero head output): the uniform density
    scale = jnp.where(c0 > 0, 1.0 / safe, 0.0)
    return coeffs[..., 1:, 0] * scale, coeffs[..., 1:, 1] * scale


def fourier_pdf(coeffs: jax.Array, x: jax.Array) -> jax.Array:
    """Returns float32 [..., len(x)] the Fourier density 1/2 + Re sum_k (c_k / Re c_0) e^{i pi k x} (P41) at points
    ``x`` [n] in [-1, 1], from ``coeffs`` [..., F+1, 2] as returned in :class:`FourierOutput`."""
    coeffs = jnp.asarray(coeffs, _F32)
    if coeffs.ndim < 2 or coeffs.shape[-1] != 2:
        raise ValueError(f"coeffs must be [..., F+1, 2] (real, imaginary), got shape {tuple(coeffs.shape)}")
    x = jnp.asarray(x, _F32)
    if x.ndim != 1:
        raise ValueError(f"x must be a 1-D array of points in [-1, 1], got shape {tuple(x.shape)}")
    cr, ci = _normalised(coeffs)
    F = cr.shape[-1]
    theta = jnp.pi * jnp.arange(1, F + 1, dtype=_F32)[:, None] * x[None, :]  # [F, n]
    return 0.5 + cr @ jnp.cos(theta) - ci @ jnp.sin(theta)


def fourier_head(params: dict, hidden: jax.Array, num_bins: int, *, eps: float = INVERSE_SOFTMAX_EPS) -> FourierOutput:
    """Returns the Fourier head's :class:`FourierOutput` for ``hidden`` [..., D] over ``num_bins`` ordered bins (P41).

    ``params`` from :func:`fourier_head_init` (F = w.shape[1] / 2 - 1 frequencies). The pmf is the
    density evaluated at the bin centres and renormalised; ``logits = log(pmf + eps)``.
    """
    m = check_int_option(num_bins, "num_bins", 1)
    if not isinstance(params, dict) or set(params) != {"w", "b"}:
        raise ValueError("params must be the dict {'w': [D, 2(F+1)], 'b': [2(F+1)]} from fourier_head_init")
    w, b = jnp.asarray(params["w"]), jnp.asarray(params["b"])
    if w.ndim != 2 or w.shape[1] % 2 or w.shape[1] < 4 or b.shape != (w.shape[1],):
        raise ValueError(f"params w must be [D, 2(F+1)] with F >= 1 and b [2(F+1)], got {tuple(w.shape)} and "
                         f"{tuple(b.shape)}")
    hidden = jnp.asarray(hidden)
    if hidden.ndim < 1 or hidden.shape[-1] != w.shape[0]:
        raise ValueError(f"hidden must be [..., D={w.shape[0]}], got shape {tuple(hidden.shape)}")
    check_range(eps, "eps", lo=0.0)
    n = w.shape[1] // 2
    a = jnp.einsum("...d,dk->...k", hidden.astype(_F32), w.astype(_F32)) + b.astype(_F32)
    cre, cim = autocorrelate(a[..., :n], a[..., n:])
    coeffs = jnp.stack([cre, cim], -1)
    pdf = fourier_pdf(coeffs, bin_centers(m))
    pdf = jnp.maximum(pdf, 0.0)  # >= 0 in exact arithmetic; clip float round-off
    pmf = pdf / jnp.sum(pdf, axis=-1, keepdims=True)
    return FourierOutput(logits=jnp.log(pmf + eps), pmf=pmf, coeffs=coeffs)


def fourier_regularizer(coeffs: jax.Array) -> jax.Array:
    """Returns the P41 regulariser ``2 * mean_batch sum_k 2 pi^2 k^2 |c_k|^2`` of unnormalised ``coeffs`` [..., F+1, 2]
    (the mean runs over every leading axis, as the official head's mean over the flattened batch)."""
    coeffs = jnp.asarray(coeffs, _F32)
    k = jnp.arange(coeffs.shape[-2], dtype=_F32)
    per_row = jnp.sum(2.0 * jnp.pi**2 * k**2 * jnp.sum(coeffs**2, axis=-1), axis=-1)
    return 2.0 * jnp.mean(per_row)


def fourier_head_loss(
    params: dict, hidden: jax.Array, labels: jax.Array, num_bins: int, *, gamma=0.0, mask: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): mean cross-entropy of ``labels`` [...] (bin ids) under the Fourier head's logits plus
    ``gamma`` (a runtime scalar; official Atari runs use 1e-6) times :func:`fourier_regularizer` (P41).

    ``mask`` [...] (optional) excludes entries from the mean (0 when all are masked). Metrics:
    ``loss``, ``nll`` (the CE term), ``reg`` (the unscaled regulariser).
    """
    m = check_int_option(num_bins, "num_bins", 1)
    check_range(gamma, "gamma", lo=0.0)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer bin ids, got dtype {labels.dtype}")
    if labels.shape != jnp.shape(hidden)[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden's leading dims "
                         f"{tuple(jnp.shape(hidden)[:-1])}")
    check_int_values(labels, "labels", 0, m)
    out = fourier_head(params, hidden, m)
    nll = -jnp.take_along_axis(out.logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    w = jnp.ones(nll.shape, _F32) if mask is None else jnp.asarray(mask).astype(_F32)
    if w.shape != nll.shape:
        raise ValueError(f"mask shape {tuple(w.shape)} must equal labels shape {tuple(nll.shape)}")
    den = jnp.sum(w)
    ce = jnp.where(den > 0, jnp.sum(w * nll) / jnp.where(den > 0, den, 1.0), 0.0)
    reg = fourier_regularizer(out.coeffs)
    loss = ce + jnp.asarray(gamma, _F32) * reg
    return loss, {"loss": loss, "nll": jax.lax.stop_gradient(ce), "reg": jax.lax.stop_gradient(reg)}
