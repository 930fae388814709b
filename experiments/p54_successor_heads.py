"""P54 successor heads on SmolLM2-135M-Instruct: a head whose effective OV circuit increments ordinal tokens.

Paper claim (Gould, Ong, Ogden, Conmy, ICLR 2024): successor heads -- attention heads whose effective OV
circuit W_U W_OV MLP0(W_E) maps an ordinal token to its successor (Monday -> Tuesday, 3 -> 4, C -> D) --
exist in models from 31M to 12B parameters (GPT-2, Pythia, Llama-2), and they matter for incrementation.

Setting: ``tokjax.pretrained("smollm2-135m-instruct")`` (30 layers x 9 heads, 3 KV heads, tied embeddings,
RMSNorm pre-norm). Ordinal tasks, each a list of single SmolLM2 tokens: digits "0".."9" (no leading space:
SmolLM2 splits " 3" into two tokens), and with a leading space the number words one..ten, the days
Monday..Sunday, the months January..December and the capital letters A..Z. Successor score of head h on a
task = fraction of its tokens t (all but the last) whose largest effective-OV logit among the task's tokens is
succ(t) (:func:`tokjax.analysis.successor_heads.successor_scores`, effective embedding
``W_E + MLP0(norm(W_E))`` with layer-0 attention ignored, fixed in advance). Chance = 1/|task|.

Claims, rules declared below before anything runs (weights-only measures and deterministic forwards: one run):

* ``exists`` (``RULE_EXISTS``): the head with the best successor score averaged over the five tasks scores
  >= 0.5 and >= 3x the mean chance (baseline = max(0.5, 3 x mean chance); threshold 0).
* ``ablation`` (``RULE_ABLATION``): zero-ablating (through the forward's per-head ``attn_heads`` hook) the 3
  heads with the best mean successor score lowers next-item accuracy on in-context incrementation prompts
  ("List: Monday Tuesday Wednesday" -> " Thursday", every 3-item window of the word/day/month/letter tasks;
  the "List:" prefix because bare items make SmolLM2 predict punctuation) by more
  than 3 random heads do (mean over 20 draws, heads drawn from the other 267) by > 0.02.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p54_successor_heads.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_EXISTS = Rule(metric="best head's successor score, mean over 5 ordinal tasks", higher_is_better=True,
                   threshold=0.0, seeds=(0,),
                   reported="effective='mlp0' (W_E + MLP0(norm W_E)), head with the best mean score, fixed in advance")
RULE_ABLATION = Rule(metric="next-item accuracy drop when 3 heads are zero-ablated", higher_is_better=True,
                     threshold=0.02, seeds=(0,),
                     reported="top-3 heads by mean successor score vs 3 random other heads, mean of 20 draws")

MODEL = "smollm2-135m-instruct"
WORDS = {
    "number_words": "one two three four five six seven eight nine ten".split(),
    "days": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "months": "January February March April May June July August September October November December".split(),
    "letters": list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}
DRAWS = 20
PREFIX = "List:"  # without it the bare 3 items make SmolLM2 predict punctuation (next-item accuracy 0)


def task_sets(tok) -> dict[str, list[int]]:
    """Returns {task: [single token ids in order]}; raises if a word is not one token."""
    sets = {"digits": [str(i) for i in range(10)]}
    sets.update({k: [" " + w for w in ws] for k, ws in WORDS.items()})
    out = {}
    for k, ws in sets.items():
        ids = [tok.encode(w) for w in ws]
        bad = [w for w, i in zip(ws, ids) if len(i) != 1]
        if bad:
            raise ValueError(f"task {k}: {bad} are not single SmolLM2 tokens")
        out[k] = [i[0] for i in ids]
    return out


def run(quick: bool) -> list[Row]:
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.analysis.successor_heads import ablated_accuracy, successor_scores

    model, tok = tokjax.pretrained(MODEL)
    cfg = model.cfg
    sets = task_sets(tok)
    res = successor_scores(model.params, cfg, sets)
    mean = np.asarray(res["mean"])  # [L, H]
    L, H = mean.shape
    chance = float(np.mean(list(res["chance"].values())))
    flat = np.argsort(-mean.ravel())
    best = np.unravel_index(flat[0], mean.shape)
    per_task = {k: float(np.asarray(v)[best]) for k, v in res["scores"].items()}
    top3 = [tuple(int(a) for a in np.unravel_index(i, mean.shape)) for i in flat[:3]]
    best_score = float(mean[best])
    target = max(0.5, 3 * chance)

    # ablation on in-context incrementation prompts
    prompts, targets = [], []
    prefix = tok.encode(PREFIX)
    for k in WORDS:
        ids = sets[k]
        for i in range(len(ids) - 3):
            prompts.append(prefix + ids[i:i + 3])
            targets.append(ids[i + 3])
    P, Y = jnp.asarray(prompts), jnp.asarray(targets)
    base = float(ablated_accuracy(model, P, Y)["accuracy"])
    top_acc = float(ablated_accuracy(model, P, Y, heads=top3)["accuracy"])
    rng = np.random.default_rng(0)
    others = [(l, h) for l in range(L) for h in range(H) if (l, h) not in top3]
    draws = DRAWS if not quick else 10
    rand_drops = []
    for _ in range(draws):
        pick = [others[j] for j in rng.choice(len(others), 3, replace=False)]
        rand_drops.append(base - float(ablated_accuracy(model, P, Y, heads=pick)["accuracy"]))
    top_drop = base - top_acc
    rand_mean = float(np.mean(rand_drops))
    beaten = float(np.mean([top_drop > d for d in rand_drops]))

    setting = (f"SmolLM2-135M-Instruct ({L} layers x {H} heads), tasks {', '.join(f'{k} ({len(v)})' for k, v in sets.items())}"
               + (f"; --quick: {draws} random draws" if quick else ""))
    top_list = ", ".join(f"L{l}H{h} {mean[l, h]:.2f}" for l, h in top3)
    return [
        Row(pid="P54", claim_id="exists",
            claim="Successor heads (effective OV circuit maps ordinal tokens to their successors) exist in LLMs "
                  "from 31M to 12B parameters",
            setting=setting, baseline_name=f"max(0.5, 3 x chance {chance:.3f})", baseline_value=round(target, 3),
            method_value=round(best_score, 3),
            metric="best head's successor score, mean over the 5 tasks (higher is better)",
            verdict=RULE_EXISTS.verdict([best_score], [target]),
            note=f"best head L{best[0]}H{best[1]}; per task: " + ", ".join(f"{k} {v:.2f}" for k, v in per_task.items())
                 + f"; top-3 heads: {top_list}"),
        Row(pid="P54", claim_id="ablation",
            claim="Ablating successor heads hurts incrementation more than ablating other heads",
            setting=setting + f"; {len(prompts)} 3-item prompts, unablated next-item accuracy {base:.3f}",
            baseline_name=f"3 random other heads zero-ablated (mean of {draws} draws)",
            baseline_value=round(rand_mean, 4), method_value=round(top_drop, 4),
            metric="drop in next-item accuracy (higher is better; > 0.02 more than random counts)",
            verdict=RULE_ABLATION.verdict([top_drop], [rand_mean]),
            note=f"top-3 heads {top3} drop {top_drop:.3f}; random drops min {min(rand_drops):.3f} max "
                 f"{max(rand_drops):.3f}; top-3 drop exceeds {beaten:.0%} of random draws"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
