"""Decode loops and strategies: generate, streaming, and (later) speculative/routed strategies."""

from tokjax.decoding._state import DecodeState, DecodeStats, Strategy, commit
from tokjax.decoding.generate import TRACE_COUNTS, GenerateOutput, Sampling, generate, stream

__all__ = ["DecodeState", "DecodeStats", "Strategy", "commit", "TRACE_COUNTS", "GenerateOutput", "Sampling", "generate", "stream"]
