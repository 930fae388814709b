"""Decode loops and strategies: generate, streaming, and speculative decoding.

* :func:`generate` / :func:`stream` -- one jitted while_loop; ``strategy=`` decides what a step does.
* :func:`speculative` (``draft source x verifier``) -- :mod:`~tokjax.decoding.drafts`
  (``model``, ``prompt_lookup``, ``ngram_memory`` P22, ``recycling`` P45, ``early_exit`` P44,
  ``nested`` P59) and :mod:`~tokjax.decoding.verify` (``greedy``, ``rejection``, ``tree``), plus
  :func:`~tokjax.decoding.spectr.spectr` (P23).
* :func:`~tokjax.decoding.skipdecode.skipdecode` (P16): a layer-skipping strategy.
* :func:`~tokjax.decoding.cautious.cautious` (P6): forked trials to punctuation, min-perplexity commit.
* :func:`~tokjax.decoding.entropy_adaptive.entropy_adaptive_generate` (P62): small/large model switching.
* :mod:`~tokjax.decoding.cascades` (P42): token-level deferral scores for small -> large model cascades.
"""

from tokjax.decoding import cascades, drafts, spectr, verify
from tokjax.decoding._state import DecodeState, DecodeStats, Strategy, commit
from tokjax.decoding.skipdecode import SkipDecode, skipdecode, skipdecode_loss
from tokjax.decoding.cautious import Cautious, cautious, cautious_generate
from tokjax.decoding.entropy_adaptive import EADOutput, entropy_adaptive_generate, entropy_bits
from tokjax.decoding.generate import TRACE_COUNTS, GenerateOutput, Sampling, generate, stream
from tokjax.decoding.speculative import Draft, DraftSource, Speculative, Verdict, Verifier, speculative
from tokjax.decoding.stand import NgramTables
from tokjax.decoding.token_recycling import RecyclingTable, generate_with_table

__all__ = [
    "DecodeState", "DecodeStats", "Strategy", "commit", "TRACE_COUNTS", "GenerateOutput", "Sampling", "generate",
    "stream", "cascades", "Draft", "DraftSource", "Speculative", "Verdict", "Verifier", "speculative", "drafts", "verify", "spectr",
    "NgramTables", "RecyclingTable", "generate_with_table", "SkipDecode", "skipdecode", "skipdecode_loss",
    "Cautious", "cautious", "cautious_generate", "EADOutput", "entropy_adaptive_generate", "entropy_bits",
]
