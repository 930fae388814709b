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
when T-REG beats DPO by more than 0.05 in every seed.

SmolLM2 rows (full mode only; ``--only smollm-reward-auroc,smollm-sampled,smollm-greedy`` runs just them): the
shared setting of experiments/_preference_smollm.py (SmolLM2-135M-Instruct on word problems level 0, pairs =
one correct and one incorrect of a prompt's 8 T=1 samples, last 4 of 30 layers, 150 steps x 8 pairs, beta
0.1, DPO's lr, 2 seeds, the cached DPO arm). x+ / x- = the problem's chat with :data:`BETTER` / :data:`WORSE`
appended to its last user turn (our wording: the paper's revision prompts are unverified); r_t = sigmoid(log
pi_ref(y_t | x+, y<t) - log pi_ref(y_t | x-, y<t)) - 0.5, each sequence scored in its own layout and the
completion's targets copied to the pair layout's positions (the alignment the left padding gives). First
``smollm-reward-auroc``: AUROC of -r_t at the stated wrong answer's digit tokens (after the last
``Answer:``) of the rejected completions vs their other completion tokens; reproduced (the reward is
informative) when > 0.6, else not-reproduced (deviation: the pairs' rejected training completions, which the
reference never trained on, instead of 100 held-out incorrect samples). Then ``smollm-sampled`` /
``smollm-greedy``: T-REG (alpha 0.25) vs DPO, verdict as in p48_tgdpo.py, and inconclusive whatever the
numbers when the AUROC is below 0.6 (a 135M model may not follow the opposite prompt).
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


REAL_CLAIMS = ("smollm-reward-auroc", "smollm-sampled", "smollm-greedy")
ALPHA = 0.25
BETTER = "Think carefully and give the correct answer."
WORSE = "Give a wrong answer on purpose."
AUROC_MIN = 0.6


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    from experiments._preference_smollm import run_rows

    return run_rows(quick, only, lambda q: [toy_row(q)], real_rows, REAL_CLAIMS)


def auroc(pos, neg) -> float:
    """Returns P(a positive score > a negative one) + 0.5 P(tie) (Mann-Whitney), or NaN when a side is empty."""
    import numpy as np

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def answer_token_mask(tok, completion):
    """Returns bool [len(completion)]: the digit tokens after the last ``Answer`` in the completion."""
    import numpy as np

    pieces = [tok.decode([int(t)]) for t in completion]
    text_upto = np.cumsum([len(p) for p in pieces])
    text = "".join(pieces)
    at = text.lower().rfind("answer")
    out = np.zeros(len(completion), bool)
    if at < 0:
        return out
    for j, p in enumerate(pieces):
        if text_upto[j] > at + 6 and p.strip().isdigit():
            out[j] = True
        elif out.any() and not p.strip().isdigit():
            break
    return out


def contrastive_rewards(ctx, pairs, layout):
    """Returns (token_rewards [2N, L-1] in the pair layout, answer-token mask [N, L-1] of the rejected rows)."""
    import numpy as np

    from experiments._preference_real import SETTING, TRAIN_SEED, problems
    from experiments._preference_smollm import row_layout, row_logp
    from tokjax.losses.t_reg import normalised_token_rewards

    probs = problems(ctx.size["n_train"], TRAIN_SEED)
    n, pad = len(pairs), ctx.tok.pad_id or 0
    comps = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scored = {}
    for name, text in (("better", BETTER), ("worse", WORSE)):
        prompts = []
        for p in pairs:
            msgs = probs[p.index].messages(SETTING["style"])
            msgs = msgs[:-1] + [{**msgs[-1], "content": f"{msgs[-1]['content']} {text}"}]
            prompts.append(np.asarray(ctx.tok.apply_chat_template(msgs, add_generation_prompt=True), np.int32))
        lay = row_layout(prompts * 2, comps, pad)
        scored[name] = (lay, row_logp(ctx.model.params, ctx.model.cfg, lay))
    T = layout["tokens"].shape[1] - 1
    better, worse = np.zeros((2 * n, T), np.float32), np.zeros((2 * n, T), np.float32)
    mask = np.zeros((2 * n, T), bool)
    for r in range(2 * n):
        a, b = layout["prompt_lengths"][r] - 1, layout["lengths"][r] - 1
        mask[r, a:b] = True
        for arr, (lay, lp) in ((better, scored["better"]), (worse, scored["worse"])):
            a2 = lay["prompt_lengths"][r] - 1
            arr[r, a:b] = lp[r, a2:a2 + (b - a)]
    rewards = np.asarray(normalised_token_rewards(better, worse, mask))
    ans = np.zeros((n, T), bool)
    for i, p in enumerate(pairs):
        a = layout["prompt_lengths"][n + i] - 1
        ans[i, a:a + len(p.rejected)] = answer_token_mask(ctx.tok, p.rejected)
    return rewards, ans, mask[n:]


def real_rows() -> list[Row]:
    import dataclasses

    import numpy as np

    from experiments._harness import Verdict
    from experiments._preference_smollm import load, method_arm, preference_rows

    ctx = load()
    memo = {}

    def rewards(seed):
        if seed not in memo:
            pairs, _, layout, _ = ctx.pairs(seed)
            memo[seed] = (pairs, layout, *contrastive_rewards(ctx, pairs, layout))
        return memo[seed]

    seed0 = ctx.size["seeds"][0]
    pairs, layout, rew, ans, comp = rewards(seed0)
    n = len(pairs)
    neg_r = -rew[n:]
    au = auroc(neg_r[ans], neg_r[comp & ~ans])
    au_row = Row(pid="P51", claim_id="smollm-reward-auroc",
                 claim="contrastive-prompt token rewards of SmolLM2 single out the wrong answer tokens of incorrect "
                       "samples", setting=f"SmolLM2-135M-Instruct reference, {n} rejected training completions "
                                         f"(seed {seed0} pairs), x+ {BETTER!r}, x- {WORSE!r}",
                 baseline_name="chance", baseline_value=0.5, method_value=round(au, 4),
                 metric="AUROC of -r_t at the stated answer's digit tokens vs the other completion tokens (higher "
                        "is better)",
                 verdict=Verdict("reproduced" if au > AUROC_MIN else "not-reproduced", AUROC_MIN, (seed0,),
                                 (au - AUROC_MIN,), au - AUROC_MIN),
                 note=f"{int(ans.sum())} answer tokens in {int(ans.any(1).sum())} of {n} rejected completions, "
                      f"{int((comp & ~ans).sum())} other tokens; mean r_t at answer tokens "
                      f"{float(rew[n:][ans].mean()) if ans.any() else float('nan'):+.4f}, elsewhere "
                      f"{float(rew[n:][comp & ~ans].mean()):+.4f}; chosen-row mean r_t "
                      f"{float(rew[:n][np.asarray(layout['tokens'][:n, 1:] >= 0) & (rew[:n] != 0)].mean()):+.4f}")

    def arm(ctx, seed, dpo):
        return method_arm(ctx, "t_reg", seed, {"alpha": ALPHA}, lambda pairs, layout: {"token_rewards": rewards(seed)[2]},
                          key_extra={"prompts": [BETTER, WORSE]})

    rows = preference_rows("P51", "t_reg", "T-REG",
                           "T-REG's contrastive-prompt token regulariser beats sequence DPO on held-out word problems",
                           arm, reported=f"T-REG alpha {ALPHA}, x+/x- = {BETTER!r} / {WORSE!r} scored by the reference, "
                                         f"DPO's lr and steps, fixed in advance")
    if not au > AUROC_MIN:
        rows = [dataclasses.replace(r, verdict="inconclusive", note=f"{r.note} AUROC {au:.3f} < {AUROC_MIN}: "
                                    f"inconclusive whatever the numbers.") for r in rows]
    return [au_row, *rows]


def toy_row(quick: bool) -> Row:
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
