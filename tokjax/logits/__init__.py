"""LogitTransform family: optax-shaped init/apply transforms over next-token logits, composed with chain."""

from tokjax.logits._base import (
    Chain, Identity, LogitContext, LogitTransform, NamedChain, Stats, as_rows, chain, check_int_option, check_range,
    entropy, hparam, masked_log_softmax, masked_softmax, named_chain, sample, target_logprobs,
)
from tokjax.logits.amu_tuning import (
    UNCERTAINTY_KINDS, amu_fuse, amu_init, amu_logits, amu_loss, logit_standardize, uncertainty_factor,
)
from tokjax.logits._transforms import (
    BanTokens, Greedy, MinP, PresencePenalty, RepetitionPenalty, Temperature, TopK, TopP, ban_tokens, greedy,
    min_p, presence_penalty, repetition_penalty, temperature, token_counts, top_k, top_p,
)
from tokjax.logits._hf import (
    AllowedTokens, EpsilonCutoff, EtaCutoff, HFMinP, HFTopK, HFTopP, NoRepeatNGram, TypicalP, allowed_tokens,
    epsilon_cutoff, eta_cutoff, hf_sampling, no_repeat_ngram, typical_p,
)
from tokjax.logits.tempnet import (
    TempNetTemperature, constant_tempnet, tempnet, tempnet_apply, tempnet_features, tempnet_init,
)
from tokjax.logits.caad import (
    CAAD, CAADStore, HashedNgramEmbedder, caad, caad_retrieve, caad_shape, caad_store, caad_store_ids,
    hashed_ngram_embedder,
)
from tokjax.logits.grammar import (
    Grammar, GrammarShape, GrammarState, json_constraint, json_schema_regex, regex_constraint,
)

__all__ = [
    "TempNetTemperature", "constant_tempnet", "tempnet", "tempnet_apply", "tempnet_features", "tempnet_init",
    "Chain", "Identity", "LogitContext", "LogitTransform", "NamedChain", "Stats", "as_rows", "chain",
    "check_int_option", "check_range",
    "entropy", "hparam", "masked_log_softmax", "masked_softmax", "named_chain", "sample", "target_logprobs", "BanTokens", "Greedy", "MinP", "PresencePenalty", "RepetitionPenalty",
    "Temperature", "TopK", "TopP", "ban_tokens", "greedy", "min_p", "presence_penalty", "repetition_penalty",
    "temperature", "token_counts", "top_k", "top_p",
    # transformers' semantics and processor order
    "AllowedTokens", "EpsilonCutoff", "EtaCutoff", "HFMinP", "HFTopK", "HFTopP", "NoRepeatNGram", "TypicalP",
    "allowed_tokens", "epsilon_cutoff", "eta_cutoff", "hf_sampling", "no_repeat_ngram", "typical_p",
    # grammar-constrained decoding (regex / JSON schema through outlines-core)
    "Grammar", "GrammarShape", "GrammarState", "json_constraint", "json_schema_regex", "regex_constraint",
    # P1 CAAD / RAD
    "CAAD", "CAADStore", "HashedNgramEmbedder", "caad", "caad_retrieve", "caad_shape", "caad_store", "caad_store_ids",
    "hashed_ngram_embedder",
    # P30 AMU-Tuning
    "UNCERTAINTY_KINDS", "amu_fuse", "amu_init", "amu_logits", "amu_loss", "logit_standardize", "uncertainty_factor",
]
