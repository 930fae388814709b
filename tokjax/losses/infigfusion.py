"""InfiGFusion (P12): Graph-on-Logits Distillation (GLD) over vocabulary channels.

Paper: *InfiGFusion: Graph-on-Logits Distillation via Efficient Gromov-Wasserstein for Model
Fusion* (Wang, Yan, Zhang, Zhou, Gu, Wu, Yang; arXiv 2505.13893, NeurIPS 2025). The released code
(every commit of wyy-code/InfiGFusion and Reallm-Labs/InfiGFusion) holds a README, the framework
figure ("Sort & TopK", "View as Nodes", "Create Graphs"), deepspeed configs and, in Reallm-Labs'
history only, a training driver ``distillation_multi_zero3.py`` that imports
``criterions.build_criterion`` and a loader ``code/data_utils/distill_datasets_multi.py``; the
``criterions`` package, i.e. the GLD loss and its sorted GW, is not released. So the statistic
below follows the paper's own words (abstract): "we retain the top-k logits per output and
aggregate their outer products across sequence positions to form a global co-activation graph,
where nodes represent vocabulary channels and edges quantify their joint activations".

Graph. For position t with features ``x_t in R^V`` (the logits / tau, or their log-softmax or
softmax, ``values``), keep the top-k channels and zero the rest:

    z_t[i] = x_t[i] if i is among the k largest entries of x_t, else 0          (topk_features)
    G = sum_t w_t z_t z_t^T,   w_t = m_t / sum_t m_t                             (coactivation_graph)

a V x V graph whose nodes are token ids: ``G[i, j]`` is the mean over the sequence's masked-in
positions of ``z_t[i] z_t[j]``, non-zero only where both channels were kept at a position. Its
active nodes are the union over the sequence's positions of the kept ids (at most ``k * T``): one
graph per sequence, since the paper aggregates "across sequence positions" into a "global" graph
(a per-position graph would be the rank-one ``z_t z_t^T``, with no co-activation to learn). The
paper sums over t; the mean keeps the scale independent of the length.

Comparison, ``L_GLD = mean over sequences of D(G_student, G_teacher)``, three ways:

* ``method="shared_vocab"`` (default; teacher and student share a vocabulary, as in every tokjax
  use): nodes are matched by token id and the graphs are compared on the union of both models'
  active nodes ``N`` (``n = |N|``), i.e. the Gromov-Wasserstein objective with uniform node weights
  at the token-id coupling,

      D = (1/n^2) sum_{i, j in N} (G_s[i, j] - G_t[i, j])^2.

  It is 0 only when the two graphs are equal, so a student whose logits are a vocabulary
  permutation of the teacher's (one permutation, or one per position) pays for every kept channel
  it moves. It never builds a V x V matrix: with ``u_t = z^s_t - z^t_t``, ``v_t = z^s_t + z^t_t``,
  ``G_s - G_t = (M + M^T) / 2`` with ``M = sum_t w_t u_t v_t^T``, so
  ``||G_s - G_t||_F^2 = (1/2) sum_{t,t'} w_t w_t' [(u_t.u_t')(v_t.v_t') + (v_t.u_t')(v_t'.u_t)]`` from
  three T x T Gram matrices (O(T^2 V)), each term proportional to the difference (no cancellation
  of two large squares).

* ``method="aligned"`` / ``"degree"``: the paper's sorting-based closed forms of GW, which compare
  the graphs up to a relabelling of nodes, for when teacher and student vocabularies differ (then
  nothing matches a student channel to a teacher channel). Each graph is taken on its own active
  nodes (at most ``min(V, k T)`` of them, a static budget); the smaller node set is padded with
  isolated nodes so both have ``n = max(n_s, n_t)`` nodes, each of weight 1/n. With the squared loss

      GW(A, B) = min over couplings pi of sum_{ijkl} (A_ij - B_kl)^2 pi_ik pi_jl
               = min over permutations P of (1/n^2) ||A - P B P^T||_F^2     (A, B positive semidefinite)

  (co-activation graphs are PSD, so the negated cross term is concave in pi and the minimum sits
  at a vertex of the coupling polytope, a permutation). ``"aligned"``: order each graph's n nodes
  by decreasing degree ``d = G 1`` (padding nodes have degree 0) and evaluate the GW objective at that
  coupling, ``(1/n^2) ||A_sorted - B_sorted||_F^2``: an upper bound, exact when the degree order is
  an optimal matching (e.g. rank-one graphs ``a a^T`` with a >= 0: one position, or probabilities;
  by the rearrangement inequality). ``"degree"``: ``(1/n^3) ||sort(d_A) - sort(d_B)||^2`` over the
  n nodes (padding nodes have degree 0): a lower bound (Cauchy-Schwarz on the rows, and sorting is
  the optimal 1-D matching), O(n log n) once the degrees are known. Being relabelling-invariant,
  both are 0 when the student applies one vocabulary permutation at every position; permutations
  that differ across positions change the graph's structure and are (generically) seen.

All three are >= 0 and 0 for identical logits. Which of the paper's sorted statistics (degree,
row norms) and which k and weights it uses are [unverified: paper body and criterion code were
not available]. The features are the top-k raw logits (``values="logits"``, the abstract's word,
default), log-probabilities (``"logprobs"``: invariant to a per-position logit shift) or
probabilities (``"probs"``). ``sorted_gw`` is the graph-level closed form; ``graph_on_logits_loss``
builds the graphs from logits; ``make_gld_loss`` is the paper's ``L_SFT + lambda_1 L_KD + lambda_2
L_GLD`` training loss.

Verified (tests/losses/test_infigfusion.py): features and graphs against numpy loops over
positions and token ids; ``"shared_vocab"`` against the dense V x V graphs; the sorted forms
bracket brute-force exact GW (padding included) and ``"aligned"`` equals it on rank-one
non-negative graphs; the issue-15 property that a student whose logits are a per-position
vocabulary permutation of the teacher's has GLD > 0 whenever a kept channel moves and GLD = 0 for
identical logits (the earlier rank-slot graphs gave 0 for every permutation); gradients against
finite differences. Not verified against the authors' code (unreleased). Experiment:
experiments/p12_infigfusion.py (GLD did not improve a distilled tiny student; RESULTS.md).
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
GW_METHODS = ("shared_vocab", "aligned", "degree")
_SORTED = ("aligned", "degree")
_F32 = jnp.float32


def _check_k(k, *vocab_sizes) -> int:
    check_int_option(k, "k (the number of top logits kept)", lo=1)
    for v in vocab_sizes:
        if k > v:
            raise ValueError(f"k={k} must not exceed the vocabulary size {v}")
    return k


def _check_method(method, allowed=GW_METHODS) -> str:
    if method not in allowed:
        raise ValueError(f"method must be one of {allowed}, got {method!r}")
    return method


def _kept(x: jax.Array, k: int) -> jax.Array:
    """Returns bool [..., V]: True at the k largest entries of each row (ties to the lower id, as lax.top_k)."""
    idx = jax.lax.top_k(x, k)[1]
    return jnp.put_along_axis(jnp.zeros(x.shape, bool), idx, True, axis=-1, inplace=False)


def _transformed(logits, temperature, values) -> jax.Array:
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    check_temperature(temperature)
    x = jnp.asarray(logits, _F32) / jnp.asarray(temperature, _F32)
    if values == "probs":
        return jax.nn.softmax(x, axis=-1)
    if values == "logprobs":
        return jax.nn.log_softmax(x, axis=-1)
    return x


def topk_features(logits: jax.Array, k: int = DEFAULT_K, *, temperature=1.0, values: str = "logits") -> jax.Array:
    """Returns float32 [..., V]: ``z[i] = x[i]`` at the k largest entries of each row of x, else 0 (P12).

    ``x`` is ``logits / temperature`` (``values="logits"``), its ``log_softmax`` (``"logprobs"``:
    invariant to a per-position logit shift) or its ``softmax`` (``"probs"``). Entry i is the
    feature of vocabulary channel i (the graph node), so a permutation of the vocabulary permutes
    the output the same way. Differentiable in the kept entries; the others get no gradient.
    """
    x = _transformed(logits, temperature, values)
    _check_k(k, x.shape[-1])
    return jnp.where(_kept(jax.lax.stop_gradient(x), k), x, 0.0)


def _features(logits, m, k, temperature, values):
    """Returns (z [B, T, V] with masked-out positions zeroed, active nodes [B, V], weights w [B, T])."""
    # masked-out positions may hold anything (padding, inf); they must not reach a value or a gradient
    x = _transformed(jnp.where(m[..., None], logits, 0.0), temperature, values)
    keep = _kept(jax.lax.stop_gradient(x), k) & m[..., None]
    w = m.astype(_F32)
    w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1.0)
    return jnp.where(keep, x, 0.0), jnp.any(keep, axis=1), w


def coactivation_graph(logits: jax.Array, mask: jax.Array | None = None, *, k: int = DEFAULT_K, temperature=1.0,
                       values: str = "logits") -> jax.Array:
    """Returns float32 [B, V, V] ``G_b = mean over masked-in t of z_t z_t^T`` (P12), z_t = :func:`topk_features`.

    Nodes are vocabulary channels: ``G[b, i, j]`` is the mean joint activation of tokens i and j,
    0 unless both were among a position's top k. ``logits`` [B, T, V], ``mask`` [B, T] (default
    all True); a row with no masked-in position gets the zero graph. This materialises V x V per
    row (for inspection and small vocabularies); :func:`graph_on_logits_loss` never does.
    """
    (x,), m = check_logits(("logits", logits), mask=mask)
    z, _, w = _features(x, m, k, temperature, values)
    return jnp.einsum("bt,bti,btj->bij", w, z, z)


def _pad_nodes(a: jax.Array, valid: jax.Array, n: int):
    pad = n - a.shape[-1]
    if pad == 0:
        return a, valid
    a = jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad), (0, pad)])
    return a, jnp.pad(valid, [(0, 0)] * (valid.ndim - 1) + [(0, pad)])


def sorted_gw(g_student: jax.Array, g_teacher: jax.Array, method: str = "aligned", *, valid_student=None,
              valid_teacher=None) -> jax.Array:
    """Returns float32 [...] sorting-based Gromov-Wasserstein discrepancies between graphs [..., n, n] (P12).

    ``valid_student`` / ``valid_teacher`` (bool [..., n], default all True) mark each graph's real
    nodes; the others are ignored (their rows and columns are zeroed). With ``n_s`` and ``n_t`` real
    nodes, both graphs are compared on ``n = max(n_s, n_t)`` nodes of weight 1/n, the smaller one
    padded with isolated nodes. ``"aligned"``: ``(1/n^2) ||A[p, p] - B[q, q]||_F^2`` with p, q the
    n nodes in order of decreasing degree (padding nodes have degree 0; an upper bound on GW, exact
    for rank-one non-negative graphs). ``"degree"``: ``(1/n^3) ||sort(d_A) - sort(d_B)||^2`` over the n nodes
    (padding nodes have degree 0; a lower bound on GW for PSD graphs). Both are invariant to
    relabelling either graph's nodes (distinct degrees). See the module doc.
    """
    _check_method(method, _SORTED)
    a, b = jnp.asarray(g_student, _F32), jnp.asarray(g_teacher, _F32)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or b.ndim != a.ndim or b.shape[-1] != b.shape[-2] \
            or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"graphs must be square [..., n, n] with the same leading shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    va = jnp.ones(a.shape[:-1], bool) if valid_student is None else jnp.asarray(valid_student, bool)
    vb = jnp.ones(b.shape[:-1], bool) if valid_teacher is None else jnp.asarray(valid_teacher, bool)
    if va.shape != a.shape[:-1] or vb.shape != b.shape[:-1]:
        raise ValueError(f"valid_student / valid_teacher must be [..., n] matching the graphs, got "
                         f"{tuple(va.shape)} for {tuple(a.shape)} and {tuple(vb.shape)} for {tuple(b.shape)}")
    n = max(a.shape[-1], b.shape[-1])
    a, va = _pad_nodes(a, va, n)
    b, vb = _pad_nodes(b, vb, n)
    a = jnp.where(va[..., :, None] & va[..., None, :], a, 0.0)
    b = jnp.where(vb[..., :, None] & vb[..., None, :], b, 0.0)
    na, nb = jnp.sum(va, axis=-1), jnp.sum(vb, axis=-1)
    nu_int = jnp.maximum(jnp.maximum(na, nb), 1)
    nu = nu_int.astype(_F32)
    da, db = jnp.sum(a, axis=-1), jnp.sum(b, axis=-1)  # 0 on padding nodes

    def used(v, nv):
        # the real nodes plus (nu - nv) padding nodes; any other slot is left out
        slot = jnp.cumsum(~v, axis=-1) - 1
        return v | (slot < (nu_int - nv)[..., None])

    ua, ub = used(va, na), used(vb, nb)
    if method == "degree":
        sa = jnp.sort(jnp.where(ua, da, jnp.inf), axis=-1)
        sb = jnp.sort(jnp.where(ub, db, jnp.inf), axis=-1)
        inside = jnp.arange(n) < nu_int[..., None]
        return jnp.sum(jnp.where(inside, sa - jnp.where(inside, sb, 0.0), 0.0) ** 2, axis=-1) / nu ** 3

    def reorder(g, d, u):
        p = jnp.argsort(jnp.where(u, -d, jnp.inf), axis=-1, stable=True)
        g = jnp.take_along_axis(g, p[..., :, None], axis=-2)
        return jnp.take_along_axis(g, p[..., None, :], axis=-1)

    return jnp.sum((reorder(a, da, ua) - reorder(b, db, ub)) ** 2, axis=(-2, -1)) / nu ** 2


def _shared_vocab_gw(zs, zt, active_s, active_t, w) -> jax.Array:
    """Returns float32 [B]: (1/n^2) ||G_s - G_t||_F^2 over the union of active nodes, from T x T Grams."""
    u, v = zs - zt, zs + zt
    kuu = jnp.einsum("bti,bsi->bts", u, u)
    kvv = jnp.einsum("bti,bsi->bts", v, v)
    c = jnp.einsum("bti,bsi->bts", v, u)
    ww = w[:, :, None] * w[:, None, :]
    sq = 0.5 * jnp.sum(ww * (kuu * kvv + c * jnp.swapaxes(c, -1, -2)), axis=(-2, -1))
    n = jnp.maximum(jnp.sum(active_s | active_t, axis=-1), 1).astype(_F32)
    return jnp.maximum(sq, 0.0) / n ** 2


def _active_subgraph(z, active, w, budget):
    """Returns (graph [B, n, n] on the active nodes, valid [B, n]); n = budget >= the number of active nodes."""
    _, nodes = jax.lax.top_k(active.astype(_F32), budget)  # active ids first
    zn = jnp.take_along_axis(z, nodes[:, None, :], axis=-1)
    return jnp.einsum("bt,bti,btj->bij", w, zn, zn), jnp.take_along_axis(active, nodes, axis=-1)


def graph_on_logits_loss(
    student_logits, teacher_logits, mask=None, *, k: int = DEFAULT_K, temperature=1.0, values: str = "logits",
    method: str = "shared_vocab", normalizer=None,
) -> jax.Array:
    """Returns the GLD loss (P12): the mean over sequences of the discrepancy between the co-activation graphs.

    ``student_logits`` [B, T, V_s] and ``teacher_logits`` [B, T, V_t] (the teacher carries no
    gradient); ``mask`` [B, T] selects the positions entering each sequence's graph. ``method``:
    ``"shared_vocab"`` (default; needs V_s == V_t) compares the graphs node by node (token id) on
    the union of both models' kept channels; ``"aligned"`` / ``"degree"`` are the sorted GW closed
    forms, for vocabularies that differ (they ignore which token a node is, so one vocabulary
    permutation applied at every position costs nothing). See the module doc. The sum over rows with
    at least one masked-in position is divided by their number, or by ``normalizer`` (a global row
    count, for gradient accumulation); no such row gives 0 and a zero gradient. ``k`` (static),
    ``temperature`` (> 0, may be traced) and ``values`` as in :func:`topk_features`.
    """
    _check_method(method)
    (s, t), m = check_logits(("student_logits", student_logits), ("teacher_logits", teacher_logits), mask=mask,
                             same_vocab=method == "shared_vocab")
    _check_k(k, s.shape[-1], t.shape[-1])
    if normalizer is not None:
        check_range(normalizer, "normalizer", lo=0.0)
    zs, act_s, w = _features(s, m, k, temperature, values)
    zt, act_t, _ = _features(jax.lax.stop_gradient(t), m, k, temperature, values)
    if method == "shared_vocab":
        per_row = _shared_vocab_gw(zs, zt, act_s, act_t, w)
    else:
        T = s.shape[1]
        gs, vs = _active_subgraph(zs, act_s, w, min(s.shape[-1], k * T))
        gt, vt = _active_subgraph(zt, act_t, w, min(t.shape[-1], k * T))
        per_row = sorted_gw(gs, gt, method, valid_student=vs, valid_teacher=vt)
    per_row = jnp.where(jnp.any(m, axis=-1), per_row, 0.0)
    den = sequence_count(m) if normalizer is None else jnp.asarray(normalizer, _F32)
    ok = den > 0
    return jnp.where(ok, jnp.sum(per_row) / jnp.where(ok, den, 1.0), 0.0)


def make_gld_loss(
    teacher, *, k: int = DEFAULT_K, gld_weight: float = 1.0, kd_weight: float = 1.0, ce_weight: float = 1.0,
    temperature: float = 1.0, values: str = "logits", method: str = "shared_vocab", reduction: str = "token_mean",
) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)`` distilling a fixed teacher with GLD (P12):

    ``ce_weight * CE(student, tokens) + kd_weight * KD(teacher -> student) + gld_weight * L_GLD``

    (the paper's ``L_SFT + lambda_1 L_ULD + lambda_2 L_GLD`` with plain KD standing in for ULD,
    since teacher and student here read the same tokens; for the same reason ``method`` defaults to
    ``"shared_vocab"``). ``teacher`` is ``(params, cfg)`` or a tokjax.Model. Batch: ``tokens``
    [B, T+1] and the optional keys of :func:`tokjax.losses.token_stats` (mask, prompt_lengths,
    lengths, segment_ids, normalizer for the token terms); ``batch["hparams"]`` may override
    ``ce_weight``, ``kd_weight``, ``gld_weight``, ``temperature`` at run time. Metrics: ``loss``,
    ``ce``, ``kd``, ``gld``, ``token_count``, ``teacher_agreement``.
    """
    fixed = check_distill_factory(reduction=reduction, temperature=temperature, teacher=teacher)
    _check_k(k)
    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    _check_method(method)

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
