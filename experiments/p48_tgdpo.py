"""P48 TGDPO: DPO with token weights 1 +/- alpha*beta*(log pi_rm - log pi_ref) from a DPO-trained model.

Paper claim (Zhu et al., ICML 2025, arXiv 2506.14574): token-level reward guidance from a DPO model
(official trainer: alpha 0.5, beta 0.1) beats DPO (MT-Bench +7.5, AlpacaEval 2 +6.2, Arena-Hard +4.3).

Quick check (``--quick``): the notes' check-2 toy (see experiments/p17_critical_tokens.py and
experiments._preference_toy.run_arms), pi_rm = the same seed's DPO model after the DPO arm's steps;
TGDPO shares every DPO hyperparameter. Metric: steps until P(BAD in a held-out response) < 0.10;
reproduced when TGDPO needs fewer steps than DPO in every seed. The weight spread mean|w - 1| is
reported (alpha*beta = 0.05, so weak; the notes' bigram toy: 29 vs 32 steps, more collateral drift).

SmolLM2 rows (full mode only; ``--only smollm-sampled,smollm-greedy`` runs just them): the shared setting of
experiments/_preference_smollm.py (SmolLM2-135M-Instruct on word problems level 0, pairs = one correct and
one incorrect of a prompt's 8 T=1 samples, last 4 of 30 layers trained, 150 steps x 8 pairs, beta 0.1, DPO's
lr, 2 seeds). pi_rm = the same seed's cached DPO model (its per-target log-probs over the pairs, computed
once); TGDPO alpha 0.5 (official config). Metrics: held-out accuracy, mean of 4 T=1 samples per problem
(``smollm-sampled``) and greedy (``smollm-greedy``), with the collateral drift KL and the weight spread in the
note. Verdict (both rows): TGDPO - DPO > max(2 points, paired-bootstrap 95 % half-width over problems) in both
seeds -> reproduced; mean difference <= 0 -> not-reproduced; else inconclusive; inconclusive too when DPO does
not beat the reference by that margin. ``$TOKJAX_PREF_REAL=48,64,20,1`` runs them at a reduced size (plumbing
check only, never recorded as a result).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="DPO steps until P(BAD in a held-out response) < 0.10 (toy, lower is better)",
            higher_is_better=False, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="TGDPO alpha 0.5, beta 0.1 (official config), pi_rm = the same seed's DPO model, fixed in advance")


REAL_CLAIMS = ("smollm-sampled", "smollm-greedy")
ALPHA = 0.5  # official tgdpo_alpha


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    from experiments._preference_smollm import run_rows

    return run_rows(quick, only, lambda q: [toy_row(q)], real_rows, REAL_CLAIMS)


def real_rows() -> list[Row]:
    from experiments._preference_smollm import method_arm, preference_rows, row_logp

    def arm(ctx, seed, dpo):
        def extra(pairs, layout):  # pi_rm shares the reference's frozen trunk: only its last layers run
            return {"rm_logp": row_logp(dpo["model"].params, ctx.model.cfg, layout, trunk=ctx.trunk(seed))}

        return method_arm(ctx, "tgdpo", seed, {"alpha": ALPHA}, extra)

    return preference_rows("P48", "tgdpo", "TGDPO",
                           "TGDPO's token-level reward guidance from a DPO model beats sequence DPO on held-out "
                           "word problems", arm,
                           reported=f"TGDPO alpha {ALPHA}, beta 0.1 (official config), pi_rm = the same seed's DPO "
                                    f"model, DPO's lr and steps, fixed in advance")


def toy_row(quick: bool) -> Row:
    import numpy as np

    from experiments._preference_toy import run_arms

    seeds = RULE.run_seeds(quick)
    out, hp = run_arms(("dpo", "tgdpo"), quick=quick, seeds=seeds)
    d, t = out["dpo"], out["tgdpo"]
    f = lambda runs, k: ", ".join(f"{r[k]:.3g}" for r in runs)  # noqa: E731
    verdict = RULE.verdict([r["steps_to_target"] for r in t], [r["steps_to_target"] for r in d], seeds=seeds)
    note = (f"steps to P(BAD)<0.10: DPO {f(d, 'steps_to_target')}, TGDPO {f(t, 'steps_to_target')} (notes' bigram: "
            f"DPO 33/31/33, TGDPO 29/28/30); P(BAD)@50: DPO {f(d, 'p_bad_50')}, TGDPO {f(t, 'p_bad_50')}; collateral "
            f"KL at the end: DPO {f(d, 'kl_end')}, TGDPO {f(t, 'kl_end')}; weight spread mean|w-1| per seed "
            f"{f(t, 'weight_spread')} (alpha*beta = {hp['tgdpo_alpha'] * hp['beta']:.3g}). Setting: {hp}.")
    return Row(pid="P48", claim_id="toy-speed",
               claim="TGDPO's token-level reward guidance suppresses the bad token in fewer steps than sequence DPO",
               setting=f"notes' check-2 toy (8-word responses, V=16, tiny transformer d=32x2), {len(seeds)} seeds, "
                       f"{hp['dpo_steps']} steps",
               baseline_name="sequence DPO", baseline_value=round(float(np.mean([r['steps_to_target'] for r in d])), 2),
               method_value=round(float(np.mean([r["steps_to_target"] for r in t])), 2),
               metric=RULE.metric, verdict=verdict, note=note)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
