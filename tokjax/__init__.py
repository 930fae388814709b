"""tokjax: token-level methods for language models as composable JAX transforms over one forward function.

Subpackages by layer (imports point down; ``tests/test_layering.py`` enforces it): ``model`` <
``logits``, ``metrics``, ``data`` < ``losses``, ``decoding``, ``tokenizers``, ``analysis``, ``io`` <
``parallel``, ``train`` < ``pretrained`` < ``catalog`` < ``cli``. ``tokjax.train`` is imported on first
use (it pulls in optax and the checkpointing stack, which inference does not need).

Argument order, in every signature: params, then cfg, then key: ``Model(params, cfg)``,
``Model.init(cfg, key)``, ``forward(params, cfg, inputs)``.
"""

import importlib as _importlib

from tokjax.model import (
    Bidirectional, Causal, Explicit, Inputs, KVCache, Model, ModelConfig, Output, Prefix, Rank, Taps, Tree,
    blocks, embed, final_norm, forward, lm_head, unembed,
)

from tokjax import io, logits, losses, metrics, parallel
from tokjax.decoding import GenerateOutput, NonFiniteLogitsError, generate, stream
from tokjax.pretrained import available_pretrained, pretrained
from tokjax import decoding

__version__ = "0.1.0"

_LAZY = ("train",)


def __getattr__(name):
    # PEP 562: `tokjax.train` imports the subpackage on first access (then it is a plain attribute).
    if name in _LAZY:
        return _importlib.import_module(f"tokjax.{name}")
    raise AttributeError(f"module 'tokjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "available_pretrained", "pretrained", "decoding", "io", "logits", "losses", "metrics", "parallel", "train",
    "GenerateOutput", "NonFiniteLogitsError", "generate", "stream", "Bidirectional", "Causal", "Explicit", "Inputs", "KVCache", "Model",
    "ModelConfig", "Output", "Prefix", "Rank", "Taps", "Tree", "blocks", "embed", "final_norm", "forward", "lm_head",
    "unembed",
]
