"""The shared forward function and everything it needs (config, params, masks, cache)."""

from tokjax.model.attention import (
    Bidirectional, Causal, Explicit, MaskSpec, Prefix, Rank, Tree, build_mask, tree_ancestors, tree_depths,
    validate_tree,
)
from tokjax.model.cache import KVCache
from tokjax.model.config import ModelConfig
from tokjax.model.forward import (
    HOOK_SITES, REMAT_POLICIES, Inputs, Model, Output, Taps, blocks, embed, embedding_matrix, final_norm, forward, head_matrix, layer_loop, layer_weights, lm_head, norm,
    position_embed, prefill, stack_layers, unembed, unstack_layers,
)
from tokjax.model.mamba import MambaState, mamba_mixer, mamba_state, selective_scan, ssm_projections
from tokjax.model.lora import LORA_TARGETS, init_lora, lora_forward, lora_pairs
from tokjax.model.memory import memory_cache, memory_mask
from tokjax.model.readout import last_token_logits, last_token_states
from tokjax.model.ops import check_int_values, masked_mean, repeat_rows, take_rows, where_rows
from tokjax.model.layout import decode_layout
from tokjax.model.params import ParamSpec, check_params, init_params, param_axes, param_shapes, param_specs

__all__ = [
    "last_token_logits", "last_token_states",
    "Bidirectional", "Causal", "Explicit", "MaskSpec", "Prefix", "Rank", "Tree", "build_mask", "tree_ancestors",
    "tree_depths", "validate_tree", "KVCache", "ModelConfig", "HOOK_SITES", "Inputs", "Model", "Output", "Taps", "REMAT_POLICIES", "layer_loop",
    "blocks", "embed", "embedding_matrix", "final_norm", "forward", "head_matrix", "layer_weights", "lm_head", "stack_layers", "unstack_layers", "decode_layout", "norm", "position_embed", "prefill", "unembed", "ParamSpec",
    "LORA_TARGETS", "init_lora", "lora_forward", "lora_pairs",
    "memory_cache", "memory_mask", "MambaState", "mamba_mixer", "mamba_state", "selective_scan", "ssm_projections", "check_params", "check_int_values", "init_params", "masked_mean", "repeat_rows", "take_rows", "where_rows", "param_axes", "param_shapes", "param_specs",
]
