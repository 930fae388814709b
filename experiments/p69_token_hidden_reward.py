"""P69 THR: reweighting GRPO's tokens by the sign of their token hidden reward steers exploitation / exploration.

Paper claims (Deng et al., arXiv 2510.03669): with token weights 1 + p sign(THR_{i,t}), where THR is a token's
first-order effect on the likelihood of the group's correct responses, p > 0 (amplify positive-THR tokens)
raises greedy-decoding accuracy over GRPO and p < 0 raises Pass@K (Qwen2.5 / Llama on math benchmarks).

Small-scale check, on issue 21's tiny rung (the same settings as experiments/p56_d3s.py, so the plain GRPO
runs are shared through the cache):

* Warm start ``tokjax.pretrained("tiny-arithmetic-cot")`` (115k parameters, addition of 1-4 digit operands with
  chain of thought, snapshot chosen on validation at 47% greedy accuracy). Task
  :class:`tokjax.train.rl_tasks.ArithmeticCoTTask` (train split; reward 1 for a well-formed chain of thought with
  the exact answer). RL through :func:`tokjax.train.rl.rl_train`: 4 prompts x G = 8 rollouts at T = 1, one
  update per batch, DAPO clip 0.2 / 0.28, no KL, token-mean loss, Adam lr ``LR`` = 3e-5 (tuned once on GRPO,
  validation split: see p56's header), the same prompts (``prompt_seed`` = seed) and sampling seed in every arm.
* Arms: GRPO (``experiments._tiny_rl.grpo_run``, cached per seed); THR-exploit, p = ``P_EXPLOIT`` = +0.5;
  THR-explore, p = ``P_EXPLORE`` = -0.5 (:class:`tokjax.train.recipes.token_hidden_reward.TokenHiddenReward`: THR of
  every step's rollouts under the sampling policy, last layer's final-normed hidden states, the group's
  correct rollouts as anchors, exact factored computation; weights 1 + p sign(THR)). |p| = 0.5 is fixed before
  any run; the paper's p values and the formula's details are unverified (module docstring).
* Metrics on the 500 held-out test problems after the last step: greedy accuracy (every ``EVAL_EVERY`` steps
  too) and pass@8 (8 samples at T = 1 per problem, the sampling key fixed per seed and shared by the arms;
  a problem counts when any sample is right).

Verdicts (declared before anything runs):

* ``exploit-greedy`` (``RULE_GREEDY``): per seed, THR-exploit's greedy accuracy - GRPO's > max(2 x GRPO's seed std
  (ddof 1), ``MARGIN_FLOOR`` = 0.02; the floor alone with one seed).
* ``explore-pass8`` (``RULE_PASS``): per seed, THR-explore's pass@8 - GRPO's pass@8 > max(2 x GRPO's pass@8 seed
  std, 0.02).
* Both are ``inconclusive`` when GRPO's mean greedy accuracy does not beat the warm start's by the greedy margin
  (RL did not learn, so there is nothing to steer; pass@8 under GRPO need not rise, so the greedy criterion
  is used for both).
* Logged, not judged: the other metric of each arm, THR's positive fraction per step, reward and format curves.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p69_token_hidden_reward.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._tiny_rl import (  # noqa: E402
    G, LR, PROMPTS, TEMPERATURE, grpo_run, mean_sd, per_seed, plot_reward_curves, rl_config, run_arm, setup,
)

STEPS, QUICK_STEPS = 300, 40
EVAL_EVERY, QUICK_EVAL_EVERY = 25, 10
MARGIN_FLOOR = 0.02
P_EXPLOIT, P_EXPLORE = 0.5, -0.5
PASS_K = 8

RULE_GREEDY = Rule(metric="greedy test accuracy after RL", higher_is_better=True, threshold=MARGIN_FLOOR,
                   seeds=(0, 1, 2), quick_seeds=(0,),
                   reported=f"THR p = {P_EXPLOIT} (fixed in the header) vs GRPO; threshold max(2 x GRPO seed "
                            f"std, 0.02)")
RULE_PASS = Rule(metric=f"pass@{PASS_K} on the test problems after RL", higher_is_better=True,
                 threshold=MARGIN_FLOOR, seeds=(0, 1, 2), quick_seeds=(0,),
                 reported=f"THR p = {P_EXPLORE} (fixed in the header) vs GRPO; threshold max(2 x GRPO seed std, 0.02)")


def _thr_arm(p: float, seed: int, steps: int, every: int, test) -> dict:
    """One THR run from the warm start: experiments._tiny_rl.run_arm's outputs plus THR's positive-sign fractions."""
    from tokjax.train.recipes.token_hidden_reward import TokenHiddenReward

    model, _, _, _ = setup()
    thr = TokenHiddenReward(model, p=p, mask_truncated=rl_config(steps, seed, LR, "valid").mask_truncated)
    positive = []

    def track(step, m, row):  # keeps THR's policy current, then logs its sign balance
        thr.callback(step, m, row)
        positive.append(thr.last["thr_positive_fraction"])

    out = run_arm(f"thr{p:+g}", seed, steps, every, LR, test, callback=track, select=thr.select,
                  transforms=(thr.transform(),))
    return out | {"thr_positive": positive}


def _pass_at_k(params, seed: int, k: int = PASS_K, chunk: int = 100) -> float:
    """Returns the fraction of test problems with at least one right answer among k samples at T = 1."""
    import jax
    import numpy as np

    from tokjax.model import Model
    from tokjax.train.rl import rollout
    from tokjax.train.rl_tasks import ArithmeticCoTTask

    model, tok, _, _ = setup()
    task = ArithmeticCoTTask(tok, "test")
    m = Model(params=params, cfg=model.cfg)
    max_new = rl_config(1, 0, LR, "valid").max_new_tokens
    hits = []
    for i in range(0, len(task), chunk):
        prompts, answers = task.prompt_ids[i:i + chunk], [e.answer for e in task.examples[i:i + chunk]]
        r = rollout(m, prompts, answers, key=jax.random.fold_in(jax.random.key(10_000 + seed), i), group_size=k,
                    max_new_tokens=max_new, temperature=TEMPERATURE, eos_id=tok.eos_id)
        rewards, _ = task.reward(r.completions, r.answers)
        hits.extend(np.asarray(rewards).reshape(-1, k).max(axis=1) > 0)
    return float(np.mean(hits))


def run(quick: bool) -> list[Row]:
    import numpy as np

    from tokjax.train.rl_tasks import evaluate_greedy

    steps, every = (QUICK_STEPS, QUICK_EVAL_EVERY) if quick else (STEPS, EVAL_EVERY)
    seeds = RULE_GREEDY.run_seeds(quick)
    warm, tok, test, _ = setup()
    start = evaluate_greedy(warm, tok, test, max_new_tokens=rl_config(1, 0, LR, "valid").max_new_tokens)["accuracy"]
    start_pass = _pass_at_k(warm.params, seeds[0])
    arms = {"GRPO": [grpo_run(s, steps, every) for s in seeds],
            "THR+": [_thr_arm(P_EXPLOIT, s, steps, every, test) for s in seeds],
            "THR-": [_thr_arm(P_EXPLORE, s, steps, every, test) for s in seeds]}
    acc = {a: [r["curve"][-1]["accuracy"] for r in runs] for a, runs in arms.items()}
    pk = {a: [_pass_at_k(r["params"], s) for r, s in zip(runs, seeds)] for a, runs in arms.items()}

    def margin(v):
        return max(2 * (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0), MARGIN_FLOOR)

    m_acc, m_pass = margin(acc["GRPO"]), margin(pk["GRPO"])
    greedy_v = dataclasses.replace(RULE_GREEDY, threshold=m_acc).verdict(acc["THR+"], acc["GRPO"], seeds=seeds)
    pass_v = dataclasses.replace(RULE_PASS, threshold=m_pass).verdict(pk["THR-"], pk["GRPO"], seeds=seeds)
    learned = float(np.mean(acc["GRPO"])) - start > m_acc
    if not learned:
        greedy_v = dataclasses.replace(greedy_v, status="inconclusive")
        pass_v = dataclasses.replace(pass_v, status="inconclusive")

    figure = plot_reward_curves(69, arms, start, quick=quick, title=f"P69 tiny arithmetic CoT, {len(seeds)} seed(s); "
                                f"THR+ p={P_EXPLOIT}, THR- p={P_EXPLORE}")
    ms, per = mean_sd, per_seed
    note = (f"warm start: greedy {start:.3f}, pass@{PASS_K} {start_pass:.3f}; greedy accuracy GRPO {ms(acc['GRPO'])} "
            f"({per(acc['GRPO'])}), THR+ {ms(acc['THR+'])} ({per(acc['THR+'])}), THR- {ms(acc['THR-'])} "
            f"({per(acc['THR-'])}); pass@{PASS_K} GRPO {ms(pk['GRPO'])} ({per(pk['GRPO'])}), THR+ {ms(pk['THR+'])} "
            f"({per(pk['THR+'])}), THR- {ms(pk['THR-'])} ({per(pk['THR-'])}); margins greedy {m_acc:.3f}, pass "
            f"{m_pass:.3f} (2 x GRPO seed std, floor {MARGIN_FLOOR}); RL learned (GRPO mean greedy - start > margin): "
            f"{learned}; positive-THR share of reweighted tokens (mean over steps) THR+ "
            f"{np.mean([x['thr_positive'] for x in arms['THR+']]):.3f}, THR- "
            f"{np.mean([x['thr_positive'] for x in arms['THR-']]):.3f}; sampled reward last 10 steps "
            + ", ".join(f"{a} {np.mean([x['reward'][-10:] for x in r]):.3f}" for a, r in arms.items())
            + "; sampled well-formed rate last 10 steps "
            + ", ".join(f"{a} {np.mean([x['format_ok'][-10:] for x in r]):.3f}" for a, r in arms.items())
            + f"; seed-{seeds[0]} greedy accuracy at steps "
            + "/".join(str(c["step"]) for c in arms["GRPO"][0]["curve"]) + ": "
            + ", ".join(f"{a} {per([c['accuracy'] for c in r[0]['curve']])}" for a, r in arms.items())
            + "; run seconds " + ", ".join(f"{a} {np.mean([x['seconds'] for x in r]):.0f}" for a, r in arms.items())
            + " (a cached GRPO run reports its first run's time)")
    setting = (f"tiny-arithmetic-cot warm start (115k params, addition 1-4 digits with CoT), {steps} RL steps x "
               f"{PROMPTS} prompts x G={G}, T=1, Adam lr {LR:g} (tuned on GRPO, validation), DAPO clip, no KL; THR "
               f"on the last layer, the group's correct rollouts as anchors, weights 1 + p sign(THR) (formula and p "
               f"unverified); {len(seeds)} seed(s)")
    return [
        Row(pid="P69", claim_id="exploit-greedy",
            claim="THR reweighting with p > 0 (amplify positive-THR tokens) raises greedy accuracy over GRPO",
            setting=setting, baseline_name="GRPO", baseline_value=round(float(np.mean(acc["GRPO"])), 3),
            method_value=round(float(np.mean(acc["THR+"])), 3),
            metric="greedy accuracy on 500 held-out problems after RL (higher is better)", verdict=greedy_v,
            figure=figure, note=note),
        Row(pid="P69", claim_id="explore-pass8",
            claim=f"THR reweighting with p < 0 (amplify negative-THR tokens) raises pass@{PASS_K} over GRPO",
            setting=setting, baseline_name="GRPO", baseline_value=round(float(np.mean(pk["GRPO"])), 3),
            method_value=round(float(np.mean(pk["THR-"])), 3),
            metric=f"pass@{PASS_K} (8 samples at T=1) on 500 held-out problems after RL (higher is better)",
            verdict=pass_v, figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
