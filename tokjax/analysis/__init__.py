"""Analysis methods: tokenization theory (P38), activation patching, attribution (P18), successor heads (P54),
entity binding (P77) and magic words (P43).

* :mod:`tokjax.analysis.tokenization_theory` -- Markov sources with known entropy rate, unigram-over-tokens
  cross-entropy per character as the vocabulary grows, model bits per byte.
* :mod:`tokjax.analysis.patching` -- ``capture`` activations at named sites, ``patch`` them back (or from
  another prompt) through the forward's hooks, per-head ablation hooks.
* :mod:`tokjax.analysis.attribution` -- next-token attribution baselines (random, attention, gradient norm,
  input x gradient, integrated gradients, leave-one-out) and the Soft-NS / Soft-NC faithfulness metrics.
* :mod:`tokjax.analysis.reagent` -- ReAGent (P18), model-agnostic attribution by random token replacement.
* :mod:`tokjax.analysis.successor_heads` -- per-head successor scores from the effective OV circuit (P54).
* :mod:`tokjax.analysis.entity_binding` -- binding prompts, counterfactual interchange and the positional /
  lexical / reflexive mixing model with its agreement metric (P77).
* :mod:`tokjax.analysis.magic_words` -- reachable outputs under short prompts: greedy, GCG, exhaustive (P43).
* :mod:`tokjax.analysis.pawn` -- PAWN (P21): per-token next-token metrics and the last hidden state from one
  forward (disk-cached), a gate's masked softmax over tokens weighting a metric MLP's features.
* :mod:`tokjax.analysis.sae` -- top-k sparse autoencoders on any tapped site (trained by
  :func:`tokjax.train.recipes.sae.train_sae`).
* :mod:`tokjax.analysis.function_tokens` -- function-token sets, SAE feature coverage and the
  function/content loss table (P27).
* :mod:`tokjax.analysis.promptreps` -- PromptReps (P3): dense and sparse retrieval vectors from one prompted
  forward, min-max hybrid fusion.
* :mod:`tokjax.analysis.ssm_token_dynamics` -- the 1-D token dynamics of deep selective SSMs, the regime of a
  mamba model's layers and token norms by depth (P68).
* :mod:`tokjax.analysis.vocab_keys` -- next-token rank vs unembedding-key similarity to the top-1 key (P73).
* :mod:`tokjax.analysis.position_auctions` -- ad placement in generated text: LM insertion scores, exact MNL
  welfare / revenue optimum (Dinkelbach over assignments), VCG and Myerson payments, cascade model (P35).
"""

from tokjax.analysis.attribution import (
    ATTRIBUTIONS, attention_importance, attribute, gradient_norm, input_x_gradient, integrated_gradients,
    leave_one_out, random_importance, soft_metrics, soft_nc, soft_ns,
)
from tokjax.analysis.entity_binding import (
    agreement, binding_prompts, classify, counterfactuals, fit_mixing_model, interchange, js_divergence, mixing_logits,
)
from tokjax.analysis.function_tokens import (
    FeatureCoverage, LossTable, feature_coverage, function_token_set, loss_table, token_counts,
)
from tokjax.analysis.magic_words import controlled_logits, k_epsilon, reachable, reachable_set
from tokjax.analysis.pawn import (
    PawnFeatures, apply_pawn, init_pawn, pawn_batch_fn, pawn_features, pawn_features_batched, pawn_loss,
    pawn_norm_stats, pawn_weights, uniform_gate,
)
from tokjax.analysis.pils import (  # P4; registers "pils"
    FeaturePrefixLM, alr_features, alr_head_matrix, alr_relative_residual, fit_alr_map, greedy_completions,
    init_inverter, invert, logprob_sequence, logprob_sequences, make_pils_loss, pils_loss, project_features,
    recover_hidden, teacher_forced_exact, vocab_subset,
)
from tokjax.analysis.patching import capture, head_ablation_hooks, patch
from tokjax.analysis.reagent import reagent
from tokjax.analysis.sae import (
    SparseCodes, collect_activations, sae_activations, sae_decode, sae_encode, sae_encode_sparse, sae_init, sae_loss,
    sae_metrics,
)
from tokjax.analysis.position_auctions import (
    AuctionResult, brute_force_allocation, cascade_allocation, cascade_allocation_approx, cascade_click_probs,
    insertion_scores, max_weight_matching, mnl_allocation, mnl_click_probs, revenue_auction, separable_fit,
    threshold_payments, uniform_virtual_value, vcg_auction, welfare,
)
from tokjax.analysis.promptreps import (
    encode_prompted, hybrid_scores, mean_pooled, prompt_ids, sparse_reps, sparse_scores, text_token_ids,
)
from tokjax.analysis.ssm_token_dynamics import Regime, Simulation, regime, simulate_1d, token_norms
from tokjax.analysis.successor_heads import ablated_accuracy, effective_embeddings, head_ov_logits, successor_scores
from tokjax.analysis.vocab_keys import (
    KeyRankCorrelation, key_neighbours, key_rank_correlation, rank_key_spearman, unembedding_keys,
)
from tokjax.analysis.tokenization_theory import (
    binary_entropy, chunk_text, model_bits_per_byte, switching_source, token_byte_lengths, unigram_bits_per_char,
    unigram_curve, unigram_token_bits,
)

__all__ = [
    "AuctionResult", "brute_force_allocation", "cascade_allocation", "cascade_allocation_approx",
    "cascade_click_probs", "insertion_scores", "max_weight_matching", "mnl_allocation", "mnl_click_probs",
    "revenue_auction", "separable_fit", "threshold_payments", "uniform_virtual_value", "vcg_auction", "welfare",
    "Regime", "Simulation", "regime", "simulate_1d", "token_norms",
    "encode_prompted", "hybrid_scores", "mean_pooled", "prompt_ids", "sparse_reps", "sparse_scores", "text_token_ids",
    "KeyRankCorrelation", "key_neighbours", "key_rank_correlation", "rank_key_spearman", "unembedding_keys",
    "FeatureCoverage", "LossTable", "feature_coverage", "function_token_set", "loss_table", "token_counts",
    "SparseCodes", "collect_activations", "sae_activations", "sae_decode", "sae_encode", "sae_encode_sparse",
    "sae_init", "sae_loss", "sae_metrics",
    "agreement", "binding_prompts", "classify", "counterfactuals", "fit_mixing_model", "interchange", "js_divergence",
    "mixing_logits", "controlled_logits", "k_epsilon", "reachable", "reachable_set",
    "PawnFeatures", "apply_pawn", "init_pawn", "pawn_batch_fn", "pawn_features", "pawn_features_batched", "pawn_loss",
    "pawn_norm_stats", "pawn_weights", "uniform_gate",
    "FeaturePrefixLM", "alr_features", "alr_head_matrix", "alr_relative_residual", "fit_alr_map", "greedy_completions",
    "init_inverter", "invert", "logprob_sequence", "logprob_sequences", "make_pils_loss", "pils_loss",
    "project_features", "recover_hidden", "teacher_forced_exact", "vocab_subset",
    "ATTRIBUTIONS", "ablated_accuracy", "attention_importance", "attribute", "binary_entropy", "capture",
    "chunk_text", "effective_embeddings", "gradient_norm", "head_ablation_hooks", "head_ov_logits",
    "input_x_gradient", "integrated_gradients", "leave_one_out", "model_bits_per_byte", "patch",
    "random_importance", "reagent", "soft_metrics", "soft_nc", "soft_ns", "successor_scores", "switching_source",
    "token_byte_lengths", "unigram_bits_per_char", "unigram_curve", "unigram_token_bits",
]
