"""The tiny RL rung of issue 21, shared by the tiny-rung RL experiments (P56, and P57 / P69 / P63 next).

Warm start ``tokjax.pretrained("tiny-arithmetic-cot")`` (addition with chain of thought, snapshot chosen
on validation at 20-70% greedy accuracy), task :class:`tokjax.train.rl_tasks.ArithmeticCoTTask`, RL
through :func:`tokjax.train.rl.rl_train`: ``PROMPTS`` prompts x G = ``G`` rollouts at T = ``TEMPERATURE``,
DAPO clip, no KL, Adam at ``LR`` (tuned once on plain GRPO with :func:`tune_lr`, validation split).
:func:`run_arm` runs one arm (plain GRPO or a method given as rl_train plug-ins) with a held-out
greedy evaluation every ``eval_every`` steps and the cumulative trained (kept) completion tokens;
:func:`grpo_run` caches plain GRPO per seed on disk, so every method compares against the same runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from experiments._common import cached, load_tree, save_tree

__all__ = ["G", "LR", "PROMPTS", "TEMPERATURE", "WARM", "grpo_run", "mean_sd", "per_seed", "plot_reward_curves",
           "rl_config", "run_arm", "setup", "tokens_to_reach", "tune_lr"]

WARM = "tiny-arithmetic-cot"
LR = 3e-5  # tune_lr: GRPO, seed 99, 60 steps; validation accuracy 0.527/0.545/0.510/0.277/0.000 at 1e-5..1e-3
G, PROMPTS, TEMPERATURE = 8, 4, 1.0


def setup():
    """Returns (warm Model, tokenizer, test examples, validation examples)."""
    import tokjax
    from tokjax.train.rl_tasks import ArithmeticCoTTask

    model, tok = tokjax.pretrained(WARM, progress=False)
    test = ArithmeticCoTTask(tok, "test").examples
    val = ArithmeticCoTTask(tok, "validation").examples
    return model, tok, test, val


def rl_config(steps: int, seed: int, lr: float, denominator: str):
    from tokjax.train.rl import RLConfig
    from tokjax.train.rl_tasks import DATA, max_completion_tokens

    return RLConfig(steps=steps, prompts_per_step=PROMPTS, group_size=G, temperature=TEMPERATURE,
                    max_new_tokens=max_completion_tokens(DATA["digits"]), max_prompt_len=2 * DATA["digits"][1] + 4,
                    lr=lr, denominator=denominator, seed=seed)


def run_arm(arm: str, seed: int, steps: int, eval_every: int, lr: float, eval_examples, *,
            denominator: str = "valid", callback=None, **plugins) -> dict:
    """Returns {"reward": [steps], "kept_tokens": [steps], "curve": [{"step", "tokens", "accuracy", "format_ok"}],
    "params"} of one RL run from the warm start. ``arm`` names it ("grpo": no ``plugins``);
    ``plugins`` go to :func:`tokjax.train.rl.rl_train` (``select``, ``transforms``, ``shape``);
    ``callback(step, model, row)`` (a method's own, e.g. one that tracks the policy) runs first at every step."""
    import numpy as np

    from tokjax.train.rl import rl_train
    from tokjax.train.rl_tasks import ArithmeticCoTTask, evaluate_greedy

    model, tok, _, _ = setup()
    task = ArithmeticCoTTask(tok, "train", prompt_seed=seed)
    if arm == "grpo" and (plugins or denominator != "valid" or callback is not None):
        raise ValueError("the 'grpo' arm is plain GRPO: no plug-ins, valid-token denominator")
    cfg = rl_config(steps, seed, lr, denominator)
    total, curve = [0.0], []

    def on_step(step, m, row):
        if callback is not None:
            callback(step, m, row)
        total[0] += row["kept_fraction"] * row["token_count"]
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            r = evaluate_greedy(m, tok, eval_examples, max_new_tokens=cfg.max_new_tokens)
            curve.append({"step": step + 1, "tokens": total[0], "accuracy": r["accuracy"], "format_ok": r["format_ok"]})

    trained, hist = rl_train(model, task, cfg, eos_id=tok.eos_id, callback=on_step, **plugins)
    return {"reward": [h["reward"] for h in hist], "kept_tokens": [h["kept_fraction"] * h["token_count"] for h in hist],
            "format_ok": [h["format_ok"] for h in hist], "curve": curve,
            "seconds": float(np.sum([h["seconds"] for h in hist])), "params": trained.params}


def grpo_run(seed: int, steps: int, eval_every: int, lr: float = LR) -> dict:
    """Returns :func:`run_arm` of plain GRPO on the test split, cached on disk per seed (shared by the tiny-rung
    RL experiments; the key covers the warm start's config, the RL config and the evaluation schedule)."""
    from tokjax.model import param_shapes
    from tokjax.pretrained import pretrained_config

    model, _, test, _ = setup()
    rl = dataclasses.asdict(rl_config(steps, seed, lr, "valid"))
    key = json.dumps({"warm": pretrained_config(WARM).to_dict(), "rl": rl,
                      "eval_every": eval_every, "eval": "test", "n_eval": len(test), "version": 1}, sort_keys=True)
    name = f"rl-grpo-{WARM}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    meta, params = cached(name + ".json"), cached(name + ".npz")
    if meta.is_file() and params.is_file():
        out = json.loads(meta.read_text())
        out["params"] = load_tree(params, param_shapes(model.cfg))
        return out
    out = run_arm("grpo", seed, steps, eval_every, lr, test)
    save_tree(params, out["params"])
    meta.write_text(json.dumps({k: v for k, v in out.items() if k != "params"}))
    return out


def tune_lr(lrs=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3), steps: int = 60, seed: int = 99) -> dict:
    """Returns {lr: validation greedy accuracy} of GRPO after ``steps`` steps on ``seed`` (the header's lr probe)."""
    _, _, _, val = setup()
    out = {}
    for lr in lrs:
        out[lr] = run_arm("grpo", seed, steps, steps, lr, val)["curve"][-1]["accuracy"]
        print(f"lr {lr:g}: validation greedy accuracy {out[lr]:.3f}", flush=True)
    return out


def tokens_to_reach(curve, target: float, baseline_tokens: float) -> float:
    """Returns the trained tokens at the first evaluation with accuracy >= target, / baseline_tokens;
    1 + the final shortfall when never reached."""
    for c in curve:
        if c["accuracy"] >= target - 1e-12:
            return c["tokens"] / baseline_tokens
    return 1.0 + (target - curve[-1]["accuracy"])


def mean_sd(v) -> str:
    """Returns "mean+-sd" (sd with ddof 1; 0 for one value) of per-seed values, 3 decimals."""
    import numpy as np

    v = np.asarray(v, float)
    return f"{v.mean():.3f}+-{v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def per_seed(v) -> str:
    """Returns the per-seed values joined by '/', 3 decimals."""
    return "/".join(f"{x:.3f}" for x in v)


def plot_reward_curves(pid: int, arms: dict, start: float, *, quick: bool, title: str, x: str = "step") -> str:
    """Saves the tiny-rung figure of ``arms`` ({name: [run_arm outputs, one per seed]}) and returns its path:
    the seed-mean sampled reward per step (smoothed) and every seed's greedy test accuracy against ``x``
    ("step", or "tokens": cumulative trained tokens), from the warm start's accuracy ``start``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from experiments._harness import figure_path

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    w = 5 if quick else 15
    for c, (name, runs) in enumerate(arms.items()):
        sm = np.convolve(np.mean([r["reward"] for r in runs], 0), np.ones(w) / w, mode="valid")
        ax.plot(np.arange(len(sm)) + w, sm, color=f"C{c}", label=name)
        for i, r in enumerate(runs):
            ax2.plot([0] + [p[x] for p in r["curve"]], [start] + [p["accuracy"] for p in r["curve"]],
                     color=f"C{c}", alpha=0.8, label=name if i == 0 else None)
    ax.set_xlabel(f"RL step ({PROMPTS} prompts x G={G})")
    ax.set_ylabel(f"sampled reward ({w}-step mean)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax2.axhline(start, color="grey", ls=":", lw=1, label="warm start")
    ax2.set_xlabel("trained completion tokens" if x == "tokens" else "RL step")
    ax2.set_ylabel("greedy test accuracy")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    figure = str(figure_path(pid, "reward_curves.png"))
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    return figure
