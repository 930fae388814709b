"""P47 LaSeR: GRPO plus a last-token self-reward keeps accuracy and gives a self-verification score for free.

Paper claims (Zhang et al., "LaSeR: Reinforcement Learning with Last-Token Self-Rewarding"; code RUCBM/LaSeR):
training the policy's log-prob of a fixed token z_c appended after the eos to match the verifier reward
(r_s = beta_v (tau log pi(z_c | x, y) - c_ref), aux loss lam * mean (r_s - r_v)^2, advantages
0.9 A_v + 0.1 A_self) keeps (or improves) GRPO's reasoning accuracy, while r_s becomes a strong
self-verification score (high F1 at predicting correctness) that also improves weighted majority voting.

Deviation (decided before any run): issue 21 puts P47 on the SmolLM2-135M word-problem rung, but no
word-problem level of SmolLM2-135M-Instruct lies in the 20-70% band, so this runs on the tiny rung
(``experiments._tiny_rl``), as P56 / P69:

* Warm start ``tokjax.pretrained("tiny-arithmetic-cot")`` (115k params, addition with chain of thought,
  held-out test greedy accuracy 50.4%); task :class:`tokjax.train.rl_tasks.ArithmeticCoTTask`, reward 1 for
  a well-formed chain with the right answer. RL through :func:`tokjax.train.rl.rl_train`: 4 prompts x G = 8
  at T = 1, DAPO clip, no KL, Adam lr ``LR`` = 3e-5 (tuned once on GRPO, validation split; see
  ``experiments/p56_d3s.py``). Plain GRPO runs are the cached ``experiments._tiny_rl.grpo_run`` runs.
* LaSeR (:class:`tokjax.losses.laser.LaSeR` via the ``prepare`` / ``shape`` / ``aux`` plug points):
  z_c = ``"?"`` (a byte the SFT data never contains; not eos), beta_v = lam = alpha = 0.1, tau = 1 (tokjax's
  RL loss scores the untempered policy), class-balanced MSE, A_self group-std filter 0.1 (all the released
  scripts' values); c_ref = the warm start's mean log pi_0(z_c | x, y) over ``C_REF_PROMPTS`` validation prompts
  x 8 samples (so r_s starts near 0). Not reproduced: the released warm-ups (aux from step 200, mixing from
  step 400 of their run), which a 300-step run cannot hold.
* Held-out self-verification: after RL, 8 samples at T = 1 for each of the first ``N_HELD`` test problems
  from the LaSeR policy, each scored by r_s (one forward with z_c appended) and by the verifier.

Verdicts (declared before anything runs):

* ``accuracy`` (``RULE``, non-inferiority): per seed, LaSeR's final greedy test accuracy - GRPO's >
  -margin, margin = max(2 x GRPO seed std (ddof 1), ``MARGIN_FLOOR`` = 0.02). Inconclusive when GRPO's
  mean does not beat the warm start by the margin.
* ``self-reward-f1`` (``RULE_F1``): per seed, the F1 of "r_s > 0.5 predicts correct" (the released
  evaluation's threshold) on the held-out samples - the F1 of the constant "always correct" predictor
  (2p / (1 + p); the majority predictor is never better when p < 0.5, its F1 is 0) > ``F1_MARGIN`` = 0.02.
* ``weighted-vote`` (``RULE_VOTE``): per seed, the accuracy of the r_s-weighted vote over the 8 samples
  (weights clip(r_s, 0, 1)) - plain majority vote's accuracy, on the same samples > 0 (at least one more
  problem right); the paired bootstrap 95% CI (2000 resamples of problems) is in the note.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p47_laser.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._tiny_rl import (  # noqa: E402
    G, LR, PROMPTS, grpo_run, mean_sd, per_seed, plot_reward_curves, rl_config, run_arm, setup,
)

STEPS, QUICK_STEPS = 300, 40
EVAL_EVERY, QUICK_EVAL_EVERY = 25, 10
MARGIN_FLOOR, F1_MARGIN = 0.02, 0.02
N_HELD, QUICK_N_HELD = 200, 100
N_VOTE = 8
C_REF_PROMPTS = 64
Z_C_TEXT = "?"
LASER = {"beta_v": 0.1, "lam": 0.1, "alpha": 0.1, "temperature": 1.0, "balanced": True, "filter_std": 0.1}

RULE = Rule(metric="greedy test accuracy after RL", higher_is_better=True, threshold=-MARGIN_FLOOR,
            seeds=(0, 1, 2), quick_seeds=(0,),
            reported="LaSeR (released hyperparameters) vs GRPO; non-inferiority margin max(2 x GRPO seed std, 0.02)")
RULE_F1 = Rule(metric="F1 of r_s > 0.5 predicting correctness (held-out samples)", higher_is_better=True,
               threshold=F1_MARGIN, seeds=(0, 1, 2), quick_seeds=(0,),
               reported="LaSeR's r_s vs the constant 'always correct' predictor on the same samples")
RULE_VOTE = Rule(metric=f"accuracy of the vote over {N_VOTE} samples", higher_is_better=True, threshold=0.0,
                 seeds=(0, 1, 2), quick_seeds=(0,),
                 reported="r_s-weighted vote vs plain majority vote, same LaSeR samples")


def _z_c(tok) -> int:
    ids = [i for i in range(tok.vocab_size) if tok.decode([i]) == Z_C_TEXT]
    if len(ids) != 1:
        raise ValueError(f"the tokenizer has no single token for {Z_C_TEXT!r}")
    return ids[0]


def _sample(model, tok, examples, key, max_new_tokens: int, width: int):
    """Returns the Rollouts of N_VOTE T=1 samples per example (rewards scored, answers parsed)."""
    import numpy as np

    from tokjax.train.rl import rollout
    from tokjax.train.rl_tasks import COT_PATTERN, check_arithmetic_cot

    prompts = [tok.encode(e.prompt, add_bos=True) for e in examples]
    r = rollout(model, prompts, [e.answer for e in examples], key=key, group_size=N_VOTE,
                max_new_tokens=max_new_tokens, eos_id=tok.eos_id, width=width)
    correct, parsed = [], []
    for c, a in zip(r.completions, r.answers):
        ids = c.tolist()
        if tok.eos_id not in ids:
            correct.append(False)
            parsed.append(None)
            continue
        text = tok.decode(ids[:ids.index(tok.eos_id)])
        ok, _ = check_arithmetic_cot(text, a)
        m = COT_PATTERN.fullmatch(text)
        correct.append(ok)
        parsed.append(int(m.group(1)) if m else None)
    r.rewards = np.asarray(correct, np.float32)
    r.parsed = parsed
    return r


def _self_rewards(params, cfg, r, z_c, c_ref):
    import numpy as np

    from tokjax.losses.laser import self_reward, z_c_logp
    from tokjax.train.rl import rollout_batch

    lp, ok = z_c_logp(params, cfg, rollout_batch(r), z_c, valid=~r.truncated)
    rs = self_reward(lp, c_ref=c_ref, beta_v=LASER["beta_v"], temperature=LASER["temperature"])
    return np.where(np.asarray(ok), np.asarray(rs), 0.0), np.asarray(ok)  # an unfinished sample scores 0


def _c_ref(model, tok, val, z_c, cfg) -> float:
    import jax

    from tokjax.losses.laser import reference_constant, z_c_logp
    from tokjax.train.rl import rollout_batch

    r = _sample(model, tok, val[:C_REF_PROMPTS], jax.random.key(12345), cfg.max_new_tokens,
                cfg.max_prompt_len + cfg.max_new_tokens)
    lp, ok = z_c_logp(model.params, model.cfg, rollout_batch(r), z_c, valid=~r.truncated)
    return reference_constant(lp, ok, temperature=LASER["temperature"])


def _held_out(params, model_cfg, tok, examples, z_c, c_ref, cfg, seed):
    """Returns F1 / vote statistics of one trained policy on N_VOTE samples per held-out example."""
    import jax
    import numpy as np

    from tokjax.losses.laser import self_verification_f1, weighted_vote
    from tokjax.model import Model

    r = _sample(Model(params, model_cfg), tok, examples, jax.random.key(1000 + seed), cfg.max_new_tokens,
                cfg.max_prompt_len + cfg.max_new_tokens)
    rs, ok = _self_rewards(params, model_cfg, r, z_c, c_ref)
    y = r.rewards > 0.5
    f1 = self_verification_f1(rs, y)
    n = len(examples)
    maj, wv = np.zeros(n), np.zeros(n)
    for i, e in enumerate(examples):
        sl = slice(i * N_VOTE, (i + 1) * N_VOTE)
        maj[i] = weighted_vote(r.parsed[sl]) == int(e.answer)
        wv[i] = weighted_vote(r.parsed[sl], rs[sl]) == int(e.answer)
    rng = np.random.default_rng(seed)
    boot = [np.mean((wv - maj)[idx]) for idx in rng.integers(0, n, (2000, n))]
    bins = np.digitize(rs, [0.25, 0.5, 0.75])
    calib = [(int(np.sum(bins == b)), float(np.mean(rs[bins == b])) if np.any(bins == b) else float("nan"),
              float(np.mean(y[bins == b])) if np.any(bins == b) else float("nan")) for b in range(4)]
    return {"f1": f1, "majority": float(maj.mean()), "weighted": float(wv.mean()),
            "ci": (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))),
            "sample_acc": float(y.mean()), "finished": float(ok.mean()), "calib": calib,
            "r_s_right": float(rs[y].mean()) if y.any() else float("nan"),
            "r_s_wrong": float(rs[~y].mean()) if (~y).any() else float("nan")}


def run(quick: bool) -> list[Row]:
    import numpy as np

    from tokjax.losses.laser import LaSeR
    from tokjax.train.rl_tasks import evaluate_greedy

    steps, every = (QUICK_STEPS, QUICK_EVAL_EVERY) if quick else (STEPS, EVAL_EVERY)
    n_held = QUICK_N_HELD if quick else N_HELD
    seeds = RULE.run_seeds(quick)
    warm, tok, test, val = setup()
    cfg = rl_config(1, 0, LR, "valid")
    z_c = _z_c(tok)
    start = evaluate_greedy(warm, tok, test, max_new_tokens=cfg.max_new_tokens)["accuracy"]
    c_ref = _c_ref(warm, tok, val, z_c, cfg)
    laser = LaSeR(z_c, tok.eos_id, c_ref, vocab_size=warm.cfg.vocab_size, **LASER)

    base = [grpo_run(s, steps, every) for s in seeds]
    meth, held, logs = [], [], []
    for s in seeds:
        log = []
        out = run_arm("laser", s, steps, every, LR, test, prepare=laser.prepare, shape=laser.shape, aux=laser.aux,
                      callback=lambda step, m, row, log=log: log.append(
                          {k: row[k] for k in ("laser_mse", "laser_acc", "laser_r_s", "grpo_loss")}))
        meth.append(out)
        logs.append(log)
        held.append(_held_out(out["params"], warm.cfg, tok, test[:n_held], z_c, c_ref, cfg, s))

    b_acc = [r["curve"][-1]["accuracy"] for r in base]
    m_acc = [r["curve"][-1]["accuracy"] for r in meth]
    std = float(np.std(b_acc, ddof=1)) if len(b_acc) > 1 else 0.0
    margin = max(2 * std, MARGIN_FLOOR)
    acc_v = dataclasses.replace(RULE, threshold=-margin).verdict(m_acc, b_acc, seeds=seeds)
    learned = float(np.mean(b_acc)) - start > margin
    if not learned:
        acc_v = dataclasses.replace(acc_v, status="inconclusive")
    f1 = [h["f1"]["f1"] for h in held]
    f1c = [h["f1"]["f1_constant"] for h in held]
    f1_v = RULE_F1.verdict(f1, f1c, seeds=seeds)
    if any(h["f1"]["positive_rate"] in (0.0, 1.0) for h in held):
        f1_v = dataclasses.replace(f1_v, status="inconclusive")
    wv, maj = [h["weighted"] for h in held], [h["majority"] for h in held]
    vote_v = RULE_VOTE.verdict(wv, maj, seeds=seeds)

    figure = plot_reward_curves(47, {"GRPO": base, "LaSeR": meth}, start, quick=quick,
                                title=f"P47 tiny arithmetic CoT, {len(seeds)} seed(s)")
    ms, per = mean_sd, per_seed
    first = lambda k: np.mean([l[k] for lg in logs for l in lg[:10]])  # noqa: E731,E741
    last = lambda k: np.mean([l[k] for lg in logs for l in lg[-10:]])  # noqa: E731,E741
    h0 = held[0]
    calib = "; ".join(f"r_s bin {lo}: n={n}, mean r_s {m:.2f}, correct {c:.2f}" for lo, (n, m, c) in
                      zip(("<0.25", "0.25-0.5", "0.5-0.75", ">=0.75"), h0["calib"]))
    cis = ", ".join("[{:+.3f}, {:+.3f}]".format(*h["ci"]) for h in held)
    note = (f"warm start greedy test accuracy {start:.3f}; GRPO {ms(b_acc)} (per seed {per(b_acc)}), LaSeR "
            f"{ms(m_acc)} ({per(m_acc)}); margin {margin:.3f} (2 x GRPO seed std {std:.3f}, floor {MARGIN_FLOOR}); "
            f"RL learned: {learned}; z_c = {Z_C_TEXT!r} (id {z_c}), c_ref = {c_ref:.2f} (warm start mean log pi(z_c), "
            f"{C_REF_PROMPTS} validation prompts x 8); training batches: aux MSE (r_s - r_v)^2 first/last 10 steps "
            f"{first('laser_mse'):.3f}/{last('laser_mse'):.3f}, r_s > 0.5 accuracy {first('laser_acc'):.3f}/"
            f"{last('laser_acc'):.3f}, mean r_s {first('laser_r_s'):.3f}/{last('laser_r_s'):.3f}; held-out "
            f"({n_held} test problems x {N_VOTE} samples, T=1): sample accuracy "
            f"{per([h['sample_acc'] for h in held])}, "
            f"finished {per([h['finished'] for h in held])}, F1 {per(f1)} vs constant {per(f1c)} (precision "
            f"{per([h['f1']['precision'] for h in held])}, recall {per([h['f1']['recall'] for h in held])}), "
            f"mean r_s right/wrong seed {seeds[0]} {h0['r_s_right']:.3f}/{h0['r_s_wrong']:.3f}; calibration seed "
            f"{seeds[0]}: {calib}; weighted vote {per(wv)} vs majority {per(maj)}, paired bootstrap 95% CI of the "
            f"difference {cis}; sampled reward "
            f"last 10 steps GRPO {np.mean([r['reward'][-10:] for r in base]):.3f}, LaSeR "
            f"{np.mean([r['reward'][-10:] for r in meth]):.3f}; LaSeR run "
            f"{np.mean([r['seconds'] for r in meth]):.0f} s "
            f"vs GRPO {np.mean([r['seconds'] for r in base]):.0f} s (cached GRPO reports its first run's time)")
    setting = (f"tiny-arithmetic-cot warm start (115k params; SmolLM2-135M has no word-problem level in 20-70%), "
               f"{steps} RL steps x {PROMPTS} prompts x G={G}, T=1, Adam lr {LR:g} (tuned on GRPO), DAPO clip, no KL; "
               f"LaSeR beta_v = lam = alpha = 0.1, balanced MSE, filter 0.1, no warm-ups; {len(seeds)} seed(s)")
    return [
        Row(pid="P47", claim_id="accuracy",
            claim="LaSeR's self-reward training keeps GRPO's reasoning accuracy",
            setting=setting, baseline_name="GRPO", baseline_value=round(float(np.mean(b_acc)), 3),
            method_value=round(float(np.mean(m_acc)), 3),
            metric=f"greedy accuracy on 500 held-out problems after RL (higher is better; non-inferior within "
                   f"{margin:.3f})", verdict=acc_v, figure=figure, note=note),
        Row(pid="P47", claim_id="self-reward-f1",
            claim="the last-token self-reward r_s predicts the verifier's verdict (self-verification F1)",
            setting=setting, baseline_name="constant 'always correct' predictor",
            baseline_value=round(float(np.mean(f1c)), 3), method_value=round(float(np.mean(f1)), 3),
            metric=f"F1 of r_s > 0.5 for correctness on {n_held} x {N_VOTE} held-out samples (higher is better; "
                   f"reproduced above +{F1_MARGIN})", verdict=f1_v, figure=figure, note=note),
        Row(pid="P47", claim_id="weighted-vote",
            claim="r_s-weighted majority voting beats plain majority voting",
            setting=setting, baseline_name=f"majority vote over {N_VOTE}", baseline_value=round(float(np.mean(maj)), 3),
            method_value=round(float(np.mean(wv)), 3),
            metric=f"accuracy of the vote over {N_VOTE} samples on {n_held} held-out problems (higher is better)",
            verdict=vote_v, figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
