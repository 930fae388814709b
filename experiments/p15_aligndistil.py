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
held-out NLL of the clean responses (quality kept). Verdict ``reproduced`` when the better
AlignDistil variant's curve-mean P(BAD) is below DPO's by more than the seed spread (and at least
10% relative) with a final clean NLL within 0.05 nats of DPO's, ``not-reproduced`` when DPO is
lower by that margin, else ``inconclusive``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p15_aligndistil.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, run_cli

from experiments._preference_toy import BAD, SEQ, VOCAB, make_pairs  # noqa: E402


def make_data(n: int, seed: int, *, bad_rate: float = 0.0, follow: float = 0.6):
    """Returns (clean [n, SEQ], with_bad [n, SEQ]) int32 of the shared toy: one word -> BAD in every row when
    ``bad_rate`` is 0 (how rejected responses are made), else in that fraction of rows."""
    clean, with_bad, _ = make_pairs(n, seed, follow=follow, bad_rate=1.0 if bad_rate == 0.0 else bad_rate)
    return clean, with_bad


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import tokjax
    from tokjax.losses.aligndistil import make_aligndistil_loss

    seeds = (0, 1) if quick else (0, 1, 2)
    sft_steps, steps = (250, 60) if quick else (500, 150)
    dpo_steps = steps
    eval_every = 10
    B, beta, lr, sft_lr = 64, 0.1, 3e-4, 3e-3
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)
    opt = optax.adam(lr)
    sft_opt = optax.adam(sft_lr)
    prompt = jnp.full((B,), 2, jnp.int32)

    _, sft_data = make_data(20000, 1, bad_rate=0.5)
    chosen, rejected = make_data(20000, 2)
    test_clean, _ = make_data(512, 3)
    test_j = jnp.asarray(test_clean)

    def seq_logp(p, toks):
        lp = jax.nn.log_softmax(tokjax.forward(p, cfg, toks[:, :-1]).logits, -1)
        tok_lp = jnp.take_along_axis(lp, toks[:, 1:, None], -1)[..., 0]
        return jnp.sum(tok_lp[:, 1:], -1)  # response targets only (positions 2.. of the tokens)

    def adam_step(loss):
        @jax.jit
        def step(p, s, *args):
            val, g = jax.value_and_grad(loss)(p, *args)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, val
        return step

    @jax.jit
    def sft_step(p, s, toks):
        g = jax.grad(lambda p: -jnp.mean(seq_logp(p, toks)))(p)
        u, s = sft_opt.update(g, s, p)
        return optax.apply_updates(p, u), s, None

    def dpo_loss(p, ref, c, r):
        d = (seq_logp(p, c) - seq_logp(ref, c)) - (seq_logp(p, r) - seq_logp(ref, r))
        return -jnp.mean(jax.nn.log_sigmoid(beta * d))

    dpo_step = adam_step(dpo_loss)

    @jax.jit
    def evaluate(p):
        lp = jax.nn.log_softmax(tokjax.forward(p, cfg, test_j[:, :-1]).logits, -1)[:, 1:]  # response positions
        p_bad = jnp.mean(jnp.exp(lp[..., BAD]))
        nll = -jnp.mean(jnp.take_along_axis(lp, test_j[:, 2:, None], -1))
        return p_bad, nll

    betas2 = (10.0, 1.0)  # the official beta2, and one giving w_t = O(1) when the two DPO models differ a lot
    curves, finals, weights = {"dpo": []}, {"dpo": []}, {}
    sft_eval, tvd = [], []

    @jax.jit
    def mean_tv(a, b):
        pa = jax.nn.softmax(tokjax.forward(a, cfg, test_j[:, :-1]).logits, -1)[:, 1:]
        pb = jax.nn.softmax(tokjax.forward(b, cfg, test_j[:, :-1]).logits, -1)[:, 1:]
        return jnp.mean(jnp.sum(jnp.abs(pa - pb), -1))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        p = jax.jit(lambda k: tokjax.Model.init(cfg, k).params)(jax.random.key(seed))
        s = sft_opt.init(p)
        for _ in range(sft_steps):
            p, s, _ = sft_step(p, s, jnp.asarray(sft_data[rng.integers(0, len(sft_data), B)]))
        sft = p
        sft_eval.append([float(x) for x in evaluate(sft)])

        def train_dpo(c_data, r_data, track):
            q, st = sft, opt.init(sft)
            g = np.random.default_rng(100 + seed)  # the same batches for DPO and AlignDistil
            curve = []
            for t in range(1, dpo_steps + 1):
                idx = g.integers(0, len(c_data), B)
                q, st, _ = dpo_step(q, st, sft, jnp.asarray(c_data[idx]), jnp.asarray(r_data[idx]))
                if track and t % eval_every == 0:
                    curve.append([float(x) for x in evaluate(q)])
            return q, curve

        dpo, dpo_curve = train_dpo(chosen, rejected, True)
        rdpo, _ = train_dpo(rejected, chosen, False)
        loss_fn = make_aligndistil_loss((dpo, cfg), (rdpo, cfg), beta=beta, beta2=10.0)

        @jax.jit
        def ad_step(q, st, toks, beta2):
            batch = {"tokens": toks, "prompt_lengths": prompt, "hparams": {"beta2": beta2}}
            (val, m), g = jax.value_and_grad(lambda q: loss_fn(q, cfg, batch), has_aux=True)(q)
            u, st = opt.update(g, st, q)
            return optax.apply_updates(q, u), st, m["mean_weight"]

        tvd.append(float(mean_tv(dpo, rdpo)))
        curves["dpo"].append(float(np.mean([x[0] for x in dpo_curve])))
        finals["dpo"].append(dpo_curve[-1])
        for b2 in betas2:
            name = f"aligndistil_b2={b2:g}"
            q, st = sft, opt.init(sft)
            g = np.random.default_rng(100 + seed)
            ad_curve = []
            for t in range(1, steps + 1):
                idx = g.integers(0, len(chosen), B)
                q, st, w = ad_step(q, st, jnp.asarray(chosen[idx]), jnp.float32(b2))
                if t % eval_every == 0:
                    ad_curve.append([float(x) for x in evaluate(q)])
            weights.setdefault(name, []).append(float(w))
            curves.setdefault(name, []).append(float(np.mean([x[0] for x in ad_curve])))
            finals.setdefault(name, []).append(ad_curve[-1])

    mean = {m: float(np.mean(v)) for m, v in curves.items()}
    fin = {m: (float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))) for m, v in finals.items()}
    best = min((m for m in curves if m != "dpo"), key=lambda m: mean[m])
    diffs = np.asarray(curves["dpo"]) - np.asarray(curves[best])  # > 0: AlignDistil lower P(BAD)
    margin = max(float(np.std(diffs)) if len(diffs) > 1 else 0.0, 0.1 * mean["dpo"])
    gain = float(np.mean(diffs))
    nll_ok = fin[best][1] <= fin["dpo"][1] + 0.05  # alignment must not come from wrecking the responses
    verdict = ("reproduced" if gain > margin and nll_ok else
               "not-reproduced" if gain < -margin else "inconclusive")
    sft_pb, sft_nll = float(np.mean([x[0] for x in sft_eval])), float(np.mean([x[1] for x in sft_eval]))
    per = "; ".join(f"{m}: curve-mean P(BAD) {mean[m]:.4f}, final P(BAD) {fin[m][0]:.4f}, final clean NLL {fin[m][1]:.3f}"
                    + (f", final mean w_t {np.mean(weights[m]):.2f}" if m in weights else "") for m in curves)
    note = (f"{per}; SFT start P(BAD) {sft_pb:.4f}, NLL {sft_nll:.3f}. Per-seed curve-mean P(BAD) reduction of {best} "
            f"vs dpo: {', '.join(f'{d:+.4f}' for d in diffs)} (margin {margin:.4f}); clean NLL within 0.05 of DPO: "
            f"{nll_ok}. Mean sum|pi_d - pi_r| of the two DPO models on held-out responses {np.mean(tvd):.3f} (the "
            f"reverse-DPO model moves far on this toy, so beta2=10 extrapolates by w_t ~ 10+). SFT {sft_steps} steps "
            f"(lr {sft_lr}); then {steps} Adam steps (lr {lr}, batch {B}) for DPO and for each AlignDistil student, "
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


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
