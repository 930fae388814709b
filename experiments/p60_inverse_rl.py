"""P60 Imitating language via scalable inverse RL: offline IQLearn = MLE + a TD regulariser on r_t.

Paper claim (Wulfmeier et al., NeurIPS 2024, arXiv 2409.01369): reformulating inverse soft-Q learning
as TD-regularised MLE (eq. 14: E[lambda (V(s) + log pi(a|s) - gamma V(s'))^2 - log pi(a|s)]) keeps or
improves task performance while making generations more diverse.

Quick check (``--quick``): imitation of the toy chain's clean responses (experiments._preference_toy:
topic Markov chain, 8 words, follow 0.6 over 10 words) with a tiny tokjax transformer (d=32, 2 layers),
MLE (tokjax.losses.inverse_rl with lam = 0, exactly next-token MLE) vs TD-regularised MLE (lam 0.1,
gamma 1; fixed in advance, not tuned), both trained by tokjax.train with the same Adam lr 3e-3, batch
64, same steps and seeds. Rows: (1) ``nll``: held-out NLL per response token, non-inferiority: IRL no
worse than MLE by more than 0.02 nats in every seed; (2) ``entropy``: |mean model entropy along held-out
responses - the chain's true conditional entropy| (exact: ln 10 at the first word, H(0.64, 9 x 0.04)
after), reproduced when IRL is closer in every seed (more diversity where MLE under-disperses).

SmolLM2 rows (full mode only; ``--only smollm-accuracy,smollm-diversity`` runs just them): the shared setting
of experiments/_preference_smollm.py (SmolLM2-135M-Instruct on word problems level 0). MLE (inverse_rl with
lam 0 = next-token MLE) vs TD-regularised MLE (lam 0.1, gamma 1) from the reference on all verified-correct
T=1 samples of the training prompts; last 4 of 30 layers, 150 steps of 16 rows, lr 1e-4 (the shared SFT lr,
fixed in advance), 2 seeds. Evaluation on the held-out problems: greedy + 4 T=1 samples; self-BLEU-2 among a
problem's 4 samples (``tokjax.metrics.tensor_sentence_bleu``, "floor" smoothing), averaged over problems.
Verdicts: ``smollm-accuracy`` (non-inferiority): IRL - MLE mean T=1 accuracy > -max(2 points, paired-bootstrap
95 % half-width) in both seeds -> reproduced; below it in both -> not-reproduced; else inconclusive.
``smollm-diversity``: MLE - IRL self-BLEU-2 exceeds the seed spread (the larger range over seeds of either
arm) in both seeds and the accuracy row is reproduced -> reproduced; mean difference <= 0 -> not-reproduced;
else inconclusive.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_NLL = Rule(metric="held-out NLL per response token, nats (lower is better)", higher_is_better=False,
                threshold=-0.02, seeds=(0, 1, 2), quick_seeds=(0, 1),
                reported="lam 0.1, gamma 1, token_mean, fixed in advance")
RULE_ENT = Rule(metric="|model entropy - true chain entropy| along held-out responses, nats (lower is better)",
                higher_is_better=False, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0, 1),
                reported="lam 0.1, gamma 1, token_mean, fixed in advance")
LAM, GAMMA = 0.1, 1.0


REAL_CLAIMS = ("smollm-accuracy", "smollm-diversity")


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    from experiments._preference_smollm import run_rows

    return run_rows(quick, only, toy_rows, real_rows, REAL_CLAIMS)


def real_rows() -> list[Row]:
    import numpy as np

    from experiments._harness import Verdict
    from experiments._preference_smollm import (
        SFT_LR, SFT_ROWS, arm_result, beats, completion_rows, load, reference_result, self_bleu, sft,
    )

    ctx = load()
    seeds, steps = ctx.size["seeds"], ctx.size["steps"]
    ref = reference_result(ctx)
    prompts, comps = completion_rows(ctx.train_pools, "correct")
    res = {}
    for arm, lam in (("mle", 0.0), ("irl", LAM)):
        loss = {"name": "inverse_rl", "lam": lam, "gamma": GAMMA}
        res[arm] = [arm_result(ctx, f"sft-{arm}", s, {"lam": lam, "gamma": GAMMA, "lr": SFT_LR, "steps": steps},
                               lambda s=s, loss=loss: sft(ctx.model, prompts, comps, steps=steps, seed=s, loss=loss,
                                                          pad_id=ctx.tok.pad_id or 0))
                    for s in seeds]
    m, i = res["mle"], res["irl"]
    acc = [beats(b["eval"]["sampled"], a["eval"]["sampled"], floor=0.0) for a, b in zip(m, i)]  # (win, diff, hw)
    margins = [max(2.0, hw) for _, _, hw in acc]
    ok = [d > -mg for (_, d, _), mg in zip(acc, margins)]
    acc_status = "reproduced" if all(ok) else ("not-reproduced" if not any(ok) else "inconclusive")
    sb = {k: [float(self_bleu(r["eval"]["sample_ids"]).mean()) for r in v] for k, v in res.items()}
    bl_diff = [a - b for a, b in zip(sb["mle"], sb["irl"])]
    spread = max(max(v) - min(v) for v in sb.values())
    div_status = ("reproduced" if all(d > spread for d in bl_diff) and acc_status == "reproduced" else
                  "not-reproduced" if np.mean(bl_diff) <= 0 else "inconclusive")
    f = lambda xs, k=100: ", ".join(f"{k * float(np.mean(x)):.1f}" for x in xs)  # noqa: E731
    note = (f"T=1 accuracy (4 samples/problem): MLE {f([r['eval']['sampled'] for r in m])}, IRL "
            f"{f([r['eval']['sampled'] for r in i])}; greedy MLE {f([r['eval']['greedy'] for r in m])}, IRL "
            f"{f([r['eval']['greedy'] for r in i])}; reference T=1 {100 * ref['eval']['sampled'].mean():.1f}, greedy "
            f"{100 * ref['eval']['greedy'].mean():.1f}; IRL - MLE per seed {', '.join(f'{d:+.1f}' for _, d, _ in acc)} "
            f"points (margins {', '.join(f'{x:.1f}' for x in margins)}); self-BLEU-2 MLE "
            f"{', '.join(f'{x:.4f}' for x in sb['mle'])}, IRL {', '.join(f'{x:.4f}' for x in sb['irl'])} (reference "
            f"{float(self_bleu(ref['eval']['sample_ids']).mean()):.4f}), seed spread {spread:.4f}; drift KL(ref||model) per pydocs token MLE "
            f"{', '.join(format(r['drift'], '.4f') for r in m)}, IRL {', '.join(format(r['drift'], '.4f') for r in i)}")
    setting = (f"SmolLM2-135M-Instruct SFT on {len(comps)} verified-correct samples of "
               f"{ctx.size['n_train'] - ctx.size['n_val']} word-problem prompts (level 0), last 4 of 30 layers, "
               f"{steps} steps x {SFT_ROWS} rows, lr {SFT_LR:g}; {len(ctx.heldout)} held-out problems; seeds {list(seeds)}")
    sd = tuple(seeds)
    return [
        Row(pid="P60", claim_id="smollm-accuracy",
            claim="TD-regularised MLE keeps MLE's task accuracy (held-out word problems, T=1)", setting=setting,
            baseline_name="MLE", baseline_value=round(100 * float(np.mean([r["eval"]["sampled"].mean() for r in m])), 2),
            method_value=round(100 * float(np.mean([r["eval"]["sampled"].mean() for r in i])), 2),
            metric="held-out mean T=1 accuracy of 4 samples per problem, points (higher is better)",
            verdict=Verdict(acc_status, -2.0, sd, tuple(d for _, d, _ in acc), float(np.mean([d for _, d, _ in acc]))),
            note=note),
        Row(pid="P60", claim_id="smollm-diversity",
            claim="TD-regularised MLE's samples are more diverse than MLE's (lower self-BLEU-2 among a problem's "
                  "4 samples)", setting=setting, baseline_name="MLE", baseline_value=round(float(np.mean(sb["mle"])), 4),
            method_value=round(float(np.mean(sb["irl"])), 4),
            metric="held-out self-BLEU-2 among 4 T=1 samples per problem (lower is better)",
            verdict=Verdict(div_status, round(spread, 4), sd, tuple(bl_diff), float(np.mean(bl_diff))), note=note),
    ]


def toy_rows(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from experiments._common import adam, sample_rows
    from experiments._harness import train_model
    from experiments._preference_toy import N_WORD, PROMPT, RESP, SEQ, VOCAB, make_pairs
    from tokjax.losses.inverse_rl import make_inverse_rl_loss

    seeds = RULE_NLL.run_seeds(quick)
    steps = 300 if quick else 1000
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)
    train, _, _ = make_pairs(20000, 1)
    test, _, _ = make_pairs(1024, 3)
    tj = jnp.asarray(test)
    p_top = 0.6 + 0.4 / N_WORD
    h_follow = -(p_top * np.log(p_top) + (N_WORD - 1) * (0.4 / N_WORD) * np.log(0.4 / N_WORD))
    h_true = np.array([np.log(N_WORD)] + [h_follow] * (RESP - 1))

    @jax.jit
    def evaluate(p):
        z = tokjax.forward(p, cfg, tj[:, :-1]).logits[:, PROMPT - 1:]
        lsm = jax.nn.log_softmax(z, -1)
        nll = -jnp.take_along_axis(lsm, tj[:, PROMPT:, None], -1)[..., 0]
        ent = -jnp.sum(jnp.exp(lsm) * lsm, -1)
        return jnp.mean(nll), jnp.mean(ent, 0)

    res = {"mle": [], "irl": []}
    data = {"tokens": train, "prompt_lengths": np.full(len(train), PROMPT, np.int32)}
    for seed in seeds:
        init = tokjax.Model.init(cfg, jax.random.key(seed)).params
        for arm, lam in (("mle", 0.0), ("irl", LAM)):
            model, hist = train_model(cfg, steps=steps, batch_fn=sample_rows(data, 64, seed), params=init, seed=seed,
                                      loss_fn=make_inverse_rl_loss(lam=lam, gamma=GAMMA, method="naive"),
                                      **adam(3e-3))
            nll, ent = (np.asarray(x) for x in evaluate(model.params))
            res[arm].append({"nll": float(nll), "ent": ent, "gap": float(abs(ent.mean() - h_true.mean())),
                             "td_sq": float(hist["train"][-1]["td_sq"])})
    m, i = res["mle"], res["irl"]
    f = lambda runs, k: ", ".join(f"{r[k]:.4f}" for r in runs)  # noqa: E731
    ent_txt = lambda runs: ", ".join(f"{r['ent'].mean():.4f}" for r in runs)  # noqa: E731
    first = lambda runs: ", ".join(f"{r['ent'][0]:.3f}" for r in runs)  # noqa: E731
    note = (f"held-out NLL: MLE {f(m, 'nll')}, IRL {f(i, 'nll')} (true entropy rate {h_true.mean():.4f} = the best "
            f"achievable NLL); mean model entropy: MLE {ent_txt(m)}, IRL {ent_txt(i)}; first-word entropy MLE "
            f"{first(m)}, IRL {first(i)} (true "
            f"{h_true[0]:.3f}); final TD^2 (train) MLE {f(m, 'td_sq')}, IRL {f(i, 'td_sq')}. {steps} Adam steps, lr "
            f"3e-3, batch 64, lam {LAM}, gamma {GAMMA}; teacher-forced entropies along 1024 held-out responses.")
    setting = f"toy chain imitation (8 words, V=16), tiny transformer d=32x2, {len(seeds)} seeds, {steps} steps"
    return [
        Row(pid="P60", claim_id="nll", claim="TD-regularised MLE (offline IQLearn) keeps MLE's held-out likelihood",
            setting=setting, baseline_name="MLE", baseline_value=round(float(np.mean([r['nll'] for r in m])), 4),
            method_value=round(float(np.mean([r["nll"] for r in i])), 4), metric=RULE_NLL.metric,
            verdict=RULE_NLL.verdict([r["nll"] for r in i], [r["nll"] for r in m], seeds=seeds), note=note),
        Row(pid="P60", claim_id="entropy",
            claim="TD-regularised MLE's next-token entropy is closer to the data's true entropy (more diversity)",
            setting=setting, baseline_name="MLE", baseline_value=round(float(np.mean([r['gap'] for r in m])), 4),
            method_value=round(float(np.mean([r["gap"] for r in i])), 4), metric=RULE_ENT.metric,
            verdict=RULE_ENT.verdict([r["gap"] for r in i], [r["gap"] for r in m], seeds=seeds), note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
