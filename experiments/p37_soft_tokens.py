"""P37 Soft Tokens, Hard Truths: RL with soft / fuzzy CoT tokens matches hard-token RL at pass@1, beats it at pass@k.

Paper claims (Butt et al., arXiv 2509.19170; Llama / Qwen up to 8B on GSM8K, MATH, OlympiadBench): training the
chain of thought (CoT) with continuous tokens (input h~_t = softmax(z / tau) E + sigma N(0, I); tau 0.5 "soft",
1e-4 "fuzzy"; RLOO on the Gaussian CoT log-likelihood plus the hard answer's log-probs) and then decoding with
ordinary hard tokens (a) matches hard-token CoT training at pass@1 and (b) beats it at pass@32 (more diverse CoTs).

Deviation (decided before any run): issue 21 puts P37 on the SmolLM2-135M word-problem rung; this runs on the
tiny rung (``experiments._tiny_rl``), as P47 / P56 / P69 (no word-problem level of SmolLM2-135M-Instruct lies
in the 20-70% band), and does not measure the out-of-domain drift claim.

* Warm start ``tokjax.pretrained("tiny-arithmetic-cot")`` (115k params, addition with chain of thought, test
  greedy accuracy 50.4%), task :class:`tokjax.train.rl_tasks.ArithmeticCoTTask` (reward 1 for a well-formed
  completion with the right answer). Same steps, seeds, prompts (``prompt_seed`` = seed), 4 prompts x G = 8,
  Adam lr ``LR`` = 3e-5 (tuned once on GRPO, see ``experiments/p56_d3s.py``), token-mean loss and budget as the
  cached GRPO runs of ``experiments._tiny_rl``.
* Arms (one update per rollout batch, so the ratio is 1 and the loss is the RLOO policy gradient;
  :mod:`tokjax.losses.soft_tokens` on the GRPO core, advantages ``group_advantages(scale="none", rloo=True)``):
  **hard** (T = 1 sampled CoT and answer, token log-probs), **soft** (tau = 0.5) and **fuzzy** (tau = 1e-4):
  CoT rollouts from :class:`tokjax.decoding.soft_tokens.SoftTokens`, one sigma for both, chosen on the
  *validation* split before any RL (the paper's sigma is unverified): the largest of ``SIGMA_GRID`` x the RMS of
  the warm start's embedding entries whose warm-start soft and fuzzy rollouts (greedy answers, the first
  ``SIGMA_PROMPTS`` validation problems) both keep accuracy within ``SIGMA_DROP`` = 0.1 of hard greedy decoding
  (noise explores without destroying the warm start; a first probe at 0.33 x RMS left 2% of the chains
  correct and well-formed on this 115k-parameter model), the CoT ends when
  its argmax readout is the last token of ``" =>"`` (the task's answer marker; the paper's CoT end is
  unverified), then T = 1 hard answer tokens. The reward is the task's, on the shown text (the CoT's argmax
  readout), so all arms share one reward function. The cached plain GRPO runs (group-std advantages) are
  reported in the note for context only.
* Evaluation, hard decoding only (the paper's best practice "train soft, infer hard"): greedy accuracy on the 500
  test problems (pass@1) and ``N_SAMPLES`` T = 1 samples per problem on the first ``N_PASS`` test problems,
  scored with the unbiased pass@k estimator 1 - C(n - c, k) / C(n, k).

Verdicts (declared before anything runs; one row per continuous arm):

* ``pass1-soft`` / ``pass1-fuzzy`` (``RULE_PASS1``, non-inferiority): per seed, the arm's final greedy test
  accuracy - hard's > -margin, margin = max(2 x the hard arm's seed std (ddof 1), ``MARGIN_FLOOR`` = 0.02).
  Inconclusive when the hard arm's mean does not beat the warm start by the margin (RL did not learn).
* ``passk-soft`` / ``passk-fuzzy`` (``RULE_PASSK``): per seed, the arm's pass@``K`` - hard's > 0 (k = 32 in full
  mode, 8 with --quick); the paired bootstrap 95% CI over problems is in the note.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p37_soft_tokens.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._tiny_rl import (  # noqa: E402
    G, LR, PROMPTS, grpo_run, mean_sd, per_seed, plot_reward_curves, rl_config, setup,
)

STEPS, QUICK_STEPS = 300, 40
EVAL_EVERY, QUICK_EVAL_EVERY = 25, 10
MARGIN_FLOOR = 0.02
TAUS = {"soft": 0.5, "fuzzy": 1e-4}
SIGMA_GRID = (0.03, 0.1, 0.2, 0.33)  # x the RMS of the embedding entries
SIGMA_DROP, SIGMA_PROMPTS = 0.1, 128
END_TEXT = " =>"
N_SAMPLES, QUICK_N_SAMPLES = 32, 8  # T = 1 samples per problem for pass@k
K_PASS, QUICK_K_PASS = 32, 8
N_PASS, QUICK_N_PASS = 500, 200
ARMS = ("hard", "soft", "fuzzy")

RULE_PASS1 = Rule(metric="greedy test accuracy after RL (pass@1, hard decoding)", higher_is_better=True,
                  threshold=-MARGIN_FLOOR, seeds=(0, 1, 2), quick_seeds=(0,),
                  reported="soft (tau 0.5) and fuzzy (tau 1e-4) CoT training vs hard CoT training, RLOO, sigma fixed "
                           "in the header; non-inferiority margin max(2 x hard seed std, 0.02)")
RULE_PASSK = Rule(metric="pass@k of T=1 hard sampling after RL", higher_is_better=True, threshold=0.0,
                  seeds=(0, 1, 2), quick_seeds=(0,),
                  reported="soft and fuzzy CoT training vs hard CoT training; k = 32 (8 with --quick)")


def _end_id(tok) -> int:
    ids = tok.encode(END_TEXT)
    if not ids:
        raise ValueError(f"the tokenizer encodes {END_TEXT!r} to nothing")
    return ids[-1]  # '>' (or the merged marker): no CoT column contains it


def _choose_sigma(warm, tok, val, cfg, end_id: int) -> tuple[float, dict]:
    """Returns (sigma, {relative sigma: (soft, fuzzy) validation accuracy}) by the header's rule (no RL, no test
    data)."""
    import jax
    import numpy as np

    from tokjax.decoding import generate
    from tokjax.decoding.soft_tokens import soft_tokens
    from tokjax.logits import greedy
    from tokjax.train.rl_tasks import check_arithmetic_cot as check
    from tokjax.train.rl_tasks import evaluate_greedy

    ex = val[:SIGMA_PROMPTS]
    rms = float(np.sqrt(np.mean(np.asarray(warm.params["embed"], np.float64) ** 2)))
    base = evaluate_greedy(warm, tok, ex, max_new_tokens=cfg.max_new_tokens)["accuracy"]
    prompts = [tok.encode(e.prompt, add_bos=True) for e in ex]
    probe, chosen = {}, SIGMA_GRID[0]
    for rel in SIGMA_GRID:
        accs = []
        for tau in (TAUS["soft"], TAUS["fuzzy"]):
            out = generate(warm, prompts, key=jax.random.key(777), max_new_tokens=cfg.max_new_tokens, logits=greedy(),
                           eos_id=tok.eos_id, strategy=soft_tokens(end_id, tau=tau, sigma=rel * rms))
            ok = [c[-1:].tolist() == [tok.eos_id] and check(tok.decode(c[:-1].tolist()), e.answer)[0]
                  for c, e in zip(out.completions(), ex)]
            accs.append(float(np.mean(ok)))
        probe[rel] = tuple(accs)
        if min(accs) >= base - SIGMA_DROP:
            chosen = rel
    probe["hard greedy"] = base
    return chosen * rms, {**probe, "chosen": chosen}


def _train(arm: str, seed: int, steps: int, every: int, sigma: float, end_id: int, examples) -> dict:
    """Returns {"reward", "curve", "params", "seconds", "log"} of one RLOO run (``arm`` in ARMS) from the warm start,
    through ``tokjax.train.rl.rl_train``: hard rollouts with the GRPO loss (one update per batch: the RLOO policy
    gradient); soft / fuzzy rollouts drawn by the SoftTokens strategy with the registered ``soft_tokens`` loss and
    its log-likelihood for ``old_logp``."""
    import dataclasses as dc

    import numpy as np

    from tokjax.decoding.soft_tokens import rollout_arrays, soft_tokens
    from tokjax.losses.soft_tokens import make_soft_tokens_loss, soft_token_logp
    from tokjax.train.rl import rl_train
    from tokjax.train.rl_tasks import ArithmeticCoTTask, evaluate_greedy

    model, tok, _, _ = setup()
    task = ArithmeticCoTTask(tok, "train", prompt_seed=seed)
    cfg = dc.replace(rl_config(steps, seed, LR, "valid"), scale="none", rloo=True)
    curve, cot = [], []

    def callback(step, policy, row):
        if (step + 1) % every == 0 or step + 1 == steps:
            ev = evaluate_greedy(policy, tok, examples, max_new_tokens=cfg.max_new_tokens)
            curve.append({"step": step + 1, "accuracy": ev["accuracy"], "format_ok": ev["format_ok"]})

    if arm == "hard":
        trained, hist = rl_train(model, task, cfg, eos_id=tok.eos_id, callback=callback)
    else:
        tau = TAUS[arm]

        def arrays(out, width):
            cot.append(float(np.mean(out.stats["cot_tokens"])))
            got = rollout_arrays(out, width)
            return {**{k: v for k, v in got.items() if k not in ("tokens", "prompt_lengths", "lengths", "loglik")},
                    "tau": np.float32(tau), "sigma": np.float32(sigma)}

        trained, hist = rl_train(model, task, cfg, strategy=soft_tokens(end_id, tau=tau, sigma=sigma), arrays=arrays,
                                 loss=make_soft_tokens_loss(), logp=lambda p, c, b: soft_token_logp(p, c, b).logp,
                                 eos_id=tok.eos_id, callback=callback)
    log = [{"reward": h["reward"], "format_ok": h["format_ok"], "cot_tokens": cot[i] if cot else 0.0,
            "soft_fraction": h.get("soft_fraction", 0.0), "grad_norm": h["grad_norm"]} for i, h in enumerate(hist)]
    return {"reward": [h["reward"] for h in hist], "curve": curve, "params": trained.params,
            "seconds": sum(h["seconds"] for h in hist), "log": log}


def _pass_at_k(n: int, c, k: int):
    """Returns the unbiased pass@k estimate 1 - C(n - c, k) / C(n, k) per problem (c correct of n samples)."""
    import numpy as np

    c = np.asarray(c)
    out = np.ones(len(c))
    for i, ci in enumerate(c):
        if n - ci >= k:
            out[i] = 1.0 - np.prod(1.0 - k / np.arange(n - ci + 1, n + 1))
    return out


def _sampled(params, mcfg, tok, task, examples, n: int, seed: int, cfg):
    """Returns per-problem correct counts [N] of n T=1 hard samples (the same key for every arm of a seed),
    scored by ``task.reward``."""
    import jax
    import numpy as np

    from tokjax.model import Model
    from tokjax.train.rl import rollout

    counts = []
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        prompts = [tok.encode(e.prompt, add_bos=True) for e in chunk]
        r = rollout(Model(params=params, cfg=mcfg), prompts, [e.answer for e in chunk],
                    key=jax.random.fold_in(jax.random.key(5000 + seed), i), group_size=n,
                    max_new_tokens=cfg.max_new_tokens, eos_id=tok.eos_id)
        ok, _ = task.reward(r.completions, r.answers)
        counts.extend(np.asarray(ok).reshape(len(chunk), n).sum(1).tolist())
    return np.asarray(counts)


def run(quick: bool) -> list[Row]:
    import numpy as np

    from tokjax.train.rl_tasks import ArithmeticCoTTask, evaluate_greedy

    steps, every = (QUICK_STEPS, QUICK_EVAL_EVERY) if quick else (STEPS, EVAL_EVERY)
    n_samples, k, n_pass = (QUICK_N_SAMPLES, QUICK_K_PASS, QUICK_N_PASS) if quick else (N_SAMPLES, K_PASS, N_PASS)
    seeds = RULE_PASS1.run_seeds(quick)
    warm, tok, test, val = setup()
    scorer = ArithmeticCoTTask(tok, "test")
    cfg = rl_config(1, 0, LR, "valid")
    end_id = _end_id(tok)
    sigma, probe = _choose_sigma(warm, tok, val, cfg, end_id)
    start = evaluate_greedy(warm, tok, test, max_new_tokens=cfg.max_new_tokens)["accuracy"]
    start_c = _sampled(warm.params, warm.cfg, tok, scorer, test[:n_pass], n_samples, 0, cfg)

    runs = {a: [] for a in ARMS}
    counts = {a: [] for a in ARMS + ("grpo",)}
    for s in seeds:
        for a in ARMS:
            out = _train(a, s, steps, every, sigma, end_id, test)
            runs[a].append(out)
            counts[a].append(_sampled(out["params"], warm.cfg, tok, scorer, test[:n_pass], n_samples, s, cfg))
    base = [grpo_run(s, steps, every) for s in seeds]
    for s, b in zip(seeds, base):
        counts["grpo"].append(_sampled(b["params"], warm.cfg, tok, scorer, test[:n_pass], n_samples, s, cfg))

    acc = {a: [r["curve"][-1]["accuracy"] for r in runs[a]] for a in ARMS}
    pk = {a: [float(_pass_at_k(n_samples, c, k).mean()) for c in counts[a]] for a in counts}
    p1s = {a: [float(np.mean(c) / n_samples) for c in counts[a]] for a in counts}
    std = float(np.std(acc["hard"], ddof=1)) if len(seeds) > 1 else 0.0
    margin = max(2 * std, MARGIN_FLOOR)
    learned = float(np.mean(acc["hard"])) - start > margin
    g_acc = [b["curve"][-1]["accuracy"] for b in base]

    figure = plot_reward_curves(37, {a: runs[a] for a in ARMS}, start, quick=quick,
                                title=f"P37 tiny arithmetic CoT, RLOO, {len(seeds)} seed(s)")
    rng = np.random.default_rng(0)

    def ci(a):
        d = np.concatenate([_pass_at_k(n_samples, ca, k) - _pass_at_k(n_samples, ch, k)
                            for ca, ch in zip(counts[a], counts["hard"])])
        boot = [np.mean(d[idx]) for idx in rng.integers(0, len(d), (2000, len(d)))]
        return f"[{np.percentile(boot, 2.5):+.3f}, {np.percentile(boot, 97.5):+.3f}]"

    last = lambda a, key: np.mean([l[key] for r in runs[a] for l in r["log"][-10:]])  # noqa: E731,E741
    arms_note = "; ".join(
        f"{a}: greedy {mean_sd(acc[a])} ({per_seed(acc[a])}), pass@1 sampled {per_seed(p1s[a])}, pass@{k} "
        f"{per_seed(pk[a])}, last-10-step reward {last(a, 'reward'):.3f}, rollout format_ok "
        f"{last(a, 'format_ok'):.3f}, "
        f"CoT steps {last(a, 'cot_tokens'):.1f}, soft slots {last(a, 'soft_fraction'):.2f}, "
        f"{np.mean([r['seconds'] for r in runs[a]]):.0f} s" for a in ARMS)
    note = (f"warm start greedy {start:.3f}, pass@{k} {_pass_at_k(n_samples, start_c, k).mean():.3f}; {arms_note}; "
            f"cached GRPO (group-std advantages, context only): greedy {per_seed(g_acc)}, pass@{k} "
            f"{per_seed(pk['grpo'])}; "
            f"margin {margin:.3f} (2 x hard seed std {std:.3f}, floor {MARGIN_FLOOR}); hard RL learned: {learned}; "
            f"pass@{k} minus hard, paired bootstrap 95% CI over problems: soft {ci('soft')}, fuzzy {ci('fuzzy')}; "
            f"sigma {sigma:.4f} ({probe['chosen']} x embedding RMS; validation probe, soft/fuzzy accuracy per relative "
            f"sigma: {probe}), CoT end = readout {END_TEXT!r} (id {end_id}); "
            f"pass@k from {n_samples} samples on the first {n_pass} test problems")
    setting = (f"tiny-arithmetic-cot warm start (115k params; SmolLM2-135M has no word-problem level in 20-70%), "
               f"{steps} RLOO steps x {PROMPTS} prompts x G={G}, T=1, Adam lr {LR:g} (tuned on GRPO), one update per "
               f"batch; soft tau 0.5 / fuzzy tau 1e-4, sigma {sigma:.4f} (chosen on validation); hard decoding at "
               f"evaluation; "
               f"{len(seeds)} seed(s)")
    rows = []
    for a in ("soft", "fuzzy"):
        v1 = dataclasses.replace(RULE_PASS1, threshold=-margin).verdict(acc[a], acc["hard"], seeds=seeds)
        if not learned:
            v1 = dataclasses.replace(v1, status="inconclusive")
        vk = RULE_PASSK.verdict(pk[a], pk["hard"], seeds=seeds)
        rows += [
            Row(pid="P37", claim_id=f"pass1-{a}", claim=f"{a}-token CoT RL matches hard-token CoT RL at pass@1",
                setting=setting, baseline_name="hard CoT RLOO", baseline_value=round(float(np.mean(acc["hard"])), 3),
                method_value=round(float(np.mean(acc[a])), 3),
                metric=f"greedy accuracy on 500 held-out problems (higher is better; non-inferior within {margin:.3f})",
                verdict=v1, figure=figure, note=note),
            Row(pid="P37", claim_id=f"passk-{a}", claim=f"{a}-token CoT RL beats hard-token CoT RL at pass@{k}",
                setting=setting, baseline_name="hard CoT RLOO", baseline_value=round(float(np.mean(pk["hard"])), 3),
                method_value=round(float(np.mean(pk[a])), 3),
                metric=f"pass@{k} of {n_samples} T=1 hard samples on {n_pass} held-out problems (higher is better)",
                verdict=vk, figure=figure, note=note),
        ]
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
