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
The SmolLM2 arm (accuracy and self-BLEU on word problems) needs tokjax.data.word_problems (issue 21).
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


def run(quick: bool) -> list[Row]:
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
