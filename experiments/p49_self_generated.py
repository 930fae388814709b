"""P49 self-generated tokens: batch-scheduled sampling (BASH) vs teacher forcing under free-running decoding.

Paper claim (Cen et al., TMLR 2025, arXiv 2410.14655): training on contexts in which some
ground-truth tokens are replaced by the model's own (teacher-forced, no-gradient) predictions,
with a replacement probability scheduled over batches, narrows the training-inference gap
(exposure bias) and improves free-running generation over plain teacher forcing.

The first version of this check (copy 20 letters) could not decide: both methods copied
perfectly, there was no exposure bias to reduce. This version uses a task on which teacher
forcing demonstrably fails when the model runs on its own outputs:

* Running sum mod 10: prompt ``x_1 .. x_N SEP`` (N = 20 random digits), completion
  ``y_1 .. y_N`` with y_t = (x_1 + ... + x_t) mod 10. Under teacher forcing the cheapest rule is
  local, y_t = y_{t-1} + x_t, read off the ground-truth previous answer; in free-running one wrong
  y shifts every later one, so a per-token error compounds. The paper's fix applies directly:
  BASH shows the model its own (possibly wrong) y_{t-1} and still scores the true y_t, so it is
  pushed to rules that recover (e.g. y_{t-2} + x_{t-1} + x_t) instead of propagating the error.
* A tiny tokjax transformer (d=48, 2 layers), the same batches, steps and seed for both methods:
  teacher forcing (plain next-token loss) and BASH (:func:`scheduled_sampling_loss`), replacement
  probability ramping linearly from 0 (first third of training) to 0.3, greedy self-generated
  tokens (the schedule and the greedy choice are our reading; the paper body is unavailable).
  The step budget (``STEPS``) was fixed before the evaluation runs from a probe of teacher forcing
  alone on seed 99 (not an evaluation seed) on 300 probe prompts: at 400 steps its teacher-forced
  token accuracy was 0.92 and its free-running one 0.63 (300 steps: 0.57 / 0.19), i.e. high but
  not perfect, so errors exist to compound.
* Evaluation on 1000 held-out prompts: greedy free-running token accuracy of the completion (the
  metric), exact match, and the teacher-forced token accuracy; the difference between the
  teacher-forced and the free-running accuracy of one model is its exposure-bias gap.

Verdicts (declared before anything runs):

* ``free-running`` (``RULE``): BASH's free-running token accuracy minus teacher forcing's must
  exceed 0.01 on every seed for ``reproduced``, on none for ``not-reproduced``; otherwise
  ``inconclusive``. The comparison is only meaningful when the task exposes the bias:
  ``RULE_GAP`` (teacher forcing's own teacher-forced minus free-running accuracy > 0.05 on every
  seed) is checked first, and the row is ``inconclusive`` unless it holds.

What happened (full run, 3 seeds): inconclusive, because the task did not expose the bias on the
evaluation seeds. The running sum is learned abruptly: per-token accuracy sits near 0.5 (no local
rule; free-running equals teacher-forced, nothing compounds) and then jumps to 1.0 within ~100
steps. At 400 steps seeds 0 and 1 were still before the jump and seed 2 after it, for both
methods; the probe seed 99 happened to be caught mid-jump. A fixed step budget therefore cannot
give every seed a model that is good but imperfect. What would decide the claim: a task on which
teacher forcing keeps a per-token error rate at the end of training on every seed (teacher-forced
accuracy well below 1, free-running clearly below it), e.g. a capacity-limited model or a task
with a hard per-step rule, and recovery possible after an error; or the paper's setting
(fine-tuning a pretrained LLM on summarisation / QA, scored by free-running generation).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p49_self_generated.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import adam  # noqa: E402
from experiments._harness import Row, Rule, decode, figure_path, run_cli, train_model  # noqa: E402

RULE = Rule(metric="greedy free-running token accuracy of the running sum", higher_is_better=True, threshold=0.01,
            seeds=(0, 1, 2), quick_seeds=(0,), reported="BASH with max rho 0.3 (linear after the first third) and "
            "greedy self-generated tokens, fixed in advance")
RULE_GAP = Rule(metric="teacher-forced minus free-running token accuracy of teacher forcing", higher_is_better=True,
                threshold=0.05, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="does the task expose exposure bias at all (teacher forcing vs itself)")

N = 20  # digits per prompt
SEP = 10
VOCAB = 11
SEQ = 2 * N + 1
PROMPT = N + 1
STEPS, QUICK_STEPS = 400, 300  # from the seed-99 probe of teacher forcing (module docstring)
MAX_PROB, BATCH, LR = 0.3, 64, 3e-3


def make_data(n, seed):
    """Returns int32 [n, SEQ]: N random digits, SEP, their running sums mod 10."""
    import numpy as np

    x = np.random.default_rng(seed).integers(0, 10, size=(n, N))
    return np.concatenate([x, np.full((n, 1), SEP), np.cumsum(x, 1) % 10], 1).astype(np.int32)


def cfg_of():
    import tokjax

    return tokjax.ModelConfig(vocab_size=VOCAB, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)


def train_arm(method: str, seed: int, steps: int, train_x, callback=None):
    """Returns the Model trained by ``method`` ("teacher_forcing" or "bash") for ``steps`` on batches fixed by ``seed``."""
    import numpy as np

    from tokjax.losses import next_token_loss
    from tokjax.losses.self_generated import scheduled_probability, scheduled_sampling_loss

    pl = np.full((BATCH,), PROMPT, np.int32)

    def tf_loss(p, cfg, batch, rng):
        return next_token_loss(p, cfg, {"tokens": batch["tokens"], "prompt_lengths": batch["prompt_lengths"]}, None)

    def bash_loss(p, cfg, batch, rng):
        rho = scheduled_probability(batch["step"], max_prob=MAX_PROB, total_steps=steps, warmup_steps=steps // 3)
        return scheduled_sampling_loss(p, cfg, {"tokens": batch["tokens"], "prompt_lengths": batch["prompt_lengths"]},
                                       rng, prob=rho)

    def batch_fn(step):  # the same batches for both methods
        idx = np.random.default_rng((100 + seed, step)).integers(0, len(train_x), size=BATCH)
        return {"tokens": train_x[idx], "prompt_lengths": pl, "step": np.int32(step)}

    loss_fn = {"teacher_forcing": tf_loss, "bash": bash_loss}[method]
    model, _ = train_model(cfg_of(), steps=steps, batch_fn=batch_fn, loss_fn=loss_fn, seed=seed, callback=callback,
                           **adam(LR))
    return model


def evaluate(model, test_x):
    """Returns (teacher-forced token acc, free-running token acc, exact match, free-running acc per position [N])."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax

    @jax.jit
    def tf_hits(p, toks):
        logits = tokjax.forward(p, model.cfg, toks[:, :-1]).logits
        return jnp.argmax(logits[:, PROMPT - 1:], -1) == toks[:, PROMPT:]

    tf = float(np.mean(np.asarray(tf_hits(model.params, jnp.asarray(test_x)))))
    gen = np.stack(decode(model, test_x[:, :PROMPT], max_new_tokens=N).completions())
    hit = gen == test_x[:, PROMPT:]
    return tf, float(hit.mean()), float(hit.all(-1).mean()), hit.mean(0)


def run(quick: bool) -> list[Row]:
    import numpy as np

    seeds = RULE.run_seeds(quick)
    steps = QUICK_STEPS if quick else STEPS
    train_x, test_x = make_data(20000, 1), make_data(1000, 2)
    methods = ("teacher_forcing", "bash")
    res = {m: [] for m in methods}
    for seed in seeds:
        for m in methods:
            res[m].append(evaluate(train_arm(m, seed, steps, train_x), test_x))

    free = {m: [r[1] for r in res[m]] for m in methods}
    gap = RULE_GAP.verdict([r[0] for r in res["teacher_forcing"]], free["teacher_forcing"], seeds=seeds)
    verdict = RULE.verdict(free["bash"], free["teacher_forcing"], seeds=seeds)
    if gap.status != "reproduced":  # no exposure bias on some seed: nothing for BASH to reduce there
        verdict = dataclasses.replace(verdict, status="inconclusive")

    figure = None
    if not quick:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, label in (("teacher_forcing", "teacher forcing"), ("bash", "BASH")):
            ax.plot(np.arange(1, N + 1), np.mean([r[3] for r in res[m]], 0), marker="o", ms=3,
                    label=f"{label} free-running")
            ax.axhline(np.mean([r[0] for r in res[m]]), ls=":", lw=1,
                       color=ax.lines[-1].get_color(), label=f"{label} teacher-forced (mean)")
        ax.set_xlabel("completion position t")
        ax.set_ylabel("greedy token accuracy")
        ax.set_title(f"P49 running sum mod 10: free-running accuracy by position ({len(seeds)} seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figure = str(figure_path(49, "free_running_by_position.png"))
        fig.savefig(figure, dpi=120)
        plt.close(fig)

    def per_seed(vals):
        return "/".join(f"{v:.3f}" for v in vals)

    detail = "; ".join(
        f"{m}: teacher-forced acc {per_seed([r[0] for r in res[m]])}, free-running token acc "
        f"{per_seed([r[1] for r in res[m]])}, exact match {per_seed([r[2] for r in res[m]])} (per seed)" for m in methods)
    note = (f"{detail}. Exposure-bias gap of teacher forcing (teacher-forced minus free-running): "
            f"{per_seed(gap.diffs)} -> task exposes the bias: {gap.status}. {steps} Adam steps (lr {LR}), batch "
            f"{BATCH}, rho linear 0 -> {MAX_PROB} after the first third, greedy self-generated tokens (schedule and "
            f"greedy choice are our reading: paper body and code unavailable). RAC (reference-answer correction) is "
            f"implemented but not measured here."
            + (" What would decide the claim: a task on which teacher forcing keeps a per-token error rate at the "
               "end of training on every seed (teacher-forced accuracy below 1, free-running clearly below it) and "
               "recovery after an error is possible, or the paper's setting (fine-tuning a pretrained LLM, scored by "
               "free-running generation); a seed with no gap has either not found the running-sum rule yet (nothing "
               "to compound) or learned it perfectly." if gap.status != "reproduced" else
               " What would decide the claim: more seeds (or a longer budget) until the per-seed BASH - teacher "
               "forcing differences agree in sign." if verdict.status == "inconclusive" else ""))
    return [Row(
        pid="P49", claim_id="free-running",
        claim="batch-scheduled sampling with self-generated tokens reduces exposure bias: better free-running "
              "generation than teacher forcing",
        setting=f"running sum mod 10 ({N} digits, SEP, {N} sums), tiny tokjax transformer d=48 x2 layers, "
                f"{steps} steps, {len(seeds)} seeds, 1000 held-out prompts",
        baseline_name="teacher forcing",
        baseline_value=round(float(np.mean(free["teacher_forcing"])), 4),
        method_value=round(float(np.mean(free["bash"])), 4),
        metric="greedy free-running token accuracy of the running sum (higher is better)",
        verdict=verdict,
        figure=figure,
        note=note,
    )]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
