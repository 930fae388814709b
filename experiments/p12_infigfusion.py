"""P12 InfiGFusion: does adding Graph-on-Logits Distillation (GLD) to logit distillation help a small student?

Paper claim (Wang et al., arXiv 2505.13893): aligning the co-activation graphs of the top-k
logits (a sorting-based Gromov-Wasserstein loss) on top of SFT + token-level logit distillation
improves the fused/distilled model (+35.6 Multistep Arithmetic, +37.06 Causal Judgement over SFT
at 14B; GLD "consistently improves fusion quality").

Small-scale check: teacher = ``tokjax.pretrained("tiny-pydocs")`` (d=128, 4 layers, 1024-id BPE);
student = a tokjax transformer (d=64, 2 layers), first trained with plain CE (the paper fuses into
an already trained pivot; from a fresh student the earlier rank-slot GLD hurt at every weight tried),
then distilled on
the teacher's own training split of the Python-docs corpus with

* baseline: ``CE + KD`` (``make_kd_loss``: Hinton KD at T=1, weight 1),
* method:   ``CE + KD + lambda * GLD`` (``make_gld_loss``: top-k=10 co-activation graphs over vocabulary
  channels, compared node by node on the union of both models' kept token ids, ``method="shared_vocab"``
  (teacher and student share the vocabulary), log-probability features, lambda = 1),

same seeds, start checkpoint, batches, optimiser (tokjax.train AdamW + warmup-cosine) and steps. Metrics on held-out
windows of the teacher's validation split: bits per byte (lower is better; the headline) and
top-1 agreement with the teacher. The verdict rule is declared below, before anything runs: GLD
must lower held-out bits per byte by more than 0.003 with every seed.

History (issue 15). The first version built its graphs over rank slots (the sorted top-k values),
so a student whose logits were a vocabulary permutation of the teacher's had GLD = 0; it reported
kd+gld[logprobs, 0.01] (1.802 vs KD 1.785 bpb, not-reproduced). The graphs are now over vocabulary
channels, as the paper states, and their scale changed with them: at a CE-pretrained start (80
steps, seed 0), on 16 training windows, the new GLD is 0.23 against KD 3.04 (old lambda 0.01 would
make GLD 0.1% of the KD gradient). lambda was therefore re-fixed once, from that training-batch measurement and before
any evaluation run of the new loss, to 1 (GLD about 8% of the KD value and 14% of its gradient
norm); threshold and seeds are unchanged. The old sweep of ablations is not re-run (it tripled
the cost); the reported variant is the only GLD arm.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p12_infigfusion.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, train_model

RULE = Rule(metric="held-out bits per byte", higher_is_better=False, threshold=0.003, seeds=(0, 1, 2),
            quick_seeds=(0, 1), reported="kd+gld[logprobs,1] (vocabulary-channel graphs compared by token id, "
            "log-prob features, lambda 1), fixed in advance from the GLD/KD scale on a training batch (issue 15: "
            "lambda 0.01 was fixed for the old rank-slot graphs, on another scale)")
REPORTED = ("logprobs", 1.0)


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.data import TokenDataset
    from tokjax.logits import target_logprobs
    from tokjax.losses import token_stats
    from tokjax.losses._distill import make_kd_loss
    from tokjax.losses.infigfusion import make_gld_loss

    teacher, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    seq = 64  # the teacher's own split (val_fraction 0.1, seed 0): val is held out from it too
    data = TokenDataset.from_corpus("pydocs", tok, seq_len=seq, val_fraction=0.1, seed=0)
    warm_steps, steps = (80, 80) if quick else (300, 400)
    seeds = RULE.run_seeds(quick)
    variants = (REPORTED,)
    B, k = 16, 10
    n_eval = 48 if quick else 256
    s_cfg = tokjax.ModelConfig(vocab_size=teacher.cfg.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                               max_len=seq)
    val = jnp.asarray(data.val[:n_eval])
    t_pair = (teacher.params, teacher.cfg)
    best = f"kd+gld[{REPORTED[0]},{REPORTED[1]:g}]"

    @jax.jit
    def _evaluate(params, val, t_params):  # arguments, not closed-over constants XLA would try to fold
        s = tokjax.forward(params, s_cfg, val[:, :-1]).logits
        t = tokjax.forward(t_params, teacher.cfg, val[:, :-1]).logits
        nll = -jnp.mean(target_logprobs(s, val[:, 1:]))
        agree = jnp.mean(jnp.argmax(s, -1) == jnp.argmax(t, -1))
        return nll, agree

    def evaluate(params):
        return _evaluate(params, val, teacher.params)

    t_nll = float(-jnp.mean(token_stats(teacher.params, teacher.cfg, {"tokens": val}).logp))

    methods = {"kd": make_kd_loss(t_pair, ce_weight=1.0, kd_weight=1.0)}
    for values, lam in variants:
        methods[f"kd+gld[{values},{lam:g}]"] = make_gld_loss(t_pair, k=k, values=values, gld_weight=lam,
                                                              method="shared_vocab")
    # AdamW 3e-3, 20 warm-up steps, cosine decay; batches of B windows of the train split in an order fixed by seed
    opt = dict(lr=3e-3, warmup_steps=20, weight_decay=0.1, batch_size=B)

    res = {m: [] for m in methods}
    gld_seen, warm_bpb = {}, []
    for seed in seeds:
        # The paper fuses into an already trained pivot model: every student starts from the same
        # CE-pretrained checkpoint of its seed.
        warm, _ = train_model(s_cfg, steps=warm_steps, batch_fn=data.train, seed=seed, **opt)
        warm_bpb.append(data.bits_per_byte(float(evaluate(warm.params)[0])))
        for m, loss_fn in methods.items():
            student, hist = train_model(s_cfg, steps=steps, batch_fn=data.train, loss_fn=loss_fn, params=warm.params,
                                        seed=100 + seed, **opt)
            if "gld" in m:
                gld_seen[m] = hist["train"][-1].get("gld", float("nan"))
            nll, agree = evaluate(student.params)
            res[m].append((data.bits_per_byte(float(nll)), float(agree)))

    bpb = {m: float(np.mean([r[0] for r in v])) for m, v in res.items()}
    agr = {m: float(np.mean([r[1] for r in v])) for m, v in res.items()}
    verdict = RULE.verdict([r[0] for r in res[best]], [r[0] for r in res["kd"]], seeds=seeds)
    detail = "; ".join(f"{m}: bpb {bpb[m]:.4f}, teacher agreement {agr[m]:.3f}" for m in methods)
    note = (f"{detail}. Teacher bpb {data.bits_per_byte(t_nll):.4f}; CE-pretrained start "
            f"{np.mean(warm_bpb):.4f} ({warm_steps} steps). Final train GLD: "
            f"{', '.join(f'{m} {v:.3g}' for m, v in gld_seen.items())}. {steps} distillation steps x {B}x{seq} tokens, "
            f"AdamW 3e-3 warmup-cosine, {n_eval} held-out windows; top-k={k} co-activation graphs over vocabulary "
            f"channels, compared by token id on the union of kept ids ('shared_vocab'; k and lambda unverified: "
            f"no criterion code). Per-seed bpb, kd: {', '.join(f'{r[0]:.4f}' for r in res['kd'])}; {best}: "
            f"{', '.join(f'{r[0]:.4f}' for r in res[best])}. Students start from a CE-pretrained checkpoint (the "
            f"paper fuses into a trained pivot). Rerun for issue 15 after the rank-slot graph fix (the old graphs "
            f"gave a vocabulary-permuted student GLD = 0).")
    return Row(
        pid="P12",
        claim=("adding Graph-on-Logits Distillation (top-k co-activation graphs over vocabulary channels) to logit KD "
               "improves the student"),
        setting=(f"teacher tiny-pydocs (d=128x4, V=1024) -> CE-pretrained student d=64x2 on the pydocs train split, "
                 f"{len(seeds)} seeds, {steps} distillation steps"),
        baseline_name="CE + KD (T=1)",
        baseline_value=round(bpb["kd"], 4),
        method_value=round(bpb[best], 4),
        metric=f"held-out bits per byte ({best}; lower is better)",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
