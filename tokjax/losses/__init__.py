"""Per-token losses and loss transforms.

Cross-entropy from hidden states and the head: :func:`cross_entropy` (naive reference, materialises
logits) and :func:`cut_cross_entropy` (P29, streams over vocabulary blocks; same signature plus
``block_size`` / ``filter_eps``); :func:`head_stats` is the raw streaming kernel.

The loss-transform family (DESIGN.md section 3): :class:`TokenStats` -> :class:`LossTransform`
(``chain`` / ``named_chain``) -> :func:`reduce_loss` / :func:`sum_and_count`, with one mask
helper :func:`shifted_completion_mask`. :func:`next_token_loss` has the train loss signature
``(params, cfg, batch, rng) -> (loss, metrics)``; :func:`make_next_token_loss` fixes its options.

Papers: P29 cut cross-entropy (:mod:`tokjax.losses.cut_cross_entropy`), P78 PRIOR
(:mod:`tokjax.losses.prior`: :func:`prior`, :func:`prior_weights`).
"""

from tokjax.losses._cross_entropy import REDUCTIONS as CE_REDUCTIONS
from tokjax.losses._cross_entropy import STATS, cross_entropy
from tokjax.losses._next_token import METHODS, make_next_token_loss, next_token_loss, reference_logp, token_stats
from tokjax.losses._stats import (
    REDUCTIONS, Chain, Identity, LossTransform, NamedChain, TokenStats, TokenWeights, chain, named_chain,
    per_token_nll, reduce_loss, sequence_count, shifted_completion_mask, sum_and_count, token_count,
    token_weights,
)
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE, cut_cross_entropy, head_stats
from tokjax.losses.prior import Prior, prior, prior_weights

__all__ = [
    "CE_REDUCTIONS", "DEFAULT_BLOCK_SIZE", "METHODS", "REDUCTIONS", "STATS", "Chain", "Identity", "LossTransform",
    "NamedChain", "Prior", "TokenStats", "TokenWeights", "chain", "cross_entropy", "cut_cross_entropy",
    "head_stats", "make_next_token_loss", "named_chain", "next_token_loss", "per_token_nll", "prior",
    "prior_weights", "reduce_loss", "reference_logp", "sequence_count", "shifted_completion_mask",
    "sum_and_count", "token_count", "token_stats", "token_weights",
]
