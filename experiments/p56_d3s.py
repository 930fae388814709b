"""P56 D3S: GRPO on the max-Var(A) rollouts and the top |A|*H tokens learns more from fewer tokens.

Paper claims (Wang et al., arXiv 2509.22115): down-sampling rollouts (keep the subset of each group
that maximises Var(A)) and tokens (keep the top |A_{i,t}| * H_{i,t}), aggressively early and
relaxed later, gives higher accuracy than GRPO on the full group and reaches GRPO's accuracy with
fewer samples and tokens (Qwen2.5 / Llama-3.1 on math benchmarks).

Small-scale check, on issue 21's tiny rung:

* Warm start ``tokjax.pretrained("tiny-arithmetic-cot")``: a 115k-parameter tokjax model SFT-trained
  on addition with chain of thought (operands of 1-4 digits), the snapshot chosen on the
  validation split at 47% greedy accuracy, 100% well-formed (held-out test: 50.4%, 99.8%).
* Task :class:`tokjax.train.rl_tasks.ArithmeticCoTTask` (train split): reward 1 for a well-formed
  chain of thought with the exact answer, else 0. RL through :func:`tokjax.train.rl.rl_train`:
  4 prompts x G = 8 rollouts at T = 1, at most 60 new tokens, one update per rollout batch,
  DAPO clip 0.2 / 0.28, no KL, token-mean loss, Adam at ``LR``, the same warm start, prompts
  (``prompt_seed`` = seed) and sampling seed for both arms.
* Arms: GRPO (all rollouts, all tokens, valid-token denominator) and D3S (:class:`tokjax.losses.d3s.D3S`:
  intra-group max-Var(A) subset of ceil(r_s G) rollouts, top r_t of their tokens by |A| * H,
  kept-token denominator; r_s 0.5 -> 0.75 and r_t 0.3 -> 0.6 linearly over the run, fixed
  before any run: the paper's values are unverified, see the module docstring of tokjax.losses.d3s).
* Metric: greedy accuracy on the 500 held-out test problems after the last step; every
  ``EVAL_EVERY`` steps the test accuracy and the cumulative number of trained tokens
  (kept completion tokens, summed over steps) are logged for the tokens claim.
* Adam lr ``LR`` = 3e-5, tuned once on the baseline before any evaluation run (``experiments._tiny_rl.tune_lr``:
  GRPO on seed 99, 60 steps, validation greedy accuracy after the run (warm start 0.473) for lr in
  {1e-5, 3e-5, 1e-4, 3e-4, 1e-3}: 0.527 / 0.545 / 0.510 / 0.277 / 0.000; the best is kept, D3S gets
  the same lr; 3e-4 and up collapse the policy).
* Plain GRPO runs are cached per seed under ``$TOKJAX_CACHE/experiments`` (``experiments._tiny_rl.grpo_run``,
  keyed by the warm start's config and the RL settings) for the later tiny-rung RL papers.

Verdicts (declared before anything runs):

* ``accuracy`` (``RULE``): per seed, D3S final test accuracy - GRPO's > max(2 x the GRPO arm's seed std
  (ddof 1), ``MARGIN_FLOOR`` = 0.02, i.e. 10 of 500 answers; the floor alone with one seed).
* ``fewer-tokens`` (``RULE_TOKENS``): per seed, the trained tokens D3S needs to first reach GRPO's final
  test accuracy (at an evaluation point), as a fraction of the tokens GRPO trained in the whole run, is
  below 0.9 (a run that never reaches it counts 1.0 + its own final shortfall, so it fails).
  Both arms sample the same number of rollouts; the saving counted is in trained tokens only.
* Both are ``inconclusive`` when GRPO's mean final accuracy does not beat the warm start by the same margin
  (RL did not learn, so there is nothing to be more efficient at).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p56_d3s.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._tiny_rl import (  # noqa: E402
    G, LR, PROMPTS, grpo_run, mean_sd, per_seed, plot_reward_curves, rl_config, run_arm, setup, tokens_to_reach,
)

STEPS, QUICK_STEPS = 300, 40
EVAL_EVERY, QUICK_EVAL_EVERY = 25, 10
MARGIN_FLOOR = 0.02
TOKEN_FRACTION = 0.9
D3S_RATIOS = {"sample_start": 0.5, "sample_end": 0.75, "token_start": 0.3, "token_end": 0.6}

RULE = Rule(metric="greedy test accuracy after RL", higher_is_better=True, threshold=MARGIN_FLOOR,
            seeds=(0, 1, 2), quick_seeds=(0,),
            reported="D3S (intra-group, ratios fixed in the header) vs GRPO; threshold max(2 x GRPO seed std, 0.02)")
RULE_TOKENS = Rule(metric="trained tokens to reach GRPO's final accuracy / GRPO's trained tokens",
                   higher_is_better=False, threshold=1.0 - TOKEN_FRACTION, seeds=(0, 1, 2), quick_seeds=(0,),
                   reported="D3S vs GRPO (baseline value 1.0 = all of GRPO's tokens)")


def _d3s_arm(seed: int, steps: int, every: int, test) -> dict:
    from tokjax.losses.d3s import D3S

    d3s = D3S(steps=steps, **D3S_RATIOS)
    return run_arm("d3s", seed, steps, every, LR, test, denominator="kept", select=d3s.select,
                   transforms=(d3s.transform(),))


def run(quick: bool) -> list[Row]:
    import numpy as np

    from tokjax.train.rl_tasks import evaluate_greedy

    steps, every = (QUICK_STEPS, QUICK_EVAL_EVERY) if quick else (STEPS, EVAL_EVERY)
    seeds = RULE.run_seeds(quick)
    warm, tok, test, _ = setup()
    start = evaluate_greedy(warm, tok, test, max_new_tokens=rl_config(1, 0, LR, "valid").max_new_tokens)["accuracy"]
    base = [grpo_run(s, steps, every) for s in seeds]
    meth = [_d3s_arm(s, steps, every, test) for s in seeds]
    b_acc = [r["curve"][-1]["accuracy"] for r in base]
    m_acc = [r["curve"][-1]["accuracy"] for r in meth]
    std = float(np.std(b_acc, ddof=1)) if len(b_acc) > 1 else 0.0
    margin = max(2 * std, MARGIN_FLOOR)
    acc_v = dataclasses.replace(RULE, threshold=margin).verdict(m_acc, b_acc, seeds=seeds)
    frac = [tokens_to_reach(m["curve"], b["curve"][-1]["accuracy"], b["curve"][-1]["tokens"]) for m, b in zip(meth, base)]
    tok_v = RULE_TOKENS.verdict(frac, [1.0] * len(seeds), seeds=seeds)
    learned = float(np.mean(b_acc)) - start > margin
    if not learned:
        acc_v = dataclasses.replace(acc_v, status="inconclusive")
        tok_v = dataclasses.replace(tok_v, status="inconclusive")

    figure = plot_reward_curves(56, {"GRPO": base, "D3S": meth}, start, quick=quick, x="tokens",
                                title=f"P56 tiny arithmetic CoT, {len(seeds)} seed(s)")
    ms, per = mean_sd, per_seed
    b_tok = [r["curve"][-1]["tokens"] for r in base]
    m_tok = [r["curve"][-1]["tokens"] for r in meth]
    note = (f"warm start greedy test accuracy {start:.3f}; GRPO {ms(b_acc)} (per seed {per(b_acc)}), D3S {ms(m_acc)} "
            f"({per(m_acc)}); margin {margin:.3f} (2 x GRPO seed std {std:.3f}, floor {MARGIN_FLOOR}); RL learned "
            f"(GRPO mean - start > margin): {learned}; trained tokens per run GRPO {np.mean(b_tok):.0f}, D3S "
            f"{np.mean(m_tok):.0f}; D3S tokens to reach GRPO's final accuracy / GRPO's tokens {per(frac)}; "
            f"sampled reward last 10 steps GRPO {np.mean([r['reward'][-10:] for r in base]):.3f}, D3S "
            f"{np.mean([r['reward'][-10:] for r in meth]):.3f}; sampled well-formed rate last 10 steps GRPO "
            f"{np.mean([r['format_ok'][-10:] for r in base]):.3f}, D3S {np.mean([r['format_ok'][-10:] for r in meth]):.3f}; "
            f"seed-{seeds[0]} test accuracy at steps {'/'.join(str(c['step']) for c in base[0]['curve'])}: GRPO "
            f"{per([c['accuracy'] for c in base[0]['curve']])}, D3S {per([c['accuracy'] for c in meth[0]['curve']])}; "
            f"D3S run {np.mean([r['seconds'] for r in meth]):.0f} s vs GRPO {np.mean([r['seconds'] for r in base]):.0f} s "
            f"(a cached GRPO run reports its first run's time)")
    setting = (f"tiny-arithmetic-cot warm start (115k params, addition 1-4 digits with CoT), {steps} RL steps x "
               f"{PROMPTS} prompts x G={G}, T=1, Adam lr {LR:g} (tuned on GRPO, validation), DAPO clip, no KL; D3S "
               f"ratios sample {D3S_RATIOS['sample_start']}->{D3S_RATIOS['sample_end']}, token "
               f"{D3S_RATIOS['token_start']}->{D3S_RATIOS['token_end']} (unverified); {len(seeds)} seed(s)")
    return [
        Row(pid="P56", claim_id="accuracy",
            claim="D3S (max-Var(A) rollouts, top |A|*H tokens, aggressive->relaxed) beats GRPO's final accuracy",
            setting=setting, baseline_name="GRPO (all rollouts and tokens)",
            baseline_value=round(float(np.mean(b_acc)), 3), method_value=round(float(np.mean(m_acc)), 3),
            metric="greedy accuracy on 500 held-out problems after RL (higher is better)", verdict=acc_v,
            figure=figure, note=note),
        Row(pid="P56", claim_id="fewer-tokens",
            claim="D3S reaches GRPO's final accuracy with fewer trained tokens",
            setting=setting, baseline_name="GRPO (its whole run's tokens = 1.0)", baseline_value=1.0,
            method_value=round(float(np.mean(frac)), 3),
            metric=f"D3S trained tokens to first reach GRPO's final test accuracy / GRPO's trained tokens (lower is "
                   f"better; reproduced below {TOKEN_FRACTION})", verdict=tok_v, figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
