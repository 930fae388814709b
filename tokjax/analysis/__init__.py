"""Analysis methods: tokenization theory (P38); attribution and interpretability probes come later.

* :mod:`tokjax.analysis.tokenization_theory` -- Markov sources with known entropy rate, unigram-over-tokens
  cross-entropy per character as the vocabulary grows, model bits per byte.
"""

from tokjax.analysis.tokenization_theory import (
    binary_entropy, chunk_text, model_bits_per_byte, switching_source, token_byte_lengths, unigram_bits_per_char,
    unigram_curve, unigram_token_bits,
)

__all__ = [
    "binary_entropy", "chunk_text", "model_bits_per_byte", "switching_source", "token_byte_lengths",
    "unigram_bits_per_char", "unigram_curve", "unigram_token_bits",
]
