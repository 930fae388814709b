"""tokjax: token-level methods for language models as composable JAX transforms over one forward function."""

from tokjax.model import (
    Bidirectional, Causal, Explicit, Inputs, KVCache, Model, ModelConfig, Output, Prefix, Rank, Taps, Tree,
    blocks, embed, final_norm, forward, lm_head, unembed,
)

from tokjax import logits, metrics
from tokjax.decoding import GenerateOutput, generate, stream
from tokjax.pretrained import available_pretrained, pretrained

__version__ = "0.1.0"

__all__ = [
    "available_pretrained", "pretrained", "logits", "metrics", "GenerateOutput", "generate", "stream", "Bidirectional", "Causal", "Explicit", "Inputs", "KVCache", "Model", "ModelConfig", "Output", "Prefix", "Rank",
    "Taps", "Tree", "blocks", "embed", "final_norm", "forward", "lm_head", "unembed",
]
