"""Evaluation metrics on token-id arrays, as pure jit-compatible functions.

P75 TensorBLEU (:mod:`tokjax.metrics.tensorbleu`): batched per-sentence BLEU
(:func:`tensor_sentence_bleu`) and corpus BLEU (:func:`tensor_corpus_bleu`) on token ids, equal to
NLTK's ``sentence_bleu`` / ``corpus_bleu`` for smoothing methods 0-3; :func:`bleu_stats` and
:func:`bleu_from_stats` split counting from scoring.

Retrieval (:mod:`tokjax.metrics.retrieval`): :func:`ndcg_at_k`, :func:`mrr_at_k` of score matrices
against graded qrels, and Lucene-style :func:`bm25_scores` of token-id documents.

Classification (:mod:`tokjax.metrics.classification`): :func:`auroc` (Mann-Whitney, ties averaged) and
:func:`macro_f1` for detectors and probes (P21 PAWN).

Frechet distance (:mod:`tokjax.metrics.frechet`): float64 :func:`frechet_distance` of two feature sets,
:func:`frechet_from_stats`, and a :func:`bootstrap_se` for any two-sample statistic.
"""

from tokjax.metrics.classification import auroc, macro_f1
from tokjax.metrics.frechet import bootstrap_se, frechet_distance, frechet_from_stats
from tokjax.metrics.retrieval import bm25_scores, mrr_at_k, ndcg_at_k
from tokjax.metrics.tensorbleu import (
    SMOOTHINGS, BleuStats, bleu_from_stats, bleu_stats, tensor_corpus_bleu, tensor_sentence_bleu,
)

__all__ = ["auroc", "macro_f1", "bootstrap_se", "frechet_distance", "frechet_from_stats", "bm25_scores", "mrr_at_k", "ndcg_at_k", "SMOOTHINGS", "BleuStats", "bleu_from_stats", "bleu_stats", "tensor_corpus_bleu", "tensor_sentence_bleu"]
