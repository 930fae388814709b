"""InfiGFusion (P12): Graph-on-Logits Distillation (GLD) with a sorting-based Gromov-Wasserstein approximation.

Paper: *InfiGFusion: Graph-on-Logits Distillation via Efficient Gromov-Wasserstein for Model
Fusion* (Wang, Yan, Zhang, Zhou, Gu, Wu, Yang; arXiv 2505.13893, NeurIPS 2025). Code:
wyy-code/InfiGFusion and Reallm-Labs/InfiGFusion hold a README, the model and a training driver;
the GLD criterion itself is not released. From the abstract:

* keep the top-k logits of every position, ``z_t in R^k`` (k largest, in decreasing order);
* co-activation graph of a sequence: ``G = sum_t z_t z_t^T`` (k x k; nodes are the model's own
  top-k vocabulary channels, edges their joint activation). Here it is the *mean* over the
  sequence's masked-in positions, so its scale does not grow with length;
* ``L_GLD = GW(G_student, G_teacher)``, a Gromov-Wasserstein discrepancy, which compares the two
  graphs up to a relabelling of nodes (so teacher and student vocabularies need not match),
  approximated by a sorting-based closed form (O(n^4) -> O(n log n)); the full objective is
  ``L = L_SFT + lambda_1 L_ULD + lambda_2 L_GLD``.

What tokjax computes (the paper's exact sorted statistic, k and weights are [unverified: paper
body and criterion code were not available]). With uniform node weights and the squared loss,

    GW(A, B) = min over couplings pi of sum_{ijkl} (A_ij - B_kl)^2 pi_ik pi_jl
             = min over permutations P of (1/k^2) ||A - P B P^T||_F^2     (A, B positive semidefinite)

(co-activation graphs are PSD, so the negated cross term is concave in pi and the minimum sits at
a vertex of the coupling polytope, a permutation). Sorting gives two closed forms around it:

* ``method="aligned"`` (default): order each graph's nodes by degree ``d = G 1`` and evaluate the
  GW objective at that coupling, ``(1/k^2) ||A_sorted - B_sorted||_F^2`` -- an upper bound, exact
  when the degree order is an optimal matching (e.g. rank-one graphs ``a a^T`` with a >= 0: one
  position, or probabilities; by the rearrangement inequality);
* ``method="degree"``: ``(1/k^3) ||sort(d_A) - sort(d_B)||^2`` -- a lower bound (Cauchy-Schwarz on
  the rows, and sorting is the optimal 1-D matching), O(k log k) once the degrees are known.

Both are 0 for identical graphs, >= 0, and unchanged by relabelling either graph's nodes
(distinct degrees) or by permuting either model's vocabulary. The node features are the top-k
raw logits (``values="logits"``, the abstract's wording, default), log-probabilities
(``"logprobs"``: invariant to a per-position logit shift) or probabilities (``"probs"``).
Raw-logit graphs have a large scale (entries ~ logit^2), so lambda must be small; in the P12
experiment GLD did not help a small student at any weight tried (experiments/p12_infigfusion.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_int_option, check_range
from tokjax.losses._distill import (
    agreement, check_distill_factory, check_logits, check_temperature, hparam_value, kd_loss, read_distill_batch,
)
from tokjax.losses._stats import sequence_count, token_count

__all__ = [
    "DEFAULT_K", "GW_METHODS", "VALUES", "coactivation_graph", "graph_on_logits_loss", "make_gld_loss", "sorted_gw",
    "topk_features",
]

DEFAULT_K = 10
VALUES = ("logits", "logprobs", "probs")
GW_METHODS = ("aligned", "degree")
_F32 = jnp.float32


def _check_k(k, *vocab_sizes) -> int:
    check_int_option(k, "k (the number of top logits kept)", lo=1)
    for v in vocab_sizes:
        if k > v:
            raise ValueError(f"k={k} must not exceed the vocabulary size {v}")
    return k


def topk_features(logits: jax.Array, k: int = DEFAULT_K, *, temperature=1.0, values: str = "logits") -> jax.Array:
    """Returns float32 [..., k]: the k largest of ``logits / temperature`` (``values="logits"``, P12), of
    ``log_softmax(logits / temperature)`` (``"logprobs"``: invariant to a per-position logit shift) or of
    ``softmax(logits / temperature)`` (``"probs"``), in decreasing order; differentiable in the kept entries."""
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    check_temperature(temperature)
    x = jnp.asarray(logits, _F32) / jnp.asarray(temperature, _F32)
    _check_k(k, x.shape[-1])
    if values == "probs":
        x = jax.nn.softmax(x, axis=-1)
    elif values == "logprobs":
        x = jax.nn.log_softmax(x, axis=-1)
    return jax.lax.top_k(x, k)[0]


def coactivation_graph(logits: jax.Array, mask: jax.Array | None = None, *, k: int = DEFAULT_K, temperature=1.0,
                       values: str = "logits") -> jax.Array:
    """Returns float32 [B, k, k] ``G_b = mean over masked-in t of z_t z_t^T`` (P12), z_t the top-k features.

    ``logits`` [B, T, V], ``mask`` [B, T] (default all True). A row with no masked-in position
    gets the zero graph.
    """
    (x,), m = check_logits(("logits", logits), mask=mask)
    z = topk_features(x, k, temperature=temperature, values=values)
    w = m.astype(_F32)
    n = jnp.sum(w, axis=-1)
    g = jnp.einsum("bt,bti,btj->bij", w, z, z)
    return g / jnp.maximum(n, 1.0)[:, None, None]


def sorted_gw(g_student: jax.Array, g_teacher: jax.Array, method: str = "aligned") -> jax.Array:
    """Returns float32 [...] sorting-based Gromov-Wasserstein discrepancies between graphs [..., k, k] (P12).

    ``"aligned"``: ``(1/k^2) ||A[p, p] - B[q, q]||_F^2`` with p, q the nodes in order of degree (an
    upper bound on GW, exact for rank-one non-negative graphs). ``"degree"``:
    ``(1/k^3) ||sort(A 1) - sort(B 1)||^2`` (a lower bound on GW for PSD graphs). See the module doc.
    """
    if method not in GW_METHODS:
        raise ValueError(f"method must be one of {GW_METHODS}, got {method!r}")
    a, b = jnp.asarray(g_student, _F32), jnp.asarray(g_teacher, _F32)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape != b.shape:
        raise ValueError(f"graphs must be square [..., k, k] of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    k = a.shape[-1]
    da, db = jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)
    if method == "degree":
        return jnp.sum((jnp.sort(da, axis=-1) - jnp.sort(db, axis=-1)) ** 2, axis=-1) / k ** 3
    pa, pb = jnp.argsort(da, axis=-1), jnp.argsort(db, axis=-1)

    def reorder(g, p):
        g = jnp.take_along_axis(g, p[..., :, None], axis=-2)
        return jnp.take_along_axis(g, p[..., None, :], axis=-1)

    return jnp.sum((reorder(a, pa) - reorder(b, pb)) ** 2, axis=(-2, -1)) / k ** 2


def graph_on_logits_loss(
    student_logits, teacher_logits, mask=None, *, k: int = DEFAULT_K, temperature=1.0, values: str = "logits",
    method: str = "aligned", normalizer=None,
) -> jax.Array:
    """Returns the GLD loss (P12): the mean over sequences of ``sorted_gw(G_student, G_teacher)``.

    ``student_logits`` [B, T, V_s] and ``teacher_logits`` [B, T, V_t] (the vocabularies may
    differ: GW compares the graphs up to node relabelling; the teacher carries no gradient);
    ``mask`` [B, T] selects the positions entering each sequence's graph. The sum over rows with at
    least one masked-in position is divided by their number, or by ``normalizer`` (a global row
    count, for gradient accumulation); no such row gives 0 and a zero gradient. ``k`` (static),
    ``temperature`` (> 0, may be traced), ``values`` and ``method`` as in :func:`topk_features` /
    :func:`sorted_gw`.
    """
    (s, t), m = check_logits(("student_logits", student_logits), ("teacher_logits", teacher_logits), mask=mask,
                             same_vocab=False)
    _check_k(k, s.shape[-1], t.shape[-1])
    if normalizer is not None:
        check_range(normalizer, "normalizer", lo=0.0)
    gs = coactivation_graph(s, m, k=k, temperature=temperature, values=values)
    gt = coactivation_graph(jax.lax.stop_gradient(t), m, k=k, temperature=temperature, values=values)
    per_row = jnp.where(jnp.any(m, axis=-1), sorted_gw(gs, gt, method), 0.0)
    den = sequence_count(m) if normalizer is None else jnp.asarray(normalizer, _F32)
    ok = den > 0
    return jnp.where(ok, jnp.sum(per_row) / jnp.where(ok, den, 1.0), 0.0)


def make_gld_loss(
    teacher, *, k: int = DEFAULT_K, gld_weight: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
    temperature: float = 1.0, values: str = "logits", method: str = "aligned", reduction: str = "token_mean",
) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` distilling a fixed teacher with GLD (P12):

    ``ce_weight * CE(student, tokens) + kd_weight * KD(teacher -> student) + gld_weight * L_GLD``

    (the paper's ``L_SFT + lambda_1 L_ULD + lambda_2 L_GLD`` with plain KD standing in for ULD,
    since teacher and student here read the same tokens). ``teacher`` is ``(params, cfg)`` or a
    tokjax.Model. Batch: ``tokens`` [B, T+1] and the optional keys of
    :func:`tokjax.losses.token_stats` (mask, prompt_lengths, lengths, segment_ids, normalizer
    for the token terms); ``batch["hparams"]`` may override ``ce_weight``, ``kd_weight``,
    ``gld_weight``, ``temperature`` at run time. Metrics: ``loss``, ``ce``, ``kd``, ``gld``,
    ``token_count``, ``teacher_agreement``.
    """
    fixed = check_distill_factory(reduction=reduction, temperature=temperature, teacher=teacher)
    _check_k(k)
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    if method not in GW_METHODS:
        raise ValueError(f"method must be one of {GW_METHODS}, got {method!r}")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        b = read_distill_batch(batch, fixed)
        (t_logits,) = b.fixed
        mask = b.mask
        s_logits, _ = b.student_logits(params, cfg)
        tau = hparam_value(batch, "temperature", temperature)
        ce = b.ce(s_logits, reduction)
        kd = kd_loss(s_logits, t_logits, mask, temperature=tau, reduction=reduction, normalizer=b.normalizer)
        gld = graph_on_logits_loss(s_logits, t_logits, mask, k=k, temperature=tau, values=values, method=method)
        loss = (hparam_value(batch, "ce_weight", ce_weight) * ce + hparam_value(batch, "kd_weight", kd_weight) * kd
                + hparam_value(batch, "gld_weight", gld_weight) * gld)
        sg = jax.lax.stop_gradient
        return loss, {"loss": loss, "ce": sg(ce), "kd": sg(kd), "gld": sg(gld), "token_count": token_count(mask),
                      "teacher_agreement": agreement(s_logits, t_logits, mask)}

    return loss_fn
