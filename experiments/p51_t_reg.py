"""P51 T-REG: DPO + a token reward regulariser from contrastive (opposite) prompting moves credit onto the error.

Paper claim (Zhou et al., ACL 2025, arXiv 2412.02685): self-generated token rewards r_t =
sigmoid(log pi(y_t|x+) - log pi(y_t|x-)) - 0.5 as a regulariser give better token-level credit
assignment than DPO and +3.8 AlpacaEval 2 / +4.4 Arena-Hard.

Quick check (``--quick``): the notes' check-2 toy with a control token (experiments._preference_toy,
``control=True``: prompt ``BOS topic CTRL``; the reference SFT sees half its rows labelled with the
control token that says whether the response contains BAD, the rest neutral; x+ / x- = the good / bad
control token, scored by the reference). DPO and T-REG (alpha 0.25, the middle of the paper's grid
[secondary source]) share every hyperparameter. Metric: the fraction of held-out rejected responses
whose argmin_t beta*Delta_t sits at BAD itself (the issue: it should move from BAD+1 to BAD); reproduced
when T-REG beats DPO by more than 0.05 in every seed. The SmolLM2 arm (reward AUROC, then T-REG vs DPO)
needs tokjax.data.word_problems (issue 21) and is not run here.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="fraction of held-out rejected responses with argmin_t beta*Delta_t at BAD (toy, higher is better)",
            higher_is_better=True, threshold=0.05, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="T-REG alpha 0.25, beta 0.1, control-token x+/x- scored by the reference, fixed in advance")


def run(quick: bool) -> Row:
    import numpy as np

    from experiments._preference_toy import run_arms

    seeds = RULE.run_seeds(quick)
    out, hp = run_arms(("dpo", "t_reg"), quick=quick, seeds=seeds, control=True)
    d, t = out["dpo"], out["t_reg"]
    at = lambda runs: [r["credit"]["argmin_bad"] for r in runs]  # noqa: E731
    f = lambda xs: ", ".join(f"{x:.3g}" for x in xs)  # noqa: E731
    cr = lambda runs, k: f([r["credit"][k] for r in runs])  # noqa: E731
    verdict = RULE.verdict(at(t), at(d), seeds=seeds)
    note = (f"argmin at BAD: DPO {f(at(d))}, T-REG {f(at(t))}; at BAD+1: DPO {cr(d, 'argmin_next')}, T-REG "
            f"{cr(t, 'argmin_next')}; mean beta*Delta before / at / after BAD: DPO {cr(d, 'before')} / {cr(d, 'at')} / "
            f"{cr(d, 'after')}, T-REG {cr(t, 'before')} / {cr(t, 'at')} / {cr(t, 'after')}; steps to P(BAD)<0.10: DPO "
            f"{f([r['steps_to_target'] for r in d])}, T-REG {f([r['steps_to_target'] for r in t])}; collateral KL: DPO "
            f"{f([r['kl_end'] for r in d])}, T-REG {f([r['kl_end'] for r in t])}. Setting: {hp}.")
    return Row(pid="P51", claim_id="toy-credit",
               claim="T-REG's contrastive-prompt token rewards move DPO's lowest implicit token reward onto the bad "
                     "token (from the token after it)",
               setting=f"notes' check-2 toy + control token (V=19, tiny transformer d=32x2), {len(seeds)} seeds, "
                       f"{hp['dpo_steps']} steps",
               baseline_name="sequence DPO", baseline_value=round(float(np.mean(at(d))), 3),
               method_value=round(float(np.mean(at(t))), 3), metric=RULE.metric, verdict=verdict, note=note)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
