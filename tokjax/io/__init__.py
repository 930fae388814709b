"""Checkpoint interoperability: Hugging Face directories (GPT-2, Llama, Qwen2) <-> tokjax Models.

* :func:`load_hf` -- a checkpoint directory (config.json, safetensors, tokenizer.json) -> (Model, BPETokenizer | None).
* :func:`save_hf` -- a Model (+ tokenizer) -> a directory transformers' ``from_pretrained`` loads.
* :func:`config_from_hf`, :func:`params_to_hf` -- the two halves, for custom pipelines.
* :func:`read_safetensors`, :func:`write_safetensors` -- numpy-only safetensors I/O (bfloat16 included).

No torch or transformers is needed; see docs/hf_checkpoints.md.
"""

from tokjax.io._arch import ARCHITECTURES, Architecture, Rule, architecture_for
from tokjax.io._hf import config_from_hf, load_hf, params_to_hf, save_hf
from tokjax.io._safetensors import CheckpointError, SafetensorsFile, read_safetensors, write_safetensors

__all__ = [
    "ARCHITECTURES", "Architecture", "CheckpointError", "Rule", "SafetensorsFile", "architecture_for",
    "config_from_hf", "load_hf", "params_to_hf", "read_safetensors", "save_hf", "write_safetensors",
]
