"""The paper catalog: one entry per paper, tying paper -> code -> test -> experiment.

Every one of the 78 papers tokjax covers (P1..P78) has exactly one :class:`Entry` here.
An entry records where the method lives (``module`` and its public ``names``), which test
file checks it, which script in ``experiments/`` tries to reproduce its headline claim,
and a ``status``:

``planned``         nothing exists yet; module/test/experiment are the paths it *will* use
                    and ``names`` are the intended public names (correct them on landing).
``implemented``     the module, names, test and experiment all exist (checked by
                    ``tests/test_catalog.py``), but no verdict has been recorded yet.
and, once an experiment has run in full mode, a summary of its per-claim verdicts.

Each implemented paper lists its headline claims (:class:`Claim`, usually 1-3: "lossless",
"more tokens per target call", "faster wall-clock"), each with its own status from its row in
``experiments/RESULTS.md`` (one row per ``(paper, claim id)``; ``tests/test_catalog.py`` ties
every claim to its row):

``reproduced``      a fair test at our scale met the declared threshold on every seed;
``not-reproduced``  a fair test at our scale failed on every seed;
``inconclusive``    the test lacked power (the seeds disagree); the reason says what would decide it;
``untested-here``   the claim needs a resource we lack (a GPU, a 7B model); the reason names it.

The paper's status summarises its claims: ``reproduced`` only when every claim is, ``partial``
when some are, else ``not-reproduced`` when any claim is, else ``inconclusive`` when any is,
else ``untested-here``. Quick runs (``RESULTS-quick.md``) never set a status.

The README's method table is generated from this file (``python -m tokjax._readme``) so
the README can never claim more than the catalog, and the catalog's claims are checked
by tests. The table below is literal data on purpose: the paper list it was transcribed
from (``papers/ABSTRACTS.md``) is not shipped with the package.

To land a method, edit its ``_e(...)`` line: add ``status="implemented"`` (and fix
``names`` if they changed); once its experiment has run in full, add ``claims=(_c(...), ...)``
(the status then follows from them).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CLAIM_STATUSES",
    "Claim",
    "Entry",
    "FAMILIES",
    "STATUSES",
    "by_family",
    "by_status",
    "entries",
    "format_table",
    "get",
    "main",
    "paper_status",
    "summary",
    "verify",
]

# Ordered from least to most claimed; summary() and tables keep this order.
CLAIM_STATUSES: tuple[str, ...] = ("reproduced", "not-reproduced", "inconclusive", "untested-here")
STATUSES: tuple[str, ...] = ("planned", "implemented", "reproduced", "partial", "not-reproduced", "inconclusive",
                             "untested-here")
FAMILIES: tuple[str, ...] = (
    "decoding", "logits", "losses", "tokenizers", "metrics", "analysis", "vision", "training",
)
N_PAPERS = 78

# Family -> package directory under tokjax/ (and tests/); only "training" differs.
_FAMILY_DIR = {f: f for f in FAMILIES} | {"training": "train"}
_PID_RE = re.compile(r"^[Pp]?(\d+)$")
_EXPERIMENT_RE = re.compile(r"^experiments/p(\d{2})_[a-z0-9_]+\.py$")
_ROOT = Path(__file__).resolve().parents[1]


_CLAIM_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One headline claim of a paper and its verdict here (the row ``(pid, id)`` of RESULTS.md)."""

    id: str  # slug, the experiment's Row.claim_id: "lossless", "speed", "main"
    text: str  # the paper's claim in one line
    status: str  # one of CLAIM_STATUSES
    reason: str = ""  # why this verdict; required unless reproduced (what would decide / what is missing)


def paper_status(claims: Iterable[Claim]) -> str:
    """Returns a paper's status from its claims' statuses (see the module docstring)."""
    got = [c.status for c in claims]
    if not got:
        raise ValueError("paper_status() needs at least one claim")
    if all(s == "reproduced" for s in got):
        return "reproduced"
    if "reproduced" in got:
        return "partial"
    for s in ("not-reproduced", "inconclusive"):
        if s in got:
            return s
    return "untested-here"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One paper: where its method lives, how it is tested and reproduced, and its status."""

    pid: str  # "P29"
    title: str  # exact paper title
    family: str  # one of FAMILIES
    module: str  # dotted module path, e.g. "tokjax.losses.cut_cross_entropy"
    names: tuple[str, ...]  # public names in `module`
    test: str  # test file, relative to the repository root
    experiment: str  # experiment script, relative to the repository root
    status: str  # one of STATUSES; with claims, paper_status(claims)
    note: str = ""  # one line: what the method is, or why its status is what it is
    claims: tuple[Claim, ...] = ()  # headline claims with their verdicts (after a full run)

    @property
    def number(self) -> int:
        """Returns the paper number (29 for "P29")."""
        return int(self.pid[1:])

    @property
    def module_path(self) -> str:
        """Returns the module's source file relative to the repository root."""
        return self.module.replace(".", "/") + ".py"

    @property
    def experiment_module(self) -> str:
        """Returns the experiment's dotted module name ("experiments.p29_cut_cross_entropy")."""
        return self.experiment[: -len(".py")].replace("/", ".")


def _c(id: str, status: str, text: str, reason: str = "") -> Claim:
    """Returns a Claim (argument order as it reads in the table below)."""
    return Claim(id=id, text=text, status=status, reason=reason)


def _e(number: int, title: str, family: str, module: str, names: tuple[str, ...], note: str,
       *, status: str = "planned", test: str | None = None,
       experiment: str | None = None, claims: tuple[Claim, ...] = ()) -> Entry:
    """Returns an Entry whose test and experiment paths follow the layout convention.

    With ``claims`` the status is their summary (``paper_status``); ``status`` must then be left
    at its default or say ``implemented``.
    """
    claims = tuple(claims)
    if claims:
        if status not in ("planned", "implemented"):
            raise ValueError(f"P{number}: give claims or a verdict status, not both (status={status!r})")
        status = paper_status(claims)
    # Convention (DESIGN.md): tests mirror tokjax/, experiments are experiments/pNN_<leaf>.py.
    leaf = module.rsplit(".", 1)[-1]
    return Entry(
        pid=f"P{number}",
        title=title,
        family=family,
        module=module,
        names=tuple(names),
        test=test if test is not None else f"tests/{_FAMILY_DIR.get(family, family)}/test_{leaf}.py",
        experiment=experiment if experiment is not None else f"experiments/p{number:02d}_{leaf}.py",
        status=status,
        note=note,
        claims=claims,
    )


# fmt: off
_ENTRIES: tuple[Entry, ...] = (
    _e(1, 'CAAD: Context-Aware Adaptive Decoding for Truthful Text Generation',
       'logits', 'tokjax.logits.caad', ('caad', 'caad_store', 'caad_store_ids', 'CAADStore', 'hashed_ngram_embedder'),
       'RAD: a grounding store of teacher-forced fp32 logits keyed by hashed uni/bigrams of the last 8 tokens '
       '(SBERT is unavailable offline; the embedder is pluggable), cosine top-k, s > tau, similarity-weighted '
       'mean r, z + alpha r (or delta / prob-interp), alpha and tau runtime; the official code indexes by L2 '
       'while thresholding a similarity, here cosine as the paper says. Evaluated on tokjax.data.python_facts '
       '(truth = eval) with SmolLM2-135M-Instruct; variant chosen on the validation split: linear alpha=0.5 tau=0.9',
       claims=(_c('vs-greedy', 'not-reproduced', 'a grounding store of 100 truthful pairs raises exact match over greedy decoding by >= 2 points (paper: +2.8 on TruthfulQA)',
                  '9.22% vs 8.89% over 3 draws of 300 held-out facts, per draw +0.3333, +0.3333, +0.3333 points (below the declared 2); paired-bootstrap CI [-0.11, 0.89]'),
               _c('transfer', 'reproduced', 'a store built on some families does not hurt facts of unseen families (declared: difference >= 0)',
                  '5.72% vs 5.72%, per draw +0, +0, +0 (CI [0.00, 0.00]): identical answers, so no harm but no cross-task gain either; the paper reports gains'),
               _c('vs-few-shot', 'not-reproduced', 'retrieval-augmented logits beat in-context use of the same 10 grounding examples',
                  'caad-10 8.89% vs 10-shot 16.89%, per draw -6.333, -9.333, -8.333 points (CI [-10.11, -6.00]): the examples help far more as chat turns'))),
    _e(2, 'To Cool or not to Cool? Temperature Network Meets Large Foundation Models via DRO',
       'logits', 'tokjax.logits.tempnet',
       ('tempnet', 'TempNetTemperature', 'tempnet_init', 'tempnet_apply'),
       'official TempNet (L2-normalised centred logits -> 256 -> softmax pooling -> bounded sigmoid) as a logit '
       'transform, and the DRO loss tau*CE(z/tau) + (rho - log V)*tau registered as tempnet (joint or frozen base; '
       'TempNet reads detached logits; tokjax.losses.tempnet: make_tempnet_loss, dro_optimal_tau, init_tempnet)',
       claims=(_c('entropy', 'not-reproduced', "TempNet's tau rises with the true conditional entropy of the next token",
                  'on a planted copy / uniform-random corpus (frozen tiny LM, 3 seeds) Spearman(tau, true entropy) is -0.8412: the '
                  'DRO loss drives every token to the tempered entropy log V - rho (its tau-gradient does not depend on the '
                  'target), cooling flat rows and heating peaked ones'),
               _c('nll', 'not-reproduced', 'held-out NLL of z / tau(z) is no worse than at the best single global temperature',
                  'TempNet 1.685 vs 1.682 nats/token at the validation-chosen global T (rho chosen on validation), worse on '
                  'every seed; the loss does not target NLL'),
               _c('tau-star', 'reproduced', "the trained TempNet's tau lands near the per-token minimiser of the DRO loss",
                  'mean |log tau - log tau*| 0.0419 vs 0.722 for the best constant tau, 3 seeds'),
               _c('smollm-nll', 'not-reproduced', 'on a frozen real LM (SmolLM2-135M-Instruct), held-out NLL of z / tau(z) is no worse than at the best single global temperature',
                  'TempNets for rho 7.5 / 8.5 / 9.5 x lr 1e-2 / 1e-3 / 1e-4, 200 steps of 2 x 128 pydocs tokens, chosen on validation (lr 0.01, rho 9.5): held-out NLL 3.927 vs 3.201 at T* = 1.047; the chosen net is a constant tau 1.66 (10/50/90% 1.66/1.66/1.66, Spearman with entropy 0.000), and the smaller learning rates left tau near its initial value (NLL 5.6650 and 5.8277); the official GPT-2 TempNet trains far longer at lr 2e-6'),
               _c('smollm-word-problems', 'not-reproduced', "sampling at TempNet's tau(z) beats a fixed default temperature (0.7) on a real LM",
                  'word_problems level 1, 200 problems, same keys: accuracy 0.01 at tau(z) vs 0.09 at T = 0.7 (paired-bootstrap 95% CI of the difference [-0.125, -0.040]); the constant tau 1.66 samples too flat to state an answer'),
               _c('frozen-llm', 'untested-here', 'TempNet trained on a frozen LLaMA-2-chat raises its AlpacaEval win rate',
                  'needs a 7B+ chat LLM and a GPT-4 judge, neither available offline'),)),
    _e(3, 'PromptReps: Prompting Large Language Models to Generate Dense and Sparse Representations for Zero-Shot Document Retrieval',
       'analysis', 'tokjax.analysis.promptreps',
       ('encode_prompted', 'sparse_reps', 'sparse_scores', 'hybrid_scores', 'prompt_ids', 'text_token_ids'),
       'dense (final-normed last hidden) and sparse (log(1 + ReLU(logits)) on the text\'s own non-stopword word ids, '
       'top 128, x100 quantised) vectors from one prompted forward with the official prompts, min-max hybrid '
       '(alpha 0.5); evaluated on tokjax.data.pydocs_retrieval against BM25 and a mean-pooled embedding',
       claims=(_c('vs-bm25', 'inconclusive', 'zero-shot PromptReps (the dense + sparse hybrid) matches or beats BM25',
                  'on SmolLM2-135M-Instruct over the pydocs retrieval set (708 documents, 202 test queries, 3 draws of the '
                  'held-out sentences) hybrid nDCG@10 0.328 vs BM25 0.3318, above BM25 on one draw and below on two (within '
                  '0.014); more queries or a larger instruction-tuned model would decide it'),
               _c('vs-parts', 'reproduced', 'the hybrid beats each of its parts',
                  'hybrid 0.328 vs the better part (sparse) 0.2962 nDCG@10, on every draw'),
               _c('vs-embedding', 'reproduced', 'prompted last-token dense vectors beat the same model\'s mean-pooled embedding',
                  'dense 0.2244 vs mean-pooled 0.1941 nDCG@10 on every draw; the paper compares with trained embedders, '
                  'which are not available offline'),)),
    _e(4, 'Better Language Model Inversion by Compactly Representing Next-Token Distributions',
       'analysis', 'tokjax.analysis.pils', ('alr_features', 'vocab_subset', 'logprob_sequence', 'fit_alr_map', 'init_inverter', 'pils_loss', 'invert', 'FeaturePrefixLM'),
       'PILS: log-prob vectors of T greedy steps from one teacher-forced forward, additive log-ratios on a fixed '
       'random vocab subset of D+101 ids, a tokjax prefix LM reading the projected features as Inputs(embeds=...) '
       'under Prefix(T) (registered loss "pils"), greedy inversion through tokjax.generate (FeaturePrefixLM, a '
       'PrefixLM Strategy). Full run on SmolLM2 (864 template prompts, held-out verb x topic x style '
       'combinations, 3 seeds): the ALR-to-hidden map is exact (relative residual 2.64e-06) and PILS-16 recovers '
       '99.03% of held-out prompts vs 31.2% for a text-only inverter, but one step already recovers 99.42% (a '
       'template prompt is pinned down by one log-prob vector), and 32 test steps hurt an inverter trained on 16',
       claims=(_c('alr-exact', 'reproduced', 'ALR features on D+1 vocabulary ids are a lossless linear image of the final hidden state (least squares residual < 1e-3)',
                  'relative residual 2.64e-06 on 5504 held-out greedy steps of SmolLM2 (K = 677 ids, map fitted black-box on 19392 steps; white-box through the unembedding 2.62e-06)'),
               _c('vs-one-step', 'not-reproduced', 'PILS reading 16 steps recovers hidden prompts >= 10 points more often than reading one step',
                  'exact recovery 99.03% (16 steps) vs 99.42% (1 step), per seed +0 / +0 / -1.163 against the declared +10: on these template prompts one log-prob vector already identifies the prompt (a ceiling), so the setting cannot show the gain of more steps'),
               _c('vs-text', 'reproduced', 'PILS beats a text-only inverter reading the same 16 generated tokens by >= 10 points',
                  '99.03% vs 31.2% exact recovery, per seed +66.28 / +68.6 / +68.6 (3 seeds, the same inverter recipe, checkpoints chosen on validation)'),
               _c('longer-test', 'not-reproduced', 'an inverter trained on 16 steps recovers more prompts when given 32 steps at test time',
                  '59.11% with 32 test steps vs 99.03% with 16, per seed -35.47 / -30.81 / -53.49: the 16-step inverter does not generalise to longer feature sequences here; a likely cause (untested): ours is a prefix LM, so with 32 feature slots the prompt tokens sit 16 positions later than in training, where the paper\'s T5 encoder-decoder keeps the decoder positions fixed'),)),
    _e(5, 'Hierarchical Masked Autoregressive Models with Low-Resolution Token Pivots',
       'vision', 'tokjax.vision.himar', ('himar', 'HiMAR', 'make_himar_loss', 'himar_batch_fn', 'himar_init', 'himar_replay', 'pool_images'),
       'two masked-set phases on one backbone: low-resolution pivot codes, then the dense codes reading the '
       'pivots\' phase-1 hidden states (Inputs(embeds=), pivot dropout, phase-1 features detached), the official '
       'truncnorm / cosine mask ratios, cosine fill and linear CFG per phase, the official loss weights; categorical '
       'heads instead of the diffusion heads (deviation). MaskGIT parallel_decode (Gumbel top-k) is the reusable '
       'Strategy in tokjax.vision.masked_set. Full run (3 seeds, class-conditional 8x8 glyphs): at matched decode '
       'slot-passes Hi-MAR does not beat one-phase MaskGIT (FD 41.7 vs 35.65 at 715-716 slot-passes); both models '
       'stay near chance class consistency, so the comparison is of undertrained samplers',
       claims=(_c('fd-matched-4', 'inconclusive', 'Hi-MAR (4 pivot + 4 dense steps) beats one-phase masked AR at equal decode compute',
                  'FD 41.55 vs MaskGIT 6 steps 39.43 at 392 vs 390 slot-passes; per-seed differences -3.424, -7.29, +4.359 (mixed signs over 3 seeds); samples near chance class consistency (0.20)'),
                _c('fd-matched-8', 'not-reproduced', 'Hi-MAR (4 pivot + 8 dense steps) beats one-phase masked AR at equal decode compute',
                  'FD 41.7 vs MaskGIT 11 steps 35.65 at 716 vs 715 slot-passes; MaskGIT better on all 3 seeds (-10.05, -7.254, -0.8195); a CPU-sized model (d=64, 2 layers) with categorical heads instead of the paper\'s diffusion heads'),),
       test='tests/vision/test_himar.py', experiment='experiments/p05_himar.py'),
    _e(6, 'Cautious Next Token Prediction',
       'decoding', 'tokjax.decoding.cautious', ('cautious', 'cautious_generate', 'Cautious', 'run_trials', 'num_trials', 'best_of_n', 'BestOfN', 'sequence_nll'),
       'CNTP as a jitted batched decode strategy (entropy -> N trials to the next punctuation, the min-'
       'perplexity trial committed); best_of_n (sequence perplexity) as the matched-compute baseline. '
       'On a Fibonacci-like chain mod 10 with one final answer (tiny models, 3 seeds): 0.578 vs 0.44 '
       'for plain sampling and 0.6033 for best-of-N at about equal forward tokens: inconclusive',
       status='implemented', claims=(_c('vs-sampling', 'inconclusive', 'CNTP (entropy-adaptive trials to the next punctuation, min-perplexity kept) beats plain sampling',
                        'final-answer accuracy 0.578 vs 0.44 on a single-answer chain task (3 seeds); gains +0.302 and +0.124 on two seeds, -0.012 on the seed whose model stayed weak: the mean is within 2 s.e.; more seeds or models that all learn the task would decide it'),
                _c('vs-matched-compute', 'inconclusive', 'CNTP beats best-of-N by sequence perplexity at equal forward tokens',
                        '0.578 vs best-of-N 0.6033 (per seed +0.034, -0.126, +0.016); best-of-N spent somewhat more forward tokens than CNTP (N rounded up), so an interpolated best-of-N and more seeds would decide it'),), test='tests/decoding/test_cautious.py', experiment='experiments/p06_cautious.py'),
    _e(7, 'Reinforcement Mid-Training',
       'training', 'tokjax.train.rmt', ('rmt', 'RMTConfig', 'RMTTask', 'token_budget', 'length_reward', 'rmt_reward', 'curriculum_probs', 'base_entropy', 'make_ntp_aux', 'reason_then_predict'),
       'RMT on rl_train: the model reasons, then predicts the next token; reward = match + a triangular length '
       'reward around the budget B_k = max(B_min, B_0 gamma^(k / T^kappa)); contexts sampled easy to hard by '
       'base-model entropy; GRPO on the sampled tokens + lambda NTP on their windows through rl_train\'s aux / '
       'prepare plug points (lambda a runtime array; lambda = 0 with a fixed budget is plain GRPO, bit for bit, '
       'tested). No official code: the length-reward shape, sampler and lambda are our documented choices. '
       'Full run: tiny-pydocs (0.87M) + a 400-step format warm start, 120 RL steps x 8 contexts x G = 8, 3 seeds, '
       '600 held-out positions. The 4-layer base answers far worse after reasoning than directly (warm start: '
       'reasoned 0.060 vs direct 0.425; longer warm starts did not close it), so every arm here measures that '
       'format deficit more than RMT',
       claims=(_c('vs-ntp', 'not-reproduced', 'RL mid-training (reason, then predict the next token) beats continued next-token training (paper: up to +64.91% next-token performance over RPT)',
                  'reasoned accuracy 0.0322 vs 0.4378 direct for matched-compute NTP, per seed -0.3983, -0.4067, -0.4117: the reasoned format itself costs ~0.4 here'),
               _c('shorter', 'inconclusive', 'the dynamic budget and length reward shorten reasoning (paper: 21% of RPT\'s length)',
                  'greedy reasoning length 0.9983 tokens with the length reward vs 0.0894 without (the no-budget arm learned to skip reasoning), and RMT\'s reasoned accuracy is below it by more than the declared slack (0.032/0.032/0.033 vs 0.055/0.070/0.075): the declared gate makes it inconclusive'),
               _c('curriculum', 'not-reproduced', 'the easy-to-hard entropy curriculum improves RMT (paper ablation)',
                  'reasoned accuracy 0.0322 with vs 0.0356 without, per seed +0.003333, -0.01167, -0.001667 (bar +0.01 every seed)'),
               _c('scale', 'untested-here', 'RMT checkpoints post-train better (+18.76% maths) and scale to 14B',
                  'needs reasoning-capable multi-billion-parameter models, RPT\'s data and a maths post-training stage; not runnable on 2 CPU cores'))),
    _e(8, 'Transformers Can Navigate Mazes With Multi-Step Prediction',
       'losses', 'tokjax.losses.mlm_u', ('init_mlm_u', 'mlm_u_loss', 'make_mlm_u_loss', 'mlm_u_logits', 'mlm_u_visibility', 'MLMUDecode'),
       'PAST encoder-decoder on the shared forward: the encoder attends only to visible tokens (Explicit mask); '
       'the decoder has position-only queries (one learned vector + RoPE) reading the encoder output through '
       'memory_cache, no query-query attention, tied head; registered "mlm_u" (official absorbing masks: path '
       'tokens visible with prob r ~ U(0,1), prompt always; mean CE over hidden tokens); MLMUDecode = the '
       'official left-to-right greedy eval as a generate Strategy; Maze.aotp gives the official AOTP form. '
       'Star-graph diagnostic run in full (3 seeds): MLM-U loses to NTP (0.056 vs 0.5213 exact paths) because in '
       '3000 steps it has not learned to follow an edge. Mazes (sizes 4 and 5, 1500 steps, 3 seeds): NTP beats MLM-U '
       'at both sizes (size 4: 0.636 / 0.728 / 0.59 vs 0.342 / 0.358 / 0.34) and MLM-U never reaches NTP\'s final '
       'accuracy; at this budget MLM-U is step-limited, not data-limited (1/4 of the mazes gives the same 0.34)',
       claims=(_c('star-graph', 'not-reproduced', 'MLM-U solves star-graph path finding where teacher-forced NTP stays near 1/degree',
                  'greedy exact-path accuracy MLM-U 0.056 vs NTP 0.5213 (NTP at 1/degree: the Clever-Hans guess at the centre), per seed -0.53 / -0.5 / -0.366 against +0.25; diagnosis from teacher-forced accuracy by path position: NTP follows every edge (1.0) and guesses only at the centre, while MLM-U (3+3 layers, 3000 steps x 64, far below the paper\'s training) predicts the interior nodes at 0.154-0.232 on seed 1, i.e. has not learned edge-following; seed 2 has begun from the target backwards (0.956 just before it) and reaches 0.158. Reported as declared, no post-hoc tuning'),
                _c('every-size', 'inconclusive', 'MLM-U >= NTP at every maze size, and >= +10 points where NTP < 90%',
                   'by the declared guard (no arm above 0.5 at size 5: NTP 0.332 / 0.372 / 0.326, MLM-U 0.04 / 0.004 / 0.024); where a model did learn (size 4) NTP wins on every seed (0.636 / 0.728 / 0.59 vs MLM-U 0.342 / 0.358 / 0.34; margins -0.394 / -0.47 / -0.402 against 0). 1500 steps x 32 on 10000 mazes per size, far below the paper\'s training'),
                _c('sample-efficiency', 'not-reproduced', 'MLM-U with 1/4 of the training mazes >= NTP with all of them (4x sample efficiency)',
                   'size 4: MLM-U on 1/4 of the mazes 0.3233 vs NTP on all 0.6513 (per seed -0.292 / -0.442 / -0.25); MLM-U on all the mazes is no better (0.342 / 0.358 / 0.34), so at 1500 steps it is limited by steps, not data'),
                _c('speed', 'not-reproduced', 'MLM-U reaches NTP\'s final accuracy in half the steps (paper: 2x faster in GPU hours)',
                   'on 200 held-out size-4 mazes MLM-U never reaches NTP\'s final accuracy (0.63 / 0.76 / 0.56) within NTP\'s 1500 steps: its curve ends at 0.35 / 0.39 / 0.335; per step MLM-U 3+3 costs 0.800 s vs NTP 0.697 s on this CPU'),)),
    _e(9, 'TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction',
       'vision', 'tokjax.vision.tokenunify', ('tokenunify', 'tokenunify_loss', 'make_tokenunify_loss', 'objective_loss', 'random_token_inputs', 'next_all_inputs', 'sample_objective'),
       'one objective per batch drawn with runtime weights: random-token ([MASK] at the official ratio, '
       'bidirectional), next-token (exactly next_token_loss: weights (0, 1, 0) give its loss and gradient bit '
       'for bit, tested) or next-all (a prefix of k ~ U{1..n-1} codes, the official noise fill, the whole '
       'suffix predicted, bidirectional); mode="sum" adds them (the official second stage); registered '
       '"tokenunify". Categorical heads on glyph codes and a linear probe instead of EM segmentation. Full run '
       '(3 seeds, 1500 steps per arm): the mixture\'s frozen features beat MIM-only and scratch and its gain '
       'over MIM grows from d=32x1 to d=64x2, but plain next-token pre-training beats the mixture (probe '
       'accuracy 0.7625 vs 0.5043)',
       claims=(_c('vs-mae', 'reproduced', 'TokenUnify pre-training beats MAE-style random-token pre-training downstream (+25% on EM segmentation)',
                  'frozen-feature ridge probe of glyph classes: mixture 0.5043 vs random-token only 0.3955 (d=64x2, 3 seeds; +0.115, +0.0925, +0.119)'),
                _c('vs-scratch', 'reproduced', 'TokenUnify pre-training beats training from scratch (+44%)',
                   'probe accuracy 0.5043 vs 0.2618 for the frozen random init (per-seed +0.252, +0.259, +0.2165); a frozen probe, not fine-tuning'),
                _c('vs-ntp', 'not-reproduced', 'the mixture beats plain autoregressive (next-token) pre-training',
                   'next-token-only pre-training gives the better features: probe 0.7625 vs mixture 0.5043, worse in all 3 seeds (-0.2215, -0.2425, -0.3105); glyph codes at toy scale, not EM volumes'),
                _c('scaling', 'reproduced', "the mixture's benefit grows with model size",
                   'gain of mixture over MIM-only: 0.1088 at d=64x2 vs 0.0132 at d=32x1 (per-seed differences +0.121, +0.058, +0.108); two CPU-sized models, not the paper\'s 100M-1B'),)),
    _e(10, 'Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation',
       'vision', 'tokjax.vision.xar', ('xar_init', 'xar_loss', 'make_xar_loss', 'xar_layout', 'xar_ranks', 'xar_sample', 'xar_velocity', 'xar_decode', 'XarDecode'),
       'next-entity prediction (token, row or cell under a Rank mask) with Noisy Context Learning: per-entity t, '
       'context noised too, the network outputs the velocity, t enters through cond_hooks at resid_pre (registered '
       '"xar"; a clean-context ablation); decoding (a tokjax.generate Strategy, xar_decode) caches the previous '
       'entity clean at t = 0 then runs T(s) flow steps per entity (a runtime per-entity schedule). Built on tokjax.vision.flow (MAR '
       'flow head, traced-step sampler, continuous raster AR Strategy). Full run: 16x16 glyphs as 8x8 tokens of '
       '2x2 patches, d=64 x 2, 1000 steps per arm, 3 seeds, 1000 samples: the xAR cell models stay far from the '
       'classes (class consistency 0.15 noisy / 0.17 clean vs 0.67 for raster AR), so at this size xAR is the '
       'weaker generator',
       claims=(_c('noisy-cells', 'inconclusive', 'Noisy Context Learning: cells trained with noisy context beat clean (teacher-forced) context on FD',
                  'FD 178.5 noisy vs 149 clean, per seed -44.56, +0.1632, -44.23 (noisy worse on two seeds, level on one)'),
               _c('matched-compute', 'not-reproduced', 'xAR (cells, noisy context) beats continuous raster AR at equal forward passes (64 each)',
                  'FD 178.5 xAR vs 83.87 raster AR (5 head steps per token), worse on every seed (-76.61, -61.29, -146.1)'))),
    _e(11, 'Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles',
       'tokenizers', 'tokjax.tokenizers.exact_byte_probs',
       ('byte_logprobs', 'byte_conditionals', 'naive_byte_logprobs', 'byte_text_logprob', 'byte_generate', 'token_healing', 'is_canonical'),
       'exact next-byte (and end-of-text) probabilities of a token LM by the Byte-Token Representation lemma: '
       'cover encodings from a byte trie, canonical-prefix check enc(x[:j] + t) == enc(x[:j]) + [t], one '
       'prefill and a forked KV cache per byte; equals exhaustive enumeration of a push-forward byte source to '
       '< 1e-6 where the naive first-byte method gives 0 at a merge boundary. Whole texts in one pass '
       '(byte_conditionals: batched forwards, per-split validity masks with a fast path for GPT-2-regex tokenizers; '
       'the second left encoding at a split whitespace run, whose omission gave the byte after a blank line '
       'probability 0); the ensemble of SmolLM2 and tiny-pydocs (another vocabulary) by their averaged exact '
       'byte distributions reaches 1.378 bits/byte vs 1.662 for the better model. byte_generate is incremental (one new '
       'split point per byte, scored against a KV cache of the tokens the live covers share); token_healing is the '
       'second prompt-boundary baseline',
       claims=(_c('mid-token-next-byte', 'reproduced', 'exact byte-level probabilities remove the prompt-boundary bias of tokenized prompts (the mechanism behind the FIM gains)',
                  'SmolLM2-135M-Instruct on 3 x 30 pydoc lines cut inside a token: next-byte top-1 accuracy 72.22% vs 14.44% for the naive tokenized prompt, every draw above the declared 5 points'),
               _c('fim', 'reproduced', 'byte-level decoding improves fill-in-the-middle code completion (~18%)',
                  'prefix-only line completion (no suffix) from a cursor inside a token, SmolLM2 on 3 x 30 Python stdlib lines with 600 bytes of file context, greedy: exact match 25.56% for byte_generate vs 0.0% for token-level greedy on the prompt\'s tokens (after a partial token the model starts a new word), every draw above the declared 5 points'),
               _c('fim-vs-healing', 'inconclusive', 'byte-level decoding beats token healing on the same completions',
                  'exact match 25.56% vs 22.22% for token healing (one token backed off), per draw +0, +3.333, +6.667: the first draw ties, so the declared every-draw rule is not met; more cursors per draw would decide it'),
               _c('ensemble', 'reproduced', 'byte-level ensembles of models with different vocabularies beat each model (up to 3.7%)',
                  'SmolLM2 (49152 ids) + tiny-pydocs (1024 ids), equal weights, 3 x 8 passages: ensemble 1.378 bits/byte vs SmolLM2 1.662 and tiny-pydocs 1.712; the paired 95% bootstrap of ensemble - better model excludes 0 (here the two models are weak and complementary, so the gain is larger than the paper\'s 3.7%)'),)),
    _e(12, 'InfiGFusion: Graph-on-Logits Distillation via Efficient Gromov-Wasserstein for Model Fusion',
       'losses', 'tokjax.losses.infigfusion', ('graph_on_logits_loss', 'coactivation_graph', 'sorted_gw', 'topk_features', 'make_gld_loss'),
       'top-k co-activation graphs over vocabulary channels (token ids), compared by token id or by '
       'sorted GW closed forms across vocabularies (k, lambda and the sorted statistic unverified: no '
       'criterion code released); KD + GLD (lambda 1) 1.7709 vs KD 1.7709 bits/byte distilling '
       'tiny-pydocs, per-seed gains <= 0.0002 over 3 seeds (threshold 0.003)',
       claims=(_c('main', 'not-reproduced', 'adding Graph-on-Logits Distillation to logit KD improves the student',
                     'per-seed gains <= 0.0002 bits/byte on 3 seeds, threshold 0.003'),)),
    _e(13, 'Next Block Prediction: Video Generation via Semi-Autoregressive Modeling',
       'vision', 'tokjax.vision.nbp', ('nbp_batch_fn', 'nbp_loss', 'nbp_decoder', 'NBPDecode'),
       'next-block prediction: [class][k BOV placeholders][codes], targets shifted by k, a Rank mask by block '
       '(bidirectional within a block, causal across), one block of k raster tokens per pass through '
       'tokjax.generate (CanvasStrategy); k = 1 is exactly next-token prediction (tested: mask, logits, loss); '
       'decoded log-probs = teacher-forced. Official code not read: BOV positions and the bidirectional BOV '
       'block are our reading. Video arm: 4-frame moving glyphs, NBP k=64 (one frame per '
       'block, 4 passes) vs raster NTP (256 passes), 3-D RoPE; an FVD proxy (per-frame classifier FD plus '
       'temporal consistency) replaces FVD',
       claims=(_c('passes', 'reproduced', 'next-block prediction generates with far fewer sequential passes than next-token prediction (paper: 11x faster)',
                  'an 8x8 glyph image in 8 passes (k = 8) vs 64 for raster NTP, by construction; wall-clock is the video-speed claim (on this loaded CPU 1000 images took 13.5 s with k = 8 vs 4.1 s with NTP, both KV-cached)'),
               _c('fd-k8', 'not-reproduced', 'NBP with one-row blocks (k = 8) keeps image quality: FD <= 1.1x raster NTP at the same training steps',
                  'class-conditional glyphs, d=64 models, 3 seeds: FD ratio 2.03 (per seed 1.815, 2.122, 2.152); NTP FD 22.061, k=8 44.966, real-vs-real floor 11.303'),
               _c('video-passes', 'reproduced', 'NBP with one frame per block decodes a 4-frame video in 4 passes (NTP 256)',
                  '4-frame moving glyphs (256 tokens): 4 passes vs 256, by construction of the block mask (one frame per pass)'),
               _c('video-quality', 'inconclusive', 'NBP video quality matches (paper: beats) NTP: FD-proxy <= 1.1x raster NTP at the same steps',
                  '300 steps per arm, 3 seeds: FD-proxy ratio 1.263 (per seed 1.033, 1.559, 1.195; NTP 66.566, NBP 81.591, real floor 8.175); seeds 0 and 2 lie within 2 SE of the bound, so more samples or seeds would decide it; better than NTP (the paper) on no seed'),
               _c('video-speed', 'not-reproduced', 'NBP generates video faster than NTP (paper: 11x): >= 2x videos/s at batch 64',
                  'CPU, KV-cached both, batch 64: 1.266x videos/s (per seed 1.29, 1.19, 1.32); batch 1: 1.5x (124.65 vs 82.50 videos/s); at batch 64 a CPU decode step is compute-bound, so both arms do the same token work and 64x fewer passes buy 1.27x; the paper\'s 11x is on GPU'),)),
    _e(14, 'Insertion Language Models: Sequence Generation with Arbitrary-Position Insertions',
       'decoding', 'tokjax.decoding.insertion', ('insertion', 'Insertion'),
       'insertion LM (loss and stop head as in xlm-core loss_ilm.py / model_ilm.py): joint (gap, token) '
       'cross-entropy on a random subset of dropped target tokens, a stop head on the CLS state; decoding is a '
       'tokjax.generate Strategy, one bidirectional forward per inserted token, no cache. On medium star graphs '
       '(d=128 x4, 6000 steps, 3 seeds) the ILM beats the equal-size causal model on every seed (0.600/0.401/0.477 '
       'vs 0.341/0.355/0.361 exact paths), but by 10 points on only two seeds and above 0.5 on only one',
       claims=(_c('planning-medium', 'inconclusive',
                  'an insertion LM beats an equal-size causal LM on star-graph planning (medium) by >= 10 points',
                  'exact path accuracy on held-out medium star graphs, ILM 0.4927 vs causal 0.3523 (per seed '
                  '+0.259 +0.046 +0.116 against +0.1): the seeds disagree, and by the declared learned gate (the '
                  'better model above 0.5 on every seed) only seed 0 learned the task; the causal model sits near '
                  'the centre guess. 6000 steps x 64 on 50000 graphs, far below the official 80k steps'),
                _c('planning-hard', 'untested-here',
                   'an insertion LM beats an equal-size causal LM on star-graph planning (hard) by >= 10 points',
                   'declared after the medium run with the same rule, not run here: on the 2-core CPU a training '
                   'step at hard\'s 137-token rows takes 1334 ms for the ILM and 857 ms for the causal model '
                   '(measured), so 6000 steps x 3 seeds is about 11 hours of the machine before easy, more than a '
                   '3-hour session, whose processes and cached units end with it; the run is ready for a GPU '
                   '(experiments/p14_insertion.py --only planning-hard)'),)),
    _e(15, 'AlignDistil: Token-Level Language Model Alignment as Adaptive Policy Distillation',
       'losses', 'tokjax.losses.aligndistil', ('aligndistil_loss', 'aligndistil_per_token', 'adaptive_weight', 'extrapolated_logits', 'make_aligndistil_loss'),
       'reverse KL to the token-adaptively extrapolated DPO / reverse-DPO teacher (matches the '
       'official trainer); slower to suppress the bad word than DPO on a toy preference task whose '
       'reverse-DPO model drifts far',
       claims=(_c('main', 'not-reproduced', 'distilling the token-adaptively extrapolated DPO/reverse-DPO teacher aligns faster than DPO',
                     'slower to suppress the bad word than DPO on all 3 seeds (toy task whose reverse-DPO model drifts far)'),)),
    _e(16, 'SkipDecode: Autoregressive Skip Decoding with Batching and Caching for Efficient LLM Inference',
       'decoding', 'tokjax.decoding.skipdecode', ('skipdecode', 'SkipDecode', 'skipdecode_loss', 'layer_mask', 'skip_hooks', 'active_layers', 'linear_schedule', 'mean_active_layers'),
       'batched, KV-safe layer skipping with a non-increasing schedule and the matching training '
       'transform; on SmolLM2-135M (30->15 layers, 17.05 of 30 layers per token) 1.378x wall-clock, but'
       " after a 40-step subset fine-tune the held-out loss is 2.095x the full model's",
       claims=(_c('quality', 'not-reproduced', 'Skipping layers with a non-increasing per-position schedule, after fine-tuning with that schedule, costs negligible quality',
                        'held-out loss 5.982 vs 2.856 at full depth (ratio 2.095) after the 40-step fine-tune of a 36M-parameter subset that fits the CPU budget (the paper fine-tunes the whole model)'),
                _c('speed', 'reproduced', 'SkipDecode (batch- and KV-cache-compatible layer skipping) speeds up decoding'),)),
    _e(17, "Critical Tokens Matter: Token-Level Contrastive Estimation Enhence LLM's Reasoning Capability",
       'losses', 'tokjax.losses.critical_tokens', ('contrastive_token_scores', 'cdpo_weights', 'make_cdpo_loss', 'contrastive_scores_from_hidden'),
       'cDPO: contrastive token scores s_t = softmax(2 z_pos - z_neg)[y_t] (beta_c = 1, as the official '
       'pipeline) in position chunks, weights 1 - s_t on rejected tokens of token-weighted DPO (registered '
       "'cdpo'); on the notes' toy cDPO needs 69.67 steps to P(BAD) < 0.10 against DPO's 68.33 (3 seeds). "
       'On SmolLM2 word problems the critical-token test reproduces: banning the lowest-s_t token of an incorrect '
       'answer and resampling turns 19.75 points of continuations correct against 10.25 for a random token. '
       'On the SmolLM2 accuracy rows (2 seeds) cDPO scores 56.56 vs DPO 50.5 points at T=1 (reproduced) and 98.25 vs 98.25 greedy (not-reproduced)',
       claims=(_c('toy-speed', 'inconclusive', "cDPO pushes the bad token below 0.10 in fewer DPO steps than sequence DPO (the notes' check-2 toy)",
                  'steps to P(BAD) < 0.10: cDPO 68, 61, 80 vs DPO 66, 57, 82 (mixed signs over 3 seeds); the weights 1 - s_t shrink the push on ordinary rejected tokens. The SmolLM2 word-problem rows below decide the paper\'s accuracy claim'),
                _c('smollm-critical-ban', 'reproduced', 'Critical tokens found by contrastive estimation matter: banning the critical token of an incorrect answer and resampling turns more answers correct than banning a random token',
                  'SmolLM2-135M-Instruct, 100 incorrect held-out T=1 answers, 4 continuations each: 19.75 vs 10.25 points correct (+9.5, margin 6.4 = max(2, paired-bootstrap 95 % half-width)), one seed of positive / negative models (full-rank SFT of the last 4 layers; the paper uses LoRA and finds critical tokens by 64-sample rollouts, here the contrastive score is the detector)'),
               _c('smollm-sampled', 'reproduced', "cDPO's contrastive-estimation token weights beat sequence DPO on held-out word problems (mean T=1 accuracy of 4 samples per problem)",
                  'SmolLM2-135M-Instruct, last 4 of 30 layers, 150 steps x 8 pairs, 200 held-out problems, seeds 0 and 1: T=1 accuracy cDPO 56.56 vs DPO 50.5 points, per seed +6.375 / +5.75 (the rule asks > max(2, paired-bootstrap 95 % half-width) on both seeds); DPO - reference +19.5, +21.2 (margins +3.9, +3.9)'),
               _c('smollm-greedy', 'not-reproduced', "cDPO's contrastive-estimation token weights beat sequence DPO on held-out word problems (greedy accuracy)",
                  'SmolLM2-135M-Instruct, last 4 of 30 layers, 150 steps x 8 pairs, 200 held-out problems, seeds 0 and 1: greedy accuracy cDPO 98.25 vs DPO 98.25 points, per seed +0 / +0 (the rule asks > max(2, paired-bootstrap 95 % half-width) on both seeds); DPO - reference +14.0, +14.5 (margins +4.8, +5.0); a ceiling: DPO leaves less than the 2-point margin to gain, so this row could not come out reproduced here; the T=1 row carries the evidence'),)),
    _e(18, 'ReAGent: Towards A Model-agnostic Feature Attribution Method for Generative Language Models',
       'analysis', 'tokjax.analysis.reagent', ('reagent', 'soft_metrics', 'soft_ns', 'soft_nc'),
       'ReAGent as one jitted loop (random 30% replacement, log-odds importance updates, stop when the '
       'target stays top-k with only the top-n kept); baselines in tokjax.analysis.attribution (random, '
       'attention, gradient norm, input x gradient, integrated gradients, leave-one-out) and the official '
       'Soft-NS / Soft-NC; planted test passes. Full run on SmolLM2-135M-Instruct: 20 pydoc prompts x 3 seeds, '
       'ReAGent capped at 200 steps (a CPU budget; the official runs use 3000-5000; 81% of chains stopped before it). '
       'ReAGent beats random, attention, input x gradient and leave-one-out on both metrics, but not integrated '
       'gradients (or gradient norm on Soft-NC)',
       claims=(_c('soft-ns', 'inconclusive', 'ReAGent is more faithful (Soft-NS) than gradient, attention and perturbation attributions',
                  'mean Soft-NS 0.1203 vs 0.1233 for integrated gradients (the best baseline), per seed +0.005235, -0.01063, -0.003824: the seeds disagree; random 0.1107'),
               _c('soft-nc', 'not-reproduced', 'ReAGent is more faithful (Soft-NC) than gradient, attention and perturbation attributions',
                  'mean Soft-NC 0.1566 vs 0.252 for integrated gradients (gradient norm 0.2355), below on every seed (-0.137, -0.07208, -0.0771); above random 0.0654')),
       test='tests/analysis/test_reagent.py'),
    _e(19, 'DiSA: Diffusion Step Annealing in Autoregressive Image Generation',
       'vision', 'tokjax.vision.disa', ('inner_steps', 'disa_steps', 'head_evals'),
       'inner flow steps T(s) annealed over the AR steps (linear / cosine / two-stage / constant, the official MAR '
       'diffloss.py and xAR xar.py integer arithmetic, checked against transliterations), a host table passed as the '
       'runtime steps schedule of tokjax.vision.mar.MAR (masked-set continuous AR on the shared forward, registered '
       'loss "mar"), continuous raster AR or xAR; head evals = sum_s T(s)|fill_s|. The experiment compares DiSA with constant T '
       'on MAR, raster AR and xAR (4x4 cells), each with the Euler and Euler-Maruyama samplers. Full run (3 seeds, '
       '16x16 glyphs, 1000-1200 training steps per model): DiSA linear 50->5 stays within one bootstrap SE of '
       'constant T=50 at under half its head evals in 5 of 6 (model, sampler) pairs, but that is weak evidence '
       'here: on these small models FD does not improve with T (MAR Euler: 157.569 at T=2, 174.398 at T=50), so '
       'the decisive Pareto rows (DiSA below the constant-T curve at equal head evals) fail or are mixed in every '
       'pair. The motivation holds: late tokens have lower flow-head sample variance and straighter paths than '
       'early ones on MAR. Motivation panel: tokjax.vision.flow.flow_path_stats (per-token flow-head sample '
       'variance over K draws and Euler-path straightness) against the generated fraction',
       claims=(_c('pareto-mar', 'not-reproduced', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on MAR',
                   'constant-T curve at 1361 head evals 171.4 vs DiSA linear 50->5 179.7; per seed -1.631 / -10.6 / -12.8 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-mar', 'reproduced', "DiSA keeps constant T=50's FD (within 1 SE) at 2.4x fewer head evals on MAR (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 -0.36; per seed +0.0744 / -0.7254 / -0.4278 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('pareto-mar-em', 'not-reproduced', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on MAR (Euler-Maruyama)',
                   'constant-T curve at 1361 head evals 172.3 vs DiSA linear 50->5 178.9; per seed -2.74 / -14.5 / -2.458 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-mar-em', 'reproduced', "DiSA keeps constant T=50's FD (within 1 SE) at 2.4x fewer head evals on MAR (Euler-Maruyama) (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 -0.106; per seed +0.02496 / -0.4166 / +0.0736 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('pareto-raster', 'not-reproduced', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on continuous raster AR',
                   'constant-T curve at 1733 head evals 90.39 vs DiSA linear 50->5 95.55; per seed -1.65 / -6.317 / -7.508 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-raster', 'reproduced', "DiSA keeps constant T=50's FD (within 1 SE) at 1.8x fewer head evals on continuous raster AR (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 -0.663; per seed -0.5788 / -0.9483 / -0.462 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('pareto-raster-em', 'inconclusive', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on continuous raster AR (Euler-Maruyama)',
                   'constant-T curve at 1733 head evals 90.25 vs DiSA linear 50->5 90.77; per seed +0.8922 / -0.9216 / -1.516 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-raster-em', 'reproduced', "DiSA keeps constant T=50's FD (within 1 SE) at 1.8x fewer head evals on continuous raster AR (Euler-Maruyama) (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 0.278; per seed +0.9682 / +0.2551 / -0.39 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('pareto-xar', 'not-reproduced', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on xAR 4x4 cells',
                   'constant-T curve at 1760 head evals 147.9 vs DiSA linear 50->5 153.9; per seed -7.972 / -6.795 / -3.249 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-xar', 'inconclusive', "DiSA keeps constant T=50's FD (within 1 SE) at 1.8x fewer head evals on xAR 4x4 cells (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 -0.769; per seed -1.163 / -0.7173 / -0.4263 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('pareto-xar-em', 'inconclusive', 'DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on xAR 4x4 cells (Euler-Maruyama)',
                   'constant-T curve at 1760 head evals 143.8 vs DiSA linear 50->5 144.1; per seed -2.294 / -4.895 / +6.4 (threshold 0, classifier FD to real glyphs)'),
                _c('speedup-xar-em', 'reproduced', "DiSA keeps constant T=50's FD (within 1 SE) at 1.8x fewer head evals on xAR 4x4 cells (Euler-Maruyama) (paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
                   'constant T=50 (z = 0) 0 vs DiSA linear 50->5 -0.61; per seed -0.8912 / -0.7426 / -0.1966 (threshold -1, FD advantage over constant T=50 in combined bootstrap SEs)'),
                _c('motivation-variance', 'reproduced', "tokens generated late (after >= 80% of the image) have lower sample variance than early ones (before 20%) on MAR (the paper's motivation for annealing)",
                   'head sample variance across 8 draws, mean over dims and tokens (lower is better): tokens generated before 20% 0.2085 vs 0.0809; per seed +0.1058 / +0.1414 / +0.1356 (threshold 0)'),
                _c('motivation-straight', 'reproduced', "tokens generated late (after >= 80% of the image) have straighter flow paths than early ones (before 20%) on MAR (the paper's motivation for annealing)",
                   'flow path straightness ||x_0 - x_1|| / path length, mean over draws and tokens (higher is better): tokens generated before 20% 0.9378 vs 0.9739; per seed +0.02499 / +0.04358 / +0.03984 (threshold 0)'),)),
    _e(20, 'An Early FIRST Reproduction and Improvements to Single-Token Decoding for Fast Listwise Reranking',
       'decoding', 'tokjax.decoding.first_rerank', ('first_rerank', 'permutation_rerank', 'rerank_prompt'),
       'listwise reranking from the identifier logits after the answer\'s opening "[" (one forward per window, '
       'bottom-up sliding windows, RankZephyr prompt) and the generated-permutation baseline on tokjax.generate; '
       'the FIRST fine-tuning loss (LM + lambda x weighted RankNet on the identifier logits, lambda and weights as '
       'the official llm-reranker) is tokjax.losses.first_rank (registered "first"); the experiment runs it zero-shot '
       'and after a last:4 fine-tune on train-split windows (teacher order: qrel grade, then BM25), first vs its '
       'lambda-0 LM-only reduction on the frozen trunk. On SmolLM2 the single forward takes 0.1273 of the time of '
       'generating the permutation zero-shot, but the 135M model barely reranks: its generated '
       'permutation is the BM25 input order on all but one query, and FIRST does not beat BM25 either '
       '(0.3463 vs 0.3489 nDCG@10), so the quality claims are inconclusive here',
       claims=(_c('quality', 'inconclusive', 'single-token (first identifier) listwise reranking keeps the quality of generating the permutation',
                  'zero-shot, 60 pydocs test queries, BM25 top-20, window 10 stride 5: FIRST nDCG@10 0.3463 vs the generated permutation 0.3489 (difference -0.002561, within the -0.02 margin by the rule alone), but the permutation changes the BM25 order on a share 0.017 of the queries (guard: 0.5), i.e. it is the BM25 first stage (0.3489); matching it says nothing about listwise quality'),
               _c('latency', 'reproduced', 'single-token reranking cuts latency by at least 20% (paper: 21-42%)',
                  'zero-shot wall time FIRST / permutation 0.1273 (636.7 s vs 5000.6 s for 60 queries, same windows and batches of 4; the permutation generates up to 44 tokens per window), far below the 0.8 bar'),
               _c('tuned-quality', 'inconclusive', 'after fine-tuning with the FIRST objective, single-token reranking keeps the permutation\'s quality',
                  'last:4 tuned on 64 train-split windows (30 steps x 4, lr 0.0001), 12 test queries, seeds 0-2: FIRST 0.3404 vs permutation 0.3461 nDCG@10 (per seed +0.006626 / -0.009283 / -0.01423, within -0.02 by the rule alone), but the tuned permutation changes the BM25 order on a share 0.5 / 0.167 / 0.167 of the queries (guard: 0.5 on every seed); BM25 0.3516'),
               _c('tuned-latency', 'reproduced', 'after fine-tuning, single-token reranking cuts latency by at least 20% (paper: 21-42%)',
                  'wall time FIRST / permutation 0.4806 on average (per seed +0.3255 / +0.299 / +0.3338 below the 0.8 bar)'),
               _c('first-loss', 'inconclusive', 'the FIRST objective (LM + weighted RankNet on identifier logits) beats LM-only fine-tuning',
                  'FIRST nDCG@10 of the first-tuned model 0.3404 vs LM-only 0.3479 (per seed -0.003562 / -0.01593 / -0.002926: the mean is below 0, but above the -0.01 bar for not-reproduced); 30 steps x 4 windows of a last:4 fine-tune move the rank loss little (0.069 vs 0.078 at the last step, seed 0)'),)),
    _e(21, 'Not all tokens are created equal: Perplexity Attention Weighted Networks for AI generated text detection',
       'analysis', 'tokjax.analysis.pawn',
       ('pawn_features', 'pawn_features_batched', 'PawnFeatures', 'init_pawn', 'apply_pawn', 'pawn_weights',
        'uniform_gate', 'pawn_loss', 'pawn_batch_fn', 'pawn_norm_stats'),
       'frozen-LM detector: per-token log-prob, entropy, max log-prob, log-rank (token_stats + one arg-max '
       'pass) -> metric MLP; gate MLP on [last hidden, position] -> masked softmax over tokens -> weighted sum '
       '-> head; a constant gate is exactly mean aggregation (the baseline is the same network); features '
       'cached on disk, heads trained by tokjax.train (official code not located; feature list, position '
       'encoding and sizes unverified). SmolLM2 scores its own T=0.7 samples: zero-shot mean log-prob is near '
       'perfect in-domain (AUROC 0.991) and on Shakespeare (0.997), and exactly inverted on the weak '
       'smollm2-draft generator (0.000: its text is less likely than human text). The paper\'s fine-tuned-LM '
       'baselines and multilingual sets are not run here',
       claims=(_c('vs-mean-aggregation', 'not-reproduced', 'a learned per-token gate (PAWN) detects AI text better than mean aggregation of the same features, in and out of distribution',
                  'AUROC in-domain 0.963 vs 0.999 for the uniform-gate head, Shakespeare 0.776 vs 1.000; only on draft text (where every mean detector is inverted) PAWN scores higher (0.259 vs 0.000); per seed worst-set difference -0.2588, -0.2331, -0.1813 (64+64 training texts; the gate early-stops at step 50)'),
               _c('vs-zero-shot', 'not-reproduced', 'PAWN beats zero-shot mean log-prob / log-rank detectors',
                  'per seed worst-set difference -0.2588, -0.2331, -0.1813 against the best of mean log-prob and mean log-rank (in-domain 0.991 / 0.995, Shakespeare 0.997 / 1.000)'))),
    _e(22, 'Accelerated Test-Time Scaling with Model-Free Speculative Sampling',
       'decoding', 'tokjax.decoding.stand', ('ngram_memory', 'NgramMemory', 'NgramTables', 'ngram_lookup', 'ngram_update', 'ngram_hash'),
       'shared stochastic n-gram memory of verified target distributions with Gumbel-top-k tree drafts '
       '(update rule unverified: no official code); lossless by chi-square; on SmolLM2-135M (2-core '
       'CPU) 1.707 vs 1.333 tokens per call for prompt lookup at T=0.8, but 0.265x greedy and 0.457x '
       'sampling wall-clock',
       status='implemented', claims=(_c('lossless', 'reproduced', "STAND speculative decoding is lossless: greedy output equals plain greedy decoding (sampling keeps the target's distribution)"),
                _c('tokens-per-call', 'reproduced', "STAND's stochastic n-gram drafts accept more tokens per target call than deterministic n-gram drafting (prompt lookup) when sampling"),
                _c('speed', 'not-reproduced', 'STAND cuts single-trajectory decoding latency ~2x (here greedy code editing at batch 1)',
                        '0.265x with the 80-node tree on SmolLM2-135M on a 2-core CPU: tree calls and vocabulary-wide draft work cost more than the accepted tokens save'),
                _c('speed-sampling', 'not-reproduced', 'STAND cuts single-trajectory sampling latency ~2x (T > 0)',
                        '0.457x at T=0.8 on code editing, while prompt lookup reaches about 1.1x'),
                _c('test-time-scaling', 'not-reproduced', 'under best-of-N sharing one n-gram memory STAND cuts latency further (paper: -60-65%)',
                        '0.144x at best-of-4; sharing the memory did not raise acceptance over prompt lookup here'),
                _c('vs-sota-sd', 'untested-here', 'STAND gives +14-28% throughput over trained-draft speculative decoding',
                        'needs a reasoning LLM with trained EAGLE-style drafts and a GPU'),)),
    _e(23, 'SpecTr: Fast Speculative Decoding via Optimal Transport',
       'decoding', 'tokjax.decoding.spectr', ('spectr', 'SpecTr', 'kseq_select', 'solve_rho', 'kseq_residual', 'kseq_beta', 'kseq_accept_prob'),
       'k i.i.d. drafts with K-SEQ selection (rho by bisection), exactly lossless (total variation '
       '6.24e-07 on real SmolLM2 contexts); on SmolLM2-135M with smollm2-draft (T=1, batch 1, CPU) k=4 '
       'raises tokens per target call over k=1 (1.338 vs 1.178) but runs at 0.408x plain sampling',
       claims=(_c('lossless', 'reproduced', "K-SEQ selection over k drafts keeps the target's output distribution"),
                _c('tokens-per-call', 'reproduced', 'k i.i.d. drafts accept more tokens per target call than single-draft speculative sampling'),
                _c('speed', 'not-reproduced', 'SpecTr cuts wall-clock time over autoregressive sampling (paper: 2.13x)',
                        '0.408x plain sampling on SmolLM2-135M with the CPU-trained smollm2-draft: acceptance is low (at most 0.209 at depth 0) and drafting plus verifying 4 chains costs more than it saves'),
                _c('vs-sd', 'not-reproduced', 'SpecTr is faster than single-draft speculative sampling (paper: 1.37x)',
                        '0.79x single-draft speculative sampling: 4 chains mean 4x the draft work and a larger verification per step'),)),
    _e(24, 'Achieving Tokenizer Flexibility in Language Models through Heuristic Adaptation and Supertoken Learning',
       'tokenizers', 'tokjax.tokenizers.tokenadapt', ('tokenadapt_transfer', 'tokenadapt_embeddings', 'aux_embeddings', 'tokenadapt_aux', 'byte_ngram_tfidf'),
       'local + global heuristic init of a new vocabulary, the auxiliary space chosen on a validation '
       "split among the model's own hidden states, SmolLM2-135M mean-pooled hidden states and byte "
       'n-gram tf-idf (SmolLM2 chosen on every seed); supertokens from BPETokenizer.train(max_words=2).'
       " tiny-pydocs -> pydocs-2048: 1.98 vs 2.034 bits/byte for mean-of-subtokens (with the model's "
       'own hidden states at the official defaults 2.0555 vs 1.9994: the method needs a real embedder);'
       ' supertokens 3.72 vs 3.562 bytes/token at a zero-shot cost of 2.1096 vs 1.9486 bits/byte',
       claims=(_c('hybrid-vs-simple', 'reproduced', "TokenAdapt's local+global hybrid init gives lower zero-shot loss on a new tokenizer than simpler inits (mean of subtokens / FVT)"),
                _c('supertokens', 'reproduced', 'Supertokens (learned multi-word pre-tokenization) give notable compression gains'),)),
    _e(25, 'One-Token Rollout: Guiding Supervised Fine-Tuning of LLMs with Policy Gradient',
       'losses', 'tokjax.losses.one_token_rollout',
       ('make_one_token_rollout_loss', 'one_token_rollout_loss', 'gumbel_max_sample', 'otr_expected_loss', 'sampled_logp', 'otr_rewards'),
       'per-target K draws from pi^tau by Gumbel-max streamed over vocabulary chunks (chunk-invariant noise, '
       'stop-grad), reward 1[a = y] else r_neg, surrogate -(1/K) sum_k r log pi(a_k) on token_stats (registered '
       '"otr"); its expected gradient is exactly (1 - r_neg) p(y) grad log p(y) at tau = 1 (tested). K = 16, '
       'tau = 1, r_neg = 0 unverified (no official code). Tiny arithmetic-CoT rung instead of SmolLM2 (no '
       'word-problem level in the 20-70% band); SFT and OTR fine-tune on <=3-digit CoT targets, 300 steps x 3 seeds',
       claims=(_c('harder', 'inconclusive', 'OTR generalises better than SFT to a harder level (4-digit operands)',
                  'both arms lose the warm start\'s 4-digit skill (0.120): SFT 0.0022, OTR 0.0033, under the 0.02 reach floor, so the level has no power here'),
               _c('in-distribution', 'not-reproduced', 'OTR is at least as accurate as SFT in distribution',
                  '<=3-digit test greedy accuracy OTR 0.8529 vs SFT 0.9348 (per seed -0.09609, -0.06406, -0.08541; margin 0.02)'),
               _c('drift', 'reproduced', 'OTR drifts less than SFT from what the model knew (held-out NLL)',
                  'validation NLL per completion token OTR 0.1435 vs SFT 0.1844 (warm start 0.0748), lower on every seed'),)),
    _e(26, 'Zero-Shot Tokenizer Transfer',
       'tokenizers', 'tokjax.tokenizers.zett', ('transfer', 'hypernet_embeddings', 'zett_loss', 'zett_batch_fn', 'init_hypernet', 'HypernetConfig', 'make_tokenizer_pool', 'identity_pool', 'vocab_overlap'),
       'hypernetwork over old-token decompositions trained on a BPE tokenizer pool against the frozen '
       'LM (identity steps as in the official train.py); on the low-overlap shakespeare-2048 target the'
       " paper's plain head beats mean-of-subtokens (4.17 vs 4.761 bits/byte, 3 seeds) but it is worse "
       'than it on the high-overlap pydocs-2048 and stdlib-1536 targets (undertrained at 600 CPU '
       'steps); the residual variant beats it on all three (4.382 on shakespeare-2048)',
       claims=(_c('method', 'reproduced', "the paper's plain hypernetwork (a transformer over each new token's subtoken embeddings predicts its embedding) transfers a frozen LM to an unseen tokenizer better than mean-of-subtokens (FVT); verdict on the low-overlap target fixed in advance"),
                _c('variant', 'reproduced', "tokjax's residual variant (the hypernetwork predicts a correction added to FVT) transfers a frozen LM to an unseen tokenizer better than FVT"),)),
    _e(27, 'Memory Retrieval and Consolidation in Large Language Models through Function Tokens',
       'analysis', 'tokjax.analysis.function_tokens', ('function_token_set', 'feature_coverage', 'loss_table', 'token_counts'),
       'function tokens = the most frequent ids reaching a 40% token share (cut-off unverified); the token-feature '
       'bipartite graph from top-k SAE codes (tokjax.analysis.sae): share of active features a token set reaches, '
       'per-token degree; the 2x2 next-token loss table by previous/next token type. Experiment on SmolLM2-135M-'
       'Instruct: top-32 SAE (4608 latents) on layer 15\'s residual, pydocs windows, an occurrence-matched '
       'content-token control',
       claims=(_c('majority', 'reproduced', 'a small number of function tokens activates the majority of the model\'s (SAE) features',
                  'the 35 most frequent SmolLM2 tokens (40% of occurrences) reach 0.9988 of the active SAE features (3 SAE seeds); but see beyond-frequency: the graph saturates'),
               _c('beyond-frequency', 'not-reproduced', 'function tokens reach more features than their frequency alone explains',
                  'random content tokens with as many occurrences reach 0.9993; the 35 most frequent content tokens (far fewer occurrences) reach 0.946/0.940/0.936, so occurrence count explains the coverage'),
               _c('loss-share', 'not-reproduced', 'the loss is dominated by predicting content tokens that follow function tokens',
                  'SmolLM2 on held-out pydocs: the function -> content cell holds 0.37 of the loss, content -> content 0.3772 (the tiny from-scratch model: 0.335 vs 0.374)'),)),
    _e(28, 'X-Omni: Reinforcement Learning Makes Discrete Autoregressive Image Generative Models Great Again',
       'vision', 'tokjax.vision.x_omni', ('x_omni', 'XOmni', 'XOmniTask', 'class_reward'),
       'GRPO on a class-conditional discrete image LM through rl_train: G=8 rollouts per class prompt (the official '
       'min-p through rl_train(logits=), no CFG), reward log p(class | decoded image) from a second classifier, '
       'symmetric PPO clip, k3 KL to the SFT model; the paper\'s reward mix (HPSv2, OCR, VLM) replaced by one '
       'classifier and its RL settings unverified (official repo has inference code only). Full run, 3 seeds on '
       '8x8 glyphs: RL raises class accuracy past SFT with CFG, but its samples collapse towards what the reward '
       'classifier likes (FD rises), so the no-CFG claim holds for accuracy only',
       claims=(_c('rl-accuracy', 'reproduced', 'GRPO improves a discrete AR image model over its SFT start (accuracy)',
                  'evaluation-classifier accuracy 0.9603 vs SFT 0.7227, higher in every seed (+0.196, +0.266, +0.251)'),
               _c('rl-fd', 'not-reproduced', 'GRPO improves a discrete AR image model over its SFT start (FD)',
                  'FD to held-out glyphs 239.9 vs SFT 79.59 (real-vs-real floor 11.303): RL sharpens samples towards '
                  'the reward classifier and loses diversity'),
               _c('no-cfg-accuracy', 'reproduced', 'after RL, no CFG is needed: RL without CFG matches SFT with CFG '
                  '(accuracy)', 'accuracy 0.9603 without CFG vs 0.8263 for SFT with its validation-chosen CFG scale'),
               _c('no-cfg-fd', 'not-reproduced', 'after RL, no CFG is needed: FD of RL without CFG within 10% of SFT+CFG',
                  'FD ratio 4.581 against the bound 1.1 in every seed'))),
    _e(29, 'Cut Your Losses in Large-Vocabulary Language Models',
       'losses', 'tokjax.losses.cut_cross_entropy', ('cut_cross_entropy', 'head_stats'),
       'cross-entropy from hidden states and W without [N, V] logits; gradients equal to 2.4e-07, 13.3x'
       ' less loss-head memory (1024.1 -> 77.1 MiB) on a tiny model at V=16384',
       status='implemented', claims=(_c('exact', 'reproduced', 'cut cross-entropy gives the naive loss, gradients and training trajectory (up to float error)'),
                _c('memory', 'reproduced', 'cut cross-entropy needs far less loss-head memory than naive cross-entropy (> 10x)'),), test='tests/losses/test_losses_cut_cross_entropy.py',
       experiment='experiments/p29_cut_cross_entropy.py'),
    _e(30, 'AMU-Tuning: Effective Logit Bias for CLIP-based Few-shot Learning',
       'logits', 'tokjax.logits.amu_tuning', ('amu_init', 'amu_logits', 'amu_fuse', 'amu_loss', 'uncertainty_factor', 'logit_standardize'),
       'auxiliary-feature logit bias with kurtosis-gated fusion and multi-branch training (matches the '
       'official code); on a synthetic 100-class CLIP/MoCo stand-in with calibrated zero-shot logits '
       '(so the gate varies), 4 shots, 5 seeds: AMU 0.7774 vs a validation-tuned single branch 0.7164; '
       'the gain comes from multi-branch training (constant gate 0.7767), not the gate',
       status='implemented', claims=(_c('vs-tuned-baseline', 'reproduced', 'AMU (multi-branch training plus kurtosis-gated fusion of an aux-feature logit bias) beats a single-branch logit bias whose alpha is tuned on validation with the same budget'),
                _c('gate', 'inconclusive', 'the kurtosis (uncertainty) gate beats a constant gate under the same training and tuning grid',
                        'the gate now varies across samples but the effect is within +-0.004 accuracy and the 5 seeds split; about 1000 classes (where the gate spans a wide range) or real CLIP logits, an ImageNet-scale run, would decide it'),
                _c('multi-branch', 'reproduced', 'multi-branch training (lambda CE(fused) + (1-lambda) CE(aux)) beats single-branch training, both tuned on validation'),
                _c('imagenet', 'untested-here', '70.02% ImageNet 16-shot with CLIP RN50 + MoCo v3, above CLIP few-shot baselines on 11 datasets',
                        'needs CLIP and MoCo v3 weights and ImageNet'),)),
    _e(31, 'Neighboring Autoregressive Modeling for Efficient Visual Generation',
       'vision', 'tokjax.vision.nar', ('nar_init', 'make_nar_loss', 'nar_logits', 'nar_decoder', 'NARDecode'),
       'neighbouring AR as the official ThisisBillhe/NAR gpt.py: Rank mask by h + w (setup_diagonal_mask), head R '
       '(the model\'s output) predicts the right neighbour, head B (one extra layer, own norm and head) the one '
       'below, logits averaged by the official table, one cross-entropy; one anti-diagonal per pass (15 vs 64 on '
       '8x8) through tokjax.generate, KV-cached (each pass appends the last anti-diagonal, pads rolled back; equal to the '
       'cache-free path, tested). '
       'Class-conditional glyphs, 3 seeds x 1500 steps: 4.27x fewer passes, but FD 1.586x raster NTP\'s (bound '
       '1.1); video NAR not built',
       claims=(_c('passes', 'reproduced', 'NAR decodes an HxW grid in H+W-1 passes (15 vs 64 for 8x8)',
                  'forward passes per image 15 vs 64 (4.27x fewer), exact by construction'),
               _c('fd', 'not-reproduced', 'NAR matches NTP quality: FD <= 1.1x raster NTP (same steps)',
                  '1500 steps per arm, 3 seeds: FD 26.918 vs 16.964 (ratio 1.586; per seed 1.741, 1.553, 1.464), class consistency 0.75 vs 0.83; real-vs-real floor 11.303'),)),
    _e(32, 'FlexTok: Resampling Images into 1D Token Sequences of Flexible Length',
       'vision', 'tokjax.vision.flextok', ('flextok_init', 'flextok_loss', 'make_flextok_loss', 'flextok_encode', 'flextok_decode', 'flextok_reconstruct', 'flextok_generate', 'register_batch_fn'),
       'register tokenizer on the shared forward: encoder under Prefix(16) over [16 patches][16 registers], FSQ [5,5,5] '
       '(tokjax.vision.fsq: straight-through rounding, codes <-> ids), pow2 nested dropout (official MaskedNestedDropout '
       'samplers), bidirectional rectified-flow decoder (a second shared forward, t via cond_hooks) reading the kept '
       'registers, registered "flextok"; stage 2: class-conditional NTP over register ids through tokjax.generate '
       'stopping at k, then the flow decoder; VAE and REPA dropped. A fixed pre-FSQ multiplier (fsq_scale, not the '
       'official recipe) stops an Adam-driven tanh-saturation collapse to one code per register on glyphs. Full run: '
       '3 seeds, 1200 steps per tokenizer on 8x8 glyphs, the registers in use (45.8 distinct ids per register of 125, '
       'nested); the quick run (400 steps) is undertrained and inconclusive by the declared validity rule',
       claims=(_c('small-k', 'reproduced', 'nested dropout makes short register prefixes reconstruct well: nested beats fixed-length training at k <= 4 tokens by > 2 SE on FD',
                  'FD mean over k = 1, 2, 4: 62.99 nested vs 417.3 fixed-length; per-seed min z +45.29, +40.13, +35.8 (glyphs, not ImageNet)'),
               _c('small-k-mse', 'reproduced', 'nested beats fixed-length training at k <= 4 by > 2 SE on reconstruction MSE',
                  'MSE mean over k = 1, 2, 4: 0.03263 vs 0.09602; per-seed min z +76.49, +58.15, +29.57; at all 16 tokens the fixed-length tokenizer reconstructs better (0.0059 vs 0.0156): the price of the ordering'),
               _c('gen-few-tokens', 'reproduced', 'AR generation over the first 8 register tokens is as good as over all 16 (paper: gFID < 2 from 8-128 tokens)',
                  'generation FD from 8 tokens 39.99 vs 37.34 from 16; per-seed z -1.071, -0.9225, +0.2648, all above the declared -2 SE non-inferiority margin; the paper\'s ImageNet gFID is untested'))),
    _e(33, 'D-AR: Diffusion via Autoregressive Models',
       'vision', 'tokjax.vision.d_ar', ('d_ar', 'd_ar_init', 'd_ar_loss', 'make_d_ar_loss', 'd_ar_encode', 'd_ar_conditions', 'd_ar_decode', 'd_ar_stream', 'd_ar_generate', 'grouped_flow_sample'),
       'sequential diffusion tokenizer on the FlexTok pieces (query encoder under Prefix, FSQ, a causal condition '
       'transformer) whose flow step g reads token group g (registered "d_ar"; official group/time-shift '
       'arithmetic); plain NTP over the 16 ids through tokjax.generate; streaming per-group x0 previews '
       '(d_ar_stream, or a callback fed by tokjax.stream), the last preview bit-equal to the sample. fsq_scale (as '
       'P32) stops the tokenizer collapse. Full run (3 seeds, 1500 tokenizer steps): the group-aligned tokenizer '
       'fails the declared validity rule (its reconstructions are classified at 0.277, bar 0.5; full-visibility '
       '0.693), so both claims are inconclusive',
       claims=(_c('gen-quality', 'inconclusive', 'plain NTP over group-aligned tokens (decoder step g reads group g) generates as well as over tokens a decoder reads at every step',
                  'declared validity rule failed: the d-ar tokenizer did not learn the glyphs (reconstruction classifier accuracy 0.277 vs bar 0.5; full-visibility 0.693). Without the gate the row would be not-reproduced: FD 33.3 vs 22.58, per-seed z -2.921 / -3.517 / -4.567 against the -2 margin'),
                _c('previews', 'inconclusive', 'streaming previews: the x0 preview after each generated group gets closer to the final sample, and the last preview is the final sample',
                   'declared validity rule failed (as gen-quality: a tokenizer this weak makes the previews a weak test). The mechanics hold: the last preview equals the final sample exactly, the stream equals the batch path, and preview MSE falls with every group (from 0.0176 after 2 tokens; min per-seed z +28.42)'),)),
    _e(34, 'Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head',
       'losses', 'tokjax.losses.dual_head_kd', ('dual_head_kd', 'binary_kl_norm', 'project_conflicting', 'init_aux_head', 'make_dual_head_kd_loss'),
       'auxiliary head trained with the normalised binary KL and optional gradient projection '
       '(matches the official code); beats CE but not plain KD on a synthetic 20-class task (0.571 '
       'vs 0.613)',
       claims=(_c('main', 'not-reproduced', 'KD through an auxiliary head with the normalised binary KL (DHKD) beats plain KD on the main head',
                     'below plain KD on all 5 seeds (0.571 vs 0.613) on a synthetic 20-class task'),)),
    _e(35, 'Position Auctions in AI-Generated Content',
       'analysis', 'tokjax.analysis.position_auctions',
       ('mnl_allocation', 'vcg_auction', 'revenue_auction', 'cascade_allocation', 'cascade_allocation_approx',
        'insertion_scores', 'separable_fit'),
       'ad placement inside generated text: per-(position, creative) scores from LM insertion log-probs '
       '(score_continuations), the exact MNL welfare / revenue optimum by Dinkelbach over capped assignments '
       '(scipy linear_sum_assignment) with VCG / Myerson threshold payments, an exact cascade solver and a '
       'reconstructed (unverified) cascade approximation',
       claims=(_c('optimal-mnl', 'reproduced', 'the welfare / revenue optimal allocation under the MNL click model is computed exactly and efficiently',
                  'Dinkelbach over capped assignments equals brute force over every matching on 500 random instances up to 4x4: max gap 0'),
               _c('truthful', 'reproduced', 'the optimal mechanisms with VCG payments are truthful',
                  'no misreport on a 26-point grid gains (max gain 5.551e-17 over 12 instances) while pay-your-bid payments on the same allocations give 0.6002'),
               _c('lm-placement', 'reproduced', 'LM insertion scores place each topical creative best after its own topic sentence',
                  'SmolLM2-135M-Instruct row-normalised insertion scores: top-1 rate 0.7 over 10 pydoc topics vs chance 0.1'),
               _c('cascade', 'untested-here', 'under the order-sensitive cascade model the paper mechanism is approximately optimal',
                  'needs the paper text: only the abstract and a secondary summary were readable, so the cascade model and its approximation here are reconstructions (worst ratio 0.7483 to the exact optimum)'),)),
    _e(36, 'StochasTok: Improving Fine-Grained Subword Understanding in LLMs',
       'tokenizers', 'tokjax.tokenizers.stochastok', ('stochastok', 'stochastok_split', 'expansion_table', 'stochastok_loss'),
       'random token splits that keep the text byte-exact: host transform plus a jitted split op with '
       'runtime p (split table and attempt loop as in the official processor); on 2-digit addition with'
       ' single-token operands the official contains-answer metric gives 0.842 vs 0.740 for '
       'deterministic BPE, seeds disagree',
       status='implemented', claims=(_c('addition', 'inconclusive', 'StochasTok training lets a model learn multi-digit addition that deterministic tokenization blocks (official contains-answer evaluation)',
                        'StochasTok wins on 2 of 3 seeds (+0.114, +0.422) and loses on one (-0.230); deterministic tokenization does not block learning here (one seed reaches 1.000) and both curves still rise at 3000 steps: training both arms to a plateau with more seeds would decide it'),
                _c('exact-match', 'inconclusive', 'StochasTok training improves held-out addition accuracy under a strict exact-match check',
                        'same runs and pattern (+0.117, -0.231, +0.429 per seed); longer training and more seeds would decide it'),)),
    _e(37, 'Soft Tokens, Hard Truths',
       'losses', 'tokjax.losses.soft_tokens', ('soft_tokens_loss', 'make_soft_tokens_loss', 'soft_token_logp', 'cot_log_likelihood', 'gaussian_log_density', 'soft_mixture', 'soft_input'),
       'RL with noisy soft / fuzzy chain-of-thought inputs softmax(z / tau) E + sigma N(0, I): the SoftTokens '
       'generate Strategy records the fed embeddings and slot kinds, the registered "soft_tokens" loss scores CoT '
       'slots by the Gaussian log-likelihood (gradient through p) and answer tokens by log pi, trained by rl_train '
       '(strategy / arrays / loss / logp plug points, RLOO advantages); all-hard batches are GRPO exactly and tau, '
       'sigma -> 0 gives the hard likelihood gradient (tested). Tiny arithmetic-CoT rung, full run (3 seeds x 300 '
       'steps): soft and fuzzy training stay below hard training at pass@1 and pass@32; sigma chosen on validation, '
       'the paper\'s sigma and CoT end unverified',
       claims=(_c('pass1-soft', 'not-reproduced', 'soft-token CoT RL matches hard-token CoT RL at pass@1',
                  'greedy test accuracy 0.395 vs hard 0.589 (3 seeds, all below the 0.02 non-inferiority margin); the Gaussian CoT terms dominate the update on this 115k-parameter model'),
               _c('passk-soft', 'not-reproduced', 'soft-token CoT RL beats hard-token CoT RL at pass@32',
                  'pass@32 0.714 vs hard 0.821 (paired bootstrap 95% CI of the difference [-0.126, -0.088])'),
               _c('pass1-fuzzy', 'not-reproduced', 'fuzzy-token CoT RL matches hard-token CoT RL at pass@1',
                  'greedy test accuracy 0.349 vs hard 0.589 on every seed'),
               _c('passk-fuzzy', 'not-reproduced', 'fuzzy-token CoT RL beats hard-token CoT RL at pass@32',
                  'pass@32 0.719 vs hard 0.821 (CI [-0.121, -0.083])'))),
    _e(38, 'Toward a Theory of Tokenization in LLMs',
       'analysis', 'tokjax.analysis.tokenization_theory', ('switching_source', 'unigram_bits_per_char', 'unigram_curve', 'unigram_token_bits', 'model_bits_per_byte', 'binary_entropy'),
       'unigram over BPE tokens falls from 1.000 to 0.500 bits/char towards the entropy rate 0.469 as '
       'the vocabulary grows; the character-vs-token transformer claim did not reproduce at this scale',
       status='implemented', claims=(_c('unigram', 'reproduced', 'a unigram model over BPE tokens approaches the Markov entropy rate as the vocabulary grows, while the character unigram stays at the stationary entropy'),
                _c('transformer', 'not-reproduced', 'transformers trained on characters of a k>1 Markov source stay at the unigram, trained on tokens they approach the entropy rate',
                        "at switching probability 0.8 (p+q>1, the regime of the cited analysis; the paper's exact setting unverified) the character model leaves the 1-bit unigram within about 100 steps and ends at 0.732 bits/char (entropy rate 0.722), below the token model's 0.764 on all 3 seeds (tiny model, 600 CPU steps)"),)),
    _e(39, 'Retrofitting (Large) Language Models with Dynamic Tokenization',
       'tokenizers', 'tokjax.tokenizers.dynamic_tokenization', ('dynamic_merges', 'joinable_mask', 'apply_merges', 'dynamic_embeddings', 'hypernet_dynamic_embeddings', 'expand_ids', 'new_token_bias'),
       'jitted batch-level BPE merges within pretokens with mean-of-parts or ZeTT embeddings; '
       'leave-one-out scoring costs +7.2% bits/byte at 17% shorter sequences (paper: <2%)',
       claims=(_c('main', 'not-reproduced', '>20% shorter sequences from batch-level merges cost <2% (ZeTT-embedded new tokens)',
                     '+7.2% bits/byte at 17% shorter sequences, leave-one-out (paper: <2% with large models)'),)),
    _e(40, 'Improving large language models with concept-aware fine-tuning',
       'losses', 'tokjax.losses.caft',
       ('init_caft_heads', 'caft_loss', 'make_caft_loss', 'caft_pretrain_heads', 'make_caft_pretrain_loss', 'caft_per_head'),
       'CAFT: K layer-heads (copies of layer L-2) sharing W, head k predicts x_{t+1+k}; L = CE_0 + '
       'alpha s(step) sum_k gamma^k CE_k (official caft-llm alpha, gamma and rsine s; the loop passes batch["step"]), a '
       'heads-only pretraining stage; official quirks resolved (head input, optional norm before W, explicit '
       'causal mask). Full run on SmolLM2-135M (top 6 layers, 80 head-pretraining + 80 fine-tuning steps on stdlib '
       'code, one seed): multi-token identifiers 0.3543 vs NTP 0.3557, NLL unchanged',
       claims=(_c('concepts', 'not-reproduced', 'CAFT beats next-token fine-tuning on multi-token concepts',
                  'greedy accuracy on 731 held-out identifiers of >= 3 tokens: CAFT 0.3543 vs NTP 0.3557 (paired bootstrap 95% CI [-0.0041, 0.0000]); 80 fine-tuning steps of the top 6 layers, far below the paper\'s budget'),
               _c('nll', 'reproduced', 'CAFT keeps next-token NLL (within 1%)',
                  'held-out head-0 NLL 2.1597 vs NTP 2.1595 nats/token (ratio 1.0)'))),
    _e(41, 'Fourier Head: Helping Large Language Models Learn Complex Probability Distributions',
       'losses', 'tokjax.losses.fourier_head', ('fourier_head', 'fourier_head_init', 'fourier_head_loss', 'fourier_pdf', 'fourier_regularizer'),
       'Fourier-series density head over ordered bins with its regulariser (matches the official head);'
       ' KL to a 3-Gaussian mixture 0.2555 vs 6.031 for a linear head (4 seeds; 0.110 vs 1.129 with '
       'early stopping on validation NLL)',
       status='implemented', claims=(_c('main', 'reproduced', 'a Fourier head learns a multimodal density over ordered bins better (lower KL, smoother) than a linear head'),)),
    _e(42, 'Language Model Cascades: Token-level uncertainty and beyond',
       'decoding', 'tokjax.decoding.cascades', ('token_scores', 'chow_sum', 'chow_avg', 'chow_quantile', 'posthoc_features', 'deferral_mlp_loss', 'posthoc_score', 'deferral_curve'),
       'token-level cascade deferral: Chow-Sum/Avg/Quantile(alpha runtime), post-hoc MLP on token-'
       'logprob quantiles + length (+ pooled embedding), deferral-curve AUC (feature set unverified: no'
       ' official code); on a 1-4 digit addition cascade (small model taken at the snapshot nearest 30%'
       ' error, reached on one seed of 3) post-hoc 0.6883 vs Chow-Sum 0.6889 AUC (inconclusive) and the'
       ' chosen Chow-Quantile 0.6873 (not reproduced)',
       status='implemented', claims=(_c('posthoc-vs-chow', 'inconclusive', 'A post-hoc deferral rule (MLP on token-level log-prob quantiles + length) beats Chow-Sum/Chow-Avg (deferral-curve AUC)',
                        'held-out AUC 0.6883 vs Chow-Sum 0.6889 over 3 seeds; seeds disagree and the mean is within 2 s.e.; the small model reached the intended 20-40% error on one seed only, so small models held in that band would decide it'),
                _c('quantile-vs-avg', 'not-reproduced', 'Some token-level quantile (Chow-Quantile) beats Chow-Sum/Avg (deferral-curve AUC)',
                        'the quantile level chosen on the fit half loses on all 3 seeds: 0.6873 vs 0.6889'),), test='tests/decoding/test_cascades.py', experiment='experiments/p42_cascades.py'),
    _e(43, "What's the Magic Word? A Control Theory of LLM Prompting",
       'analysis', 'tokjax.analysis.magic_words', ('reachable', 'reachable_set', 'k_epsilon', 'controlled_logits'),
       'reachable outputs under prompts of at most k tokens: greedy back-generation over gradient-preselected '
       'candidates, GCG swaps, exhaustive search (every returned prompt verified, so greedy and GCG give lower '
       'bounds); planted check: GCG recall 41 of 48 exhaustive-reachable outputs at k = 2. Full run on '
       'SmolLM2-135M, 30 16-token pydocs prose states, |u| <= 4: the true next token is reachable for 0.77 of '
       'states (empty prompt 0.23, empty or random prompts 0.47) and rank-2..75 targets for 0.37 (random 0.00); '
       'the paper reports k <= 10 on 7B models, which a CPU lower bound at k <= 4 cannot refute',
       test='tests/analysis/test_magic_words.py',
       claims=(_c('true-next', 'inconclusive', 'the true next token is reachable with a prompt of k <= 10 tokens for > 97% of states',
                  'our greedy + GCG search reaches it for 0.7667 of 30 states at |u| <= 4 (empty prompt 0.23, random 4-token prompts 0.47); a lower bound at k <= 4 cannot refute a k <= 10 claim, and an upper bound (exhaustive search) is out of reach'),
               _c('top75', 'inconclusive', 'the top-75 most likely next tokens are reachable >= 85% of the time with k <= 10',
                  'one drawn rank in 2..75 per state is reached for 0.3667 of 30 states at |u| <= 4 (random prompts 0.00): below the 0.85 level, but a k <= 4 lower bound cannot refute k <= 10'))),
    _e(44, 'Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting',
       'decoding', 'tokjax.decoding.kangaroo', ('kangaroo', 'Kangaroo', 'early_exit', 'EarlyExit', 'init_adapter', 'distill_batch', 'adapter_distill_loss', 'distill_metrics', 'adapter_logits'),
       'shallow sub-network + adapter draft with a confidence exit, adapter distilled from the frozen '
       'model, verification continuing from the shallow exit (its KV reused); on SmolLM2-135M (exit '
       'after layer 2, 80-step adapter, top-1 agreement 0.11) lossless but 1.073 tokens per target call'
       ' and 0.504x wall-clock',
       claims=(_c('lossless', 'reproduced', "Kangaroo is lossless: with greedy verification its output is the target's own greedy output"),
                _c('tokens-per-call', 'not-reproduced', 'The double-early-exit self-draft (shallow layers + adapter, confidence exit) gets several tokens accepted per target call',
                        '1.073 tokens per target call on SmolLM2-135M: the adapter distilled for 80 steps (all the CPU budget allowed) agrees with the full model on 0.11 of held-out tokens'),
                _c('speed', 'not-reproduced', "Kangaroo's double early exiting speeds up lossless decoding (up to 1.68x on Spec-Bench, Vicuna-7B)",
                        '0.504x wall-clock with shallow-KV reuse (the full-verification ablation 0.48x): at 1.073 tokens per call every draft token also pays the 49152x576 head'),
                _c('vs-medusa', 'untested-here', 'Kangaroo beats Medusa-1 with 88.7% fewer additional parameters',
                        'needs Medusa-1 heads trained on the same target, Vicuna-7B and Spec-Bench on an accelerator; none is available here'),)),
    _e(45, 'Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token Recycling',
       'decoding', 'tokjax.decoding.token_recycling', ('recycling', 'Recycling', 'RecyclingTable', 'TEMPLATES', 'draft_tree', 'update_table'),
       'adjacency table of top-k successors updated from every tree node, static 80-node 2.2.2 tree, '
       'hot start across calls (as the official global table); greedy-lossless; on SmolLM2-135M (hot '
       'table, 2-core CPU) 2.098 tokens per target call but 0.313x wall-clock on code editing; prompt '
       'lookup 0.806x over all prompts',
       claims=(_c('lossless', 'reproduced', 'Token Recycling with greedy verification outputs exactly what plain greedy decoding outputs'),
                _c('tokens-per-call', 'reproduced', "Token Recycling's recycled candidates are accepted often: well over 1 token per target call (hot adjacency table)",
                        'reproduced narrowly: 2.098 tokens per call on code editing against a threshold of 2; a cold table gives less'),
                _c('speed', 'not-reproduced', 'Token Recycling decodes ~2x faster than plain autoregressive decoding at batch 1',
                        '0.313x on code editing with SmolLM2-135M on a 2-core CPU: an 81-token tree call costs several 1-token calls, more than 2.098 tokens per call recovers'),
                _c('vs-train-free', 'not-reproduced', 'Token Recycling is faster than prior train-free drafting such as prompt lookup (paper: ~30% above)',
                        "0.31x against prompt lookup's 0.806x over all prompts; prompt lookup also accepts more on code editing"),)),
    _e(46, 'R2R: Efficiently Navigating Divergent Reasoning Paths with Small-Large Model Token Routing',
       'decoding', 'tokjax.decoding.r2r',
       ('r2r', 'R2R', 'RouterFeatures', 'router_features', 'init_router', 'apply_router', 'router_probs',
        'router_loss', 'recall_threshold', 'divergence_data'),
       "R2R per-token SLM->LLM routing: the paper's MLP router on (h_t, E_SLM[y_t], sorted top-100 logits), BCE on "
       "teacher-forced argmax-disagreement labels (the paper's LLM verifier skipped), theta at recall 0.95 on a "
       'validation split (tokjax.train.recipes.r2r); a generate strategy on tokjax.decoding.routing (lockstep, or the '
       'large model caught up lazily: catch_up; theta and router kind runtime; entropy / random baselines). On smollm2-draft -> SmolLM2-135M the draft is weak '
       '(next-token accuracy 13.45% vs 43.75%; divergent rate 0.817), so recall 0.95 puts the LLM fraction at '
       '0.914, far above the paper\'s regime (a small share of tokens from the large model)',
       claims=(_c('main', 'reproduced', 'at the LLM fraction its validation threshold gives, the learned router beats entropy and random routing at the same fraction',
                  'next-token accuracy 42.33% vs 41.37% (better baseline) at fraction 0.914, per seed +0.8545, +0.9766, +1.05; router AUC 0.761 vs entropy 0.671'),
               _c('low-fraction', 'not-reproduced', "the router's advantage holds at small LLM-token fractions (0.1-0.3), the paper's regime",
                  '20.04% vs 20.65% for entropy routing, per seed -0.7894, -0.4313, -0.6104: with 0.817 of positions divergent the router learns where keeping the draft is safe, not which few tokens matter most; a stronger draft or verifier-filtered labels would test this regime better'),
               _c('generation', 'inconclusive', "decoding with R2R stays on the LLM's greedy path longer than entropy or random routing at the same fraction",
                  '57.62% vs 53.34% of the continuation before the first departure, per seed -6.641, +4.036, -10.22 (the seeds disagree; 32 prompts)'),
               _c('speed', 'inconclusive', 'R2R decodes faster than the LLM alone (2.8x over R1-32B in the paper)',
                  'batch 1, lazy catch-up (tokjax.decoding.routing, catch_up 8) at each router seed\'s validation-chosen theta: 34.1 vs 34.66 tokens/s for the LLM alone, per seed 0.9, 1.04, 1.02x: the weak draft routes 0.911 of tokens to the LLM, which then runs on most steps (calls per step 0.883, 0.763, 0.896); the same strategy at a fixed tenth of the tokens is in the README\'s routing benchmark table. The draft was retrained for this row (its cache is per machine), so its fractions differ slightly from the other rows\''))),
    _e(47, 'LaSeR: Reinforcement Learning with Last-Token Self-Rewarding',
       'losses', 'tokjax.losses.laser', ('LaSeR', 'self_reward', 'self_reward_loss', 'mix_advantages', 'weighted_vote'),
       'rl_train plug-ins: prepare appends a fixed non-EOS z_c after each finished rollout, r_s = '
       'beta_v (log pi(z_c|x, y) - c_ref) read from the loss\'s own log-probs, aux adds the class-balanced '
       'lambda mean (r_s - r_v)^2, shape mixes (1 - alpha) A_v + alpha A_self (beta_v, lambda, alpha as in '
       'RUCBM/LaSeR; its warm-ups not reproduced); lambda = alpha = 0 is GRPO exactly. Tiny '
       'arithmetic-CoT rung (SmolLM2 has no word-problem level in the 20-70% band), 300 steps x 3 seeds',
       claims=(_c('accuracy', 'inconclusive', 'LaSeR keeps GRPO\'s accuracy (within a margin) while learning to self-verify',
                  'greedy test accuracy LaSeR 0.583 vs GRPO 0.593 (per seed -0.008, +0.002, -0.024; non-inferiority margin 0.02): inside on two seeds, outside on one'),
               _c('self-reward-f1', 'reproduced', 'the last-token self-reward r_s predicts correctness (F1 above an always-correct predictor)',
                  'held-out 200 problems x 8 samples: F1 of r_s > 0.5 is 0.571 vs 0.53, above by more than 0.02 on every seed; r_s is calibrated by bin (mean 0.81 -> 0.77 correct)'),
               _c('weighted-vote', 'inconclusive', 'an r_s-weighted vote over 8 samples beats plain majority voting',
                  'weighted vote 0.492 vs majority 0.495 (per seed +0.01, -0.005, -0.015); every paired bootstrap interval includes 0'),)),
    _e(48, 'TGDPO: Harnessing Token-Level Reward Guidance for Enhancing Direct Preference Optimization',
       'losses', 'tokjax.losses.tgdpo', ('tgdpo_weights', 'make_tgdpo_loss'),
       'TGDPO token weights 1 +- alpha*beta*r_t from a DPO reward model (alpha 0.5, beta 0.1, as the '
       "official trainer) on token-weighted DPO (registered 'tgdpo'); on the toy 67 steps to P(BAD) < 0.10 "
       "vs DPO's 68.33 with more collateral drift. On SmolLM2 word problems (2 seeds, 150 steps) TGDPO does not beat "
       'DPO: 48.94 vs 50.5 points at T=1 (below on both seeds), 98.25 vs 98.25 greedy (at the ceiling)',
       claims=(_c('toy-speed', 'inconclusive', "token-level reward guidance makes DPO push the bad token down faster (the notes' toy)",
                  'steps to P(BAD) < 0.10: TGDPO 63, 58, 80 vs DPO 66, 57, 82 (mixed signs over 3 seeds); at alpha*beta = 0.05 the weights barely differ from 1. The SmolLM2 word-problem rows below decide the accuracy claim'),
               _c('smollm-sampled', 'not-reproduced', "TGDPO's token-level reward guidance from a DPO model beats sequence DPO on held-out word problems (mean T=1 accuracy of 4 samples per problem)",
                  'SmolLM2-135M-Instruct, last 4 of 30 layers, 150 steps x 8 pairs, 200 held-out problems, seeds 0 and 1: 48.94 vs DPO 50.5 points, per seed -1.25 / -1.875 (the rule asks > max(2, paired-bootstrap 95 % half-width) on both); DPO itself beats the reference (30.1) by about 20 points, so the baseline is trained; the TGDPO weights stay close to 1 (mean|w-1| 0.0130 / 0.0118 at alpha*beta = 0.05)'),
               _c('smollm-greedy', 'not-reproduced', "TGDPO's token-level reward guidance from a DPO model beats sequence DPO on held-out word problems (greedy accuracy)",
                  'greedy 98.25 vs DPO 98.25 (+0 / +0 per seed): a ceiling, DPO leaves less than the 2-point margin to gain, so this row could not come out reproduced here; the T=1 row carries the evidence'),)),
    _e(49, 'Bridging the Training-Inference Gap in LLMs by Leveraging Self-Generated Tokens',
       'losses', 'tokjax.losses.self_generated', ('scheduled_sampling_loss', 'make_scheduled_sampling_loss', 'mix_self_generated', 'self_generated_tokens', 'scheduled_probability', 'reference_answer_correction'),
       "batch-scheduled sampling with the model's own tokens and reference-answer correction batches "
       '(schedule and layout unverified: paper body unavailable); on a running-sum-mod-10 task teacher '
       'forcing shows no free-running gap to close (declared gate), so the check is inconclusive',
       status='implemented', claims=(_c('free-running', 'inconclusive', 'batch-scheduled sampling with self-generated tokens (BASH) gives better free-running generation than teacher forcing',
                        "the running-sum task showed no exposure-bias gap on any seed (each seed either before learning the rule or perfect, for both methods: BASH 0.6669 vs 0.6682); a task where teacher forcing keeps a per-token error rate at the end of training yet recovery is possible, or the paper's LLM fine-tuning setting, would decide it"),)),
    _e(50, 'Token-Supervised Value Models for Enhancing Mathematical Reasoning Capabilities of Large Language Models',
       'losses', 'tokjax.losses.token_value_model',
       ('trie_value_labels', 'trie_value_labels_host', 'outcome_labels', 'value_head_init', 'value_head', 'tvm_loss',
        'make_tvm_loss', 'rerank_best_of_n', 'token_values'),
       'scalar value head on final-normed h_t (one shared forward, no logits), BCE (or MSE) to trie labels v_t = '
       '#correct / #paths sharing the prefix y_<=t over N sampled paths per problem (jittable N x N prefix scan; '
       'host level-by-level trie for large N; both = brute force under hypothesis); registered loss "tvm"; ORM '
       'baseline = same head with outcome labels; best-of-N by last-token value. Driver '
       'tokjax.train.recipes.token_value_model. BCE vs MSE, N, linear head and best-of-N aggregation unverified '
       '(no official code). Tiny arithmetic-CoT rung (SmolLM2 has no word-problem level in the 20-70% band); '
       'N = 16 label paths per training problem, warm-start verifier fully trained, 3 head seeds',
       claims=(_c('tvm-vs-orm', 'inconclusive', 'a value head trained on trie labels picks better best-of-8 answers than the same head trained on outcome labels (ORM)',
                  'TVM 0.193 vs ORM 0.179 best-of-8 on held-out problems (per seed +0.012, +0.008, +0.02; margin 0.035), but both pick worse than a random pick (0.258; majority vote 0.380, oracle 0.604), so the verifiers do not rank a problem\'s own paths and the comparison is not informative'),
               _c('labels', 'reproduced', 'trie labels approach the true value function as N grows',
                  'Markov toy with exact V: mean |label - V| 0.2884 at N = 16 falls to 0.0768 at N = 4096, at every N step on every seed'),)),
    _e(51, 'T-REG: Preference Optimization with Token-Level Reward Regularization',
       'losses', 'tokjax.losses.t_reg', ('contrastive_prompt_rewards', 'normalised_token_rewards', 't_reg_regularizer', 'make_t_reg_loss'),
       'T-REG: token rewards sigmoid(log pi(y_t|x+) - log pi(y_t|x-)) - 0.5 from opposite prompts regularise '
       "DPO's implicit token rewards (registered 't_reg'; alpha 0.25). The regulariser's form is taken from a "
       'secondary summary of the paper (the official code was not readable here): unverified. On the control-'
       'token toy the credit at the bad token does not move (0.193 vs 0.194). On SmolLM2 the opposite-prompt '
       'token rewards do not find the wrong answer tokens (AUROC 0.5049), so the accuracy rows are inconclusive '
       '(T=1 51.06 vs DPO 50.5 points, greedy 98.25 vs 98.25)',
       claims=(_c('toy-credit', 'not-reproduced', "T-REG moves DPO's token credit onto the erroneous token (toy with opposite-prompt control tokens)",
                  'fraction of rejected responses whose most negative implicit reward sits at BAD: T-REG 0.193 vs DPO 0.194 over 3 seeds (differences 0, 0, -0.004); the regulariser form is unverified against the paper'),
               _c('smollm-reward-auroc', 'not-reproduced', 'contrastive-prompt token rewards of SmolLM2 single out the wrong answer tokens of incorrect samples',
                  "SmolLM2-135M-Instruct reference, 302 rejected training completions, x+ 'Think carefully and give the correct answer.' / x- 'Give a wrong answer on purpose.': AUROC of -r_t for the answer tokens 0.5049 (chance 0.5; the declared bar 0.6); mean r_t at answer tokens -0.0049, elsewhere +0.0057"),
               _c('smollm-sampled', 'inconclusive', "T-REG's contrastive-prompt token regulariser beats sequence DPO on held-out word problems (T=1 accuracy)",
                  'last 4 of 30 layers, 150 steps x 8 pairs, beta 0.1, alpha 0.25, 200 held-out problems, seeds 0 and 1: T-REG 51.06 vs DPO 50.5 points (per seed +0.5 / +0.625, below the 2-point margin); inconclusive by the declared guard whatever the numbers, because the token rewards it regularises towards are at chance (AUROC 0.5049 < 0.6)'),
               _c('smollm-greedy', 'inconclusive', "T-REG's contrastive-prompt token regulariser beats sequence DPO on held-out word problems (greedy accuracy)",
                  'greedy accuracy 98.25 vs DPO 98.25 (per seed +0 / +0; DPO sits at a ceiling, above the reference 84.0); inconclusive by the same guard (AUROC 0.5049 < 0.6)'),)),
    _e(52, 'Kronos: A Foundation Model for the Language of Financial Markets',
       'tokenizers', 'tokjax.tokenizers.kronos',
       ('BSQConfig', 'KronosHead', 'KronosDecode', 'kline_features', 'tokenizer_encode', 'tokenizer_loss',
        'init_kronos_head', 'kronos_loss', 'kronos_joint_logprobs'),
       'BSQ K-line tokenizer (normalise, sign/sqrt(k) straight-through, commitment + soft entropies, decoder from '
       's1 bits and from all bits; official module.py read) with ids (s1 << s2_bits) | s2; dual head on the shared '
       'forward: s1 head, then s2 from RMSNorm(h + cross-attn(emb(s1), h)) (official DependencyAwareLayer, RoPE '
       'omitted), loss (CE_s1 + CE_s2)/2 registered as "kronos"; KronosDecode samples s1 then s2 | s1 in '
       'tokjax.generate. s2_bits = 0 = flat head; decoded = teacher-forced log-probs (tested)',
       claims=(_c('nll', 'reproduced', 'the dual head (s2 | s1) models K-line tokens better than independent s1/s2 heads',
                  'synthetic regime-GBM x GARCH klines, 3 seeds: 6.196 vs 6.753 nats per bar; a flat 256-way head does better than both (4.5853)'),
               _c('rankic', 'not-reproduced', 'Kronos forecasts returns with a higher RankIC (here: dual vs independent head)',
                  'RankIC 8e-05 vs 0.00827: every head is near chance while the true conditional mean reaches 0.0456 on this data'),
               _c('volatility', 'reproduced', 'Kronos forecasts volatility with a lower MAE (here: dual vs independent head, against the GARCH truth)',
                  'vol MAE 0.00623 vs 0.0067 (lower on every seed); the flat head is lower still (0.00478)'),)),
    _e(53, 'Uni-3DAR: Unified 3D Generation and Understanding via Autoregression on Compressed Spatial Tokens',
       'vision', 'tokjax.vision.uni3dar', ('uni3dar', 'OctreeSpec', 'octree_encode', 'octree_decode', 'sequence_lengths', 'uni3dar_batch', 'make_uni3dar_loss', 'octree_decoder', 'sample_octrees'),
       'octree / quadtree tokens (child occupancy - 1 of each non-empty node, level by level, Morton order '
       'within a level: the official 2-level compression), masked NTP (a [MASK] query at the next node\'s '
       'position and level, loss on the queries; registered "uni3dar"), a KV-cached breadth-first decode '
       'Strategy; level embedding and RoPE over cell centres. Full run, 3 seeds on binarized glyph quadtrees and '
       'synthetic 3-D point clusters: compression and masked NTP reproduce; the speed claim against 3-D '
       'diffusion is not testable here',
       claims=(_c('compression-digits', 'reproduced', '2-level subtree compression shortens quadtree token sequences',
                  'mean tokens per structure 24.91 vs 99.63 for the plain quadtree on 16x16 digits'),
               _c('compression-points', 'reproduced', '2-level subtree compression shortens octree token sequences '
                  '(up to 8x)', 'mean tokens per structure 10.78 vs 86.21 on 8x8x8 point sets (the 8x bound reached)'),
               _c('nll-digits', 'reproduced', 'masked NTP models quadtree tokens better than plain NTP',
                  'held-out NLL per structure 24.99 vs 29.83 nats, lower in every seed'),
               _c('nll-points', 'reproduced', 'masked NTP models octree tokens better than plain NTP',
                  'held-out NLL per structure 36.67 vs 41.52 nats, lower in every seed'),
               _c('quality-digits', 'reproduced', 'masked NTP generates better structures than plain NTP (digits)',
                  'classifier accuracy on the conditioning class 0.7573 vs 0.616 (FD 33.748 vs 38.655), every seed'),
               _c('validity-points', 'reproduced', 'masked NTP generates better structures than plain NTP (points)',
                  'samples with the conditioned cluster count 0.5047 vs 0.2137, every seed'),
               _c('speed', 'untested-here', 'up to 256% better and 21.8x faster inference than diffusion SOTA',
                  'needs molecular / crystal data and a trained 3-D diffusion baseline (downloads and GPU-days)'))),
    _e(54, 'Successor Heads: Recurring, Interpretable Attention Heads In The Wild',
       'analysis', 'tokjax.analysis.successor_heads', ('successor_scores', 'effective_embeddings', 'head_ov_logits', 'ablated_accuracy'),
       'per-head successor scores of the effective OV circuit W_U W_OV (W_E + MLP0(norm W_E)) and per-head '
       'ablation through the attn_heads hook; on SmolLM2-135M-Instruct the best head (L23H3) scores 0.25 '
       'averaged over 5 ordinal tasks (0.56 on digits), under the 0.5 bar; zero-ablating the top-3 heads '
       'drops next-item accuracy by 0.2093 vs 0.0535 for 3 random heads',
       test='tests/analysis/test_successor_heads.py',
       claims=(_c('exists', 'not-reproduced', 'successor heads (an effective OV circuit mapping ordinal tokens to their successors) exist in LLMs from 31M to 12B parameters',
                  'on SmolLM2-135M-Instruct the best head scores 0.25 averaged over digits, number words, days, months and letters (digits 0.56), under the declared bar max(0.5, 3 x chance 0.093); one model of one family, and the effective embedding (layer-0 attention ignored) is our reading'),
               _c('ablation', 'reproduced', 'ablating the successor heads hurts incrementation more than ablating other heads',
                  'zero-ablating the top-3 heads drops next-item accuracy by 0.209 vs 0.0535 for 3 random heads (mean of 20 draws; the top-3 drop exceeds 95% of the draws)'),)),
    _e(55, 'Order-agnostic Identifier for Large Language Model-based Generative Recommendation',
       'tokenizers', 'tokjax.tokenizers.setrec', ('init_setrec', 'item_tokens', 'setrec_layout', 'setrec_query_states', 'setrec_scores', 'setrec_loss'),
       'order-agnostic set identifiers under a sparse mask, decoded in one forward (invariant to in-'
       'item order to 1e-6); recall@10 0.963 vs 0.944 for 2-token codes (3 seeds) with 1 vs 2 '
       'sequential passes',
       status='implemented', claims=(_c('main', 'reproduced', 'set identifiers decoded in one pass (SETRec) match token-sequence identifiers in recall@10 with fewer sequential passes'),)),
    _e(56, 'Learning More with Less: A Dynamic Dual-Level Down-Sampling Framework for Efficient Policy Optimization',
       'losses', 'tokjax.losses.d3s', ('D3S', 'D3STokenMask', 'max_variance_subset', 'd3s_token_mask'),
       'rl_train plug-ins: select keeps each group\'s max-Var(A) subset (exact: the lowest j plus the highest '
       'values, = brute force under hypothesis), a token mask keeps the top |A|*H, both ratios scheduled '
       'aggressive -> relaxed as runtime arrays, kept-token denominator; all ratios 1 = GRPO exactly. Ratios '
       'and schedule unverified (paper code not public). Tiny rung: tokjax.pretrained("tiny-arithmetic-cot")',
       test='tests/losses/test_d3s.py',
       claims=(_c('accuracy', 'not-reproduced', 'D3S (max-Var(A) rollouts, top |A|*H tokens, aggressive -> relaxed) beats GRPO\'s final accuracy',
                  'tiny arithmetic-CoT rung, 300 steps x 3 seeds: D3S 0.595 vs GRPO 0.593 greedy test accuracy (per-seed differences +0.008, 0, -0.002; margin 0.02); both arms rise from the warm start 0.504'),
               _c('fewer-tokens', 'inconclusive', 'D3S reaches GRPO\'s final accuracy with fewer trained tokens',
                  'trained tokens to first reach GRPO\'s final accuracy, as a share of GRPO\'s: 0.117 and 0.314 on two seeds, never reached on the third (1.002); D3S trains 118665 vs 377802 tokens per run but samples the same rollouts, and its run took 114 s vs 70 s here'),)),
    _e(57, 'RLFR: Extending Reinforcement Learning for LLMs with Flow Environment',
       'losses', 'tokjax.losses.rlfr', ('RLFR', 'flow_score', 'rlfr_advantages', 'filter_scores', 'init_flow'),
       'flow net v_phi(x_t, t, context, layer) as the official AdaLN MLP, fit by rectified flow (registered loss '
       '"rlfr_flow", through tokjax.train) on resid_post latents of correct rollouts; token score '
       '(t/(1-t))||v - (h - eps)||^2 at t = 0.8, per-row min-max, threshold 0.6, top-15, reward -c_flow*s summed '
       'backwards onto GRPO advantages (an rl_train shape plug-in; online flow update on correct rollouts); '
       'c_flow = 0 = GRPO exactly. Checked against Jinghaoleven/RLFR (network, interpolation, score, '
       'post-processing)',
       test='tests/losses/test_rlfr.py',
       claims=(_c('accuracy', 'not-reproduced', 'RLFR (flow token rewards from latents added to the verifier reward) beats GRPO\'s final accuracy',
                  'tiny arithmetic-CoT rung, 300 steps x 3 seeds at the official c_flow 0.01: RLFR 0.595 vs GRPO 0.593 greedy test accuracy (per-seed -0.004, +0.018, -0.006; margin 0.02); the RLFR run took 258 s vs 70 s'),
               _c('auroc', 'not-reproduced', 'the flow score separates latents of incorrect from correct rollouts',
                  'held-out warm-start rollouts: AUROC 0.784 (declared bar 0.9), flow fit on 10938 latent pairs of 187 correct rollouts of a 2-layer model'),)),
    _e(58, 'Think-at-Hard: Selective Latent Iterations to Improve Reasoning Language Models',
       'decoding', 'tokjax.decoding.think_at_hard',
       ('think_at_hard', 'ThinkAtHard', 'tah_logits', 'tah_loss', 'duo_causal_mask', 'soft_input', 'oracle_labels', 'init_decider', 'apply_decider', 'decider_loss'),
       'TaH: iteration 0 plain; where the MLP decider (tapped layers + top-k logits) > theta, iteration 1 feeds '
       'sum softmax(top-k) E with LoRA on (tokjax.model.lora, per-token gate) under duo-causal attention, '
       'z1 = z0 + dz; iteration-keyed KV cache in decoding; step 1 trains base + LoRA on oracle labels, step 2 '
       'the decider (BCE, pos_weight as the official recipe); checked against thu-nics/TaH. Tiny arithmetic-CoT '
       'rung (LoRA on SmolLM2 exceeds the CPU budget)',
       claims=(_c('main', 'not-reproduced', 'TaH beats both the 1-iteration fine-tune and the always-2-iteration model trained on the same data',
                  'tiny-arithmetic-cot (d64x2), 300 steps on 20000 CoT addition problems, 500 test problems, 3 seeds: TaH 70.0% exact match vs 72.93% for the 1-iteration fine-tune (per seed -2.8, -2.6, -3.4 points) and 64.6% always-2; TaH with oracle labels 73.53%, so the learned decider costs the gain'),
               _c('iterated', 'reproduced', 'TaH iterates few tokens (paper: 94% of tokens skip the second iteration)',
                  'TaH iterates 2.33% of decoded tokens (bound 10%) on every seed; the oracle rate is 2.4% of test completion tokens'),
               _c('hard-tokens', 'not-reproduced', 'TaH improves next-token accuracy on hard tokens (base argmax wrong) over both baselines',
                  'teacher-forced accuracy on hard test tokens: TaH 60.87% vs 65.22% for the 1-iteration fine-tune (per seed -2.826, -5.87, -4.348 points), always-2 54.35%'),)),
    _e(59, 'S2D: Sorted Speculative Decoding For More Efficient Deployment of Nested Large Language Models',
       'decoding', 'tokjax.decoding.s2d', ('nested', 'Nested', 'sorted_loss', 'truncate', 'exit_logits', 'exit_metrics'),
       'sorted fine-tuning of nested exits and a confidence-exit nested draft; lossless; with '
       'SmolLM2-135M (first 7 of 30 layers as the draft, 23% of the target\'s layers, exits 3/5/7, draft '
       'layers and shared final norm SoFT-tuned for 300 steps) 1.182 tokens per call and 0.267x wall-clock; '
       'one sorted draft serving two tiny targets reaches 0.853 of per-target distilled drafts\' tokens per call',
       claims=(_c('lossless', 'reproduced', "with greedy verification the S2D output is the target's own greedy output"),
                _c('tokens-per-call', 'not-reproduced', 'the sorted nested draft gets several tokens accepted per target call',
                        '1.182 tokens per call: a draft of the first 7 layers (at most a quarter of the target, as the paper\'s drafts), SoFT-tuned on CPU for 300 steps, agrees with the target on 0.34-0.38 of held-out tokens at its exits'),
                _c('speed', 'not-reproduced', 'S2D speeds up decoding (paper: ~1.55x over autoregressive)',
                        '0.267x plain greedy on SmolLM2-135M: each draft token also runs the tied 28M-parameter head (~40% of a target token\'s weights), and a 5-token verification costs more than a 1-token call on this CPU'),
                _c('adaptive', 'reproduced', 'confidence-based exits beat always drafting from the deepest sub-model',
                        'by the declared rule (ratio > 1) at 1.007x: 26.4 vs 28.0 draft layers per call at equal tokens per call; the per-task ratios go both ways, so the margin is within timing noise'),
                _c('multi-target', 'not-reproduced', 'one sorted draft serves several targets of different depth with acceptance competitive with per-target drafts',
                        'tiny scale (targets 4x128 and 2x128, one 2x64 SoFT draft, 3 seeds): the shared draft gets 0.853 of the per-target distilled drafts\' tokens per call (under 0.9 on every seed), on par with a plain next-token draft (1.312 vs 1.280 on the 4-layer target); distilled drafts transfer across the two targets'),)),
    _e(60, 'Imitating Language via Scalable Inverse Reinforcement Learning',
       'losses', 'tokjax.losses.inverse_rl', ('td_rewards', 'soft_q', 'inverse_rl_loss', 'make_inverse_rl_loss'),
       'inverse RL as TD-regularised MLE: -log pi + lambda (V(s) + log pi - gamma V(s\'))^2 with V = lse of the '
       "logits (registered 'inverse_rl'; the form is our reading of the paper's eq. 14 via a secondary summary); "
       'on a toy Markov chain held-out NLL 1.572 vs MLE 1.563 (non-inferior), but entropy overshoots the '
       "chain's true rate; on SmolLM2 word problems (2 seeds) IRL samples are as diverse as the reference's "
       '(self-BLEU-2 0.5033 vs MLE 0.7376) but T=1 accuracy drops to 35.62 from MLE\'s 66.75',
       claims=(_c('nll', 'reproduced', 'TD-regularised MLE keeps the likelihood of MLE (imitation quality is not lost)',
                  'held-out NLL 1.572 vs MLE 1.563 over 3 seeds, within the declared 0.02-nat margin (toy chain, tiny model)'),
               _c('entropy', 'not-reproduced', "TD-regularised MLE's next-token entropy is closer to the data's true entropy (more diverse generations)",
                  'IRL is more diverse but overshoots: |entropy - true rate| 0.133 vs MLE 0.0017 (3 seeds, lambda 0.1 fixed in advance, untuned)'),
               _c('smollm-accuracy', 'not-reproduced', 'TD-regularised MLE keeps MLE\'s task accuracy (held-out word problems, T=1)',
                  'SmolLM2-135M-Instruct SFT on 819 verified-correct samples, last 4 of 30 layers, 150 steps, 200 held-out problems, seeds 0 and 1: T=1 accuracy IRL 35.62 vs MLE 66.75 points, per seed -30.88 / -31.38 (margin -2); the reference scores 30.1, so the TD term keeps the T=1 distribution near the reference while greedy accuracy rises (IRL 99.0 / 99.5 vs MLE 98.5 / 98.0)'),
               _c('smollm-diversity', 'inconclusive', "TD-regularised MLE's samples are more diverse than MLE's (lower self-BLEU-2 among a problem's 4 samples)",
                  'self-BLEU-2 IRL 0.5033 vs MLE 0.7376 (reference 0.5348), +0.2402 / +0.2282 per seed against a seed spread of 0.0236; the declared rule counts diversity only with the accuracy row reproduced, and IRL loses 31 points of T=1 accuracy'),)),
    _e(61, 'TokenFLEX: Unified VLM Training for Flexible Visual Tokens Inference',
       'vision', 'tokjax.vision.tokenflex',
       ('tokenflex_init', 'tokenflex_batch_fn', 'tokenflex_loss', 'make_tokenflex_loss', 'adaptive_avg_pool', 'adaptive_pool_matrix', 'caption_accuracy', 'greedy_captions'),
       'glyph captioner on the shared forward: conv-stem patch features (stand-in for a pretrained ViT) adaptively '
       'avg-pooled to n x n (torch bins, = numpy oracle), SwiGLU projector, Prefix(n^2) visual prefix, caption CE '
       '(registered "tokenflex"); random n per step from static buckets (the pooling matrix in the batch, one '
       'compile per bucket). Token-count ratios, projector details and the encoder are unverified (no official '
       'code found). Glyph captions, d=64 x 2 layers, 800 steps per model, 3 seeds',
       claims=(_c('seen', 'not-reproduced', 'one flexible model matches each fixed-token model at its own token count (within 0.5 pt)',
                  'caption exact match, flexible vs fixed at the fixed model\'s own N: mean 88.49 vs 93.64 pt (N=4 82.0 vs 82.2, N=16 91.6 vs 99.2, N=64 91.8 vs 99.5); the worst gap per seed -7.4, -17.2, -11.3'),
               _c('unseen', 'inconclusive', 'the flexible model beats every fixed model at token counts none was trained on (N=9, 36)',
                  'flexible 75.68 vs the best fixed model per N 57.6 pt on average (N=9 72.2 vs 51.9, N=36 79.1 vs 61.5), but one seed of three falls short (per seed +28.7, -1.5, +13.5)'),)),
    _e(62, 'Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference',
       'decoding', 'tokjax.decoding.entropy_adaptive', ('entropy_adaptive', 'EntropyAdaptive', 'entropy_adaptive_generate', 'EADOutput', 'entropy_bits', 'rolling_mean', 'relative_cost'),
       'EAD per-row rolling-entropy switching between a small and a large model (tau runtime, both '
       'caches kept in step; both models run every step, large-model fraction and relative cost '
       "reported); the paper's switching stability condition is unread and not implemented; on "
       'tiny-pydocs the pre-chosen window w=5 ties random switching at matched large-model fractions '
       '(w=1, chosen after seeing the results, does better: not evidence)',
       status='implemented', claims=(_c('main', 'inconclusive', "EAD's quality-vs-large-token-fraction curve dominates random switching",
                     '+0.020 bits/token mean advantage vs 2 SE 0.040 of random switching; more prompts or a task metric would decide it'),), test='tests/decoding/test_entropy_adaptive.py', experiment='experiments/p62_entropy_adaptive.py'),
    _e(63, 'Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for LLM Reasoning',
       'losses', 'tokjax.losses.high_entropy_tokens', ('token_entropy', 'top_entropy_mask', 'group_advantages', 'dapo_token_objective', 'dapo_loss'),
       'DAPO (clip-higher, token-sum normalisation) with a top-rho batch-entropy token mask (ceil(rho '
       'n) tokens, pads never kept; rho=1 is exact full DAPO); toy RLVR from a warm start that solves '
       '10 of 25 prompts (greedy reward 0.500): fork share 0.189 on warm-start rollouts, so rho 0.20 '
       'keeps every fork token; top-20% 0.820 vs all tokens 0.853 vs bottom-80% 0.473 (3 seeds)',
       claims=(_c('comparable', 'inconclusive', 'DAPO on the top-20% entropy tokens is comparable to all-token DAPO (non-inferiority, margin 0.04 greedy reward)',
                        '0.820 vs 0.853 greedy reward, per-seed -0.02, -0.02, -0.06 against a -0.04 margin (2 of 3 seeds within it); more seeds with a paired interval inside the margin would decide it'),
                _c('low-entropy', 'reproduced', 'DAPO on only the 80% lowest-entropy tokens is clearly worse than all-token DAPO'),
                _c('scale', 'untested-here', "the gain of top-20% entropy training grows with model size (+4.79 AIME'25 at 14B, +11.04 at 32B)",
                        'needs RL on 14B/32B models and AIME-style tasks; not runnable on 2 CPU cores'),), test='tests/losses/test_high_entropy_tokens.py', experiment='experiments/p63_high_entropy_tokens.py'),
    _e(64, 'Token-Shuffle: Towards High-Resolution Image Generation with Autoregressive Models',
       'vision', 'tokjax.vision.token_shuffle', ('token_shuffle_init', 'make_token_shuffle_loss', 'token_shuffle', 'token_unshuffle', 'token_shuffle_decoder', 'TokenShuffleDecode'),
       'window-raster codes; each s x s window\'s embeddings projected to d/s^2, concatenated and merged by a '
       'residual MLP into one transformer position, unshuffled by a residual MLP into s^2 states read by the '
       'shared LM head; N/s^2 positions and one window per pass; s = 1 is exactly raster NTP (tested). MLP '
       'sizes, weight sharing and the base path are our reading (paper method section not readable here); '
       'glyph experiment on 8x8 codes at 8 levels (no VQ; the issue\'s 16x16 via VQ not run); decoded KV-cached, one '
       'merged position per pass',
       claims=(_c('flops', 'not-reproduced', 'Token-Shuffle s=2 trains at <= 0.35x the FLOPs of s=1 (4x fewer positions)',
                  'analytic train FLOPs at equal steps: s=2 0.398 of s=1 (s=4 0.110): the shuffle/unshuffle MLPs and the LM head on all s^2 codes keep it above the bound at d=64 x 2 layers, where attention is a small share; wall-clock ratio s=2 0.61 on a loaded machine'),
               _c('fd-s2', 'not-reproduced', 'Token-Shuffle s=2 keeps quality: FD <= 1.15x s=1 (same steps)',
                  '1000 steps per s, 3 seeds: FD 43.043 vs 21.771 (ratio 2.03; per seed 2.087, 2.455, 1.548), class consistency 0.42 vs 0.68; real-vs-real floor 11.303'),)),
    _e(65, 'From r to Q^*: Your Language Model is Secretly a Q-Function',
       'losses', 'tokjax.losses.dpo', ('implicit_token_rewards', 'sequence_implicit_reward', 'dpo_loss', 'dpo_per_pair', 'bradley_terry_loss', 'make_dpo_loss'),
       "TRL-sigmoid sequence DPO (registered as loss 'dpo') and P65 implicit token rewards; mixed "
       'result on a toy: argmin_t r_t hits the bad token or the next one in 97-100% of rejected '
       "responses early in DPO (25-50 steps, reference SFT'd with bad tokens) but only 41% after 300 "
       "steps (blame spreads to later tokens) and <= 63% with a clean-only reference; the notes' "
       '6-19% / 81-94% split is not seen (about 50/50)',
       status='implemented', claims=(_c('main', 'not-reproduced', 'after sequence DPO, argmin_t of the implicit token reward lands on the bad token or the one after it',
                     '83-100% early in DPO but 41% after 300 steps (blame spreads to later tokens)'),), test='tests/losses/test_dpo.py', experiment='experiments/p65_r_to_q.py'),
    _e(66, 'Future Token Prediction -- Causal Language Modelling with Per-Token Semantic State Vector for Multi-Token Prediction',
       'losses', 'tokjax.losses.future_token_prediction', ('init_ftp', 'ftp_loss', 'make_ftp_loss', 'ftp_next_logits', 'FTPDecode', 'FTPConfig'),
       'causal encoder h_t -> linear m-slot pseudo-sequence -> a small decoder reading it through memory_cache and '
       'predicting x_{t+1..t+N}; loss sum_j decay^(j-1) CE_j (registered "ftp", decay a runtime value), the B*T '
       'mini-sequences as a chunked map (= unchunked), a generate Strategy on the first decoder output. N, m, D\' '
       'and the decay are unverified (no official code; paper text not readable here). Full run: d=128 x 4 '
       'encoders from scratch on pydocs (BPE 1024, 64-token windows), 3000 steps per arm, 3 seeds',
       test='tests/losses/test_future_token_prediction.py',
       claims=(_c('smoothness', 'reproduced', 'FTP top-layer vectors vary more smoothly along the text (adjacent cosine higher)',
                  'adjacent cosine 0.465 FTP vs 0.177 GPT, per seed +0.2913, +0.2841, +0.2885; part of it is anisotropy (random-pair cosine 0.0874 vs 0.0138), the rest still well above the +0.02 bar'),
               _c('topic-probe', 'inconclusive', 'FTP vectors represent the text\'s topic better (linear probe)',
                  'held-out probe accuracy 0.3894 FTP vs 0.38 GPT on 10 pydocs topics, per seed +0.04095, -0.03017, +0.01724'),
               _c('topic-coherence', 'not-reproduced', 'FTP generations stay on the prompt\'s topic more often',
                  'topic agreement of 32 greedy tokens 0.25 FTP vs 0.301 GPT, lower on every seed (-0.05388, -0.03233, -0.06681)'),
               _c('bpb', 'reproduced', 'FTP keeps next-token quality (bits per byte within 5% of GPT)',
                  'validation bits per byte 1.772 FTP vs 2.158 GPT: better, not just within 5%, on every seed; the FTP arm has the extra decoder layer and embedding (not a parameter-matched GPT)'))),
    _e(67, 'Unifying Continuous and Discrete Text Diffusion with Non-simultaneous Diffusion Processes',
       'losses', 'tokjax.losses.neodiff', ('neodiff_init', 'neodiff_loss', 'make_neodiff_loss', 'sample_taus', 'tau_labels', 'tau_pmf', 'NeoDiffDecode', 'neodiff_decoder', 'neodiff_sample'),
       'per-token level tau_i (capped Poisson(lambda(t)), the official rescaled PoissonScheduler, tau = M t, or absorbing '
       '{0, M}); z = sqrt(abar) emb + sqrt(1 - abar) sigma eps on unit-RMS tied embeddings; rounding CE through the tied '
       'table; a 1-layer time predictor regressing loss-ranked Poisson quantiles (official create_labels); L_z + L_anchor '
       '+ L_tau (registered "neodiff", runtime hparams); a generate Strategy re-noising x0_hat to tau_hat (predictor, or '
       'confidence as the official cmlm) at the next t, traced step count. Checked against bc-li/neodiff; no '
       'self-conditioning, length prediction or optimised schedule. Full run (3 seeds, class -> 8x8 glyph, 1000 '
       'steps per arm): beats the masking baseline on FD, is mixed against plain continuous diffusion (worse in the '
       'mean), the time predictor makes samples worse, and every glyph model stays far from the real-vs-real floor (FD 11.303) '
       'at near-chance class consistency, with FD rising with the step count for every decoder. The paper\'s BLEU '
       'claims (MT, paraphrase, simplification, question generation) are not run here',
       claims=(_c('vs-continuous', 'inconclusive', 'NeoDiff (Poisson tau + time predictor) generates at least as well as plain continuous diffusion (tau = t) at equal steps',
                  'FD ratio full / continuous at 16 steps per seed 2.373 / 1.326 / 0.799 against the declared bound 1.05: better on one seed only (FD 328.49 vs 229.49 in the mean)'),
                _c('vs-masking', 'reproduced', 'NeoDiff (Poisson tau + time predictor) generates at least as well as absorbing-masking diffusion decoded by mask-predict (the CMLM baseline) at equal steps',
                   "FD ratio per seed 0.623 / 0.676 / 0.25 (bound 1.05; FD 328.49 vs 632.14). Read with care: the masking arm is the paper's CMLM decoder (confidence-ordered mask-predict, here with sampled tokens) and is the weakest decoder on this image task, far below tokjax's MaskGIT on the same glyphs (P5); every arm's class consistency is 0.10-0.14 (chance 0.1)"),
                _c('predictor', 'not-reproduced', "the context-aware time predictor improves the Poisson model's samples",
                   'FD with the predictor / without it at 16 steps per seed 2.954 / 2.564 / 1.043 (bound 1.0): worse on every seed (328.49 vs 150.55); the Poisson model decoded with fresh draws of its own scheme is the best decoder in the run'),
                _c('sort', 'inconclusive', 'text check: NeoDiff sorts 8 digits at least as exactly as the better of the continuous and masking baselines',
                   'exact match at 16 steps 0.8187 vs 0.8827 (masking); per seed +0.018 / +0.004 / -0.214 against the -0.02 margin'),)),
    _e(68, 'Demystifying the Token Dynamics of Deep Selective State Space Models',
       'analysis', 'tokjax.analysis.ssm_token_dynamics', ('simulate_1d', 'regime', 'token_norms'),
       'the 1-D continuous-time token system (Euler, batched, runtime mu), the regime of each mamba layer (signs of '
       'the nonzero spectrum of S_C^T S_B) and token norms by depth; the Mamba mixer itself is a layer type of the '
       'shared forward (ModelConfig(mixer="mamba", ssm_sign="pos"|"neg"|None), tokjax.model.mamba, the official '
       'constrained x_proj). Token norms by depth (experiments/figures/p68_token_norms.png: seed 0 of each variant '
       'retrained with the recorded recipe, as the runs kept no weights) grow with depth in every variant, least under '
       'the negative constraint',
       experiment='experiments/p68_mamba_dynamics.py',
       claims=(_c('convergent-rate', 'reproduced', 'with mu = S_C^T S_B < 0 every token of the 1-D system converges to 0 at rate O(1/sqrt(t))',
                  '6 tokens, mu = -1, Euler to t = 40: log-log slope of max|x| over t in [10, 40] is -0.4320 (|slope + 1/2| = 0.068, tolerance 0.1)'),
               _c('divergent', 'reproduced', 'with mu > 0 the tokens diverge',
                  'mu = +1: |x| > 1e6 at t = 1.075'),
               _c('neg-hurts', 'reproduced', 'constraining Mamba to the convergent regime (negative-definite S_C^T S_B) hurts language modelling',
                  '4-layer all-Mamba d=128 on pydocs, 600 steps, 3 seeds: neg 1.416 vs unconstrained 1.4 held-out bits per byte, above the declared 0.01 on every seed (+0.01594, +0.0175, +0.01596: a small margin); every trained layer stays in its constrained regime'),
               _c('pos-no-worse', 'reproduced', 'constraining to the divergent regime (positive-definite S_C^T S_B) is no worse than unconstrained',
                  'pos 1.399 vs unconstrained 1.4 bits per byte, within the 0.01 non-inferiority margin on every seed (-0.0002902, -0.003501, +0.005348)'),)),
    _e(69, 'Token Hidden Reward: Steering Exploration-Exploitation in Group Relative Deep Reinforcement Learning',
       'losses', 'tokjax.losses.token_hidden_reward', ('token_hidden_reward', 'thr_weights', 'THRWeights', 'model_token_hidden_reward'),
       'THR = A_i sum over the group\'s correct tokens <h, h\'> <e_y - pi, e_y\' - pi\'> (last layer, head-only '
       'learning dynamics; exact, linear in tokens, one vocabulary block at a time, = a float64 brute force); '
       'token weights 1 + p sign(THR) as a LossTransform with p a runtime array, p = 0 = GRPO bit for bit; '
       'rl_train plug-ins (select computes THR under the current policy). Formula, anchor set and p are our '
       'reading of the abstract (no official code)',
       claims=(_c('exploit-greedy', 'not-reproduced', 'THR reweighting with p > 0 raises greedy accuracy over GRPO',
                  'tiny arithmetic-CoT rung, 300 steps x 3 seeds, p = +0.5: 0.595 vs GRPO 0.593 (per-seed +0, +0.002, +0.006; margin 0.02); the reweighted tokens split near evenly by sign (positive share 0.517)'),
               _c('explore-pass8', 'not-reproduced', 'THR reweighting with p < 0 raises pass@8 over GRPO',
                  'p = -0.5: pass@8 0.651 vs GRPO 0.685 (lower on every seed), and greedy accuracy falls to 0.549'),)),
    _e(70, 'Tokenization counts: the impact of tokenization on arithmetic in frontier LLMs',
       'tokenizers', 'tokjax.tokenizers.right_to_left_digits', ('right_to_left_digits', 'group_digits', 'encode_arithmetic', 'split_digit_groups', 'check_group_policy'),
       'right-to-left / left-to-right groups of any size (l2rN, r2lN) and single digits as tokenizer '
       'transforms over one vocabulary; tiny models (d=128 x2) trained from scratch on 1-4 digit addition with '
       '2-digit groups for 32000 steps (the budget probed on validation seeds, not evaluation ones): R2L 0.7471 vs '
       'L2R 0.435 exact match over 3 seeds. The paper\'s 3-digit groups on frontier LLMs are not tested here',
       claims=(_c('grouping', 'reproduced', 'Right-to-left digit grouping beats left-to-right grouping on multi-digit addition (tested with 2-digit groups on models trained from scratch; the paper uses 3-digit groups on frontier LLMs)',
                        'R2L beat L2R on all 3 seeds (exact match 0.7471 vs 0.435; per seed +0.06504, +0.3753, +0.4959), and the learned gate declared before the run (best policy > 0.5 on every seed) held (0.710, 0.644, 0.888)'),)),
    _e(71, 'Text2Token: Unsupervised Text Representation Learning with Token Target Prediction',
       'losses', 'tokjax.losses.text2token', ('text2token', 'make_text2token_loss', 'data_driven_targets', 'model_derived_targets', 'text_embedding'),
       'pooled embedding through the LM head, KL to text-derived token targets (construction '
       'unverified: paper body unavailable); on a synthetic overlapping-topic corpus (tiny model, 3 '
       'seeds) 1-NN topic accuracy 0.7706 vs 0.4967 for mean-pooled NTP and 0.66 for SimCSE at matched '
       'steps (tf-idf 1-NN 0.747). The corpus is bag-of-words by construction, which suits Text2Token; '
       'MTEB-scale claims are not tested',
       claims=(_c('vs-mean-pooling', 'reproduced', 'Text2Token (pooled embedding -> LM head -> KL to text-derived token targets) gives better text representations than mean pooling an NTP-trained LM'),
                _c('vs-contrastive', 'reproduced', 'Text2Token is competitive with contrastive (LLM2Vec/SimCSE-style) unsupervised training'),)),
    _e(72, 'Soft Thinking: Unlocking the Reasoning Potential of LLMs in Continuous Concept Space',
       'decoding', 'tokjax.decoding.soft_thinking', ('soft_thinking', 'SoftThinking', 'concept_token', 'mix_embeddings'),
       'a generate strategy whose thinking steps feed the renormalised top-k mixture of embeddings of '
       'softmax(z/T) after top-k/top-p/min-p (shown token = its top-1), Cold Stop on a run of low-entropy '
       'steps as in the official counter, discrete decoding after the end token; max_topk=1 equals greedy '
       'decoding token for token. SmolLM2-135M (the README warns models under 7-14B gain little) mostly thinks '
       'to the end of a 96-token budget',
       experiment='experiments/p72_soft_thinking.py',
       claims=(_c('accuracy', 'inconclusive', 'soft thinking raises pass@1 over standard CoT sampling',
                  'SmolLM2-135M-Instruct on 3 x 67 level-1 word problems: pass@1 0.1095 vs CoT 0.0896, per draw +0.02239, -0.02239, +0.0597 (the draws disagree); more problems or a model that ends its thinking would decide it'),
               _c('fewer-tokens', 'not-reproduced', 'soft thinking uses fewer tokens than standard CoT',
                  'soft/CoT token ratio 0.99, 1.022, 0.992 per draw (declared: below 0.9): only 0.1095 of soft rows end their thinking within the 96-token budget'),)),
    _e(73, 'Correlation and Navigation in the Vocabulary Key Representation Space of Language Models',
       'decoding', 'tokjax.decoding.navigation',
       ('in_context_navigation', 'top_n_first_tokens', 'sample_answers', 'navigation_prompt', 'NavigationTemplate'),
       'ICN: each round lists the answers already given and asks for a different one (greedy, one batched '
       'tokjax.generate call per round), with top-N-first-token and sampling baselines; the key/rank probe is '
       'tokjax.analysis.vocab_keys (Spearman of ranks 2..100 vs cosine to the top-1 unembedding key); '
       'open-set probes graded against the stdlib in tokjax.data.open_sets',
       experiment='experiments/p73_vocab_navigation.py',
       claims=(_c('key-correlation', 'reproduced', "middle-ranked next tokens are ranked by their unembedding key's similarity to the top-1 key",
                  'on SmolLM2-135M-Instruct mean Spearman 0.1997 over 500 pydocs contexts vs -0.0065 for shuffled keys, positive '
                  'on 0.84 of contexts'),
               _c('icn-vs-top-n', 'not-reproduced', 'in-context navigation finds more distinct correct answers than the top-N of one distribution',
                  'precision of 5 distinct correct answers on the test half of the stdlib open-set probes: ICN 0.0667 vs 0.2333; '
                  'the 135M model mostly repeats its first answer although it is listed as given (the paper uses 7-8B models)'),
               _c('icn-vs-sampling', 'not-reproduced', 'in-context navigation finds more distinct correct answers than temperature sampling',
                  'ICN 0.0667 vs 0.2667 for 5 samples at T=1, same probes and reason'),)),
    _e(74, 'Ming-UniVision: Joint Image Understanding and Generation with a Unified Continuous Tokenizer',
       'vision', 'tokjax.vision.ming_univision', ('ming_univision', 'SemanticAR', 'mingtok_init', 'mingtok_loss', 'mingtok_encode', 'mingtok_decode', 'semantic_decode', 'ming_lm_loss', 'ming_generate', 'ming_understand'),
       'MingTok in three stages: a bidirectional encoder to 16 x 4-d continuous latents, a causal semantic decoder '
       '(shared forward, its own KV cache in the SemanticAR decode state) aligned to a second classifier\'s '
       'features, an MSE pixel decoder; one LM reads E(semantic features) for both tasks: a flow head generates '
       'the latents, cross-entropy on class words understands (registered "mingtok", "ming_univision"). Full run: '
       '3 seeds on 16x16 glyphs, tokenizer 1200 steps, LM 1500 steps per arm (about 45 minutes on one core); the glyph task is easy enough '
       'that both arms end near 99% class-word accuracy, so the understanding gap cannot show at the end of training',
       claims=(_c('understanding', 'not-reproduced', 'an AR LM reading the unified tokenizer\'s semantic features understands images (class words) better than one reading the low-level latents',
                  'class-word accuracy 0.9893 unified vs 0.9887 separate on 500 held-out glyphs, per seed -0.006, +0.004, +0.004 (bar +0.02 every seed): both arms at the ceiling of this task'),
               _c('generation', 'reproduced', 'the same unified model also generates: FD no worse than low-level-latent AR by > 2 SE',
                  'FD 62.12 unified vs 63.17 separate, per-seed z +1.127, -0.187, -0.5074 (margin -2)'),
               _c('convergence', 'reproduced', 'joint training on the unified representation converges faster (paper: 3.5x; bar here 1.5x)',
                  'LM steps to validation class-word accuracy 0.8: speedup 2.778x (per seed 2.67, 2.67, 3.0x)'))),
    _e(75, 'TensorBLEU: Vectorized GPU-based BLEU Score Implementation for Per-Sentence In-Training Evaluation',
       'metrics', 'tokjax.metrics.tensorbleu', ('tensor_sentence_bleu', 'tensor_corpus_bleu', 'bleu_stats', 'bleu_from_stats'),
       'token-id BLEU from sorted compact (sentence, n-gram) ids, jitted and batched; equals NLTK '
       'sentence/corpus BLEU within 9.25e-08; 14.6x faster than NLTK at 256x1024 on a loaded 2-core '
       "CPU (per sentence, a single-key sort of the reference n-grams per order; the paper's >13x is a GPU figure, not "
       'measured here)',
       claims=(_c('exact', 'reproduced', "TensorBLEU's per-sentence and corpus BLEU on token ids equal NLTK's (all four smoothings) and sacrebleu's"),
                _c('cpu-speed', 'reproduced', "vectorised TensorBLEU is faster than NLTK's per-sentence loop on the CPU alone"),
                _c('gpu-speed', 'untested-here', 'on a GPU TensorBLEU is over 13x faster than NLTK on the CPU (T4; over 40x on A100)',
                        'needs a GPU run of the experiment (it measures this row whenever JAX sees one); the accelerator check in '
                        'benchmarks/results/ timed TensorBLEU against NLTK on an H200 outside the harness, which is not a '
                        'verdict row'),), test='tests/metrics/test_tensorbleu.py', experiment='experiments/p75_tensorbleu.py'),
    _e(76, 'Bidirectional Language Models Are Also Few-shot Learners',
       'decoding', 'tokjax.decoding.sap', ('sap', 'infill', 'prefix_lm', 'PrefixLM', 'SAPOutput'),
       'SAP: greedy infill of prompt + output + <extra_id_0> through tokjax.generate (PrefixLM strategy: the '
       'prompt encoded once under the prefix mask), keep the first k tokens, repeat until a stop token; the model '
       'is trained with the registered span_corruption loss (T5 random-spans noise in prefix-LM form, the next '
       'sentinel closing a span instead of EOS). No official code; k unverified (chosen on a validation split). '
       'On synthetic 2-shot word-by-word translation (d=64 x2, 3000 steps, 3 seeds) the span-corruption model '
       'did not learn the task (SAP BLEU 2.3, 2.3, 1.7) while the equal causal LM did on 2 of 3 seeds',
       claims=(_c('sap-vs-oneshot', 'inconclusive', 'SAP prompting of a span-corruption model beats its one-shot infill by >= 10 BLEU',
                  'SAP 2.09 vs one-shot 1.89 BLEU (per seed -0.07677, +0.3001, +0.3963): the span model never learned the task, and the declared learned gate (best BLEU > 50 on every seed) failed on seed 1 (causal 4.2); a larger span model or longer training would decide it'),
               _c('sap-vs-causal', 'inconclusive', 'a span-corruption model with SAP few-shot translates at least as well as an equal causal LM',
                  'SAP 2.09 vs causal 67.66 BLEU (per seed -97.71, -1.825, -97.15): the causal LM learned the task on seeds 0 and 2 (100.0, 98.8), the span model on none; the learned gate failed on seed 1, so the rule reports inconclusive'))),
    _e(77, 'Mixing Mechanisms: How Language Models Retrieve Bound Entities In-Context',
       'analysis', 'tokjax.analysis.entity_binding', ('binding_prompts', 'counterfactuals', 'interchange', 'fit_mixing_model', 'mixing_logits', 'agreement'),
       'binding prompts, counterfactuals whose positional, lexical and reflexive cues point to different '
       'groups, interchange at the query residual per layer (through patching), and the official mixing model '
       '(Gaussian positional term plus lexical and reflexive gates, fit by Jensen-Shannon; agreement = 1 - JS). '
       'Full run on SmolLM2-135M-Instruct (2-8 groups, 20 prompts per queried position; 40 interchange pairs): '
       'the model binds weakly (unpatched accuracy 0.28 at n=4), the mid-list drop does not grow with n, and the '
       'mixing model does not reach the 0.9 agreement bar',
       claims=(_c('mid-list', 'not-reproduced', 'positional retrieval fails for middle groups as the number of groups grows',
                  'edge minus middle accuracy gap 0.35 at n=8 vs 0.475 at n=4 (the gap shrinks)'),
               _c('mixing', 'not-reproduced', 'a positional + lexical + reflexive mixing model predicts the LM\'s '
                  'distribution over bound entities with 95% agreement',
                  'held-out agreement 0.8075, below the 0.9 bar and the positional-only model (0.842)')),
       test='tests/analysis/test_entity_binding.py'),
    _e(78, 'Prioritizing Image-Related Tokens Enhances Vision-Language Pre-Training',
       'losses', 'tokjax.losses.prior', ('prior', 'prior_weights', 'Prior'),
       'up-weight image-related tokens by reference-LM surprisal; curve-mean accuracy of the image-'
       'dependent word 0.845 vs 0.721 for NTP (alpha 1 fixed in advance, 3 seeds) at a filler NLL cost '
       'of 1.797 vs 1.621 (alpha and normalisation unverified: no official code released)',
       status='implemented', claims=(_c('main', 'reproduced', 'PRIOR token weights (1-P_ref)^alpha learn the image-related caption tokens faster than plain NTP'),), test='tests/losses/test_losses_prior.py', experiment='experiments/p78_prior.py'),
)
# fmt: on


def _validate(items: Iterable[Entry]) -> None:
    """Returns None; raises ValueError if the catalog is malformed."""
    items = tuple(items)
    errors: list[str] = []
    seen: dict[str, int] = {}
    for e in items:
        m = re.fullmatch(r"P([1-9]\d*)", e.pid)
        if not m:
            errors.append(f"{e.pid!r}: id must look like 'P29'")
            continue
        seen[e.pid] = seen.get(e.pid, 0) + 1
        if not e.title.strip():
            errors.append(f"{e.pid}: empty title")
        if e.status not in STATUSES:
            errors.append(f"{e.pid}: status {e.status!r} not in {STATUSES}")
        errors += _claim_errors(e)
        if e.family not in FAMILIES:
            errors.append(f"{e.pid}: family {e.family!r} not in {FAMILIES}")
        if not re.fullmatch(r"tokjax(\.[a-z_][a-z0-9_]*)+", e.module):
            errors.append(f"{e.pid}: module {e.module!r} is not a tokjax dotted path")
        if not e.names or not all(n.isidentifier() for n in e.names):
            errors.append(f"{e.pid}: names {e.names!r} must be non-empty identifiers")
        if not (e.test.startswith("tests/") and e.test.endswith(".py")):
            errors.append(f"{e.pid}: test {e.test!r} must be a .py file under tests/")
        em = _EXPERIMENT_RE.fullmatch(e.experiment)
        if not em or int(em.group(1)) != int(m.group(1)):
            errors.append(f"{e.pid}: experiment {e.experiment!r} must be "
                          f"experiments/p{int(m.group(1)):02d}_<name>.py")
    dupes = sorted(pid for pid, k in seen.items() if k > 1)
    if dupes:
        errors.append(f"duplicate ids: {dupes}")
    expected = {f"P{i}" for i in range(1, N_PAPERS + 1)}
    missing = sorted(expected - set(seen), key=lambda p: int(p[1:]))
    extra = sorted(set(seen) - expected, key=lambda p: int(p[1:]))
    if missing:
        errors.append(f"missing ids: {missing}")
    if extra:
        errors.append(f"ids outside P1..P{N_PAPERS}: {extra}")
    if errors:
        raise ValueError("invalid tokjax catalog:\n  " + "\n  ".join(errors))


def _claim_errors(e: Entry) -> list[str]:
    """Returns what is wrong with an entry's claims (empty list if nothing)."""
    errors: list[str] = []
    ids = [c.id for c in e.claims]
    if len(set(ids)) != len(ids):
        errors.append(f"{e.pid}: duplicate claim ids {ids}")
    for c in e.claims:
        if not _CLAIM_ID_RE.match(c.id):
            errors.append(f"{e.pid}: claim id {c.id!r} must be a short lowercase slug")
        if c.status not in CLAIM_STATUSES:
            errors.append(f"{e.pid}/{c.id}: claim status {c.status!r} not in {CLAIM_STATUSES}")
        if not c.text.strip():
            errors.append(f"{e.pid}/{c.id}: empty claim text")
        if c.status != "reproduced" and not c.reason.strip():
            errors.append(f"{e.pid}/{c.id}: a {c.status} claim needs a reason (what failed, what would decide it, "
                          "or which resource is missing)")
    if e.claims and e.status != paper_status(e.claims):
        errors.append(f"{e.pid}: status {e.status!r} but its claims summarise to {paper_status(e.claims)!r}")
    if not e.claims and e.status not in ("planned", "implemented"):
        errors.append(f"{e.pid}: status {e.status!r} needs claims (one per headline claim, each tied to a "
                      "RESULTS.md row)")
    return errors


_validate(_ENTRIES)
_ENTRIES = tuple(sorted(_ENTRIES, key=lambda e: e.number))
_BY_ID = {e.pid: e for e in _ENTRIES}


def entries() -> tuple[Entry, ...]:
    """Returns all catalog entries, ordered P1..P78."""
    return _ENTRIES


def canonical_id(pid: str | int) -> str:
    """Returns the canonical id ("P29") for "P29", "p29", "29" or 29; ValueError if unknown."""
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise TypeError(f"paper id must be a str like 'P29' or an int, got {type(pid).__name__}")
    if isinstance(pid, int):
        number = pid
    else:
        m = _PID_RE.fullmatch(pid.strip())
        if not m:
            raise ValueError(f"unknown paper id {pid!r}: expected 'P1'..'P{N_PAPERS}'")
        number = int(m.group(1))
    key = f"P{number}"
    if key not in _BY_ID:
        raise ValueError(f"unknown paper id {pid!r}: expected 'P1'..'P{N_PAPERS}'")
    return key


def get(pid: str | int) -> Entry:
    """Returns the entry for a paper id ("P29", "p29" or 29); ValueError if unknown."""
    return _BY_ID[canonical_id(pid)]


def by_status(status: str) -> tuple[Entry, ...]:
    """Returns the entries with the given status, ordered by paper number."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: expected one of {STATUSES}")
    return tuple(e for e in _ENTRIES if e.status == status)


def by_family(family: str) -> tuple[Entry, ...]:
    """Returns the entries of the given family, ordered by paper number."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: expected one of {FAMILIES}")
    return tuple(e for e in _ENTRIES if e.family == family)


def summary() -> dict[str, int]:
    """Returns {status: number of entries} for every status, in STATUSES order."""
    counts = {s: 0 for s in STATUSES}
    for e in _ENTRIES:
        counts[e.status] += 1
    return counts


def _md_escape(text: str) -> str:
    # Titles contain markdown specials ("Q^*"); escape them so a cell renders literally.
    return re.sub(r"([\\|*_`<>\[\]])", r"\\\1", text)


def format_table(items: Iterable[Entry] | None = None, markdown: bool = True) -> str:
    """Returns the entries as a markdown table (or aligned plain text); all entries if None."""
    items = _ENTRIES if items is None else tuple(items)
    header = ("id", "paper", "family", "status", "module")
    rows = [(e.pid, e.title, e.family, e.status, e.module) for e in items]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [f"| {pid} | {_md_escape(title)} | {fam} | {status} | `{module}` |"
                  for pid, title, fam, status, module in rows]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def verify(entry: Entry, root: str | Path | None = None) -> list[str]:
    """Returns the problems that make `entry`'s status a false claim (empty list if none).

    A non-planned entry must have an importable module exposing every public name, and
    its test and experiment files must exist under `root` (the repository root by default).
    Planned entries claim nothing, so they have no problems. Importing the module may be
    slow (it imports jax), which is why this is not run at catalog import time.
    """
    if entry.status == "planned":
        return []
    root = _ROOT if root is None else Path(root)
    problems: list[str] = []
    try:
        mod = importlib.import_module(entry.module)
    except Exception as exc:  # any import failure is a false claim, whatever its type
        problems.append(f"{entry.pid}: module {entry.module} does not import "
                        f"({type(exc).__name__}: {exc})")
    else:
        missing = [n for n in entry.names if not hasattr(mod, n)]
        if missing:
            problems.append(f"{entry.pid}: {entry.module} lacks public names {missing}")
    for kind, rel in (("test", entry.test), ("experiment", entry.experiment)):
        if not (root / rel).is_file():
            problems.append(f"{entry.pid}: {kind} file {rel} does not exist")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Returns 0 after printing the catalog table and status counts (`python -m tokjax.catalog`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokjax.catalog", description=__doc__.splitlines()[0])
    parser.add_argument("--status", choices=STATUSES, help="only entries with this status")
    parser.add_argument("--family", choices=FAMILIES, help="only entries of this family")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    items = [e for e in _ENTRIES
             if (args.status is None or e.status == args.status)
             and (args.family is None or e.family == args.family)]
    print(format_table(items, markdown=args.markdown))
    print()
    print(", ".join(f"{n} {s}" for s, n in summary().items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
