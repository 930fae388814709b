"""Decoding: one driver (generate, stream) and the strategies that decide what a step does.

* :func:`generate` / :func:`stream` (module :mod:`~tokjax.decoding.driver`) -- one jitted
  while_loop; ``strategy=`` decides what a step does (a :class:`Strategy` subclass),
  ``strategy_state=`` hot-starts it, ``mesh=`` / ``rules=`` shard it; ``logprobs=``, ``stop=``,
  ``min_new_tokens=``, ``n=``, ``bucket=`` and ``on_nan=`` work with every strategy (docs/generate.md).
* :func:`speculative` (``draft source x verifier``) -- :mod:`~tokjax.decoding.drafts`
  (``model``, ``prompt_lookup``, ``ngram_memory`` P22, ``recycling`` P45, ``early_exit`` P44,
  ``nested`` P59) and :mod:`~tokjax.decoding.verify` (``greedy``, ``rejection``, ``tree``), plus
  :func:`~tokjax.decoding.spectr.spectr` (P23).
* :func:`beam` (module :mod:`~tokjax.decoding.beam`): beam search with transformers' semantics.
* :func:`~tokjax.decoding.kangaroo.kangaroo` (P44): ``early_exit`` drafts verified from the shallow exit
  (the shallow layers' KV reused).
* :func:`~tokjax.decoding.skipdecode.skipdecode` (P16): a layer-skipping strategy.
* :func:`~tokjax.decoding.cautious.cautious` (P6): forked trials to punctuation, min-perplexity commit.
* :func:`~tokjax.decoding.entropy_adaptive.entropy_adaptive` (P62): small/large model switching,
  the large model and its cache in strategy state.
* :mod:`~tokjax.decoding.cascades` (P42): token-level deferral scores for small -> large model cascades.
* :func:`~tokjax.decoding.insertion.insertion` (P14): insertion-LM decoding, one bidirectional forward per
  inserted token over the joint (gap, token) distribution, a stop head deciding when to end.
* :func:`~tokjax.decoding.navigation.in_context_navigation` (P73): rounds of greedy answers, each prompt listing
  the answers already given; top-N-first-token and sampling baselines.
* :func:`~tokjax.decoding.r2r.r2r` (P46): R2R small->large token routing by a learned router on the small
  model's step (hidden, token embedding, top-100 logits); entropy / random routers share the step
  (the router is fit by :func:`tokjax.train.recipes.r2r.train_router`).
* :func:`~tokjax.decoding.sap.sap` (P76): SAP few-shot prompting of a span-corruption (prefix-LM) model --
  greedy infill of prompt + output + sentinel, keep the first k tokens, repeat; ``PrefixLM`` is the strategy.
* :func:`~tokjax.decoding.soft_thinking.soft_thinking` (P72): thinking steps feed a probability-weighted mixture
  of embeddings ("concept token") to the next step; Cold Stop; discrete decoding after thinking.
* :func:`~tokjax.decoding.soft_tokens.soft_tokens` (P37): RL rollouts with soft / fuzzy chain-of-thought inputs
  softmax(z / tau) E + sigma N(0, I), recording what the ``soft_tokens`` loss needs; hard answer tokens.
* :func:`~tokjax.decoding.think_at_hard.think_at_hard` (P58): a decider picks hard tokens for a second, latent
  iteration with LoRA on (duo-causal attention, iteration-keyed cache); registers losses ``tah`` and ``tah_decider``.
"""

from tokjax.decoding import cascades, drafts, spectr, verify
from tokjax.decoding._state import (
    KV_CACHE, DecodeState, DecodeStats, StopSequences, Strategy, TokenLogprobs, commit, sample_and_commit,
)
from tokjax.decoding.driver import (
    TRACE_COUNTS, GenerateOutput, MinNewTokens, NonFiniteLogitsError, Sampling, bucket_size, generate, stream,
)
from tokjax.decoding.skipdecode import SkipDecode, skipdecode, skipdecode_loss
from tokjax.decoding.beam import Beam, beam
from tokjax.decoding.cautious import Cautious, cautious, cautious_generate
from tokjax.decoding.entropy_adaptive import (
    EADOutput, EntropyAdaptive, entropy_adaptive, entropy_adaptive_generate, entropy_bits,
)
from tokjax.decoding.speculative import Draft, DraftSource, Speculative, Verdict, Verifier, speculative
from tokjax.decoding.stand import NgramTables
from tokjax.decoding.kangaroo import Kangaroo, kangaroo
from tokjax.decoding.token_recycling import RecyclingTable
from tokjax.decoding.insertion import Insertion, insertion
from tokjax.decoding.r2r import (
    R2R, DivergenceData, RouterFeatures, apply_router, divergence_data, init_router, r2r, recall_threshold,
    router_features, router_probs,
)
from tokjax.decoding.sap import PrefixLM, SAPOutput, infill, prefix_lm, sap
from tokjax.decoding.soft_thinking import SoftThinking, soft_thinking
from tokjax.decoding.soft_tokens import SoftTokens, rollout_arrays, soft_tokens
from tokjax.decoding.think_at_hard import (
    DeciderFeatures, ThinkAtHard, apply_decider, decider_features, decider_loss, duo_causal_mask, init_decider,
    oracle_labels, soft_input, tah_logits, tah_loss, think_at_hard,
)
from tokjax.decoding.scoring import ScoredContinuations, score_continuations
from tokjax.decoding.navigation import (
    Navigation, NavigationTemplate, in_context_navigation, navigation_prompt, sample_answers, top_n_first_tokens,
)

__all__ = [
    "Insertion", "insertion", "SoftThinking", "soft_thinking", "SoftTokens", "rollout_arrays", "soft_tokens",
    "DeciderFeatures", "ThinkAtHard", "apply_decider", "decider_features", "decider_loss", "duo_causal_mask",
    "init_decider", "oracle_labels", "soft_input", "tah_logits", "tah_loss", "think_at_hard",
    "R2R", "DivergenceData", "RouterFeatures", "apply_router", "divergence_data", "init_router", "r2r", "recall_threshold",
    "router_features", "router_probs",
    "PrefixLM", "SAPOutput", "infill", "prefix_lm", "sap",
    "ScoredContinuations", "score_continuations",
    "Navigation", "NavigationTemplate", "in_context_navigation", "navigation_prompt", "sample_answers",
    "top_n_first_tokens",
    "DecodeState", "DecodeStats", "Strategy", "KV_CACHE", "commit", "sample_and_commit", "TRACE_COUNTS", "GenerateOutput", "Sampling",
    "TokenLogprobs", "StopSequences", "MinNewTokens", "NonFiniteLogitsError", "bucket_size", "Beam", "beam",
    "generate", "stream", "cascades", "Draft", "DraftSource", "Speculative", "Verdict", "Verifier", "speculative",
    "drafts", "verify", "spectr", "NgramTables", "RecyclingTable", "SkipDecode", "skipdecode", "skipdecode_loss",
    "Cautious", "cautious", "cautious_generate", "EADOutput", "EntropyAdaptive", "entropy_adaptive",
    "entropy_adaptive_generate", "entropy_bits", "Kangaroo", "kangaroo",
]
