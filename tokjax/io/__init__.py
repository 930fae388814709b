"""Checkpoint interoperability: Hugging Face directories (GPT-2, Llama, Qwen2) <-> tokjax Models.

* :func:`load_hf` -- a checkpoint directory (config.json, safetensors, tokenizer.json) -> (Model, BPETokenizer | None).
* :func:`save_hf` -- a Model (+ tokenizer) -> a directory transformers' ``from_pretrained`` loads.
* :func:`config_from_hf`, :func:`params_to_hf` -- the two halves, for custom pipelines.
* :func:`load_gguf` -- a llama.cpp GGUF file (llama architecture; F32/F16/BF16/Q8_0/Q4_0/Q4_1) -> (Model, ChatBPETokenizer).
* :class:`ChatBPETokenizer`, :func:`render_chat` -- chat templates rendered as transformers does.
* :func:`read_safetensors`, :func:`write_safetensors` -- numpy-only safetensors I/O (bfloat16 included).

No torch or transformers is needed; see docs/hf_checkpoints.md and docs/gguf.md.
"""

from tokjax.io._arch import ARCHITECTURES, Architecture, Rule, architecture_for
from tokjax.io._chat import ChatBPETokenizer, render_chat
from tokjax.io._gguf import load_gguf
from tokjax.io._hf import config_from_hf, load_hf, params_to_hf, save_hf
from tokjax.io._safetensors import CheckpointError, SafetensorsFile, read_safetensors, write_safetensors

__all__ = [
    "ARCHITECTURES", "Architecture", "ChatBPETokenizer", "CheckpointError", "Rule", "SafetensorsFile", "architecture_for",
    "config_from_hf", "load_gguf", "load_hf", "params_to_hf", "read_safetensors", "render_chat", "save_hf", "write_safetensors",
]
