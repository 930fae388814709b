"""Evaluation metrics on token-id arrays, as pure jit-compatible functions.

P75 TensorBLEU (:mod:`tokjax.metrics.tensorbleu`): batched per-sentence BLEU
(:func:`tensor_sentence_bleu`) and corpus BLEU (:func:`tensor_corpus_bleu`) on token ids, equal to
NLTK's ``sentence_bleu`` / ``corpus_bleu`` for smoothing methods 0-3; :func:`bleu_stats` and
:func:`bleu_from_stats` split counting from scoring.
"""

from tokjax.metrics.tensorbleu import (
    SMOOTHINGS, BleuStats, bleu_from_stats, bleu_stats, tensor_corpus_bleu, tensor_sentence_bleu,
)

__all__ = ["SMOOTHINGS", "BleuStats", "bleu_from_stats", "bleu_stats", "tensor_corpus_bleu", "tensor_sentence_bleu"]
