"""The FIRST training objective: LM loss on the teacher permutation + lambda * weighted RankNet on the first
identifier's logits (P20: *An Early FIRST Reproduction and Improvements to Single-Token Decoding for Fast Listwise
Reranking*, Chen et al., 2024; FIRST: Reddy et al., 2024).

A listwise reranker reads a query and a window of W passages labelled ``[A]``, ``[B]``, ... and is trained to
write the teacher's permutation ``[C] > [A] > ...``. FIRST ranks at inference from the logits of the *first*
identifier alone (:mod:`tokjax.decoding.first_rerank`), so its fine-tuning adds a ranking loss on exactly those
logits. With ``s_i = z_{t0}(id_i)`` the logit of identifier i at the first generated identifier position t0 and
``r_i`` the teacher's 0-based rank of passage i (0 = most relevant)::

    L = L_LM + lambda * L_rank                                                                          (P20)
    L_LM   = token-mean -log p(y_t | y_<t) over the target (permutation) tokens of the batch
    L_rank = mean_b  [ (1 / |P_b|) sum_{(i, j) in P_b} w_ij * log(1 + exp(-(s_i - s_j))) ]
    P_b    = {(i, j): r_i < r_j}  (i ranked above j by the teacher; every ordered pair once)
    w_ij   = 1 / ((r_i + 1) + (r_j + 1))   ("inverse_rank_sum", pairs at the top weigh most)
           = 1                             ("uniform": plain RankNet)

Verified in the official FIRST code (gangiswag/llm-reranker, ``scripts/train_ranking.py`` objective
``combined`` with ``scripts/utils/loss.py::rank_net`` and ``scripts/utils/dataset.py``):

* the LM term is the mean NLL over the target tokens (``labels[:source_len] = -100``; label smoothing 0),
  i.e. the ``token_mean`` of :func:`tokjax.losses.next_token_loss` with ``prompt_lengths``;
* the scores are the logits at index ``source_len`` of ``prompt + target``, whose first target token is "[":
  the position that predicts the first identifier, gathered at the ids of "A", "B", ... (one token each);
* ``rank_net(..., weighted=True)``: pairs with a strictly larger true relevance, 1-based teacher ranks
  ``r'``, weight ``1 / (r'_i + r'_j)``, ``BCEWithLogitsLoss(weight)`` of the score difference against 1
  (= the mean over pairs of ``w_ij * softplus(-(s_i - s_j))``, divided by the pair count, not the weight sum);
  per-example losses are averaged over the batch;
* lambda = 10 for the weighted RankNet (``loss += rank_loss * 10.0``; 1 for the unweighted one, 0.1 for
  ListNet), so the defaults here are ``lam=10.0`` and ``weighting="inverse_rank_sum"``.

Differences, all deliberate: rows with fewer than two candidates contribute no pairs and are left out of the
batch mean (the official code would produce NaN and skip the whole batch's ranking term); the official code
derives the pair set from its sorted predicted scores, so tied logits would drop a pair, here the teacher ranks
alone define it; ``batch["normalizer"]`` (a global token count) applies to the LM term as in
``next_token_loss``, the ranking term is a mean over the local rows.

Batch keys:

``tokens``          int [B, T+1]: prompt then the teacher's permutation text (the LM target).
``prompt_lengths``  int [B]: prompt tokens per row; targets from there on count in L_LM. The default scoring
                    position is ``prompt_lengths - 1``: the prompt ends with the answer prefix "[" (as
                    :func:`tokjax.decoding.first_rerank.rerank_prompt` writes it), so the last prompt position
                    predicts the first identifier.
``rank_positions``  int [B] (optional): the input position t0 whose logits score the ids, overriding the default
                    (the official layout, with "[" inside the LM target: ``prompt_lengths`` = the prompt without
                    "[", ``rank_positions`` = ``prompt_lengths``).
``id_token_ids``    int [B, W] or [W]: the token id of each candidate's identifier (A, B, ... in listing order).
``teacher_ranks``   int [B, W]: the teacher's 0-based rank of each candidate (0 = first); -1 marks a padded slot
                    (a row with fewer candidates). The ranks of a row's real slots are a permutation of 0..n-1.
``lengths``, ``mask``, ``segment_ids``, ``normalizer``: as in :func:`tokjax.losses.next_token_loss`.
``hparams``         {"lam": scalar} (optional): lambda at run time (an array: no recompilation).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._distill import hparam_value
from tokjax.losses._stats import check_token_ids, reduce_loss, token_count
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
from tokjax.model.forward import head_matrix
from tokjax.model.ops import check_int_values

__all__ = ["WEIGHTINGS", "first_loss", "identifier_scores", "make_first_loss", "ranknet_loss", "ranknet_pair_weights"]

WEIGHTINGS = ("inverse_rank_sum", "uniform")
_F32 = jnp.float32


def _check_weighting(weighting):
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} ('inverse_rank_sum' = FIRST's 1/(r_i + r_j) with "
                         f"1-based ranks, 'uniform' = plain RankNet), got {weighting!r}")


def _check_ranks(teacher_ranks) -> jax.Array:
    """Returns teacher_ranks as int32 [B, W]; a concrete array must hold, per row, a permutation of 0..n-1 and -1s."""
    r = jnp.asarray(teacher_ranks)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"teacher_ranks must be int [B, W] (the teacher's 0-based rank of each candidate, -1 = "
                         f"padding), got shape {tuple(r.shape)}")
    if not jnp.issubdtype(r.dtype, jnp.integer):
        raise ValueError(f"teacher_ranks must be integers (0-based ranks, -1 = padding), got dtype {r.dtype}")
    if not isinstance(teacher_ranks, jax.core.Tracer):
        host = np.asarray(teacher_ranks)
        for b, row in enumerate(host):
            real = np.sort(row[row != -1])
            if not np.array_equal(real, np.arange(real.size)):
                raise ValueError(f"teacher_ranks row {b} must hold a permutation of 0..n-1 for its n real candidates "
                                 f"and -1 for padded slots, got {row.tolist()}")
    return r.astype(jnp.int32)


def ranknet_pair_weights(teacher_ranks, weighting: str = "inverse_rank_sum") -> jax.Array:
    """Returns float32 [B, W, W] ``w_ij`` for the pairs i ranked above j (``r_i < r_j``, both real), 0 elsewhere.

    ``weighting="inverse_rank_sum"``: ``w_ij = 1 / ((r_i + 1) + (r_j + 1))`` (P20 / FIRST's weighted RankNet,
    1-based ranks); ``"uniform"``: 1. ``teacher_ranks`` int [B, W], -1 = padding.
    """
    _check_weighting(weighting)
    r = _check_ranks(teacher_ranks)
    real = r >= 0
    pair = (r[:, :, None] < r[:, None, :]) & real[:, :, None] & real[:, None, :]
    if weighting == "uniform":
        w = jnp.ones(pair.shape, _F32)
    else:
        w = 1.0 / ((r[:, :, None] + 1) + (r[:, None, :] + 1)).astype(_F32)
    return jnp.where(pair, w, 0.0)


def ranknet_loss(scores, teacher_ranks, *, weighting: str = "inverse_rank_sum") -> tuple[jax.Array, dict]:
    """Returns (float32 loss, metrics): P20's weighted RankNet ``L_rank`` on ``scores`` [B, W] (module docstring).

    Per row: the mean over its pairs ``r_i < r_j`` of ``w_ij * log(1 + exp(-(s_i - s_j)))``; then the mean
    over rows with at least one pair (0 when no row has one). ``teacher_ranks`` int [B, W] (0 = the teacher's
    top, -1 = padding). Metrics: ``rank_loss``, ``rank_pair_acc`` (share of pairs with ``s_i > s_j``),
    ``rank_top1`` (share of rows whose highest score is the teacher's top), ``rank_pairs`` (pair count).
    """
    s = jnp.asarray(scores)
    if s.ndim != 2 or not jnp.issubdtype(s.dtype, jnp.floating):
        raise ValueError(f"scores must be float [B, W] (identifier logits), got {s.dtype} {tuple(s.shape)}")
    r = jnp.asarray(teacher_ranks)
    if r.shape != s.shape:
        raise ValueError(f"teacher_ranks shape {tuple(r.shape)} must equal the scores' [B, W] {tuple(s.shape)}")
    w = ranknet_pair_weights(teacher_ranks, weighting)
    r = r.astype(jnp.int32)
    pair = w > 0
    s = jnp.where(r >= 0, s.astype(_F32), 0.0)  # padded slots never reach the arithmetic
    diff = s[:, :, None] - s[:, None, :]
    per_pair = jnp.where(pair, w * jax.nn.softplus(-diff), 0.0)
    n_pairs = jnp.sum(pair, axis=(1, 2)).astype(_F32)
    has = n_pairs > 0
    row = jnp.sum(per_pair, axis=(1, 2)) / jnp.maximum(n_pairs, 1.0)
    n_rows = jnp.sum(has).astype(_F32)
    loss = jnp.sum(jnp.where(has, row, 0.0)) / jnp.maximum(n_rows, 1.0)
    sg = jax.lax.stop_gradient
    top = jnp.argmax(jnp.where(r >= 0, s, -jnp.inf), axis=-1)
    is_top = jnp.take_along_axis(r, top[:, None], axis=-1)[:, 0] == 0
    metrics = {"rank_loss": sg(loss),
               "rank_pair_acc": sg(jnp.sum(pair & (diff > 0)) / jnp.maximum(jnp.sum(n_pairs), 1.0)),
               "rank_top1": sg(jnp.sum(is_top & has) / jnp.maximum(n_rows, 1.0)),
               "rank_pairs": jnp.sum(n_pairs)}
    return loss, metrics


def _check_positions_and_ids(positions, id_token_ids, B: int, T: int, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """Returns (positions int32 [B], ids int32 [B, W]) after checking shapes and (concrete) ranges."""
    pos = jnp.asarray(positions)
    if pos.shape != (B,) or not jnp.issubdtype(pos.dtype, jnp.integer):
        raise ValueError(f"rank positions must be int [B={B}], got {pos.dtype} {tuple(pos.shape)}")
    check_int_values(positions, "the rank positions (prompt_lengths - 1, or batch['rank_positions'])", 0, T)
    ids = jnp.asarray(id_token_ids)
    if ids.ndim == 1:
        ids = jnp.broadcast_to(ids[None, :], (B, ids.shape[0]))
    if ids.ndim != 2 or ids.shape[0] != B or ids.shape[1] < 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"id_token_ids must be int [B={B}, W] or [W] (one token id per identifier), got "
                         f"{ids.dtype} {tuple(jnp.shape(id_token_ids))}")
    check_int_values(id_token_ids, "id_token_ids", 0, vocab_size)
    return pos.astype(jnp.int32), ids.astype(jnp.int32)


def identifier_scores(params, cfg, hidden, positions, id_token_ids) -> jax.Array:
    """Returns float32 [B, W]: the logits of ``id_token_ids`` [B, W] (or [W]) at input position ``positions`` [B].

    ``hidden`` [B, T, D] final-normed (``forward(...).hidden`` / ``TokenStats.hidden``). Only W columns of the
    head are read (no [B, V] logits); equals ``forward(...).logits[b, positions[b], id_token_ids[b]]``.
    """
    B, T, _ = hidden.shape
    pos, ids = _check_positions_and_ids(positions, id_token_ids, B, T, cfg.vocab_size)
    h = jnp.take_along_axis(hidden, pos[:, None, None], axis=1)[:, 0]  # [B, D]
    w, layout = head_matrix(params, cfg)
    w = w.astype(cfg.dtype)
    if layout == "vd":
        cols = jnp.take(w, ids, axis=0)  # [B, W, D]
        return jnp.einsum("bd,bwd->bw", h, cols, preferred_element_type=_F32)
    cols = jnp.take(w, ids, axis=1)  # [D, B, W]
    return jnp.einsum("bd,dbw->bw", h, cols, preferred_element_type=_F32)


def _check_batch(batch):
    if not isinstance(batch, dict):
        raise ValueError(f"the first loss needs a dict batch, got {type(batch).__name__}")
    need = ("tokens", "id_token_ids", "teacher_ranks")
    missing = [k for k in need if k not in batch]
    if "prompt_lengths" not in batch and "rank_positions" not in batch:
        missing.append("prompt_lengths")
    if missing:
        raise ValueError(f"the first loss needs batch keys 'tokens' [B, T+1], 'prompt_lengths' [B] (or "
                         f"'rank_positions' [B]), 'id_token_ids' [B, W] and 'teacher_ranks' [B, W]; missing {missing}")


def first_loss(params, cfg, batch: dict, *, lam=10.0, weighting: str = "inverse_rank_sum", method: str = "cut",
               block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jax.Array, dict]:
    """Returns (float32 loss, metrics) of P20's FIRST objective ``L_LM + lam * L_rank`` (module docstring).

    One forward: :func:`tokjax.losses.token_stats` gives the LM term (streaming head with ``method="cut"``) and
    the final hidden states, whose row at the rank position meets the W identifier columns of the head.
    ``lam`` >= 0 may be a traced array (``batch["hparams"]["lam"]`` overrides it in :func:`make_first_loss`);
    ``lam=0`` is :func:`tokjax.losses.next_token_loss`'s value exactly. Metrics: ``loss``, ``lm_loss``,
    ``token_count`` and :func:`ranknet_loss`'s.
    """
    from tokjax.losses._next_token import token_stats

    _check_batch(batch)
    _check_weighting(weighting)
    check_range(lam, "lam", lo=0.0)
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    B, T = tokens.shape[0], tokens.shape[1] - 1
    ranks = _check_ranks(batch["teacher_ranks"])
    if ranks.shape[0] != B:
        raise ValueError(f"teacher_ranks must have one row per sequence [B={B}, W], got {tuple(ranks.shape)}")
    if "rank_positions" in batch:
        pos = batch["rank_positions"]
    else:
        raw = batch["prompt_lengths"]
        if not isinstance(raw, jax.core.Tracer) and np.any(np.asarray(raw) < 1):
            raise ValueError("prompt_lengths must be >= 1: the last prompt position (prompt_lengths - 1, which reads "
                             "the answer prefix '[') scores the identifiers")
        pos = jnp.broadcast_to(jnp.asarray(raw), (B,)) - 1
    _, ids = _check_positions_and_ids(pos, batch["id_token_ids"], B, T, cfg.vocab_size)
    if ids.shape != ranks.shape:
        raise ValueError(f"id_token_ids gives {ids.shape[1]} identifiers per row but teacher_ranks has "
                         f"{ranks.shape[1]}: both must be [B, W]")
    stats = token_stats(params, cfg, batch, method=method, block_size=block_size, hidden=True)
    scores = identifier_scores(params, cfg, stats.hidden, pos, ids)
    lm = reduce_loss(stats, "token_mean", normalizer=batch.get("normalizer"))
    rank, metrics = ranknet_loss(scores, batch["teacher_ranks"], weighting=weighting)
    loss = lm + jnp.asarray(lam, _F32) * rank
    metrics.update(loss=loss, lm_loss=jax.lax.stop_gradient(lm), token_count=token_count(stats.mask))
    return loss, metrics


def make_first_loss(*, lam: float = 10.0, weighting: str = "inverse_rank_sum", method: str = "cut",
                    block_size: int = DEFAULT_BLOCK_SIZE) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`first_loss` with these options,
    for ``tokjax.train``; ``batch["hparams"]["lam"]`` overrides ``lam`` at run time (the registered loss
    ``"first"``)."""
    from tokjax.losses._next_token import METHODS

    check_range(lam, "lam", lo=0.0)
    _check_weighting(weighting)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """P20 FIRST: token-mean LM loss on the permutation + lam * weighted RankNet on the identifier logits."""
        del rng
        _check_batch(batch)
        return first_loss(params, cfg, batch, lam=hparam_value(batch, "lam", lam), weighting=weighting,
                          method=method, block_size=int(block_size))

    return loss_fn


def _first_factory(lam, weighting, method, block_size):
    return make_first_loss(lam=float(lam), weighting=weighting, method=method, block_size=int(block_size))


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("first", _first_factory,
                  {"lam": 10.0, "weighting": "inverse_rank_sum", "method": "cut", "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P20 FIRST: LM loss on the teacher permutation + lam * weighted RankNet (w_ij = 1/(r_i + r_j), "
                      "1-based ranks) on the first identifier position's logits; batch keys tokens, prompt_lengths, "
                      "id_token_ids [B, W], teacher_ranks [B, W]",
                  overwrite=True)


_register()
