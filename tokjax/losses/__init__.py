"""Per-token losses and loss transforms.

Cross-entropy from hidden states and the head: :func:`cross_entropy` (naive reference, materialises
logits) and :func:`cut_cross_entropy` (P29, streams over vocabulary blocks; same signature plus
``block_size`` / ``filter_eps``); :func:`head_stats` is the raw streaming kernel.

The loss-transform family (DESIGN.md section 3): :class:`TokenStats` -> :class:`LossTransform`
(``chain`` / ``named_chain``) -> :func:`reduce_loss` / :func:`sum_and_count`, with one mask
helper :func:`shifted_completion_mask`. :func:`next_token_loss` has the train loss signature
``(params, cfg, batch, rng) -> (loss, metrics)``; :func:`make_next_token_loss` fixes its options.

Papers: P29 cut cross-entropy (:mod:`tokjax.losses.cut_cross_entropy`), P78 PRIOR
(:mod:`tokjax.losses.prior`: :func:`prior`, :func:`prior_weights`), P41 Fourier head
(:mod:`~tokjax.losses.fourier_head`), P49 self-generated tokens (:mod:`~tokjax.losses.self_generated`),
P71 Text2Token (:mod:`~tokjax.losses.text2token`); distillation: P12 Graph-on-Logits
(:mod:`~tokjax.losses.infigfusion`), P34 Dual-Head KD (:mod:`~tokjax.losses.dual_head_kd`), P15
AlignDistil (:mod:`~tokjax.losses.aligndistil`), plain KD (:func:`kd_loss`); preferences and RL:
sequence DPO with P65 implicit token rewards and token weights (:mod:`~tokjax.losses.dpo`), P17 cDPO
(:mod:`~tokjax.losses.critical_tokens`), P48 TGDPO (:mod:`~tokjax.losses.tgdpo`), P51 T-REG
(:mod:`~tokjax.losses.t_reg`), P20 FIRST's listwise reranking loss (:mod:`~tokjax.losses.first_rank`), P60 inverse RL as TD-regularised MLE (:mod:`~tokjax.losses.inverse_rl`), DAPO with P63's top-entropy
token mask (:mod:`~tokjax.losses.high_entropy_tokens`), GRPO (:mod:`~tokjax.losses.grpo`) and P56 D3S's
rollout and token down-sampling (:mod:`~tokjax.losses.d3s`), P57 RLFR flow rewards
(:mod:`~tokjax.losses.rlfr`), P69 token hidden reward
(:mod:`~tokjax.losses.token_hidden_reward`), P47 LaSeR last-token self-rewarding (:mod:`~tokjax.losses.laser`), P25 one-token rollout
(:mod:`~tokjax.losses.one_token_rollout`), P37 soft / fuzzy chain-of-thought tokens (:mod:`~tokjax.losses.soft_tokens`), P67 NeoDiff non-simultaneous
text diffusion (:mod:`~tokjax.losses.neodiff`), P50 token-supervised value models (:mod:`~tokjax.losses.token_value_model`); multi-token: P8 MLM-U (:mod:`~tokjax.losses.mlm_u`), P40 concept-aware fine-tuning
(:mod:`~tokjax.losses.caft`), P66 future token prediction
(:mod:`~tokjax.losses.future_token_prediction`).

Losses as a train-config choice: :mod:`tokjax.losses.registry` (``make_loss("prior", alpha=1.0)``,
``loss_names()``; a TrainConfig's ``loss: {name: ..., <options>}``).
"""

from tokjax.losses._cross_entropy import CE_REDUCTIONS, STATS, cross_entropy
from tokjax.losses._next_token import METHODS, make_next_token_loss, next_token_loss, reference_logp, token_stats
from tokjax.losses._stats import (
    REDUCTIONS, Chain, Identity, LossTransform, NamedChain, TokenStats, TokenWeights, chain, check_reduction,
    check_token_ids, named_chain,
    per_token_nll, reduce_loss, sequence_count, shifted_completion_mask, sum_and_count, token_count,
    token_weights,
)
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE, cut_cross_entropy, head_stats
from tokjax.losses._distill import kd_loss, make_kd_loss
from tokjax.losses.aligndistil import (
    adaptive_weight, aligndistil_loss, aligndistil_per_token, extrapolated_logits, make_aligndistil_loss,
)
from tokjax.losses.dpo import (
    bradley_terry_loss, check_token_weights, dpo_loss, dpo_per_pair, implicit_token_rewards, make_dpo_loss,
    sequence_implicit_reward,
)
from tokjax.losses.critical_tokens import (
    cdpo_weights, contrastive_scores_from_hidden, contrastive_token_scores, make_cdpo_loss,
)
from tokjax.losses.inverse_rl import inverse_rl_loss, make_inverse_rl_loss, soft_q, td_rewards
from tokjax.losses.t_reg import (
    contrastive_prompt_rewards, make_t_reg_loss, normalised_token_rewards, t_reg_regularizer,
)
from tokjax.losses.tgdpo import make_tgdpo_loss, tgdpo_weights
from tokjax.losses.high_entropy_tokens import (
    DAPO_EPS_HIGH, DAPO_EPS_LOW, dapo_loss, dapo_token_objective, group_advantages, token_entropy, top_entropy_mask,
)
from tokjax.losses.dual_head_kd import (
    binary_kl_norm, dual_head_kd, init_aux_head, make_dual_head_kd_loss, project_conflicting,
)
from tokjax.losses.fourier_head import (
    FourierOutput, autocorrelate, bin_centers, fourier_head, fourier_head_init, fourier_head_loss, fourier_pdf,
    fourier_regularizer,
)
from tokjax.losses.infigfusion import (
    coactivation_graph, graph_on_logits_loss, make_gld_loss, sorted_gw, topk_features,
)
from tokjax.losses.prior import Prior, prior, prior_weights
from tokjax.losses.registry import RegisteredLoss, loss_from_spec, loss_names, loss_options, make_loss, register_loss
from tokjax.losses.self_generated import (
    SCHEDULES, make_scheduled_sampling_loss, mix_self_generated, reference_answer_correction, scheduled_probability,
    scheduled_sampling_loss, self_generated_tokens,
)
from tokjax.losses.text2token import (
    POOLINGS, data_driven_targets, make_text2token_loss, model_derived_targets, text2token, text2token_from_logits,
    text_embedding, token_idf,
)
from tokjax.losses.insertion import (  # P14; registers "ilm"
    ilm_batch, ilm_batch_from_drops, ilm_forward, ilm_loss, ilm_targets, make_ilm_loss,
)
from tokjax.losses.tempnet import (  # P2; registers "tempnet" (alias "tempnet_dro")
    dro_optimal_tau, dro_tau_derivative, init_tempnet, make_tempnet_loss, tempnet_dro_loss, tempnet_dro_per_token,
)
from tokjax.losses.span_corruption import (  # P76; registers "span_corruption"
    make_span_corruption_loss, random_spans_noise_mask, span_corruption_loss, span_corruption_rows,
)
from tokjax.losses.simcse import info_nce, make_simcse_loss, random_crops, simcse  # P71's contrastive baseline; registers "simcse"
from tokjax.losses.d3s import D3S, D3STokenMask, d3s_token_mask, linear_ratio, max_variance_subset, token_scores  # P56
from tokjax.losses.rlfr import (  # P57; registers "rlfr_flow"
    RLFR, filter_scores, flow_batches, flow_matching_loss, flow_score, flow_velocity, init_flow, latent_scores,
    model_pairs, normalize_scores, rlfr_advantages,
)
from tokjax.losses.token_hidden_reward import (  # P69
    THRWeights, model_token_hidden_reward, thr_weights, token_hidden_reward,
)
from tokjax.losses.laser import (  # P47 (rl_train plug-ins prepare / shape / aux)
    LaSeR, append_token, last_token_logp, mix_advantages, reference_constant, self_advantages, self_reward,
    self_reward_loss, self_verification_f1, weighted_vote, z_c_logp,
)
from tokjax.losses.one_token_rollout import (  # P25; registers "otr"
    gumbel_max_sample, make_one_token_rollout_loss, one_token_rollout_loss, otr_expected_loss, otr_rewards,
    sampled_logp,
)
from tokjax.losses.caft import (  # P40; registers "caft" and "caft_pretrain_heads"
    caft_loss, caft_per_head, caft_pretrain_heads, init_caft_heads, make_caft_loss, make_caft_pretrain_loss,
)
from tokjax.losses.token_value_model import (  # P50; registers "tvm"
    make_tvm_loss, outcome_labels, rerank_best_of_n, token_values, trie_value_labels, trie_value_labels_host,
    tvm_loss, value_head, value_head_init,
)
from tokjax.losses.mlm_u import (  # P8; registers "mlm_u"
    MLMU_KEY, MLMUDecode, decoder_config, init_mlm_u, make_mlm_u_loss, mlm_u_logits, mlm_u_loss, mlm_u_visibility,
)
from tokjax.losses.first_rank import (  # P20; registers "first"
    first_loss, identifier_scores, make_first_loss, ranknet_loss, ranknet_pair_weights,
)
from tokjax.losses.future_token_prediction import (  # P66; registers "ftp"
    FTPConfig, FTPDecode, ftp_config, ftp_loss, ftp_logits, ftp_next_logits, ftp_per_token, ftp_weights, init_ftp,
    make_ftp_loss,
)
from tokjax.losses.neodiff import (  # P67; registers "neodiff"
    NeoDiffDecode, make_neodiff_loss, neodiff_decoder, neodiff_init, neodiff_loss, neodiff_sample, sample_taus,
    tau_labels, tau_pmf,
)
from tokjax.losses.soft_tokens import (  # P37; registers "soft_tokens"
    FUZZY_TAU, KIND_HARD, KIND_NONE, KIND_SOFT, SOFT_TAU, cot_log_likelihood, gaussian_log_density,
    make_soft_tokens_loss, soft_input, soft_mixture, soft_token_logp, soft_tokens_loss,
)

__all__ = [
    # P56 D3S (rl_train plug-ins), P66 future token prediction
    "D3S", "D3STokenMask", "d3s_token_mask", "linear_ratio", "max_variance_subset", "token_scores",
    "RLFR", "filter_scores", "flow_batches", "flow_matching_loss", "flow_score", "flow_velocity", "init_flow",
    "latent_scores", "model_pairs", "normalize_scores", "rlfr_advantages",
    "THRWeights", "model_token_hidden_reward", "thr_weights", "token_hidden_reward",
    "LaSeR", "append_token", "last_token_logp", "mix_advantages", "reference_constant", "self_advantages",
    "self_reward", "self_reward_loss", "self_verification_f1", "weighted_vote", "z_c_logp",
    "gumbel_max_sample", "make_one_token_rollout_loss", "one_token_rollout_loss", "otr_expected_loss",
    "otr_rewards", "sampled_logp",
    "caft_loss", "caft_per_head", "caft_pretrain_heads", "init_caft_heads", "make_caft_loss",
    "make_caft_pretrain_loss",
    "make_tvm_loss", "outcome_labels", "rerank_best_of_n", "token_values", "trie_value_labels",
    "trie_value_labels_host", "tvm_loss", "value_head", "value_head_init",
    "NeoDiffDecode", "make_neodiff_loss", "neodiff_decoder", "neodiff_init", "neodiff_loss", "neodiff_sample",
    "sample_taus", "tau_labels", "tau_pmf",
    "FUZZY_TAU", "KIND_HARD", "KIND_NONE", "KIND_SOFT", "SOFT_TAU", "cot_log_likelihood", "gaussian_log_density",
    "make_soft_tokens_loss", "soft_input", "soft_mixture", "soft_token_logp", "soft_tokens_loss",
    "MLMU_KEY", "MLMUDecode", "decoder_config", "init_mlm_u", "make_mlm_u_loss", "mlm_u_logits", "mlm_u_loss",
    "mlm_u_visibility",
    "first_loss", "identifier_scores", "make_first_loss", "ranknet_loss", "ranknet_pair_weights",
    "FTPConfig", "FTPDecode", "ftp_config", "ftp_loss", "ftp_logits", "ftp_next_logits", "ftp_per_token",
    "ftp_weights", "init_ftp", "make_ftp_loss",
    "dro_optimal_tau", "dro_tau_derivative", "init_tempnet", "make_tempnet_loss", "tempnet_dro_loss",
    "tempnet_dro_per_token",
    "make_span_corruption_loss", "random_spans_noise_mask", "span_corruption_loss", "span_corruption_rows",
    "ilm_batch", "ilm_batch_from_drops", "ilm_forward", "ilm_loss", "ilm_targets", "make_ilm_loss",
    "bradley_terry_loss", "dpo_loss", "dpo_per_pair", "implicit_token_rewards", "make_dpo_loss",
    "sequence_implicit_reward", "check_token_weights",
    # token-level preference and imitation: P17 cDPO, P48 TGDPO, P51 T-REG, P60 inverse RL
    "cdpo_weights", "contrastive_scores_from_hidden", "contrastive_token_scores", "make_cdpo_loss",
    "make_tgdpo_loss", "tgdpo_weights", "contrastive_prompt_rewards", "make_t_reg_loss", "normalised_token_rewards",
    "t_reg_regularizer", "inverse_rl_loss", "make_inverse_rl_loss", "soft_q", "td_rewards",
    "DAPO_EPS_HIGH", "DAPO_EPS_LOW", "dapo_loss", "dapo_token_objective",
    "group_advantages", "token_entropy", "top_entropy_mask",
    "CE_REDUCTIONS", "DEFAULT_BLOCK_SIZE", "METHODS", "REDUCTIONS", "STATS", "Chain", "Identity", "LossTransform",
    "NamedChain", "Prior", "TokenStats", "TokenWeights", "chain", "cross_entropy", "cut_cross_entropy",
    "head_stats", "make_next_token_loss", "named_chain", "next_token_loss", "per_token_nll", "prior",
    "prior_weights", "reduce_loss", "reference_logp", "sequence_count", "shifted_completion_mask",
    "sum_and_count", "token_count", "token_stats", "token_weights", "check_reduction", "check_token_ids",
    # SimCSE (the contrastive baseline of P71)
    "info_nce", "make_simcse_loss", "random_crops", "simcse",
    # registry
    "RegisteredLoss", "loss_from_spec", "loss_names", "loss_options", "make_loss", "register_loss",
    # distillation: KD, P12, P34, P15
    "kd_loss", "make_kd_loss", "coactivation_graph", "graph_on_logits_loss", "make_gld_loss", "sorted_gw",
    "topk_features", "binary_kl_norm", "dual_head_kd", "init_aux_head", "make_dual_head_kd_loss",
    "project_conflicting", "adaptive_weight", "aligndistil_loss", "aligndistil_per_token", "extrapolated_logits",
    "make_aligndistil_loss",
    # P41
    "FourierOutput", "autocorrelate", "bin_centers", "fourier_head", "fourier_head_init", "fourier_head_loss",
    "fourier_pdf", "fourier_regularizer",
    # P49
    "SCHEDULES", "make_scheduled_sampling_loss", "mix_self_generated", "reference_answer_correction",
    "scheduled_probability", "scheduled_sampling_loss", "self_generated_tokens",
    # P71
    "POOLINGS", "data_driven_targets", "make_text2token_loss", "model_derived_targets", "text2token",
    "text2token_from_logits", "text_embedding", "token_idf",
]
