"""P15 AlignDistil: token-level distillation from an adaptively extrapolated DPO teacher aligns faster than DPO.

Paper claim (Zhang et al., ACL 2025; code songmzhang/AlignDistil): distilling, token by token and
with a reverse KL, the logit extrapolation ``z_d + w_t (z_d - z_r)`` of a DPO model (z_d) and a
reverse-DPO model (z_r), with the step ``w_t = beta2 * TV(pi_d, pi_r) + 1e-3`` adapted per token,
gives better alignment and faster convergence than DPO.

Small-scale check: a toy preference task with a tiny tokjax transformer (d=32, 2 layers, V=16).
A prompt ``BOS topic`` is answered by 8 words from a topic-dependent Markov chain. The SFT data
replaces one word by a BAD token in half of the responses; a preference pair is a clean response
(chosen) and the same response with one word replaced by BAD (rejected). From the SFT model:

* DPO (beta = 0.1, sequence log-ratios) on the pairs -- the baseline and the AlignDistil teacher;
* reverse DPO on the swapped pairs -- the second AlignDistil model;
* AlignDistil (``make_aligndistil_loss``, beta = 0.1, T = 1, off-policy on the chosen responses,
  length-normalised), student initialised from the SFT model, with the official beta2 = 10 and
  with beta2 = 1 (on this toy the reverse-DPO model drifts far, so beta2 = 10 gives w_t ~ 10+).

Both the DPO policy and the AlignDistil student take the same number of Adam steps on the same
batches (AlignDistil additionally needs the two DPO models, trained beforehand). Metric on 512
held-out clean responses, teacher-forced: the mean probability of the BAD token at response
positions, averaged over the evaluation checkpoints (alignment speed; lower is better), plus the
held-out NLL of the clean responses (quality kept). The verdict rules are declared below, before
anything runs: the row's verdict is AlignDistil (the official beta2 = 10, fixed in advance;
beta2 = 1 is an ablation) lowering the curve-mean P(BAD) below DPO's by more than 0.001 (about
10% of DPO's) with every seed; its final clean NLL staying within 0.05 nats of DPO's is a
non-inferiority rule reported in the note. Every model (SFT, DPO, reverse DPO, AlignDistil)
trains through ``tokjax.train``; DPO uses ``tokjax.losses.make_dpo_loss``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p15_aligndistil.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import sample_rows  # noqa: E402
from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402
from experiments._preference_toy import BAD, SEQ, VOCAB, make_pairs  # noqa: E402

RULE = Rule(metric="held-out P(BAD) at response positions, mean over the training curve", higher_is_better=False,
            threshold=0.001, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="AlignDistil with the official beta2 = 10, fixed in advance (before: the better of beta2 = 10 "
                     "and 1 on the evaluation curve)")
RULE_NLL = Rule(metric="final held-out clean-response NLL", higher_is_better=False, threshold=-0.05,
                seeds=(0, 1, 2), quick_seeds=(0, 1))
REPORTED_BETA2 = 10.0


def make_data(n: int, seed: int, *, bad_rate: float = 0.0, follow: float = 0.6):
    """Returns (clean [n, SEQ], with_bad [n, SEQ]) int32 of the shared toy: one word -> BAD in every row when
    ``bad_rate`` is 0 (how rejected responses are made), else in that fraction of rows."""
    clean, with_bad, _ = make_pairs(n, seed, follow=follow, bad_rate=1.0 if bad_rate == 0.0 else bad_rate)
    return clean, with_bad


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.losses import token_stats
    from tokjax.losses.aligndistil import make_aligndistil_loss
    from tokjax.losses.dpo import make_dpo_loss

    seeds = RULE.run_seeds(quick)
    sft_steps, steps = (250, 60) if quick else (500, 150)
    dpo_steps = steps
    eval_every = 10
    B, beta, lr, sft_lr = 64, 0.1, 3e-4, 3e-3
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)
    # Adam at a constant rate, as before: no warm-up, no decay, no clipping, no weight decay
    adam = dict(warmup_steps=0, min_lr_ratio=1.0, b2=0.999, weight_decay=0.0, grad_clip=None)
    prompt = np.full((B,), 2, np.int32)  # BOS topic: the response targets are the rest

    _, sft_data = make_data(20000, 1, bad_rate=0.5)
    chosen, rejected = make_data(20000, 2)
    test_clean, _ = make_data(512, 3)
    test_j = jnp.asarray(test_clean)

    def sft_loss(p, cfg, batch, rng):  # sequence NLL of the response, mean over the batch
        lp = token_stats(p, cfg, {"tokens": batch["tokens"], "prompt_lengths": batch["prompt_lengths"]})
        loss = -jnp.mean(jnp.sum(jnp.where(lp.mask, lp.logp, 0.0), -1))
        return loss, {"loss": loss}

    @jax.jit
    def evaluate(p):
        lp = jax.nn.log_softmax(tokjax.forward(p, cfg, test_j[:, :-1]).logits, -1)[:, 1:]  # response positions
        p_bad = jnp.mean(jnp.exp(lp[..., BAD]))  # the whole next-token distribution, not only the targets
        nll = -jnp.mean(token_stats(p, cfg, {"tokens": test_j}).logp[:, 1:])
        return p_bad, nll

    def curve_cb(curve):
        def cb(step, state, metrics):
            if step % eval_every == 0:
                curve.append([float(x) for x in evaluate(state.params)])
        return cb

    def rows(seed, n):  # the same B rows per step for DPO and AlignDistil of one seed
        return lambda step: np.random.default_rng((100 + seed, step)).integers(0, n, B)

    curves, finals, weights = {"dpo": []}, {"dpo": []}, {}
    sft_eval, tvd = [], []

    @jax.jit
    def mean_tv(a, b):
        pa = jax.nn.softmax(tokjax.forward(a, cfg, test_j[:, :-1]).logits, -1)[:, 1:]
        pb = jax.nn.softmax(tokjax.forward(b, cfg, test_j[:, :-1]).logits, -1)[:, 1:]
        return jnp.mean(jnp.sum(jnp.abs(pa - pb), -1))

    betas2 = (REPORTED_BETA2, 1.0)  # the official beta2, and an ablation giving w_t = O(1) on this toy
    for seed in seeds:
        sft_batch = sample_rows({"tokens": sft_data, "prompt_lengths": np.full(len(sft_data), 2, np.int32)}, B, seed)
        sft, _ = train_model(cfg, steps=sft_steps, batch_fn=sft_batch, loss_fn=sft_loss, lr=sft_lr, seed=seed,
                             **adam)
        sft = sft.params
        sft_eval.append([float(x) for x in evaluate(sft)])
        dpo_loss = make_dpo_loss(beta=beta, ref=(sft, cfg))
        pick = rows(seed, len(chosen))

        def train_dpo(c_data, r_data, track):
            def batch_fn(step):  # B chosen rows, then the B matching rejected rows (the TRL layout)
                idx = pick(step)
                return {"tokens": np.concatenate([c_data[idx], r_data[idx]]),
                        "prompt_lengths": np.concatenate([prompt, prompt])}
            curve = []
            q, _ = train_model(cfg, steps=dpo_steps, batch_fn=batch_fn, loss_fn=dpo_loss, params=sft, lr=lr,
                               seed=seed, callback=curve_cb(curve) if track else None, **adam)
            return q.params, curve

        dpo, dpo_curve = train_dpo(chosen, rejected, True)
        rdpo, _ = train_dpo(rejected, chosen, False)
        tvd.append(float(mean_tv(dpo, rdpo)))
        curves["dpo"].append(float(np.mean([x[0] for x in dpo_curve])))
        finals["dpo"].append(dpo_curve[-1])
        for b2 in betas2:
            name = f"aligndistil_b2={b2:g}"
            loss_fn = make_aligndistil_loss((dpo, cfg), (rdpo, cfg), beta=beta, beta2=b2)
            ad_curve = []
            q, hist = train_model(cfg, steps=steps, batch_fn=lambda step: {"tokens": chosen[pick(step)],
                                                                           "prompt_lengths": prompt},
                                  loss_fn=loss_fn, params=sft, lr=lr, seed=seed, callback=curve_cb(ad_curve),
                                  log_every=1, **adam)
            weights.setdefault(name, []).append(hist["train"][-1]["mean_weight"])
            curves.setdefault(name, []).append(float(np.mean([x[0] for x in ad_curve])))
            finals.setdefault(name, []).append(ad_curve[-1])

    mean = {m: float(np.mean(v)) for m, v in curves.items()}
    fin = {m: (float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))) for m, v in finals.items()}
    best = f"aligndistil_b2={REPORTED_BETA2:g}"
    verdict = RULE.verdict(curves[best], curves["dpo"], seeds=seeds)
    # alignment must not come from wrecking the responses
    nll_ok = RULE_NLL.verdict([x[1] for x in finals[best]], [x[1] for x in finals["dpo"]], seeds=seeds)
    sft_pb, sft_nll = float(np.mean([x[0] for x in sft_eval])), float(np.mean([x[1] for x in sft_eval]))
    per = "; ".join(f"{m}: curve-mean P(BAD) {mean[m]:.4f}, final P(BAD) {fin[m][0]:.4f}, final clean NLL {fin[m][1]:.3f}"
                    + (f", final mean w_t {np.mean(weights[m]):.2f}" if m in weights else "") for m in curves)
    note = (f"{per}; SFT start P(BAD) {sft_pb:.4f}, NLL {sft_nll:.3f}. Final clean NLL of {best} within 0.05 of DPO's: "
            f"{nll_ok.status} (per seed {', '.join(f'{d:+.3f}' for d in nll_ok.diffs)}). Mean sum|pi_d - pi_r| of "
            f"the two DPO models on held-out responses {np.mean(tvd):.3f} (the reverse-DPO model moves far on this "
            f"toy, so beta2=10 extrapolates by w_t ~ 10+). SFT {sft_steps} steps (lr {sft_lr}); then {steps} "
            f"tokjax.train Adam steps (lr {lr}, batch {B}) for DPO and for each AlignDistil student, "
            f"evaluated every {eval_every}; AlignDistil also needs the DPO and reverse-DPO models ({dpo_steps} steps "
            f"each). beta=0.1, T=1, off-policy on chosen responses, length-normalised (the official script).")
    return Row(
        pid="P15",
        claim="distilling the token-adaptively extrapolated DPO/reverse-DPO teacher aligns faster than DPO",
        setting=(f"toy preference task (8-word topic Markov responses, rejected = one word -> BAD), tiny tokjax "
                 f"transformer d=32x2, V=16, {len(seeds)} seeds"),
        baseline_name="DPO (beta=0.1)",
        baseline_value=round(mean["dpo"], 4),
        method_value=round(mean[best], 4),
        metric=f"held-out mean P(BAD) at response positions, averaged over the training curve ({best}; lower is better)",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
